"""The loop's clock: immune to jumps of the wall clock.

An NTP step or an administrator's ``date -s`` moves ``time.time()``: a +2 h jump used
to time out every running job, a -3 h jump to freeze status.json for hours. The loop's
time (:meth:`Clock.now`) reads like ``time.time()`` at start-up and then advances with
the monotonic clock: every deadline, timeout, settle time, lease watch and timer uses
it. What people read (started_at, finished_at, not_before, status.json's updated_at)
is wall-clock time, :meth:`Clock.shown`, taken at the moment it is written.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._offset = 0.0  # wall-clock time minus loop time, as last taken

    def _wall_offset(self) -> float:
        """Wall minus loop time; kept steady below a millisecond of drift (two readings
        of the two clocks differ by microseconds: times shown in one order stay in it)."""
        drift = time.time() - self.now()
        if abs(drift - self._offset) > 0.001:
            self._offset = drift
        return self._offset

    def now(self) -> float:
        """The loop's time: seconds since the epoch as of start-up, advancing monotonically."""
        return self._wall0 + (time.monotonic() - self._mono0)

    def shown(self, t: float) -> float:
        """The wall-clock time of loop time ``t`` (for what people read)."""
        return t + self._wall_offset()

    def from_wall(self, wall: float) -> float:
        """The loop time of a wall-clock time (a retry's not_before read from job.json)."""
        return wall - self._wall_offset()
