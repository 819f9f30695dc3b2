"""Busy-polling that stops at once when it takes a core someone else needs.

Spinning for the next request or completion saves a sleep and a wake-up (tens of
microseconds on a VM) when the other side answers within the budget; a spin that ends empty
costs at most its budget of CPU. On an oversubscribed machine spinning does worse: the
spinner takes the core the other side (or anyone) needs. So a :class:`SpinBudget` spins its
whole budget every time, except after a spin that *lost its CPU* for a large share of its
time (gaps between two polls: the kernel ran another thread there): then it stops spinning
at once, the caller sleeps, and a probe spins again a pause later (``PROBE_MIN_S``,
doubling up to ``PROBE_S`` while the probes lose their CPU too; a spin that keeps its CPU
starts the pause over).

Why lost time inside the spin, and nothing else (measured on a 2-core AMD EPYC VM, issue 21):

* the run queue's length (``/proc/loadavg``) counts work that may never take the spinner's
  core, and the run-queue delay (``/proc/thread-self/schedstat``) counts every wake-up's
  latency (tens of µs on an idle VM); the count of involuntary context switches counts every
  short interruption (a spinning thread here is preempted a few hundred times a second for
  30-40 µs by kernel workers and other processes even when it has the cores). Each read an
  idle or lightly shared machine as crowded; the spinners stopped and every request paid a
  wake-up;
* halving the budget after empty spins made both sides of a round trip stop spinning for
  good: a side that sleeps answers late because it must be woken, so the other side's spin
  ends empty too (ring batch 1 stayed at 85-130 µs instead of 15-20).

A spinner that really competes for its CPU loses it for a time slice (0.1 to several ms): a
gap between two polls, seen with the clock the spin reads anyway, without a system call.
Gaps under ``GAP_S`` and a total under ``PREEMPTED_MIN_LOST_S`` are noise.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable

_monotonic = time.monotonic
#: A pause between two polls longer than this means the spinner lost its CPU (seconds); a poll
#: takes a few µs, an interrupt or a hypervisor exit tens of µs.
GAP_S = 50e-6
#: A spin that lost its CPU for more than this share of its time, and at least
#: ``PREEMPTED_MIN_LOST_S``, competes for a core with someone: back off.
PREEMPTED_SHARE = 1 / 3
PREEMPTED_MIN_LOST_S = 200e-6


#: Least time between two moves off a CPU (:func:`step_aside`) by one spinner (seconds): a move
#: that did not help (both CPUs crowded) is not tried again before this; the spinner backs off as
#: before meanwhile.
STEP_ASIDE_MIN_S = 0.05


def _load_sched_getcpu() -> "Callable[[], int] | None":
    try:
        f = ctypes.CDLL(None, use_errno=True).sched_getcpu
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_int
    f.argtypes = []
    return f


_sched_getcpu = _load_sched_getcpu()


def step_aside() -> bool:
    """Move the calling thread off the CPU it runs on, to any other CPU it may use; True if it moved.

    Not a pinning: the thread's CPU set is narrowed for one system call and given back at once,
    so the kernel places it as it likes from then on (it only starts elsewhere). The use: a
    spinner whose peer was woken onto its CPU (a Unix-socket send wakes the receiver on the
    sender's CPU when the other CPU is busy, even with low-priority work) holds that peer up for
    its whole budget; backing off makes both sides sleep on one CPU, and the kernel does not move
    two threads that take turns, so every round trip pays two wake-ups (75-150 µs against 25-30
    spinning, 2-core AMD EPYC VM). Moving away puts the two on two CPUs again.

    False where there is nowhere to go (one CPU allowed, no ``sched_getcpu``) or the system
    refuses: the caller backs off instead.
    """
    getcpu = _sched_getcpu
    if getcpu is None:
        return False
    try:
        allowed = os.sched_getaffinity(0)
        here = getcpu()
        if len(allowed) < 2 or here not in allowed:
            return False
        try:
            os.sched_setaffinity(0, allowed - {here})  # the kernel migrates the thread now
        finally:
            os.sched_setaffinity(0, allowed)  # ... and it may run anywhere again
    except OSError:
        return False
    return True


class SpinBudget:
    """How long to busy-poll before sleeping: the whole budget, unless spinning costs a core.

    Parameters
    ----------
    budget_us : int
        The most a spin lasts (microseconds of time on the CPU); 0 never spins.

    Examples
    --------
    >>> s = SpinBudget(200)
    >>> s.start() and s.keep_spinning()
    True
    """

    __slots__ = ("max_s", "cur_s", "_t0", "_last", "_lost", "_probe_at", "_pause_s", "_gave_up", "_move",
                 "_moved_at")

    #: The first pause after backing off (seconds); it doubles up to ``PROBE_S`` while every
    #: probe loses its CPU again (one preemption may be noise: a kernel worker, another
    #: process's burst), and a spin that keeps its CPU starts it over.
    PROBE_MIN_S = 0.002
    PROBE_S = 0.05

    def __init__(self, budget_us: int, move: "Callable[[], bool] | None" = None) -> None:
        self.max_s = max(0, budget_us) / 1e6
        #: called when the peer was held up behind this spinner (see :meth:`found_after_sleep`):
        #: True when it moved the spinner to another CPU (:func:`step_aside`), which then spins on
        self._move = move
        self._moved_at = -STEP_ASIDE_MIN_S
        self.cur_s = self.max_s  # 0 while backed off
        self._t0 = self._last = 0.0
        self._lost = 0.0  # seconds this spin was off its CPU (gaps between polls)
        self._probe_at = 0.0
        self._pause_s = self.PROBE_MIN_S
        self._gave_up = 0.0  # when the last spin ended empty (0: it did not)

    def start(self, now: float | None = None) -> bool:
        """A spin begins (after work was done); False when backed off (sleep at once).

        Once the pause has passed, the spin is a probe with the whole budget again. ``now``:
        the monotonic clock when the caller read it already (:meth:`restart`); one call, as
        every spinner starts one spin per request.
        """
        if now is None:
            now = _monotonic()
        self._t0 = self._last = now
        self._lost = 0.0
        self._gave_up = 0.0
        if self.cur_s:
            return True
        if not self.max_s or now < self._probe_at:
            return False
        self.cur_s = self.max_s
        return True

    def restart(self) -> bool:
        """The spin found its work and the next begins at once: :meth:`paid` then :meth:`start`,
        with one clock read (a server poller does this once per request)."""
        now = _monotonic()
        self._judge(now)
        return self.start(now)

    def keep_spinning(self, scale: float = 1.0) -> bool:
        """Whether to poll once more; False ends the spin (the caller sleeps).

        ``scale`` stretches this spin's budget (a ring client waiting for a chain of several
        entries spins ``scale`` budgets).
        """
        now = _monotonic()
        gap = now - self._last
        self._last = now
        if gap > GAP_S:
            self._lost += gap
        if now - self._t0 - self._lost < self.cur_s * scale:  # the budget counts time on the CPU only
            return True
        if self.cur_s:
            self._judge(now)
            self._gave_up = now
        return False

    def paid(self) -> None:
        """The spin found its work."""
        self._judge(_monotonic())

    def found_after_sleep(self) -> None:
        """The work came while the caller slept after an empty spin: if it came within one budget
        of the spin giving up, the spin was most likely what held it up (or the peer takes about
        as long as a spin, and a wake-up costs it little), and spinning is backed off like a spin
        that lost its CPU.

        How a spin holds up its peer without losing its CPU: a Unix-socket send wakes the
        receiver on the *sender's* CPU when the sender is alone there (a "sync" wake-up, made
        for a sender about to sleep). A client that spins instead keeps that CPU for its whole
        budget while the woken server waits behind it, and answers the moment the client
        sleeps: every round trip then costs the budget (measured: 200-330 µs/op instead of
        20 on the socket path, 2-core AMD EPYC VM; the "228 µs" of docs/polling.md). Sampled
        from /proc in such windows, a runnable server thread sat on the client's CPU in 75-100%
        of the samples, against 0% in the fast windows. The answer then comes a context switch
        and the peer's work after the spin gives up: tens of µs, or more on a loaded machine.
        """
        gave_up = self._gave_up
        self._gave_up = 0.0
        if gave_up:
            now = _monotonic()
            if now - gave_up < self.max_s:
                # with a ``move``, first leave the CPU the peer was queued on (at most once per
                # STEP_ASIDE_MIN_S: a move that did not help is followed by the back-off)
                move = self._move
                if move is not None and now - self._moved_at >= STEP_ASIDE_MIN_S:
                    self._moved_at = now
                    if move():
                        return
                self._back_off(now)

    def _back_off(self, now: float) -> None:
        self.cur_s = 0.0
        self._probe_at = now + self._pause_s
        self._pause_s = min(2 * self._pause_s, self.PROBE_S)

    def _judge(self, now: float) -> None:
        """Back off if this spin lost its CPU for long (gaps between polls only: the work found
        before ``paid()`` is not counted); otherwise the next back-off starts short again."""
        lost = self._lost
        if lost > PREEMPTED_MIN_LOST_S and lost > PREEMPTED_SHARE * (now - self._t0):
            self._back_off(now)
        else:
            self._pause_s = self.PROBE_MIN_S


__all__ = ["GAP_S", "PREEMPTED_MIN_LOST_S", "PREEMPTED_SHARE", "STEP_ASIDE_MIN_S", "SpinBudget", "step_aside"]
