"""Job and result types, and their JSON form.

A job directory holds the audio, ``job.json`` (:class:`JobMeta`) and, once
finished, ``result.json`` (built by :func:`make_result`). This module knows
nothing of the spool layout or of whisper; it only validates and (de)serialises.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import re
import secrets
import socket
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from cesard.fsops import BadJSON, parse_json

SCHEMA = 1
PRIORITIES = ("high", "normal", "low")
FORMATS = ("txt", "srt", "vtt", "json")
TASKS = ("transcribe", "translate")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")
HOOK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_JOB_JSON_BYTES = 64 * 1024


class JobError(Exception):
    """A job-level failure. ``type`` goes to ``result.json`` as ``error.type``."""

    type = "JobError"
    retryable = False

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": str(self), "retryable": self.retryable}


class InvalidJob(JobError):
    type = "InvalidJob"


class InvalidOption(JobError):
    type = "InvalidOption"


class UnsupportedFile(JobError):
    type = "UnsupportedFile"


class EmptyFile(JobError):
    type = "EmptyFile"


class FileTooLarge(JobError):
    type = "FileTooLarge"


class AudioTooLong(JobError):
    type = "AudioTooLong"


class UndecodableAudio(JobError):
    type = "UndecodableAudio"


class UnknownModel(JobError):
    type = "UnknownModel"


class Cancelled(JobError):
    type = "Cancelled"


class QuotaExceeded(JobError):
    type = "QuotaExceeded"


class TransientError(JobError):
    """A failure worth retrying: worker crash, timeout, model load, I/O."""

    type = "TransientError"
    retryable = True


class WorkerCrashed(TransientError):
    type = "WorkerCrashed"


class JobTimeout(TransientError):
    type = "JobTimeout"


class ModelLoadError(TransientError):
    type = "ModelLoadError"


class EngineError(JobError):
    type = "EngineError"


def error_from_dict(d: dict[str, Any]) -> JobError:
    """Rebuild an error sent by a worker (any ``type`` string is kept)."""
    cls: type[JobError] = TransientError if d.get("retryable") else JobError
    err = cls(str(d.get("message", "")))
    err.type = str(d.get("type", cls.type))
    return err


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime | float) -> str:
    """UTC ISO 8601 with microseconds and a ``Z``."""
    if isinstance(t, (int, float)):
        t = dt.datetime.fromtimestamp(t, dt.UTC)
    t = t.astimezone(dt.UTC)
    return f"{t.year:04d}-" + t.strftime("%m-%dT%H:%M:%S.%fZ")  # (%Y: no zeros before 1000)


def parse_iso(s: str) -> dt.datetime:
    """An ISO 8601 time; one without a time zone is taken as UTC (never naive)."""
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


def is_utc_time(value: Any) -> bool:
    """Whether ``value`` is an ISO 8601 time string with a time zone."""
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    if t.tzinfo is None:
        return False
    try:
        t.astimezone(dt.UTC)  # within the years a datetime holds, in UTC too
    except (OverflowError, ValueError):
        return False
    return True


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def hostname() -> str:
    """This host's name reduced to id-safe characters."""
    name = os.environ.get("CESAR_HOST_ID") or socket.gethostname().split(".")[0]
    return re.sub(r"[^A-Za-z0-9-]", "-", name)[:32] or "host"


