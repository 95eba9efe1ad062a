"""Real users against the real daemon: a shared spool in privacy: owner, as root.

:func:`user_box` makes users with ``useradd`` under a unique prefix and removes them
afterwards: the daemon's user (primary group = the submitters' group, as sysusers.d
makes ``cesar``), two members alice and bob, an admin, and a non-member. The daemon
runs as its user on a spool made by ``cesard --init``. Every attack runs as the
attacking uid and asserts the kernel's answer (EACCES/EPERM), not only what cesarctl
shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, Daemon

needs_users = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setfacl") is None,
    reason="needs root, useradd and setfacl (Debian packages passwd, acl) to make real users")

PROBE = r"""
import errno, os, shutil, sys
op, *a = sys.argv[1:]
try:
    if op == "listdir": os.listdir(a[0])
    elif op == "read": open(a[0], "rb").read()
    elif op == "write": open(a[0], "r+b").write(b"FORGED BY BOB")
    elif op == "create": open(a[0], "xb").write(b"FORGED BY BOB")
    elif op == "rename": os.rename(a[0], a[1])
    elif op == "unlink": os.unlink(a[0])
    elif op == "rmdir": os.rmdir(a[0])
    elif op == "mkdir": os.mkdir(a[0])
    elif op == "chmod": os.chmod(a[0], 0o777)
    elif op == "stat": os.lstat(a[0])
    print("OK")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


@dataclass
class User:
    name: str
    uid: int
    gid: int
    groups: list[int] = field(default_factory=list)


@dataclass
class Box:
    base: Path
    d: Daemon
    daemon: User
    alice: User
    bob: User
    admin: User
    outsider: User
    group: str
    admin_group: str

    def run(self, u: User, args: list[str], umask: int = 0o022,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.base),
               "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
        return subprocess.run(args, user=u.uid, group=u.gid, extra_groups=u.groups, env=env,
                              cwd=self.base, capture_output=True, text=True, timeout=60,
                              umask=umask, input=input)

    def attempt(self, u: User, op: str, *paths: Path) -> str:
        r = self.run(u, [str(BIN / "python"), "-c", PROBE, op, *map(str, paths)])
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def ctl(self, u: User, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(u, [str(BIN / "cesarctl"), "--spool", str(self.d.spool), *args])

    def home(self, u: User) -> Path:
        h = self.base / u.name
        h.mkdir(exist_ok=True)
        os.chown(h, u.uid, u.gid)
        os.chmod(h, 0o700)
        return h

    def own_file(self, u: User, name: str, data: bytes, mode: int = 0o644) -> Path:
        p = self.home(u) / name
        p.write_bytes(data)
        os.chown(p, u.uid, u.gid)
        os.chmod(p, mode)
        return p

    def submit(self, u: User, name: str, data: bytes, *opts: str) -> str:
        r = self.ctl(u, "submit", str(self.own_file(u, name, data)), *opts)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()


def _closed_dirs(*paths: Path) -> list[Path]:
    """Directories on the way to ``paths`` that other users may not traverse (a Python
    under /root, a clone in a private folder)."""
    out: list[Path] = []
    for p in paths:
        for parent in reversed(Path(os.path.realpath(p)).parents):
            if not os.stat(parent).st_mode & 0o001 and parent not in out:
                out.append(parent)
    return out


def _user(name: str, *groups: str, primary: str | None = None) -> User:
    cmd = ["useradd", "-M", "-N", "-s", "/usr/sbin/nologin"]
    if primary:
        cmd += ["-g", primary]
    if groups:
        cmd += ["-G", ",".join(groups)]
    subprocess.run([*cmd, name], check=True, capture_output=True)
    import grp
    import pwd
    pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid, [grp.getgrnam(g).gr_gid for g in groups])


@contextmanager
def user_box(tag: str = "", **config: Any) -> Iterator[Box]:
    """Users, a shared spool made by ``cesard --init`` and the daemon running as its user
    (``config`` over the privacy: owner defaults)."""
    prefix = f"cz{tag}{os.getpid() % 100000}"
    group, admin_group = f"{prefix}g", f"{prefix}adm"
    made_users: list[str] = []
    made_groups: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="cesard-privacy-", dir="/tmp"))
    os.chmod(base, 0o755)
    d: Daemon | None = None
    # The test users may traverse (only) the folders that lead to this venv's Python and
    # the repository; the ACL entries go with the users.
    closed = _closed_dirs(Path(os.path.realpath(BIN / "python")), BIN, Path(__file__))
    granted: list[tuple[Path, str]] = []
    try:
        for g in (group, admin_group):
            subprocess.run(["groupadd", g], check=True, capture_output=True)
            made_groups.append(g)
        daemon = _user(f"{prefix}d", primary=group)
        made_users.append(daemon.name)
        alice = _user(f"{prefix}a", group)
        made_users.append(alice.name)
        bob = _user(f"{prefix}b", group)
        made_users.append(bob.name)
        admin = _user(f"{prefix}m", group, admin_group)
        made_users.append(admin.name)
        outsider = _user(f"{prefix}n")
        made_users.append(outsider.name)
        for path in closed:
            for u in made_users:
                subprocess.run(["setfacl", "-m", f"u:{u}:x", str(path)], check=True)
                granted.append((path, u))
        d = Daemon(base, **{"privacy": "owner", "admin_group": admin_group,
                            "settle_seconds": 0.3, **config})
        d.write_config()
        r = subprocess.run([str(BIN / "cesard"), "--config", str(d.config_path), "--spool",
                            str(d.spool), "--init", "--user", daemon.name, "--group", group],
                           capture_output=True, text=True, env=d.env)
        assert r.returncode == 0, r.stderr
        d.start(user=(daemon.uid, daemon.gid))
        yield Box(base, d, daemon, alice, bob, admin, outsider, group, admin_group)
    finally:
        if d is not None:
            d.close()
        for path, u in granted:
            subprocess.run(["setfacl", "-x", f"u:{u}", str(path)], capture_output=True)
        for u in made_users:
            subprocess.run(["userdel", u], capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)], capture_output=True)  # any depth


