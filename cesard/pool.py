"""The worker pool's pieces: one worker process, how it is started, where it runs.

A worker is ``python -m cesard.worker`` with its device, models and limits on
the command line (see :mod:`cesard.worker` for the protocol). On CUDA each
worker sees only its own GPU; the n-th worker gets the n-th configured GPU
(round robin, :class:`cesard.devices.Placement`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cesard import config as configmod
from cesard import devices

if TYPE_CHECKING:
    from cesard.supervisor import Running


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
                "job": next(iter(self.jobs), None), "jobs": list(self.jobs),
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
