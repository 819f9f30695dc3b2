"""Conformance cases, generated from the spec's tables (never hand-listed per driver).

Every declared dtype combination is crossed with transposes, shapes, alpha/beta,
padded leading dimensions, batch strides (0 included), every epilogue post-op and
chains of them, and in-place D == C; the BLAS corner cases are named explicitly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from ..abi import DeviceCaps
from ..spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, POST_OPS, DType, GemmCombo, PostOpKind

#: Shapes the suite walks through (0, 1, primes, powers of two and their neighbours).
QUICK_SIZES = (0, 1, 2, 3, 5, 9, 17, 64, 129)
FULL_LARGE = 384
FLOAT_SCALARS = (0.0, 1.0, -1.0, 0.7, 1.3)
INT_SCALARS = (0, 1, -1, 2, 3)

LEVELS = ("quick", "full")


@dataclass(frozen=True)
class PostOpCase:
    kind: PostOpKind
    param0: float | int = 0
    param1: float | int = 0
    operand_in_acc: bool = True  # bias/E in the accumulate dtype (else D's dtype)


@dataclass(frozen=True)
class GemmCase:
    """One GEMM to run: geometry, scalars, layout of every operand, and how to fill them."""

    group: str
    combo: GemmCombo
    m: int
    n: int
    k: int
    batch: int = 1
    trans_a: bool = False
    trans_b: bool = False
    alpha: float | int = 1.0
    beta: float | int = 0.0
    c_mode: str = "separate"  # "separate" | "in_place" | "absent"
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # extra ld elements for A, B, C, D
    broadcast: tuple[bool, bool, bool] = (False, False, False)  # batch stride 0 for A, B, C
    epilogue: tuple[PostOpCase, ...] = ()
    fill: str = "random"  # or a named corner-case fill, see runner.FILLS
    seed: int = 0

    @property
    def name(self) -> str:
        t = ("T" if self.trans_a else "N") + ("T" if self.trans_b else "N")
        epi = "+".join(POST_OPS[p.kind].name.split("(")[0] for p in self.epilogue)
        bits = [f"{self.group}", self.combo.name, f"{t} {self.m}x{self.n}x{self.k}"]
        if self.batch != 1:
            bits.append(f"batch={self.batch} bcast={''.join('01'[b] for b in self.broadcast)}")
        bits.append(f"alpha={self.alpha} beta={self.beta} c={self.c_mode}")
        if any(self.pads):
            bits.append(f"pads={self.pads}")
        if epi:
            bits.append(f"epilogue={epi}")
        if self.fill != "random":
            bits.append(f"fill={self.fill}")
        return " ".join(bits)


@dataclass(frozen=True)
class CopyCase:
    group: str
    src: DType
    dst: DType
    rows: int
    cols: int
    pads: tuple[int, int] = (0, 0)
    fill: str = "random"
    seed: int = 0

    @property
    def name(self) -> str:
        return (f"{self.group} {DTYPES[self.src].name}->{DTYPES[self.dst].name} {self.rows}x{self.cols} "
                f"pads={self.pads} fill={self.fill}")


def _scalars(combo: GemmCombo) -> tuple:
    return INT_SCALARS if combo.is_int else FLOAT_SCALARS


def _post_op_variants(combo: GemmCombo) -> list[PostOpCase]:
    out = []
    for kind, spec in POST_OPS.items():
        if combo.is_int and not spec.int_ok:
            continue
        p0, p1 = 0, 0
        if kind == PostOpKind.CLAMP:
            p0, p1 = (-40, 50) if combo.is_int else (-0.5, 0.75)
        elif kind == PostOpKind.SCALE:
            p0 = 3 if combo.is_int else -1.5
        if spec.has_operand:
            out.append(PostOpCase(kind, p0, p1, True))
            if combo.d != combo.acc:
                out.append(PostOpCase(kind, p0, p1, False))
        else:
            out.append(PostOpCase(kind, p0, p1))
    return out


@dataclass
class _Seq:
    """Deterministic seeds and round-robin choices, so a level always runs the same cases."""

    n: int = 0
    picks: dict[str, int] = field(default_factory=dict)

    def seed(self) -> int:
        self.n += 1
        return self.n

    def pick(self, name: str, options: tuple) -> object:
        i = self.picks.get(name, 0)
        self.picks[name] = i + 1
        return options[i % len(options)]


def gemm_cases(caps: DeviceCaps, level: str = "quick") -> list[GemmCase]:
    """All GEMM cases of a level for the combinations a device declares."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    seq = _Seq()
    cases: list[GemmCase] = []
    combos = [c for c in GEMM_COMBOS if c in caps.combos]
    for combo in combos:
        sc = _scalars(combo)
        ab_pairs = list(itertools.product(sc, sc))
        trans = list(itertools.product((False, True), repeat=2))
        if level == "quick":
            # every size appears as m, as n and as k; every transpose pair; alpha/beta round-robin
            shapes = [(s, QUICK_SIZES[(i + 3) % 9], QUICK_SIZES[(i + 5) % 9]) for i, s in enumerate(QUICK_SIZES)]
            shapes = [(m, n, k) for m, n, k in shapes if m * n * k <= 17 * 64 * 129]
        else:
            shapes = [(m, n, k) for m in QUICK_SIZES for n in QUICK_SIZES for k in QUICK_SIZES
                      if m * n * k <= 64 * 129 * 129 and (m <= 17 or n <= 17 or k <= 17)]
            shapes.append((FULL_LARGE, FULL_LARGE, FULL_LARGE))
        for m, n, k in shapes:
            for ta, tb in trans:
                alpha, beta = seq.pick(f"ab{combo}", tuple(ab_pairs))  # type: ignore[misc]
                pads = seq.pick("pads", ((0, 0, 0, 0), (1, 3, 2, 1), (3, 0, 1, 2)))
                c_mode = seq.pick("c", ("separate", "separate", "in_place"))
                cases.append(GemmCase("gemm", combo, m, n, k, 1, ta, tb, alpha, beta, c_mode, pads,  # type: ignore
                                      seed=seq.seed()))
        # every alpha/beta pair once on a small padded shape (in place and separate)
        for alpha, beta in ab_pairs:
            cases.append(GemmCase("scalars", combo, 5, 3, 9, 1, False, True, alpha, beta,
                                  seq.pick("c2", ("separate", "in_place")), (1, 2, 1, 3), seed=seq.seed()))
        # batches: strides, broadcasting (batch stride 0) of each input
        for bcast in ((False, False, False), (True, False, False), (False, True, False), (False, False, True),
                      (True, True, True)):
            cases.append(GemmCase("batch", combo, 9, 5, 17, 3, False, False, sc[4], sc[3], "separate",
                                  (1, 0, 2, 1), bcast, seed=seq.seed()))
        # every post-op alone, then chains (up to the 4-slot limit)
        variants = _post_op_variants(combo)
        for p in variants:
            cases.append(GemmCase("epilogue", combo, 9, 17, 5, 1, False, False, sc[3], sc[1], "separate",
                                  (0, 1, 0, 2), epilogue=(p,), seed=seq.seed()))
        chains = [tuple(variants[(i + j) % len(variants)] for j in range(4)) for i in range(0, len(variants), 2)]
        chains.append(tuple(reversed(variants[:4])))
        for chain in chains if level == "full" else chains[:3]:
            cases.append(GemmCase("epilogue-chain", combo, 17, 9, 64, 2, True, False, sc[4], sc[1], "in_place",
                                  (1, 1, 0, 0), (False, True, False), epilogue=chain, seed=seq.seed()))
        cases.extend(_corner_cases(combo, seq))
    return cases


