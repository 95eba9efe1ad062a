"""cesard-http's side of the spool: a client of it exactly like cesarctl (docs/spool.md,
"Handing in work"), never of the daemon's internals. A job an HTTP client submits is
an ordinary job owned by the gateway's user, with ``submitter`` ``http:NAME``; a client
sees only such jobs of its own name (and never a member's job, whose owner is another
uid even when its job.json says ``http:…``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import config as configmod
from cesard import fsops, publish
from cesard import job as jobmod
from cesard.ctl.common import daemon_alive, load_json, my_queue, read_status
from cesard.http.tokens import Client
from cesard.spool import META, Spool

UPLOAD_PART = ".upload"  # the audio while it streams in, in the job's tmp/ directory
FINISHED = ("done", "failed")


@dataclass
class Found:
    state: str  # incoming, processing, done, failed
    path: Path
    meta: dict[str, Any]


class Gateway:
    """Verbs: upload_dir, publish, discard, find, result, live, cancel, queued, up."""

    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self.spool = Spool(Path(cfg.spool))
        self.uid = os.geteuid()

    # --- submitting ---------------------------------------------------------------
    def upload_dir(self) -> tuple[str, Path]:
        """A new job id and its directory in tmp/; the audio streams to UPLOAD_PART."""
        return publish.start(self.spool)

    def publish(self, job_id: str, build: Path, filename: str, options: dict[str, Any],
                client: Client) -> None:
        name = publish.audio_name(filename)
        os.rename(build / UPLOAD_PART, build / name)
        publish.finish(self.spool, job_id, build, name, options, client.submitter)

    def discard(self, build: Path) -> None:
        fsops.remove_tree(build)

    # --- a client's jobs ------------------------------------------------------------
    def find(self, job_id: str, client: Client) -> Found | None:
        """The job if it is ``client``'s (None for any other, whether it exists or not)."""
        if not jobmod.valid_id(job_id):
            return None
        located = self.spool.locate(job_id)
        if located is None:
            return None
        state, path = located
        try:
            st = os.stat(path)
        except OSError:
            return None
        meta = load_json(path / META)
        if meta is None or meta.get("submitter") != client.submitter:
            return None
        owner = meta.get("owner")
        if (owner if isinstance(owner, int) and not isinstance(owner, bool)
                else st.st_uid) != self.uid:
            return None  # a member's job that says http:NAME is still the member's
        return Found(state, path, meta)

    def result(self, found: Found) -> dict[str, Any] | None:
        return load_json(found.path / "result.json") if found.state in FINISHED else None

    def live(self, job_id: str) -> dict[str, Any]:
        """What status.json says of a job: ``running`` (its progress) or ``waiting``."""
        st = read_status(self.spool) or {}
        for key in ("running", "waiting"):
            for r in st.get(key) or []:
                if isinstance(r, dict) and r.get("id") == job_id:
                    return dict(r, state=key)
        return {}

    def cancel(self, job_id: str, client: Client, timeout: float = 10.0) -> dict[str, Any]:
        """Ask the daemon to cancel; its reply (``ok``, ``message``), or a timeout."""
        name = publish.request(self.spool, "cancel", job_id, client.submitter)
        reply = publish.wait_reply(self.spool.dir("control"), name, timeout)
        return reply or {"ok": False, "message": "the daemon did not answer (is it running?); "
                         "the request stays and is acted on when it starts"}

    def queued(self, client: Client) -> tuple[int, int]:
        """(jobs, bytes) of ``client``'s that wait in incoming/ (the daemon's view of this
        user's queue; where it has none, the ones this process can list)."""
        ids: list[str] = []
        entries = my_queue(self.spool)
        if entries:
            ids = [str(e.get("id")) for e in entries if e.get("id")]
        else:
            try:
                ids = [e.name for e in os.scandir(self.spool.dir("incoming"))]
            except OSError:
                ids = []
        count = size = 0
        for job_id in ids:
            path = self.spool.dir("incoming") / job_id
            meta = load_json(path / META)
            if meta is None or meta.get("submitter") != client.submitter:
                continue
            count += 1
            try:
                size += sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
            except OSError:
                pass
        return count, size

    def up(self) -> bool:
        return daemon_alive(read_status(self.spool))

    def models(self) -> list[str]:
        return list(self.cfg.model_dirs) if self.cfg.engine == "faster-whisper" else \
            [self.cfg.job_defaults().model]


def wait_seconds(started: float, timeout: float) -> float:
    return max(0.0, started + timeout - time.monotonic())
