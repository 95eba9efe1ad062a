#!/usr/bin/env python3
"""Resume and dedupe figures (issue 12), measured side by side in one run.

    .venv/bin/python bench/resume.py            # a 10-minute file, tiny.en (about 3 min)
    .venv/bin/python bench/resume.py --seconds 120   # quicker check of the bench itself

Resume: the real cesard (faster-whisper, the bundled tiny.en, one worker) transcribes a
10-minute espeak-ng file from start to end; then the same audio again as a new job, whose
daemon is killed with SIGKILL (supervisor and worker) 80 % of the full run's time after
the job started; a new daemon finishes it. The figure is the second attempt's
``transcribe_s`` over the full run's, for batched decoding (the default for files over
batch_min_seconds), sequential decoding with VAD, and without VAD. Each transcript's word
error rate against the script read, and whether the resumed text equals the full run's.

Dedupe: with ``dedupe: true``, the same file submitted again: the time from the submit
to result.json in done/ (cesarctl submit --wait, wall clock), beside a fake-engine job's
on the same daemon for scale.

Prints a table and writes nothing in the repository. Needs espeak-ng and sox (clips are
cached in bench/.cache/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import speech  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(BENCH.parent))
from cesard import job as jobmod  # noqa: E402

BIN = Path(sys.executable).parent


def progress(msg: str) -> None:
    print(f"[resume] {msg}", file=sys.stderr, flush=True)


class Daemon:
    def __init__(self, root: Path, **cfg: Any) -> None:
        self.root = root
        self.spool = root / "spool"
        self.conf = root / "cesard.yaml"
        root.mkdir(parents=True, exist_ok=True)
        base = {"engine": "faster-whisper", "workers": 1, "cpu_threads": 2,
                "settle_seconds": 0.2, "lease_seconds": 5}
        self.conf.write_text(yaml.safe_dump({**base, **cfg}))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "cesard.log", "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CESAR_SPOOL")}
        self.proc = subprocess.Popen([str(BIN / "cesard"), "--config", str(self.conf),
                                      "--spool", str(self.spool)], stdout=log, stderr=log,
                                     env=env, start_new_session=True)
        self.until(lambda: (self.status() or {}).get("state") == "running"
                   and self.status()["pid"] == self.proc.pid, 180, "ready")  # type: ignore

    def status(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.spool / "state" / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def until(self, pred: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}; see {self.root}/cesard.log")
            time.sleep(0.05)

    def ctl(self, *args: str) -> str:
        return subprocess.run([str(BIN / "cesarctl"), "--spool", str(self.spool), "--config",
                               str(self.conf), *args], check=True, capture_output=True,
                              text=True).stdout

    def result(self, job: str, timeout: float = 900) -> dict[str, Any]:
        p = self.spool / "done" / job / "result.json"
        self.until(p.exists, timeout, f"result of {job}")
        return dict(json.loads(p.read_text()))

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def resume_run(tmp: Path, audio: Path, ref: str, label: str, submit: list[str],
               **cfg: Any) -> list[dict[str, Any]]:
    """One uninterrupted run, then one job killed at 80 % of its time and, where progress
    moves smoothly (sequential decoding), one killed when status shows 80 % done."""
    d = Daemon(tmp / label, **cfg)
    rows = []
    try:
        d.start()
        progress(f"{label}: the full run")
        full = d.result(d.ctl("submit", str(audio), *submit).strip())
        rules = ["time"] + ([] if "batched" in label else ["progress"])
        for rule in rules:
            job = d.ctl("submit", str(audio), *submit).strip()
            progress(f"{label}: a job killed at 80 % ({rule})")

            def shown(job: str = job) -> float | None:
                for r in (d.status() or {}).get("running", []):
                    if r["id"] == job:
                        return float(r["progress"])
                return None
            d.until(lambda: shown() is not None, 900, "the job to start")
            t0 = time.monotonic()
            limit = 0.8 * full["timings"]["transcribe_s"]
            while (time.monotonic() - t0 < limit) if rule == "time" else \
                    ((shown() or 0.0) < 0.8):
                time.sleep(0.01)
            killed_at, elapsed = shown() or 1.0, time.monotonic() - t0
            d.kill()
            d.start()
            second = d.result(job)
            rows.append({
                "label": label, "rule": rule, "full_s": full["timings"]["transcribe_s"],
                "second_s": second["timings"]["transcribe_s"],
                "ratio": second["timings"]["transcribe_s"] / full["timings"]["transcribe_s"],
                "killed_at": killed_at, "elapsed": elapsed / full["timings"]["transcribe_s"],
                "resumed_from": second["resumed_from"], "duration": full["duration"],
                "wer_full": speech.wer([ref], [full["text"]]),
                "wer_second": speech.wer([ref], [second["text"]]),
                "same": second["text"] == full["text"]})
    finally:
        d.kill()
    return rows


def dedupe_run(tmp: Path, audio: Path) -> dict[str, Any]:
    d = Daemon(tmp / "dedupe", dedupe=True)
    try:
        d.start()
        first = d.result(d.ctl("submit", str(audio)).strip())
        walls, inside = [], []
        for _ in range(5):
            t0 = time.monotonic()
            r = json.loads(d.ctl("submit", "--wait", "--json", str(audio)))
            walls.append(time.monotonic() - t0)
            r = r[0] if isinstance(r, list) else r
            assert r["deduplicated_from"] == first["id"], r
            # submitted (published in incoming/) to finished (result.json written)
            inside.append((jobmod.parse_iso(r["finished_at"])
                           - jobmod.parse_iso(r["submitted_at"])).total_seconds())
        t0 = time.monotonic()
        subprocess.run([str(BIN / "cesarctl"), "--version"], check=True, capture_output=True)
        startup = time.monotonic() - t0
        return {"first_s": first["timings"]["transcribe_s"], "wall_s": sorted(walls)[2],
                "inside_s": sorted(inside)[2], "ctl_s": startup}
    finally:
        d.stop()


def batch_sizes(audio: Path, threads: int, sizes: list[int]) -> list[tuple[int, float]]:
    """Raw BatchedInferencePipeline on the whole file, one batch size after another."""
    code = f"""
