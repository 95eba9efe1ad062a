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
imports this module. The fake engine (tests, fault injection) is :mod:`cesard.fake`;
:func:`cesard.engines.make_engine` picks one by name.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, BinaryIO, Protocol

from cesard import batch
from cesard import job as jobmod
from cesard.batch import Clip
from cesard.checkpoint import Resume
from cesard.job import JobOptions
from cesard.models import english_only
from cesard.spool import STORAGE_ERRNOS

Progress = Callable[[float, float | None], None]
Transcript = dict[str, Any]
BatchOutcome = tuple[Clip, Transcript | None]  # None: the worker runs that job alone


class Sink(Protocol):
    """Sees each segment as soon as it is decoded (:class:`cesard.checkpoint.LiveSegments`)."""

    def add(self, segment: dict[str, Any], window: object = None) -> None:
        """A segment ({"start", "end", "text", "words"}, seconds of the whole file) and the
        key of the decoding window it came from: a new key means earlier windows are
        complete (a checkpoint may follow)."""

    def detected(self, language: str | None, probability: float | None) -> None:
        """The language decoding uses (detected or asked for)."""

    def add_complete(self) -> None:
        """Every segment added so far is complete (a batch ended)."""
FAKE_MAGIC = b"#cesard-fake"


class Engine(Protocol):
    name: str

    def load(self, model: str, pin: bool = False) -> None:
        """Load ``model`` and keep it (idempotent; ``pin``: never evict it).
        Raises UnknownModel/ModelLoadError."""

    def loaded_models(self) -> list[str]:
        """The models held now, least recently used first."""

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress, sink: Sink | None = None,
                   resume: Resume | None = None) -> Transcript:
        """Transcribe one file; ``sink`` sees each segment as soon as it is decoded.
        With ``resume``, its segments are kept and decoding starts at ``resume.at``
        seconds; the transcript says so in ``resumed_from``."""

    def prepare(self, audio: BinaryIO, name: str, options: JobOptions) -> tuple[Any, float]:
        """A short job of a batch: check it and decode its audio; (samples, duration).
        Raises the job's error (it fails alone)."""

    def transcribe_many(self, clips: list[Clip],
                        progress: Callable[[Clip, float], None]) -> Iterator[BatchOutcome]:
        """Transcribe prepared clips with the same text options together; yield each
        (clip, transcript) when complete, or (clip, None) to run it alone."""

    def last_samples(self, name: str) -> Any | None:
        """The 16 kHz samples :meth:`transcribe` decoded for ``name`` last, for a job
        with ``diarize`` (read once, then forgotten: not decoded twice), or None."""


