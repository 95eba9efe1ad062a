"""Operating cesard without systemd: --detach, --drain, cesarctl status and health."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from helpers import BIN, Daemon, fake_script, on_terminal, wait_until

ME = pwd.getpwuid(os.geteuid()).pw_name  # the owner of what the tests submit


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for whoever adopted it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# --- --detach ------------------------------------------------------------------------

@pytest.fixture
def detached(tmp_path: Path) -> Iterator[list[int]]:
    """Pids of detached daemons; SIGKILLed at teardown if a test left one running."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def launch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "CESAR_SPOOL", "CESAR_CONFIG", "JOURNAL_STREAM")}
    return subprocess.run([str(BIN / "cesard"), "--config", "cesard.yaml", "--spool", "spool",
                           "--detach", "--pidfile", "run/cesard.pid", "--log-file",
                           "cesard.log", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30)


def test_detach_pidfile_log_reload_and_stop(tmp_path: Path, detached: list[int]) -> None:
    # Relative paths on purpose: the daemon changes to / and must still find them.
    (tmp_path / "run").mkdir()
    (tmp_path / "cesard.yaml").write_text(yaml.safe_dump(
        {"engine": "fake", "workers": 1, "settle_seconds": 0.5}))
    pidfile, logfile = tmp_path / "run" / "cesard.pid", tmp_path / "cesard.log"
    d = Daemon(tmp_path)

    r = launch(tmp_path)
    assert r.returncode == 0, r.stderr
    pid = wait_until(lambda: read_pid(pidfile), 10, "the pidfile")
    detached.append(pid)
    # The launching process has exited; the daemon lives on in a session of its own.
    assert alive(pid)
    assert os.getsid(pid) != os.getsid(0)
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    # The launcher returned only once the daemon was ready.
    assert "ready: 1 worker(s)" in logfile.read_text()
    job = d.submit_bytes("a.wav", fake_script(text="detached and working", sleep=0.2))
    res = d.wait_result(job)
    assert res["status"] == "done" and res["text"] == "detached and working"
    # (the summary line follows the result's rename by a moment)
    wait_until(lambda: f"job={job} done: file=a.wav" in logfile.read_text(), 10,
               "the job's summary line")
    log = logfile.read_text()
    assert "cesard-worker" not in log or "Traceback" not in log

    # A second start with the same pidfile refuses at once, and says why.
    r = launch(tmp_path)
    assert r.returncode == 75 and f"already running as pid {pid}" in r.stderr, r
    assert read_pid(pidfile) == pid

    # SIGHUP re-reads the (relative) configuration.
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in logfile.read_text(), 10, "the reload")
    assert "reload failed" not in logfile.read_text()

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 30, "the daemon to exit")
    assert not pidfile.exists()
    assert "stopped: 1 done" in logfile.read_text()


def test_detach_without_a_log_file_returns_once_ready(tmp_path: Path,
                                                       detached: list[int]) -> None:
    """The README's `cesard --detach --pidfile ~/d.pid` with no --log-file never returned:
    python-daemon leaves fds 0-2 close-on-exec, workers died, the start hung silently."""
    (tmp_path / "run").mkdir()
    (tmp_path / "cesard.yaml").write_text(yaml.safe_dump({"engine": "fake", "workers": 2}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "CESAR_SPOOL", "CESAR_CONFIG", "JOURNAL_STREAM")}
    r = subprocess.run([str(BIN / "cesard"), "--config", "cesard.yaml", "--spool", "spool",
                        "--detach", "--pidfile", "run/cesard.pid"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pid = wait_until(lambda: read_pid(tmp_path / "run" / "cesard.pid"), 10, "the pidfile")
    detached.append(pid)
    d = Daemon(tmp_path)
    job = d.submit_bytes("a.wav", fake_script(text="no log file"))
    assert d.wait_result(job)["text"] == "no log file"
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 30, "the daemon to stop")


def test_detach_reports_a_daemon_that_dies_before_ready(tmp_path: Path,
                                                        detached: list[int]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "cesard.yaml").write_text(yaml.safe_dump(
        {"engine": "faster-whisper", "workers": 1,
         "models": {"tiny.en": str(tmp_path / "no-such-model")}}))
    r = launch(tmp_path)
    assert r.returncode == 1, r
    assert "exited before it was ready" in r.stderr and "cesard.log" in r.stderr
    log = (tmp_path / "cesard.log").read_text()
    assert "no-such-model" in log and "ModelLoadError" in log
    assert not (tmp_path / "run" / "cesard.pid").exists()


def test_detach_replaces_a_stale_pidfile(tmp_path: Path, detached: list[int]) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "cesard.yaml").write_text(yaml.safe_dump({"engine": "fake", "workers": 1}))
    pidfile = tmp_path / "run" / "cesard.pid"
    assert launch(tmp_path).returncode == 0
    pid = wait_until(lambda: read_pid(pidfile), 10, "the pidfile")
    detached.append(pid)
    os.kill(pid, signal.SIGKILL)  # leaves its pidfile behind
    wait_until(lambda: not alive(pid), 10, "the daemon to die")
    assert read_pid(pidfile) == pid

    r = launch(tmp_path)
    assert r.returncode == 0, r.stderr
    new = wait_until(lambda: read_pid(pidfile) if read_pid(pidfile) != pid else None, 10,
                     "a new pidfile")
    detached.append(new)
    wait_until(lambda: alive(new) and "ready:" in (tmp_path / "cesard.log").read_text()
               .split(f"[{new}]", 1)[-1], 20, "the new daemon to be ready")
    assert "Traceback" not in (tmp_path / "cesard.log").read_text()
    os.kill(new, signal.SIGTERM)
    wait_until(lambda: not alive(new), 30, "the daemon to exit")


