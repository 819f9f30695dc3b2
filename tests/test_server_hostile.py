"""The device server against hostile local clients: one regression test per attack that once worked.

Each test drives the wire protocol by hand where a friendly client could not do the harm, and
checks that the attacker hurts only itself: the server stays up, other clients' results and
memory are untouched, and every resource the attacker made the server hold is bounded.
Long versions of these attacks live in ``benchmarks/soak_server.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import pickle
import resource
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import COMMAND_BYTES, Gemm, Matrix
from ffaccel.spec import DType, ErrorCode, FFAccelError
from ffaccel.transports.protocol import (
    ALLOC_REQ,
    CQE,
    HANDLE_REPLY,
    HELLO,
    MSG,
    REPLY,
    RING_SETUP,
    SQE_BYTES,
    SQE_HEADER,
    STATS,
    WIRE_VERSION,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
    decode_error,
    recv_exact,
    ring_words,
    send_msg,
)
from server_util import ServerProcess, wait_until

CHILD_TIMEOUT_S = 60


# -- a hand-driven client ------------------------------------------------------------------


class Raw:
    """A connection that speaks the wire protocol by hand (or not)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)

    def request(self, msg_type: int, payload: bytes = b"", fds=(), length: int | None = None):
        """(error or None, body, fds received)."""
        n = len(payload) if length is None else length
        send_msg(self.sock, MSG.struct.pack(msg_type, 0, n), payload, fds)
        got: list[int] = []
        status, _res, size = REPLY.struct.unpack(recv_exact(self.sock, REPLY.size_bytes, got))
        body = recv_exact(self.sock, size, got) if size else b""
        return (decode_error(status, body) if status else None), body, got

    def stats(self) -> dict[str, int]:
        err, body, _ = self.request(Msg.STATS)
        assert err is None
        return dict(zip(STATS.names, STATS.struct.unpack(body)))

    def close(self) -> None:
        self.sock.close()


class RawRing:
    """A ring set up by hand with the wake fd the test chooses."""

    def __init__(self, path: str, wake_fd: int, entries: int = 8) -> None:
        self.raw = Raw(path)
        err, _, _ = self.raw.request(Msg.HELLO, HELLO.struct.pack(WIRE_VERSION, ffaccel.abi.ABI_VERSION))
        assert err is None
        err, _, fds = self.raw.request(Msg.RING_SETUP, RING_SETUP.struct.pack(entries, 0), fds=[wake_fd])
        if err is not None:
            self.raw.close()
            raise err
        ring_fd, self.doorbell = fds
        self.mm = mmap.mmap(ring_fd, os.fstat(ring_fd).st_size)
        os.close(ring_fd)
        self.w = ring_words(self.mm)
        self.entries = entries
        self.sq_off, self.cq_off = self.w["sq_offset_bytes"].value, self.w["cq_offset_bytes"].value
        self.tail = 0

    def publish(self, sqes: list[bytes], waiting: bool = True) -> None:
        for e in sqes:
            off = self.sq_off + (self.tail % self.entries) * SQE_BYTES
            self.mm[off: off + SQE_BYTES] = e
            self.tail += 1
        if waiting:
            self.w["client_flags"].value = RingClientFlags.WAITING
        self.w["sq_tail"].value = self.tail & 0xFFFF_FFFF
        os.eventfd_write(self.doorbell, 1)

    def close(self) -> None:
        self.w = {}
        self.raw.close()
        os.close(self.doorbell)


def _empty_sqe(user_data: int) -> bytes:
    return SQE_HEADER.struct.pack(user_data, 0, SqeFlags.EMPTY, 0, 0, 0, 0) + bytes(COMMAND_BYTES)


