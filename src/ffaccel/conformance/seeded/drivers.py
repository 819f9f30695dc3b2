"""The driver mutants of the seeded-bug catalogue: the ``cpu`` driver with exactly one bug each.

Each class keeps the cpu driver's fast paths (``bind_gemm``, ``prepare_gemm_fresh``) on, so a
bug placed there is visible too. The table that names them, and the check meant to catch each,
is :data:`ffaccel.conformance.seeded.SEEDED_BUGS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ...abi import CopyOp, GemmOp
from ...drivers import cpu as cpu_mod
from ...drivers.cpu import CpuDriver
from ...spec import COMBO_BY_DTYPES, DTYPES, DType, PostOpKind

Kernel = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, tuple], None]


def _memory_root(x: np.ndarray) -> np.ndarray:
    """The 1-D byte array a bound view was made from."""
    base = x
    while base.base is not None and isinstance(base.base, np.ndarray):
        base = base.base
    return base


def _restrided(x: np.ndarray, strides_elems: tuple[int, int, int], shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Reinterpret a bound operand with other strides, as a buggy driver would address it.

    np.ndarray checks that the new view fits in the buffer, so a wild read raises instead of
    touching memory outside the buffer (which still fails the case, as the bug should).
    """
    root = _memory_root(x)
    offset = x.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    isz = x.itemsize
    return np.ndarray(shape or x.shape, x.dtype, buffer=root, offset=offset,
                      strides=tuple(s * isz for s in strides_elems))


