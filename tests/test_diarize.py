"""Who said what (issue 25) with the real daemon and model on real speech of different
people joined with pauses (tests/fixtures/make_meetings.py): the number of speakers,
the diarization error rate (bench/der.py), speakers in every output, and a failure of
diarization that keeps the transcript."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, Daemon, fake_script

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from der import der  # noqa: E402

TRUTH = json.loads((FIXTURES / "meetings.json").read_text())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    pytest.importorskip("sklearn", reason="the diarize extra (scikit-learn) is not installed")
    d = Daemon(tmp_path_factory.mktemp("diarize"), engine="faster-whisper", workers=1,
               settle_seconds=0.2)
    d.start(wait_ready=False)
    d.wait_ready(timeout=300)
    yield d
    d.close()


def submit(d: Daemon, name: str, *opts: str) -> dict[str, Any]:
    r = d.ctl("submit", str(FIXTURES / f"{name}.flac"), "--diarize", "--format", "srt",
              "--format", "vtt", *opts)
    assert r.returncode == 0, r.stderr
    return d.wait_result(r.stdout.strip(), 300)


def score(name: str, res: dict[str, Any]) -> float:
    ref = [(t["start"], t["end"], t["speaker"]) for t in TRUTH[name]["turns"]]
    hyp = [(s["start"], s["end"], s["speaker"]) for s in res["segments"]]
    return float(der(ref, hyp)["der"])


@pytest.mark.parametrize("name", ["meeting2", "meeting3"])
def test_the_speakers_are_found_and_their_turns(daemon: Daemon, name: str) -> None:
    res = submit(daemon, name)
    assert res["status"] == "done", res["error"]
    dia = res["diarization"]
    assert dia["error"] is None and dia["speakers"] == TRUTH[name]["speakers"], dia
    assert [s["id"] for s in res["speakers"]] == [f"SPEAKER_{i + 1}" for i in
                                                  range(TRUTH[name]["speakers"])]
    assert all(s["speaker"] for s in res["segments"])
    assert all(s["words"] is None for s in res["segments"])  # not asked for
    d = score(name, res)
    print(f"{name}: DER {d:.3f}, diarization {dia['seconds']} s")
    assert d <= 0.10, (d, [(s["start"], s["end"], s["speaker"], s["text"])
                           for s in res["segments"]])
    job = daemon.spool / "done" / res["id"]
    txt = (job / "transcript.txt").read_text()
    assert txt.startswith("Speaker 1: ") and "\n\nSpeaker 2: " in txt, txt
    assert "<v Speaker 2>" in (job / "transcript.vtt").read_text()
    assert "Speaker 2: " in (job / "transcript.srt").read_text()


def test_a_known_number_of_speakers_is_taken(daemon: Daemon) -> None:
    res = submit(daemon, "meeting3", "--speakers", "2")
    assert res["diarization"]["speakers"] == 2 and len(res["speakers"]) == 2


def test_word_timestamps_carry_their_speaker_and_the_text_is_the_plain_one(
        daemon: Daemon) -> None:
    """Diarization never changes the text (WER unchanged): the same words as without it;
    with --word-timestamps every word says who said it."""
    plain = daemon.wait_result(daemon.ctl("submit", str(FIXTURES / "meeting2.flac"))
                               .stdout.strip(), 300)
    res = submit(daemon, "meeting2")
    assert res["text"] == plain["text"]
    worded = submit(daemon, "meeting2", "--word-timestamps")
    assert all(w["speaker"] == s["speaker"] for s in worded["segments"] for w in s["words"])


def test_result_json_with_speakers_matches_the_schema(daemon: Daemon) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" /
                         "result.schema.json").read_text())
    res = submit(daemon, "meeting2")
    jsonschema.validate(res, schema)


def test_a_failed_diarization_keeps_the_transcript(make_daemon: Callable[..., Daemon]) -> None:
    """The fake engine has no audio to diarize: the job is done, with its text, and
    diarization.error says why."""
    d = make_daemon().start()
    res = d.wait_result(d.submit_bytes("a.wav", fake_script(text="kept"), "--diarize"))
    assert res["status"] == "done" and res["text"] == "kept"
    assert res["diarization"]["error"] and res["speakers"] is None
    assert "diarization failed" in d.log()
