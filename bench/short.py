#!/usr/bin/env python3
"""Short clips, side by side in one run (issue 13): cesard with cross-job batching against
cesard without it, the raw faster-whisper loop, the ideal split, and the peers.

    .venv/bin/python bench/short.py                 # 30 clips, about 8 minutes on 2 cores
    .venv/bin/python bench/short.py --clips 8 --no-peers   # to check the bench itself
    .venv/bin/python bench/short.py --real          # real recordings, ../shared/speech

``--real`` takes the real recordings of ``../shared/speech`` (27 LJSpeech utterances
and 8 short phrases of other speakers, 1-10 s) instead of espeak clips; most have no
reference text, so the WER column is then the share of words that differ from the raw
loop's text (the unbatched decoding of faster-whisper itself).

Every system gets the same espeak-ng clips (2-30 s, bench/speech.py), the same model
(the bundled tiny.en, int8) and the same decoding (beam 5, VAD, temperature 0, no
conditioning on previous text) where it lets us set it:

* cesard: the real daemon, defaults (workers = CPUs, cpu_threads 1, batching on), jobs
  published into incoming/ one after another as a script would;
* cesard, ``batch_max_seconds: 0`` (one job per worker, as before issue 13);
* raw loop: one process, model loaded once, the files in order (bench/raw.py);
* ideal split: one raw process per CPU, files split by duration, all loaded first;
* whisper-ctranslate2 (the faster-whisper CLI): one call for all files, model loaded
  once; once with ``--threads`` = CPUs, once as an ideal split of 1-thread calls;
* wyoming-faster-whisper (a server, as Home Assistant uses it): one request per file,
  as many clients at once as CPUs, ``--cpu-threads`` = CPUs.

The peers are installed with pip into their own virtual environment
(``bench/.cache/peers``, made once); one that cannot be installed or run is reported
in the table, never skipped silently. Wall times exclude model loading for everything
(the daemon is READY, servers listening, raw processes loaded) except
whisper-ctranslate2, whose one call includes its own start (about 1 s, reported).
Writes ``bench/RESULTS-short.md`` with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import run as benchrun  # noqa: E402
import speech  # noqa: E402
from harness import Daemon, Events, copy_file_job, lpt, progress, publish, tempdir  # noqa: E402

PEERS = BENCH / ".cache" / "peers"
PEER_PACKAGES = ["whisper-ctranslate2", "wyoming-faster-whisper"]


def peer_venv() -> tuple[Path | None, str]:
    """The peers' virtual environment, made on first use; (python, error)."""
    py = PEERS / "bin" / "python"
    if (PEERS / ".complete").exists():
        return py, ""
    progress(f"installing {', '.join(PEER_PACKAGES)} into {PEERS}")
    shutil.rmtree(PEERS, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "venv", str(PEERS)], capture_output=True,
                       text=True)
    if r.returncode == 0:
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *PEER_PACKAGES],
                           capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["pip failed"])[-1][:200]
    (PEERS / ".complete").touch()
    return py, ""


def real_clips(n: int) -> list[dict[str, object]]:
    """Up to ``n`` real recordings from ../shared/speech: [{path, text, duration}]."""
    import wave

    root = BENCH.parent.parent / "shared" / "speech"
    files = sorted(root.glob("lj/*.wav")) + sorted(root.glob("voices/*.wav"))
    if not files:
        raise SystemExit(f"--real: no recordings under {root} (see its README)")
    out: list[dict[str, object]] = []
    for f in files[:n]:
        with wave.open(str(f)) as w:
            out.append({"path": f, "text": "", "duration": w.getnframes() / w.getframerate()})
    return out


def run_cesard(files: list[str], audio_s: float, **config: Any) -> dict[str, Any]:
    d = Daemon("short", **config)
    d.start(300)
    ev = Events(d.spool)
    try:
        builds = [(f, *copy_file_job(d.spool, Path(f))) for f in files]
        t0 = time.time()
        ids = {}
        for f, job_id, build in builds:
            publish(d.spool, job_id, build)
            ids[job_id] = f
        ev.wait(lambda: ev.finished() >= len(files), 120 + audio_s * 3, "jobs")
        wall = max(ev.seen["done"].values()) - t0
        res = d.results()
    finally:
        ev.close()
        d.stop()
    bad = [r for r in res.values() if r["status"] != "done"]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) failed: {bad[0].get('error')}")
    sizes = [int((r.get("decoding") or {}).get("batch_jobs") or 1) for r in res.values()]
    return {"wall_s": wall, "texts": {ids[j]: r["text"] for j, r in res.items()},
            "batch_jobs_mean": sum(sizes) / len(sizes)}


