"""The fake engine: no model, for tests and benchmarks. It obeys lines written into the
audio file after ``#cesard-fake`` (text, sleep, crash, hang, alloc, fail...), so every
fault a real decoder can meet is reproducible; that is why a shared spool refuses it
(:func:`cesard.privacy.fake_engine_refusal`)."""

from __future__ import annotations

import os
import re
import select
import signal
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from cesard import job as jobmod
from cesard.batch import Clip
from cesard.checkpoint import Resume
from cesard.engine import FAKE_MAGIC, BatchOutcome, Held, Progress, Sink, Transcript, check_length
from cesard.job import JobOptions


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

    def __init__(self, models: dict[str, str], max_audio_seconds: float = 0,
                 max_loaded_models: int = 2) -> None:
        self.models = models
        self.max_audio_seconds = max_audio_seconds
        self.held = Held(max_loaded_models)

    def load(self, model: str, pin: bool = False) -> None:
        if self.models and model not in self.models:
            raise jobmod.UnknownModel(f"model {model!r} is not configured "
                                      f"(configured: {', '.join(self.models)})")
        if pin:
            self.held.pinned.add(model)
        if self.held.get(model) is None:
            self.held.make_room()
            self.held.models[model] = model

    def loaded_models(self) -> list[str]:
        return self.held.names()

    def _script(self, audio: BinaryIO, name: str, options: JobOptions) -> dict[str, str]:
        self.load(options.model)
        head = audio.read(64 * 1024)
        script: dict[str, str] = {}
        if head.startswith(FAKE_MAGIC):
            for line in head.decode("utf-8", "replace").splitlines()[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    script[key.strip()] = value.strip()
        shown = jobmod.display_name(name)
        script.setdefault("text", f"fake transcript of {shown}")
        check_length(shown, float(script.get("duration", "1.0")), self.max_audio_seconds)
        return script

    @staticmethod
    def _faults(script: dict[str, str], shown: str) -> None:
        if "alloc" in script:
            ballast = bytearray(int(script["alloc"]))  # MemoryError under worker_memory_limit
            del ballast
        if script.get("crash") == "true":
            os.kill(os.getpid(), signal.SIGKILL)
        if script.get("hang") == "true":
            while True:
                pause(3600)
        if "fail" in script:
            err = jobmod.JobError(f"fake failure requested by {shown}")
            err.type = re.sub(r"[^A-Za-z0-9_]", "", script["fail"]) or "FakeError"
            raise err

    def last_samples(self, name: str) -> Any | None:
        return None  # a script, not audio: nothing to diarize

    def prepare(self, audio: BinaryIO, name: str, options: JobOptions) -> tuple[Any, float]:
        """The script is the audio; ``fail`` fails here, as undecodable audio would."""
        script = self._script(audio, name, options)
        if "fail" in script:
            self._faults({"fail": script["fail"]}, jobmod.display_name(name))
        script["name"] = name
        if "segments" in script:  # several windows stand for long audio: it runs alone
            return script, float("inf")
        return script, float(script.get("duration", "1.0"))

    def transcribe_many(self, clips: list[Clip],
                        progress: Callable[[Clip, float], None]) -> Iterator[BatchOutcome]:
        """Each clip's script in turn (its ``sleep``, ``crash``, ``hang``), one shared
        batch as far as the results say (``decoding.batch_jobs``)."""
        for clip in clips:
            script: dict[str, str] = clip.samples
            self._faults(script, jobmod.display_name(script["name"]))
            total = float(script.get("sleep", "0"))
            steps = max(1, int(total / 0.1))
            for i in range(steps):
                if total:
                    pause(total / steps)
                progress(clip, (i + 1) / steps)
            seg = {"start": 0.0, "end": clip.duration, "text": script["text"], "words": None}
            yield clip, {
                "text": script["text"], "language": clip.options.language or "en",
                "language_probability": 1.0, "duration": clip.duration, "segments": [seg],
                "resumed_from": 0.0,
                "engine": {"name": "fake", "version": "1", "model": clip.options.model,
                           "compute_type": "none", "pid": os.getpid()},
                "decoding": {"batched": True, "batch_jobs": len(clips)},
            }

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress, sink: Sink | None = None,
                   resume: Resume | None = None) -> Transcript:
        script = self._script(audio, name, options)
        text = script["text"]
        duration = float(script.get("duration", "1.0"))
        self._faults(script, jobmod.display_name(name))
        progress(0.0, duration)
        total = float(script.get("sleep", "0"))
        # "segments: N": the text said N times, one segment (and one decoding window)
        # each, spread evenly over the sleep and the duration.
        n = max(1, int(script.get("segments", "1")))
        segs: list[dict[str, Any]] = [
            {"start": round(duration * i / n, 3), "end": round(duration * (i + 1) / n, 3),
             "text": text if n == 1 else f"{text} {i + 1}", "words": None} for i in range(n)]
        first = 0
        if resume is not None:  # the kept segments, then the ones after resume.at
            first = next((i for i, sg in enumerate(segs) if sg["start"] >= resume.at - 1e-6), n)
        if sink is not None:
            sink.detected(options.language or "en", 1.0)
        steps = max(1, int(total / 0.1), n)
        done = first
        for i in range(first * steps // n, steps):
            if total:
                pause(total / steps)
            progress((i + 1) / steps, None)
            while done < n and (done + 1) * steps <= (i + 1) * n:
                if sink is not None:
                    sink.add(segs[done], done)
                done += 1
        out = (resume.segments if resume else []) + segs[first:]
        return {
            "text": " ".join(str(sg["text"]) for sg in out), "language": options.language or "en",
            "language_probability": 1.0, "duration": duration, "segments": out,
            "resumed_from": resume.at if resume else 0.0,
            "engine": {"name": "fake", "version": "1", "model": options.model,
                       "compute_type": "none", "pid": os.getpid()},
        }


def pause(seconds: float) -> None:
    """The fake engine's sleep: select() with a relative timeout, which a process under
    libfaketime with its clock set back (the skewed-host tests) can do; its time.sleep
    fails there with EINVAL."""
    select.select([], [], [], seconds)
