"""Was it memory? The kernel's out-of-memory killer, seen from the daemon's cgroup.

A worker killed by the OOM killer dies of SIGKILL like any other; the cgroup that holds
the daemon (its systemd service) counts OOM kills: ``oom_kill`` in ``memory.events``
(cgroup v2) or ``memory.oom_control`` (cgroup v1). :class:`OomWatch` reads that counter
when a worker dies of a SIGKILL the daemon did not send: a higher count than before
says the worker was killed for memory, and the job's error says what to do.
"""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def counter_file(proc_cgroup: str, root: Path = CGROUP_ROOT) -> Path | None:
    """The file holding this process's cgroup OOM-kill count, from /proc/self/cgroup."""
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if ident == "0" and controllers == "":
            candidate = root / path.lstrip("/") / "memory.events"
        elif "memory" in controllers.split(","):
            candidate = root / "memory" / path.lstrip("/") / "memory.oom_control"
        else:
            continue
        if candidate.exists():
            return candidate
    return None


def read_count(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None


class OomWatch:
    """The cgroup's OOM-kill counter, as last seen."""

    def __init__(self) -> None:
        try:
            self._path = counter_file(Path("/proc/self/cgroup").read_text())
        except OSError:
            self._path = None
        self._seen = read_count(self._path)

    def killed_since(self) -> bool:
        """Whether the OOM killer killed a process of this cgroup since the last call."""
        now = read_count(self._path)
        before, self._seen = self._seen, now
        return now is not None and before is not None and now > before


ADVICE = ("the kernel's out-of-memory killer killed its worker (signal 9): the job needed "
          "more memory than the service may use; raise the service's memory (MemoryMax), "
          "or set worker_memory_limit so such a job fails alone, or use a smaller model or "
          "shorter audio")
