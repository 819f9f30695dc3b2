"""The device server: both client paths pass the conformance suite and run everything unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import Copy, Gemm, encode_submission
from ffaccel.conformance import check_device
from ffaccel.spec import RULES, ErrorCode, FFAccelError

from server_util import ServerProcess  # tests/ is on pytest's pythonpath (pyproject.toml)

PATHS = ("socket", "ring")
CHILD_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    return ("--max-client-memory", str(64 << 20))  # the `server` fixture (conftest.py) starts with these


@pytest.mark.parametrize("path", PATHS)
def test_conformance_quick_passes_through_the_server(server, path) -> None:
    report = check_device(lambda: server.open(path), "quick")
    assert report.passed, report.to_markdown()
    assert {"GEMM", "COPY", "ENGINE", "ERROR"} <= {r.op for r in report.results}


def _gemm(dev: ffaccel.Device, a: np.ndarray, b: np.ndarray):
    m, k = a.shape
    n = b.shape[1]
    A, B, D = dev.alloc(a.nbytes), dev.alloc(b.nbytes), dev.alloc(m * n * 4)
    A.write(a)
    B.write(b)
    g = Gemm(m=m, n=n, k=k, a=A.matrix(np.float32, m, k), b=B.matrix(np.float32, k, n), d=D.matrix(np.float32, m, n))
    return A, B, D, g


@pytest.mark.parametrize("path", PATHS)
def test_buffers_are_zero_copy_and_frontends_work_unchanged(server, path) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((33, 17), np.float32), rng.standard_normal((17, 9), np.float32)
    with server.open(path) as dev:
        A, B, D, g = _gemm(dev, a, b)
        view = D.array(np.float32, (33, 9))  # a view of the shared mapping, taken before the GEMM runs
        dev.submit([g]).wait(timeout_ns=10**10)
        np.testing.assert_allclose(view, a @ b, rtol=1e-5, atol=1e-5)
        A.array(np.float32, (33, 17))[:] = 2 * a  # writes through the mapping are what the server reads
        dev.submit([g]).wait(timeout_ns=10**10)
        np.testing.assert_allclose(view, 2 * a @ b, rtol=1e-5, atol=1e-5)
        # the host-array path stages through a shared buffer, with the same results
        np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-5, atol=1e-5)
        x = rng.standard_normal((3, 8, 5)).astype(np.float32)
        bias = rng.standard_normal(4).astype(np.float32)
        got = ffaccel.matmul(x, x[0, :4].T, post_ops=[ffaccel.post.bias(bias), ffaccel.post.relu()], device=dev)
        np.testing.assert_allclose(got, np.maximum(x @ x[0, :4].T + bias, 0), rtol=1e-5, atol=1e-5)
        c = np.ones(64)
        ffaccel.blas.gemm("row", "N", "T", 8, 8, 8, 1.0, np.ones(64), 8, np.ones(64), 8, 0.5, c, 8, device=dev)
        np.testing.assert_array_equal(c, np.full(64, 8.5))
        with pytest.raises(FFAccelError) as e:
            ffaccel.matmul(a, b.astype(np.float64), device=dev)
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "b")


@pytest.mark.parametrize("path", PATHS)
def test_copy_and_compute_engines_ordered_by_fences(server, path) -> None:
    rng = np.random.default_rng(2)
    a = rng.standard_normal((64, 64))
    with server.open(path) as dev:
        src, a32, d = dev.alloc(a.nbytes), dev.alloc(64 * 64 * 4), dev.alloc(64 * 64 * 4)
        src.write(a)
        f1 = dev.submit([Copy(src=src.matrix(np.float64, 64, 64), dst=a32.matrix(np.float32, 64, 64))], engine="copy")
        f2 = dev.submit([Gemm(m=64, n=64, k=64, a=a32.matrix(np.float32, 64, 64), b=a32.matrix(np.float32, 64, 64),
                              d=d.matrix(np.float32, 64, 64))], wait=[f1])
        f2.wait(timeout_ns=10**10)
        assert f1.signalled and f2.signalled
        a32h = a.astype(np.float32)
        np.testing.assert_allclose(d.read(np.float32, 64 * 64).reshape(64, 64), a32h @ a32h, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_handles_are_per_client_and_quota_is_per_client(server, path) -> None:
    with server.open(path) as one, server.open(path) as two:
        mine = one.alloc(64)
        two.alloc(64)
        assert mine.handle == 1  # every client numbers from 1: handles name table slots, not buffers
        # two's handle 1 is its own buffer; one's handle 2 does not exist
        with pytest.raises(FFAccelError) as e:
            ffaccel.Buffer(one, 2, np.zeros(16, np.uint8)).free()
        assert (e.value.code, e.value.param) == (ErrorCode.BAD_HANDLE, "handle")
        big = one.alloc(48 << 20)
        with pytest.raises(FFAccelError) as e:
            one.alloc(32 << 20)  # 64 MiB quota per client
        assert e.value.code == ErrorCode.OUT_OF_MEMORY and "over quota" in str(e.value)
        two.alloc(32 << 20).free()  # the other client has its own quota
        big.free()
        one.alloc(32 << 20)  # freed bytes are returned to the quota


def test_memfds_are_sealed_so_a_client_cannot_truncate_them(server) -> None:
    with server.open("socket") as dev:
        buf = dev.alloc(4096)
        fd = buf.export_fd()
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)
        buf.write(np.ones(1024, np.float32))  # the mapping is intact


@pytest.mark.parametrize("path", PATHS)
def test_export_import_shares_one_buffer_between_processes(server, path) -> None:
    child = textwrap.dedent(f"""
        import os, sys, numpy as np, ffaccel
        from ffaccel.abi import Gemm
        dev = ffaccel.open({server.name(path)!r} + "&timeout_s=20")
        shared = dev.import_buffer(int(sys.argv[1]))
        a = dev.alloc(64); a.write(np.eye(4, dtype=np.float32) * 3)
        # D lands in the shared buffer (after the 4x4 input the parent wrote there)
        dev.submit([Gemm(m=4, n=4, k=4, a=a.matrix(np.float32, 4, 4), b=shared.matrix(np.float32, 4, 4),
                         d=shared.matrix(np.float32, 4, 4, offset_bytes=64))]).wait(timeout_ns=10**10)
        print("ok", shared.handle)
    """)
    with server.open(path) as dev:
        buf = dev.alloc(128)
        buf.write(np.arange(16, dtype=np.float32))
        fd = buf.export_fd()
        try:
            out = subprocess.run([sys.executable, "-c", child, str(fd)], pass_fds=[fd], capture_output=True,
                                 text=True, timeout=CHILD_TIMEOUT_S)
        finally:
            os.close(fd)
        assert out.returncode == 0, out.stderr
        np.testing.assert_array_equal(buf.read(np.float32, 16, offset_bytes=64), 3 * np.arange(16, dtype=np.float32))
        with pytest.raises(FFAccelError) as e:  # an fd that is not one of the server's buffers
            r, w = os.pipe()
            try:
                dev.import_buffer(r)
            finally:
                os.close(r)
                os.close(w)
        assert (e.value.code, e.value.rule) == (ErrorCode.BAD_HANDLE, "wire.import")


@pytest.mark.parametrize("name", ["inproc", *PATHS])
def test_command_lists_validate_once_and_replay(server, name) -> None:
    dev = ffaccel.open("cpu") if name == "inproc" else server.open(name)
    with dev:
        rng = np.random.default_rng(3)
        a, b = rng.standard_normal((8, 8), np.float32), rng.standard_normal((8, 8), np.float32)
        A, B, D, g = _gemm(dev, a, b)
        D2 = dev.alloc(256)
        cp = Copy(src=D.matrix(np.float32, 8, 8), dst=D2.matrix(np.float32, 8, 8))
        cl = dev.record([g])
        copy_list = dev.record([cp], engine="copy")
        f = cl.replay()
        f2 = copy_list.replay(wait=[f])
        f2.wait(timeout_ns=10**10)
        np.testing.assert_allclose(D2.read(np.float32, 64).reshape(8, 8), a @ b, rtol=1e-5, atol=1e-5)
        A.write(np.eye(8, dtype=np.float32))  # a replay reads the buffers as they are now
        cl.replay().wait(timeout_ns=10**10)
        np.testing.assert_allclose(D.read(np.float32, 64).reshape(8, 8), b, rtol=1e-6)
        with pytest.raises(FFAccelError) as e:  # refused at record time: nothing is recorded
            dev.record([Gemm(m=8, n=8, k=8, a=A.matrix(np.float32, 8, 8), b=B.matrix(np.float32, 8, 8),
                             d=A.matrix(np.float32, 8, 8))])
        assert e.value.code == ErrorCode.OVERLAP
        with pytest.raises(FFAccelError) as e:
            cl.replay(engine="copy")
        assert e.value.rule == "submit.engine_opcode"
        before = f.value
        B.free()
        with pytest.raises(FFAccelError) as e:
            cl.replay()
        assert (e.value.code, e.value.rule) == (ErrorCode.BAD_HANDLE, "cmdlist.stale")
        cl.free()
        with pytest.raises(FFAccelError) as e:
            cl.replay()
        assert (e.value.code, e.value.rule) == (ErrorCode.BAD_HANDLE, "cmdlist.id")
        assert dev.submit([]).value == before + 2  # refused replays consumed no fence value


@pytest.mark.parametrize("commands", [1, 2])  # the ring answers one entry and a chain on different paths
@pytest.mark.parametrize("name", ["inproc", *PATHS])
def test_resubmitted_bytes_are_validated_again_after_a_free(server, name, commands) -> None:
    # a loop resubmitting one submission is served from memos; freeing a buffer it names must
    # still get the submission refused, with nothing written
    dev = ffaccel.open("cpu") if name == "inproc" else server.open(name)
    with dev:
        a = np.random.default_rng(4).standard_normal((8, 8), np.float32)
        A, B, D, g = _gemm(dev, a, a)
        raw = encode_submission([g.encode()] * commands)
        for _ in range(3):
            dev.submit_raw(raw).wait(timeout_ns=10**10)
        dev.alloc(64).free()  # an unrelated free changes nothing
        dev.submit_raw(bytes(bytearray(raw))).wait(timeout_ns=10**10)  # equal bytes, another object
        np.testing.assert_allclose(D.read(np.float32, 64).reshape(8, 8), a @ a, rtol=1e-5, atol=1e-5)
        D.write(np.zeros((8, 8), np.float32))
        B.free()
        before = dev.submit([]).value
        with pytest.raises(FFAccelError) as e:
            dev.submit_raw(raw)
        assert (e.value.code, e.value.param, e.value.command_index) == (ErrorCode.BAD_HANDLE, "b.handle", 0)
        assert not D.read(np.float32, 64).any()
        assert dev.submit([]).value == before + 1  # the refused submission consumed no fence value


@pytest.mark.parametrize("name", ["inproc", *PATHS])
def test_a_buffer_of_bytes_changed_in_place_is_submitted_as_changed(server, name) -> None:
    # the clients remember the last submission's framing by identity: only an immutable bytes
    # object may be reused, a bytearray written between two submissions must go as it is now
    dev = ffaccel.open("cpu") if name == "inproc" else server.open(name)
    with dev:
        a = np.random.default_rng(5).standard_normal((8, 8), np.float32)
        A, _B, D, g = _gemm(dev, a, a)
        raw = bytearray(encode_submission([g.encode()]))
        dev.submit_raw(raw).wait(timeout_ns=10**10)
        np.testing.assert_allclose(D.read(np.float32, 64).reshape(8, 8), a @ a, rtol=1e-5, atol=1e-5)
        raw[:] = encode_submission([Gemm(m=8, n=8, k=8, a=A.matrix(np.float32, 8, 8), b=A.matrix(np.float32, 8, 8),
                                         d=D.matrix(np.float32, 8, 8), alpha=2.0).encode()])
        dev.submit_raw(raw).wait(timeout_ns=10**10)
        np.testing.assert_allclose(D.read(np.float32, 64).reshape(8, 8), 2 * (a @ a), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_a_submission_larger_than_one_read_arrives_whole(server, path) -> None:
    # 300 commands (163 KB) over the socket: the server reads the message in several pieces
    with server.open(path) as dev:
        rng = np.random.default_rng(5)
        a, b = rng.standard_normal((4, 4), np.float32), rng.standard_normal((4, 4), np.float32)
        A, B, _, _ = _gemm(dev, a, b)
        D = dev.alloc(300 * 64)
        gemms = [Gemm(m=4, n=4, k=4, a=A.matrix(np.float32, 4, 4), b=B.matrix(np.float32, 4, 4),
                      d=D.matrix(np.float32, 4, 4, offset_bytes=64 * i), alpha=float(i)) for i in range(300)]
        dev.submit(gemms).wait(timeout_ns=10**10)
        got = D.read(np.float32, 300 * 16).reshape(300, 4, 4)
        np.testing.assert_allclose(got, np.arange(300, dtype=np.float32)[:, None, None] * (a @ b), rtol=1e-5,
                                   atol=1e-4)


def test_inproc_devices_cannot_export() -> None:
    with ffaccel.open("cpu") as dev:
        with pytest.raises(FFAccelError) as e:
            dev.alloc(16).export_fd()
        assert (e.value.code, e.value.rule) == (ErrorCode.UNSUPPORTED, "wire.export")


def test_bad_device_names_are_refused() -> None:
    # timeout_s -1, nan and inf were ValueError/OverflowError ("internal error"), 0 timed every call
    # out; a repeated option silently took its last value (dask's: tests/test_dask_driver.py)
    bad = ["unix:/x?transport=carrier-pigeon", "unix:/x?bogus=1", "unix:/x?transport=ring&entries=3",
           *(f"unix:/x?{t}timeout_s={v}" for t in ("", "transport=ring&") for v in ("-1", "nan", "inf", "0")),
           "unix:/x?transport=ring&transport=socket", "unix:/x\x00y"]
    for name in bad:
        with pytest.raises(FFAccelError) as e:
            ffaccel.open(name)
        assert e.value.rule == "device.name", name
    with pytest.raises(FFAccelError) as e:
        ffaccel.open("unix:/nonexistent/ffaccel.sock")
    assert e.value.code == ErrorCode.DEVICE_LOST


def test_socket_poll_us_is_checked(server) -> None:
    from ffaccel.transports.socket import SocketTransport

    for bad in (-1, 1.5, "10", True, 10**7):
        with pytest.raises(FFAccelError) as e:
            SocketTransport(server.path, poll_us=bad)
        assert e.value.rule == "device.name" and "poll_us" in str(e.value), bad
    for ok in (0, 50):  # 0: sleep at once; both must still answer
        t = SocketTransport(server.path, poll_us=ok)
        try:
            assert t.stats()["clients"] >= 1
        finally:
            t.close()


def test_every_transport_rule_is_tripped_by_a_server_test() -> None:
    import pathlib

    here = pathlib.Path(__file__).parent
    text = "".join(p.read_text() for p in here.glob("test_server_*.py"))
    for rid, rule in RULES.items():
        if rule.scope == "transport":
            assert f'"{rid}"' in text, rid


def test_serve_shuts_down_cleanly_on_sigint(tmp_path) -> None:
    srv = ServerProcess(tmp_path)
    dev = srv.open("ring")
    assert srv.stop(signal.SIGINT) == 0
    assert not os.path.exists(srv.path)
    assert "shutting down" in srv.log_text()
    with pytest.raises(FFAccelError) as e:
        dev.alloc(16)
    assert e.value.code == ErrorCode.DEVICE_LOST


@pytest.mark.parametrize("path", PATHS)
def test_pytorch_offload_through_the_server(server, path) -> None:
    torch = pytest.importorskip("torch")  # CI installs torch: this runs there
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    x = torch.randn(16, 32)
    dev = server.open(path)
    with torch.no_grad():
        want = mlp(x)
        with ffaccel.torch.offload(dev) as session:
            got = mlp(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert session.stats["offloaded_calls"] == 2 and session.stats["host_calls"] == 0


@pytest.mark.parametrize("wake", ["futex", "eventfd"])
def test_a_ring_client_that_never_spins_is_woken_by_the_server(server, monkeypatch, wake) -> None:
    # poll_us=0: the client sleeps for every completion, on the futex of its cq_tail (the server wakes
    # it from the thread that published the completion) or, where futexes are not available, on its
    # eventfd (through the server's waker thread). The nap is made long: a wake the server forgot
    # would show as a nap that ran out, not as a slow test passing.
    from ffaccel.transports import futex
    from ffaccel.transports import ring as ring_mod
    monkeypatch.setattr(ring_mod, "_NAP_S", 600.0)
    if wake == "eventfd":
        monkeypatch.setattr(futex, "AVAILABLE", False)
    outcomes: list[bool] = []
    real_wait = futex.wait

    def counted_wait(address: int, expected: int, timeout_s: float) -> bool:
        woken = real_wait(address, expected, timeout_s)
        outcomes.append(woken)
        return woken
    monkeypatch.setattr(futex, "wait", counted_wait)
    rng = np.random.default_rng(7)
    with ffaccel.open(f"{server.name('ring')}&poll_us=0&timeout_s=20") as dev:
        for _ in range(20):
            a, b = rng.standard_normal((8, 8), np.float32), rng.standard_normal((8, 8), np.float32)
            A, B, D, g = _gemm(dev, a, b)
            dev.submit([g]).wait(timeout_ns=10**10)
            np.testing.assert_allclose(D.read(np.float32, 64).reshape(8, 8), a @ b, rtol=1e-5, atol=1e-5)
        assert dev._transport._w["client_flags"].value == 0  # no sleep left a WAITING flag behind
    if wake == "futex":
        assert outcomes and all(outcomes)  # every sleep ended by the server's wake (or a completion already there)
    else:
        assert outcomes == []


def _interrupt_the_next_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C (KeyboardInterrupt) where the socket client reads its next reply, once."""
    from ffaccel.transports.socket import SocketTransport

    real = SocketTransport._recv_reply

    def interrupted(self, *args, **kwargs):
        monkeypatch.setattr(SocketTransport, "_recv_reply", real)  # once
        raise KeyboardInterrupt

    monkeypatch.setattr(SocketTransport, "_recv_reply", interrupted)


