"""The cpu driver against straightforward exact computations, judged by the spec's error bound.

Oracles: float GEMMs are computed in long double (64-bit significand on x86, so
far below every bound checked here) and post-ops in float64; integer GEMMs in
Python ints, wrapped modulo 2**32 after the accumulator and after every post-op.
Operands live in flat "buffers" exactly as the runtime binds them
(:func:`ffaccel.abi.gemm_arrays`), with NaN in every byte outside the inputs'
windows and a sentinel around D's, so that reading or writing outside a window
shows up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import pytest
from scipy import special

from ffaccel.abi import Copy, DeviceCaps, Gemm, Matrix, PostOpDesc, check_command, copy_arrays, gemm_arrays
from ffaccel.abi.validate import View
from ffaccel.abi.views import view_array
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.spec import DTYPES, GEMM_COMBOS, DType, ErrorCode, FFAccelError, GemmCombo, PostOpKind
from ffaccel.spec.accuracy import error_ratio, gemm_error_bound

F64, F32, F16, BF16, I8, U8, I32 = DType.F64, DType.F32, DType.F16, DType.BF16, DType.I8, DType.U8, DType.I32
FLOAT_COMBOS = [c for c in GEMM_COMBOS if not c.is_int]
INT_COMBOS = [c for c in GEMM_COMBOS if c.is_int]
COMBO = {(c.a, c.b, c.d): c for c in GEMM_COMBOS}
DRIVER = CpuDriver()  # the kernels $FFACCEL_CPU_KERNELS chooses; tests/test_cpu_kernels.py forces each
AUTO = CpuDriver(kernels="auto")  # the default choice, whose tiny f32/f64 GEMMs bind to one f2py call
SENTINEL = {F64: 7.25, F32: 7.25, F16: 7.25, BF16: 7.25, I8: 0x5A, U8: 0xA5, I32: 0x5A5A5A5A}
RNG = np.random.default_rng(20240601)


def wrap(v: int) -> int:
    return (int(v) + 2**31) % 2**32 - 2**31


# ------------------------------------------------------------------------------------
# operands in flat buffers


@dataclass
class Memory:
    """Flat typed buffers by handle; everything outside a window holds garbage."""

    buffers: dict[int, np.ndarray] = field(default_factory=dict)

    def matrix(self, handle: int, dt: DType, rows: int, cols: int, batch: int, *, pad: int = 0, gap: int = 3,
               broadcast: bool = False, interleave: bool = False, offset: int = 0, output: bool = False) -> Matrix:
        """Allocate a (batch, rows, cols) operand with ld = cols + pad and ``gap`` elements between entries.

        ``broadcast``: batch stride 0; ``interleave``: batch entries side by side in each row.
        Outside the windows, inputs hold NaN (ints: 77) and outputs a sentinel.
        """
        if interleave:
            bs = cols
            ld = batch * cols + pad
        else:
            ld = max(1, cols + pad)
            bs = 0 if broadcast or batch <= 1 else rows * ld + gap
        size = offset + max(0, batch - 1) * bs + rows * ld + 5
        info = DTYPES[dt]
        if output:
            fill = SENTINEL[dt]
        else:
            fill = np.nan if info.is_float else 77
        self.buffers[handle] = np.full(size, fill, info.numpy)
        return Matrix(handle, dt, rows, cols, ld, offset * info.itemsize_bytes, bs)

    def lookup(self, handle: int) -> np.ndarray:
        return self.buffers[handle].view(np.uint8)

    def write(self, v: View, batch: int, values: np.ndarray) -> None:
        """Store (batch or 1, rows, cols) values into the operand's windows."""
        arr = view_array(self.lookup(v.handle), v, batch)
        if v.batch_stride == 0 and batch > 1:
            arr[0] = values[0]
        else:
            arr[...] = values

    def snapshot(self) -> dict[int, bytes]:
        return {h: b.tobytes() for h, b in self.buffers.items()}


