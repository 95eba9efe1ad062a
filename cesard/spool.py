"""The spool protocol: the layout, the order, and every move between states (claim,
finish, requeue, defer, recover), each one rename, durable before it is visible. The
protocol is written down in docs/spool.md ("The moves, step by step" names the
methods here); this module is its code.

Leases are :mod:`cesard.lease`; an entry's order key is :mod:`cesard.entries`; what
was dropped is read by :mod:`cesard.dropped`.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cesard import adoption, dropped, fsops
from cesard import job as jobmod
from cesard.adoption import Claimed
from cesard.entries import Entry, entry_of
from cesard.fsops import fsync_dir, write_atomic
from cesard.job import JobMeta
from cesard.lease import Claimer, lease_orphaned
from cesard.privacy import Guard

STATES = ("incoming", "processing", "deferred", "done", "failed")
DIRS = ("tmp", *STATES, "control", "state")
LEASE, META, RESULT = dropped.LEASE, dropped.META, dropped.RESULT
SUBMISSION, SEGMENTS, CHECKPOINT = dropped.SUBMISSION, dropped.SEGMENTS, dropped.CHECKPOINT
RESERVED = dropped.RESERVED
# A job that gave up in recovery: its audio is hashed for result.json up to this size.
RECOVERY_HASH_BYTES = 16 << 20
# The storage went away (a network filesystem's server restarting, a partition) or
# turned read-only (an ext4 error with errors=remount-ro, a remount): the daemon pauses,
# keeps every job and result, and retries, as for a full disk (cesard.health). EBADFD:
# a GlusterFS mount answers so for a file opened before its brick restarted.
STORAGE_ERRNOS = (errno.ENOTCONN, errno.EIO, errno.ESTALE, errno.EHOSTDOWN,
                  errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.ECONNABORTED, errno.ECONNRESET,
                  errno.EROFS, errno.EBADFD)


class SpoolError(Exception):
    """The spool itself is missing or unusable (not a job's fault)."""


class Unclaimable(PermissionError):
    """The daemon may not take this entry (unreadable file, immovable directory)."""


# --- durable file primitives (cesard/fsops.py) ------------------------------------

def read_small(path: Path, limit: int, dir_fd: int | None = None) -> bytes:
    """:func:`cesard.fsops.read_small`, raising InvalidJob for what is not a regular file
    of at most ``limit`` bytes."""
    try:
        return fsops.read_small(path, limit, dir_fd)
    except fsops.NotRegular as e:
        raise jobmod.InvalidJob(str(e)) from None


# --- the spool ----------------------------------------------------------------

class Spool:
    """A spool directory. All methods take and return names, never client paths."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        # Set by the daemon for a shared spool in privacy: owner (cesard.privacy).
        self.guard: Guard | None = None
        # processing/ name → (its lease as last seen, monotonic time it was first seen so)
        self.leases_seen: dict[str, tuple[str, float]] = {}
        self.job_dir_mode = 0o750

    def __repr__(self) -> str:
        return f"Spool({str(self.root)!r})"

    def dir(self, state: str) -> Path:
        return self.root / state

    def create(self) -> None:
        """Create the layout (idempotent). A new spool is private (its root mode 0700:
        only this user enters it); existing modes are left alone. ``cesard --init
        --group`` makes a shared one (:func:`cesard.privacy.apply_layout`)."""
        self.root.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.root.mkdir(mode=0o700)
        except FileExistsError:
            pass
        for d in DIRS:
            (self.root / d).mkdir(exist_ok=True)

    def check(self) -> None:
        """Raise :class:`SpoolError` naming the missing part of the layout."""
        for d in DIRS:
            p = self.root / d
            if not p.is_dir():
                raise SpoolError(f"spool {self.root}: {p} is missing; run 'cesard --init "
                                 f"--spool {self.root}' or start the daemon once to create it")

    # --- the queue ----------------------------------------------------------

    def entry_key(self, name: str) -> Entry | None:
        """:func:`cesard.entries.entry_of` of ``incoming/name``."""
        return entry_of(self.dir("incoming"), name)

    def scan(self, state: str = "incoming") -> Iterator[str]:
        """Names in a state directory (one listing; no ordering)."""
        with os.scandir(self.dir(state)) as it:
            for e in it:
                yield e.name

    def claim(self, entry: Entry, me: Claimer, now: float) -> Claimed | None:
        """Claim ``entry``; None if another claimer won (or it vanished).

        The claimer makes ``processing/ID`` itself (so nothing a member made is a
        running job's directory), writes its lease there, then renames the entry
        into it: the rename decides among racing claimers. :meth:`adopt` then takes
        the audio and options out of what was dropped, through descriptors, checking
        that it is what was lstat'ed here (:mod:`cesard.dropped`). A dropped directory
        keeps its name as its id only while no job of that id exists in any state.
        Raises :class:`Unclaimable` when the daemon may not take the entry (a file it
        cannot read, a directory it cannot move): it stays in incoming/ untouched.
        """
        src = self.dir("incoming") / entry.name
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and st.st_uid == os.geteuid():
            return self._claim_own_dir(entry.name, me, now)
        if stat.S_ISREG(st.st_mode):
            _check_readable(src, entry.name)
        dst = self._new_job_dir(self.free_id(entry.name) if is_dir else None)
        try:
            write_atomic(dst, LEASE, me.lease(now))
        except OSError as e:
            fsops.remove_tree(dst)
            if isinstance(e, FileNotFoundError):
                return None  # a recoverer removed our empty directory: try again later
            raise
        inner = SUBMISSION if is_dir else dropped.audio_name(entry.name)
        try:
            os.rename(src, dst / inner)
        except OSError as e:
            fsops.remove_tree(dst)
            if isinstance(e, FileNotFoundError):
                return None
            if e.errno in (errno.EACCES, errno.EPERM):
                raise Unclaimable(
                    f"{jobmod.display_name(entry.name)} (owner {jobmod.user_name(st.st_uid)}) "
                    f"cannot be moved by the daemon ({e.strerror}): give the daemon's user write "
                    "access to the directory, or submit with 'cesarctl submit'") from e
            raise
        try:
            claimed = adoption.adopt(dst, self.guard, st)
        except OSError:
            try:  # give the entry back as it was found (a full disk)
                fsops.rename_noreplace(dst / inner, src)
                fsops.remove_tree(dst)
            except OSError:
                pass  # recovery adopts it (see recover)
            raise
        fsync_dir(self.dir("processing"))
        return claimed

    def free_id(self, name: str) -> str | None:
        """``name`` as the id of a dropped job directory, or None (a new id is made) when
        it is not a valid id or a job of that id exists in any state: ids are the
        daemon's, and a member's entry never takes another job's."""
        if not jobmod.valid_id(name):
            return None
        for state in ("processing", "deferred", "done", "failed"):
            if os.path.lexists(self.dir(state) / name):
                return None
        return name

    def _claim_own_dir(self, name: str, me: Claimer, now: float) -> Claimed | None:
        """Claim a job directory the daemon's user made (a requeued or retried job, or
        one its own user dropped) by renaming it into processing/: its job.json,
        owner included, is the daemon's own."""
        src = self.dir("incoming") / name
        # A job the daemon put back in incoming/ left every other state: its name there
        # is free. A name a job still holds elsewhere gets a new id (never two results
        # under one id).
        job_id = self.free_id(name) or jobmod.new_job_id()
        for _ in range(100):
            dst = self.dir("processing") / job_id
            try:
                fsops.rename_noreplace(src, dst)
                break
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                job_id = jobmod.new_job_id()  # that id is running: take this one under a new id
        try:
            write_atomic(dst, LEASE, me.lease(now))
        except OSError:
            # No lease (a full disk): undo the claim rather than leave an entry
            # that only lease expiry would recover, with an attempt counted.
            try:
                fsops.rename_noreplace(dst, src)
            except OSError:
                pass
            raise
        fsync_dir(self.dir("processing"))
        st = os.lstat(dst)
        try:
            meta = self.read_meta(dst)
        except jobmod.JobError as e:
            meta = JobMeta(id=job_id, options={}, submitted_at=jobmod.iso(st.st_mtime),
                           owner=st.st_uid, submitter=jobmod.user_name(st.st_uid))
            return Claimed(job_id, dst, meta, bare=False, error=e)
        if meta.owner is None:
            meta.owner, meta.submitter = st.st_uid, jobmod.user_name(st.st_uid)
        if self.guard is not None:
            self.guard.protect_dir(dst, meta.owner)
        return Claimed(job_id, dst, meta, bare=False)

    def _new_job_dir(self, job_id: str | None) -> Path:
        """mkdir ``processing/ID`` (a new id when ``job_id`` is None or taken)."""
        for _ in range(100):
            path = self.dir("processing") / (job_id or jobmod.new_job_id())
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                job_id = None  # a job of that id is running: take this one under a new id
                continue
            os.chmod(path, self.job_dir_mode)
            return path
        raise OSError(errno.EEXIST, "no free job id in processing/")

    def holds(self, job_dir: Path, me: Claimer) -> bool:
        """Whether ``me`` still holds the claim of ``job_dir`` (its lease carries my token).

        The fence of every heartbeat and every finish, requeue or deferral: a host that
        was cut off past its lease finds the job recovered (gone from this path) or
        claimed again (another token) and lets it be. Other I/O errors are raised (the
        storage is away: the loop pauses and tries again)."""
        try:
            lease = json.loads(read_small(job_dir / LEASE, 1 << 16))
        except FileNotFoundError:
            return False
        except (ValueError, jobmod.JobError):
            return False
        return isinstance(lease, dict) and lease.get("token") == me.token

    def take_lease(self, job_dir: Path, me: Claimer, now: float) -> None:
        """Write ``me``'s lease into a job directory the daemon just moved into
        processing/ itself (a deferred job it cancels)."""
        write_atomic(job_dir, LEASE, me.lease(now))

    def heartbeat(self, job_id: str, me: Claimer, now: float) -> bool:
        """Refresh a running job's lease (durable like every lease: after a power cut the
        claimer of every job in processing/ is known, and a dead one recovered at once);
        False when the claim is no longer mine (:meth:`holds`)."""
        job_dir = self.dir("processing") / job_id
        try:
            if not self.holds(job_dir, me):
                return False
            write_atomic(job_dir, LEASE, me.lease(now))
        except OSError:
            pass  # a full disk or the storage away: the next heartbeat tries again
        return True

    def read_meta(self, job_dir: Path, job_id: str | None = None) -> JobMeta:
        """:func:`cesard.adoption.read_meta`."""
        return adoption.read_meta(job_dir, job_id)

    def find_audio(self, job_dir: Path, meta: JobMeta, max_bytes: int) -> tuple[str, int]:
        """Name and size of the job's audio in a claimed job directory (the daemon's own),
        checked with lstat only. Raises UnsupportedFile, EmptyFile or FileTooLarge naming
        the file."""
        fd = fsops.open_dir(job_dir)
        try:
            name = dropped.pick_audio(fd, job_dir.name, meta.source_name)
            st = os.lstat(name, dir_fd=fd)
        finally:
            os.close(fd)
        dropped.check_audio(st, name, max_bytes)
        return name, st.st_size

    def describe_source(self, job_dir: Path, meta: JobMeta, hash_limit: int) -> dict[str, Any]:
        """:func:`cesard.dropped.describe_source`."""
        return dropped.describe_source(job_dir, meta, hash_limit)

    # --- moves ---------------------------------------------------------------

    def _replace_meta(self, job_dir: Path, meta: JobMeta) -> None:
        write_atomic(job_dir, META, meta.to_json())

    def _clear_outputs(self, job_dir: Path) -> None:
        """Remove an attempt's outputs; SEGMENTS and CHECKPOINT stay for the next attempt
        to resume from (cesard/checkpoint.py)."""
        for n in os.listdir(job_dir):
            if n in (LEASE, RESULT) or n.startswith("transcript.") or n.startswith("."):
                p = job_dir / n
                if not p.is_dir():
                    p.unlink(missing_ok=True)

    def _move(self, src: Path, state: str, job_id: str) -> Path:
        """Rename a job dir into ``state`` without replacing anything there. In incoming/
        the job keeps its id: an entry a member put under that name is moved aside to a
        new name first (it queues as that member's own entry). Elsewhere a clashing name
        gets a suffix."""
        dst = self.dir(state) / job_id
        for _ in range(100):
            try:
                fsops.rename_noreplace(src, dst)
                break
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    raise
                if state == "incoming" and dst.name == job_id and self._displace(dst):
                    continue
                dst = self.dir(state) / f"{job_id}.{secrets.token_hex(2)}"
        fsync_dir(self.dir(state))
        return dst

    def _displace(self, path: Path) -> bool:
        """Move a member's entry that holds a job's id in incoming/ to a new name there;
        False when it is the daemon's own or cannot be moved."""
        try:
            if os.lstat(path).st_uid == os.geteuid():
                return False
            fsops.rename_noreplace(path, self.dir("incoming") / jobmod.new_job_id())
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def finish(self, job_id: str, state: str, result: dict[str, Any],
               outputs: dict[str, bytes], keep_audio: bool, audio: str | None,
               src: Path | None = None) -> Path:
        """Write result and outputs into the job dir, then rename it to done/ or failed/."""
        assert state in ("done", "failed")
        job_dir = src or self.dir("processing") / job_id
        for name in (*outputs, RESULT):
            p = job_dir / name
            if os.path.lexists(p) and not stat.S_ISREG(os.lstat(p).st_mode):
                fsops.remove_tree(p)  # junk where an output goes (a directory, a link): never ours
        for name, data in outputs.items():
            write_atomic(job_dir, name, data, mode=0o640, durable=False)
        write_atomic(job_dir, RESULT,
                     jobmod.json_bytes(result, indent=2),
                     mode=0o640, durable=False)
        if not keep_audio and audio:
            (job_dir / audio).unlink(missing_ok=True)
        if state == "done":
            (job_dir / CHECKPOINT).unlink(missing_ok=True)
        (job_dir / LEASE).unlink(missing_ok=True)
        # One fsync of the directory covers the outputs' renames above; the data
        # of each was written before it, so fsync the files' data first.
        for name in (*outputs, RESULT):
            fsops.fsync_file(job_dir / name)
        if keep_audio and audio and state == "done":
            # Its worker synced it when it opened it (cesard/worker.py): this is cheap.
            fsops.fsync_file(job_dir / audio)
        fsync_dir(job_dir)
        return self._move(job_dir, state, job_id)

    def requeue(self, job_id: str, meta: JobMeta | None = None) -> Path:
        """Put a claimed job back in incoming/ (its place is kept by submitted_at)."""
        job_dir = self.dir("processing") / job_id
        if meta is not None:
            self._replace_meta(job_dir, meta)
        self._clear_outputs(job_dir)
        return self._move(job_dir, "incoming", job_id)

    def defer(self, job_id: str, meta: JobMeta) -> Path:
        """Move a claimed job to deferred/ with ``meta.not_before`` set."""
        job_dir = self.dir("processing") / job_id
        self._replace_meta(job_dir, meta)
        self._clear_outputs(job_dir)
        return self._move(job_dir, "deferred", job_id)

    def undefer(self, name: str) -> bool:
        """deferred/name → incoming/name (keeping its id); False if someone else moved it."""
        try:
            self._move(self.dir("deferred") / name, "incoming", name)
        except FileNotFoundError:
            return False
        return True

    def due(self, name: str, now: float) -> float | None:
        """When deferred/name is due (epoch seconds), or None if unreadable."""
        try:
            meta = self.read_meta(self.dir("deferred") / name)
        except jobmod.JobError:
            return None
        if not meta.not_before:
            return 0.0
        return jobmod.parse_iso(meta.not_before).timestamp()

    def steal(self, name: str) -> Path | None:
        """Take an orphaned processing/ entry for recovery (exactly one wins)."""
        base = name.split("~", 1)[0]
        dst = self.dir("processing") / f"{base}~r{secrets.token_hex(3)}"
        try:
            os.rename(self.dir("processing") / name, dst)
        except FileNotFoundError:
            return None
        return dst

    def orphans(self, me: Claimer, now: float, lease_seconds: float) -> list[str]:
        """Entries of processing/ whose claimer is gone. Another host's claim is gone when
        its lease has not changed for ``lease_seconds`` of this daemon's own clock
        since this daemon first saw it so (its heartbeat time is never compared
        with our clock: a host whose clock is off neither loses live claims nor keeps
        dead ones); an entry first seen now counts from now."""
        out = []
        mono = now  # this daemon's own clock (steppable: run_once(now))
        seen: dict[str, tuple[str, float]] = {}
        for name in self.scan("processing"):
            path = self.dir("processing") / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                out.append(name)
                continue
            try:
                lease = json.loads(read_small(path / LEASE, 4096))
                if not isinstance(lease, dict):
                    lease = None
            except (OSError, ValueError, RecursionError, jobmod.JobError):
                lease = None
            if lease is None:
                try:
                    if not any(True for _ in os.scandir(path)):
                        os.rmdir(path)  # a claim of a bare file that never got its file
                        continue
                except OSError:
                    pass
            # What this entry looks like now; a live holder changes it at every heartbeat.
            look = (json.dumps(lease, sort_keys=True) if lease is not None
                    else f"{st.st_mtime_ns} {st.st_ctime_ns}")
            first = self.leases_seen.get(name)
            if first is None or first[0] != look:
                first = (look, mono)
            seen[name] = first
            if lease_orphaned(lease, mono - first[1], me, lease_seconds):
                out.append(name)
        self.leases_seen = seen
        return out

    def recover(self, name: str, max_attempts: int, now: float, reason: str) -> tuple[str, str]:
        """Recover one orphaned processing/ entry; return (new state, id) or ("", "")."""
        stolen = self.steal(name)
        if stolen is None:
            return "", ""
        base = name.split("~", 1)[0]
        if not stolen.is_dir() or stolen.is_symlink():
            return "incoming", self._move(stolen, "incoming", base).name  # the claim rejects it
        if not os.path.lexists(stolen / META) or os.path.lexists(stolen / SUBMISSION):
            adopted = self._adopt_cut_claim(stolen, base)
            if adopted is not None:
                return adopted
        try:
            meta = self.read_meta(stolen)
        except jobmod.JobError:
            self._clear_outputs(stolen)
            return "incoming", self._move(stolen, "incoming", base).name
        meta.id = base
        meta.attempts += 1  # it ran; a stop of its daemon is not charged to it, though
        stops = jobmod.interruptions(meta) + 1
        limit = jobmod.interruption_limit(max_attempts)
        if stops >= limit:
            err = jobmod.WorkerCrashed(
                f"{reason}; its daemon stopped {stops} times while it ran (at most {limit}, "
                f"5 x max_attempts): it may be what stops it; 'cesarctl retry' runs it again")
            self._clear_outputs(stolen)
            source = self.describe_source(stolen, meta, RECOVERY_HASH_BYTES)
            result = jobmod.make_result(meta, "failed", None, source, None, jobmod.iso(now), "",
                                        meta.attempts, error=err)
            return "failed", self.finish(base, "failed", result, {}, True, None, stolen).name
        meta.errors.append({**jobmod.WorkerCrashed(reason).to_dict(), "interrupted": True})
        self._clear_outputs(stolen)
        self._replace_meta(stolen, meta)
        return "incoming", self._move(stolen, "incoming", base).name

    def clean_tmp(self, now: float, max_age: float = 86400.0) -> list[str]:
        """Remove entries of tmp/ untouched for ``max_age`` seconds: builds that a
        crashed writer never published (published entries are never in tmp/)."""
        removed = []
        for name in list(self.scan("tmp")):
            path = self.dir("tmp") / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if now - max(st.st_mtime, st.st_ctime) < max_age:
                continue
            if stat.S_ISDIR(st.st_mode):
                fsops.remove_tree(path)
            else:
                path.unlink(missing_ok=True)
            removed.append(name)
        return removed

    def _adopt_cut_claim(self, stolen: Path, base: str) -> tuple[str, str] | None:
        """Finish a claim cut short before its ``job.json`` was written.

        With nothing dropped in it, the claim never took its entry (still in
        incoming/): the directory goes. Otherwise the job never ran: it is adopted
        (:meth:`adopt`) and goes back to incoming/ without an attempt counted.
        """
        names = adoption.candidates(stolen)
        if not names and not os.path.lexists(stolen / SUBMISSION):
            fsops.remove_tree(stolen)
            return "", ""
        try:
            adoption.adopt(stolen, self.guard, job_id=base)
        except jobmod.JobError:
            return None
        self._clear_outputs(stolen)
        return "incoming", self._move(stolen, "incoming", base).name

    def locate(self, job_id: str) -> tuple[str, Path] | None:
        """The state and path of a job by id, or None."""
        if not jobmod.valid_id(job_id):
            return None
        for state in STATES:
            p = self.dir(state) / job_id
            if os.path.lexists(p):
                return state, p
        return None


def _check_readable(path: Path, name: str) -> None:
    """Unclaimable unless the daemon may open the regular file ``path`` for reading."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK))
    except FileNotFoundError:
        return  # gone: the claim's rename says so
    except PermissionError as e:
        owner = jobmod.user_name(os.lstat(path).st_uid)
        raise Unclaimable(
            f"{jobmod.display_name(name)} (owner {owner}) is not readable by the daemon: its "
            "mode leaves the daemon's ACL entry no read bit (a copy of a 0600 file); its "
            f"owner can run 'chmod g+r {jobmod.display_name(name)}' in incoming/ (the group "
            "stays shut out by the ACL), or submit with 'cesarctl submit'") from e
