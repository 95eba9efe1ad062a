"""The lifecycle of a job: the one part that moves jobs between the spool's states.

Claim (incoming/ → processing/), finish (→ done/ or failed/, with result.json, hooks,
the catalogue and dedupe told), retry later (→ deferred/), requeue (→ incoming/, no
attempt counted), recover orphaned claims, and the moves a control request asks for.
Every move out of processing/ is fenced on this daemon's claim (:meth:`Lifecycle.ours`):
a claim another daemon took over is left to it. The queue hears of what comes back to
incoming/ or goes to deferred/ through a :class:`Queue` it is given.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

from cesard import catalog, hooks, outputs
from cesard import job as jobmod
from cesard.adoption import Claimed
from cesard.clock import Clock
from cesard.dedupe import Dedupe
from cesard.entries import Entry
from cesard.health import FULL_ERRNOS, Storage
from cesard.job import JobMeta, JobOptions
from cesard.lease import Claimer
from cesard.metrics import Metrics
from cesard.quarantine import Quarantine
from cesard.running import Running
from cesard.settings import Settings
from cesard.sources import Sources
from cesard.spool import Spool, Unclaimable

log = logging.getLogger("cesard")


class Queue(Protocol):
    """What the lifecycle tells the queue (:class:`cesard.intake.Intake`)."""

    def queued(self, name: str, now: float) -> None: ...
    def put_back(self, entry: Entry) -> None: ...
    def deferred_until(self, name: str, due: float) -> None: ...
    def blocked(self, name: str, why: str) -> None: ...
    def forget(self, name: str) -> None: ...


class Lifecycle:
    """Verbs: claim, reject, finish, retry_or_fail, requeue, recover, undefer,
    cancel_queued, retry_failed. Fields: who claims (``me``) and the counts of done/ and
    failed/."""

    def __init__(self, spool: Spool, settings: Settings, clock: Clock, storage: Storage,
                 quarantine: Quarantine, sources: Sources, hooks_: hooks.Hooks,
                 catalog_: catalog.Catalog, metrics: Metrics,
                 dedupe: Callable[[], Dedupe | None], changed: Callable[[bool], None]) -> None:
        self.spool = spool
        self.settings = settings
        self.clock = clock
        self.storage = storage
        self.quarantine = quarantine
        self.sources = sources
        self.hooks = hooks_
        self.catalog = catalog_
        self.metrics = metrics
        self.dedupe = dedupe
        self.changed = changed  # status.json should say so (True: at once)
        self.queue: Queue | None = None  # wired after the queue is made
        self.me = Claimer.me()
        self.on_disk = {"done": 0, "failed": 0}  # entries in done/ and failed/
        self.finished_mtime: dict[str, int] = {}  # their mtimes when counted

    # --- claim --------------------------------------------------------------------

    def claim(self, entry: Entry, now: float) -> Running | None:
        """Claim ``entry`` and check its job; None if it was taken, refused, or failed
        here at once (a bad job.json). A full disk puts the entry back in the queue."""
        try:
            claimed = self.spool.claim(entry, self.me, now)
        except Unclaimable as e:
            self._queue().blocked(entry.name, str(e))
            return None
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                self.storage.full(now, e)
                self._queue().put_back(entry)
                return None
            raise
        if claimed is None:
            return None
        self.storage.claimed()
        return self._prepare(claimed, now)

    def reject(self, entry: Entry, err: jobmod.JobError, now: float) -> None:
        """Claim an entry and fail it with ``err`` without a worker."""
        try:
            claimed = self.spool.claim(entry, self.me, now)
        except Unclaimable as e:
            self._queue().blocked(entry.name, str(e))
            return
        except OSError as e:
            log.error("cannot refuse %s (%s): %s; it stays in incoming/",
                      jobmod.display_name(entry.name), err, e)
            return
        if claimed is not None:
            claimed.error = err
            self._prepare(claimed, now)

    def _prepare(self, c: Claimed, now: float) -> Running | None:
        """Validate a claimed job; a bad one is finished into failed/ here."""
        cfg = self.settings.cfg
        started_at = jobmod.iso(self.clock.shown(now))
        meta = c.meta
        meta.id = c.id  # the directory's name is the id (a clash renames it at claim)
        try:
            if c.error is not None:
                raise c.error
            options = jobmod.parse_options(meta.options, cfg.job_defaults(),
                                           where=f"{c.id}/job.json")
            named = isinstance(meta.options, dict) and "model" in meta.options
            options, fallback = jobmod.route_language(
                options, named, self.settings.english_only, self.settings.multilingual)
            if cfg.engine == "faster-whisper" and options.model not in cfg.model_dirs:
                raise jobmod.UnknownModel(
                    f"{c.id}/job.json: model {options.model!r} is not configured (configured: "
                    f"{', '.join(cfg.model_dirs)}); pick one of those or add it under "
                    "'models' in the configuration")
            try:
                cfg.check_then(options)
                jobmod.check_language(options, options.model in self.settings.english_only)
            except jobmod.InvalidOption as e:
                raise jobmod.InvalidOption(f"{c.id}/job.json: {e}") from None
            audio, size = self.spool.find_audio(c.path, meta, cfg.max_file_bytes)
        except jobmod.JobError as e:
            bad = Running(c.id, c.path, meta, JobOptions(), "", 0, started_at, now, now)
            self.finish(bad, "failed", None, None, e, now)
            return None
        timeout = cfg.job_timeout or max(120.0, 120.0 + size / 1e6)
        log.info("job=%s claimed: %s (%d bytes, priority %s, attempt %d)", c.id,
                 jobmod.display_name(audio), size, options.priority, meta.attempts + 1)
        return Running(c.id, c.path, meta, options, audio, size, started_at, now, now + timeout,
                       fallback=fallback)

    def ours(self, job: Running, what: str) -> bool:
        """The fence before a job leaves processing/: True if we still hold its claim."""
        if self.spool.holds(job.path, self.me):
            return True
        log.warning("job=%s: not %s here: this daemon's claim was taken over (its lease "
                    "expired while it was cut off); the daemon holding it now finishes it",
                    job.id, what)
        return False

    def heartbeat(self, job_id: str, now: float) -> bool:
        """Renew the lease of a job we hold; False if our claim is gone."""
        return self.spool.heartbeat(job_id, self.me, now)

    # --- finish -------------------------------------------------------------------

    def finish(self, job: Running, status: str, source: dict[str, Any] | None,
               transcript: dict[str, Any] | None, error: jobmod.JobError | None,
               now: float, deduplicated_from: str | None = None) -> None:
        """Move ``job`` to done/ or failed/ with its result (status done, failed or
        cancelled); without ``source``, its audio is described first, off the loop."""
        if not self.ours(job, "finished"):
            return
        cfg = self.settings.cfg
        finished_at = jobmod.iso(self.clock.shown(now))
        if source is None:
            source = self.sources.describe(
                job.id, job.path, job.meta, cfg.max_file_bytes,
                lambda s: self.finish(job, status, s, transcript, error, self.clock.now(),
                                      deduplicated_from))
            if source is None:
                return  # finished once its audio is hashed, off the loop (cesard/sources.py)
        attempts = job.meta.attempts + (1 if job.started_at else 0)
        planned = hooks.planned(cfg.hooks, status, job.options.then)
        result = jobmod.make_result(job.meta, status, job.options if job.audio else None, source,
                                    job.started_at, finished_at, self.me.worker_name, attempts,
                                    transcript, error, planned, deduplicated_from)
        files = outputs.render_all(result, job.options.formats) if status == "done" else {}
        state = "done" if status == "done" else "failed"
        try:
            path = self.spool.finish(job.id, state, result, files, cfg.keep_audio,
                                     job.audio or None, job.path)
        except OSError as e:
            if e.errno in FULL_ERRNOS:
                self.storage.full(now, e)
                self.requeue(job, "the spool is full")
                return
            raise
        self.hooks.schedule(job.id, status, path, job.meta.owner, planned)
        self.catalog.finished(state, result, job.meta.source_name)
        dd = self.dedupe()
        if dd is not None and status == "done":
            dd.add(result, path.name)
        self.on_disk[state] += 1
        if self.finished_mtime.get(state) is not None:
            self.finished_mtime[state] = self._mtime(state)  # our own change, counted
        t = transcript or {}
        timings = result.get("timings") or {}
        self.metrics.job_finished(status, t.get("duration"), t.get("transcribe_s"),
                                  self.clock.shown(now), timings.get("queued_s"),
                                  timings.get("realtime_factor"))
        self.changed(True)
        shown = jobmod.display_name(job.audio) if job.audio else str(source.get("name") or "-")
        if deduplicated_from:
            log.info("job=%s done: file=%s deduplicated from %s (same audio and options) "
                     "status=done", job.id, shown, deduplicated_from)
        elif status == "done":
            rtf = result["timings"]["realtime_factor"]
            log.info("job=%s done: file=%s duration=%.1fs realtime=%sx attempts=%d status=done",
                     job.id, shown, t.get("duration") or 0.0, rtf, attempts)
        elif status == "cancelled":
            log.info("job=%s cancelled: file=%s status=cancelled", job.id, shown)
        else:
            assert error is not None
            log.error("job=%s failed: file=%s %s: %s status=failed", job.id, shown, error.type,
                      error)

    def retry_or_fail(self, job: Running, err: jobmod.JobError, now: float) -> None:
        """A transient failure: defer for a retry, or fail past max_attempts."""
        cfg = self.settings.cfg
        charged = jobmod.charged_attempts(job.meta) + 1  # a daemon's stops are not charged
        if charged >= cfg.max_attempts:
            final = jobmod.TransientError(
                f"{err}; gave up after {charged} failed attempts "
                f"(max_attempts={cfg.max_attempts})")
            final.type = err.type
            self.finish(job, "failed", None, None, final, now)  # (fenced there)
            return
        if not self.ours(job, "retried"):
            return
        meta = job.meta
        meta.attempts += 1
        meta.errors.append(err.to_dict())
        delays = cfg.retry_delays
        delay = delays[min(meta.attempts - 1, len(delays) - 1)]
        meta.not_before = jobmod.iso(self.clock.shown(now) + delay)
        try:
            self.spool.defer(job.id, meta)
        except OSError as e:
            if e.errno not in FULL_ERRNOS:
                raise
            # job.json could not be rewritten: back to incoming/ as it was.
            self.storage.full(now, e)
            self.requeue(job, "the spool is full")
            return
        self._queue().deferred_until(job.id, now + delay)
        log.warning("job=%s attempt %d failed (%s: %s); retry in %g s", job.id, meta.attempts,
                    err.type, err, delay)
        self.changed(False)

    def requeue(self, job: Running, why: str) -> None:
        """Back to incoming/, no attempt counted."""
        if not self.ours(job, "requeued"):
            return
        self.spool.requeue(job.id)
        log.info("job=%s returned to incoming/ (%s); no attempt counted", job.id, why)
        self._queue().queued(job.id, self.clock.now())
        self.changed(False)

    def undefer(self, name: str) -> bool:
        """A deferred job whose retry is due: back to incoming/ (False if it is gone)."""
        if not self.spool.undefer(name):
            return False
        log.info("job=%s retry is due; queued again", name)
        return True

    # --- recovery -----------------------------------------------------------------

    def recover(self, now: float, startup: bool = False) -> None:
        """Return orphaned claims to incoming/ (I4). Only this method recovers."""
        for name in self.spool.orphans(self.me, now, self.settings.cfg.lease_seconds):
            if self.quarantine.holds("processing", name):
                continue
            with self.quarantine.guard("processing", name, "recovering"):
                self._recover_one(name, now, startup)

    def _recover_one(self, name: str, now: float, startup: bool) -> None:
        cfg = self.settings.cfg
        reason = ("the daemon holding this job stopped without finishing it"
                  if startup else "the claim's lease expired (its daemon is gone)")
        try:
            state, job_id = self.spool.recover(name, cfg.max_attempts,
                                               self.clock.shown(now), reason)
        except OSError as e:
            # It stays in processing/ (maybe as ID~rTOKEN) and is recovered later.
            if e.errno in FULL_ERRNOS:
                self.storage.full(now, e)
            else:
                log.error("recovering %s from processing/ failed: %s; trying again later",
                          jobmod.display_name(name), e)
            return
        if state == "incoming":
            log.warning("job=%s recovered from processing/ (%s); queued again", job_id,
                        reason)
            self._queue().queued(job_id, now)
        elif state == "failed":
            log.error("job=%s failed: WorkerCrashed: %s; its daemon stopped %d times while "
                      "it ran", job_id, reason, jobmod.interruption_limit(cfg.max_attempts))
            self.hooks.after_recovery(job_id, self.spool.dir("failed") / job_id, cfg.hooks)
            self.on_disk["failed"] += 1
            self.metrics.job_finished("failed", None, None, self.clock.shown(now))

    # --- what control requests move -----------------------------------------------

    def cancel_queued(self, state: str, job_id: str, now: float) -> bool:
        """Take a queued or deferred job and finish it as cancelled; False if it moved.
        Raises :class:`Unclaimable` for an entry the daemon may not take."""
        if state == "incoming":
            entry = self.spool.entry_key(job_id)
            if entry is None:
                return False
            claimed = self.spool.claim(entry, self.me, now)
            if claimed is None:
                return False
            path, meta = claimed.path, claimed.meta
            job_id = claimed.id
        else:
            path = self.spool.dir("processing") / job_id
            try:
                os.rename(self.spool.dir(state) / job_id, path)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
                    return False
                raise
            self.spool.take_lease(path, self.me, now)  # finishing is fenced on our claim
            try:
                meta = self.spool.read_meta(path)
            except jobmod.JobError:
                meta = JobMeta(id=job_id, options={},
                               submitted_at=jobmod.iso(self.clock.shown(now)))
        self._queue().forget(job_id)
        job = Running(job_id, path, meta, JobOptions(), "", 0, "", now, now)
        self.finish(job, "cancelled", None, None,
                    jobmod.Cancelled(f"cancelled by request while {state}"), now)
        return True

    def retry_failed(self, job_id: str, now: float) -> None:
        """A failed job, queued again with its attempts reset (OSError if it cannot be
        taken from failed/)."""
        src = self.spool.dir("failed") / job_id
        dst = self.spool.dir("processing") / job_id
        os.rename(src, dst)
        self.on_disk["failed"] = max(0, self.on_disk["failed"] - 1)
        meta: JobMeta | None
        try:
            meta = self.spool.read_meta(dst)
            meta.attempts, meta.errors, meta.not_before = 0, [], None
        except jobmod.JobError:
            meta = None
        self.spool.requeue(job_id, meta)
        self._queue().queued(job_id, now)

    # --- counts of done/ and failed/ ----------------------------------------------

    def count_finished(self) -> None:
        for state in ("done", "failed"):
            self.finished_mtime[state] = self._mtime(state)
            self.on_disk[state] = sum(1 for _ in self.spool.scan(state))

    def recount_if_changed(self) -> bool:
        """Count done/ and failed/ again when something else changed them (cesarctl prune,
        retry, another host): 'cesarctl status' shows these counts while the directories
        are older than status.json. True if it counted."""
        if any(self._mtime(s) != self.finished_mtime.get(s) for s in ("done", "failed")):
            self.count_finished()
            return True
        return False

    def _mtime(self, state: str) -> int:
        try:
            return os.stat(self.spool.dir(state)).st_mtime_ns
        except OSError:
            return 0

    def _queue(self) -> Queue:
        assert self.queue is not None, "Lifecycle.queue is wired by the supervisor"
        return self.queue
