"""What the daemon shows of itself: ``state/status.json`` (``cesarctl status``, the
systemd status line) and the Prometheus metrics file.

Several daemons on one spool (hosts sharing storage) each also write their own
``state/hosts/HOST.json`` (the same content): status.json is whichever wrote last,
``cesarctl status`` shows every host from there.

:func:`snapshot` builds status.json from the :class:`Facts` the supervisor gathers
from its parts; the :class:`Publisher` decides when it is written and writes it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import job as jobmod
from cesard.fsops import write_atomic
from cesard.hosts import HOSTS, host_file_name
from cesard.metrics import Metrics, write_textfile
from cesard.models import ModelInfo
from cesard.pool import WorkerProc
from cesard.spool import Spool, read_small

log = logging.getLogger("cesard")

# A job's start or finish reaches status.json within this long (batched under load).
URGENT_S = 0.05


@dataclass
class Facts:
    """What status.json says, as the parts know it at one step."""

    host: str
    started: float  # wall-clock time the daemon started
    state: str  # starting, running, stopping, stopped
    engine: str
    model: str
    device: str
    compute_type: str
    workers: list[WorkerProc]
    model_infos: list[ModelInfo]
    incoming: int
    held: bool
    deferred: int
    on_disk: dict[str, int]
    oldest_key: str | None
    indexing: bool
    finished: dict[str, int]
    disk_full: bool
    queue_capacity: int
    private_names: bool  # a shared owner-mode spool: no member learns another's file names
    shown_now: float  # the time to show (Clock.shown)


def snapshot(f: Facts, now: float) -> dict[str, Any]:
    """The content of status.json now."""
    running: list[dict[str, Any]] = []
    waiting: list[dict[str, Any]] = []
    for w in f.workers:
        for j in w.jobs.values():
            shown = None if f.private_names else jobmod.display_name(j.audio)
            if not j.begun:  # handed to a worker that is busy with another of its jobs
                waiting.append({"id": j.id, "file": shown, "worker": w.pid,
                                "claimed_at": j.started_at,
                                "waited_s": round(now - j.started, 1)})
                continue
            elapsed = now - j.started
            eta = None
            if j.fraction > 0.01:
                eta = round(elapsed * (1 - j.fraction) / j.fraction, 1)
            running.append({"id": j.id, "file": shown,
                            "worker": w.pid, "progress": round(j.fraction, 4),
                            "started_at": j.started_at, "elapsed_s": round(elapsed, 1),
                            "eta_s": eta, "duration": j.duration})
    oldest_age = None
    if f.oldest_key:
        oldest_age = round(f.shown_now - jobmod.parse_iso(f.oldest_key).timestamp(), 1)
    return {
        "schema": 1, "pid": os.getpid(), "host": f.host,
        "started_at": jobmod.iso(f.started), "updated_at": jobmod.iso(f.shown_now),
        "state": f.state,
        "engine": f.engine, "model": f.model,
        "device": f.device, "compute_type": f.compute_type,
        "workers": [w.to_status() for w in f.workers],
        "models": [dict(m.to_dict(), workers=[w.pid for w in f.workers
                                              if m.name in w.models])
                   for m in f.model_infos],
        "running": running,  # begun by a worker
        "waiting": waiting,  # claimed for a worker that is busy with another of them
        # incoming/: indexed, settling, and refused (they stay there until fixed)
        "queue": {"incoming": f.incoming,
                  "processing": len(running) + len(waiting) + (1 if f.held else 0),
                  "deferred": f.deferred, "done": f.on_disk["done"],
                  "failed": f.on_disk["failed"]},
        "oldest_queued_age_s": oldest_age,
        "indexing": f.indexing,  # the start-up listing of the queue goes on
        "finished_since_start": dict(f.finished),
        "disk_full": f.disk_full,
        "queue_capacity": f.queue_capacity,
    }


def line(st: dict[str, Any]) -> str:
    """The one-line status systemd shows (STATUS=)."""
    q = st["queue"]
    parts = [f"{q['incoming']} queued", f"{q['deferred']} deferred"]
    for r in st["running"]:
        parts.append(f"{r['id']} {r['progress'] * 100:.0f}%")
    if st.get("waiting"):
        parts.append(f"{len(st['waiting'])} waiting for a worker")
    if not st["running"]:
        parts.insert(0, "idle")
    return "; ".join(parts)


class Publisher:
    """Writes status.json (and this host's copy, and the metrics file): within 50 ms
    when a job started or finished, at most every 0.5 s for progress, and every 5 s
    regardless (``health`` watches its age). Verbs: changed, due, write."""

    def __init__(self, spool: Spool, host: str, metrics: Metrics) -> None:
        self.spool = spool
        self.host = host
        self.metrics = metrics
        self.dirty = True
        self.urgent = False
        self.next = 0.0
        self.metrics_error_logged = False

    def changed(self, urgent: bool = False) -> None:
        """Something status.json shows changed (``urgent``: a job started or finished)."""
        self.dirty = True
        self.urgent = self.urgent or urgent

    def due(self, now: float) -> bool:
        since = now - (self.next - 5.0)
        urgent = self.urgent and since >= URGENT_S
        return urgent or not (since < 0.5 or (not self.dirty and now < self.next))

    def force(self) -> None:
        """The next :meth:`due` is True (the last status at a stop)."""
        self.dirty = True
        self.next = 0.0

    def write(self, st: dict[str, Any], now: float, metrics_textfile: str | None) -> None:
        self.dirty = self.urgent = False
        self.next = now + 5.0
        data = (json.dumps(st, indent=1) + "\n").encode()
        hosts = self.spool.dir("state") / HOSTS
        try:
            write_atomic(self.spool.dir("state"), "status.json", data, mode=0o644,
                         durable=False)
            hosts.mkdir(mode=0o755, exist_ok=True)
            write_atomic(hosts, host_file_name(self.host), data, mode=0o644, durable=False)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        if metrics_textfile:
            self._write_metrics(st, metrics_textfile)

    def _write_metrics(self, st: dict[str, Any], path: str) -> None:
        text = self.metrics.render(st["queue"], len(st["running"]), st["workers"])
        try:
            write_textfile(path, text)
            self.metrics_error_logged = False
        except OSError as e:
            if not self.metrics_error_logged:
                log.error("cannot write metrics_textfile %s: %s; fix the path or its "
                          "permissions", path, e.strerror)
                self.metrics_error_logged = True


def warn_if_shared_with_a_local_daemon(spool: Spool, host: str) -> None:
    """Say so when another cesard on this host already serves the spool: both claim
    (each job still runs once), and each overwrites the other's status.json (each
    host's own is in state/hosts/)."""
    try:
        st = json.loads(read_small(spool.dir("state") / "status.json", 1 << 20))
        pid = int(st["pid"])
        other = (st.get("host") == host and pid != os.getpid()
                 and st.get("state") != "stopped"
                 and b"cesard" in Path(f"/proc/{pid}/cmdline").read_bytes())
    except (OSError, ValueError, KeyError, TypeError, jobmod.JobError):
        return
    if other:
        log.warning("another cesard (pid %d) already serves spool %s on this host; both "
                    "claim jobs (each still runs once), but status.json shows one of them",
                    pid, spool.root)
