"""Watching the spool: inotify (inotify-simple) with a polling fallback.

``watch: inotify`` requires inotify; ``poll`` never uses it (NFS, where
inotify sees nothing of other hosts); ``auto`` uses inotify when it can and
polls otherwise. With inotify the supervisor still rescans every
``rescan_interval`` in case an event was missed (queue overflow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify
from inotify_simple import flags as F

log = logging.getLogger("cesard.watch")

# ATTRIB: a chmod can make an entry the daemon refused readable (see Intake.refused).
INCOMING_MASK = F.CLOSE_WRITE | F.MOVED_TO | F.CREATE | F.DELETE | F.MOVED_FROM | F.ATTRIB
CONTROL_MASK = F.CLOSE_WRITE | F.MOVED_TO


@dataclass(frozen=True)
class Event:
    where: str  # "incoming" or "control"
    name: str
    settled: bool  # the writer is done (IN_CLOSE_WRITE or IN_MOVED_TO)
    removed: bool


class Watcher:
    """Reports changes in incoming/ and control/. ``fileno()`` is None when polling."""

    def __init__(self, root: Path, mode: str) -> None:
        self.mode = mode
        self._inotify: INotify | None = None
        self._wds: dict[int, str] = {}
        self.overflowed = False
        if mode == "poll":
            return
        try:
            ino = INotify(nonblocking=True)
            self._wds[ino.add_watch(root / "incoming", INCOMING_MASK)] = "incoming"
            self._wds[ino.add_watch(root / "control", CONTROL_MASK)] = "control"
            self._inotify = ino
        except OSError as e:
            if mode == "inotify":
                raise
            log.warning("inotify unavailable (%s); polling the spool instead", e)

    @property
    def polling(self) -> bool:
        return self._inotify is None

    def fileno(self) -> int | None:
        return self._inotify.fileno() if self._inotify else None

    def read(self) -> list[Event]:
        """Events since the last call (never blocks)."""
        if self._inotify is None:
            return []
        out = []
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return []
        for ev in events:
            if ev.mask & F.Q_OVERFLOW:
                self.overflowed = True
                continue
            where = self._wds.get(ev.wd)
            if where is None or not ev.name:
                continue
            removed = bool(ev.mask & (F.DELETE | F.MOVED_FROM))
            settled = bool(ev.mask & (F.CLOSE_WRITE | F.MOVED_TO))
            out.append(Event(where, ev.name, settled, removed))
        return out

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
