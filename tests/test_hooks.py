"""Hooks (issue 12): the administrator's commands run after a job, as real processes.

The result comes first and a hook never blocks it or another job; exit status and
duration land in result.json; output lands in the daemon's log with the job id; a hook
past hook_timeout is killed with its children; named hooks only by name; bad hook
configuration and unknown names are clear errors; the contrib examples work.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers import BIN, Daemon, fake_script, wait_until

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "hooks"

ME = pwd.getpwuid(os.geteuid()).pw_name  # the owner of what the tests submit


def script(path: Path, body: str) -> str:
    """An executable Python script (the test's interpreter) at ``path``."""
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, time\n{body}\n")
    path.chmod(0o755)
    return str(path)


def hooks_ended(d: Daemon, job_id: str) -> list[dict[str, Any]] | None:
    r = d.result(job_id)
    if r and r["hooks"] and all(h["state"] != "pending" for h in r["hooks"]):
        return list(r["hooks"])
    return None


def test_done_and_failed_hooks_get_the_job_and_report(make_daemon: Callable[..., Daemon],
                                                      tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    record = script(tmp_path / "record", f"""
env = {{k: v for k, v in os.environ.items()}}
json.dump({{"env": env, "argv": sys.argv[1:], "cwd": os.getcwd(),
           "stdin": sys.stdin.read()}}, open("{seen}/" + env["CESAR_JOB_ID"], "w"))
print("hello from the hook")
print("to stderr", file=sys.stderr)""")
    d = make_daemon(hooks={"done": [[record, "one two"]], "failed": [[record, "--failed"]]})
    d.env["SECRET_OF_THE_DAEMON"] = "x"
    d.start()
    good = d.submit_bytes("good.wav", fake_script(text="fine words"))
    bad = d.submit_bytes("bad.wav", fake_script(fail="EngineError"))
    for job_id, state, argv in ((good, "done", ["one two"]), (bad, "failed", ["--failed"])):
        ended = wait_until(lambda j=job_id: hooks_ended(d, j), 20, f"hooks of {job_id}")
        assert ended[0]["name"] == f"{state}[0]" and ended[0]["exit"] == 0
        assert ended[0]["state"] == "exited" and ended[0]["seconds"] >= 0
        got = json.loads((seen / job_id).read_text())
        env = got["env"]
        job_dir = d.spool / state / job_id
        assert got["argv"] == argv and got["stdin"] == "" and got["cwd"] == str(job_dir)
        assert env["CESAR_JOB_ID"] == job_id and env["CESAR_STATUS"] == state
        assert env["CESAR_JOB_DIR"] == str(job_dir)
        assert env["CESAR_RESULT"] == str(job_dir / "result.json")
        assert env["CESAR_OWNER"] == ME and env["CESAR_OWNER_UID"] == str(os.geteuid())
        assert "SECRET_OF_THE_DAEMON" not in env and "NOTIFY_SOCKET" not in env
        assert (env["CESAR_TRANSCRIPT"] != "") == (state == "done")
        assert f"job={job_id} hook={state}[0]: hello from the hook" in d.log()
        assert f"job={job_id} hook={state}[0]: to stderr" in d.log()
    assert d.wait_result(good)["text"] == "fine words"


def test_a_failing_or_hanging_hook_never_blocks_a_result_or_a_job(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    hang = script(tmp_path / "hang", f"""
import subprocess
child = subprocess.Popen(["sleep", "60"])
open("{pids}/" + os.environ["CESAR_JOB_ID"], "w").write(str(child.pid))
time.sleep(60)""")
    fail = script(tmp_path / "fail", "print('about to fail'); sys.exit(3)")
    d = make_daemon(hooks={"done": [[hang], [fail]]}, hook_timeout=3, max_running_hooks=1)
    d.start()
    first = d.submit_bytes("a.wav", fake_script(text="first"))
    t0 = time.monotonic()
    r = d.wait_result(first)
    assert r["status"] == "done" and [h["state"] for h in r["hooks"]] == ["pending", "pending"]
    # The one hook slot is taken by the hanging hook; jobs still run and finish.
    others = [d.submit_bytes(f"b{i}.wav", fake_script(text=f"next {i}")) for i in range(3)]
    for job_id in others:
        assert d.wait_result(job_id)["status"] == "done"
    assert time.monotonic() - t0 < 3, "a hanging hook held up other jobs"
    ended = wait_until(lambda: hooks_ended(d, first), 20, "the hooks to end")
    killed, failed = ended
    assert killed["state"] == "killed" and killed["exit"] is None
    assert 2.5 <= killed["seconds"] < 10 and "hook_timeout" in killed["error"]
    assert failed["state"] == "exited" and failed["exit"] == 3
    child = int((pids / first).read_text())
    wait_until(lambda: not Path(f"/proc/{child}").exists()
               or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2], 10,
               "the hook's child to be killed with it")
    assert "hook_timeout" in d.log() and f"job={first} hook=done[1] exited with status 3" in d.log()
    # The result is still in done/, whole, with the outcome of its hooks.
    assert (d.spool / "done" / first / "transcript.txt").read_text().strip() == "first"


def test_shutdown_waits_for_hooks_then_records_them(make_daemon: Callable[..., Daemon],
                                                    tmp_path: Path) -> None:
    slow = script(tmp_path / "slow", "time.sleep(30)")
    d = make_daemon(hooks={"done": [[slow]]}, hook_timeout=60, shutdown_grace=2,
                    max_running_hooks=1)
    d.start()
    a = d.submit_bytes("a.wav", fake_script(text="a"))
    b = d.submit_bytes("b.wav", fake_script(text="b"))
    d.wait_result(b)
    t0 = time.monotonic()
    assert d.stop() == 0
    assert 1.5 <= time.monotonic() - t0 < 15
    states = sorted(h["state"] for j in (a, b) for h in (d.result(j) or {})["hooks"])
    assert states == ["killed", "not run"]


def test_named_hooks_run_only_when_asked(make_daemon: Callable[..., Daemon],
                                         tmp_path: Path) -> None:
    upper = script(tmp_path / "upper", "sys.stdout.write(sys.stdin.read().upper())")
    post = str(CONTRIB / "postprocess")
    d = make_daemon(hooks={"named": {"shout": [post, "--output", "shout.txt", "--", upper]}})
    d.start()
    asked = d.submit_bytes("asked.wav", fake_script(text="quiet words"), "--then", "shout")
    plain = d.submit_bytes("plain.wav", fake_script(text="quiet words"))
    ended = wait_until(lambda: hooks_ended(d, asked), 20, "the named hook")
    assert ended[0]["name"] == "shout" and ended[0]["exit"] == 0
    assert (d.spool / "done" / asked / "shout.txt").read_text().strip() == "QUIET WORDS"
    assert d.result(asked)["options"]["then"] == ["shout"]
    assert d.wait_result(plain)["hooks"] == []
    assert not (d.spool / "done" / plain / "shout.txt").exists()
    # An unknown name: cesarctl refuses it; a job.json naming one fails, naming it.
    r = d.ctl("submit", str(d.tmp / "src" / "plain.wav"), "--then", "nope")
    assert r.returncode == 64 and "'nope'" in r.stderr and "shout" in r.stderr
    d.publish_dir("hand-made", {
        "job.json": json.dumps({"id": "hand-made", "submitted_at": "2026-01-01T00:00:00Z",
                                "options": {"then": ["nope"]}}).encode(),
        "talk.wav": fake_script(text="x")})
    r2 = d.wait_result("hand-made")
    assert r2["status"] == "failed" and r2["error"]["type"] == "InvalidOption"
    assert "hand-made/job.json" in r2["error"]["message"] and "'nope'" in r2["error"]["message"]


def test_bad_hook_configuration_names_the_key(tmp_path: Path) -> None:
    not_exec = tmp_path / "not-exec"
    not_exec.write_text("#!/bin/sh\n")
    cases = [
        ({"done": [["relative/hook"]]}, "hooks.done[0]", "absolute path"),
        ({"failed": [[str(not_exec)]]}, "hooks.failed[0]", "not an executable"),
        ({"done": ["/bin/true"]}, "hooks.done[0]", "list of strings"),
        ({"named": {"Bad Name": ["/bin/true"]}}, "hooks.named", "not a hook name"),
        ({"later": []}, "hooks", "unknown key 'later'"),
    ]
    import yaml

    for hooks, key, words in cases:
        conf = tmp_path / "c.yaml"
        conf.write_text(yaml.safe_dump({"engine": "fake", "hooks": hooks}))
        r = subprocess.run([str(BIN / "cesard"), "--config", str(conf), "--check-config"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 78, r.stderr
        assert key in r.stderr and words in r.stderr, r.stderr


def test_mail_owner_hands_one_message_to_sendmail(make_daemon: Callable[..., Daemon],
                                                  tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    sendmail = script(tmp_path / "sendmail", f"""
open("{outbox}/" + os.environ["CESAR_JOB_ID"], "w").write(
    " ".join(sys.argv[1:]) + "\\n" + sys.stdin.read())""")
    mail = str(CONTRIB / "mail-owner")
    d = make_daemon(hooks={"done": [[mail, "--sendmail", sendmail]],
                           "failed": [[mail, "--failed", "--sendmail", sendmail,
                                       "--domain", "example.org"]]})
    d.start()
    good = d.submit_bytes("meeting.wav", fake_script(text="the minutes"))
    bad = d.submit_bytes("broken.wav", fake_script(fail="UndecodableAudio"))
    assert wait_until(lambda: hooks_ended(d, good), 20, "mail hook")[0]["exit"] == 0
    assert wait_until(lambda: hooks_ended(d, bad), 20, "mail hook")[0]["exit"] == 0
    sent = (outbox / good).read_text()
    assert sent.startswith("-t -oi\n") and f"To: {ME}\n" in sent
    assert "Subject: Transcript of meeting.wav" in sent and "the minutes" in sent
    failed = (outbox / bad).read_text()
    assert f"To: {ME}@example.org" in failed and "UndecodableAudio" in failed
    assert f"cesarctl retry {bad}" in failed


def test_copy_to_files_transcripts_by_owner(make_daemon: Callable[..., Daemon],
                                            tmp_path: Path) -> None:
    dest = tmp_path / "archive"
    d = make_daemon(hooks={"done": [[str(CONTRIB / "copy-to"), str(dest)]]})
    d.start()
    job = d.submit_bytes("talk.wav", fake_script(text="kept words"), "--format", "srt")
    assert wait_until(lambda: hooks_ended(d, job), 20, "copy hook")[0]["exit"] == 0
    assert (dest / ME / f"{job}.txt").read_text().strip() == "kept words"
    assert (dest / ME / f"{job}.srt").exists()
    assert oct((dest / ME / f"{job}.txt").stat().st_mode & 0o777) == "0o640"
    assert not [p for p in os.listdir(dest / ME) if p.startswith(".")]
