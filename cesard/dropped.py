"""What a member dropped, read without trusting a path the member can still change.

A claim renames the dropped entry into a directory the daemon made
(``processing/ID/submission`` for a directory, ``processing/ID/NAME`` for a bare
file). Until then, and even after (a member may hold a descriptor of his own
directory), the member can swap what is there: a directory for a symbolic link to
another member's job, a file for a link. So everything here works through file
descriptors: the dropped directory is opened with ``O_PATH | O_NOFOLLOW |
O_DIRECTORY`` (:func:`cesard.fsops.open_dir`) and ``fstat`` must show the device and
inode that the claim checked before its rename; its ``job.json`` and audio are opened
and renamed relative to that descriptor; the audio, once in the daemon's directory,
must still be the file that was checked. Anything else is that entry's error
(``UnsupportedFile``), never a path followed.

The daemon writes its own ``submitted_at`` (when the entry was published: its ctime
before the claim), ``errors``, ``attempts``, ``owner`` and ``submitter``; only the
options and the audio's name come from the member's ``job.json``.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import fsops
from cesard import job as jobmod
from cesard.job import JobMeta

META = "job.json"
LEASE = "claim.json"
RESULT = "result.json"
SUBMISSION = "submission"  # a dropped job directory inside its claim, until adopted
SEGMENTS = "segments.jsonl"  # segments as the worker decodes them (cesarctl follow)
CHECKPOINT = "checkpoint.json"  # how far SEGMENTS is complete (cesard/checkpoint.py)
RESERVED = {META, LEASE, RESULT, SUBMISSION, SEGMENTS, CHECKPOINT}


@dataclass
class Adopted:
    """What adoption made of a claimed entry: its job.json and any error of what was
    dropped (the job then fails with it)."""

    meta: JobMeta
    bare: bool
    error: jobmod.JobError | None


def changed(job_id: str) -> jobmod.UnsupportedFile:
    return jobmod.UnsupportedFile(
        f"{job_id} was replaced by another entry (a link, or another file or directory) "
        "while the daemon claimed it; nothing was read through it. Submit the audio again")


def read_meta(dir_fd: int, job_id: str) -> JobMeta:
    """``job.json`` of the directory ``dir_fd``, validated; InvalidJob naming the problem."""
    try:
        data = fsops.read_small(META, jobmod.MAX_JOB_JSON_BYTES, dir_fd)
    except FileNotFoundError as e:
        raise jobmod.InvalidJob(
            f"job directory {job_id} has no job.json; submit audio with "
            "'cesarctl submit' or copy a bare audio file into incoming/") from e
    except fsops.NotRegular as e:
        raise jobmod.InvalidJob(f"{job_id}/{e}") from None
    except OSError as e:
        raise jobmod.InvalidJob(f"cannot read job.json of {job_id}: {e.strerror}") from e
    return JobMeta.from_json(data, where=f"{job_id}/job.json")


def candidates(dir_fd: int) -> list[str]:
    """Names in a job directory that may be its audio."""
    return [n for n in fsops.listdir_at(dir_fd)
            if n not in RESERVED and not n.startswith(".") and not n.startswith("transcript.")]


def audio_name(name: str) -> str:
    """The name a dropped audio file keeps in its job directory."""
    name = jobmod.safe_name(name)
    return "audio-" + name if name in RESERVED or name.startswith("transcript.") else name


def bare_meta(job_id: str, name: str, st: os.stat_result) -> JobMeta:
    """The job.json of a bare file: default options, arrived at its mtime, from its owner."""
    return JobMeta(id=job_id, options={}, submitted_at=jobmod.iso(st.st_mtime),
                   submitter=jobmod.user_name(st.st_uid), source_name=name, owner=st.st_uid)


def adopt_dir(job_fd: int, job_id: str, checked: os.stat_result | None) -> Adopted:
    """Adopt ``SUBMISSION`` of the job directory ``job_fd``: its options, and its audio
    renamed up into the job directory (module docstring). ``checked``: the lstat the
    claim made before its rename (None in recovery: what is there is taken as it is)."""
    now = os.lstat(SUBMISSION, dir_fd=job_fd)
    checked = checked or now
    meta = JobMeta(id=job_id, options={}, submitted_at=jobmod.iso(checked.st_ctime),
                   owner=now.st_uid)
    try:
        if not stat.S_ISDIR(checked.st_mode):
            raise jobmod.UnsupportedFile(f"{job_id} was dropped as a {kind(checked.st_mode)}; "
                                         "drop a regular audio file or a job directory")
        try:
            sub = fsops.open_dir(SUBMISSION, job_fd)
        except NotADirectoryError:
            raise changed(job_id) from None
        try:
            if not fsops.same_file(os.fstat(sub), checked):
                raise changed(job_id)
            dropped = read_meta(sub, job_id)
            meta.options = dropped.options
            meta.source_name = _take_audio(sub, job_fd, job_id, dropped.source_name)
        finally:
            os.close(sub)
    except jobmod.JobError as e:
        return Adopted(meta, False, e)
    return Adopted(meta, False, None)


def _take_audio(sub: int, job_fd: int, job_id: str, named: str | None) -> str:
    """Rename the dropped directory's audio up into the job directory; its name there."""
    name = pick_audio(sub, job_id, named)
    before = os.lstat(name, dir_fd=sub)
    final = audio_name(name)
    fsops.rename_noreplace(name, final, src_dir_fd=sub, dst_dir_fd=job_fd)
    if not fsops.same_file(os.lstat(final, dir_fd=job_fd), before):
        raise changed(job_id)
    return final


