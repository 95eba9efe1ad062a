"""Dispatch: which claimed jobs go to which idle worker, alone or batched together.

A worker that is free gets the next job in claim order (:mod:`cesard.index`).
When that job may be batched (cross-job batching, :mod:`cesard.batch`) the
worker also gets the jobs right behind it in claim order, while they share its
text options (``Entry.group``) and priority, are small enough to be short audio, and are not
to run alone, up to ``batch_size`` jobs, and no more than a fair share of the
queue per idle worker (eight queued and two idle workers: four each). The batch
never skips a job to find a compatible one, so priority and each owner's turn
hold exactly as without batching.

``batch_wait_ms`` lets a batch that is not full wait that long, from the moment
a worker was free for it, for more jobs to arrive; a high-priority job never
waits.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING, Any

from cesard import dedupe
from cesard import job as jobmod
from cesard.pool import WorkerProc
from cesard.spool import PRIORITY_RANK, SEGMENTS, Entry

if TYPE_CHECKING:
    from cesard.supervisor import Running, Supervisor

log = logging.getLogger("cesard")

# A follower bigger than this is not short audio (30 s of 48 kHz stereo WAV is 11 MiB);
# the worker checks the decoded duration itself (batch_max_seconds).
FOLLOWER_MAX_BYTES = 16 << 20


def idle_workers(sup: Supervisor) -> list[WorkerProc]:
    return [w for w in sup.workers if w.ready and not w.jobs and not w.retiring
            and w.generation == sup.generation]


def busy(sup: Supervisor) -> list[WorkerProc]:
    return [w for w in sup.workers if w.jobs]


def batch_jobs(sup: Supervisor) -> int:
    """Jobs one batch may hold (0: cross-job batching is off). By default only on a GPU:
    on the CPU the encoder's 30-second windows are most of the work and cost the same
    batched, so batches only made the daemon slower there (bench/short.py --real:
    0.83x the unbatched daemon on 2 cores); an explicit ``batch_size`` turns it on."""
    if sup.cfg.batch_max_seconds <= 0:
        return 0
    return sup.cfg.batch_size or (16 if sup.placement.device == "cuda" else 0)


def batchable(sup: Supervisor, entry: Entry, job: Running) -> bool:
    return (batch_jobs(sup) > 0 and entry.group is not None and job.id not in sup.solo
            and not job.options.exclusive and not job.options.word_timestamps)


# Entries one loop step may refuse (claim and fail without a worker: a flood of FIFOs)
# before the loop reads new events again: a member's junk costs that member's turns,
# never another member's job its place in the queue.
REFUSALS_PER_STEP = 16


def dispatch(sup: Supervisor, now: float) -> None:
    """Claim jobs for idle workers, in queue order."""
    if sup.stopping or now < sup.disk_full_until or sup.indexing is not None:
        return
    refused = 0
    while True:
        idle = idle_workers(sup)
        if not idle:
            return
        running = busy(sup)
        if sup.held is not None:
            if running:
                return
            held, sup.held = sup.held, None
            send(sup, idle[0], [held], now)
            continue
        if any(j.options.exclusive for w in running for j in w.jobs.values()):
            return
        if waits_for_more(sup, now):
            return
        entry = sup.index.pop()
        if entry is None:
            return
        job = claim(sup, entry, now)
        if job is None:
            if now < sup.disk_full_until:
                return  # the disk is full: the entry is back in the index; pause
            refused += 1
            if refused >= REFUSALS_PER_STEP:
                sup.wake_at = now  # go on at once, after reading what arrived meanwhile
                return
            continue
        if job.options.exclusive and running:
            log.info("job=%s is exclusive: waiting for %d running job(s)", job.id, len(running))
            sup.held = job
            return
        jobs = [job]
        batched = batchable(sup, entry, job)
        if batched:
            share = math.ceil((len(sup.index) + 1) / len(idle))
            jobs += followers(sup, entry, min(batch_jobs(sup), share) - 1, now)
        start(sup, pick(idle, job), jobs, now, batched)


def waits_for_more(sup: Supervisor, now: float) -> bool:
    """True while a batch that is not full may still wait for jobs (batch_wait_ms)."""
    wait = sup.cfg.batch_wait_ms / 1000.0
    head = sup.index.peek() if wait and batch_jobs(sup) else None
    if head is None or head.group is None or head.key[0] == PRIORITY_RANK["high"] \
            or len(sup.index) >= batch_jobs(sup):
        sup.batch_since = None
        return False
    if sup.batch_since is None:
        sup.batch_since = now
    if now < sup.batch_since + wait:
        sup.wake_at = min(sup.wake_at, sup.batch_since + wait)
        return True
    sup.batch_since = None
    return False


def claim(sup: Supervisor, entry: Entry, now: float) -> Running | None:
    """Claim ``entry`` (an unexpected error sets it aside: cesard/quarantine.py)."""
    job = None
    with sup.quarantine.guard("incoming", entry.name, "claiming"):
        job = sup._claim(entry, now)
    return job


def followers(sup: Supervisor, head: Entry, room: int, now: float) -> list[Running]:
    """The next jobs in claim order that may join ``head``'s batch (at most ``room``)."""
    out: list[Running] = []
    refused = 0
    while len(out) < room and refused < REFUSALS_PER_STEP:
        nxt = sup.index.peek()
        if (nxt is None or nxt.group != head.group or nxt.key[0] != head.key[0]
                or nxt.size > FOLLOWER_MAX_BYTES or nxt.name in sup.solo):
            break
        sup.index.pop()
        job = claim(sup, nxt, now)
        if job is None:
            if now < sup.disk_full_until:
                break
            refused += 1  # refused without a worker: the batch does not wait for more
            continue
        if job.options.exclusive or job.options.word_timestamps:  # its job.json changed
            sup._requeue(job, "it may not share a batch")
            break
        out.append(job)
    return out


def start(sup: Supervisor, w: WorkerProc, jobs: list[Running], now: float,
          batched: bool = False) -> None:
    """Give ``jobs`` to ``w``; with dedupe, look their audio up first (dedupe.py)."""
    if sup.dedupe is None:
        send(sup, w, jobs, now, batched)
    else:
        dedupe.start(sup, sup.dedupe, w, jobs, batched)


def pick(idle: list[WorkerProc], job: Running) -> WorkerProc:
    """An idle worker that holds the job's model already, else the first idle one."""
    return next((w for w in idle if job.options.model in w.models), idle[0])


def send(sup: Supervisor, w: WorkerProc, jobs: list[Running], now: float,
         batched: bool = False) -> None:
    """Write the job (or, batched, the jobs) to the worker's stdin."""
    msgs = []
    for job in jobs:
        w.jobs[job.id] = job
        # A held (exclusive) job starts now, not when it was claimed: its times and
        # its deadline count from here.
        job.deadline += now - job.started
        job.started = now
        job.started_at = jobmod.iso(sup.clock.shown(now))
        msgs.append({"op": "job", "id": job.id, "audio": str(job.path / job.audio),
                     "name": job.audio, "segments": str(job.path / SEGMENTS),
                     "options": job.options.to_dict()})
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
    sup.status_urgent = True
