"""Who may see and touch which job: owners, the spool's layout, POSIX ACLs.

Two modes (config ``privacy``):

``owner`` (the default)
    Each job is its owner's alone, and the kernel enforces it. ``tmp/``,
    ``incoming/`` and ``control/`` are mode 1730 (members may create entries
    but not list them, and the sticky bit keeps them from renaming or
    removing what is not theirs) with a default ACL that makes everything a
    member creates there readable by the daemon's user and by nobody else.
    A claimed job lives in a directory the daemon makes (mode 0750, owned by
    the daemon's user) whose access and default ACLs grant its owner (and
    ``admin_group``) read access only; every file the daemon writes there
    inherits that. Members can list job ids in the other state directories
    but open nothing of another's job.
``group``
    The shared behaviour of one team's pipeline: ``tmp/``, ``incoming/`` and
    ``control/`` are 2770, results 2750, so every member of the group reads
    every job.

A *private* spool (its root has no group or other permission bits, as
``cesard --init`` makes it without ``--group``) needs none of this: only the
daemon's user can enter it.

The owner of a job is the uid that owns the entry dropped into ``incoming/``
(the file or the directory): the kernel sets it, a member cannot forge it,
and it is never read from ``job.json``.

ACLs are set by :mod:`cesard.acl`: with pylibacl where it is installed, else as
the kernel's extended attributes (no compiler needed).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from cesard import acl
from cesard.job import user_name

MODES = ("owner", "group")


class PrivacyError(Exception):
    """The spool cannot give the configured privacy (exit 78: a configuration problem)."""


@dataclass(frozen=True)
class DirSpec:
    """One spool directory as installed: its mode and whether members drop entries there."""

    name: str
    mode: int
    drop: bool  # members create entries here (tmp/, incoming/, control/)


def layout(privacy: str) -> list[DirSpec]:
    """The spool's directories and modes for ``privacy`` (``cesard --init``, tmpfiles.d)."""
    if privacy == "owner":
        drop, kept = 0o1730, 0o0750
    else:
        drop, kept = 0o2770, 0o2750
    specs = [DirSpec("", 0o0750, False)]
    for name in ("tmp", "incoming", "control"):
        specs.append(DirSpec(name, drop, True))
    for name in ("processing", "deferred", "done", "failed", "state"):
        specs.append(DirSpec(name, kept, False))
    return specs


def drop_acl_text(daemon: str | int) -> str:
    """The default ACL of a drop directory (owner mode), in setfacl/tmpfiles syntax."""
    return f"d:u::rwx,d:u:{daemon}:rwx,d:g::---,d:m::rwx,d:o::---"


def group_id(name: str | None) -> int | None:
    """The gid of a group name (None for None); PrivacyError if it does not exist."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise PrivacyError(f"group {name!r} does not exist; create it (groupadd {name}) or "
                           "fix the key") from None


def in_group(uid: int, gid: int | None) -> bool:
    """True when user ``uid`` belongs to group ``gid`` (primary or supplementary)."""
    if gid is None:
        return False
    try:
        pw = pwd.getpwuid(uid)
        g = grp.getgrgid(gid)
    except KeyError:
        return False
    return pw.pw_gid == gid or pw.pw_name in g.gr_mem


def may_act_on(sender: int, owner: int | None, admin_gid: int | None) -> bool:
    """A request from ``sender`` may change a job of ``owner``: its owner, root, an admin."""
    return sender == 0 or sender == owner or in_group(sender, admin_gid)


def sees_all(uid: int | None, mode: str, admin_group: str | None) -> bool:
    """``uid`` may read every member's jobs: ``privacy: group``, root, or an admin."""
    if mode == "group":
        return True
    if uid is None:
        return False
    try:
        return may_act_on(uid, None, group_id(admin_group))
    except PrivacyError:
        return uid == 0


def is_shared(root: Path) -> bool:
    """Others than the daemon's user may enter the spool (group or other bits on its root)."""
    return bool(os.stat(root).st_mode & 0o077)


FAKE_ENGINE_ENV = "CESARD_TEST_FAKE_ENGINE"


def fake_engine_refusal(engine: str, root: Path) -> str | None:
    """Why ``engine`` may not run on this spool, or None. The fake engine obeys the 'crash',
    'hang' and 'alloc' lines of any member's file: it is for tests, and refused on a spool
    shared with others unless the test environment says so (``CESARD_TEST_FAKE_ENGINE=1``)."""
    if engine != "fake" or os.environ.get(FAKE_ENGINE_ENV) == "1":
        return None
    try:
        if not is_shared(root):
            return None
    except OSError:
        return None
    return (f"engine: fake is refused on shared spool {root}: it obeys instructions in any "
            "member's file (crash, hang, alloc); set engine: faster-whisper (tests set "
            f"{FAKE_ENGINE_ENV}=1)")


# --- ACLs (cesard.acl) --------------------------------------------------------------------

def job_acl_text(owner: int | None, admin_gid: int | None) -> str:
    """Access ACL of a claimed job's directory: the daemon all, its owner and admins read."""
    entries = ["u::rwx"]
    if owner is not None:
        entries.append(f"u:{owner}:r-x")
    if admin_gid is not None:
        entries.append(f"g:{admin_gid}:r-x")
    entries += ["g::---", "m::r-x", "o::---"]
    return ",".join(entries)


