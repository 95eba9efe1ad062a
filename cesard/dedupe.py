"""Dedupe (``dedupe: true``): a job whose audio and options equal a done job's reuses its
result instead of transcribing again.

The match is :func:`cesard.checkpoint.key`: the audio's sha256, the engine and every
option that changes the text (model, language, task, beam_size, vad_filter,
word_timestamps, initial_prompt). The earlier job must be in done/ with status done, and
visible to the new job's owner under the privacy rules: the same owner; or any owner
with ``privacy: group``; or the new job's owner is root or in ``admin_group``.

The index (key → done jobs) is built from done/*/result.json on a thread of its own when
the daemon starts, and grows as jobs finish. Hashing a claimed job's audio and looking it
up run on that thread too, so the supervisor's loop never waits for either. A hit is
checked against the earlier result.json itself before it is used (it may have been
pruned). The new job gets a copy of the text, segments and language, written into its
own files (never a link to the earlier job's), ``deduplicated_from`` naming the job
reused, and no worker time.
"""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import checkpoint
from cesard import job as jobmod
from cesard.fsops import file_sha256
from cesard.spool import RESULT, Spool, read_small

log = logging.getLogger("cesard")


@dataclass
class Match:
    """What hashing a job found: its audio's source entry, and the result to reuse."""

    source: dict[str, Any] | None
    prior: dict[str, Any] | None


def result_key(result: dict[str, Any]) -> str | None:
    """The dedupe key of a done result.json, or None when it cannot have one."""
    try:
        sha = result["source"]["sha256"]
        engine = result["engine"]["name"]
        options = jobmod.parse_options(result["options"])
    except (KeyError, TypeError, jobmod.JobError):
        return None
    if result.get("status") != "done" or not isinstance(sha, str) or not sha:
        return None
    return checkpoint.key(sha, str(engine), options)


def transcript_of(prior: dict[str, Any]) -> dict[str, Any]:
    """What a deduplicated job copies from the result it reuses (no worker time)."""
    t = {k: prior.get(k) for k in ("text", "segments", "language", "language_probability",
                                   "duration", "engine", "decoding")}
    t["transcribe_s"] = 0.0
    return t


def _hash(path: Path) -> dict[str, Any] | None:
    """``source`` for a regular, singly linked file (opened without following links)."""
    hashed = file_sha256(path)
    if hashed is None or hashed[1].st_nlink > 1:
        return None
    return {"name": jobmod.display_name(path.name), "type": "regular file",
            "bytes": hashed[1].st_size, "sha256": hashed[0]}


class Dedupe:
    def __init__(self, spool: Spool, engine: str) -> None:
        self.spool = spool
        self.engine = engine
        self.lock = threading.Lock()
        self.index: dict[str, list[tuple[str, int | None]]] = {}
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cesard-dedupe")
        self.pool.submit(self._build)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _build(self) -> None:
        n = 0
        for name in self.spool.scan("done"):
            try:
                result = json.loads(read_small(self.spool.dir("done") / name / RESULT, 64 << 20))
            except (OSError, ValueError, jobmod.JobError):
                continue
            if isinstance(result, dict) and self.add(result, name):
                n += 1
        log.info("dedupe: %d done job(s) indexed", n)

    def add(self, result: dict[str, Any], name: str | None = None) -> bool:
        """Index a done result (in done/``name``, by default its id)."""
        key = result_key(result)
        if key is None:
            return False
        owner = (result.get("owner") or {}).get("uid")
        with self.lock:
            self.index.setdefault(key, []).append((name or str(result["id"]), owner))
        return True

    def check(self, audio: Path, options: jobmod.JobOptions, owner: int | None,
              sees_all: bool) -> Future[Match]:
        """Hash ``audio`` and find a done result to reuse, on the dedupe thread."""
        return self.pool.submit(self._check, audio, options, owner, sees_all)

    def _check(self, audio: Path, options: jobmod.JobOptions, owner: int | None,
               sees_all: bool) -> Match:
        source = _hash(audio)
        if source is None:
            return Match(None, None)
        key = checkpoint.key(source["sha256"], self.engine, options)
        with self.lock:
            candidates = list(self.index.get(key, []))  # the first transcribed first
        for name, prior_owner in candidates:
            if not (sees_all or prior_owner == owner):
                continue
            try:
                prior = json.loads(read_small(self.spool.dir("done") / name / RESULT, 64 << 20))
            except (OSError, ValueError, jobmod.JobError):
                with self.lock:  # pruned or retried since: forget it, try the next
                    left = [c for c in self.index.get(key, []) if c[0] != name]
                    if left:
                        self.index[key] = left
                    else:
                        self.index.pop(key, None)
                continue
            if isinstance(prior, dict) and result_key(prior) == key:
                return Match(source, prior)
        return Match(source, None)
