"""cesard.acl without pylibacl: the ACL written as the kernel's extended attribute is the
one setfacl and libacl write, and the kernel enforces it (the privacy tests run real
other users against it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cesard import acl


@pytest.fixture
def no_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acl, "_binding", lambda: None)


def test_the_short_text_encodes_sorted_as_the_kernel_wants() -> None:
    value = acl.encode("u::rwx,g::---,u:1000:r-x,m::r-x,o::---,g:27:r-x")
    assert value[:4] == b"\x02\x00\x00\x00" and len(value) == 4 + 6 * 8
    assert acl.decode(value) == ["user::rwx", "user:1000:r-x", "group::---", "group:27:r-x",
                                 "mask::r-x", "other::---"]


@pytest.mark.skipif(shutil.which("getfacl") is None, reason="getfacl (Debian: acl) is missing")
def test_what_is_written_is_what_getfacl_reads(tmp_path: Path, no_binding: None) -> None:
    d = tmp_path / "job"
    d.mkdir(mode=0o750)
    acl.apply(d, "u::rwx,u:4242:r-x,g::---,m::r-x,o::---")
    acl.apply(d, "u::rwx,u:4242:rwx,g::---,m::rwx,o::---", default=True)
    out = subprocess.run(["getfacl", "-n", "-p", str(d)], capture_output=True, text=True,
                         check=True).stdout
    assert "user:4242:r-x" in out and "default:user:4242:rwx" in out, out
    assert "default:mask::rwx" in out and "group::---" in out, out
    assert acl.default_entries(d) == ["user::rwx", "user:4242:rwx", "group::---",
                                      "mask::rwx", "other::---"]
    f = d / "result.json"
    f.write_text("{}")  # inherits the default ACL
    assert "user:4242:rwx" in subprocess.run(["getfacl", "-n", str(f)], capture_output=True,
                                             text=True, check=True).stdout
    fd = os.open(f, os.O_RDONLY)
    try:
        acl.apply(fd, "u::rw-,u:4243:r--,g::---,m::r--,o::---")
    finally:
        os.close(fd)
    assert "user:4243:r--" in subprocess.run(["getfacl", "-n", str(f)], capture_output=True,
                                             text=True, check=True).stdout


def test_the_same_bytes_as_libacl_where_pylibacl_is_installed(tmp_path: Path) -> None:
    posix1e = acl._binding()
    if posix1e is None:
        pytest.skip("pylibacl is not installed (the xattr path is the one in use)")
    text = "u::rwx,u:4242:r-x,g:4243:r-x,g::---,m::r-x,o::---"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    posix1e.ACL(text=text).applyto(str(a), posix1e.ACL_TYPE_DEFAULT)
    os.setxattr(str(b), acl.DEFAULT, acl.encode(text))
    assert os.getxattr(str(a), acl.DEFAULT) == os.getxattr(str(b), acl.DEFAULT)


def test_no_default_acl_reads_as_none(tmp_path: Path, no_binding: None) -> None:
    assert acl.default_entries(tmp_path) == []
