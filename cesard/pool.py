"""The worker pool: the worker processes, how they are started, where they run, and
what they say. It knows which jobs each worker holds, never what becomes of them:
what a worker said goes to :mod:`cesard.replies`, which has the lifecycle decide.

A worker is ``python -m cesard.worker`` with its device, models and limits on
the command line (see :mod:`cesard.worker` for the protocol). On CUDA each
worker sees only its own GPU; the n-th worker gets the n-th configured GPU
(round robin, :class:`cesard.devices.Placement`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cesard import config as configmod
from cesard import devices
from cesard.running import Running
from cesard.settings import Settings

log = logging.getLogger("cesard")


class StartupError(Exception):
    """The daemon cannot start (a model failed to load, the spool is unusable)."""


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    reply_fd: int
    generation: int
    spawned: float
    device: str = "cpu"  # "cpu" or "cuda:N"
    ready: bool = False
    jobs: dict[str, Running] = field(default_factory=dict)  # what it transcribes now, by id
    batched: bool = False  # those jobs were sent together (cross-job batching)
    served: int = 0
    retiring: bool = False
    models: list[str] = field(default_factory=list)  # held now, least recently used first
    buf: bytearray = field(default_factory=bytearray)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def to_status(self) -> dict[str, Any]:
        return {"pid": self.pid, "ready": self.ready,
                "job": next((i for i, j in self.jobs.items() if j.begun), None),
                "jobs": list(self.jobs),
                "device": self.device, "models": list(self.models)}


def worker_count(cfg: configmod.Config, placement: devices.Placement) -> int:
    """``workers``, else one per GPU on CUDA (more processes on one GPU do not scale),
    else one per CPU."""
    if cfg.workers:
        return cfg.workers
    if placement.device == "cuda":
        return len(placement.indexes)
    return cfg.worker_count


def free_device(workers: list[WorkerProc], placement: devices.Placement) -> str:
    """The device for a new worker: the configured one with the fewest live workers."""
    if placement.device == "cpu":
        return "cpu"
    live = [w.device for w in workers if not w.retiring]
    return min((f"cuda:{i}" for i in placement.indexes), key=live.count)


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return os.get_inheritable(fd) or fd > 2


def spawn(cfg: configmod.Config, placement: devices.Placement, device: str,
          generation: int) -> WorkerProc:
    """Start one worker on ``device``."""
    r, w = os.pipe()
    preload = list(dict.fromkeys([cfg.job_defaults().model, *cfg.preload_models]))
    # -P: never import cesard from the current directory (python -m would).
    cmd = [sys.executable, "-P", "-m", "cesard.worker", "--engine", cfg.engine,
           "--models", json.dumps(cfg.model_dirs), "--compute-type", placement.compute_type,
           "--device", "cuda" if device.startswith("cuda") else "cpu",
           "--cpu-threads", str(cfg.cpu_threads),
           "--max-audio-seconds", str(cfg.max_audio_seconds),
           "--batch-size", str(cfg.batch_size),
           "--batch-min-seconds", str(cfg.batch_min_seconds),
           "--batch-max-seconds", str(cfg.batch_max_seconds),
           "--max-loaded-models", str(cfg.max_loaded_models),
           "--memory-limit", str(cfg.worker_memory_limit),
           "--reply-fd", str(w), "--log-level", cfg.log_level]
    for m in preload:
        cmd += ["--preload", m]
    env = devices.worker_env(device, dict(os.environ))
    env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
    env.setdefault("OMP_NUM_THREADS", str(cfg.cpu_threads))
    # Under --detach, fds 1 and 2 may be closed (python-daemon): a worker then gets
    # /dev/null there and logs to syslog like the supervisor (CESAR_LOG_SYSLOG).
    out: int | None = None if _open(1) else subprocess.DEVNULL
    err: int | None = None if _open(2) else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, pass_fds=(w,),
                            env=env, close_fds=True)
    os.close(w)
    os.set_blocking(r, False)
    return WorkerProc(proc, r, generation, time.time(), device)


class Pool:
    """The worker processes. Verbs: start and stop them, say which are idle, read what
    they wrote."""

    def __init__(self, settings: Settings, placement: devices.Placement) -> None:
        self.settings = settings
        self.placement = placement
        self.workers: list[WorkerProc] = []
        self.generation = 0  # a reload that changes workers' settings starts the next
        self.spawn_backoff = 0.0

    def spawn(self) -> WorkerProc:
        wp = spawn(self.settings.cfg, self.placement,
                   free_device(self.workers, self.placement), self.generation)
        self.workers.append(wp)
        log.debug("worker %d started on %s", wp.pid, wp.device)
        return wp

    def start(self) -> None:
        for _ in range(worker_count(self.settings.cfg, self.placement)):
            self.spawn()

    def close(self, w: WorkerProc) -> None:
        """Ask a worker to exit when it is idle (EOF on its stdin)."""
        if w.proc.stdin and not w.proc.stdin.closed:
            try:
                w.proc.stdin.close()
            except OSError:
                pass

    def kill(self, w: WorkerProc) -> None:
        try:
            w.proc.kill()
        except ProcessLookupError:
            pass
        w.proc.wait()
        self.reap(w)

    def reap(self, w: WorkerProc) -> None:
        if w in self.workers:
            self.workers.remove(w)
        os.close(w.reply_fd)
        self.close(w)

    def renew(self) -> None:
        """Workers of the settings in force from now: the others retire when idle."""
        self.generation += 1

    def ready(self, w: WorkerProc) -> None:
        w.ready = True
        self.spawn_backoff = 0.0

    def keep(self, now: float, stopping: bool, started: bool) -> None:
        """Replace workers that exited; retire idle ones of an old generation."""
        for w in list(self.workers):
            if w.generation != self.generation and not w.jobs and not w.retiring:
                w.retiring = True
                self.close(w)
        if stopping or now < self.spawn_backoff:
            return
        live = [w for w in self.workers if not w.retiring]
        wanted = worker_count(self.settings.cfg, self.placement)
        if len(live) < wanted:
            for _ in range(wanted - len(live)):
                self.spawn()
            if started:
                self.spawn_backoff = now + 1.0  # back off if workers keep dying early

    def all_ready(self) -> bool:
        return bool(self.workers) and all(w.ready for w in self.workers)

    def idle(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.ready and not w.jobs and not w.retiring
                and w.generation == self.generation]

    def busy(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.jobs]

    def running(self) -> Iterator[tuple[WorkerProc, Running]]:
        for w in list(self.workers):
            for job in list(w.jobs.values()):
                yield w, job

    def holding(self, job_id: str) -> WorkerProc | None:
        return next((w for w in self.workers if job_id in w.jobs), None)

    def fds(self) -> list[int]:
        return [w.reply_fd for w in self.workers]

    def read(self, w: WorkerProc) -> tuple[list[dict[str, Any] | None], bool]:
        """The complete replies ``w`` wrote (None for a malformed one), and whether it
        is gone (EOF)."""
        gone = False
        while True:
            try:
                chunk = os.read(w.reply_fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                gone = True
                break
            w.buf += chunk
        out: list[dict[str, Any] | None] = []
        while b"\n" in w.buf:
            line, _, rest = bytes(w.buf).partition(b"\n")
            w.buf = bytearray(rest)
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            out.append(msg if isinstance(msg, dict) else None)
        return out, gone

    def stop_all(self) -> None:
        """Close every worker, wait for it (kill it after 5 s) and reap it."""
        for w in list(self.workers):
            self.close(w)
        for w in list(self.workers):
            try:
                w.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self.reap(w)
