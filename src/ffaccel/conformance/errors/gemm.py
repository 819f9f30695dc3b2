"""The single-defect cases of the ``gemm`` rules: GEMM: dimension limits, dtype combinations, integer
scalars, overlap of D.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ...abi import Copy, Matrix, PostOpDesc, encode_submission
from ...abi.commands import f64_bits
from ...spec import COMBO_BY_DTYPES, DType, PostOpKind
from .harness import BF16, Builder, Catalogue, Env, K, M, N, ValidGemm, patch_cmd, u64


def _dim_limit(dim: str) -> Builder:
    """A device with max_dim 4 (max_batch 1); the GEMM has ``dim`` = 5 (batch = 2)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        big = 5 if dim != "batch" else 2
        limit = (big - 1) if bad else big
        dev = env.open_limits(max_dim=limit if dim != "batch" else 8, max_batch=limit if dim == "batch" else 8)
        sizes = {"m": 3, "n": 3, "k": 3, "batch": 1, dim: big}
        s = ValidGemm(env, dev=dev, **sizes)
        return s.submit(s.gemm())
    return build


def _copy_dim(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_limits(max_dim=N - 1 if bad else N)
    s = ValidGemm(env, dev=dev)
    return s.submit(Copy(src=s.c, dst=s.d), engine="copy")


def _combo_operand(role: str, base_dt: Any, bad_dt: Any, d_dt: Any = None) -> Builder:
    """The standard ``base_dt`` GEMM with operand ``role`` stored in ``bad_dt`` instead."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, base_dt, d_dt)
        kw: dict[str, Any] = {"acc_dtype": s.gemm().fields()["acc_dtype"]}  # the base combination's
        if bad:
            old: Matrix = getattr(s, role)
            kw[role] = s.vector(bad_dt, old.rows, old.cols)
        return s.submit(s.gemm(**kw))
    return build


def _acc(base_dt: Any, acc: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, base_dt)
        return s.submit_raw(encode_submission([patch_cmd(s.gemm(), {"acc_dtype": acc} if bad else None)]))
    return build


def _unsupported_combo(dt: Any, d_dt: Any, declared: list[tuple[DType, DType, DType, DType]]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_caps(combos=frozenset(COMBO_BY_DTYPES[c] for c in declared)) if bad else None
        s = ValidGemm(env, dt, d_dt, dev=dev)
        return s.submit(s.gemm())
    return build


_F32C = (DType.F32, DType.F32, DType.F32, DType.F32)


_F16C = (DType.F16, DType.F16, DType.F32, DType.F16)


def _mixed_int(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_caps(combos=frozenset({COMBO_BY_DTYPES[_F32C]})) if bad else None
    s = ValidGemm(env, np.int8, dev=dev)
    return s.submit(s.gemm(b=s.vector(np.uint8, K, N)))


def _int_scalar_dataclass(name: str, bad_value: Any, good_value: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, np.int8)
        return lambda: s.dev.submit([s.gemm(**{name: bad_value if bad else good_value})])
    return build


def _overlap(role: str) -> Builder:
    """D placed in the buffer of input ``role``, right after it (disjoint) or one element into it."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        shapes = {"a": (M, K), "b": (K, N), "bias": (1, N), "bias_m": (M, 1), "add": (M, N)}
        rows, cols = shapes[role]
        x_dt = s.dt if role in ("a", "b") else s.d_dt  # the device's own combination
        step = env.aligned_bytes("d")
        after = -(-rows * cols * x_dt.itemsize // step) * step  # D's first aligned offset after X
        buf = env.filled(np.uint8, after + M * N * s.d_dt.itemsize)
        x = buf.matrix(x_dt, rows, cols)
        d = buf.matrix(s.d_dt, M, N, offset_bytes=after - (step if bad else 0))
        kw: dict[str, Any] = {"d": d}
        if role in ("a", "b"):
            kw[role] = x
        else:
            kind = {"bias": PostOpKind.BIAS_N, "bias_m": PostOpKind.BIAS_M, "add": PostOpKind.ADD}[role]
            kw["epilogue"] = (PostOpDesc(PostOpKind.RELU), PostOpDesc(kind, operand=x))
        return s.submit(s.gemm(**kw))
    return build


def _overlap_c(how: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, pad=M * N + N + env.caps.limits.alignment_elems)
        c = s.c
        if how == "shifted":  # one aligned step into C, or the first aligned offset past it
            step = env.aligned_bytes("d")
            d = replace(c, offset_bytes=step if bad else -(-M * N * s.d_dt.itemsize // step) * step)
        else:  # same start, another leading dimension: not "exactly C"
            d = replace(c, ld_elems=N + 1) if bad else c
        return s.submit(s.gemm(d=d))
    return build


def _d_batch(stride: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, batch=2)
        return s.submit(s.gemm(d=replace(s.d, batch_stride_elems=stride) if bad else s.d, c=None, beta=0.0))
    return build


def register(cat: Catalogue) -> None:
    """Add the ``gemm`` cases to ``cat``."""
    for dim in ("m", "n", "k", "batch"):
        cat.case("gemm.dim", dim, "got 5" if dim != "batch" else "got 2", f"{dim}-over-device-limit", _dim_limit(dim),
                 portable=False)
    cat.gemm_patch_case("gemm.dim", "m", f"got {2**31}", "m-2**31-over-spec-limit", {"m": 2**31})
    cat.gemm_patch_case("gemm.dim", "batch", f"got {2**32 - 1}", "batch-u32-max-over-spec-limit", {"batch": 2**32 - 1})
    cat.case("gemm.dim", "src.cols", f"got {N}", "copy-cols-over-device-limit", _copy_dim, portable=False)
    cat.case("gemm.combo", "b.dtype", "got f64", "f32-x-f64", _combo_operand("b", np.float32, np.float64))
    cat.case("gemm.combo", "b.dtype", "got int8", "f16-x-int8", _combo_operand("b", np.float16, np.int8))
    cat.case("gemm.combo", "a.dtype", "got int32", "a-int32", _combo_operand("a", np.float32, np.int32))
    cat.case("gemm.combo", "d.dtype", "got f64", "f32-to-d-f64", _combo_operand("d", np.float32, np.float64))
    cat.case("gemm.combo", "d.dtype", "got bf16", "f16-to-d-bf16", _combo_operand("d", np.float16, BF16))
    cat.case("gemm.combo", "d.dtype", "got f32", "int8-to-d-f32", _combo_operand("d", np.int8, np.float32))
    cat.case("gemm.combo", "d.dtype", "got int8", "int8-to-d-int8", _combo_operand("d", np.int8, np.int8))
    cat.case("gemm.combo", "c.dtype", f"got {int(DType.F32)}", "f16-d-f16-c-f32",
             _combo_operand("c", np.float16, np.float32))
    cat.case("gemm.combo", "c.dtype", f"got {int(DType.F64)}", "f32-c-f64", _combo_operand("c", np.float32, np.float64))
    cat.case("gemm.combo", "acc_dtype", f"got {int(DType.F64)}", "f32-acc-f64", _acc(np.float32, DType.F64))
    cat.case("gemm.combo", "acc_dtype", f"got {int(DType.F16)}", "f16-acc-f16", _acc(np.float16, DType.F16))
    cat.case("gemm.combo", "acc_dtype", f"got {int(DType.F32)}", "int8-acc-f32", _acc(np.int8, DType.F32))
    cat.case("gemm.combo", "acc_dtype", "got 99", "acc-99", _acc(np.float32, 99))
    cat.case("gemm.combo", "acc_dtype", "got 0", "acc-0", _acc(np.float32, 0))
    cat.case("gemm.combo_supported", "dtypes", "got f64xf64->f64->f64", "f64-on-f32-only-device",
             _unsupported_combo(np.float64, None, [_F32C]), portable=False)
    cat.case("gemm.combo_supported", "dtypes", "got f16xf16->f32->f32", "f16-to-f32-on-f16-to-f16-device",
             _unsupported_combo(np.float16, np.float32, [_F32C, _F16C]), portable=False)
    cat.case("gemm.combo_supported", "dtypes", "got int8xuint8->int32->int32", "int8-x-uint8-on-f32-only-device",
             lambda env, bad: _mixed_int(env, bad), portable=False)
    for name, v in (("alpha", 2**31), ("alpha", -(2**31) - 1), ("beta", 2**31), ("beta", -(2**63))):
        cat.gemm_patch_case("gemm.int_scalar", name, f"got {v}", f"int8-{name}-{v}-patched", {f"{name}_bits": u64(v)},
                            dt=np.int8)
    cat.case("gemm.int_scalar", "alpha", "got 2147483648", "int8-alpha-2**31",
             _int_scalar_dataclass("alpha", 2**31, 2**31 - 1))
    cat.case("gemm.int_scalar", "alpha", "got 0.5", "int8-alpha-0.5", _int_scalar_dataclass("alpha", 0.5, 1.0))
    cat.case("gemm.int_scalar", "beta", "got inf", "int8-beta-inf", _int_scalar_dataclass("beta", math.inf, -3))
    for name, v in (("alpha", 1e39), ("beta", -3.5e38)):  # finite float64, past f32's range (3.4028235e38)
        cat.gemm_patch_case("gemm.float_scalar", name, f"got {v!r}", f"f32-{name}-{v}-patched",
                            {f"{name}_bits": f64_bits(v)}, dt=np.float32)
    for role in ("a", "b", "bias", "bias_m", "add"):
        cat.case("gemm.overlap", "d", "d bytes", f"d-overlaps-{role}", _overlap(role))
    cat.case("gemm.overlap", "d", "d bytes", "d-partially-overlaps-c", _overlap_c("shifted"))
    cat.case("gemm.overlap", "d", "d bytes", "d-same-start-as-c-other-ld", _overlap_c("ld"))
    for stride in (0, 1, M * N - 1):
        cat.case("gemm.d_batch_overlap", "d.batch_stride_elems", f"got {stride}", f"d-batch-stride-{stride}",
                 _d_batch(stride))
