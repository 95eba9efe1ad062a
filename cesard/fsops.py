"""File-system primitives that a member of the spool cannot turn against the daemon.

Every file the daemon publishes is written by :func:`write_atomic` (temp file created
with ``O_EXCL | O_NOFOLLOW``, fsync, rename, fsync of the directory). What a member
dropped is opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``; once an
entry is claimed it is reached through file descriptors, never again through a path a
member can change (:func:`open_dir`). Renames that must not replace what is there use
:func:`rename_noreplace`; trees of any depth go with :func:`remove_tree` (iterative:
a 1,500-deep tree is no ``RecursionError``). JSON a member wrote is parsed with
:func:`parse_json` (size and depth bounded).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

# JSON a member may write (job.json, control requests) nests at most this deep.
MAX_JSON_DEPTH = 32
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


class BadJSON(ValueError):
    """JSON that is malformed, too large or nested too deeply (the message says which)."""


def parse_json(data: bytes, limit: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse JSON of at most ``limit`` bytes nested at most ``max_depth`` deep; raise
    :class:`BadJSON` naming the problem. The depth is checked before parsing, so no input
    reaches the parser's recursion limit."""
    if len(data) > limit:
        raise BadJSON(f"larger than {limit} bytes")
    depth = _depth(data)
    if depth > max_depth:
        raise BadJSON(f"nested {depth} levels deep (at most {max_depth})")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise BadJSON(f"not valid JSON ({e})") from None


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _depth(data: bytes) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (strings stripped first)."""
    depth = deepest = 0
    for ch in _STRING.sub(b"", data).translate(None, _NOT_BRACKETS):
        if ch in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def read_only(path: Path) -> bool:
    """Whether the filesystem of ``path`` is read-only now: mounted so, or turned so by an
    error (ext4's ``errors=remount-ro`` marks its superblock ``emergency_ro`` and refuses
    every write with EROFS while the mount still says rw)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
        dev = os.stat(path).st_dev
        mountinfo = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return False
    want = f"{os.major(dev)}:{os.minor(dev)}"
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] == want and " - " in line:
            supers = line.rsplit(" - ", 1)[1].split()[-1].split(",")
            if "ro" in supers or "emergency_ro" in supers:
                return True
    return False


def fsync_file(path: Path | str, dir_fd: int | None = None) -> None:
    """fsync the regular file ``path`` (opened read-only, never through a link, never
    blocking on a FIFO); anything else is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOENT, errno.EACCES, errno.ENXIO):
            return
        raise
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the entries of ``path`` durable. A member may not open a drop directory
    (mode 1730: no read bit); it syncs the spool's filesystem instead (syncfs(2)
    through the spool root, which members may read; the whole spool is one filesystem)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        _syncfs(Path(path).parent)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(near: Path) -> None:
    try:
        fd = os.open(near, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        os.sync()
        return
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def write_atomic(directory: Path, name: str, data: bytes, mode: int = 0o640,
                 durable: bool = True) -> None:
    """Write ``directory/name`` by temp file + rename (+ fsync when durable)."""
    tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    try:
        try:
            view = memoryview(data)
            while view:  # a nearly full disk takes part of a write before ENOSPC
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never leave a half-written temporary file behind
        raise
    if durable:
        fsync_dir(directory)


class NotRegular(ValueError):
    """What was opened is not a regular file, or is too large (the message says which)."""


def read_small(path: Path | str, limit: int, dir_fd: int | None = None) -> bytes:
    """Read a regular file of at most ``limit`` bytes without following a link or
    blocking on a FIFO (relative to ``dir_fd`` when given)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        name = os.path.basename(path)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular(f"{name} is not a regular file")
        if st.st_size > limit:
            raise NotRegular(f"{name} is larger than {limit} bytes")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)


def open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    """An ``O_PATH`` descriptor of the directory ``path`` itself, never of what a link
    there points to (raises NotADirectoryError for a link or any other kind). It needs
    no read permission and serves as ``dir_fd`` for the calls below."""
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotADirectoryError(errno.ENOTDIR, "a symbolic link", str(path)) from None
        raise


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def listdir_at(dir_fd: int) -> list[str]:
    """The names in the directory ``dir_fd`` (an ``O_PATH`` descriptor is reopened)."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def rename_noreplace(src: Path | str, dst: Path | str, src_dir_fd: int | None = None,
                     dst_dir_fd: int | None = None) -> None:
    """rename(2) that fails with EEXIST instead of replacing ``dst`` (renameat2
    RENAME_NOREPLACE; where the filesystem lacks it, a check then a rename)."""
    res = _libc.renameat2(_AT_FDCWD if src_dir_fd is None else src_dir_fd, os.fsencode(src),
                          _AT_FDCWD if dst_dir_fd is None else dst_dir_fd, os.fsencode(dst),
                          _RENAME_NOREPLACE)
    if res == 0:
        return
    err = ctypes.get_errno()
    if err not in (errno.EINVAL, errno.ENOSYS):
        raise OSError(err, os.strerror(err), str(src), None, str(dst))
    try:  # no RENAME_NOREPLACE here (some FUSE filesystems)
        os.lstat(dst, dir_fd=dst_dir_fd)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), str(src), None, str(dst))


def remove_tree(path: Path | str, dir_fd: int | None = None) -> bool:
    """Remove ``path`` and everything below it without following a link, at any depth
    (no recursion: subdirectories' entries are moved up a level, then the emptied
    directory goes). What cannot be removed stays; True when all of it went."""
    try:
        st = os.lstat(path, dir_fd=dir_fd)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(path, dir_fd=dir_fd)
            return True
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                      dir_fd=dir_fd)
    except OSError:
        return False
    try:
        while _flatten_once(top):
            pass
    finally:
        os.close(top)
    try:
        os.rmdir(path, dir_fd=dir_fd)
        return True
    except OSError:
        return False


def _flatten_once(top: int) -> bool:
    """Remove the files of ``top``; move its subdirectories' entries up into it and remove
    the emptied subdirectories. True when something changed (call again)."""
    changed = False
    for entry in os.scandir(top):
        try:
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=top)
                changed = True
                continue
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                          | os.O_CLOEXEC, dir_fd=top)
        except OSError:
            continue
        try:
            for inner in os.scandir(sub):
                try:
                    if inner.is_dir(follow_symlinks=False):
                        rename_noreplace(inner.name, f".rm-{secrets.token_hex(8)}",
                                         src_dir_fd=sub, dst_dir_fd=top)
                    else:
                        os.unlink(inner.name, dir_fd=sub)
                    changed = True
                except OSError:
                    continue
        finally:
            os.close(sub)
        try:
            os.rmdir(entry.name, dir_fd=top)
            changed = True
        except OSError:
            pass
    return changed


def file_sha256(path: Path | str, dir_fd: int | None = None,
                limit: int = 0) -> tuple[str, os.stat_result] | None:
    """sha256 and fstat of a regular file, opened without following links or blocking;
    None if it is unreadable, not a regular file, or larger than ``limit`` (when set)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return None
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or (limit and st.st_size > limit):
            return None
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest(), st
