"""A worker killed by the kernel's OOM killer is said to be memory (issue 20).

The daemon runs in a memory cgroup of its own with a small limit (as a systemd service
with MemoryMax would); a job allocates past it with no worker_memory_limit, and the
kernel's OOM killer kills its worker. The job's error says it was memory and what to
do, not only "signal 9". Needs root and a writable memory cgroup (v1 or v2).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until

from cesard.oom import CGROUP_ROOT


def _memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        ident, controllers, path = line.split(":", 2)
        if ident == "0" and controllers == "" and (CGROUP_ROOT / "cgroup.controllers").exists():
            base = CGROUP_ROOT / path.lstrip("/")
            if "memory" in (base / "cgroup.subtree_control").read_text():
                return base
        elif "memory" in controllers.split(","):
            return CGROUP_ROOT / "memory" / path.lstrip("/")
    return None


@pytest.fixture
def small_cgroup() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a memory cgroup")
    base = _memory_cgroup()
    if base is None:
        pytest.skip("no memory cgroup controller here")
    cg = base / f"cesard-oom-{os.getpid()}"
    try:
        cg.mkdir()
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    limit = str(300 << 20)
    v1 = (cg / "memory.limit_in_bytes").exists()
    (cg / ("memory.limit_in_bytes" if v1 else "memory.max")).write_text(limit)
    if v1 and (cg / "memory.memsw.limit_in_bytes").exists():
        (cg / "memory.memsw.limit_in_bytes").write_text(limit)
    elif not v1 and (cg / "memory.swap.max").exists():
        (cg / "memory.swap.max").write_text("0")
    try:
        yield cg
    finally:
        def emptied() -> bool:
            for pid in (cg / "cgroup.procs").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            return not (cg / "cgroup.procs").read_text().split()

        wait_until(emptied, 10, "the test cgroup's processes to end")
        cg.rmdir()


def test_an_oom_killed_worker_is_said_to_be_memory(
        make_daemon: Callable[..., Daemon], small_cgroup: Path) -> None:
    d = make_daemon(workers=1, worker_memory_limit=0, max_attempts=1)
    enter = f'echo $$ > {small_cgroup / "cgroup.procs"} && exec "$@"'
    d.start(prefix=("sh", "-c", enter, "sh"))
    hungry = d.submit_bytes("hungry.wav", fake_script(alloc=2 << 30))
    res = d.wait_result(hungry, 60)
    assert res["status"] == "failed", res
    message = res["error"]["message"]
    assert "out-of-memory killer" in message and "worker_memory_limit" in message, message
    # The daemon survived and serves the next job.
    small = d.submit_bytes("small.wav", fake_script(text="fits"))
    assert d.wait_result(small, 30)["text"] == "fits"