def test_worker_does_not_import_cesard_from_the_current_directory(
        make_daemon: Callable[..., Daemon], monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone starts cesard from a directory holding something called cesard/.
    d = make_daemon()
    planted = d.tmp / "cwd" / "cesard"
    planted.mkdir(parents=True)
    marker = d.tmp / "planted-code-ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted.parent)
    d.start()
    job = d.submit_bytes("a.wav", fake_script(text="real code"))
    assert d.wait_result(job)["text"] == "real code"
    assert not marker.exists(), "a worker imported cesard from the current directory"


# --- --drain -------------------------------------------------------------------------

def queue_before_start(d: Daemon, *scripts: bytes) -> list[str]:
    subprocess.run([str(BIN / "cesard"), "--spool", str(d.spool), "--init"], check=True,
                   capture_output=True, timeout=30)
    return [d.submit_bytes(f"j{i}.wav", s) for i, s in enumerate(scripts)]


def test_drain_processes_the_queue_then_exits_0(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2)
    ids = queue_before_start(d, *(fake_script(text=f"t{i}", sleep=0.2) for i in range(4)))
    d.start(wait_ready=False, args=("--drain",))
    assert d.wait_exit(60) == 0, d.log()
    assert d.entries("done") == sorted(ids)
    assert d.entries("incoming") == d.entries("processing") == []
    assert "drain: the queue is empty" in d.log()


def test_drain_with_an_empty_queue_exits_0(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.start(wait_ready=False, args=("--drain",))
    assert d.wait_exit(30) == 0, d.log()


def test_drain_exits_1_if_a_job_failed_after_finishing_the_rest(
        make_daemon: Callable[..., Daemon]) -> None:
    # A job that crashes its worker is retried (deferred) first: drain waits for that too.
    d = make_daemon(workers=1, max_attempts=2, retry_delays=[0.3])
    ok1, bad, crash, ok2 = queue_before_start(
        d, fake_script(text="a"), fake_script(fail="UndecodableAudio"),
        fake_script(crash=True), fake_script(text="b"))
    d.start(wait_ready=False, args=("--drain",))
    assert d.wait_exit(60) == 1, d.log()
    assert d.entries("done") == sorted([ok1, ok2])
    assert d.entries("failed") == sorted([bad, crash])
    assert d.result(crash)["attempts"] == 2  # type: ignore[index]
    assert d.entries("incoming") == d.entries("deferred") == d.entries("processing") == []


# --- cesarctl status -----------------------------------------------------------------

def test_status_shows_daemon_workers_running_job_and_queue(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1).start()
    assert d.proc is not None
    long = d.submit_bytes("long.wav", fake_script(sleep=20, duration=60))
    wait_until(lambda: any(r["progress"] > 0.05 and r["eta_s"]
                           for r in (d.status() or {}).get("running", [])), 20,
               "the long job to make progress")
    queued = [d.submit_bytes(f"q{i}.wav", fake_script(text="q")) for i in range(2)]
    wait_until(lambda: (d.status() or {}).get("queue", {}).get("incoming") == 2, 10,
               "the daemon to see the queued jobs")

    r = d.ctl("status", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    st = data["status"]
    assert data["daemon"] == "running"
    assert st["pid"] == d.proc.pid and st["state"] == "running"
    assert 0 < data["uptime_s"] < 120
    assert [w["ready"] for w in st["workers"]] == [True]
    (run,) = st["running"]
    assert run["id"] == long and run["file"] == "long.wav"
    assert 0 < run["progress"] < 1 and run["eta_s"] > 0
    assert data["queue"] == {"incoming": 2, "processing": 1, "deferred": 0, "done": 0,
                             "failed": 0}
    assert st["oldest_queued_age_s"] >= 0

    code, text = on_terminal(d, "status")
    assert code == 0, text
    assert re.search(rf"daemon: +running, pid {d.proc.pid} on \S+, up \d+s, engine fake "
                     r"\(tiny\.en\), 1 worker\(s\)", text), text
    assert "queue:   2 incoming, 1 processing, 0 deferred, 0 done, 0 failed" in text, text
    assert re.search(r"oldest: +queued \d+s ago", text), text
    assert re.search(rf"running: {long} long\.wav \d+%, ETA \d+s", text), text
    assert queued[0] not in text  # queued jobs are counted, not listed

    # The daemon stopped: status says so and exits 3.
    d.ctl("cancel", long, check=True)
    assert d.stop() == 0
    r = d.ctl("status", "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["daemon"] == "not running"
    code, text = on_terminal(d, "status")
    assert code == 3 and "daemon:  not running" in text, text


# --- cesarctl health -----------------------------------------------------------------

def health(d: Daemon) -> tuple[int, str]:
    r = d.ctl("health")
    assert r.stderr == "", r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.endswith("\n"), repr(r.stdout)
    return r.returncode, r.stdout.strip()


def test_health_ok_warning_critical(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, queue_capacity=5).start()
    code, line = health(d)
    assert code == 0 and line.startswith("CESARD OK - backlog 0/5"), line

    blocker = d.submit_bytes("block.wav", fake_script(sleep=60))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the blocking job to run")

    def backlog(n: int) -> bool:
        return (d.status() or {}).get("queue", {}).get("incoming") == n

    for i in range(3):
        d.submit_bytes(f"q{i}.wav", fake_script(text="q"))
    wait_until(lambda: backlog(3), 10, "a backlog of 3")
    code, line = health(d)
    assert code == 0 and "backlog 3/5" in line, line  # 60 % of queue_capacity

    d.submit_bytes("q3.wav", fake_script(text="q"))
    wait_until(lambda: backlog(4), 10, "a backlog of 4")
    code, line = health(d)
    assert code == 1 and line.startswith("CESARD WARNING - backlog 4/5"), line  # 80 %

    d.submit_bytes("q4.wav", fake_script(text="q"))
    wait_until(lambda: backlog(5), 10, "a backlog of 5")
    code, line = health(d)
    assert code == 2 and line.startswith("CESARD CRITICAL - backlog 5/5"), line  # 100 %
    assert "| backlog=5;4;5;0" in line  # performance data for graphs

    d.ctl("cancel", blocker, check=True)
    wait_until(lambda: backlog(0) and not (d.status() or {}).get("running"), 20,
               "the queue to empty")
    code, line = health(d)
    assert code == 0 and "backlog 0/5, 5 done" in line, line

    assert d.stop() == 0  # stopped cleanly: still CRITICAL, nothing is being processed
    code, line = health(d)
    assert code == 2 and line.startswith("CESARD CRITICAL - cesard is not running"), line


def test_health_critical_when_the_daemon_died_or_is_stale(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    assert health(d)[0] == 0
    d.kill_all()  # status.json still says "running", but its pid is gone
    assert (d.status() or {}).get("state") == "running"
    code, line = health(d)
    assert code == 2 and "not running" in line, line

    # A live pid that stopped updating its status (hung): stale after 30 s.
    st = d.status()
    assert st is not None
    st["pid"] = os.getpid()
    st["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(time.time() - 60))
    (d.spool / "state" / "status.json").write_text(json.dumps(st))
    code, line = health(d)
    assert code == 2 and "stopped updating" in line, line
    st["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    (d.spool / "state" / "status.json").write_text(json.dumps(st))
    assert health(d)[0] == 0  # the same file, fresh: OK (the check above can fail)


def test_health_unknown_without_a_spool(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "cesarctl"), "--spool", str(tmp_path / "nope"), "health"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r
    assert r.stdout.startswith("CESARD UNKNOWN - ") and r.stdout.count("\n") == 1, r.stdout
    assert str(tmp_path / "nope") in r.stdout and r.stderr == ""


def test_health_critical_before_the_daemon_ever_ran(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    subprocess.run([str(BIN / "cesard"), "--spool", str(spool), "--init"], check=True,
                   capture_output=True, timeout=30)
    r = subprocess.run([str(BIN / "cesarctl"), "--spool", str(spool), "health"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and r.stdout.startswith("CESARD CRITICAL - no status"), r


def test_list_and_show_on_a_terminal_are_for_people(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    ok = d.submit_bytes("meeting.wav", fake_script(text="fine", duration=65))
    bad = d.submit_bytes("broken.wav", fake_script(fail="EngineError"))
    d.wait_result(ok)
    d.wait_result(bad)
    env = {k: v for k, v in d.env.items() if k != "NO_COLOR"}
    code, out = on_terminal(d, "list", env=env)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATE", "OWNER", "NAME", "AUDIO", "AGE", "PROGRESS"]
    row = next(ln for ln in lines if ok in ln)
    assert "meeting.wav" in row and ME in row and "65 s" in row and "ago" in row
    assert "\033[32mdone\033[0m" in row and "\033[31mfailed" in out  # colour on a terminal
    code, out = on_terminal(d, "list", env={**env, "NO_COLOR": "1"})
    assert "\033[" not in out and "done" in out
    piped = d.ctl("list").stdout  # scripts: the tab-separated lines, unchanged
    assert f"{ok}\tdone\tdone\tmeeting.wav\t{ME}" in piped.splitlines()
    code, out = on_terminal(d, "show", ok)
    assert f"owner:     {ME}" in out and "text:      fine" in out and not out.startswith("{")
