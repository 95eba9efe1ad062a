"""packaging/cesard.yaml against the daemon's configuration: every key documented with its
built-in default. Needs no systemd tools (these lived in tests/systemd/test_units.py, whose
module-wide skip took them along where systemd-analyze was missing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "contrib" / "systemd"
SPOOL = "/var/spool/cesar"


def timeout_stop_sec() -> int:
    for line in (UNITS / "cesard.service").read_text().splitlines():
        if line.startswith("TimeoutStopSec="):
            return int(line.split("=", 1)[1])
    raise AssertionError("cesard.service has no TimeoutStopSec=")


def _uncommented_config() -> dict:
    """packaging/cesard.yaml with its '#key:' lines (not '# prose') uncommented."""
    yaml = pytest.importorskip("yaml")
    text = (REPO / "packaging" / "cesard.yaml").read_text()
    assert yaml.safe_load(text) is None, "every key must be commented out"
    body = "\n".join(
        line[1:] for line in text.splitlines()
        if re.match(r"#[a-z]|#  [a-z]", line) and not line.startswith("#  large")
    )
    return yaml.safe_load(body)


def test_default_config_all_commented() -> None:
    conf = _uncommented_config()
    assert {
        "spool", "engine", "workers", "models", "defaults", "watch",
        "poll_interval", "settle_seconds", "shutdown_grace", "max_attempts",
        "retry_delays", "job_timeout", "keep_audio", "lease_seconds",
        "queue_capacity", "metrics_textfile", "max_file_bytes",
        "max_audio_seconds", "max_jobs_per_worker", "worker_memory_limit",
    } <= set(conf)
    assert set(conf["defaults"]) == {
        "model", "language", "task", "beam_size", "vad_filter",
        "word_timestamps", "initial_prompt", "priority", "formats", "diarize", "speakers",
        "min_speakers", "max_speakers",
    }
    assert conf["spool"] == SPOOL
    assert conf["shutdown_grace"] < timeout_stop_sec()


def test_default_config_matches_daemon() -> None:
    """Every key the daemon knows is documented, with the daemon's default."""
    try:
        from cesard import config
    except ImportError as e:
        pytest.skip(f"cesard not importable: {e}")
    conf = _uncommented_config()
    assert set(conf) == set(config.KEYS)
    parsed = config.parse(conf, "packaging/cesard.yaml")
    builtin = config.parse({}, "built-in defaults")
    assert parsed.to_dict() == builtin.to_dict()
