"""Resume, not restart (issue 12): a long job interrupted by kill -9, a SIGTERM requeue, a
timeout or a worker crash goes on from its last checkpoint, with no gap and no duplicate
at the seam, and result.json says where. The fake engine's slow segments stand in for
decoding windows (one real faster-whisper run is in test_whisper.py)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from helpers import Daemon, fake_script, wait_until

from cesard import checkpoint
from cesard.job import JobOptions

N = 20  # segments of 5 s each: 100 s of "audio", 8 s of decoding
LONG = fake_script(sleep=8, segments=N, duration=100, text="part")


def live_lines(d: Daemon, job_id: str) -> int:
    p = d.spool / "processing" / job_id / "segments.jsonl"
    try:
        return p.read_bytes().count(b"\n")
    except OSError:
        return 0


def assert_whole(result: dict, resumed_from: float) -> None:
    """Every segment once, in order, end to start: no gap and no duplicate at the seam."""
    segs = result["segments"]
    assert [s["text"] for s in segs] == [f"part {i}" for i in range(1, N + 1)]
    assert all(a["end"] == b["start"] for a, b in zip(segs, segs[1:], strict=False))
    assert result["resumed_from"] == resumed_from


def test_kill_9_at_80_percent_resumes_from_the_checkpoint(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon().start()
    job = d.submit_bytes("long.wav", LONG)
    wait_until(lambda: live_lines(d, job) >= 16, 30, "80 % of the segments")
    d.kill_all()
    ck = json.loads((d.spool / "processing" / job / "checkpoint.json").read_text())
    assert 12 <= ck["segments"] <= 16 and ck["resume_at"] == 5.0 * ck["segments"]
    d.start()
    r = d.wait_result(job, 30)
    assert r["status"] == "done" and r["attempts"] == 2
    assert_whole(r, ck["resume_at"])
    # The second attempt decoded only what was left (the sleep is spread over 20 segments).
    assert r["timings"]["transcribe_s"] < 8 * 0.4, r["timings"]
    assert f"job={job} resumes at {ck['resume_at']:.1f} s" in d.log()
    done = d.spool / "done" / job
    assert not (done / "checkpoint.json").exists()
    lines = [json.loads(x) for x in (done / "segments.jsonl").read_text().splitlines()]
    assert lines == r["segments"]


def test_follow_goes_on_after_the_kept_segments(make_daemon: Callable[..., Daemon]) -> None:
    import subprocess

    from helpers import BIN

    d = make_daemon().start()
    job = d.submit_bytes("long.wav", LONG)
    p = subprocess.Popen([str(BIN / "cesarctl"), "--spool", str(d.spool), "--config",
                          str(d.config_path), "follow", job], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=d.env)
    wait_until(lambda: live_lines(d, job) >= 12, 30, "60 % of the segments")
    d.kill_all()
    d.start()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    texts = [line.split("] ", 1)[1] for line in out.splitlines()]
    assert list(dict.fromkeys(texts)) == [f"part {i}" for i in range(1, N + 1)]
    # Printed twice: at most what was decoded after the last checkpoint (a second, a window).
    assert len(texts) - N <= 5, texts
    assert "resumed at" in err


def test_sigterm_requeue_and_worker_crash_resume_too(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(shutdown_grace=0.5).start()
    job = d.submit_bytes("long.wav", LONG)
    wait_until(lambda: live_lines(d, job) >= 6, 30, "some segments")
    assert d.stop() == 0  # grace expires: requeued, no attempt counted
    assert job in d.entries("incoming")
    d.start()
    wait_until(lambda: live_lines(d, job) >= 12, 30, "more segments")
    st = d.status()
    assert st is not None
    os.kill(st["workers"][0]["pid"], signal.SIGKILL)  # the worker dies mid-job
    r = d.wait_result(job, 30)
    assert r["status"] == "done" and r["attempts"] == 2
    assert r["resumed_from"] >= 30
    assert_whole(r, r["resumed_from"])
    assert r["errors"][0]["type"] == "WorkerCrashed"


def test_a_timed_out_attempt_resumes(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon(job_timeout=5).start()
    job = d.submit_bytes("long.wav", LONG)
    r = d.wait_result(job, 40)
    assert r["status"] == "done" and r["attempts"] == 2
    assert r["errors"][0]["type"] == "JobTimeout" and r["resumed_from"] >= 20
    assert_whole(r, r["resumed_from"])


def test_a_checkpoint_is_used_only_for_its_own_audio_and_options(tmp_path: Path) -> None:
    opts = JobOptions()
    want = checkpoint.key("a" * 64, "fake", opts)
    assert want != checkpoint.key("b" * 64, "fake", opts)
    assert want != checkpoint.key("a" * 64, "fake", JobOptions(language="de"))
    assert want == checkpoint.key("a" * 64, "fake", JobOptions(priority="high"))
    seg = b'{"start": 0.0, "end": 5.0, "text": "x", "words": null}\n'
    (tmp_path / "segments.jsonl").write_bytes(seg * 3)
    ck = {"schema": 1, "key": want, "segments": 2, "bytes": 2 * len(seg), "resume_at": 5.0,
          "language": "en", "language_probability": 1.0}
    (tmp_path / "checkpoint.json").write_text(json.dumps(ck))
    got = checkpoint.load(tmp_path, want)
    assert got is not None and got.at == 5.0 and len(got.segments) == 2
    assert checkpoint.load(tmp_path, checkpoint.key("b" * 64, "fake", opts)) is None
    (tmp_path / "segments.jsonl").write_bytes(seg[:10])  # cut short: start over
    assert checkpoint.load(tmp_path, want) is None


def long_speech(path: Path, seconds: float) -> Path:
    """The English fixtures one after another, a second of silence between, to ``seconds``."""
    import wave

    from helpers import FIXTURES

    clips = []
    for name in ("hello", "weather", "numbers"):
        with wave.open(str(FIXTURES / f"{name}.wav")) as w:
            clips.append(w.readframes(w.getnframes()))
    silence = b"\0\0" * 16000
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        total, i = 0, 0
        while total < seconds * 32000:
            data = clips[i % len(clips)] + silence
            out.writeframes(data)
            total, i = total + len(data), i + 1
    return path


def test_real_whisper_resumes_without_gap_or_duplicate(make_daemon: Callable[..., Daemon],
                                                       tmp_path: Path) -> None:
    """Sequential decoding (VAD on, the default below batch_min_seconds): the resumed
    attempt decodes the windows the first one would have (in the speech-only audio), so
    its segments after the seam are the uninterrupted run's, none lost, none twice."""
    audio = long_speech(tmp_path / "long.wav", 150)
    d = make_daemon(engine="faster-whisper", workers=1)
    d.start(wait_ready=False)
    d.wait_ready(120)
    full = d.wait_result(d.ctl("submit", str(audio), check=True).stdout.strip(), 120)
    job = d.ctl("submit", str(audio), check=True).stdout.strip()
    ck_path = d.spool / "processing" / job / "checkpoint.json"
    wait_until(ck_path.exists, 120, "a checkpoint")
    d.kill_all()
    ck = json.loads(ck_path.read_text())
    assert ck["speech_at"] is not None
    d.start(wait_ready=False)
    r = d.wait_result(job, 120)
    assert r["status"] == "done" and r["attempts"] == 2
    assert r["resumed_from"] == ck["resume_at"] > 0
    assert r["language"] == "en" and r["duration"] == full["duration"]
    assert f"job={job} resumes at" in d.log()

    def texts(segs: list) -> list[tuple[str, float]]:
        return [(s["text"], round(s["start"], 1)) for s in segs]
    assert texts(r["segments"]) == texts(full["segments"]), (r["text"], full["text"])
    assert r["segments"][ck["segments"]]["start"] >= ck["resume_at"] - 0.01
