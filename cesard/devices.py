"""Devices: where workers run (CPU or CUDA GPUs), decided once at start.

``device: auto`` uses the GPUs CTranslate2 can see and falls back to the CPU
with one info line; ``device: cuda`` without a usable GPU stops the start with
one error naming the missing piece (exit 78, so systemd does not loop);
``cpu`` never looks. On CUDA, each worker process sees only its own GPU
(``CUDA_VISIBLE_DEVICES``), one worker per GPU by default. The CUDA libraries
come from the ``gpu`` extra (NVIDIA's cuBLAS and cuDNN wheels); their
directories are put on the workers' library path here, so nobody has to set
``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from dataclasses import dataclass

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(Exception):
    """The configured device cannot be used (exit 78)."""


@dataclass(frozen=True)
class Placement:
    """The resolved device: ``cpu``, or ``cuda`` with the GPU indexes workers pin to."""

    device: str
    indexes: tuple[int, ...]
    compute_type: str
    note: str

    def worker_device(self, n: int) -> str:
        """The device of the n-th worker: ``cpu`` or ``cuda:INDEX`` (round robin)."""
        if self.device == "cpu":
            return "cpu"
        return f"cuda:{self.indexes[n % len(self.indexes)]}"


def cuda_library_dirs() -> list[str]:
    """Library directories of NVIDIA's pip wheels (nvidia-cublas-cu12, -cudnn-cu12, ...)."""
    out = []
    for base in sys.path:
        out += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib")))
    return list(dict.fromkeys(out))


def worker_env(device: str, env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker on ``device`` (``cpu`` or ``cuda:N``)."""
    env = dict(env)
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
        libs = cuda_library_dirs()
        if libs:
            env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get(
                "LD_LIBRARY_PATH")])])
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU worker never touches a GPU
    return env


PROBE = ("import ctranslate2, json; "
         "print(json.dumps({'count': ctranslate2.get_cuda_device_count()}))")


def cuda_device_count() -> tuple[int, str]:
    """GPUs CTranslate2 can use, asked in a child process (with the workers' library
    path, and so that a broken CUDA install cannot take the supervisor down)."""
    env = worker_env("cuda:0", dict(os.environ))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        r = subprocess.run([sys.executable, "-P", "-c", PROBE], capture_output=True, text=True,
                           timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 0, f"the CUDA probe failed: {e}"
    if r.returncode != 0:
        return 0, f"the CUDA probe failed: {r.stderr.strip().splitlines()[-1:]}"
    import json
    return int(json.loads(r.stdout)["count"]), ""


def missing_piece(probe_error: str) -> str:
    """What stands between this box and a usable GPU, in one phrase."""
    if not glob.glob("/dev/nvidia[0-9]*"):
        if os.path.exists("/proc/driver/nvidia"):
            return ("no /dev/nvidia* device node is visible to this process (under systemd, "
                    "add the drop-in contrib/systemd/cesard.service.d/gpu.conf)")
        return "no NVIDIA driver is loaded (no /dev/nvidia0, no /proc/driver/nvidia)"
    if not cuda_library_dirs():
        return ("the CUDA libraries (cuBLAS, cuDNN) are not installed; install cesard's gpu "
                "extra into its environment (from the source tree: pip install '.[gpu]'), or "
                "the distribution's libcublas12 and libcudnn9")
    return probe_error or "CTranslate2 reports 0 CUDA devices"


def resolve(device: str, device_index: list[int], compute_type: str,
            count: tuple[int, str] | None = None) -> Placement:
    """The placement for the configured ``device``; DeviceError when cuda is unusable."""
    if device == "cpu":
        return Placement("cpu", (), "int8" if compute_type == "auto" else compute_type,
                         "device: cpu")
    n, err = count if count is not None else cuda_device_count()
    if n == 0:
        if device == "cuda":
            raise DeviceError(f"device: cuda, but no usable GPU: {missing_piece(err)}; or set "
                              "'device: auto' (falls back to the CPU) or 'device: cpu'")
        return Placement("cpu", (), "int8" if compute_type == "auto" else compute_type,
                         f"device: auto found no usable GPU ({missing_piece(err)}); "
                         "running on the CPU")
    indexes = tuple(device_index) if device_index else tuple(range(n))
    bad = [i for i in indexes if not 0 <= i < n]
    if bad:
        raise DeviceError(f"device_index {bad[0]} does not exist: CTranslate2 sees {n} GPU(s) "
                          f"(0 to {n - 1})")
    return Placement("cuda", indexes, "float16" if compute_type == "auto" else compute_type,
                     f"device: cuda, GPU(s) {', '.join(map(str, indexes))}")
