"""A newcomer on a minimal Debian: in a fresh bookworm minbase root filesystem with only
the packages the README names (python3-venv), a normal user runs the README's two
commands verbatim, and they work: no compiler, no Python headers, no root.

The root filesystem is debootstrap's (cached, see nspawn.py), used through an overlay
and chroot with the host's network (the package registries) and its pip settings. The
second command runs the suite with PYTEST_ADDOPTS narrowing it to a few quick tests
(the whole suite runs on the host right after); what is proven is that it installs and
runs there.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nspawn
import pytest

REPO = Path(__file__).resolve().parents[2]
USER = "newcomer"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)\n```", section, re.S)


def packages_the_readme_names() -> list[str]:
    text = (REPO / "README.md").read_text().split("## Two commands", 1)[1][:600]
    return re.findall(r"apt-get install ([a-z0-9.+-]+)`", text)


@pytest.fixture
def minimal_root() -> Iterator[Path]:
    why = nspawn.skip_reason()
    if why:
        pytest.skip(why)
    if shutil.which("chroot") is None:
        pytest.skip("chroot is missing")
    base = nspawn.ensure_rootfs(packages_the_readme_names())
    work = Path(tempfile.mkdtemp(prefix="newcomer.", dir=nspawn.CACHE))
    root, upper, ovl = work / "root", work / "upper", work / "work"
    upper.mkdir()
    ovl.mkdir()
    nspawn._mount_overlay([base], root, upper, ovl)
    mounts = [root]
    try:
        for src, dst in (("/proc", "proc"), ("/dev", "dev"), ("/sys", "sys")):
            subprocess.run(["mount", "--rbind", src, str(root / dst)], check=True)
            subprocess.run(["mount", "--make-rslave", str(root / dst)], check=True)
            mounts.append(root / dst)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        certs = re.findall(r"(?m)^\s*cert\s*=\s*(\S+)", Path("/etc/pip.conf").read_text()
                           if os.path.isfile("/etc/pip.conf") else "")
        for conf in ("/etc/pip.conf", os.environ.get("PIP_CERT", ""), *certs):
            if conf and os.path.isfile(conf):  # the machine's registry settings
                (root / conf.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(conf, root / conf.lstrip("/"))
        subprocess.run(["chroot", str(root), "useradd", "-m", "-s", "/bin/bash", USER],
                       check=True)
        home = root / "home" / USER / "cesard"
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.split()
        for f in files:
            if (REPO / f).is_file() and not f.startswith("bench/.cache"):
                (home / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / f, home / f)
        subprocess.run(["chroot", str(root), "chown", "-R", f"{USER}:{USER}",
                        f"/home/{USER}/cesard"], check=True)
        yield root
    finally:
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def as_newcomer(root: Path, command: str, timeout: float,
                extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    env.update(extra_env or {})
    assign = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = f"cd ~/cesard && env {assign} bash -c {shlex.quote(command)}"
    return subprocess.run(["chroot", str(root), "runuser", "-l", USER, "-c", script],
                          capture_output=True, text=True, timeout=timeout)


def test_a_normal_user_on_a_minimal_debian_runs_the_readmes_two_commands(
        minimal_root: Path) -> None:
    assert packages_the_readme_names() == ["python3-venv"]
    assert not (minimal_root / "usr/bin/gcc").exists()
    assert not list((minimal_root / "usr/include").glob("python3*/Python.h"))
    demo, tests = readme_commands()
    r = as_newcomer(minimal_root, demo, 1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Hello world" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    r = as_newcomer(minimal_root, tests, 1200,
                    {"PYTEST_ADDOPTS": "-k 'test_acl or test_parts or test_architecture'"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\d+ passed", r.stdout), r.stdout[-2000:]
