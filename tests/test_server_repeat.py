"""The server's repeat path (``Client.submit_raw``, docs/polling.md "Repeat-request fast path").

A submission equal to the one planned last, not heavy, its waits met, on an engine with nothing
queued or running, runs after one claim of the engine instead of through the scheduler's queue
decision. Each test builds a server in this process with its ring poller stopped and plays the
poller by hand (as ``benchmarks/ring_server_cost.py`` does), so which path runs is decided by the
test, not by timing; the general path is forced with ``Client.repeat_path = False``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Iterator

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import ABI_VERSION, COMMAND_BYTES, Copy, Gemm, Matrix, encode_submission
from ffaccel.drivers import open_driver
from ffaccel.spec import DType, Engine, ErrorCode, FFAccelError
from ffaccel.transports.limits import SessionLimits
from ffaccel.transports.protocol import (CQE, HELLO, MSG, REPLY, SQE_BYTES, SQE_HEADER, WIRE_VERSION, Msg,
                                         SqeFlags, recv_exact, ring_words, send_msg)
from ffaccel.transports.server.core import Client, Server
from ffaccel.transports.server.rings import Ring, RingPoller
from ffaccel.transports.server.scheduler import EngineScheduler
from server_util import wait_until  # tests/ is on pytest's pythonpath (pyproject.toml)

N = 8
ENTRIES = 16
WAIT_NS = 10 * 10**9  # a deadline for work the engine's worker runs: an event, never a duration tested


@dataclasses.dataclass
class Setup:
    srv: Server
    client: Client
    ring: Ring
    a: Matrix
    b: Matrix
    d: Matrix
    arrays: dict[str, np.ndarray]
    sent: int = 0
    calls: dict[str, int] = dataclasses.field(default_factory=lambda: {"plan": 0, "submit": 0})

    def entry(self, gemm: Gemm) -> bytes:
        """One SQE (user_data left 0: :meth:`publish` stores it) for one GEMM on the compute engine."""
        return SQE_HEADER.struct.pack(0, int(Engine.COMPUTE), 0, 0, 0, 0, 0) + gemm.encode()

    def gemm(self, **change: object) -> Gemm:
        return Gemm(**{"m": N, "n": N, "k": N, "a": self.a, "b": self.b, "d": self.d, **change})

    def publish(self, entry: bytes) -> tuple[int, ...]:
        """Write ``entry`` into the next SQ slot, let the server poll once, reap its CQE."""
        i = self.sent
        ring = self.ring
        off = ring.sq_off + (i % ENTRIES) * SQE_BYTES
        ring.mm[off: off + SQE_BYTES] = (1000 + i).to_bytes(8, "little") + entry[8:]
        self.sent = i + 1
        words = ring_words(ring.mm)
        words["sq_tail"].value = self.sent
        assert ring.poll()
        assert words["cq_tail"].value == self.sent, "no completion written"
        cqe = CQE.struct.unpack_from(ring.mm, ring.cq_off + (i % ENTRIES) * CQE.size_bytes)
        words["cq_head"].value = self.sent  # reaped: the CQ never fills
        assert cqe[0] == 1000 + i  # each completion carries its own entry's user_data
        return cqe

    def wait(self, value: int) -> None:
        self.client.wait(Engine.COMPUTE, value, WAIT_NS)

    def result(self) -> np.ndarray:
        return self.arrays["d"].view(np.float32).reshape(N, N).copy()


@pytest.fixture(params=[True, False], ids=["repeat-path", "general-path"])
def setup(request: pytest.FixtureRequest) -> Iterator[Setup]:
    yield from _setup(request.param)


def _setup(repeat_path: bool, session_limits: SessionLimits | None = None) -> Iterator[Setup]:
    folder = tempfile.mkdtemp(prefix="ffaccel-repeat-")
    srv = Server(open_driver("cpu"), os.path.join(folder, "s.sock"), session_limits=session_limits)
    srv.poller.stop()  # this thread plays the poller
    client = Client(srv)
    if not repeat_path:
        client.repeat_path = False
    arrays, views = {}, {}
    rng = np.random.default_rng(21)
    for name in "abd":
        handle, mem = client.alloc(N * N * 4)
        arrays[name] = mem.array
        views[name] = Matrix(handle, DType.F32, N, N)
        if name != "d":
            mem.array.view(np.float32)[:] = rng.standard_normal(N * N, np.float32)
    ring = Ring(client, ENTRIES, os.eventfd(0, os.EFD_NONBLOCK), srv.poller.waker)
    client.ring = ring
    s = Setup(srv, client, ring, views["a"], views["b"], views["d"], arrays)
    plan, submit = client.session.plan, srv.engines[Engine.COMPUTE].submit

    def counted_plan(raw: bytes):  # type: ignore[no-untyped-def]
        s.calls["plan"] += 1
        return plan(raw)

    def counted_submit(*args):  # type: ignore[no-untyped-def]
        s.calls["submit"] += 1
        return submit(*args)

    client.session.plan = counted_plan  # type: ignore[method-assign]
    srv.engines[Engine.COMPUTE].submit = counted_submit  # type: ignore[method-assign]
    try:
        yield s
    finally:
        client.close()
        srv.shutdown()
        srv.driver.close()


def _expected(s: Setup) -> np.ndarray:
    a = s.arrays["a"].view(np.float32).reshape(N, N)
    b = s.arrays["b"].view(np.float32).reshape(N, N)
    return a @ b


def test_a_repeated_entry_gives_the_same_completions_and_results_on_both_paths(setup: Setup) -> None:
    s = setup
    entry = s.entry(s.gemm())
    cqes = [s.publish(entry) for _ in range(5)]
    # accepted, on compute, fence values 1..5 in order, no error
    assert [c[1:] for c in cqes] == [(0, int(Engine.COMPUTE), v, 0xFFFF_FFFF, 0, 0) for v in range(1, 6)]
    np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)
    assert s.client.completed[Engine.COMPUTE] == 5  # each ran inline and signalled its fence
    assert s.ring.words["completed_compute"].value == 5  # and the ring's fence word shows it
    assert s.client.session.usage.totals()["submissions"] == 5
    assert s.client.session.usage.totals()["gemm_flops"] == 5 * 2 * N * N * N
    if s.client.repeat_path:  # validated and planned once; the queue decision never asked
        assert s.calls == {"plan": 1, "submit": 1}
    else:
        assert s.calls == {"plan": 5, "submit": 5}


def test_a_repeated_socket_submission_takes_the_repeat_path(setup: Setup) -> None:
    # the socket path hands submit_raw a new bytes object per request: equal bytes are the repeat
    s = setup
    raw = encode_submission([s.gemm().encode()])
    got = [s.client.submit_raw(bytes(bytearray(raw))) for _ in range(4)]
    assert got == [(Engine.COMPUTE, v) for v in range(1, 5)]
    np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)
    assert s.calls == ({"plan": 1, "submit": 1} if s.client.repeat_path else {"plan": 4, "submit": 4})


def test_a_changed_entry_is_planned_again_and_a_bad_one_refused_as_on_the_general_path(setup: Setup) -> None:
    s = setup
    good = s.entry(s.gemm())
    s.publish(good)
    s.publish(good)
    # the client rewrites its SQ entry: D past its buffer's end (out of bounds), then alpha 2
    out_of_bounds = s.entry(s.gemm(d=Matrix(s.d.handle, DType.F32, N, N, offset_bytes=64)))
    bad = s.publish(out_of_bounds)
    assert bad[1] == ErrorCode.OUT_OF_BOUNDS and bad[3] == 0 and bad[6] != 0  # refused, no fence, an error id
    assert s.client.session.errors[bad[6]].code == ErrorCode.OUT_OF_BOUNDS
    assert s.publish(out_of_bounds)[1] == ErrorCode.OUT_OF_BOUNDS  # refused again when repeated
    doubled = s.publish(s.entry(s.gemm(alpha=2.0)))
    assert doubled[1:4] == (0, int(Engine.COMPUTE), 3)  # refused ones consumed no fence value
    np.testing.assert_allclose(s.result(), 2 * _expected(s), rtol=1e-5, atol=1e-5)
    assert s.publish(good)[1:4] == (0, int(Engine.COMPUTE), 4)
    np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)
    planned = s.calls["plan"]
    assert planned == (5 if s.client.repeat_path else 6)  # only the second good one was not planned again


def test_operand_memory_changed_between_repeats_is_read_as_it_is_now(setup: Setup) -> None:
    s = setup
    entry = s.entry(s.gemm())
    s.publish(entry)
    s.arrays["a"].view(np.float32)[:] = np.eye(N, dtype=np.float32).ravel()
    s.publish(entry)
    b = s.arrays["b"].view(np.float32).reshape(N, N)
    np.testing.assert_allclose(s.result(), b, rtol=1e-6)


def test_a_client_rewriting_its_entry_and_operands_between_the_check_and_the_run_runs_what_was_checked(
        setup: Setup) -> None:
    # the server compares its one private copy of the entry and runs its own bytes: an entry
    # rewritten in shared memory after the copy (here: D past its buffer's end) is never read,
    # and operands rewritten then are data, read within the bounds checked at plan time
    s = setup
    entry = s.entry(s.gemm())
    s.publish(entry)
    ring, submit_raw = s.ring, s.client.submit_raw
    hostile = s.entry(s.gemm(d=Matrix(s.d.handle, DType.F32, N, N, offset_bytes=1 << 20)))[8:]

    def rewrite_then_submit(raw: bytes):  # type: ignore[no-untyped-def]
        slot = ring.sq_off + (s.sent - 1) % ENTRIES * SQE_BYTES
        ring.mm[slot + 8: slot + SQE_BYTES] = hostile  # after the server's copy, before its run
        s.arrays["a"].view(np.float32)[:] = np.eye(N, dtype=np.float32).ravel()
        return submit_raw(raw)

    s.client.submit_raw = rewrite_then_submit  # type: ignore[method-assign]
    cqe = s.publish(entry)
    assert cqe[1:4] == (0, int(Engine.COMPUTE), 2)  # the checked entry ran, nothing else
    np.testing.assert_allclose(s.result(), s.arrays["b"].view(np.float32).reshape(N, N), rtol=1e-6)
    assert ring.sq_head == s.sent  # the rewritten slot was consumed already: never read again


def test_a_buffer_freed_between_repeats_gets_the_repeat_refused(setup: Setup) -> None:
    s = setup
    entry = s.entry(s.gemm())
    s.publish(entry)
    s.publish(entry)
    s.arrays["d"][:] = 0
    s.client.free(s.b.handle)
    cqe = s.publish(entry)
    assert (cqe[1], cqe[3], cqe[4]) == (ErrorCode.BAD_HANDLE, 0, 0)  # refused, command 0 named
    assert s.client.session.errors[cqe[6]].param == "b.handle"
    assert not s.arrays["d"].any()  # nothing ran
    assert s.client.submitted[Engine.COMPUTE] == 2


def test_the_repeat_path_is_not_taken_when_other_work_is_queued() -> None:
    for s in _setup(True):
        entry = s.entry(s.gemm())
        s.publish(entry)  # planned: the next equal entry would be a repeat
        sched = s.srv.engines[Engine.COMPUTE]
        sched.stop()  # the worker leaves: what is queued stays queued, whatever the timing
        sched.thread.join(WAIT_NS / 1e9)
        other = Client(s.srv)
        try:
            m, out = (Matrix(other.alloc(N * N * 4)[0], DType.F32, N, N) for _ in range(2))
            sched.running.acquire()  # as if the engine ran someone's work: other's submission queues
            try:
                assert other.submit_raw(encode_submission([Gemm(m=N, n=N, k=N, a=m, b=m, d=out).encode()])) \
                    == (Engine.COMPUTE, 1)
            finally:
                sched.running.release()
            assert list(sched.queues) == [other]
            s.arrays["d"][:] = 0
            cqe = s.publish(entry)  # the engine is free, but another client's work waits before it
            assert cqe[1:4] == (0, int(Engine.COMPUTE), 2)  # accepted, fence value assigned
            assert list(sched.queues) == [other, s.client] and s.client.queued == 1  # queued behind it
            assert s.calls == {"plan": 2, "submit": 3}  # through the general path (other's submit counted too)
            assert not s.arrays["d"].any() and s.client.completed[Engine.COMPUTE] == 1  # not run
        finally:
            other.close()


def test_the_repeat_path_is_not_taken_while_the_engine_runs_other_work() -> None:
    for s in _setup(True):
        entry = s.entry(s.gemm())
        s.publish(entry)
        sched = s.srv.engines[Engine.COMPUTE]
        sched.running.acquire()  # someone's work runs on the engine
        try:
            cqe = s.publish(entry)
            assert cqe[1:4] == (0, int(Engine.COMPUTE), 2)
            assert s.client.queued == 1 and s.calls["submit"] == 2  # queued, not run beside it
        finally:
            sched.unclaim()  # the run ends: the worker is woken for what was queued
        s.wait(2)  # the worker ran it (a deadline, not a duration)
        assert s.client.queued == 0
        np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)


def test_the_repeat_path_waits_for_its_fences_as_the_general_path_does() -> None:
    for s in _setup(True):
        sched = s.srv.engines[Engine.COMPUTE]
        g = s.gemm().encode()
        s.client.submit_raw(encode_submission([g]))
        waiting = encode_submission([g], waits=[(Engine.COMPUTE, 1)])
        assert s.client.submit_raw(waiting) == (Engine.COMPUTE, 2)  # planned; its wait is met
        assert s.client.submit_raw(waiting) == (Engine.COMPUTE, 3)  # the repeat: run at once
        assert s.calls == {"plan": 2, "submit": 2}
        assert s.client.completed[Engine.COMPUTE] == 3 and not sched.queues


def test_the_repeat_path_leaves_a_submission_whose_waits_are_not_met_to_the_scheduler() -> None:
    for s in _setup(True):
        copy = s.srv.engines[Engine.COPY]
        e = Matrix(s.client.alloc(N * N * 4)[0], DType.F32, N, N)
        copy.running.acquire()  # the copy engine is busy: the COPY below queues (fence copy:1 not signalled)
        try:
            assert s.client.submit_raw(encode_submission([Copy(src=s.a, dst=e).encode()], Engine.COPY)) \
                == (Engine.COPY, 1)
            waiting = encode_submission([s.gemm().encode()], waits=[(Engine.COPY, 1)])
            s.client.session.plan(waiting)  # planned (valid: copy:1 was submitted): the memo holds it
            assert s.client.submit_raw(waiting) == (Engine.COMPUTE, 1)
            assert s.client.queued == 2 and not s.arrays["d"].any()  # queued until copy:1 signals, not run
        finally:
            copy.unclaim()  # the copy engine's worker runs the COPY; its signal lets the GEMM run
        s.wait(1)
        np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)


def test_heavy_work_is_left_to_the_engines_worker() -> None:
    # a submission over slice_units multiply-adds is heavy: the worker runs it in slices between
    # other clients' work, never inline, repeated or not
    for s in _setup(True, SessionLimits(slice_units=N * N * N - 1)):
        entry = s.entry(s.gemm())
        for value in (1, 2):
            s.arrays["d"][:] = 0
            assert s.publish(entry)[1:4] == (0, int(Engine.COMPUTE), value)
            s.wait(value)
            np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)
        assert s.calls == {"plan": 2, "submit": 2}  # both through the scheduler


def test_a_failure_inside_the_repeat_path_is_reported_and_gives_the_engine_back(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for s in _setup(True):
        entry = s.entry(s.gemm())
        s.publish(entry)
        session = s.client.session
        assign = session.assign

        def failing(*args):  # type: ignore[no-untyped-def]
            raise RuntimeError("injected")

        monkeypatch.setattr(session, "assign", failing)
        with caplog.at_level(logging.ERROR, "ffaccel.server"):
            cqe = s.publish(entry)
        assert (cqe[1], cqe[3]) == (ErrorCode.DEVICE_LOST, 0)  # as _complete reports any internal failure
        assert "injected" in session.errors[cqe[6]].message
        sched = s.srv.engines[Engine.COMPUTE]
        assert not sched.running.locked()  # the engine was given back
        monkeypatch.setattr(session, "assign", assign)
        assert s.publish(entry)[1:4] == (0, int(Engine.COMPUTE), 2)


def test_a_driver_failure_is_reported_with_the_submission_and_its_fence_still_signals(
        setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    s = setup
    entry = s.entry(s.gemm())
    s.publish(entry)
    plans = s.client.plans
    raw, engine, runs, waits = plans.last
    good_runs = runs

    def broken() -> None:
        raise RuntimeError("driver fault")

    plans.last = (raw, engine, type(runs)([broken], runs.heavy, runs.usage), waits)
    if not s.client.repeat_path:  # the general path plans again: make its bound runs the broken ones too
        plans.runs.get_all = lambda ops: plans.last[2]  # type: ignore[method-assign]
        plans.cache.clear()
    with caplog.at_level(logging.ERROR, "ffaccel.server"):
        cqe = s.publish(entry)
    # the completion says the work failed (not a silent success over an unwritten D), with the driver's text
    assert (cqe[1], cqe[3]) == (ErrorCode.DEVICE_LOST, 0)
    assert "driver fault" in s.client.session.errors[cqe[6]].message
    assert s.client.completed[Engine.COMPUTE] == 2  # its fence value was used and signals: nobody hangs
    assert "driver fault" in caplog.text  # and the traceback is the server's log's
    assert not s.srv.engines[Engine.COMPUTE].running.locked()
    s.wait(2)  # told once: a wait after the failed submission's answer does not raise it again
    plans.last = (raw, engine, good_runs, waits)
    if not s.client.repeat_path:
        plans.cache.clear()
    s.arrays["d"][:] = 0
    assert s.publish(entry)[1:4] == (0, int(Engine.COMPUTE), 3)  # the client goes on
    np.testing.assert_allclose(s.result(), _expected(s), rtol=1e-5, atol=1e-5)


def test_a_queued_submission_that_fails_makes_its_wait_raise_once() -> None:
    # heavy work runs on the engine's worker after the submission was answered with its fence:
    # the failure reaches the client through the wait on that fence (as in process), once
    for s in _setup(True, SessionLimits(slice_units=N * N * N - 1)):
        entry = s.entry(s.gemm())
        kernel = s.srv.driver.prepare_gemm

        def failing_prepare(op):  # type: ignore[no-untyped-def]
            def run(*args):  # type: ignore[no-untyped-def]
                raise RuntimeError("band fault")
            return run

        s.srv.driver.prepare_gemm = failing_prepare  # type: ignore[method-assign]
        s.client.plans.cache.clear()
        assert s.publish(entry)[1:4] == (0, int(Engine.COMPUTE), 1)  # accepted, queued
        with pytest.raises(FFAccelError) as e:
            s.wait(1)
        assert e.value.code == ErrorCode.DEVICE_LOST and "band fault" in e.value.message
        assert "COMPUTE:1" in e.value.message
        s.wait(1)  # reported once
        s.srv.driver.prepare_gemm = kernel  # type: ignore[method-assign]
        s.client.plans.cache.clear()
        assert s.publish(entry)[1:4] == (0, int(Engine.COMPUTE), 2)
        s.wait(2)


def test_the_poller_holds_one_reference_per_ring_while_it_is_listed() -> None:
    for s in _setup(True):
        ring = s.ring
        held = RingPoller._hold([], [ring])
        assert held == [ring] and ring._users == 1
        assert RingPoller._hold(held, [ring]) == [ring] and ring._users == 1  # held once, not per pass
        ring.close()  # its client left while the poller holds it: nothing is released yet
        ring.mm[ring.sq_off + 8: ring.sq_off + SQE_BYTES] = s.entry(s.gemm())[8:]
        ring.words["sq_tail"].value = 1
        assert not ring._released and not ring.poll() and ring.sq_head == 0  # and it is not read any more
        assert RingPoller._hold(held, []) == [] and ring._released  # let go when it leaves the list
        late = Ring(s.client, ENTRIES, os.eventfd(0, os.EFD_NONBLOCK), s.srv.poller.waker)
        late.close()  # closed before the poller ever looked: never held, never polled
        assert RingPoller._hold([], [late]) == [] and late._released


def test_engine_schedulers_claim_is_refused_while_work_is_queued_or_running() -> None:
    sched = EngineScheduler(Engine.COPY)
    try:
        assert sched.claim()
        assert not sched.claim()  # running
        sched.unclaim()
        assert sched.claim()
        sched.unclaim()
    finally:
        sched.stop()


def test_a_socket_client_that_hangs_up_while_its_queue_is_full_is_dropped_with_its_work(tmp_path) -> None:
    # back-pressure: a request read while its client's queue is full waits for room. That wait looked
    # only at the queue: a client that hung up meanwhile kept its connection, its queued work ran for
    # nobody, and the request it had sent was accepted after it left (here the engine is held, so
    # that would be never)
    srv = Server(open_driver("cpu"), str(tmp_path / "s.sock"), session_limits=SessionLimits(max_queued_submissions=2))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    sched = srv.engines[Engine.COMPUTE]
    sched.running.acquire()  # someone's work runs on the engine: whatever this client submits queues
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(WAIT_NS / 1e9)
        sock.connect(srv.socket_path)

        def request(msg: Msg, payload: bytes, answered: bool = True) -> int:
            send_msg(sock, MSG.struct.pack(int(msg), 0, len(payload)), payload)
            if not answered:
                return -1
            status, _res, length = REPLY.struct.unpack(recv_exact(sock, REPLY.size_bytes))
            recv_exact(sock, length)
            return status

        assert request(Msg.HELLO, HELLO.struct.pack(WIRE_VERSION, ABI_VERSION)) == 0
        empty = encode_submission([])
        assert [request(Msg.SUBMIT, empty) for _ in range(2)] == [0, 0]  # both queued: the queue is full
        (client,) = srv.clients
        assert client.queued == 2
        request(Msg.SUBMIT, empty, answered=False)  # waits for room on the server
        sock.close()  # and its client hangs up
        wait_until(lambda: client.closed, bool, WAIT_NS / 1e9, "the server drops the client that hung up")
        assert client.queued == 0 and not sched.queues  # its queued work dropped, none of it run
        assert client.submitted[Engine.COMPUTE] == 2 and client.completed[Engine.COMPUTE] == 0  # nor the third taken
    finally:
        sock.close()
        sched.unclaim()
        srv.shutdown()
        thread.join(WAIT_NS / 1e9)
        srv.driver.close()



def _put(ring: Ring, entries: list[bytes], first_user_data: int) -> None:
    """Write whole entries into a ring's SQ from slot 0 (user_data counting up) and publish them."""
    for i, e in enumerate(entries):
        off = ring.sq_off + i * SQE_BYTES
        ring.mm[off: off + SQE_BYTES] = (first_user_data + i).to_bytes(8, "little") + e[8:]
    ring_words(ring.mm)["sq_tail"].value = len(entries)


