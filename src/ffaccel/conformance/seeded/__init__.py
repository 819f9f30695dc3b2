"""A catalogue of seeded-bug devices: the proof that the suite catches real bugs.

Each entry is the ``cpu`` driver (or the in-process transport in front of it) with
exactly one realistic bug, of the kinds BLAS libraries, accelerator drivers and
runtimes have shipped. There is at least one per gap the suite once had (see
``docs/conformance.md``) and one per validation rule family. The project's tests assert that
``--quick`` fails every one of them in the check named by ``caught_by`` while it passes
``ref``, ``cpu`` and ``torch:cpu``, and that a bug stays caught on a partial device (the same
bug behind :func:`ffaccel.drivers.restricted`, see :meth:`BugDevice.restricted`). Driver
authors can read these as a list of what the suite is known to catch.

Layout: :mod:`.drivers` holds the driver mutants, :mod:`.transports` the transport mutants,
and this module the table that names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...drivers.base import Driver
from ...drivers.cpu import CpuDriver
from ...drivers.partial import restricted
from ...runtime import Device
from ...transports import InprocTransport
from .drivers import *  # noqa: F403 - the mutants the table names
from .drivers import _BuggyCpu
from .transports import *  # noqa: F403
from .transports import (
    _AlignmentDeclaredNotCheckedTransport,
    _AllocRoundsUpTransport,
    _CopyConversionBlindTransport,
    _EarlyFenceTransport,
    _EpilogueSlotsBlindTransport,
    _FenceOnOtherTimelineTransport,
    _HalfExecutingTransport,
    _IntScalarWrapTransport,
    _LastMemoKeptAfterFreeTransport,
    _LdBlindTransport,
    _ListCapturesEpilogueTransport,
    _MemoIgnoresFreeTransport,
    _ReservedBlindTransport,
    _SubmitFlagsBlindTransport,
    _WaitReturnsAtDeadlineTransport,
)


@dataclass(frozen=True)
class BugDevice:
    """Opens a seeded-bug device: ``transport(driver())``, called with no arguments.

    ``restricted(**fields)`` gives the same bug on a partial device: the driver narrowed by
    :func:`ffaccel.drivers.restricted` (fields ``combos``, ``copies``, ``post_ops``, ``engines``).
    """

    driver: Callable[[], Driver]
    transport: type[InprocTransport] = InprocTransport
    fields: tuple[tuple[str, Any], ...] = ()

    def __call__(self) -> Device:
        drv = self.driver()
        if self.fields:
            drv = restricted(drv, **dict(self.fields))
        name = self.driver.__name__ if self.transport is InprocTransport else self.transport.__name__
        return Device(f"seeded:{name}", self.transport(drv))

    def restricted(self, **fields: Any) -> "BugDevice":
        return BugDevice(self.driver, self.transport, tuple(sorted(fields.items())))


@dataclass(frozen=True)
class SeededBug:
    """One seeded bug; ``caught_by`` names the check meant to catch it (see ``unit``)."""

    name: str
    description: str
    factory: BugDevice
    caught_by: str
    #: "ERROR" when ``caught_by`` names a validation rule's single-defect cases (a rule id or a word
    #: of a case id), else "" (a case group, or a word of case names, of the quick level)
    unit: str = ""


def _driver_bug(cls: type[_BuggyCpu]) -> BugDevice:
    return BugDevice(cls)


def _transport_bug(cls: type[InprocTransport]) -> BugDevice:
    return BugDevice(CpuDriver, cls)


def seeded_bug(name: str) -> SeededBug:
    """The entry of :data:`SEEDED_BUGS` called ``name``."""
    for bug in SEEDED_BUGS:
        if bug.name == name:
            return bug
    raise KeyError(name)


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
    # issue 24: one per new kind of case, each caught by that kind only
    SeededBug("fused-epilogue-drops-last", "drops the last post-op from the size where the epilogue is fused on",
              _driver_bug(FusedEpilogueDropsLastPostOp), "band:"),
    SeededBug("free-keeps-last-memo", "keeps a one-entry memo of its last submission across free()",
              _transport_bug(_LastMemoKeptAfterFreeTransport), "resubmitted-after-free", "ERROR"),
    SeededBug("one-buffer-copy-backwards", "a COPY within one buffer, dst after src, takes the rows in reverse",
              _driver_bug(OneBufferCopyBackwards), "copy:one-buffer"),
    SeededBug("list-captures-epilogue", "a command list computes with its epilogue operands' values at RECORD",
              _transport_bug(_ListCapturesEpilogueTransport), "entry:list"),
    SeededBug("fence-on-other-timeline", "reads a fence from the other engine's timeline",
              _transport_bug(_FenceOnOtherTimelineTransport), "fences:per-engine"),
    SeededBug("read-returns-view", "device memory reads return a view of device memory, not a copy",
              _driver_bug(ReadReturnsView), "memory:reads"),
    SeededBug("fused-scale-twice", "applies a scale twice where it is fused into the GEMM (the fused-epilogue size)",
              _driver_bug(FusedScaleTwice), "band:"),
    SeededBug("widened-rounds-before-tail", "rounds a 16-bit D before the post-ops after a clamp, then again",
              _driver_bug(WidenedRoundsBeforeTail), "band:"),
    SeededBug("fused-clamp-drops-nan", "a leading clamp at the fused-epilogue size turns NaN into its lower bound",
              _driver_bug(FusedClampDropsNaN), "band:"),
    SeededBug("interleaved-d-drops-bias", "drops bias and residual when D's rows are interleaved at the fused size",
              _driver_bug(InterleavedDDropsBias), "band:"),
    SeededBug("alignment-declared-not-checked", "declares 2-element alignment but accepts misaligned operands",
              _transport_bug(_AlignmentDeclaredNotCheckedTransport), "operand.alignment", "ERROR"),
    SeededBug("fresh-kernel-reuses-output", "the fresh kernel hands back one output array per geometry, "
              "so a front-end result changes with the next call", _driver_bug(FreshKernelReusesOutput),
              "memory:reads"),
    SeededBug("fresh-contiguous-keeps-first-bias", "the fresh kernel's contiguous(a, b, bias) form keeps the "
              "first bias vector it was called with", _driver_bug(FreshContiguousKeepsFirstBias),
              "entry:fresh.contiguous"),
    SeededBug("family-kernel-keeps-its-sizes", "kernel_family covers a batched class, but its kernel reads "
              "the k it was prepared for (a KV cache one row longer loses that row)",
              _driver_bug(FamilyKernelKeepsItsSizes), "entry:kernel_family"),
    SeededBug("group-reads-first-a", "bind_gemm_group runs every GEMM of a group with the first one's A (a "
              "shared weight assumed)", _driver_bug(GroupReadsFirstA), "entry:bind_gemm_group"),
    SeededBug("threaded-linear-drops-bias", "a linear layer (the bias alone, alpha 1, no C) past the threading "
              "size forgets the bias after NumPy's product", _driver_bug(ThreadedLinearDropsBias), "band:"),
    SeededBug("skinny-ignores-alpha", "a one-row (or one-column) GEMM on compact operands runs with "
              "alpha = 1 (?gemv, NumPy's matmul, an m = 1 kernel)", _driver_bug(SkinnyIgnoresAlpha), "band:"),
    SeededBug("fresh-skinny-ignores-alpha", "the fresh kernel of a bare skinny GEMM (?gemv) is built for "
              "alpha = 1", _driver_bug(FreshSkinnyIgnoresAlpha), "entry:prepare_gemm_fresh"),
)