def run_wct2(py: Path, model: str, groups: list[list[str]], threads: int,
             out: Path) -> dict[str, Any]:
    """whisper-ctranslate2 over each group of files, one call per group, all at once."""
    exe = py.parent / "whisper-ctranslate2"
    shutil.rmtree(out, ignore_errors=True)
    procs = []
    t0 = time.time()
    for i, g in enumerate(groups):
        (out / str(i)).mkdir(parents=True)
        cmd = [str(exe), *g, "--model_directory", model, "--device", "cpu",
               "--compute_type", "int8", "--threads", str(threads), "--language", "en",
               "--beam_size", "5", "--vad_filter", "True", "--temperature", "0",
               "--condition_on_previous_text", "False", "--output_format", "txt",
               "--output_dir", str(out / str(i)), "--verbose", "False"]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, env=env))
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"whisper-ctranslate2 exited {p.returncode}: {err[-300:]}")
    wall = time.time() - t0
    texts = {}
    for i, g in enumerate(groups):
        for f in g:
            txt = out / str(i) / (Path(f).stem + ".txt")
            texts[f] = " ".join(txt.read_text().split())
    return {"wall_s": wall, "texts": texts}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WYOMING_CLIENT = r'''
import asyncio, json, sys, time, wave
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient

async def one(port, path):
    with wave.open(path) as w:
        rate, width, ch, data = w.getframerate(), w.getsampwidth(), w.getnchannels(), \
            w.readframes(w.getnframes())
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=rate, width=width, channels=ch).event())
        step = rate * width * ch  # one second a chunk, as a streaming client sends
        for i in range(0, len(data), step):
            await c.write_event(AudioChunk(rate=rate, width=width, channels=ch,
                                           audio=data[i:i + step]).event())
        await c.write_event(AudioStop().event())
        while True:
            ev = await c.read_event()
            if ev is None:
                raise SystemExit(f"server closed the connection on {path}")
            if Transcript.is_type(ev.type):
                return Transcript.from_event(ev).text

async def client(port, queue, texts):
    while queue:
        path = queue.pop(0)
        texts[path] = await one(port, path)

async def main():
    port, n, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    queue, texts = list(files), {}
    t0 = time.time()
    await asyncio.gather(*(client(port, queue, texts) for _ in range(n)))
    print(json.dumps({"wall_s": time.time() - t0, "texts": texts}))

asyncio.run(main())
'''


