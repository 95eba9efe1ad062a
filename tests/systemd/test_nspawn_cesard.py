"""The real cesard (this checkout, built with `pip wheel`) under the real units
in a booted systemd: start -> READY, a job from a member of group cesar, a bare
file, reload, stop -> Result=success, prune."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import nspawn
import pytest
from test_nspawn_smoke import UNITS

REPO = Path(__file__).resolve().parents[2]
WAV = ("import wave; w = wave.open('/tmp/s.wav', 'wb'); w.setnchannels(1); "
       "w.setsampwidth(2); w.setframerate(16000); w.writeframes(bytes(64000)); w.close()")


@pytest.fixture(scope="module")
def cesard_container(container_requirements):
    c = nspawn.boot_started(container_requirements, [str(REPO)], f"cesard-test-{os.getpid()}-real")
    try:
        for name in ("cesard.service", "cesard@.service", "cesar-prune.service",
                     "cesar-prune.timer"):
            c.put(f"/etc/systemd/system/{name}", (UNITS / name).read_text())
        c.put("/usr/lib/sysusers.d/cesard.conf", (UNITS / "cesard.sysusers").read_text())
        c.put("/usr/lib/tmpfiles.d/cesard.conf", (UNITS / "cesard.tmpfiles").read_text())
        c.put("/etc/cesar/cesard.yaml", (REPO / "packaging" / "cesard.yaml").read_text())
        c.run(f"ln -sf {nspawn.VENV}/bin/cesard /usr/bin/cesard && "
              f"ln -sf {nspawn.VENV}/bin/cesarctl /usr/bin/cesarctl")
        c.run("systemd-sysusers cesard.conf && systemd-tmpfiles --create cesard.conf && "
              "useradd -m -G cesar alice")
        c.run([f"{nspawn.VENV}/bin/python3", "-c", WAV])
        c.run("chmod 644 /tmp/s.wav")
        c.systemctl("daemon-reload")
        yield c
    finally:
        c.poweroff()


def test_cesard_under_systemd(cesard_container: nspawn.Container) -> None:
    c = cesard_container
    t0 = time.monotonic()
    c.systemctl("start", "cesard.service")
    print(f"start to READY: {time.monotonic() - t0:.2f} s")
    p = c.show("cesard.service", "ActiveState", "SubState", "StatusText")
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    assert "queued" in p["StatusText"], p

    r = c.run("runuser -u alice -- cesarctl submit --json --wait --timeout 120 /tmp/s.wav",
              check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)

    c.run("cp /tmp/s.wav /var/spool/cesar/incoming/bare.wav")
    deadline = time.monotonic() + 60
    while not c.run("ls /var/spool/cesar/done").stdout.count("\n") >= 2:
        assert time.monotonic() < deadline, c.journal("cesard.service")
        time.sleep(0.5)
    # privacy: owner under the real units: alice reads her job's result, not root's.
    owners = {}
    for d in c.run("ls /var/spool/cesar/done").stdout.split():
        res = json.loads(c.run(f"cat /var/spool/cesar/done/{d}/result.json").stdout)
        assert res["status"] == "done" and res["text"] == "", res
        owners[res["owner"]["name"]] = d
    assert set(owners) == {"alice", "root"}, owners
    mine = c.run(f"runuser -u alice -- cat /var/spool/cesar/done/{owners['alice']}/result.json",
                 check=False)
    assert mine.returncode == 0 and json.loads(mine.stdout)["submitter"] == "alice"
    theirs = c.run(f"runuser -u alice -- cat /var/spool/cesar/done/{owners['root']}/result.json",
                   check=False)
    assert theirs.returncode != 0 and "Permission denied" in theirs.stderr, theirs

    c.systemctl("reload", "cesard.service")
    c.wait_journal("cesard.service", "configuration reloaded")
    assert c.show("cesard.service", "ActiveState")["ActiveState"] == "active"

    c.systemctl("stop", "cesard.service")
    p = c.show("cesard.service", "Result", "ExecMainStatus", "NRestarts")
    assert p == {"Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, p
    log = c.journal("cesard.service")
    assert "configuration reloaded" in log and "done" in log, log

    c.systemctl("start", "cesar-prune.service")
    assert c.show("cesar-prune.service", "Result")["Result"] == "success"


def _cursor(c: nspawn.Container) -> str:
    """The journal's current end, for reading only what comes after it."""
    c.run(["journalctl", "--sync"], check=False)
    out = c.run(["journalctl", "-n", "0", "--show-cursor", "--no-pager"]).stdout
    return out.strip().rsplit("-- cursor: ", 1)[1]


