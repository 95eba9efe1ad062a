"""The in-memory queue index: incoming/ entries in claim order, fair among owners.

Fed by inotify events and scans, so a claim never lists the directory. The
directory stays the truth: a popped entry may already be gone (another
claimer won), which the claim's rename tells us.

Order: the highest priority first; within a priority, owners take turns
(round robin: one user's thousand queued files never starve another user's
one); within one owner, submission time, then name.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

from cesard.entries import Entry


@dataclass
class Pending:
    """A bare file seen by a scan but not yet settled."""

    size: int
    mtime_ns: int
    since: float


Item = tuple[tuple[int, str, str], str]


class QueueIndex:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        # (priority, owner) → heap of (key, name), lazily cleaned
        self._heaps: dict[tuple[int, int], list[Item]] = {}
        # priority → owners in turn order (dicts keep insertion order)
        self._turns: dict[int, dict[int, None]] = {}
        self._by_time: list[tuple[str, str]] = []  # (submitted_at, name), lazily cleaned
        self._per_owner: Counter[int] = Counter()
        self._bytes: Counter[int] = Counter()
        self.pending: dict[str, Pending] = {}

    def entries(self) -> list[Entry]:
        """Every indexed entry (no order)."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def queued(self, owner: int) -> tuple[int, int]:
        """Entries and audio bytes ``owner`` has in the index."""
        return self._per_owner[owner], self._bytes[owner]

    def add(self, entry: Entry) -> None:
        self.pending.pop(entry.name, None)
        old = self._entries.get(entry.name)
        if old == entry:
            return
        if old is not None:
            self._forget(old)
        self._entries[entry.name] = entry
        self._per_owner[entry.owner] += 1
        self._bytes[entry.owner] += entry.size
        prio = entry.key[0]
        heapq.heappush(self._heaps.setdefault((prio, entry.owner), []), (entry.key, entry.name))
        self._turns.setdefault(prio, {}).setdefault(entry.owner, None)
        heapq.heappush(self._by_time, (entry.key[1], entry.name))

    def _forget(self, entry: Entry) -> None:
        self._per_owner[entry.owner] -= 1
        self._bytes[entry.owner] -= entry.size
        if self._per_owner[entry.owner] <= 0:
            del self._per_owner[entry.owner]
            self._bytes.pop(entry.owner, None)

    def discard(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        if entry is not None:
            self._forget(entry)
        self.pending.pop(name, None)

    def _valid_top(self, prio: int, owner: int) -> Entry | None:
        heap = self._heaps.get((prio, owner))
        while heap:
            key, name = heap[0]
            entry = self._entries.get(name)
            if entry is not None and entry.key == key and entry.owner == owner:
                return entry
            heapq.heappop(heap)
        self._heaps.pop((prio, owner), None)
        return None

    def _next(self, take: bool) -> Entry | None:
        for prio in sorted(self._turns):
            turns = self._turns[prio]
            for owner in list(turns):
                entry = self._valid_top(prio, owner)
                if entry is None:
                    del turns[owner]  # nothing left: it rejoins at the end when it adds
                    continue
                if take:
                    heapq.heappop(self._heaps[(prio, owner)])
                    del self._entries[entry.name]
                    self._forget(entry)
                    del turns[owner]
                    turns[owner] = None  # its turn is used: to the back of the line
                return entry
            del self._turns[prio]
        return None

    def pop(self) -> Entry | None:
        """The next entry in claim order, removed; None when empty."""
        return self._next(take=True)

    def peek(self) -> Entry | None:
        return self._next(take=False)

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
