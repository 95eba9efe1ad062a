"""What the daemon shows of itself: ``state/status.json`` (``cesarctl status``, the
systemd status line) and the Prometheus metrics file.

Several daemons on one spool (hosts sharing storage) each also write their own
``state/hosts/HOST.json`` (the same content): status.json is whichever wrote last,
``cesarctl status`` shows every host from there.

``snapshot`` builds status.json from the supervisor's state (read only);
:meth:`cesard.supervisor.Supervisor.publish_status` decides when it is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cesard import job as jobmod
from cesard.metrics import write_textfile
from cesard.spool import read_small

if TYPE_CHECKING:
    from cesard.supervisor import Supervisor

log = logging.getLogger("cesard")


def snapshot(sup: Supervisor, now: float) -> dict[str, Any]:
    """The content of status.json now."""
    running = []
    for w in sup.workers:
        for j in w.jobs.values():
            elapsed = now - j.started
            eta = None
            if j.fraction > 0.01:
                eta = round(elapsed * (1 - j.fraction) / j.fraction, 1)
            # A shared owner-mode spool: no member learns another's file names.
            shown = jobmod.display_name(j.audio) if sup.spool.guard is None else None
            running.append({"id": j.id, "file": shown,
                            "worker": w.pid, "progress": round(j.fraction, 4),
                            "started_at": j.started_at, "elapsed_s": round(elapsed, 1),
                            "eta_s": eta, "duration": j.duration})
    oldest = sup.index.oldest_key()
    oldest_age = None
    if oldest:
        oldest_age = round(sup.clock.shown(now) - jobmod.parse_iso(oldest).timestamp(), 1)
    return {
        "schema": 1, "pid": os.getpid(), "host": sup.me.host,
        "started_at": jobmod.iso(sup.started), "updated_at": jobmod.iso(sup.clock.shown(now)),
        "state": "stopped" if sup.exit_code is not None else
        "stopping" if sup.stopping else ("running" if sup.ready_sent
                                                   else "starting"),
        "engine": sup.cfg.engine, "model": sup.cfg.job_defaults().model,
        "device": sup.placement.device, "compute_type": sup.placement.compute_type,
        "workers": [w.to_status() for w in sup.workers],
        "models": [dict(m.to_dict(), workers=[w.pid for w in sup.workers
                                              if m.name in w.models])
                   for m in sup.model_infos],
        "running": running,
        # incoming/: indexed, settling, and refused (they stay there until fixed)
        "queue": {"incoming": len(sup.index) + len(sup.index.pending)
                  + sum(1 for n in sup.blocked if n not in sup.index),
                  "processing": len(running) + (1 if sup.held else 0),
                  "deferred": len(sup.deferred), "done": sup.on_disk["done"],
                  "failed": sup.on_disk["failed"]},
        "oldest_queued_age_s": oldest_age,
        "indexing": sup.indexing is not None,  # the start-up listing of the queue goes on
        "finished_since_start": dict(sup.metrics.finished),
        "disk_full": bool(sup.disk_full_logged),
        "queue_capacity": sup.cfg.queue_capacity,
    }

def line(st: dict[str, Any]) -> str:
    """The one-line status systemd shows (STATUS=)."""
    q = st["queue"]
    parts = [f"{q['incoming']} queued", f"{q['deferred']} deferred"]
    for r in st["running"]:
        parts.append(f"{r['id']} {r['progress'] * 100:.0f}%")
    if not st["running"]:
        parts.insert(0, "idle")
    return "; ".join(parts)


def write_metrics(sup: Supervisor, st: dict[str, Any]) -> None:
    assert sup.cfg.metrics_textfile
    text = sup.metrics.render(st["queue"], len(st["running"]), str(sup.spool.root),
                               st["workers"])
    try:
        write_textfile(sup.cfg.metrics_textfile, text)
        sup.metrics_error_logged = False
    except OSError as e:
        if not sup.metrics_error_logged:
            log.error("cannot write metrics_textfile %s: %s; fix the path or its "
                      "permissions", sup.cfg.metrics_textfile, e.strerror)
            sup.metrics_error_logged = True


def warn_if_shared_with_a_local_daemon(sup: Supervisor) -> None:
    """Say so when another cesard on this host already serves the spool: both claim
    (each job still runs once), and until status is per daemon (issue 14) each
    overwrites the other's status.json."""
    try:
        st = json.loads(read_small(sup.spool.dir("state") / "status.json", 1 << 20))
        pid = int(st["pid"])
        other = (st.get("host") == sup.me.host and pid != os.getpid()
                 and st.get("state") != "stopped"
                 and b"cesard" in Path(f"/proc/{pid}/cmdline").read_bytes())
    except (OSError, ValueError, KeyError, TypeError, jobmod.JobError):
        return
    if other:
        log.warning("another cesard (pid %d) already serves spool %s on this host; both "
                    "claim jobs (each still runs once), but status.json shows one of them",
                    pid, sup.spool.root)

