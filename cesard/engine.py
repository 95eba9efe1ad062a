"""Engines: one interface, chosen by config name.

``transcribe(audio, name, options, progress) -> Transcript`` where ``audio``
is an open binary file (opened by the worker without following links),
``progress(fraction, duration)`` takes a fraction in [0, 1] and, once
known, the audio duration in seconds (engines call ``progress(0.0, duration)``
as soon as they know it, so the supervisor can set the job's timeout), and
the transcript is a plain dict::

    {"text", "segments": [{"start", "end", "text", "words"}], "language",
     "language_probability", "duration", "engine": {...}}

Errors are :class:`cesard.job.JobError` subclasses: UndecodableAudio,
AudioTooLong, UnknownModel, InvalidOption (permanent) or ModelLoadError
(transient). Engines live in worker processes only; the supervisor never
imports this module.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from cesard import job as jobmod
from cesard.job import JobOptions

Progress = Callable[[float, float | None], None]
Transcript = dict[str, Any]
FAKE_MAGIC = b"#cesard-fake"


class Engine(Protocol):
    name: str

    def load(self, model: str) -> None:
        """Load ``model`` and keep it (idempotent). Raises UnknownModel/ModelLoadError."""

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress) -> Transcript:
        """Transcribe one file."""


class FakeEngine:
    """Deterministic engine for tests and benchmarks.

    A file starting with the line ``#cesard-fake`` is a script of ``key: value``
    lines: ``sleep: SECONDS``, ``text: WORDS``, ``fail: ERRORTYPE`` (a permanent
    error of that type), ``crash: true`` (the worker dies abruptly),
    ``hang: true`` (never returns), ``duration: SECONDS`` (reported audio length),
    ``alloc: BYTES`` (allocates that much memory).
    Any other input gives a deterministic text naming the file.
    """

    name = "fake"

    def __init__(self, models: dict[str, str], max_audio_seconds: float = 0) -> None:
        self.models = models
        self.max_audio_seconds = max_audio_seconds

    def load(self, model: str) -> None:
        if self.models and model not in self.models:
            raise jobmod.UnknownModel(f"model {model!r} is not configured "
                                      f"(configured: {', '.join(self.models)})")

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress) -> Transcript:
        self.load(options.model)
        head = audio.read(64 * 1024)
        script: dict[str, str] = {}
        if head.startswith(FAKE_MAGIC):
            for line in head.decode("utf-8", "replace").splitlines()[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    script[key.strip()] = value.strip()
        shown = jobmod.display_name(name)
        text = script.get("text", f"fake transcript of {shown}")
        duration = float(script.get("duration", "1.0"))
        check_length(shown, duration, self.max_audio_seconds)
        if "alloc" in script:
            ballast = bytearray(int(script["alloc"]))  # MemoryError under worker_memory_limit
            del ballast
        if script.get("crash") == "true":
            os.kill(os.getpid(), signal.SIGKILL)
        if script.get("hang") == "true":
            while True:
                time.sleep(3600)
        if "fail" in script:
            err = jobmod.JobError(f"fake failure requested by {shown}")
            err.type = re.sub(r"[^A-Za-z0-9_]", "", script["fail"]) or "FakeError"
            raise err
        progress(0.0, duration)
        total = float(script.get("sleep", "0"))
        steps = max(1, int(total / 0.1))
        for i in range(steps):
            if total:
                time.sleep(total / steps)
            progress((i + 1) / steps, None)
        return {
            "text": text, "language": options.language or "en", "language_probability": 1.0,
            "duration": duration,
            "segments": [{"start": 0.0, "end": duration, "text": text, "words": None}],
            "engine": {"name": "fake", "version": "1", "model": options.model,
                       "compute_type": "none", "pid": os.getpid()},
        }


class WhisperEngine:
    """faster-whisper with models kept loaded, one CPU thread by default."""

    name = "faster-whisper"

    def __init__(self, models: dict[str, str], compute_type: str = "int8", cpu_threads: int = 1,
                 max_audio_seconds: float = 0, batch_size: int = 8,
                 batch_min_seconds: float = 0) -> None:
        self.models = models
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.max_audio_seconds = max_audio_seconds
        self.batch_size = batch_size
        self.batch_min_seconds = batch_min_seconds
        self.loaded: dict[str, Any] = {}

    def load(self, model: str) -> None:
        if model in self.loaded:
            return
        if model not in self.models:
            raise jobmod.UnknownModel(
                f"model {model!r} is not configured (configured: {', '.join(self.models)}); "
                "add it under 'models' in the configuration")
        from faster_whisper import WhisperModel

        try:
            self.loaded[model] = WhisperModel(
                self.models[model], device="cpu", compute_type=self.compute_type,
                cpu_threads=self.cpu_threads, num_workers=1, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - CTranslate2 raises plain RuntimeError
            raise jobmod.ModelLoadError(
                f"cannot load model {model!r} from {self.models[model]}: {e}") from e

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress) -> Transcript:
        import faster_whisper
        from faster_whisper.audio import decode_audio

        shown = jobmod.display_name(name)
        if options.model.endswith(".en") and options.language not in (None, "en"):
            raise jobmod.InvalidOption(f"option 'language': model {options.model!r} is "
                                       f"English-only, got {options.language!r}")
        self.load(options.model)
        model = self.loaded[options.model]
        # Rejected from the container's header first, before decoding hours of audio.
        check_length(shown, probe_duration(audio), self.max_audio_seconds)
        try:
            samples = decode_audio(audio, sampling_rate=16000)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types
            raise jobmod.UndecodableAudio(
                f"{shown} could not be decoded as audio ({type(e).__name__}: {e}); check that "
                "it is a complete audio or video file (ffmpeg can read it), then submit it "
                "again") from e
        duration = len(samples) / 16000.0
        if duration == 0:
            raise jobmod.UndecodableAudio(f"{shown} holds no audio samples (truncated or not "
                                          "audio); check the file and submit it again")
        check_length(shown, duration, self.max_audio_seconds)
        progress(0.0, duration)
        # Long audio: batched decoding of VAD chunks measured 1.8x faster on a 10-minute
        # file with no loss of accuracy (bench/RESULTS.md). It needs VAD to cut chunks.
        batched = (self.batch_min_seconds > 0 and duration >= self.batch_min_seconds
                   and self.batch_size > 1 and options.vad_filter)
        try:
            if batched:
                from faster_whisper import BatchedInferencePipeline

                segments, info = BatchedInferencePipeline(model).transcribe(
                    samples, language=options.language, task=options.task,
                    beam_size=options.beam_size, word_timestamps=options.word_timestamps,
                    initial_prompt=options.initial_prompt, batch_size=self.batch_size)
            else:
                segments, info = model.transcribe(
                    samples, language=options.language, task=options.task,
                    beam_size=options.beam_size, vad_filter=options.vad_filter,
                    word_timestamps=options.word_timestamps,
                    initial_prompt=options.initial_prompt)
            out = []
            # The generator is lazy: decoding happens (and can fail) while iterating.
            for seg in segments:
                words = None
                if seg.words is not None:
                    words = [{"start": round(w.start, 3), "end": round(w.end, 3),
                              "word": w.word, "probability": round(w.probability, 4)}
                             for w in seg.words]
                out.append({"start": round(seg.start, 3), "end": round(seg.end, 3),
                            "text": seg.text.strip(), "words": words})
                progress(min(1.0, seg.end / duration), None)
        except jobmod.JobError:
            raise
        except Exception as e:  # noqa: BLE001
            raise jobmod.EngineError(f"transcription of {shown} failed (retry it with "
                                     f"'cesarctl retry'; report it if it fails again): "
                                     f"{type(e).__name__}: {e}") from e
        progress(1.0, None)
        return {
            "text": " ".join(s["text"] for s in out).strip(),
            "segments": out,
            "language": info.language,
            "language_probability": round(float(info.language_probability), 4),
            "duration": round(duration, 3),
            "engine": {"name": "faster-whisper", "version": faster_whisper.__version__,
                       "model": options.model, "compute_type": self.compute_type,
                       "batch_size": self.batch_size if batched else None},
        }


def check_length(shown: str, seconds: float | None, limit: float) -> None:
    """AudioTooLong when ``seconds`` (if known) exceeds ``limit`` (0: no limit)."""
    if limit and seconds and seconds > limit:
        raise jobmod.AudioTooLong(f"{shown} lasts {seconds:.0f} s, more than "
                                  f"max_audio_seconds={limit:.0f}")


def probe_duration(audio: BinaryIO) -> float | None:
    """The duration the container declares (None if unknown); rewinds ``audio``."""
    import av

    try:
        with av.open(audio, mode="r", metadata_errors="ignore") as container:
            if container.duration:
                return float(container.duration / av.time_base)
            return None
    except Exception:  # noqa: BLE001 - decode_audio reports bad files properly
        return None
    finally:
        audio.seek(0)


def make_engine(name: str, models: dict[str, str], compute_type: str = "int8",
                cpu_threads: int = 1, max_audio_seconds: float = 0, batch_size: int = 8,
                batch_min_seconds: float = 0) -> Engine:
    if name == "fake":
        return FakeEngine(models, max_audio_seconds)
    if name == "faster-whisper":
        return WhisperEngine(models, compute_type, cpu_threads, max_audio_seconds, batch_size,
                             batch_min_seconds)
    raise ValueError(f"unknown engine {name!r}")
