"""The benchmarks' shared harness: the real cesard on a temporary spool (:class:`Daemon`),
its events seen through inotify (:class:`Events`), jobs built and published as clients
do, process memory and CPU figures, and the clean-up of everything started, even on
Ctrl-C. bench/run.py, short.py, gluster.py and the others are scripts over it."""

from __future__ import annotations

import contextlib
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import yaml  # noqa: E402
from inotify_simple import INotify  # noqa: E402
from inotify_simple import flags as F  # noqa: E402

from cesard import job as jobmod  # noqa: E402
from cesard.spool import fsync_dir  # noqa: E402

PY = sys.executable
T0 = time.monotonic()
FAKE = b"#cesard-fake\ntext: bench\n"

# --- plumbing ----------------------------------------------------------------------


def progress(msg: str) -> None:
    print(f"[bench {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


CLEANUP: list[Callable[[], None]] = []


def cleanup_all() -> None:
    while CLEANUP:
        fn = CLEANUP.pop()
        with contextlib.suppress(Exception):
            fn()


def on_signal(signum: int, _frame: object) -> None:
    progress(f"got {signal.Signals(signum).name}: cleaning up")
    cleanup_all()
    sys.exit(128 + signum)


def tempdir(tag: str) -> Path:
    d = Path(tempfile.mkdtemp(prefix=f"cesard-bench-{tag}-"))
    CLEANUP.append(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


def pctl(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(p / 100 * len(s) + 0.5)) - 1))
    return s[k]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_s(pid: int) -> float:
    """utime + stime of a live process, seconds."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


# --- the spool from outside --------------------------------------------------------


def build_job(spool: Path, data: bytes, name: str = "job.fake",
              options: dict[str, Any] | None = None, durable: bool = True) -> tuple[str, Path]:
    """A job directory in tmp/ as cesarctl builds it; publish it with :func:`publish`."""
    job_id = jobmod.new_job_id()
    build = spool / "tmp" / job_id
    os.mkdir(build)
    meta = jobmod.JobMeta(id=job_id, options=options or {},
                          submitted_at=jobmod.iso(jobmod.utcnow()), submitter="bench",
                          source_name=name)
    for fname, content in ((name, data), ("job.json", meta.to_json())):
        fd = os.open(build / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            os.write(fd, content)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    if durable:
        fsync_dir(build)
    return job_id, build


def publish(spool: Path, job_id: str, build: Path, durable: bool = True) -> float:
    """rename(tmp/ID, incoming/ID) (+ fsync incoming/); the time just before the rename."""
    t = time.time()
    os.rename(build, spool / "incoming" / job_id)
    if durable:
        fsync_dir(spool / "incoming")
    return t


def copy_file_job(spool: Path, src: Path) -> tuple[str, Path]:
    return build_job(spool, Path(src).read_bytes(), name=Path(src).name)


class Events:
    """Timestamps of entries arriving (IN_MOVED_TO/IN_CREATE) in spool dirs, by a thread."""

    def __init__(self, spool: Path, dirs: tuple[str, ...] = ("processing", "done", "failed")):
        self.ino = INotify()
        self.wds = {self.ino.add_watch(spool / d, F.MOVED_TO | F.CREATE): d for d in dirs}
        self.seen: dict[str, dict[str, float]] = {d: {} for d in dirs}
        self.order: dict[str, list[float]] = {d: [] for d in dirs}
        self.cond = threading.Condition()
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            evs = self.ino.read(timeout=200)
            now = time.time()
            if not evs:
                continue
            with self.cond:
                for ev in evs:
                    d = self.wds.get(ev.wd)
                    if d is None or not ev.name or ev.name.startswith("."):
                        continue
                    if ev.name not in self.seen[d]:
                        self.seen[d][ev.name] = now
                        self.order[d].append(now)
                self.cond.notify_all()

    def wait(self, pred: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self.cond.wait(min(left, 0.5))

    def finished(self) -> int:
        return len(self.seen["done"]) + len(self.seen.get("failed", {}))

    def close(self) -> None:
        self.stop = True
        self.thread.join(2)
        self.ino.close()


class NotifySocket:
    """A fake $NOTIFY_SOCKET (AF_UNIX SOCK_DGRAM) recording (time, message)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.msgs: list[tuple[float, str]] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.msgs.append((time.time(), data.decode(errors="replace")))

    def first(self, line: str) -> float | None:
        for t, m in list(self.msgs):
            if line in m.splitlines():
                return t
        return None

    def close(self) -> None:
        self.stop = True
        self.thread.join(1)
        self.sock.close()


