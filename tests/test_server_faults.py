"""The device server under faults and hostile input: only the offender is hurt, nothing hangs."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import COMMAND_BYTES, Gemm
from ffaccel.spec import ErrorCode, FFAccelError
from ffaccel.transports.protocol import (
    CQE,
    MSG,
    REPLY,
    SQE_BYTES,
    SQE_HEADER,
    Msg,
    RingServerFlags,
    SqeFlags,
    decode_error,
    recv_exact,
    send_msg,
)

from server_util import ServerProcess, wait_until  # tests/ is on pytest's pythonpath (pyproject.toml)

CHILD_TIMEOUT_S = 60


def _still_serves(server: ServerProcess) -> None:
    with server.open("socket") as dev:
        a = dev.alloc(64)
        a.write(np.eye(4, dtype=np.float32))
        g = Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4), b=a.matrix(np.float32, 4, 4),
                 d=dev.alloc(64).matrix(np.float32, 4, 4))
        dev.submit([g]).wait(timeout_ns=10**10)


class Raw:
    """A hand-driven connection that speaks the wire protocol (or not)."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(server.path)

    def request(self, msg_type: int, payload: bytes = b"", reserved: int = 0, fds=(), length: int | None = None):
        n = len(payload) if length is None else length
        send_msg(self.sock, MSG.struct.pack(msg_type, reserved, n), payload, fds)
        return self.reply()

    def reply(self):
        fds: list[int] = []
        status, _res, n = REPLY.struct.unpack(recv_exact(self.sock, REPLY.size_bytes, fds))
        body = recv_exact(self.sock, n, fds) if n else b""
        for fd in fds:
            os.close(fd)
        return (decode_error(status, body) if status else None), body

    def close(self) -> None:
        self.sock.close()


def test_malformed_messages_get_their_error_and_the_connection_survives(server) -> None:
    raw = Raw(server)
    try:
        cases = [
            (dict(msg_type=999), "msg_type"),
            (dict(msg_type=Msg.STATS, reserved=7), "reserved"),
            (dict(msg_type=Msg.FREE, payload=b"\x01\x00\x00\x00"), "payload_bytes"),
            (dict(msg_type=Msg.FREE, payload=struct.pack("<II", 1, 5)), "reserved"),
            (dict(msg_type=Msg.ERROR_TEXT, payload=struct.pack("<Q", 12345)), "error_id"),
            (dict(msg_type=Msg.ALLOC, payload=struct.pack("<Q", 64), fds=[0]), "fds"),
            (dict(msg_type=Msg.RING_SETUP, payload=struct.pack("<II", 3, 0), fds=[0]), "entries"),
        ]
        for kw, field in cases:
            err, _ = raw.request(**kw)
            assert err is not None and (err.code, err.param, err.rule) == (ErrorCode.INVALID_PARAMETER, field,
                                                                         "wire.message"), (kw, err)
        err, _ = raw.request(Msg.FREE, struct.pack("<II", 9, 0))
        assert (err.code, err.rule) == (ErrorCode.BAD_HANDLE, "memory.handle") and "got 9" in str(err)
        rng = np.random.default_rng(4)
        for _ in range(20):  # random bytes as a submission: refused by the validator, nothing runs
            err, _ = raw.request(Msg.SUBMIT, rng.integers(0, 256, int(rng.integers(0, 2000)), np.uint8).tobytes())
            assert err is not None and err.code != ErrorCode.OK
        err, body = raw.request(Msg.STATS)  # the same connection still works
        assert err is None and len(body) == 24
        # a length the server will not read: it answers and hangs up on this client only
        err, _ = raw.request(Msg.SUBMIT, b"", length=1 << 40)
        assert (err.param, err.rule) == ("payload_bytes", "wire.message")
        with pytest.raises((EOFError, OSError)):
            raw.request(Msg.STATS)
    finally:
        raw.close()
    raw = Raw(server)  # random bytes as the whole stream, then a hang-up mid-message
    raw.sock.sendall(np.random.default_rng(5).integers(0, 256, 10, np.uint8).tobytes())
    raw.close()
    _still_serves(server)


def test_a_client_naming_another_clients_handles_gets_bad_handle(server) -> None:
    with server.open("socket") as one, server.open("ring") as two:
        for _ in range(3):
            two.alloc(64)  # two has handles 1..3; one has only 1
        a = one.alloc(64)
        bad = Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4), b=a.matrix(np.float32, 4, 4),
                   d=two.alloc(64).matrix(np.float32, 4, 4))  # handle 4, which is two's
        with pytest.raises(FFAccelError) as e:
            one.submit([bad])
        assert (e.value.code, e.value.param, e.value.rule) == (ErrorCode.BAD_HANDLE, "d.handle", "operand.handle")
        assert one.submit([]).value == 1  # nothing consumed a fence value


