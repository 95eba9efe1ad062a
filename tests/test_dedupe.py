"""Dedupe (issue 12): the same audio with the same options reuses a done result, fast,
as a copy of its own; anything different is transcribed. (Owners: test_privacy.py.)"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

from helpers import Daemon, fake_script, wait_until

TALK = fake_script(sleep=1.5, text="the same meeting", segments=3)


def test_the_same_audio_again_finishes_at_once_with_a_copy(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(dedupe=True).start()
    first = d.submit_bytes("monday.wav", TALK)
    r1 = d.wait_result(first)
    assert r1["deduplicated_from"] is None and r1["timings"]["transcribe_s"] >= 1.5
    t0 = time.monotonic()
    again = d.submit_bytes("monday-again.wav", TALK)  # another name, the same bytes
    r2 = d.wait_result(again, 10)
    took = time.monotonic() - t0
    assert r2["status"] == "done" and r2["deduplicated_from"] == first
    assert took < 1.5, f"a deduplicated job took {took:.2f} s"
    assert r2["text"] == r1["text"] and r2["segments"] == r1["segments"]
    assert r2["source"]["name"] == "monday-again.wav"
    assert r2["source"]["sha256"] == r1["source"]["sha256"]
    assert r2["timings"]["transcribe_s"] == 0.0 and r2["attempts"] == 1
    a = d.spool / "done" / first / "transcript.txt"
    b = d.spool / "done" / again / "transcript.txt"
    assert a.read_text() == b.read_text()
    assert os.stat(a).st_ino != os.stat(b).st_ino and os.stat(b).st_nlink == 1
    # (the log line follows the result's rename by a moment)
    wait_until(lambda: f"job={again} done: file=monday-again.wav deduplicated from {first}"
               in d.log(), 10, "the deduplication's log line")
    # Other options, or other audio: transcribed.
    other = d.submit_bytes("monday.wav", TALK, "--beam-size", "2")
    assert d.wait_result(other)["deduplicated_from"] is None
    changed = d.submit_bytes("tuesday.wav", fake_script(sleep=0.2, text="another meeting"))
    assert d.wait_result(changed)["deduplicated_from"] is None
    # Formats are not part of the match: the copy renders the ones it asks for.
    srt = d.submit_bytes("monday.wav", TALK, "--format", "srt")
    assert d.wait_result(srt)["deduplicated_from"] == first
    assert (d.spool / "done" / srt / "transcript.srt").exists()


def test_the_index_survives_a_restart_and_forgets_pruned_jobs(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(dedupe=True).start()
    first = d.submit_bytes("a.wav", TALK)
    d.wait_result(first)
    assert d.stop() == 0
    d.start()
    wait_until(lambda: "dedupe: 1 done job(s) indexed" in d.log(), 10, "the index")
    again = d.submit_bytes("b.wav", TALK)
    assert d.wait_result(again)["deduplicated_from"] == first
    for job in (first, again):
        shutil.rmtree(d.spool / "done" / job)
    third = d.submit_bytes("c.wav", TALK)
    r3 = d.wait_result(third)
    assert r3["deduplicated_from"] is None and r3["timings"]["transcribe_s"] >= 1.5


def test_off_by_default(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    first = d.submit_bytes("a.wav", fake_script(text="x"))
    d.wait_result(first)
    again = d.submit_bytes("a.wav", fake_script(text="x"))
    assert d.wait_result(again)["deduplicated_from"] is None