def _journal_after(c: nspawn.Container, cursor: str, *args: str) -> str:
    c.run(["journalctl", "--sync"], check=False)
    return c.run(["journalctl", "--no-pager", "-o", "cat", "-u", "cesard.service",
                  f"--after-cursor={cursor}", *args]).stdout


def _wait(pred, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


def test_non_member_of_group_cesar_is_refused(cesard_container: nspawn.Container) -> None:
    c = cesard_container
    c.run("id bob >/dev/null 2>&1 || useradd -m bob")
    assert "cesar" not in c.run("id -nG bob").stdout.split()
    r = c.run("runuser -u bob -- cesarctl submit /tmp/s.wav", check=False)
    assert r.returncode == 77, (r.returncode, r.stdout, r.stderr)
    assert "group 'cesar'" in r.stderr and "permission denied" in r.stderr, r.stderr
    assert r.stdout == ""
    for cmd in ("status", "list"):
        r = c.run(f"runuser -u bob -- cesarctl {cmd}", check=False)
        assert r.returncode == 77 and "group 'cesar'" in r.stderr, (cmd, r)
    r = c.run("runuser -u bob -- cesarctl health", check=False)
    assert r.returncode == 3 and r.stdout.startswith("CESARD UNKNOWN") and "group 'cesar'" in \
        r.stdout, r
    # nothing of bob's reached the spool
    assert c.run("ls /var/spool/cesar/incoming /var/spool/cesar/tmp").stdout.split() == [
        "/var/spool/cesar/incoming:", "/var/spool/cesar/tmp:"]


def test_journal_priorities_reload_and_stop(cesard_container: nspawn.Container) -> None:
    c = cesard_container
    cursor = _cursor(c)
    c.systemctl("start", "cesard.service")
    pid = c.show("cesard.service", "MainPID")["MainPID"]
    c.run("head -c 65536 /dev/urandom > /tmp/junk.wav && chmod 644 /tmp/junk.wav")
    good = c.run("runuser -u alice -- cesarctl submit /tmp/s.wav").stdout.strip()
    bad = c.run("runuser -u alice -- cesarctl submit /tmp/junk.wav").stdout.strip()
    r = c.run(f"runuser -u alice -- cesarctl wait --timeout 120 {good} {bad}", check=False)
    assert r.returncode == 65 and f"{good} done" in r.stdout and f"{bad} failed" in r.stdout, r

    log = _journal_after(c, cursor)
    print("journalctl -u cesard (this test):\n" + log)
    for job in (good, bad):
        assert f"job={job} claimed:" in log, log
    assert re.search(rf"job={good} done: file=s\.wav duration=2\.0s realtime=[0-9.]+x "
                     r"attempts=1 status=done", log), log
    # -p err: exactly the failed job, once. (The whole boot: no earlier test here fails a
    # job; journalctl 252 drops -p matches combined with --after-cursor.)
    c.run(["journalctl", "--sync"], check=False)
    errors = c.run("journalctl --no-pager -o cat -p err -u cesard").stdout.splitlines()
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"job={bad} failed: file=junk.wav UndecodableAudio:"), \
        errors
    # Every line cesard wrote carried its own priority: none reached the journal as raw
    # text, failures are 3, a worker's view of them 4, the rest 6.
    raw = c.run(["journalctl", "--no-pager", "-o", "json", "-u", "cesard.service",
                 f"--after-cursor={cursor}", "_TRANSPORT=stdout"]).stdout
    msgs = [json.loads(x) for x in raw.splitlines() if x.strip()]
    assert msgs and all(not str(m.get("MESSAGE", "")).startswith("<") for m in msgs), msgs[:3]
    by_prio = {p: [m["MESSAGE"] for m in msgs if m["PRIORITY"] == p] for p in "0123456789"}
    assert by_prio["3"] == errors, by_prio["3"]
    assert all(m.startswith(f"worker: job={bad} failed:") for m in by_prio["4"]), by_prio
    assert sum(len(v) for k, v in by_prio.items() if k not in "346") == 0, by_prio
    assert all("job=" in m for m in by_prio["6"] if good in m or "s.wav" in m)

    # reload: RELOADING=1 ... READY=1 (systemd waits for it), the same process goes on
    c.systemctl("reload", "cesard.service")
    _wait(lambda: "configuration reloaded" in _journal_after(c, cursor), 20, "the reload")
    p = c.show("cesard.service", "ActiveState", "SubState", "MainPID")
    assert p == {"ActiveState": "active", "SubState": "running", "MainPID": pid}, p
    # a job submitted after the reload is served
    r = c.run("runuser -u alice -- cesarctl submit --wait --timeout 120 /tmp/s.wav", check=False)
    assert r.returncode == 0, r

    c.systemctl("stop", "cesard.service")
    p = c.show("cesard.service", "ActiveState", "Result", "ExecMainStatus")
    assert p == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, p
    assert "stopped: 2 done, 1 failed" in _journal_after(c, cursor)