def _gemm_ok(dev: ffaccel.Device, n: int = 16) -> None:
    """A small GEMM on ``dev`` gives the right answer."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, n)).astype(np.float32)
    np.testing.assert_allclose(ffaccel.matmul(x, x, device=dev), x @ x, rtol=1e-4, atol=1e-4)


def _gemm_with(server: ServerProcess, path: str) -> None:
    with server.open(path) as dev:
        _gemm_ok(dev)


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    return ("--max-client-memory", str(1 << 20), "--limit", "max_mappings=64", "--limit", "max_buffers=100",
            "--limit", "max_command_lists=8", "--limit", "message_stall_s=0.5")


# -- 1: the wake fd ----------------------------------------------------------------------------


def test_ring_setup_takes_only_an_eventfd_as_wake_fd(server, tmp_path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        file_fd = os.open(victim, os.O_RDWR)
        for fd in (file_fd, w, a.fileno()):  # a regular file, a pipe, a socket
            with pytest.raises(FFAccelError) as e:
                RawRing(server.path, fd)
            assert (e.value.code, e.value.param, e.value.rule) == (ErrorCode.INVALID_PARAMETER, "fds", "ring.wake")
        assert victim.read_bytes() == b"precious"
        os.close(file_fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
    _gemm_with(server, "socket")


@pytest.mark.parametrize("attack", ["counter_full", "made_blocking_again"])
def test_a_wake_eventfd_that_would_block_hangs_nobody(server, attack) -> None:
    evfd = os.eventfd(0)  # blocking, as the attacker hands it over
    ring = RawRing(server.path, evfd)
    try:
        if attack == "counter_full":
            os.set_blocking(evfd, False)
            os.eventfd_write(evfd, 0xFFFF_FFFF_FFFF_FFFE)  # one more write would block
        else:
            fcntl.fcntl(evfd, fcntl.F_SETFL, fcntl.fcntl(evfd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        ring.publish([_empty_sqe(i) for i in range(1, 5)])
        for path in ("socket", "ring"):  # everyone else is served, new clients too
            with server.open(path, timeout_s=10) as dev:
                for _ in range(3):
                    _gemm_ok(dev)
        wait_until(lambda: ring.w["cq_tail"].value, lambda n: n == 4 or ring.w["server_flags"].value
                   & RingServerFlags.BROKEN, 10, "the attacker's entries are answered (or its ring broken)")
    finally:
        ring.close()
        os.close(evfd)


# -- 2: fds used after their close -------------------------------------------------------------------


def test_hanging_up_with_a_full_ring_of_waiting_work_writes_into_no_other_clients_fd(server) -> None:
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[2])
        from test_server_hostile import RawRing, _empty_sqe
        for _ in range(int(sys.argv[3])):
            ev = os.eventfd(0, os.EFD_NONBLOCK)
            ring = RawRing(sys.argv[1], ev, entries=1024)
            ring.publish([_empty_sqe(i) for i in range(1024)])
            ring.close()  # hang up at once, while the server completes the entries
            os.close(ev)
    """)
    attacker = subprocess.Popen([sys.executable, "-c", script, server.path, str(Path(__file__).parent), "25"])
    try:
        with server.open("socket") as dev:
            # fresh buffers and the socket itself must stay exactly as the server left them
            while attacker.poll() is None:
                bufs = [dev.alloc(4096) for _ in range(16)]
                for b in bufs:
                    assert not b.array(np.uint8).any(), "bytes written into a fresh buffer"
                _gemm_ok(dev)
                for b in bufs:
                    b.free()
        assert attacker.wait(CHILD_TIMEOUT_S) == 0
    finally:
        attacker.kill()
    _gemm_with(server, "ring")


# -- 3: fds and buffers bounded; accept() errors survive ----------------------------------------------


def test_buffers_are_bounded_per_client_and_in_total_with_one_fd_each(server) -> None:
    base_fds = _proc_fds(server.proc.pid)
    one, two = server.open("socket"), server.open("socket")
    try:
        held = [one.alloc(1) for _ in range(64)]
        with pytest.raises(FFAccelError) as e:
            one.alloc(1)
        assert (e.value.code, e.value.rule) == (ErrorCode.OUT_OF_MEMORY, "memory.mappings")
        assert "64" in str(e.value)
        grown = _proc_fds(server.proc.pid) - base_fds
        assert grown <= 64 + 4, f"{grown} server fds for 64 buffers (at most one each, plus the connections)"
        more = [two.alloc(1) for _ in range(100 - 64)]  # the server-wide bound is 100
        with pytest.raises(FFAccelError) as e:
            two.alloc(1)
        assert (e.value.code, e.value.rule) == (ErrorCode.OUT_OF_MEMORY, "memory.mappings")
        assert "max_buffers" in str(e.value)
        for b in held:
            b.free()
        _gemm_ok(two)  # room again
        del more
    finally:
        one.close()
        two.close()


