"""Power cuts (issue 20): everything the daemon publishes is fsynced before it counts.

LazyFS is packaged nowhere, so the test watches the order of the daemon's system calls
with strace (-y names each descriptor's file): every lease (``claim.json``) is fsynced
before the rename that publishes it (after a cut the claimer of a job is known, and a
dead one is recovered at once, not after lease_seconds), and the audio of a bare file
that a writer never synced is fsynced (by its worker, off the loop, and again before
the move) before its job is renamed into done/ (after a cut no done job has a 0-byte
recording beside a result that gives its sha256).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until

pytestmark = pytest.mark.skipif(shutil.which("strace") is None,
                                reason="needs strace (Debian package strace)")


def syscalls(log: Path) -> list[str]:
    return [line.split(None, 1)[1] for line in log.read_text(errors="replace").splitlines()
            if " " in line]


def fsynced_before(calls: list[str], path: str, until: int) -> bool:
    return any(c.startswith("fsync(") and f"<{path}>" in c for c in calls[:until])


def test_leases_and_bare_audio_are_fsynced_before_they_count(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    trace = tmp_path / "strace.log"
    d = make_daemon(workers=1)
    d.start(wait_ready=False, prefix=("strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
                                      "trace=fsync,rename,renameat,renameat2"))
    wait_until(lambda: (d.status() or {}).get("state") == "running", 60, "the daemon")
    bare = d.spool / "incoming" / "copied.wav"
    bare.write_bytes(fake_script(text="copied without sync"))  # like cp: no fsync
    job = d.submit_bytes("submitted.wav", fake_script(text="submitted"))
    wait_until(lambda: len(d.results()) == 2, 30, "both jobs")
    # strace writes each call as it returns: wait for the last move into done/.
    wait_until(lambda: sum(1 for c in syscalls(trace) if c.startswith("rename")
                           and "/done/" in c) >= 2, 10, "strace to log the moves")
    calls = syscalls(trace)
    d.kill_all()
    # Every lease published by rename was fsynced first.
    leases = [(i, c) for i, c in enumerate(calls) if c.startswith("rename")
              and re.search(r'"[^"]*/\.claim\.json\.[0-9a-f]+\.tmp", [^)]*claim\.json"', c)]
    assert len(leases) >= 2, calls
    for i, c in leases:
        tmp = re.search(r'"([^"]*/\.claim\.json\.[0-9a-f]+\.tmp)"', c)
        assert tmp and fsynced_before(calls, tmp.group(1), i), c
    # The bare file's audio was fsynced in its job directory before the move into done/.
    res = next(r for r in d.results() if r["source"]["name"] == "copied.wav")
    into_done = next(i for i, c in enumerate(calls) if c.startswith("rename")
                     and f'/done/{res["id"]}"' in c)
    assert fsynced_before(calls, str(d.spool / "processing" / res["id"] / "copied.wav"),
                          into_done), [c for c in calls if "copied" in c]
    assert d.wait_result(job)["text"] == "submitted"
    assert os.path.getsize(d.spool / "done" / res["id"] / "copied.wav") > 0
