"""The supervisor: it makes the daemon's parts, wires them, and runs the loop.

It never imports faster-whisper. Signal handlers only set flags and wake the
loop through a pipe; :meth:`Supervisor.run_once` steps every part and can be
stepped with an explicit ``now``. What each part owns: docs/architecture.md.

Shutdown (docs/spool.md, guarantee 5): the first SIGTERM/SIGINT stops claiming; running
jobs get ``shutdown_grace`` seconds, then their workers are killed and the
jobs go back to ``incoming/`` without an attempt counted; exit status 0. A
second SIGTERM/SIGINT requeues at once. SIGHUP re-reads the configuration.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from typing import Any

from cesard import catalog, devices, hooks, privacy, status
from cesard import config as configmod
from cesard import job as jobmod
from cesard.clock import Clock
from cesard.control import Control
from cesard.dedupe import Dedupe
from cesard.dispatch import Dispatcher
from cesard.fsops import write_atomic
from cesard.health import Storage
from cesard.intake import Intake
from cesard.lifecycle import Lifecycle
from cesard.metrics import Metrics
from cesard.oom import OomWatch
from cesard.owners import OwnerViews
from cesard.pool import Pool, StartupError
from cesard.quarantine import Quarantine
from cesard.replies import Replies
from cesard.settings import Settings
from cesard.sources import Sources
from cesard.spool import Spool
from cesard.systemd import Notifier
from cesard.watch import Watcher

log = logging.getLogger("cesard")

RELOAD_ANSWER = "reload.json"  # the answer to the last SIGHUP (cesard --reload waits for it)
# Config keys whose change needs new worker processes.
WORKER_KEYS = ("engine", "workers", "cpu_threads", "compute_type", "models", "preload_models",
               "device", "device_index", "max_loaded_models",
               "max_audio_seconds", "worker_memory_limit", "log_level", "batch_size",
               "batch_min_seconds")


class Supervisor:
    def __init__(self, cfg: configmod.Config, spool: Spool, config_path: str | None = None,
                 notifier: Notifier | None = None, drain: bool = False,
                 placement: devices.Placement | None = None) -> None:
        self.settings = Settings(cfg)
        self.placement = placement or devices.resolve("cpu", [], cfg.compute_type)
        self.spool = spool
        self.config_path = config_path
        self.notify = notifier or Notifier()
        self.drain = drain
        self.clock = Clock()  # the loop's time: immune to wall-clock jumps (clock.py)
        self.started = time.time()
        self.stopping = False
        self.stop_reason = "shutdown grace expired"
        self.stop_deadline = 0.0
        self.exit_code: int | None = None
        self.ready_sent = False
        self.wake_at = float("inf")  # the loop wakes by then (a batch's wait ends)
        self.next_rescan = 0.0
        self.next_heartbeat = 0.0
        self.next_recover = 0.0
        self.watcher: Watcher | None = None
        self.dedupe: Dedupe | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The parts, each given what it needs and nothing of the others' state.
        self.metrics = Metrics(str(spool.root))
        self.storage = Storage(spool.root, self.wake_by)
        self.quarantine = Quarantine(spool.root)
        self.oom = OomWatch()  # was a worker's SIGKILL the kernel's OOM killer? (oom.py)
        self.hooks = hooks.Hooks(cfg.hook_timeout, cfg.max_running_hooks, spool.root)
        self.sources = Sources(self.wake)
        self.catalog = catalog.Catalog(spool, group_readable=cfg.privacy == "group")
        self.jobs = Lifecycle(spool, self.settings, self.clock, self.storage, self.quarantine,
                              self.sources, self.hooks, self.catalog, self.metrics,
                              lambda: self.dedupe, self.changed)
        self.publisher = status.Publisher(spool, self.jobs.me.host, self.metrics)
        self.intake = Intake(spool, self.settings, self.clock, self.quarantine, self.jobs,
                             self.changed)
        self.jobs.queue = self.intake
        self.pool = Pool(self.settings, self.placement)
        self.dispatcher = Dispatcher(self.settings, self.placement, self.intake, self.pool,
                                     self.jobs, self.storage, self.quarantine, self.clock,
                                     lambda: self.dedupe, self.wake, self.wake_by,
                                     self.changed)
        self.replies = Replies(self.settings, self.pool, self.jobs, self.dispatcher,
                               self.storage, self.oom, self.changed)
        self.control = Control(spool, self.settings, self.jobs, self.pool, self.dispatcher)
        self.owners = OwnerViews(spool, spool.guard, self.intake)

    @property
    def cfg(self) -> configmod.Config:
        return self.settings.cfg

    def changed(self, urgent: bool = False) -> None:
        self.publisher.changed(urgent)

    def wake_by(self, when: float) -> None:
        self.wake_at = min(self.wake_at, when)

    def wake(self) -> None:
        """Wake the loop from another thread (a dedupe lookup finished)."""
        try:
            os.write(self._wake_w, b"d")
        except OSError:
            pass  # the pipe is full: the loop wakes anyway

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
        self.dispatcher.release_held("shutting down")
        for w in self.pool.workers:
            if not w.jobs:
                self.pool.close(w)

    # --- start-up -----------------------------------------------------------------

    def start(self) -> None:
        """Create/check the spool, recover, start workers and wait until they are ready."""
        self.spool.create()
        self.spool.check()
        status.warn_if_shared_with_a_local_daemon(self.spool, self.jobs.me.host)
        if self.cfg.dedupe:
            self.dedupe = Dedupe(self.spool, self.cfg.engine)
        # Workers load their models while the spool is recovered and indexed; none gets
        # a job before run_once, so recovery still happens before any claim.
        self.pool.start()
        now = self.clock.now()
        self.jobs.recover(now, startup=True)
        self.next_recover = now + self.cfg.lease_seconds / 2
        for name in self.spool.clean_tmp(time.time()):  # (file times are wall-clock times)
            log.info("removed %s from tmp/: an unpublished build older than a day",
                     jobmod.display_name(name))
        self.watcher = Watcher(self.spool.root, self.cfg.watch)
        # incoming/ is indexed a slice per loop step: READY does not wait for a long
        # queue; claims do, so the order still holds.
        self.intake.start(now)
        self.next_rescan = now + self._rescan_interval()
        self.control.scan(now)
        self.jobs.count_finished()
        log.info("started: spool %s, engine %s, %d worker(s), watch %s", self.spool.root,
                 self.cfg.engine, len(self.pool.workers),
                 "poll" if self.watcher.polling else "inotify")

    def rescan(self, now: float) -> None:
        self.intake.rescan(now)

    def _on_events(self, now: float) -> None:
        if self.watcher is None:
            return
        for ev in self.watcher.read():
            if ev.where == "control":
                if not ev.removed:
                    self.control.handle(ev.name, now)
            elif ev.removed:
                self.intake.discard(ev.name)
            else:
                self.intake.add(ev.name, now, settled=ev.settled)
            self.changed()
        if self.watcher.overflowed:
            self.watcher.overflowed = False
            log.warning("inotify queue overflowed; rescanning the spool")
            self.intake.rescan(now)

    # --- the loop -----------------------------------------------------------------

    def step(self, now: float) -> None:
        """:meth:`run_once`, riding out a spool whose storage stops answering, and any
        error no check foresaw (cesard/quarantine.py): only configuration and start-up
        errors end the daemon."""
        try:
            self.run_once(now)
        except StartupError:
            raise
        except OSError as e:
            if not self.storage.failed(now, e):
                self.quarantine.loop_error(now)
            return
        except Exception:  # noqa: BLE001 - the loop's contract (cesard/quarantine.py)
            self.quarantine.loop_error(now)
            return
        self.storage.step_done()

    def run_once(self, now: float) -> None:
        """One step of the loop: read what is readable, then act. Never blocks."""
        self._handle_signals(now)
        if self.replies.waiting and not self.storage.paused(now):
            self.replies.finish_waiting(now)
        for w in list(self.pool.workers):
            if w in self.pool.workers:
                self.replies.read(w, now, self.stopping, self.ready_sent)
        self.sources.step()
        self._on_events(now)
        self._timers(now)
        self.hooks.step(now)
        self.dispatcher.collect(now, self.stopping)
        self.intake.step(now)
        if not self.intake.indexing:
            self.catalog.step(now, self.cfg.rescan_interval)
        if not self.ready_sent and self.pool.all_ready():
            self.ready_sent = True
            self.changed()  # status.json says "running" now, not in 5 s
            log.info("ready: %d worker(s) loaded %s", len(self.pool.workers),
                     self.cfg.job_defaults().model)
            self.notify.ready(status.line(self.status(now)))
        if self.ready_sent:
            self.pool.keep(now, self.stopping, started=True)
            if not self.stopping:
                self.dispatcher.dispatch(now)
        if self.stopping:
            self._stop_step(now)
        elif self.drain and self.ready_sent and self._drained():
            log.info("drain: the queue is empty; exiting")
            self.begin_stop(now)
        self.publish_status(now)
        self.owners.step(now)
        self.notify.watchdog(now)

    def _rescan_interval(self) -> float:
        polling = self.watcher is None or self.watcher.polling
        return self.cfg.poll_interval if polling else self.cfg.rescan_interval

    def _timers(self, now: float) -> None:
        if now >= self.next_rescan and not self.intake.indexing:
            self.next_rescan = now + self._rescan_interval()
            self.intake.rescan(now)
            self.control.scan(now)
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + self.cfg.lease_seconds / 3
            self.replies.heartbeat(now)
            for job_id in self.sources.ids():
                self.jobs.heartbeat(job_id, now)
        if now >= self.next_recover:
            self.next_recover = now + self.cfg.lease_seconds / 2
            self.jobs.recover(now)
        if self.intake.index.pending:
            self.intake.check_pending(now)
        self.intake.undefer(now)
        self.replies.check_timeouts(now)
        if self.jobs.recount_if_changed():
            self.changed()

    def _drained(self) -> bool:
        return (self.intake.empty() and not self.pool.busy()
                and not self.dispatcher.holding and not self.hooks.busy
                and not self.sources.busy)

    def _stop_step(self, now: float) -> None:
        busy = self.pool.busy()
        if busy and now >= self.stop_deadline:
            for w in busy:
                jobs, w.jobs = list(w.jobs.values()), {}
                self.pool.kill(w)
                for job in jobs:
                    self.jobs.requeue(job, self.stop_reason)
        if self.hooks.busy and now >= self.stop_deadline:
            self.hooks.stop(now)
        if not self.pool.busy() and not self.hooks.busy and not self.sources.busy:
            self.pool.stop_all()
            self.exit_code = 0

    # --- status -------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        cfg = self.cfg
        state = ("stopped" if self.exit_code is not None else "stopping" if self.stopping
                 else "running" if self.ready_sent else "starting")
        return status.snapshot(status.Facts(
            host=self.jobs.me.host, started=self.started, state=state, engine=cfg.engine,
            model=cfg.job_defaults().model, device=self.placement.device,
            compute_type=self.placement.compute_type, workers=self.pool.workers,
            model_infos=self.settings.model_infos, incoming=self.intake.waiting(),
            held=self.dispatcher.holding, deferred=len(self.intake.deferred),
            on_disk=self.jobs.on_disk, oldest_key=self.intake.index.oldest_key(),
            indexing=self.intake.indexing, finished=self.metrics.finished,
            disk_full=self.storage.full_logged, queue_capacity=cfg.queue_capacity,
            private_names=self.spool.guard is not None, shown_now=self.clock.shown(now)),
            now)

    def publish_status(self, now: float) -> None:
        """Write state/status.json when the publisher says it is due."""
        if not self.publisher.due(now):
            return
        st = self.status(now)
        self.publisher.write(st, now, self.cfg.metrics_textfile)
        if self.ready_sent:
            self.notify.status(status.line(st))

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
            self.notify.ready(status.line(self.status(self.clock.now())))
            return
        new.spool = self.cfg.spool
        restart = any(getattr(new, k) != getattr(self.cfg, k) for k in WORKER_KEYS)
        self.settings.replace(new)
        self.hooks.configure(new.hook_timeout, new.max_running_hooks)
        if new.dedupe and self.dedupe is None:
            self.dedupe = Dedupe(self.spool, new.engine)
        elif not new.dedupe and self.dedupe is not None:
            self.dedupe.close()
            self.dedupe = None
        if restart:
            self.pool.renew()
            message = (f"configuration reloaded from {new.source}; workers restart after "
                       "their current job")
        else:
            message = f"configuration reloaded from {new.source}"
        log.info("%s", message)
        self._answer_reload(True, message)
        self.notify.ready(status.line(self.status(self.clock.now())))

    def _answer_reload(self, ok: bool, message: str) -> None:
        data = {"ok": ok, "message": message, "at": jobmod.iso(time.time()),
                "pid": os.getpid(), "nonce": os.urandom(6).hex()}
        try:
            write_atomic(self.spool.dir("state"), RELOAD_ANSWER,
                         (json.dumps(data) + "\n").encode(), mode=0o644, durable=False)
        except OSError as e:
            log.warning("cannot write the reload's answer to state/%s: %s", RELOAD_ANSWER,
                        e.strerror)

    # --- waiting and running ------------------------------------------------------

    def _wait(self, now: float) -> None:
        timeout = status.URGENT_S if self.publisher.urgent else 0.5
        if self.notify.watchdog_interval:
            timeout = min(timeout, self.notify.watchdog_interval / 4)
        if self.stopping:
            timeout = min(timeout, max(0.0, self.stop_deadline - now))
        if self.intake.indexing or self.catalog.walk is not None:
            timeout = 0.0  # the start-up listing (or the catalogue's) goes on at once
        if self.wake_at < float("inf"):
            timeout = min(timeout, max(0.0, self.wake_at - now))
            self.wake_at = float("inf")
        fds = [self._wake_r] + self.pool.fds() + self.hooks.fds()
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
        self.publisher.force()
        try:
            self.publish_status(self.clock.now())
        except OSError as e:  # a read-only or absent storage: the journal says it all
            log.warning("the last status could not be written: %s", e.strerror)
        for job_id in self.replies.waiting:
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
        for w in list(self.pool.workers):
            jobs, w.jobs = list(w.jobs.values()), {}
            self.pool.kill(w)
            for job in jobs:
                self.jobs.requeue(job, "the daemon is stopping after an error")
