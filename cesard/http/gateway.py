"""cesard-http's side of the spool: a client of it exactly like cesarctl (docs/spool.md,
"Handing in work"), never of the daemon's internals. A job an HTTP client submits is
an ordinary job owned by the gateway's user. Which client made it is the gateway's own
record, ``state_dir/jobs/CLIENT/ID`` (written before the job is published; nobody else
can write there): a client sees only the jobs recorded as its own whose owner is the
gateway's uid, never a member's job (the daemon names the submitter from the
filesystem, so job.json cannot say which client it was)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import config as configmod
from cesard import fsops, publish
from cesard import job as jobmod
from cesard.ctl.common import daemon_alive, load_json, read_status
from cesard.fsops import write_atomic
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
    """Verbs: upload_dir, publish, discard, find, result, live, cancel, queued, sweep, up.
    Fields: the spool, this process's uid, the directory of its clients' records."""

    def __init__(self, cfg: configmod.Config) -> None:
        self.cfg = cfg
        self.spool = Spool(Path(cfg.spool))
        self.uid = os.geteuid()
        self.records = Path(str(cfg.http_settings["state_dir"])) / "jobs"

    # --- submitting ---------------------------------------------------------------
    def upload_dir(self) -> tuple[str, Path]:
        """A new job id and its directory in tmp/; the audio streams to UPLOAD_PART."""
        return publish.start(self.spool)

    def publish(self, job_id: str, build: Path, filename: str, options: dict[str, Any],
                client: Client) -> None:
        name = publish.audio_name(filename)
        os.rename(build / UPLOAD_PART, build / name)
        mine = self.records / client.name
        mine.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(mine, job_id, b"")  # before the job exists: it is never unclaimed
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
        if not (self.records / client.name / job_id).exists():
            return None
        meta = load_json(path / META) or {}
        owner = meta.get("owner")
        if state == "incoming" or not isinstance(owner, int) or isinstance(owner, bool):
            owner = st.st_uid  # in incoming/ job.json is the submitter's own writing
        if owner != self.uid:
            return None
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
        """(jobs, bytes) of ``client``'s that wait in incoming/."""
        count = size = 0
        try:
            ids = [e.name for e in os.scandir(self.records / client.name)]
        except OSError:
            ids = []
        for job_id in ids:
            path = self.spool.dir("incoming") / job_id
            try:
                size += sum(e.stat().st_size for e in os.scandir(path) if e.is_file())
            except OSError:
                continue  # not queued (any more)
            count += 1
        return count, size

    def sweep(self, now: float) -> int:
        """Forget the records of jobs no longer in the spool (pruned), an hour old at
        least (a younger one may be an upload on its way); how many."""
        gone = 0
        try:
            clients = list(os.scandir(self.records))
        except OSError:
            return 0
        for c in clients:
            for e in os.scandir(c.path):
                if e.name.startswith(".") or now - e.stat().st_mtime < 3600:
                    continue
                if self.spool.locate(e.name) is None:
                    try:
                        os.unlink(e.path)
                        gone += 1
                    except OSError:
                        pass
        return gone

    def up(self) -> bool:
        return daemon_alive(read_status(self.spool))

    def models(self) -> list[str]:
        return list(self.cfg.model_dirs) if self.cfg.engine == "faster-whisper" else \
            [self.cfg.job_defaults().model]
