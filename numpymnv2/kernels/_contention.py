"""Whether other work is competing for the cores: parallel kernels step aside while it is.

With the OpenMP layer (the default, see :mod:`numpymnv2.kernels._threads`) Numba's OpenMP workers spin between
kernels. On free cores that makes every launch cheap; beside another busy process it makes this process fight
for the cores it shares: on the 2-core machine, a batch-32, 32x32 train step went from 40 ms to 164 ms with one
busy process (the workqueue layer, whose workers sleep: 45 to 89 ms).

The kernel launcher asks :meth:`Monitor.contended` before a parallel launch. The monitor measures how long the
threads of this process waited for a core while runnable: Linux counts it per thread (the second field of
``/proc/self/task/<tid>/schedstat``, in ns). Measured over 4 s of train steps on the 2-core machine, that wait
per second of wall time was 0.006-0.008 quiet, 0.77 with one busy process and 0.99 with two (0.64 and 1.0 under
the workqueue layer). Above :data:`CONTENDED` the kernels run their serial copies in the calling thread, the
workers go to sleep and the process uses one core; every :data:`PROBE_FIRST` s (doubling up to
:data:`PROBE_MAX` s while the contention lasts) the parallel copies get one window of :data:`WINDOW` s to show
that the cores are free again.

A serial copy runs the same blocks of rows in the same order as the parallel one, so the results do not depend
on what the monitor decided (``tests/kernels/test_contention.py``).
Without ``/proc/self/task`` (not Linux) the monitor stays off, as it does under the workqueue layer, whose
sleeping workers already leave the cores to others.
"""
from __future__ import annotations

import os
import time

# Seconds of wall time over which the wait is measured.
WINDOW = 0.25
# Wait of this process's threads per second of wall time above which the cores count as contended.
CONTENDED = 0.25
# Seconds of serial running before the first probe of the parallel copies, and the most between two probes.
PROBE_FIRST = 1.0
PROBE_MAX = 8.0

_TASKS = "/proc/self/task"


def run_delay_seconds() -> float | None:
    """Seconds the threads of this process have waited for a core while runnable, summed over the threads
    alive now; None where Linux's per-thread scheduler statistics are not readable."""
    total = 0
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue            # a thread that ended since the listing, or a kernel without schedstat
    return total / 1e9


class Monitor:
    """The decision of :meth:`contended`, revised at most every :data:`WINDOW` seconds.

    Parameters
    ----------
    clock, delay : callables, optional
        The wall clock and :func:`run_delay_seconds`; the tests pass their own.
    """

    def __init__(self, clock=time.perf_counter, delay=run_delay_seconds):
        self.clock, self.delay = clock, delay
        # whether this process itself keeps a core busy besides its kernels (the background compilation of
        # numpymnv2.kernels._launch.LATER): windows that overlap it decide nothing
        self.busy_here = lambda: False
        self.enabled = False
        self.serial = False             # the current decision
        self.switches = 0               # how often it changed
        self.last_ratio = None
        self._next = 0.0                # when to look again
        self._since = self._delay0 = None
        self._probe_wait = PROBE_FIRST
        self._probing = False

    def enable(self) -> bool:
        """Start monitoring (where the statistics are readable); return whether it is on."""
        start = self.delay()
        if start is None:
            return False
        self.enabled = True
        self._restart(self.clock(), start)
        return True

    def _restart(self, now: float, delay: float) -> None:
        self._since, self._delay0 = now, delay
        self._next = now + WINDOW

    def contended(self) -> bool:
        """Whether parallel kernels should run serially now (False while the monitor is off)."""
        if not self.enabled:
            return False
        now = self.clock()
        if now >= self._next:
            self._revise(now)
        return self.serial

    def _revise(self, now: float) -> None:
        delay = self.delay()
        if delay is None:
            self.enabled, self.serial = False, False
            return
        if self.serial:
            # serial running says nothing about a free core: after the wait, let the parallel copies try
            self._set(False)
            self._probing = True
            self._restart(now, delay)
            return
        if self.busy_here():
            self._restart(now, delay)
            return
        ratio = (delay - self._delay0) / max(now - self._since, 1e-9)
        self.last_ratio = ratio
        if ratio > CONTENDED:
            self._probe_wait = min(2 * self._probe_wait, PROBE_MAX) if self._probing else PROBE_FIRST
            self._set(True)
            self._since, self._delay0 = now, delay
            self._next = now + self._probe_wait
        else:
            self._probe_wait = PROBE_FIRST
            self._restart(now, delay)
        self._probing = False

    def _set(self, serial: bool) -> None:
        if serial != self.serial:
            self.switches += 1
        self.serial = serial

    def info(self) -> dict:
        return {"enabled": self.enabled, "serial": self.serial, "switches": self.switches,
                "last_wait_per_second": self.last_ratio}


MONITOR = Monitor()
