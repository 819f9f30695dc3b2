"""Adaptive busy-polling (transports.spin): every branch forced with a fake clock, whatever the machine."""

from __future__ import annotations

import os

import pytest

from ffaccel.transports import spin as spin_mod
from ffaccel.transports.spin import GAP_S, PREEMPTED_MIN_LOST_S, SpinBudget

POLL_S = 2e-6  # one poll of a spinner: far under GAP_S


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(spin_mod, "_monotonic", lambda: c.now)
    return c


def _spin(s: SpinBudget, clock: FakeClock, polls: int | None = None, gap_every: int = 0,
          gap_s: float = 0.0) -> int:
    """Spin until the budget ends (or ``polls`` polls); every ``gap_every``-th poll the spinner
    loses its CPU for ``gap_s``. Returns how many polls the budget allowed."""
    n = 0
    if not s.start():
        return 0
    while s.keep_spinning():
        n += 1
        clock.now += gap_s if gap_every and n % gap_every == 0 else POLL_S
        if polls is not None and n >= polls:
            break
    return n


def test_a_spin_that_pays_keeps_the_full_budget(clock: FakeClock) -> None:
    s = SpinBudget(200)
    for _ in range(5):
        assert _spin(s, clock, polls=20) == 20
        s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_restart_judges_the_spin_that_paid_and_starts_the_next(clock: FakeClock) -> None:
    # a server poller's paid() + start() in one call: the same outcomes as the two
    for lose in (False, True):
        a, b = SpinBudget(200), SpinBudget(200)
        for s in (a, b):
            assert s.start()
            for n in range(1, 40):  # a spin that loses its CPU for most of its time, or keeps it
                clock.now += 300e-6 if lose and n % 2 else POLL_S
                s.keep_spinning()
        a.paid()
        got = (a.start(), b.restart())
        assert got[0] is got[1] is (not lose)
        assert a.cur_s == b.cur_s and a._t0 == b._t0 and a._lost == b._lost == 0.0


def test_an_empty_spin_keeps_the_whole_budget(clock: FakeClock) -> None:
    # a peer that answers late is no reason to stop spinning: it must then be woken, later still
    s = SpinBudget(160)
    for _ in range(6):
        assert _spin(s, clock) == pytest.approx(160e-6 / POLL_S, abs=1)
    assert s.cur_s == pytest.approx(160e-6) and s.start()


def test_a_spin_that_loses_its_cpu_backs_off_at_once(clock: FakeClock) -> None:
    # another thread of the same weight wants this core: the spinner loses it for a time slice
    s = SpinBudget(200)
    _spin(s, clock, gap_every=5, gap_s=1e-3)
    assert s.cur_s == 0.0 and not s.start()
    s.paid()  # finding work right after does not bring spinning back before the probe time
    assert s.cur_s == 0.0
    clock.now += SpinBudget.PROBE_MIN_S
    assert s.start()
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_the_pause_doubles_while_probes_lose_their_cpu_and_starts_over_when_one_pays(clock: FakeClock) -> None:
    s = SpinBudget(200)
    pauses = []
    for _ in range(7):
        _spin(s, clock, gap_every=3, gap_s=1e-3)  # preempted: back off
        assert not s.start()
        t0 = clock.now
        while not s.start():
            clock.now += 1e-4
        pauses.append(round((clock.now - t0) * 1e3))
        assert s.cur_s == pytest.approx(200e-6)  # a probe: the whole budget
    assert pauses == [2, 4, 8, 16, 32, 50, 50]  # PROBE_MIN_S doubling up to PROBE_S
    s.paid()  # the probe kept its CPU: the next back-off is short again
    assert s.cur_s == pytest.approx(200e-6)
    _spin(s, clock, gap_every=3, gap_s=1e-3)
    clock.now += SpinBudget.PROBE_MIN_S
    assert s.start()