def protect_job_dir(path: Path, owner: int | None, admin_gid: int | None) -> None:
    """Give a daemon-made job directory its owner's access and default ACLs.

    Files the daemon later creates in it (mode 0640) inherit read access for the
    owner and admins only; what is already there (job.json, the lease) gets it now.
    """
    text = job_acl_text(owner, admin_gid)
    os.chmod(path, 0o750)
    acl.apply(path, text)
    acl.apply(path, text, default=True)
    file_acl = text.replace("u::rwx", "u::rw-").replace("r-x", "r--")
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False) and entry.stat(
                follow_symlinks=False).st_uid == os.geteuid():
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                acl.apply(fd, file_acl)
            finally:
                os.close(fd)


def probe(root: Path) -> None:
    """PrivacyError unless the spool's filesystem stores POSIX default ACLs."""
    probe_dir = root / f".acl-probe-{os.getpid()}"
    try:
        probe_dir.mkdir(mode=0o700)
    except FileExistsError:
        pass
    try:
        acl.apply(probe_dir, f"u::rwx,u:{os.geteuid()}:rwx,g::---,m::rwx,o::---",
                  default=True)
    except OSError as e:
        raise PrivacyError(
            f"the filesystem of spool {root} does not support POSIX ACLs ({e.strerror}), which "
            "privacy: owner needs on a shared spool. Either mount it with ACLs (ext4/xfs: the "
            "'acl' option; NFS: a server and version that pass them), or set 'privacy: group' "
            "in the configuration (every member then reads every job)") from e
    finally:
        probe_dir.rmdir()


def apply_layout(root: Path, privacy: str, daemon_uid: int, gid: int | None,
                 admin_gid: int | None) -> None:
    """Create the spool's directories with their owners, modes and ACLs (idempotent).

    Run by ``cesard --init`` as root (with ``gid`` the submitters' group) and by the
    daemon at start on directories it owns.
    """
    for spec in layout(privacy):
        path = root / spec.name if spec.name else root
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise PrivacyError(f"{path} is not a directory; remove it and start again")
        if os.geteuid() == 0:
            os.chown(path, daemon_uid, st.st_gid if gid is None else gid)
        elif st.st_uid != os.geteuid():
            continue  # installed by root: checked by check_layout
        os.chmod(path, spec.mode)
        if privacy == "owner" and spec.drop:
            acl.apply(path, drop_acl_text(daemon_uid).replace("d:", ""), default=True)


@dataclass(frozen=True)
class Guard:
    """What the daemon does to keep each job its owner's (a shared ``owner`` spool)."""

    admin_gid: int | None

    def protect_dir(self, path: Path, owner: int | None) -> None:
        protect_job_dir(path, owner, self.admin_gid)

    def grant_file(self, path: Path, uid: int) -> None:
        """Let ``uid`` read one file the daemon wrote (a reply to its request)."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            acl.apply(fd, f"u::rw-,u:{uid}:r--,g::---,m::r--,o::---")
        finally:
            os.close(fd)


def prepare(root: Path, privacy: str, admin_group: str | None) -> tuple[str, Guard | None]:
    """At daemon start: make sure the spool gives ``privacy``; PrivacyError otherwise.

    Returns a line for the log and the :class:`Guard` of a shared ``owner`` spool
    (None where the mode bits suffice: ``group``, or a private spool).
    """
    admin_gid = group_id(admin_group)
    if privacy == "group":
        return "privacy: group (every member of the spool's group reads every job)", None
    if not is_shared(root):
        return (f"privacy: owner; spool {root} is private (mode "
                f"{stat.S_IMODE(os.stat(root).st_mode):04o}): only its user enters it"), None
    probe(root)
    me = os.geteuid()
    if os.stat(root).st_uid == me:
        apply_layout(root, "owner", me, None, admin_gid)
    check_layout(root, "owner", me)
    return ("privacy: owner; each job is readable by its owner"
            + (f" and group {admin_group}" if admin_group else "") + " only (POSIX ACLs)",
            Guard(admin_gid))


def check_layout(root: Path, privacy: str, daemon_uid: int) -> None:
    """PrivacyError naming the first directory whose mode or default ACL is not as installed."""
    for spec in layout(privacy):
        path = root / spec.name if spec.name else root
        st = os.lstat(path)
        if stat.S_IMODE(st.st_mode) != spec.mode:
            raise PrivacyError(
                f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not {spec.mode:04o} as "
                f"privacy: {privacy} needs; run 'cesard --init' as root, or "
                "systemd-tmpfiles --create")
        if privacy == "owner" and spec.drop:
            if f"user:{daemon_uid}:rwx" not in acl.default_entries(path):
                raise PrivacyError(
                    f"{path} lacks the default ACL entry u:{user_name(daemon_uid)}:rwx that "
                    "makes members' files readable by the daemon; run 'cesard --init' as root, "
                    "or systemd-tmpfiles --create")
