"""Whether the spool's storage takes what the daemon writes. A full disk, a network
filesystem that stops answering, a filesystem remounted read-only: claims pause,
every job stays where it is, and the loop tries again every 5 s (docs/spool.md).
This part owns that state; the others ask :meth:`Storage.paused`."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from pathlib import Path

from cesard import fsops
from cesard.spool import STORAGE_ERRNOS

log = logging.getLogger("cesard")

RETRY_S = 5.0
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class Storage:
    def __init__(self, root: Path, wake_by: Callable[[float], None]) -> None:
        self.root = root
        self.wake_by = wake_by  # the loop wakes by then to try again
        self.until = 0.0  # claims pause until then
        self.error: int | None = None  # the errno of the storage's last failed step
        self.full_logged = False  # the disk is full (said once, until a claim works)

    def paused(self, now: float) -> bool:
        return now < self.until

    def failed(self, now: float, e: OSError) -> bool:
        """A step failed with ``e``: True if it is the storage's failure (the loop pauses),
        False if it is anything else."""
        if e.errno in FULL_ERRNOS:
            self.full(now, e)
        elif e.errno in STORAGE_ERRNOS:
            self.away(now, e)
        else:
            return False
        return True

    def full(self, now: float, e: OSError) -> None:
        self.until = now + RETRY_S
        if not self.full_logged:
            log.error("the spool's filesystem is full (%s): claiming paused; every job stays "
                      "where it is; free space in %s", e.strerror, self.root)
            self.full_logged = True

    def away(self, now: float, e: OSError) -> None:
        """The spool's storage failed a step (a network filesystem's server restarting,
        a partition): pause claims, keep every job where it is, try again in 5 s."""
        self.until = now + RETRY_S
        if self.error is None and e.errno == errno.EROFS:
            log.error("the spool's filesystem is read-only (%s): claiming paused; every job "
                      "and result stays where it is and is written once it is writable "
                      "again (remount it read-write; check the disk: an ext4 error remounts "
                      "it read-only); trying again every 5 s", e.filename or self.root)
        elif self.error is None:
            log.error("the spool's storage is not answering (%s: %s): claiming paused; every "
                      "job stays where it is; trying again every 5 s", e.strerror,
                      e.filename or self.root)
        self.error = e.errno
        self.wake_by(now + RETRY_S)

    def claimed(self) -> None:
        """A claim worked: the disk has space again."""
        if self.full_logged:
            log.info("the spool has space again; claiming resumed")
            self.full_logged = False

    def step_done(self) -> None:
        """A loop step went through: the storage answers again, unless it is still
        read-only (a step that wrote nothing proves nothing)."""
        if self.error is None:
            return
        if self.error == errno.EROFS and fsops.read_only(self.root):
            return
        log.info("the spool's storage answers again (it is writable); claiming resumed")
        self.error = None
        self.until = 0.0
