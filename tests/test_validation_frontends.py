"""Bad input at the front-ends (``ffaccel.matmul``, ``ffaccel.blas.gemm``, ``ffaccel.post``).

As in ``test_validation_abi.py``: each case builds a call twice from one recipe, with and
without its single defect. With it, the call raises :class:`ffaccel.FFAccelError` with the
rule's code, the exact argument name (as BLAS ``xerbla`` names the argument) and the rule id,
names the value seen, and leaves every array it was given (``out``, ``c``, the inputs)
byte-identical. Without it, the call is accepted.

Validation happens before any driver runs, so the refusals are checked on every built-in
device; the defect-free twins are run on ``ref`` (they prove the recipes, not the drivers).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import ffaccel
from ffaccel import post
from ffaccel.runtime import Device
from ffaccel.spec import RULES, FFAccelError

gemm = ffaccel.blas.gemm
DEVICES = [d for d in ("ref", "cpu") if d in ffaccel.devices()]
M, N, K = 3, 4, 5

Call = Callable[[], Any]
Built = tuple[Call, Sequence[np.ndarray]]  # the call, and every array it must leave untouched


def rand(shape: Any, dtype: Any = np.float32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt in (np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.int64)):
        return rng.integers(-5, 6, shape).astype(dt)
    if dt == np.dtype(np.uint8):
        return rng.integers(0, 6, shape).astype(dt)
    if dt.kind == "c":
        return (rng.uniform(-2, 2, shape) + 1j).astype(dt)
    if dt == np.dtype(bool):
        return rng.integers(0, 2, shape).astype(bool)
    return rng.uniform(-2, 2, shape).astype(dt)


@dataclass(frozen=True)
class Case:
    id: str
    rule: str
    param: str
    seen: str
    build: Callable[[Device, bool], Built]  # (device, with the defect?) -> (call, arrays)


CASES: list[Case] = []
RULE_CASES: dict[str, list[str]] = defaultdict(list)


def case(rule: str, param: str, seen: str, detail: str, build: Callable[[Device, bool], Built]) -> None:
    c = Case(f"{rule}-{detail}", rule, param, seen, build)
    assert c.id not in {x.id for x in CASES}, c.id
    CASES.append(c)
    RULE_CASES[rule].append(c.id)


# ------------------------------------------------------------------------------------------
# matmul


def mm(good: dict[str, Any], bad: dict[str, Any], dt: Any = np.float32, out: bool = True,
       lazy: Callable[[bool], dict[str, Any]] | None = None) -> Callable[[Device, bool], Built]:
    """``matmul(a, b, out=out, ...)`` on the standard f32 (or ``dt``) operands, with overrides.

    ``good`` / ``bad`` override the keyword arguments of the defect-free / defective twin;
    ``lazy(bad)`` builds more of them inside the call (for post-op constructors that raise).
    ``out`` (a prefilled array of the result's shape) is passed unless an override says otherwise.
    """
    def build(dev: Device, is_bad: bool) -> Built:
        is_int = np.dtype(dt) in (np.dtype(np.int8), np.dtype(np.uint8))
        kw: dict[str, Any] = {"a": rand((M, K), dt, 1), "b": rand((K, N), dt, 2)}
        if out:
            kw["out"] = rand((M, N), np.int32 if is_int else dt, 3)
        kw.update(bad if is_bad else good)
        arrays = [x for x in kw.values() if isinstance(x, np.ndarray)]
        ops = kw.get("post_ops", ())
        for p in ops if isinstance(ops, (list, tuple)) else (ops,):
            if isinstance(getattr(p, "operand", None), np.ndarray):
                arrays.append(p.operand)

        def call() -> Any:
            rest = {key: v for key, v in kw.items() if key not in ("a", "b")}
            rest.update(lazy(is_bad) if lazy is not None else {})
            return ffaccel.matmul(kw["a"], kw["b"], device=dev, **rest)
        return call, arrays
    return build


# --- shapes ----------------------------------------------------------------------------------
case("api.shape", "b", "op(b) with 4 rows", "k-mismatch", mm({}, {"b": rand((N, N))}))
case("api.shape", "b", "op(b) with 4 rows", "k-mismatch-trans_b",
     mm({"b": rand((N, K)), "trans_b": True}, {"b": rand((N, N)), "trans_b": True}))
case("api.shape", "b", "batch dims (3,)", "batch-not-broadcastable",
     mm({"a": rand((2, M, K)), "b": rand((2, K, N)), "out": rand((2, M, N))},
        {"a": rand((2, M, K)), "b": rand((3, K, N)), "out": rand((2, M, N))}))
case("api.shape", "a", "a 0-d array", "a-0-d", mm({}, {"a": np.array(2.0, np.float32)}))
case("api.shape", "b", "a 0-d array", "b-0-d", mm({}, {"b": np.array(2.0, np.float32)}))
case("api.shape", "trans_a", "trans_a=True with a 1-D operand", "trans_a-1-d",
     mm({"a": rand((K,)), "out": rand((N,))}, {"a": rand((K,)), "trans_a": True, "out": rand((N,))}))
case("api.shape", "c", "c of shape (2, 4)", "c-not-broadcastable",
     mm({"c": rand((1, N)), "beta": 1.0}, {"c": rand((2, N)), "beta": 1.0}))
case("api.shape", "post_ops[0].operand", "bias of shape (5,)", "bias_n-wrong-length",
     mm({"post_ops": [post.bias(rand((N,)))]}, {"post_ops": [post.bias(rand((N + 1,)))]}))
case("api.shape", "post_ops[1].operand", "bias of shape (4,)", "bias_m-wrong-length",
     mm({"post_ops": [post.relu(), post.bias(rand((M,)), axis="m")]},
        {"post_ops": [post.relu(), post.bias(rand((N,)), axis="m")]}))
case("api.shape", "post_ops[0].operand", "bias of shape (1, 4)", "bias-2-d",
     mm({"post_ops": [post.bias(rand((N,)))]}, {"post_ops": [post.bias(rand((1, N)))]}))
case("api.shape", "post_ops[1].operand", "E of shape (2, 4)", "add-not-broadcastable",
     mm({"post_ops": [post.relu(), post.add(rand((1, N)))]}, {"post_ops": [post.relu(), post.add(rand((2, N)))]}))

# --- dtypes ----------------------------------------------------------------------------------
case("api.dtype", "b", "got f64", "f32-x-f64", mm({}, {"b": rand((K, N), np.float64)}))
case("api.dtype", "b", "got f32", "int8-x-f32", mm({}, {"b": rand((K, N), np.float32)}, dt=np.int8))
case("api.dtype", "b", "got f16", "bf16-x-f16", mm({}, {"b": rand((K, N), np.float16)}, dt=ml_dtypes.bfloat16))
case("api.dtype", "b", "got int64", "b-int64", mm({}, {"b": rand((K, N), np.int64)}))
for _dt in (np.int32, np.int64, np.complex64, bool, np.float128 if hasattr(np, "float128") else np.uint16):
    _name = np.dtype(_dt).name
    case("api.dtype", "a", f"got {_name}", f"a-{_name}",
         mm({"a": rand((M, K), np.int8), "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)},
            {"a": rand((M, K), _dt), "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)}))
case("api.dtype", "a", "got a list holding 300", "a-python-list-beyond-int8",
     mm({"a": rand((M, K), np.int64).tolist(), "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)},
        {"a": [[300] * K] * M, "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)}))
case("api.dtype", "a", "got a list holding 0.5", "a-python-list-of-floats-for-int8",
     mm({"a": [[1.0] * K] * M, "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)},
        {"a": [[0.5] * K] * M, "b": rand((K, N), np.int8), "out": rand((M, N), np.int32)}))
case("api.dtype", "a", f"got a list holding {2**53 + 1}", "python-lists-beyond-float64",
     mm({"a": [[2**53] * K] * M, "b": [[1] * N] * K, "out": rand((M, N), np.float64)},
        {"a": [[2**53 + 1] * K] * M, "b": [[1] * N] * K, "out": rand((M, N), np.float64)}))
case("api.dtype", "b", "got bool", "python-list-of-bools",
     mm({"b": [[1.0] * N] * K}, {"b": [[True] * N] * K}))
case("api.dtype", "out_dtype", "got float16", "f32-out_dtype-f16", mm({"out_dtype": np.float32}, {"out_dtype": np.float16},
                                                               out=False))
case("api.dtype", "out_dtype", "got int64", "int8-out_dtype-int64",
     mm({"out_dtype": np.int32}, {"out_dtype": np.int64}, dt=np.int8, out=False))
case("api.dtype", "c", "got float64", "c-f64-for-f32",
     mm({"c": rand((M, N)), "beta": 1.0}, {"c": rand((M, N), np.float64), "beta": 1.0}))
case("api.dtype", "c", "got float64", "c-f64-for-f32-beta-0",
     mm({"c": rand((M, N)), "beta": 0.0}, {"c": rand((M, N), np.float64), "beta": 0.0}))
case("api.dtype", "c", "got int8", "c-int8-for-int8-inputs",
     mm({"c": rand((M, N), np.int32), "beta": 1}, {"c": rand((M, N), np.int8), "beta": 1}, dt=np.int8))
case("api.dtype", "post_ops[0].operand", "got float64", "bias-f64-for-f32",
     mm({"post_ops": [post.bias(rand((N,)))]}, {"post_ops": [post.bias(rand((N,), np.float64))]}))
case("api.dtype", "post_ops[1].operand", "got int8", "add-int8-for-int8-inputs",
     mm({"post_ops": [post.relu(), post.add(rand((M, N), np.int32))]},
        {"post_ops": [post.relu(), post.add(rand((M, N), np.int8))]}, dt=np.int8))

# --- out -------------------------------------------------------------------------------------
case("api.out", "out", "shape (3, 5)", "out-wrong-shape", mm({}, {"out": rand((M, K))}))
case("api.out", "out", "shape (4, 3)", "out-transposed-shape", mm({}, {"out": rand((N, M))}))
case("api.out", "out", "dtype float64", "out-wrong-dtype", mm({}, {"out": rand((M, N), np.float64)}))
case("api.out", "out", "dtype float32", "int8-out-float32", mm({}, {"out": rand((M, N), np.float32)}, dt=np.int8))
case("api.out", "out", "dtype float32", "f16-out-f32-without-out_dtype",
     mm({"out": rand((M, N), np.float32), "out_dtype": np.float32}, {"out": rand((M, N), np.float32)}, dt=np.float16))


def _readonly_out(dev: Device, bad: bool) -> Built:
    out = rand((M, N), np.float32, 3)
    out.flags.writeable = not bad
    a, b = rand((M, K), seed=1), rand((K, N), seed=2)
    return (lambda: ffaccel.matmul(a, b, out=out, device=dev)), [a, b, out]


case("api.writeable", "out", "a read-only array", "out-read-only", _readonly_out)


def _out_overlap(what: str) -> Callable[[Device, bool], Built]:
    """Square N x N operands carved out of one store; ``out`` elsewhere, or over one of them."""
    def build(dev: Device, bad: bool) -> Built:
        store = rand((4 * N, N), seed=5)
        a, b = store[0:N], store[N:2 * N]
        out = rand((N, N), seed=7)
        kw: dict[str, Any] = {}
        if what == "a" and bad:
            out = a
        elif what == "b" and bad:
            out = b[::-1]  # the same memory, rows in another order
        elif what == "c-partial":
            c = store[2 * N:3 * N]
            kw = {"c": c, "beta": 1.0}
            out = store[2 * N + 1:3 * N + 1] if bad else c  # exactly c (in place) is fine; shifted is not
        elif what == "bias":
            kw = {"post_ops": [post.bias(store[3 * N])]}
            if bad:
                out = store[3 * N:4 * N]  # its first row is the bias vector
        return (lambda: ffaccel.matmul(a, b, out=out, device=dev, **kw)), [store, out]
    return build


case("api.out_overlap", "out", "out sharing memory with a", "out-is-a", _out_overlap("a"))
case("api.out_overlap", "out", "out sharing memory with b", "out-is-b-reversed", _out_overlap("b"))
case("api.out_overlap", "out", "out partially overlapping c", "out-partially-c", _out_overlap("c-partial"))
case("api.out_overlap", "out", "out sharing memory with post_ops[0].operand", "out-over-bias", _out_overlap("bias"))

# --- scalars ---------------------------------------------------------------------------------
case("gemm.int_scalar", "alpha", "got 0.5", "int8-alpha-0.5", mm({"alpha": 2}, {"alpha": 0.5}, dt=np.int8))
case("gemm.int_scalar", "alpha", "got 2147483648", "int8-alpha-2**31",
     mm({"alpha": 2**31 - 1}, {"alpha": 2**31}, dt=np.int8))
case("gemm.int_scalar", "beta", "got 1.5", "int8-beta-1.5",
     mm({"c": rand((M, N), np.int32), "beta": 1}, {"c": rand((M, N), np.int32), "beta": 1.5}, dt=np.int8))

for _arg, _v in (("alpha", 1j), ("beta", 2 + 0j), ("alpha", "2"), ("alpha", None), ("beta", np.ones(1))):
    case("api.scalar", _arg, f"got {_v!r}", f"{_arg}-{type(_v).__name__}",
         mm({"c": rand((M, N)), _arg: 0.5}, {"c": rand((M, N)), _arg: _v}))
case("api.scalar", "alpha", f"got {2**1100!r}", "alpha-beyond-float64", mm({"alpha": 2**100}, {"alpha": 2**1100}))
case("api.scalar", "s", f"got {2**1100!r}", "scale-beyond-float64",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.scale(2**1100 if bad else 2**10)]}))
case("api.scalar", "lo", "got 1j", "clamp-complex",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.clamp(1j if bad else 0.0, 1.0)]}))
case("api.scalar", "s", "got '2'", "scale-str",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.scale("2" if bad else 2.0)]}))

_STORED_T = {"trans_a": {"a": rand((K, M))}, "trans_b": {"b": rand((N, K))}}  # operands stored transposed
for _arg, _v in (("trans_a", "N"), ("trans_b", "T"), ("trans_a", None), ("trans_b", 2)):
    case("api.flag", _arg, f"got {_v!r}", f"{_arg}-{_v!r}",
         mm({**_STORED_T[_arg], _arg: True}, {**_STORED_T[_arg], _arg: _v}))

# --- post-ops --------------------------------------------------------------------------------
case("api.post_op", "post_ops[0]", "got function", "uncalled-post-relu", mm({"post_ops": [post.relu()]},
                                                                          {"post_ops": [post.relu]}))
case("api.post_op", "post_ops[1]", "got str", "a-string", mm({"post_ops": [post.relu(), post.relu()]},
                                                            {"post_ops": [post.relu(), "relu"]}))
case("api.post_op", "post_ops", "got int", "post_ops-int", mm({"post_ops": [post.relu()]}, {"post_ops": 3}))
case("api.post_op", "post_ops", "got str", "post_ops-str", mm({"post_ops": [post.relu()]}, {"post_ops": "relu"}))
case("api.post_op", "approximate", "got 'bogus'", "gelu-bogus",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.gelu(approximate="bogus" if bad else "tanh")]}))
case("api.post_op", "approximate", "got None", "gelu-None",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.gelu(approximate=None if bad else "none")]}))  # type: ignore
case("api.post_op", "approximate", "got []", "gelu-list",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.gelu(approximate=[] if bad else "none")]}))  # type: ignore
case("api.post_op", "axis", "got []", "bias-axis-list",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.bias(rand((N,)), axis=[] if bad else "n")]}))  # type: ignore
case("api.post_op", "axis", "got 'k'", "bias-axis-k",
     mm({}, {}, lazy=lambda bad: {"post_ops": [post.bias(rand((N,)), axis="k" if bad else "n")]}))
case("epilogue.count", "post_ops", "got 5", "five-post-ops",
     mm({"post_ops": [post.relu()] * 4}, {"post_ops": [post.relu()] * 5}))
case("epilogue.param", "post_ops[0].param0", "lo=2.0, hi=1.0", "clamp-lo-above-hi",
     mm({"post_ops": [post.clamp(1.0, 2.0)]}, {"post_ops": [post.clamp(2.0, 1.0)]}))
case("epilogue.param", "post_ops[1].param0", "got inf", "scale-inf",
     mm({"post_ops": [post.relu(), post.scale(2.0)]}, {"post_ops": [post.relu(), post.scale(math.inf)]}))
case("epilogue.int_unsupported", "post_ops[0].kind", "gelu(approximate='none')", "int8-gelu",
     mm({"post_ops": [post.relu()]}, {"post_ops": [post.gelu()]}, dt=np.int8))

# --- device ----------------------------------------------------------------------------------


def _bad_device(dev: Device, bad: bool) -> Built:
    a, b, out = rand((M, K), seed=1), rand((K, N), seed=2), rand((M, N), seed=3)
    return (lambda: ffaccel.matmul(a, b, out=out, device="no-such-device" if bad else dev)), [a, b, out]


case("device.name", "name", "no-such-device", "matmul-device-name", _bad_device)

# ------------------------------------------------------------------------------------------
# blas.gemm

# row order, no transposes: A m x k (lda >= k), B k x n (ldb >= n), C m x n (ldc >= n)
_ROW = dict(order="row", trans_a="N", trans_b="N", m=M, n=N, k=K, alpha=1.5, lda=K, ldb=N, beta=0.5, ldc=N)


def bl(good: dict[str, Any], bad: dict[str, Any], dt: Any = np.float32, c_dt: Any = None,
       base: dict[str, Any] | None = None) -> Callable[[Device, bool], Built]:
    """``blas.gemm`` on flat f32 storage sized exactly (plus two spare elements in ``c``)."""
    def build(dev: Device, is_bad: bool) -> Built:
        kw: dict[str, Any] = dict(base or _ROW)
        cd = c_dt or (np.int32 if np.dtype(dt) in (np.dtype(np.int8), np.dtype(np.uint8)) else dt)
        if np.dtype(cd) == np.dtype(np.int32):
            kw.update(alpha=2, beta=-1)
        m, n, k = kw["m"], kw["n"], kw["k"]
        kw["a"] = rand((m * k,), dt, 1)
        kw["b"] = rand((k * n,), dt, 2)
        kw["c"] = rand((m * n + 2,), cd, 3)
        kw.update(bad if is_bad else good)
        arrays = [x for x in kw.values() if isinstance(x, np.ndarray)]
        args = [kw[x] for x in ("order", "trans_a", "trans_b", "m", "n", "k", "alpha", "a", "lda", "b", "ldb",
                                "beta", "c", "ldc")]
        return (lambda: gemm(*args, device=dev)), arrays
    return build


for _v in ("R", "ROW", "row-major", None, 0):
    case("blas.enum", "order", f"got {_v!r}", f"order-{_v!r}", bl({}, {"order": _v}))
for _arg in ("trans_a", "trans_b"):
    for _v in ("n", "C", "NT", True):
        case("blas.enum", _arg, f"got {_v!r}", f"{_arg}-{_v!r}", bl({}, {_arg: _v}))
for _arg, _v in (("m", -1), ("n", -1), ("k", -1), ("m", 2.0), ("n", True), ("k", None), ("m", "3")):
    case("blas.dim", _arg, f"got {_v!r}", f"{_arg}-{_v!r}", bl({}, {_arg: _v}))
for _arg, _v in (("lda", K - 1), ("ldb", N - 1), ("ldc", N - 1), ("lda", 0), ("ldc", float(N)), ("ldb", True)):
    case("blas.ld", _arg, f"got {_v!r}", f"{_arg}-{_v!r}", bl({}, {_arg: _v}))

# column order, m=4, n=2, k=3: lda >= m. lda=3 would do for row order (>= k), not here.
_COL = dict(order="col", trans_a="N", trans_b="N", m=4, n=2, k=3, alpha=1.5, lda=4, ldb=3, beta=0.5, ldc=4)
case("blas.ld", "lda", "got 3", "col-order-lda-3", bl({}, {"lda": 3}, base=_COL))
case("blas.ld", "ldc", "got 3", "col-order-ldc-3", bl({}, {"ldc": 3}, base=_COL))
case("blas.ld", "lda", f"got {M - 1}", "trans_a-lda-below-m",
     bl({"trans_a": "T", "lda": M}, {"trans_a": "T", "lda": M - 1}))

case("blas.storage", "a", f"got {M * K - 1} elements", "a-one-short", bl({}, {"a": rand((M * K - 1,))}))
case("blas.storage", "b", f"got {K * N - 1} elements", "b-one-short", bl({}, {"b": rand((K * N - 1,))}))
case("blas.storage", "c", f"got {M * N - 1} elements", "c-one-short",
     bl({"c": rand((M * N,))}, {"c": rand((M * N - 1,))}))
case("blas.storage", "a", f"got {M * K} elements", "a-lda-one-larger",
     bl({"a": rand((M * K + M - 1,)), "lda": K + 1}, {"lda": K + 1}))
case("blas.storage", "a", "a non-contiguous array", "a-non-contiguous",
     bl({}, {"a": rand((2 * M * K,))[::2]}))

case("api.dtype", "a", "got int32", "blas-a-int32", bl({}, {"a": rand((M * K,), np.int32)}))
case("api.dtype", "a", "got list", "blas-a-list", bl({}, {"a": rand((M * K,)).tolist()}))
case("api.dtype", "b", "got f64", "blas-b-f64", bl({}, {"b": rand((K * N,), np.float64)}))
case("api.dtype", "c", "got float64", "blas-c-f64", bl({}, {"c": rand((M * N,), np.float64)}))
case("api.dtype", "c", "got int8", "blas-int8-c-int8", bl({}, {"c": rand((M * N,), np.int8)}, dt=np.int8))
case("api.dtype", "c", "got complex64", "blas-c-complex64", bl({}, {"c": rand((M * N,), np.complex64)}))
case("gemm.int_scalar", "alpha", "got 0.5", "blas-int8-alpha-0.5", bl({}, {"alpha": 0.5}, dt=np.int8))
case("api.scalar", "alpha", "got 1j", "blas-alpha-complex", bl({}, {"alpha": 1j}))
case("api.scalar", "beta", "got None", "blas-beta-None", bl({}, {"beta": None}))


def _blas_c_overlap(which: str, order: str = "row") -> Callable[[Device, bool], Built]:
    """Square 3 x 3; C's storage also serves as A (or B), whole or shifted by one element."""
    def build(dev: Device, is_bad: bool) -> Built:
        n = 3
        c_store = rand((n * n + 1,), seed=4)
        c = c_store[:n * n]
        x = rand((n * n,), seed=1)
        y = rand((n * n,), seed=2)
        if is_bad:
            x = c if which == "whole" else c_store[1:]
        a, b = (x, y) if order == "row" else (y, x)  # col order puts B first internally: same check
        if which == "b":
            a, b = y, x
        arrays = [c_store, a, b]
        return (lambda: gemm(order, "N", "N", n, n, n, 1.0, a, n, b, n, 0.5, c, n, device=dev)), arrays
    return build


case("api.out_overlap", "c", "out sharing memory with", "blas-c-is-a", _blas_c_overlap("whole"))
case("api.out_overlap", "c", "out sharing memory with", "blas-c-shifted-over-a", _blas_c_overlap("shifted"))
case("api.out_overlap", "c", "out sharing memory with", "blas-c-is-b", _blas_c_overlap("b"))
case("api.out_overlap", "c", "out sharing memory with", "blas-col-c-is-a", _blas_c_overlap("whole", "col"))


def _blas_readonly_c(dev: Device, bad: bool) -> Built:
    a, b, c = rand((M * K,), seed=1), rand((K * N,), seed=2), rand((M * N,), seed=3)
    c.flags.writeable = not bad
    return (lambda: gemm("row", "N", "N", M, N, K, 1.0, a, K, b, N, 0.5, c, N, device=dev)), [a, b, c]


# blas.gemm has no argument called "out": the read-only output is its c.
case("api.writeable", "c", "a read-only array", "blas-c-read-only", _blas_readonly_c)


def _offload(option: str, value: object) -> Callable[[Device, bool], Built]:
    """``ffaccel.torch.offload(dev, option=value)``: its options are checked when it is called."""
    good = {"threads": "auto", "relaxed": None, "interception": "dispatcher"}[option]

    def build(dev: Device, is_bad: bool) -> Built:
        pytest.importorskip("torch")  # PyTorch is a test extra; without it this front-end does not exist
        import ffaccel.torch

        v = value if is_bad else good
        return (lambda: ffaccel.torch.offload(dev, **{option: v})), []  # type: ignore[arg-type]
    return build


for _v in ("many", 0, -2, True, 2.0):
    case("api.option", "threads", f"got {_v!r}", f"offload-threads-{_v!r}", _offload("threads", _v))
for _v in ("f32", "BF16", True, 16):
    case("api.option", "relaxed", f"got {_v!r}", f"offload-relaxed-{_v!r}", _offload("relaxed", _v))
for _v in ("aten", "Function", None):
    case("api.option", "interception", f"got {_v!r}", f"offload-interception-{_v!r}", _offload("interception", _v))

# ------------------------------------------------------------------------------------------
# the tests

#: abi / runtime rules that the front-ends surface unchanged (and that these cases pin down as
#: the front-ends see them); the abi file covers every one of them directly.
SURFACED = {"gemm.int_scalar", "epilogue.count", "epilogue.param", "epilogue.int_unsupported", "device.name"}
#: Front-end rules no public call can trip. Empty.
EXEMPT: dict[str, str] = {}


def test_every_frontend_rule_has_a_case() -> None:
    wanted = {rid for rid, r in RULES.items() if r.scope == "frontends"} - set(EXEMPT)
    assert set(RULE_CASES) == wanted | SURFACED
    assert all(RULES[r].scope in ("abi", "runtime") for r in SURFACED)


def _snapshot(arrays: Sequence[np.ndarray]) -> list[tuple[np.dtype, tuple[int, ...], bytes]]:
    return [(x.dtype, x.shape, x.tobytes()) for x in arrays]


def _check(c: Case, dev: Device, warm: bool) -> None:
    call, arrays = c.build(dev, True)
    if warm:  # a defect-free call first, so any per-geometry cache is warm
        c.build(dev, False)[0]()
    before = _snapshot(arrays)
    with pytest.raises(FFAccelError) as info:
        call()
    err, rule = info.value, RULES[c.rule]
    assert (err.code, err.param, err.rule) == (rule.code, c.param, c.rule), str(err)
    assert c.seen in str(err), f"{c.seen!r} not in {str(err)!r}"
    assert _snapshot(arrays) == before, "a refused call changed an array"


@pytest.fixture(params=DEVICES)
def dev(request: pytest.FixtureRequest) -> Device:
    d = ffaccel.open(request.param)
    yield d
    d.close()


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_single_defect_is_refused_and_nothing_changes(c: Case, dev: Device) -> None:
    _check(c, dev, warm=False)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_refused_after_a_good_call_with_warm_caches(c: Case) -> None:
    with ffaccel.open("ref") as d:
        _check(c, d, warm=True)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_without_the_defect_the_call_is_accepted(c: Case) -> None:
    with ffaccel.open("ref") as d:
        c.build(d, False)[0]()


def test_devices_under_test() -> None:
    assert "ref" in DEVICES