def test_a_ring_with_many_chains_published_lets_the_other_rings_in_after_one_turn() -> None:
    # the poller runs the chains of a span inline and reads no other ring meanwhile: a client that
    # published many chains at once held another ring client's small GEMM behind all of them (up to
    # `entries` chains of up to slice_units each); one poll() now runs chains for one turn (turn_s,
    # the server's slice target; 0 here: one chain), and the poller's pass goes on to the other rings
    for s in _setup(True):
        busy = Client(s.srv)
        try:
            m = Matrix(busy.alloc(N * N * 4)[0], DType.F32, N, N)
            out = Matrix(busy.alloc(N * N * 4)[0], DType.F32, N, N)
            ring = busy.ring = Ring(busy, ENTRIES, os.eventfd(0, os.EFD_NONBLOCK), s.srv.poller.waker, turn_s=0.0)
            order: list[str] = []
            for who, client in (("busy", busy), ("other", s.client)):
                def logged(raw: bytes, submit=client.submit_raw, who=who):  # type: ignore[no-untyped-def]
                    order.append(who)
                    return submit(raw)
                client.submit_raw = logged  # type: ignore[method-assign]
            gemm = SQE_HEADER.struct.pack(0, int(Engine.COMPUTE), 0, 0, 0, 0, 0) + Gemm(m=N, n=N, k=N, a=m, b=m, d=out
                                                                                         ).encode()
            _put(ring, [gemm] * 4, 10)  # four submissions (chains of one entry) published at once
            _put(s.ring, [s.entry(s.gemm())], 20)  # then the other client's one small GEMM
            for _ in range(4):  # the poller's passes: each ring with work polled once, in its list's order
                for r in (ring, s.ring):
                    if ring_words(r.mm)["sq_tail"].value != r.sq_head:
                        assert r.poll()
            assert order == ["busy", "other", "busy", "busy", "busy"]  # the other GEMM ran after one chain, not four
            assert ring.sq_head == 4 and ring_words(ring.mm)["cq_tail"].value == 4
            cqes = [CQE.struct.unpack_from(ring.mm, ring.cq_off + i * CQE.size_bytes) for i in range(4)]
            assert [(c[0], c[1], c[3]) for c in cqes] == [(10 + i, 0, 1 + i) for i in range(4)]  # each once, in order
            assert CQE.struct.unpack_from(s.ring.mm, s.ring.cq_off)[:4] == (20, 0, int(Engine.COMPUTE), 1)
        finally:
            busy.close()


