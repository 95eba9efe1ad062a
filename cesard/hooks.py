"""Hooks: commands the administrator configured, run after a job finishes.

``hooks.done`` and ``hooks.failed`` in cesard.yaml list commands (argv lists, never a
shell) run for every job that ends in that state; ``hooks.named`` defines commands a job
may ask for by name (``cesarctl submit --then NAME``, option ``then``), run when it is
done. A job never supplies a command, only names one.

Each hook runs as the daemon's user, inside its sandbox (a child of the daemon), with
stdin from /dev/null, the job's directory as working directory, in a process group of its
own, and this environment (nothing else of the daemon's)::

    CESAR_JOB_ID  CESAR_JOB_DIR  CESAR_RESULT  CESAR_STATUS  CESAR_OWNER  CESAR_OWNER_UID
    CESAR_TRANSCRIPT  CESAR_SPOOL  CESAR_HOOK  PATH  LANG  HOME

Its output (stdout and stderr) goes to the journal, a line at a time, with the job id.
``hook_timeout`` seconds after it started, its whole process group is killed.

The result comes first: the job is already in done/ or failed/, its ``result.json``
listing the hooks as ``pending``, when they start; once every hook of a job has ended,
``result.json`` is rewritten (by rename) with each one's exit status and duration. A
failing or hanging hook never moves, loses or delays a result, nor any other job: hooks
run beside the worker pool, at most ``max_running_hooks`` at once, the rest queued.
On shutdown, hooks still running get ``shutdown_grace``; hooks that never started are
recorded as ``not run``. Hooks run at most once (a daemon killed with -9 leaves them
``pending``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cesard import job as jobmod
from cesard.fsops import write_atomic
from cesard.spool import RESULT, read_small

log = logging.getLogger("cesard.hooks")

OUTPUT_LINES = 200  # lines of one hook's output logged; the rest are counted
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def planned(hooks_cfg: dict[str, Any], status: str, then: tuple[str, ...]) -> list[dict[str, Any]]:
    """The hooks a job that ended with ``status`` runs, as ``result.json`` lists them."""
    runs: list[tuple[str, list[str]]] = []
    event = "done" if status == "done" else "failed"
    for i, argv in enumerate(hooks_cfg.get(event) or []):
        runs.append((f"{event}[{i}]", list(argv)))
    if status == "done":
        named = hooks_cfg.get("named") or {}
        runs += [(name, list(named[name])) for name in then if name in named]
    return [{"name": n, "argv": a, "exit": None, "seconds": None, "state": "pending"}
            for n, a in runs]


@dataclass
class Run:
    """One hook of one job."""

    job: JobHooks
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deadline: float = 0.0
    buf: bytearray = field(default_factory=bytearray)
    lines: int = 0
    eof: bool = False
    exited: float = 0.0

    @property
    def entry(self) -> dict[str, Any]:
        return self.job.entries[self.index]


@dataclass
class JobHooks:
    """The hooks of one finished job and where its result lies."""

    job_id: str
    status: str
    path: Path
    owner: int | None
    entries: list[dict[str, Any]]
    left: int = 0


class Hooks:
    """Runs hooks in the supervisor's loop: :meth:`step` starts, reads, reaps and times
    them out; it never blocks."""

    def __init__(self, timeout: float, limit: int, spool_root: Path) -> None:
        self.timeout = timeout
        self.limit = limit
        self.spool_root = spool_root
        self.queue: deque[Run] = deque()
        self.running: list[Run] = []

    def configure(self, timeout: float, limit: int) -> None:
        self.timeout, self.limit = timeout, limit

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def fds(self) -> list[int]:
        return [r.proc.stdout.fileno() for r in self.running
                if r.proc is not None and r.proc.stdout is not None and not r.eof]

    def schedule(self, job_id: str, status: str, path: Path, owner: int | None,
                 entries: list[dict[str, Any]]) -> None:
        """Queue the hooks of a job whose result (listing ``entries`` as pending) is at
        ``path`` (done/ID or failed/ID)."""
        if not entries:
            return
        jh = JobHooks(job_id, status, path, owner, [dict(e) for e in entries], len(entries))
        self.queue.extend(Run(jh, i) for i in range(len(entries)))

    def after_recovery(self, job_id: str, path: Path, hooks_cfg: dict[str, Any]) -> None:
        """The failed hooks of a job recovery gave up on (its result is in ``path``)."""
        try:
            owner = (json.loads(read_small(path / RESULT, 64 << 20)).get("owner")
                     or {}).get("uid")
        except (OSError, ValueError, AttributeError, jobmod.JobError):
            owner = None
        self.schedule(job_id, "failed", path, owner, planned(hooks_cfg, "failed", ()))

    def step(self, now: float) -> None:
        for r in list(self.running):
            self._read(r)
            if r.proc is not None and r.proc.poll() is not None:
                # Exited; its output ends at EOF, or a second later when something it
                # left running in the background still holds the pipe.
                r.exited = r.exited or now
                if r.eof or now - r.exited >= 1.0:
                    self._ended(r, now, killed=False)
                    continue
            if now >= r.deadline:
                log.warning("job=%s hook=%s still running after %g s (hook_timeout); killed",
                            r.job.job_id, r.entry["name"], self.timeout)
                self._kill(r)
                self._ended(r, now, killed=True,
                            why=f"killed after hook_timeout={self.timeout:g} s")
        while self.queue and len(self.running) < self.limit:
            self._start(self.queue.popleft(), now)

    def stop(self, now: float) -> None:
        """Shutdown: kill what still runs and record what never started."""
        for r in list(self.running):
            self._kill(r)
            self._ended(r, now, killed=True, why="killed: the daemon stopped")
        while self.queue:
            r = self.queue.popleft()
            r.entry.update(state="not run", error="the daemon stopped before it started")
            self._settle(r.job)

    # --- one run ----------------------------------------------------------------------

    def _env(self, r: Run) -> dict[str, str]:
        jh = r.job
        transcript = jh.path / "transcript.txt"
        env = {"PATH": PATH, "LANG": os.environ.get("LANG", "C.UTF-8"),
               "HOME": os.environ.get("HOME", "/"),
               "CESAR_JOB_ID": jh.job_id, "CESAR_JOB_DIR": str(jh.path),
               "CESAR_RESULT": str(jh.path / RESULT), "CESAR_STATUS": jh.status,
               "CESAR_OWNER": jobmod.user_name(jh.owner) if jh.owner is not None else "",
               "CESAR_OWNER_UID": "" if jh.owner is None else str(jh.owner),
               "CESAR_TRANSCRIPT": str(transcript) if transcript.exists() else "",
               "CESAR_SPOOL": str(self.spool_root), "CESAR_HOOK": str(r.entry["name"])}
        for key in ("TZ", "LC_ALL"):
            if key in os.environ:
                env[key] = os.environ[key]
        return env

    def _start(self, r: Run, now: float) -> None:
        argv = [str(a) for a in r.entry["argv"]]
        if not os.path.isdir(r.job.path):
            r.entry.update(state="not run", error=f"{r.job.path} is gone (pruned or retried)")
            self._settle(r.job)
            return
        try:
            r.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, cwd=r.job.path,
                                      env=self._env(r), start_new_session=True, close_fds=True)
        except OSError as e:
            log.error("job=%s hook=%s could not start %s: %s; fix hooks in the configuration",
                      r.job.job_id, r.entry["name"], argv[0], e.strerror)
            code = 126 if e.errno in (errno.EACCES, errno.ENOEXEC) else 127
            r.entry.update(state="exited", exit=code, seconds=0.0,
                           error=f"could not start {argv[0]}: {e.strerror}")
            self._settle(r.job)
            return
        assert r.proc.stdout is not None
        os.set_blocking(r.proc.stdout.fileno(), False)
        r.started, r.deadline = now, now + self.timeout
        self.running.append(r)
        log.debug("job=%s hook=%s started (pid %d)", r.job.job_id, r.entry["name"], r.proc.pid)

    def _read(self, r: Run) -> None:
        if r.proc is None or r.proc.stdout is None or r.eof:
            return
        while True:
            try:
                chunk = os.read(r.proc.stdout.fileno(), 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                r.eof = True
                break
            r.buf += chunk
        while b"\n" in r.buf or (r.eof and r.buf):
            line, _, rest = bytes(r.buf).partition(b"\n")
            r.buf = bytearray(rest)
            self._log_line(r, line)

    def _log_line(self, r: Run, line: bytes) -> None:
        r.lines += 1
        if r.lines <= OUTPUT_LINES:
            log.info("job=%s hook=%s: %s", r.job.job_id, r.entry["name"],
                     line.decode("utf-8", "replace").rstrip()[:2000])

    def _kill(self, r: Run) -> None:
        if r.proc is None:
            return
        try:
            os.killpg(r.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        r.proc.wait()
        self._read(r)

    def _ended(self, r: Run, now: float, killed: bool, why: str = "") -> None:
        assert r.proc is not None
        if r in self.running:
            self.running.remove(r)
        if r.proc.stdout is not None:
            r.proc.stdout.close()
        seconds = round(now - r.started, 3)
        if r.lines > OUTPUT_LINES:
            log.info("job=%s hook=%s: %d more lines of output not logged", r.job.job_id,
                     r.entry["name"], r.lines - OUTPUT_LINES)
        if killed:
            r.entry.update(state="killed", exit=None, seconds=seconds, error=why)
        else:
            code = r.proc.returncode
            # A hook that died of a signal reads like a shell's 128+N.
            code = 128 - code if code < 0 else code
            r.entry.update(state="exited", exit=code, seconds=seconds)
            level = logging.INFO if code == 0 else logging.WARNING
            log.log(level, "job=%s hook=%s exited with status %d after %.1f s", r.job.job_id,
                    r.entry["name"], code, seconds)
        self._settle(r.job)

    def _settle(self, jh: JobHooks) -> None:
        """One hook of ``jh`` ended; after the last, record them all in its result.json."""
        jh.left -= 1
        if jh.left > 0:
            return
        path = jh.path / RESULT
        try:
            result = json.loads(read_small(path, 64 << 20))
            if result.get("id") != jh.job_id:
                raise ValueError("another job's result")
            result["hooks"] = jh.entries
            write_atomic(jh.path, RESULT,
                         jobmod.json_bytes(result, indent=2))
        except (OSError, ValueError, jobmod.JobError) as e:
            log.warning("job=%s the outcome of its hooks is not in result.json (%s): %s",
                        jh.job_id, path, getattr(e, "strerror", None) or e)
