"""What the queue sees of an entry of incoming/: its place in the claim order (priority,
then submission time, then name: the spool protocol's "Order"), its owner and size
(per-owner limits), and the options it must share to be batched with others."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import dropped, fsops
from cesard import job as jobmod

IGNORED_SUFFIXES = (".part", ".tmp", ".partial", "~")
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}


def is_ignored_name(name: str) -> bool:
    """Names a writer is still working on: never taken from incoming/."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


def batch_group(options: Any) -> str | None:
    """The options a job must share with others to be decoded with them (as written in its
    job.json; a bare file has none), or None when it is never batched (exclusive, word
    timestamps, or options that are not a mapping)."""
    if not isinstance(options, dict):
        return None
    if options.get("exclusive") or options.get("word_timestamps"):
        return None
    return json.dumps([options.get(k) for k in ("model", "language", "task", "beam_size",
                                                "vad_filter", "initial_prompt")])


NO_OPTIONS = batch_group({})  # a bare file's: the configured defaults


@dataclass(frozen=True)
class Entry:
    """An entry of incoming/ as the queue sees it."""

    name: str
    is_dir: bool
    key: tuple[int, str, str]
    owner: int = 0  # uid: fair share and per-owner limits go by it
    size: int = 0  # bytes of its audio (per-owner byte limit)
    group: str | None = ""  # the options that must match to batch it with others; None: never


def entry_of(incoming: Path, name: str) -> Entry | None:
    """The queue's view of ``incoming/name`` (its order key, owner, size, batch group),
    or None if it is gone or ignored. A directory's job.json is read through a
    descriptor of that directory (never through a link a member put in its place since
    the lstat); anything unreadable queues with defaults and the claim fails it with the
    reason."""
    if is_ignored_name(name):
        return None
    path = incoming / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return Entry(name, False, (PRIORITY_RANK["normal"], jobmod.iso(st.st_mtime), name),
                     st.st_uid, st.st_size, NO_OPTIONS)
    prio, when, owner, size = "normal", jobmod.iso(st.st_mtime), st.st_uid, 0
    group: str | None = None
    try:
        fd = fsops.open_dir(path)
        try:
            if not fsops.same_file(os.fstat(fd), st):
                raise dropped.changed(name)
            meta = dropped.read_meta(fd, name)
            when = meta.submitted_at
            p = meta.options.get("priority")
            prio = p if isinstance(p, str) and p in PRIORITY_RANK else "normal"
            if st.st_uid == os.geteuid() and meta.owner is not None:
                owner = meta.owner  # a job the daemon requeued: its job.json is its own
            if meta.source_name:
                size = os.lstat(meta.source_name, dir_fd=fd).st_size
            group = batch_group(meta.options)
        finally:
            os.close(fd)
    except (OSError, jobmod.JobError):
        pass  # a bad job still queues; the claim fails it with the reason
    return Entry(name, True, (PRIORITY_RANK[prio], when, name), owner, size, group)
