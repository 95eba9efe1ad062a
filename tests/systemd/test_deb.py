"""The .deb in a booted Debian 12 with real systemd: `apt-get install ./cesard_*.deb`, the
service READY, a member of group cesar submits and reads the result, an upgrade while a job
runs (nothing lost, the job finishes once), remove (service stopped, config and spool kept),
purge (config gone; a spool with jobs kept and said so).

Builds the package with packaging/build-deb (a few minutes, once per session); the upgrade
is the same package repacked with a higher version. Skipped with the reason where the
container cannot be built or the package cannot be.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import nspawn
import pytest

REPO = Path(__file__).resolve().parents[2]
WAV = ("import wave; w = wave.open('/tmp/s.wav', 'wb'); w.setnchannels(1); "
       "w.setsampwidth(2); w.setframerate(16000); w.writeframes(bytes(64000)); w.close()")


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = nspawn.skip_reason()
    if reason:
        pytest.skip(reason)
    if not Path("/usr/bin/python3").exists() or not Path("/usr/bin/dpkg-deb").exists():
        pytest.skip("packaging/build-deb needs Debian's python3 and dpkg-deb")
    out = tmp_path_factory.mktemp("debs")
    t0 = time.monotonic()
    r = subprocess.run([str(REPO / "packaging" / "build-deb")], capture_output=True, text=True,
                       timeout=1500)
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\n[deb] {r.stdout.strip().splitlines()[-1]} (build {time.monotonic() - t0:.0f} s)")
    deb = sorted((REPO / "dist").glob("cesard_*.deb"), key=os.path.getmtime)[-1]
    v1 = out / "cesard_1.deb"
    os.link(deb, v1) if deb.stat().st_dev == out.stat().st_dev else v1.write_bytes(
        deb.read_bytes())
    # The upgrade: the same tree with a higher version.
    tree = out / "tree"
    subprocess.run(["dpkg-deb", "-R", str(v1), str(tree)], check=True)
    control = (tree / "DEBIAN" / "control").read_text()
    version = re.search(r"^Version: (.+)$", control, re.M).group(1)  # type: ignore[union-attr]
    (tree / "DEBIAN" / "control").write_text(control.replace(f"Version: {version}",
                                                             f"Version: {version}+1"))
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "-b", str(tree),
                    str(out / "cesard_2.deb")], check=True, capture_output=True)
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    shutil.copy(REPO / "tests" / "fixtures" / "french.wav", out / "french.wav")
    return out


def test_install_submit_upgrade_remove_purge(debs: Path) -> None:
    rootfs = nspawn.ensure_rootfs()
    with nspawn.Container([rootfs], name=f"cesard-deb-{os.getpid()}",
                          bind_ro={str(debs): "/debs"}) as c:
        # Install: the service starts and is READY (Type=notify) when apt returns.
        r = c.run("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                  "--no-install-recommends /debs/cesard_1.deb", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        p = c.show("cesard.service", "ActiveState", "SubState", "UnitFileState")
        assert p == {"ActiveState": "active", "SubState": "running",
                     "UnitFileState": "enabled"}, (p, c.journal("cesard.service"))
        assert c.show("cesar-prune.timer", "ActiveState")["ActiveState"] == "active"
        assert c.run("man -w cesard 2>/dev/null || ls /usr/share/man/man8/cesard.8.gz"
                     ).returncode == 0
        assert "cesarctl" in c.run("ls /usr/share/bash-completion/completions").stdout
        assert c.run("stat -c %a /var/spool/cesar/incoming").stdout.strip() == "1730"

        # A member submits and reads the result.
        c.run("useradd -m -G cesar alice")
        c.run(["/usr/bin/python3", "-c", WAV])
        c.run("chmod 644 /tmp/s.wav")
        r = c.run("runuser -u alice -- cesarctl submit --json --wait --timeout 120 /tmp/s.wav",
                  check=False)
        assert r.returncode == 0, (r.stdout, r.stderr, c.journal("cesard.service"))
        res = json.loads(r.stdout)
        assert res["status"] == "done" and res["owner"]["name"] == "alice"
        # cesard-http (installed, off until enabled): a token, the unit started, a
        # client lists the models over HTTP with it.
        token = c.run("cesarctl token add ci").stdout.strip()
        c.systemctl("start", "cesard-http.service")
        probe = ("import json, sys, time, urllib.request as u\n"
                 "r = u.Request('http://127.0.0.1:8000/v1/models', headers={'Authorization':"
                 " 'Bearer ' + sys.argv[1]})\n"
                 "for i in range(100):\n"
                 "    try:\n"
                 "        print(json.load(u.urlopen(r))['data'][0]['id']); break\n"
                 "    except OSError: time.sleep(0.2)\n")
        r = c.run(["/usr/bin/python3", "-c", probe, token], check=False)
        assert r.stdout.strip() == "whisper-1", (r.stdout, r.stderr,
                                                c.journal("cesard-http.service"))
        # Languages lead somewhere: French submitted plainly comes back in French (the
        # package ships base; tiny.en's doubt sends it there), and --language fr goes
        # to base at once.
        c.run("cp /debs/french.wav /tmp/fr.wav && chmod 644 /tmp/fr.wav")
        r = c.run("runuser -u alice -- cesarctl submit --json --wait --timeout 300 "
                  "/tmp/fr.wav", check=False, timeout=360)
        assert r.returncode == 0, (r.stdout, r.stderr, c.journal("cesard.service"))
        res = json.loads(r.stdout)
        assert res["language"] == "fr" and "soleil" in res["text"].lower(), res
        assert res["language_fallback"]["to"] == "base", res
        r = c.run("runuser -u alice -- cesarctl submit --json --wait --timeout 300 "
                  "--language fr /tmp/fr.wav", check=False, timeout=360)
        assert r.returncode == 0, (r.stdout, r.stderr)
        res = json.loads(r.stdout)
        assert res["engine"]["model"] == "base" and "soleil" in res["text"].lower(), res

        # Upgrade while a job runs: the restart requeues it, the new version finishes it once.
        # A fake-engine job that sleeps makes "while it runs" certain; dpkg --unpack then
        # --configure is what apt does, split so that the job starts in between.
        # Hooks from the package run as cesar inside the unit's sandbox: one writes its
        # user into the job's directory, one may not write outside the spool.
        # The fake engine obeys any member's file: cesard refuses it on a shared spool
        # unless a test says so.
        c.put("/etc/systemd/system/cesard.service.d/test-fake.conf",
              "[Service]\nEnvironment=CESARD_TEST_FAKE_ENGINE=1\n")
        c.systemctl("daemon-reload")
        c.put("/etc/cesar/cesard.yaml", "engine: fake\nworkers: 1\nshutdown_grace: 2\n"
              "hooks:\n  done:\n"
              "    - [/usr/lib/cesar/hooks/postprocess, --output, who.txt, --, /usr/bin/id,"
              " -un]\n"
              "    - [/usr/lib/cesar/hooks/copy-to, /etc/cesar-archive]\n")
        c.systemctl("restart", "cesard.service")
        c.put("/tmp/long.wav", "#cesard-fake\nsleep: 20\ntext: survived the upgrade\n")
        r = c.run("dpkg --unpack /debs/cesard_2.deb", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        job = c.run("runuser -u alice -- cesarctl submit /tmp/long.wav").stdout.strip()
        deadline = time.monotonic() + 60
        while job not in c.run("ls /var/spool/cesar/processing").stdout:
            assert time.monotonic() < deadline, c.journal("cesard.service")
            time.sleep(0.2)
        r = c.run("dpkg --force-confold --configure cesard", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.run("dpkg-query -W -f '${Version}' cesard").stdout.endswith("+1")
        r = c.run(f"runuser -u alice -- cesarctl wait --timeout 120 {job}", check=False,
                  timeout=180)
        assert r.returncode == 0, (r.stdout, r.stderr, c.journal("cesard.service"))
        res = json.loads(c.run(f"cat /var/spool/cesar/done/{job}/result.json").stdout)
        assert res["status"] == "done" and res["text"] == "survived the upgrade"
        deadline = time.monotonic() + 60
        while any(h["state"] == "pending" for h in res["hooks"]):
            assert time.monotonic() < deadline, (res, c.journal("cesard.service"))
            time.sleep(0.5)
            res = json.loads(c.run(f"cat /var/spool/cesar/done/{job}/result.json").stdout)
        assert [h["exit"] for h in res["hooks"]] == [0, 1], res["hooks"]
        who = c.run(f"runuser -u alice -- cat /var/spool/cesar/done/{job}/who.txt")
        assert who.stdout.strip() == "cesar"
        log = c.journal("cesard.service")
        assert "Read-only file system" in log, log
        assert f"job={job} returned to incoming/" in log, log
        assert log.count(f"job={job} done") == 1, log

        # Remove: stopped; configuration and spool kept.
        r = c.run("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q cesard", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.show("cesard.service", "ActiveState")["ActiveState"] in ("inactive", "")
        assert c.run("test -f /etc/cesar/cesard.yaml && test -d /var/spool/cesar/done",
                     check=False).returncode == 0
        # Nothing of the program is left, not even the bytecode Python wrote as it ran.
        assert c.run("test -e /opt/cesard", check=False).returncode != 0, \
            c.run("find /opt/cesard | head -20", check=False).stdout
        # Purge: configuration gone; the spool holds jobs, so it stays, and says so.
        r = c.run("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q cesard", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert c.run("test -e /etc/cesar", check=False).returncode != 0
        assert "still holds jobs" in r.stderr + r.stdout
        assert c.run("test -d /var/spool/cesar/done", check=False).returncode == 0
