"""The queue as the daemon knows it: what waits in incoming/ (indexed in claim order,
or settling, or refused until its owner fixes it) and what waits in deferred/ for its
retry. Names come from inotify events, rescans and the start-up listing (a slice per
loop step, so READY does not wait for a long queue); an entry past its owner's limits
is refused at once through the lifecycle. The claim order itself is
:class:`cesard.index.QueueIndex`'s.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator

from cesard import limits
from cesard.clock import Clock
from cesard.entries import Entry
from cesard.index import Pending, QueueIndex
from cesard.lifecycle import Lifecycle
from cesard.quarantine import Quarantine
from cesard.settings import Settings
from cesard.spool import Spool

log = logging.getLogger("cesard")


class Intake:
    """Verbs: list (start-up), add, discard, rescan, undefer, pop/peek (via ``index``).
    Fields: the index, the deferred jobs and when they are due, the refused names."""

    def __init__(self, spool: Spool, settings: Settings, clock: Clock, quarantine: Quarantine,
                 jobs: Lifecycle, changed: Callable[[bool], None]) -> None:
        self.spool = spool
        self.settings = settings
        self.clock = clock
        self.quarantine = quarantine
        self.jobs = jobs
        self.changed = changed
        self.index = QueueIndex()
        self.deferred: dict[str, float] = {}  # name → when its retry is due (loop time)
        # incoming/ entries the daemon may not take, by name → (st_ctime_ns when refused,
        # what its owner can do); a chmod (IN_ATTRIB) or any other change of ctime brings
        # them back.
        self.refused: dict[str, tuple[int, str]] = {}
        self.changes = 0  # counts what may change a member's view (cesard.owners)
        self.listing: Iterator[str] | None = None  # the start-up listing, until indexed
        self.listing_since = 0.0

    # --- what the lifecycle tells (cesard.lifecycle.Queue) -------------------------

    def queued(self, name: str, now: float) -> None:
        """``name`` is (back) in incoming/, published whole."""
        self.add(name, now, settled=True)

    def put_back(self, entry: Entry) -> None:
        """An entry popped for a claim that could not be made (a full disk)."""
        self.index.add(entry)

    def deferred_until(self, name: str, due: float) -> None:
        self.deferred[name] = due

    def blocked(self, name: str, why: str) -> None:
        """Leave an entry the daemon may not take where it is, saying once what to do."""
        try:
            ctime = os.lstat(self.spool.dir("incoming") / name).st_ctime_ns
        except FileNotFoundError:
            return
        if name not in self.refused:
            log.warning("%s; it stays in incoming/ and is taken once that is fixed", why)
        self.refused[name] = (ctime, why)
        self.changes += 1

    def forget(self, name: str) -> None:
        self.index.discard(name)
        self.deferred.pop(name, None)

    # --- indexing -----------------------------------------------------------------

    def start(self, now: float) -> None:
        """List deferred/ now and incoming/ a slice per step (:meth:`step`)."""
        self.listing = self.spool.scan("incoming")
        self.listing_since = time.monotonic()
        self._scan_deferred(now)

    @property
    def indexing(self) -> bool:
        """The start-up listing of incoming/ goes on (claims wait for it)."""
        return self.listing is not None

    def step(self, now: float, budget: float = 0.05) -> None:
        """Index the next names of the start-up listing of incoming/, for ``budget`` s."""
        if self.listing is None:
            return
        deadline = time.monotonic() + budget
        for i, name in enumerate(self.listing):
            if name not in self.index and name not in self.index.pending:
                self.add(name, now, settled=False)
            if i % 128 == 127 and time.monotonic() >= deadline:
                return
        self.listing = None
        self.changed(False)
        log.info("indexed %d queued job(s) in %.1f s", len(self.index) + len(self.index.pending),
                 time.monotonic() - self.listing_since)

    def add(self, name: str, now: float, settled: bool) -> None:
        """An entry of incoming/ was seen (an unexpected error sets it aside)."""
        if self.quarantine.holds("incoming", name):
            return
        with self.quarantine.guard("incoming", name, "indexing"):
            self._index(name, now, settled)
        self.changes += 1

    def discard(self, name: str) -> None:
        self.index.discard(name)
        self.changes += 1

    def _index(self, name: str, now: float, settled: bool) -> None:
        entry = self.spool.entry_key(name)
        if entry is None:
            self.index.discard(name)
            self.refused.pop(name, None)
            return
        if name in self.refused:
            try:
                if os.lstat(self.spool.dir("incoming") / name).st_ctime_ns == \
                        self.refused[name][0]:
                    return  # unchanged since it was refused
            except FileNotFoundError:
                return
            del self.refused[name]
        if settled or (entry.is_dir and
                       os.path.lexists(self.spool.dir("incoming") / name / "job.json")):
            # A job dir is published whole by rename; one made in place (mkdir, cp -r)
            # without job.json yet waits for the settle rule like a bare file.
            self._enqueue(entry, now)
            return
        try:
            st = os.lstat(self.spool.dir("incoming") / name)
        except FileNotFoundError:
            self.index.discard(name)
            return
        seen = self.index.pending.get(name)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.index.pending[name] = Pending(st.st_size, st.st_mtime_ns, now)
        elif now - seen.since >= self.settings.cfg.settle_seconds:
            self._enqueue(entry, now)

    def _enqueue(self, entry: Entry, now: float) -> None:
        """Index a settled entry, or fail it at once past its owner's limits."""
        if entry.name not in self.index:
            err = limits.over_limit(self.settings.cfg, self.index, self.spool.dir("incoming"),
                                    entry)
            if err is not None:
                self.jobs.reject(entry, err, now)
                return
        self.index.add(entry)

    def rescan(self, now: float) -> None:
        """List incoming/ and deferred/ once; new entries join the index."""
        names = set(self.spool.scan("incoming"))
        for gone in self.index.names() - names:
            self.index.discard(gone)
        for gone in set(self.index.pending) - names:
            self.index.pending.pop(gone, None)
        for gone in set(self.refused) - names:
            del self.refused[gone]
        self.changes += 1
        self.quarantine.forget("incoming", names)
        known = self.index.names()
        for name in names - known:
            self.add(name, now, settled=False)
        self._scan_deferred(now)
        self.changed(False)

    def _scan_deferred(self, now: float) -> None:
        deferred = set(self.spool.scan("deferred"))
        for name in deferred - set(self.deferred):
            due = self.spool.due(name, now)
            self.deferred[name] = now if due is None else self.clock.from_wall(due)
        for gone in set(self.deferred) - deferred:
            del self.deferred[gone]
        self.quarantine.forget("deferred", deferred)

    def undefer(self, now: float) -> None:
        """Deferred jobs whose retry is due go back to incoming/."""
        for name, due in list(self.deferred.items()):
            if due <= now and not self.quarantine.holds("deferred", name):
                with self.quarantine.guard("deferred", name, "queueing again"):
                    if self.jobs.undefer(name):
                        self.add(name, now, settled=True)
                    del self.deferred[name]

    def check_pending(self, now: float) -> None:
        """Entries still settling: queued once unchanged for settle_seconds."""
        for name in list(self.index.pending):
            self.add(name, now, settled=False)

    def waiting(self) -> int:
        """Entries of incoming/: indexed, settling, and refused (they stay there)."""
        return (len(self.index) + len(self.index.pending)
                + sum(1 for n in self.refused if n not in self.index))

    def state(self) -> tuple[int, int, int, int]:
        """Changes only when what members' views show may have changed."""
        return self.changes, len(self.index), len(self.index.pending), len(self.refused)

    def queued_entries(self) -> list[Entry]:
        """Indexed entries of incoming/ (no order)."""
        return self.index.entries()

    def unqueued(self) -> dict[str, str]:
        """Entries of incoming/ not indexed: settling ("") or refused (what to do)."""
        out = dict.fromkeys(self.index.pending, "")
        out.update((n, why) for n, (_, why) in self.refused.items() if n not in self.index)
        return out

    def empty(self) -> bool:
        return (self.listing is None and not len(self.index) and not self.index.pending
                and not self.deferred)
