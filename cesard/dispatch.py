"""Dispatch: which claimed jobs go to which idle worker, alone or batched together.

A worker that is free gets the next job in claim order (:mod:`cesard.index`).
When that job may be batched (cross-job batching, :mod:`cesard.batch`) the
worker also gets the jobs right behind it in claim order, while they share its
text options (``Entry.group``) and priority, are small enough to be short audio, and are not
to run alone, up to ``batch_size`` jobs, and no more than a fair share of the
queue per idle worker (eight queued and two idle workers: four each). The batch
never skips a job to find a compatible one, so priority and each owner's turn
hold exactly as without batching.

With dedupe on, a worker's jobs are first looked up on the dedupe thread (the worker
stays reserved for them): a job whose audio and options match a done result is
finished from it; the others go to the worker (:meth:`Dispatcher.collect`).

``batch_wait_ms`` lets a batch that is not full wait that long, from the moment
a worker was free for it, for more jobs to arrive; a high-priority job never
waits.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from typing import Any

from cesard import job as jobmod
from cesard import privacy
from cesard.clock import Clock
from cesard.dedupe import Dedupe, Match, transcript_of
from cesard.devices import Placement
from cesard.entries import PRIORITY_RANK, Entry
from cesard.health import Storage
from cesard.intake import Intake
from cesard.lifecycle import Lifecycle
from cesard.pool import Pool, WorkerProc
from cesard.quarantine import Quarantine
from cesard.running import Running
from cesard.settings import Settings
from cesard.spool import SEGMENTS

log = logging.getLogger("cesard")

# A follower bigger than this is not short audio (30 s of 48 kHz stereo WAV is 11 MiB);
# the worker checks the decoded duration itself (batch_max_seconds).
FOLLOWER_MAX_BYTES = 16 << 20

# Entries one loop step may refuse (claim and fail without a worker: a flood of FIFOs)
# before the loop reads new events again: a member's junk costs that member's turns,
# never another member's job its place in the queue.
REFUSALS_PER_STEP = 16


class Dispatcher:
    """Verbs: dispatch (claim for idle workers), collect (dedupe lookups done), send,
    run_alone / served (jobs a lost batch held), cancel_held, release_held. Fields: the
    exclusive job waiting for the others, the jobs that run alone next, a batch's wait."""

    def __init__(self, settings: Settings, placement: Placement, intake: Intake, pool: Pool,
                 jobs: Lifecycle, storage: Storage, quarantine: Quarantine, clock: Clock,
                 dedupe: Callable[[], Dedupe | None], wake: Callable[[], None],
                 wake_by: Callable[[float], None], changed: Callable[[bool], None]) -> None:
        self.settings = settings
        self.placement = placement
        self.intake = intake
        self.pool = pool
        self.jobs = jobs
        self.storage = storage
        self.quarantine = quarantine
        self.clock = clock
        self.dedupe = dedupe
        self.wake = wake  # from the dedupe thread
        self.wake_by = wake_by
        self.changed = changed
        self.held: Running | None = None  # an exclusive job waiting for the others
        self.solo: set[str] = set()  # jobs a crashed batch held: each runs alone next
        self.batch_since: float | None = None  # a batch waits for more jobs since then

    # --- jobs a lost batch held ----------------------------------------------------

    def run_alone(self, job_id: str) -> None:
        self.solo.add(job_id)

    def served(self, job_id: str) -> None:
        self.solo.discard(job_id)

    def held_job(self, job_id: str) -> Running | None:
        """The exclusive job waiting for the others, if it is ``job_id``."""
        return self.held if self.held is not None and self.held.id == job_id else None

    @property
    def holding(self) -> bool:
        """An exclusive job waits for the others (it counts as processing)."""
        return self.held is not None

    def cancel_held(self, job_id: str) -> Running | None:
        """The exclusive job waiting for the others, if it is ``job_id``: no longer held."""
        if self.held is None or self.held.id != job_id:
            return None
        job, self.held = self.held, None
        return job

    def release_held(self, why: str) -> None:
        if self.held is not None:
            job, self.held = self.held, None
            self.jobs.requeue(job, why)

    # --- what goes where -----------------------------------------------------------

    def batch_jobs(self) -> int:
        """Jobs one batch may hold (0: cross-job batching is off). By default only on a
        GPU: on the CPU the encoder's 30-second windows are most of the work and cost the
        same batched, so batches only made the daemon slower there (bench/short.py
        --real: 0.83x the unbatched daemon on 2 cores); an explicit ``batch_size`` turns
        it on."""
        cfg = self.settings.cfg
        if cfg.batch_max_seconds <= 0:
            return 0
        return cfg.batch_size or (16 if self.placement.device == "cuda" else 0)

    def batchable(self, entry: Entry, job: Running) -> bool:
        return (self.batch_jobs() > 0 and entry.group is not None and job.id not in self.solo
                and not job.options.exclusive and not job.options.word_timestamps)

    def dispatch(self, now: float) -> None:
        """Claim jobs for idle workers, in queue order."""
        if self.storage.paused(now) or self.intake.indexing:
            return
        refused = 0
        while True:
            idle = self.pool.idle()
            if not idle:
                return
            running = self.pool.busy()
            if self.held is not None:
                if running:
                    return
                held, self.held = self.held, None
                self.send(idle[0], [held], now)
                continue
            if any(j.options.exclusive for w in running for j in w.jobs.values()):
                return
            if self.waits_for_more(now):
                return
            entry = self.intake.index.pop()
            if entry is None:
                return
            job = self.claim(entry, now)
            if job is None:
                if self.storage.paused(now):
                    return  # the disk is full: the entry is back in the index; pause
                refused += 1
                if refused >= REFUSALS_PER_STEP:
                    self.wake_by(now)  # go on at once, after reading what arrived meanwhile
                    return
                continue
            if job.options.exclusive and running:
                log.info("job=%s is exclusive: waiting for %d running job(s)", job.id,
                         len(running))
                self.held = job
                return
            jobs = [job]
            batched = self.batchable(entry, job)
            if batched:
                share = math.ceil((len(self.intake.index) + 1) / len(idle))
                jobs += self.followers(entry, min(self.batch_jobs(), share) - 1, now)
            self.start(pick(idle, job), jobs, now, batched)

    def waits_for_more(self, now: float) -> bool:
        """True while a batch that is not full may still wait for jobs (batch_wait_ms)."""
        wait = self.settings.cfg.batch_wait_ms / 1000.0
        index = self.intake.index
        head = index.peek() if wait and self.batch_jobs() else None
        if head is None or head.group is None or head.key[0] == PRIORITY_RANK["high"] \
                or len(index) >= self.batch_jobs():
            self.batch_since = None
            return False
        if self.batch_since is None:
            self.batch_since = now
        if now < self.batch_since + wait:
            self.wake_by(self.batch_since + wait)
            return True
        self.batch_since = None
        return False

    def claim(self, entry: Entry, now: float) -> Running | None:
        """Claim ``entry`` (an unexpected error sets it aside: cesard/quarantine.py)."""
        job = None
        with self.quarantine.guard("incoming", entry.name, "claiming"):
            job = self.jobs.claim(entry, now)
        return job

    def followers(self, head: Entry, room: int, now: float) -> list[Running]:
        """The next jobs in claim order that may join ``head``'s batch (at most ``room``)."""
        out: list[Running] = []
        refused = 0
        index = self.intake.index
        while len(out) < room and refused < REFUSALS_PER_STEP:
            nxt = index.peek()
            if (nxt is None or nxt.group != head.group or nxt.key[0] != head.key[0]
                    or nxt.size > FOLLOWER_MAX_BYTES or nxt.name in self.solo):
                break
            index.pop()
            job = self.claim(nxt, now)
            if job is None:
                if self.storage.paused(now):
                    break
                refused += 1  # refused without a worker: the batch does not wait for more
                continue
            if job.options.exclusive or job.options.word_timestamps:  # its job.json changed
                self.jobs.requeue(job, "it may not share a batch")
                break
            out.append(job)
        return out

    def start(self, w: WorkerProc, jobs: list[Running], now: float,
              batched: bool = False) -> None:
        """Give ``jobs`` to ``w``; with dedupe, look their audio up first."""
        dd = self.dedupe()
        if dd is None:
            self.send(w, jobs, now, batched)
            return
        cfg = self.settings.cfg
        w.batched = batched  # remembered for collect; send() sets it again
        for job in jobs:
            w.jobs[job.id] = job
            owner = job.meta.owner
            sees_all = privacy.sees_all(owner, cfg.privacy, cfg.admin_group)
            job.hashing = dd.check(job.path / job.audio, job.options, owner, sees_all)
            job.hashing.add_done_callback(lambda _f: self.wake())

    def collect(self, now: float, stopping: bool) -> None:
        """Finish the jobs whose dedupe lookup found a result; send the others to their
        worker, once every lookup of that worker's jobs is done."""
        for w in list(self.pool.workers):
            looked = [j for j in w.jobs.values() if j.hashing is not None]
            if not looked or not all(j.hashing is not None and j.hashing.done()
                                     for j in looked):
                continue
            batched, w.jobs = w.batched, {}
            rest = []
            for job in looked:
                future, job.hashing = job.hashing, None
                assert future is not None
                try:
                    match: Match = future.result()
                except Exception:  # noqa: BLE001 - a lookup bug (or dedupe off) transcribes
                    log.exception("job=%s dedupe lookup failed; transcribing it", job.id)
                    match = Match(None, None)
                if match.prior is not None and match.source is not None:
                    self.jobs.finish(job, "done", match.source, transcript_of(match.prior),
                                     None, now, deduplicated_from=str(match.prior["id"]))
                elif stopping:
                    self.jobs.requeue(job, "shutting down")
                else:
                    rest.append(job)
            if rest:
                self.send(w, rest, now, batched)

    def send(self, w: WorkerProc, jobs: list[Running], now: float,
             batched: bool = False) -> None:
        """Write the job (or, batched, the jobs) to the worker's stdin."""
        msgs = []
        for job in jobs:
            w.jobs[job.id] = job
            # A held (exclusive) job starts now, not when it was claimed: its times and
            # its deadline count from here.
            job.deadline += now - job.started
            job.started = now
            job.started_at = jobmod.iso(self.clock.shown(now))
            msgs.append({"op": "job", "id": job.id, "audio": str(job.path / job.audio),
                         "name": job.audio, "segments": str(job.path / SEGMENTS),
                         "options": job.options.to_dict(), "fallback_model": job.fallback})
        w.batched = len(jobs) > 1
        line: dict[str, Any]
        if batched:
            line = {"op": "batch", "jobs": msgs}
            if len(jobs) > 1:
                log.info("batch of %d jobs to worker %d: %s", len(jobs), w.pid,
                         " ".join(j.id for j in jobs))
        else:
            line = msgs[0]
        assert w.proc.stdin is not None
        try:
            w.proc.stdin.write((json.dumps(line) + "\n").encode())
            w.proc.stdin.flush()
        except OSError:
            pass  # the worker is gone; its EOF handler retries the jobs
        self.changed(True)


def pick(idle: list[WorkerProc], job: Running) -> WorkerProc:
    """An idle worker that holds the job's model already, else the first idle one."""
    return next((w for w in idle if job.options.model in w.models), idle[0])
