#!/usr/bin/env python3
"""Scale of the control path (issue 13, part 3): a spool with many jobs.

    .venv/bin/python bench/scale.py                  # 100k queued + 100k done (~3 min)
    .venv/bin/python bench/scale.py --queued 10000 --done 10000   # quicker

Fills a temporary spool with job directories as cesarctl makes them (queued: a fake-engine
script that sleeps an hour, so the one worker holds the first and the queue stays full;
done: job.json + result.json), then measures with the real programs:

* READY: from starting cesard to status.json saying "running" (what Type=notify waits
  for), and to the log line saying the whole queue is indexed;
* ``cesarctl status`` and ``cesarctl list`` (wall clock, median of 3, output to a pipe);
* claim: the supervisor's claim path (``Spool.claim`` of the index's first entry), per
  claim, with the full queue against a queue of 100, on the same filesystem.

Prints a table; writes nothing in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
import yaml  # noqa: E402

from cesard import job as jobmod  # noqa: E402
from cesard.index import QueueIndex  # noqa: E402
from cesard.lease import Claimer  # noqa: E402
from cesard.spool import Spool  # noqa: E402

BIN = Path(sys.executable).parent
SLEEPER = b"#cesard-fake\nsleep: 3600\n"


def progress(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def fill(spool: Path, queued: int, done: int) -> None:
    for state in ("tmp", "incoming", "processing", "deferred", "done", "failed", "control",
                  "state"):
        (spool / state).mkdir(parents=True, exist_ok=True)
    t0 = time.time() - queued - done
    for i in range(queued):
        job_id = f"{jobmod.iso(t0 + i).replace(':', '').replace('-', '')}-bench-{i}"
        d = spool / "incoming" / job_id
        d.mkdir()
        (d / "a.wav").write_bytes(SLEEPER)
        (d / "job.json").write_text(json.dumps({
            "schema": 1, "id": job_id, "submitted_at": jobmod.iso(t0 + i),
            "source_name": "a.wav", "options": {}}))
    for i in range(done):
        job_id = f"done-{i}"
        d = spool / "done" / job_id
        d.mkdir()
        meta = {"schema": 1, "id": job_id, "submitted_at": jobmod.iso(t0 + i),
                "source_name": "a.wav", "options": {}}
        (d / "job.json").write_text(json.dumps(meta))
        (d / "result.json").write_text(json.dumps({**meta, "status": "done",
                                                   "finished_at": jobmod.iso(t0 + i + 1),
                                                   "duration": 1.0}))


def fill_bare(spool: Path, n: int) -> None:
    """``n`` bare files in incoming/, as plain ``cp`` leaves them."""
    for state in ("tmp", "incoming", "processing", "deferred", "done", "failed", "control",
                  "state"):
        (spool / state).mkdir(parents=True, exist_ok=True)
    inc = spool / "incoming"
    for i in range(n):
        fd = os.open(inc / f"clip-{i:07d}.wav", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, SLEEPER)
        os.close(fd)


def median_run(args: list[str], n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def claim_cost(spool_dir: Path, claims: int) -> float:
    """Seconds per claim: index the queue (not timed), then claim ``claims`` entries."""
    spool = Spool(spool_dir)
    index = QueueIndex()
    for name in spool.scan("incoming"):
        entry = spool.entry_key(name)
        if entry is not None:
            index.add(entry)
    me = Claimer.me()
    t0 = time.monotonic()
    for _ in range(claims):
        entry = index.pop()
        assert entry is not None
        spool.claim(entry, me, time.time())
    return (time.monotonic() - t0) / claims


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queued", type=int, default=100_000)
    p.add_argument("--done", type=int, default=100_000)
    p.add_argument("--skip-list", action="store_true", help="no cesarctl list")
    p.add_argument("--claim-queued", type=int, default=1_000_000,
                   help="claim cost with this many bare files queued (0: skip)")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cesard-scale-"))
    proc = None
    try:
        spool = tmp / "spool"
        progress(f"filling {a.queued} queued and {a.done} done jobs")
        fill(spool, a.queued, a.done)
        conf = tmp / "cesard.yaml"
        conf.write_text(yaml.safe_dump({"engine": "fake", "workers": 1,
                                        "queue_capacity": 10 * a.queued + 1000}))
        log = tmp / "cesard.log"
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CESAR_SPOOL")}
        env["CESARD_TEST_FAKE_ENGINE"] = "1"  # the fake engine, refused on a shared spool
        t0 = time.monotonic()
        with open(log, "ab") as out:
            proc = subprocess.Popen([str(BIN / "cesard"), "--config", str(conf), "--spool",
                                     str(spool)], stdout=out, stderr=out, env=env,
                                    start_new_session=True)
        ready = indexed = None
        while indexed is None:
            if proc.poll() is not None:
                raise SystemExit(f"cesard exited: {log.read_text()[-2000:]}")
            if ready is None:
                try:
                    st = json.loads((spool / "state" / "status.json").read_text())
                    if st.get("pid") == proc.pid and st.get("state") == "running":
                        ready = time.monotonic() - t0
                except (OSError, ValueError):
                    pass
            text = log.read_text()
            if ready is not None and ("indexed" in text or "job(s) queued" in text):
                indexed = time.monotonic() - t0
            time.sleep(0.01)
        progress("waiting for the job catalogue")
        while "job catalogue:" not in log.read_text():
            if proc.poll() is not None:
                raise SystemExit(f"cesard exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        catalogued = time.monotonic() - t0
        ctl = [str(BIN / "cesarctl"), "--spool", str(spool), "--config", str(conf)]
        progress("cesarctl status and list")
        status_s = median_run([*ctl, "status"])
        # One run each: at 100k jobs a list takes tens of seconds.
        list_s = 0.0 if a.skip_list else median_run([*ctl, "list"], n=1)
        list_done_s = 0.0 if a.skip_list else median_run([*ctl, "list", "--state", "done"], n=1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = None
        progress("claim cost")
        big = claim_cost(spool, 200)
        small_dir = tmp / "small"
        fill(small_dir, 100, 0)
        small = claim_cost(small_dir, 50)
        shutil.rmtree(spool, ignore_errors=True)
        huge = small_bare = 0.0
        if a.claim_queued:
            progress(f"claim cost at {a.claim_queued:,} queued (bare files)")
            huge_dir = tmp / "huge"
            fill_bare(huge_dir, a.claim_queued)
            huge = claim_cost(huge_dir, 200)
            shutil.rmtree(huge_dir, ignore_errors=True)
            small_bare_dir = tmp / "small-bare"
            fill_bare(small_bare_dir, 100)
            small_bare = claim_cost(small_bare_dir, 50)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"| {a.queued} queued, {a.done} done | figure |")
    print("|---|---|")
    print(f"| READY (status.json running) after start | {ready:.2f} s |")
    print(f"| whole queue indexed after start | {indexed:.2f} s |")
    print(f"| job catalogue complete after start | {catalogued:.2f} s |")
    print(f"| cesarctl status | {status_s:.2f} s |")
    print(f"| cesarctl list (every state) | {list_s:.2f} s |")
    print(f"| cesarctl list --state done | {list_done_s:.2f} s |")
    print(f"| claim, {a.queued} queued | {big * 1000:.2f} ms |")
    print(f"| claim, 100 queued | {small * 1000:.2f} ms |")
    print(f"| claim ratio {a.queued} / 100 | {big / small:.2f}x |")
    if huge:
        print(f"| claim, {a.claim_queued:,} queued (bare files) | {huge * 1000:.2f} ms |")
        print(f"| claim, 100 queued (bare files) | {small_bare * 1000:.2f} ms |")
        print(f"| claim ratio {a.claim_queued:,} / 100 (bare files) | "
              f"{huge / small_bare:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