class Held:
    """The models a worker holds: at most ``limit``, least recently used dropped first;
    pinned (preloaded) ones are never dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.pinned: set[str] = set()

    def get(self, name: str) -> Any:
        """The held model (now the most recently used), or None."""
        if name not in self.models:
            return None
        self.models.move_to_end(name)
        return self.models[name]

    def make_room(self) -> None:
        while len(self.models) >= self.limit:
            victim = next((m for m in self.models if m not in self.pinned), None)
            if victim is None:
                return  # only preloaded models: they stay warm
            del self.models[victim]

    def names(self) -> list[str]:
        return list(self.models)


class WhisperEngine:
    """faster-whisper with models kept loaded, one CPU thread by default."""

    name = "faster-whisper"

    def __init__(self, models: dict[str, str], compute_type: str = "int8", cpu_threads: int = 1,
                 max_audio_seconds: float = 0, batch_size: int = 8,
                 batch_min_seconds: float = 0, device: str = "cpu",
                 max_loaded_models: int = 2) -> None:
        self.models = models
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.max_audio_seconds = max_audio_seconds
        self.batch_size = batch_size
        self.batch_min_seconds = batch_min_seconds
        self.device = device  # "cpu" or "cuda" (the worker sees only its own GPU)
        self.held = Held(max_loaded_models)
        self._last: tuple[str, Any] | None = None  # the last transcribed file's samples

    def load(self, model: str, pin: bool = False) -> None:
        if pin:
            self.held.pinned.add(model)
        if self.held.get(model) is not None:
            return
        if model not in self.models:
            raise jobmod.UnknownModel(
                f"model {model!r} is not configured (configured: {', '.join(self.models)}); "
                "add it under 'models' in the configuration")
        from faster_whisper import WhisperModel

        self.held.make_room()
        try:
            self.held.models[model] = WhisperModel(
                self.models[model], device=self.device, device_index=0,
                compute_type=self.compute_type, cpu_threads=self.cpu_threads, num_workers=1,
                local_files_only=True)
        except Exception as e:  # noqa: BLE001 - CTranslate2 raises plain RuntimeError
            raise jobmod.ModelLoadError(
                f"cannot load model {model!r} from {self.models[model]} on {self.device}: "
                f"{e}") from e

    def loaded_models(self) -> list[str]:
        return self.held.names()

    def transcribe(self, audio: BinaryIO, name: str, options: JobOptions,
                   progress: Progress, sink: Sink | None = None,
                   resume: Resume | None = None) -> Transcript:

        shown = jobmod.display_name(name)
        samples, duration = self.prepare(audio, name, options)
        # kept for diarization only, and only until it takes them (an hour is 230 MB)
        self._last = (name, samples) if options.diarize else None
        model = self.held.get(options.model)
        progress(0.0, duration)
        # Long audio: batched decoding of VAD chunks measured 1.8x faster on a 10-minute
        # file with no loss of accuracy (bench/RESULTS.md). It needs VAD to cut chunks.
        # Decided on the whole file, so a resumed attempt decodes the rest the same way.
        # On the CPU 4 decodes as fast as 8 (bench/RESULTS-resume.md) and checkpoints
        # twice as often (resume loses at most one batch).
        batch_size = self.batch_size or (16 if self.device == "cuda" else 4)
        batched = (self.batch_min_seconds > 0 and duration >= self.batch_min_seconds
                   and batch_size > 1 and options.vad_filter)
        decoding = dict(DECODING, beam_size=options.beam_size, vad_filter=options.vad_filter,
                        batched=batched, batch_size=batch_size if batched else None)
        # Resume: keep the checkpointed segments and decode what follows them, in the
        # language the first attempt detected; the initial prompt only ever applied to
        # the first window.
        offset = resume.at if resume is not None and 0 < resume.at < duration else 0.0
        known: tuple[str | None, float | None] | None = None
        clip = 0.0
        if offset and resume is not None:
            language = options.language or resume.language
            known = (language, resume.language_probability if not options.language else 1.0)
            options = replace(options, language=language, initial_prompt=None)
            if batched or (options.vad_filter and resume.speech_at is None):
                samples = samples[int(round(offset * 16000)):]  # VAD runs on the rest
            else:
                # Sequential: windows start where the first attempt's next window started
                # (in the speech-only audio with VAD): decoding goes on exactly as if it
                # had never stopped.
                clip = resume.speech_at if options.vad_filter and resume.speech_at else offset
                offset = 0.0
        try:
            out, info, worst, confidence = self._decode(
                model, samples, duration, options, batched, batch_size, 1.0, progress, sink,
                offset, known, clip)
            if worst >= LOOP_REPEATS:
                # A repetition loop ("pour tous, pour tous, ..."): decode again,
                # deterministically, with a repetition penalty, and keep whichever pass
                # repeats less.
                again, info2, worst2, _ = self._decode(model, samples, duration, options,
                                                       batched, batch_size,
                                                       LOOP_REPETITION_PENALTY, progress,
                                                       None, offset, None, clip)
                decoding["loop_guard"] = {"repeats": worst, "retry_repeats": worst2,
                                          "used": "retry" if worst2 < worst else "first"}
                if worst2 < worst:
                    out, info = again, info2
                    decoding["repetition_penalty"] = LOOP_REPETITION_PENALTY
        except jobmod.JobError:
            raise
        except Exception as e:  # noqa: BLE001
            if self.device == "cuda" and "out of memory" in str(e).lower():
                oom = jobmod.TransientError(f"the GPU ran out of memory transcribing {shown}: "
                                            f"{e}; retried on a fresh worker")
                oom.type = "CudaOutOfMemory"
                raise oom from e
            raise jobmod.EngineError(f"transcription of {shown} failed (retry it with "
                                     f"'cesarctl retry'; report it if it fails again): "
                                     f"{type(e).__name__}: {e}") from e
        progress(1.0, None)
        # the decoder's mean log-probability per token: how sure the model was of the text
        decoding["mean_logprob"] = None if confidence is None else round(confidence, 3)
        if (offset or clip) and resume is not None:
            out = resume.segments + out
        language, probability = known or (info.language, info.language_probability)
        warning = None
        if options.language is None and not offset and not clip:
            warning = self.language_check(shown, options.model, samples, confidence)
        return {
            "language_warning": warning,
            "text": " ".join(s["text"] for s in out).strip(),
            "segments": out,
            "language": language,
            "language_probability": round(float(probability or 0.0), 4),
            "duration": round(duration, 3),
            "resumed_from": round(resume.at if resume is not None and (offset or clip)
                                  else 0.0, 3),
            "engine": self._info(options.model, batch_size if batched else None),
            "decoding": decoding,
        }

    def language_check(self, shown: str, model: str, samples: Any,
                       confidence: float | None) -> dict[str, Any] | None:
        """An English-only model is sure of nothing when the speech is in another
        language: it writes fluent English nonsense, at a low mean log-probability
        (tiny.en: -1.0 to -1.2 on French, German and Spanish speech; -0.25 to -0.8 on
        English, read or spoken, clean or not). Below :data:`SUSPECT_LOGPROB`, a
        configured multilingual model names the language (its own 30-second detection);
        the result says what it found and what to do, instead of passing the text off
        as a transcript. None when there is nothing to say."""
        if confidence is None or confidence >= SUSPECT_LOGPROB or \
                not english_only(model, self.models.get(model)):
            return None
        multi = next((n for n, p in self.models.items() if not english_only(n, p)), None)
        out: dict[str, Any] = {"mean_logprob": round(confidence, 3), "detected": None,
                               "probability": None}
        if multi is not None:
            try:
                self.load(multi)
                lang, prob, _ = self.held.get(multi).detect_language(samples)
                out.update(detected=lang, probability=round(float(prob), 4))
            except Exception:  # noqa: BLE001 - a check: the transcript stands without it
                multi = None
        if out["detected"] == "en" and (out["probability"] or 0) >= 0.5:
            return None  # English said unclearly: the text is what the model heard
        if out["detected"]:
            out["message"] = (
                f"{shown} sounds like language {out['detected']!r} "
                f"({out['probability']:.0%} by model {multi}), but model {model} knows only "
                f"English: this text is likely wrong. Submit it again with --model {multi}")
        else:
            out["message"] = (
                f"model {model} knows only English and was unsure of {shown} (mean "
                f"log-probability {confidence:.2f}): if it is not in English, this text is "
                "likely wrong; configure a multilingual model (the 'base' extra, or under "
                "'models') and submit it with --model NAME")
        return out

    def last_samples(self, name: str) -> Any | None:
        last, self._last = self._last, None
        return last[1] if last is not None and last[0] == name else None

    def _info(self, model: str, batch_size: int | None) -> dict[str, Any]:
        """result.json's ``engine``."""
        import faster_whisper

        return {"name": "faster-whisper", "version": faster_whisper.__version__,
                "model": model, "compute_type": self.compute_type, "device": self.device,
                "batch_size": batch_size}

    def prepare(self, audio: BinaryIO, name: str, options: JobOptions) -> tuple[Any, float]:
        """Check the options against the model, load it, decode the file to 16 kHz
        samples; (samples, duration). Raises the job's error."""
        from faster_whisper.audio import decode_audio

        shown = jobmod.display_name(name)
        jobmod.check_language(options, english_only(options.model, self.models.get(options.model)))
        self.load(options.model)
        # Rejected from the container's header first, before decoding hours of audio.
        check_length(shown, probe_duration(audio), self.max_audio_seconds)
        try:
            samples = decode_audio(audio, sampling_rate=16000)
        except Exception as e:  # noqa: BLE001 - PyAV raises many error types
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                raise jobmod.TransientError(
                    f"the spool's storage did not answer reading {shown} ({e.strerror}); it "
                    "is tried again") from e
            raise jobmod.UndecodableAudio(
                f"{shown} could not be decoded as audio ({decode_reason(e)}); check that it "
                "is a complete audio or video file (cesard decodes with PyAV, FFmpeg's "
                "libraries in its wheel; 'python -m av --codecs' in cesard's environment "
                "lists what it reads), then submit it again") from e
        duration = len(samples) / 16000.0
        if duration == 0:
            raise jobmod.UndecodableAudio(f"{shown} holds no audio samples (truncated or not "
                                          "audio); check the file and submit it again")
        check_length(shown, duration, self.max_audio_seconds)
        return samples, duration

    def transcribe_many(self, clips: list[Clip],
                        progress: Callable[[Clip, float], None]) -> Iterator[BatchOutcome]:
        """Decode prepared short clips with the same text options in shared passes
        (:mod:`cesard.batch`); yield (clip, transcript) as each is complete, or
        (clip, None) for one the worker must run alone."""

        options = clips[0].options
        model = self.held.get(options.model)
        batch_size = self.batch_size or (16 if self.device == "cuda" else 8)
        common: dict[str, Any] = dict(
            language=options.language, task=options.task, beam_size=options.beam_size,
            initial_prompt=options.initial_prompt, temperature=DECODING["temperature"],
            repetition_penalty=DECODING["repetition_penalty"])
        decoding = dict(DECODING, beam_size=options.beam_size, vad_filter=options.vad_filter,
                        batched=True, batch_size=batch_size, batch_jobs=len(clips))
        for clip, segments, info in batch.decode_many(model, clips, batch_size, common,
                                                      progress, repeats, LOOP_REPEATS):
            if segments is None:
                yield clip, None
                continue
            warning = None
            confidence = clip.rec.get("confidence")
            if options.language is None:
                warning = self.language_check(jobmod.display_name(clip.name or clip.id),
                                              options.model, clip.samples, confidence)
            yield clip, {
                "language_warning": warning,
                "text": " ".join(s["text"] for s in segments).strip(),
                "segments": segments, "language": info.language,
                "language_probability": round(float(info.language_probability or 0.0), 4),
                "duration": round(clip.duration, 3), "resumed_from": 0.0,
                "engine": self._info(options.model, batch_size),
                "decoding": dict(decoding, mean_logprob=None if confidence is None
                                 else round(float(confidence), 3)),
            }

    def _decode(self, model: Any, samples: Any, duration: float, options: JobOptions,
                batched: bool, batch_size: int, repetition_penalty: float,
                progress: Progress, sink: Sink | None = None, offset: float = 0.0,
                known: tuple[str | None, float | None] | None = None, clip: float = 0.0,
                ) -> tuple[list[dict[str, Any]], Any, int, float | None]:
        """One deterministic pass over ``samples`` (which start ``offset`` seconds into
        the file; without VAD, from ``clip`` seconds on): segments in the file's time,
        info, its longest repetition run, and the decoder's mean log-probability per
        token (None: no text).

        The sink gets each segment with its window: the time the window starts, in
        seconds of the file, where that is where decoding would go on (sequential,
        without VAD); else an opaque key (with VAD, windows are in speech-only time)."""
        common: dict[str, Any] = dict(
            language=options.language, task=options.task, beam_size=options.beam_size,
            word_timestamps=options.word_timestamps, initial_prompt=options.initial_prompt,
            temperature=DECODING["temperature"], repetition_penalty=repetition_penalty)
        if batched:
            pipeline = batch_pipeline(model, sink)
            segments, info = pipeline.transcribe(samples, batch_size=batch_size, **common)
        elif options.vad_filter and (clip or sink is not None):
            segments, info = speech_only(model, samples, clip, common)
        else:
            extra = {"clip_timestamps": [clip]} if clip else {}
            segments, info = model.transcribe(
                samples, vad_filter=options.vad_filter,
                condition_on_previous_text=DECODING["condition_on_previous_text"], **common,
                **extra)
        exact = not batched and not options.vad_filter
        speech = not batched and options.vad_filter
        if sink is not None:
            sink.detected(*(known or (info.language, info.language_probability)))
        out = []
        worst = 0
        tokens, logprob = 0, 0.0
        # The generator is lazy: decoding happens (and can fail) while iterating.
        for seg in segments:
            tokens += len(seg.tokens)
            logprob += seg.avg_logprob * len(seg.tokens)
            words = None
            if seg.words is not None:
                words = [{"start": round(w.start + offset, 3), "end": round(w.end + offset, 3),
                          "word": w.word, "probability": round(w.probability, 4)}
                         for w in seg.words]
            out.append({"start": round(seg.start + offset, 3),
                        "end": round(seg.end + offset, 3),
                        "text": seg.text.strip(), "words": words})
            if sink is not None:  # the segments of one window share its seek
                sink.add(out[-1], seg.seek / 100.0 if exact else
                         ("speech", seg.seek / 100.0) if speech else ("window", seg.seek))
            worst = max(worst, repeats(seg.text))
            progress(min(1.0, (seg.end + offset) / duration), None)
        return out, info, worst, (logprob / tokens if tokens else None)