def test_a_ring_whose_client_is_in_a_long_request_does_not_hold_the_other_rings() -> None:
    # the poller ran a ring's entries under its client's lock, taken blocking: while the client's own
    # thread held it (validating a large submission takes ~0.2 s), every other ring waited as long;
    # the poller now only tries the lock and leaves that ring for a later pass
    for s in _setup(True):
        busy = Client(s.srv)
        try:
            ring = busy.ring = Ring(busy, ENTRIES, os.eventfd(0, os.EFD_NONBLOCK), s.srv.poller.waker)
            _put(ring, [SQE_HEADER.struct.pack(0, int(Engine.COMPUTE), SqeFlags.EMPTY, 0, 0, 0, 0)
                        + bytes(COMMAND_BYTES)], 10)
            _put(s.ring, [s.entry(s.gemm())], 20)
            held, over = threading.Event(), threading.Event()

            def long_request() -> None:  # the busy client's own connection thread, in a request
                with busy.lock:
                    held.set()
                    over.wait(2 * WAIT_NS / 1e9)  # past the poller's deadline below: a poll that waits shows

            request = threading.Thread(target=long_request, daemon=True)
            request.start()
            try:
                assert held.wait(WAIT_NS / 1e9)
                polled: list[bool] = []
                poller = threading.Thread(target=lambda: polled.append(ring.poll()), daemon=True)
                poller.start()  # the poller's look at the busy ring (a thread of its own: it must not block)
                poller.join(WAIT_NS / 1e9)
                assert polled == [False] and ring.sq_head == 0  # not waited for, nothing consumed
                assert not ring.has_work()  # (so the poller naps briefly instead of spinning on it)
                assert s.ring.poll()  # the other ring is served meanwhile
                assert CQE.struct.unpack_from(s.ring.mm, s.ring.cq_off)[:4] == (20, 0, int(Engine.COMPUTE), 1)
            finally:
                over.set()
                request.join(WAIT_NS / 1e9)
            assert ring.poll() and ring.sq_head == 1  # its turn once its client's request is over
            assert CQE.struct.unpack_from(ring.mm, ring.cq_off)[:4] == (10, 0, int(Engine.COMPUTE), 1)
        finally:
            busy.close()


