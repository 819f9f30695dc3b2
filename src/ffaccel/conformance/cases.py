"""Conformance cases, generated from the spec's tables (never hand-listed per driver).

Every declared dtype combination is crossed with transposes, shapes, alpha/beta,
padded leading dimensions, batch strides (0 included), every epilogue post-op and
chains of them, and in-place D == C; the BLAS corner cases are named explicitly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from ..abi import DeviceCaps
from ..spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, POST_OPS, DType, GemmCombo, PostOpKind

#: Shapes the suite walks through (0, 1, primes, powers of two and their neighbours).
QUICK_SIZES = (0, 1, 2, 3, 5, 9, 17, 64, 129)
FULL_LARGE = 384
FLOAT_SCALARS = (0.0, 1.0, -1.0, 0.7, 1.3)
#: corner:alpha-scales-product, per input dtype: (a value of A, alpha) such that alpha times the
#: value overflows the accumulate type while alpha * (A @ B) does not (B is 0 where A holds it)
ALPHA_PAST_OPERAND = {DType.F64: (2.0**600, 2.0**426), DType.F32: (2.0**100, 2.0**30),
                      DType.BF16: (2.0**100, 2.0**30), DType.F16: (2.0**14, 2.0**116)}
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
    fill: str = "random"  # or a named corner-case fill, see runner._special
    seed: int = 0
    #: row-interleaved batches ([rows, batch, cols]: batch stride = cols, ld = batch * cols) for A, B, C, D
    interleave: tuple[bool, bool, bool, bool] = (False, False, False, False)
    #: batch stride 0 for the epilogue operands (None: bias broadcast, add per batch entry)
    epi_broadcast: bool | None = None
    #: extra ld elements of an ``add`` operand: 1 (padded rows) everywhere but the size-band cases,
    #: whose operands are dense as a fused kernel takes them (oneDNN refuses a padded binary operand,
    #: and the cpu driver then runs the whole GEMM on BLAS: the fused path would go unchecked)
    epi_pad: int = 1
    #: judge D bit for bit against the golden model (inputs chosen so the exact answer is known)
    exact: bool = False
    #: batch entries back to back (batch stride rows * ld, no gap): what lets a driver fold a batch into m
    gapless: bool = False

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
        if any(self.interleave):
            bits.append(f"interleaved={''.join('01'[b] for b in self.interleave)}")
        if self.gapless:
            bits.append("gapless")
        if epi:
            params = ",".join(f"{p.param0}:{p.param1}" for p in self.epilogue
                              if p.kind in (PostOpKind.CLAMP, PostOpKind.SCALE))
            where = "".join("a" if p.operand_in_acc else "d" for p in self.epilogue
                            if POST_OPS[p.kind].has_operand)
            bits.append(f"epilogue={epi}" + (f"({params})" if params else "") + (f" operands={where}" if where else "")
                        + ("" if self.epi_broadcast is None else f" epi_bcast={int(self.epi_broadcast)}"))
        if self.fill != "random":
            bits.append(f"fill={self.fill}")
        if self.exact:
            bits.append("exact")
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
    #: "" (a buffer each), or source and destination side by side in one buffer: "dst-after" / "dst-before"
    one_buffer: str = ""

    @property
    def name(self) -> str:
        return (f"{self.group} {DTYPES[self.src].name}->{DTYPES[self.dst].name} {self.rows}x{self.cols} "
                f"pads={self.pads} fill={self.fill}" + (f" {self.one_buffer}" if self.one_buffer else ""))


def _scalars(combo: GemmCombo) -> tuple:
    return INT_SCALARS if combo.is_int else FLOAT_SCALARS


def _post_op_variants(combo: GemmCombo, clamp: tuple[float, float] = (-0.5, 0.75),
                      scale: float = -1.5) -> list[PostOpCase]:
    """Every post-op kind the combination allows, once per operand dtype (float clamp and scale
    parameters as given; integer ones clamp(-40, 50) and scale(3))."""
    out = []
    for kind, spec in POST_OPS.items():
        if combo.is_int and not spec.int_ok:
            continue
        p0, p1 = 0, 0
        if kind == PostOpKind.CLAMP:
            p0, p1 = (-40, 50) if combo.is_int else clamp
        elif kind == PostOpKind.SCALE:
            p0 = 3 if combo.is_int else scale
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
        # quick: the first chains (bias first) and the reversed one (bias last)
        for chain in chains if level == "full" else chains[:3] + chains[-1:]:
            cases.append(GemmCase("epilogue-chain", combo, 17, 9, 64, 2, True, False, sc[4], sc[1], "in_place",
                                  (1, 1, 0, 0), (False, True, False), epilogue=chain, seed=seq.seed()))
        cases.extend(_corner_cases(combo, seq))
        cases.extend(_square_cases(combo, seq))
        cases.extend(_exact_cases(combo, seq, level))
        cases.extend(_nonfinite_cases(combo, seq))
        cases.extend(_layout_cases(combo, seq, level))
        cases.extend(_size_cases(combo, seq, level))
        cases.extend(_param_cases(combo, seq, level))
    return declared_only(cases, caps)


def declared_epilogue(epilogue: tuple[PostOpCase, ...], caps: DeviceCaps) -> tuple[PostOpCase, ...]:
    """The post-ops of ``epilogue`` that ``caps`` declares, in order, at most the declared count."""
    kept = tuple(p for p in epilogue if p.kind in caps.post_ops)
    return kept[:caps.limits.max_epilogue_ops]


def declared_only(cases: list[GemmCase], caps: DeviceCaps) -> list[GemmCase]:
    """The cases a device declaring ``caps`` must run: each epilogue narrowed to the declared
    post-ops (a chain keeps what the device has, in its order), a case whose whole epilogue was
    undeclared dropped (its GEMM without one is run elsewhere), and every case within the declared
    limits. What is not declared is checked as refused (``engines.check_info``), never run."""
    lim = caps.limits
    out: list[GemmCase] = []
    seen: set[str] = set()
    for c in cases:
        if max(c.m, c.n, c.k) > lim.max_dim or c.batch > lim.max_batch:
            continue
        epi = declared_epilogue(c.epilogue, caps)
        if epi != c.epilogue:
            if not epi:
                continue
            c = replace(c, epilogue=epi)
            if c.name in seen:  # two chains narrowed to the same one: run it once
                continue
        seen.add(c.name)
        out.append(c)
    return out


def _square_cases(combo: GemmCombo, seq: _Seq) -> list[GemmCase]:
    """m == k, n == k and m == n: a driver that infers a transpose from shapes guesses wrong only here."""
    sc = _scalars(combo)
    out = []
    for (m, n, k), (ta, tb) in itertools.product(((9, 5, 9), (5, 9, 9), (9, 9, 5), (17, 17, 17)),
                                                 ((False, False), (True, False), (False, True), (True, True))):
        out.append(GemmCase("shapes:square", combo, m, n, k, 1, ta, tb, sc[1], sc[2] if ta else sc[0],
                            seq.pick("sq", ("separate", "in_place", "absent")) if not ta else "separate",
                            seq.pick("sqpads", ((0, 0, 0, 0), (2, 1, 0, 3))), seed=seq.seed()))
    return out


def _exact_cases(combo: GemmCombo, seq: _Seq, level: str) -> list[GemmCase]:
    """Small-integer inputs whose exact result is known, with ties planted for D's rounding,
    judged bit for bit: through alpha, beta, C absent / separate / in place and every exact post-op."""
    if combo.is_int:
        return []
    t = 1.5 * 2.0 ** DTYPES[combo.d].precision_bits if combo.d in (DType.F16, DType.BF16) else 0.0
    bias_n = PostOpCase(PostOpKind.BIAS_N, operand_in_acc=False)
    bias_m = PostOpCase(PostOpKind.BIAS_M)
    add_d = PostOpCase(PostOpKind.ADD, operand_in_acc=False)
    add_acc = PostOpCase(PostOpKind.ADD)
    relu = PostOpCase(PostOpKind.RELU)
    clamp = PostOpCase(PostOpKind.CLAMP, -(t + 9.0) if t else -20.0, t + 6.0 if t else 30.0)
    half = PostOpCase(PostOpKind.SCALE, 0.5)
    neg2 = PostOpCase(PostOpKind.SCALE, -2.0)
    rows = [
        # (m, n, k, batch, trans_a, trans_b, alpha, beta, c_mode, epilogue)
        (7, 9, 5, 1, False, False, 1.0, 0.0, "absent", ()),
        (6, 5, 17, 1, True, False, 1.0, 0.0, "absent", (bias_n,)),
        (5, 7, 9, 1, False, True, 2.0, -1.0, "separate", ()),
        (9, 6, 7, 1, True, True, -1.5, 1.0, "in_place", (half,)),
        (8, 5, 6, 2, False, False, 1.0, 0.5, "separate", (add_d, relu)),
        (5, 6, 9, 1, False, False, 0.5, 0.0, "absent", (add_acc, clamp, bias_m, neg2)),
        (6, 7, 5, 1, False, True, 1.0, 2.0, "in_place", (clamp, bias_n, relu, add_d)),
        (7, 5, 3, 3, True, False, -1.0, 0.0, "absent", (bias_m, half, add_acc, relu)),
    ]
    if combo.d != DType.F64:
        # scaled into D's subnormal range (and f32's for bf16 and f32): gradual underflow, no flush to zero
        tiny = 2.0 ** (-30 if combo.d == DType.F16 else -140)
        rows.append((5, 6, 7, 1, False, False, 1.0, 0.0, "absent", (PostOpCase(PostOpKind.SCALE, tiny),)))
        rows.append((6, 5, 4, 1, True, False, 1.0, 1.0, "separate", (PostOpCase(PostOpKind.SCALE, -tiny), relu)))
    if combo.d == combo.acc:  # no operand in D's dtype distinct from acc
        rows = [r[:9] + (tuple(PostOpCase(p.kind, p.param0, p.param1) for p in r[9]),) for r in rows]
    out = []
    for m, n, k, batch, ta, tb, alpha, beta, c_mode, epi in rows:
        out.append(GemmCase("exact", combo, m, n, k, batch, ta, tb, alpha, beta, c_mode,
                            seq.pick("expads", ((0, 0, 0, 0), (1, 2, 3, 1))), epilogue=epi, fill="exact",
                            seed=seq.seed(), exact=True))
    return out


def _nonfinite_cases(combo: GemmCombo, seq: _Seq) -> list[GemmCase]:
    """NaN and +-inf through the GEMM into every post-op that must propagate them (IEEE), and C
    full of NaN/Inf that beta == 0 must never read, also when D is C."""
    sc = _scalars(combo)
    out = [
        GemmCase("corner:beta0-nan-c", combo, 9, 5, 3, 1, alpha=sc[1], beta=sc[0], c_mode="in_place",
                 fill="nan_c", seed=seq.seed()),
        GemmCase("corner:beta0-nan-c", combo, 6, 7, 0, 1, alpha=sc[1], beta=sc[0], c_mode="in_place",
                 fill="nan_c", seed=seq.seed()),
        GemmCase("corner:alpha0-nan-ab", combo, 5, 9, 17, 2, alpha=sc[0], beta=sc[2], c_mode="in_place",
                 fill="nan_ab", seed=seq.seed()),
        GemmCase("corner:k0", combo, 5, 9, 0, 1, alpha=sc[1], beta=sc[0], c_mode="separate", fill="nan_c",
                 seed=seq.seed()),
        GemmCase("corner:k0", combo, 4, 6, 0, 1, alpha=sc[1], beta=sc[0], c_mode="absent",
                 epilogue=(PostOpCase(PostOpKind.BIAS_N),), seed=seq.seed()),
    ]
    if combo.is_int:
        return out
    for epi in ((PostOpCase(PostOpKind.RELU),), (PostOpCase(PostOpKind.CLAMP, -0.5, 0.75),),
                (PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.SCALE, -1.5), PostOpCase(PostOpKind.RELU)),
                (PostOpCase(PostOpKind.CLAMP, -2.0, 3.0), PostOpCase(PostOpKind.ADD))):
        for c_mode, beta in (("absent", 0.0), ("separate", 1.0)):
            out.append(GemmCase("nonfinite", combo, 5, 6, 4, 1, alpha=1.0, beta=beta, c_mode=c_mode,
                                epilogue=epi, fill="nonfinite", seed=seq.seed()))
    return out


def _layout_cases(combo: GemmCombo, seq: _Seq, level: str) -> list[GemmCase]:
    """Every layout the spec allows for batches: row-interleaved entries ([rows, batch, cols]) of
    every operand, batch stride 0 on every input (alone and together), epilogue operands
    broadcast or per entry."""
    sc = _scalars(combo)
    out = []
    bias_add = (PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.ADD), PostOpCase(PostOpKind.BIAS_M))
    epi_int = (PostOpCase(PostOpKind.ADD), PostOpCase(PostOpKind.BIAS_N))
    epi = epi_int if combo.is_int else bias_add
    rows = [
        # (interleave, broadcast, c_mode, epilogue, epi_broadcast)
        ((False, False, False, True), (False, False, False), "separate", (), None),
        ((False, False, True, True), (True, False, False), "in_place", (), None),
        ((True, False, True, False), (False, True, False), "separate", (), None),
        ((False, True, False, True), (False, False, True), "separate", (), None),
        ((False, False, False, True), (True, False, False), "absent", (), None),
        ((False, False, False, False), (True, True, False), "separate", epi, True),
        ((False, False, False, False), (False, True, True), "separate", epi, False),
        ((False, False, False, True), (True, False, True), "separate", epi, False),
    ]
    for inter, bcast, c_mode, post, eb in rows:
        out.append(GemmCase("layout", combo, 7, 6, 9, 3, False, seq.pick("lt", (False, True)), sc[1],
                            sc[0] if c_mode == "absent" else sc[4], c_mode, seq.pick("lpads", ((0, 0, 0, 0),
                                                                                              (1, 2, 1, 2))),
                            bcast, epilogue=post, seed=seq.seed(), interleave=inter, epi_broadcast=eb))
    # the layouts that let a batch fold into one GEMM: B broadcast with A and D back to back
    # (batch into m), A broadcast with B and D row-interleaved (batch into n)
    for ta, c_mode in ((False, "absent"), (True, "in_place")):
        out.append(GemmCase("layout", combo, 6, 7, 5, 3, ta, False, sc[1], sc[0] if c_mode == "absent" else sc[4],
                            c_mode, broadcast=(False, True, False), seed=seq.seed(), gapless=True))
        out.append(GemmCase("layout", combo, 6, 7, 5, 3, False, ta, sc[1], sc[0] if c_mode == "absent" else sc[4],
                            c_mode, broadcast=(True, False, False), seed=seq.seed(),
                            interleave=(False, True, True, True)))
    return out


#: Thresholds drivers switch kernels at: OpenBLAS threading (m*n*k above 2**18), tiles of
#: 8..128, an output of 2**20 elements (the cpu driver's two-thread conversions), k chunks
#: of exact int8 (2**8, 2**9, 2**10).
_BIG_MNK = (130, 67, 257)  # 2.2M multiply-adds, no dimension a multiple of 8
_HUGE_OUT = (1026, 1023, 2)  # 1,049,598 outputs > 2**20, odd n
_WIDE_IN = (1025, 3, 1024)  # 1,049,600 elements of A > 2**20
_INT_CHUNK_OF = {(DType.I8, DType.I8): 1024, (DType.I8, DType.U8): 512, (DType.U8, DType.I8): 512,
                 (DType.U8, DType.U8): 256}


def _size_cases(combo: GemmCombo, seq: _Seq, level: str) -> list[GemmCase]:
    """Sizes across drivers' thresholds, few and well aimed."""
    sc = _scalars(combo)
    out = [
        # above OpenBLAS's threading threshold, partial tiles, with C (the quick level's large GEMM)
        GemmCase("size", combo, *_BIG_MNK, 1, False, True, sc[4], sc[3], "separate", (1, 0, 2, 1), seed=seq.seed()),
        # batch entries big enough for one BLAS call each
        GemmCase("size", combo, 33, 35, 37, 3, True, False, sc[1], sc[4], "in_place", seed=seq.seed()),
    ]
    # exact values (ties planted): the golden model is fast on them, and rounding is judged bit for bit
    if combo.d in (DType.F16, DType.BF16):
        out.append(GemmCase("size", combo, *_HUGE_OUT, 1, False, False, 1.0, 1.0, "separate", fill="exact",
                            seed=seq.seed(), exact=True))
    if combo.a in (DType.F16, DType.BF16):
        out.append(GemmCase("size", combo, *_WIDE_IN, 1, False, True, 1.0, 0.0, "absent", fill="exact",
                            seed=seq.seed(), exact=True))
    if combo.is_int:
        chunk = _INT_CHUNK_OF[(combo.a, combo.b)]
        ks = (chunk - 1, chunk, chunk + 1, 2 * chunk, 2 * chunk + 1) if level == "full" else (chunk + 1, 2 * chunk)
        for k in ks:
            out.append(GemmCase("size:int-chunk", combo, 3, 2, k, 1, seq.pick("ict", (False, True)), False, 1, 0,
                                "absent", fill="int_chunk", seed=seq.seed()))
    if level == "full":
        for m, n, k in ((65, 63, 127), (127, 129, 33), (255, 257, 17), (31, 33, 513), (257, 383, 131)):
            ta, tb = seq.pick("szt", (False, True)), seq.pick("szb", (True, False))
            c_mode = seq.pick("szc", ("separate", "in_place", "absent"))
            out.append(GemmCase("size", combo, m, n, k, 1, ta, tb, sc[4], sc[0] if c_mode == "absent" else sc[3],
                                c_mode, seed=seq.seed()))
    return out


