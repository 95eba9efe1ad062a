"""The job catalogue: each job's row of ``cesarctl list``, cached where the daemon can
keep it, always checked against the directories.

``state/catalog.sqlite`` (SQLite, the standard library's) holds one row per job of
incoming/, done/ and failed/: the fields ``cesarctl list`` shows, read once from the
job's own ``job.json`` and ``result.json``. Only the daemon writes it. It is never a
source of truth: ``cesarctl list`` lists each state directory (one listing, as
before) and takes a row only for a name it found there *in that state*; every other
name (a job that moved since, a new one, a catalogue that is missing, locked, stale or
unreadable) is read from its own files, as without a catalogue. Deleting the file
loses nothing; the daemon writes it again.

The daemon adds a row when it finishes a job, and reconciles the catalogue with the
directories a slice at a time in its loop (:meth:`Catalog.step`): after start-up and
then every ``rescan_interval``, names without a row get one, rows without a name go.

Privacy: the rows hold file names and owners. The file is the daemon's, mode 0600 in
``privacy: owner`` (members list their own jobs from the job directories they may
open) and 0640 with the spool's group in ``privacy: group`` (members see every job
there anyway).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cesard import fsops
from cesard import job as jobmod
from cesard.entries import is_ignored_name
from cesard.spool import Spool, read_small

log = logging.getLogger("cesard")

FILE = "catalog.sqlite"
STATES = ("incoming", "done", "failed")
# The first five are what 'cesarctl list' prints for scripts (read alone, they are read
# faster); the rest complete a row of 'cesarctl list --json'.
COLUMNS = ("state", "id", "status", "file", "owner", "submitted_at", "submitter", "priority",
           "finished_at", "duration", "error")
SHORT = 5
SCHEMA = (f"CREATE TABLE IF NOT EXISTS jobs (name TEXT PRIMARY KEY, {', '.join(COLUMNS)})")


def load_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file of a job (None when missing, unreadable or not an object)."""
    try:
        d = fsops.parse_json(read_small(path, 64 << 20), 64 << 20, max_depth=64)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError, jobmod.JobError):
        return None


def describe(spool: Spool, state: str, name: str) -> dict[str, Any]:
    """The row of ``state/name`` from its own files (what ``cesarctl list`` shows).
    Raises FileNotFoundError when it is gone."""
    path = spool.dir(state) / name
    d: dict[str, Any] = {"id": name, "state": state}
    st = path.lstat()
    if not os.path.isdir(path) or os.path.islink(path):
        d.update(id=None, file=jobmod.display_name(name), owner=jobmod.user_name(st.st_uid))
        return d
    meta = load_json(path / "job.json") or {}
    owner = meta.get("owner")
    res = (load_json(path / "result.json") or {}) if state in ("done", "failed") else None
    return row(state, name, meta, jobmod.user_name(owner if isinstance(owner, int)
                                                   else st.st_uid), res)


def row(state: str, job_id: str, meta: dict[str, Any], owner: str,
        result: dict[str, Any] | None) -> dict[str, Any]:
    """A job's row from its job.json fields (``submitted_at``, ``source_name``,
    ``submitter``, ``options``), its owner's name and, once finished, its result."""
    d: dict[str, Any] = {
        "id": job_id, "state": state, "submitted_at": meta.get("submitted_at"),
        "file": meta.get("source_name"), "submitter": meta.get("submitter"), "owner": owner,
        "priority": (meta.get("options") or {}).get("priority", "normal")}
    if result is not None:
        d["status"] = result.get("status")
        d["finished_at"] = result.get("finished_at")
        d["duration"] = result.get("duration")
        if result.get("error"):
            d["error"] = result["error"]
    return d


def _values(name: str, row: dict[str, Any]) -> tuple[Any, ...]:
    err = row.get("error")
    return (name, *(json.dumps(err) if k == "error" and err is not None else _cell(row.get(k))
                    for k in COLUMNS))