class _FailsAtAlpha3:
    """The cpu driver, but a GEMM with alpha 3 raises when it runs (validation passes: a driver bug)."""

    def __init__(self) -> None:
        self.driver = open_driver("cpu")
        prepare = self.driver.prepare_gemm
        bind = self.driver.bind_gemm

        def prepare_gemm(op):  # type: ignore[no-untyped-def]
            if op.alpha != 3.0:
                return prepare(op)

            def run(*args):  # type: ignore[no-untyped-def]
                raise RuntimeError("alpha 3 fault")
            return run

        self.driver.prepare_gemm = prepare_gemm  # type: ignore[method-assign]
        self.driver.bind_gemm = lambda op, *a: None if op.alpha == 3.0 else bind(op, *a)  # type: ignore[method-assign]


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_a_client_is_told_when_the_driver_fails_running_its_work(tmp_path, transport: str) -> None:
    srv = Server(_FailsAtAlpha3().driver, str(tmp_path / "s.sock"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        with ffaccel.open(f"unix:{srv.socket_path}?transport={transport}&timeout_s=10") as dev:
            a = np.arange(16, dtype=np.float32).reshape(4, 4)
            A, D = dev.alloc(64), dev.alloc(64)
            A.write(a)
            mats = {"a": A.matrix(np.float32, 4, 4), "b": A.matrix(np.float32, 4, 4), "d": D.matrix(np.float32, 4, 4)}
            with pytest.raises(ffaccel.FFAccelError) as e:
                dev.submit([Gemm(m=4, n=4, k=4, alpha=3.0, **mats)]).wait(timeout_ns=WAIT_NS)
            assert e.value.code == ErrorCode.DEVICE_LOST and "alpha 3 fault" in e.value.message
            for _ in range(2):  # the connection goes on, the failure told once
                dev.submit([Gemm(m=4, n=4, k=4, alpha=2.0, **mats)]).wait(timeout_ns=WAIT_NS)
                np.testing.assert_allclose(D.read(np.float32, 16).reshape(4, 4), 2 * a @ a)
    finally:
        srv.shutdown()
        srv.driver.close()
