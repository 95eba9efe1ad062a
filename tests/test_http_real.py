"""cesard-http in front of the real faster-whisper engine: speech through the official
``openai`` package (word timestamps, translation with base) and through the ``wyoming``
client, as Home Assistant sends it."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import Iterator

import openai
import pytest
from helpers import FIXTURES, Daemon
from httpbox import Gateway, free_port

from cesard import models


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, Gateway, str]]:
    tmp = tmp_path_factory.mktemp("http-real")
    d = Daemon(tmp, engine="faster-whisper", workers=1, settle_seconds=0.2)
    d.env["CESAR_MODEL_CACHE"] = str(tmp / "models")
    gw = Gateway(d, wyoming_listen=f"127.0.0.1:{free_port()}")
    token = gw.token("ha")
    d.start(wait_ready=False)
    d.wait_ready(timeout=300)
    gw.start()
    yield d, gw, token
    gw.stop()
    d.close()


def sdk(gw: Gateway, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=token, max_retries=0, timeout=300)


def test_speech_with_word_timestamps(real: tuple[Daemon, Gateway, str]) -> None:
    _, gw, token = real
    v = sdk(gw, token).audio.transcriptions.create(
        model="whisper-1", file=(FIXTURES / "hello.wav").open("rb"),
        response_format="verbose_json", timestamp_granularities=["word", "segment"])
    assert "hello world" in v.text.lower(), v.text
    words = [w.word.lower().strip(".,!") for w in v.words or []]
    assert "hello" in words and "world" in words, words
    assert all(w.start <= w.end for w in v.words or [])
    assert v.segments and v.language == "english"


def test_translation_goes_to_base(real: tuple[Daemon, Gateway, str]) -> None:
    if models.base_parts() is None:
        pytest.skip("the base model packages are not installed (the base extra)")
    _, gw, token = real
    t = sdk(gw, token).audio.translations.create(model="whisper-1",
                                                 file=(FIXTURES / "german.wav").open("rb"))
    assert "morning" in t.text.lower(), t.text


def test_wyoming_client_transcribes_a_short_clip(real: tuple[Daemon, Gateway, str]) -> None:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    _, gw, _ = real
    host, port = gw.d.config["http"]["wyoming_listen"].split(":")
    with wave.open(str(FIXTURES / "hello.wav")) as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        pcm = w.readframes(w.getnframes())

    async def talk() -> tuple[Info, str]:
        async with AsyncTcpClient(host, int(port)) as c:
            await c.write_event(Describe().event())
            info_event = await c.read_event()
            assert info_event is not None
            info = Info.from_event(info_event)
        async with AsyncTcpClient(host, int(port)) as c:
            await c.write_event(Transcribe(language="en").event())
            await c.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
            step = rate * width * channels // 10  # 100 ms chunks, as a satellite sends
            for i in range(0, len(pcm), step):
                await c.write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                               audio=pcm[i:i + step]).event())
            await c.write_event(AudioStop().event())
            while True:
                event = await asyncio.wait_for(c.read_event(), 120)
                assert event is not None
                if Transcript.is_type(event.type):
                    return info, Transcript.from_event(event).text

    info, text = asyncio.run(talk())
    assert info.asr and info.asr[0].name == "cesard"
    assert "tiny.en" in [m.name for m in info.asr[0].models]
    assert "hello world" in text.lower(), text


def test_diarize_over_http(real: tuple[Daemon, Gateway, str]) -> None:
    pytest.importorskip("sklearn", reason="the diarize extra (scikit-learn) is not installed")
    _, gw, token = real
    v = sdk(gw, token).audio.transcriptions.create(
        model="whisper-1", file=(FIXTURES / "meeting3.flac").open("rb"),
        response_format="verbose_json", extra_body={"diarize": "true"})
    got = {s.model_extra["speaker"] for s in v.segments or []}  # type: ignore[index]
    assert got == {"SPEAKER_1", "SPEAKER_2", "SPEAKER_3"}, got
