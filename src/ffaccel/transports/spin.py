"""Adaptive busy-polling: spin only while it pays, back off at once when the machine is busy.

Spinning for the next request or completion saves a sleep/wake-up (tens of microseconds)
when the other side answers within the budget. On an oversubscribed machine it does the
opposite: the spinner takes the core the other side needs. A :class:`SpinBudget` watches
both signs: a spin that ended empty halves the next budget (down to zero), one that paid
restores it; and a spin during which this thread got less than half the CPU time that
passed (measured with ``time.thread_time``) means the cores are oversubscribed, so the
budget drops to zero at once and is probed again later.
"""

from __future__ import annotations

import time

_thread_time = time.thread_time
_monotonic = time.monotonic


class SpinBudget:
    """How long to busy-poll before sleeping, adapted to what spinning achieved.

    Parameters
    ----------
    budget_us : int
        The most a spin lasts (microseconds); 0 never spins.

    Examples
    --------
    >>> s = SpinBudget(200)
    >>> s.start(); s.keep_spinning()
    True
    """

    __slots__ = ("max_s", "cur_s", "_t0", "_c0", "_probe_at")

    #: After backing off for oversubscription, try spinning again this much later (seconds).
    PROBE_S = 0.05

    def __init__(self, budget_us: int) -> None:
        self.max_s = max(0, budget_us) / 1e6
        self.cur_s = self.max_s
        self._t0 = 0.0
        self._c0 = 0.0
        self._probe_at = 0.0

    def start(self) -> None:
        """A spin begins (after work was done)."""
        self._t0 = _monotonic()
        self._c0 = _thread_time()

    def keep_spinning(self, scale: float = 1.0) -> bool:
        """Whether to poll once more; False ends the spin (and adapts the next budget).

        ``scale`` stretches this spin's budget (a ring client waiting for a chain of several
        entries spins ``scale`` budgets).
        """
        now = _monotonic()
        if now - self._t0 < self.cur_s * scale:
            return True
        self._ended_empty(now)
        return False

    def past_budget(self) -> bool:
        """Whether this spin is past one plain budget (a stretched spin should yield the core)."""
        return _monotonic() - self._t0 >= self.cur_s

    def paid(self) -> None:
        """The spin found work: spin for the full budget next time (unless the CPU is oversubscribed)."""
        if self.cur_s < self.max_s and _monotonic() >= self._probe_at:
            self.cur_s = self.max_s

    def _ended_empty(self, now: float) -> None:
        wall = now - self._t0
        cpu = _thread_time() - self._c0
        if wall > 0 and cpu < 0.5 * wall:  # we were descheduled: the cores are oversubscribed
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


__all__ = ["SpinBudget"]
