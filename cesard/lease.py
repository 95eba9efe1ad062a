"""Leases: who holds a claim (one daemon start on one host) and when a claim's holder is
provably gone. The rules are the spool protocol's (:mod:`cesard.spool`, "Lease")."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import job as jobmod


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def pid_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parens: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19])


@dataclass(frozen=True)
class Claimer:
    """Who holds a claim: one daemon start on one host."""

    host: str
    boot_id: str
    pid: int
    pid_start: int | None
    token: str

    @classmethod
    def me(cls) -> Claimer:
        pid = os.getpid()
        return cls(jobmod.hostname(), boot_id(), pid, pid_start(pid), secrets.token_hex(6))

    @property
    def worker_name(self) -> str:
        return f"{self.host}:{self.pid}"

    def lease(self, now: float) -> bytes:
        d = {"host": self.host, "boot_id": self.boot_id, "pid": self.pid,
             "pid_start": self.pid_start, "token": self.token, "heartbeat": now}
        return json.dumps(d).encode()


def lease_orphaned(lease: dict[str, Any] | None, unchanged_for: float, me: Claimer,
                   lease_seconds: float) -> bool:
    """True when the claim's holder is gone (see the module docstring). ``unchanged_for``:
    how long this daemon has seen the lease (or the leaseless entry) stay exactly as it
    is, on its own clock: no other host's clock is ever compared with ours."""
    if lease is None:
        return unchanged_for > lease_seconds
    if lease.get("token") == me.token:
        return False
    if lease.get("host") == me.host:
        if lease.get("boot_id") != me.boot_id:
            return True
        pid = lease.get("pid")
        if not isinstance(pid, int):
            return True
        if pid == me.pid:
            return True  # an earlier start of this daemon, same pid reused
        return pid_start(pid) != lease.get("pid_start")
    return unchanged_for > lease_seconds
