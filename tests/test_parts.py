"""Each part of the daemon alone, with a fake clock and stand-ins for the parts it talks
to (docs/architecture.md): the proof that the parts stand alone. The daemon as a whole
is tested through real processes elsewhere."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from cesard import config as configmod
from cesard.clock import Clock
from cesard.devices import resolve
from cesard.dispatch import Dispatcher
from cesard.entries import Entry
from cesard.health import Storage
from cesard.intake import Intake
from cesard.job import JobMeta, JobOptions
from cesard.lifecycle import Lifecycle
from cesard.metrics import Metrics
from cesard.pool import Pool, WorkerProc
from cesard.quarantine import Quarantine
from cesard.running import Running
from cesard.settings import Settings
from cesard.spool import Spool
from cesard.status import Publisher


def settings(**kw: Any) -> Settings:
    return Settings(configmod.parse({"engine": "fake", **kw}, "test"))


@dataclass
class FakeJobs:
    """The lifecycle's verbs as the queue and the dispatcher call them, recorded."""

    undeferred: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)

    def undefer(self, name: str) -> bool:
        self.undeferred.append(name)
        return True

    def reject(self, entry: Entry, err: Exception, now: float) -> None:
        raise AssertionError(f"{entry.name} refused: {err}")

    def claim(self, entry: Entry, now: float) -> Running:
        self.claimed.append(entry.name)
        meta = JobMeta(id=entry.name, options={}, submitted_at="")
        return Running(entry.name, Path("/nonexistent") / entry.name, meta, JobOptions(),
                       "audio.wav", 1, "", now, now + 60)

    def requeue(self, job: Running, why: str) -> None:
        self.requeued.append(job.id)


def intake(tmp_path: Path, jobs: FakeJobs, **kw: Any) -> Intake:
    spool = Spool(tmp_path / "spool")
    spool.create()
    return Intake(spool, settings(**kw), Clock(), Quarantine(spool.root),
                  cast(Lifecycle, jobs), lambda urgent=False: None)


def test_intake_queues_a_bare_file_once_it_has_settled(tmp_path: Path) -> None:
    jobs = FakeJobs()
    q = intake(tmp_path, jobs, settle_seconds=2)
    (q.spool.dir("incoming") / "a.wav").write_bytes(b"RIFF")
    q.add("a.wav", 100.0, settled=False)
    assert "a.wav" in q.index.pending and not len(q.index)
    q.check_pending(101.9)
    assert not len(q.index)
    q.check_pending(102.1)
    assert q.index.names() == {"a.wav"} and not q.index.pending
    assert q.waiting() == 1


def test_intake_sends_a_deferred_job_back_when_its_retry_is_due(tmp_path: Path) -> None:
    jobs = FakeJobs()
    q = intake(tmp_path, jobs)
    q.deferred_until("job-1", 50.0)
    q.undefer(49.9)
    assert jobs.undeferred == [] and q.deferred == {"job-1": 50.0}
    q.undefer(50.0)
    assert jobs.undeferred == ["job-1"] and q.deferred == {}


def test_intake_does_not_claim_before_the_start_up_listing_ends(tmp_path: Path) -> None:
    jobs = FakeJobs()
    q = intake(tmp_path, jobs)
    for i in range(300):
        os.mkdir(q.spool.dir("incoming") / f"job-{i:03d}")
        (q.spool.dir("incoming") / f"job-{i:03d}" / "job.json").write_text("{}")
    q.start(0.0)
    assert q.indexing
    q.step(0.0, budget=0.0)  # one slice of 128
    assert q.indexing and 0 < len(q.index) < 300
    while q.indexing:
        q.step(0.0)
    assert len(q.index) == 300


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.stdin = io.BytesIO()


def worker(pid: int) -> WorkerProc:
    proc = cast("subprocess.Popen[bytes]", FakeProc(pid))
    return WorkerProc(proc, -1, 0, 0.0, ready=True)


def sent(w: WorkerProc) -> list[dict[str, Any]]:
    stdin = cast(io.BytesIO, w.proc.stdin)
    return [json.loads(line) for line in stdin.getvalue().splitlines()]


def dispatcher(tmp_path: Path, jobs: FakeJobs, workers: int, **kw: Any
               ) -> tuple[Dispatcher, Intake, Pool]:
    s = settings(**kw)
    q = intake(tmp_path, jobs)
    pool = Pool(s, resolve("cpu", [], "int8"))
    pool.workers = [worker(100 + i) for i in range(workers)]
    storage = Storage(q.spool.root, lambda t: None)
    d = Dispatcher(s, pool.placement, q, pool, cast(Lifecycle, jobs), storage,
                   Quarantine(q.spool.root), Clock(), lambda: None, lambda: None,
                   lambda t: None, lambda urgent=False: None)
    return d, q, pool


