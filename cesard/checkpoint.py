"""Live segments and checkpoints: what a worker has decoded survives its attempt.

Two files in the job's directory, written by the worker only:

``segments.jsonl``
    One JSON object per decoded segment (``start``, ``end``, ``text``, ``words``; times
    in seconds of the whole file), appended as the engine yields them, flushed at once
    (``cesarctl follow`` reads it) and fsynced at most every second.

``checkpoint.json``
    ``{"schema", "key", "segments", "bytes", "resume_at", "language",
    "language_probability"}``: the first ``segments`` lines (``bytes`` bytes) of
    ``segments.jsonl`` are complete and durable, and decoding may go on from
    ``resume_at`` seconds (the end of the last of them). It is rewritten by rename,
    after an fsync of ``segments.jsonl``, when a decoding window is complete (the
    engine moved on to the next one) and a second has passed since the last one.

A new attempt of the job (after kill -9, a SIGTERM requeue, a timeout or a worker crash;
the spool keeps both files when it requeues, defers or recovers a job) resumes when
``checkpoint.json`` is readable, its ``key`` (audio sha256, engine and every option that
changes the text) equals the new attempt's, and ``segments.jsonl`` still holds those
lines: it truncates ``segments.jsonl`` to them and decodes the audio after
``resume_at``. Anything else starts from the beginning. The spool removes the
checkpoint when the job is done. Members cannot write a job's directory, so neither
file can be forged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesard.job import JobOptions
from cesard.spool import CHECKPOINT, SEGMENTS

log = logging.getLogger("cesard.worker")

SCHEMA = 1
# The options that change the text; priority, formats, exclusive and then do not.
KEY_OPTIONS = ("model", "language", "task", "beam_size", "vad_filter", "word_timestamps",
               "initial_prompt")


def key(sha256: str, engine: str, options: JobOptions) -> str:
    """What a checkpoint (or a deduplicated result) must match: a digest of the audio's
    sha256, the engine and the options that change the text."""
    d = options.to_dict()
    basis = {"sha256": sha256, "engine": engine, **{k: d[k] for k in KEY_OPTIONS}}
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


@dataclass
class Resume:
    """Where a new attempt starts: the segments kept and the audio time after them."""

    at: float
    segments: list[dict[str, Any]]
    language: str | None
    language_probability: float | None
    bytes: int


def load(job_dir: Path, want: str) -> Resume | None:
    """The checkpoint of an earlier attempt, if it is this job's and intact; else None."""
    try:
        ck = json.loads((job_dir / CHECKPOINT).read_bytes()[:1 << 16])
        if not isinstance(ck, dict) or ck.get("schema") != SCHEMA or ck.get("key") != want:
            return None
        n, size, at = int(ck["segments"]), int(ck["bytes"]), float(ck["resume_at"])
        fd = os.open(job_dir / SEGMENTS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(size)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    lines = data.splitlines()
    if len(data) != size or len(lines) != n or (data and not data.endswith(b"\n")):
        return None
    try:
        segments = [json.loads(line) for line in lines]
    except ValueError:
        return None
    if at <= 0 or not all(isinstance(s, dict) and "end" in s for s in segments):
        return None
    lang = ck.get("language")
    prob = ck.get("language_probability")
    return Resume(at, segments, lang if isinstance(lang, str) else None,
                  float(prob) if isinstance(prob, (int, float)) else None, size)


@dataclass
class LiveSegments:
    """Appends segments to ``segments.jsonl`` and writes checkpoints (module docstring).

    :meth:`add` takes each segment with the key of the decoding window it came from; a
    new key means every earlier window is complete."""

    path: Path | None
    key: str = ""
    resume: Resume | None = None
    SYNC_S = 1.0
    fd: int | None = None
    synced: float = 0.0
    lines: int = 0
    size: int = 0
    window: object = None
    last_end: float = 0.0
    language: tuple[str | None, float | None] = (None, None)
    complete: tuple[int, int, float] = field(default=(0, 0, 0.0))

    def __enter__(self) -> LiveSegments:
        if self.path is None:
            return self
        keep = self.resume.bytes if self.resume else 0
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o640)
            os.ftruncate(self.fd, keep)
            os.lseek(self.fd, keep, os.SEEK_SET)
        except OSError as e:
            log.warning("cannot write live segments to %s: %s", self.path, e.strerror)
            self.fd = None
        if self.resume:
            self.lines, self.size = len(self.resume.segments), keep
            self.last_end = self.resume.at
            self.language = (self.resume.language, self.resume.language_probability)
        else:
            self._remove_checkpoint()
        self.synced = time.monotonic()
        return self

    def detected(self, language: str | None, probability: float | None) -> None:
        """The language the engine detected (kept, so a resumed attempt need not)."""
        self.language = (language, probability)

    def add(self, segment: dict[str, Any], window: object = None) -> None:
        if self.fd is None:
            return
        if window != self.window and self.lines:
            self.complete = (self.lines, self.size, self.last_end)
        self.window = window
        data = (json.dumps(segment, ensure_ascii=False) + "\n").encode()
        try:
            os.write(self.fd, data)
            self.lines += 1
            self.size += len(data)
            self.last_end = float(segment.get("end") or self.last_end)
            if time.monotonic() - self.synced >= self.SYNC_S:
                self._sync()
        except OSError:
            pass  # a full disk: follow sees less; the result is still written by the daemon

    def _sync(self) -> None:
        assert self.fd is not None
        os.fsync(self.fd)
        self.synced = time.monotonic()
        n, size, at = self.complete
        if n and self.path is not None:
            ck = {"schema": SCHEMA, "key": self.key, "segments": n, "bytes": size,
                  "resume_at": at, "language": self.language[0],
                  "language_probability": self.language[1]}
            tmp = self.path.parent / f".{CHECKPOINT}.tmp"
            tmp.write_text(json.dumps(ck) + "\n")
            os.replace(tmp, self.path.parent / CHECKPOINT)

    def _remove_checkpoint(self) -> None:
        if self.path is not None:
            try:
                (self.path.parent / CHECKPOINT).unlink()
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            try:
                os.fsync(self.fd)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
