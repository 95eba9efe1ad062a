#!/usr/bin/env python3
"""cesard on a GlusterFS spool (issue 14): one host against two, and a local disk, in one
run. Root only; needs glusterfs-server, glusterfs-client and no other glusterd running.

    .venv/bin/python bench/gluster.py          # about 3 minutes

Brings up the lab of tests/glusterlab.py (a one-brick volume, two hosts each in its
own network namespace with its own FUSE mount), then for each setup — a local ext4
spool with one daemon, the GlusterFS spool with one daemon, the GlusterFS spool with
two daemons (one per host) — measures with the fake engine (2 workers a daemon,
``watch: poll``, ``poll_interval: 0.2``):

* throughput: 300 jobs published at once (built in tmp/, renamed into incoming/, as
  cesarctl does), jobs/s until the last is in done/;
* pickup latency: 40 jobs published one at a time, 0.5 s apart; from the rename into
  incoming/ to the job's ``started_at`` (same machine, same clock).

Writes bench/RESULTS-gluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "tests"))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import glusterlab  # noqa: E402
import run as benchrun  # noqa: E402
import yaml  # noqa: E402
from harness import build_job, publish  # noqa: E402

from cesard import job as jobmod  # noqa: E402

BIN = Path(sys.executable).parent
FAKE = b"#cesard-fake\ntext: bench\n"


def progress(msg: str) -> None:
    print(f"[gluster] {msg}", file=sys.stderr, flush=True)


def start(spool: Path, host: str, netns: str | None, work: Path) -> subprocess.Popen[bytes]:
    conf = work / f"{host}.yaml"
    conf.write_text(yaml.safe_dump({"engine": "fake", "workers": 2, "watch": "poll",
                                    "poll_interval": 0.2, "settle_seconds": 0.5,
                                    "lease_seconds": 10, "queue_capacity": 10000}))
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "CESAR_SPOOL")}
    env["CESAR_HOST_ID"] = host
    prefix = ["ip", "netns", "exec", netns] if netns else []
    log = open(work / f"{host}.log", "ab")  # noqa: SIM115 - closed below
    p = subprocess.Popen([*prefix, str(BIN / "cesard"), "--config", str(conf), "--spool",
                          str(spool)], stdout=log, stderr=log, env=env, start_new_session=True)
    log.close()
    own = spool / "state" / "hosts" / f"{host}.json"
    deadline = time.monotonic() + 60
    while True:
        try:
            st = json.loads(own.read_text())
            if st.get("pid") == p.pid and st.get("state") == "running":
                return p
        except (OSError, ValueError):
            pass
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"cesard on {host} did not start: "
                             f"{(work / f'{host}.log').read_text()[-1500:]}")
        time.sleep(0.05)


def done_count(spool: Path) -> int:
    try:
        return len(os.listdir(spool / "done"))
    except OSError:
        return 0


def wait_done(spool: Path, n: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while done_count(spool) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done_count(spool)} of {n} jobs done after {timeout} s")
        time.sleep(0.02)
    return time.time()


def measure(spool: Path, hosts: list[tuple[str, str | None]], work: Path) -> dict[str, Any]:
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.mkdir(mode=0o700)  # a private spool: cesard makes the rest (privacy: owner)
    procs = [start(spool, h, n, work) for h, n in hosts]
    try:
        n = 300
        builds = [build_job(spool, FAKE, "a.wav") for _ in range(n)]
        t0 = time.time()
        for job_id, b in builds:
            publish(spool, job_id, b)
        t1 = wait_done(spool, n, 300)
        rate = n / (t1 - t0)
        lat = []
        for _ in range(40):
            job_id, b = build_job(spool, FAKE, "a.wav")
            t = publish(spool, job_id, b)
            deadline = time.monotonic() + 30
            res = spool / "done" / job_id / "result.json"
            while not res.exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"job {job_id} not done in 30 s")
                time.sleep(0.01)
            started = jobmod.parse_iso(json.loads(res.read_text())["started_at"]).timestamp()
            lat.append((started - t) * 1000)
            time.sleep(0.5)
        by_host: dict[str, int] = {}
        for name in os.listdir(spool / "done"):
            w = json.loads((spool / "done" / name / "result.json").read_text())["worker"]
            by_host[w.split(":")[0]] = by_host.get(w.split(":")[0], 0) + 1
        lat.sort()
        return {"jobs_per_s": rate, "pickup_p50_ms": statistics.median(lat),
                "pickup_p99_ms": lat[int(0.99 * (len(lat) - 1))], "by_host": by_host,
                "failed": len(os.listdir(spool / "failed"))}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def machine() -> dict[str, str]:
    return benchrun.Bench(argparse.Namespace(quick=False)).machine()


def main() -> int:
    why = glusterlab.why_not()
    if why:
        print(f"bench/gluster.py cannot run here: {why}", file=sys.stderr)
        return 2
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="cesard-gluster-"))
    rows = []
    try:
        progress("local ext4 spool, one daemon")
        rows.append(("local disk (ext4), 1 daemon",
                     measure(work / "local-spool", [("local", None)], work)))
        progress("bringing the GlusterFS lab up")
        glusterlab.bring_up()
        progress("GlusterFS, one host")
        rows.append(("GlusterFS, 1 host", measure(glusterlab.MNT["a"] / "bench1" / "spool",
                                                  [("hosta", f"{glusterlab.P}a")], work)))
        progress("GlusterFS, two hosts")
        rows.append(("GlusterFS, 2 hosts (one mount each)",
                     measure(glusterlab.MNT["a"] / "bench2" / "spool",
                             [("hosta", f"{glusterlab.P}a"), ("hostb", f"{glusterlab.P}b")],
                             work)))
    finally:
        glusterlab.tear_down()
        shutil.rmtree(work, ignore_errors=True)
    lines = ["| setup | fake jobs/s (300 at once) | pickup p50 / p99 (poll 0.2 s) | "
             "done by | failed |", "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['jobs_per_s']:.1f} | {r['pickup_p50_ms']:.0f} / "
                     f"{r['pickup_p99_ms']:.0f} ms | "
                     f"{', '.join(f'{h} {n}' for h, n in sorted(r['by_host'].items()))} | "
                     f"{r['failed']} |")
    text = "\n".join([
        "# cesard on a GlusterFS spool", "",
        f"Command: `{Path(sys.executable).name} bench/gluster.py` "
        f"({(time.time() - t_start) / 60:.1f} min)", "",
        *[f"- **{k}**: {v}" for k, v in machine().items()], "",
        "Fake engine, 2 workers a daemon, `watch: poll`, `poll_interval: 0.2`; GlusterFS 10, "
        "one brick, options of docs/shared-storage.md (client caches off, "
        "entry/attribute/negative timeouts 0).", "", *lines, ""])
    print(text)
    (BENCH / "RESULTS-gluster.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
