"""Each member's view of her own queued jobs, on a shared spool in ``privacy: owner``.

There a member may not list ``incoming/`` (it would show every member's file names),
so ``cesarctl list`` and ``status`` could not show her own queued jobs, nor say why a
file she copied in waits. The daemon, which lists it, publishes
``state/owners/UID.json`` for every member with entries there: each entry's name, id,
priority, submission time and state (``queued``; ``settling``: still being written;
``waiting``: the daemon may not take it, and what to do). The file is readable by that
uid alone (mode 0600 and an ACL entry for her; ``state/owners/`` may be entered, not
listed); a member with nothing queued has none. It is rewritten at most once a second,
when the queue changed, so it may lag a claim or a submission by that much.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from typing import Any

from cesard import job as jobmod
from cesard.entries import PRIORITY_RANK
from cesard.fsops import write_atomic
from cesard.hosts import OWNERS, view_path
from cesard.intake import Intake
from cesard.privacy import Guard
from cesard.spool import Spool

log = logging.getLogger("cesard")

PRIORITY_NAME = {rank: name for name, rank in PRIORITY_RANK.items()}
EVERY_S = 1.0
MAX_ROWS = 10_000  # a member's view lists at most this many entries (it says how many)


class OwnerViews:
    """Verb: step (publish what changed). Fields: the uids that have a view now."""

    def __init__(self, spool: Spool, guard: Guard | None, intake: Intake) -> None:
        self.spool = spool
        self.guard = guard
        self.intake = intake
        self.published: set[int] = set()
        self.seen: tuple[int, int, int, int] | None = None
        self.next = 0.0

    def step(self, now: float) -> None:
        if self.guard is None or now < self.next:
            return
        seen = self.intake.state()
        if seen == self.seen:
            return
        self.next = now + EVERY_S
        try:
            self._publish()
            self.seen = seen
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise  # the storage: the loop pauses (cesard.health)

    def views(self) -> dict[int, list[dict[str, Any]]]:
        """uid → that member's entries of incoming/."""
        out: dict[int, list[dict[str, Any]]] = {}
        for e in self.intake.queued_entries():
            out.setdefault(e.owner, []).append({
                "name": jobmod.display_name(e.name), "id": e.name if e.is_dir else None,
                "state": "queued", "priority": PRIORITY_NAME[e.key[0]],
                "submitted_at": e.key[1]})
        incoming = self.spool.dir("incoming")
        for name, why in self.intake.unqueued().items():
            try:
                st = os.lstat(incoming / name)
            except OSError:
                continue
            row: dict[str, Any] = {"name": jobmod.display_name(name), "id": None,
                                   "state": "settling",
                                   "submitted_at": jobmod.iso(st.st_mtime)}
            if why:
                row.update(state="waiting", why=why)
            out.setdefault(st.st_uid, []).append(row)
        return out

    def _publish(self) -> None:
        assert self.guard is not None
        folder = self.spool.dir("state") / OWNERS
        folder.mkdir(mode=0o710, exist_ok=True)
        views = self.views()
        for uid, rows in views.items():
            rows.sort(key=lambda r: str(r.get("submitted_at")))
            data = {"uid": uid, "updated_at": jobmod.iso(time.time()), "total": len(rows),
                    "entries": rows[:MAX_ROWS]}
            name = view_path(self.spool.dir("state"), uid).name
            write_atomic(folder, name, (json.dumps(data) + "\n").encode(), mode=0o600,
                         durable=False)
            self.guard.grant_file(folder / name, uid)
        for uid in self.published - set(views):
            try:
                view_path(self.spool.dir("state"), uid).unlink()
            except FileNotFoundError:
                pass
        self.published = set(views)