def test_accept_errors_never_end_the_server(tmp_path) -> None:
    path = str(tmp_path / "s.sock")

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

    log = open(tmp_path / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", path, "--driver", "ref",
                             "--limit", "max_buffers=1000"], stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=few_fds)
    conns: list[socket.socket] = []
    try:
        wait_until(lambda: os.path.exists(path), bool, 30, "the server listens")
        for _ in range(80):  # more connections than the server has fds: some accept()s fail with EMFILE
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            conns.append(s)
        wait_until(lambda: (tmp_path / "log").read_text(), lambda t: "accept failed" in t, 30,
                   "the server logs the failed accept")
        assert proc.poll() is None
        for s in conns:
            s.close()
        conns.clear()
        dev = wait_until(lambda: _try_open(path), lambda d: d is not None, 30, "a new client is served again")
        with dev:
            _gemm_ok(dev, 8)
        assert proc.poll() is None
    finally:
        for s in conns:
            s.close()
        proc.terminate()
        proc.wait(30)
        log.close()


def _try_open(path: str) -> ffaccel.Device | None:
    try:
        return ffaccel.open(f"unix:{path}?timeout_s=5")
    except FFAccelError:
        return None


def test_connections_past_max_clients_are_answered_and_closed(tmp_path) -> None:
    srv = ServerProcess(tmp_path, "--limit", "max_clients=2")
    try:
        with srv.open("socket") as one:
            # the start-up probe's connection may not be gone yet: wait until one is alone
            wait_until(lambda: one._transport.stats()["clients"], lambda n: n == 1, 30, "one client left")
            two = srv.open("ring")
            with pytest.raises(FFAccelError) as e:
                srv.open("socket")
            assert (e.value.code, e.value.rule) == (ErrorCode.OUT_OF_MEMORY, "wire.clients")
            _gemm_ok(one)
            _gemm_ok(two)
            two.close()
        dev = wait_until(lambda: _try_open(srv.path), lambda d: d is not None, 30, "room for a client again")
        with dev:
            _gemm_ok(dev)
    finally:
        srv.stop()


# -- 5: every mapping is charged -------------------------------------------------------------------


def test_importing_your_own_buffer_is_charged_so_the_quota_holds(server) -> None:
    with server.open("socket") as dev:
        buf = dev.alloc(768 << 10)
        fd = buf.export_fd()
        try:
            with pytest.raises(FFAccelError) as e:
                dev.import_buffer(fd)  # 2 x 768 KiB > the 1 MiB quota
            assert (e.value.code, e.value.rule) == (ErrorCode.OUT_OF_MEMORY, "memory.quota")
            small = dev.alloc(128 << 10)
            fd2 = small.export_fd()
            alias = dev.import_buffer(fd2)
            small.free()  # the alias stays charged: freeing the original frees no quota
            with pytest.raises(FFAccelError):
                dev.alloc(200 << 10)
            assert dev._transport.stats()["bytes_charged"] >= (768 + 128) << 10
            alias.free()
            dev.alloc(200 << 10)
            os.close(fd2)
        finally:
            os.close(fd)


# -- 6: stalled messages -------------------------------------------------------------------------------


def test_a_stalled_message_costs_no_memory_ahead_and_is_dropped(server) -> None:
    pid = server.proc.pid
    rss0 = _proc_rss_bytes(pid)
    conns = []
    for _ in range(16):  # each announces 8 MiB, sends 8 bytes of it, then stalls
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(server.path)
        s.sendall(MSG.struct.pack(Msg.SUBMIT, 0, 8 << 20) + bytes(8))
        conns.append(s)
    _gemm_with(server, "socket")  # the others are served meanwhile
    grown = _proc_rss_bytes(pid) - rss0
    assert grown < 16 << 20, f"server RSS grew {grown >> 20} MiB for 16 stalled 8 MiB headers"
    for s in conns:  # each is dropped after the stall timeout (0.5 s here)
        s.settimeout(30)
        assert s.recv(1) == b""
        s.close()


