"""The single-defect cases of the ``epilogue`` rules: epilogues: count, kinds, int32 outputs, declared
post-ops, parameters, operands.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ...abi import PostOpDesc, encode_submission
from ...abi.layout import MAX_EPILOGUE_SLOTS
from ...spec import PostOpKind
from .harness import BF16, Builder, Catalogue, Env, M, N, ValidGemm, patch_cmd


def _epi_count_patch(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    cmd = s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * MAX_EPILOGUE_SLOTS)
    return s.submit_raw(encode_submission([patch_cmd(cmd, {"epilogue_count": MAX_EPILOGUE_SLOTS + 1} if bad
                                                     else None)]))


def _epi_count_dataclass(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * (5 if bad else 4)))


def _epi_count_limit(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_limits(max_epilogue_ops=2 if bad else 3)
    s = ValidGemm(env, dev=dev)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * 3))


_SLOT_FIELDS = ("kind", "param0_bits", "param1_bits", "operand.handle", "operand.dtype", "operand.offset_bytes",
                "operand.rows", "operand.cols", "operand.ld_elems", "operand.batch_stride_elems")


def _epi_kind(kind: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        second = PostOpDesc(kind) if bad else PostOpDesc(PostOpKind.RELU)  # type: ignore[arg-type]
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), second)))
    return build


def _int_gelu(kind: PostOpKind) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, np.int8)
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), PostOpDesc(kind if bad else PostOpKind.RELU))))
    return build


def _undeclared_post_op(env: Env, bad: bool) -> Callable[[], Any]:
    # A device that does not declare gelu(tanh): refused as UNSUPPORTED, never computed otherwise.
    dev = env.open_caps(post_ops=frozenset(PostOpKind) - {PostOpKind.GELU_TANH}) if bad else None
    s = ValidGemm(env, dev=dev)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.GELU_TANH),)))


def _param(dt: Any, good: tuple[PostOpDesc, ...], bad_: tuple[PostOpDesc, ...],
           vector: tuple[int, int] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, dt)
        epi = bad_ if bad else good
        if vector is not None:  # give the slots that need one an operand
            v = s.vector(s.d_dt, *vector)
            epi = tuple(replace(p, operand=v) if p.kind in (PostOpKind.BIAS_N, PostOpKind.ADD) else p for p in epi)
        return s.submit(s.gemm(epilogue=epi))
    return build


_RELU = PostOpDesc(PostOpKind.RELU)


_CLAMP = PostOpKind.CLAMP


_SCALE = PostOpKind.SCALE


def _operand_on(kind: PostOpKind, shape: tuple[int, int], ld: int | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        v = replace(s.vector(s.d_dt, *shape), ld_elems=ld) if ld is not None else s.vector(s.d_dt, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=v if bad else None),)))
    return build


def _in_d(text: Callable[[Callable[[float], Any]], str]) -> Callable[[Env], str]:
    """A message written with parameters as the device's own GEMM reads them: integers for an
    integer GEMM (its parameter fields hold int32s), floats otherwise."""
    return lambda env: text(int if np.dtype(env.gemm_dtypes[1]).kind == "i" else float)


def _epi_dtype(dt: Any, kind: PostOpKind, shape: tuple[int, int], good_dt: Any, bad_dt: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env, dt)
        good = good_dt if s.dt == np.dtype(dt) else s.d_dt  # on the device's own GEMM: its D dtype is allowed
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=s.vector(bad_dt if bad else good, *shape)),)))
    return build


def register(cat: Catalogue) -> None:
    """Add the ``epilogue`` cases to ``cat``."""
    cat.case("epilogue.count", "epilogue_count", "got 5", "count-5-patched", _epi_count_patch)
    cat.case("epilogue.count", "epilogue_count", "got 5", "five-relus", _epi_count_dataclass)
    cat.case("epilogue.count", "epilogue_count", "got 3", "three-ops-on-device-limit-2", _epi_count_limit,
             portable=False)
    for slot in range(1, MAX_EPILOGUE_SLOTS):
        for f in _SLOT_FIELDS if slot == MAX_EPILOGUE_SLOTS - 1 else ("kind",):
            field_name = f"epilogue[{slot}].{f}"
            cat.gemm_patch_case("epilogue.count", "epilogue_count", f"{field_name} = 3", f"unused-{field_name}",
                                {field_name: 3},
                                epilogue=(PostOpDesc(PostOpKind.RELU),))
    for kind in (0, 9, 99):
        cat.case("epilogue.kind", "epilogue[1].kind", f"got {kind}", f"kind-{kind}", _epi_kind(kind))
    cat.case("epilogue.int_unsupported", "epilogue[1].kind", "gelu(approximate='none')", "int8-gelu-erf",
             _int_gelu(PostOpKind.GELU_ERF))
    cat.case("epilogue.int_unsupported", "epilogue[1].kind", "gelu(approximate='tanh')", "int8-gelu-tanh",
             _int_gelu(PostOpKind.GELU_TANH))
    cat.case("epilogue.supported", "epilogue[0].kind", "gelu(approximate='tanh')", "f32-gelu-tanh-undeclared",
             _undeclared_post_op, portable=False)
    cat.case("epilogue.param", "epilogue[1].param0", _in_d(lambda x: f"lo={x(2)}, hi={x(1)}"), "clamp-lo-above-hi",
             _param(np.float32, (_RELU, PostOpDesc(_CLAMP, 1.0, 2.0)), (_RELU, PostOpDesc(_CLAMP, 2.0, 1.0))))
    cat.case("epilogue.param", "epilogue[0].param0", "got nan", "clamp-lo-nan",
             _param(np.float32, (PostOpDesc(_CLAMP, -1.0, 1.0),), (PostOpDesc(_CLAMP, math.nan, 1.0),)))
    # The offending parameter of clamp(lo, nan) is hi, i.e. param1.
    cat.case("epilogue.param", "epilogue[0].param1", "got nan", "clamp-hi-nan",
             _param(np.float32, (PostOpDesc(_CLAMP, -1.0, 1.0),), (PostOpDesc(_CLAMP, -1.0, math.nan),)))
    for s in (math.inf, -math.inf, math.nan):
        cat.case("epilogue.param", "epilogue[1].param0", f"got {s}", f"scale-{s}",
                 _param(np.float32, (_RELU, PostOpDesc(_SCALE, 2.0)), (_RELU, PostOpDesc(_SCALE, s))))
    cat.case("epilogue.param", "epilogue[0].param0", "got 1.5", "relu-param0",
             _param(np.float32, (PostOpDesc(PostOpKind.RELU),), (PostOpDesc(PostOpKind.RELU, 1.5),)))
    cat.case("epilogue.param", "epilogue[0].param1", "got 2.5", "gelu-param1",
             _param(np.float32, (PostOpDesc(PostOpKind.GELU_ERF),), (PostOpDesc(PostOpKind.GELU_ERF, 0, 2.5),)))
    cat.case("epilogue.param", "epilogue[0].param1", _in_d(lambda x: f"got {x(3)}"), "scale-param1",
             _param(np.float32, (PostOpDesc(_SCALE, 2.0),), (PostOpDesc(_SCALE, 2.0, 3.0),)))
    cat.case("epilogue.param", "epilogue[0].param0", _in_d(lambda x: f"got {x(1)}"), "bias-param0",
             _param(np.float32, (PostOpDesc(PostOpKind.BIAS_N),), (PostOpDesc(PostOpKind.BIAS_N, 1.0),), vector=(1, N)))
    cat.case("epilogue.param", "epilogue[0].param1", "got 2147483648", "int8-clamp-hi-2**31",
             _param(np.int8, (PostOpDesc(_CLAMP, -1, 2**31 - 1),), (PostOpDesc(_CLAMP, -1, 2**31),)))
    cat.case("epilogue.param", "epilogue[0].param0", "lo=3, hi=2", "int8-clamp-lo-above-hi",
             _param(np.int8, (PostOpDesc(_CLAMP, 2, 3),), (PostOpDesc(_CLAMP, 3, 2),)))
    cat.case("epilogue.param", "epilogue[0].param0", f"got {-(2**31) - 1}", "int8-scale-below-int32",
             _param(np.int8, (PostOpDesc(_SCALE, -(2**31)),), (PostOpDesc(_SCALE, -(2**31) - 1),)))
    # A fractional scale of an integer GEMM breaks the epilogue's rule ("an int32 for int32 outputs"),
    # even though the encoder is what catches it.
    cat.case("epilogue.param", "epilogue[0].param0", "got 0.5", "int8-scale-0.5",
             _param(np.int8, (PostOpDesc(_SCALE, 3),), (PostOpDesc(_SCALE, 0.5),)))
    # An operand on a post-op that takes none is refused as such, whatever its shape.
    cat.case("epilogue.operand", "epilogue[0].operand", "handle 5", "relu-with-1xn-operand",
             _operand_on(PostOpKind.RELU, (1, N)))
    cat.case("epilogue.operand", "epilogue[0].operand", "handle 5", "scale-with-mxn-operand",
             _operand_on(PostOpKind.SCALE, (M, N)))
    cat.case("epilogue.operand", "epilogue[0].operand", "handle 5", "relu-with-0x0-operand",
             _operand_on(PostOpKind.RELU, (0, 0), ld=1))
    cat.case("epilogue.operand", "epilogue[0].operand", "got f64", "f32-bias-f64",
             _epi_dtype(np.float32, PostOpKind.BIAS_N, (1, N), np.float32, np.float64))
    cat.case("epilogue.operand", "epilogue[0].operand", "got bf16", "f16-bias_m-bf16",
             _epi_dtype(np.float16, PostOpKind.BIAS_M, (M, 1), np.float16, BF16))
    cat.case("epilogue.operand", "epilogue[0].operand", "got int8", "int8-add-int8",
             _epi_dtype(np.int8, PostOpKind.ADD, (M, N), np.int32, np.int8))
