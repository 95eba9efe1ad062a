"""One contract, every engine (faster-whisper with the bundled tiny.en, and fake)."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from helpers import FIXTURES, fake_script

from cesard import config as configmod
from cesard import job as jobmod
from cesard.engine import Engine
from cesard.engines import make_engine

SPEECH = {"faster-whisper": (FIXTURES / "weather.wav").read_bytes(),
          "fake": fake_script(text="The weather today is sunny.", duration=3.2)}


@pytest.fixture(scope="module", params=["faster-whisper", "fake"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    e = make_engine(request.param, configmod.bundled_models(), max_audio_seconds=20)
    e.load("tiny.en")
    yield e


def run(engine: Engine, data: bytes, **opts: object) -> tuple[dict, list]:  # type: ignore[type-arg]
    calls: list[tuple[float, float | None]] = []
    options = jobmod.parse_options(opts)
    t = engine.transcribe(io.BytesIO(data), "clip.wav", options,
                          lambda f, d: calls.append((f, d)))
    return t, calls


def test_transcript_shape_and_progress(engine: Engine) -> None:
    t, calls = run(engine, SPEECH[engine.name])
    assert "weather today is sunny" in t["text"].lower()
    assert t["language"] == "en" and 0 < t["language_probability"] <= 1
    assert 3.0 < t["duration"] < 3.5
    assert t["segments"] and all(s["end"] >= s["start"] for s in t["segments"])
    assert t["engine"]["name"] == engine.name and t["engine"]["model"] == "tiny.en"
    # Duration is reported first; fractions never go back and end at 1.
    assert calls[0][1] is not None and abs(calls[0][1] - t["duration"]) < 0.01
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_unknown_model_is_a_clear_permanent_error(engine: Engine) -> None:
    with pytest.raises(jobmod.UnknownModel, match="large-v9"):
        run(engine, SPEECH[engine.name], model="large-v9")
    with pytest.raises(jobmod.UnknownModel):
        engine.load("large-v9")


def test_too_long_audio_is_rejected(engine: Engine) -> None:
    data = ((FIXTURES / "silence30.flac").read_bytes() if engine.name == "faster-whisper"
            else fake_script(duration=30))
    with pytest.raises(jobmod.AudioTooLong, match="max_audio_seconds=20"):
        run(engine, data)


def test_same_input_same_text(engine: Engine) -> None:
    a, _ = run(engine, SPEECH[engine.name])
    b, _ = run(engine, SPEECH[engine.name])
    assert a["text"] == b["text"]


def test_long_audio_is_decoded_in_batches() -> None:
    # batch_min_seconds lowered so that a short fixture takes the long-audio path.
    e = make_engine("faster-whisper", configmod.bundled_models(), batch_size=4,
                    batch_min_seconds=3.0)
    t, calls = run(e, SPEECH["faster-whisper"])
    assert t["engine"]["batch_size"] == 4
    assert "weather today is sunny" in t["text"].lower()
    assert calls[-1][0] == 1.0
    short, _ = run(e, (FIXTURES / "hello.wav").read_bytes()[:44 + 32000 * 2])  # 2 s
    assert short["engine"]["batch_size"] is None