@pytest.mark.parametrize("path", PATHS)
def test_a_call_interrupted_before_its_reply_gives_the_connection_up_saying_so(server, path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C between a request and its reply left that reply unread: the next call read it as
    its own and reported "malformed reply" ("the device server is gone"), every call after too."""
    dev = server.open(path)
    try:
        _interrupt_the_next_reply(monkeypatch)
        with pytest.raises(KeyboardInterrupt):
            dev.alloc(64)
        with pytest.raises(FFAccelError) as e:
            dev.alloc(64)
        assert e.value.code == ErrorCode.DEVICE_LOST and "interrupted (KeyboardInterrupt)" in e.value.message
    finally:
        dev.close()
    again = server.open(path)  # the server is fine
    try:
        assert again.alloc(64).read(np.uint8, 64).sum() == 0
    finally:
        again.close()


def test_a_device_named_in_calls_reconnects_after_its_connection_was_given_up(server,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``matmul(..., device="unix:PATH")`` keeps the device it opened by that name: once its
    connection was lost (here: a call interrupted), every later call by that name failed for good,
    and the program could not "open the device again". Now the next call connects anew."""
    name = f"unix:{server.path}"
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(ffaccel.matmul(x, x, device=name), x @ x)
    _interrupt_the_next_reply(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        ffaccel.matmul(x, x + 1, device=name)
    np.testing.assert_array_equal(ffaccel.matmul(x, x, device=name), x @ x)
