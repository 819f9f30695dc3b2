"""Adaptive busy-polling: spin only while it pays, back off at once when the machine is busy.

Spinning for the next request or completion saves a sleep and a wake-up when the other side
answers within the budget. What a wake-up costs depends on the machine (a few microseconds on
bare metal, tens on a VM whose idle vCPUs halt), so the budget is measured, not assumed: at the
first :class:`SpinBudget` a process makes, :func:`wake_latency_s` times how long a thread blocked
in a read takes to run again once written to, and a spin lasts at most ``SPIN_WAKES`` such
wake-ups (spinning longer burns more CPU than the sleep it avoids would cost), capped by the
caller's ``budget_us``.

A :class:`SpinBudget` then adapts: a spin that ended empty halves the next budget (down to
zero, probed again later), one that paid restores it. On an oversubscribed machine spinning
does harm (the spinner holds a core the other side needs), and the sign of that is measured
inside the spin itself: a spinner that loses its CPU sees a gap between two consecutive polls
(``PREEMPTED_GAP_S`` or more, where a poll takes a microsecond or two); when such gaps add up
to over a third of a spin, the budget drops to zero at once and is probed again later. Only
time inside a spin counts: the delay between a sleeping thread's wake-up and its first
instruction (run-queue delay that every wake-up pays, large on a VM) says nothing about
spinning, and counting it (as an earlier version did, from ``/proc/thread-self/schedstat``)
made a VM stop spinning for good on an idle machine. No system call is made for this.

The spinners made with ``yield_when_busy`` (all of the server's and the clients') also skip a
spin outright while the machine has lastingly more runnable threads than CPUs (``/proc/loadavg``, looked at most every 5 ms by all
spinners together).
"""

from __future__ import annotations

import os
import statistics
import threading
import time

_monotonic = time.monotonic
#: Fraction of a spin lost to preemption (gaps between polls) above which spinning stops.
OVERSUBSCRIBED = 1 / 3
#: A gap between two polls of one spin this long means the spinner lost its CPU (seconds): a
#: poll is a load from shared memory or a non-blocking read, 0.1 to 3 µs; timer interrupts and
#: a hypervisor's own work cost a few µs; someone else's turn on the CPU costs far more.
PREEMPTED_GAP_S = 30e-6
#: Less time lost in a spin than this is noise, not oversubscription (seconds): a CPU taken by
#: another runnable task is taken for its time slice, 0.1 to a few ms on Linux.
PREEMPTED_MIN_LOST_S = 100e-6
#: A spin lasts at most this many measured wake-ups: past it, the CPU a spin burns outweighs
#: the sleep and wake-up it saves (the classic spin-then-block bound).
SPIN_WAKES = 4
#: Never less than this (seconds), whatever the wake-up measured: a reply a few µs away is
#: always worth the wait, and a wake-up measured on an unusually quiet moment is no promise.
MIN_SPIN_S = 20e-6
#: Round trips timed by :func:`wake_latency_s` (the median is kept).
WAKE_SAMPLES = 15


_CPUS = os.cpu_count() or 1
#: How long a look at the run queue stays valid (seconds): every spinner shares one look.
RUNNABLE_TTL_S = 0.005
_runnable_seen = [0.0, 0.0]  # (when last looked, smoothed count of runnable threads)


class _ProcFile:
    """A /proc file kept open and re-read with ``pread`` (one system call, no file object): opening
    it for every look cost ~20 µs here on a busy machine, ~3 µs idle; a forked child opens its own."""

    __slots__ = ("path", "fd")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -2  # not opened yet; -1: cannot be opened here

    def read(self) -> bytes | None:
        if self.fd == -2:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.fd = -1
        if self.fd < 0:
            return None
        try:
            return os.pread(self.fd, 256, 0)
        except OSError:
            return None

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:  # pragma: no cover - already closed
                pass
        self.fd = -2

    def __del__(self) -> None:
        self.close()


