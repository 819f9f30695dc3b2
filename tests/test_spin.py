"""Adaptive busy-polling (transports.spin): every branch forced with a fake clock, whatever the machine."""

from __future__ import annotations

import os

import pytest

from ffaccel.transports import spin as spin_mod
from ffaccel.transports.spin import PREEMPTED_GAP_S, SpinBudget, spin_budget_s

#: A wake-up latency that makes the budget the caller's cap (200 µs): the policy, not the calibration, is tested.
SLOW_WAKE_S = 1e-3


class FakeClock:
    def __init__(self) -> None:
        self.wall = 100.0

    def run(self, seconds: float, cpu_share: float = 1.0) -> None:
        """``seconds`` of CPU time for this thread, which had the CPU ``cpu_share`` of the wall time
        (the rest it lost to others, in one gap before the time it ran)."""
        self.wall += seconds / cpu_share


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(spin_mod, "_monotonic", lambda: c.wall)
    return c


def budget(us: int = 200, **kw: object) -> SpinBudget:
    return SpinBudget(us, wake_s=SLOW_WAKE_S, **kw)  # type: ignore[arg-type]


def _spin_empty(s: SpinBudget, clock: FakeClock, cpu_share: float = 1.0) -> int:
    """Spin until the budget ends with nothing found, a poll every 2 µs; returns how many polls it allowed."""
    s.start()
    polls = 0
    while s.keep_spinning():
        polls += 1
        clock.run(2e-6, cpu_share)
    return polls


def test_a_spin_that_pays_keeps_the_full_budget(clock: FakeClock) -> None:
    s = budget()
    for _ in range(5):
        s.start()
        clock.run(50e-6)
        assert s.keep_spinning()
        s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_empty_spins_halve_the_budget_down_to_zero_then_probe_again(clock: FakeClock) -> None:
    s = budget(160)
    budgets = []
    for _ in range(6):
        _spin_empty(s, clock)
        budgets.append(round(s.cur_s * 1e6))
    assert budgets[:5] == [80, 40, 20, 10, 0]
    assert _spin_empty(s, clock) == 0  # no spinning at all now
    assert not s.start()  # the caller sleeps at once, without a failed read first
    clock.run(SpinBudget.PROBE_S)
    assert s.start()  # a probe: a quarter budget again
    assert s.cur_s == pytest.approx(40e-6)
    s.paid()
    assert s.cur_s == pytest.approx(160e-6)


def test_a_spin_that_loses_its_cpu_stops_spinning_at_once(clock: FakeClock) -> None:
    s = budget()
    _spin_empty(s, clock, cpu_share=0.02)  # each 2 µs poll after a 98 µs gap: others need this CPU
    assert s.cur_s == 0.0
    s.start()
    s.paid()  # finding work right after does not bring spinning back before the probe time
    assert s.cur_s == 0.0
    clock.run(SpinBudget.PROBE_S)
    assert s.start()
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_a_spin_that_paid_late_after_losing_its_cpu_backs_off(clock: FakeClock) -> None:
    s = budget()
    s.start()
    assert s.keep_spinning()
    clock.run(2e-6, cpu_share=0.01)  # 198 µs without the CPU
    assert not s.keep_spinning()  # past the budget: ends, and backs off
    assert s.cur_s == 0.0
    s = budget()
    assert s.start()
    for _ in range(3):
        assert s.keep_spinning()
        clock.run(1e-6, cpu_share=1 / 60)  # 59 µs gaps, within the budget
    s.paid()  # the work was there, but the spin lost most of its CPU on the way
    assert s.cur_s == 0.0


def test_work_that_came_to_a_sleeper_does_not_restore_the_budget(clock: FakeClock) -> None:
    s = budget()
    _spin_empty(s, clock, cpu_share=0.02)  # backed off
    assert not s.start()  # sleeps; the work wakes it
    s.paid()  # the ring poller says so after every piece of work
    assert s.cur_s == 0.0


def test_the_work_done_before_saying_paid_is_not_a_gap(clock: FakeClock) -> None:
    s = budget()
    assert s.start()
    clock.run(500e-6)  # the ring poller found a chain at its first look and ran it, then says so
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_the_wake_up_before_a_spin_is_not_oversubscription(clock: FakeClock) -> None:
    """A VM's wake-up latency (run-queue delay after every sleep, tens of µs) happens before the
    spin starts: it must not stop spinning on an idle machine (the regression this replaced)."""
    s = budget()
    for _ in range(50):
        clock.wall += 80e-6  # asleep, then woken late
        s.start()
        clock.run(10e-6)
        assert s.keep_spinning()
        clock.run(10e-6)
        s.paid()
    assert s.cur_s == pytest.approx(200e-6)


def test_one_short_gap_is_noise_not_oversubscription(clock: FakeClock) -> None:
    s = budget()
    s.start()
    assert s.keep_spinning()
    clock.wall += 2 * PREEMPTED_GAP_S  # an interrupt or a hypervisor exit, once
    assert s.keep_spinning()
    clock.run(2e-6)
    s.paid()
    assert s.cur_s == pytest.approx(200e-6)
    _spin_empty(s, clock)
    assert s.cur_s == pytest.approx(100e-6)  # an empty spin only halves, as ever


