"""The ``source`` block of a finishing job's result.json, hashed off the loop.

A job that never reached a worker (a bad option, a quota refusal, a cancel) or failed
there is finished with its audio's name, type, size and sha256. Hashing a 2 GiB file
takes seconds; in the loop three such refusals held everyone's jobs for 48 s. Audio of
at most :data:`INLINE_BYTES` is hashed at once; a larger one on one thread of its own,
and the job is finished when its hash is ready (its lease heartbeated meanwhile). One
member's large files wait behind each other, never in front of other jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cesard import dropped
from cesard.job import JobMeta

log = logging.getLogger("cesard")

INLINE_BYTES = 4 << 20  # about 10 ms of hashing: done in the loop

Source = dict[str, Any]


class Sources:
    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[str, tuple[Future[Source], Callable[[Source], None]]] = {}

    def describe(self, job_id: str, path: Path, meta: JobMeta, hash_limit: int,
                 then: Callable[[Source], None]) -> Source | None:
        """The source block now when it is cheap; else None, and ``then(source)`` is called
        from :meth:`step` once the hash is ready."""
        hash_limit = hash_limit or 1 << 62  # 0: no max_file_bytes
        quick = dropped.describe_source(path, meta, 0)
        size = quick.get("bytes")
        if quick["type"] != "regular file" or not size or size > hash_limit:
            return quick  # nothing to hash
        if size <= INLINE_BYTES:
            return dropped.describe_source(path, meta, hash_limit)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="cesard-hash")
        fut = self._pool.submit(dropped.describe_source, path, meta, hash_limit)
        fut.add_done_callback(lambda _f: self._wake())
        self._pending[job_id] = (fut, then)
        return None

    def step(self) -> None:
        """Finish the jobs whose hash is ready."""
        for job_id, (fut, then) in list(self._pending.items()):
            if not fut.done():
                continue
            del self._pending[job_id]
            try:
                source = fut.result()
            except Exception:  # noqa: BLE001 - describe_source reads what a member dropped
                log.exception("job=%s: describing its audio failed", job_id)
                source = {"name": job_id, "type": "missing", "bytes": None, "sha256": None}
            then(source)

    def ids(self) -> list[str]:
        """Jobs waiting for their hash (their leases are heartbeated)."""
        return list(self._pending)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=False)
            self._pool = None
        self.step()
