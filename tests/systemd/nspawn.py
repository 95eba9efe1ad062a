"""Boot a real systemd (Debian bookworm) in systemd-nspawn to test cesard's units.

The host's systemd never runs: the container has its own PID 1, its own
cgroup (below one this module creates and removes), no network, and a
volatile overlay over a cached root filesystem, so every boot starts clean.

Layers, each cached under CACHE (default /var/cache/cesard-test, override
with $CESARD_TEST_CACHE) and keyed by what went into it:

  rootfs-KEY/   debootstrap --variant=minbase of bookworm + PACKAGES
  wheels-KEY/   `pip wheel` of the Python requirements, made on the host
  layer-KEY/    overlay upper dir: a venv at /opt/cesard installed from those
                wheels with --no-index (no network inside the container)
  nspawn-VER/   systemd-nspawn from systemd-container=VER (the host's systemd
                version), unpacked with dpkg-deb, never installed

Usage:

    rootfs = ensure_rootfs()
    wheels = ensure_wheels(["faster-whisper"])
    layer = ensure_venv_layer(rootfs, [wheels], ["faster-whisper"])
    with Container([layer, rootfs]) as c:
        c.run("systemctl is-system-running")

The mirror is read from the host's apt sources at run time.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("CESARD_TEST_CACHE", "/var/cache/cesard-test"))
SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "python3", "python3-venv", "procps")
CONTAINER_PYTHON = (3, 11)  # bookworm's python3
VENV = "/opt/cesard"


def _dependencies() -> list[str]:
    """pyproject's dependencies, by name (so the container never lacks a new one)."""
    import tomllib

    deps = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml")
                         .read_text())["project"]["dependencies"]
    return [re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in deps]


# what the cesard venv needs
CONTAINER_REQUIREMENTS = [
    *_dependencies(),
    "pylibacl",  # the [acl] extra: privacy: owner on a shared spool
]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# phase -> seconds, filled as phases run (a cached phase records ~0)
TIMINGS: dict[str, float] = {}