def _ring_device(server: ServerProcess, entries: int = 8) -> ffaccel.Device:
    return ffaccel.open(f"{server.name('ring')}&entries={entries}&timeout_s=5")


def _write_sqes(t, entries: list[bytes]) -> None:
    """Publish entries by hand, as a hostile client would (no reaping)."""
    for e in entries:
        off = t._sq_off + (t._sq_tail & t._mask) * SQE_BYTES
        t._mm[off: off + SQE_BYTES] = e
        t._sq_tail = (t._sq_tail + 1) & 0xFFFF_FFFF
    t._w["sq_tail"].value = t._sq_tail
    os.eventfd_write(t._doorbell, 1)


def _sqe(flags: int = SqeFlags.EMPTY, user_data: int = 0, engine: int = 0, reserved: int = 0, list_id: int = 0,
         command: bytes = bytes(COMMAND_BYTES)) -> bytes:
    return SQE_HEADER.struct.pack(user_data, engine, flags, 0, 0, list_id, reserved) + command


def _reap_one(t, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while t._w["cq_tail"].value == t._cq_head:
        assert time.monotonic() < deadline, "no completion"
        time.sleep(0.001)
    off = t._cq_off + (t._cq_head & t._mask) * CQE.size_bytes
    out = dict(zip(CQE.names, CQE.struct.unpack_from(t._mm, off)))
    t._cq_head = (t._cq_head + 1) & 0xFFFF_FFFF
    t._w["cq_head"].value = t._cq_head
    return out


def _good_gemm(dev: ffaccel.Device) -> bytes:
    """A valid 4x4 GEMM descriptor on fresh buffers of ``dev``."""
    a = dev.alloc(64)
    return Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4), b=a.matrix(np.float32, 4, 4),
                d=dev.alloc(64).matrix(np.float32, 4, 4)).encode()


def test_bad_ring_entries_get_their_error_in_the_completion(server) -> None:
    with _ring_device(server) as dev:
        t = dev._transport
        good = _good_gemm(dev)
        rng = np.random.default_rng(6)
        bad_entries = [
            (_sqe(flags=0x80, user_data=11), "ring.entry"),
            (_sqe(reserved=1, user_data=12), "ring.entry"),
            (_sqe(flags=0, list_id=3, command=good, user_data=13), "ring.entry"),
            (_sqe(flags=SqeFlags.EMPTY, command=good, user_data=14), "ring.entry"),
            (_sqe(flags=0, engine=7, command=good, user_data=15), "submit.engine"),
            (_sqe(flags=0, command=rng.integers(0, 256, COMMAND_BYTES, np.uint8).tobytes(), user_data=16), None),
            (_sqe(flags=0, command=good[:-8] + b"\x01" + bytes(7), user_data=17), "cmd.reserved"),
            (_sqe(flags=SqeFlags.REPLAY, list_id=99, user_data=18), "cmdlist.id"),
        ]
        for entry, rule in bad_entries:
            _write_sqes(t, [entry])
            cqe = _reap_one(t)
            assert cqe["user_data"] == SQE_HEADER.struct.unpack_from(entry)[0]
            assert cqe["status"] != 0 and cqe["value"] == 0
            if rule is not None:
                err = decode_error(cqe["status"], t._call(Msg.ERROR_TEXT, struct.pack("<Q", cqe["error_id"]))[0])
                assert err.rule == rule, err
        # a linked chain whose entries disagree on the engine is refused whole
        _write_sqes(t, [_sqe(flags=SqeFlags.LINK, command=good), _sqe(flags=0, engine=1, command=good, user_data=21)])
        assert _reap_one(t)["status"] == ErrorCode.INVALID_PARAMETER
        assert dev.submit([good]).value == 1  # the ring still serves; no refused entry consumed a value


