"""A catalogue of seeded-bug devices: the proof that the suite catches real bugs.

Each entry is the ``cpu`` driver (or the in-process transport in front of it) with
exactly one realistic bug, of the kinds BLAS libraries, accelerator drivers and
runtimes have shipped. The driver keeps its fast paths (``bind_gemm``,
``prepare_gemm_fresh``) on, so a bug placed there is visible too. There is at least one
per gap the suite once had (see ``docs/conformance.md``) and one per validation rule
family. The project's tests assert that ``--quick`` fails every one of them in the check
named by ``caught_by`` while it passes ``ref``, ``cpu`` and ``torch:cpu``. Driver authors
can read these as a list of what the suite is known to catch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..abi import COMMAND_BYTES, COPY, GEMM, SUBMIT, WAIT, CopyOp, GemmOp
from ..drivers.cpu import CpuDriver
from ..runtime import Device
from ..spec import COMBO_BY_DTYPES, DTYPES, DType, Engine, Opcode, PostOpKind
from ..transports import InprocTransport

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


# --- transport-level bugs ------------------------------------------------------------------


class _ReservedBlindTransport(InprocTransport):
    """Zeroes reserved fields before validating: a device that accepts garbage in them."""

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        buf = bytearray(raw)
        for f, off in SUBMIT.offsets():
            if f.reserved:
                buf[off:off + (4 if f.fmt == "I" else 8)] = bytes(4 if f.fmt == "I" else 8)
        n_wait, n_cmd = SUBMIT.struct.unpack_from(buf, 0)[4], SUBMIT.struct.unpack_from(buf, 0)[3]
        base = SUBMIT.size_bytes + n_wait * 16
        for i in range(n_cmd):
            start = base + i * COMMAND_BYTES
            for f, off in GEMM.offsets():
                if f.reserved and start + off + 8 <= len(buf):
                    width = 4 if f.fmt == "I" else 8
                    buf[start + off:start + off + width] = bytes(width)
        return super().submit(bytes(buf))


class _HalfExecutingTransport(InprocTransport):
    """Validates and runs commands one by one: a rejected submission has half run."""

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        from ..abi import encode_submission

        head = SUBMIT.struct.unpack_from(raw, 0)
        engine, n_cmd, n_wait = head[1], head[3], head[4]
        base = SUBMIT.size_bytes + n_wait * 16
        waits = raw[SUBMIT.size_bytes:base]
        if n_cmd <= 1:
            return super().submit(raw)
        result = None
        for i in range(n_cmd):
            one = encode_submission([raw[base + i * COMMAND_BYTES: base + (i + 1) * COMMAND_BYTES]], Engine(engine))
            if i == 0 and waits:
                one = raw[:SUBMIT.size_bytes] + waits + one[SUBMIT.size_bytes:]
                one = one[:12] + (1).to_bytes(4, "little") + one[16:]
            result = super().submit(one)
        assert result is not None
        return result


class _EarlyFenceTransport(InprocTransport):
    """Signals a submission's fence at once but runs its work only when the next one arrives.

    (A deterministic stand-in for a device that signals completion when work is queued.)
    """

    def __init__(self, driver: CpuDriver) -> None:
        super().__init__(driver)
        self._pending: bytes | None = None

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        head = SUBMIT.struct.unpack_from(raw, 0)
        engine = Engine(head[1]) if head[1] in (0, 1) else Engine.COMPUTE
        earlier, self._pending = self._pending, raw
        if earlier is not None:
            with contextlib.suppress(Exception):  # the bug also loses the late work's errors
                engine_, _ = super().submit(earlier)
                self._timeline[engine_] -= 1  # its fence was already signalled below
        with self._lock:
            self._timeline[engine] += 1
            return engine, self._timeline[engine]


# --- transport-level bugs, one per rule family ------------------------------------------------


def _field_at(layout, name: str) -> tuple[str, int]:  # noqa: ANN001
    for f, off in layout.offsets():
        if f.name == name:
            return "<" + f.fmt, off
    raise KeyError(name)


def _command_offsets(raw: bytes) -> list[int]:
    """Where each command of a submission starts (only when the header's counts fit the bytes)."""
    if len(raw) < SUBMIT.size_bytes:
        return []
    head = SUBMIT.struct.unpack_from(raw, 0)
    n_cmd, n_wait = head[3], head[4]
    base = SUBMIT.size_bytes + n_wait * WAIT.size_bytes
    if n_cmd > 64 or base + n_cmd * COMMAND_BYTES > len(raw):
        return []
    return [base + i * COMMAND_BYTES for i in range(n_cmd)]


def _get(buf: bytearray, layout, name: str, base: int) -> int:  # noqa: ANN001
    fmt, off = _field_at(layout, name)
    return struct.unpack_from(fmt, buf, base + off)[0]


def _put(buf: bytearray, layout, name: str, base: int, value: int) -> None:  # noqa: ANN001
    fmt, off = _field_at(layout, name)
    struct.pack_into(fmt, buf, base + off, value)


class _PatchingTransport(InprocTransport):
    """Rewrites a submission's bytes before the validator sees them (each subclass one way)."""

    def patch(self, buf: bytearray) -> None:
        raise NotImplementedError

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        buf = bytearray(raw)
        self.patch(buf)
        return super().submit(bytes(buf))


class _SubmitFlagsBlindTransport(_PatchingTransport):
    """Clears unknown submission flag bits instead of refusing them."""

    def patch(self, buf: bytearray) -> None:
        if len(buf) >= SUBMIT.size_bytes:
            _put(buf, SUBMIT, "flags", 0, 0)


class _LdBlindTransport(_PatchingTransport):
    """Raises a leading dimension below the row length to the row length instead of refusing it."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM):
                continue
            for role in ("a", "b", "c", "d"):
                cols, ld = _get(buf, GEMM, f"{role}.cols", base), _get(buf, GEMM, f"{role}.ld_elems", base)
                if _get(buf, GEMM, f"{role}.handle", base) and ld < cols:
                    _put(buf, GEMM, f"{role}.ld_elems", base, cols)


class _IntScalarWrapTransport(_PatchingTransport):
    """Wraps integer alpha/beta outside the int32 range into it instead of refusing them."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM) or _get(buf, GEMM, "a.dtype", base) not in (
                    int(DType.I8), int(DType.U8)):
                continue
            for name in ("alpha_bits", "beta_bits"):
                v = _get(buf, GEMM, name, base)
                signed = v - 2**64 if v >= 2**63 else v
                if not -(2**31) <= signed < 2**31:
                    w = (signed + 2**31) % 2**32 - 2**31
                    _put(buf, GEMM, name, base, w % 2**64)


