"""The diarization error rate the diarization tests and bench/diarize.py use
(bench/der.py), on cases worked by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from der import der  # noqa: E402

REF = [(0.0, 10.0, "a"), (10.0, 20.0, "b")]


def test_a_perfect_hypothesis_under_other_names_scores_zero() -> None:
    assert der(REF, [(0.0, 10.0, "x"), (10.0, 20.0, "y")])["der"] == 0.0


def test_one_speaker_for_all_is_half_confusion() -> None:
    r = der(REF, [(0.0, 20.0, "x")], collar=0.0)
    assert r["confusion"] == pytest.approx(10.0) and r["der"] == pytest.approx(0.5)


def test_missed_and_false_alarm_and_the_collar() -> None:
    r = der(REF, [(0.0, 9.0, "x"), (10.0, 21.0, "y")], collar=0.0)
    assert r["missed"] == pytest.approx(1.0) and r["false_alarm"] == pytest.approx(1.0)
    assert r["der"] == pytest.approx(0.1)
    # a boundary off by 0.2 s is inside the 0.25 s collar: not scored
    assert der(REF, [(0.0, 10.2, "x"), (10.2, 20.0, "y")])["der"] == 0.0


def test_overlap_is_scored_per_speaker() -> None:
    ref = [(0.0, 10.0, "a"), (5.0, 10.0, "b")]  # 15 s of reference speech
    r = der(ref, [(0.0, 10.0, "x")], collar=0.0)
    assert r["total"] == pytest.approx(15.0) and r["missed"] == pytest.approx(5.0)