def random_values(dt: DType, shape: tuple[int, ...], lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    info = DTYPES[dt]
    if info.is_float:
        return RNG.uniform(lo, hi, shape).astype(info.numpy)
    i = np.iinfo(info.numpy)
    return RNG.integers(i.min, int(i.max) + 1, shape).astype(info.numpy)


@dataclass
class Case:
    op: object
    mem: Memory
    arrays: tuple


def build(combo: GemmCombo, m: int, n: int, k: int, *, batch: int = 1, alpha: float | int = 1,
          beta: float | int = 0, trans_a: bool = False, trans_b: bool = False, with_c: bool | None = None,
          in_place: bool = False, pad: int = 0, gap: int = 3, bcast: str = "", interleave: str = "",
          post: tuple = (), values: dict | None = None) -> Case:
    """A validated op, its buffers (inputs filled) and the arrays the runtime would bind.

    ``post``: (kind, p0, p1, operand dtype or None); ``bcast``: letters of the operands with
    batch stride 0; ``values``: explicit logical values for "a", "b", "c" (stored shape).
    """
    values = values or {}
    if with_c is None:
        with_c = beta != 0 or in_place
    mem = Memory()
    ar, ac = (k, m) if trans_a else (m, k)
    br, bc = (n, k) if trans_b else (k, n)
    a = mem.matrix(1, combo.a, ar, ac, batch, pad=pad, gap=gap, broadcast="a" in bcast)
    b = mem.matrix(2, combo.b, br, bc, batch, pad=pad, gap=gap, broadcast="b" in bcast, interleave="b" in interleave)
    d = mem.matrix(4 if not in_place else 3, combo.d, m, n, batch, pad=pad, gap=gap, interleave="d" in interleave,
                   offset=1, output=True)
    c = None
    if in_place:
        c = d
    elif with_c:
        c = mem.matrix(3, combo.d, m, n, batch, pad=pad + 1, broadcast="c" in bcast)
    epi = []
    for i, (kind, p0, p1, odt) in enumerate(post):
        operand = None
        if kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
            shape = {PostOpKind.BIAS_N: (1, n), PostOpKind.BIAS_M: (m, 1), PostOpKind.ADD: (m, n)}[kind]
            operand = mem.matrix(5 + i, odt, *shape, batch, pad=pad, broadcast="e" in bcast)
        epi.append(PostOpDesc(kind, p0, p1, operand))
    g = Gemm(m=m, n=n, k=k, a=a, b=b, c=c, d=d, alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b,
             batch=batch, epilogue=tuple(epi))
    op = check_command(g.encode(), DeviceCaps())
    nb = lambda bc_: 1 if bc_ else batch  # noqa: E731
    mem.write(op.a, batch, values.get("a", random_values(combo.a, (nb("a" in bcast), ar, ac))))
    mem.write(op.b, batch, values.get("b", random_values(combo.b, (nb("b" in bcast), br, bc))))
    if op.c is not None:
        mem.write(op.c, batch, values.get("c", random_values(combo.d, (nb("c" in bcast), m, n))))
    for i, p in enumerate(op.epilogue):
        if p.operand is not None:
            mem.write(p.operand, batch, random_values(p.operand.dtype, (nb("e" in bcast), p.operand.rows,
                                                                         p.operand.cols)))
    return Case(op, mem, gemm_arrays(op, mem.lookup))


# ------------------------------------------------------------------------------------
# oracles


def float_post(kind: PostOpKind, p0: float, p1: float, x: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    with np.errstate(all="ignore"):
        if kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
            return x + v.astype(np.float64)
        if kind == PostOpKind.RELU:
            return np.maximum(x, 0.0)
        if kind == PostOpKind.GELU_ERF:
            return x * (1.0 + special.erf(x / math.sqrt(2.0))) / 2.0
        if kind == PostOpKind.GELU_TANH:
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
        if kind == PostOpKind.CLAMP:
            return np.minimum(np.maximum(x, p0), p1)
        if kind == PostOpKind.SCALE:
            return p0 * x
    raise AssertionError(kind)


def expected_float(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(exact, bound): the exact result before rounding to D, and the spec's bound."""
    op = case.op
    a, b, c, _, epi = case.arrays
    alpha, beta = float(op.alpha), float(op.beta)
    shape = (op.batch, op.m, op.n)
    ld = np.longdouble
    with np.errstate(all="ignore"):
        x = np.zeros(shape, ld)
        abs_ab = np.zeros(shape)
        if op.reads_ab:
            x = ld(alpha) * np.matmul(a.astype(ld), b.astype(ld))
            abs_ab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
        abs_c = None
        if op.reads_c:
            x = x + ld(beta) * c.astype(ld)
            abs_c = np.abs(c.astype(np.float64))
        x = np.broadcast_to(x.astype(np.float64), shape)
        stages = []
        for p, v in zip(op.epilogue, epi):
            y = np.broadcast_to(float_post(p.kind, float(p.param0), float(p.param1), x, v), shape)
            stages.append((p.kind, x, y, float(p.param0) if p.kind == PostOpKind.SCALE else 0.0))
            x = y
        # where the exact value rounds to inf in D's dtype, inf is the exact answer (as in the ref driver)
        r = x.astype(DTYPES[op.combo.d].numpy).astype(np.float64)
        x = np.where(np.isfinite(r), x, r)
        bound = gemm_error_bound(op.combo.acc, op.combo.d, op.k, alpha, beta, abs_ab, abs_c, stages, x)
    return np.array(x), bound


def expected_int(case: Case) -> np.ndarray:
    op = case.op
    a, b, c, _, epi = case.arrays
    shape = (op.batch, op.m, op.n)
    acc = np.zeros(shape, dtype=object)
    if op.reads_ab:
        acc = acc + int(op.alpha) * (a.astype(np.int64) @ b.astype(np.int64)).astype(object)
    if op.reads_c:
        acc = acc + int(op.beta) * c.astype(np.int64).astype(object)
    w = np.vectorize(wrap, otypes=[object])
    x = w(acc)
    for p, v in zip(op.epilogue, epi):
        if p.kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
            x = w(x + np.broadcast_to(v.astype(np.int64).astype(object), shape))
        elif p.kind == PostOpKind.RELU:
            x = np.where(x > 0, x, 0)
        elif p.kind == PostOpKind.CLAMP:
            x = np.minimum(np.maximum(x, int(p.param0)), int(p.param1))
        elif p.kind == PostOpKind.SCALE:
            x = w(int(p.param0) * x)
    return np.array(x.tolist(), dtype=np.int64).reshape(shape).astype(np.int32)


def run(case: Case, prepared: bool = True) -> np.ndarray:
    """Run the driver; check that inputs and everything outside D's windows are untouched."""
    op, mem = case.op, case.mem
    a, b, c, d, epi = case.arrays
    before = mem.snapshot()
    if prepared:
        DRIVER.prepare_gemm(op)(a, b, c, d, epi)
    else:
        DRIVER.gemm(op, a, b, c, d, epi)
    got = np.array(d, copy=True)
    after = mem.snapshot()
    for h in before:
        if h != op.d.handle:
            assert after[h] == before[h], f"input buffer {h} was written"
    # D's buffer: equal outside the windows (blank the windows in both copies)
    blank = []
    for snap in (before, after):
        buf = np.frombuffer(bytearray(snap[op.d.handle]), np.uint8)
        view_array(buf, op.d, op.batch)[...] = 0
        blank.append(buf.tobytes())
    assert blank[0] == blank[1], "D's buffer was written outside its m x n windows"
    return got


def check(case: Case, prepared: bool = True) -> np.ndarray:
    """Run and judge: exact equality for integers, the spec's bound for floats."""
    if case.op.combo.is_int:
        want = expected_int(case)  # computed first: D may be C
        got = run(case, prepared)
        np.testing.assert_array_equal(got, want)
        return got
    exact, bound = expected_float(case)
    got = run(case, prepared)
    ratio = error_ratio(got, exact, bound)
    worst = np.unravel_index(np.argmax(ratio), ratio.shape) if ratio.size else None
    assert ratio.size == 0 or ratio.max() <= 1.0, (
        f"error {ratio.max():.3g} x bound at {worst}: got {got[worst]!r}, exact {exact[worst]!r}, "
        f"bound {bound[worst]!r}")
    return got


# ------------------------------------------------------------------------------------
# tests: every combination, layouts


@pytest.mark.parametrize("combo", GEMM_COMBOS, ids=lambda c: c.name)
@pytest.mark.parametrize("pad", [0, 3])
def test_every_combo(combo: GemmCombo, pad: int) -> None:
    alpha, beta = (3, -2) if combo.is_int else (1.5, -0.75)
    check(build(combo, 5, 7, 33, alpha=alpha, beta=beta, pad=pad))
    check(build(combo, 6, 4, 9, pad=pad), prepared=False)  # alpha 1, no C


@pytest.mark.parametrize("combo", [COMBO[F32, F32, F32], COMBO[F64, F64, F64], COMBO[F16, F16, F16],
                                   COMBO[BF16, BF16, F32], COMBO[I8, U8, I32]], ids=lambda c: c.name)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("pad", [0, 2])
def test_transposes(combo: GemmCombo, trans_a: bool, trans_b: bool, pad: int) -> None:
    beta = 2 if combo.is_int else 0.5
    check(build(combo, 9, 6, 11, trans_a=trans_a, trans_b=trans_b, pad=pad, beta=beta))
    check(build(combo, 9, 6, 11, trans_a=trans_a, trans_b=trans_b, pad=pad))


@pytest.mark.parametrize("shape", [(1, 7, 5), (7, 1, 5), (1, 1, 9), (1, 9, 1), (64, 48, 40), (70, 65, 80), (1, 600, 600)])
@pytest.mark.parametrize("pad", [0, 5])
def test_vectors_and_padding(shape: tuple[int, int, int], pad: int) -> None:
    m, n, k = shape
    for combo in (COMBO[F32, F32, F32], COMBO[F64, F64, F64]):
        check(build(combo, m, n, k, pad=pad))
        check(build(combo, m, n, k, pad=pad, alpha=-1.25, beta=0.5, trans_a=True))


@pytest.mark.parametrize("bcast", ["a", "b", "c", "ab", "bc", ""])
@pytest.mark.parametrize("combo", [COMBO[F32, F32, F32], COMBO[F16, F16, F32], COMBO[I8, I8, I32]],
                         ids=lambda c: c.name)
def test_batch_broadcast(bcast: str, combo: GemmCombo) -> None:
    beta = 3 if combo.is_int else 0.25
    check(build(combo, 4, 5, 6, batch=3, bcast=bcast, beta=beta))
    check(build(combo, 40, 36, 40, batch=3, bcast=bcast, beta=beta, pad=1))  # BLAS per entry / folded


@pytest.mark.parametrize("pad", [0, 2])
def test_batch_fold_paths(pad: int) -> None:
    f32 = COMBO[F32, F32, F32]
    # B broadcast and A's entries adjacent: one BLAS call with m' = batch * m
    check(build(f32, 5, 6, 7, batch=4, bcast="b", pad=pad, gap=0, alpha=2.0))
    check(build(f32, 5, 6, 7, batch=4, bcast="b", pad=pad, gap=0, trans_a=True, beta=-1.0))
    # A broadcast, B's and D's entries side by side in each row: one call with n' = batch * n
    check(build(f32, 5, 6, 7, batch=4, bcast="a", interleave="bd", pad=pad, alpha=2.0))
    check(build(f32, 50, 40, 70, batch=2, bcast="a", interleave="bd", pad=pad, beta=1.0, with_c=True))
    check(build(f32, 5, 6, 7, batch=4, bcast="a", interleave="d", pad=pad, alpha=2.0))  # B not foldable


@pytest.mark.parametrize("combo", [COMBO[F32, F32, F32], COMBO[F64, F64, F64], COMBO[F16, F16, F16],
                                   COMBO[BF16, BF16, BF16], COMBO[U8, U8, I32]], ids=lambda c: c.name)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("alpha,beta", [(1, 1), (2, -1), (0, 3)])
def test_in_place(combo: GemmCombo, batch: int, alpha: int, beta: int) -> None:
    check(build(combo, 6, 5, 8, batch=batch, alpha=alpha, beta=beta, in_place=True,
                post=((PostOpKind.RELU, 0, 0, None),)))


def test_prepared_kernel_takes_fresh_arrays() -> None:
    f32 = COMBO[F32, F32, F32]
    first = build(f32, 8, 8, 8, alpha=1.5, beta=0.5)
    kernel = DRIVER.prepare_gemm(first.op)
    for _ in range(3):
        case = build(f32, 8, 8, 8, alpha=1.5, beta=0.5)
        exact, bound = expected_float(case)
        a, b, c, d, epi = case.arrays
        kernel(a, b, c, d, epi)
        assert error_ratio(d, exact, bound).max() <= 1.0


def _twin_cases(combo: GemmCombo, m: int, n: int, k: int, **kw) -> tuple[Case, Case]:
    """Two independent copies of one GEMM and its operands (same values, separate buffers)."""
    ar, ac = (k, m) if kw.get("trans_a") else (m, k)
    br, bc = (n, k) if kw.get("trans_b") else (k, n)
    values = {"a": random_values(combo.a, (1, ar, ac)), "b": random_values(combo.b, (1, br, bc)),
              "c": random_values(combo.d, (1, m, n))}
    return build(combo, m, n, k, values=values, **kw), build(combo, m, n, k, values=values, **kw)


@pytest.mark.parametrize("combo", [COMBO[F32, F32, F32], COMBO[F64, F64, F64]], ids=lambda c: c.name)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("alpha,beta,in_place", [(1.0, 0.0, False), (-1.5, 0.0, False), (0.5, 2.0, True),
                                                 (1.0, -1.0, True)])
def test_bound_gemm_is_the_prepared_kernel_bit_for_bit(combo: GemmCombo, trans_a: bool, trans_b: bool,
                                                        alpha: float, beta: float, in_place: bool) -> None:
    # what the transports call for every repetition of a validated command: the same BLAS call
    bound_case, kernel_case = _twin_cases(combo, 9, 6, 11, trans_a=trans_a, trans_b=trans_b, alpha=alpha,
                                          beta=beta, in_place=in_place)
    exact, error_bound = expected_float(bound_case)
    before = bound_case.mem.snapshot()
    bound = AUTO.bind_gemm(bound_case.op, *bound_case.arrays)
    assert bound is not None
    assert bound_case.mem.snapshot() == before, "binding ran something"
    for _ in range(2):  # repeated like a command in a loop (in place: C accumulates each time)
        bound()
        AUTO.prepare_gemm(kernel_case.op)(*kernel_case.arrays)
        assert bound_case.mem.snapshot() == kernel_case.mem.snapshot()
        if not in_place:  # each run computes the same D, within the spec's bound
            assert error_ratio(np.array(bound_case.arrays[3]), exact, error_bound).max() <= 1.0


@pytest.mark.parametrize("why,combo,kw", [
    ("an epilogue", COMBO[F32, F32, F32], dict(post=((PostOpKind.RELU, 0, 0, None),))),
    ("a widened dtype", COMBO[F16, F16, F32], {}),
    ("integers", COMBO[I8, I8, I32], {}),
    ("padded operands", COMBO[F32, F32, F32], dict(pad=2)),
    ("a batch", COMBO[F32, F32, F32], dict(batch=3)),
    ("C apart from D", COMBO[F32, F32, F32], dict(beta=0.5)),
    ("alpha 0", COMBO[F32, F32, F32], dict(alpha=0.0, beta=1.0, in_place=True)),
])
def test_bound_gemm_declines_what_one_f2py_call_cannot_do(why: str, combo: GemmCombo, kw: dict) -> None:
    case = build(combo, 9, 6, 11, **kw)
    assert AUTO.bind_gemm(case.op, *case.arrays) is None, why
    big = build(COMBO[F32, F32, F32], 70, 65, 80)  # above OpenBLAS's threading threshold
    assert AUTO.bind_gemm(big.op, *big.arrays) is None


# ------------------------------------------------------------------------------------
# tests: what must not be read


@pytest.mark.parametrize("combo", FLOAT_COMBOS, ids=lambda c: c.name)
@pytest.mark.parametrize("shape,batch,pad", [((6, 5, 7), 1, 0), ((6, 5, 7), 1, 2), ((1, 9, 4), 1, 0),
                                             ((9, 1, 4), 1, 0), ((6, 5, 7), 3, 0), ((40, 40, 40), 2, 1)])
def test_nan_in_c_with_beta_zero_does_not_leak(combo: GemmCombo, shape: tuple, batch: int, pad: int) -> None:
    m, n, k = shape
    nan_c = np.full((batch, m, n), np.nan, DTYPES[combo.d].numpy)
    for alpha in (1.0, 2.5, 0.0):
        case = build(combo, m, n, k, batch=batch, pad=pad, alpha=alpha, beta=0.0, with_c=True, values={"c": nan_c})
        case.arrays[3][...] = np.nan  # D pre-filled with NaN garbage
        got = check(case)
        assert np.isfinite(got.astype(np.float64)).all()
        # in place: D is C and full of NaN, beta 0
        case = build(combo, m, n, k, batch=batch, pad=pad, alpha=alpha, beta=0.0, in_place=True,
                     values={"c": nan_c})
        got = check(case)
        assert np.isfinite(got.astype(np.float64)).all()


@pytest.mark.parametrize("combo", GEMM_COMBOS, ids=lambda c: c.name)
def test_alpha_zero_and_k_zero_do_not_read_a_b(combo: GemmCombo) -> None:
    info = DTYPES[combo.a]
    bad = np.full((1, 5, 6), np.nan if info.is_float else 1, info.numpy)
    beta = 3 if combo.is_int else 0.5
    case = build(combo, 5, 4, 6, alpha=0, beta=beta, values={"a": bad})
    got = check(case)
    if not combo.is_int:
        assert np.isfinite(got.astype(np.float64)).all()
    check(build(combo, 5, 4, 0, beta=beta))  # k == 0: D = beta * C
    case = build(combo, 5, 4, 0)  # k == 0, no C: D = 0
    case.arrays[3][...] = 1
    assert not check(case).astype(np.float64).any()


def test_empty_shapes_write_nothing() -> None:
    f32 = COMBO[F32, F32, F32]
    for m, n, k, batch in [(0, 5, 4, 1), (5, 0, 4, 1), (3, 3, 3, 0)]:
        case = build(f32, m, n, k, batch=batch, beta=1.0)
        run(case)


# ------------------------------------------------------------------------------------
# tests: accumulation width and exact integers


@pytest.mark.parametrize("dt,big", [(F16, 2048.0), (BF16, 256.0)])
@pytest.mark.parametrize("out", ["same", "f32"])
def test_half_types_accumulate_in_f32(dt: DType, big: float, out: str) -> None:
    """big + (k-1) ones: in a 16-bit accumulator each +1 rounds away (ulp 2 at big)."""
    k = int(big) + 1
    combo = COMBO[dt, dt, dt if out == "same" else F32]
    a = np.ones((1, 2, k), DTYPES[dt].numpy)
    a[0, :, 0] = big
    b = np.ones((1, k, 3), DTYPES[dt].numpy)
    got = check(build(combo, 2, 3, k, values={"a": a, "b": b}))
    assert (got.astype(np.float64) == 2 * big).all()


@pytest.mark.parametrize("combo", INT_COMBOS, ids=lambda c: c.name)
def test_int_exact_beyond_f32_chunks(combo: GemmCombo) -> None:
    """Near-extreme values with k past each chunk limit: partial sums pass 2**24 (inexact in one f32 sum)."""
    def near_extreme(dt: DType, shape: tuple) -> np.ndarray:
        lo, hi = ((-128, -127) if dt == I8 else (254, 255))
        return RNG.integers(lo, hi + 1, shape).astype(DTYPES[dt].numpy)

    for k in (300, 600, 1100, 2500):
        a = near_extreme(combo.a, (1, 3, k))
        b = near_extreme(combo.b, (1, k, 4))
        check(build(combo, 3, 4, k, values={"a": a, "b": b}))
        check(build(combo, 3, 4, k, batch=2, bcast="b", trans_a=True))


def test_int8_wraps_like_int32_hardware() -> None:
    combo = COMBO[I8, I8, I32]
    a = np.full((1, 2, 2000), 127, np.int8)
    b = np.full((1, 2000, 3), 127, np.int8)
    c = np.full((1, 2, 3), 2**31 - 1, np.int32)
    for alpha, beta in [(2**30, 0), (-(2**31), 7), (1, 1), (12345, -(2**31))]:
        got = check(build(combo, 2, 3, 2000, alpha=alpha, beta=beta, values={"a": a, "b": b, "c": c}))
        want = wrap(alpha * 127 * 127 * 2000 + beta * (2**31 - 1))
        assert (got == want).all()


def test_int32_epilogue_wraps_after_every_post_op() -> None:
    combo = COMBO[I8, I8, I32]
    a = np.full((1, 2, 4), 100, np.int8)
    b = np.full((1, 4, 3), 100, np.int8)  # sum 40000
    post = ((PostOpKind.SCALE, 60000, 0, None),  # 2.4e9: wraps negative
            (PostOpKind.RELU, 0, 0, None),  # acts on the wrapped (negative) value: 0
            (PostOpKind.ADD, 0, 0, I32),
            (PostOpKind.CLAMP, -5, 2**31 - 1, None))
    case = build(combo, 2, 3, 4, values={"a": a, "b": b}, post=post)
    check(case)
    post2 = ((PostOpKind.BIAS_N, 0, 0, I32), (PostOpKind.SCALE, -3, 0, None), (PostOpKind.CLAMP, -(2**31), 0, None),
             (PostOpKind.BIAS_M, 0, 0, I32))
    check(build(combo, 2, 3, 4, values={"a": a, "b": b}, post=post2, alpha=2**30, beta=-7, with_c=True))


# ------------------------------------------------------------------------------------
# tests: epilogues

FLOAT_KINDS = [
    (PostOpKind.BIAS_N, 0, 0, "acc"), (PostOpKind.BIAS_N, 0, 0, "d"), (PostOpKind.BIAS_M, 0, 0, "acc"),
    (PostOpKind.BIAS_M, 0, 0, "d"), (PostOpKind.RELU, 0, 0, None), (PostOpKind.GELU_ERF, 0, 0, None),
    (PostOpKind.GELU_TANH, 0, 0, None), (PostOpKind.CLAMP, -0.3, 0.7, None), (PostOpKind.SCALE, -2.5, 0, None),
    (PostOpKind.ADD, 0, 0, "acc"), (PostOpKind.ADD, 0, 0, "d"),
]


def _resolve(post: tuple, combo: GemmCombo) -> tuple:
    return tuple((k, p0, p1, {"acc": combo.acc, "d": combo.d, None: None}[o]) for k, p0, p1, o in post)


@pytest.mark.parametrize("combo", FLOAT_COMBOS, ids=lambda c: c.name)
@pytest.mark.parametrize("post", FLOAT_KINDS, ids=lambda p: f"{p[0].name}-{p[3]}")
def test_every_float_post_op(combo: GemmCombo, post: tuple) -> None:
    check(build(combo, 7, 6, 13, alpha=1.5, beta=0.5, post=_resolve((post,), combo), pad=1))
    check(build(combo, 7, 6, 13, batch=2, bcast="e", post=_resolve((post,), combo)))


@pytest.mark.parametrize("combo", FLOAT_COMBOS, ids=lambda c: c.name)
def test_chain_of_four_post_ops(combo: GemmCombo) -> None:
    chain = ((PostOpKind.BIAS_N, 0, 0, "d"), (PostOpKind.GELU_TANH, 0, 0, None), (PostOpKind.SCALE, 3.0, 0, None),
             (PostOpKind.ADD, 0, 0, "acc"))
    check(build(combo, 8, 5, 20, beta=-1.0, post=_resolve(chain, combo), pad=2))
    chain2 = ((PostOpKind.BIAS_M, 0, 0, "acc"), (PostOpKind.GELU_ERF, 0, 0, None), (PostOpKind.CLAMP, -0.1, 0.2, None),
              (PostOpKind.RELU, 0, 0, None))
    check(build(combo, 8, 5, 20, batch=2, post=_resolve(chain2, combo), in_place=True, beta=1.0))


def test_gelu_and_relu_special_values() -> None:
    """Large negative, infinite and NaN accumulators through gelu/relu/clamp."""
    f32 = COMBO[F32, F32, F32]
    a = np.array([[[1.0], [-1e30], [np.inf], [-30.0], [np.nan], [-9.0]]], np.float32)
    b = np.ones((1, 1, 2), np.float32)
    for kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH, PostOpKind.RELU):
        check(build(f32, 6, 2, 1, values={"a": a, "b": b}, post=((kind, 0, 0, None),)))
    got = check(build(f32, 6, 2, 1, values={"a": a, "b": b}, post=((PostOpKind.CLAMP, -1.0, 1.0, None),)))
    assert np.isnan(got[0, 4]).all()


def test_float_overflow_to_inf_is_silent() -> None:
    combo = COMBO[F16, F16, F16]
    a = np.full((1, 2, 4), 200.0, np.float16)
    got = check(build(combo, 2, 2, 4, values={"a": a, "b": a.transpose(0, 2, 1).copy()}))  # 160000 > f16 max
    assert np.isinf(got.astype(np.float64)).all()


# ------------------------------------------------------------------------------------
# tests: COPY


@pytest.mark.parametrize("src_dt", [F64, F32, F16, BF16])
@pytest.mark.parametrize("dst_dt", [F64, F32, F16, BF16])
def test_copy_conversions(src_dt: DType, dst_dt: DType) -> None:
    mem = Memory()
    rows, cols = 4, 9
    src = mem.matrix(1, src_dt, rows, cols, 1, pad=2)
    dst = mem.matrix(4, dst_dt, rows, cols, 1, pad=3, output=True)
    op = check_command(Copy(src=src, dst=dst).encode(), DeviceCaps())
    vals = np.concatenate([
        RNG.standard_normal(20) * 10.0 ** RNG.integers(-8, 8, 20),
        [1 + 2**-8 + 2**-30, 1 + 2**-11 + 2**-40, -(1 + 2**-8 + 2**-30), 1e39, -1e300, 1e-45, 6e-8, 0.0, -0.0,
         np.nan, np.inf, -np.inf, 65520.0, 65519.99, 3.3895313892515355e38, 2**-133, 1.5 * 2**-24],
    ])[: rows * cols].reshape(1, rows, cols)
    with np.errstate(all="ignore"):
        mem.write(op.src, 1, vals.astype(DTYPES[src_dt].numpy))
    s, d = copy_arrays(op, mem.lookup)
    before = mem.snapshot()
    DRIVER.copy(op, s, d)
    assert mem.snapshot()[1] == before[1]
    x = s.astype(np.float64)
    want = np.array([[_rne(v, dst_dt) for v in row] for row in x])
    got = d.astype(np.float64)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    assert same.all(), (x[~same], got[~same], want[~same])
    assert (np.signbit(got) == np.signbit(want))[~np.isnan(want)].all()
    outside = np.frombuffer(bytearray(mem.buffers[4].tobytes()), np.uint8)
    view_array(outside, op.dst, 1)[...] = 0
    ref_outside = np.frombuffer(bytearray(before[4]), np.uint8)
    view_array(ref_outside, op.dst, 1)[...] = 0
    assert outside.tobytes() == ref_outside.tobytes()


def _rne(v: float, dt: DType) -> float:
    """Round a float64 once to ``dt`` (nearest, ties to even) from first principles."""
    from fractions import Fraction

    if math.isnan(v) or math.isinf(v) or v == 0 or dt == F64:
        return v
    info = DTYPES[dt]
    fi = ml_dtypes.finfo(info.numpy)
    p = info.precision_bits
    q = abs(Fraction(v))
    e = max(math.frexp(abs(v))[1] - 1, int(fi.minexp))
    ulp = Fraction(2) ** (e - p + 1)
    r = round(q / ulp) * ulp
    if r > Fraction(float(fi.max)):
        return math.copysign(math.inf, v)
    return math.copysign(float(r), v)


def test_copy_integers_are_plain_copies() -> None:
    for dt in (I8, U8, I32):
        mem = Memory()
        src = mem.matrix(1, dt, 3, 5, 1, pad=1)
        dst = mem.matrix(4, dt, 3, 5, 1, pad=2, output=True)
        op = check_command(Copy(src=src, dst=dst).encode(), DeviceCaps())
        mem.write(op.src, 1, random_values(dt, (1, 3, 5)))
        s, d = copy_arrays(op, mem.lookup)
        DRIVER.copy(op, s, d)
        np.testing.assert_array_equal(d, s)


# ------------------------------------------------------------------------------------
# tests: threads


def test_thread_limit_is_applied_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    monkeypatch.setenv("FFACCEL_CPU_THREADS", "1")
    drv = CpuDriver(kernels="auto")  # auto: a thread limit keeps every GEMM on OpenBLAS
    assert drv.threads == 1
    case = build(COMBO[F32, F32, F32], 80, 80, 80, beta=1.0)
    exact, bound = expected_float(case)
    a, b, c, d, epi = case.arrays
    seen = []
    import ffaccel.drivers.cpu as cpu_mod

    real = cpu_mod._gemm2d

    def spy(*args: object) -> bool:
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real(*args)

    monkeypatch.setattr(cpu_mod, "_gemm2d", spy)
    drv.prepare_gemm(case.op)(a, b, c, d, epi)
    assert seen and all(n == 1 for n in seen[0])
    assert error_ratio(d, exact, bound).max() <= 1.0
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FFAccelError) as e:
            CpuDriver(threads=bad)
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "threads")