class _EpilogueSlotsBlindTransport(_PatchingTransport):
    """Zeroes epilogue slots past epilogue_count instead of refusing what is in them."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM):
                continue
            count = _get(buf, GEMM, "epilogue_count", base)
            for f, off in GEMM.offsets():
                if f.name.startswith("epilogue[") and int(f.name[9:f.name.index("]")]) >= count:
                    width = struct.calcsize("<" + f.fmt)
                    buf[base + off:base + off + width] = bytes(width)


class _CopyConversionBlindTransport(_PatchingTransport):
    """Makes an integer COPY's destination type match its source instead of refusing the conversion."""

    def patch(self, buf: bytearray) -> None:
        ints = (int(DType.I8), int(DType.U8), int(DType.I32))
        for base in _command_offsets(bytes(buf)):
            if _get(buf, COPY, "opcode", base) != int(Opcode.COPY):
                continue
            src, dst = _get(buf, COPY, "src.dtype", base), _get(buf, COPY, "dst.dtype", base)
            if (src in ints or dst in ints) and src != dst:
                _put(buf, COPY, "dst.dtype", base, src)


class _AllocRoundsUpTransport(InprocTransport):
    """Allocates one byte for a size of 0 or less instead of refusing it."""

    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]:
        if isinstance(size_bytes, int) and size_bytes <= 0:
            size_bytes = 1
        return super().alloc(size_bytes)