def _cell(value: Any) -> Any:
    """A value SQLite can store: text that is not valid UTF-8 (a lone surrogate from a
    member's job.json) spelled with escapes; anything but text and numbers as JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, (int, float)):
        return value
    return json.dumps(value, ensure_ascii=True)[:1000]


Row = tuple[Any, ...]  # COLUMNS (or the first SHORT of them), in order, then the name
STATE, ID, STATUS, FILE_, OWNER = range(SHORT)


def read(spool: Spool, state: str | None = None, full: bool = True) -> dict[str, Row]:
    """The rows the catalogue holds (of ``state`` only, if given), by name, as tuples of
    :data:`COLUMNS` (``full``) or of its first :data:`SHORT` ({} when there is none or it
    cannot be read: the caller then reads each job's files). :func:`as_dict` makes a
    full one a row of ``cesarctl list --json``."""
    path = spool.dir("state") / FILE
    if not os.access(path, os.R_OK):
        return {}
    # name last: a row is the tuple as it comes, no copy (200,000 of them for a list)
    query = f"SELECT {', '.join(COLUMNS if full else COLUMNS[:SHORT])}, name FROM jobs"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
        try:
            cur = db.execute(query + " WHERE state = ?", (state,)) if state else db.execute(query)
            return {r[-1]: r for r in cur}
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def as_dict(row: Row) -> dict[str, Any]:
    """A catalogue row as ``cesarctl list --json`` shows it (what :func:`describe` gives)."""
    d = {k: v for k, v in zip(COLUMNS, row[:len(COLUMNS)], strict=True)
         if v is not None or k in ("id", "state", "file", "owner")}
    if "error" in d:
        try:
            d["error"] = json.loads(d["error"])
        except ValueError:
            d.pop("error")
    return d


class Catalog:
    """The daemon's side: rows written in one transaction per loop step."""

    def __init__(self, spool: Spool, group_readable: bool) -> None:
        self.spool = spool
        self.path = spool.dir("state") / FILE
        self.group_readable = group_readable
        self.db: sqlite3.Connection | None = None
        self.pending: dict[str, dict[str, Any] | None] = {}  # name → row, None: delete
        self.walk: Iterator[tuple[str, str]] | None = None
        self.seen: set[str] = set()
        self.rows: dict[str, str] = {}  # name → state, as the file holds them
        self.next_walk = 0.0
        self.walk_since = 0.0
        self.written = 0
        self.failed = False

    def open(self) -> None:
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:
            log.warning("job catalogue %s unusable (%s); making it again", self.path, e)
            try:
                self.path.unlink()
                self._open()
            except (sqlite3.Error, OSError) as e2:
                log.error("job catalogue %s cannot be written (%s); 'cesarctl list' reads "
                          "every job's files instead", self.path, e2)
                self.db, self.failed = None, True

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o640 if self.group_readable else 0o600)
        try:
            os.fchmod(fd, 0o640 if self.group_readable else 0o600)
            if self.group_readable:
                os.fchown(fd, -1, os.stat(self.spool.root).st_gid)
        finally:
            os.close(fd)
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        # A cache: a crash may lose recent rows (they are read from the files), never
        # the jobs; no fsync per job.
        db.execute("PRAGMA synchronous=OFF")
        db.execute(SCHEMA)
        self.rows = dict(db.execute("SELECT name, state FROM jobs").fetchall())
        self.db = db

    def put(self, state: str, name: str) -> None:
        """Read ``state/name``'s row from its files now; written at the next flush."""
        try:
            self.pending[name] = describe(self.spool, state, name)
        except Exception:  # noqa: BLE001 - an entry never stops the catalogue or the daemon
            self.pending[name] = None

    def finished(self, state: str, result: dict[str, Any], source_name: str | None) -> None:
        """A job the daemon just finished into ``state``: its row from its result."""
        owner = result.get("owner")
        if not isinstance(owner, dict):
            self.put(state, str(result["id"]))
            return
        meta = {**result, "source_name": source_name}  # result.json repeats job.json's fields
        self.pending[str(result["id"])] = row(state, str(result["id"]), meta,
                                              str(owner.get("name")), result)

    def flush(self) -> None:
        if self.db is None or not self.pending:
            self.pending.clear()
            return
        put = [_values(n, r) for n, r in self.pending.items() if r is not None]
        drop = [(n,) for n, r in self.pending.items() if r is None]
        try:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT OR REPLACE INTO jobs (name, {', '.join(COLUMNS)}) "
                                f"VALUES ({', '.join('?' * (len(COLUMNS) + 1))})", put)
            self.db.executemany("DELETE FROM jobs WHERE name = ?", drop)
            self.db.execute("COMMIT")
        except (sqlite3.Error, ValueError) as e:  # UnicodeEncodeError among them
            log.warning("job catalogue %s: %s; it is made again (rows are read from the job "
                        "files meanwhile)", self.path, e)
            self.db.close()
            self.db, self.rows, self.walk = None, {}, None
            self.pending.clear()
            try:
                self.path.unlink()
            except OSError:
                pass
            return
        for n, r in self.pending.items():
            if r is None:
                self.rows.pop(n, None)
            else:
                self.rows[n] = r["state"]
        self.pending.clear()

    def _listing(self) -> Iterator[tuple[str, str]]:
        for state in STATES:
            try:
                with os.scandir(self.spool.dir(state)) as it:
                    names = [e.name for e in it]
            except OSError:
                continue
            for name in names:
                if name.startswith(".") or "~" in name or (state == "incoming"
                                                           and is_ignored_name(name)):
                    continue
                if jobmod.display_name(name) != name:
                    continue  # not UTF-8: no row (cesarctl list reads its files)
                yield state, name

    def step(self, now: float, interval: float, budget: float = 0.02) -> None:
        """Reconcile a slice of the catalogue with the directories (module docstring)."""
        if self.db is None:
            if not self.failed:
                self.open()
            if self.db is None:
                return
        if self.walk is None:
            if now < self.next_walk:
                self.flush()
                return
            self.walk, self.seen = self._listing(), set()
            self.walk_since, self.written = time.monotonic(), 0
        deadline = time.monotonic() + budget
        for i, (state, name) in enumerate(self.walk):
            self.seen.add(name)
            if self.rows.get(name) != state and name not in self.pending:
                self.put(state, name)
                self.written += 1
            if i % 64 == 63 and time.monotonic() >= deadline:
                self.flush()
                return
        gone = set(self.rows) - self.seen
        for name in gone:
            self.pending.setdefault(name, None)
        self.flush()
        if self.written or gone:
            log.info("job catalogue: %d row(s) written, %d removed in %.1f s; %d in all",
                     self.written, len(gone), time.monotonic() - self.walk_since,
                     len(self.rows))
        self.walk, self.seen = None, set()
        self.next_walk = now + interval

    def close(self) -> None:
        self.flush()
        if self.db is not None:
            self.db.close()
            self.db = None
