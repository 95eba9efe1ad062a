"""What workers say, and what happens when they stop saying it: the supervisor's side of
the worker protocol (:mod:`cesard.worker`).

The pool reads each worker's reply pipe (JSON lines); here they become the lifecycle's
verbs: progress updates a running job; ``done`` and ``error`` finish one job of the
worker (a batch's jobs end one by one). A worker that dies, a job past its deadline,
and a claim another daemon took over (fencing, :meth:`cesard.spool.Spool.holds`) are
handled here too. A result the storage would not take waits here (its lease still
renewed) until the storage answers. Nothing here blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cesard import job as jobmod
from cesard import oom
from cesard.dispatch import Dispatcher
from cesard.health import Storage
from cesard.lifecycle import Lifecycle
from cesard.pool import Pool, StartupError, WorkerProc
from cesard.running import Running
from cesard.settings import Settings
from cesard.spool import STORAGE_ERRNOS

log = logging.getLogger("cesard")


class Replies:
    """Verbs: read (a worker's replies, or its death), finish_waiting, check_timeouts,
    heartbeat. Fields: the results waiting for the storage."""

    def __init__(self, settings: Settings, pool: Pool, jobs: Lifecycle,
                 dispatcher: Dispatcher, storage: Storage, oom_watch: oom.OomWatch,
                 changed: Callable[[bool], None]) -> None:
        self.settings = settings
        self.pool = pool
        self.jobs = jobs
        self.dispatcher = dispatcher
        self.storage = storage
        self.oom = oom_watch
        self.changed = changed
        # results that could not be written while the storage did not answer
        self.waiting: dict[str, tuple[Running, str, dict[str, Any]]] = {}

    def read(self, w: WorkerProc, now: float, stopping: bool, started: bool) -> None:
        """Handle every complete reply; at EOF, the replies it sent before it went first (a
        batch's finished jobs, then the death of the worker for the rest)."""
        msgs, gone = self.pool.read(w)
        for msg in msgs:
            if msg is None:
                log.error("worker %d sent a malformed message; replacing it", w.pid)
                self.pool.kill(w)
                return
            self.on_message(w, msg, now, stopping)
        if gone:
            self.worker_gone(w, now, stopping, started)

    def worker_gone(self, w: WorkerProc, now: float, stopping: bool, started: bool) -> None:
        code = w.proc.wait()
        self.pool.reap(w)
        jobs = list(w.jobs.values())
        sig = f"signal {-code}" if code < 0 else f"status {code}"
        if code == -9 and self.oom.killed_since():
            sig = oom.ADVICE
        if w.batched and jobs:
            self.batch_lost(jobs, f"its worker {w.pid} died ({sig})")
        elif jobs:
            job = jobs[0]
            log.warning("job=%s worker %d died (%s) while transcribing %s", job.id, w.pid, sig,
                        jobmod.display_name(job.audio))
            self.jobs.retry_or_fail(job, jobmod.WorkerCrashed(
                f"the worker process died ({sig}) while transcribing "
                f"{jobmod.display_name(job.audio)}"), now)
        elif not w.ready and not stopping:
            if not started:
                # Never a silent hang: a start whose workers cannot come up ends here.
                raise StartupError(f"worker {w.pid} exited (status {code}) before it was "
                                   "ready; its lines above say why")
            log.error("worker %d exited (status %d) before it was ready", w.pid, code)
        elif not stopping and not w.retiring:
            log.warning("worker %d exited unexpectedly (status %d)", w.pid, code)

    def taken_over(self, w: WorkerProc, job_id: str) -> None:
        """Our claim of a running job is gone (we were cut off past the lease and another
        host recovered it): stop working on it; it is theirs now."""
        job = w.jobs.pop(job_id)
        log.warning("job=%s: this daemon's claim was taken over while it ran (its lease "
                    "expired, so another daemon recovered the job); dropped here", job.id)
        if not w.jobs:
            self.pool.kill(w)

    def batch_lost(self, jobs: list[Running], why: str) -> None:
        """A batch ended without its results: each job is queued again, no attempt
        counted, to run alone (a file that breaks the worker then fails by itself)."""
        for job in jobs:
            self.dispatcher.run_alone(job.id)
            self.jobs.requeue(job, f"a batch it shared was lost: {why}; it runs alone next")

    def on_message(self, w: WorkerProc, msg: dict[str, Any], now: float,
                   stopping: bool) -> None:
        cfg = self.settings.cfg
        op = str(msg.get("op"))
        if isinstance(msg.get("models"), list):
            w.models = [str(m) for m in msg["models"]]
        if op == "ready":
            self.pool.ready(w)
            log.debug("worker %d ready", w.pid)
            return
        if op == "fatal":
            err = msg.get("error", {})
            raise StartupError(f"worker could not start: {err.get('type')}: "
                               f"{err.get('message')}")
        job = w.jobs.get(str(msg.get("id")))
        if job is None:
            return  # cancelled while its batch went on
        if op == "begin":
            job.begun = True
            self.changed(True)
            return
        if op == "progress":
            job.begun = True
            job.fraction = float(msg.get("fraction", 0.0))
            if msg.get("duration") is not None:
                job.duration = float(msg["duration"])
                if not cfg.job_timeout:
                    job.deadline = job.started + max(120.0, 3.0 * job.duration)
            self.changed(False)
            return
        del w.jobs[job.id]
        self.dispatcher.served(job.id)
        w.served += 1
        try:
            self.finish(job, op, msg, now)
        except OSError as e:
            if e.errno not in STORAGE_ERRNOS:
                log.exception("job=%s could not be finished; it is recovered at the next "
                              "start", job.id)
            else:
                log.warning("job=%s: its result waits: the spool's storage is not answering "
                            "(%s); it is written when the storage answers again", job.id,
                            e.strerror)
                self.storage.away(now, e)
        except Exception:  # noqa: BLE001 - one bad result must not stop the daemon (I6)
            log.exception("job=%s could not be finished; it is recovered at the next start",
                          job.id)
        if w.jobs:
            return
        if cfg.max_jobs_per_worker and w.served >= cfg.max_jobs_per_worker:
            w.retiring = True
        if w.retiring or stopping:
            self.pool.close(w)

    def finish(self, job: Running, op: str, msg: dict[str, Any], now: float) -> None:
        """:meth:`on_outcome`; if the storage does not answer, the outcome waits in
        ``waiting`` (its lease still renewed) and the error goes on up."""
        try:
            self.on_outcome(job, op, msg, now)
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                self.waiting[job.id] = (job, op, msg)
            raise

    def finish_waiting(self, now: float) -> None:
        """Write the results that waited for the storage (the first error goes on up: the
        loop pauses again)."""
        for job_id in list(self.waiting):
            job, op, msg = self.waiting.pop(job_id)
            self.finish(job, op, msg, now)
            log.info("job=%s: its result, which waited for the storage, is written", job_id)

    def on_outcome(self, job: Running, op: str, msg: dict[str, Any], now: float) -> None:
        source = msg.get("source")
        if op == "done":
            transcript = dict(msg["transcript"])
            transcript["transcribe_s"] = msg.get("transcribe_s")
            self.jobs.finish(job, "done", source, transcript, None, now)
        elif op == "error":
            err = jobmod.error_from_dict(msg.get("error", {}))
            if err.retryable:
                self.jobs.retry_or_fail(job, err, now)
            else:
                self.jobs.finish(job, "failed", source, None, err, now)

    def check_timeouts(self, now: float) -> None:
        for w in list(self.pool.workers):
            late = [j for j in w.jobs.values() if now >= j.deadline]
            if not late:
                continue
            others = [j for j in w.jobs.values() if j not in late]
            w.jobs = {}
            self.pool.kill(w)
            for job in late:
                log.warning("job=%s timed out after %.0f s; replacing worker %d", job.id,
                            now - job.started, w.pid)
                self.jobs.retry_or_fail(job, jobmod.JobTimeout(
                    f"transcription took longer than {job.deadline - job.started:.0f} s "
                    "(job_timeout)"), now)
            self.batch_lost(others, "another job of it timed out")

    def heartbeat(self, now: float) -> None:
        """Renew the lease of every job a worker holds and of every waiting result; a
        claim another daemon took over is dropped here."""
        for w, job in self.pool.running():
            if not self.jobs.heartbeat(job.id, now):
                self.taken_over(w, job.id)
        for job_id in list(self.waiting):
            if not self.jobs.heartbeat(job_id, now):
                self.waiting.pop(job_id)
                log.warning("job=%s: its waiting result is dropped: this daemon's claim "
                            "was taken over meanwhile", job_id)