def new_job_id(now: dt.datetime | None = None) -> str:
    """``20261124T031501.123456Z-host-4242-1a2b``: sorts by time, unique across hosts."""
    now = now or utcnow()
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-{hostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def valid_id(job_id: str) -> bool:
    return bool(ID_RE.match(job_id)) and job_id not in (".", "..")


@dataclass(frozen=True)
class JobOptions:
    """Per-job transcription options, validated. Defaults come from config."""

    model: str = "tiny.en"
    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    vad_filter: bool = True
    word_timestamps: bool = False
    initial_prompt: str | None = None
    priority: str = "normal"
    formats: tuple[str, ...] = ("txt",)
    exclusive: bool = False
    then: tuple[str, ...] = ()  # named hooks (config 'hooks.named') to run when done
    diarize: bool = False  # who said what (cesard.speakers)
    speakers: int | None = None  # the number of speakers, when known
    min_speakers: int | None = None
    max_speakers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["formats"] = list(self.formats)
        d["then"] = list(self.then)
        return d


OPTION_NAMES = tuple(JobOptions.__dataclass_fields__)


def check_language(options: JobOptions, english: bool) -> None:
    """InvalidOption when an English-only model is asked for another language or a
    translation (naming the option, the model and what to pick instead)."""
    if not english:
        return
    if options.language not in (None, "en"):
        raise InvalidOption(
            f"option 'language': model {options.model!r} is English-only, got "
            f"{options.language!r}; use a multilingual model (such as 'base') or language en")
    if options.task == "translate":
        raise InvalidOption(
            f"option 'task': model {options.model!r} is English-only and cannot translate; "
            "use a multilingual model (such as 'base')")


def route_language(options: JobOptions, named: bool, english_only: set[str],
                   multilingual: str | None) -> tuple[JobOptions, str | None]:
    """Which model a job gets, and the one to fall back to, when it did not name a model
    (``named`` false) and the default is English-only while ``multilingual`` is
    configured: another language or a translation goes to ``multilingual`` at once; a
    job with no language keeps the English-only model (fast, and right for English)
    with ``multilingual`` as its fallback should the speech turn out to be another
    language (:meth:`cesard.worker.Worker.run_job`). Otherwise the job as it is."""
    if named or multilingual is None or options.model not in english_only:
        return options, None
    if options.language not in (None, "en") or options.task == "translate":
        return replace(options, model=multilingual), None
    return options, (multilingual if options.language is None else None)


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise InvalidOption(f"option {key!r}: {msg}")


def parse_options(raw: Any, base: JobOptions | None = None, where: str = "job.json") -> JobOptions:
    """Validate a mapping of options over ``base``; unknown keys are errors.

    Raises :class:`InvalidOption` naming ``where``, the key and what is allowed.
    """
    base = base or JobOptions()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise InvalidOption(f"{where}: 'options' must be a mapping, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, val in raw.items():
        try:
            out[key] = _check_option(key, val)
        except InvalidOption as e:
            raise InvalidOption(f"{where}: {e}") from None
    return replace(base, **out)


def _check_option(key: str, val: Any) -> Any:
    """One option's value, validated (``formats`` normalised); InvalidOption names the key."""
    if key not in OPTION_NAMES:
        raise InvalidOption(f"unknown option {key!r}; known options: {', '.join(OPTION_NAMES)}")
    if key == "model":
        _check(isinstance(val, str) and 0 < len(val) <= 200, key, "must be a model name")
    elif key == "language":
        _check(val is None or (isinstance(val, str) and (val == "auto" or bool(
            LANG_RE.match(val)))), key, "must be auto (or null) or a language code such as 'en'")
        if val == "auto":
            val = None  # detected
    elif key == "task":
        _check(val in TASKS, key, f"must be one of {', '.join(TASKS)}")
    elif key == "beam_size":
        _check(isinstance(val, int) and not isinstance(val, bool) and 1 <= val <= 20, key,
               "must be an integer from 1 to 20")
    elif key in ("speakers", "min_speakers", "max_speakers"):
        _check(val is None or (isinstance(val, int) and not isinstance(val, bool)
                               and 1 <= val <= 32), key, "must be null or from 1 to 32")
    elif key in ("vad_filter", "word_timestamps", "exclusive", "diarize"):
        _check(isinstance(val, bool), key, "must be true or false")
    elif key == "initial_prompt":
        _check(val is None or (isinstance(val, str) and len(val) <= 2000), key,
               "must be null or a string of at most 2000 characters")
    elif key == "priority":
        _check(val in PRIORITIES, key, f"must be one of {', '.join(PRIORITIES)}")
    elif key == "formats":
        if isinstance(val, str):
            val = [val]
        _check(isinstance(val, list) and all(f in FORMATS for f in val), key,
               f"must be a list drawn from {', '.join(FORMATS)}")
        val = tuple(dict.fromkeys(["txt", *val]))
    elif key == "then":
        if isinstance(val, str):
            val = [val]
        _check(isinstance(val, list) and all(isinstance(n, str) and HOOK_NAME.match(n)
                                             for n in val), key,
               "must be a list of hook names the administrator configured (hooks.named)")
        val = tuple(dict.fromkeys(val))
    return val


@dataclass
class JobMeta:
    """The content of ``job.json``.

    ``attempts`` counts attempts that ended (finished, failed, crashed); an
    attempt interrupted by SIGTERM is not counted. ``errors`` keeps each failed
    attempt's error so a dead letter shows its history.
    """

    id: str
    options: dict[str, Any]
    submitted_at: str
    submitter: str = ""
    source_name: str | None = None
    attempts: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    not_before: str | None = None
    owner: int | None = None  # uid; set by the daemon from the filesystem, never trusted input
    schema: int = SCHEMA

    def to_json(self) -> bytes:
        d = {
            "schema": self.schema, "id": self.id, "submitted_at": self.submitted_at,
            "submitter": self.submitter, "source_name": self.source_name,
            "options": self.options, "attempts": self.attempts, "errors": self.errors,
            "not_before": self.not_before, "owner": self.owner,
        }
        return json_bytes(d, indent=2)

    @classmethod
    def from_json(cls, data: bytes, where: str = "job.json") -> JobMeta:
        """Parse ``job.json``; raise :class:`InvalidJob` naming what is wrong."""
        try:
            d = parse_json(data, MAX_JOB_JSON_BYTES)
        except BadJSON as e:
            raise InvalidJob(f"{where} is {e}; rewrite it or resubmit") from None
        if not isinstance(d, dict):
            raise InvalidJob(f"{where} must hold a JSON object")
        known = {"schema", "id", "submitted_at", "submitter", "source_name", "options",
                 "attempts", "errors", "not_before", "owner"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidJob(f"{where}: unknown key {unknown[0]!r}; known keys: "
                             f"{', '.join(sorted(known))}")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise InvalidJob(f"{where}: unsupported schema {d.get('schema')!r} (expected {SCHEMA})")
        job_id = d.get("id")
        if not isinstance(job_id, str) or not valid_id(job_id):
            raise InvalidJob(f"{where}: 'id' must use only [A-Za-z0-9._-], got {job_id!r}")
        sub = d.get("submitted_at")
        if not isinstance(sub, str) or not is_utc_time(sub):
            raise InvalidJob(f"{where}: 'submitted_at' must be an ISO 8601 time with a time "
                             f"zone, such as '2026-11-24T03:15:01Z', got {_short(sub)}")
        not_before = d.get("not_before")
        if not_before is not None and (not isinstance(not_before, str)
                                       or not is_utc_time(not_before)):
            raise InvalidJob(f"{where}: 'not_before' must be null or an ISO 8601 time with a "
                             f"time zone, got {_short(not_before)}")
        submitter = d.get("submitter", "")
        if not isinstance(submitter, str) or len(submitter) > 256:
            raise InvalidJob(f"{where}: 'submitter' must be a string of at most 256 characters")
        src = d.get("source_name")
        if src is not None and (not isinstance(src, str) or "/" in src or src in (".", "..")
                                or src.startswith(".")):
            raise InvalidJob(f"{where}: 'source_name' must be a plain file name, got {src!r}")
        attempts = d.get("attempts", 0)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
            raise InvalidJob(f"{where}: 'attempts' must be a non-negative integer")
        errors = d.get("errors") or []
        if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
            raise InvalidJob(f"{where}: 'errors' must be a list of objects")
        opts = d.get("options") or {}
        if not isinstance(opts, dict):
            raise InvalidJob(f"{where}: 'options' must be a mapping")
        owner = d.get("owner")
        if owner is not None and (not isinstance(owner, int) or isinstance(owner, bool)):
            raise InvalidJob(f"{where}: 'owner' must be a uid")
        # Times are kept as UTC with a Z, whatever zone they were written in.
        return cls(id=job_id, options=opts, submitted_at=iso(parse_iso(sub)),
                   submitter=submitter, source_name=src, attempts=attempts, errors=errors,
                   not_before=iso(parse_iso(not_before)) if not_before else None,
                   owner=owner)


def interruptions(meta: JobMeta) -> int:
    """Attempts a stop of the daemon or its host cut short (recovery marks their errors
    ``"interrupted": true``): not the job's fault, not counted against max_attempts."""
    return sum(1 for e in meta.errors if e.get("interrupted") is True)


def charged_attempts(meta: JobMeta) -> int:
    """Attempts that count against max_attempts: those that ended by the job's own failure
    (its worker crashed on it, a timeout, a transient error)."""
    return meta.attempts - interruptions(meta)


def interruption_limit(max_attempts: int) -> int:
    """Daemon stops a job may live through before it is taken for their cause."""
    return 5 * max_attempts


def json_bytes(obj: Any, indent: int | None = None) -> bytes:
    """JSON as UTF-8 bytes plus a newline; a lone surrogate (a member's job.json may hold
    ``"\\udcff"``) is written as its ``\\u`` escape, never as bytes that are not UTF-8."""
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode(
        "utf-8", "backslashreplace")


def display_name(name: str) -> str:
    """A file name safe for JSON and logs (undecodable bytes shown as \\xNN)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


MAX_NAME_BYTES = 200  # a name the daemon makes: room left for "audio-" and suffixes in 255


def safe_name(name: str) -> str:
    """A file name for a claimed bare file: valid UTF-8, no control characters, at most
    :data:`MAX_NAME_BYTES` bytes encoded (the extension kept where it fits).

    Ordinary names come back unchanged; others get undecodable bytes spelled
    as ``\\xNN`` and control characters (newlines) replaced by ``_``.
    """
    shown = display_name(name)
    cleaned = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in shown).lstrip(".")
    if len(cleaned.encode()) > MAX_NAME_BYTES:
        stem, dot, ext = cleaned.rpartition(".")
        ext = dot + ext if dot and stem and len(ext.encode()) <= 16 else ""
        stem = cleaned[:len(cleaned) - len(ext)]
        room = MAX_NAME_BYTES - len(ext.encode())
        cleaned = stem.encode()[:room].decode("utf-8", "ignore") + ext
    return cleaned or "audio"


def user_name(uid: int) -> str:
    """The login name of ``uid``, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def owner_dict(uid: int | None) -> dict[str, Any] | None:
    """``{"uid": 1001, "name": "alice"}`` for result.json (the name as of now)."""
    return None if uid is None else {"uid": uid, "name": user_name(uid)}


def make_result(
    meta: JobMeta,
    status: str,
    options: JobOptions | None,
    source: dict[str, Any],
    started_at: str | None,
    finished_at: str,
    worker: str,
    attempts: int,
    transcript: dict[str, Any] | None = None,
    error: JobError | None = None,
    hooks: list[dict[str, Any]] | None = None,
    deduplicated_from: str | None = None,
) -> dict[str, Any]:
    """Build ``result.json`` (docs/result.schema.json) for a finished, failed or cancelled job."""
    t = transcript or {}
    queued_s = None
    if started_at:
        try:
            queued_s = round((parse_iso(started_at) - parse_iso(meta.submitted_at))
                             .total_seconds(), 6)
        except (ValueError, TypeError, OverflowError):
            queued_s = None
    transcribe_s = t.get("transcribe_s")
    duration = t.get("duration")
    rtf = None
    if transcribe_s and duration:
        rtf = round(duration / transcribe_s, 2)
    return {
        "schema": SCHEMA,
        "id": meta.id,
        "status": status,
        "source": source,
        "options": options.to_dict() if options else meta.options,
        "submitted_at": meta.submitted_at,
        "submitter": meta.submitter,
        "owner": owner_dict(meta.owner),
        "started_at": started_at or None,
        "finished_at": finished_at,
        "attempts": attempts,
        "worker": worker,
        "language": t.get("language"),
        "language_probability": t.get("language_probability"),
        "language_warning": t.get("language_warning"),
        "language_fallback": t.get("language_fallback"),
        "speakers": t.get("speakers"),
        "diarization": t.get("diarization"),
        "duration": duration,
        "text": t.get("text", ""),
        "segments": t.get("segments", []),
        "timings": {"queued_s": queued_s, "transcribe_s": transcribe_s, "realtime_factor": rtf},
        "engine": t.get("engine"),
        "decoding": t.get("decoding"),
        "resumed_from": t.get("resumed_from", 0.0),
        "deduplicated_from": deduplicated_from,
        "hooks": hooks or [],
        "error": error.to_dict() if error else None,
        "errors": meta.errors + ([error.to_dict()] if error else []),
    }
