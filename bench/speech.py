"""Speech-like test audio for the benchmark, and a small word error rate.

Clips are synthesised with espeak-ng (varied voices and speeds) from the
texts below, converted to 16 kHz mono WAV with sox, and cached (never
committed): ``bench/.cache/`` by default. The texts are the reference
transcripts for WER.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

TEXTS = [
    "Good morning everyone. Thank you for joining the weekly planning meeting. "
    "Today we will review the release schedule, the open support tickets, and the budget "
    "for the next quarter.",
    "The new storage server arrived on Monday. It has twice the capacity of the old one, "
    "and the migration should take about three days if nothing goes wrong.",
    "Please remember to lock your screen when you leave your desk. Last week a visitor "
    "walked through the office and nobody asked who he was.",
    "The library will be closed next Friday for maintenance. Books that are due on that "
    "day can be returned on Saturday morning without a late fee.",
    "Our customers asked for a simpler way to export their reports. The design team "
    "sketched three options, and we will test the two best ones with real users.",
    "The train to the airport leaves every fifteen minutes from the main station. "
    "Buy your ticket before you board, because the conductor cannot sell them.",
    "When the water boils, add the pasta and a pinch of salt. Stir it from time to time "
    "so that it does not stick to the bottom of the pot.",
    "The weather service expects heavy rain in the north this afternoon, with strong "
    "winds along the coast and a chance of snow in the mountains tonight.",
    "I called the bank to ask about the missing payment. They told me the transfer was "
    "delayed by a holiday and should arrive before the end of the week.",
    "The committee approved the plan to build a new playground near the school. "
    "Work will start in the spring and finish before the summer holidays.",
    "Most of the errors in the log come from a single machine with a failing disk. "
    "We will replace the disk tonight and watch the system closely tomorrow.",
    "The museum has opened a new exhibition about the history of the river. "
    "It shows old maps, photographs of the harbor, and tools used by the first fishermen.",
    "If you want to learn a new language, practice a little every day. Reading short "
    "stories and listening to the radio helps more than memorizing long lists of words.",
    "The company hired twelve new engineers this year. Most of them work on the mobile "
    "application, and four of them joined the security team.",
    "Before you start the engine, check the oil level and the pressure of the tires. "
    "A short inspection can prevent a long wait at the side of the road.",
    "The hospital is looking for volunteers to read to patients in the evening. "
    "Anyone who is interested should speak to the nurse at the front desk.",
    "Our garden produced more tomatoes than we could eat, so we gave the rest to our "
    "neighbors and made a large batch of sauce for the winter.",
    "The conference will take place in a small town by the lake. There are only a few "
    "hotels, so please book your room as soon as possible.",
    "The report shows that sales grew by eight percent in the last quarter, mostly "
    "because of strong demand in the southern region.",
    "My grandfather built this table with his own hands more than fifty years ago. "
    "It has survived four moves, two floods, and a very energetic dog.",
    "The software update fixes a problem with the printer driver and improves the "
    "battery life of older laptops. Please install it before the end of the month.",
    "Scientists have discovered a new species of frog in the rain forest. It is smaller "
    "than a coin and sings at night with a high, clear voice.",
    "The city council wants to reduce traffic in the center. Buses will be free on "
    "weekends, and several streets will be closed to cars in the evening.",
    "Thank you for your patience while we investigated the outage. The cause was a "
    "configuration change that we have now reverted, and all services are running again.",
    "The children planted seven trees behind the school yesterday. Each class will take "
    "care of one tree and measure how much it grows every month.",
    "Coffee prices have risen sharply this year because of a poor harvest. Some small "
    "cafes have started to serve smaller cups instead of raising their prices.",
    "The orchestra rehearses every Tuesday and Thursday evening in the old church. "
    "New members are welcome, especially players of the violin and the cello.",
    "Please send me the final version of the contract by noon tomorrow, so that the "
    "lawyers have enough time to read it before the meeting on Wednesday.",
    "The mountain path is steep and narrow near the top. Wear good boots, bring enough "
    "water, and turn back if the weather changes.",
    "At the end of the meeting we agreed on three actions. Anna will update the plan, "
    "David will contact the supplier, and I will write the summary for the board.",
]

# (espeak-ng voice, words per minute)
VOICES = [("en-us", 165), ("en-gb", 150), ("en-us+f3", 175), ("en-gb-scotland", 145),
          ("en-029", 160), ("en-gb-x-rp+m3", 170), ("en-us-nyc", 155), ("en+f4", 150),
          ("en-gb-x-gbcwmd", 160), ("en-us+m5", 185)]

CACHE = Path(__file__).resolve().parent / ".cache"


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=120)


def make_clips(n: int, cache: Path = CACHE) -> list[dict[str, object]]:
    """The first ``n`` clips (cycled voices): [{path, text, voice, speed, duration}]."""
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        text = TEXTS[i % len(TEXTS)]
        voice, speed = VOICES[i % len(VOICES)]
        tag = hashlib.sha256(f"{text}|{voice}|{speed}".encode()).hexdigest()[:12]
        wav = cache / f"clip{i:02d}-{tag}.wav"
        if not wav.exists():
            raw = cache / f".raw-{tag}.wav"
            _run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(raw), text])
            part = cache / f".{wav.name}.part"
            _run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", "-t", "wav", str(part),
                  "pad", "0.3", "0.5"])
            part.rename(wav)
            raw.unlink(missing_ok=True)
        out.append({"path": str(wav), "text": text, "voice": voice, "speed": speed,
                    "duration": wav_duration(wav)})
    return out


def make_long(clips: list[dict[str, object]], seconds: float,
              cache: Path = CACHE) -> dict[str, object]:
    """Concatenate clips (cycling) to at least ``seconds``; 16 kHz mono WAV + its text."""
    chosen, total = [], 0.0
    i = 0
    while total < seconds:
        c = clips[i % len(clips)]
        chosen.append(c)
        total += float(c["duration"])  # type: ignore[arg-type]
        i += 1
    tag = hashlib.sha256(json.dumps([c["path"] for c in chosen]).encode()).hexdigest()[:12]
    wav = cache / f"long-{int(seconds)}s-{tag}.wav"
    if not wav.exists():
        part = cache / f".{wav.name}.part"
        _run(["sox", *[str(c["path"]) for c in chosen], "-t", "wav", str(part)])
        part.rename(wav)
    return {"path": str(wav), "text": " ".join(str(c["text"]) for c in chosen),
            "duration": wav_duration(wav), "clips": len(chosen)}


def wav_duration(path: Path | str) -> float:
    import wave
    with wave.open(str(path)) as w:
        return w.getnframes() / float(w.getframerate())


# --- word error rate -----------------------------------------------------------

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
         "ninety"]


def number_words(n: int) -> str:
    """0..999999 as English words ("one hundred twenty three"); no "and"."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    if n < 1_000_000:
        rest = n % 1000
        return number_words(n // 1000) + " thousand" + (
            "" if rest == 0 else " " + number_words(rest))
    return str(n)


_SPELLING = {"harbour": "harbor", "neighbours": "neighbors", "neighbour": "neighbor",
             "memorising": "memorizing", "centre": "center", "colour": "color",
             "okay": "ok", "cafés": "cafes", "café": "cafe"}


def normalise(text: str) -> list[str]:
    """Lower case, digits spelled out, punctuation and hyphens dropped, "and" kept."""
    t = text.lower()
    t = re.sub(r"(\d),(\d{3})", r"\1\2", t)
    t = t.replace("%", " percent ")
    t = re.sub(r"\d+", lambda m: " " + number_words(int(m.group())) + " ", t)
    t = t.replace("-", " ").replace("'", "").replace("\u2019", "")
    t = re.sub(r"[^a-z\u00e0-\u00ff ]+", " ", t)
    return [_SPELLING.get(w, w) for w in t.split()]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER: total edits / total reference words (after :func:`normalise`)."""
    edits = words = 0
    for r, h in zip(refs, hyps, strict=True):
        rw, hw = normalise(r), normalise(h)
        edits += edit_distance(rw, hw)
        words += len(rw)
    return edits / max(1, words)