def _param_cases(combo: GemmCombo, seq: _Seq, level: str) -> list[GemmCase]:
    """Scalars and post-op parameters that vary from case to case (a driver caching them per
    geometry gets one wrong), and integers float32 cannot hold (2**24 + 1, near the int32 limits)."""
    out = []
    if combo.is_int:
        big = [(2**24 + 1, -(2**24 + 3), ()),
               (-(2**31), 2**31 - 1, ()),
               (1, 0, (PostOpCase(PostOpKind.SCALE, 2**24 + 1),)),
               (3, 1, (PostOpCase(PostOpKind.CLAMP, -(2**24) - 1, 2**24 + 1),)),
               (2**20 + 7, -1, (PostOpCase(PostOpKind.CLAMP, -(2**31) + 5, 2**31 - 9),
                                PostOpCase(PostOpKind.SCALE, 3))),
               (1, 1, (PostOpCase(PostOpKind.SCALE, -(2**31) + 1), PostOpCase(PostOpKind.CLAMP, -7, 2**31 - 1))),
               (2, 0, (PostOpCase(PostOpKind.CLAMP, 7, 7),)),
               (1, 0, (PostOpCase(PostOpKind.CLAMP, -(2**31), -5), PostOpCase(PostOpKind.RELU))),
               (2**24 + 1, 0, (PostOpCase(PostOpKind.RELU),))]
        for alpha, beta, epi in big:
            out.append(GemmCase("int-scalars", combo, 4, 5, 70, 1, False, True, alpha, beta,
                                seq.pick("isc", ("separate", "in_place")) if beta else "absent",
                                fill="int_extreme", epilogue=epi, seed=seq.seed()))
        return out
    for lo, hi, s in ((-0.25, 0.25, 3.0), (0.5, 0.5, -0.75), (-3.0, -1.0, 1e-3), (0.125, 1e30, 1.25)):
        out.append(GemmCase("post-params", combo, 6, 5, 9, 1, False, False, 1.0, 0.0, "absent",
                            epilogue=(PostOpCase(PostOpKind.SCALE, s), PostOpCase(PostOpKind.CLAMP, lo, hi)),
                            seed=seq.seed()))
    return out


