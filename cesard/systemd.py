"""systemd integration: sd_notify messages and journald-friendly logging.

Logging: when ``JOURNAL_STREAM`` is set (stderr is the journal), each line
starts with a ``<N>`` syslog priority and has no timestamp (journald adds
one); otherwise lines carry a UTC timestamp. Every line about a job names it
as ``job=ID``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time

PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
            logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def to_journal() -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def setup_logging(level: str = "info", name: str = "cesard",
                  stream: object | None = None) -> None:
    """Configure the root logger for the daemon or a worker."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if to_journal():
        # The journal names the unit's program already (cesard[PID]): only a worker's
        # lines say whose they are.
        prefix = "" if name == "cesard" else "worker: "
        handler.setFormatter(JournalFormatter(f"{prefix}%(message)s"))
    else:
        fmt = logging.Formatter(f"%(asctime)s.%(msecs)03dZ {name}[%(process)d] "
                                "%(levelname)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        fmt.converter = time.gmtime
        handler.setFormatter(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class NotifySocket:
    """The sd_notify(3) protocol: one datagram of ``KEY=VALUE`` lines to the unix socket
    named by ``NOTIFY_SOCKET`` (``@NAME``: the abstract namespace). Written here, a dozen
    lines, because the binding on PyPI (sdnotify) ships no wheel and is no longer
    maintained; systemd's own (python-systemd) needs a compiler."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, text: str) -> None:
        try:
            self.sock.sendto(text.encode(), self.address)
        except OSError:
            pass  # systemd is gone or the socket is not ours: nothing to tell


class Notifier:
    """sd_notify when ``NOTIFY_SOCKET`` is set; otherwise every call is a no-op."""

    def __init__(self, ready_fd: int | None = None) -> None:
        self.ready_fd = ready_fd  # --detach: the launcher waits for "ready" on this pipe
        address = os.environ.get("NOTIFY_SOCKET", "")
        self.enabled = bool(address)
        self._n = NotifySocket(address) if self.enabled else None
        self.watchdog_interval: float | None = None
        usec = os.environ.get("WATCHDOG_USEC")
        wpid = os.environ.get("WATCHDOG_PID")
        if self.enabled and usec and (not wpid or wpid == str(os.getpid())):
            try:
                self.watchdog_interval = int(usec) / 1e6 / 2
            except ValueError:
                pass
        self._last_status = ""
        self._last_ping = 0.0

    def send(self, *lines: str) -> None:
        if self._n is not None:
            self._n.notify("\n".join(lines))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def ready(self, status: str = "") -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"ready\n")
                os.close(self.ready_fd)
            except OSError:
                pass  # the launcher is gone: nobody to tell
            self.ready_fd = None

    def reloading(self) -> None:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={mono}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self, now: float) -> None:
        """Ping the watchdog at most every WATCHDOG_USEC/2."""
        if self.watchdog_interval and now - self._last_ping >= self.watchdog_interval / 2:
            self._last_ping = now
            self.send("WATCHDOG=1")
