"""The real cesard (this checkout, built with `pip wheel`) under the real units
in a booted systemd: start -> READY, a job from a member of group cesar, a bare
file, reload, stop -> Result=success, prune."""

from __future__ import annotations

import json
import os
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
    for d in c.run("ls /var/spool/cesar/done").stdout.split():
        res = json.loads(c.run(f"runuser -u alice -- cat /var/spool/cesar/done/{d}/result.json")
                         .stdout)
        assert res["status"] == "done" and res["text"] == "", res

    c.systemctl("reload", "cesard.service")
    time.sleep(1)
    assert c.show("cesard.service", "ActiveState")["ActiveState"] == "active"

    c.systemctl("stop", "cesard.service")
    p = c.show("cesard.service", "Result", "ExecMainStatus", "NRestarts")
    assert p == {"Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, p
    log = c.journal("cesard.service")
    assert "configuration reloaded" in log and "done" in log, log

    c.systemctl("start", "cesar-prune.service")
    assert c.show("cesar-prune.service", "Result")["Result"] == "success"
