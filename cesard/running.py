"""A claimed job while this daemon holds it: from its claim until it is finished,
requeued or deferred (:mod:`cesard.lifecycle` makes and ends it)."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard.job import JobMeta, JobOptions


@dataclass
class Running:
    """A claimed job, from claim until it is finished, requeued or deferred."""

    id: str
    path: Path
    meta: JobMeta
    options: JobOptions
    audio: str
    size: int
    started_at: str
    started: float
    deadline: float
    fraction: float = 0.0
    duration: float | None = None
    hashing: Future[Any] | None = None  # dedupe: its audio is being looked up (a Match)
    fallback: str | None = None  # the multilingual model, should the speech not be English
    begun: bool = False  # its worker has begun it (until then it waits behind another job)
