"""Cross-job batching in a worker: several short jobs decoded in shared batched passes.

The supervisor sends a worker up to ``batch_size`` queued jobs with the same
text options at once (``{"op": "batch", ...}``, :mod:`cesard.worker`). The
worker decodes each file, then :func:`decode_many` cuts every file as
sequential decoding does (the speech faster-whisper's default VAD keeps, joined
into one stream) and decodes the windows of all the jobs ``batch_size`` at a time.

Each pass decodes the way sequential decoding does, only for many windows at
once: a full 30-second window, with timestamps, the first within 1 s. A window
whose text ends on a timestamp pair was cut short by the decoder; as in
``WhisperModel.transcribe``, the file goes on at that timestamp in a later
pass. faster-whisper's batched pipeline decodes each chunk once, without
timestamps, and keeps what the decoder said before it stopped: on real speech
that ends after a pause (a voicemail's closing phrase) the decoder often stops
at the pause, and the closing words were lost (bench/tails.py: 17 of 48 real
clips; trimming the encoder's input to the speech, as cesard did before, made
timestamps unreliable and was dropped).

Jobs only ever share a pass, never a window: each window is
its own row of the batch, so no job's words can land in another's transcript.
A job's transcript is handed back as soon as its last window is decoded.

What is not batched here (the worker runs it alone, the usual way): audio
longer than ``batch_max_seconds``, word timestamps, a job with a checkpoint to
resume, and a job whose text repeats like a decoding loop (the single-job path
has the loop guard). If a shared pass fails, each of its jobs is run alone, so
a file that breaks the decoder fails by itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cesard.job import JobOptions

FULL_FRAMES = 3000  # a window: 30 s of 100 frames a second
# WhisperModel.transcribe's max_initial_timestamp: a window's first timestamp within 1 s.
SEQUENTIAL_FIRST_TIMESTAMP = 1.0


@dataclass
class Clip:
    """One job of a batch, decoded to 16 kHz samples."""

    id: str
    options: JobOptions
    samples: Any
    duration: float
    rec: dict[str, Any] = field(default_factory=dict)  # tokenizer, options, features, results
    name: str = ""  # the audio file's name, as messages show it
    info: Any = None
    segments: Any = None


Outcome = tuple[Clip, list[dict[str, Any]] | None, Any]  # None: run it alone


def text_key(options: JobOptions) -> tuple[Any, ...]:
    """What jobs must share to be decoded in one pass."""
    return (options.model, options.language, options.task, options.beam_size,
            options.vad_filter, options.initial_prompt)


def _collector(model: Any) -> Any:
    """A BatchedInferencePipeline whose transcribe() detects the language and records
    the tokenizer and options in ``rec``, and stops there: the decoding is ours, across
    jobs. The segments it returns are faster-whisper's own, in the time of the audio it
    was given, once ``rec["results"]`` is filled."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.transcribe import Segment

    class Collect(BatchedInferencePipeline):  # type: ignore[misc]
        rec: dict[str, Any]

        def _batched_segments_generator(self, features: Any, tokenizer: Any,
                                        chunks_metadata: Any, batch_size: int, options: Any,
                                        log_progress: bool) -> Iterator[Any]:
            rec = self.rec
            rec.update(tokenizer=tokenizer, options=options)

            def segments() -> Iterator[Any]:
                for n, result in enumerate(rec["results"]):
                    for s in result:
                        yield Segment(seek=s["seek"], id=n + 1, text=s["text"],
                                      start=round(s["start"], 3), end=round(s["end"], 3),
                                      words=None, tokens=s["tokens"],
                                      avg_logprob=s["avg_logprob"],
                                      no_speech_prob=s["no_speech_prob"],
                                      compression_ratio=s["compression_ratio"],
                                      temperature=options.temperatures[0])

            return segments()

    return Collect(model)