def speech_only(model: Any, samples: Any, clip: float, common: dict[str, Any]) -> Any:
    """Sequential decoding with VAD as faster-whisper does it (silero VAD over the whole
    file, the speech joined, 30-second windows over that, times mapped back), done here
    so that a resumed attempt can start at a window of the speech-only audio (``clip``
    seconds into it) and cut exactly the windows the first attempt would have."""
    import numpy as np
    from faster_whisper.transcribe import restore_speech_timestamps
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    chunks = get_speech_timestamps(samples, VadOptions())
    if not chunks:  # no speech: faster-whisper's own path says so (no segments)
        return model.transcribe(samples, vad_filter=True,
                                condition_on_previous_text=False, **common)
    speech = np.concatenate(collect_chunks(samples, chunks)[0], axis=0)
    segments, info = model.transcribe(
        speech, vad_filter=False, clip_timestamps=[clip] if clip else "0",
        condition_on_previous_text=DECODING["condition_on_previous_text"], **common)
    return restore_speech_timestamps(segments, chunks, 16000), info


def batch_pipeline(model: Any, sink: Sink | None) -> Any:
    """faster-whisper's BatchedInferencePipeline, telling ``sink`` when each batch's
    segments have all been taken: a batch of VAD chunks is decoded at once, then its
    segments are yielded back to back, so only the end of a batch makes its last chunk
    complete (checkpoints would otherwise lag a whole batch: a third of a 10-minute file
    on the CPU). The hook wraps a private method of faster-whisper 1.2; where it is
    missing, checkpoints still come at each chunk but the last of a batch."""
    from faster_whisper import BatchedInferencePipeline

    found = getattr(BatchedInferencePipeline, "_batched_segments_generator", None)
    if sink is None or found is None:
        return BatchedInferencePipeline(model)
    inner: Callable[..., Any] = found
    told: Sink = sink

    class Pipeline(BatchedInferencePipeline):  # type: ignore[misc]
        def _batched_segments_generator(self, features: Any, tokenizer: Any,
                                        chunks_metadata: Any, batch_size: int, options: Any,
                                        log_progress: bool) -> Any:
            for i in range(0, len(features), batch_size):
                yield from inner(self, features[i:i + batch_size], tokenizer,
                                 chunks_metadata[i:i + batch_size], batch_size, options,
                                 log_progress)
                told.add_complete()  # every segment of this batch has been taken

    return Pipeline(model)


