"""metrics_textfile: a Prometheus text file node_exporter can read at any moment."""

from __future__ import annotations

import re
from collections.abc import Callable

from helpers import Daemon, fake_script, wait_until


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_metrics_textfile_counts_jobs(make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon()
    prom = d.tmp / "cesard.prom"
    d.config["metrics_textfile"] = str(prom)
    d.start()
    ok = d.submit_bytes("a.wav", fake_script(text="x", duration=12.5, sleep=0.2))
    bad = d.submit_bytes("b.wav", fake_script(fail="UndecodableAudio"))
    d.wait_result(ok)
    d.wait_result(bad)

    def counted() -> str | None:
        text = prom.read_text() if prom.exists() else ""
        done = sample(text, "cesard_jobs_finished_total", status="done")
        failed = sample(text, "cesard_jobs_finished_total", status="failed")
        return text if (done, failed) == (1.0, 1.0) else None
    text = wait_until(counted, 15, "metrics to count one done and one failed job")
    assert sample(text, "cesard_audio_seconds_total") == 12.5
    assert (sample(text, "cesard_processing_seconds_total") or 0) >= 0.2
    assert sample(text, "cesard_queue_jobs", state="done") == 1
    assert sample(text, "cesard_running_jobs") == 0
    assert (sample(text, "cesard_last_success_timestamp_seconds") or 0) > 1.7e9
    # Each worker's device and models (issue 10): the fake engine holds the default model.
    assert sample(text, "cesard_worker_model_loaded", device="cpu", model="tiny.en") == 1
    # Every sample line is valid exposition format; HELP/TYPE precede each family.
    for line in text.splitlines():
        assert line.startswith("# ") or re.match(r'^[a-z_]+\{[^}]*\} [0-9.e+-]+$', line), line
    assert not list(d.tmp.glob(".cesard.prom.*"))  # no temp file left behind


def test_metrics_have_histograms_of_wait_time_and_speed(
        make_daemon: Callable[..., Daemon]) -> None:
    """prometheus_client's histograms: queue wait, transcription time, real-time factor."""
    d = make_daemon()
    prom = d.tmp / "cesard.prom"
    d.config["metrics_textfile"] = str(prom)
    d.start()
    for i in range(3):
        d.wait_result(d.submit_bytes(f"{i}.wav", fake_script(text="x", duration=10,
                                                             sleep=0.3)))

    def three() -> str | None:
        text = prom.read_text() if prom.exists() else ""
        return text if sample(text, "cesard_transcription_seconds_count") == 3 else None
    text = wait_until(three, 15, "three transcriptions in the histogram")
    assert sample(text, "cesard_queue_wait_seconds_count") == 3
    assert sample(text, "cesard_realtime_factor_count") == 3
    assert (sample(text, "cesard_transcription_seconds_sum") or 0) >= 0.9
    assert sample(text, "cesard_realtime_factor_bucket", le="+Inf") == 3
    assert "_created" not in text
