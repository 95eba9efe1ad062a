"""Cross-job batching (issue 13) with the real daemon and the fake engine: jobs queued
together go to one worker together, and each still ends alone: its own result, failure,
cancel; a crash of the batch loses none of them."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

from helpers import Daemon, fake_script, on_terminal, wait_until

from cesard import job as jobmod


def queue_while_stopped(d: Daemon, scripts: list[tuple[str, bytes, tuple[str, ...]]]) -> list[str]:
    """Submit with the supervisor stopped, so the jobs are all queued when it looks."""
    d.signal(signal.SIGSTOP)
    try:
        return [d.submit_bytes(name, data, *opts) for name, data, opts in scripts]
    finally:
        d.signal(signal.SIGCONT)


def started(res: dict[str, object]) -> float:
    return jobmod.parse_iso(str(res["started_at"])).timestamp()


def test_queued_jobs_share_one_batch_each_with_its_own_result(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4).start()
    ids = queue_while_stopped(d, [(f"v{i}.wav", fake_script(text=f"voicemail {i}"), ())
                                  for i in range(4)])
    res = [d.wait_result(i) for i in ids]
    assert [r["text"] for r in res] == [f"voicemail {i}" for i in range(4)]
    assert all(r["status"] == "done" and r["decoding"]["batch_jobs"] == 4 for r in res)
    assert len({r["engine"]["pid"] for r in res}) == 1
    assert len({r["started_at"] for r in res}) == 1  # one batch, started together
    assert "batch of 4 jobs to worker" in d.log()


def test_a_bad_file_fails_alone(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4).start()
    ids = queue_while_stopped(d, [
        ("a.wav", fake_script(text="first"), ()),
        ("bad.wav", fake_script(fail="UndecodableAudio"), ()),
        ("c.wav", fake_script(text="third"), ())])
    a, bad, c = (d.wait_result(i) for i in ids)
    assert bad["status"] == "failed" and bad["error"]["type"] == "UndecodableAudio"
    assert a["status"] == c["status"] == "done"
    assert a["decoding"]["batch_jobs"] == c["decoding"]["batch_jobs"] == 2


def test_a_crash_of_the_batch_retries_each_job_alone(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4, max_attempts=2).start()
    ids = queue_while_stopped(d, [
        ("a.wav", fake_script(text="before"), ()),
        ("boom.wav", fake_script(crash=True), ()),
        ("c.wav", fake_script(text="after"), ()),
        ("d.wav", fake_script(text="last"), ())])
    a, boom, c, last = (d.wait_result(i, 60) for i in ids)
    assert a["status"] == "done" and a["decoding"]["batch_jobs"] == 4  # done before it
    # The others went back to the queue with no attempt counted and ran alone.
    for r in (c, last):
        assert r["status"] == "done" and r["attempts"] == 1 and r["decoding"] is None
    assert boom["status"] == "failed" and boom["error"]["type"] == "WorkerCrashed"
    assert boom["attempts"] == 2  # its own two tries alone; the batch's crash is free
    assert "a batch it shared was lost" in d.log()


def test_cancel_of_one_job_cancels_that_job_only(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4).start()
    ids = queue_while_stopped(d, [(f"s{i}.wav", fake_script(sleep=1.5, text=f"s{i}"), ())
                                  for i in range(3)])
    wait_until(lambda: len((d.status() or {}).get("running") or []) == 3, 10,
               "the batch to run")
    r = d.ctl("cancel", ids[2])
    assert r.returncode == 0, r.stderr
    first, second, third = (d.wait_result(i, 30) for i in ids)
    assert third["status"] == "cancelled"
    assert first["status"] == second["status"] == "done"
    assert first["engine"]["pid"] == second["engine"]["pid"]  # the worker was not replaced
    assert not (d.spool / "processing" / ids[2]).exists()


def test_two_idle_workers_split_the_queue(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2, batch_size=8).start()
    ids = queue_while_stopped(d, [(f"q{i}.wav", fake_script(sleep=0.3), ())
                                  for i in range(8)])
    res = [d.wait_result(i, 30) for i in ids]
    assert sorted(r["decoding"]["batch_jobs"] for r in res) == [4] * 8
    assert len({r["engine"]["pid"] for r in res}) == 2


def test_options_and_priority_keep_batches_apart(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=8).start()
    ids = queue_while_stopped(d, [
        ("n1.wav", fake_script(), ()),
        ("n2.wav", fake_script(), ()),
        ("beam.wav", fake_script(), ("--beam-size", "2")),
        ("high.wav", fake_script(), ("--priority", "high")),
        ("ex.wav", fake_script(), ("--exclusive",))])
    n1, n2, beam, high, ex = (d.wait_result(i) for i in ids)
    assert high["decoding"]["batch_jobs"] == 1 and started(high) <= started(n1)
    assert n1["decoding"]["batch_jobs"] == n2["decoding"]["batch_jobs"] == 2
    assert beam["decoding"]["batch_jobs"] == 1
    assert ex["decoding"] is None  # exclusive jobs run alone, the single-job way


def test_batch_wait_ms_waits_for_more_but_never_holds_a_high_priority_job(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4, batch_wait_ms=2000).start()
    t0 = time.time()
    first = d.submit_bytes("a.wav", fake_script(text="a"))
    second = d.submit_bytes("b.wav", fake_script(text="b"))
    a, b = d.wait_result(first, 20), d.wait_result(second, 20)
    assert a["decoding"]["batch_jobs"] == 2 == b["decoding"]["batch_jobs"]
    assert started(a) - t0 >= 1.5  # it waited for more, up to 2 s
    t1 = time.time()
    high = d.wait_result(d.submit_bytes("h.wav", fake_script(), "--priority", "high"), 20)
    assert started(high) - t1 < 1.5 and high["decoding"]["batch_jobs"] == 1


def test_batching_off(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_max_seconds=0).start()
    ids = queue_while_stopped(d, [(f"o{i}.wav", fake_script(), ()) for i in range(3)])
    assert all(d.wait_result(i)["decoding"] is None for i in ids)


def test_long_audio_in_a_batch_runs_alone_after_the_short_ones(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(batch_size=4).start()
    ids = queue_while_stopped(d, [
        ("long.wav", fake_script(duration=600, text="long"), ()),
        ("s1.wav", fake_script(text="s1"), ()),
        ("s2.wav", fake_script(text="s2"), ())])
    long, s1, s2 = (d.wait_result(i) for i in ids)
    assert s1["decoding"]["batch_jobs"] == s2["decoding"]["batch_jobs"] == 2
    assert long["status"] == "done" and long["decoding"] is None  # the single-job path
    assert jobmod.parse_iso(long["finished_at"]) >= jobmod.parse_iso(s2["finished_at"])


def test_a_job_waiting_behind_its_batch_is_shown_waiting_not_running(
        make_daemon: Callable[..., Daemon]) -> None:
    """Issue 23.8: a job claimed for a busy worker is "waiting", not "running … 0%"."""
    d = make_daemon(batch_size=4).start()
    short, long = queue_while_stopped(d, [
        ("short.wav", fake_script(sleep=3, text="short"), ()),
        ("long.wav", fake_script(sleep=1, duration=100, text="long"), ())])  # runs alone after
    wait_until(lambda: [r["id"] for r in (d.status() or {}).get("running") or []] == [short],
               10, "the short job to run")
    st = d.status() or {}
    assert [r["id"] for r in st["waiting"]] == [long]
    assert st["queue"]["processing"] == 2
    code, out = on_terminal(d, "status")
    assert f"running: {short}" in out and f"waiting: {long}" in out, out
    assert f"running: {long}" not in out
    code, out = on_terminal(d, "list", env={"NO_COLOR": "1"})
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line}
    assert listed[short] == "processing" and listed[long] == "waiting", out
    wait_until(lambda: [r["id"] for r in (d.status() or {}).get("running") or []] == [long],
               20, "the long job to run once the batch is done")
    assert d.wait_result(long, 20)["status"] == "done"