def adopt_bare(job_fd: int, job_id: str, checked: os.stat_result | None) -> Adopted:
    """Adopt a bare file the claim renamed into the job directory ``job_fd``."""
    names = candidates(job_fd)
    if len(names) != 1:
        raise jobmod.InvalidJob(f"claim {job_id} holds {len(names)} files")
    now = os.lstat(names[0], dir_fd=job_fd)
    meta = bare_meta(job_id, names[0], checked or now)
    meta.owner = now.st_uid
    if checked is not None and not fsops.same_file(now, checked):
        return Adopted(meta, True, changed(job_id))
    return Adopted(meta, True, None)


def pick_audio(dir_fd: int, job_id: str, named: str | None) -> str:
    """The name of the job's audio in the directory ``dir_fd``: ``named`` (job.json's
    ``source_name``) or the only candidate; InvalidJob otherwise."""
    names = candidates(dir_fd)
    if named is not None:
        if named not in names:
            raise jobmod.InvalidJob(
                f"{job_id}/job.json names audio {jobmod.display_name(named)!r} but the job "
                "directory has no such file")
        return named
    if len(names) == 1:
        return names[0]
    raise jobmod.InvalidJob(
        f"job directory {job_id} holds {len(names)} candidate audio files "
        f"({', '.join(map(jobmod.display_name, names[:5]))}); put exactly one, or name "
        "it in job.json 'source_name'")


def check_audio(st: os.stat_result, name: str, max_bytes: int) -> None:
    """UnsupportedFile, EmptyFile or FileTooLarge naming the file, from its lstat."""
    shown = jobmod.display_name(name)
    if stat.S_ISLNK(st.st_mode):
        raise jobmod.UnsupportedFile(
            f"{shown} is a symbolic link; copy the audio itself into incoming/ "
            "(links are never followed)")
    if not stat.S_ISREG(st.st_mode):
        raise jobmod.UnsupportedFile(f"{shown} is a {kind(st.st_mode)}, not a regular "
                                     "file; only regular audio files are transcribed")
    if st.st_nlink > 1:
        raise jobmod.UnsupportedFile(
            f"{shown} has {st.st_nlink} hard links; copy the audio itself into incoming/ "
            "(hard links, like symbolic links, are never taken)")
    if st.st_size == 0:
        raise jobmod.EmptyFile(f"{shown} is empty (0 bytes); copy the complete file again")
    if max_bytes and st.st_size > max_bytes:
        raise jobmod.FileTooLarge(
            f"{shown} has {st.st_size} bytes, more than max_file_bytes={max_bytes}; "
            "split it or raise max_file_bytes")


def describe_source(job_dir: Path, meta: JobMeta, hash_limit: int) -> dict[str, Any]:
    """``result.json`` ``source`` of a job that never reached a worker: the dropped
    name, its type, bytes and sha256 (hashed only when it is a single-link regular file
    of at most ``hash_limit`` bytes; 0: never). Read through descriptors: a link where
    the dropped directory was is described as a link, never followed."""
    missing = {"name": jobmod.display_name(meta.source_name or meta.id), "type": "missing",
               "bytes": None, "sha256": None}
    try:
        job_fd = fsops.open_dir(job_dir)
    except OSError:
        return missing
    base = None
    try:
        try:
            sub = os.lstat(SUBMISSION, dir_fd=job_fd)
        except FileNotFoundError:
            sub = None
        if sub is not None and not stat.S_ISDIR(sub.st_mode):
            return {**missing, "type": kind(sub.st_mode)}
        base = fsops.open_dir(SUBMISSION, job_fd) if sub is not None else job_fd
        name = meta.source_name
        names = candidates(base)
        if name is None or name not in names:
            name = names[0] if len(names) == 1 else None
        if name is None:
            return {**missing, "type": "directory" if sub is not None else "missing"}
        st = os.lstat(name, dir_fd=base)
        regular = stat.S_ISREG(st.st_mode)
        digest = None
        if regular and st.st_nlink == 1 and hash_limit and st.st_size <= hash_limit:
            hashed = fsops.file_sha256(name, base, hash_limit)
            digest = hashed[0] if hashed else None
        return {"name": jobmod.display_name(name),
                "type": "regular file" if regular else kind(st.st_mode),
                "bytes": st.st_size if regular else None, "sha256": digest}
    except OSError:
        return missing
    finally:
        if base is not None and base != job_fd:
            os.close(base)
        os.close(job_fd)


def kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "special file"
