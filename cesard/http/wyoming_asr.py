"""The Wyoming ASR protocol (Home Assistant's voice pipeline) on ``http.wyoming_listen``,
with the ``wyoming`` package: describe → info; transcribe, audio-start, audio-chunk…,
audio-stop → a job at high priority (a voice command never waits behind a batch),
whose text comes back as a transcript. The audio is written as WAV into the job's
tmp/ directory as it arrives; jobs are the client ``-wyoming``'s (no token's)."""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from pathlib import Path
from typing import Any

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioChunkConverter, AudioStart, AudioStop
from wyoming.event import Event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.server import AsyncEventHandler, AsyncServer

from cesard.http.gateway import FINISHED, UPLOAD_PART, Gateway
from cesard.http.shapes import LANGUAGES
from cesard.http.tokens import Client

log = logging.getLogger("cesard-http")
CLIENT = Client("-wyoming", "")  # no token has this name (they start alphanumeric)
MAX_SECONDS = 300.0  # a voice command; longer audio belongs in the spool


class Handler(AsyncEventHandler):
    def __init__(self, gateway: Gateway, timeout: float, *args: Any) -> None:
        super().__init__(*args)
        self.gateway = gateway
        self.timeout = timeout
        self.converter = AudioChunkConverter(rate=16000, width=2, channels=1)
        self.language: str | None = None
        self.wav: wave.Wave_write | None = None
        self.job: tuple[str, Path] | None = None
        self.frames = 0

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event(self.info().event())
        elif Transcribe.is_type(event.type):
            self.language = Transcribe.from_event(event).language
        elif AudioStart.is_type(event.type):
            self.start()
        elif AudioChunk.is_type(event.type):
            if self.wav is None:
                self.start()
            chunk = self.converter.convert(AudioChunk.from_event(event))
            if self.frames < MAX_SECONDS * 16000 and self.wav is not None:
                self.wav.writeframes(chunk.audio)
                self.frames += len(chunk.audio) // 2
        elif AudioStop.is_type(event.type):
            text = await self.finish()
            await self.write_event(Transcript(text=text).event())
            return False
        return True

    def info(self) -> Info:
        attribution = Attribution(name="cesard", url="")  # no page outside the box
        models = [AsrModel(name=m, attribution=attribution, installed=True,
                           description=f"cesard model {m}", version=None,
                           languages=["en"] if m.endswith(".en") else sorted(LANGUAGES))
                  for m in self.gateway.models()]
        return Info(asr=[AsrProgram(name="cesard", attribution=attribution, installed=True,
                                    description="cesard: transcription through a durable "
                                    "spool", version=None, models=models)])

    def start(self) -> None:
        job_id, build = self.gateway.upload_dir()
        self.job = (job_id, build)
        self.wav = wave.open(str(build / UPLOAD_PART), "wb")
        self.wav.setnchannels(1)
        self.wav.setsampwidth(2)
        self.wav.setframerate(16000)
        self.frames = 0

    async def finish(self) -> str:
        if self.job is None or self.wav is None:
            return ""
        self.wav.close()
        self.wav = None
        job_id, build = self.job
        self.job = None
        options: dict[str, Any] = {"priority": "high"}
        if self.language and self.language != "en":
            options["language"] = self.language
        try:
            await asyncio.to_thread(self.gateway.publish, job_id, build, "wyoming.wav",
                                    options, CLIENT)
        except Exception:  # noqa: BLE001 - this request fails, the server goes on
            log.warning("wyoming: could not queue the audio", exc_info=True)
            await asyncio.to_thread(self.gateway.discard, build)
            return ""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(self.gateway.find, job_id, CLIENT)
            if found is not None and found.state in FINISHED:
                result = await asyncio.to_thread(self.gateway.result, found)
                if result is not None:
                    return str(result.get("text") or "")
            await asyncio.sleep(0.05)
        log.warning("job=%s wyoming: no result within %.0f s", job_id, self.timeout)
        return ""


async def serve(uri: str, gateway: Gateway, timeout: float) -> None:
    """Serve Wyoming ASR on ``uri`` (tcp://HOST:PORT) until cancelled. (``start``, not
    ``run``: run takes SIGTERM for itself, and uvicorn must get it to stop the rest.)"""
    server = AsyncServer.from_uri(uri)
    await server.start(lambda *a: Handler(gateway, timeout, *a))
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()