def decode_many(model: Any, clips: list[Clip], batch_size: int, common: dict[str, Any],
                progress: Callable[[Clip, float], None],
                repeats: Callable[[str], int], loop_repeats: int) -> Iterator[Outcome]:
    """Decode ``clips`` (same text options) in shared passes; yield each clip as soon as
    its last window is decoded: (clip, segments, info), or (clip, None, None) when it
    must be run alone (a shared pass failed, or its text loops)."""
    pipe = _collector(model)
    ready: list[Clip] = []
    for clip in clips:
        pipe.rec = clip.rec
        try:
            _prepare(pipe, model, clip, batch_size, common)
        except Exception:  # noqa: BLE001 - its own error comes from the single-job path
            yield clip, None, None
            continue
        ready.append(clip)
    rows = [Row(c, 0) for c in ready if c.rec["content"]]
    for c in ready:
        if not c.rec["content"]:
            yield _finished(c, repeats, loop_repeats)
    failed: set[str] = set()
    while rows:
        # Rows of a language share a pass (a multilingual model detected each file's);
        # the shortest first, so that a pass's rows decode about as many tokens.
        rows.sort(key=lambda r: (r.clip.rec["tokenizer"].language_code, r.remaining))
        lang = rows[0].clip.rec["tokenizer"].language_code
        group = [r for r in rows[:batch_size]
                 if r.clip.rec["tokenizer"].language_code == lang]
        rows = rows[len(group):]
        live = [r for r in group if r.clip.id not in failed]
        if not live:
            continue
        try:
            outputs = _generate(model, live)
            seeks = [_advance(model, r, output) for r, output in zip(live, outputs,
                                                                      strict=True)]
        except Exception:  # noqa: BLE001 - each job of the pass is then run alone
            for r in live:
                if r.clip.id not in failed:
                    failed.add(r.clip.id)
                    yield r.clip, None, None
            continue
        for r, seek in zip(live, seeks, strict=True):
            content = r.clip.rec["content"]
            progress(r.clip, min(seek, content) / content)
            if seek < content:
                rows.append(Row(r.clip, seek))
            else:
                yield _finished(r.clip, repeats, loop_repeats)


def _prepare(pipe: Any, model: Any, clip: Clip, batch_size: int,
             common: dict[str, Any]) -> None:
    """Cut ``clip`` as sequential decoding does: with VAD, the speech that faster-whisper's
    default VAD keeps, joined into one stream (times mapped back to the file's at the
    end); without, the whole file. The pipeline detects the language and sets the
    options; the stream's features are computed whole, for windows at any seek."""
    import numpy as np
    from faster_whisper.transcribe import restore_speech_timestamps
    from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps

    samples = clip.samples
    speech = get_speech_timestamps(samples, VadOptions()) if clip.options.vad_filter else None
    if speech == [] or len(samples) == 0:  # no speech at all: nothing to decode
        clip.segments, clip.info = pipe.transcribe(samples, batch_size=batch_size,
                                                   vad_filter=True, **common)
        clip.rec.update(results=[], content=0)
        return
    stream = np.concatenate(collect_chunks(samples, speech)[0]) if speech else samples
    seconds = len(stream) / 16000
    segments, clip.info = pipe.transcribe(
        stream, batch_size=batch_size, vad_filter=False,
        clip_timestamps=[{"start": 0.0, "end": min(seconds, FULL_FRAMES / 100)}], **common)
    features = model.feature_extractor(stream)
    clip.rec.update(features=features, content=features.shape[-1] - 1, results=[[]])
    clip.segments = (restore_speech_timestamps(segments, speech, 16000) if speech
                     else segments)


@dataclass
class Row:
    """One window to decode: a clip's stream from ``seek`` frames (100 a second) on."""

    clip: Clip
    seek: int

    @property
    def remaining(self) -> int:
        """The window's frames of audio: up to 30 s of what is left of the stream."""
        return min(FULL_FRAMES, int(self.clip.rec["content"]) - self.seek)