class _WaitReturnsAtDeadlineTransport(InprocTransport):
    """A wait that reaches its deadline returns as if the fence had signalled."""

    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None:
        return None


class _MemoIgnoresFreeTransport(InprocTransport):
    """Trusts bytes it has accepted before: a resubmission skips validation (and, with it, the
    check that its buffers are still alive) and goes straight to its fence."""

    def __init__(self, driver: CpuDriver) -> None:
        super().__init__(driver)
        self._seen: set[bytes] = set()

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        from ..abi import encode_submission

        if raw in self._seen:
            head = SUBMIT.struct.unpack_from(raw, 0)
            return super().submit(encode_submission([], Engine(head[1])))
        result = super().submit(raw)
        self._seen.add(raw)
        return result


@dataclass(frozen=True)
class SeededBug:
    """One seeded bug; ``caught_by`` names the check meant to catch it (see ``unit``)."""

    name: str
    description: str
    factory: Callable[[], Device]
    caught_by: str
    #: "ERROR" when ``caught_by`` names a validation rule's single-defect cases (a rule id or a word
    #: of a case id), else "" (a case group, or a word of case names, of the quick level)
    unit: str = ""


def _driver_bug(cls: type[_BuggyCpu]) -> Callable[[], Device]:
    return lambda: Device(f"seeded:{cls.__name__}", InprocTransport(cls()))


def _transport_bug(cls: type[InprocTransport]) -> Callable[[], Device]:
    return lambda: Device(f"seeded:{cls.__name__}", cls(CpuDriver()))


