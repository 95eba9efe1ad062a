"""Pickup latency and 20-clip wall time with workers 1 and 2 (issue 2's figures).

Usage: python bench/pickup_workers.py [--jobs 200] [--clips 20]
Needs espeak-ng and sox for the clips (cached in bench/.cache/clips).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from helpers import Daemon, fake_script  # noqa: E402

from cesard import job as jobmod  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please send the quarterly report to the finance team by Friday.",
    "Our meeting starts at ten and should last about an hour.",
    "The server restarted twice last night without any warning.",
    "Remember to back up the database before the upgrade.",
    "She bought fresh bread, cheese and apples at the market.",
    "The train to the airport leaves every fifteen minutes.",
    "We need more tests for the error handling code.",
    "It was a bright cold day in April, and the clocks were striking.",
    "The committee approved the budget after a long discussion.",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb+m3", "en-us+m7"]


def clips(n: int) -> list[Path]:
    cache = Path(__file__).parent / ".cache" / "clips"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = cache / f"clip{i:02d}.wav"
        if not p.exists():
            raw = cache / f".clip{i:02d}.raw.wav"
            text = SENTENCES[i % len(SENTENCES)] + " " + SENTENCES[(i * 3 + 1) % len(SENTENCES)]
            subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-s",
                            str(140 + 10 * (i % 4)), "-w", str(raw), text], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(p)],
                           check=True)
            raw.unlink()
        out.append(p)
    return out


def pickup(jobs: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(Path(tmp), engine="fake", workers=1).start()
        try:
            lat = []
            for i in range(jobs):
                job_id = jobmod.new_job_id()
                build = d.spool / "tmp" / job_id
                build.mkdir()
                (build / "a.wav").write_bytes(fake_script(text=str(i)))
                meta = jobmod.JobMeta(id=job_id, options={},
                                      submitted_at=jobmod.iso(jobmod.utcnow()),
                                      source_name="a.wav")
                (build / "job.json").write_bytes(meta.to_json())
                t0 = time.time()
                os.rename(build, d.spool / "incoming" / job_id)
                res = d.wait_result(job_id, 30)
                lat.append(jobmod.parse_iso(res["started_at"]).timestamp() - t0)
            return lat
        finally:
            d.stop()


def wall(workers: int, files: list[Path]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(Path(tmp), engine="faster-whisper", workers=workers).start()
        try:
            t0 = time.monotonic()
            r = d.ctl("submit", *map(str, files), check=True)
            ids = r.stdout.split()
            for i in ids:
                d.wait_result(i, 600)
            elapsed = time.monotonic() - t0
            audio = sum(d.result(i)["duration"] for i in ids)  # type: ignore[index]
            return elapsed, audio
        finally:
            d.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--clips", type=int, default=20)
    a = ap.parse_args()
    lat = sorted(pickup(a.jobs))
    p50 = statistics.median(lat) * 1000
    p99 = lat[int(0.99 * (len(lat) - 1))] * 1000
    print(f"pickup (rename into incoming/ -> claimed), {len(lat)} jobs: "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {lat[-1] * 1000:.2f} ms")
    files = clips(a.clips)
    w1, audio = wall(1, files)
    w2, _ = wall(2, files)
    print(f"{len(files)} clips, {audio:.1f} s of audio: workers 1 {w1:.2f} s "
          f"({audio / w1:.1f}x realtime), workers 2 {w2:.2f} s ({audio / w2:.1f}x realtime), "
          f"speed-up {w1 / w2:.2f}x")
    print(json.dumps({"pickup_p50_ms": p50, "pickup_p99_ms": p99, "wall_workers1_s": w1,
                      "wall_workers2_s": w2, "audio_s": audio}))


if __name__ == "__main__":
    main()