WATCHDOG_DROPIN = """[Service]
WatchdogSec=2s
RestartSec=1s
TimeoutAbortSec=10s
LimitCORE=0
"""


def test_hung_main_loop_is_killed_by_the_watchdog_and_restarted(
        cesard_container: nspawn.Container) -> None:
    c = cesard_container
    c.put("/etc/systemd/system/cesard.service.d/50-test-watchdog.conf", WATCHDOG_DROPIN)
    c.systemctl("daemon-reload")
    c.systemctl("reset-failed", "cesard.service", check=False)
    try:
        cursor = _cursor(c)
        c.systemctl("stop", "cesard.service")  # whatever an earlier test left
        c.systemctl("start", "cesard.service")
        before = c.show("cesard.service", "MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == "2s", before
        # Running normally, the pings keep it alive well past WatchdogSec.
        _wait(lambda: c.show("cesard.service", "WatchdogTimestampMonotonic")
              ["WatchdogTimestampMonotonic"] not in ("", "0"), 10, "a first watchdog ping")
        # The loop's pings keep it alive well past WatchdogSec (the same clock: no time
        # namespace between host and container).
        def alive_for(seconds: float) -> bool:
            p = c.show("cesard.service", "MainPID", "ActiveEnterTimestampMonotonic")
            assert p["MainPID"] == before["MainPID"], "restarted while healthy"
            return time.monotonic() - int(p["ActiveEnterTimestampMonotonic"]) / 1e6 > seconds
        _wait(lambda: alive_for(5.0), 20, "5 s of healthy running (2.5 x WatchdogSec)")
        assert c.show("cesard.service", "NRestarts") == {"NRestarts": before["NRestarts"]}
        t0 = time.monotonic()
        c.run(["kill", "-STOP", before["MainPID"]])  # the loop hangs
        after = _wait(lambda: (lambda p: p if p["NRestarts"] == str(int(before["NRestarts"]) + 1)
                               and p["ActiveState"] == "active" and p["SubState"] == "running"
                               else None)(c.show("cesard.service", "NRestarts", "ActiveState",
                                                 "SubState", "MainPID")),
                      60, "the watchdog to restart cesard")
        print(f"hung loop to restarted and READY: {time.monotonic() - t0:.1f} s")
        assert after["MainPID"] != before["MainPID"], after
        log = c.run(["journalctl", "--no-pager", "-o", "cat", "-u", "cesard.service",
                     f"--after-cursor={cursor}"]).stdout
        assert "Watchdog timeout" in log and "Failed with result 'watchdog'" in log, log
        # The restarted daemon serves jobs.
        r = c.run("runuser -u alice -- cesarctl submit --wait --timeout 120 /tmp/s.wav",
                  check=False)
        assert r.returncode == 0, r
        capture(c)
    finally:
        c.run("rm -f /etc/systemd/system/cesard.service.d/50-test-watchdog.conf")
        c.systemctl("daemon-reload")


def capture(c: nspawn.Container) -> None:
    """What an operator sees, printed for the record (pytest -s)."""
    print("\n$ systemctl status cesard")
    print(c.systemctl("status", "cesard.service", check=False).stdout)
    print("$ journalctl -u cesard -n 12")
    print(c.run(["journalctl", "--no-pager", "-u", "cesard.service", "-n", "12"]).stdout)
    print("$ journalctl -u cesard -p err")
    print(c.run(["journalctl", "--no-pager", "-u", "cesard.service", "-p", "err"]).stdout)
    sec = c.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                 "/etc/systemd/system/cesard.service"], check=False).stdout
    print("$ systemd-analyze security --offline=yes cesard.service | tail -3")
    print("\n".join(sec.splitlines()[-3:]))
