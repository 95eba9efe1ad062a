#!/usr/bin/env python3
"""Diarization (issue 25), measured in one run on multi-speaker files assembled from real
speech with known turns:

    .venv/bin/python bench/diarize.py               # 16 files, about 3 minutes on 2 cores
    .venv/bin/python bench/diarize.py --files 4     # to check the bench

Speakers (../shared/speech): an LJSpeech reader (with coqui's example, the same voice),
the pocketsphinx "cards" speaker, the DeepSpeech smoke-test speaker and the speaches
sample's. Each file has 2 to 4 of them in 6 to 10 turns, seeded; pauses of 0.2 to 1.2 s
between turns, and in every third file some turns overlap the one before by 0.2 to
0.5 s (mixed: both speak; overlap is scored).

Each file runs through the real daemon twice, one job at a time: plainly and with
``diarize``. Reported: DER (bench/der.py, 0.25 s collar, overlap scored) of the
segments' speakers, whether the number of speakers is right, the time diarization adds
(``diarization.seconds``) against the transcription's (``timings.transcribe_s``), and
whether the text changed (it must not). Writes ``bench/RESULTS-diarize.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from der import der  # noqa: E402
from harness import REPO, Daemon, build_job, progress, publish, tempdir  # noqa: E402

SPEECH = REPO.parent / "shared" / "speech"
VOICES = {
    "lj": [f"lj/LJ001-00{n:02d}.wav" for n in range(6, 33)] + ["voices/coqui-example_1.wav"],
    "cards": [f"voices/pocketsphinx-cards-00{n}.wav" for n in range(1, 6)],
    "home": ["voices/new-home-in-the-stars-16k.wav"],
    "speaches": ["voices/speaches-audio.wav"],
}


def load(rel: str) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    return np.asarray(decode_audio(str(SPEECH / rel), sampling_rate=16000))


def assemble(rng: random.Random,
             overlap: bool) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    n = rng.choice([2, 2, 3, 3, 4])
    who = ["lj", "cards", *rng.sample(["home", "speaches"], k=max(0, n - 2))]
    turns = rng.randint(6, 10)
    order = [who[i % n] for i in range(n)] + [rng.choice(who) for _ in range(turns - n)]
    rng.shuffle(order)
    out = np.zeros(0, np.float32)
    truth: list[tuple[float, float, str]] = []
    for i, w in enumerate(order):
        clip = load(rng.choice(VOICES[w]))
        gap = rng.uniform(0.2, 1.2)
        if overlap and i and w != order[i - 1] and rng.random() < 0.5:
            gap = -rng.uniform(0.2, 0.5)
        start = max(0, len(out) + int(gap * 16000))
        end = start + len(clip)
        if end > len(out):
            out = np.concatenate([out, np.zeros(end - len(out), np.float32)])
        out[start:end] += clip
        truth.append((start / 16000, end / 16000, w))
    return out, truth


def wav_bytes(samples: np.ndarray) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return buf.getvalue()


def run(d: Daemon, data: bytes, options: dict[str, Any]) -> dict[str, Any]:
    job_id, build = build_job(d.spool, data, name="meeting.wav", options=options)
    publish(d.spool, job_id, build)
    path = d.spool / "done" / job_id / "result.json"
    deadline = time.monotonic() + 600
    while not path.exists():
        if (d.spool / "failed" / job_id).exists() or time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} failed or timed out: {d.log()[-1500:]}")
        time.sleep(0.05)
    return dict(json.loads(path.read_text()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--seed", type=int, default=25)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = tempdir("diarize")
    d = Daemon("diarize", engine="faster-whisper", workers=1, settle_seconds=0.05)
    d.start()
    rows = []
    try:
        run(d, wav_bytes(load(VOICES["lj"][0])), {"diarize": True})  # warm-up: imports
        for i in range(args.files):
            samples, truth = assemble(rng, overlap=i % 3 == 2)
            data = wav_bytes(samples)
            (work / f"m{i:02d}.wav").write_bytes(data)
            progress(f"file {i + 1}/{args.files}: {len(samples) / 16000:.1f} s, "
                     f"{len({t[2] for t in truth})} speakers")
            plain = run(d, data, {})
            dia = run(d, data, {"diarize": True})
            hyp = [(s["start"], s["end"], s["speaker"]) for s in dia["segments"]]
            score = der(truth, hyp)
            rows.append({
                "file": i, "seconds": len(samples) / 16000, "overlap": i % 3 == 2,
                "speakers": len({t[2] for t in truth}),
                "found": dia["diarization"]["speakers"], "der": score["der"],
                "missed": score["missed"], "false_alarm": score["false_alarm"],
                "confusion": score["confusion"], "total": score["total"],
                "transcribe_s": plain["timings"]["transcribe_s"],
                "diarize_s": dia["diarization"]["seconds"],
                "same_text": plain["text"] == dia["text"]})
    finally:
        d.stop()
    total = sum(r["total"] for r in rows)
    pooled = sum(r["missed"] + r["false_alarm"] + r["confusion"] for r in rows) / total
    clean = [r for r in rows if not r["overlap"]]
    clean_der = sum(r["missed"] + r["false_alarm"] + r["confusion"] for r in clean) / max(
        1e-9, sum(r["total"] for r in clean))
    right = sum(r["found"] == r["speakers"] for r in rows)
    added = sum(r["diarize_s"] for r in rows) / sum(r["transcribe_s"] for r in rows)
    lines = ["# Diarization: DER, speaker count, added time (bench/diarize.py)", "",
             f"Machine: {os.cpu_count()} CPUs; tiny.en int8, one worker; "
             f"`.venv/bin/python bench/diarize.py --files {args.files} --seed {args.seed}`.",
             "", "| file | audio s | overlap | speakers | found | DER | transcribe s | "
             "diarize s | text unchanged |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| m{r['file']:02d} | {r['seconds']:.1f} | {'yes' if r['overlap'] else ''}"
                     f" | {r['speakers']} | {r['found']} | {r['der']:.3f} | "
                     f"{r['transcribe_s']:.2f} | {r['diarize_s']:.2f} | {r['same_text']} |")
    lines += ["", f"* DER, clean joined speech (no overlap): **{clean_der:.3f}**; all files "
              f"(overlap scored): **{pooled:.3f}** (pooled over the reference speech)",
              f"* number of speakers right: **{right}/{len(rows)}**",
              f"* diarization time / transcription time: **{added:.2f}**",
              f"* text unchanged by diarization: {sum(r['same_text'] for r in rows)}/"
              f"{len(rows)}", ""]
    out = "\n".join(lines)
    print(out)
    (BENCH / "RESULTS-diarize.md").write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
