"""Prometheus metrics as a text file for node_exporter's textfile collector.

Counters start at zero with each daemon start (Prometheus handles resets).
The file is written by temp file + rename, so the collector never reads half.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesard.fsops import write_atomic


@dataclass
class Metrics:
    finished: dict[str, int] = field(
        default_factory=lambda: {"done": 0, "failed": 0, "cancelled": 0})
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    last_success: float = 0.0

    def job_finished(self, status: str, audio_s: float | None, processing_s: float | None,
                     now: float) -> None:
        self.finished[status] = self.finished.get(status, 0) + 1
        if audio_s:
            self.audio_seconds += audio_s
        if processing_s:
            self.processing_seconds += processing_s
        if status == "done":
            self.last_success = now

    def render(self, queue: dict[str, int], running: int, spool: str,
               workers: list[dict[str, Any]] | None = None) -> str:
        lbl = f'spool="{spool}"'
        out = [
            "# HELP cesard_jobs_finished_total Jobs finished since the daemon started.",
            "# TYPE cesard_jobs_finished_total counter",
        ]
        out += [f'cesard_jobs_finished_total{{{lbl},status="{s}"}} {n}'
                for s, n in sorted(self.finished.items())]
        out += ["# HELP cesard_queue_jobs Jobs in each spool state.",
                "# TYPE cesard_queue_jobs gauge"]
        out += [f'cesard_queue_jobs{{{lbl},state="{s}"}} {n}' for s, n in sorted(queue.items())]
        out += [
            "# HELP cesard_audio_seconds_total Seconds of audio transcribed.",
            "# TYPE cesard_audio_seconds_total counter",
            f"cesard_audio_seconds_total{{{lbl}}} {self.audio_seconds:.3f}",
            "# HELP cesard_processing_seconds_total Seconds spent transcribing.",
            "# TYPE cesard_processing_seconds_total counter",
            f"cesard_processing_seconds_total{{{lbl}}} {self.processing_seconds:.3f}",
            "# HELP cesard_running_jobs Jobs being transcribed now.",
            "# TYPE cesard_running_jobs gauge",
            f"cesard_running_jobs{{{lbl}}} {running}",
            "# HELP cesard_last_success_timestamp_seconds When a job last finished done.",
            "# TYPE cesard_last_success_timestamp_seconds gauge",
            f"cesard_last_success_timestamp_seconds{{{lbl}}} {self.last_success:.3f}",
            "# HELP cesard_worker_model_loaded A worker process holds this model on this device.",
            "# TYPE cesard_worker_model_loaded gauge",
        ]
        for w in workers or []:
            for model in w.get("models") or []:
                out.append(f'cesard_worker_model_loaded{{{lbl},worker="{w["pid"]}",'
                           f'device="{w["device"]}",model="{_escape(model)}"}} 1')
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_textfile(path: str, text: str) -> None:
    """Write ``path`` like every file the daemon publishes (cesard.fsops.write_atomic: a
    temp name of its own, created with O_EXCL | O_NOFOLLOW, then renamed; not fsynced)."""
    p = Path(path)
    write_atomic(p.parent, p.name, text.encode(), mode=0o644, durable=False)