def test_a_chain_that_differs_from_the_last_one_is_checked_again(server) -> None:
    # the server skips re-checking a chain identical to the previous one (but for user_data): a
    # chain that differs anywhere else, even in a middle entry, is checked whole again
    with _ring_device(server) as dev:
        t = dev._transport
        good = _good_gemm(dev)
        chain = [_sqe(flags=SqeFlags.LINK, command=good)] * 2 + [_sqe(flags=0, command=good)]
        for ud in (31, 32):
            _write_sqes(t, chain[:2] + [_sqe(flags=0, command=good, user_data=ud)])
            cqe = _reap_one(t)
            assert (cqe["user_data"], cqe["status"]) == (ud, 0)
        _write_sqes(t, [chain[0], _sqe(flags=SqeFlags.LINK, command=good, reserved=1), chain[2]])
        cqe = _reap_one(t)
        assert cqe["status"] == ErrorCode.INVALID_PARAMETER
        err = decode_error(cqe["status"], t._call(Msg.ERROR_TEXT, struct.pack("<Q", cqe["error_id"]))[0])
        assert (err.param, err.rule) == ("sqe[1].reserved", "ring.entry")
        _write_sqes(t, chain[:2] + [_sqe(flags=0, command=good, user_data=33)])
        assert _reap_one(t)["user_data"] == 33


def test_requests_sent_back_to_back_are_answered_in_order_with_their_fds(server) -> None:
    # a client may send several requests before reading replies; one read can then hold more
    # than one of them, and an fd belongs to the message it was sent with
    with server.open("socket") as owner:
        fd = owner.alloc(64).export_fd()  # the buffer lives while its owner is connected
        raw = Raw(server)
        try:
            stats = MSG.struct.pack(Msg.STATS, 0, 0)
            raw.sock.sendall(stats * 2)
            send_msg(raw.sock, MSG.struct.pack(Msg.IMPORT, 0, 0), b"", [fd])
            raw.sock.sendall(stats + MSG.struct.pack(Msg.IMPORT, 0, 0))  # the last one without its fd
            for expect in (24, 24, 16, 24):
                err, body = raw.reply()
                assert err is None and len(body) == expect
            err, _ = raw.reply()
            assert (err.param, err.rule) == ("fds", "wire.message")
        finally:
            os.close(fd)
            raw.close()
    _still_serves(server)


@pytest.mark.parametrize("field", ["sq_tail", "cq_head"])
def test_a_client_scribbling_on_its_ring_indices_loses_only_its_ring(server, field) -> None:
    with _ring_device(server) as dev, server.open("ring") as other:
        t = dev._transport
        dev.submit([]).wait(timeout_ns=10**9)
        if field == "sq_tail":
            t._w["sq_tail"].value = t._sq_tail + 1000
            os.eventfd_write(t._doorbell, 1)
        else:
            t._w["cq_head"].value = t._cq_head + 1000
            _write_sqes(t, [_sqe(user_data=5)])
        deadline = time.monotonic() + 10
        while not t._w["server_flags"].value & RingServerFlags.BROKEN:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(FFAccelError) as e:
            dev.submit([])
        assert (e.value.code, e.value.param, e.value.rule) == (ErrorCode.INVALID_PARAMETER, field, "ring.index")
        dev.alloc(16)  # its socket still works
        assert other.submit([]).value == 1
    _still_serves(server)


def test_overflowing_the_completion_queue_stalls_only_that_ring(server) -> None:
    with _ring_device(server, entries=4) as dev, server.open("ring") as other:
        t = dev._transport
        _write_sqes(t, [_sqe(user_data=i) for i in range(1, 5)])  # fills the CQ (never reaped)
        deadline = time.monotonic() + 10
        while t._w["sq_head"].value != 4:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        _write_sqes(t, [_sqe(user_data=i) for i in range(5, 9)])  # no room for their completions
        while not t._w["server_flags"].value & RingServerFlags.CQ_FULL:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert other.submit([]).value == 1  # others are served meanwhile
        got = [_reap_one(t) for _ in range(8)]  # reaping lets the server go on: nothing was lost
        assert [c["user_data"] for c in got] == list(range(1, 9))
        assert [c["value"] for c in got] == list(range(1, 9)) and all(c["status"] == 0 for c in got)


def test_ring_entries_are_copied_once_so_scribbling_after_publishing_is_harmless(server) -> None:
    # a client that rewrites its published entries' commands with junk while the server reads them:
    # the server validates the copy it took, so each entry either runs as the valid GEMM or is refused
    with _ring_device(server, entries=64) as dev:
        t = dev._transport
        good = _good_gemm(dev)
        rng = np.random.default_rng(7)
        for i in range(1, 41):
            _write_sqes(t, [_sqe(flags=0, command=good, user_data=i)])
            off = t._sq_off + ((t._sq_tail - 1) & t._mask) * SQE_BYTES + SQE_HEADER.size_bytes
            t._mm[off: off + COMMAND_BYTES] = rng.integers(0, 256, COMMAND_BYTES, np.uint8).tobytes()
            cqe = _reap_one(t)
            assert cqe["user_data"] == i and (cqe["status"] != 0 or cqe["value"] >= 1)
        _still_serves(server)


