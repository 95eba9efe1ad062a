"""The supervisor's loop stepped with an explicit clock: timing rules tested exactly."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import fake_script, wait_until

from cesard import config as configmod
from cesard import job as jobmod
from cesard.spool import Spool
from cesard.supervisor import Supervisor


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    cfg = configmod.parse({"engine": "fake", "workers": 1, "watch": "poll", "poll_interval": 1,
                           "settle_seconds": 2}, "test")
    s = Supervisor(cfg, Spool(tmp_path / "spool"))
    s.start()

    def ready() -> bool:
        s.run_once(time.time())
        return s.ready_sent
    wait_until(ready, 30, "the worker to be ready")
    yield s
    for w in list(s.pool.workers):
        s.pool.kill(w)


def test_scanned_bare_file_is_claimed_only_after_settle_seconds(sup: Supervisor) -> None:
    inc = sup.spool.dir("incoming")
    (inc / "a.wav").write_bytes(fake_script(text="settled"))
    t0 = time.time() + 10  # past the next poll
    sup.run_once(t0)
    assert "a.wav" in sup.intake.index.pending and os.listdir(inc) == ["a.wav"]
    sup.run_once(t0 + 1.9)
    assert os.listdir(inc) == ["a.wav"], "claimed before settle_seconds"
    sup.run_once(t0 + 2.1)
    assert os.listdir(inc) == [] and len(os.listdir(sup.spool.dir("processing"))) == 1


def test_deferred_job_returns_exactly_when_due(sup: Supervisor) -> None:
    due = time.time() + 100
    d = sup.spool.dir("deferred") / "job-1"
    d.mkdir()
    (d / "a.wav").write_bytes(fake_script(text="retried"))
    meta = jobmod.JobMeta(id="job-1", options={}, submitted_at=jobmod.iso(time.time()),
                          source_name="a.wav", attempts=1, not_before=jobmod.iso(due))
    (d / "job.json").write_bytes(meta.to_json())
    sup.run_once(due - 50)  # a poll finds it
    assert sup.intake.deferred == {"job-1": pytest.approx(due)}
    sup.run_once(due - 0.01)
    assert os.listdir(sup.spool.dir("deferred")) == ["job-1"]
    sup.run_once(due + 0.01)
    assert os.listdir(sup.spool.dir("deferred")) == []
    assert os.path.isdir(sup.spool.dir("processing") / "job-1")


def test_a_spool_whose_storage_stops_answering_pauses_claims_and_resumes(
        sup: Supervisor, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A GlusterFS brick restarting made os.lstat raise ENOTCONN in the rescan and
    killed the daemon (issue 14): the step now pauses claims and tries again."""
    import errno
    import logging

    caplog.set_level(logging.INFO, logger="cesard")
    real_scan = sup.spool.scan

    def away(state: str = "incoming") -> Iterator[str]:
        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected",
                      str(sup.spool.dir(state)))
    monkeypatch.setattr(sup.spool, "scan", away)
    (sup.spool.dir("incoming") / "a.wav").write_bytes(fake_script(text="waits"))
    t0 = time.time() + 100  # past the next poll: the rescan runs and fails
    sup.step(t0)
    assert sup.storage.error == errno.ENOTCONN and sup.storage.until >= t0 + 5
    assert "storage is not answering" in caplog.text
    sup.step(t0 + 1)  # still paused: nothing claimed, nothing raised
    assert os.listdir(sup.spool.dir("incoming")) == ["a.wav"]
    monkeypatch.setattr(sup.spool, "scan", real_scan)
    sup.step(t0 + 200)
    assert sup.storage.error is None and "answers again" in caplog.text
    sup.step(t0 + 203)  # settled: claimed
    assert os.listdir(sup.spool.dir("incoming")) == []