# -- 7: command lists -----------------------------------------------------------------------------------


def test_recorded_command_lists_are_capped_and_charged(server) -> None:
    with server.open("socket") as dev:
        t = dev._transport
        a = dev.alloc(64)
        sub = ffaccel.abi.encode_submission([Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4),
                                                  b=a.matrix(np.float32, 4, 4), d=dev.alloc(64).matrix(np.float32, 4, 4))])
        before = t.stats()["bytes_charged"]
        lids = [t.record(sub) for _ in range(8)]
        per_list = (t.stats()["bytes_charged"] - before) // 8
        assert per_list >= len(sub)
        with pytest.raises(FFAccelError) as e:
            t.record(sub)
        assert (e.value.code, e.value.rule) == (ErrorCode.OUT_OF_MEMORY, "cmdlist.limit")
        t.free_list(lids[0])
        t.free_list(t.record(sub))  # room again
        assert t.stats()["bytes_charged"] == before + 7 * per_list


def test_a_list_naming_a_freed_buffer_pins_none_of_its_memory(server) -> None:
    # record a list on a buffer, free the buffer (its quota comes back), keep the list, repeat:
    # the lists must not keep the freed mappings (each would hold memory and one server fd)
    with server.open("socket") as dev:
        t = dev._transport
        d = dev.alloc(16 * 16 * 4)
        base = _proc_fds(server.proc.pid)
        lids = []
        for _ in range(8):  # the module's server allows 8 lists
            a = dev.alloc(256 << 10)
            g = Gemm(m=16, n=16, k=16, a=a.matrix(np.float32, 16, 16), b=a.matrix(np.float32, 16, 16),
                     d=d.matrix(np.float32, 16, 16))
            lids.append(t.record(ffaccel.abi.encode_submission([g])))
            a.free()
        grown = _proc_fds(server.proc.pid) - base
        assert grown <= 2, f"{grown} server fds still held for 8 freed buffers"
        with pytest.raises(FFAccelError) as e:
            t.replay(lids[0], ffaccel.spec.Engine.COMPUTE, [])
        assert (e.value.code, e.value.rule) == (ErrorCode.BAD_HANDLE, "cmdlist.stale")
        for lid in lids:
            t.free_list(lid)


@contextlib.contextmanager
def _raw_ring(server, entries: int) -> Iterator[RawRing]:  # noqa: ANN001 - the server fixture
    """A raw ring client of ``entries`` slots on the test server, closed with its eventfd afterwards."""
    ev = os.eventfd(0, os.EFD_NONBLOCK)
    ring = RawRing(server.path, ev, entries=entries)
    try:
        yield ring
    finally:
        ring.close()
        os.close(ev)


# -- 8: a full completion queue ------------------------------------------------------------------------