def _corner_cases(combo: GemmCombo, seq: _Seq) -> list[GemmCase]:
    sc = _scalars(combo)
    out = [
        # beta == 0: C full of NaN/Inf (and D pre-filled with NaN) must not leak
        GemmCase("corner:beta0-nan-c", combo, 9, 5, 3, 1, alpha=sc[1], beta=sc[0], c_mode="separate",
                 fill="nan_c", seed=seq.seed()),
        # alpha == 0: A and B full of NaN/Inf must not be read
        GemmCase("corner:alpha0-nan-ab", combo, 5, 9, 17, 1, alpha=sc[0], beta=sc[3], c_mode="separate",
                 fill="nan_ab", seed=seq.seed()),
        # ... and with beta == 0 too (D = 0, C absent): a kernel that multiplies anyway and scales
        # by 0 gives NaN * 0 (a forced oneDNN or widened path did)
        GemmCase("corner:alpha0-beta0-nan-ab", combo, 5, 9, 17, 1, alpha=sc[0], beta=sc[0], c_mode="absent",
                 fill="nan_ab", seed=seq.seed()),
        # k == 0: D = beta * C
        GemmCase("corner:k0", combo, 5, 9, 0, 2, alpha=sc[1], beta=sc[4], c_mode="separate", seed=seq.seed()),
        GemmCase("corner:empty", combo, 0, 9, 5, 1, seed=seq.seed()),
    ]
    if combo.a in ALPHA_PAST_OPERAND:
        # alpha scales the product, not an operand: a kernel that scales A or B by alpha first
        # makes inf * 0 = NaN where alpha * (A @ B) is finite (MKL's small sgemm through
        # torch.addmm did, and BLAS ?gemv scales its vector: the skinny shapes)
        scalars_c = ((sc[1], "separate"), (sc[0], "absent"))
        for (m, n), (beta, c_mode) in itertools.product(((8, 8), (1, 8), (8, 1)), scalars_c):
            out.append(GemmCase("corner:alpha-scales-product", combo, m, n, 7, 1, alpha=ALPHA_PAST_OPERAND[combo.a][1],
                                beta=beta, c_mode=c_mode, fill="alpha_past_operand", seed=seq.seed()))
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
            if DTYPES[src].precision_bits > 2 * DTYPES[dst].precision_bits + 1:  # a type in between exists
                cases.append(CopyCase("copy:double-rounding", src, dst, 6, 16, (1, 2), fill="ties_eps",
                                      seed=seq.seed()))
        if DTYPES[src].is_float and DTYPES[dst].is_float:
            cases.append(CopyCase("copy:specials", src, dst, 3, 14, (0, 1), fill="specials", seed=seq.seed()))
        if DTYPES[src].is_float and DTYPES[dst].is_float and src != dst and (level == "full" or (
                src, dst) in ((DType.F32, DType.F16), (DType.F64, DType.BF16))):
            # above 2**20 elements: where a driver may split a conversion across threads
            cases.append(CopyCase("copy:large", src, dst, 1026, 1023, (0, 1), seed=seq.seed()))
        # source and destination in one buffer, the destination after the source and before it
        for where in ("dst-after", "dst-before"):
            cases.append(CopyCase("copy:one-buffer", src, dst, 7, 5, (2, 1), seed=seq.seed(), one_buffer=where))
    return cases