def test_dispatcher_shares_a_queue_of_batchable_jobs_fairly_between_idle_workers(
        tmp_path: Path) -> None:
    jobs = FakeJobs()
    d, q, pool = dispatcher(tmp_path, jobs, workers=2, batch_size=8)
    for i in range(8):
        q.index.add(Entry(f"job-{i}", True, (1, f"2026-01-01T00:00:0{i}", f"job-{i}")))
    d.dispatch(10.0)
    assert jobs.claimed == [f"job-{i}" for i in range(8)]  # claim order kept
    lines = [sent(w) for w in pool.workers]
    assert [len(ls) for ls in lines] == [1, 1]
    assert [[j["id"] for j in ls[0]["jobs"]] for ls in lines] == [
        ["job-0", "job-1", "job-2", "job-3"], ["job-4", "job-5", "job-6", "job-7"]]


def test_dispatcher_on_the_cpu_sends_one_job_a_worker_by_default(tmp_path: Path) -> None:
    jobs = FakeJobs()
    d, q, pool = dispatcher(tmp_path, jobs, workers=1)
    for i in range(3):
        q.index.add(Entry(f"job-{i}", True, (1, f"2026-01-01T00:00:0{i}", f"job-{i}")))
    d.dispatch(10.0)
    assert jobs.claimed == ["job-0"] and sent(pool.workers[0])[0]["op"] == "job"
    d.dispatch(11.0)  # the worker is busy: nothing more is claimed
    assert jobs.claimed == ["job-0"]


def test_dispatcher_waits_while_the_storage_is_paused(tmp_path: Path) -> None:
    jobs = FakeJobs()
    d, q, pool = dispatcher(tmp_path, jobs, workers=1)
    q.index.add(Entry("job-0", True, (1, "2026-01-01T00:00:00", "job-0")))
    d.storage.full(10.0, OSError(errno.ENOSPC, "No space left on device"))
    d.dispatch(14.9)
    assert jobs.claimed == []
    d.dispatch(15.0)
    assert jobs.claimed == ["job-0"]


def test_storage_pauses_for_five_seconds_and_says_when_it_answers_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    woken: list[float] = []
    st = Storage(tmp_path, woken.append)
    caplog.set_level(logging.INFO, "cesard")
    assert st.failed(100.0, OSError(errno.ENOTCONN, "Transport endpoint is not connected"))
    assert st.paused(104.9) and not st.paused(105.0) and woken == [105.0]
    assert not st.failed(100.0, OSError(errno.EACCES, "Permission denied"))  # not storage's
    st.step_done()
    assert st.error is None and not st.paused(101.0) and "answers again" in caplog.text


def test_publisher_writes_a_start_at_once_progress_at_most_every_half_second(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.create()
    p = Publisher(spool, "host", Metrics(str(spool.root)))
    assert p.due(0.0)
    p.write({"queue": {}, "running": [], "workers": []}, 0.0, None)
    assert not p.due(0.3)
    p.changed()
    assert not p.due(0.3) and p.due(0.5)  # progress: at most every 0.5 s
    p.write({"queue": {}, "running": [], "workers": []}, 0.5, None)
    p.changed(urgent=True)
    assert not p.due(0.52) and p.due(0.56)  # a start or finish: within 50 ms
    p.write({"queue": {}, "running": [], "workers": []}, 0.56, None)
    assert not p.due(5.5) and p.due(5.6)  # and every 5 s regardless
    assert json.loads((spool.dir("state") / "status.json").read_text())["queue"] == {}


def test_pool_reads_whole_replies_and_says_a_malformed_one_and_the_end(
        tmp_path: Path) -> None:
    pool = Pool(settings(), resolve("cpu", [], "int8"))
    r, w = os.pipe()
    os.set_blocking(r, False)
    wp = WorkerProc(cast("subprocess.Popen[bytes]", SimpleNamespace(pid=1, stdin=None)),
                    r, 0, 0.0)
    os.write(w, b'{"op": "ready"}\n{"op": "progress", "id"')
    msgs, gone = pool.read(wp)
    assert msgs == [{"op": "ready"}] and not gone  # half a line waits for the rest
    os.write(w, b': "a", "fraction": 0.5}\nnot json\n')
    os.close(w)
    msgs, gone = pool.read(wp)
    assert msgs == [{"op": "progress", "id": "a", "fraction": 0.5}, None] and gone
    os.close(r)