def _generate(model: Any, rows: list[Row]) -> list[dict[str, Any]]:
    """Decode one window per row in one pass, with timestamps, as sequential decoding
    does (the prompt, suppression and first timestamp of ``WhisperModel.transcribe``):
    each row's audio, then the zeros that pad a window to 30 s."""
    import numpy as np

    first = rows[0].clip.rec
    features = np.zeros((len(rows), first["features"].shape[0], FULL_FRAMES),
                        dtype=np.float32)
    for i, r in enumerate(rows):
        features[i, :, :r.remaining] = r.clip.rec["features"][:, r.seek:r.seek + r.remaining]
    tokenizer, options = first["tokenizer"], first["options"]
    previous = (tokenizer.encode(" " + options.initial_prompt.strip())
                if options.initial_prompt else [])
    prompt = model.get_prompt(tokenizer, previous, without_timestamps=False,
                              hotwords=options.hotwords)
    encoded = _encode(model, features)
    results = model.model.generate(
        encoded, [list(prompt) for _ in rows], beam_size=options.beam_size,
        patience=options.patience, length_penalty=options.length_penalty,
        max_length=model.max_length, suppress_blank=options.suppress_blank,
        suppress_tokens=options.suppress_tokens, return_scores=True,
        return_no_speech_prob=True, sampling_temperature=options.temperatures[0],
        repetition_penalty=options.repetition_penalty,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
        max_initial_timestamp_index=round(SEQUENTIAL_FIRST_TIMESTAMP / model.time_precision))
    out = []
    for result in results:
        tokens = result.sequences_ids[0]
        score = result.scores[0] * (len(tokens) ** options.length_penalty)
        out.append({"tokens": tokens, "avg_logprob": score / (len(tokens) + 1),
                    "no_speech_prob": result.no_speech_prob})
    return out


def _encode(model: Any, features: Any) -> Any:
    """The encoder's output for a pass's windows. On a GPU, all at once; on the CPU one
    window at a time, which is faster there (tiny.en int8, one thread: 0.33 s a window
    alone, 0.53 s in a pass of 8), and joined for the shared decoding."""
    import ctranslate2  # type: ignore[import-untyped]
    import numpy as np

    if model.model.device == "cuda" or len(features) == 1:
        return model.encode(np.ascontiguousarray(features))
    parts = [np.asarray(model.encode(np.ascontiguousarray(f[None]))) for f in features]
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.concatenate(parts)))


def _advance(model: Any, row: Row, output: dict[str, Any]) -> int:
    """Keep a decoded window's segments (in the stream's time) and say where the stream
    goes on: as sequential decoding does, a window whose text ends without a closing
    timestamp was cut, and decoding resumes at its last timestamp; one that ends with
    it, or that holds no speech, is done."""
    from faster_whisper.transcribe import get_compression_ratio

    rec = row.clip.rec
    tokenizer, options = rec["tokenizer"], rec["options"]
    size = row.remaining
    if (options.no_speech_threshold is not None
            and output["no_speech_prob"] > options.no_speech_threshold
            and not (options.log_prob_threshold is not None
                     and output["avg_logprob"] > options.log_prob_threshold)):
        return row.seek + size
    subsegments, seek, _single = model._split_segments_by_timestamps(
        tokenizer=tokenizer, tokens=output["tokens"],
        time_offset=row.seek / 100, segment_size=size,
        segment_duration=size / 100, seek=row.seek)
    for sub in subsegments:
        text = tokenizer.decode(sub["tokens"])
        if sub["start"] == sub["end"] or not text.strip():
            continue
        rec["results"][0].append(dict(
            text=text, tokens=sub["tokens"], start=sub["start"], end=sub["end"],
            avg_logprob=output["avg_logprob"], no_speech_prob=output["no_speech_prob"],
            compression_ratio=get_compression_ratio(text),
            seek=row.seek))
    return int(seek) if seek > row.seek else row.seek + size


def _finished(clip: Clip, repeats: Callable[[str], int], loop_repeats: int) -> Outcome:
    """The clip's segments as the single-job path gives them; its mean log-probability
    per token goes to ``rec["confidence"]`` (None: no text)."""
    out = []
    tokens, logprob = 0, 0.0
    for seg in clip.segments:
        tokens += len(seg.tokens)
        logprob += seg.avg_logprob * len(seg.tokens)
        out.append({"start": seg.start, "end": seg.end, "text": seg.text.strip(),
                    "words": None})
        if repeats(seg.text) >= loop_repeats:
            return clip, None, None  # the single-job path decodes it again, guarded
    clip.rec["confidence"] = logprob / tokens if tokens else None
    return clip, out, clip.info