def test_short_interruptions_are_noise(clock: FakeClock) -> None:
    # interrupts, timers and hypervisor exits: short gaps, or a total under the minimum, change nothing
    s = SpinBudget(200)
    _spin(s, clock, polls=40, gap_every=4, gap_s=GAP_S * 0.9)
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)
    _spin(s, clock, polls=6, gap_every=3, gap_s=PREEMPTED_MIN_LOST_S / 2.5)
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_the_budget_counts_time_on_the_cpu_only(clock: FakeClock) -> None:
    # a gap does not eat the budget: a spin interrupted once still polls its whole budget
    s = SpinBudget(100)
    plain = _spin(SpinBudget(100), clock)
    assert _spin(s, clock, gap_every=10, gap_s=GAP_S * 2) >= plain


def test_a_stretched_spin_and_a_zero_budget(clock: FakeClock) -> None:
    s = SpinBudget(100)
    s.start()
    polls = 0
    while s.keep_spinning(scale=2):  # a chain of two entries: twice the budget
        polls += 1
        clock.now += POLL_S
    assert polls == pytest.approx(200e-6 / POLL_S, abs=1)
    z = SpinBudget(0)
    assert not z.start() and _spin(z, clock) == 0
    clock.now += 10 * SpinBudget.PROBE_S
    assert not z.start()  # a zero budget never probes


def test_an_answer_right_after_the_spin_gave_up_backs_off(clock: FakeClock) -> None:
    # the peer waited behind this spinner on its CPU and ran the moment the spinner slept
    s = SpinBudget(200)
    _spin(s, clock)
    clock.now += 150e-6  # within one budget (200 us) of giving up
    s.found_after_sleep()
    assert s.cur_s == 0.0
    clock.now += SpinBudget.PROBE_MIN_S
    _spin(s, clock)
    clock.now += 5e-3  # an answer many budgets after the spin: the peer was just slow, spinning goes on
    s.found_after_sleep()
    assert s.cur_s == pytest.approx(200e-6)
    s.start()
    s.found_after_sleep()  # a sleep without an empty spin before it (backed off, or no spin) changes nothing
    assert s.cur_s == pytest.approx(200e-6)


def test_a_held_up_peer_moves_the_spinner_first_and_backs_off_if_it_cannot(clock: FakeClock) -> None:
    moves: list[bool] = []
    can_move = [True]

    def move() -> bool:
        moves.append(can_move[0])
        return can_move[0]

    s = SpinBudget(200, move)
    _spin(s, clock)
    clock.now += 100e-6  # the answer right after the spin gave up: the peer was queued behind it
    s.found_after_sleep()
    assert moves == [True] and s.cur_s == pytest.approx(200e-6)  # moved: it spins on, not backed off
    _spin(s, clock)
    clock.now += 100e-6
    s.found_after_sleep()  # again within STEP_ASIDE_MIN_S: the move did not help, back off as before
    assert moves == [True] and s.cur_s == 0.0
    clock.now += spin_mod.STEP_ASIDE_MIN_S
    can_move[0] = False  # nowhere to go (one CPU): backs off
    _spin(s, clock)
    clock.now += 100e-6
    s.found_after_sleep()
    assert moves == [True, False] and s.cur_s == 0.0


def _in_thread(fn):  # affinity is per thread: a thread of its own leaves the test runner's alone
    import threading
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(30)
    assert out, "the thread did not finish"
    return out[0]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_step_aside_leaves_the_cpu_set_as_it_was() -> None:
    def run() -> tuple[bool, set[int], set[int]]:
        before = os.sched_getaffinity(0)
        moved = spin_mod.step_aside()
        return moved, before, os.sched_getaffinity(0)

    moved, before, after = _in_thread(run)
    assert after == before  # never left pinned
    assert moved == (len(before) > 1 and spin_mod._sched_getcpu is not None)

    def alone() -> tuple[bool, set[int]]:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        return spin_mod.step_aside(), os.sched_getaffinity(0)

    moved, after = _in_thread(alone)
    assert not moved and len(after) == 1  # one CPU allowed: nowhere to go, nothing changed
