"""Device, Buffer, Fence and whole submissions through the in-process transport."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import Copy, Gemm
from ffaccel.spec import ErrorCode

DEVICES = [d for d in ("ref", "cpu") if d in ffaccel.devices()]


@pytest.fixture(params=DEVICES)
def dev(request: pytest.FixtureRequest) -> ffaccel.Device:
    d = ffaccel.open(request.param)
    yield d
    d.close()


def _filled(dev: ffaccel.Device, x: np.ndarray) -> ffaccel.Buffer:
    buf = dev.alloc(max(1, x.nbytes))
    buf.write(x)
    return buf


def test_devices_lists_ref_and_cpu() -> None:
    assert {"ref", "cpu"} <= set(ffaccel.devices())


def test_open_default_uses_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFACCEL_DEVICE", "ref")
    assert ffaccel.open().info().name == "ref"
    monkeypatch.delenv("FFACCEL_DEVICE")
    assert ffaccel.open().info().name == "cpu"


def test_buffer_roundtrip_and_zero_fill(dev: ffaccel.Device) -> None:
    buf = dev.alloc(32)
    assert not buf.read(np.uint8, 32).any()
    buf.write(np.arange(4, dtype=np.float64))
    np.testing.assert_array_equal(buf.read(np.float64, 4), np.arange(4.0))


def test_gemm_then_copy_on_two_engines_ordered_by_fence(dev: ffaccel.Device) -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal((4, 5)).astype(np.float32)
    ba, bb = _filled(dev, a), _filled(dev, b)
    bd = dev.alloc(3 * 5 * 4)
    bh = dev.alloc(3 * 5 * 2)
    g = Gemm(m=3, n=5, k=4, a=ba.matrix(np.float32, 3, 4), b=bb.matrix(np.float32, 4, 5),
             d=bd.matrix(np.float32, 3, 5))
    f1 = dev.submit([g], engine="compute")
    f2 = dev.submit([Copy(src=bd.matrix(np.float32, 3, 5), dst=bh.matrix(np.float16, 3, 5))], engine="copy",
                    wait=[f1])
    f2.wait(timeout_ns=10**9)
    assert f1.signalled and f2.signalled
    want = (a.astype(np.float64) @ b).astype(np.float32)
    np.testing.assert_allclose(bd.read(np.float32, 15).reshape(3, 5), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(bh.read(np.float16, 15).reshape(3, 5), bd.read(np.float32, 15).reshape(3, 5)
                                  .astype(np.float16))


def test_timelines_are_monotonic_per_engine(dev: ffaccel.Device) -> None:
    values = [dev.submit([]).value for _ in range(3)]
    assert values == sorted(values) and len(set(values)) == 3
    assert dev.submit([], engine="copy").value == 1


def test_wait_on_unsubmitted_value_times_out_instead_of_hanging(dev: ffaccel.Device) -> None:
    fence = dev.submit([])
    never = ffaccel.Fence(dev, fence.engine, fence.value + 5)
    with pytest.raises(ffaccel.FFAccelError) as e:
        never.wait(timeout_ns=1000)
    assert e.value.code == ErrorCode.TIMEOUT


def test_freed_handle_is_gone(dev: ffaccel.Device) -> None:
    buf = dev.alloc(16)
    buf.free()
    with pytest.raises(ffaccel.FFAccelError) as e:
        buf.free()
    assert e.value.code == ErrorCode.BAD_HANDLE and e.value.param == "handle"


def test_closed_device_reports_device_lost() -> None:
    d = ffaccel.open("ref")
    d.close()
    with pytest.raises(ffaccel.FFAccelError) as e:
        d.alloc(8)
    assert e.value.code == ErrorCode.DEVICE_LOST


def test_what_is_not_a_command_or_an_operand_is_named(dev: ffaccel.Device) -> None:
    """Misused device API calls were AttributeErrors ('int' object has no attribute 'encode'), or
    named the wrong field (an operand that is not a Matrix was reported as a bad opcode)."""
    buf = dev.alloc(64)
    m = buf.matrix(np.float32, 4, 4)
    for commands, param in (([1], "opcode"), ([None], "opcode"), ((c for c in [3]), "opcode"),
                            ([Gemm(m=4, n=4, k=4, a="x", b=m, d=m)], "a"),
                            ([Gemm(m=4, n=4, k=4, a=m, b=m, d=m, epilogue=[3])], "epilogue[0]"),
                            ([Copy(src=m, dst=3)], "dst"), ([Copy(src=None, dst=m)], "src")):
        with pytest.raises(ffaccel.FFAccelError) as e:
            dev.submit(commands)
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, param), e.value
    with pytest.raises(ffaccel.FFAccelError) as e:
        buf.write("abcd")  # the str's code points are not data
    assert e.value.param == "data.dtype"
    assert not buf.read(np.uint8, 64).any()  # nothing was written


def test_a_buffer_of_another_device_is_refused_not_read_as_ours(dev: ffaccel.Device) -> None:
    """Every client numbers its handles from 1: a Matrix of another device's buffer named, in this
    device's table, a buffer of its own; the GEMM ran on the wrong data without a word."""
    other = ffaccel.open("ref")
    try:
        mine = _filled(dev, np.full((4, 4), 2, np.float32))
        theirs = _filled(other, np.full((4, 4), 3, np.float32))
        out = dev.alloc(64)
        m = mine.matrix(np.float32, 4, 4)
        gemm = Gemm(m=4, n=4, k=4, a=m, b=theirs.matrix(np.float32, 4, 4), d=out.matrix(np.float32, 4, 4))
        copy = Copy(src=theirs.matrix(np.float32, 4, 4), dst=out.matrix(np.float32, 4, 4))
        for call, param in ((lambda: dev.submit([gemm]), "b.handle"), (lambda: dev.record([gemm]), "b.handle"),
                            (lambda: dev.submit((c for c in [copy]), engine="copy"), "src.handle")):
            with pytest.raises(ffaccel.FFAccelError) as e:
                call()
            assert (e.value.code, e.value.param) == (ErrorCode.BAD_HANDLE, param), e.value
        assert not out.read(np.float32, 16).any()  # nothing ran
        dev.submit([dataclasses.replace(gemm, b=m)]).wait(timeout_ns=10**10)  # its own buffers: accepted
        assert (out.read(np.float32, 16) == 16).all()
    finally:
        other.close()


def test_matmul_accepts_device_object_and_name(dev: ffaccel.Device) -> None:
    a = np.eye(3, dtype=np.float64)
    np.testing.assert_array_equal(ffaccel.matmul(a, a, device=dev), a)
    np.testing.assert_array_equal(ffaccel.matmul(a, a, device=dev.name), a)
