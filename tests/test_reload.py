"""Reloads and configuration files as a careless administrator leaves them (issue 20).

An emptied or truncated file is refused on SIGHUP and the running configuration kept;
``cesard --reload`` (systemd's ExecReload) waits for the daemon's answer and fails on a
refusal; a broken file never stops a member from queueing.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import yaml
from helpers import BIN, Daemon, fake_script, wait_until


def reload(d: Daemon) -> subprocess.CompletedProcess[str]:
    assert d.proc is not None
    return subprocess.run([str(BIN / "cesard"), "--config", str(d.config_path), "--spool",
                           str(d.spool), "--reload", "--pid", str(d.proc.pid)],
                          capture_output=True, text=True, timeout=90, env=d.env)


def test_an_emptied_or_truncated_file_is_refused_and_the_running_one_kept(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1, max_attempts=2, queue_capacity=500).start()
    good = d.config_path.read_text()
    for broken in ("", "# all commented out\n", yaml.safe_dump({"workers": 1})):
        d.config_path.write_text(broken)
        r = reload(d)
        assert r.returncode == 1, (broken, r)
        assert "reload failed, keeping the running configuration" in r.stderr, r.stderr
        assert "empty" in r.stderr or "'engine'" in r.stderr, r.stderr
    # Still the fake engine: a job is done as before (the default engine would fail it).
    job = d.submit_bytes("after.wav", fake_script(text="still the running configuration"))
    assert d.wait_result(job)["text"] == "still the running configuration"
    # A good change is taken, and said so.
    d.config_path.write_text(good.replace("queue_capacity: 500", "queue_capacity: 400"))
    r = reload(d)
    assert r.returncode == 0 and "configuration reloaded" in r.stdout, r
    wait_until(lambda: (d.status() or {}).get("queue_capacity") == 400, 10, "the new capacity")
    # Dropping one key that matters nothing for jobs is a change, not a truncation.
    d.config_path.write_text(good.replace("queue_capacity: 500\n", ""))
    assert reload(d).returncode == 0
    assert d.proc is not None and d.proc.poll() is None
    assert "Traceback" not in d.log()


def test_a_typo_says_what_was_meant(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    d.config["wrokers"] = 2
    d.write_config()
    r = subprocess.run([str(BIN / "cesard"), "--config", str(d.config_path), "--check-config"],
                       capture_output=True, text=True, env=d.env)
    assert r.returncode == 78 and "did you mean 'workers'?" in r.stderr, r.stderr


def test_a_broken_file_never_stops_a_member_from_queueing(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1).start()
    d.config_path.write_text(d.config_path.read_text() + "wrokers: 2\n")
    src = d.tmp / "queued.wav"
    src.write_bytes(fake_script(text="queued despite the typo"))
    r = d.ctl("submit", str(src))
    assert r.returncode == 0, r.stderr
    assert "warning" in r.stderr and "wrokers" in r.stderr, r.stderr
    assert d.wait_result(r.stdout.strip())["text"] == "queued despite the typo"
    # The daemon down: health says CRITICAL (2), not UNKNOWN, despite the broken file.
    assert d.stop() == 0
    h = d.ctl("health")
    assert h.returncode == 2 and h.stdout.startswith("CESARD CRITICAL"), (h.stdout, h.stderr)