CHILD_MIXED = textwrap.dedent("""
    import sys, numpy as np, ffaccel
    from ffaccel.abi import Copy, Gemm
    name, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    dev = ffaccel.open(name + "&timeout_s=30")
    for it in range(15):
        m, n, k = (int(x) for x in rng.integers(1, 40, 3))
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-4, atol=1e-4)
        A, B, D, H = dev.alloc(a.nbytes), dev.alloc(b.nbytes), dev.alloc(m * n * 4), dev.alloc(m * n * 8)
        A.write(a); B.write(b)
        g = Gemm(m=m, n=n, k=k, a=A.matrix(np.float32, m, k), b=B.matrix(np.float32, k, n),
                 d=D.matrix(np.float32, m, n))
        f = dev.submit([g])
        f2 = dev.submit([Copy(src=D.matrix(np.float32, m, n), dst=H.matrix(np.float64, m, n))], engine="copy",
                        wait=[f])
        f2.wait(timeout_ns=30 * 10**9)
        np.testing.assert_allclose(H.read(np.float64, m * n).reshape(m, n), a @ b, rtol=1e-4, atol=1e-4)
        cl = dev.record([g])
        for _ in range(3):
            cl.replay().wait(timeout_ns=30 * 10**9)
        cl.free()
        for x in (A, B, D, H):
            x.free()
    print("ok")
""")


def test_eight_concurrent_client_processes_get_correct_results(server) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", CHILD_MIXED, server.name(("socket", "ring")[i % 2]), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=CHILD_TIMEOUT_S))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok", err


CHILD_BUSY = textwrap.dedent("""
    import sys, numpy as np, ffaccel
    from ffaccel.abi import Gemm
    dev = ffaccel.open(sys.argv[1] + "&timeout_s=30")
    bufs = [dev.alloc(1 << 20) for _ in range(8)]
    g = Gemm(m=256, n=256, k=256, a=bufs[0].matrix(np.float32, 256, 256), b=bufs[1].matrix(np.float32, 256, 256),
             d=bufs[2].matrix(np.float32, 256, 256)).encode()
    cl = dev.record([g] * 4)
    dev.submit([g] * 4)
    said = False
    while True:
        dev.submit([g] * 16)  # batches in flight when the kill lands
        cl.replay()
        if not said:  # in the loop: the parent may kill us from now on
            print("ready", flush=True)
            said = True
""")


@pytest.mark.parametrize("path", ["socket", "ring"])
def test_a_client_killed_mid_batch_has_everything_freed(server, path) -> None:
    with server.open("socket") as watcher:
        stats = watcher._transport.stats
        # Earlier tests' clients may still be being released (the server notices hang-ups on its own
        # time): the baseline is the server with only the watcher connected.
        mine = wait_until(stats, lambda s: s["clients"] == 1, 30.0, "earlier clients released")
        child = subprocess.Popen([sys.executable, "-c", CHILD_BUSY, server.name(path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready", child.stderr.read()  # mid-loop from here on
            busy = stats()
            assert busy["buffers"] >= mine["buffers"] + 8 and busy["clients"] == mine["clients"] + 1, (mine, busy)
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            # the event: everything the child held is released (the deadline only bounds the wait)
            wait_until(stats, lambda now: all(now[f] == mine[f] for f in ("buffers", "bytes_charged", "clients")),
                       30.0, f"the killed client's resources released (baseline {mine})")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            child.stdout.close()
            child.stderr.close()
        _still_serves(server)


def test_a_killed_server_gives_every_client_device_lost(tmp_path) -> None:
    srv = ServerProcess(tmp_path)
    try:
        devs = [srv.open(p, timeout_s=5) for p in ("socket", "ring")]
        held = []
        for dev in devs:
            a = dev.alloc(64)
            held.append((dev, a, dev.submit([])))
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)
        for dev, a, fence in held:
            g = Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4), b=a.matrix(np.float32, 4, 4),
                     d=a.matrix(np.float32, 4, 4, offset_bytes=0))
            calls = [lambda: dev.alloc(16), lambda: dev.submit([g.encode()]), lambda: dev.submit([]),
                     lambda: Gemm and ffaccel.matmul(np.ones((3, 3), np.float32), np.ones((3, 3), np.float32),
                                                      device=dev),
                     lambda: dev.wait(ffaccel.Fence(dev, fence.engine, fence.value + 1), timeout_ns=10**9),
                     a.free]
            for call in calls:
                with pytest.raises(FFAccelError) as e:
                    call()
                assert e.value.code == ErrorCode.DEVICE_LOST, e.value
    finally:
        srv.stop()
