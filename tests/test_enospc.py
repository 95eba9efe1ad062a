"""A full spool filesystem (ENOSPC): nothing lost, the daemon keeps running, one error.

The spool is a small tmpfs (needs root, or CAP_SYS_ADMIN; skipped otherwise).
While it is full, every write the daemon makes can fail: claims, leases,
heartbeats, results, job.json on retry or recovery, status.json.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until
from test_torture import assert_clean_end, census, count_in, make_jobs

FULL_ERROR = "the spool's filesystem is full"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs that fills up")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        # Lazy: a daemon still running is killed by make_daemon's teardown after this.
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(where: Path) -> int:
    """Fill the filesystem to the last byte; return the bytes written."""
    n = 0
    i = 0
    while True:
        path = where / f"filler{i}"
        i += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                return n
            raise
        try:
            chunk = b"\0" * (1 << 16)
            while True:
                try:
                    n += os.write(fd, chunk)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return n
                    chunk = chunk[: len(chunk) // 16 or 1]
        finally:
            os.close(fd)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unfill(where: Path) -> None:
    for p in where.glob("filler*"):
        p.unlink()


def full_errors(log: str) -> int:
    return sum(FULL_ERROR in line and " ERROR: " in line for line in log.splitlines())


def test_full_spool_loses_nothing_and_resumes(make_daemon: Callable[..., Daemon],
                                              small_fs: Path, tmp_path: Path) -> None:
    d = make_daemon(workers=2, settle_seconds=0.3, lease_seconds=3, retry_delays=[0.2],
                    max_attempts=5)
    d.spool = small_fs / "spool"
    rnd = random.Random(5)
    tokens = [f"tok-{i:04d}" for i in range(40)]
    make_jobs(d.spool, tokens[:30], rnd, [0.1, 0.3], tmp_path / "src")
    d.start()
    wait_until(lambda: count_in(d.spool, "done") >= 3 and os.listdir(d.spool / "processing"),
               20, "some jobs done and some running")
    fill(small_fs)
    # Running jobs finish into a full disk, queued ones cannot be claimed; it stays
    # full (we top it up as the daemon frees pages) for more than one pause of claiming.
    wait_until(lambda: full_errors(d.log()), 20, "the disk-full error")
    observed = 0.0
    assert d.proc is not None
    cpu0, t0 = cpu_seconds(d.proc.pid), time.monotonic()
    t_end = t0 + 6.0
    while time.monotonic() < t_end:
        fill(small_fs)
        assert d.proc.poll() is None, d.log()
        observed += 1
        time.sleep(0.05)
    busy = (cpu_seconds(d.proc.pid) - cpu0) / (time.monotonic() - t0)
    assert busy < 0.1, f"the daemon spins while the disk is full ({busy:.0%} CPU)"
    src = tmp_path / "late.wav"
    src.write_bytes(fake_script(text="tok-late"))
    r = d.ctl("submit", str(src))
    assert r.returncode != 0 and "No space left" in r.stderr, (r.returncode, r.stderr)
    assert [n for n in os.listdir(d.spool / "tmp")] == []
    # kill -9 while full, then start again while still full: start-up recovery
    # cannot write either, and must not crash.
    d.kill_all()
    assert full_errors(d.log()) == 1, d.log()
    first_log = d.log()
    d.log_path = tmp_path / "cesard.2.log"
    d.start(wait_ready=False)
    wait_until(lambda: "started:" in d.log() or d.proc.poll() is not None,  # type: ignore[union-attr]
               30, "the second start")
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        fill(small_fs)
        assert d.proc.poll() is None, d.log()  # type: ignore[union-attr]
        time.sleep(0.05)
    # Space again: everything is done, each job once.
    unfill(small_fs)
    make_jobs(d.spool, tokens[30:], rnd, [0.0], tmp_path / "src")
    wait_until(lambda: count_in(d.spool, "done") + count_in(d.spool, "failed") >= len(tokens),
               60, "every job to be finished")
    wait_until(lambda: not os.listdir(d.spool / "processing"), 10, "processing/ to empty")
    assert d.stop() == 0
    log = first_log + d.log()
    assert "Traceback" not in log, log
    assert full_errors(d.log()) <= 1, d.log()
    assert "space again" in d.log()
    results = assert_clean_end(d, tokens, max_runs=2)
    # A full disk costs no attempt: only a job running at the kill -9 may count two.
    assert sum(r["attempts"] > 1 for r in results) <= 2, [r["errors"] for r in results]
    assert "lease expired" not in log, "a claim without a lease was left behind"
    # No temporary files were left behind by writes that failed.
    leftovers = [f"{state}/{name}/{f}" for state in ("done",)
                 for name in os.listdir(d.spool / state)
                 for f in os.listdir(d.spool / state / name) if f.startswith(".")]
    leftovers += [f"state/{f}" for f in os.listdir(d.spool / "state") if f.startswith(".")]
    assert leftovers == []
    assert sorted(census(d.spool)) == sorted(tokens)
    print(f"\nENOSPC: {len(tokens)} jobs, {observed:.0f} polls while full")