_LOADAVG = _ProcFile("/proc/loadavg")


def _forget_after_fork() -> None:
    """A forked child opens its own descriptor (the inherited one stays the parent's business)."""
    _LOADAVG.fd = -2


os.register_at_fork(after_in_child=_forget_after_fork)


def _runnable() -> int:
    """Threads runnable on the machine right now (``/proc/loadavg``'s 4th field), 0 if unknown."""
    data = _LOADAVG.read()
    try:
        return int(data.split()[3].split(b"/")[0]) if data else 0
    except (ValueError, IndexError):
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


_wake_latency: list[float] = []  # measured once per process (a fork inherits it: same machine)


def _measure_wake_latency() -> float:
    """Median one-way latency (seconds) of waking a thread blocked in a read from another CPU:
    two threads, each held to its own CPU while this runs (when two are allowed), bounce a
    byte over two pipes ``WAKE_SAMPLES`` times; each round trip is two wake-ups. Another CPU,
    because that is the wake-up a spin avoids: while both sides spin they sit on two CPUs, and
    waking a halted vCPU is what costs on a VM (a wake-up on the waker's own CPU costs a
    context switch, measured 3.6 µs on a loaded VM where the cross-CPU one cost tens)."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    samples: list[float] = []
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = []
    pin = allowed[:2] if len(allowed) >= 2 else []

    def echo() -> None:
        try:
            if pin:
                os.sched_setaffinity(0, {pin[1]})  # this thread only (Linux: 0 is the calling thread)
            while os.read(r1, 1) == b"x":
                os.write(w2, b"x")
        except OSError:
            pass

    t = threading.Thread(target=echo, name="ffaccel-wake-probe", daemon=True)
    try:
        if pin:
            os.sched_setaffinity(0, {pin[0]})
        t.start()
        for i in range(WAKE_SAMPLES + 2):  # the first two warm up (thread start, page faults)
            t0 = time.perf_counter()
            os.write(w1, b"x")
            os.read(r2, 1)
            if i >= 2:
                samples.append((time.perf_counter() - t0) / 2)
        os.write(w1, b"q")
        t.join(1.0)
    finally:
        if pin:
            try:
                os.sched_setaffinity(0, allowed)
            except OSError:
                pass
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    return statistics.median(samples)


def wake_latency_s() -> float:
    """This machine's wake-up latency (seconds), measured at the first call of the process."""
    if not _wake_latency:
        try:
            _wake_latency.append(_measure_wake_latency())
        except OSError:  # no pipes or threads left: assume the worst case, the caller's cap decides
            _wake_latency.append(float("inf"))
    return _wake_latency[0]


def spin_budget_s(cap_s: float, wake_s: float) -> float:
    """How long a spin may last: ``SPIN_WAKES`` wake-ups of ``wake_s``, at least ``MIN_SPIN_S``,
    at most ``cap_s`` (0 never spins)."""
    if cap_s <= 0:
        return 0.0
    return min(cap_s, max(MIN_SPIN_S, SPIN_WAKES * wake_s))


