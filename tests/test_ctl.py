"""cesarctl as scripts use it: exit codes, quiet output, messages naming the problem."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from helpers import BIN, Daemon, fake_script


def ctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "cesarctl"), *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_missing_spool_is_unavailable(tmp_path: Path) -> None:
    r = ctl("--spool", str(tmp_path / "nope"), "status")
    assert r.returncode == 69 and str(tmp_path / "nope") in r.stderr


def test_usage_errors_are_64(tmp_path: Path) -> None:
    assert ctl("frobnicate").returncode == 64
    assert ctl("--spool", str(tmp_path), "submit").returncode == 64


def test_submit_without_daemon_queues_and_warns(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    subprocess.run([str(BIN / "cesard"), "--spool", str(spool), "--init"], check=True,
                   capture_output=True, timeout=60)
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    r = ctl("--spool", str(spool), "submit", str(audio))
    assert r.returncode == 0
    job_id = r.stdout.strip()
    assert "\n" not in job_id and (spool / "incoming" / job_id / "a.wav").exists()
    assert "not running" in r.stderr
    r = ctl("--spool", str(spool), "list", "--json")
    rows = json.loads(r.stdout)
    assert [(x["id"], x["state"]) for x in rows] == [(job_id, "incoming")]
    assert "\n" not in r.stdout.strip()  # JSON into a pipe: one line a document
    r = ctl("--spool", str(spool), "list")  # tab-separated: ID STATE STATUS FILE OWNER
    assert r.stdout.split("\n")[0].split("\t")[:4] == [job_id, "incoming", "queued", "a.wav"]
    r = ctl("--spool", str(spool), "result", job_id)
    assert r.returncode == 75 and "not finished" in r.stderr
    r = ctl("--spool", str(spool), "submit", str(tmp_path / "missing.wav"))
    assert r.returncode == 66 and "missing.wav" in r.stderr
    r = ctl("--spool", str(spool), "submit", str(audio), "--priority", "urgent")
    assert r.returncode == 64
    r = ctl("--spool", str(spool), "show", "no-such-job")
    assert r.returncode == 66 and "no job no-such-job" in r.stderr
    r = ctl("--spool", str(spool), "show", "../etc")
    assert r.returncode == 64
    r = ctl("--spool", str(spool), "submit", str(audio), "--wait", "--timeout", "0.3")
    assert r.returncode == 75 and "timed out" in r.stderr


def test_status_show_wait_json(daemon: Daemon) -> None:
    job = daemon.submit_bytes("a.wav", fake_script(text="hi"))
    r = daemon.ctl("wait", job, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [{"id": job, "status": "done"}]
    r = daemon.ctl("status", "--json")
    st = json.loads(r.stdout)
    assert st["daemon"] == "running" and st["queue"]["done"] == 1
    r = daemon.ctl("show", job, "--json")
    assert json.loads(r.stdout)["result"]["text"] == "hi"
    r = daemon.ctl("result", job, "--format", "json")
    assert json.loads(r.stdout)["id"] == job
    assert daemon.ctl("result", job).stdout == "hi\n"
    bad = daemon.submit_bytes("b.wav", fake_script(fail="EngineError"))
    assert daemon.ctl("wait", job, bad).returncode == 65


def test_prune(daemon: Daemon) -> None:
    job = daemon.submit_bytes("a.wav", fake_script(text="old"))
    daemon.wait_result(job)
    assert daemon.ctl("prune", "--older-than", "1d").stdout == ""
    r = daemon.ctl("prune", "--older-than", "0s", "--dry-run")
    assert r.stdout.strip() == job and (daemon.spool / "done" / job).exists()
    r = daemon.ctl("prune", "--older-than", "0s")
    assert r.stdout.strip() == job and not (daemon.spool / "done" / job).exists()
    assert daemon.ctl("prune", "--older-than", "soon").returncode == 64


def test_scripts_and_people_get_what_they_asked_for(daemon: Daemon) -> None:
    """--version; health --json; show is JSON in a pipe; list --json | head is quiet;
    prune --dry-run lists what it would remove."""
    r = daemon.ctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("cesarctl ")
    r = daemon.ctl("health", "--json")
    assert json.loads(r.stdout)["status"] == "OK" and r.returncode == 0
    job = daemon.submit_bytes("a.wav", fake_script(text="shown"))
    daemon.wait_result(job)
    shown = json.loads(daemon.ctl("show", job).stdout)
    assert shown["result"]["text"] == "shown" and shown["result"]["owner"]["uid"] == os.geteuid()
    for i in range(800):  # more than a pipe holds (64 KiB), so the writer meets the closed end
        (daemon.spool / "failed" / f"x{i:04d}").mkdir()
    conf = ["--config", str(daemon.config_path)] if daemon.config_path.exists() else []
    p = subprocess.run(f"{BIN / 'cesarctl'} --spool {daemon.spool} {' '.join(conf)} list --json"
                       " | head -c 10", shell=True, capture_output=True, text=True, timeout=60)
    assert "BrokenPipe" not in p.stderr and "Exception" not in p.stderr, p.stderr
    r = daemon.ctl("prune", "--older-than", "0s", "--dry-run")
    assert job in r.stdout.split() and (daemon.spool / "done" / job).exists()


def test_a_job_may_be_named_by_a_unique_prefix_or_suffix_of_its_id(daemon: Daemon) -> None:
    a = daemon.submit_bytes("a.wav", fake_script(text="first"))
    b = daemon.submit_bytes("b.wav", fake_script(text="second"))
    daemon.wait_result(a)
    daemon.wait_result(b)
    r = daemon.ctl("result", b[-6:])
    assert r.returncode == 0 and r.stdout.strip() == "second", r
    r = daemon.ctl("show", "--json", a[-4:])
    assert r.returncode == 0 and a in r.stdout and b not in r.stdout, r
    common = os.path.commonprefix([a, b])
    assert len(common) >= 4
    r = daemon.ctl("show", common)
    assert r.returncode == 64 and a in r.stderr and b in r.stderr, r
    r = daemon.ctl("wait", a[:-1], b[-4:])
    assert r.returncode == 0, r


def test_result_formats_are_the_renderers() -> None:
    from cesard import ctl, outputs

    assert ctl.FORMATS == tuple(outputs.RENDER)
