"""A catalogue of seeded-bug devices: the proof that the suite catches real bugs.

Each entry is the ``cpu`` driver (or the in-process transport in front of it) with
exactly one realistic bug, of the kinds BLAS libraries, accelerator drivers and
runtimes have shipped. The project's tests assert that ``--quick`` fails every one
of them while it passes ``ref`` and ``cpu``. Driver authors can read these as a list
of what the suite is known to catch.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..abi import COMMAND_BYTES, GEMM, SUBMIT, CopyOp, GemmOp
from ..drivers.cpu import CpuDriver
from ..runtime import Device
from ..spec import COMBO_BY_DTYPES, DTYPES, DType, Engine, PostOpKind
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


@dataclass(frozen=True)
class SeededBug:
    """One seeded bug; ``caught_by`` names the case group (or a word of the case name) meant to catch it."""

    name: str
    description: str
    factory: Callable[[], Device]
    caught_by: str


def _driver_bug(cls: type[_BuggyCpu]) -> Callable[[], Device]:
    return lambda: Device(f"seeded:{cls.__name__}", InprocTransport(cls()))


def _transport_bug(cls: type[InprocTransport]) -> Callable[[], Device]:
    return lambda: Device(f"seeded:{cls.__name__}", cls(CpuDriver()))


SEEDED_BUGS: tuple[SeededBug, ...] = (
    SeededBug("ignores-beta", "treats every GEMM as beta == 0", _driver_bug(IgnoresBeta), "scalars"),
    SeededBug("reads-c-when-beta-0", "computes beta * C even when beta == 0 (NaN in C leaks)",
              _driver_bug(ReadsCWhenBetaZero), "corner:beta0-nan-c"),
    SeededBug("f16-accumulates-in-f16", "rounds every partial sum to the half type", _driver_bug(AccumulatesHalfInHalf), "corner:accumulate-width"),
    SeededBug("ignores-lda", "addresses A as if it were packed (ld == cols)", _driver_bug(IgnoresLda), "gemm"),
    SeededBug("writes-past-window", "stores whole rows of D, padding included", _driver_bug(WritesPastWindow), "gemm"),
    SeededBug("transposes-wrong-operand", "applies B's transpose flag to A", _driver_bug(TransposesWrongOperand), "gemm"),
    SeededBug("epilogue-order-swapped", "applies post-ops last to first", _driver_bug(EpilogueOrderSwapped), "epilogue-chain"),
    SeededBug("bias-on-wrong-axis", "adds a column bias over rows and vice versa", _driver_bug(BiasOnWrongAxis), "epilogue"),
    SeededBug("int8-saturates", "clamps int32 results instead of wrapping modulo 2**32", _driver_bug(Int8Saturates), "corner:int-wrap"),
    SeededBug("batch-stride-0-not-broadcast", "steps through A's batch as if packed when its stride is 0",
              _driver_bug(BatchStrideZeroNotBroadcast), "batch"),
    SeededBug("accepts-reserved-fields", "ignores nonzero reserved fields instead of refusing them",
              _transport_bug(_ReservedBlindTransport), "cmd.reserved"),
    SeededBug("half-executes-rejected-submission", "validates and runs commands one at a time",
              _transport_bug(_HalfExecutingTransport), "third-of-three"),
    SeededBug("fence-before-work", "signals the fence at submit and runs the work later",
              _transport_bug(_EarlyFenceTransport), "fences"),
    SeededBug("bf16-truncates", "rounds bf16 outputs toward zero instead of to nearest even",
              _driver_bug(RoundsBf16ByTruncation), "corner:output-rounding"),
    SeededBug("alpha-0-reads-a-b", "multiplies A @ B even when alpha == 0 (NaN in A leaks)",
              _driver_bug(AlphaZeroStillReadsAB), "corner:alpha0-nan-ab"),
    SeededBug("k-0-gives-zeros", "writes zeros when k == 0 instead of beta * C", _driver_bug(KZeroGivesZeros), "corner:k0"),
    SeededBug("in-place-clobbers-c", "clears D before reading C when D is C", _driver_bug(InPlaceClobbersC), "gemm"),
    SeededBug("gelu-erf-is-tanh", "uses the tanh approximation for the exact GELU", _driver_bug(GeluErfIsTanh), "epilogue"),
    SeededBug("drops-last-batch-entry", "an off-by-one in the batch loop", _driver_bug(DropsLastBatchEntry), "batch"),
    SeededBug("int-sums-in-f32-unchunked", "sums integer products in f32 past 2**24", _driver_bug(
        IntSumsInF32WithoutChunks), "corner:int-wrap"),
    SeededBug("copy-truncates", "COPY narrows floats by chopping mantissa bits", _driver_bug(CopyTruncates), "copy:rounding"),
)