def test_a_full_completion_queue_parks_the_ring_instead_of_spinning(server) -> None:
    with _raw_ring(server, entries=4) as ring:
        ring.publish([_empty_sqe(i) for i in range(4)], waiting=False)  # fills the CQ, never reaped
        wait_until(lambda: ring.w["sq_head"].value, lambda v: v == 4, 10, "the first four are consumed")
        ring.publish([_empty_sqe(i) for i in range(4, 8)], waiting=False)  # pending, no room to complete
        wait_until(lambda: ring.w["server_flags"].value, lambda f: f & RingServerFlags.CQ_FULL, 10, "CQ_FULL")
        pid = server.proc.pid
        cpu0, t0 = _proc_cpu_s(pid), time.monotonic()
        time.sleep(1.0)  # the measurement window (not a wait for an event)
        used = (_proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
        assert used < 0.5, f"the server used {used:.0%} of a core while the ring was parked"
        ring.w["cq_head"].value = 4  # reap all four: the server goes on with the pending ones
        os.eventfd_write(ring.doorbell, 1)
        wait_until(lambda: ring.w["cq_tail"].value, lambda v: v == 8, 10, "the pending entries complete")


def _cqes(ring: RawRing, count: int) -> list[tuple[int, ...]]:
    """The first ``count`` completions, once the server has published them."""
    wait_until(lambda: ring.w["cq_tail"].value, lambda v: v >= count, 10, f"{count} completions")
    return [CQE.struct.unpack_from(ring.mm, ring.cq_off + i * CQE.size_bytes) for i in range(count)]


def test_a_repeated_ring_entry_is_checked_again_when_any_header_bit_changes(server) -> None:
    # the server answers an entry that repeats the previous one (but for user_data) from a memo:
    # a changed flag, reserved field or engine must still be refused, each entry get its own user_data
    with _raw_ring(server, entries=8) as ring:
        ok = _empty_sqe(0)[8:]
        unknown_flag = SQE_HEADER.struct.pack(0, 0, SqeFlags.EMPTY | 0x80, 0, 0, 0, 0)[8:] + bytes(COMMAND_BYTES)
        reserved = SQE_HEADER.struct.pack(0, 0, SqeFlags.EMPTY, 0, 0, 0, 1)[8:] + bytes(COMMAND_BYTES)
        bad_engine = SQE_HEADER.struct.pack(0, 9, SqeFlags.EMPTY, 0, 0, 0, 0)[8:] + bytes(COMMAND_BYTES)
        sent = [ok, ok, unknown_flag, ok, reserved, ok, bad_engine, ok]
        for i, body in enumerate(sent):  # one at a time: each is the single-entry path's, after the previous
            ring.publish([(100 + i).to_bytes(8, "little") + body], waiting=False)
            _cqes(ring, i + 1)
        got = _cqes(ring, len(sent))
        assert [c[0] for c in got] == [100 + i for i in range(len(sent))]
        assert [c[1] == 0 for c in got] == [True, True, False, True, False, True, False, True]


def test_a_repeated_chain_is_checked_again_when_any_entry_changes(server) -> None:
    # a chain equal to the previous one but for its user_data is answered from a memo; a changed
    # flag, reserved field or command in any entry must still be refused
    with _raw_ring(server, entries=8) as ring:
        handles = []
        for _ in range(3):
            err, body, fds = ring.raw.request(Msg.ALLOC, ALLOC_REQ.struct.pack(256))
            assert err is None
            for fd in fds:
                os.close(fd)
            handles.append(HANDLE_REPLY.struct.unpack(body)[0])
        a, b, d = (Matrix(h, DType.F32, 8, 8) for h in handles)
        gemm = Gemm(m=8, n=8, k=8, a=a, b=b, d=d).encode()
        bad_gemm = Gemm(m=8, n=8, k=8, a=a, b=Matrix(999, DType.F32, 8, 8), d=d).encode()

        def chain(user_data: int, first_flags: int = SqeFlags.LINK, first_reserved: int = 0,
                  first_cmd: bytes = gemm) -> list[bytes]:
            return [SQE_HEADER.struct.pack(0, 0, first_flags, 0, 0, 0, first_reserved) + first_cmd,
                    SQE_HEADER.struct.pack(user_data, 0, 0, 0, 0, 0, 0) + gemm]

        sent = [chain(1), chain(2), chain(3, first_flags=SqeFlags.LINK | 0x80), chain(4),
                chain(5, first_reserved=1), chain(6), chain(7, first_cmd=bad_gemm), chain(8)]
        for i, entries in enumerate(sent):  # one chain at a time: each follows the previous one
            ring.publish(entries, waiting=False)
            _cqes(ring, i + 1)
            ring.w["cq_head"].value = i + 1  # reaped: the CQ (8 slots) never fills
        got = []
        for i in range(len(sent)):
            got.append(CQE.struct.unpack_from(ring.mm, ring.cq_off + (i % 8) * CQE.size_bytes))
        assert [c[0] for c in got] == [1, 2, 3, 4, 5, 6, 7, 8]
        assert [c[1] == 0 for c in got] == [True, True, False, True, False, True, False, True]
        assert got[6][1] == ErrorCode.BAD_HANDLE


def test_a_chain_published_one_entry_at_a_time_completes_once_at_its_end(server) -> None:
    with _raw_ring(server, entries=8) as ring:
        linked = SQE_HEADER.struct.pack(7, 0, SqeFlags.EMPTY | SqeFlags.LINK, 0, 0, 0, 0) + bytes(COMMAND_BYTES)
        ring.publish([linked], waiting=False)  # alone: the chain's end has not come yet
        wait_until(lambda: ring.w["sq_head"].value, lambda v: v == 1, 10, "the first entry consumed")
        ring.publish([_empty_sqe(8)], waiting=False)
        wait_until(lambda: ring.w["sq_head"].value, lambda v: v == 2, 10, "the second entry consumed")
        (user_data, status, *_rest), = _cqes(ring, 1)
        # one completion for the chain, carrying its last entry's user_data; EMPTY may not be linked
        assert user_data == 8 and status == ErrorCode.INVALID_PARAMETER


# -- 9: fairness and cancellation -------------------------------------------------------------------------

_BIG_CLIENT = textwrap.dedent("""
    import sys, numpy as np, ffaccel
    from ffaccel.abi import Gemm
    n, count = int(sys.argv[2]), int(sys.argv[3])
    dev = ffaccel.open(f"unix:{sys.argv[1]}?timeout_s=60")
    a = dev.alloc(n * n * 8)
    a.write(np.ones((n, n)))
    d = dev.alloc(n * n * 8)
    g = Gemm(m=n, n=n, k=n, a=a.matrix(np.float64, n, n), b=a.matrix(np.float64, n, n), d=d.matrix(np.float64, n, n))
    fence = dev.submit([g] * count)
    print("submitted", flush=True)
    fence.wait(timeout_ns=60 * 10**9)
    print("done", flush=True)
""")


@pytest.mark.parametrize("size,count", [(1024, 40), (320, 1000)], ids=["large-commands", "many-medium-commands"])
def test_a_small_gemm_does_not_wait_for_another_clients_long_work(tmp_path, size, count) -> None:
    srv = ServerProcess(tmp_path, "--limit", "slice_target_ms=5")
    big = subprocess.Popen([sys.executable, "-c", _BIG_CLIENT, srv.path, str(size), str(count)],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert big.stdout.readline().strip() == "submitted"
        with srv.open("socket") as dev:
            for _ in range(5):
                _gemm_ok(dev)  # served between the slices of the big work
        assert big.poll() is None, "the long work finished first: nothing showed the small GEMMs went between"
        big.kill()  # its remaining work is cancelled: the server goes idle
        big.wait(CHILD_TIMEOUT_S)
        pid = srv.proc.pid

        def cpu_rate() -> float:
            c0, t0 = _proc_cpu_s(pid), time.monotonic()
            time.sleep(0.2)
            return (_proc_cpu_s(pid) - c0) / (time.monotonic() - t0)

        wait_until(cpu_rate, lambda r: r < 0.3, 10, "the dead client's work stops")
    finally:
        big.kill()
        big.wait(CHILD_TIMEOUT_S)
        big.stdout.close()
        srv.stop()


# -- 11: no pickle; the server's identity is checked ---------------------------------------------------------


def _fake_server(path: str, hello_reply: bytes) -> threading.Thread:
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lst.bind(path)
    lst.listen(1)

    def run() -> None:
        conn, _ = lst.accept()
        with conn:
            recv_exact(conn, MSG.size_bytes + HELLO.size_bytes)
            conn.sendall(REPLY.struct.pack(0, 0, len(hello_reply)) + hello_reply)
            conn.recv(1)
        lst.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch " + _Boom.marker,))


def test_a_squatted_socket_cannot_run_code_in_the_client(tmp_path) -> None:
    _Boom.marker = str(tmp_path / "pwned")
    path = str(tmp_path / "squat.sock")
    t = _fake_server(path, pickle.dumps(_Boom()))
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(f"unix:{path}?timeout_s=5")
    assert e.value.code == ErrorCode.DEVICE_LOST and "HELLO" in str(e.value)
    assert not os.path.exists(_Boom.marker)
    t.join(10)


def test_hello_is_json_and_carries_the_whole_info(server) -> None:
    raw = Raw(server.path)
    try:
        err, body, _ = raw.request(Msg.HELLO, HELLO.struct.pack(WIRE_VERSION, ffaccel.abi.ABI_VERSION))
        assert err is None
        doc = json.loads(body)  # plain JSON: nothing a client could be made to execute
        assert set(doc) == {"name", "version", "description", "memory_bytes", "kernels", "size_bands", "caps"}
    finally:
        raw.close()
    with server.open("socket") as remote, ffaccel.open("cpu") as local:
        assert remote.info() == local.info()  # caps, limits, the kernel libraries and size bands, all of it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a fake server as another user")
def test_a_server_of_another_user_is_refused() -> None:
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="ffaccel-other-user-")  # pytest's tmp_path is private to root
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "other.sock")
    script = textwrap.dedent("""
        import os, socket, sys
        os.setgid(65534); os.setuid(65534)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind(sys.argv[1]); s.listen(1)
        print("ready", flush=True)
        c, _ = s.accept(); c.recv(100)
    """)
    p = subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        with pytest.raises(FFAccelError) as e:
            ffaccel.open(f"unix:{path}?timeout_s=5")
        assert e.value.code == ErrorCode.DEVICE_LOST and "uid 65534" in str(e.value)
    finally:
        p.kill()
        p.wait(10)
        p.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_default_socket_lives_in_a_private_folder_both_sides_check(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run)}
    env.pop("FFACCEL_SOCKET", None)
    folder = run / "ffaccel"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)  # another user could have made it, or can write it
    out = subprocess.run([sys.executable, "-m", "ffaccel.cli", "serve", "--driver", "ref"], env=env,
                         capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert out.returncode != 0 and "mode 777" in out.stderr and "Traceback" not in out.stderr
    check = "import ffaccel\ntry:\n    ffaccel.open('unix:')\nexcept ffaccel.FFAccelError as e:\n    print(e)\n"
    os.chmod(folder, 0o700)
    (folder / "server.sock").touch()
    os.chmod(folder, 0o770)
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True,
                         timeout=CHILD_TIMEOUT_S)
    assert "mode 770" in out.stdout, out.stdout + out.stderr
    (folder / "server.sock").unlink()
    folder.rmdir()
    srv = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--driver", "ref"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = folder / "server.sock"
        wait_until(sock.exists, bool, 30, "the server creates its private folder and socket")
        assert (folder.stat().st_mode & 0o777) == 0o700
        out = subprocess.run([sys.executable, "-c", "import ffaccel; print(ffaccel.open('unix:').info().name)"],
                             env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        assert out.stdout.strip() == "ref", out.stderr
    finally:
        srv.terminate()
        srv.wait(30)


# -- 12: serve never deletes what is not its stale socket ---------------------------------------------------


@pytest.mark.parametrize("what", ["file", "directory", "symlink"])
def test_serve_refuses_a_path_that_is_not_a_socket_and_keeps_it(tmp_path, what) -> None:
    path = tmp_path / "x"
    if what == "file":
        path.write_text("user data")
    elif what == "directory":
        path.mkdir()
    else:
        (tmp_path / "target").write_text("user data")
        path.symlink_to(tmp_path / "target")
    out = subprocess.run([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", str(path), "--driver", "ref"],
                         capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert out.returncode == 2, out.stderr
    assert "not a socket" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    if what == "file":
        assert path.read_text() == "user data"
    elif what == "directory":
        assert path.is_dir()
    else:
        assert path.is_symlink() and (tmp_path / "target").read_text() == "user data"


def test_serve_replaces_a_stale_socket(tmp_path) -> None:
    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on
    proc = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", str(path), "--driver", "ref"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dev = wait_until(lambda: _try_open(str(path)), lambda d: d is not None, 30, "the server replaced it")
        with dev:
            _gemm_ok(dev, 8)
    finally:
        proc.terminate()
        proc.wait(30)
