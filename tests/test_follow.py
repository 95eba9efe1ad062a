"""cesarctl follow: segments as they are transcribed, from a queued, running or finished
job, ending with its state (exit 0 done, 65 failed); the fake engine's slow segments."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from helpers import BIN, Daemon, fake_script, wait_until


def follow(d: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN / "cesarctl"), "--spool", str(d.spool), "--config",
                             str(d.config_path), "follow", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=d.env)


def test_follow_prints_segments_live_then_the_state(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=1).start()
    blocker = d.submit_bytes("block.wav", fake_script(sleep=1, text="first"))
    job = d.submit_bytes("talk.wav", fake_script(sleep=3, segments=6, text="line"))
    p = follow(d, job)  # the job is still queued behind the blocker
    seen: list[tuple[float, str]] = []
    assert p.stdout is not None
    for line in p.stdout:
        seen.append((time.monotonic(), line.rstrip("\n")))
    code = p.wait(30)
    end = time.monotonic()
    assert code == 0, p.stderr.read() if p.stderr else ""
    assert [text for _, text in seen][0].endswith("] line 1")
    assert [text.split("] ", 1)[1] for _, text in seen] == [f"line {i}" for i in range(1, 7)]
    assert seen[0][0] < end - 1.5, "the first segment came only at the end: not live"
    assert d.wait_result(blocker)["status"] == "done"
    # A finished job: everything at once; --json gives JSON lines and the state last.
    r = d.ctl("follow", job, "--json")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and len(rows) == 7 and rows[-1]["status"] == "done"
    assert rows[0]["text"] == "line 1" and rows[0]["start"] == 0.0


def test_follow_of_a_failed_or_unknown_job(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    bad = d.submit_bytes("bad.wav", fake_script(fail="EngineError"))
    p = follow(d, bad)
    assert p.wait(30) == 65
    assert p.stderr is not None and "failed" in p.stderr.read()
    assert d.ctl("follow", "20991231T000000.000000Z-nohost-1-abcd").returncode == 66
    wait_until(lambda: d.result(bad), 10, "the failed result")