# Decoding is deterministic: the same audio and options give the same text on the same
# build. faster-whisper's default falls back to sampling at rising temperatures (random)
# and conditions each window on the previous text (one bad window then drops or loops the
# rest); measured on 60 s of the fixtures repeated, three runs gave three texts. Greedy or
# beam search at temperature 0 with no conditioning gave one text, and a second pass with
# a repetition penalty when a segment compresses like a loop keeps "pour tous, pour tous,
# ..." out (the French fixture with the base model).
DECODING: dict[str, Any] = {"temperature": 0.0, "condition_on_previous_text": False,
                            "repetition_penalty": 1.0}
LOOP_REPEATS = 4  # one to four words said this many times in a row: a loop, not speech
LOOP_REPETITION_PENALTY = 1.2
SUSPECT_LOGPROB = -0.9  # below it, an English-only model's text is checked (language_check)


def repeats(text: str) -> int:
    """The most times any run of one to four words follows itself in ``text``
    ("pour tous, pour tous, pour tous" → 3; "8-8-8-8" → 4; ordinary speech → 1)."""
    words = re.findall(r"\w+", text.lower())
    best = 1
    for n in range(1, 5):
        for start in range(len(words) - n):
            count, i = 1, start + n
            while words[i:i + n] == words[start:start + n]:
                count, i = count + 1, i + n
            best = max(best, count)
    return best


def decode_reason(e: Exception) -> str:
    """What PyAV's error means, without its internals ("[Errno 1094995529] ... '3'")."""
    text = str(getattr(e, "strerror", None) or e).strip()
    if "Invalid data" in text:
        return "not an audio or video format PyAV (FFmpeg's libraries) recognises, or damaged"
    if "End of file" in text or isinstance(e, EOFError):
        return "the file ends too early"
    return text.split(":", 1)[0][:120] or type(e).__name__


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
