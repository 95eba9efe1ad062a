"""The loop's contract: no entry a user can make ends the daemon.

Every place the loop handles one entry (indexing a name of incoming/, claiming it,
recovering a claim, undeferring a retry) runs under :meth:`Quarantine.guard`. An
error there that no check foresaw is that entry's: it is logged once with its
traceback, naming the entry, and the entry is set aside where it is until it changes
(its ctime) or the daemon restarts; every other job goes on. Only configuration and
start-up errors end the daemon (:class:`cesard.pool.StartupError`, exit 78).

:meth:`Quarantine.loop_error` is the last line: an error that escaped a whole loop
step is logged (once a minute for the same place) and the loop goes on.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cesard import job as jobmod
from cesard.spool import STORAGE_ERRNOS

log = logging.getLogger("cesard")

REPEAT_LOG_S = 60.0
# Errors of the spool's storage, not of one entry: they pause the loop instead.
PAUSING_ERRNOS = (*STORAGE_ERRNOS, errno.ENOSPC, errno.EDQUOT)


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: dict[tuple[str, str], int] = {}  # (state, name) → its ctime when set aside
        self._logged: dict[str, float] = {}  # loop errors by place → when last logged

    def holds(self, state: str, name: str) -> bool:
        """Whether ``state/name`` is set aside and unchanged since."""
        ctime = self._held.get((state, name))
        if ctime is None:
            return False
        if self._ctime(state, name) == ctime:
            return True
        del self._held[(state, name)]
        return False

    @contextmanager
    def guard(self, state: str, name: str, what: str) -> Iterator[None]:
        """Run the handling of ``state/name``; an unexpected error sets it aside."""
        try:
            yield
        except OSError as e:
            if e.errno in PAUSING_ERRNOS:
                raise  # the spool's, not the entry's: the loop pauses (Supervisor.step)
            self._set_aside(state, name, what)
        except Exception:  # noqa: BLE001 - the contract above: the entry's, not the daemon's
            self._set_aside(state, name, what)

    def _set_aside(self, state: str, name: str, what: str) -> None:
        """Log the error being handled with its traceback, naming the entry; hold it."""
        log.exception("%s %s/%s failed with an unexpected error; the entry is set aside "
                      "where it is until it changes or the daemon restarts, and every "
                      "other job goes on (please report this)", what, state,
                      jobmod.display_name(name))
        self._held[(state, name)] = self._ctime(state, name)

    def forget(self, state: str, names: set[str]) -> None:
        """Drop what is set aside in ``state`` but no longer there."""
        for key in [k for k in self._held if k[0] == state and k[1] not in names]:
            del self._held[key]

    def loop_error(self, now: float) -> None:
        """Log the error that escaped a loop step (inside an ``except``), once a minute
        for the same place."""
        tb = traceback.extract_tb(sys.exc_info()[2])
        place = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
        if now - self._logged.get(place, -REPEAT_LOG_S) >= REPEAT_LOG_S:
            self._logged[place] = now
            log.exception("a loop step failed with an unexpected error; the daemon goes on "
                          "(please report this; the same error is logged once a minute)")

    def _ctime(self, state: str, name: str) -> int:
        try:
            return os.lstat(self.root / state / name).st_ctime_ns
        except OSError:
            return 0
