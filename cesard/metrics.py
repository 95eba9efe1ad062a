"""Prometheus metrics as a text file for node_exporter's textfile collector, made with
prometheus_client (a registry of this daemon's own; the exposition is the library's).

Counters start at zero with each daemon start (Prometheus handles resets). Histograms:
how long jobs waited in the queue, how long they took to transcribe, and their
real-time factor. The file is written by temp file + rename, so the collector never
reads half.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

from cesard.fsops import write_atomic

# no *_created series: a textfile is read, not scraped live
disable_created_metrics()  # type: ignore[no-untyped-call]
SECONDS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
RTF = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class Metrics:
    """Verbs: job_finished (as jobs end), render (the exposition, with the gauges of now).
    ``finished`` counts jobs by status since the start (what status.json shows)."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        self.finished: dict[str, int] = {"done": 0, "failed": 0, "cancelled": 0}
        r = self.registry = CollectorRegistry()
        s, v = ["spool"], [spool]
        self.jobs = Counter("cesard_jobs_finished", "Jobs finished since the daemon started.",
                            [*s, "status"], registry=r)
        self.audio = Counter("cesard_audio_seconds", "Seconds of audio transcribed.", s,
                             registry=r).labels(*v)
        self.processing = Counter("cesard_processing_seconds", "Seconds spent transcribing.",
                                  s, registry=r).labels(*v)
        self.queue = Gauge("cesard_queue_jobs", "Jobs in each spool state.", [*s, "state"],
                           registry=r)
        self.running = Gauge("cesard_running_jobs", "Jobs being transcribed now.", s,
                             registry=r).labels(*v)
        self.last_success = Gauge("cesard_last_success_timestamp_seconds",
                                  "When a job last finished done.", s, registry=r).labels(*v)
        self.models = Gauge("cesard_worker_model_loaded", "A worker process holds this model "
                            "on this device.", [*s, "worker", "device", "model"], registry=r)
        self.queue_wait = Histogram("cesard_queue_wait_seconds", "How long a finished job "
                                    "waited in the queue before it started.", s,
                                    buckets=SECONDS, registry=r).labels(*v)
        self.transcription = Histogram("cesard_transcription_seconds", "How long a done job "
                                       "took to transcribe.", s, buckets=SECONDS,
                                       registry=r).labels(*v)
        self.rtf = Histogram("cesard_realtime_factor", "Transcription time over audio "
                             "duration of a done job (lower is faster).", s, buckets=RTF,
                             registry=r).labels(*v)
        for status in self.finished:
            self.jobs.labels(spool, status)  # present at 0 from the start

    def job_finished(self, status: str, audio_s: float | None, processing_s: float | None,
                     now: float, queued_s: float | None = None,
                     rtf: float | None = None) -> None:
        self.finished[status] = self.finished.get(status, 0) + 1
        self.jobs.labels(self.spool, status).inc()
        if audio_s:
            self.audio.inc(audio_s)
        if processing_s:
            self.processing.inc(processing_s)
        if queued_s is not None and queued_s >= 0:
            self.queue_wait.observe(queued_s)
        if status == "done":
            self.last_success.set(now)
            if processing_s is not None:
                self.transcription.observe(processing_s)
            if rtf is not None:
                self.rtf.observe(rtf)

    def render(self, queue: dict[str, int], running: int,
               workers: list[dict[str, Any]] | None = None) -> str:
        for state, n in queue.items():
            self.queue.labels(self.spool, state).set(n)
        self.running.set(running)
        self.models.clear()
        for w in workers or []:
            for model in w.get("models") or []:
                self.models.labels(self.spool, str(w["pid"]), str(w["device"]), model).set(1)
        return generate_latest(self.registry).decode()


def write_textfile(path: str, text: str) -> None:
    """Write ``path`` like every file the daemon publishes (cesard.fsops.write_atomic: a
    temp name of its own, created with O_EXCL | O_NOFOLLOW, then renamed; not fsynced)."""
    p = Path(path)
    write_atomic(p.parent, p.name, text.encode(), mode=0o644, durable=False)
