"""Adaptive busy-polling: spin only while it pays, back off at once when the machine is busy.

Spinning for the next request or completion saves a sleep/wake-up (tens of microseconds)
when the other side answers within the budget. On an oversubscribed machine it does the
opposite: the spinner takes the core the other side needs. A :class:`SpinBudget` watches
both signs: a spin that ended empty halves the next budget (down to zero), one that paid
restores it; and when this thread, while runnable, spent more than a third of that time
waiting for a CPU (the kernel's run-queue delay, ``/proc/thread-self/schedstat``) since the
last look, the cores are oversubscribed: the budget drops to zero at once and is probed again
later. Run-queue delay, not CPU time, is the sign: threads of one process that share the GIL
get less CPU time without any core being short. And a spin is skipped outright while the
machine has more runnable threads than CPUs right now (``/proc/loadavg``, looked at most every
5 ms by all spinners together) by the spinners made with ``yield_when_busy`` (the server's).

The scheduler statistics are read only when a spin ends empty (an idle moment) or finds its
work late (past a quarter budget), never when a spin finds its work quickly.
"""

from __future__ import annotations

import os
import time

_monotonic = time.monotonic
#: Fraction of runnable time spent waiting for a CPU above which spinning stops.
OVERSUBSCRIBED = 1 / 3


_CPUS = os.cpu_count() or 1
#: How long a look at the run queue stays valid (seconds): every spinner shares one look.
RUNNABLE_TTL_S = 0.005
_runnable_seen = [0.0, 0.0]  # (when last looked, smoothed count of runnable threads)


def _runnable() -> int:
    """Threads runnable on the machine right now (``/proc/loadavg``'s 4th field), 0 if unknown."""
    try:
        with open("/proc/loadavg", "rb") as f:
            return int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return 0


def machine_busy(now: float) -> bool:
    """More threads runnable than CPUs, lastingly (spinning now would take a core someone needs).

    The count is looked at most every ``RUNNABLE_TTL_S`` and smoothed over the last few looks,
    so one moment's crowd (the spinner and its peer are both runnable at times) does not count.
    """
    seen = _runnable_seen
    if now - seen[0] > RUNNABLE_TTL_S:
        seen[0] = now
        seen[1] = 0.7 * seen[1] + 0.3 * _runnable()
    return seen[1] > _CPUS + 0.5


def _sched() -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of the calling thread, or None."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            run_ns, wait_ns, _slices = f.read().split()
        return int(run_ns) / 1e9, int(wait_ns) / 1e9
    except (OSError, ValueError):
        return None


class SpinBudget:
    """How long to busy-poll before sleeping, adapted to what spinning achieved.

    Parameters
    ----------
    budget_us : int
        The most a spin lasts (microseconds); 0 never spins.
    yield_when_busy : bool
        Skip a spin while the machine has more runnable threads than CPUs. The server's
        spinners do (measured: a server spinning beside two CPU-bound processes tripled the
        socket path's cost); a client waiting for its reply does not, since its spin keeps it
        on a core the moment the reply lands.

    Examples
    --------
    >>> s = SpinBudget(200)
    >>> s.start(); s.keep_spinning()
    True
    """

    __slots__ = ("max_s", "cur_s", "_t0", "_probe_at", "_last", "_skip", "yield_when_busy")

    #: After backing off, try spinning again this much later (seconds).
    PROBE_S = 0.05

    def __init__(self, budget_us: int, yield_when_busy: bool = False) -> None:
        self.yield_when_busy = yield_when_busy
        self.max_s = max(0, budget_us) / 1e6
        self.cur_s = self.max_s
        self._t0 = 0.0
        self._probe_at = 0.0
        self._last: tuple[float, float] | None = None  # scheduler statistics at the last empty spin
        self._skip = False  # this spin is skipped: the machine has more runnable threads than CPUs

    def start(self) -> None:
        """A spin begins (after work was done); skipped at once when the machine is busy right now."""
        self._t0 = now = _monotonic()
        self._skip = self.yield_when_busy and bool(self.cur_s) and machine_busy(now)

    def keep_spinning(self, scale: float = 1.0) -> bool:
        """Whether to poll once more; False ends the spin (and adapts the next budget).

        ``scale`` stretches this spin's budget (a ring client waiting for a chain of several
        entries spins ``scale`` budgets).
        """
        if self._skip:
            return False
        now = _monotonic()
        if now - self._t0 < self.cur_s * scale:
            return True
        self._ended_empty(now)
        return False

    def past_budget(self) -> bool:
        """Whether this spin is past one plain budget (a stretched spin should yield the core)."""
        return _monotonic() - self._t0 >= self.cur_s

    def paid(self) -> None:
        """The spin found work: spin for the full budget next time (unless backing off).

        A spin that found its work only late may have found it late *because* it spun: the other
        side waited for the core this spinner held. Such a spin (longer than a quarter budget)
        looks at the run-queue delay too, and backs off when the machine is oversubscribed.
        """
        now = _monotonic()
        if now - self._t0 > self.max_s / 4 and self._oversubscribed():
            self.cur_s = 0.0
            self._probe_at = now + self.PROBE_S
        elif self.cur_s < self.max_s and now >= self._probe_at:
            self.cur_s = self.max_s

    def _oversubscribed(self) -> bool:
        now = _sched()
        last, self._last = self._last, now
        if now is None or last is None:
            return False
        ran, waited = now[0] - last[0], now[1] - last[1]
        return ran + waited > 0 and waited > OVERSUBSCRIBED * (ran + waited)

    def _ended_empty(self, now: float) -> None:
        if not self.max_s:
            return
        if self._oversubscribed():
            self.cur_s = 0.0
            self._probe_at = now + self.PROBE_S
        elif self.cur_s:
            if self.cur_s > self.max_s / 16:
                self.cur_s /= 2
            else:
                self.cur_s = 0.0
                self._probe_at = now + self.PROBE_S
        elif now >= self._probe_at:
            self.cur_s = self.max_s / 4  # probe again (a probe that pays restores the full budget)


__all__ = ["OVERSUBSCRIBED", "SpinBudget"]