class SpinBudget:
    """How long to busy-poll before sleeping, adapted to what spinning achieved.

    Parameters
    ----------
    budget_us : int
        The most a spin lasts (microseconds); 0 never spins. The budget used is
        :func:`spin_budget_s` of it and the measured wake-up latency.
    yield_when_busy : bool
        Skip a spin while the machine has more runnable threads than CPUs. Every spinner of
        the server and of the clients does: measured, a server spinning beside two CPU-bound
        processes tripled the socket path's cost, and a client spinning on a loaded machine
        (load average 6-7 on 2 vCPUs) made the socket path 4.2-4.6x a blocking round trip where
        one that skipped its spins made it 2.7-3.4x (a spin that ends in a sleep after all
        costs the spinner its scheduler credit: its next wake-up waits longer).
    wake_s : float, optional
        The wake-up latency to size the budget by (seconds); None measures it
        (:func:`wake_latency_s`, once per process). Tests force it.

    Examples
    --------
    >>> s = SpinBudget(200)
    >>> s.start(); s.keep_spinning()
    True
    """

    __slots__ = ("max_s", "cur_s", "_t0", "_seen", "_lost", "_probe_at", "_skip", "yield_when_busy")

    #: After backing off, try spinning again this much later (seconds).
    PROBE_S = 0.05

    def __init__(self, budget_us: int, yield_when_busy: bool = False, wake_s: float | None = None) -> None:
        self.yield_when_busy = yield_when_busy
        cap_s = max(0, budget_us) / 1e6
        self.max_s = spin_budget_s(cap_s, wake_latency_s() if wake_s is None and cap_s else (wake_s or 0.0))
        self.cur_s = self.max_s
        self._t0 = 0.0  # when this spin began
        self._seen = 0.0  # when this spin last polled
        self._lost = 0.0  # time this spin lost to preemption (gaps of PREEMPTED_GAP_S or more)
        self._probe_at = 0.0
        self._skip = False  # this spin is skipped: the machine has more runnable threads than CPUs

    def start(self) -> bool:
        """A spin begins (after work was done); whether to poll at all (False: sleep at once).

        Skipped at once when the machine is busy right now; after backing off, spinning
        resumes with a quarter budget once ``PROBE_S`` has passed (a probe that pays restores
        the full budget).
        """
        self._t0 = self._seen = now = _monotonic()
        self._lost = 0.0
        if not self.cur_s:
            if not self.max_s or now < self._probe_at:
                self._skip = True
                return False
            self.cur_s = self.max_s / 4
        self._skip = self.yield_when_busy and machine_busy(now)
        return not self._skip

    def keep_spinning(self, scale: float = 1.0) -> bool:
        """Whether to poll once more; False ends the spin (and adapts the next budget).

        ``scale`` stretches this spin's budget (a ring client waiting for a chain of several
        entries spins ``scale`` budgets).
        """
        if self._skip:
            return False
        now = _monotonic()
        gap = now - self._seen
        self._seen = now
        if gap >= PREEMPTED_GAP_S:
            self._lost += gap
        if now - self._t0 < self.cur_s * scale:
            return True
        self._ended_empty(now)
        return False

    def past_budget(self) -> bool:
        """Whether this spin is past one plain budget (a stretched spin should yield the core)."""
        return _monotonic() - self._t0 >= self.cur_s

    def paid(self) -> None:
        """The spin found work: spin for the full budget next time (unless backing off).

        A spin that lost its CPU for over a third of its time found its work late *because*
        the machine is oversubscribed (the other side may have waited for this very core): it
        backs off as an empty one would. After a skipped spin (``start`` said no) this does
        nothing: the work came to a sleeper.
        """
        if self._skip:
            return
        now = _monotonic()
        # only the gaps between polls count: the caller may have done the work it found before
        # calling this (the ring poller runs a chain, then says it paid)
        if self._lost and self._preempted(now):
            self._back_off(now)
        elif self.cur_s < self.max_s and now >= self._probe_at:
            self.cur_s = self.max_s

    def _preempted(self, now: float) -> bool:
        """Whether this spin lost its CPU for long (a third of it, and more than noise)."""
        lost = self._lost
        return lost >= PREEMPTED_MIN_LOST_S and lost > OVERSUBSCRIBED * (now - self._t0)

    def _back_off(self, now: float) -> None:
        self.cur_s = 0.0
        self._probe_at = now + self.PROBE_S

    def _ended_empty(self, now: float) -> None:
        if not self.max_s:
            return
        if self._lost and self._preempted(now):
            self._back_off(now)
        elif self.cur_s > self.max_s / 16:
            self.cur_s /= 2
        else:
            self._back_off(now)


__all__ = ["OVERSUBSCRIBED", "PREEMPTED_GAP_S", "SpinBudget", "spin_budget_s", "wake_latency_s"]