# -- size bands: epilogues on both sides of every edge where a driver's implementation changes ----

#: The largest GEMM (multiply-adds) of the log-uniform sweep run where a driver declares no size
#: bands: past 96**3 (where the cpu driver fuses epilogues into oneDNN, a typical library's switch)
#: for quick, whose budget it shares with every other case (2**21 cost `ref` and `torch:cpu` 1.5 s
#: of a ~10 s quick run, most of it the golden model's exact evaluation; 2**20 about half), and
#: about 200**3 for full (its 384**3 GEMM runs without an epilogue; with every chain there the
#: level would pass its budget).
SWEEP_CEILING_MNK = {"quick": 2**20, "full": 2**23}
#: How many sizes the sweep spreads log-uniformly from 8**3 to the ceiling.
SWEEP_SIZES = {"quick": 3, "full": 6}


_OPERAND_KINDS = (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD)


def _band_variants(combo: GemmCombo) -> list[PostOpCase]:
    """Every post-op kind (each operand dtype), parameters exact on the exact fill, exact kinds
    first and GELU last: chains of the exact ones are judged bit for bit."""
    t = 1.5 * 2.0 ** DTYPES[combo.d].precision_bits if combo.d in (DType.F16, DType.BF16) else 0.0
    out = _post_op_variants(combo, (-(t + 9.0), t + 6.0) if t else (-20.0, 30.0), -2.0)
    return sorted(out, key=lambda p: p.kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH))


