"""Several daemons on one spool (I2, I4): each job done exactly once; leases respected.

Daemons on one machine pretend to be on several hosts with ``CESAR_HOST_ID``:
their leases are then judged by heartbeat only, as across NFS. Without it
they are daemons of one host, judged by pid, and must not take each other's
live claims at start-up. ``CESARD_TORTURE=1`` runs more jobs.
"""

from __future__ import annotations

import calendar
import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until
from test_torture import TORTURE, assert_clean_end, assert_no_concurrent_runs, count_in, make_jobs


def on_spool(make_daemon: Callable[..., Daemon], spool: Path, name: str,
             **config: object) -> Daemon:
    d = make_daemon(sub=name, **config)
    d.spool = spool
    return d


@pytest.mark.parametrize("hosts", ["three-hosts", "one-host"])
def test_three_daemons_share_a_spool(make_daemon: Callable[..., Daemon], tmp_path: Path,
                                     hosts: str) -> None:
    n_jobs = 500 if TORTURE else 150
    rnd = random.Random(11)
    spool = tmp_path / "spool"
    tokens = [f"tok-{i:04d}" for i in range(n_jobs)]
    sleeps = [0.0, 0.02, 0.1]
    make_jobs(spool, tokens[: n_jobs // 3], rnd, sleeps, tmp_path / "src")
    later = tokens[n_jobs // 3:]
    batches = [later[i::4] for i in range(4)]
    daemons = [on_spool(make_daemon, spool, f"d{i}", workers=1, settle_seconds=0.3)
               for i in range(3)]
    t0 = time.monotonic()
    for i, d in enumerate(daemons):
        env = {"CESAR_HOST_ID": f"host{i}"} if hosts == "three-hosts" else {}
        d.start(env=env)
        # The next daemon starts while this one holds live claims: it must leave them.
        wait_until(lambda: os.listdir(spool / "processing"), 10, "a claim to be held")
        make_jobs(spool, batches[i], rnd, sleeps, tmp_path / "src")
    make_jobs(spool, batches[3], rnd, sleeps, tmp_path / "src")
    wait_until(lambda: count_in(spool, "done") + count_in(spool, "failed") >= n_jobs, 120,
               "every job to be finished")
    wait_until(lambda: not os.listdir(spool / "processing"), 10, "processing/ to empty")
    elapsed = time.monotonic() - t0
    for d in daemons:
        assert d.stop() == 0
    logs = [d.log() for d in daemons]
    # A second daemon on the same host says so at start (not silently).
    assert ("another cesard (pid" in logs[1]) == (hosts != "three-hosts"), logs[1]
    results = assert_clean_end(daemons[0], tokens, max_runs=1)
    for text in logs:
        assert "Traceback" not in text and "recovered" not in text, text
    assert_no_concurrent_runs(logs)
    by = {r["worker"] for r in results}
    assert len(by) == 3, f"not every daemon worked: {by}"
    print(f"\n3 daemons ({hosts}): {n_jobs} jobs in {elapsed:.1f} s")


def lease_of(spool: Path, job: str) -> dict[str, object] | None:
    try:
        return json.loads((spool / "processing" / job / "claim.json").read_text())
    except (OSError, ValueError):
        return None


def recovered_at(log: str, job: str) -> float:
    """Epoch time of the log line saying the job was recovered."""
    m = re.search(r"^(\S+)Z cesard\[\d+\] WARNING: job=" + re.escape(job) +
                  r" recovered from processing/", log, re.M)
    assert m, log
    return calendar.timegm(time.strptime(m.group(1)[:19], "%Y-%m-%dT%H:%M:%S")) + \
        float("0" + m.group(1)[19:])


def test_other_host_reclaims_only_after_the_lease(make_daemon: Callable[..., Daemon],
                                                  tmp_path: Path) -> None:
    lease = 3.0
    spool = tmp_path / "spool"
    a = on_spool(make_daemon, spool, "a", lease_seconds=lease)
    b = on_spool(make_daemon, spool, "b", lease_seconds=lease)
    a.start(env={"CESAR_HOST_ID": "hosta"})
    # Long enough to be still running on a when a is killed (after b starts and a
    # heartbeats once), short enough for b to finish it within the wait below.
    job = a.submit_bytes("long.wav", fake_script(sleep=8, text="finished by b"))
    wait_until(lambda: (lease_of(spool, job) or {}).get("host") == "hosta", 10, "a's claim")
    b.start(env={"CESAR_HOST_ID": "hostb"})  # b's start-up recovery must leave it alone
    # Let a heartbeat once, so the lease is a refreshed one, then kill a.
    first = (lease_of(spool, job) or {}).get("heartbeat")
    wait_until(lambda: (lease_of(spool, job) or {}).get("heartbeat") not in (None, first), 10,
               "a heartbeat")
    a.kill_all()
    killed = time.monotonic()
    last = (lease_of(spool, job) or {})["heartbeat"]
    assert isinstance(last, float)
    while time.monotonic() < killed + lease * 0.5:
        owner = lease_of(spool, job)
        assert owner is not None and owner["host"] == "hosta", \
            f"taken {time.monotonic() - killed:.2f} s after the kill, before the lease expired"
        time.sleep(0.02)
    res = b.wait_result(job, lease * 2 + 20)
    assert res["status"] == "done" and res["text"] == "finished by b"
    assert res["worker"].startswith("hostb:")
    assert res["attempts"] == 2 and res["errors"][0]["type"] == "WorkerCrashed"
    recovered = recovered_at(b.log(), job)
    assert recovered - last >= lease, f"taken {recovered - last:.2f} s after the last heartbeat"
    assert b.stop() == 0


def test_same_host_reclaims_a_dead_daemons_job_without_waiting(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    lease = 8.0
    a = on_spool(make_daemon, spool, "a", lease_seconds=lease)
    b = on_spool(make_daemon, spool, "b", lease_seconds=lease)
    a.start()
    job = a.submit_bytes("j.wav", fake_script(sleep=30, text="long"))
    wait_until(lambda: lease_of(spool, job), 10, "a's claim")
    b.start()
    assert lease_of(spool, job)["pid"] == a.proc.pid  # type: ignore[index,union-attr]
    (spool / "processing" / job / "j.wav").write_bytes(fake_script(text="done by b"))
    last = (lease_of(spool, job) or {})["heartbeat"]
    assert isinstance(last, float)
    a.kill_all()
    # The claimer is provably gone (same host and boot, pid dead): no lease wait.
    res = b.wait_result(job, 25)
    assert res["status"] == "done" and res["attempts"] == 2 and res["text"] == "done by b"
    assert recovered_at(b.log(), job) - last < lease
    assert b.stop() == 0


def test_a_daemon_whose_claim_was_taken_over_lets_the_job_be(
        make_daemon: Callable[..., Daemon]) -> None:
    """Fencing (issue 14): a host cut off past its lease comes back to find its running
    job claimed by another daemon (another token in the lease). Its heartbeat and its
    finish are fenced on its own claim: it drops the job, writes no result over the
    other's, and keeps running."""
    d = make_daemon(lease_seconds=3).start()
    job = d.submit_bytes("long.wav", fake_script(sleep=4, text="late"))
    lease = d.spool / "processing" / job / "claim.json"
    wait_until(lambda: lease.exists(), 10, "the claim")
    other = {**json.loads(lease.read_text()), "host": "other-host", "pid": 1,
             "token": "0123456789ab", "heartbeat": time.time()}
    lease.write_text(json.dumps(other))  # what a reclaiming host's claim leaves there
    wait_until(lambda: "claim was taken over" in d.log(), 10, "the fence to notice")
    assert json.loads(lease.read_text())["token"] == "0123456789ab"  # never overwritten
    assert not (d.spool / "processing" / job / "result.json").exists()
    assert not (d.spool / "done" / job).exists() and not (d.spool / "failed" / job).exists()
    assert d.proc is not None and d.proc.poll() is None
    ok = d.submit_bytes("next.wav", fake_script(text="still working"))
    assert d.wait_result(ok)["text"] == "still working"


def test_each_host_has_its_own_status_and_status_shows_them_all(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """Per-host status (issue 14): status.json is whichever daemon wrote last; each daemon
    also keeps state/hosts/HOST.json, and 'cesarctl status' lists every host."""
    spool = tmp_path / "spool"
    a = on_spool(make_daemon, spool, "a").start(env={"CESAR_HOST_ID": "hosta"})
    b = on_spool(make_daemon, spool, "b").start(env={"CESAR_HOST_ID": "hostb"})
    job = a.submit_bytes("long.wav", fake_script(sleep=30))

    def hosts() -> dict[str, dict[str, object]]:
        r = a.ctl("status", "--json")
        return {str(h["host"]): h for h in json.loads(r.stdout)["hosts"]}
    wait_until(lambda: {"hosta", "hostb"} <= set(hosts()), 10, "both hosts' status")
    own = {n: json.loads((spool / "state" / "hosts" / f"{n}.json").read_text())
           for n in ("hosta", "hostb")}
    assert own["hosta"]["pid"] == a.proc.pid and own["hostb"]["pid"] == b.proc.pid  # type: ignore[union-attr]
    wait_until(lambda: any(job in h["running"] for h in hosts().values()), 10, "the job")
    assert all(h["state"] == "running" for h in hosts().values())
    assert b.stop() == 0
    wait_until(lambda: hosts()["hostb"]["state"] == "not running", 10, "hostb stopped")
    assert hosts()["hosta"]["state"] == "running"


FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed (apt-get install "
                    "faketime)")
@pytest.mark.parametrize("skew", ["-10m", "+10m"])
def test_a_host_whose_clock_is_off_neither_loses_live_claims_nor_keeps_dead_ones(
        make_daemon: Callable[..., Daemon], tmp_path: Path, skew: str) -> None:
    """Leases never compare another host's clock with ours (issue 14): host a runs ten
    minutes behind or ahead (libfaketime). Behind, its live claim looked ten minutes
    stale to b; ahead, its dead claim looked alive for ten more minutes."""
    lease = 3.0
    spool = tmp_path / "spool"
    a = on_spool(make_daemon, spool, "a", lease_seconds=lease)
    b = on_spool(make_daemon, spool, "b", lease_seconds=lease)
    a.start(env={"CESAR_HOST_ID": "hosta", "LD_PRELOAD": str(FAKETIME), "FAKETIME": skew,
                 "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    b.start(env={"CESAR_HOST_ID": "hostb"})
    b.signal(signal.SIGSTOP)  # a claims the job
    job = a.submit_bytes("long.wav", fake_script(sleep=3 * lease, text="a's"))
    wait_until(lambda: (lease_of(spool, job) or {}).get("host") == "hosta", 10, "a's claim")
    b.signal(signal.SIGCONT)
    if skew.startswith("-"):
        res = b.wait_result(job, 30)
        assert res["worker"].startswith("hosta:") and res["attempts"] == 1, res["errors"]
        assert f"job={job} recovered" not in b.log()
    else:
        a.kill_all()
        t = time.monotonic()
        res = b.wait_result(job, 60)
        assert res["worker"].startswith("hostb:") and res["attempts"] == 2
        assert time.monotonic() - t < 6 * lease + 3 * lease  # reclaimed after the lease