class _BuggyCpu(CpuDriver):
    """The cpu driver with one bug: subclasses override :meth:`run`."""

    bug = "none"

    def prepare_gemm(self, op: GemmOp) -> Kernel:
        good = super().prepare_gemm
        return lambda a, b, c, d, epi: self.run(op, good, a, b, c, d, epi)

    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple) -> None:
        self.prepare_gemm(op)(a, b, c, d, epi)

    def run(self, op: GemmOp, good: Callable[[GemmOp], Kernel], a: np.ndarray, b: np.ndarray,
            c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        good(op)(a, b, c, d, epi)


class IgnoresBeta(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(dataclasses.replace(op, beta=0 * op.beta, c=None))(a, b, None, d, epi)


class ReadsCWhenBetaZero(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        if op.beta == 0 and c is not None and d.dtype.kind == "f":
            with np.errstate(all="ignore"):
                d += (0 * c).astype(d.dtype)  # 0 * NaN = NaN: C leaks


class AccumulatesHalfInHalf(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.a not in (DType.F16, DType.BF16) or not op.reads_ab:
            return good(op)(a, b, c, d, epi)
        half = DTYPES[op.combo.a].numpy
        acc = np.zeros(d.shape, half)
        with np.errstate(all="ignore"):
            for kk in range(op.k):  # every partial sum rounded to the input type
                acc = (acc.astype(np.float32) + a[:, :, kk:kk + 1].astype(np.float32)
                       * b[:, kk:kk + 1, :].astype(np.float32)).astype(half)
            val = np.float32(op.alpha) * acc.astype(np.float32)
            if op.reads_c and c is not None:
                val = val + np.float32(op.beta) * c.astype(np.float32)
        d[...] = val.astype(d.dtype)


class IgnoresLda(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        isz = a.itemsize
        if a.size and a.strides[2] == isz and a.strides[1] != op.k * isz:  # row-major A, padded
            a = _restrided(a, (a.strides[0] // isz, op.k, 1))
        elif a.size and a.strides[1] == isz and a.strides[2] != op.m * isz and op.k > 1:  # stored k x m
            a = _restrided(a, (a.strides[0] // isz, 1, op.m))
        good(op)(a, b, c, d, epi)


class WritesPastWindow(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        ld = op.d.ld
        if d.size and ld > op.n:  # vectorised store of whole rows, padding included
            rows = _restrided(d, (op.d.batch_stride, ld, 1), (1, op.m - 1, ld)) if op.m > 1 else None
            if rows is not None:
                rows[:, :, op.n:] = 0


class TransposesWrongOperand(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.trans_a != op.trans_b:
            # applies B's transpose flag to A: reads A's storage with the other orientation
            isz = a.itemsize
            ld = op.a.ld
            bs = a.strides[0] // isz
            a = _restrided(a, (bs, 1, ld) if not op.trans_a else (bs, ld, 1))
        good(op)(a, b, c, d, epi)


class EpilogueOrderSwapped(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        op2 = dataclasses.replace(op, epilogue=tuple(reversed(op.epilogue)))
        good(op2)(a, b, c, d, tuple(reversed(epi)))


class BiasOnWrongAxis(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        kinds = {PostOpKind.BIAS_N: PostOpKind.BIAS_M, PostOpKind.BIAS_M: PostOpKind.BIAS_N}
        epi2 = tuple(v.swapaxes(1, 2) if p.kind in kinds and v is not None else v for p, v in zip(op.epilogue, epi))
        op2 = dataclasses.replace(op, epilogue=tuple(dataclasses.replace(p, kind=kinds.get(p.kind, p.kind))
                                                     for p in op.epilogue))
        good(op2)(a, b, c, d, epi2)


class Int8Saturates(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not op.combo.is_int:
            return good(op)(a, b, c, d, epi)
        val = op.alpha * np.matmul(a.astype(np.int64), b.astype(np.int64))
        if op.reads_c and c is not None:
            val = val + op.beta * c.astype(np.int64)
        d[...] = np.clip(val, -(2**31), 2**31 - 1).astype(np.int32)


class BatchStrideZeroNotBroadcast(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch > 1 and a.strides[0] == 0 and a.size:
            isz = a.itemsize
            a = _restrided(a, (op.a.rows * op.a.ld, a.strides[1] // isz, a.strides[2] // isz))
        good(op)(a, b, c, d, epi)


class RoundsBf16ByTruncation(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.d != DType.BF16:
            return good(op)(a, b, c, d, epi)
        wide = COMBO_BY_DTYPES[(op.combo.a, op.combo.b, op.combo.acc, DType.F32)]
        op32 = dataclasses.replace(op, combo=wide, d=dataclasses.replace(op.d, dtype=DType.F32),
                                   c=None if op.c is None else dataclasses.replace(op.c, dtype=DType.F32))
        tmp = np.empty(d.shape, np.float32)
        good(op32)(a, b, None if c is None else c.astype(np.float32), tmp,
                   tuple(None if v is None else v.astype(np.float32) for v in epi))
        bits = tmp.view(np.uint32) & np.uint32(0xFFFF0000)  # chop the low 16 bits
        d[...] = bits.view(np.float32).astype(d.dtype)


class AlphaZeroStillReadsAB(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        if op.alpha == 0 and op.k and d.dtype.kind == "f":
            with np.errstate(all="ignore"):
                d += (0 * np.matmul(a.astype(np.float64), b.astype(np.float64))).astype(d.dtype)


class KZeroGivesZeros(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.k == 0:
            d[...] = 0
            return None
        good(op)(a, b, c, d, epi)


class InPlaceClobbersC(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.in_place:
            d[...] = 0  # "initialise the output" before reading C, which is the same memory
        good(op)(a, b, c, d, epi)


class GeluErfIsTanh(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        swap = {PostOpKind.GELU_ERF: PostOpKind.GELU_TANH}
        op2 = dataclasses.replace(op, epilogue=tuple(dataclasses.replace(p, kind=swap.get(p.kind, p.kind))
                                                     for p in op.epilogue))
        good(op2)(a, b, c, d, epi)


class DropsLastBatchEntry(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch > 1:  # an off-by-one in the batch loop
            n = op.batch - 1
            cut = lambda x: None if x is None else x[:n]  # noqa: E731
            return good(dataclasses.replace(op, batch=n))(a[:n], b[:n], cut(c), d[:n],
                                                         tuple(cut(v) for v in epi))
        good(op)(a, b, c, d, epi)


class IntSumsInF32WithoutChunks(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not op.combo.is_int:
            return good(op)(a, b, c, d, epi)
        acc = np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int64)  # inexact past 2**24
        val = (op.alpha * acc) & 0xFFFFFFFF
        if op.reads_c and c is not None:
            val = (val + op.beta * c.astype(np.int64)) & 0xFFFFFFFF
        d[...] = val.astype(np.uint32).view(np.int32)


class CopyTruncates(_BuggyCpu):
    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        if src.dtype == np.float32 and dst.dtype.itemsize == 2:
            # chop the f32 mantissa to the narrow type's width, so the cast below is exact
            keep = 0xFFFF0000 if op.dst.dtype == DType.BF16 else 0xFFFFE000
            with np.errstate(all="ignore"):
                chopped = (src.view(np.uint32) & np.uint32(keep)).view(np.float32)
                np.copyto(dst, chopped.astype(dst.dtype), casting="unsafe")
            return
        super().copy(op, src, dst)


# --- rounding, judged bit for bit ---------------------------------------------------------------


def _f32_twin(op: GemmOp) -> GemmOp:
    """The same GEMM with an f32 D (and C): where a buggy rounding step can be put afterwards."""
    wide = COMBO_BY_DTYPES[(op.combo.a, op.combo.b, op.combo.acc, DType.F32)]
    return dataclasses.replace(op, combo=wide, d=dataclasses.replace(op.d, dtype=DType.F32),
                               c=None if op.c is None else dataclasses.replace(op.c, dtype=DType.F32))


def _run_in_f32(op: GemmOp, good: Callable[[GemmOp], Kernel], a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                epi: tuple) -> np.ndarray:
    """D before its final rounding: the GEMM and epilogue in f32 (exactly what the spec rounds)."""
    tmp = np.empty((op.batch, op.m, op.n), np.float32)
    good(_f32_twin(op))(a, b, None if c is None else c.astype(np.float32), tmp,
                        tuple(None if v is None else v.astype(np.float32) for v in epi))
    return tmp


def _round_half_away(x: np.ndarray, bits: int) -> np.ndarray:
    """f32 -> a type with ``bits`` mantissa bits fewer, ties away from zero (the bug), as f32."""
    u = x.view(np.uint32).astype(np.uint64)
    half = np.uint64(1 << (bits - 1))
    r = ((u + half) & ~np.uint64((1 << bits) - 1)).astype(np.uint32)
    return np.where(np.isfinite(x), r.view(np.float32), x)


class F16RoundsTiesAway(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.d != DType.F16:
            return good(op)(a, b, c, d, epi)
        tmp = _run_in_f32(op, good, a, b, c, epi)
        # f16 has 13 fewer mantissa bits than f32 (normal range): add half an ulp and chop
        with np.errstate(all="ignore"):
            d[...] = _round_half_away(tmp, 13).astype(np.float16)


class Bf16RoundsTiesAway(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.d != DType.BF16:
            return good(op)(a, b, c, d, epi)
        tmp = _run_in_f32(op, good, a, b, c, epi)
        d[...] = _round_half_away(tmp, 16).astype(d.dtype)


class EpilogueInOutputType(_BuggyCpu):
    """Rounds the GEMM to D's 16-bit type, then runs the epilogue there (rounding after each step)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if (op.combo.d not in (DType.F16, DType.BF16) or not op.epilogue
                or any(p.kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH) for p in op.epilogue)):
            return good(op)(a, b, c, d, epi)
        good(dataclasses.replace(op, epilogue=()))(a, b, c, d, ())
        x = d
        with np.errstate(all="ignore"):
            for p, v in zip(op.epilogue, epi):
                if v is not None:
                    x[...] = (x.astype(np.float32) + v.astype(np.float32)).astype(d.dtype)
                elif p.kind == PostOpKind.RELU:
                    x[...] = np.maximum(x, 0)
                elif p.kind == PostOpKind.CLAMP:
                    x[...] = np.minimum(np.maximum(x.astype(np.float32), p.param0), p.param1).astype(d.dtype)
                elif p.kind == PostOpKind.SCALE:
                    x[...] = (x.astype(np.float32) * np.float32(p.param0)).astype(d.dtype)
                else:  # gelu: not reached (see the condition above)
                    raise AssertionError(p.kind)


class BetaCAddedAfterRounding(_BuggyCpu):
    """alpha * A @ B rounded to D's 16-bit type first, then beta * C added (two roundings)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.d not in (DType.F16, DType.BF16) or not op.reads_c or not op.reads_ab or op.epilogue:
            return good(op)(a, b, c, d, epi)
        cc = None if c is None else c.astype(np.float32)  # read C before D (maybe C itself) changes
        good(dataclasses.replace(op, beta=0 * op.beta))(a, b, None, d, ())
        with np.errstate(all="ignore"):
            d[...] = (d.astype(np.float32) + np.float32(op.beta) * cc).astype(d.dtype)


# --- integer scalars float32 cannot hold -------------------------------------------------------


class IntAlphaThroughF32(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.is_int:
            op = dataclasses.replace(op, alpha=int(np.float32(op.alpha)) if abs(int(np.float32(op.alpha))) < 2**31
                                     else op.alpha)
        good(op)(a, b, c, d, epi)


class IntClampBoundsThroughF32(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.is_int:
            def f32(v: int) -> int:
                return int(np.clip(int(np.float32(v)), -(2**31), 2**31 - 1))
            op = dataclasses.replace(op, epilogue=tuple(
                dataclasses.replace(p, param0=f32(p.param0), param1=f32(p.param1)) if p.kind == PostOpKind.CLAMP
                else p for p in op.epilogue))
        good(op)(a, b, c, d, epi)


class IntScaleThroughF32(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.is_int:
            op = dataclasses.replace(op, epilogue=tuple(
                dataclasses.replace(p, param0=int(np.clip(int(np.float32(p.param0)), -(2**31), 2**31 - 1)))
                if p.kind == PostOpKind.SCALE else p for p in op.epilogue))
        good(op)(a, b, c, d, epi)


class IntBetaCInFloat64(_BuggyCpu):
    """beta * C in float64: inexact once |beta * C| passes 2**53."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not op.combo.is_int or not op.reads_c or op.epilogue or not op.reads_ab:
            return good(op)(a, b, c, d, epi)
        bc = (float(op.beta) * c.astype(np.float64))  # read before D (maybe C itself) changes
        good(dataclasses.replace(op, beta=0, c=None))(a, b, None, d, ())
        wrapped = (np.round(bc).astype(np.int64) + d.astype(np.int64)) & 0xFFFFFFFF
        d[...] = wrapped.astype(np.uint32).view(np.int32)


class ParamsCachedPerGeometry(_BuggyCpu):
    """Caches kernels by shape, dtypes, scalars and post-op kinds, not post-op parameters."""

    def __init__(self) -> None:
        super().__init__()
        self._first: dict[tuple, GemmOp] = {}

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        key = (op.m, op.n, op.k, op.batch, op.trans_a, op.trans_b, op.combo, op.alpha, op.beta, op.in_place,
               op.c is None, tuple(p.kind for p in op.epilogue))
        first = self._first.setdefault(key, op)
        good(dataclasses.replace(op, epilogue=tuple(
            dataclasses.replace(p, param0=q.param0, param1=q.param1) for p, q in zip(op.epilogue, first.epilogue))))(
            a, b, c, d, epi)


# --- NaN and Inf --------------------------------------------------------------------------------


class ReluDropsNaN(_BuggyCpu):
    """relu as fmax(x, 0): NaN becomes 0."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.is_int or not any(p.kind == PostOpKind.RELU for p in op.epilogue):
            return good(op)(a, b, c, d, epi)
        nan_before = None
        good(op)(a, b, c, d, epi)
        with np.errstate(all="ignore"):
            nan_before = np.isnan(d.astype(np.float32))
        d[nan_before] = 0


class ClampDropsNaN(_BuggyCpu):
    """clamp as fmin(fmax(x, lo), hi): NaN becomes lo."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        clamps = [p for p in op.epilogue if p.kind == PostOpKind.CLAMP]
        good(op)(a, b, c, d, epi)
        if clamps and not op.combo.is_int:
            nan = np.isnan(d.astype(np.float32))
            d[nan] = clamps[-1].param0


class InPlaceScalesDByBeta(_BuggyCpu):
    """In place, D = alpha * A @ B + beta * D even when beta == 0 (0 * NaN = NaN)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not (op.in_place and op.beta == 0) or op.combo.is_int:
            return good(op)(a, b, c, d, epi)
        with np.errstate(all="ignore"):
            old = d.astype(np.float64) * 0.0
        good(op)(a, b, c, d, epi)
        with np.errstate(all="ignore"):
            d[...] = (d.astype(np.float64) + old).astype(d.dtype)


class AbsentCReadsD(_BuggyCpu):
    """With C absent and an epilogue, accumulates onto D's previous contents."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.c is not None or not op.epilogue:
            return good(op)(a, b, c, d, epi)
        old = d.copy()
        good(op)(a, b, c, d, epi)
        if op.combo.is_int:
            d[...] = (d.astype(np.int64) + old.astype(np.int64)).astype(np.int32)
        else:
            with np.errstate(all="ignore"):
                d[...] = (d.astype(np.float64) + old.astype(np.float64)).astype(d.dtype)


class KZeroReadsCWhenBetaZero(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        if op.k == 0 and op.beta == 0 and c is not None and d.dtype.kind == "f":
            with np.errstate(all="ignore"):
                d += (0 * c).astype(d.dtype)


# --- layouts ------------------------------------------------------------------------------------


class InterleavedDScrambled(_BuggyCpu):
    """Row-interleaved D ([m, batch, n]) written as if its batch entries were packed."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch < 2 or not d.size or d.strides[0] >= d.strides[1]:
            return good(op)(a, b, c, d, epi)
        tmp = np.ascontiguousarray(d)  # a packed copy (D's own values: C when in place)
        good(op)(a, b, tmp if op.in_place else c, tmp, epi)
        d[...] = tmp.reshape(-1).reshape(d.shape[1], d.shape[0], d.shape[2]).transpose(1, 0, 2)


class BroadcastCNotBroadcast(_BuggyCpu):
    """Steps through C's batch as if packed when its batch stride is 0."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch > 1 and c is not None and c.size and c.strides[0] == 0 and op.reads_c:
            c = c.copy()
            c[1:] = 0  # the other entries read memory that is not C's
        good(op)(a, b, c, d, epi)


class EpilogueOperandFirstEntryOnly(_BuggyCpu):
    """Uses batch entry 0 of a per-entry bias / residual for every entry."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        epi = tuple(v if v is None or v.shape[0] < 2 or v.strides[0] == 0 else np.broadcast_to(v[:1], v.shape)
                    for v in epi)
        good(op)(a, b, c, d, epi)


class BroadcastBFoldWrong(_BuggyCpu):
    """With B broadcast, folds the batch into m and multiplies every entry by A's entry 0."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch > 1 and b.strides[0] == 0 and a.strides[0] != 0 and op.reads_ab:
            a = np.broadcast_to(a[:1], a.shape)
        good(op)(a, b, c, d, epi)


class BatchFoldScrambled(_BuggyCpu):
    """B broadcast with A and D back to back: folds the batch into m, but reads A's rows
    entry-interleaved (row r of every entry, then row r + 1)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        adjacent = (op.batch > 1 and b.strides[0] == 0 and a.strides[0] == a.shape[1] * a.strides[1] != 0
                    and d.strides[0] == d.shape[1] * d.strides[1])
        if adjacent and op.reads_ab:
            a = np.ascontiguousarray(a).reshape(-1, a.shape[2]).reshape(a.shape[1], a.shape[0], a.shape[2]) \
                .transpose(1, 0, 2)
        good(op)(a, b, c, d, epi)


class AllocNotZeroed(_BuggyCpu):
    """Hands out new buffers without clearing them (a debug allocator's 0xA5 pattern stands for
    whatever was there before: another client's data, or this one's freed buffers)."""

    def alloc(self, size_bytes: int) -> np.ndarray:
        return np.full(size_bytes, 0xA5, np.uint8)


# --- sizes across thresholds -----------------------------------------------------------------


class LargeF16OutputDropsLastColumn(_BuggyCpu):
    """A two-thread conversion of a large 16-bit output that misses its last column."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if d.itemsize != 2 or op.batch * op.m * op.n < 2**20:
            return good(op)(a, b, c, d, epi)
        keep = d[:, :, -1].copy()
        good(op)(a, b, c, d, epi)
        d[:, :, -1] = keep


class LargeGemmDropsPartialTile(_BuggyCpu):
    """Above 2**21 multiply-adds, rows past the last full 64-row tile are not computed."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        full = op.m - op.m % 64
        if op.m * op.n * op.k <= 2**21 or full == op.m or full == 0:
            return good(op)(a, b, c, d, epi)
        cut = lambda x: x if x is None or x.shape[1] == 1 else x[:, :full]  # noqa: E731
        good(dataclasses.replace(op, m=full))(a[:, :full], b, cut(c), d[:, :full],
                                               tuple(v if v is None or v.shape[1] == 1 else v[:, :full] for v in epi))


class LargeGemmIgnoresBeta(_BuggyCpu):
    """Above OpenBLAS's threading threshold, C is added with beta 1."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.m * op.n * op.k > 2**18 and op.reads_c and not op.combo.is_int:
            op = dataclasses.replace(op, beta=1.0)
        good(op)(a, b, c, d, epi)


class IntChunkTwiceTooBig(_BuggyCpu):
    """Exact-int8 k chunks twice the safe size: float32 partial sums pass 2**24."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not op.combo.is_int or not op.reads_ab or op.epilogue:
            return good(op)(a, b, c, d, epi)
        chunk = 2 * {(DType.I8, DType.I8): 1024, (DType.I8, DType.U8): 512, (DType.U8, DType.I8): 512,
                     (DType.U8, DType.U8): 256}[(op.combo.a, op.combo.b)]
        af, bf = a.astype(np.float32), b.astype(np.float32)
        total = np.zeros(d.shape, np.float64)
        for lo in range(0, op.k, chunk):
            total += np.matmul(af[:, :, lo:lo + chunk], bf[:, lo:lo + chunk, :])
        val = (op.alpha * total.astype(np.int64)) & 0xFFFFFFFF
        if op.reads_c and c is not None:
            val = (val + op.beta * c.astype(np.int64)) & 0xFFFFFFFF
        d[...] = val.astype(np.uint32).view(np.int32)


class IntDropsLastChunk(_BuggyCpu):
    """Skips the last, partial k chunk of exact int8 (an off-by-one in the chunk loop)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        chunk = 256 if op.combo.is_int and DType.U8 in (op.combo.a, op.combo.b) else 1024
        if not op.combo.is_int or op.k <= chunk or op.k % chunk == 0:
            return good(op)(a, b, c, d, epi)
        k = op.k - op.k % chunk
        good(dataclasses.replace(op, k=k))(a[:, :, :k], b[:, :k, :], c, d, epi)


class BatchLoopReusesEntry(_BuggyCpu):
    """For batch entries big enough for a BLAS call each, the last one uses the previous entry's A."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.batch > 1 and op.m * op.n * op.k >= 32 * 32 * 32 and a.strides[0] != 0:
            idx = np.arange(op.batch)
            idx[-1] = op.batch - 2
            a = a[idx]
        good(op)(a, b, c, d, epi)


# --- COPY -------------------------------------------------------------------------------------


class CopyF64ThroughF32(_BuggyCpu):
    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        if src.dtype == np.float64 and dst.dtype.itemsize == 2:
            with np.errstate(all="ignore"):
                np.copyto(dst, src.astype(np.float32).astype(dst.dtype), casting="unsafe")
            return
        super().copy(op, src, dst)


class CopyFlushesSubnormals(_BuggyCpu):
    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        super().copy(op, src, dst)
        if dst.dtype.kind == "f" or op.dst.dtype == DType.BF16:
            import ml_dtypes
            wide = dst.astype(np.float64)
            dst[(wide != 0) & (np.abs(wide) < float(ml_dtypes.finfo(dst.dtype).tiny))] = 0


class CopyOverflowSaturates(_BuggyCpu):
    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        super().copy(op, src, dst)
        if op.dst.dtype in (DType.F16, DType.BF16, DType.F32) and op.src.dtype != op.dst.dtype:
            big = np.isinf(dst.astype(np.float64)) & np.isfinite(src.astype(np.float64))
            if big.any():
                import ml_dtypes
                dst[big] = (np.sign(src[big].astype(np.float64))
                            * float(ml_dtypes.finfo(dst.dtype).max)).astype(dst.dtype)


class LargeCopyMissesLastRow(_BuggyCpu):
    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        if src.size >= 2**20 and src.shape[0] > 1:
            return super().copy(op, src[:-1], dst[:-1])
        super().copy(op, src, dst)


# --- entry points -------------------------------------------------------------------------------


class BindIgnoresAlpha(_BuggyCpu):
    def bind_gemm(self, op, a, b, c, d, epi):  # noqa: ANN001, ANN201
        return super().bind_gemm(dataclasses.replace(op, alpha=1.0), a, b, c, d, epi)


class BindComputesOnce(_BuggyCpu):
    """The binding computes D when bound and copies that answer on every call."""

    def bind_gemm(self, op, a, b, c, d, epi):  # noqa: ANN001, ANN201
        run = super().bind_gemm(op, a, b, c, d, epi)
        if run is None:
            return None
        saved = d.copy()
        run()
        answer = d.copy()
        d[...] = saved

        def stale() -> None:
            d[...] = answer
        return stale


class FreshIgnoresAlpha(_BuggyCpu):
    """The fresh kernel (what ``matmul(a, b, alpha=...)`` takes) is built for alpha = 1."""

    def prepare_gemm_fresh(self, op):  # noqa: ANN001, ANN201
        return super().prepare_gemm_fresh(dataclasses.replace(op, alpha=1.0))


class FreshForgetsTransposeBack(_BuggyCpu):
    """The fresh kernel returns BLAS's column-major D^T as it is (unnoticed where D is square)."""

    def prepare_gemm_fresh(self, op):  # noqa: ANN001, ANN201
        kernel = super().prepare_gemm_fresh(op)
        if kernel is None or op.m != op.n:
            return kernel
        return lambda a, b: np.ascontiguousarray(kernel(a, b).T)


class KernelKeepsFirstB(_BuggyCpu):
    """A prepared kernel keeps the first B it saw ("weights do not change between calls")."""

    def prepare_gemm(self, op: GemmOp) -> Kernel:
        good = CpuDriver.prepare_gemm(self, op)
        first: list[np.ndarray] = []

        def kernel(a, b, c, d, epi):  # noqa: ANN001, ANN202
            if not first:
                first.append(b.copy())
            good(a, first[0], c, d, epi)
        return kernel


class GemmEntryDropsEpilogue(_BuggyCpu):
    """Only the plain ``gemm`` entry point is wrong: it runs the GEMM without its epilogue."""

    def gemm(self, op, a, b, c, d, epi):  # noqa: ANN001, ANN201
        CpuDriver.gemm(self, dataclasses.replace(op, epilogue=()), a, b, c, d, ())


# --- quick's categories -----------------------------------------------------------------------


class BiasAlwaysFirst(_BuggyCpu):
    """Moves bias post-ops to the front of the epilogue."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        order = sorted(range(len(op.epilogue)),
                       key=lambda i: op.epilogue[i].kind not in (PostOpKind.BIAS_N, PostOpKind.BIAS_M))
        good(dataclasses.replace(op, epilogue=tuple(op.epilogue[i] for i in order)))(a, b, c, d,
                                                                                      tuple(epi[i] for i in order))


class AddOperandInOutputTypeMisread(_BuggyCpu):
    """An ``add`` operand in D's 16-bit type is rounded to bf16 first (as if all 16-bit types were bf16)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        import ml_dtypes
        epi = tuple(v.astype(np.float32).astype(ml_dtypes.bfloat16).astype(v.dtype)
                    if v is not None and p.kind == PostOpKind.ADD and v.dtype == np.float16 else v
                    for p, v in zip(op.epilogue, epi))
        good(op)(a, b, c, d, epi)


class SquareTransposeGuessedFromShape(_BuggyCpu):
    """Decides whether A is transposed from its shape: when m == k it guesses "not transposed"."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.trans_a and op.m == op.k and op.m > 1:
            a = a.swapaxes(1, 2)
        good(op)(a, b, c, d, epi)


class AlphaScalesC(_BuggyCpu):
    """alpha * (A @ B + beta * C)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.is_int or not op.reads_c or op.alpha in (0, 1):
            return good(op)(a, b, c, d, epi)
        good(dataclasses.replace(op, beta=op.beta * op.alpha))(a, b, c, d, epi)


class ClampBoundsSwapped(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(dataclasses.replace(op, epilogue=tuple(
            dataclasses.replace(p, param0=p.param1, param1=p.param0) if p.kind == PostOpKind.CLAMP else p
            for p in op.epilogue)))(a, b, c, d, epi)


class ScaleTwice(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(dataclasses.replace(op, epilogue=tuple(
            dataclasses.replace(p, param0=p.param0 * p.param0) if p.kind == PostOpKind.SCALE else p
            for p in op.epilogue)))(a, b, c, d, epi)


class BiasMIgnored(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        keep = [i for i, p in enumerate(op.epilogue) if p.kind != PostOpKind.BIAS_M]
        good(dataclasses.replace(op, epilogue=tuple(op.epilogue[i] for i in keep)))(a, b, c, d,
                                                                                     tuple(epi[i] for i in keep))


class GeluTanhIsErf(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        swap = {PostOpKind.GELU_TANH: PostOpKind.GELU_ERF}
        good(dataclasses.replace(op, epilogue=tuple(dataclasses.replace(p, kind=swap.get(p.kind, p.kind))
                                                    for p in op.epilogue)))(a, b, c, d, epi)


class Uint8ReadAsInt8(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.combo.b != DType.U8:
            return good(op)(a, b, c, d, epi)
        combo = COMBO_BY_DTYPES[(op.combo.a, DType.I8, op.combo.acc, op.combo.d)]
        good(dataclasses.replace(op, combo=combo, b=dataclasses.replace(op.b, dtype=DType.I8)))(
            a, b.view(np.int8), c, d, epi)


class F32OutputRoundedToF16(_BuggyCpu):
    """f16 inputs with an f32 output: the result goes through f16 anyway."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        if op.combo.a == DType.F16 and op.combo.d == DType.F32:
            with np.errstate(all="ignore"):
                d[...] = d.astype(np.float16).astype(np.float32)


class IntReluThroughF32(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        good(op)(a, b, c, d, epi)
        if op.combo.is_int and op.epilogue and op.epilogue[-1].kind == PostOpKind.RELU:
            d[...] = np.maximum(d.astype(np.float32), 0).astype(np.int64).astype(np.int32)


class InPlaceNegatesBeta(_BuggyCpu):
    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.in_place and op.reads_c and op.batch > 1:
            op = dataclasses.replace(op, beta=-op.beta)
        good(op)(a, b, c, d, epi)


class SquareBTransposeGuessedFromShape(_BuggyCpu):
    """Decides whether B is transposed from its shape: when k == n it guesses "not transposed"."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if op.trans_b and op.n > 1 and op.n == op.k:
            b = b.swapaxes(1, 2)
        good(op)(a, b, c, d, epi)


# --- reads ------------------------------------------------------------------------------------


class _ViewReadingMemory:
    """Device memory kept in a host array whose ``read_bytes`` returns a view of it, not a copy
    (what ``torch`` device memory on the CPU did: ``.cpu()`` is a no-op there)."""

    def __init__(self, size_bytes: int) -> None:
        self.nbytes = size_bytes
        self.raw = np.zeros(size_bytes, np.uint8)

    def strided(self, dtype: DType, shape: tuple[int, int, int], strides_elems: tuple[int, int, int],
                offset_bytes: int) -> np.ndarray:
        np_dt = np.dtype(DTYPES[dtype].numpy)
        if 0 in shape:
            return np.empty(shape, np_dt)
        return np.ndarray(shape, np_dt, buffer=self.raw, offset=offset_bytes,
                          strides=tuple(s * np_dt.itemsize for s in strides_elems))

    def read_bytes(self, offset_bytes: int, count: int) -> np.ndarray:
        return self.raw[offset_bytes:offset_bytes + count]  # the bug: a view

    def write_bytes(self, offset_bytes: int, data: np.ndarray) -> None:
        self.raw[offset_bytes:offset_bytes + data.size] = data


class ReadReturnsView(CpuDriver):
    """Memory of its own (not host-visible) whose reads return views of device memory. Freed memory
    is kept and handed out again (zeroed) by the next allocation of its size, as device allocators
    do (PyTorch's caching allocator on CUDA): a front-end result that is such a view then changes
    when the front-end's next call reuses the memory."""

    host_visible = False

    def alloc(self, size_bytes: int) -> _ViewReadingMemory:
        kept = getattr(self, "_kept", {}).get(size_bytes)
        if kept:
            mem = kept.pop()
            mem.raw[:] = 0  # a new buffer reads as zeros
            return mem
        return _ViewReadingMemory(size_bytes)

    def free(self, memory: _ViewReadingMemory) -> None:  # type: ignore[override]
        self.__dict__.setdefault("_kept", {}).setdefault(memory.nbytes, []).append(memory)


class FreshKernelReusesOutput(CpuDriver):
    """``prepare_gemm_fresh``'s kernel hands back the same array on every call (an output scratch it
    keeps per geometry): each result is right when returned, but ``matmul`` gives it to the caller,
    so the caller's array (and a PyTorch offload tensor made from it) changes with the next call."""

    def prepare_gemm_fresh(self, op):  # noqa: ANN001, ANN201
        fresh = super().prepare_gemm_fresh(op)
        if fresh is None:
            return None
        kept: list[np.ndarray] = []

        def keep(kernel):  # noqa: ANN001, ANN202
            def reused(*args):  # noqa: ANN002, ANN202
                d = kernel(*args)
                if not kept:
                    kept.append(np.empty_like(d))
                kept[0][...] = d
                return kept[0]
            return reused
        out = keep(fresh)
        if hasattr(fresh, "contiguous"):  # the 8 x 8 + bias form too: every fresh path hands back kept[0]
            out.contiguous = keep(fresh.contiguous)
        return out


class FreshContiguousKeepsFirstBias(CpuDriver):
    """The fresh kernel's ``contiguous(a, b, bias)`` form (a linear layer's tiny GEMM + bias) keeps
    the bias vector it was first called with: a layer whose bias changes (another layer of the
    same shape, or new weights) gets the old one. The ordinary fresh kernel is right."""

    def prepare_gemm_fresh(self, op):  # noqa: ANN001, ANN201
        fresh = super().prepare_gemm_fresh(op)
        direct = getattr(fresh, "contiguous", None)
        if direct is None:
            return fresh
        first: list[np.ndarray] = []

        def stale(a, b, bias):  # noqa: ANN001, ANN202
            if not first:
                first.append(np.array(bias))
            return direct(a, b, first[0])
        fresh.contiguous = stale
        return fresh


class FamilyKernelKeepsItsSizes(CpuDriver):
    """``kernel_family`` says the kernel serves every batched geometry of its class in its band,
    but the kernel reads the k it was prepared for: on a KV cache one row longer it leaves the
    last row out (a "size-free" kernel that is not). Every geometry's own kernel is right."""

    def prepare_gemm(self, op):  # noqa: ANN001, ANN201
        kernel = super().prepare_gemm(op)
        if self.kernel_family(op) is None:
            return kernel
        k = op.k

        def cut(a, b, c, d, epi):  # noqa: ANN001, ANN202
            return kernel(a[..., :k], b[..., :k, :], c, d, epi)
        return cut


class GroupReadsFirstA(CpuDriver):
    """``bind_gemm_group`` runs every GEMM of a group with the first one's A, as if the group shared one
    weight (what a ring chain of GEMMs over one A and B has): right wherever A is shared, wrong where
    each GEMM has its own. Each GEMM's own binding is right."""

    def bind_gemm_group(self, op, a, b, c, d, epi):  # noqa: ANN001, ANN201
        return super().bind_gemm_group(op, np.broadcast_to(a[:1], a.shape), b, c, d, epi)


# --- size bands ---------------------------------------------------------------------------------


class FusedEpilogueDropsLastPostOp(_BuggyCpu):
    """At and above the size where the cpu driver hands a GEMM with an epilogue to oneDNN (the fused
    path, the kernel table's ``onednn_fused_min_mnk``), the last post-op is dropped; below it every post-op runs."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        from ...drivers.cpu_table import NEVER, combo_class

        crossovers = self.kernel_table().crossovers  # the table's fused-epilogue edge, as the driver reads it
        floor = crossovers.onednn_fused_min_mnk.get(combo_class(op.combo).value, NEVER)
        if op.epilogue and floor < NEVER and op.batch * op.m * op.n * op.k >= floor:
            op, epi = dataclasses.replace(op, epilogue=op.epilogue[:-1]), epi[:-1]
        good(op)(a, b, c, d, epi)


class _FusedFloor(_BuggyCpu):
    """A bug that shows only on GEMMs with an epilogue at or above the cpu driver's fused-epilogue
    edge (the kernel table's ``onednn_fused_min_mnk``, as the driver reads it)."""

    def fused(self, op: GemmOp) -> bool:
        from ...drivers.cpu_table import NEVER, combo_class

        floor = self.kernel_table().crossovers.onednn_fused_min_mnk.get(combo_class(op.combo).value, NEVER)
        return bool(op.epilogue) and not op.combo.is_int and floor < NEVER and op.batch * op.m * op.n * op.k >= floor

    def split(self, op: GemmOp, good: Callable[[GemmOp], Kernel], a: np.ndarray, b: np.ndarray,
              c: np.ndarray | None, d: np.ndarray, epi: tuple, at: int,
              middle: Callable[[np.ndarray], None] = lambda x: None) -> None:
        """The GEMM with the post-ops before ``at`` into D (rounded to D's dtype), then ``middle``
        and the post-ops from ``at`` on, on D widened to the accumulate dtype, rounded again."""
        from ...drivers.epilogue import float_steps

        good(dataclasses.replace(op, epilogue=op.epilogue[:at]))(a, b, c, d, epi[:at])
        acc = np.dtype(DTYPES[op.combo.acc].numpy)
        x = d.astype(acc)
        with np.errstate(all="ignore"):
            middle(x)
            for step in float_steps(op.epilogue, acc)[at:]:
                step(x, epi)
            np.copyto(d, x, casting="unsafe")


def _first_bound(op: GemmOp) -> int | None:
    """The index of the first relu or clamp of the epilogue (None: there is none)."""
    return next((i for i, p in enumerate(op.epilogue) if p.kind in (PostOpKind.RELU, PostOpKind.CLAMP)), None)


class FusedScaleTwice(_FusedFloor):
    """On the fused path a scale ahead of the first relu/clamp (one oneDNN runs inside the GEMM) is
    applied twice."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        stop = _first_bound(op)
        head = op.epilogue[:len(op.epilogue) if stop is None else stop]
        i = next((j for j, p in enumerate(head) if p.kind == PostOpKind.SCALE), None)
        if not self.fused(op) or i is None:
            good(op)(a, b, c, d, epi)
            return
        op = dataclasses.replace(op, epilogue=op.epilogue[:i + 1] + op.epilogue[i:])
        good(op)(a, b, c, d, epi[:i + 1] + epi[i:])


class WidenedRoundsBeforeTail(_FusedFloor):
    """On the fused path with a 16-bit D, D is rounded after the fused post-ops and again after the
    ones from the first clamp on (which run on the rounded D): a double rounding."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        stop = _first_bound(op)
        if not self.fused(op) or stop is None or stop == len(op.epilogue) - 1 or d.dtype.itemsize != 2:
            good(op)(a, b, c, d, epi)
            return
        self.split(op, good, a, b, c, d, epi, stop)


class FusedClampDropsNaN(_FusedFloor):
    """On the fused path a leading clamp is fused (oneDNN's clip: max/min drop a NaN operand), so a
    NaN comes out as the lower bound (f32/f64 D)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if not self.fused(op) or op.epilogue[0].kind != PostOpKind.CLAMP or d.dtype.itemsize < 4:
            good(op)(a, b, c, d, epi)
            return
        lo, hi = op.epilogue[0].param0, op.epilogue[0].param1
        self.split(op, good, a, b, c, d, epi, 0, lambda x: np.copyto(x, np.fmin(np.fmax(x, lo), hi)))


class InterleavedDDropsBias(_FusedFloor):
    """On the fused path with a D whose rows are interleaved (not one dense block), every bias and
    residual is dropped (a binary post-op addressed as if D were dense, then given up)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if self.fused(op) and not d.flags.c_contiguous:
            epi = tuple(None if e is None else np.zeros_like(e) for e in epi)
        good(op)(a, b, c, d, epi)


class OneBufferCopyBackwards(_BuggyCpu):
    """A COPY within one buffer with the destination after the source is done "backwards" (as an
    overlapping memmove would be), and gets the row order wrong: dst row i <- src row rows-1-i."""

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        if op.src.handle == op.dst.handle and op.dst.offset_bytes > op.src.offset_bytes and src.ndim >= 2:
            src = src[..., ::-1, :]
        super().copy(op, src, dst)


def _linear_layer(op: GemmOp) -> bool:
    """A float GEMM of one batch entry with the bias alone and no C (what the cpu driver's linear-layer
    paths take: the bias put in D first, or NumPy's product then the bias)."""
    return (op.batch == 1 and not op.combo.is_int and not op.reads_c and len(op.epilogue) == 1
            and op.epilogue[0].kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M))


class ThreadedLinearDropsBias(_BuggyCpu):
    """A linear layer (the bias alone, alpha 1, no C) past OpenBLAS's threading size takes NumPy's
    product and forgets to add the bias after it (a chain of post-ops never takes that path)."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if _linear_layer(op) and float(op.alpha) == 1.0 and op.m * op.n * op.k > cpu_mod._SINGLE_THREAD_MNK:
            epi = tuple(None if e is None else np.zeros_like(e) for e in epi)
        good(op)(a, b, c, d, epi)


class SkinnyIgnoresAlpha(_BuggyCpu):
    """A skinny GEMM (m or n = 1, with or without C) on compact operands, where ?gemv, NumPy's matmul or an
    m = 1 kernel (an NPU's vector unit) serves it, is run with alpha = 1 (the product scaled by
    nothing): only one-row GEMMs with compact operands and alpha != 1 show it."""

    def run(self, op, good, a, b, c, d, epi):  # noqa: ANN001, ANN201
        if (op.batch == 1 and (op.m == 1 or op.n == 1) and op.reads_ab
                and a[0].flags.c_contiguous and b[0].flags.c_contiguous):
            op = dataclasses.replace(op, alpha=1 if op.combo.is_int else 1.0)
        good(op)(a, b, c, d, epi)


class FreshSkinnyIgnoresAlpha(_BuggyCpu):
    """The fresh kernel of a bare skinny GEMM (m or n = 1, no epilogue: ?gemv, where NumPy's matmul
    has no alpha) is built for alpha = 1."""

    def prepare_gemm_fresh(self, op):  # noqa: ANN001, ANN201
        if (op.m == 1 or op.n == 1) and not op.epilogue:
            op = dataclasses.replace(op, alpha=1.0)
        return super().prepare_gemm_fresh(op)