@pytest.mark.parametrize("combo", [COMBO[F16, F16, F16], COMBO[F16, F16, F32], COMBO[BF16, BF16, BF16]],
                         ids=lambda c: c.name)
def test_large_half_precision_casts(combo: GemmCombo) -> None:
    """Past the size where the f16 casts are split across two threads (halves must meet exactly)."""
    check(build(combo, 1031, 1029, 3, pad=1, beta=0.5, post=((PostOpKind.RELU, 0, 0, None),)))


# ------------------------------------------------------------------------------------
# tests: the scratch-array pool


@pytest.mark.parametrize("combo,mnk", [(COMBO[F16, F16, F16], (300, 310, 290)),
                                       (COMBO[BF16, BF16, F32], (300, 310, 290)),
                                       (COMBO[I8, I8, I32], (260, 270, 1100))],
                         ids=lambda v: v.name if isinstance(v, GemmCombo) else str(v))
def test_concurrent_calls_of_one_kernel_do_not_share_scratch(combo: GemmCombo, mnk: tuple) -> None:
    """Two threads run one prepared kernel (same geometry, pooled scratch) on different data."""
    import threading

    m, n, k = mnk
    alpha, beta = (3, -2) if combo.is_int else (1.5, 0.5)
    cases = [build(combo, m, n, k, alpha=alpha, beta=beta) for _ in range(2)]
    kernel = DRIVER.prepare_gemm(cases[0].op)
    wants = [expected_int(c) if combo.is_int else expected_float(c) for c in cases]
    barrier = threading.Barrier(2)
    errors: list[str] = []

    def worker(i: int) -> None:
        a, b, c, d, epi = cases[i].arrays
        barrier.wait()
        for it in range(25):
            d[...] = 0
            kernel(a, b, c, d, epi)
            if combo.is_int:
                ok = np.array_equal(d, wants[i])
            else:
                ok = error_ratio(d, *wants[i]).max() <= 1.0
            if not ok:
                errors.append(f"thread {i}, call {it}: wrong result")
                return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_workspace_pool_is_bounded_and_never_shares() -> None:
    from ffaccel.drivers import cpu

    ws = cpu._Workspace(max_bytes=4 << 20, max_entries=3, min_bytes=64 << 10)
    f32 = np.dtype(np.float32)
    x = ws.take((256, 256), f32)  # 256 KiB
    y = ws.take((256, 256), f32)
    assert x is not y and not np.shares_memory(x, y)
    ws.give([x])
    assert ws.take((256, 256), f32) is x  # reused once given back ...
    assert ws.take((256, 256), f32) is not x  # ... and handed to one taker only
    ws.give([np.empty((16, 16), f32)])  # too small to pool
    assert ws.stats() == (0, 0)
    ws.give([np.empty((1024, 1024, 2), f32)])  # 8 MiB: over the byte bound, not kept
    assert ws.stats() == (0, 0)
    arrays = [np.empty((512, 512 + i), f32) for i in range(6)]  # ~1 MiB each
    ws.give(arrays)
    count, held = ws.stats()
    assert count <= 3 and held <= 4 << 20
    assert ws.take((512, 512), f32) is not arrays[0]  # the oldest was evicted
    assert ws.take((512, 517), f32) is arrays[5]  # the newest kept

    # the driver's own pool stays within its bounds over many geometries
    for size in range(300, 1500, 97):
        check(build(COMBO[F16, F16, F16], size, size // 2 + 1, 64))
    count, held = cpu._WORKSPACE.stats()
    assert count <= cpu._WORKSPACE.max_entries and held <= cpu._WORKSPACE.max_bytes
