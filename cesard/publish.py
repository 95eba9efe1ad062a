"""The writers' side of the spool protocol (docs/spool.md, "Handing in work"): a job
directory built in tmp/ and published into incoming/ by one rename, a control request
published into control/ the same way, and the wait for the daemon's answer to it.
What ``cesarctl submit``, ``cancel`` and ``retry`` do; scripts may do the same by
hand."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from cesard import fsops
from cesard import job as jobmod
from cesard.dropped import RESERVED
from cesard.entries import is_ignored_name
from cesard.fsops import fsync_dir, write_atomic
from cesard.job import JobMeta
from cesard.spool import META, Spool

REPLY_PREFIX = ".reply-"
MAX_REQUEST_BYTES = 4096


def submit(spool: Spool, audio: Path, options: dict[str, Any], submitter: str,
           name: str | None = None) -> str:
    """Publish a job directory for ``audio``; return its id.

    The directory is built in tmp/, every file fsynced, then renamed into
    incoming/ in one step: readers never see a half-built job.
    """
    job_id, build = start(spool)
    name = audio_name(name or audio.name)
    try:
        with open(audio, "rb") as src, open(build / name, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        finish(spool, job_id, build, name, options, submitter)
    except BaseException:
        fsops.remove_tree(build)
        raise
    return job_id


def start(spool: Spool) -> tuple[str, Path]:
    """A new job id and its directory in tmp/, where the audio is written (by
    :func:`submit`, or streamed by cesard-http) before :func:`finish`."""
    job_id = jobmod.new_job_id()
    build = spool.dir("tmp") / job_id
    build.mkdir(mode=0o770)
    os.chmod(build, 0o2770 if spool.dir("tmp").stat().st_mode & stat.S_ISGID else 0o770)
    return job_id, build


def audio_name(name: str) -> str:
    """The name the audio file gets in its job directory."""
    name = jobmod.safe_name(name)
    if is_ignored_name(name) or name in RESERVED:
        name = "audio" + (Path(name).suffix if Path(name).suffix.isascii() else "")
    return name


def finish(spool: Spool, job_id: str, build: Path, name: str, options: dict[str, Any],
           submitter: str) -> None:
    """Write job.json next to the audio ``name`` (written and fsynced) and publish the
    directory into incoming/ by one rename."""
    os.chmod(build / name, 0o660)
    meta = JobMeta(id=job_id, options=options, submitted_at=jobmod.iso(jobmod.utcnow()),
                   submitter=submitter, source_name=name)
    write_atomic(build, META, meta.to_json())
    os.rename(build, spool.dir("incoming") / job_id)
    fsync_dir(spool.dir("incoming"))


def request(spool: Spool, action: str, job_id: str, by: str) -> str:
    """Drop a control request (``cancel``, ``retry``) for the daemon."""
    if not jobmod.valid_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    name = f"{action}.{job_id}.{secrets.token_hex(3)}.json"
    data = json.dumps({"action": action, "id": job_id, "by": by,
                       "at": jobmod.iso(jobmod.utcnow())}).encode()
    write_atomic(spool.dir("tmp"), name, data)
    os.rename(spool.dir("tmp") / name, spool.dir("control") / name)
    return name


def none_to(job_id: str, action: str) -> str:
    """The one answer a member gets for a job that is not theirs, whether it exists or
    not (the daemon's and cesarctl's): neither its owner nor its existence is told."""
    return (f"no job you may {action} has id {job_id} (only a job's owner, root or a member "
            f"of admin_group may {action} it); check the id with 'cesarctl list'")


def reply_name(request: str) -> str:
    return REPLY_PREFIX + request


def wait_reply(control_dir: Any, name: str, timeout: float) -> dict[str, Any] | None:
    """For clients: the daemon's answer to request ``name``, or None past ``timeout``."""
    path = control_dir / reply_name(name)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            with os.fdopen(fd, "rb") as f:
                try:
                    data = json.loads(f.read(MAX_REQUEST_BYTES))
                except ValueError:
                    data = None
            if isinstance(data, dict):
                try:
                    path.unlink()  # possible where the sticky bit allows (group mode)
                except OSError:
                    pass
                return data
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
