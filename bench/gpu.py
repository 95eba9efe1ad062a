"""GPU figures, side by side in one run (issue 10): real-time factors of tiny.en and base,

* float16 on the GPU against int8 on the CPU (one thread, as the daemon runs),
* on the GPU, batched (BatchedInferencePipeline) against sequential decoding,
* two worker processes sharing one GPU against one process batching.

Run it where a GPU is: ``.venv/bin/python bench/gpu.py [--minutes 5]``. Without a usable
GPU it says so, prints the CPU figures, and exits 0. The audio is the repo's English
fixtures repeated to the length asked (German for base would change nothing here).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))


def long_wav(path: Path, seconds: float) -> Path:
    frames = b""
    for name in ("hello", "numbers", "weather"):
        with wave.open(str(FIXTURES / f"{name}.wav")) as w:
            params = w.getparams()
            frames += w.readframes(w.getnframes())
    need = int(seconds * params.framerate) * params.sampwidth
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes((frames * (need // len(frames) + 1))[:need])
    path.write_bytes(out.getvalue())
    return path


ONE = r"""
import json, sys, time
from faster_whisper import WhisperModel, BatchedInferencePipeline
path, device, compute, batched, audio = sys.argv[1:6]
m = WhisperModel(path, device=device, compute_type=compute, cpu_threads=1)
t = time.monotonic()
if batched == "1":
    segs, info = BatchedInferencePipeline(m).transcribe(audio, batch_size=16, temperature=0.0)
else:
    segs, info = m.transcribe(audio, beam_size=5, vad_filter=True, temperature=0.0,
                              condition_on_previous_text=False)
n = sum(len(s.text.split()) for s in segs)
print(json.dumps({"seconds": time.monotonic() - t, "duration": info.duration, "words": n}))
"""


def run_one(model: str, device: str, compute: str, batched: bool, audio: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", ONE, model, device, compute,
                        "1" if batched else "0", str(audio)], capture_output=True, text=True,
                       timeout=3600)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1:]}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["rtf"] = round(d["duration"] / d["seconds"], 1)
    return d


def two_on_one_gpu(model: str, audio: Path) -> float:
    """Wall time of two processes, each transcribing the file, sharing GPU 0."""
    t = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", ONE, model, "cuda", "float16", "0",
                               str(audio)], stdout=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        p.wait()
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5.0)
    a = ap.parse_args()
    from cesard import devices, models

    base = models.assemble_base()
    paths = {"tiny.en": models.bundled()["tiny.en"]}
    if base is not None:
        paths["base"] = str(base)
    audio = long_wav(Path("/tmp/cesard-gpu-bench.wav"), a.minutes * 60)
    count, err = devices.cuda_device_count()
    print(f"audio: {a.minutes:g} min; CUDA devices: {count} {err}")
    for name, path in paths.items():
        cpu = run_one(path, "cpu", "int8", False, audio)
        print(f"{name}: CPU int8 sequential: {cpu}")
        if not count:
            continue
        gpu = run_one(path, "cuda", "float16", False, audio)
        gpub = run_one(path, "cuda", "float16", True, audio)
        print(f"{name}: GPU float16 sequential: {gpu}")
        print(f"{name}: GPU float16 batched 16: {gpub}")
        if "rtf" in gpu and "rtf" in cpu and "rtf" in gpub:
            print(f"{name}: GPU/CPU {gpu['rtf'] / cpu['rtf']:.1f}x; batched/sequential on GPU "
                  f"{gpub['rtf'] / gpu['rtf']:.2f}x")
            two = two_on_one_gpu(path, audio)
            one_batched = 2 * gpub["seconds"]
            print(f"{name}: two processes on one GPU, the file each: {two:.1f} s; one process "
                  f"batching both in turn: {one_batched:.1f} s "
                  f"(batching {two / one_batched:.2f}x faster)")
    if not count:
        print(f"no usable GPU here ({devices.missing_piece(err)}): GPU figures not measured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
