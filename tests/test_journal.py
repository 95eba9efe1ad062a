"""Logging for journald and for plain files (README "cesard").

systemd sets JOURNAL_STREAM to the device and inode of the stream it gave the
service as stderr; cesard then writes `<N>` syslog priorities and no
timestamps. Here stderr is the daemon's log file, so pointing JOURNAL_STREAM
at that file's dev:ino is exactly what systemd does. Workers inherit stderr
and the environment, so their lines follow the same rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from helpers import Daemon, fake_script, wait_until

# The journal names the program (cesard[PID]:); the line adds "worker: " for a worker's.
JOURNAL_LINE = re.compile(r"^<([0-7])>(worker: )?(.*)$")
STAMPED_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (cesard|cesard-worker)\[(\d+)\] "
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL): (.*)$")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")


def journal_env(d: Daemon) -> dict[str, str]:
    d.log_path.touch()
    st = os.stat(d.log_path)
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def run_three_jobs(d: Daemon) -> tuple[str, str, str]:
    """A good job, a failed one and a retried one that then succeeds; wait for all."""
    ok = d.submit_bytes("good-one.wav", fake_script(text="fine", duration=12.5, sleep=0.3))
    bad = d.submit_bytes("broken-one.wav", fake_script(fail="UndecodableAudio"))
    d.wait_result(ok)
    d.wait_result(bad)
    # A bare file copied in: the daemon names it too.
    (d.tmp / "bare-one.wav").write_bytes(fake_script(text="bare"))
    os.rename(d.tmp / "bare-one.wav", d.spool / "incoming" / "bare-one.wav")
    bare = wait_until(lambda: d.entries("done")[-1] if len(d.entries("done")) == 2 else None,
                      20, "the bare file to be done")
    return ok, bad, bare


def test_journal_stream_lines_have_priorities_and_name_jobs(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2)
    d.start(env=journal_env(d))
    ok, bad, bare = run_three_jobs(d)
    assert d.stop() == 0
    lines = d.log().splitlines()
    assert lines

    parsed = []
    for line in lines:
        m = JOURNAL_LINE.match(line)
        assert m, f"not a journal line (<N>text): {line!r}"
        assert not TIMESTAMP.search(line), f"timestamp in a journal line: {line!r}"
        assert not m.group(3).startswith("cesard"), f"the program named twice: {line!r}"
        parsed.append((int(m.group(1)), "cesard-worker" if m.group(2) else "cesard",
                       m.group(3)))
    assert {who for _, who, _ in parsed} == {"cesard", "cesard-worker"}, (
        "worker lines are missing (they inherit stderr)")

    # Errors (<3> and below) are only about the failed job, and it is there once.
    errors = [text for prio, _, text in parsed if prio <= 3]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"job={bad} failed: file=broken-one.wav UndecodableAudio: ")
    assert errors[0].endswith("status=failed")

    # Every line about a job names it as job=ID; lines about the good jobs are <6>.
    for job, name in ((ok, "good-one.wav"), (bad, "broken-one.wav"), (bare, "bare-one.wav")):
        about = [(prio, text) for prio, _, text in parsed if job in text or name in text]
        assert about, f"no line about {job}"
        for prio, text in about:
            assert f"job={job}" in text, f"a line about {name} does not say job={job}: {text!r}"
            if job != bad:
                assert prio == 6, f"<{prio}> for a successful job: {text!r}"

    # One summary line per finished job: file, audio duration, realtime factor, status.
    for job, name, duration in ((ok, "good-one.wav", "12.5"), (bare, "bare-one.wav", "1.0")):
        summaries = [text for _, _, text in parsed if text.startswith(f"job={job} done:")]
        assert len(summaries) == 1, summaries
        assert re.fullmatch(
            rf"job={re.escape(job)} done: file={re.escape(name)} duration={duration}s "
            r"realtime=[0-9.]+x attempts=1 status=done", summaries[0]), summaries[0]
    fails = [text for _, who, text in parsed
             if who == "cesard" and text.startswith(f"job={bad} failed:")]
    assert len(fails) == 1 and "file=broken-one.wav" in fails[0] and "status=failed" in fails[0]


def test_file_names_cannot_forge_journal_lines(make_daemon: Callable[..., Daemon]) -> None:
    # A bare file whose name holds a newline and a fake priority: logged escaped, so
    # every line still starts with the daemon's own <N>, and no <3> appears.
    d = make_daemon()
    d.start(env=journal_env(d))
    name = "evil\n<3>cesard: job=forged failed: status=failed.wav"
    (d.tmp / name).write_bytes(fake_script(text="x"))
    os.rename(d.tmp / name, d.spool / "incoming" / name)
    wait_until(lambda: d.entries("done") or d.entries("failed"), 20, "the odd file to finish")
    assert d.stop() == 0
    lines = d.log().splitlines()
    for line in lines:
        assert JOURNAL_LINE.match(line), f"not a journal line: {line!r}"
    assert not [ln for ln in lines if ln.startswith(("<0>", "<1>", "<2>", "<3>"))], lines
    assert any("evil" in ln and "done:" in ln for ln in lines), lines


def test_without_journal_stream_lines_are_timestamped(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(workers=2).start()
    ok, bad, bare = run_three_jobs(d)
    assert d.stop() == 0
    assert d.proc is not None
    lines = d.log().splitlines()
    whos = set()
    for line in lines:
        m = STAMPED_LINE.match(line)
        assert m, f"not a timestamped line: {line!r}"
        whos.add(m.group(1))
        if m.group(1) == "cesard":
            assert int(m.group(2)) == d.proc.pid
        assert not line.startswith("<")
    assert whos == {"cesard", "cesard-worker"}
    assert any(f"job={bad} failed:" in ln and " ERROR: " in ln for ln in lines)
    assert any(f"job={ok} done: file=good-one.wav duration=12.5s" in ln for ln in lines)


def test_journal_stream_of_another_file_is_ignored(
        make_daemon: Callable[..., Daemon]) -> None:
    # JOURNAL_STREAM inherited from a parent whose stderr went to the journal, while
    # ours is a file: plain timestamped lines, not <N> prefixes.
    d = make_daemon()
    other = d.tmp / "other"
    other.touch()
    st = os.stat(other)
    d.start(env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    job = d.submit_bytes("x.wav", fake_script(text="x"))
    d.wait_result(job)
    assert d.stop() == 0
    lines = d.log().splitlines()
    assert lines and all(STAMPED_LINE.match(ln) for ln in lines), lines