SEEDED_BUGS: tuple[SeededBug, ...] = (
    SeededBug("ignores-beta", "treats every GEMM as beta == 0", _driver_bug(IgnoresBeta), "scalars"),
    SeededBug("reads-c-when-beta-0", "computes beta * C even when beta == 0 (NaN in C leaks)",
              _driver_bug(ReadsCWhenBetaZero), "corner:beta0-nan-c"),
    SeededBug("f16-accumulates-in-f16", "rounds every partial sum to the half type",
              _driver_bug(AccumulatesHalfInHalf), "corner:accumulate-width"),
    SeededBug("ignores-lda", "addresses A as if it were packed (ld == cols)", _driver_bug(IgnoresLda), "gemm"),
    SeededBug("writes-past-window", "stores whole rows of D, padding included", _driver_bug(WritesPastWindow), "gemm"),
    SeededBug("transposes-wrong-operand", "applies B's transpose flag to A", _driver_bug(TransposesWrongOperand),
              "gemm"),
    SeededBug("epilogue-order-swapped", "applies post-ops last to first", _driver_bug(EpilogueOrderSwapped),
              "epilogue-chain"),
    SeededBug("bias-on-wrong-axis", "adds a column bias over rows and vice versa", _driver_bug(BiasOnWrongAxis),
              "epilogue"),
    SeededBug("int8-saturates", "clamps int32 results instead of wrapping modulo 2**32", _driver_bug(Int8Saturates),
              "corner:int-wrap"),
    SeededBug("batch-stride-0-not-broadcast", "steps through A's batch as if packed when its stride is 0",
              _driver_bug(BatchStrideZeroNotBroadcast), "batch"),
    SeededBug("accepts-reserved-fields", "ignores nonzero reserved fields instead of refusing them",
              _transport_bug(_ReservedBlindTransport), "cmd.reserved", "ERROR"),
    SeededBug("half-executes-rejected-submission", "validates and runs commands one at a time",
              _transport_bug(_HalfExecutingTransport), "third-of-three", "ERROR"),
    SeededBug("fence-before-work", "signals the fence at submit and runs the work later",
              _transport_bug(_EarlyFenceTransport), "fences"),
    SeededBug("bf16-truncates", "rounds bf16 outputs toward zero instead of to nearest even",
              _driver_bug(RoundsBf16ByTruncation), "corner:output-rounding"),
    SeededBug("alpha-0-reads-a-b", "multiplies A @ B even when alpha == 0 (NaN in A leaks)",
              _driver_bug(AlphaZeroStillReadsAB), "corner:alpha0-nan-ab"),
    SeededBug("k-0-gives-zeros", "writes zeros when k == 0 instead of beta * C", _driver_bug(KZeroGivesZeros),
              "corner:k0"),
    SeededBug("in-place-clobbers-c", "clears D before reading C when D is C", _driver_bug(InPlaceClobbersC), "gemm"),
    SeededBug("gelu-erf-is-tanh", "uses the tanh approximation for the exact GELU", _driver_bug(GeluErfIsTanh),
              "epilogue"),
    SeededBug("drops-last-batch-entry", "an off-by-one in the batch loop", _driver_bug(DropsLastBatchEntry), "batch"),
    SeededBug("int-sums-in-f32-unchunked", "sums integer products in f32 past 2**24", _driver_bug(
        IntSumsInF32WithoutChunks), "corner:int-wrap"),
    SeededBug("copy-truncates", "COPY narrows floats by chopping mantissa bits", _driver_bug(CopyTruncates),
              "copy:rounding"),
    # exact judgement: rounding of ties
    SeededBug("f16-rounds-ties-away", "rounds f16 outputs half away from zero", _driver_bug(F16RoundsTiesAway),
              "exact"),
    SeededBug("bf16-rounds-ties-away", "rounds bf16 outputs half away from zero", _driver_bug(Bf16RoundsTiesAway),
              "exact"),
    SeededBug("epilogue-in-output-type", "runs the epilogue on the 16-bit output, rounding after every step",
              _driver_bug(EpilogueInOutputType), "exact"),
    SeededBug("beta-c-after-rounding", "rounds alpha * A @ B to the 16-bit output, then adds beta * C",
              _driver_bug(BetaCAddedAfterRounding), "exact"),
    # integer scalars float32 cannot hold
    SeededBug("int-alpha-through-f32", "converts an integer alpha through float32", _driver_bug(IntAlphaThroughF32),
              "int-scalars"),
    SeededBug("int-clamp-through-f32", "converts int32 clamp bounds through float32",
              _driver_bug(IntClampBoundsThroughF32), "int-scalars"),
    SeededBug("int-scale-through-f32", "converts an int32 scale through float32", _driver_bug(IntScaleThroughF32),
              "int-scalars"),
    SeededBug("int-beta-c-in-f64", "computes integer beta * C in float64 (inexact past 2**53)",
              _driver_bug(IntBetaCInFloat64), "int-scalars"),
    SeededBug("post-params-cached", "caches kernels per geometry and post-op kinds, ignoring their parameters",
              _driver_bug(ParamsCachedPerGeometry), "post-params"),
    # NaN and Inf through every step
    SeededBug("relu-drops-nan", "relu as fmax(x, 0): NaN becomes 0", _driver_bug(ReluDropsNaN), "nonfinite"),
    SeededBug("clamp-drops-nan", "clamp as fmin/fmax: NaN becomes lo", _driver_bug(ClampDropsNaN), "nonfinite"),
    SeededBug("in-place-beta-0-reads-c", "in place with beta == 0 adds 0 * D (NaN in D leaks)",
              _driver_bug(InPlaceScalesDByBeta), "corner:beta0-nan-c"),
    SeededBug("absent-c-reads-d", "with C absent and an epilogue, accumulates onto D's old contents",
              _driver_bug(AbsentCReadsD), "exact"),
    SeededBug("k-0-beta-0-reads-c", "k == 0 and beta == 0 still computes 0 * C", _driver_bug(KZeroReadsCWhenBetaZero),
              "corner:k0"),
    # every layout
    SeededBug("interleaved-d-scrambled", "writes a row-interleaved batched D as if packed",
              _driver_bug(InterleavedDScrambled), "layout"),
    SeededBug("broadcast-c-not-broadcast", "reads C's batch as if packed when its batch stride is 0",
              _driver_bug(BroadcastCNotBroadcast), "batch"),
    SeededBug("epilogue-operand-entry-0", "uses batch entry 0 of a per-entry bias or residual for all",
              _driver_bug(EpilogueOperandFirstEntryOnly), "layout"),
    SeededBug("broadcast-b-fold-wrong", "with B broadcast, multiplies every entry by A's entry 0",
              _driver_bug(BroadcastBFoldWrong), "batch"),
    SeededBug("batch-fold-scrambled", "folds a batch with B broadcast into m, reading A's rows in the wrong order",
              _driver_bug(BatchFoldScrambled), "layout"),
    SeededBug("alloc-not-zeroed", "hands out new buffers without clearing them", _driver_bug(AllocNotZeroed),
              "memory"),
    # sizes across thresholds
    SeededBug("large-f16-output-last-column", "a two-thread conversion of a large 16-bit output misses a column",
              _driver_bug(LargeF16OutputDropsLastColumn), "size"),
    SeededBug("large-gemm-partial-tile", "above 2**21 multiply-adds, rows past the last 64-row tile are skipped",
              _driver_bug(LargeGemmDropsPartialTile), "size"),
    SeededBug("large-gemm-ignores-beta", "above the threading threshold, C is added with beta 1",
              _driver_bug(LargeGemmIgnoresBeta), "size"),
    SeededBug("int-chunk-too-big", "exact-int8 k chunks twice the safe size", _driver_bug(IntChunkTwiceTooBig),
              "size:int-chunk"),
    SeededBug("int-drops-last-chunk", "skips the last partial k chunk of exact int8", _driver_bug(IntDropsLastChunk),
              "size:int-chunk"),
    SeededBug("batch-loop-reuses-entry", "the last of large batch entries uses the previous entry's A",
              _driver_bug(BatchLoopReusesEntry), "size"),
    # COPY
    SeededBug("copy-f64-through-f32", "COPY f64 -> f16/bf16 rounds twice, through f32", _driver_bug(CopyF64ThroughF32),
              "copy:double-rounding"),
    SeededBug("copy-flushes-subnormals", "COPY flushes subnormal results to zero", _driver_bug(CopyFlushesSubnormals),
              "copy:specials"),
    SeededBug("copy-overflow-saturates", "COPY overflow gives the largest finite value, not inf",
              _driver_bug(CopyOverflowSaturates), "copy:overflow"),
    SeededBug("large-copy-last-row", "a COPY of 2**20 elements or more misses its last row",
              _driver_bug(LargeCopyMissesLastRow), "copy:large"),
    # every entry point
    SeededBug("bind-ignores-alpha", "bind_gemm binds alpha = 1", _driver_bug(BindIgnoresAlpha), "entry:bind_gemm"),
    SeededBug("bind-computes-once", "bind_gemm computes when bound and replays that answer",
              _driver_bug(BindComputesOnce), "entry:bind_gemm"),
    SeededBug("fresh-ignores-alpha", "the fresh kernel ignores alpha", _driver_bug(FreshIgnoresAlpha),
              "entry:frontend"),
    SeededBug("fresh-forgets-transpose-back", "the fresh kernel returns D^T where D is square",
              _driver_bug(FreshForgetsTransposeBack), "entry:prepare_gemm_fresh"),
    SeededBug("kernel-keeps-first-b", "a prepared kernel keeps the first B it was called with",
              _driver_bug(KernelKeepsFirstB), "entry:prepare_gemm"),
    SeededBug("gemm-entry-drops-epilogue", "the plain gemm entry point drops the epilogue",
              _driver_bug(GemmEntryDropsEpilogue), "entry:gemm"),
    SeededBug("memo-ignores-free", "replays bytes it accepted before without validating them again",
              _transport_bug(_MemoIgnoresFreeTransport), "resubmitted-after-free", "ERROR"),
    # categories quick must reach
    SeededBug("bias-always-first", "moves bias post-ops to the front of the epilogue", _driver_bug(BiasAlwaysFirst),
              "epilogue-chain"),
    SeededBug("add-f16-operand-as-bf16", "rounds an f16 residual to bf16 before adding it",
              _driver_bug(AddOperandInOutputTypeMisread), "exact"),
    SeededBug("square-a-transpose-guessed", "infers A's transpose from its shape (wrong when m == k)",
              _driver_bug(SquareTransposeGuessedFromShape), "shapes:square"),
    SeededBug("square-b-transpose-guessed", "infers B's transpose from its shape (wrong when k == n)",
              _driver_bug(SquareBTransposeGuessedFromShape), "shapes:square"),
    SeededBug("alpha-scales-c", "computes alpha * (A @ B + beta * C)", _driver_bug(AlphaScalesC), "scalars"),
    SeededBug("clamp-bounds-swapped", "passes clamp's lo and hi in the wrong order", _driver_bug(ClampBoundsSwapped),
              "epilogue"),
    SeededBug("scale-squared", "applies scale(s) as s * s", _driver_bug(ScaleTwice), "epilogue"),
    SeededBug("bias-m-ignored", "drops bias over rows", _driver_bug(BiasMIgnored), "epilogue"),
    SeededBug("gelu-tanh-is-erf", "uses the exact GELU for the tanh approximation", _driver_bug(GeluTanhIsErf),
              "epilogue"),
    SeededBug("uint8-read-as-int8", "reads a uint8 B as int8", _driver_bug(Uint8ReadAsInt8), "gemm"),
    SeededBug("f32-output-through-f16", "rounds f16 x f16 -> f32 results to f16", _driver_bug(F32OutputRoundedToF16),
              "gemm"),
    SeededBug("int-relu-through-f32", "int32 relu through float32", _driver_bug(IntReluThroughF32), "int-scalars"),
    SeededBug("in-place-batch-negates-beta", "in place with a batch, beta's sign flips",
              _driver_bug(InPlaceNegatesBeta),
              "epilogue-chain"),
    # one per rule family of the validator (each a transport that lets one kind of defect through)
    SeededBug("submit-flags-ignored", "clears unknown submission flags instead of refusing them",
              _transport_bug(_SubmitFlagsBlindTransport), "submit.flags", "ERROR"),
    SeededBug("operand-ld-raised", "raises a too-small leading dimension instead of refusing it",
              _transport_bug(_LdBlindTransport), "operand.ld", "ERROR"),
    SeededBug("gemm-int-scalar-wrapped", "wraps integer alpha/beta into int32 instead of refusing them",
              _transport_bug(_IntScalarWrapTransport), "gemm.int_scalar", "ERROR"),
    SeededBug("epilogue-slots-zeroed", "zeroes epilogue slots past epilogue_count instead of refusing them",
              _transport_bug(_EpilogueSlotsBlindTransport), "epilogue.count", "ERROR"),
    SeededBug("copy-conversion-coerced", "makes an integer COPY's dst type match its src",
              _transport_bug(_CopyConversionBlindTransport), "copy.conversion", "ERROR"),
    SeededBug("memory-size-rounded-up", "allocates 1 byte for a size of 0 or less", _transport_bug(
        _AllocRoundsUpTransport), "memory.size", "ERROR"),
    SeededBug("fence-wait-never-times-out", "a wait past its deadline returns as if signalled",
              _transport_bug(_WaitReturnsAtDeadlineTransport), "fence.timeout", "ERROR"),
)
