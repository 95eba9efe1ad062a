"""The in-memory queue index: incoming/ entries in claim order.

Fed by inotify events and scans, so a claim never lists the directory. The
directory stays the truth: a popped entry may already be gone (another
claimer won), which the claim's rename tells us.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from cesard.spool import Entry


@dataclass
class Pending:
    """A bare file seen by a scan but not yet settled."""

    size: int
    mtime_ns: int
    since: float


class QueueIndex:
    def __init__(self) -> None:
        self._heap: list[tuple[tuple[int, str, str], str]] = []
        self._by_time: list[tuple[str, str]] = []  # (submitted_at, name), lazily cleaned
        self._entries: dict[str, Entry] = {}
        self.pending: dict[str, Pending] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def add(self, entry: Entry) -> None:
        self.pending.pop(entry.name, None)
        old = self._entries.get(entry.name)
        if old is not None and old.key == entry.key:
            return
        self._entries[entry.name] = entry
        heapq.heappush(self._heap, (entry.key, entry.name))
        heapq.heappush(self._by_time, (entry.key[1], entry.name))

    def discard(self, name: str) -> None:
        self._entries.pop(name, None)
        self.pending.pop(name, None)

    def pop(self) -> Entry | None:
        """The first entry in claim order, removed; None when empty."""
        while self._heap:
            key, name = heapq.heappop(self._heap)
            entry = self._entries.get(name)
            if entry is not None and entry.key == key:
                del self._entries[name]
                return entry
        return None

    def peek(self) -> Entry | None:
        while self._heap:
            key, name = self._heap[0]
            entry = self._entries.get(name)
            if entry is not None and entry.key == key:
                return entry
            heapq.heappop(self._heap)
        return None

    def oldest_key(self) -> str | None:
        """The earliest submission time queued (ISO), for 'oldest queued age'.

        Amortised O(log n): status is built at every job start and finish, and a
        scan of a 100,000-entry backlog each time tripled the time per job.
        """
        while self._by_time:
            when, name = self._by_time[0]
            entry = self._entries.get(name)
            if entry is not None and entry.key[1] == when:
                return when
            heapq.heappop(self._by_time)
        return None

    def names(self) -> set[str]:
        return set(self._entries)
