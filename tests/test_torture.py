"""Nothing lost, nothing run twice: kill -9, SIGTERM, cancel and scheduling under load.

Real daemons on temporary spools. Counts are small by default so that the
file stays well under a minute; ``CESARD_TORTURE=1`` runs the big version.
Every job carries a unique token in its fake script (``text: TOKEN``), so a
census of the spool can count each job wherever it sits, by token, whatever
id it was given (bare files get theirs at claim time).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import Daemon, checked, fake_script, wait_until

from cesard import publish
from cesard.spool import Spool

TORTURE = os.environ.get("CESARD_TORTURE") == "1"
STATES = ("incoming", "processing", "deferred", "done", "failed")
TOKEN_RE = re.compile(rb"^text: (tok-[0-9a-z-]+)$", re.M)


# --- shared by the torture files ------------------------------------------------

def token_of(path: Path) -> str | None:
    """The token of a job file or job directory (any state), or None."""
    try:
        if path.is_symlink():
            return None
        if path.is_dir():
            for name in os.listdir(path):
                if name.startswith(".") or name in ("job.json", "claim.json", "result.json") \
                        or name.startswith("transcript."):
                    continue
                tok = token_of(path / name)
                if tok:
                    return tok
            return None
        with open(path, "rb") as f:
            m = TOKEN_RE.search(f.read(4096))
        return m.group(1).decode() if m else None
    except OSError:
        return None


def census(spool: Path) -> dict[str, list[tuple[str, str]]]:
    """token -> [(state, entry name)] over every state directory."""
    out: dict[str, list[tuple[str, str]]] = {}
    for state in STATES:
        for name in os.listdir(spool / state):
            tok = token_of(spool / state / name)
            out.setdefault(tok or f"?{state}/{name}", []).append((state, name))
    return out


def count_in(spool: Path, state: str) -> int:
    return len(os.listdir(spool / state))


def read_result(spool: Path, state: str, name: str) -> dict[str, Any]:
    return checked(json.loads((spool / state / name / "result.json").read_text()))


LOG_RE = re.compile(r"^(\S+Z) cesard\[(\d+)\] \w+: job=(\S+) (.*)$")
OUTCOMES = ("done:", "failed:", "cancelled:", "attempt ", "returned to incoming/",
            "could not be finished")


def run_intervals(logs: list[str]) -> dict[str, list[tuple[str, str | None, str]]]:
    """From daemon logs: job id -> [(claimed at, ended at or None, daemon pid)].

    A run starts with the "claimed" line and ends with its outcome line; a run
    still open when its daemon's log ends was cut short by kill -9.
    """
    runs: dict[str, list[tuple[str, str | None, str]]] = {}
    for text in logs:
        open_: dict[tuple[str, str], str] = {}
        for line in text.splitlines():
            m = LOG_RE.match(line)
            if not m:
                continue
            at, pid, job, rest = m.groups()
            if rest.startswith("claimed:"):
                assert (pid, job) not in open_, f"job {job} claimed twice by one daemon:\n{line}"
                open_[(pid, job)] = at
            elif rest.startswith(OUTCOMES) and (pid, job) in open_:
                runs.setdefault(job, []).append((open_.pop((pid, job)), at, pid))
        for (pid, job), at in open_.items():
            runs.setdefault(job, []).append((at, None, pid))
    return runs


def assert_no_concurrent_runs(logs: list[str]) -> int:
    """No job ran in two places at once (closed runs of one job never overlap)."""
    runs = run_intervals(logs)
    for job, rs in runs.items():
        closed = sorted((a, b) for a, b, _ in rs if b is not None)
        for (_, end1), (start2, _) in zip(closed, closed[1:], strict=False):
            assert end1 is not None and end1 <= start2, f"job {job} ran twice at once: {rs}"
    return len(runs)


def put_bare(spool: Path, name: str, data: bytes) -> None:
    """Copy a bare file in the way rsync does: a temporary name, then a rename."""
    tmp = spool / "tmp" / f".{name}.part"
    tmp.write_bytes(data)
    os.rename(tmp, spool / "incoming" / name)


def make_jobs(spool: Path, tokens: list[str], rnd: random.Random, sleeps: list[float],
              src: Path) -> None:
    """Submit tokens: two thirds as job directories, one third as bare files."""
    s = Spool(spool)
    s.create()
    src.mkdir(exist_ok=True)
    for tok in tokens:
        data = fake_script(sleep=rnd.choice(sleeps), text=tok)
        if rnd.random() < 0.34:
            put_bare(spool, f"{tok}.wav", data)
        else:
            f = src / f"{tok}.wav"
            f.write_bytes(data)
            publish.submit(s, f, {}, "torture")
            f.unlink()


def assert_clean_end(d: Daemon, tokens: list[str], max_runs: int) -> list[dict[str, Any]]:
    """Every token exactly once, in done/; nothing else anywhere; sane attempt history."""
    got = census(d.spool)
    extra = sorted(set(got) - set(tokens))
    assert not extra, f"entries that are no job of the test: {extra[:10]}"
    missing = [t for t in tokens if t not in got]
    assert not missing, f"jobs lost: {missing[:10]}"
    twice = {t: v for t, v in got.items() if len(v) != 1}
    assert not twice, f"jobs in several places: {dict(list(twice.items())[:5])}"
    not_done = {t: v for t, v in got.items() if v[0][0] != "done"}
    assert not not_done, f"jobs not done: {dict(list(not_done.items())[:5])}"
    for state in ("incoming", "processing", "deferred", "failed"):
        assert os.listdir(d.spool / state) == [], state
    assert [n for n in os.listdir(d.spool / "tmp") if not n.startswith(".")] == []
    results = []
    for tok, [(state, name)] in got.items():
        res = read_result(d.spool, state, name)
        assert res["text"] == tok and res["status"] == "done"
        assert res["id"] == name, "a done/ entry was renamed on a clash: it finished twice"
        assert res["attempts"] == 1 + len(res["errors"]), res
        assert all(e["type"] == "WorkerCrashed" for e in res["errors"]), res["errors"]
        assert res["attempts"] <= max_runs, res
        assert not (d.spool / state / name / "claim.json").exists()
        results.append(res)
    return results


# --- 1. kill -9 of the whole daemon, repeatedly ------------------------------------

def test_kill9_repeatedly_nothing_lost_nothing_twice(make_daemon: Callable[..., Daemon]) -> None:
    n_jobs, kills = (400, 20) if TORTURE else (120, 4)
    rnd = random.Random(int(os.environ.get("CESARD_SEED", "4242")))
    d = make_daemon(workers=2, lease_seconds=2, max_attempts=100, retry_delays=[0.1],
                    settle_seconds=0.3, shutdown_grace=1)
    tokens = [f"tok-{i:04d}" for i in range(n_jobs)]
    first, later = tokens[: n_jobs // 2], tokens[n_jobs // 2:]
    sleeps = [0.0, 0.0, 0.02, 0.05, 0.2]
    make_jobs(d.spool, first, rnd, sleeps, d.tmp / "src")
    batches = [later[i::kills] for i in range(kills)]
    logs: list[str] = []
    t0 = time.monotonic()
    for cycle in range(kills):
        d.log_path = d.tmp / f"cesard.{cycle}.log"
        d.start()
        make_jobs(d.spool, batches[cycle], rnd, sleeps, d.tmp / "src")  # while it runs
        done = count_in(d.spool, "done")
        target = done + rnd.randint(0, max(1, n_jobs // (2 * kills)))
        # Kill at a random moment: right after start, or after some more jobs finished.
        wait_until(lambda t=target: count_in(d.spool, "done") >= t, 60,  # type: ignore[misc]
                   f"{target} jobs done in cycle {cycle}", interval=0.005)
        d.kill_all()
        logs.append(d.log())
    d.log_path = d.tmp / "cesard.final.log"
    d.start()
    wait_until(lambda: count_in(d.spool, "done") + count_in(d.spool, "failed") >= n_jobs,
               120, "every job to be finished")
    wait_until(lambda: not os.listdir(d.spool / "processing"), 10, "processing/ to empty")
    assert d.stop() == 0
    logs.append(d.log())
    elapsed = time.monotonic() - t0
    results = assert_clean_end(d, tokens, max_runs=kills + 1)
    for text in logs:
        assert "Traceback" not in text, text
    runs = assert_no_concurrent_runs(logs)
    assert runs >= n_jobs
    recovered = sum(r["attempts"] > 1 for r in results)
    print(f"\nkill -9 torture: {n_jobs} jobs, {kills} kills, {recovered} jobs recovered, "
          f"{elapsed:.1f} s")


# --- 3. SIGTERM, repeatedly ---------------------------------------------------------

def long_job_running(spool: Path) -> bool:
    """A claimed job whose fake script sleeps 0.8 s (longer than the test's grace)."""
    for job in os.listdir(spool / "processing"):
        try:
            for f in (spool / "processing" / job).iterdir():
                if f.suffix == ".wav" and b"sleep: 0.8" in f.read_bytes():
                    return True
        except OSError:
            continue
    return False


def test_sigterm_repeatedly_requeues_without_counting(
        make_daemon: Callable[..., Daemon]) -> None:
    n_jobs, stops = (200, 25) if TORTURE else (50, 5)
    rnd = random.Random(int(os.environ.get("CESARD_SEED", "77")))
    d = make_daemon(workers=2, shutdown_grace=0.3, max_attempts=100, settle_seconds=0.3)
    tokens = [f"tok-{i:04d}" for i in range(n_jobs)]
    make_jobs(d.spool, tokens, rnd, [0.0, 0.05, 0.2, 0.8], d.tmp / "src")
    logs = []
    for cycle in range(stops):
        d.log_path = d.tmp / f"cesard.{cycle}.log"
        d.start()
        target = count_in(d.spool, "done") + rnd.randint(0, max(1, n_jobs // (2 * stops)))
        # The first stop waits for a job longer than the grace, so that at least one
        # SIGTERM surely requeues a running job.
        wait_until(lambda t=target, c=cycle: count_in(d.spool, "done") >= t  # type: ignore[misc]
                   and os.listdir(d.spool / "processing")
                   and (c > 0 or long_job_running(d.spool)), 60, "jobs done and one running",
                   interval=0.005)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0, d.log()
        assert os.listdir(d.spool / "processing") == [], "SIGTERM left a claimed job behind"
        for name in os.listdir(d.spool / "incoming"):
            assert not (d.spool / "incoming" / name / "claim.json").exists()
        logs.append(d.log())
    d.log_path = d.tmp / "cesard.final.log"
    d.start()
    wait_until(lambda: count_in(d.spool, "done") + count_in(d.spool, "failed") >= n_jobs,
               120, "every job to be finished")
    assert d.stop() == 0
    logs.append(d.log())
    results = assert_clean_end(d, tokens, max_runs=1)
    assert all(r["attempts"] == 1 and r["errors"] == [] for r in results)
    requeued = sum(t.count("(shutdown grace expired); no attempt counted") for t in logs)
    assert requeued >= 1, "no SIGTERM hit a running job: the test proved nothing"
    assert_no_concurrent_runs(logs)
    print(f"\nSIGTERM torture: {n_jobs} jobs, {stops} stops, {requeued} requeues")


# --- 4. cancel of a running job is quick ------------------------------------------

def test_cancel_running_job_within_one_second(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    s = Spool(d.spool)
    worst = 0.0
    for i in range(3):
        job = d.submit_bytes(f"long{i}.wav", fake_script(sleep=60, text=f"long {i}"))
        wait_until(lambda j=job: (d.spool / "processing" / j / "claim.json").exists(),  # type: ignore[misc]
                   10, "the job to be claimed")
        wait_until(lambda j=job: any(r["id"] == j for r in (d.status() or {}).get("running", [])),
                   10, "the job to run")
        t = time.monotonic()
        publish.request(s, "cancel", job, "test")
        res = wait_until(lambda j=job: d.result(j), 5, "the cancelled result", interval=0.005)
        took = time.monotonic() - t
        worst = max(worst, took)
        assert res["status"] == "cancelled" and res["error"]["type"] == "Cancelled"
        assert (d.spool / "failed" / job).is_dir()
        assert took < 1.0, f"cancel took {took:.2f} s"
    # The worker that was killed is replaced: the daemon still transcribes.
    ok = d.submit_bytes("ok.wav", fake_script(text="after cancels"))
    assert d.wait_result(ok)["text"] == "after cancels"
    print(f"\ncancel latency: worst {worst * 1000:.0f} ms")


# --- 7. priority order and exclusive jobs, two workers ---------------------------------

def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"])


def test_exclusive_job_runs_alone_and_others_in_pairs(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    d.signal(signal.SIGSTOP)
    before = [d.submit_bytes(f"b{i}.wav", fake_script(sleep=0.4, text=f"b{i}")) for i in range(4)]
    excl = d.submit_bytes("x.wav", fake_script(sleep=0.4, text="x"), "--exclusive")
    after = [d.submit_bytes(f"a{i}.wav", fake_script(sleep=0.4, text=f"a{i}")) for i in range(4)]
    d.signal(signal.SIGCONT)
    res = {j: d.wait_result(j, 30) for j in [*before, excl, *after]}
    assert all(r["status"] == "done" for r in res.values())
    x = res[excl]
    for j in [*before, *after]:
        assert not overlaps(x, res[j]), f"exclusive job overlapped {j}: {x} {res[j]}"
    # FIFO around it: everything submitted before starts before it, the rest after.
    assert all(res[j]["started_at"] < x["started_at"] for j in before)
    assert all(res[j]["started_at"] >= x["finished_at"] for j in after)
    pairs = sum(overlaps(res[a], res[b]) for a, b in zip(before[::2], before[1::2], strict=True))
    pairs += sum(overlaps(res[a], res[b]) for a, b in zip(after[::2], after[1::2], strict=True))
    assert pairs == 4, "normal jobs did not run two at a time"


def test_priority_order_with_two_workers(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    d.signal(signal.SIGSTOP)
    ids: dict[str, list[str]] = {"low": [], "normal": [], "high": []}
    for i, prio in enumerate(["low", "normal", "low", "high", "normal", "high", "normal",
                              "high"]):
        ids[prio].append(d.submit_bytes(f"{prio}{i}.wav", fake_script(sleep=0.3, text=prio),
                                        "--priority", prio))
    d.signal(signal.SIGCONT)
    res = {j: d.wait_result(j, 30) for js in ids.values() for j in js}
    start = {p: sorted(res[j]["started_at"] for j in js) for p, js in ids.items()}
    # Two workers: a level may start while the previous one's last job still runs,
    # but never before any job of a higher level has started.
    assert start["high"][-1] <= start["normal"][0], start
    assert start["normal"][-1] <= start["low"][0], start
    # And within one level, submission order (FIFO).
    for js in ids.values():
        assert [res[j]["started_at"] for j in js] == sorted(res[j]["started_at"] for j in js)


# --- 8. size limits reject before decoding -------------------------------------------

def test_size_limits_reject_before_decoding(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(max_file_bytes=4096, max_audio_seconds=60).start()
    big = d.submit_bytes("big.wav", fake_script(text="too big") + b"\0" * 5000)
    edge = d.submit_bytes("edge.wav", fake_script(text="fits").ljust(4096, b"\n"))
    # duration is checked before the (one hour) sleep: a prompt rejection proves it.
    long = d.submit_bytes("long.wav", fake_script(duration=7200, sleep=3600, text="too long"))
    fine = d.submit_bytes("fine.wav", fake_script(duration=59, text="fits in time"))
    t = time.monotonic()
    rb, rl = d.wait_result(big, 10), d.wait_result(long, 10)
    assert time.monotonic() - t < 10
    assert rb["status"] == "failed" and rb["error"]["type"] == "FileTooLarge"
    assert "big.wav" in rb["error"]["message"] and "max_file_bytes=4096" in rb["error"]["message"]
    assert rb["error"]["retryable"] is False and rb["attempts"] == 1
    assert rl["status"] == "failed" and rl["error"]["type"] == "AudioTooLong"
    assert "long.wav" in rl["error"]["message"]
    assert "max_audio_seconds=60" in rl["error"]["message"]
    assert d.wait_result(edge)["status"] == "done"
    assert d.wait_result(fine)["text"] == "fits in time"
    # A bare file over the limit is rejected the same way, by name.
    put_bare(d.spool, "bare-big.wav", b"x" * 5000)
    res = wait_until(lambda: [r for r in d.results() if r["error"]
                              and "bare-big.wav" in r["error"]["message"]], 10, "bare-big")
    assert res[0]["error"]["type"] == "FileTooLarge"


# --- claims cut short by kill -9, made deterministic ------------------------------------

def test_bare_claims_cut_short_are_finished_not_failed(make_daemon: Callable[..., Daemon]) -> None:
    """kill -9 inside a bare-file claim: before the file moved, or before job.json."""
    import dataclasses
    import subprocess
    import sys

    from cesard import job as jobmod
    from cesard.lease import Claimer
    from cesard.spool import LEASE

    d = make_daemon()
    s = Spool(d.spool)
    s.create()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = dataclasses.replace(Claimer.me(), pid=dead.pid, pid_start=1)
    # 1. The claim made its directory and lease, then died: the file is still queued.
    empty = jobmod.new_job_id()
    (d.spool / "processing" / empty).mkdir()
    (d.spool / "processing" / empty / LEASE).write_bytes(gone.lease(time.time()))
    put_bare(d.spool, "still-queued.wav", fake_script(text="tok-queued"))
    # 2. The claim moved the file in, then died before writing job.json.
    moved = jobmod.new_job_id()
    (d.spool / "processing" / moved).mkdir()
    (d.spool / "processing" / moved / LEASE).write_bytes(gone.lease(time.time()))
    (d.spool / "processing" / moved / "moved-in.wav").write_bytes(fake_script(text="tok-moved"))
    d.start()
    wait_until(lambda: count_in(d.spool, "done") + count_in(d.spool, "failed") >= 2, 20,
               "both jobs to finish")
    wait_until(lambda: not os.listdir(d.spool / "processing"), 10, "processing/ to empty")
    results = assert_clean_end(d, ["tok-queued", "tok-moved"], max_runs=1)
    by_text = {r["text"]: r for r in results}
    assert by_text["tok-moved"]["id"] == moved
    assert by_text["tok-moved"]["source"]["name"] == "moved-in.wav"
    assert by_text["tok-moved"]["attempts"] == 1  # it never ran: no attempt counted
    assert not (d.spool / "done" / empty).exists()
