"""The real daemon with the fake engine, driven like a user."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from helpers import Daemon, checked, fake_script, wait_until


def test_submit_wait_prints_transcript_and_writes_result(daemon: Daemon) -> None:
    src = daemon.tmp / "meeting.wav"
    src.write_bytes(fake_script(text="hello from the fake engine"))
    r = daemon.ctl("submit", str(src), "--wait", "--format", "srt")
    assert r.returncode == 0, r.stderr
    assert "hello from the fake engine" in r.stdout
    assert "00:00:00,000 --> 00:00:01,000" in r.stdout
    (job_dir,) = (daemon.spool / "done").iterdir()
    assert sorted(os.listdir(job_dir)) == ["job.json", "meeting.wav", "result.json",
                                           "segments.jsonl", "transcript.srt",
                                           "transcript.txt"]
    res = checked(json.loads((job_dir / "result.json").read_text()))
    assert res["schema"] == 1 and res["status"] == "done" and res["error"] is None
    assert res["id"] == job_dir.name
    assert res["source"]["name"] == "meeting.wav"
    assert res["source"]["bytes"] == src.stat().st_size
    assert len(res["source"]["sha256"]) == 64
    assert res["attempts"] == 1 and res["options"]["formats"] == ["txt", "srt"]
    for key in ("submitted_at", "started_at", "finished_at"):
        assert res[key].endswith("Z")
    assert (job_dir / "transcript.txt").read_text() == "hello from the fake engine\n"


def test_bare_file_copied_slowly_is_not_claimed_before_complete(
        make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(settle_seconds=2).start()
    target = daemon.spool / "incoming" / "slow.wav"
    payload = fake_script(text="slow copy complete") + b"x" * 30000
    with open(target, "wb") as f:
        for i in range(0, len(payload), 5000):
            f.write(payload[i:i + 5000])
            f.flush()
            # Pauses shorter than settle_seconds, with the file open and growing.
            deadline = time.monotonic() + 0.6
            while time.monotonic() < deadline:
                assert target.exists(), "claimed while still being written"
                time.sleep(0.05)
    res = wait_until(lambda: daemon.results(), 10, "the bare file to be done")
    assert res[0]["status"] == "done"
    assert res[0]["text"] == "slow copy complete"
    assert res[0]["source"]["bytes"] == len(payload)


def test_bare_file_found_by_scan_at_startup(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    (d.spool / "incoming").mkdir(parents=True)
    (d.spool / "incoming" / "early.wav").write_bytes(fake_script(text="early"))
    (d.spool / "incoming" / "ignored.wav.part").write_bytes(b"partial")
    (d.spool / "incoming" / ".hidden.wav").write_bytes(b"hidden")
    d.start()
    (res,) = wait_until(d.results, 10, "early.wav to be done")
    assert res["text"] == "early"
    assert sorted(os.listdir(d.spool / "incoming")) == [".hidden.wav", "ignored.wav.part"]


def test_fifo_order_with_one_worker(daemon: Daemon) -> None:
    daemon.signal(signal.SIGSTOP)  # queue everything before the daemon looks
    ids = [daemon.submit_bytes(f"f{i}.wav", fake_script(text=f"job {i}")) for i in range(8)]
    daemon.signal(signal.SIGCONT)
    results = [daemon.wait_result(i) for i in ids]
    finished = [r["finished_at"] for r in results]
    assert finished == sorted(finished)
    assert [r["text"] for r in results] == [f"job {i}" for i in range(8)]


def test_priority_then_fifo(daemon: Daemon) -> None:
    daemon.signal(signal.SIGSTOP)
    low = daemon.submit_bytes("low.wav", fake_script(text="low"), "--priority", "low")
    n1 = daemon.submit_bytes("n1.wav", fake_script(text="n1"))
    high = daemon.submit_bytes("high.wav", fake_script(text="high"), "--priority", "high")
    n2 = daemon.submit_bytes("n2.wav", fake_script(text="n2"))
    daemon.signal(signal.SIGCONT)
    order = sorted((daemon.wait_result(i)["started_at"], i) for i in (low, n1, high, n2))
    assert [i for _, i in order] == [high, n1, n2, low]


def test_two_workers_run_two_jobs_at_once(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    a = d.submit_bytes("a.wav", fake_script(sleep=1.5))
    b = d.submit_bytes("b.wav", fake_script(sleep=1.5))

    def both_running() -> bool:
        st = d.status() or {}
        return len(st.get("running", [])) == 2
    wait_until(both_running, 10, "two jobs running at once")
    ra, rb = d.wait_result(a), d.wait_result(b)
    assert ra["started_at"] < rb["finished_at"] and rb["started_at"] < ra["finished_at"]
    assert ra["worker"] == rb["worker"]  # same supervisor
    assert len(os.listdir(d.spool / "processing")) == 0


def test_sigterm_during_job_requeues_and_restart_finishes(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(shutdown_grace=0.5).start()
    job = d.submit_bytes("long.wav", fake_script(sleep=30, text="finished later"))
    wait_until(lambda: d.entries("processing") == [job], 10, "the job to be claimed")
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert d.entries("incoming") == [job]
    assert d.entries("processing") == []
    meta = json.loads((d.spool / "incoming" / job / "job.json").read_text())
    assert meta["attempts"] == 0
    assert not (d.spool / "incoming" / job / "claim.json").exists()
    # Restart with a short job in place of the long one: it is finished.
    (d.spool / "incoming" / job / "long.wav").write_bytes(fake_script(text="finished later"))
    d.start()
    res = d.wait_result(job)
    assert res["status"] == "done" and res["text"] == "finished later"
    assert res["attempts"] == 1


def test_kill9_of_the_daemon_is_not_charged_to_the_jobs_it_ran(
        make_daemon: Callable[..., Daemon]) -> None:
    """Issue 20: a daemon killed again and again while a job runs (more often than
    max_attempts) does not fail that job: the stops are not its fault."""
    d = make_daemon(max_attempts=2).start()
    job = d.submit_bytes("j.wav", fake_script(sleep=30))
    for _ in range(3):
        wait_until(lambda: (d.status() or {}).get("running"), 20, "the job to run")
        d.kill_all()
        d.start()
    wait_until(lambda: (d.status() or {}).get("running"), 20, "the job to run")
    d.kill_all()
    (d.spool / "processing" / job / "j.wav").write_bytes(fake_script(text="made it"))
    d.start()
    res = d.wait_result(job)
    assert res["status"] == "done" and res["text"] == "made it", res
    assert res["attempts"] == 5 and all(e["interrupted"] for e in res["errors"])


def test_sigterm_waits_for_running_job_within_grace(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(shutdown_grace=30).start()
    job = d.submit_bytes("j.wav", fake_script(sleep=1, text="made it"))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
    assert d.result(job)["text"] == "made it"


def test_second_sigterm_requeues_at_once(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(shutdown_grace=600).start()
    job = d.submit_bytes("j.wav", fake_script(sleep=60))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    d.signal(signal.SIGTERM)
    wait_until(lambda: "no new claims" in d.log(), 10, "the first SIGTERM to be seen")
    # Between the two signals cesarctl says "stopping", not "running".
    wait_until(lambda: d.ctl("status").stdout.startswith("daemon stopping"), 10,
               "status to say stopping")
    d.signal(signal.SIGINT)
    assert d.wait_exit(15) == 0
    assert d.entries("incoming") == [job]
    # The requeue names the second signal, not an expired grace.
    assert "SIGINT received twice" in d.log() and "grace expired" not in d.log()


def test_kill9_during_job_restart_recovers(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    job = d.submit_bytes("j.wav", fake_script(sleep=30))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    d.kill_all()
    assert d.entries("processing") == [job]
    (d.spool / "processing" / job / "j.wav").write_bytes(fake_script(text="recovered"))
    d.start()
    res = d.wait_result(job)
    assert res["status"] == "done" and res["text"] == "recovered"
    assert res["attempts"] == 2
    assert res["errors"][0]["type"] == "WorkerCrashed"
    assert "recovered from processing/" in d.log()


def test_crashing_worker_is_replaced_and_job_fails_after_max_attempts(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(max_attempts=3, retry_delays=[0.1, 0.2]).start()
    job = d.submit_bytes("crash.wav", fake_script(crash=True))
    res = d.wait_result(job, 30)
    assert res["status"] == "failed"
    assert res["attempts"] == 3
    assert [e["type"] for e in res["errors"]] == ["WorkerCrashed"] * 3
    assert res["error"]["retryable"] is True
    # The daemon still works.
    ok = d.submit_bytes("ok.wav", fake_script(text="still alive"))
    assert d.wait_result(ok)["text"] == "still alive"


def test_hanging_job_times_out_and_is_retried(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(job_timeout=1, max_attempts=2, retry_delays=[0.1]).start()
    job = d.submit_bytes("hang.wav", fake_script(hang=True))
    res = d.wait_result(job, 30)
    assert res["status"] == "failed" and res["attempts"] == 2
    assert [e["type"] for e in res["errors"]] == ["JobTimeout", "JobTimeout"]


def test_permanent_failure_goes_straight_to_failed(daemon: Daemon) -> None:
    job = daemon.submit_bytes("bad.wav", fake_script(fail="UndecodableAudio"))
    res = daemon.wait_result(job)
    assert res["status"] == "failed" and res["attempts"] == 1
    assert res["error"]["type"] == "UndecodableAudio"
    assert daemon.ctl("result", job).returncode == 65
    assert "UndecodableAudio" in daemon.ctl("result", job).stderr


def test_cancel_queued_and_running(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    running = d.submit_bytes("r.wav", fake_script(sleep=60))
    queued = d.submit_bytes("q.wav", fake_script(text="never"))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the first job to run")
    assert d.ctl("cancel", queued).returncode == 0
    res = d.wait_result(queued)
    assert res["status"] == "cancelled" and res["error"]["type"] == "Cancelled"
    assert res["attempts"] == 0
    t = time.monotonic()
    r = d.ctl("cancel", running)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - t < 5
    assert d.result(running)["status"] == "cancelled"
    assert not (d.spool / "processing" / running).exists()
    r = d.ctl("cancel", queued)
    assert r.returncode == 1 and "nothing to cancel" in r.stderr  # already finished
    ok = d.submit_bytes("ok.wav", fake_script(text="after cancel"))
    assert d.wait_result(ok)["text"] == "after cancel"


def test_retry_failed_job(daemon: Daemon) -> None:
    job = daemon.submit_bytes("f.wav", fake_script(fail="EngineError"))
    assert daemon.wait_result(job)["status"] == "failed"
    (daemon.spool / "failed" / job / "f.wav").write_bytes(fake_script(text="second time"))
    r = daemon.ctl("retry", job)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: (daemon.spool / "done" / job / "result.json").exists(), 10, "retry")
    assert daemon.result(job)["text"] == "second time"


def test_config_errors_name_the_key_and_exit_78(make_daemon: Callable[..., Daemon]) -> None:
    for bad, needle in (({"wokers": 2}, "'wokers'"), ({"workers": "many"}, "'workers'"),
                        ({"defaults": {"beam_size": 99}}, "'beam_size'"),
                        ({"watch": "sometimes"}, "'watch'")):
        d = make_daemon(sub=f"c{len(needle)}{needle.strip(chr(39))}", **bad)
        d.start(wait_ready=False)
        assert d.wait_exit(30) == 78
        assert needle in d.log() and str(d.config_path) in d.log()
    d.config_path.write_text("engine: [unclosed\n")
    # cesarctl warns and goes on (a member still queues; issue 20): here the daemon never
    # made the spool, which it says.
    r = d.ctl("--config", str(d.config_path), "status")
    assert r.returncode == 69 and "not valid YAML" in r.stderr and "warning" in r.stderr


def test_check_config_prints_effective_config(tmp_path: Path) -> None:
    import subprocess

    from helpers import BIN
    cfg = tmp_path / "c.yaml"
    cfg.write_text("engine: fake\nworkers: 3\n")
    r = subprocess.run([str(BIN / "cesard"), "--config", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    eff = json.loads(r.stdout)
    assert eff["workers"] == 3 and eff["engine"] == "fake"
    assert eff["defaults"]["model"] == "tiny.en" and os.path.isdir(eff["models"]["tiny.en"])


def test_max_jobs_per_worker_recycles(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(max_jobs_per_worker=2).start()
    ids = [d.submit_bytes(f"{i}.wav", fake_script(text=str(i))) for i in range(5)]
    pids = [d.wait_result(i)["engine"]["pid"] for i in ids]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]



def test_result_id_is_the_directory_name(daemon: Daemon) -> None:
    build = daemon.spool / "tmp" / "handmade-1"
    build.mkdir()
    (build / "a.wav").write_bytes(fake_script(text="handmade"))
    (build / "job.json").write_text(json.dumps(
        {"id": "something-else", "submitted_at": "2026-11-24T03:15:01.123456Z",
         "source_name": "a.wav"}))
    os.rename(build, daemon.spool / "incoming" / "handmade-1")
    res = daemon.wait_result("handmade-1")
    assert res["id"] == "handmade-1" and res["text"] == "handmade"


def test_worker_memory_limit_fails_the_hungry_job_only(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(worker_memory_limit=400 * 2**20, max_attempts=2).start()
    hungry = d.submit_bytes("big.wav", fake_script(alloc=2 * 2**30))
    res = d.wait_result(hungry, 30)
    assert res["status"] == "failed" and res["attempts"] == 2
    assert "out of memory" in res["error"]["message"]
    small = d.submit_bytes("small.wav", fake_script(alloc=10 * 2**20, text="fits"))
    assert d.wait_result(small)["text"] == "fits"


def test_workers_have_a_memory_bound_by_default(make_daemon: Callable[..., Daemon]) -> None:
    """worker_memory_limit: auto (the default): a CPU worker may grow by what the longest
    allowed audio needs (here 60 s: about 1 GiB), no more; a job past it fails alone."""
    d = make_daemon(max_audio_seconds=60, max_attempts=1).start()
    hungry = d.submit_bytes("bomb.wav", fake_script(alloc=3 * 2**30))
    res = d.wait_result(hungry, 30)
    assert res["status"] == "failed" and "out of memory" in res["error"]["message"], res
    fits = d.submit_bytes("fits.wav", fake_script(alloc=200 * 2**20, text="fits"))
    assert d.wait_result(fits)["text"] == "fits"
    assert d.proc is not None and d.proc.poll() is None
