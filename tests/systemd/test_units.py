"""Static checks of contrib/systemd/ and packaging/ with the host's systemd tools.

No systemd needs to run: systemd-analyze verify/security, systemd-sysusers and
systemd-tmpfiles all work on files and on an alternate root (--root=).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "contrib" / "systemd"
SPOOL = "/var/spool/cesar"
MAX_EXPOSURE = 2.0

TOOLS = ("systemd-analyze", "systemd-tmpfiles", "systemd-sysusers")
_missing = [t for t in TOOLS if shutil.which(t) is None]
if _missing:
    _reason = f"systemd tools not installed: {', '.join(_missing)} (apt-get install systemd)"
    print(f"SKIP tests/systemd/test_units.py: {_reason}")
    pytestmark = pytest.mark.skip(reason=_reason)

# unit name to verify -> file in contrib/systemd (the template as an instance)
VERIFY = {
    "cesard.service": "cesard.service",
    "cesard@test.service": "cesard@.service",
    "cesar-prune.service": "cesar-prune.service",
    "cesar-prune.timer": "cesar-prune.timer",
    "cesard-http.service": "cesard-http.service",
}
SERVICES = ("cesard.service", "cesard@.service", "cesar-prune.service", "cesard-http.service")
# binaries the units execute; stubs for them go into the verify root
STUBS = ("/usr/bin/cesard", "/usr/bin/cesarctl", "/usr/bin/cesard-http", "/bin/kill")


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (keys may repeat); continuation lines joined."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def verify_root(tmp: Path) -> Path:
    """An alternate root holding the host's units, ours, and stub binaries.

    `systemd-analyze verify` checks that every Exec*= binary exists; with
    --root= it looks for them (and for sysinit.target & co) inside the root.
    """
    root = tmp / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for stub in STUBS:
        p = root / stub.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    return root


def install_unit(root: Path, name: str, text: str) -> None:
    (root / "etc/systemd/system" / name).write_text(text)


@pytest.fixture
def vroot(tmp_path: Path) -> Path:
    root = verify_root(tmp_path)
    for f in set(VERIFY.values()):
        install_unit(root, f, (UNITS / f).read_text())
    return root


def analyze_verify(root: Path, unit: str) -> subprocess.CompletedProcess:
    return run("systemd-analyze", "verify", "--man=no", f"--root={root}", unit)


@pytest.mark.parametrize("unit", sorted(VERIFY))
def test_verify_clean(vroot: Path, unit: str) -> None:
    r = analyze_verify(vroot, unit)
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "")


def test_verify_catches_unknown_key(vroot: Path) -> None:
    """Guards the check above: verify exits 0 on unknown keys, only stderr tells."""
    text = (UNITS / "cesard.service").read_text().replace("[Service]\n", "[Service]\nNoSuchKey=1\n")
    install_unit(vroot, "cesard.service", text)
    r = analyze_verify(vroot, "cesard.service")
    assert "NoSuchKey" in r.stderr


def test_verify_catches_missing_binary(vroot: Path) -> None:
    (vroot / "usr/bin/cesard").unlink()
    r = analyze_verify(vroot, "cesard.service")
    assert "/usr/bin/cesard" in r.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure(tmp_path: Path, unit: str) -> None:
    src = UNITS / unit
    path = tmp_path / unit.replace("@.", "@test.")
    path.write_text(src.read_text())
    r = run("systemd-analyze", "security", "--offline=yes", "--no-pager", str(path))
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:]
    score, label = float(m.group(1)), m.group(2)
    print(f"{unit}: exposure {score} {label}")
    assert score <= MAX_EXPOSURE, f"{unit}: exposure {score} {label}\n{r.stdout}"
    assert label in ("OK", "SAFE")


def test_service_contract() -> None:
    """The unit settings the daemon relies on."""
    for name in ("cesard.service", "cesard@.service"):
        s = parse_unit(UNITS / name)["Service"]
        one = {k: v[-1] for k, v in s.items()}
        assert one["Type"] == "notify"
        assert one["NotifyAccess"] == "main"
        assert one["ExecStart"].split()[0] == "/usr/bin/cesard"
        # systemctl reload waits for the daemon's answer and fails on a refusal
        assert one["ExecReload"].startswith("/usr/bin/cesard ")
        assert one["ExecReload"].endswith(" --reload --pid $MAINPID")
        assert one["WatchdogSec"] == "30"
        assert int(one["TimeoutStopSec"]) > 30  # above shutdown_grace default
        assert one["Restart"] == "on-failure"
        assert one["KillMode"] == "mixed"  # workers get shutdown_grace (I5)
        assert one["User"] == one["Group"] == "cesar"
        assert one["UMask"] == "0007"
        assert one["ProtectSystem"] == "strict"
    main = parse_unit(UNITS / "cesard.service")["Service"]
    assert SPOOL in main["ReadWritePaths"]
    tmpl = parse_unit(UNITS / "cesard@.service")
    assert tmpl["Service"]["ExecStart"] == ["/usr/bin/cesard --config /etc/cesar/%i.yaml"]
    assert "-/var/spool/cesar-%i" in tmpl["Service"]["ReadWritePaths"]
    prune = parse_unit(UNITS / "cesar-prune.service")["Service"]
    assert prune["ExecStart"] == ["/usr/bin/cesarctl prune --older-than 30d"]
    assert prune["User"] == ["cesar"] and SPOOL in prune["ReadWritePaths"]
    timer = parse_unit(UNITS / "cesar-prune.timer")
    assert timer["Timer"]["OnCalendar"] == ["daily"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def sysusers_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    (root / "etc").mkdir(parents=True)
    for kind, src in (("sysusers.d", "cesard.sysusers"), ("tmpfiles.d", "cesard.tmpfiles")):
        d = root / "usr/lib" / kind
        d.mkdir(parents=True)
        shutil.copy(UNITS / src, d / "cesard.conf")
    r = run("systemd-sysusers", f"--root={root}", "cesard.conf")
    assert r.returncode == 0, r.stderr
    return root


def getent(root: Path, db: str, name: str) -> list[str]:
    for line in (root / "etc" / db).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {db}: {(root / 'etc' / db).read_text()!r}")


def test_sysusers(tmp_path: Path) -> None:
    root = sysusers_root(tmp_path)
    user = getent(root, "passwd", "cesar")
    group = getent(root, "group", "cesar")
    assert user[3] == group[2], "primary group of cesar is group cesar"
    assert int(user[2]) < 1000, "system user"
    assert user[5] == SPOOL
    assert user[6] == "/usr/sbin/nologin"


# privacy: owner (the default); tests/test_privacy.py checks that 'cesard --init' agrees,
# ACLs included.
EXPECTED_MODES = {
    "": 0o0750,
    "tmp": 0o1730,
    "incoming": 0o1730,
    "control": 0o1730,
    "processing": 0o0750,
    "deferred": 0o0750,
    "done": 0o0750,
    "failed": 0o0750,
    "state": 0o0750,
}


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles --create gives the files "
                    "their owners (cesar): that needs root")
def test_tmpfiles(tmp_path: Path) -> None:
    root = sysusers_root(tmp_path)
    uid = int(getent(root, "passwd", "cesar")[2])
    gid = int(getent(root, "group", "cesar")[2])
    # With --root, tmpfiles resolves an ACL's user name on the host, where there is no
    # cesar: give the 'a+' lines the uid sysusers chose in the root instead.
    conf = root / "usr/lib/tmpfiles.d/cesard.conf"
    conf.write_text(conf.read_text().replace("u:cesar:", f"u:{uid}:"))
    r = run("systemd-tmpfiles", "--create", f"--root={root}", "cesard.conf")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    spool = root / SPOOL.lstrip("/")
    found = {p.name for p in spool.iterdir()}
    assert found == {k for k in EXPECTED_MODES if k}, found
    for sub, mode in EXPECTED_MODES.items():
        st = os.lstat(spool / sub)
        assert stat.S_ISDIR(st.st_mode), sub
        got = stat.S_IMODE(st.st_mode)
        assert got == mode, f"{sub or '.'}: {oct(got)} != {oct(mode)}"
        assert (st.st_uid, st.st_gid) == (uid, gid), sub
        if mode & 0o1000 and shutil.which("getfacl"):  # the drop directories
            acl = subprocess.run(["getfacl", "-n", "-p", str(spool / sub)], text=True,
                                 capture_output=True, check=True).stdout
            assert f"default:user:{uid}:rwx" in acl and "default:group::---" in acl, acl
    # idempotent: a second run changes nothing and says nothing
    r = run("systemd-tmpfiles", "--create", f"--root={root}", "cesard.conf")
    assert r.returncode == 0 and r.stderr == "", r.stderr


GPU_DROPIN = UNITS / "cesard.service.d" / "gpu.conf"


def test_gpu_dropin_verifies_clean(vroot: Path) -> None:
    d = vroot / "etc/systemd/system/cesard.service.d"
    d.mkdir()
    shutil.copy(GPU_DROPIN, d / "gpu.conf")
    r = analyze_verify(vroot, "cesard.service")
    assert (r.returncode, r.stderr, r.stdout) == (0, "", "")


def test_gpu_dropin_opens_only_nvidia_devices_and_keeps_the_hardening(tmp_path: Path) -> None:
    """systemd-analyze security with the drop-in applied (found on SYSTEMD_UNIT_PATH)."""
    units = tmp_path / "units"
    (units / "cesard.service.d").mkdir(parents=True)
    shutil.copy(UNITS / "cesard.service", units / "cesard.service")
    shutil.copy(GPU_DROPIN, units / "cesard.service.d" / "gpu.conf")
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        "cesard.service"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:]
    print(f"cesard.service + gpu.conf: exposure {m.group(1)} {m.group(2)}")
    assert "✗ PrivateDevices=" in r.stdout, "the drop-in was not applied"
    assert float(m.group(1)) <= MAX_EXPOSURE and m.group(2) in ("OK", "SAFE")
    conf = parse_unit(GPU_DROPIN)["Service"]
    assert conf["DevicePolicy"] == ["closed"]
    assert sorted(conf["DeviceAllow"]) == ["char-nvidia-caps rw", "char-nvidia-frontend rw",
                                           "char-nvidia-uvm rw"]
