"""Adaptive busy-polling (transports.spin): every branch forced with a fake clock, whatever the machine."""

from __future__ import annotations

import pytest

from ffaccel.transports import spin as spin_mod
from ffaccel.transports.spin import SpinBudget


class FakeClock:
    def __init__(self) -> None:
        self.wall = 100.0
        self.ran = 10.0  # seconds this thread ran on a CPU
        self.waited = 1.0  # seconds it was runnable but waited for a CPU

    def run(self, seconds: float, cpu_share: float = 1.0) -> None:
        """``seconds`` of wall time pass, runnable throughout, of which this thread ran ``cpu_share``."""
        self.wall += seconds
        self.ran += seconds * cpu_share
        self.waited += seconds * (1 - cpu_share)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(spin_mod, "_monotonic", lambda: c.wall)
    monkeypatch.setattr(spin_mod, "_sched", lambda: (c.ran, c.waited))
    return c


def _spin_empty(s: SpinBudget, clock: FakeClock, cpu_share: float = 1.0) -> int:
    """Spin until the budget ends with nothing found; returns how many polls it allowed."""
    s.start()
    polls = 0
    while s.keep_spinning():
        polls += 1
        clock.run(10e-6, cpu_share)
    return polls


def test_a_spin_that_pays_keeps_the_full_budget(clock: FakeClock) -> None:
    s = SpinBudget(200)
    for _ in range(5):
        s.start()
        clock.run(50e-6)
        assert s.keep_spinning()
        s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_empty_spins_halve_the_budget_down_to_zero_then_probe_again(clock: FakeClock) -> None:
    s = SpinBudget(160)
    budgets = []
    for _ in range(6):
        _spin_empty(s, clock)
        budgets.append(round(s.cur_s * 1e6))
    assert budgets[:5] == [80, 40, 20, 10, 0]
    assert _spin_empty(s, clock) == 0  # no spinning at all now
    clock.run(SpinBudget.PROBE_S)
    _spin_empty(s, clock)  # a probe: a quarter budget again
    assert s.cur_s == pytest.approx(40e-6)
    s.paid()
    assert s.cur_s == pytest.approx(160e-6)


def test_an_oversubscribed_machine_stops_spinning_at_once(clock: FakeClock) -> None:
    s = SpinBudget(200)
    _spin_empty(s, clock)  # the first look only takes the scheduler's statistics
    clock.run(0.01, cpu_share=0.2)  # runnable, but on a CPU a fifth of the time: others need it
    _spin_empty(s, clock, cpu_share=0.2)
    assert s.cur_s == 0.0
    s.paid()  # finding work right after does not bring spinning back before the probe time
    assert s.cur_s == 0.0
    clock.run(SpinBudget.PROBE_S)
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_sharing_the_gil_is_not_oversubscription(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # a thread that sleeps on the GIL is not runnable: no run-queue wait, so no back-off
    s = SpinBudget(200)
    _spin_empty(s, clock)
    s.paid()
    clock.run(SpinBudget.PROBE_S)
    s.paid()
    clock.wall += 1.0  # a second passes asleep (on the GIL, or on a socket)
    _spin_empty(s, clock)
    assert s.cur_s == pytest.approx(100e-6)  # only halved, as any empty spin


def test_the_real_scheduler_statistics_are_read() -> None:
    got = spin_mod._sched()
    assert got is not None and got[0] > 0 and got[1] >= 0


def test_a_stretched_spin_and_a_zero_budget(clock: FakeClock) -> None:
    s = SpinBudget(100)
    s.start()
    clock.run(150e-6)
    assert s.past_budget() and s.keep_spinning(scale=2)  # a chain of two: twice the budget
    clock.run(60e-6)
    assert not s.keep_spinning(scale=2)
    assert _spin_empty(SpinBudget(0), clock) == 0


def test_a_server_spinner_skips_its_spin_while_the_machine_is_crowded(clock: FakeClock,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runnable = [1]
    monkeypatch.setattr(spin_mod, "_runnable", lambda: runnable[0])
    monkeypatch.setattr(spin_mod, "_runnable_seen", [0.0, 0.0])
    server, client = SpinBudget(200, yield_when_busy=True), SpinBudget(200)
    server.start()
    assert server.keep_spinning()  # one runnable thread: spin
    runnable[0] = spin_mod._CPUS + 3  # CPU-bound processes beside us
    for _ in range(10):  # the smoothed count crosses the line after a few looks
        clock.run(2 * spin_mod.RUNNABLE_TTL_S)
        server.start()
    assert not server.keep_spinning()
    assert server.cur_s == pytest.approx(200e-6)  # skipped, not shrunk: back at once when it clears
    client.start()
    assert client.keep_spinning()  # a client waiting for its reply keeps spinning
    runnable[0] = 1
    for _ in range(10):
        clock.run(2 * spin_mod.RUNNABLE_TTL_S)
        server.start()
    assert server.keep_spinning()
