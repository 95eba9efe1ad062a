"""POSIX ACLs for the privacy of a shared spool (:mod:`cesard.privacy`), with or without
a compiler on the machine.

With pylibacl installed (``pip install cesard[acl]`` or Debian's python3-pylibacl, a
binding to libacl), it sets them. pylibacl ships no wheels: it builds from source and
needs ``python3-dev`` and ``gcc``, which a minimal Debian lacks. Without it, the ACL is
written the way libacl itself writes it: as the ``system.posix_acl_access`` or
``system.posix_acl_default`` extended attribute, in the kernel's format
(``include/uapi/linux/posix_acl_xattr.h``: a version, then sorted entries of tag,
permissions and id), with :func:`os.setxattr`. Both take the same short text with
numeric ids (``u::rwx,u:1000:r-x,g::---,m::r-x,o::---``).
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any

VERSION = 2
TAGS = {"u": 0x01, "U": 0x02, "g": 0x04, "G": 0x08, "m": 0x10, "o": 0x20}
NAMES = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask",
         0x20: "other"}
UNDEFINED_ID = 0xFFFFFFFF
ACCESS, DEFAULT = "system.posix_acl_access", "system.posix_acl_default"


def _binding() -> Any:
    try:
        import posix1e
    except ImportError:
        return None
    return posix1e


def encode(text: str) -> bytes:
    """The kernel's xattr value of a short ACL text with numeric ids."""
    entries = []
    for part in text.split(","):
        kind, ident, perms = part.strip().split(":")
        tag = TAGS[kind[0].upper() if ident and kind[0] in "ug" else kind[0]]
        bits = (4 if perms[0] == "r" else 0) | (2 if perms[1] == "w" else 0) | \
            (1 if perms[2] == "x" else 0)
        entries.append((tag, int(ident) if ident else UNDEFINED_ID, bits))
    entries.sort()
    return struct.pack("<I", VERSION) + b"".join(
        struct.pack("<HHI", tag, bits, ident) for tag, ident, bits in entries)


def decode(value: bytes) -> list[str]:
    """Long entries with numeric ids (``user:1000:rwx``) of an xattr value."""
    out = []
    for off in range(4, len(value) - 7, 8):
        tag, bits, ident = struct.unpack_from("<HHI", value, off)
        perms = ("r" if bits & 4 else "-") + ("w" if bits & 2 else "-") + \
            ("x" if bits & 1 else "-")
        who = str(ident) if tag in (0x02, 0x08) else ""
        out.append(f"{NAMES[tag]}:{who}:{perms}")
    return out


def apply(target: Path | int, text: str, default: bool = False) -> None:
    """Set the access (or, on a directory, the default) ACL of a path or an open fd.
    OSError (EOPNOTSUPP) where the filesystem stores none."""
    posix1e = _binding()
    if posix1e is not None:
        acl = posix1e.ACL(text=text)
        if isinstance(target, int):
            acl.applyto(target)
        else:
            acl.applyto(str(target),
                        posix1e.ACL_TYPE_DEFAULT if default else posix1e.ACL_TYPE_ACCESS)
        return
    os.setxattr(target if isinstance(target, int) else str(target),
                DEFAULT if default else ACCESS, encode(text))


def default_entries(path: Path) -> list[str]:
    """The default ACL of a directory as long entries with numeric ids."""
    posix1e = _binding()
    if posix1e is not None:
        acl = posix1e.ACL(filedef=str(path))
        text = acl.to_any_text(options=posix1e.TEXT_NUMERIC_IDS).decode()
        return [ln.strip() for ln in text.replace(",", "\n").splitlines() if ln.strip()]
    try:
        return decode(os.getxattr(str(path), DEFAULT))
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.EOPNOTSUPP):  # none set; none storable
            return []
        raise
