"""Live segments and checkpoints: what a worker has decoded survives its attempt.

Two files in the job's directory, written by the worker only:

``segments.jsonl``
    One JSON object per decoded segment (``start``, ``end``, ``text``, ``words``; times
    in seconds of the whole file), appended as the engine yields them, flushed at once
    (``cesarctl follow`` reads it) and fsynced at most every second.

``checkpoint.json``
    ``{"schema", "key", "segments", "bytes", "resume_at", "speech_at", "language",
    "language_probability"}``: the first ``segments`` lines (``bytes`` bytes) of
    ``segments.jsonl`` are complete and durable, and decoding may go on from
    ``resume_at`` seconds of the file (where the next decoding window starts, or the end
    of the last kept segment); with VAD, ``speech_at`` is where the next window starts
    in the speech-only audio (so a resumed attempt cuts the same windows). A window is
    complete when the engine yields a segment of the next one, or says a batch ended.
    Once a second, a thread fsyncs ``segments.jsonl`` and, when more windows are complete
    than the checkpoint says, replaces ``checkpoint.json`` by rename (the decoding thread
    only appends; at the end of a batch it writes the checkpoint at once).

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
import threading
from dataclasses import dataclass
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
    speech_at: float | None = None


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
    speech_at = ck.get("speech_at")
    return Resume(at, segments, lang if isinstance(lang, str) else None,
                  float(prob) if isinstance(prob, (int, float)) else None, size,
                  float(speech_at) if isinstance(speech_at, (int, float)) else None)


class LiveSegments:
    """Appends segments to ``segments.jsonl`` and writes checkpoints (module docstring).

    :meth:`add` takes each segment with the key of the decoding window it came from; a
    new key means every earlier window is complete. A float key is the time the window
    starts (where a resumed attempt goes on); ``("speech", T)`` its start in the
    speech-only audio VAD made; other keys only tell windows apart."""

    SYNC_S = 1.0

    def __init__(self, path: Path | None, key: str = "", resume: Resume | None = None) -> None:
        self.path = path
        self.key = key
        self.resume = resume
        self.fd: int | None = None
        self.lock = threading.Lock()
        self.sync_lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.lines = self.size = 0
        self.window: object = None
        self.last_end = 0.0
        self.language: tuple[str | None, float | None] = (None, None)
        self.complete: tuple[int, int, float, float | None] = (0, 0, 0.0, None)
        self.written = 0  # segments the checkpoint on disk covers

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
            return self
        if self.resume:
            self.lines, self.size = len(self.resume.segments), keep
            self.last_end = self.resume.at
            self.language = (self.resume.language, self.resume.language_probability)
            self.complete = (self.lines, self.size, self.last_end, self.resume.speech_at)
            self.written = self.lines
        else:
            self._remove_checkpoint()
        self.thread = threading.Thread(target=self._syncer, name="cesard-checkpoint",
                                       daemon=True)
        self.thread.start()
        return self

    def detected(self, language: str | None, probability: float | None) -> None:
        """The language the engine detected (kept, so a resumed attempt need not)."""
        self.language = (language, probability)

    def add(self, segment: dict[str, Any], window: object = None) -> None:
        if self.fd is None:
            return
        data = (json.dumps(segment, ensure_ascii=False) + "\n").encode()
        with self.lock:
            if window != self.window and self.lines:
                # Decoding goes on where this window starts when the engine says (a
                # float), else after the last complete segment.
                at = window if isinstance(window, float) else self.last_end
                speech = (float(window[1]) if isinstance(window, tuple) and window[0] == "speech"
                          else None)
                self.complete = (self.lines, self.size, at, speech)
            self.window = window
            try:
                os.write(self.fd, data)
            except OSError:
                return  # a full disk: follow sees less; the result is still written
            self.lines += 1
            self.size += len(data)
            self.last_end = float(segment.get("end") or self.last_end)

    def add_complete(self) -> None:
        """Every segment added so far is complete (the engine finished a batch): the
        checkpoint is written now, not at the next tick (a batch is many windows)."""
        with self.lock:
            if not self.lines:
                return
            self.complete = (self.lines, self.size, self.last_end, None)
        try:
            self._sync()
        except OSError:
            pass

    def _syncer(self) -> None:
        while not self.stopped.wait(self.SYNC_S):
            try:
                self._sync()
            except OSError:
                pass  # a full disk: no newer checkpoint; the older one still holds

    def _sync(self) -> None:
        with self.sync_lock:  # the checkpoint thread, or the decoding one at a batch's end
            self._sync_locked()

    def _sync_locked(self) -> None:
        with self.lock:
            fd, (n, size, at, speech) = self.fd, self.complete
        if fd is None:
            return
        os.fsync(fd)  # the lines the checkpoint names are durable before it is
        if n > self.written and self.path is not None:
            ck = {"schema": SCHEMA, "key": self.key, "segments": n, "bytes": size,
                  "resume_at": at, "speech_at": speech, "language": self.language[0],
                  "language_probability": self.language[1]}
            tmp = self.path.parent / f".{CHECKPOINT}.tmp"
            tmp.write_text(json.dumps(ck) + "\n")
            os.replace(tmp, self.path.parent / CHECKPOINT)
            self.written = n

    def _remove_checkpoint(self) -> None:
        if self.path is not None:
            try:
                (self.path.parent / CHECKPOINT).unlink()
            except OSError:
                pass

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
        with self.lock:
            fd, self.fd = self.fd, None
        if fd is not None:
            try:
                os.fsync(fd)
            except OSError:
                pass
            os.close(fd)


def write_all(path: Path, segments: list[dict[str, Any]]) -> None:
    """``segments.jsonl`` of a job decoded in a shared batch, written whole when it is done
    (its segments come at once); any earlier attempt's checkpoint goes."""
    try:
        (path.parent / CHECKPOINT).unlink()
    except OSError:
        pass
    data = b"".join((json.dumps(s, ensure_ascii=False) + "\n").encode() for s in segments)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("cannot write the segments to %s: %s", path, e.strerror)
