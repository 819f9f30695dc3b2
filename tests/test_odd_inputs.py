"""Odd values in every argument of the public entry points: the only exception is FFAccelError.

The values are the kinds a new user (or a fuzzer) passes by mistake: other number types, 0-d
and ragged arrays, NumPy subclasses, big-endian and structured dtypes, strings where numbers go,
NUL bytes and unclosed brackets in device names. Each raised a foreign exception somewhere once
(TypeError, ValueError, OverflowError: the CLI's "internal error", exit 4). A call that is
accepted must give NumPy's answer (np.matrix as ``out`` was one that crashed).
"""

from __future__ import annotations

import decimal
import fractions
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import ffaccel
from ffaccel import post
from ffaccel.spec import FFAccelError

A = np.arange(16, dtype=np.float32).reshape(4, 4) / 8
VALUES = [None, 0, -1, 2**70, 1.5, float("nan"), float("inf"), np.float16(2), np.int64(3), fractions.Fraction(1, 3),
          decimal.Decimal("1.5"), "1", b"1", [1], np.array(1.0), np.array([1.0]), 1j, True, object()]


def _operands() -> list[object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix: still what some code passes
        matrix = np.matrix(A)
    return [A.astype(">f4"), A[::-1], A[:, ::-2], np.ma.masked_array(A), matrix, memoryview(A), A.tobytes(),
            [[1, 2], [3]], np.ones((0, 4), np.float32), np.zeros((4, 4), [("x", "f4")]), A.T,
            np.lib.stride_tricks.as_strided(A, (4, 4), (0, 4)), np.ones((4, 4), np.uint16), np.ones((4, 4), np.int32)]


def _only_ffaccel_errors(calls: list[tuple[str, Callable[[], object]]]) -> None:
    foreign = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, call in calls:
            try:
                call()
            except FFAccelError:
                pass
            except Exception as e:  # noqa: BLE001 - what this test is looking for
                foreign[label] = f"{type(e).__name__}: {e}"
    assert not foreign, foreign


def _gemm(**kw: object) -> Callable[[], object]:
    args = dict(order="row", trans_a="N", trans_b="N", m=4, n=4, k=4, alpha=1.0, a=np.ones(16, np.float32), lda=4,
                b=np.ones(16, np.float32), ldb=4, beta=0.0, c=np.ones(16, np.float32), ldc=4)
    args.update(kw)
    return lambda: ffaccel.blas.gemm(*args.values())


def test_odd_scalars_and_options_are_ffaccel_errors() -> None:
    calls = []
    for v in VALUES:
        calls += [(f"alpha={v!r}", lambda v=v: ffaccel.matmul(A, A, alpha=v)),
                  (f"beta={v!r}", lambda v=v: ffaccel.matmul(A, A, A, beta=v)),
                  (f"clamp={v!r}", lambda v=v: ffaccel.matmul(A, A, post_ops=[post.clamp(v, 1)])),
                  (f"scale={v!r}", lambda v=v: ffaccel.matmul(A, A, post_ops=[post.scale(v)])),
                  (f"out_dtype={v!r}", lambda v=v: ffaccel.matmul(A, A, out_dtype=v)),
                  (f"trans_a={v!r}", lambda v=v: ffaccel.matmul(A, A, trans_a=v)),
                  (f"post_ops={v!r}", lambda v=v: ffaccel.matmul(A, A, post_ops=v)),  # np.array(1.0): TypeError
                  (f"bias={v!r}", lambda v=v: ffaccel.matmul(A, A, post_ops=[post.bias(v)])),
                  (f"out={v!r}", lambda v=v: ffaccel.matmul(A, A, out=v)),
                  (f"gemm m={v!r}", _gemm(m=v)), (f"gemm alpha={v!r}", _gemm(alpha=v)), (f"gemm order={v!r}", _gemm(order=v))]
    _only_ffaccel_errors(calls)


def test_odd_operands_are_ffaccel_errors_or_numpys_answer() -> None:
    calls = []
    for i, o in enumerate(_operands()):
        calls += [(f"a={i}", lambda o=o: ffaccel.matmul(o, A)), (f"b={i}", lambda o=o: ffaccel.matmul(A, o)),
                  (f"c={i}", lambda o=o: ffaccel.matmul(A, A, o)),
                  (f"bias={i}", lambda o=o: ffaccel.matmul(A, A, post_ops=[post.bias(o)])),  # ragged: ValueError
                  (f"gemm a={i}", _gemm(a=o)), (f"gemm c={i}", _gemm(c=o))]
    _only_ffaccel_errors(calls)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        out = np.matrix(np.zeros((4, 4), np.float32))  # a NumPy subclass as out: a 2-D shape unpacked as 3-D
    assert ffaccel.matmul(A, A, out=out) is out
    np.testing.assert_allclose(np.asarray(out), A @ A, rtol=1e-6)


def test_odd_device_names_are_ffaccel_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FFACCEL_CONNECT_TIMEOUT", raising=False)
    (tmp_path / "file").write_text("")
    prefixes = ["cpu", "cpu:", "ref", "npu:", "restricted:", "restricted:ref;", "unix:", f"unix:{tmp_path}/none",
                f"unix:{tmp_path}/file", "dask://"]  # (torch: and a dask port cost an import each: their own tests)
    junk = ["", ":", ";", "?", "&", "=", "[", "%zz", "\x00", "é", "?a=1", "?timeout_s=", "?entries=1e3", "combos=",
            "post_ops=relu,relu", "engines=compute,compute", "preset=", "paced=yes", "clock_mhz=1e400", ",,", "//",
            "[::1", "x" * 300]
    _only_ffaccel_errors([(repr(p + j), lambda name=p + j: ffaccel.open(name).close()) for p in prefixes for j in junk])


@pytest.mark.parametrize("name", ["cpu", "npu"])
def test_odd_values_in_the_device_api_are_ffaccel_errors(name: str) -> None:
    """Buffer offsets, counts, dtypes and shapes, GEMM scalars, accumulate dtype, epilogue and its
    kinds, waits, fences and raw bytes (TypeErrors from comparisons, slices, float(), tuple())."""
    from ffaccel.abi import Copy, Gemm, PostOpDesc
    from ffaccel.spec import PostOpKind

    dev = ffaccel.open(name)
    try:
        a, d = dev.alloc(256), dev.alloc(256)
        m = a.matrix(np.float32 if name == "cpu" else np.int8, 4, 4)
        out = d.matrix(np.float32 if name == "cpu" else np.int32, 4, 4)
        fence = dev.submit([])

        def gemm(**kw: object) -> Callable[[], object]:
            return lambda: dev.submit([Gemm(**{"m": 4, "n": 4, "k": 4, "a": m, "b": m, "d": out, **kw})])

        calls = []
        for v in VALUES:
            calls += [(f"write offset {v!r}", lambda v=v: a.write(np.ones(4, np.float32), v)),
                      (f"read dtype {v!r}", lambda v=v: a.read(v, 4)), (f"read count {v!r}", lambda v=v: a.read(np.uint8, v)),
                      (f"read offset {v!r}", lambda v=v: a.read(np.uint8, 4, v)),
                      (f"array shape {v!r}", lambda v=v: a.array(np.uint8, v)),
                      (f"array offset {v!r}", lambda v=v: a.array(np.uint8, 4, v)),
                      (f"alpha {v!r}", gemm(alpha=v)), (f"acc_dtype {v!r}", gemm(acc_dtype=v)),
                      (f"epilogue {v!r}", gemm(epilogue=v)), (f"kind {v!r}", gemm(epilogue=[PostOpDesc(v)])),
                      (f"param {v!r}", gemm(epilogue=[PostOpDesc(PostOpKind.RELU, v)])),
                      (f"copy dst {v!r}", lambda v=v: dev.submit([Copy(src=m, dst=v)], engine="copy")),
                      (f"wait {v!r}", lambda v=v: dev.submit([], wait=v)), (f"wait [{v!r}]", lambda v=v: dev.submit([], wait=[v])),
                      (f"dev.wait {v!r}", lambda v=v: dev.wait(v)), (f"timeout {v!r}", lambda v=v: fence.wait(timeout_ns=v)),
                      (f"submit_raw {v!r}", lambda v=v: dev.submit_raw(v))]
        _only_ffaccel_errors(calls)
    finally:
        dev.close()