class Daemon:
    """The real cesard on a temporary spool, with a fake NOTIFY_SOCKET to time READY=1."""

    def __init__(self, tag: str, profile: bool = False, **config: Any) -> None:
        self.dir = tempdir(tag)
        self.spool = self.dir / "spool"
        for d in ("tmp", "incoming", "processing", "deferred", "done", "failed", "control",
                  "state"):
            (self.spool / d).mkdir(parents=True, exist_ok=True)
        self.config = config
        self.profile_out = self.dir / "supervisor.prof" if profile else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: NotifySocket | None = None
        self.started = 0.0
        self.ready_s: float | None = None
        self.main_args = ["-m", "cesard.main"]  # what runs the daemon (after python)

    def start(self, timeout: float = 300.0, wait: bool = True) -> Daemon:
        cfg_path = self.dir / "cesard.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config))
        self.notify = NotifySocket(self.dir / "notify.sock")
        env = {k: v for k, v in os.environ.items()
               if k not in ("CESAR_SPOOL", "CESAR_CONFIG", "WATCHDOG_USEC", "WATCHDOG_PID",
                            "JOURNAL_STREAM")}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["NOTIFY_SOCKET"] = str(self.notify.path)
        cmd = [PY]
        if self.profile_out:
            cmd += ["-m", "cProfile", "-o", str(self.profile_out)]
        cmd += [*self.main_args, "--config", str(cfg_path), "--spool", str(self.spool)]
        log = open(self.dir / "cesard.log", "ab")  # noqa: SIM115
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, cwd=REPO,
                                     start_new_session=True)
        log.close()
        CLEANUP.append(self.kill)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 300.0) -> float:
        assert self.proc is not None and self.notify is not None
        deadline = time.monotonic() + timeout
        while True:
            t = self.notify.first("READY=1")
            if t is not None:
                self.ready_s = t - self.started
                return self.ready_s
            if self.proc.poll() is not None:
                raise RuntimeError(f"cesard exited with {self.proc.returncode}: "
                                   f"{self.log()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"cesard not ready after {timeout:.0f} s")
            time.sleep(0.005)

    def log(self) -> str:
        try:
            return (self.dir / "cesard.log").read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def workers(self) -> list[int]:
        return children(self.pid)

    def memory(self) -> dict[str, Any]:
        w = self.workers()
        return {"supervisor_rss_kib": rss_kib(self.pid),
                "workers_rss_kib": [rss_kib(p) for p in w],
                "supervisor_pss_kib": pss_kib(self.pid),
                "workers_pss_kib": [pss_kib(p) for p in w]}

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                progress(f"cesard {self.pid} did not stop in {timeout:.0f} s; killing it")
        self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        if self.notify is not None:
            self.notify.close()
            self.notify = None

    def results(self) -> dict[str, dict[str, Any]]:
        out = {}
        for state in ("done", "failed"):
            for name in os.listdir(self.spool / state):
                p = self.spool / state / name / "result.json"
                if p.exists():
                    out[name] = json.loads(p.read_text())
        return out


def top_functions(prof: Path, n: int = 25) -> str:
    """cProfile output: the top functions by cumulative and by own time."""
    import io
    s = io.StringIO()
    st = pstats.Stats(str(prof), stream=s)
    st.strip_dirs().sort_stats("tottime").print_stats(n)
    st.sort_stats("cumulative").print_stats(n)
    return s.getvalue()


def fs_type(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if str(path).startswith(mnt) and len(mnt) > len(best):
                best, fstype = mnt, f"{parts[2]} ({parts[0]} on {mnt})"
    return fstype


def lpt(items: list[tuple[str, float]], k: int) -> list[list[str]]:
    """Longest-processing-time-first split of files into k groups of near-equal duration."""
    groups: list[list[str]] = [[] for _ in range(k)]
    loads = [0.0] * k
    for f, dur in sorted(items, key=lambda x: -x[1]):
        i = loads.index(min(loads))
        groups[i].append(f)
        loads[i] += dur
    return [g for g in groups if g]
