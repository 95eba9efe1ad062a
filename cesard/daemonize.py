"""Running without systemd: ``cesard --detach`` with python-daemon."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from pathlib import Path

import daemon
import daemon.pidfile

from cesard.systemd import setup_logging

EX_TEMPFAIL = 75


def running_pid(pidfile: Path) -> int | None:
    """The pid of a cesard that holds ``pidfile``; a stale pidfile is removed."""
    try:
        pid = int(pidfile.read_text().strip())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        pid = 0
    try:
        alive = pid > 0 and b"cesard" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        alive = False
    if alive:
        return pid
    pidfile.unlink(missing_ok=True)  # left by a daemon that was killed (kill -9, crash)
    return None


def wait_ready(r: int, child: int, log_file: str | None) -> int:
    """The launcher's side: exit 0 once the daemon is ready, 1 if it died first."""
    data = b""
    while chunk := os.read(r, 64):  # EOF: every holder of the write end is gone
        data += chunk
        if data.startswith(b"ready"):
            break
    os.waitpid(child, 0)
    if data.startswith(b"ready"):
        return 0
    where = log_file or "syslog"
    print(f"cesard: the daemon exited before it was ready; see {where}", file=sys.stderr)
    return 1


def use_syslog(name: str) -> None:
    """Send the root logger to syslog (/dev/log) as ``name[pid]``."""
    handler = logging.handlers.SysLogHandler(address="/dev/log")
    handler.setFormatter(logging.Formatter(f"{name}[%(process)d]: %(message)s"))
    logging.getLogger().handlers[:] = [handler]


def detach(run: Callable[[int], int], pidfile: str | None, log_file: str | None,
           level: str) -> int:
    """Daemonise (double fork, setsid, chdir /), then call ``run(ready_fd)``.

    The launching process returns only once the daemon wrote "ready" to
    ``ready_fd`` (exit 0) or died before that (exit 1), so a script that starts
    it knows. Logs go to ``log_file`` or syslog.
    """
    if pidfile:
        other = running_pid(Path(pidfile))
        if other is not None:
            print(f"cesard: already running as pid {other} (pidfile {pidfile})", file=sys.stderr)
            return EX_TEMPFAIL
    r, w = os.pipe()
    child = os.fork()
    if child:
        os.close(w)
        return wait_ready(r, child, log_file)
    os.close(r)
    stream = open(log_file, "a", buffering=1) if log_file else None  # noqa: SIM115
    pid = daemon.pidfile.TimeoutPIDLockFile(str(Path(pidfile).absolute())) if pidfile else None
    ctx = daemon.DaemonContext(pidfile=pid, stdout=stream, stderr=stream, umask=0o007,
                               files_preserve=[w, *([stream] if stream else [])],
                               detach_process=True)
    with ctx:
        os.environ.pop("JOURNAL_STREAM", None)
        if stream is not None:
            setup_logging(level, stream=stream)
        else:
            setup_logging(level)
            use_syslog("cesard")
            os.environ["CESAR_LOG_SYSLOG"] = "1"  # the workers log there too
        code = run(w)
    sys.exit(code)
