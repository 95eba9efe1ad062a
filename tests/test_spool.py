"""The spool protocol, exercised directly: publish, order, claim races, recovery."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from helpers import checked
from hypothesis import given, settings
from hypothesis import strategies as st

from cesard import job as jobmod
from cesard import publish
from cesard.entries import is_ignored_name
from cesard.lease import Claimer, lease_orphaned
from cesard.spool import Spool


def make_spool(tmp: Path) -> Spool:
    s = Spool(tmp / "spool")
    s.create()
    return s


def test_submit_publishes_a_complete_job_dir(tmp_path: Path) -> None:
    s = make_spool(tmp_path)
    audio = tmp_path / "talk.wav"
    audio.write_bytes(b"RIFF....")
    job_id = publish.submit(s, audio, {"priority": "high"}, "alice")
    assert jobmod.valid_id(job_id)
    assert os.listdir(s.dir("tmp")) == []
    entry = s.dir("incoming") / job_id
    assert sorted(os.listdir(entry)) == ["job.json", "talk.wav"]
    meta = json.loads((entry / "job.json").read_text())
    assert meta["id"] == job_id and meta["submitter"] == "alice"
    assert meta["options"] == {"priority": "high"} and meta["source_name"] == "talk.wav"
    assert meta["submitted_at"].endswith("Z")


def test_ids_sort_by_submission_time_and_are_unique(tmp_path: Path) -> None:
    ids = [jobmod.new_job_id() for _ in range(200)]
    assert len(set(ids)) == 200
    assert ids == sorted(ids)
    assert all(jobmod.valid_id(i) for i in ids)


@given(st.text(min_size=1, max_size=40))
def test_ignored_names(name: str) -> None:
    expect = name.startswith(".") or name.endswith((".part", ".tmp", ".partial", "~"))
    assert is_ignored_name(name) == expect


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["high", "normal", "low"]),
                          st.integers(0, 10**6)), min_size=1, max_size=15))
def test_claim_order_is_priority_then_submission_time(
        tmp_path_factory: object, jobs: list[tuple[str, int]]) -> None:
    import tempfile

    from cesard.index import QueueIndex
    with tempfile.TemporaryDirectory() as tmp:
        s = make_spool(Path(tmp))
        for i, (prio, t) in enumerate(jobs):
            name = f"j{i:03d}"
            d = s.dir("incoming") / name
            d.mkdir()
            meta = jobmod.JobMeta(id=name, options={"priority": prio},
                                  submitted_at=jobmod.iso(1.7e9 + t), source_name="a.wav")
            (d / "job.json").write_bytes(meta.to_json())
        index = QueueIndex()
        for name in s.scan():
            e = s.entry_key(name)
            assert e is not None
            index.add(e)
        popped = []
        while (e := index.pop()) is not None:
            popped.append(e.name)
        rank = {"high": 0, "normal": 1, "low": 2}
        expected = sorted(range(len(jobs)), key=lambda i: (rank[jobs[i][0]], jobs[i][1], i))
        assert popped == [f"j{i:03d}" for i in expected]


def _claimer(root: str, out: mp.Queue, go: mp.Event) -> None:  # type: ignore[type-arg]
    s = Spool(root)
    me = Claimer.me()
    names = sorted(s.scan())
    go.wait()
    won = []
    for name in names:
        e = s.entry_key(name)
        if e is None:
            continue
        c = s.claim(e, me, time.time())
        if c is not None:
            won.append(name)
    out.put(won)


def test_racing_claimers_claim_each_entry_exactly_once(tmp_path: Path) -> None:
    s = make_spool(tmp_path)
    for i in range(250):
        d = s.dir("incoming") / f"job{i:04d}"
        d.mkdir()
        (d / "job.json").write_bytes(jobmod.JobMeta(
            id=f"job{i:04d}", options={}, submitted_at=jobmod.iso(1.7e9 + i),
            source_name="a.wav").to_json())
        (d / "a.wav").write_bytes(b"x")
    for i in range(250):
        (s.dir("incoming") / f"bare{i:04d}.wav").write_bytes(b"y")
    ctx = mp.get_context("fork")
    out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
    go = ctx.Event()
    procs = [ctx.Process(target=_claimer, args=(str(s.root), out, go)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    won = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    claimed = [n for w in won for n in w]
    assert len(claimed) == 500 and len(set(claimed)) == 500
    assert sum(1 for w in won if w) >= 2, "the race never happened"
    assert os.listdir(s.dir("incoming")) == []
    entries = os.listdir(s.dir("processing"))
    assert len(entries) == 500
    bare_files = [n for e in entries for n in os.listdir(s.dir("processing") / e)
                  if n.startswith("bare")]
    assert len(bare_files) == 250 and len(set(bare_files)) == 250


def test_lease_rules(tmp_path: Path) -> None:
    me = Claimer.me()
    now = time.time()
    mine = json.loads(me.lease(now))
    assert not lease_orphaned(mine, 0, me, 60)
    earlier_start = dict(mine, token="other")  # same pid, earlier start of this daemon
    assert lease_orphaned(earlier_start, 0, me, 60)
    other_boot = dict(mine, token="x", boot_id="another-boot")
    assert lease_orphaned(other_boot, 0, me, 60)
    parent = os.getppid()
    from cesard.lease import pid_start
    alive_local = dict(mine, token="x", pid=parent, pid_start=pid_start(parent))
    assert not lease_orphaned(alive_local, 0, me, 60)
    reused_pid = dict(alive_local, pid_start=1)
    assert lease_orphaned(reused_pid, 0, me, 60)
    # Another host: only how long we watched its lease stay the same counts, never its
    # heartbeat time against our clock (its clock may be off by minutes).
    remote = dict(mine, token="x", host="elsewhere", heartbeat=now - 3600)
    assert not lease_orphaned(remote, 30, me, 60)
    assert lease_orphaned(dict(remote, heartbeat=now + 3600), 61, me, 60)
    assert not lease_orphaned(None, 10, me, 60)
    assert lease_orphaned(None, 61, me, 60)


def test_recover_counts_an_attempt_and_keeps_the_place(tmp_path: Path) -> None:
    s = make_spool(tmp_path)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    job_id = publish.submit(s, audio, {}, "bob")
    submitted = json.loads((s.dir("incoming") / job_id / "job.json").read_text())["submitted_at"]
    dead = Claimer("host", "boot", 999999, None, "dead")
    e = s.entry_key(job_id)
    assert e is not None
    assert s.claim(e, dead, time.time()) is not None
    me = Claimer.me()
    assert s.orphans(me, time.time(), 60) == []  # another host, fresh heartbeat
    later = time.time() + 61
    (name,) = s.orphans(me, later, 60)
    assert s.recover(name, 3, later, "gone") == ("incoming", job_id)
    meta = json.loads((s.dir("incoming") / job_id / "job.json").read_text())
    assert meta["attempts"] == 1 and meta["submitted_at"] == submitted
    assert not (s.dir("incoming") / job_id / "claim.json").exists()
    assert meta["errors"][0]["interrupted"] is True
    # A daemon's stop is not the job's fault: past max_attempts it still goes back; only
    # after 5 x max_attempts stops is it taken for their cause, failed with its history.
    for i in range(2, 16):
        e = s.entry_key(job_id)
        assert e is not None and s.claim(e, dead, time.time()) is not None
        assert s.orphans(me, time.time(), 60) == []  # first seen now: watched from now
        (name,) = s.orphans(me, time.time() + 61, 60)
        state, _ = s.recover(name, 3, time.time(), "gone")
        assert state == ("failed" if i == 15 else "incoming"), i
    res = checked(json.loads((s.dir("failed") / job_id / "result.json").read_text()))
    assert res["attempts"] == 15 and len(res["errors"]) == 15
    assert "stopped 15 times" in res["error"]["message"]


def test_clean_tmp_removes_only_stale_builds(tmp_path: Path) -> None:
    s = make_spool(tmp_path)
    build = s.dir("tmp") / "half-built"
    build.mkdir()
    (build / "a.wav").write_bytes(b"x")
    (s.dir("tmp") / "loose.json").write_bytes(b"{}")
    assert s.clean_tmp(time.time(), max_age=86400) == []
    assert build.exists()
    # ctime cannot be set back: judge from two days ahead instead.
    later = time.time() + 2 * 86400
    assert sorted(s.clean_tmp(later, max_age=86400)) == ["half-built", "loose.json"]
    assert os.listdir(s.dir("tmp")) == []


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "pop", "discard"]), st.integers(0, 30),
                          st.integers(0, 5)), max_size=60))
def test_index_oldest_key_matches_a_full_scan(ops: list[tuple[str, int, int]]) -> None:
    from cesard.entries import Entry
    from cesard.index import QueueIndex
    index = QueueIndex()
    live: dict[str, str] = {}
    for op, n, t in ops:
        name, when = f"n{n}", f"2026-11-24T03:00:0{t}.000000Z"
        if op == "add":
            index.add(Entry(name, True, (n % 3, when, name)))
            live[name] = when
        elif op == "discard":
            index.discard(name)
            live.pop(name, None)
        else:
            e = index.pop()
            if e is not None:
                live.pop(e.name)
        assert index.oldest_key() == (min(live.values()) if live else None)