import time
from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.audio import decode_audio
from cesard import models
s = decode_audio({str(audio)!r}, sampling_rate=16000)
m = WhisperModel(models.bundled()["tiny.en"], device="cpu", compute_type="int8",
                 cpu_threads={threads})
p = BatchedInferencePipeline(m)
for bs in {sizes!r}:
    t = time.monotonic()
    list(p.transcribe(s, batch_size=bs, temperature=0.0)[0])
    print(bs, time.monotonic() - t, flush=True)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, cwd=BENCH.parent).stdout
    return [(int(a), float(b)) for a, b in (line.split() for line in out.splitlines())]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--dedupe-only", action="store_true", help="only the dedupe figure")
    p.add_argument("--modes", default="batched,vad,novad,batchsize",
                   help="decoding modes to resume (default: %(default)s)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cesard-resume-"))
    try:
        clips = speech.make_clips(30)
        long = speech.make_long(clips, a.seconds)
        audio = Path(str(long["path"]))
        ref = str(long["text"])
        if a.dedupe_only:
            dd = dedupe_run(tmp, audio)
            rows = []
        else:
            modes = a.modes.split(",")
            rows = []
            if "batched" in modes:
                rows += resume_run(tmp, audio, ref, "batched (the default past 300 s)", [])
            if "vad" in modes:
                rows += resume_run(tmp, audio, ref, "sequential, VAD", [], batch_min_seconds=0)
            if "batchsize" in modes:
                for threads in (1, 2):
                    progress(f"batch sizes, cpu_threads {threads}")
                    for bs, secs in batch_sizes(audio, threads, [8, 4, 2]):
                        print(f"batched, cpu_threads {threads}, batch_size {bs}: {secs:.1f} s")
            if "novad" in modes:
                rows += resume_run(tmp, audio, ref, "sequential, --no-vad", ["--no-vad"],
                                   batch_min_seconds=0)
            dd = dedupe_run(tmp, audio)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        print(f"| {rows[0]['duration'] / 60:.0f}-min file, tiny.en, 1 worker, cpu_threads 2 | "
              "killed when | full run | killed at: time, progress | resumed from | "
              "2nd attempt | 2nd / full | WER full, resumed | same text |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        when = "80 % of the time" if r["rule"] == "time" else "status shows 80 %"
        print(f"| {r['label']} | {when} | {r['full_s']:.1f} s | {r['elapsed'] * 100:.0f} %, "
              f"{r['killed_at'] * 100:.0f} % | {r['resumed_from']:.0f} s | "
              f"{r['second_s']:.1f} s | **{r['ratio'] * 100:.0f} %** | "
              f"{r['wer_full'] * 100:.1f} %, {r['wer_second'] * 100:.1f} % | "
              f"{'yes' if r['same'] else 'no'} |")
    print(f"\ndedupe, the same file again (median of 5): {dd['inside_s'] * 1000:.0f} ms from "
          f"its submission to its result.json (result times), {dd['wall_s'] * 1000:.0f} ms for "
          f"the whole 'cesarctl submit --wait' (of which {dd['ctl_s'] * 1000:.0f} ms is "
          f"starting one cesarctl), vs {dd['first_s']:.1f} s "
          "transcribing it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
