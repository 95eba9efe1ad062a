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


def detach(run: Callable[[], int], pidfile: str | None, log_file: str | None,
           level: str) -> int:
    """Daemonise (double fork, setsid, chdir /), then call ``run``; logs go to a file or syslog."""
    stream = open(log_file, "a", buffering=1) if log_file else None  # noqa: SIM115
    pid = daemon.pidfile.TimeoutPIDLockFile(str(Path(pidfile).absolute())) if pidfile else None
    ctx = daemon.DaemonContext(pidfile=pid, stdout=stream, stderr=stream, umask=0o007,
                               files_preserve=[stream] if stream else None,
                               detach_process=True)
    with ctx:
        os.environ.pop("JOURNAL_STREAM", None)
        if stream is not None:
            setup_logging(level, stream=stream)
        else:
            setup_logging(level)
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("cesard[%(process)d]: %(message)s"))
            logging.getLogger().handlers[:] = [handler]
        code = run()
    sys.exit(code)
