"""What workers say, and what happens when they stop saying it: the supervisor's side of
the worker protocol (:mod:`cesard.worker`).

Replies are read from each worker's reply pipe as JSON lines: progress updates a
running job; ``done`` and ``error`` finish one job of the worker (a batch's jobs end
one by one). A worker that dies, a job past its deadline, and a claim another daemon
took over (fencing, :meth:`cesard.spool.Spool.holds`) are handled here too. Every
function takes the supervisor; none blocks.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from cesard import job as jobmod
from cesard import oom
from cesard.pool import StartupError, WorkerProc
from cesard.spool import STORAGE_ERRNOS

if TYPE_CHECKING:
    from cesard.supervisor import Running, Supervisor

log = logging.getLogger("cesard")


def read_worker(sup: Supervisor, w: WorkerProc, now: float) -> None:
    """Handle every complete reply; at EOF, the replies it sent before it went first (a
    batch's finished jobs, then the death of the worker for the rest)."""
    gone = False
    while True:
        try:
            chunk = os.read(w.reply_fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            gone = True
            break
        w.buf += chunk
    while b"\n" in w.buf:
        line, _, rest = bytes(w.buf).partition(b"\n")
        w.buf = bytearray(rest)
        try:
            msg = json.loads(line)
        except ValueError:
            log.error("worker %d sent a malformed message; replacing it", w.pid)
            sup._kill_worker(w)
            return
        on_message(sup, w, msg, now)
    if gone:
        worker_gone(sup, w, now)


def worker_gone(sup: Supervisor, w: WorkerProc, now: float) -> None:
    code = w.proc.wait()
    sup._reap(w)
    jobs = list(w.jobs.values())
    sig = f"signal {-code}" if code < 0 else f"status {code}"
    if code == -9 and sup.oom.killed_since():
        sig = oom.ADVICE
    if w.batched and jobs:
        batch_lost(sup, jobs, f"its worker {w.pid} died ({sig})")
    elif jobs:
        job = jobs[0]
        log.warning("job=%s worker %d died (%s) while transcribing %s", job.id, w.pid, sig,
                    jobmod.display_name(job.audio))
        sup._retry_or_fail(job, jobmod.WorkerCrashed(
            f"the worker process died ({sig}) while transcribing "
            f"{jobmod.display_name(job.audio)}"), now)
    elif not w.ready and not sup.stopping:
        if not sup.ready_sent:
            # Never a silent hang: a start whose workers cannot come up ends here.
            raise StartupError(f"worker {w.pid} exited (status {code}) before it was "
                               "ready; its lines above say why")
        log.error("worker %d exited (status %d) before it was ready", w.pid, code)
    elif not sup.stopping and not w.retiring:
        log.warning("worker %d exited unexpectedly (status %d)", w.pid, code)


def taken_over(sup: Supervisor, w: WorkerProc, job_id: str) -> None:
    """Our claim of a running job is gone (we were cut off past the lease and another
    host recovered it): stop working on it; it is theirs now."""
    job = w.jobs.pop(job_id)
    log.warning("job=%s: this daemon's claim was taken over while it ran (its lease "
                "expired, so another daemon recovered the job); dropped here", job.id)
    if not w.jobs:
        sup._kill_worker(w)


def batch_lost(sup: Supervisor, jobs: list[Running], why: str) -> None:
    """A batch ended without its results: each job is queued again, no attempt counted,
    to run alone (a file that breaks the worker then fails by itself)."""
    for job in jobs:
        sup.solo.add(job.id)
        sup._requeue(job, f"a batch it shared was lost: {why}; it runs alone next")


def on_message(sup: Supervisor, w: WorkerProc, msg: dict[str, Any], now: float) -> None:
    op = str(msg.get("op"))
    if isinstance(msg.get("models"), list):
        w.models = [str(m) for m in msg["models"]]
    if op == "ready":
        w.ready = True
        sup.spawn_backoff = 0.0
        log.debug("worker %d ready", w.pid)
        return
    if op == "fatal":
        err = msg.get("error", {})
        raise StartupError(f"worker could not start: {err.get('type')}: {err.get('message')}")
    job = w.jobs.get(str(msg.get("id")))
    if job is None:
        return  # cancelled while its batch went on
    if op == "progress":
        job.fraction = float(msg.get("fraction", 0.0))
        if msg.get("duration") is not None:
            job.duration = float(msg["duration"])
            if not sup.cfg.job_timeout:
                job.deadline = job.started + max(120.0, 3.0 * job.duration)
        sup.status_dirty = True
        return
    del w.jobs[job.id]
    sup.solo.discard(job.id)
    w.served += 1
    try:
        finish(sup, job, op, msg, now)
    except OSError as e:
        if e.errno not in STORAGE_ERRNOS:
            log.exception("job=%s could not be finished; it is recovered at the next start",
                          job.id)
        else:
            log.warning("job=%s: its result waits: the spool's storage is not answering (%s);"
                        " it is written when the storage answers again", job.id, e.strerror)
            sup._storage_away(now, e)
    except Exception:  # noqa: BLE001 - one bad result must not stop the daemon (I6)
        log.exception("job=%s could not be finished; it is recovered at the next start",
                      job.id)
    if w.jobs:
        return
    if sup.cfg.max_jobs_per_worker and w.served >= sup.cfg.max_jobs_per_worker:
        w.retiring = True
    if w.retiring or sup.stopping:
        sup._close_worker(w)


def finish(sup: Supervisor, job: Running, op: str, msg: dict[str, Any], now: float) -> None:
    """:func:`on_outcome`; if the storage does not answer, the outcome waits in
    ``sup.waiting`` (its lease still heartbeated) and the error goes on up."""
    try:
        on_outcome(sup, job, op, msg, now)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            sup.waiting[job.id] = (job, op, msg)
        raise


def finish_waiting(sup: Supervisor, now: float) -> None:
    """Write the results that waited for the storage (the first error goes on up: the
    loop pauses again)."""
    for job_id in list(sup.waiting):
        job, op, msg = sup.waiting.pop(job_id)
        finish(sup, job, op, msg, now)
        log.info("job=%s: its result, which waited for the storage, is written", job_id)


def on_outcome(sup: Supervisor, job: Running, op: str, msg: dict[str, Any], now: float) -> None:
    source = msg.get("source")
    if op == "done":
        transcript = dict(msg["transcript"])
        transcript["transcribe_s"] = msg.get("transcribe_s")
        sup._finish(job, "done", source, transcript, None, now)
    elif op == "error":
        err = jobmod.error_from_dict(msg.get("error", {}))
        if err.retryable:
            sup._retry_or_fail(job, err, now)
        else:
            sup._finish(job, "failed", source, None, err, now)


def check_timeouts(sup: Supervisor, now: float) -> None:
    for w in list(sup.workers):
        late = [j for j in w.jobs.values() if now >= j.deadline]
        if not late:
            continue
        others = [j for j in w.jobs.values() if j not in late]
        w.jobs = {}
        sup._kill_worker(w)
        for job in late:
            log.warning("job=%s timed out after %.0f s; replacing worker %d", job.id,
                        now - job.started, w.pid)
            sup._retry_or_fail(job, jobmod.JobTimeout(
                f"transcription took longer than {job.deadline - job.started:.0f} s "
                "(job_timeout)"), now)
        batch_lost(sup, others, "another job of it timed out")