def _corner_cases(combo: GemmCombo, seq: _Seq) -> list[GemmCase]:
    sc = _scalars(combo)
    out = [
        # beta == 0: C full of NaN/Inf (and D pre-filled with NaN) must not leak
        GemmCase("corner:beta0-nan-c", combo, 9, 5, 3, 1, alpha=sc[1], beta=sc[0], c_mode="separate",
                 fill="nan_c", seed=seq.seed()),
        # alpha == 0: A and B full of NaN/Inf must not be read
        GemmCase("corner:alpha0-nan-ab", combo, 5, 9, 17, 1, alpha=sc[0], beta=sc[3], c_mode="separate",
                 fill="nan_ab", seed=seq.seed()),
        # k == 0: D = beta * C
        GemmCase("corner:k0", combo, 5, 9, 0, 2, alpha=sc[1], beta=sc[4], c_mode="separate", seed=seq.seed()),
        GemmCase("corner:empty", combo, 0, 9, 5, 1, seed=seq.seed()),
    ]
    if combo.acc == DType.F32 and combo.a in (DType.F16, DType.BF16):
        out.append(GemmCase("corner:accumulate-width", combo, 2, 3, 129, 1, alpha=1.0, beta=0.0,
                            fill="acc_width", seed=seq.seed()))
    if combo.is_int:
        out.append(GemmCase("corner:int-wrap", combo, 3, 2, 3000, 1, alpha=2**20 + 1, beta=-(2**30),
                            fill="int_extreme", seed=seq.seed()))
        out.append(GemmCase("corner:int-epilogue-wrap", combo, 3, 2, 64, 1, alpha=2**24, beta=0,
                            fill="int_extreme", epilogue=(PostOpCase(PostOpKind.SCALE, 2**20 + 3),
                                                          PostOpCase(PostOpKind.RELU)), seed=seq.seed()))
    if DTYPES[combo.d].is_float and combo.d != DType.F64:
        out.append(GemmCase("corner:output-rounding", combo, 4, 8, 2, 1, alpha=1.0, beta=0.0, fill="sub_ulp",
                            seed=seq.seed()))
        out.append(GemmCase("corner:overflow-to-inf", combo, 3, 3, 4, 1, alpha=1.0, beta=0.0, fill="huge",
                            seed=seq.seed()))
    return out


def copy_cases(caps: DeviceCaps, level: str = "quick") -> list[CopyCase]:
    seq = _Seq()
    cases = []
    shapes = ((1, 1), (5, 9), (17, 3), (0, 4)) if level == "quick" else ((1, 1), (5, 9), (17, 3), (0, 4), (64, 129))
    for src, dst in COPY_CONVERSIONS:
        if (src, dst) not in caps.copies:
            continue
        for rows, cols in shapes:
            cases.append(CopyCase("copy", src, dst, rows, cols, seq.pick("cp", ((0, 0), (2, 1), (0, 3))),
                                  seed=seq.seed()))
        if DTYPES[src].is_float and DTYPES[dst].is_float and DTYPES[dst].precision_bits < DTYPES[src].precision_bits:
            cases.append(CopyCase("copy:rounding", src, dst, 4, 8, (1, 1), fill="ties", seed=seq.seed()))
            cases.append(CopyCase("copy:overflow", src, dst, 2, 3, (0, 0), fill="huge", seed=seq.seed()))
    return cases
