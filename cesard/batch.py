"""Cross-job batching in a worker: several short jobs decoded in shared batched passes.

The supervisor sends a worker up to ``batch_size`` queued jobs with the same
text options at once (``{"op": "batch", ...}``, :mod:`cesard.worker`). The
worker decodes each file, then :func:`decode_many` cuts every file into speech
chunks (faster-whisper's VAD, at most 30 s each, as its batched pipeline does),
pools the chunks of all the jobs, sorts them by length and decodes them
``batch_size`` at a time. Each pass feeds the encoder only as many frames as
its longest chunk needs plus :data:`PAD_FRAMES` (Whisper pads every window to
30 s; for a 10 s voicemail two thirds of the encoder's work was silence):
measured on 60 espeak-ng clips on 2 cores, one process, 2.8x faster than
sequential decoding (WER 11.25 % against 11.88 %); in the daemon, 2.16x over
one job per worker and 2.03x the ideal split (bench/RESULTS-short.md).

Chunks of different jobs only ever share a pass, never a window: each chunk is
its own row of the batch, so no job's words can land in another's transcript.
A job's transcript is handed back as soon as its last chunk is decoded.

What is not batched here (the worker runs it alone, the usual way): audio
longer than ``batch_max_seconds``, word timestamps, a job with a checkpoint to
resume, and a job whose text repeats like a decoding loop (the single-job path
has the loop guard). If a shared pass fails, each of its jobs is run alone, so
a file that breaks the decoder fails by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cesard.job import JobOptions

# Frames after the longest chunk of a pass (100 frames a second). Measured on 60 clips
# against sequential decoding (WER 11.88 %): 1 s 12.94 %, 2 s 11.38 %, 3 s 12.62 %,
# 5 s 11.25 % (at 0.8x the speed of 3 s): five seconds.
PAD_FRAMES = 500
FULL_FRAMES = 3000


@dataclass
class Clip:
    """One job of a batch, decoded to 16 kHz samples."""

    id: str
    options: JobOptions
    samples: Any
    duration: float
    rec: dict[str, Any] = field(default_factory=dict)  # chunks, tokenizer, results
    info: Any = None
    segments: Any = None


Outcome = tuple[Clip, list[dict[str, Any]] | None, Any]  # None: run it alone


def text_key(options: JobOptions) -> tuple[Any, ...]:
    """What jobs must share to be decoded in one pass."""
    return (options.model, options.language, options.task, options.beam_size,
            options.vad_filter, options.initial_prompt)


def _collector(model: Any) -> Any:
    """A BatchedInferencePipeline whose transcribe() prepares the chunks (VAD, features,
    language, tokenizer, options) and stops there: the decoding is ours, across jobs.
    The segments it returns are faster-whisper's own (timestamps restored to the
    file's time) once ``rec["results"]`` is filled."""
    from faster_whisper import BatchedInferencePipeline
    from faster_whisper.transcribe import Segment

    class Collect(BatchedInferencePipeline):  # type: ignore[misc]
        rec: dict[str, Any]

        def _batched_segments_generator(self, features: Any, tokenizer: Any,
                                        chunks_metadata: Any, batch_size: int, options: Any,
                                        log_progress: bool) -> Iterator[Any]:
            rec = self.rec
            if len(features) == 0:  # no speech (VAD kept nothing): one empty chunk, skipped
                chunks_metadata = []
            rec.update(features=features, tokenizer=tokenizer, meta=chunks_metadata,
                       options=options, results=[None] * len(chunks_metadata))

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
    its last chunk is decoded: (clip, segments, info), or (clip, None, None) when it
    must be run alone (a shared pass failed, or its text loops)."""
    import numpy as np

    pipe = _collector(model)
    ready: list[Clip] = []
    for clip in clips:
        pipe.rec = clip.rec
        try:
            clip.segments, clip.info = pipe.transcribe(
                clip.samples, batch_size=batch_size, vad_filter=clip.options.vad_filter,
                **common)
        except Exception:  # noqa: BLE001 - its own error comes from the single-job path
            yield clip, None, None
            continue
        if not clip.rec.get("meta"):  # no speech at all: nothing to decode
            clip.rec["results"] = []
        ready.append(clip)
    # Chunks of a language share a pass (a multilingual model detected each file's).
    chunks = [(c, k) for c in ready for k in range(len(c.rec["meta"]))]
    chunks.sort(key=lambda ck: (ck[0].rec["tokenizer"].language_code,
                                ck[0].rec["meta"][ck[1]]["duration"]))
    left = {c.id: len(c.rec["meta"]) for c in ready}
    for c in ready:
        if not left[c.id]:
            yield _finished(c, repeats, loop_repeats)
    failed: set[str] = set()
    i = 0
    while i < len(chunks):
        lang = chunks[i][0].rec["tokenizer"].language_code
        group = [ck for ck in chunks[i:i + batch_size]
                 if ck[0].rec["tokenizer"].language_code == lang]
        i += len(group)
        live = [(c, k) for c, k in group if c.id not in failed]
        if not live:
            continue
        longest = max(c.rec["meta"][k]["duration"] for c, k in live)
        frames = min(FULL_FRAMES, 2 * math.ceil((longest * 100 + PAD_FRAMES) / 2))
        features = np.ascontiguousarray(
            np.stack([c.rec["features"][k][:, :frames] for c, k in live]))
        first = live[0][0].rec
        try:
            results = pipe.forward(features, first["tokenizer"], [c.rec["meta"][k]
                                                                  for c, k in live],
                                   first["options"])
        except Exception:  # noqa: BLE001 - each job of the pass is then run alone
            for c, _k in live:
                if c.id not in failed:
                    failed.add(c.id)
                    yield c, None, None
            continue
        for (c, k), result in zip(live, results, strict=True):
            c.rec["results"][k] = result
            left[c.id] -= 1
            total = len(c.rec["meta"])
            progress(c, (total - left[c.id]) / total)
            if not left[c.id]:
                yield _finished(c, repeats, loop_repeats)


def _finished(clip: Clip, repeats: Callable[[str], int], loop_repeats: int) -> Outcome:
    out = []
    for seg in clip.segments:
        out.append({"start": seg.start, "end": seg.end, "text": seg.text.strip(),
                    "words": None})
        if repeats(seg.text) >= loop_repeats:
            return clip, None, None  # the single-job path decodes it again, guarded
    return clip, out, clip.info
