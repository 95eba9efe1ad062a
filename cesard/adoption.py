"""Adoption: what a claim moved into ``processing/ID`` becomes a job. A bare file gets
the ``job.json`` of its defaults; a dropped directory gives its options and its audio;
the owner is the uid that owned what was dropped, whatever it says (docs/privacy.md).
Reading what a member dropped, safely, is :mod:`cesard.dropped`'s."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cesard import dropped, fsops
from cesard import job as jobmod
from cesard.dropped import META, SUBMISSION
from cesard.fsops import write_atomic
from cesard.job import JobMeta
from cesard.privacy import Guard


@dataclass
class Claimed:
    """A claimed job: its directory in processing/ and what it holds."""

    id: str
    path: Path
    meta: JobMeta
    bare: bool
    error: jobmod.JobError | None = None  # what was dropped cannot run (fails the job)


def adopt(job_dir: Path, guard: Guard | None, st: os.stat_result | None = None,
          job_id: str | None = None) -> Claimed:
    """Turn what a claim moved into ``job_dir`` into a job (idempotent; recovery too).

    A bare file gets the ``job.json`` of its defaults. A dropped directory
    (``job_dir/submission``) gives its ``job.json`` options and its audio file,
    which moves up into ``job_dir``; the rest of it is removed. The owner is
    the uid that owns the dropped entry; ``submitter`` is that user's name,
    whatever the dropped ``job.json`` says. ``st`` is the entry's lstat before the
    claim's rename: what was renamed must be that same file or directory
    (:mod:`cesard.dropped`). A problem with what was dropped is kept in
    :attr:`Claimed.error` and fails the job.
    """
    job_id = job_id or job_dir.name
    job_fd = fsops.open_dir(job_dir)
    try:
        has_sub = _lexists_at(SUBMISSION, job_fd)
        if _lexists_at(META, job_fd) and not has_sub:
            return Claimed(job_id, job_dir, read_meta(job_dir), bare=False)
        got = (dropped.adopt_dir(job_fd, job_id, st) if has_sub
               else dropped.adopt_bare(job_fd, job_id, st))
    finally:
        os.close(job_fd)
    meta = got.meta
    meta.id = job_id
    meta.submitter = jobmod.user_name(meta.owner or 0)
    write_atomic(job_dir, META, meta.to_json())
    if has_sub and got.error is None:
        fsops.remove_tree(job_dir / SUBMISSION)
    elif has_sub and not stat.S_ISDIR(os.lstat(job_dir / SUBMISSION).st_mode):
        os.unlink(job_dir / SUBMISSION)  # a link put in its place: never kept, never read
    if guard is not None:
        guard.protect_dir(job_dir, meta.owner)
    return Claimed(job_id, job_dir, meta, bare=got.bare, error=got.error)

def candidates(job_dir: Path) -> list[str]:
    """Names in a job directory that may be its audio (:func:`dropped.candidates`)."""
    fd = fsops.open_dir(job_dir)
    try:
        return dropped.candidates(fd)
    finally:
        os.close(fd)


def read_meta(job_dir: Path, job_id: str | None = None) -> JobMeta:
    """``job.json`` of a job directory, validated; raises InvalidJob naming the problem."""
    job_id = job_id or job_dir.name
    try:
        fd = fsops.open_dir(job_dir)
    except OSError as e:
        raise jobmod.InvalidJob(f"{job_id} is not a job directory ({e.strerror})") from e
    try:
        return dropped.read_meta(fd, job_id)
    finally:
        os.close(fd)


def _lexists_at(name: str, dir_fd: int) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True