def log(msg: str) -> None:
    print(f"[nspawn] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(phase: str):
    t0 = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[phase] = round(TIMINGS.get(phase, 0.0) + time.monotonic() - t0, 2)
        log(f"{phase}: {TIMINGS[phase]:.1f} s")


def sh(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    return subprocess.run(list(cmd), **kw)


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _finish_dir(tmp: Path, final: Path) -> None:
    """Publish a completed cache entry with one rename."""
    (tmp / ".cesard-test-complete").touch()
    os.rename(tmp, final)


def _complete(d: Path) -> bool:
    return (d / ".cesard-test-complete").exists()


# ---------------------------------------------------------------- apt, mirror


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian archive URI the host's apt uses for `suite` (not -security)."""
    if os.environ.get("CESARD_TEST_MIRROR"):
        return os.environ["CESARD_TEST_MIRROR"]
    entries: list[tuple[list[str], list[str]]] = []  # (uris, suites)
    for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", Path(f).read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[0].isspace():
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" in fields.get("types", "").split():
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    for f in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(f):
            for line in Path(f).read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append(([words[1]], [words[2]]))
    for uris, suites in entries:
        if suite in suites and uris:
            return uris[0].rstrip("/")
    raise RuntimeError(f"no apt source for suite {suite!r} in /etc/apt")


def mirror_reachable(timeout: float = 5.0) -> bool:
    try:
        u = urllib.parse.urlsplit(apt_mirror())
        port = u.port or (443 if u.scheme == "https" else 80)
        with socket.create_connection((u.hostname, port), timeout=timeout):
            return True
    except (OSError, RuntimeError):
        return False


def _apt_install(pkg: str) -> None:
    with _locked(CACHE / "apt.lock"):
        if shutil.which(pkg):
            return
        log(f"apt-get install {pkg}")
        sh(["apt-get", "install", "-y", "-q", pkg], stdout=subprocess.DEVNULL,
           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


# ---------------------------------------------------------------- rootfs


def ensure_rootfs(packages: Iterable[str] = PACKAGES, suite: str = SUITE) -> Path:
    """Cached minbase root filesystem with `packages`; built once, then reused."""
    packages = sorted(set(packages))
    arch = sh(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    final = CACHE / f"rootfs-{suite}-{_key(suite, arch, 'minbase', packages)}"
    with timed("debootstrap"):
        if _complete(final):
            return final
        with _locked(final.parent / (final.name + ".lock")):
            if _complete(final):
                return final
            if not shutil.which("debootstrap"):
                _apt_install("debootstrap")
            tmp = final.with_name(final.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"debootstrap {suite} -> {final} ({', '.join(packages)})")
            logf = CACHE / f"{final.name}.log"
            with open(logf, "w") as out:
                r = subprocess.run(
                    ["debootstrap", "--variant=minbase", f"--arch={arch}",
                     f"--include={','.join(packages)}", suite, str(tmp), apt_mirror(suite)],
                    stdout=out, stderr=subprocess.STDOUT)
            if r.returncode:
                raise RuntimeError(f"debootstrap failed ({r.returncode}), see {logf}")
            sh(["chroot", str(tmp), "apt-get", "clean"])
            # the container gets a fresh machine id each boot
            (tmp / "etc/machine-id").write_text("")
            _finish_dir(tmp, final)
            return final


# ---------------------------------------------------------------- nspawn


def host_systemd_version() -> str:
    return sh(["dpkg-query", "-W", "-f=${Version}", "systemd"],
              capture_output=True, text=True).stdout.strip()


def _libsystemd_shared_dir() -> str:
    hits = [h for pat in ("/usr/lib/*/systemd", "/usr/lib/systemd", "/lib/systemd")
            for h in glob.glob(f"{pat}/libsystemd-shared-*.so")]
    if not hits:
        raise RuntimeError("libsystemd-shared not found on the host")
    return os.path.dirname(hits[0])


def ensure_nspawn() -> tuple[str, dict[str, str]]:
    """(path to systemd-nspawn, extra environment), without touching the host's systemd."""
    with timed("nspawn-binary"):
        installed = shutil.which("systemd-nspawn")
        if installed:
            return installed, {}
        ver = host_systemd_version()
        final = CACHE / f"nspawn-{ver.replace('~', '_')}"
        env = {"LD_LIBRARY_PATH": _libsystemd_shared_dir()}
        binary = final / "usr/bin/systemd-nspawn"
        if _complete(final):
            return str(binary), env
        with _locked(final.parent / (final.name + ".lock")):
            if not _complete(final):
                tmp = Path(tempfile.mkdtemp(prefix="nspawn.", dir=CACHE))
                os.chmod(tmp, 0o755)  # apt-get download runs as _apt
                log(f"apt-get download systemd-container={ver}")
                sh(["apt-get", "download", "-q", f"systemd-container={ver}"], cwd=tmp,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                deb = next(tmp.glob("systemd-container_*.deb"))
                sh(["dpkg-deb", "-x", str(deb), str(tmp)])
                deb.unlink()
                _finish_dir(tmp, final)
        return str(binary), env


class _Cgroup:
    """A cgroup of our own in every hierarchy nspawn cares about."""

    def __init__(self, name: str):
        roots = []
        if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # pure v2
            roots = ["/sys/fs/cgroup"]
        else:
            roots = [r for r in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd")
                     if os.path.isdir(r)]
        self.dirs = [Path(r) / name for r in roots]
        for d in self.dirs:
            d.mkdir(exist_ok=True)

    def enter(self) -> None:  # preexec_fn: runs in the child before exec
        for d in self.dirs:
            with open(d / "cgroup.procs", "w") as f:
                f.write("0")

    def remove(self) -> None:
        for d in self.dirs:
            if not d.exists():
                continue
            for sub, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(sub)


def _nspawn_cmd(nspawn: str, root: Path, name: str, *args: str) -> list[str]:
    return [nspawn, "--quiet", f"--directory={root}", f"--machine={name}",
            "--register=no", "--keep-unit", "--private-network", *args]


def _mount_overlay(lowers: Sequence[Path], target: Path, upper: Path | None = None,
                   work: Path | None = None) -> None:
    target.mkdir(parents=True, exist_ok=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    sh(["mount", "-t", "overlay", "overlay", "-o", opts, str(target)])


# ---------------------------------------------------------------- wheels, venv


def ensure_wheels(requirements: Sequence[str], python: str = sys.executable,
                  no_deps: bool = False) -> Path:
    """Wheels for `requirements` (and, unless no_deps, their dependencies),
    built on the host with `python -m pip wheel` (python must be 3.11 like
    the container's). Cached by the requirement list; a list naming a local
    path (a project checkout) is rebuilt every time.
    """
    pyver = sh([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
               capture_output=True, text=True).stdout.strip()
    want = "{}.{}".format(*CONTAINER_PYTHON)
    if pyver != want:
        raise RuntimeError(f"{python} is {pyver}; the container has "
                           f"{want}: wheels would not install")
    local = any(os.path.exists(r) for r in requirements)
    final = CACHE / f"wheels-{_key(pyver, sorted(requirements), no_deps)}"
    with timed("wheels"):
        if _complete(final) and not local:
            return final
        with _locked(final.parent / (final.name + ".lock")):
            if _complete(final) and not local:
                return final
            tmp = final.with_name(final.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            log(f"pip wheel {' '.join(requirements)}")
            with tempfile.TemporaryDirectory(prefix="src.", dir=CACHE) as src:
                reqs = []
                for i, r in enumerate(requirements):
                    if os.path.isdir(r):  # build from a copy: leave the checkout untouched
                        r = shutil.copytree(r, f"{src}/{i}", ignore=shutil.ignore_patterns(
                            ".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                            ".venv", "spool"))
                    reqs.append(str(r))
                sh([python, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    *(["--no-deps"] if no_deps else []), "--wheel-dir", str(tmp), *reqs])
            shutil.rmtree(final, ignore_errors=True)
            _finish_dir(tmp, final)
            return final


def _fingerprint(wheel: Path) -> str:
    """Content hash for small wheels (a rebuilt project), size+mtime for big ones."""
    st = wheel.stat()
    if st.st_size < 8 << 20:
        return hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}"


def ensure_venv_layer(rootfs: Path, wheel_dirs: Sequence[Path], requirements: Sequence[str],
                      local_wheels: Sequence[Path] = (), venv: str = VENV,
                      keep: int = 4) -> Path:
    """An overlay layer (upper dir) over `rootfs` holding a venv at `venv`.

    The container's own python3 makes the venv and pip-installs
    `requirements` (names) and `local_wheels` (files) with --no-index from
    `wheel_dirs`, bound read-only into a non-booted nspawn without network.
    Cached by the wheels' names, sizes and mtimes; only the `keep` newest
    layers stay in the cache.
    """
    dirs = list(dict.fromkeys([*wheel_dirs, *(Path(w).parent for w in local_wheels)]))
    listing = sorted((w.name, _fingerprint(w)) for d in dirs for w in d.glob("*.whl"))
    names = list(requirements)
    local_names = [Path(w).name for w in local_wheels]
    final = CACHE / f"layer-{_key(rootfs.name, listing, names, local_names, venv)}"
    with timed("venv-install"):
        if _complete(final):
            os.utime(final)
            return final / "upper"
        with _locked(final.parent / (final.name + ".lock")):
            if _complete(final):
                return final / "upper"
            nspawn, env = ensure_nspawn()
            tmp = final.with_name(final.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for sub in ("upper", "work", "merged"):
                (tmp / sub).mkdir(parents=True)
            _mount_overlay([rootfs], tmp / "merged", tmp / "upper", tmp / "work")
            cg = _Cgroup(f"cesard-test-install-{os.getpid()}")
            try:
                links, binds, inside = [], [], {}
                for i, d in enumerate(dirs):
                    binds.append(f"--bind-ro={d}:/wheels/{i}")
                    links += ["--find-links", f"/wheels/{i}"]
                    inside[d] = f"/wheels/{i}"
                files = [f"{inside[Path(w).parent]}/{Path(w).name}" for w in local_wheels]
                q = shlex.quote
                script = (
                    f"python3 -m venv {q(venv)} && "
                    f"{q(venv)}/bin/pip install --quiet --no-index --disable-pip-version-check "
                    f"{' '.join(links)} {' '.join(q(x) for x in [*names, *files])} && "
                    f"{q(venv)}/bin/python -m compileall -q {q(venv)} >/dev/null 2>&1; "
                    f"test -x {q(venv)}/bin/python"
                )
                log(f"install into {venv}: {' '.join([*names, *local_names])}")
                machine = f"cesard-install-{os.getpid()}"
                r = subprocess.run(
                    _nspawn_cmd(nspawn, tmp / "merged", machine, *binds, "--", "/bin/sh", "-c",
                                script),
                    env={**os.environ, **env}, preexec_fn=cg.enter, stdin=subprocess.DEVNULL,
                    capture_output=True, text=True)
                if r.returncode:
                    raise RuntimeError(f"venv install failed ({r.returncode}):\n"
                                       f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
            finally:
                sh(["umount", str(tmp / "merged")], check=False)
                cg.remove()
                shutil.rmtree(f"/run/systemd/nspawn/propagate/cesard-install-{os.getpid()}",
                              ignore_errors=True)
            shutil.rmtree(tmp / "work", ignore_errors=True)
            (tmp / "merged").rmdir()
            _finish_dir(tmp, final)
            old = sorted((p for p in CACHE.glob("layer-*") if p.is_dir() and _complete(p)),
                         key=lambda p: p.stat().st_mtime, reverse=True)[keep:]
            for p in old:
                shutil.rmtree(p, ignore_errors=True)
            return final / "upper"


# ---------------------------------------------------------------- container


class Container:
    """A booted bookworm with systemd as its PID 1.

    layers: lower dirs, topmost first, the rootfs last. The container boots
    with --volatile=overlay: whatever it writes is lost at power-off.
    """

    def __init__(self, layers: Sequence[Path], name: str | None = None,
                 bind_ro: dict[str, str] | None = None, boot_timeout: float = 90.0):
        self.layers = [Path(p) for p in layers]
        self.name = name or f"cesard-test-{os.getpid()}"
        self.bind_ro = bind_ro or {}
        self.boot_timeout = boot_timeout
        self.rundir = CACHE / "run" / self.name
        self.proc: subprocess.Popen | None = None
        self.leader: int | None = None
        self._cg: _Cgroup | None = None
        self._mounted = False
        self.console_log = self.rundir / "console.log"

    # -- lifecycle
    def __enter__(self) -> Container:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.poweroff()

    def start(self) -> None:
        nspawn, env = ensure_nspawn()
        shutil.rmtree(self.rundir, ignore_errors=True)
        self.rundir.mkdir(parents=True)
        root = self.layers[0]
        if len(self.layers) > 1:
            root = self.rundir / "root"
            _mount_overlay(self.layers, root)  # read-only: no upper dir
            self._mounted = True
        self._cg = _Cgroup(self.name)
        binds = [f"--bind-ro={src}:{dst}" for src, dst in self.bind_ro.items()]
        cmd = _nspawn_cmd(nspawn, root, self.name, "--boot", "--volatile=overlay",
                          "--console=read-only", *binds)
        with timed("boot"):
            console = open(self.console_log, "wb")
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                         stderr=subprocess.STDOUT, env={**os.environ, **env},
                                         preexec_fn=self._cg.enter)
            console.close()
            try:
                self.leader = self._find_leader()
                self.wait_running()
            except BaseException:
                log("boot failed; console:\n" + self.console())
                self.poweroff()
                raise

    def _find_leader(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 30
        mypidns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n"
                                   + self.console())
            try:
                pid = self.proc.pid
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                for k in kids:
                    if os.readlink(f"/proc/{k}/ns/pid") != mypidns:
                        return int(k)
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("container PID 1 did not appear")

    def wait_running(self) -> str:
        deadline = time.monotonic() + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            r = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    log("container degraded:\n" + self.run(
                        ["systemctl", "--failed", "--no-pager"], check=False).stdout)
                return state
            time.sleep(0.2)
        raise TimeoutError(f"container not up after {self.boot_timeout}s "
                           f"(state {state!r}):\n{self.console()}")

    def poweroff(self, timeout: float = 30.0) -> None:
        with timed("poweroff"):
            if self.proc is not None and self.proc.poll() is None:
                if self.leader:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGRTMIN + 4)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log("poweroff timed out; terminating systemd-nspawn")
                    self.proc.terminate()
                    try:
                        self.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
            self.proc = None
            self.leader = None
            if self._mounted:
                sh(["umount", str(self.rundir / "root")], check=False)
                self._mounted = False
            if self._cg:
                self._cg.remove()
                self._cg = None
            with contextlib.suppress(OSError):
                shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}")
            if not self._mounted:
                shutil.rmtree(self.rundir, ignore_errors=True)

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    # -- inside
    def run(self, cmd: str | Sequence[str], check: bool = True, input: str | bytes | None = None,
            timeout: float = 120.0,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run cmd (argv, or a /bin/sh -c string) inside the container."""
        if self.leader is None:
            raise RuntimeError("container not running")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        envv = [f"{k}={v}" for k, v in {"PATH": PATH, "LANG": "C.UTF-8",
                                         "SYSTEMD_PAGER": "", **(env or {})}.items()]
        full = ["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-C",
                "-r", "-w", "--", "/usr/bin/env", "-i", *envv, *argv]
        text = not isinstance(input, bytes)
        r = subprocess.run(full, input=input, capture_output=True, text=text, timeout=timeout)
        if check and r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, argv, r.stdout, r.stderr)
        return r

    def put(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        """Write a file inside the container (parents created)."""
        if isinstance(data, str):
            data = data.encode()
        q = shlex.quote(path)
        self.run(f"mkdir -p \"$(dirname {q})\" && cat > {q} && chmod {mode:o} {q}", input=data)

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        self.run(["journalctl", "--sync"], check=False)
        return self.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).stdout

    def wait_journal(self, unit: str, text: str, timeout: float = 30.0) -> str:
        """Poll the unit's journal until it contains ``text``; fail past ``timeout``."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.journal(unit)):
            assert time.monotonic() < deadline, f"no {text!r} in the journal:\n{log}"
            time.sleep(0.2)
        return log


def boot_with_venv(requirements: Sequence[str], local: Sequence[str] = (),
                   packages: Iterable[str] = PACKAGES, **kw) -> Container:
    """Rootfs, wheels and venv layer in one call; returns an unstarted Container.

    requirements: names from the registry, with their dependencies (cached).
    local: project paths (e.g. /work/main), built with `pip wheel --no-deps`
    every time; their dependencies must be among `requirements`.
    """
    rootfs = ensure_rootfs(packages)
    dirs = [ensure_wheels(list(requirements))]
    local_wheels: list[Path] = []
    if local:
        ldir = ensure_wheels(list(local), no_deps=True)
        local_wheels = sorted(ldir.glob("*.whl"))
    layer = ensure_venv_layer(rootfs, dirs, list(requirements), local_wheels)
    return Container([layer, rootfs], **kw)


def skip_reason() -> str | None:
    """Why container tests cannot run here, or None."""
    if os.environ.get("CESARD_TEST_NSPAWN", "1") == "0":
        return "CESARD_TEST_NSPAWN=0"
    if os.geteuid() != 0:
        return "systemd-nspawn tests need root"
    cached = any(_complete(p) for p in CACHE.glob("rootfs-*"))
    if not cached and not mirror_reachable():
        return "no network to the Debian mirror and no cached root filesystem"
    return None


def boot_started(requirements: Sequence[str], local: Sequence[str], name: str) -> Container:
    """For pytest fixtures: skip (printing why) or return a running Container."""
    import pytest

    reason = skip_reason()
    if reason:
        print(f"SKIP systemd-nspawn tests: {reason}")
        pytest.skip(reason)
    c = boot_with_venv(requirements, local, name=name)
    c.start()
    return c