def test_the_budget_is_sized_by_the_measured_wake_up() -> None:
    # SPIN_WAKES wake-ups, at least MIN_SPIN_S, at most the caller's cap; a zero cap never spins
    assert spin_budget_s(200e-6, 3e-6) == pytest.approx(spin_mod.MIN_SPIN_S)
    assert spin_budget_s(200e-6, 30e-6) == pytest.approx(spin_mod.SPIN_WAKES * 30e-6)
    assert spin_budget_s(200e-6, 1e-3) == pytest.approx(200e-6)
    assert spin_budget_s(0.0, 30e-6) == 0.0
    assert SpinBudget(200, wake_s=30e-6).max_s == pytest.approx(spin_budget_s(200e-6, 30e-6))
    assert SpinBudget(0).max_s == 0.0


def test_the_wake_up_is_measured_once_per_process_and_leaves_affinity_as_it_was(monkeypatch) -> None:
    monkeypatch.setattr(spin_mod, "_wake_latency", [])
    before = os.sched_getaffinity(0)
    fds_before = len(os.listdir("/proc/self/fd"))
    w = spin_mod.wake_latency_s()
    assert 0 < w < 10  # a real measurement (seconds), whatever this machine's load
    assert spin_mod.wake_latency_s() == w  # measured once
    assert os.sched_getaffinity(0) == before
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # its pipes are closed
    assert SpinBudget(200).max_s == pytest.approx(spin_budget_s(200e-6, w))


def test_a_stretched_spin_and_a_zero_budget(clock: FakeClock) -> None:
    s = budget(100)
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
    server, plain = budget(yield_when_busy=True), budget()
    server.start()
    assert server.keep_spinning()  # one runnable thread: spin
    runnable[0] = spin_mod._CPUS + 3  # CPU-bound processes beside us
    for _ in range(10):  # the smoothed count crosses the line after a few looks
        clock.run(2 * spin_mod.RUNNABLE_TTL_S)
        server.start()
    assert not server.keep_spinning()
    assert server.cur_s == pytest.approx(200e-6)  # skipped, not shrunk: back at once when it clears
    plain.start()
    assert plain.keep_spinning()  # a spinner made without yield_when_busy keeps spinning
    runnable[0] = 1
    for _ in range(10):
        clock.run(2 * spin_mod.RUNNABLE_TTL_S)
        server.start()
    assert server.keep_spinning()


def test_the_run_queue_is_read_from_one_open_file_and_a_forked_child_opens_its_own() -> None:
    assert spin_mod._runnable() >= 1  # this thread, at least
    fd = spin_mod._LOADAVG.fd
    assert fd >= 0 and spin_mod._runnable() >= 1 and spin_mod._LOADAVG.fd == fd  # kept open
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = spin_mod._LOADAVG.fd == -2 and spin_mod._runnable() >= 1
        os.write(w, b"1" if ok else b"0")
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1"
    os.close(r)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("transport", ["socket", "ring"])
@pytest.mark.parametrize("policy", ["spin", "sleep"])
def test_the_server_paths_answer_right_whether_the_policy_spins_or_sleeps(
        policy: str, transport: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both sides' spinners forced to spin (an idle machine) or to sleep (a crowded one), with a
    server in this process so that the forcing reaches it: every result is right, and the
    forced path is the one taken (spins poll, or no spin polls at all)."""
    import threading

    import numpy as np

    import ffaccel
    from ffaccel.abi import Gemm, encode_submission
    from ffaccel.transports.server import core

    monkeypatch.setattr(spin_mod, "_wake_latency", [SLOW_WAKE_S])  # budgets at their caps
    monkeypatch.setattr(spin_mod, "machine_busy", lambda now: policy == "sleep")
    if policy == "spin":  # and never backing off for a CPU lost mid-spin on a loaded test machine
        monkeypatch.setattr(spin_mod, "PREEMPTED_MIN_LOST_S", float("inf"))
    polls = [0]
    real_keep_spinning = SpinBudget.keep_spinning

    def counting(self: SpinBudget, scale: float = 1.0) -> bool:
        more = real_keep_spinning(self, scale)
        polls[0] += more
        return more

    monkeypatch.setattr(SpinBudget, "keep_spinning", counting)
    path = str(tmp_path / "s.sock")
    started = threading.Event()
    holder: list = []

    def ready(srv: object) -> None:
        holder.append(srv)
        started.set()

    t = threading.Thread(target=core.serve, kwargs={"socket_path": path, "ready": ready}, daemon=True)
    t.start()
    assert started.wait(30), "the server did not start"
    try:
        query = "?transport=ring&entries=64&poll_us=500" if transport == "ring" else "?poll_us=500"
        with ffaccel.open(f"unix:{path}{query}") as dev:
            rng = np.random.default_rng(0)
            a, b = (rng.standard_normal((8, 8), np.float32) for _ in range(2))
            A, B, D = dev.alloc(256), dev.alloc(256), dev.alloc(8 * 256)
            A.write(a)
            B.write(b)
            for batch in (1, 8):
                raw = encode_submission([Gemm(m=8, n=8, k=8, a=A.matrix(np.float32, 8, 8),
                                              b=B.matrix(np.float32, 8, 8),
                                              d=D.matrix(np.float32, 8, 8, offset_bytes=i * 256)).encode()
                                         for i in range(batch)])
                for _ in range(20):
                    D.write(np.zeros(8 * 64, np.float32))
                    dev.submit_raw(raw).wait(timeout_ns=10**10)
                    got = D.read(np.float32, batch * 64).reshape(batch, 8, 8)
                    np.testing.assert_allclose(got, np.broadcast_to(a @ b, got.shape), rtol=1e-5, atol=1e-5)
        assert (polls[0] > 0) == (policy == "spin")  # busy-polled, or never once
    finally:
        holder[0]._stop.set()
        t.join(30)
    assert not t.is_alive()