def _near(edge: int, below: bool) -> tuple[int, int, int]:
    """m, n, k with m * n * k just below ``edge`` (or at/just above it), no dimension a power of two."""
    s = max(2, round(edge ** (1 / 3)))
    m, n = (s - 1, s + 1) if below else (s + 1, s - 1)
    k = (edge - 1) // (m * n) if below else -(-edge // (m * n))
    return m, n, max(k, 1)


def band_cases(caps: DeviceCaps, bands: tuple = (), level: str = "quick") -> list[GemmCase]:
    """GEMMs on both sides of every size edge a driver declares (``DriverInfo.size_bands``), for
    each declared combination the edge applies to: every post-op kind in chains of the declared
    length (forward, and reversed: the order), exact where the kinds allow (bit for bit); above
    the edge also NaN/Inf through relu/clamp, and (full) row-interleaved D and C with an epilogue
    and batch stride 0 on each of A, B and C. Where a combination has no declared edge, the same
    runs at sizes spread log-uniformly up to the level's ceiling (``SWEEP_CEILING_MNK``).
    Each case keeps to the declared post-ops and limits (:func:`declared_only`)."""
    seq = _Seq()
    out: list[GemmCase] = []
    max_len = caps.limits.max_epilogue_ops
    for combo in [c for c in GEMM_COMBOS if c in caps.combos]:
        variants = [p for p in _band_variants(combo) if p.kind in caps.post_ops]
        chains = [tuple(variants[i:i + max_len]) for i in range(0, len(variants), max_len)] if max_len else []
        orders = chains + [tuple(reversed(chains[0]))] if chains else []
        # scale, add and bias ahead of a clamp, in two orders: a driver that fuses the post-ops up to
        # its first relu/clamp into the GEMM (the cpu driver on oneDNN) runs them all fused here, so a
        # fused post-op dropped, applied twice or reordered shows (scale commutes with neither)
        first = {}
        for p in variants:
            first.setdefault(p.kind, p)
        prefix = [first[k] for k in (PostOpKind.SCALE, PostOpKind.ADD, PostOpKind.BIAS_N) if k in first]
        if len(prefix) > 1 and max_len > 1:
            tail = [first[PostOpKind.CLAMP]] if PostOpKind.CLAMP in first else []
            # quick: one order (a fused post-op dropped, doubled or reordered already shows there)
            fused = [tuple((prefix + tail)[:max_len]), tuple((prefix[::-1] + tail)[:max_len])]
            fused = fused[:1] if level == "quick" else fused
        else:
            fused = []
        # scalars exact on the exact fill (D is known exactly, judged bit for bit)
        alpha, beta = (3, 2) if combo.is_int else (-1.5, 0.5)
        fill = "random" if combo.is_int else "exact"  # integers are exact on any data
        mine = [b for b in bands if combo.name in b.combos]
        # (label, batch, m, n, k, which epilogues: "with" / "without" / "any", above the edge?)
        points: list[tuple[str, int, int, int, int, str, bool]] = []
        for b in mine:
            for below in (True, False):
                m, n, k = _near(b.edge, below)
                batch = 1
                if b.measure == "entry_mnk":
                    batch = 2
                side = "below" if below else "at"
                points.append((f"band:{side} {b.measure}>={b.edge}", batch, m, n, k, b.epilogue, not below))
        if not mine:
            top = SWEEP_CEILING_MNK[level]
            count = SWEEP_SIZES[level]
            for i in range(count):
                mnk = round(8**3 * (top / 8**3) ** (i / (count - 1)))
                m, n, k = _near(mnk, False)
                points.append((f"band:sweep mnk~{m * n * k}", 1, m, n, k, "any", i == count - 1))
        # one compact row times a matrix with alpha != 1, on every combination (a decode
        # step's GEMV): the skinny paths (?gemv, m = 1 kernels) scale by alpha in a step of their own,
        # which padded operands (every other GEMM case) and alpha-1 entry cases never reach
        # (and with C: a kernel that adds beta * C in the same call, as torch.baddbmm, has one more path)
        for c_mode in ("absent", "separate"):
            out.append(GemmCase("band:skinny linear", combo, 1, 97, 89, 1, False, False, alpha,
                                0 * beta if c_mode == "absent" else beta, c_mode, seed=seq.seed(), fill=fill,
                                exact=not combo.is_int))
        for label, batch, m, n, k, which, upper in points:
            if which in ("any", "without"):
                out.append(GemmCase(label, combo, m, n, k, batch, False, True, alpha, beta, "separate",
                                    seed=seq.seed(), fill=fill, exact=not combo.is_int))
            if which == "without" or not orders:
                continue
            # every chain forward and the first reversed at the upper side and at every size of a
            # sweep; below an edge the reversed one (full: every one there too)
            picked = orders + fused if upper or level == "full" or not mine else orders[-1:]
            for chain in picked:
                exact = all(p.kind not in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH) for p in chain)
                c_mode = seq.pick("bandc", ("separate", "absent", "in_place"))
                out.append(GemmCase(label, combo, m, n, k, batch, seq.pick("bandt", (False, True)), False,
                                    alpha, 0 * beta if c_mode == "absent" else beta, c_mode, epilogue=chain,
                                    seed=seq.seed(), fill=fill, exact=exact and not combo.is_int))
            if upper and combo.d != combo.acc and not combo.is_int and PostOpKind.CLAMP in first and prefix:
                # the steps after a clamp, on D's accumulator: a driver that rounds to D's dtype
                # before them (and again after) rounds twice; alpha 1 and no C keep the GEMM fused
                # and the values inside the clamp's bounds (the exact fill's ties)
                after = tuple([first[PostOpKind.CLAMP]] + prefix)[:max_len]
                out.append(GemmCase(label, combo, m, n, k, batch, False, False, 1.0, 0.0, "absent",
                                    epilogue=after, seed=seq.seed(), fill=fill, exact=True))
            if upper and batch == 1 and not combo.is_int and PostOpKind.BIAS_N in first and which != "without":
                # a linear layer: the bias alone, no C. Drivers special-case it (the bias put in D, then
                # the GEMM adds with beta 1; NumPy's product, then the bias; one row on ?gemv), and a
                # chain of post-ops never takes those paths: the cube and one row (m = 1) at the same
                # size, alpha 1 (the library's own product) and not
                # size, alpha 1 (the library's own product) and not; one row also bare (alpha != 1 is
                # a pass of its own there), and a skinny GEMM small enough for ?gemv on the calling thread
                bias = (first[PostOpKind.BIAS_N],)
                linear = [(m, n, k, s, bias) for s in (1.0, alpha)] + [(1, m * n, k, s, bias) for s in (1.0, alpha)]
                linear += [(1, m * n, k, alpha, ()), (97, 1, 89, alpha, bias)]
                for rows, cols, depth, scale, chain in linear:
                    out.append(GemmCase(label + " linear", combo, rows, cols, depth, 1, False, False, scale, 0.0,
                                        "absent", epilogue=chain, seed=seq.seed(), fill=fill, exact=True))
            if not upper or combo.is_int:
                continue
            for nan_chain in ((PostOpCase(PostOpKind.RELU), PostOpCase(PostOpKind.CLAMP, -2.0, 3.0),
                               PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.SCALE, -1.5)),
                              (PostOpCase(PostOpKind.GELU_ERF), PostOpCase(PostOpKind.ADD),
                               PostOpCase(PostOpKind.GELU_TANH), PostOpCase(PostOpKind.BIAS_M)),
                              # clamp first: a driver fusing it (oneDNN's clip turns NaN into a bound) shows
                              (PostOpCase(PostOpKind.CLAMP, -2.0, 3.0), PostOpCase(PostOpKind.SCALE, -1.5),
                               PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.RELU))):
                # NaN and +-inf in A through every step (a fused clamp or GELU must keep NaN)
                out.append(GemmCase(label + " nonfinite", combo, m, n, k, batch, False, False, 1.0, 0.0, "absent",
                                    epilogue=nan_chain, fill="nonfinite", seed=seq.seed()))
            if chains:  # in place with beta == 0 and D (== C) full of NaN/Inf: nothing of it may leak
                # (the chain a fusing driver runs whole in the GEMM: its sum post-op must not read D)
                bare = tuple(p for p in fused[0] if p.kind not in _OPERAND_KINDS) if fused else ()
                # with operands, and (full) without: a fusing driver may take another path for each
                for nan_c_chain in [fused[0] if fused else chains[0]] + ([bare] if bare and level == "full" else []):
                    out.append(GemmCase(label + " nonfinite", combo, m, n, k, batch, False, False, alpha, 0.0,
                                        "in_place", epilogue=nan_c_chain, fill="nan_c", seed=seq.seed()))
            if chains:
                # row-interleaved D and C, and B broadcast (batch stride 0) with a batch of 2
                half = (m, n, k) if batch > 1 else (-(-m // 2), n, k)  # the batch's m*n*k stays past the edge
                out.append(GemmCase(label + " layout", combo, *half, 2, False, False, alpha, beta, "separate",
                                    epilogue=chains[0], seed=seq.seed(), fill=fill, exact=False,
                                    interleave=(False, False, True, True)))
                for bcast in ((True, False, False), (False, True, False), (False, False, True)):
                    if level == "quick" and bcast != (False, True, False):
                        continue
                    out.append(GemmCase(label + " layout", combo, *half, 2, False, False, alpha, beta, "separate",
                                        broadcast=bcast, epilogue=chains[0], seed=seq.seed(), fill=fill,
                                        exact=False))
    return declared_only([replace(c, epi_pad=0) for c in out], caps)
