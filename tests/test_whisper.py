"""The real faster-whisper engine with the bundled tiny.en on committed speech fixtures."""

from __future__ import annotations

import json
import re
from typing import Any

from helpers import FIXTURES, Daemon


def batched(d: Daemon, *fixtures: str) -> list[dict[str, Any]]:
    """The results of ``fixtures`` submitted while the daemon is stopped (SIGSTOP), so
    that they are queued together and decoded in one batch."""
    import signal

    d.signal(signal.SIGSTOP)
    try:
        ids = [d.ctl("submit", str(FIXTURES / f)).stdout.strip() for f in fixtures]
    finally:
        d.signal(signal.SIGCONT)
    return [d.wait_result(i, 120) for i in ids]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def test_speech_comes_back_as_text(whisper_daemon: Daemon) -> None:
    r = whisper_daemon.ctl("submit", str(FIXTURES / "hello.wav"), "--wait")
    assert r.returncode == 0, r.stderr
    w = words(r.stdout)
    assert w[:2] == ["hello", "world"] and "test" in w and "transcription" in w


def test_several_files_one_submit(whisper_daemon: Daemon) -> None:
    r = whisper_daemon.ctl("submit", str(FIXTURES / "weather.wav"),
                           str(FIXTURES / "numbers.wav"), "--wait")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.strip().splitlines()
    assert "weather today is sunny" in first.lower()
    # tiny.en writes counted numbers as digits ("1-2-3-...") or as words.
    assert re.search(r"(1|one)\W+(2|two)\W+(3|three)", second.lower()), second


def test_thirty_seconds_of_silence_is_empty(whisper_daemon: Daemon) -> None:
    r = whisper_daemon.ctl("submit", str(FIXTURES / "silence30.flac"), "--wait",
                           "--format", "json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["text"] == "" and res["segments"] == []
    assert abs(res["duration"] - 30.0) < 0.1
    assert res["decoding"]["batch_jobs"] == 1  # the batched path, not its fallback


def test_result_json_schema_from_real_engine(whisper_daemon: Daemon) -> None:
    r = whisper_daemon.ctl("submit", str(FIXTURES / "weather.wav"), "--format", "vtt",
                           "--word-timestamps")
    job = r.stdout.strip()
    res = whisper_daemon.wait_result(job, 60)
    assert res["status"] == "done" and res["language"] == "en"
    assert res["engine"]["name"] == "faster-whisper" and res["engine"]["model"] == "tiny.en"
    assert res["engine"]["compute_type"] == "int8"
    assert 3.0 < res["duration"] < 3.5
    assert res["timings"]["realtime_factor"] > 1
    assert res["segments"][0]["words"][0]["word"].strip().lower() == "the"
    vtt = (whisper_daemon.spool / "done" / job / "transcript.vtt").read_text()
    assert vtt.startswith("WEBVTT") and "-->" in vtt
    assert whisper_daemon.ctl("result", job, "--format", "srt").stdout.startswith("1\n00:00:")


def test_unknown_model_is_refused_at_submit_and_fails_a_hand_written_job(
        whisper_daemon: Daemon) -> None:
    r = whisper_daemon.ctl("submit", str(FIXTURES / "hello.wav"), "--model", "large-v9",
                           "--wait")
    assert r.returncode == 64
    assert "--model" in r.stderr and "large-v9" in r.stderr and "not configured" in r.stderr
    meta = {"id": "bigmodel", "submitted_at": "2026-11-24T03:15:01.123456Z",
            "source_name": "a.wav", "options": {"model": "large-v9"}}
    whisper_daemon.publish_dir("bigmodel", {"a.wav": (FIXTURES / "hello.wav").read_bytes(),
                                            "job.json": json.dumps(meta).encode()})
    res = whisper_daemon.wait_result("bigmodel", 60)
    assert res["error"]["type"] == "UnknownModel" and "large-v9" in res["error"]["message"]


def test_short_files_queued_together_are_decoded_in_one_batch(whisper_daemon: Daemon) -> None:
    """Cross-job batching with the real engine: three clips, one shared decoding pass
    (full windows, with timestamps), each its own transcript."""
    import signal

    whisper_daemon.signal(signal.SIGSTOP)
    try:
        ids = [whisper_daemon.ctl("submit", str(FIXTURES / f)).stdout.strip()
               for f in ("hello.wav", "weather.wav", "numbers.wav")]
    finally:
        whisper_daemon.signal(signal.SIGCONT)
    hello, weather, numbers = (whisper_daemon.wait_result(i, 120) for i in ids)
    for r in (hello, weather, numbers):
        assert r["status"] == "done" and r["decoding"]["batch_jobs"] == 3, r
        assert r["segments"] and r["segments"][0]["start"] < r["segments"][-1]["end"]
    w = words(hello["text"])
    assert w[:2] == ["hello", "world"] and "transcription" in w
    assert "weather today is sunny" in weather["text"].lower()
    assert re.search(r"(1|one)\W+(2|two)\W+(3|three)", numbers["text"].lower())
    assert numbers["segments"][-1]["end"] <= numbers["duration"] + 0.5


def test_batching_keeps_the_closing_words_of_real_speech(whisper_daemon: Daemon) -> None:
    """A real recording that ends like a voicemail: a reading cut off mid-sentence, a
    pause, then "seven of clubs" by another speaker (tests/fixtures/make_voicemail.py).
    Decoded in one batch with another job, its closing phrase must be there, as the
    unbatched path has it; faster-whisper's batched pipeline (and cesard's batching
    before issue 21) ended the text at the pause."""
    tail, weather = batched(whisper_daemon, "voicemail-tail.flac", "weather.wav")
    assert tail["status"] == "done" and tail["decoding"]["batch_jobs"] == 2, tail
    w = words(tail["text"])
    assert w[:3] == ["the", "first", "books"] and "satisfactorily" in w, tail["text"]
    assert re.search(r"(seven|7) of clubs\W*$", tail["text"].lower()), tail["text"]
    assert tail["segments"][-1]["end"] > 12.5, tail["segments"]  # in the file's time
    assert "weather today is sunny" in weather["text"].lower()


def test_batched_jobs_in_another_language_fall_back_or_say_so(
        whisper_daemon: Daemon) -> None:
    """The batched path checks as the single-job path does: German speech in a batch
    with English comes back decoded by base (installed with the test extra), alone;
    without base, with a warning that says to configure a multilingual model."""
    german, weather = batched(whisper_daemon, "german.wav", "weather.wav")
    assert weather["decoding"]["batch_jobs"] == 2, weather["decoding"]
    fb, w = german["language_fallback"], german["language_warning"]
    if fb is not None:
        assert fb["detected"] == "de" and fb["from"] == "tiny.en", fb
        assert german["language"] == "de" and german["engine"]["model"] == "base", german
        assert w is None
    else:
        assert w is not None and w["mean_logprob"] < -0.9, w
        assert w["message"].startswith("german.wav"), w
        assert w["detected"] is None and "multilingual model" in w["message"], w
    assert weather["language_warning"] is None and weather["language_fallback"] is None
