"""Per-owner limits on queued work (``max_queued_per_owner``, ``max_queued_bytes_per_owner``).

An entry that would pass its owner's limit is refused at once with QuotaExceeded (the
supervisor fails it into failed/, its file kept). Jobs the daemon itself put back in
incoming/ (requeued, retried: directories owned by the daemon's user) never count as new.
"""

from __future__ import annotations

import os
from pathlib import Path

from cesard import config as configmod
from cesard import job as jobmod
from cesard.entries import Entry
from cesard.index import QueueIndex


def over_limit(cfg: configmod.Config, index: QueueIndex, incoming: Path,
               entry: Entry) -> jobmod.QuotaExceeded | None:
    """The refusal for a new ``entry`` of ``incoming``, or None when it may queue."""
    if not (cfg.max_queued_per_owner or cfg.max_queued_bytes_per_owner):
        return None
    try:
        if os.lstat(incoming / entry.name).st_uid == os.geteuid():
            return None  # the daemon's own (a requeued or retried job): never refused
    except FileNotFoundError:
        return None
    count, size = index.queued(entry.owner)
    who = jobmod.user_name(entry.owner)
    shown = jobmod.display_name(entry.name)
    if cfg.max_queued_per_owner and count >= cfg.max_queued_per_owner:
        return jobmod.QuotaExceeded(
            f"{shown}: {who} already has {count} jobs queued, the most "
            f"max_queued_per_owner={cfg.max_queued_per_owner} allows; wait for some to "
            "finish, then 'cesarctl retry' this one")
    if cfg.max_queued_bytes_per_owner and size + entry.size > cfg.max_queued_bytes_per_owner:
        return jobmod.QuotaExceeded(
            f"{shown}: {who} has {size} bytes queued; {entry.size} more would pass "
            f"max_queued_bytes_per_owner={cfg.max_queued_bytes_per_owner}; wait for some "
            "to finish, then 'cesarctl retry' this one")
    return None
