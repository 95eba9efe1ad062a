"""Wall-clock jumps (issue 20): deadlines and timers use the monotonic clock.

libfaketime (FAKETIME_TIMESTAMP_FILE, re-read at every call) steps the daemon's wall
clock while it runs, as an NTP step or ``date -s`` would; its monotonic clock is left
alone (FAKETIME_DONT_FAKE_MONOTONIC), as the kernel leaves it. A +2 h step used to time
out the running job and charge it an attempt; a -3 h step froze status.json for hours.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Daemon, fake_script, wait_until

FAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), None)

pytestmark = pytest.mark.skipif(FAKETIME is None, reason="libfaketime is not installed "
                                "(apt-get install faketime)")


def test_wall_clock_steps_neither_time_out_jobs_nor_freeze_status(
        make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    d = make_daemon(workers=1)
    d.start(env={"LD_PRELOAD": str(FAKETIME), "FAKETIME_TIMESTAMP_FILE": str(stamp),
                 "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    job = d.submit_bytes("long.wav", fake_script(sleep=4, text="ran through the step"))
    wait_until(lambda: (d.status() or {}).get("running"), 10, "the job to run")
    stamp.write_text("+2h\n")  # the wall clock steps two hours ahead
    res = d.wait_result(job, 30)
    assert res["status"] == "done" and res["text"] == "ran through the step", res
    assert res["attempts"] == 1 and res["errors"] == [], res["errors"]
    # It steps three hours back: status.json goes on being written (every 5 s at most).
    stamp.write_text("-1h\n")

    def updated() -> str:
        return str(json.loads((d.spool / "state" / "status.json").read_text())["updated_at"])

    first = wait_until(lambda: updated() < res["finished_at"] and updated(), 15,
                       "status.json written after the step back")
    wait_until(lambda: updated() != first, 15, "status.json to be written again")
    after = d.submit_bytes("after.wav", fake_script(text="after the steps"))
    assert d.wait_result(after, 30)["text"] == "after the steps"
    assert d.proc is not None and d.proc.poll() is None and "Traceback" not in d.log()
