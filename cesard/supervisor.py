"""The supervisor: one event loop that claims jobs, feeds workers and finishes results.

It never imports faster-whisper. Signal handlers only set flags and wake the
loop through a pipe; :meth:`Supervisor.run_once` does the work and can be
stepped with an explicit ``now``.

Shutdown (docs/spool.md, guarantee 5): the first SIGTERM/SIGINT stops claiming; running
jobs get ``shutdown_grace`` seconds, then their workers are killed and the
jobs go back to ``incoming/`` without an attempt counted; exit status 0. A
second SIGTERM/SIGINT requeues at once. SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cesard import (
    catalog,
    dedupe,
    devices,
    dispatch,
    fsops,
    hooks,
    limits,
    models,
    outputs,
    pool,
    privacy,
    replies,
    status,
)
from cesard import config as configmod
from cesard import job as jobmod
from cesard.clock import Clock
from cesard.control import Control
from cesard.fsops import write_atomic
from cesard.index import Pending, QueueIndex
from cesard.job import JobMeta, JobOptions
from cesard.metrics import Metrics
from cesard.oom import OomWatch
from cesard.pool import StartupError, WorkerProc
from cesard.quarantine import Quarantine
from cesard.sources import Sources
from cesard.spool import (
    HOSTS,
    STORAGE_ERRNOS,
    Claimed,
    Claimer,
    Entry,
    Spool,
    Unclaimable,
    host_file_name,
)
from cesard.systemd import Notifier
from cesard.watch import Watcher

log = logging.getLogger("cesard")

RELOAD_ANSWER = "reload.json"  # the answer to the last SIGHUP (cesard --reload waits for it)
# A job's start or finish reaches status.json within this long (batched under load).
STATUS_URGENT_S = 0.05
# Config keys whose change needs new worker processes.
WORKER_KEYS = ("engine", "workers", "cpu_threads", "compute_type", "models", "preload_models",
               "device", "device_index", "max_loaded_models",
               "max_audio_seconds", "worker_memory_limit", "log_level", "batch_size",
               "batch_min_seconds")


@dataclass
class Running:
    """A claimed job, from claim until it is finished, requeued or deferred."""

    id: str
    path: Path
    meta: JobMeta
    options: JobOptions
    audio: str
    size: int
    started_at: str
    started: float
    deadline: float
    fraction: float = 0.0
    duration: float | None = None
    hashing: Future[dedupe.Match] | None = None  # dedupe: its audio is being looked up


class Supervisor:
    def __init__(self, cfg: configmod.Config, spool: Spool, config_path: str | None = None,
                 notifier: Notifier | None = None, drain: bool = False,
                 placement: devices.Placement | None = None) -> None:
        self.cfg = cfg
        self.placement = placement or devices.resolve("cpu", [], cfg.compute_type)
        self.model_infos = models.describe(cfg.model_dirs)
        self.english_only = {m.name for m in self.model_infos if m.english_only}
        self.spool = spool
        self.config_path = config_path
        self.notify = notifier or Notifier()
        self.drain = drain
        self.me = Claimer.me()
        self.index = QueueIndex()
        self.deferred: dict[str, float] = {}
        self.workers: list[WorkerProc] = []
        self.generation = 0
        self.held: Running | None = None  # an exclusive job waiting for the others
        self.solo: set[str] = set()  # jobs a crashed batch held: each runs alone next
        # results that could not be written while the storage did not answer (replies.py)
        self.waiting: dict[str, tuple[Running, str, dict[str, Any]]] = {}
        self.batch_since: float | None = None  # a batch waits for more jobs since then
        self.wake_at = float("inf")  # the loop wakes by then (a batch's wait ends)
        self.watcher: Watcher | None = None
        self.stopping = False
        self.stop_reason = "shutdown grace expired"
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.ready_sent = False
        self.clock = Clock()  # the loop's time: immune to wall-clock jumps (clock.py)
        self.started = time.time()
        self.on_disk = {"done": 0, "failed": 0}  # entries in done/ and failed/
        self.finished_mtime: dict[str, int] = {}  # their mtimes when counted
        self.metrics = Metrics()
        self.metrics_error_logged = False
        self.disk_full_until = 0.0
        self.storage_error: int | None = None  # the spool's storage failed the last step
        self.disk_full_logged = False
        self.next_rescan = 0.0
        self.next_heartbeat = 0.0
        self.next_recover = 0.0
        self.next_status = 0.0
        self.status_dirty = True
        self.status_urgent = False
        self.spawn_backoff = 0.0
        self._signals: list[int] = []
        self.control = Control(self)
        self.hooks = hooks.Hooks(cfg.hook_timeout, cfg.max_running_hooks, spool.root)
        self.dedupe: dedupe.Dedupe | None = None
        self.sources = Sources(self.wake)
        self.quarantine = Quarantine(spool.root)
        self.oom = OomWatch()  # was a worker's SIGKILL the kernel's OOM killer? (oom.py)
        self.catalog = catalog.Catalog(spool, group_readable=cfg.privacy == "group")
        # incoming/ entries the daemon may not take, by name → st_ctime_ns when refused;
        # a chmod (IN_ATTRIB) or any other change of ctime brings them back.
        self.blocked: dict[str, int] = {}
        self.indexing: Iterator[str] | None = None  # the start-up listing, until indexed
        self.indexing_since = 0.0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    # --- signals ------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # the loop acts; see _handle_signals

    def install_signals(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, self._on_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _handle_signals(self, now: float) -> None:
        while self._signals:
            s = self._signals.pop(0)
            if s == signal.SIGHUP:
                self.reload()
            elif not self.stopping:
                log.info("received %s: no new claims; running jobs get %.0f s "
                         "(shutdown_grace) before they are requeued",
                         signal.Signals(s).name, self.cfg.shutdown_grace)
                self.begin_stop(now)
            else:
                log.info("received %s again: requeueing running jobs now",
                         signal.Signals(s).name)
                self.stop_deadline = now
                self.stop_reason = f"{signal.Signals(s).name} received twice"

    def begin_stop(self, now: float) -> None:
        self.stopping = True
        self.stop_reason = "shutdown grace expired"
        self.stop_deadline = now + self.cfg.shutdown_grace
        self.notify.stopping()
        if self.held is not None:
            self._requeue(self.held, "shutting down")
            self.held = None
        for w in self.workers:
            if not w.jobs:
                self._close_worker(w)

    # --- start-up -----------------------------------------------------------------

    def start(self) -> None:
        """Create/check the spool, recover, start workers and wait until they are ready."""
        self.spool.create()
        self.spool.check()
        status.warn_if_shared_with_a_local_daemon(self)
        if self.cfg.dedupe:
            self.dedupe = dedupe.Dedupe(self.spool, self.cfg.engine)
        # Workers load their models while the spool is recovered and indexed; none gets
        # a job before run_once, so recovery still happens before any claim.
        for _ in range(pool.worker_count(self.cfg, self.placement)):
            self._spawn()
        now = self.clock.now()
        self.recover(now, startup=True)
        self.next_recover = now + self.cfg.lease_seconds / 2
        for name in self.spool.clean_tmp(time.time()):  # (file times are wall-clock times)
            log.info("removed %s from tmp/: an unpublished build older than a day",
                     jobmod.display_name(name))
        self.watcher = Watcher(self.spool.root, self.cfg.watch)
        # incoming/ is indexed a slice per loop step (_index_step): READY does not wait
        # for a long queue; claims do, so the order still holds.
        self.indexing = self.spool.scan("incoming")
        self.indexing_since = time.monotonic()
        self._scan_deferred(now)
        self.next_rescan = now + self._rescan_interval()
        self.control.scan(now)
        self._count_finished()
        log.info("started: spool %s, engine %s, %d worker(s), watch %s", self.spool.root,
                 self.cfg.engine, len(self.workers),
                 "poll" if self.watcher.polling else "inotify")

    def _index_step(self, now: float, budget: float = 0.05) -> None:
        """Index the next names of the start-up listing of incoming/, for ``budget`` s."""
        if self.indexing is None:
            return
        deadline = time.monotonic() + budget
        for i, name in enumerate(self.indexing):
            if name not in self.index and name not in self.index.pending:
                self._index_name(name, now, settled=False)
            if i % 128 == 127 and time.monotonic() >= deadline:
                return
        self.indexing = None
        self.status_dirty = True
        log.info("indexed %d queued job(s) in %.1f s", len(self.index) + len(self.index.pending),
                 time.monotonic() - self.indexing_since)

    def recover(self, now: float, startup: bool = False) -> None:
        """Return orphaned claims to incoming/ (I4). Only this method recovers."""
        for name in self.spool.orphans(self.me, now, self.cfg.lease_seconds):
            if self.quarantine.holds("processing", name):
                continue
            with self.quarantine.guard("processing", name, "recovering"):
                self._recover_one(name, now, startup)

    def _recover_one(self, name: str, now: float, startup: bool) -> None:
        reason = ("the daemon holding this job stopped without finishing it"
                  if startup else "the claim's lease expired (its daemon is gone)")
        try:
            state, job_id = self.spool.recover(name, self.cfg.max_attempts,
                                               self.clock.shown(now), reason)
        except OSError as e:
            # It stays in processing/ (maybe as ID~rTOKEN) and is recovered later.
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(now, e)
            else:
                log.error("recovering %s from processing/ failed: %s; trying again later",
                          jobmod.display_name(name), e)
            return
        if state == "incoming":
            log.warning("job=%s recovered from processing/ (%s); queued again", job_id,
                        reason)
            self._index_name(job_id, now, settled=True)
        elif state == "failed":
            log.error("job=%s failed: WorkerCrashed: %s; its daemon stopped %d times while "
                      "it ran", job_id, reason, jobmod.interruption_limit(self.cfg.max_attempts))
            self.hooks.after_recovery(job_id, self.spool.dir("failed") / job_id,
                                      self.cfg.hooks)
            self.on_disk["failed"] += 1
            self.metrics.job_finished("failed", None, None, self.clock.shown(now))

    def _count_finished(self) -> None:
        for state in ("done", "failed"):
            self.finished_mtime[state] = self._mtime(state)
            self.on_disk[state] = sum(1 for _ in self.spool.scan(state))

    def _mtime(self, state: str) -> int:
        try:
            return os.stat(self.spool.dir(state)).st_mtime_ns
        except OSError:
            return 0

    def _recount_if_changed(self) -> None:
        """Count done/ and failed/ again when something else changed them (cesarctl prune,
        retry, another host): 'cesarctl status' shows these counts while the directories
        are older than status.json."""
        if any(self._mtime(s) != self.finished_mtime.get(s) for s in ("done", "failed")):
            self._count_finished()
            self.status_dirty = True

    # --- workers ------------------------------------------------------------------

    def _spawn(self) -> WorkerProc:
        wp = pool.spawn(self.cfg, self.placement,
                        pool.free_device(self.workers, self.placement), self.generation)
        self.workers.append(wp)
        log.debug("worker %d started on %s", wp.pid, wp.device)
        return wp

    def _close_worker(self, w: WorkerProc) -> None:
        """Ask an idle worker to exit (EOF on its stdin)."""
        if w.proc.stdin and not w.proc.stdin.closed:
            try:
                w.proc.stdin.close()
            except OSError:
                pass

    def _kill_worker(self, w: WorkerProc) -> None:
        try:
            w.proc.kill()
        except ProcessLookupError:
            pass
        w.proc.wait()
        self._reap(w)

    def _reap(self, w: WorkerProc) -> None:
        if w in self.workers:
            self.workers.remove(w)
        os.close(w.reply_fd)
        self._close_worker(w)

    def _ours(self, job: Running, what: str) -> bool:
        """The fence before a job leaves processing/: True if we still hold its claim."""
        if self.spool.holds(job.path, self.me):
            return True
        log.warning("job=%s: not %s here: this daemon's claim was taken over (its lease "
                    "expired while it was cut off); the daemon holding it now finishes it",
                    job.id, what)
        return False

    def _keep_workers(self, now: float) -> None:
        """Replace workers that exited; retire idle ones of an old generation."""
        for w in list(self.workers):
            if w.generation != self.generation and not w.jobs and not w.retiring:
                w.retiring = True
                self._close_worker(w)
        if self.stopping or now < self.spawn_backoff:
            return
        live = [w for w in self.workers if not w.retiring]
        wanted = pool.worker_count(self.cfg, self.placement)
        if len(live) < wanted:
            for _ in range(wanted - len(live)):
                self._spawn()
            if not self.ready_sent:
                return
            # Back off if workers keep dying before they are ready.
            self.spawn_backoff = now + 1.0

    # --- the queue ----------------------------------------------------------------

    def _index_name(self, name: str, now: float, settled: bool) -> None:
        if self.quarantine.holds("incoming", name):
            return
        with self.quarantine.guard("incoming", name, "indexing"):
            self._index(name, now, settled)

    def _index(self, name: str, now: float, settled: bool) -> None:
        entry = self.spool.entry_key(name)
        if entry is None:
            self.index.discard(name)
            self.blocked.pop(name, None)
            return
        if name in self.blocked:
            try:
                if os.lstat(self.spool.dir("incoming") / name).st_ctime_ns == self.blocked[name]:
                    return  # unchanged since it was refused
            except FileNotFoundError:
                return
            del self.blocked[name]
        if settled or (entry.is_dir and
                       os.path.lexists(self.spool.dir("incoming") / name / "job.json")):
            # A job dir is published whole by rename; one made in place (mkdir, cp -r)
            # without job.json yet waits for the settle rule like a bare file.
            self._enqueue(entry, now)
            return
        try:
            st = os.lstat(self.spool.dir("incoming") / name)
        except FileNotFoundError:
            self.index.discard(name)
            return
        seen = self.index.pending.get(name)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.index.pending[name] = Pending(st.st_size, st.st_mtime_ns, now)
        elif now - seen.since >= self.cfg.settle_seconds:
            self._enqueue(entry, now)

    def _enqueue(self, entry: Entry, now: float) -> None:
        """Index a settled entry, or fail it at once past its owner's limits."""
        if entry.name not in self.index:
            err = limits.over_limit(self.cfg, self.index, self.spool.dir("incoming"), entry)
            if err is not None:
                self._reject(entry, err, now)
                return
        self.index.add(entry)

    def _reject(self, entry: Entry, err: jobmod.JobError, now: float) -> None:
        """Claim an entry and fail it with ``err`` without a worker."""
        try:
            claimed = self.spool.claim(entry, self.me, now)
        except Unclaimable as e:
            self._block(entry.name, str(e))
            return
        except OSError as e:
            log.error("cannot refuse %s (%s): %s; it stays in incoming/",
                      jobmod.display_name(entry.name), err, e)
            return
        if claimed is not None:
            claimed.error = err
            self._prepare(claimed, now)

    def rescan(self, now: float) -> None:
        """List incoming/ and deferred/ once; new entries join the index."""
        names = set(self.spool.scan("incoming"))
        for gone in self.index.names() - names:
            self.index.discard(gone)
        for gone in set(self.index.pending) - names:
            self.index.pending.pop(gone, None)
        for gone in set(self.blocked) - names:
            del self.blocked[gone]
        self.quarantine.forget("incoming", names)
        known = self.index.names()
        for name in names - known:
            self._index_name(name, now, settled=False)
        self._scan_deferred(now)
        self.status_dirty = True

    def _scan_deferred(self, now: float) -> None:
        deferred = set(self.spool.scan("deferred"))
        for name in deferred - set(self.deferred):
            due = self.spool.due(name, now)
            self.deferred[name] = now if due is None else self.clock.from_wall(due)
        for gone in set(self.deferred) - deferred:
            del self.deferred[gone]
        self.quarantine.forget("deferred", deferred)

    def _on_events(self, now: float) -> None:
        if self.watcher is None:
            return
        for ev in self.watcher.read():
            if ev.where == "control":
                if not ev.removed:
                    self.control.handle(ev.name, now)
            elif ev.removed:
                self.index.discard(ev.name)
            else:
                self._index_name(ev.name, now, settled=ev.settled)
            self.status_dirty = True
        if self.watcher.overflowed:
            self.watcher.overflowed = False
            log.warning("inotify queue overflowed; rescanning the spool")
            self.rescan(now)

    def _undefer(self, now: float) -> None:
        for name, due in list(self.deferred.items()):
            if due <= now and not self.quarantine.holds("deferred", name):
                with self.quarantine.guard("deferred", name, "queueing again"):
                    if self.spool.undefer(name):
                        log.info("job=%s retry is due; queued again", name)
                        self._index_name(name, now, settled=True)
                    del self.deferred[name]

    def _check_pending(self, now: float) -> None:
        for name in list(self.index.pending):
            self._index_name(name, now, settled=False)

    # --- claiming -----------------------------------------------------------------

    def wake(self) -> None:
        """Wake the loop from another thread (a dedupe lookup finished)."""
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass  # the pipe is full: the loop wakes anyway

    def _claim(self, entry: Entry, now: float) -> Running | None:
        try:
            claimed = self.spool.claim(entry, self.me, now)
        except Unclaimable as e:
            self._block(entry.name, str(e))
            return None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(now, e)
                self.index.add(entry)
                return None
            raise
        if claimed is None:
            return None
        if self.disk_full_logged:
            log.info("the spool has space again; claiming resumed")
            self.disk_full_logged = False
        return self._prepare(claimed, now)

    def _block(self, name: str, why: str) -> None:
        """Leave an entry the daemon may not take where it is, saying once what to do."""
        try:
            ctime = os.lstat(self.spool.dir("incoming") / name).st_ctime_ns
        except FileNotFoundError:
            return
        if name not in self.blocked:
            log.warning("%s; it stays in incoming/ and is taken once that is fixed", why)
        self.blocked[name] = ctime

    def _prepare(self, c: Claimed, now: float) -> Running | None:
        """Validate a claimed job; a bad one is finished into failed/ here."""
        started_at = jobmod.iso(self.clock.shown(now))
        meta = c.meta
        meta.id = c.id  # the directory's name is the id (a clash renames it at claim)
        try:
            if c.error is not None:
                raise c.error
            options = jobmod.parse_options(meta.options, self.cfg.job_defaults(),
                                           where=f"{c.id}/job.json")
            if self.cfg.engine == "faster-whisper" and options.model not in self.cfg.model_dirs:
                raise jobmod.UnknownModel(
                    f"{c.id}/job.json: model {options.model!r} is not configured (configured: "
                    f"{', '.join(self.cfg.model_dirs)}); pick one of those or add it under "
                    "'models' in the configuration")
            try:
                self.cfg.check_then(options)
                jobmod.check_language(options, options.model in self.english_only)
            except jobmod.InvalidOption as e:
                raise jobmod.InvalidOption(f"{c.id}/job.json: {e}") from None
            audio, size = self.spool.find_audio(c.path, meta, self.cfg.max_file_bytes)
        except jobmod.JobError as e:
            bad = Running(c.id, c.path, meta, JobOptions(), "", 0, started_at, now, now)
            self._finish(bad, "failed", None, None, e, now)
            return None
        timeout = self.cfg.job_timeout or max(120.0, 120.0 + size / 1e6)
        log.info("job=%s claimed: %s (%d bytes, priority %s, attempt %d)", c.id,
                 jobmod.display_name(audio), size, options.priority, meta.attempts + 1)
        return Running(c.id, c.path, meta, options, audio, size, started_at, now, now + timeout)

    def step(self, now: float) -> None:
        """:meth:`run_once`, riding out a spool whose storage stops answering, and any
        error no check foresaw (cesard/quarantine.py): only configuration and start-up
        errors end the daemon."""
        try:
            self.run_once(now)
        except StartupError:
            raise
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(now, e)
            elif e.errno in STORAGE_ERRNOS:
                self._storage_away(now, e)
            else:
                self.quarantine.loop_error(now)
            return
        except Exception:  # noqa: BLE001 - the loop's contract (cesard/quarantine.py)
            self.quarantine.loop_error(now)
            return
        if self.storage_error is not None:
            if self.storage_error == errno.EROFS and fsops.read_only(self.spool.root):
                return  # a step that wrote nothing proves nothing: still read-only
            log.info("the spool's storage answers again (it is writable); claiming resumed")
            self.storage_error = None
            self.disk_full_until = 0.0

    def _storage_away(self, now: float, e: OSError) -> None:
        """The spool's storage failed a step (a network filesystem's server restarting,
        a partition): pause claims, keep every job where it is, try again in 5 s."""
        self.disk_full_until = now + 5.0
        if self.storage_error is None and e.errno == errno.EROFS:
            log.error("the spool's filesystem is read-only (%s): claiming paused; every job "
                      "and result stays where it is and is written once it is writable "
                      "again (remount it read-write; check the disk: an ext4 error remounts "
                      "it read-only); trying again every 5 s", e.filename or self.spool.root)
        elif self.storage_error is None:
            log.error("the spool's storage is not answering (%s: %s): claiming paused; every "
                      "job stays where it is; trying again every 5 s", e.strerror,
                      e.filename or self.spool.root)
        self.storage_error = e.errno
        self.wake_at = min(self.wake_at, now + 5.0)

    def _disk_full(self, now: float, e: OSError) -> None:
        self.disk_full_until = now + 5.0
        if not self.disk_full_logged:
            log.error("the spool's filesystem is full (%s): claiming paused; every job stays "
                      "where it is; free space in %s", e.strerror, self.spool.root)
            self.disk_full_logged = True

    # --- finishing ----------------------------------------------------------------

    def _finish(self, job: Running, status: str, source: dict[str, Any] | None,
                transcript: dict[str, Any] | None, error: jobmod.JobError | None,
                now: float, deduplicated_from: str | None = None) -> None:
        if not self._ours(job, "finished"):
            return
        finished_at = jobmod.iso(self.clock.shown(now))
        if source is None:
            source = self.sources.describe(
                job.id, job.path, job.meta, self.cfg.max_file_bytes,
                lambda s: self._finish(job, status, s, transcript, error, self.clock.now(),
                                       deduplicated_from))
            if source is None:
                return  # finished once its audio is hashed, off the loop (cesard/sources.py)
        attempts = job.meta.attempts + (1 if job.started_at else 0)
        planned = hooks.planned(self.cfg.hooks, status, job.options.then)
        result = jobmod.make_result(job.meta, status, job.options if job.audio else None, source,
                                    job.started_at, finished_at, self.me.worker_name, attempts,
                                    transcript, error, planned, deduplicated_from)
        files = outputs.render_all(result, job.options.formats) if status == "done" else {}
        state = "done" if status == "done" else "failed"
        try:
            path = self.spool.finish(job.id, state, result, files, self.cfg.keep_audio,
                                     job.audio or None, job.path)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_full(now, e)
                self._requeue(job, "the spool is full")
                return
            raise
        self.hooks.schedule(job.id, status, path, job.meta.owner, planned)
        self.catalog.finished(state, result, job.meta.source_name)
        if self.dedupe is not None and status == "done":
            self.dedupe.add(result, path.name)
        self.on_disk[state] += 1
        if self.finished_mtime.get(state) is not None:
            self.finished_mtime[state] = self._mtime(state)  # our own change, counted
        t = transcript or {}
        self.metrics.job_finished(status, t.get("duration"), t.get("transcribe_s"),
                                  self.clock.shown(now))
        self.status_urgent = True
        shown = jobmod.display_name(job.audio) if job.audio else str(source.get("name") or "-")
        if deduplicated_from:
            log.info("job=%s done: file=%s deduplicated from %s (same audio and options) "
                     "status=done", job.id, shown, deduplicated_from)
        elif status == "done":
            rtf = result["timings"]["realtime_factor"]
            log.info("job=%s done: file=%s duration=%.1fs realtime=%sx attempts=%d status=done",
                     job.id, shown, t.get("duration") or 0.0, rtf, attempts)
        elif status == "cancelled":
            log.info("job=%s cancelled: file=%s status=cancelled", job.id, shown)
        else:
            assert error is not None
            log.error("job=%s failed: file=%s %s: %s status=failed", job.id, shown, error.type,
                      error)

    def _retry_or_fail(self, job: Running, err: jobmod.JobError, now: float) -> None:
        """A transient failure: defer for a retry, or fail past max_attempts."""
        charged = jobmod.charged_attempts(job.meta) + 1  # a daemon's stops are not charged
        if charged >= self.cfg.max_attempts:
            final = jobmod.TransientError(
                f"{err}; gave up after {charged} failed attempts "
                f"(max_attempts={self.cfg.max_attempts})")
            final.type = err.type
            self._finish(job, "failed", None, None, final, now)  # (fenced there)
            return
        if not self._ours(job, "retried"):
            return
        meta = job.meta
        meta.attempts += 1
        meta.errors.append(err.to_dict())
        delays = self.cfg.retry_delays
        delay = delays[min(meta.attempts - 1, len(delays) - 1)]
        meta.not_before = jobmod.iso(self.clock.shown(now) + delay)
        try:
            self.spool.defer(job.id, meta)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # job.json could not be rewritten: back to incoming/ as it was.
            self._disk_full(now, e)
            self._requeue(job, "the spool is full")
            return
        self.deferred[job.id] = now + delay
        log.warning("job=%s attempt %d failed (%s: %s); retry in %g s", job.id, meta.attempts,
                    err.type, err, delay)
        self.status_dirty = True

    def _requeue(self, job: Running, why: str) -> None:
        if not self._ours(job, "requeued"):
            return
        self.spool.requeue(job.id)
        log.info("job=%s returned to incoming/ (%s); no attempt counted", job.id, why)
        self._index_name(job.id, self.clock.now(), settled=True)
        self.status_dirty = True

    # --- timers -------------------------------------------------------------------

    def _rescan_interval(self) -> float:
        polling = self.watcher is None or self.watcher.polling
        return self.cfg.poll_interval if polling else self.cfg.rescan_interval

    def _timers(self, now: float) -> None:
        if now >= self.next_rescan and self.indexing is None:
            self.next_rescan = now + self._rescan_interval()
            self.rescan(now)
            self.control.scan(now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.cfg.lease_seconds / 3
            for w in list(self.workers):
                for job_id in list(w.jobs):
                    if not self.spool.heartbeat(job_id, self.me, now):
                        replies.taken_over(self, w, job_id)
            for job_id in self.sources.ids():
                self.spool.heartbeat(job_id, self.me, now)
            for job_id in list(self.waiting):
                if not self.spool.heartbeat(job_id, self.me, now):
                    self.waiting.pop(job_id)
                    log.warning("job=%s: its waiting result is dropped: this daemon's claim "
                                "was taken over meanwhile", job_id)
        if now >= self.next_recover:
            self.next_recover = now + self.cfg.lease_seconds / 2
            self.recover(now)
        if self.index.pending:
            self._check_pending(now)
        self._undefer(now)
        replies.check_timeouts(self, now)
        self._recount_if_changed()

    # --- status -------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        return status.snapshot(self, now)

    def status_line(self, st: dict[str, Any]) -> str:
        return status.line(st)

    def publish_status(self, now: float) -> None:
        """Write state/status.json: within 50 ms when a job started or finished, at most
        every 0.5 s for progress, and every 5 s regardless (``health`` watches its age)."""
        since = now - (self.next_status - 5.0)
        urgent = self.status_urgent and since >= STATUS_URGENT_S
        if not urgent and (since < 0.5 or (not self.status_dirty and now < self.next_status)):
            return
        self.status_dirty = self.status_urgent = False
        self.next_status = now + 5.0
        st = self.status(now)
        data = (json.dumps(st, indent=1) + "\n").encode()
        hosts = self.spool.dir("state") / HOSTS
        try:
            write_atomic(self.spool.dir("state"), "status.json", data, mode=0o644,
                         durable=False)
            hosts.mkdir(mode=0o755, exist_ok=True)
            write_atomic(hosts, host_file_name(self.me.host), data, mode=0o644,
                         durable=False)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        if self.cfg.metrics_textfile:
            status.write_metrics(self, st)
        if self.ready_sent:
            self.notify.status(self.status_line(st))

    # --- reload -------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: take the configuration file again, or refuse it and keep the running
        one; either way the answer goes to state/reload.json (``cesard --reload`` waits
        for it: systemctl reload fails on a refusal)."""
        self.notify.reloading()
        try:
            new = configmod.load(self.config_path)
            refusal = (configmod.reload_problem(self.cfg, new)
                       or privacy.fake_engine_refusal(new.engine, self.spool.root))
        except configmod.ConfigError as e:
            refusal = str(e)
        if refusal:
            message = f"reload failed, keeping the running configuration: {refusal}"
            log.error("%s", message)
            self._answer_reload(False, message)
            self.notify.ready(self.status_line(self.status(self.clock.now())))
            return
        new.spool = self.cfg.spool
        restart = any(getattr(new, k) != getattr(self.cfg, k) for k in WORKER_KEYS)
        self.cfg = new
        self.hooks.configure(new.hook_timeout, new.max_running_hooks)
        if new.dedupe and self.dedupe is None:
            self.dedupe = dedupe.Dedupe(self.spool, new.engine)
        elif not new.dedupe and self.dedupe is not None:
            self.dedupe.close()
            self.dedupe = None
        self.model_infos = models.describe(new.model_dirs)
        self.english_only = {m.name for m in self.model_infos if m.english_only}
        if restart:
            self.generation += 1
            message = (f"configuration reloaded from {new.source}; workers restart after "
                       "their current job")
        else:
            message = f"configuration reloaded from {new.source}"
        log.info("%s", message)
        self._answer_reload(True, message)
        self.notify.ready(self.status_line(self.status(self.clock.now())))

    def _answer_reload(self, ok: bool, message: str) -> None:
        data = {"ok": ok, "message": message, "at": jobmod.iso(time.time()),
                "pid": os.getpid(), "nonce": os.urandom(6).hex()}
        try:
            write_atomic(self.spool.dir("state"), RELOAD_ANSWER,
                         (json.dumps(data) + "\n").encode(), mode=0o644, durable=False)
        except OSError as e:
            log.warning("cannot write the reload's answer to state/%s: %s", RELOAD_ANSWER,
                        e.strerror)

    # --- the loop -----------------------------------------------------------------

    def run_once(self, now: float) -> None:
        """One step of the loop: read what is readable, then act. Never blocks."""
        self._handle_signals(now)
        if self.waiting and now >= self.disk_full_until:
            replies.finish_waiting(self, now)
        for w in list(self.workers):
            if w in self.workers:
                replies.read_worker(self, w, now)
        self.sources.step()
        self._on_events(now)
        self._timers(now)
        self.hooks.step(now)
        dedupe.collect(self, now)
        self._index_step(now)
        if self.indexing is None:
            self.catalog.step(now, self.cfg.rescan_interval)
        if not self.ready_sent and self.workers and all(w.ready for w in self.workers):
            self.ready_sent = True
            self.status_dirty = True  # status.json says "running" now, not in 5 s
            log.info("ready: %d worker(s) loaded %s", len(self.workers),
                     self.cfg.job_defaults().model)
            self.notify.ready(self.status_line(self.status(now)))
        if self.ready_sent:
            self._keep_workers(now)
            dispatch.dispatch(self, now)
        if self.stopping:
            self._stop_step(now)
        elif self.drain and self.ready_sent and self._drained():
            log.info("drain: the queue is empty; exiting")
            self.begin_stop(now)
        self.publish_status(now)
        self.notify.watchdog(now)

    def _drained(self) -> bool:
        return (self.indexing is None and not len(self.index) and not self.index.pending
                and not self.deferred
                and not dispatch.busy(self) and self.held is None and not self.hooks.busy
                and not self.sources.busy)

    def _stop_step(self, now: float) -> None:
        busy = dispatch.busy(self)
        if busy and now >= self.stop_deadline:
            for w in busy:
                jobs, w.jobs = list(w.jobs.values()), {}
                self._kill_worker(w)
                for job in jobs:
                    self._requeue(job, self.stop_reason)
        if self.hooks.busy and now >= self.stop_deadline:
            self.hooks.stop(now)
        if not dispatch.busy(self) and not self.hooks.busy and not self.sources.busy:
            for w in list(self.workers):
                self._close_worker(w)
            for w in list(self.workers):
                try:
                    w.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    w.proc.kill()
                    w.proc.wait()
                self._reap(w)
            self.exit_code = 0

    def _wait(self, now: float) -> None:
        timeout = STATUS_URGENT_S if self.status_urgent else 0.5
        if self.notify.watchdog_interval:
            timeout = min(timeout, self.notify.watchdog_interval / 4)
        if self.stopping:
            timeout = min(timeout, max(0.0, self.stop_deadline - now))
        if self.indexing is not None or self.catalog.walk is not None:
            timeout = 0.0  # the start-up listing (or the catalogue's) goes on at once
        if self.wake_at < float("inf"):
            timeout = min(timeout, max(0.0, self.wake_at - now))
            self.wake_at = float("inf")
        fds = [self._wake_r] + [w.reply_fd for w in self.workers] + self.hooks.fds()
        if self.watcher is not None and self.watcher.fileno() is not None:
            fds.append(self.watcher.fileno())  # type: ignore[arg-type]
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            return
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass

    def run(self) -> int:
        """Start, loop until stopped; the exit status (0 on a clean stop)."""
        self.install_signals()
        try:
            self.start()
            while self.exit_code is None:
                self._wait(self.clock.now())
                self.step(self.clock.now())
        except StartupError as e:
            log.error("%s", e)
            self._abort()
            return 1
        if self.watcher is not None:
            self.watcher.close()
        if self.dedupe is not None:
            self.dedupe.close()
        self.sources.close()
        self.catalog.close()
        self.status_dirty = True
        self.next_status = 0.0
        try:
            self.publish_status(self.clock.now())
        except OSError as e:  # a read-only or absent storage: the journal says it all
            log.warning("the last status could not be written: %s", e.strerror)
        for job_id in self.waiting:
            log.warning("job=%s: its result could not be written before the stop (the "
                        "spool's storage did not take it); the job stays in processing/ and "
                        "runs again at the next start", job_id)
        fin = self.metrics.finished
        log.info("stopped: %d done, %d failed, %d cancelled since start", fin["done"],
                 fin["failed"], fin["cancelled"])
        if self.drain and self.metrics.finished["failed"]:
            return 1
        return self.exit_code or 0

    def _abort(self) -> None:
        for w in list(self.workers):
            jobs, w.jobs = list(w.jobs.values()), {}
            self._kill_worker(w)
            for job in jobs:
                self._requeue(job, "the daemon is stopping after an error")
