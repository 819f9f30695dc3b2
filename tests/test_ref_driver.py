"""The golden model (ref driver) and its rounding helpers, checked against exact arithmetic.

The oracle here is independent of the code under test: Python Fractions for the
exact value, and a from-first-principles round-to-nearest-even of a Fraction.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from ffaccel.abi import Copy, DeviceCaps, Gemm, Matrix, PostOpDesc, check_command
from ffaccel.drivers.ref import RefDriver
from ffaccel.drivers.rounding import round_to, wrap_int32
from ffaccel.spec import DTYPES, GEMM_COMBOS, DType, GemmCombo, PostOpKind
from ffaccel.spec.accuracy import error_ratio

F64, F32, F16, BF16, I8, U8, I32 = DType.F64, DType.F32, DType.F16, DType.BF16, DType.I8, DType.U8, DType.I32
FLOAT_COMBOS = [c for c in GEMM_COMBOS if not c.is_int]
INT_COMBOS = [c for c in GEMM_COMBOS if c.is_int]
REF = RefDriver()


# ------------------------------------------------------------------------------------
# oracle


def frac_round(q: Fraction, dt: DType) -> float:
    """Round an exact rational to ``dt``: nearest, ties to even, overflow to inf (IEEE 754)."""
    if q == 0:
        return 0.0
    info = DTYPES[dt]
    p = info.precision_bits
    fi = ml_dtypes.finfo(info.numpy)
    sign = -1.0 if q < 0 else 1.0
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()  # 2**e <= a < 2**(e+2)
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    e = max(e, int(fi.minexp))  # subnormals share the smallest normal exponent's spacing
    ulp = Fraction(2) ** (e - p + 1)
    v = round(a / ulp) * ulp  # Python's round() of a Fraction is half-to-even
    if v > Fraction(float(fi.max)):
        return sign * math.inf
    return sign * float(v)


def wrap(v: int) -> int:
    return (v + 2**31) % 2**32 - 2**31


# ------------------------------------------------------------------------------------
# building validated ops


def mat(handle: int, dt: DType, rows: int, cols: int, **kw) -> Matrix:
    # Matrix's default ld_elems is cols, which the validator refuses when cols == 0
    kw.setdefault("ld_elems", max(1, cols))
    return Matrix(handle, dt, rows, cols, **kw)


def gemm_op(combo: GemmCombo, m: int, n: int, k: int, *, batch: int = 1, alpha: float | int = 1,
            beta: float | int = 0, trans_a: bool = False, trans_b: bool = False, with_c: bool | None = None,
            post: tuple[tuple[PostOpKind, float | int, float | int, DType | None], ...] = ()):
    """A validated GemmOp; handles are plain numbers (only the geometry is checked here)."""
    if with_c is None:
        with_c = beta != 0
    stride = m * n if batch > 1 else 0
    epi = []
    for kind, p0, p1, odt in post:
        shape = {PostOpKind.BIAS_N: (1, n), PostOpKind.BIAS_M: (m, 1), PostOpKind.ADD: (m, n)}.get(kind)
        operand = mat(10 + len(epi), odt, *shape) if shape is not None else None
        epi.append(PostOpDesc(kind, p0, p1, operand))
    g = Gemm(m=m, n=n, k=k,
             a=mat(1, combo.a, *((k, m) if trans_a else (m, k))),
             b=mat(2, combo.b, *((n, k) if trans_b else (k, n))),
             c=mat(3, combo.d, m, n) if with_c else None,
             d=mat(4, combo.d, m, n, batch_stride_elems=stride),
             alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b, batch=batch,
             acc_dtype=combo.acc, epilogue=tuple(epi))
    return check_command(g.encode(), DeviceCaps())


def npdt(dt: DType) -> np.dtype:
    return DTYPES[dt].numpy


def arr(values: object, dt: DType) -> np.ndarray:
    """A (batch, rows, cols) array from nested lists (2-D input gets batch 1)."""
    x = np.array(values, dtype=np.float64 if DTYPES[dt].is_float else np.int64)
    if x.ndim == 2:
        x = x[None]
    return x.astype(npdt(dt))


def run(op, a, b, c=None, epi=(), d=None):
    if d is None:
        d = np.full((op.batch, op.m, op.n), 7, dtype=npdt(op.combo.d))
    REF.gemm(op, a, b, c, d, tuple(epi))
    return d


def combo(a: DType, b: DType, d: DType) -> GemmCombo:
    acc = I32 if a in (I8, U8) else (F64 if a == F64 else F32)
    return GemmCombo(a, b, acc, d)


# ------------------------------------------------------------------------------------
# rounding helpers


def test_round_to_has_no_double_rounding_bf16():
    x = np.array([1 + 2**-8 + 2**-30, -(1 + 2**-8 + 2**-30)])
    # The naive cast rounds to float32 first (giving the exact tie 1 + 2**-8), then to even: 1.
    assert float(x[:1].astype(np.float32).astype(ml_dtypes.bfloat16)[0]) == 1.0
    got = round_to(x, BF16)
    assert got.dtype == ml_dtypes.bfloat16
    assert got.astype(np.float64).tolist() == [1 + 2**-7, -(1 + 2**-7)]


def test_round_to_has_no_double_rounding_f16():
    x = np.array([1 + 2**-11 + 2**-40, 2**-25 + 2**-60])  # just above ties (one normal, one subnormal)
    assert round_to(x, F16).astype(np.float64).tolist() == [1 + 2**-10, 2**-24]


def test_round_to_ties_even_overflow_nan_zero():
    f16 = round_to(np.array([1 + 2**-11, 1 + 3 * 2**-11, 65504 + 16, 65504 + 15.99, -65520, np.nan, -0.0]), F16)
    r = f16.astype(np.float64)
    assert r[:5].tolist() == [1.0, 1 + 2**-9, math.inf, 65504.0, -math.inf]
    assert math.isnan(r[5]) and r[6] == 0 and math.copysign(1, r[6]) == -1
    bmax = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    bf = round_to(np.array([1 + 2**-8, 1 + 3 * 2**-8, bmax + 2.0**119, bmax + 2.0**118, 1e300, np.inf]), BF16)
    assert bf.astype(np.float64).tolist() == [1.0, 1 + 2**-6, math.inf, bmax, math.inf, math.inf]
    assert round_to(np.array([3.5e38]), F32).tolist() == [math.inf]
    x = np.array([0.1, -1e-310])
    assert round_to(x, F64).tolist() == x.tolist()


@pytest.mark.parametrize("dt", [F64, F32, F16, BF16])
def test_round_to_matches_fraction_oracle(dt):
    rng = np.random.default_rng(int(dt))
    fi = ml_dtypes.finfo(npdt(dt))
    p = DTYPES[dt].precision_bits
    # random values over the whole range, plus exact ties and their neighbours
    e = rng.integers(int(fi.minexp) - p - 2, int(fi.maxexp) + 1, 400)
    x = list(rng.uniform(-2, 2, 400) * np.exp2(e.astype(np.float64)))
    if dt != F64:
        # midpoints between neighbours of dt (exact in float64), and the doubles either side
        eg = rng.integers(int(fi.minexp) - p, int(fi.maxexp), 300).astype(np.float64)
        with np.errstate(over="ignore"):
            g = (rng.uniform(-2, 2, 300) * np.exp2(eg)).astype(npdt(dt))
        uint = np.uint16 if DTYPES[dt].itemsize_bytes == 2 else np.uint32
        nxt = (g.view(uint) + uint(1)).view(npdt(dt))  # the neighbour away from zero
        mid = (g.astype(np.float64) + nxt.astype(np.float64)) / 2
        x += list(mid) + list(np.nextafter(mid, math.inf)) + list(np.nextafter(mid, -math.inf))
    x = np.array([v for v in x if math.isfinite(v)])
    got = round_to(x, dt).astype(np.float64)
    want = [frac_round(Fraction(v), dt) for v in x]
    assert got.tolist() == want


def test_wrap_int32():
    assert wrap_int32(np.array([2**31, -2**31 - 1, 2**32 + 5, -1, 0], dtype=np.int64)).tolist() == [
        -2**31, 2**31 - 1, 5, -1, 0]
    big = np.array([[2**80 + 3, -(2**63) - 1]], dtype=object)
    w = wrap_int32(big)
    assert w.dtype == np.int32 and w.shape == (1, 2) and w.tolist() == [[3, wrap(-(2**63) - 1)]]
    assert wrap_int32(np.zeros((0, 2), dtype=object)).shape == (0, 2)


# ------------------------------------------------------------------------------------
# hand-computed GEMMs, every combination

# A @ B for A = [[1, -2], [3, 4]] (signed) or [[1, 2], [3, 4]] (uint8), B = [[5, -6], [7, 8]] or [[5, 6], [7, 8]]
_AB = {(True, True): [[-9, -22], [43, 14]], (True, False): [[-9, -10], [43, 50]],
       (False, True): [[19, 10], [43, 14]], (False, False): [[19, 22], [43, 50]]}


@pytest.mark.parametrize("cmb", GEMM_COMBOS, ids=lambda c: c.name)
def test_hand_computed_every_combo(cmb):
    sa, sb = cmb.a != U8, cmb.b != U8
    a = arr([[1, -2 if sa else 2], [3, 4]], cmb.a)
    b = arr([[5, -6 if sb else 6], [7, 8]], cmb.b)
    c = arr([[1, 0], [0, -1]], cmb.d)
    op = gemm_op(cmb, 2, 2, 2, alpha=2, beta=3)
    res = REF.evaluate(op, a, b, c, ())
    expect = [[2 * v + 3 * w for v, w in zip(r, cr)] for r, cr in zip(_AB[sa, sb], [[1, 0], [0, -1]])]
    assert res.rounded.dtype == npdt(cmb.d)
    assert res.rounded.astype(np.float64).tolist() == [expect]
    assert res.exact.tolist() == [expect]
    if cmb.is_int:
        assert not res.bound.any()
    else:
        assert (res.bound > 0).all()
    d = run(op, a, b, c)
    assert d.astype(np.float64).tolist() == [expect]


# ------------------------------------------------------------------------------------
# brute force against Fractions


def _random_values(rng, dt: DType, shape) -> np.ndarray:
    if dt == I8:
        return rng.integers(-128, 128, shape).astype(np.int8)
    if dt == U8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if dt == I32:
        return rng.integers(-2**31, 2**31, shape).astype(np.int32)
    # wide exponent spread so that sums cancel and need more than 53 bits
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-12, 12, shape).astype(np.float64))
    return x.astype(npdt(dt))


def _maybe_broadcast(rng, x: np.ndarray) -> np.ndarray:
    """Sometimes a batch stride 0 view (one matrix for every batch entry)."""
    if x.shape[0] > 1 and rng.random() < 0.3:
        return np.broadcast_to(x[:1], x.shape)
    return x


def _frac_gemm(op, a, b, c):
    """alpha * a @ b + beta * c, exactly, as a nested list [batch][m][n] of Fractions / ints."""
    to = (lambda v: int(v)) if op.combo.is_int else (lambda v: Fraction(float(v)))
    al = to(op.alpha)
    be = to(op.beta)
    out = []
    for bi in range(op.batch):
        rows = []
        for i in range(op.m):
            row = []
            for j in range(op.n):
                s = sum((to(a[bi, i, t]) * to(b[bi, t, j]) for t in range(op.k)), to(0))
                v = al * s if op.alpha != 0 else to(0)
                if op.beta != 0:
                    v += be * to(c[bi, i, j])
                row.append(v)
            rows.append(row)
        out.append(rows)
    return out


def _read_only(*xs):
    for x in xs:
        if x is not None:
            x.flags.writeable = False


@pytest.mark.parametrize("cmb", GEMM_COMBOS, ids=lambda c: c.name)
@pytest.mark.parametrize("seed", range(6))
def test_brute_force_matches_fractions(cmb, seed):
    rng = np.random.default_rng(1000 * seed + GEMM_COMBOS.index(cmb))
    for _ in range(8):
        m, n, k = (int(v) for v in rng.integers(0, 5, 3))
        batch = int(rng.integers(1, 4))
        ta, tb = bool(rng.integers(2)), bool(rng.integers(2))
        if cmb.is_int:
            alpha = int(rng.choice([0, 1, -1, 3, 2**31 - 1, -2**31]))
            beta = int(rng.choice([0, 1, -2, 2**30]))
        else:
            alpha = float(rng.choice([0.0, 1.0, -1.5, rng.standard_normal()]))
            beta = float(rng.choice([0.0, 1.0, 0.75, rng.standard_normal()]))
        op = gemm_op(cmb, m, n, k, batch=batch, alpha=alpha, beta=beta, trans_a=ta, trans_b=tb)
        # op(A) through a transposed (strided) view when trans_a, like the runtime binds it
        a_st = _random_values(rng, cmb.a, (batch, k, m) if ta else (batch, m, k))
        b_st = _random_values(rng, cmb.b, (batch, n, k) if tb else (batch, k, n))
        a = _maybe_broadcast(rng, a_st.swapaxes(1, 2) if ta else a_st)
        b = _maybe_broadcast(rng, b_st.swapaxes(1, 2) if tb else b_st)
        c = _maybe_broadcast(rng, _random_values(rng, cmb.d, (batch, m, n))) if beta != 0 else None
        _read_only(a, b, c)
        res = REF.evaluate(op, a, b, c, ())
        exact = _frac_gemm(op, a, b, c)
        assert res.rounded.shape == res.exact.shape == res.bound.shape == (batch, m, n)
        assert res.rounded.dtype == npdt(cmb.d)
        got = res.rounded.astype(np.float64).tolist()
        if cmb.is_int:
            want = [[[wrap(v) for v in r] for r in bt] for bt in exact]
            assert got == want and res.exact.tolist() == want
        else:
            want = [[[frac_round(v, cmb.d) for v in r] for r in bt] for bt in exact]
            assert got == want, (op, a, b, c)
            # exact: the value correctly rounded to float64 (finite here)
            # (or the rounded inf where D overflowed)
            assert res.exact.tolist() == [[[float(v) if math.isfinite(frac_round(v, cmb.d)) else frac_round(v, cmb.d)
                                            for v in r] for r in bt] for bt in exact]
            assert (error_ratio(res.rounded, res.exact, res.bound) <= 1).all()
        d = np.zeros((batch, m, n), npdt(cmb.d))
        REF.gemm(op, a, b, c, d, ())
        assert d.astype(np.float64).tolist() == got


@pytest.mark.parametrize("cmb", [combo(F64, F64, F64), combo(F32, F32, F32), combo(F16, F16, F16),
                                 combo(BF16, BF16, BF16), combo(BF16, BF16, F32)], ids=lambda c: c.name)
@pytest.mark.parametrize("k", [1, 7, 129])
def test_fast_path_matches_fractions_under_cancellation(cmb, k):
    """The vectorised (sliced) path against Fractions, on sums that cancel to far below their terms."""
    from ffaccel.drivers import ref as ref_mod
    rng = np.random.default_rng(k * 31 + GEMM_COMBOS.index(cmb))
    m, n = 3, 4
    a = _random_values(rng, cmb.a, (1, m, k))
    b = _random_values(rng, cmb.b, (1, k, n))
    # column pairs of A that cancel (x, -x) against equal rows of B, plus small survivors
    half = k // 2
    a[0, :, half:2 * half] = -a[0, :, :half]
    b[0, half:2 * half, :] = b[0, :half, :]
    a[0, 0, :] = a[0, 0, :] * np.asarray(2.0**-20, a.dtype)  # a row far smaller than the rest
    c = _random_values(rng, cmb.d, (1, m, n))
    c[0, 1, :] = 0
    for alpha, beta in [(1.0, 0.0), (-0.75, 1.0), (3.0, -0.5)]:
        op = gemm_op(cmb, m, n, k, alpha=alpha, beta=beta)
        cc = c if beta != 0 else None
        res = REF.evaluate(op, a, b, cc, ())
        exact = _frac_gemm(op, a, b, cc)
        want = [[[frac_round(v, cmb.d) for v in r] for r in bt] for bt in exact]
        assert res.rounded.astype(np.float64).tolist() == want
        assert res.exact.tolist() == [[[float(v) for v in r] for r in bt] for bt in exact]
        # and the fast path really answered (no fallback to the per-element exact path)
        need_sign = cmb.d != F64
        _, _, ok = ref_mod._fast_accumulate(op, a, b, cc, need_sign)
        assert ok.all()


def test_f64_dot_product_is_correctly_rounded_under_cancellation():
    a = arr([[1e16, 1.0, -1e16, 2**-30]], F64)
    b = arr([[1.0], [1.0], [1.0], [1.0]], F64)
    op = gemm_op(combo(F64, F64, F64), 1, 1, 4)
    assert run(op, a, b)[0, 0, 0] == 1.0 + 2**-30  # naive left-to-right summation gives 2**-30
    # products whose low halves matter: (1 + 2**-30)**2 - 1 - 2**-29 == 2**-60
    x = 1 + 2**-30
    a = arr([[x, 1.0, 1.0]], F64)
    b = arr([[x], [-1.0], [-(2**-29)]], F64)
    assert run(gemm_op(combo(F64, F64, F64), 1, 1, 3), a, b)[0, 0, 0] == 2**-60


# ------------------------------------------------------------------------------------
# reference-BLAS rules: what is not read cannot leak


@pytest.mark.parametrize("cmb", FLOAT_COMBOS, ids=lambda c: c.name)
def test_beta_zero_does_not_read_c(cmb):
    a = arr([[1, 2]], cmb.a)
    b = arr([[3], [4]], cmb.b)
    op_c = gemm_op(cmb, 1, 1, 2, beta=0, with_c=True)
    c = arr([[np.nan]], cmb.d)
    assert run(op_c, a, b, c).astype(np.float64).tolist() == [[[11.0]]]
    assert run(op_c, a, b, arr([[np.inf]], cmb.d)).astype(np.float64).tolist() == [[[11.0]]]
    op = gemm_op(cmb, 1, 1, 2, beta=0)
    assert op.c is None
    assert run(op, a, b, None).astype(np.float64).tolist() == [[[11.0]]]


@pytest.mark.parametrize("cmb", GEMM_COMBOS, ids=lambda c: c.name)
def test_alpha_zero_does_not_read_a_b(cmb):
    if cmb.is_int:
        a, b = arr([[1, 2]], cmb.a), arr([[3], [4]], cmb.b)  # ints have no NaN; any values must not matter
    else:
        a, b = arr([[np.nan, np.inf]], cmb.a), arr([[np.inf], [np.nan]], cmb.b)
    c = arr([[5]], cmb.d)
    op = gemm_op(cmb, 1, 1, 2, alpha=0, beta=2)
    res = REF.evaluate(op, a, b, c, ())
    assert res.rounded.astype(np.float64).tolist() == [[[10.0]]]


@pytest.mark.parametrize("cmb", GEMM_COMBOS, ids=lambda c: c.name)
def test_k_zero_is_epilogue_of_beta_c(cmb):
    a = np.zeros((1, 2, 0), npdt(cmb.a))
    b = np.zeros((1, 0, 2), npdt(cmb.b))
    c = arr([[1, -2], [3, 4]], cmb.d)
    op = gemm_op(cmb, 2, 2, 0, alpha=3, beta=2, post=((PostOpKind.RELU, 0, 0, None),))
    assert run(op, a, b, c).astype(np.float64).tolist() == [[[2, 0], [6, 8]]]
    # and with beta == 0 too: D = epilogue(0) — here bias over n
    op0 = gemm_op(cmb, 2, 2, 0, alpha=3, beta=0, post=((PostOpKind.BIAS_N, 0, 0, cmb.d),))
    bias = arr([[5, -1]], cmb.d)
    assert run(op0, a, b, None, (bias,)).astype(np.float64).tolist() == [[[5, -1], [5, -1]]]


@pytest.mark.parametrize("m,n,batch", [(0, 3, 1), (3, 0, 1), (3, 3, 0)])
def test_empty_writes_nothing(m, n, batch):
    cmb = combo(F32, F32, F32)
    op = gemm_op(cmb, m, n, 2, batch=batch, beta=1)
    a = np.full((batch, m, 2), np.nan, np.float32)
    b = np.full((batch, 2, n), np.nan, np.float32)
    c = np.full((batch, m, n), np.nan, np.float32)
    d = np.empty((batch, m, n), np.float32)
    REF.gemm(op, a, b, c, d, ())
    assert REF.evaluate(op, a, b, c, ()).rounded.shape == (batch, m, n)


# ------------------------------------------------------------------------------------
# accumulation width and output rounding


@pytest.mark.parametrize("in_dt,big,ones", [(F16, 2048.0, 1024), (BF16, 256.0, 256)])
@pytest.mark.parametrize("out_same", [True, False])
def test_half_inputs_accumulate_wider_than_their_type(in_dt, big, ones, out_same):
    # In the input type, big + 1 rounds back to big (ulp 2 there): a narrow accumulator sticks.
    assert float(np.array([big + 1]).astype(npdt(in_dt))[0]) == big
    k = 1 + ones
    cmb = combo(in_dt, in_dt, in_dt if out_same else F32)
    a = arr([[big] + [1.0] * ones], in_dt)
    b = arr([[1.0]] * k, in_dt)
    assert run(gemm_op(cmb, 1, 1, k), a, b)[0, 0, 0] == big + ones


@pytest.mark.parametrize("out_dt", [F16, BF16])
def test_output_rounding_ties_to_even_and_overflow(out_dt):
    cmb = combo(out_dt, out_dt, out_dt)
    p = DTYPES[out_dt].precision_bits
    h = 2.0 ** -p  # half an ulp at 1
    fmax = float(ml_dtypes.finfo(npdt(out_dt)).max)
    half_ulp_max = 2.0 ** (math.floor(math.log2(fmax)) - p)
    rows = [[1.0, h], [1.0, 3 * h], [fmax, half_ulp_max], [fmax, half_ulp_max / 2], [-fmax, -half_ulp_max]]
    a = arr(rows, out_dt)
    assert a.astype(np.float64)[0].tolist() == rows  # the inputs are exactly representable
    b = arr([[1.0], [1.0]], out_dt)
    d = run(gemm_op(cmb, 5, 1, 2), a, b)
    assert d.astype(np.float64)[0, :, 0].tolist() == [1.0, 1 + 4 * h, math.inf, fmax, -math.inf]
    res = REF.evaluate(gemm_op(cmb, 5, 1, 2), a, b, None, ())
    assert res.exact[0, 2, 0] == math.inf and res.exact[0, 3, 0] == fmax + half_ulp_max / 2
    assert (error_ratio(res.rounded, res.exact, res.bound) <= 1).all()


def test_bf16_output_is_rounded_once_from_the_exact_sum():
    # exact sum 1 + 2**-8 + 2**-30: rounding it to f32 first would make a tie and give 1.0
    cmb = combo(BF16, BF16, BF16)
    a = arr([[1.0, 2.0**-8, 2.0**-30]], BF16)
    b = arr([[1.0]] * 3, BF16)
    assert float(run(gemm_op(cmb, 1, 1, 3), a, b)[0, 0, 0]) == 1 + 2**-7


@pytest.mark.parametrize("dt,tiny", [(F32, 2.0**-80), (BF16, 2.0**-70), (F16, 2.0**-24)])
def test_output_is_rounded_once_when_the_float64_sum_is_inexact(dt, tiny):
    # exact sum 1 + (half an ulp of dt at 1) + tiny: just above a tie, so it rounds up. The float64
    # sum drops `tiny` (except for f16) and a plain second rounding would then see a tie and round to 1.
    cmb = combo(dt, dt, dt)
    h = 2.0 ** -DTYPES[dt].precision_bits
    a = arr([[1.0, h, tiny]], dt)
    assert a.astype(np.float64).tolist() == [[[1.0, h, tiny]]]
    b = arr([[1.0]] * 3, dt)
    assert float(run(gemm_op(cmb, 1, 1, 3), a, b)[0, 0, 0]) == 1 + 2 * h


# ------------------------------------------------------------------------------------
# integers wrap like 32-bit hardware


@pytest.mark.parametrize("ta,tb", [(I8, I8), (U8, U8), (I8, U8)])
def test_int_accumulator_wraps_modulo_2_32_large_k(ta, tb):
    k = 140_000
    va = 127 if ta == I8 else 255
    vb = -128 if tb == I8 else 255
    a = np.full((1, 1, k), va, npdt(ta))
    b = np.full((1, k, 1), vb, npdt(tb))
    op = gemm_op(combo(ta, tb, I32), 1, 1, k)
    assert abs(va * vb * k) > 2**31  # really overflows
    assert run(op, a, b)[0, 0, 0] == wrap(va * vb * k)


def test_int_alpha_beta_products_wrap():
    cmb = combo(I8, I8, I32)
    a, b = arr([[100, 100]], I8), arr([[100], [100]], I8)
    c = arr([[2**31 - 1]], I32)
    op = gemm_op(cmb, 1, 1, 2, alpha=2**31 - 1, beta=-(2**31))
    assert run(op, a, b, c)[0, 0, 0] == wrap((2**31 - 1) * 20000 - 2**31 * (2**31 - 1))


def test_int_accumulator_beyond_int64_range_wraps():
    k = 140_000
    a = np.full((1, 1, k), -128, np.int8)
    b = np.full((1, k, 1), 127, np.int8)
    c = arr([[-(2**31)]], I32)
    op = gemm_op(combo(I8, I8, I32), 1, 1, k, alpha=-(2**31), beta=-(2**31))
    v = 2**31 * 128 * 127 * k + 2**62
    assert v > 2**63  # an int64 accumulator would overflow (harmlessly mod 2**32, but not obviously)
    assert run(op, a, b, c)[0, 0, 0] == wrap(v)


def test_int32_epilogue_wraps_after_every_op():
    cmb = combo(I8, I8, I32)
    a, b = arr([[1]], I8), arr([[1]], I8)
    c = arr([[2**31 - 2]], I32)
    # x = 2**31 - 1; bias +1 wraps to -2**31; relu of the wrapped value is 0
    post = ((PostOpKind.BIAS_N, 0, 0, I32), (PostOpKind.RELU, 0, 0, None))
    op = gemm_op(cmb, 1, 1, 1, beta=1, post=post)
    assert run(op, a, b, c, (arr([[1]], I32), None))[0, 0, 0] == 0
    # scale wraps (2**30 * 4 == 2**32 -> 0), then add, then clamp on the wrapped value
    c2 = arr([[2**30 - 1]], I32)
    post = ((PostOpKind.SCALE, 4, 0, None), (PostOpKind.ADD, 0, 0, I32),
            (PostOpKind.CLAMP, -5, 2**31 - 1, None), (PostOpKind.BIAS_M, 0, 0, I32))
    op = gemm_op(cmb, 1, 1, 1, beta=1, post=post)
    e = arr([[-(2**31)]], I32)  # 0 + -2**31 -> -2**31, clamped to -5, then bias -2**31 - 5 wraps
    d = run(op, a, b, c2, (None, e, None, arr([[-(2**31)]], I32)))
    assert d[0, 0, 0] == wrap(-5 - 2**31)
    res = REF.evaluate(op, a, b, c2, (None, e, None, arr([[-(2**31)]], I32)))
    assert res.exact[0, 0, 0] == wrap(-5 - 2**31) and res.bound[0, 0, 0] == 0


# ------------------------------------------------------------------------------------
# in place, batches, strided D


@pytest.mark.parametrize("cmb", [combo(F32, F32, F32), combo(BF16, BF16, BF16), combo(I8, U8, I32)],
                         ids=lambda c: c.name)
def test_in_place_d_is_c(cmb):
    a = arr([[1, 2], [3, 4]], cmb.a)
    b = arr([[1, 0], [0, 1]], cmb.b)
    cd = arr([[10, 20], [30, 40]], cmb.d)
    op = gemm_op(cmb, 2, 2, 2, beta=2)
    REF.gemm(op, a, b, cd, cd, ())
    assert cd.astype(np.float64).tolist() == [[[21, 42], [63, 84]]]


def test_batched_with_broadcast_writes_only_d_window():
    cmb = combo(F64, F64, F64)
    a = np.broadcast_to(arr([[1.0, 2.0]], F64), (3, 1, 2))  # batch stride 0
    b = arr([[[1.0], [0.0]], [[0.0], [1.0]], [[1.0], [1.0]]], F64)
    op = gemm_op(cmb, 1, 1, 2, batch=3)
    big = np.full((3, 2, 2), -1.0)
    d = big[:, :1, 1:]  # a strided window
    REF.gemm(op, a, b, None, d, ())
    assert big[:, 0, 1].tolist() == [1.0, 2.0, 3.0]
    assert (big[:, 1, :] == -1).all() and (big[:, 0, 0] == -1).all()


# ------------------------------------------------------------------------------------
# epilogues (float)


def _gelu_tanh_torch(x: float) -> float:
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


_XS = [-3.0, -0.5, 0.0, 0.25, 2.0, np.nan]


@pytest.mark.parametrize("kind,p0,p1,fn", [
    (PostOpKind.RELU, 0, 0, lambda x: max(x, 0.0) if not math.isnan(x) else x),
    (PostOpKind.GELU_ERF, 0, 0, lambda x: x * (1 + math.erf(x / math.sqrt(2))) / 2),
    (PostOpKind.GELU_TANH, 0, 0, _gelu_tanh_torch),
    (PostOpKind.CLAMP, -1.0, 0.5, lambda x: min(max(x, -1.0), 0.5) if not math.isnan(x) else x),
    (PostOpKind.SCALE, -2.5, 0, lambda x: -2.5 * x),
], ids=lambda v: getattr(v, "name", ""))
@pytest.mark.parametrize("out", [F64, F32, F16])
def test_each_unary_post_op(kind, p0, p1, fn, out):
    cmb = combo(out, out, out)
    a = arr([[x] for x in _XS], cmb.a)
    b = arr([[1.0]], cmb.b)
    op = gemm_op(cmb, len(_XS), 1, 1, post=((kind, p0, p1, None),))
    res = REF.evaluate(op, a, b, None, ())
    want = np.array([fn(x) for x in _XS])
    got = res.exact[0, :, 0]
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    # (the reference formulas cancel a little near x = -3: a few 1e-14 relative)
    assert np.allclose(got[ok], want[ok], rtol=1e-12, atol=1e-300)
    assert np.array_equal(res.rounded[0, :, 0].astype(np.float64), round_to(got, out).astype(np.float64),
                          equal_nan=True)


def test_gelu_is_accurate_far_left():
    # 1 + erf(x/sqrt2) cancels to 0 in float64 at x = -40; the true gelu is a tiny negative number
    cmb = combo(F64, F64, F64)
    op = gemm_op(cmb, 1, 1, 1, post=((PostOpKind.GELU_ERF, 0, 0, None),))
    v = run(op, arr([[-10.0]], F64), arr([[1.0]], F64))[0, 0, 0]
    assert v < 0 and math.isclose(v, -10 * 0.5 * math.erfc(10 / math.sqrt(2)), rel_tol=1e-13)


def test_epilogue_sees_accumulator_overflow():
    # bf16 products overflow the f32 accumulator: the post-ops must see inf, not the float64 value
    cmb = combo(BF16, BF16, F32)
    big = 2.0**100
    a, b = arr([[big], [-big]], BF16), arr([[big]], BF16)
    op = gemm_op(cmb, 2, 1, 1, post=((PostOpKind.SCALE, 2.0**-100, 0, None), (PostOpKind.GELU_ERF, 0, 0, None)))
    d = run(op, a, b)
    assert d[0, 0, 0] == np.inf and np.isnan(d[0, 1, 0])  # gelu(-inf) by its formula: -inf * 0 = NaN
    assert run(gemm_op(cmb, 2, 1, 1), a, b)[0, :, 0].tolist() == [np.inf, -np.inf]


@pytest.mark.parametrize("odt", [F32, F16])
def test_bias_and_add_operands_in_acc_or_d_dtype(odt):
    cmb = combo(F16, F16, F16)
    a = arr([[1.0, 2.0], [3.0, 4.0]], F16)
    b = arr([[1.0, 0.0], [0.0, 1.0]], F16)
    post = ((PostOpKind.BIAS_N, 0, 0, odt), (PostOpKind.BIAS_M, 0, 0, odt), (PostOpKind.ADD, 0, 0, odt))
    op = gemm_op(cmb, 2, 2, 2, post=post)
    epi = (arr([[10.0, 20.0]], odt), arr([[100.0], [200.0]], odt), arr([[0.5, 0.25], [-1.0, 0.0]], odt))
    d = run(op, a, b, None, epi)
    assert d.dtype == np.float16
    assert d.astype(np.float64).tolist() == [[[111.5, 122.25], [212.0, 224.0]]]


def test_chain_of_four_post_ops_rounds_once_at_the_end():
    cmb = combo(BF16, BF16, BF16)
    rng = np.random.default_rng(7)
    m, n, k = 3, 4, 5
    a = rng.standard_normal((1, m, k)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((1, k, n)).astype(ml_dtypes.bfloat16)
    c = rng.standard_normal((1, m, n)).astype(ml_dtypes.bfloat16)
    bias = rng.standard_normal((1, 1, n)).astype(np.float32)
    e = rng.standard_normal((1, m, n)).astype(ml_dtypes.bfloat16)
    post = ((PostOpKind.BIAS_N, 0, 0, F32), (PostOpKind.GELU_TANH, 0, 0, None),
            (PostOpKind.SCALE, 3.0, 0, None), (PostOpKind.ADD, 0, 0, BF16))
    op = gemm_op(cmb, m, n, k, alpha=0.5, beta=-1.0, post=post)
    res = REF.evaluate(op, a, b, c, (bias, None, None, e))
    f = np.float64
    x = 0.5 * (a.astype(f) @ b.astype(f)) - c.astype(f) + bias.astype(f)
    x = 3.0 * np.vectorize(_gelu_tanh_torch)(x) + e.astype(f)
    assert np.allclose(res.exact, x, rtol=1e-12, atol=1e-12)
    assert res.rounded.dtype == ml_dtypes.bfloat16
    assert np.array_equal(res.rounded, round_to(res.exact, BF16))
    assert (res.bound > 0).all() and (error_ratio(res.rounded, res.exact, res.bound) <= 1).all()
    d = run(op, a, b, c, (bias, None, None, e))
    assert np.array_equal(d, res.rounded)


@pytest.mark.parametrize("cmb", [combo(F32, F32, F32), combo(F16, F16, F16)], ids=lambda c: c.name)
def test_brute_force_rational_epilogue_chain(cmb):
    """bias, clamp, scale, add on random data: the result is within the bound of the exact Fraction value."""
    rng = np.random.default_rng(11)
    for _ in range(10):
        m, n, k = (int(v) for v in rng.integers(1, 5, 3))
        post = ((PostOpKind.BIAS_M, 0, 0, cmb.acc), (PostOpKind.CLAMP, -0.75, 1.5, None),
                (PostOpKind.SCALE, -1.25, 0, None), (PostOpKind.ADD, 0, 0, cmb.d))
        op = gemm_op(cmb, m, n, k, alpha=0.5, beta=1.0, post=post)
        a = _random_values(rng, cmb.a, (1, m, k)) / 64
        b = _random_values(rng, cmb.b, (1, k, n)) / 64
        c = _random_values(rng, cmb.d, (1, m, n)) / 64
        bias = _random_values(rng, cmb.acc, (1, m, 1)) / 64
        e = _random_values(rng, cmb.d, (1, m, n)) / 64
        res = REF.evaluate(op, a, b, c, (bias, None, None, e))
        exact = _frac_gemm(op, a, b, c)
        for i in range(m):
            for j in range(n):
                v = exact[0][i][j] + Fraction(float(bias[0, i, 0]))
                v = min(max(v, Fraction(-0.75)), Fraction(1.5)) * Fraction(-1.25) + Fraction(float(e[0, i, j]))
                # float64 epilogue: a few roundings of 2**-53 relative to the magnitudes involved
                mag = abs(exact[0][i][j]) + abs(Fraction(float(bias[0, i, 0]))) + 2 + abs(Fraction(float(e[0, i, j])))
                assert abs(Fraction(res.exact[0, i, j]) - v) <= mag * Fraction(2) ** -50
                assert abs(Fraction(float(res.rounded[0, i, j])) - v) <= Fraction(float(res.bound[0, i, j]))


# ------------------------------------------------------------------------------------
# COPY


def _copy_op(src_dt: DType, dst_dt: DType, rows: int, cols: int, ld: int | None = None):
    return check_command(Copy(Matrix(1, src_dt, rows, cols), Matrix(2, dst_dt, rows, cols, ld_elems=ld)).encode(),
                         DeviceCaps())


def test_copy_rounds_correctly_between_floats():
    src = np.array([[1 + 2**-8 + 2**-30, 65520.0, -0.0, np.nan]])
    dst = np.zeros((1, 4), ml_dtypes.bfloat16)
    REF.copy(_copy_op(F64, BF16, 1, 4), src, dst)
    assert dst.astype(np.float64)[0, :3].tolist() == [1 + 2**-7, 65536.0, 0.0] and np.isnan(float(dst[0, 3]))
    d16 = np.zeros((1, 4), np.float16)
    REF.copy(_copy_op(F64, F16, 1, 4), src, d16)
    assert d16.astype(np.float64)[0, :2].tolist() == [1 + 2**-8, math.inf]  # f16 holds 1 + 2**-8
    back = np.zeros((1, 4), np.float32)
    REF.copy(_copy_op(F16, F32, 1, 4), d16, back)
    assert back[0, :2].tolist() == [1 + 2**-8, math.inf] and np.isnan(back[0, 3])


def test_copy_integers_and_strided_dst():
    src = np.array([[1, -2, 3], [4, 5, -128]], np.int8)
    buf = np.full((2, 5), 9, np.int8)
    dst = buf[:, :3]  # ld 5
    REF.copy(_copy_op(I8, I8, 2, 3, ld=5), src, dst)
    assert buf.tolist() == [[1, -2, 3, 9, 9], [4, 5, -128, 9, 9]]


def test_driver_identity():
    assert RefDriver.name == "ref" and RefDriver.version and RefDriver.description
    info = REF.info()
    assert info.name == "ref"


# ------------------------------------------------------------------------------------
# the golden model wakes no thread pool


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_golden_model_runs_its_blas_on_the_calling_thread(monkeypatch):
    """A judge must not take the cores of the device it judges: OpenBLAS's workers, once woken,
    spin on them. Every evaluation (float and int) runs with each OpenBLAS held to one thread,
    and leaves the process's setting as it was, also when it raises."""
    import ffaccel.drivers.ref as ref_mod

    before = _blas_threads()
    real = np.matmul
    rng = np.random.default_rng(0)
    for combo in (GemmCombo(F32, F32, F32, F32), GemmCombo(I8, I8, I32, I32)):
        seen: list[list[int]] = []

        def spying(*args, **kw):
            seen.append(_blas_threads())
            return real(*args, **kw)

        monkeypatch.setattr(ref_mod.np, "matmul", spying)
        dt = DTYPES[combo.a].numpy
        a, b = (rng.integers(-3, 4, (1, 64, 64)).astype(dt) for _ in range(2))
        REF.evaluate(gemm_op(combo, 64, 64, 64), a, b, None, ())
        monkeypatch.setattr(ref_mod.np, "matmul", real)
        assert seen and all(n == [1] * len(before) for n in seen), (combo, seen, before)
        assert _blas_threads() == before

    def failing(*args, **kw):
        raise MemoryError("no room")

    monkeypatch.setattr(ref_mod.np, "matmul", failing)
    with pytest.raises(MemoryError):
        REF.evaluate(gemm_op(GemmCombo(F32, F32, F32, F32), 64, 64, 64), a.astype(np.float32),
                     b.astype(np.float32), None, ())
    assert _blas_threads() == before