def run_wyoming(py: Path, model: str, files: list[str], ncpu: int,
                work: Path) -> dict[str, Any]:
    port = free_port()
    data = work / "wyoming-data"
    data.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [str(py.parent / "wyoming-faster-whisper"), "--uri", f"tcp://127.0.0.1:{port}",
         "--model", model, "--data-dir", str(data), "--local-files-only", "--device", "cpu",
         "--language", "en", "--compute-type", "int8", "--beam-size", "5",
         "--cpu-threads", str(ncpu), "--vad-filter"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"wyoming-faster-whisper exited {server.returncode}: "
                                   f"{(server.stderr.read() if server.stderr else '')[-300:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("wyoming-faster-whisper did not listen in 120 s") \
                        from None
                time.sleep(0.2)
        client = work / "wyoming_client.py"
        client.write_text(WYOMING_CLIENT)
        # A first request loads the model (lazily): not timed, as for the others.
        subprocess.run([str(py), str(client), str(port), "1", files[0]], check=True,
                       capture_output=True, timeout=300)
        r = subprocess.run([str(py), str(client), str(port), str(ncpu), *files],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"wyoming client failed: {r.stderr[-300:]}")
        out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
        return out
    finally:
        server.kill()
        server.wait()


def machine() -> dict[str, str]:
    b = benchrun.Bench(argparse.Namespace(quick=False))
    return b.machine()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=30)
    p.add_argument("--no-peers", action="store_true", help="cesard and raw faster-whisper only")
    p.add_argument("--no-write", action="store_true", help="print, do not write RESULTS-short.md")
    p.add_argument("--real", action="store_true",
                   help="real recordings from ../shared/speech instead of espeak clips; "
                        "WER then against the raw loop's text")
    a = p.parse_args()
    t_start = time.time()
    bench = benchrun.Bench(argparse.Namespace(quick=False))
    ncpu = bench.ncpu
    clips = real_clips(a.clips) if a.real else speech.make_clips(a.clips)
    files = [str(c["path"]) for c in clips]
    refs = {str(c["path"]): str(c["text"]) for c in clips}
    audio_s = sum(float(c["duration"]) for c in clips)  # type: ignore[arg-type]
    durations = sorted(float(c["duration"]) for c in clips)  # type: ignore[arg-type]
    groups = lpt([(f, float(c["duration"])) for f, c in zip(files, clips, strict=True)], ncpu)
    work = tempdir("short")
    rows: list[tuple[str, dict[str, Any] | None, str]] = []

    def attempt(name: str, fn: Any) -> None:
        progress(f"{name} ...")
        try:
            r = fn()
            progress(f"{name}: {r['wall_s']:.2f} s")
            rows.append((name, r, ""))
        except Exception as e:  # noqa: BLE001 - reported in the table
            progress(f"{name}: FAILED {e}")
            rows.append((name, None, f"{type(e).__name__}: {e}"[:300]))

    attempt("cesard, defaults", lambda: run_cesard(files, audio_s))
    attempt("cesard, batch_size: 8 (cross-job batching)",
            lambda: run_cesard(files, audio_s, batch_size=8))
    attempt("cesard, batch_max_seconds: 0 (one job per worker)",
            lambda: run_cesard(files, audio_s, batch_max_seconds=0))
    attempt("raw loop: 1 process, 1 thread", lambda: bench.run_parallel([files], "--threads", "1"))
    attempt(f"ideal split: {ncpu} raw processes, 1 thread each",
            lambda: bench.run_parallel(groups, "--threads", "1"))
    if not a.no_peers:
        py, err = peer_venv()
        if py is None:
            for name in ("whisper-ctranslate2", "wyoming-faster-whisper"):
                rows.append((name, None, f"could not be installed: {err}"))
        else:
            attempt(f"whisper-ctranslate2: 1 call, --threads {ncpu}",
                    lambda: run_wct2(py, bench.model, [files], ncpu, work / "wct2-a"))
            attempt(f"whisper-ctranslate2: {ncpu} calls (ideal split), --threads 1",
                    lambda: run_wct2(py, bench.model, groups, 1, work / "wct2-b"))
            attempt(f"wyoming-faster-whisper: {ncpu} clients, --cpu-threads {ncpu}",
                    lambda: run_wyoming(py, bench.model, files, ncpu, work))

    res = {name: r for name, r, _ in rows if r is not None}
    if a.real and "raw loop: 1 process, 1 thread" in res:
        refs = dict(res["raw loop: 1 process, 1 thread"]["texts"])

    def wer(r: dict[str, Any]) -> float:
        return speech.wer([refs[f] for f in files], [r["texts"].get(f, "") for f in files])

    ces = res.get("cesard, defaults")
    batched = res.get("cesard, batch_size: 8 (cross-job batching)")
    ideal = res.get(f"ideal split: {ncpu} raw processes, 1 thread each")
    raw = res.get("raw loop: 1 process, 1 thread")
    lines = ["| system | wall | x realtime | cesard speed-up over it | WER |",
             "|---|---|---|---|---|"]
    for name, r, err in rows:
        if r is None:
            lines.append(f"| {name} | not run: {err} | | | |")
            continue
        extra = (f" (mean batch {r['batch_jobs_mean']:.1f} jobs)"
                 if "batch_jobs_mean" in r else "")
        speed = f"{r['wall_s'] / ces['wall_s']:.2f}x" if ces else "-"
        lines.append(f"| {name}{extra} | {r['wall_s']:.2f} s | {audio_s / r['wall_s']:.1f}x "
                     f"| {speed} | {wer(r) * 100:.2f}% |")
    peers = {n: r for n, r in res.items() if n.startswith(("whisper-ct", "wyoming"))}
    summary = []
    if ces and ideal:
        x = ideal["wall_s"] / ces["wall_s"]
        summary.append(f"- cesard / ideal split: **{x:.2f}x** (target >= 2.0x: "
                       f"{'met' if x >= 2.0 else 'MISSED'})")
    if ces and peers:
        best_name, best = min(peers.items(), key=lambda kv: kv[1]["wall_s"])
        x = best["wall_s"] / ces["wall_s"]
        summary.append(f"- cesard / best peer ({best_name}): **{x:.2f}x** (target >= 3.0x: "
                       f"{'met' if x >= 3.0 else 'MISSED'})")
    solo = res.get("cesard, batch_max_seconds: 0 (one job per worker)")
    if batched and solo:
        dw = (wer(batched) - wer(solo)) * 100
        summary.append(f"- WER batched {wer(batched) * 100:.2f}% vs unbatched "
                       f"{wer(solo) * 100:.2f}%: {dw:+.2f} points (target: at most +0.2: "
                       f"{'met' if dw <= 0.2 else 'MISSED'}); batched / unbatched speed "
                       f"{solo['wall_s'] / batched['wall_s']:.2f}x")
    if ces and raw:
        dw = (wer(ces) - wer(raw)) * 100
        summary.append(f"- WER cesard {wer(ces) * 100:.2f}% vs raw loop {wer(raw) * 100:.2f}%: "
                       f"{dw:+.2f} points (target: within 0.3 points, or better: "
                       f"{'met' if dw <= 0.3 else 'MISSED'})")
    m = machine()
    text = "\n".join([
        "# Short clips: cesard (defaults, batched, unbatched), the raw loop and the peers", "",
        f"Command: `{Path(sys.executable).name} bench/short.py"
        f"{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"({(time.time() - t_start) / 60:.1f} min)", "",
        *[f"- **{k}**: {v}" for k, v in m.items()], "",
        f"{len(files)} {'real recordings' if a.real else 'espeak-ng clips'}, "
        f"{audio_s:.0f} s of audio ({durations[0]:.1f} to "
        f"{durations[-1]:.1f} s each); tiny.en int8 on the CPU; beam 5, VAD, temperature 0."
        + (" WER: words that differ from the raw loop's text (no references)."
           if a.real else ""),
        "", *lines, "", *summary, ""])
    print(text)
    if not a.no_write:
        (BENCH / ("RESULTS-short-real.md" if a.real else "RESULTS-short.md")).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
