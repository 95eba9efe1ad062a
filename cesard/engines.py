"""Which engine a worker runs: :func:`make_engine` by the configured name."""

from __future__ import annotations

from cesard.engine import Engine, WhisperEngine
from cesard.fake import FakeEngine


def make_engine(name: str, models: dict[str, str], compute_type: str = "int8",
                cpu_threads: int = 1, max_audio_seconds: float = 0, batch_size: int = 8,
                batch_min_seconds: float = 0, device: str = "cpu",
                max_loaded_models: int = 2) -> Engine:
    if name == "fake":
        return FakeEngine(models, max_audio_seconds, max_loaded_models)
    if name == "faster-whisper":
        return WhisperEngine(models, compute_type, cpu_threads, max_audio_seconds, batch_size,
                             batch_min_seconds, device, max_loaded_models)
    raise ValueError(f"unknown engine {name!r}")
