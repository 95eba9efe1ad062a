"""The worker process: loads its model once, then transcribes jobs one at a time.

Protocol (JSON lines). The supervisor writes to the worker's stdin::

    {"op": "job", "id": ID, "audio": PATH, "name": NAME, "options": {...},
     "fallback_model": NAME | null}     the multilingual model, should the speech not be
                                        English (cesard.job.route_language)
    {"op": "batch", "jobs": [{"id": ID, "audio": PATH, ...}, ...]}   short jobs, together

For a batch, every job gets its own replies below, in the order they complete.

and reads from the file descriptor given by ``--reply-fd``::

    {"op": "ready", "pid": PID, "models": [...]}      models loaded
    {"op": "fatal", "error": {...}}                   could not start; exits
    {"op": "begin", "id": ID}                         work on it begins (until then it waits)
    {"op": "progress", "id": ID, "fraction": F}       at most every 0.5 s
    {"op": "done", "id": ID, "transcript": {...}, "source": {...}, "transcribe_s": S}
    {"op": "error", "id": ID, "error": {...}, "source": {...} | null}

EOF on stdin asks the worker to exit. The worker ignores SIGINT and SIGTERM
(the supervisor decides when it stops, docs/spool.md) and dies with its parent.
stdout is redirected to stderr so that library prints cannot corrupt replies.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import os
import resource
import signal
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO

from cesard import batch, checkpoint, speakers, turns
from cesard import job as jobmod
from cesard.batch import Clip
from cesard.engine import Engine
from cesard.engines import make_engine
from cesard.spool import STORAGE_ERRNOS
from cesard.systemd import setup_logging

log = logging.getLogger("cesard.worker")
PR_SET_PDEATHSIG = 1
# A job with no model is decoded again by its multilingual fallback when that model hears
# another language at least this likely (base said 0.49 of espeak French, which the
# English-only tiny.en was unsure of); the surer of the two texts is kept.
FALLBACK_PROBABILITY = 0.2


def die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def open_audio(path: str, name: str) -> tuple[BinaryIO, dict[str, Any]]:
    """Open without following links or blocking; hash it; return file and source info."""
    shown = jobmod.display_name(name)
    try:
        return _open_audio(path, shown)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise storage_error(shown, e) from e
        raise


def storage_error(shown: str, e: OSError) -> jobmod.JobError:
    """A read the spool's storage did not answer (a network filesystem away): transient,
    the job is tried again."""
    return jobmod.TransientError(f"the spool's storage did not answer reading {shown} "
                                 f"({e.strerror}); it is tried again")


def _open_audio(path: str, shown: str) -> tuple[BinaryIO, dict[str, Any]]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise
        raise jobmod.UnsupportedFile(f"cannot open {shown}: {e.strerror}") from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise jobmod.UnsupportedFile(f"{shown} is not a regular file")
    if st.st_nlink > 1:
        os.close(fd)
        raise jobmod.UnsupportedFile(f"{shown} has {st.st_nlink} hard links; copy the audio "
                                     "itself (hard links are never taken)")
    os.set_blocking(fd, True)
    # The daemon answers for the audio from now on: a copy its writer never synced (cp)
    # goes to disk here, off the supervisor's loop (issue 20: after a power cut no done
    # job has a 0-byte recording beside its result).
    os.fsync(fd)
    f = os.fdopen(fd, "rb")
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return f, {"name": shown, "type": "regular file", "bytes": st.st_size,
               "sha256": h.hexdigest()}


def fallback_reason(transcript: dict[str, Any], fallback: Any) -> dict[str, Any] | None:
    """The language warning that sends a job to its fallback model: the English-only
    model was unsure and the multilingual one heard another language (at p >=
    FALLBACK_PROBABILITY)."""
    w = transcript.get("language_warning") or {}
    if not fallback or not w.get("detected") or w["detected"] == "en" or \
            (w.get("probability") or 0) < FALLBACK_PROBABILITY:
        return None
    return dict(w)


class Worker:
    def __init__(self, engine: Engine, reply_fd: int, batch_max_seconds: float = 30.0) -> None:
        self.engine = engine
        self.reply_fd = reply_fd
        self.batch_max_seconds = batch_max_seconds

    def send(self, msg: dict[str, Any]) -> None:
        data = (json.dumps(msg, ensure_ascii=False) + "\n").encode()
        view = memoryview(data)
        while view:
            n = os.write(self.reply_fd, view)
            view = view[n:]

    def run_job(self, msg: dict[str, Any]) -> None:
        job_id = str(msg["id"])
        source = None
        last = [0.0, -1.0]

        def progress(fraction: float, duration: float | None) -> None:
            t = time.monotonic()
            if duration is not None:
                self.send({"op": "progress", "id": job_id, "fraction": round(fraction, 4),
                           "duration": duration})
            elif fraction >= 1.0 or t - last[0] >= 0.5 or fraction - last[1] >= 0.02:
                # (a batched engine yields a batch's segments at once, then computes: the
                # last of them must not be dropped by the half-second rate limit)
                last[0], last[1] = t, fraction
                self.send({"op": "progress", "id": job_id, "fraction": round(fraction, 4)})

        start = time.monotonic()
        self.send({"op": "begin", "id": job_id})
        try:
            options = jobmod.parse_options(msg["options"])
            audio, source = open_audio(msg["audio"], msg["name"])
            path = Path(msg["segments"]) if msg.get("segments") else None
            want = checkpoint.key(source["sha256"], self.engine.name, options)
            resume = checkpoint.load(path.parent, want) if path is not None else None
            if resume is not None:
                log.info("job=%s resumes at %.1f s (%d segments kept from an earlier "
                         "attempt)", job_id, resume.at, len(resume.segments))
            fell_back = msg.get("fell_back")  # a batch found the speech not English
            first = msg.get("first")  # and what the English-only model made of it
            if fell_back:
                audio.close()
            else:
                with audio, checkpoint.LiveSegments(path, want, resume) as live:
                    transcript = self.engine.transcribe(audio, msg["name"], options,
                                                        progress, live, resume)
                fell_back = fallback_reason(transcript, msg.get("fallback_model"))
                first = transcript
            if fell_back:
                transcript = self.fall_back(msg, options, fell_back, progress, first)
            if options.diarize:
                transcript = self.diarize(msg, options, transcript)
        except Exception as e:  # noqa: BLE001 - any engine bug fails the job, not the worker
            self.failed(job_id, e, source)
            return
        self.send({"op": "done", "id": job_id, "transcript": transcript, "source": source,
                   "transcribe_s": round(time.monotonic() - start, 4),
                   "models": self.engine.loaded_models()})

    def fall_back(self, msg: dict[str, Any], options: jobmod.JobOptions,
                  why: dict[str, Any], progress: Callable[[float, float | None], None],
                  first: dict[str, Any] | None) -> dict[str, Any]:
        """Decode the job again with its fallback model (multilingual), which detects the
        language itself, and keep that text when the model is surer of it than the first
        was of ``first`` (the English-only model's transcript; None when a batch gave it
        up); the result says why (``language_fallback``)."""
        model = str(msg["fallback_model"])
        log.info("job=%s: model %s heard language %r (p=%.2f), not English: decoding "
                 "again with model %s", msg["id"], options.model, why["detected"],
                 why["probability"], model)
        audio, _ = open_audio(msg["audio"], msg["name"])
        with audio:
            transcript = self.engine.transcribe(audio, msg["name"],
                                                replace(options, model=model), progress)
        mine = (transcript.get("decoding") or {}).get("mean_logprob")
        if first is not None and (mine is None or mine <= why["mean_logprob"]):
            # the multilingual model is no surer of it: the first text stands, with its
            # warning (noisy English that sounded foreign, say)
            log.info("job=%s: model %s was no surer (%s); the text of %s stands", msg["id"],
                     model, mine, options.model)
            warning = dict(first.get("language_warning") or {})
            if warning.get("message"):
                warning["message"] += f" (model {model} was tried and was no surer)"
            return dict(first, language_warning=warning or None)
        transcript["language_warning"] = None
        transcript["language_fallback"] = {
            "from": options.model, "to": model, "mean_logprob": why["mean_logprob"],
            "detected": why["detected"], "probability": why["probability"],
            "fallback_logprob": mine}
        return transcript

    def diarize(self, msg: dict[str, Any], options: jobmod.JobOptions,
                transcript: dict[str, Any]) -> dict[str, Any]:
        """Speakers on the transcript (:mod:`cesard.speakers`, :mod:`cesard.turns`). A
        failure keeps the transcript and says why in ``diarization.error``."""
        start = time.monotonic()
        info: dict[str, Any] = {"model": speakers.MODEL, "speakers": None, "seconds": None,
                                "error": None}
        try:
            samples = self.engine.last_samples(msg["name"])
            if samples is None:  # an engine that keeps none (the fake one) decodes again
                audio, _ = open_audio(msg["audio"], msg["name"])
                with audio:
                    samples, _ = self.engine.prepare(audio, msg["name"], options)
            if not hasattr(samples, "dtype"):
                raise speakers.DiarizationError("this engine gives no audio to diarize")
            lo, hi = options.min_speakers or 1, options.max_speakers or speakers.MAX_SPEAKERS
            centres, labels = speakers.diarize(samples, options.speakers, min(lo, hi),
                                               max(lo, hi))
            segments = turns.apply(transcript.get("segments") or [], centres, labels)
            talk = turns.talk_times(segments)
            transcript = dict(transcript, segments=segments, speakers=talk)
            info["speakers"] = len(talk)
        except Exception as e:  # noqa: BLE001 - the transcript stands without speakers
            log.warning("job=%s diarization failed: %s: %s", msg["id"], type(e).__name__, e)
            info["error"] = f"{type(e).__name__}: {e}"
            transcript = dict(transcript, speakers=None)
        info["seconds"] = round(time.monotonic() - start, 3)
        transcript["diarization"] = info
        return transcript

    def failed(self, job_id: str, e: Exception, source: dict[str, Any] | None) -> None:
        """Tell the supervisor that ``job_id`` failed with ``e`` (it logs it, once)."""
        if isinstance(e, jobmod.JobError):
            self.send({"op": "error", "id": job_id, "error": e.to_dict(), "source": source,
                       "models": self.engine.loaded_models()})
            if e.type == "CudaOutOfMemory":
                raise SystemExit(4) from e  # a fresh process gets a clean GPU memory pool
            return
        if isinstance(e, MemoryError):
            err: jobmod.JobError = jobmod.TransientError(
                "the worker ran out of memory (worker_memory_limit)")
        elif isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            err = storage_error(f"job {job_id}'s audio", e)
        else:
            log.warning("job=%s engine error", job_id, exc_info=e)
            err = jobmod.EngineError(f"{type(e).__name__}: {e}")
        self.send({"op": "error", "id": job_id, "error": err.to_dict(), "source": source})

    def run_batch(self, msgs: list[dict[str, Any]]) -> None:
        """Short jobs decoded together (:mod:`cesard.batch`); each still gets its own
        progress, result or error. Long ones, word timestamps and any the shared pass
        gives back run alone afterwards."""
        start = time.monotonic()
        alone: list[dict[str, Any]] = []
        by_id: dict[str, dict[str, Any]] = {}
        sources: dict[str, dict[str, Any]] = {}
        groups: dict[tuple[Any, ...], list[Clip]] = {}
        for msg in msgs:
            job_id, source = str(msg["id"]), None
            try:
                options = jobmod.parse_options(msg["options"])
                if options.word_timestamps or options.diarize:  # (diarize: its audio again)
                    alone.append(msg)
                    continue
                audio, source = open_audio(msg["audio"], msg["name"])
                with audio:
                    samples, duration = self.engine.prepare(audio, msg["name"], options)
            except Exception as e:  # noqa: BLE001 - this job fails alone
                self.failed(job_id, e, source)
                continue
            if duration > self.batch_max_seconds:
                alone.append(msg)
                continue
            self.send({"op": "progress", "id": job_id, "fraction": 0.0, "duration": duration})
            by_id[job_id], sources[job_id] = msg, source
            groups.setdefault(batch.text_key(options), []).append(
                Clip(job_id, options, samples, duration, name=str(msg["name"])))

        def progress(clip: Clip, fraction: float) -> None:
            self.send({"op": "progress", "id": clip.id, "fraction": round(fraction, 4)})

        for clips in groups.values():
            pending = {c.id for c in clips}
            for c in clips:  # decoded together from here (the others wait for their turn)
                self.send({"op": "begin", "id": c.id})
            try:
                for clip, transcript in self.engine.transcribe_many(clips, progress):
                    pending.discard(clip.id)
                    if transcript is None:
                        alone.append(by_id[clip.id])
                        continue
                    why = fallback_reason(transcript, by_id[clip.id].get("fallback_model"))
                    if why:  # not English: decoded again, alone, by the multilingual model
                        alone.append(dict(by_id[clip.id], fell_back=why, first=transcript))
                        continue
                    if by_id[clip.id].get("segments"):
                        checkpoint.write_all(Path(by_id[clip.id]["segments"]),
                                             transcript["segments"])
                    self.send({"op": "done", "id": clip.id, "transcript": transcript,
                               "source": sources[clip.id],
                               "transcribe_s": round(time.monotonic() - start, 4),
                               "models": self.engine.loaded_models()})
            except Exception:  # noqa: BLE001 - a shared-pass bug: each job runs alone
                log.warning("batch of %d job(s) failed; running each alone", len(clips),
                            exc_info=True)
            alone.extend(by_id[c.id] for c in clips if c.id in pending)
        for msg in alone:
            self.run_job(msg)

    def serve(self, commands: BinaryIO) -> None:
        for line in commands:
            msg = json.loads(line)
            if msg.get("op") == "job":
                self.run_job(msg)
            elif msg.get("op") == "batch":
                self.run_batch(list(msg["jobs"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cesard-worker")
    p.add_argument("--engine", required=True)
    p.add_argument("--models", required=True, help="JSON map of model name to directory")
    p.add_argument("--preload", action="append", default=[])
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--max-loaded-models", type=int, default=2)
    p.add_argument("--cpu-threads", type=int, default=1)
    p.add_argument("--max-audio-seconds", type=float, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batch-min-seconds", type=float, default=0)
    p.add_argument("--batch-max-seconds", type=float, default=30)
    p.add_argument("--memory-limit", default="0")
    p.add_argument("--reply-fd", type=int, required=True)
    p.add_argument("--log-level", default="info")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
    setup_logging(a.log_level, "cesard-worker")
    if os.environ.get("CESAR_LOG_SYSLOG"):
        from cesard.daemonize import use_syslog
        use_syslog("cesard-worker")
    # faster-whisper logs per-file lines without the job id; the supervisor logs each job.
    logging.getLogger("faster_whisper").setLevel(logging.WARNING)
    commands = sys.stdin.buffer
    # Library prints must not reach the protocol: send stdout to stderr.
    os.dup2(2, 1)
    if a.memory_limit not in ("0", "auto"):
        resource.setrlimit(resource.RLIMIT_AS, (int(a.memory_limit), int(a.memory_limit)))
    engine = make_engine(a.engine, json.loads(a.models), a.compute_type, a.cpu_threads,
                         a.max_audio_seconds, a.batch_size, a.batch_min_seconds, a.device,
                         a.max_loaded_models)
    worker = Worker(engine, a.reply_fd, a.batch_max_seconds)
    loading = time.monotonic()
    try:
        for model in a.preload:
            engine.load(model, pin=True)
    except jobmod.JobError as e:
        worker.send({"op": "fatal", "error": e.to_dict()})
        return 3
    log.info("loaded %s on %s in %.1f s", ", ".join(engine.loaded_models()), a.device,
             time.monotonic() - loading)
    headroom = auto_headroom(a.max_audio_seconds)
    if a.memory_limit == "auto" and a.device == "cpu" and headroom is not None:
        limit_memory(headroom)
    worker.send({"op": "ready", "pid": os.getpid(), "models": engine.loaded_models()})
    worker.serve(commands)
    return 0


# worker_memory_limit: auto. What a CPU worker may grow by once its models are loaded:
# a second model and the decoding of the longest audio allowed (max_audio_seconds). The
# worker's address space grew by 3.4 GB for 3 h of audio (tiny.en, measured: about five
# times its float32 samples, which faster-whisper decodes whole and joins).
AUTO_MEMORY_BASE = 1 << 30
AUTO_MEMORY_PER_SECOND = 5 * 16000 * 4


def auto_headroom(max_audio_seconds: float) -> int | None:
    """The address space a CPU worker may add to its loaded size (None: no cap, as when
    max_audio_seconds is 0)."""
    if max_audio_seconds <= 0:
        return None
    return AUTO_MEMORY_BASE + int(AUTO_MEMORY_PER_SECOND * max_audio_seconds)


def limit_memory(headroom: int) -> None:
    """Cap this process's address space at its size now plus ``headroom`` (RLIMIT_AS): a
    job that needs more fails its attempt with a clear error, never the machine."""
    try:
        status = Path("/proc/self/status").read_text()
        size = int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmSize:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return
    resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
    log.debug("address space capped at %d MiB (worker_memory_limit: auto)",
              (size + headroom) >> 20)


if __name__ == "__main__":
    sys.exit(main())
