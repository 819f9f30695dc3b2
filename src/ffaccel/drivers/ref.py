"""The ``ref`` driver: ffaccel's golden model.

It is written to be correct first. Every other driver is judged against
:meth:`RefDriver.evaluate`, which returns what ``gemm`` writes together with the
value before the final rounding and the spec's elementwise error bound.

What the golden value guarantees (floats): ``exact`` is ``alpha * op(A) @ op(B) +
beta * C`` *correctly rounded* to float64, and (no epilogue) ``rounded`` is that exact
value rounded *once* to D's dtype. Its own error is 0 against the exact value, beyond
the final roundings, whichever path below computed it. (Exception, unchanged: a
product ``alpha * term`` below 2**-968 or a product of inputs below float64's normal
range may lose bits below 2**-1074, far below any bound.)

How the value is computed (floats), two paths with the same answer:

* fast path (vectorised, Ozaki's error-free slicing): rows of op(A) and columns of
  op(B) are split exactly into integer slices of ``(53 - ceil(log2 k)) // 2`` bits under
  a power-of-two scale per row/column, so every slice product is a float64 (BLAS)
  matmul of integers with all partial sums below 2**53: exact in any summation order.
  The scaled products, alpha (TwoProduct) and beta * C (TwoProduct) give each element
  as an exact sum of a few doubles, summed by two TwoSum cascades; where the
  second-order errors vanish the result is exact (correct rounding plus exact rest),
  elsewhere it is accepted only if a rigorous bound certifies the rounding. Elements
  the fast path cannot certify (non-finite inputs or scalars, rows/columns whose
  dynamic range needs more than 8 slices, over/underflow of a scaled term, a doubtful
  rounding) go to the exact path. Assumes only IEEE float64 arithmetic in matmul.
* exact path (per element, obviously correct): every product ``a * b`` is split
  exactly into two doubles (Dekker's TwoProduct on the frexp mantissas, so the
  splitting cannot overflow), scaled by alpha the same way, and all terms of one
  output element are summed with :func:`math.fsum`.
* without an epilogue, that exact value is rounded once to D's dtype, to nearest
  even: the remainder of the float64 sum is kept so that the float64 can be rounded
  to odd, which makes the second rounding (to f32/f16/bf16) exact-then-round-once;
* with an epilogue, the post-ops run in float64 on the float64 value (in forms
  without cancellation, e.g. gelu as ``x * erfc(-x / sqrt 2) / 2``), and the result
  is rounded to D's dtype with :func:`round_to` (errors ~2**-53 relative: far below
  the spec's bound). Float64 precision, but the accumulate type's *range*: a value
  that overflows it becomes inf before the next post-op, as on every device.

Non-finite cases follow IEEE arithmetic rather than exact arithmetic: when products
overflow float64 (or inf meets -inf) the sum is the IEEE left-to-right sum, so
``max*max - max*max`` is NaN, as on a float64 device.

Integers: exact, int32 two's complement. The accumulator ``alpha * sum + beta * C``
wraps modulo 2**32 (computed modulo 2**64 in uint64, after an exact float64 matmul of
the int8/uint8 values while k < 2**36), and so does the value after every post-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..abi import CopyOp, GemmOp
from ..spec import DTYPES, OPERAND_POST_OPS, DType, PostOpKind
from ..spec.accuracy import gemm_error_bound
from .base import Driver
from .blas_threads import one_blas_thread
from .epilogue import gelu_erf, gelu_tanh
from .rounding import round_to, wrap_int32

_SPLIT = 134217729.0  # 2**27 + 1: Dekker's splitting constant for float64


@dataclass(frozen=True)
class RefResult:
    """The golden answer for one GEMM.

    Attributes
    ----------
    rounded : ndarray
        (batch, m, n) in D's dtype: exactly what :meth:`RefDriver.gemm` writes.
    exact : ndarray
        (batch, m, n) float64: the value before the final rounding (for integer
        GEMM, the wrapped int32 result). Where ``rounded`` is inf or NaN, ``exact``
        holds that same value, so non-finite results compare equal.
    bound : ndarray
        (batch, m, n) float64: the spec's elementwise error bound
        (:func:`ffaccel.spec.accuracy.gemm_error_bound`); 0 for integer GEMM.
    """

    rounded: np.ndarray
    exact: np.ndarray
    bound: np.ndarray


# ------------------------------------------------------------------------------------
# exact float arithmetic


def _two_prod(x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """(h, l) with h + l == x * y exactly and h == fl(x * y), elementwise.

    Dekker's algorithm is applied to the frexp mantissas (in [0.5, 1)), where it can
    neither overflow nor underflow, and the exponent is put back with ldexp. Where the
    product is not finite, l is 0 so that it cannot turn an inf into a NaN.
    """
    mx, ex = np.frexp(np.asarray(x, dtype=np.float64))
    my, ey = np.frexp(np.asarray(y, dtype=np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        h = mx * my
        cx = _SPLIT * mx
        xh = cx - (cx - mx)
        xl = mx - xh
        cy = _SPLIT * my
        yh = cy - (cy - my)
        yl = my - yh
        low = ((xh * yh - h) + xh * yl + xl * yh) + xl * yl
        e = ex + ey
        hs = np.ldexp(h, e)
        ls = np.ldexp(low, e)
    ls = np.where(np.isfinite(hs), ls, 0.0)
    return hs, ls


def _sum_exact(terms: list[float]) -> tuple[float, float]:
    """(hi, lo): hi is the correctly rounded sum, lo the correctly rounded remainder (sum - hi).

    Where fsum cannot answer (inf - inf, or an intermediate overflow) hi is the IEEE
    left-to-right sum, which gives the inf or NaN, and lo is 0.
    """
    try:
        hi = math.fsum(terms)
    except (OverflowError, ValueError):
        hi = 0.0
        for t in terms:
            hi += t  # Python floats follow IEEE here
        return hi, 0.0
    if not math.isfinite(hi):
        return hi, 0.0
    try:
        return hi, math.fsum(terms + [-hi])
    except (OverflowError, ValueError):
        return hi, 0.0


def _round_to_odd(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The float64 rounded to odd of the value hi + lo (hi = its nearest double, lo the rest).

    Rounding this once more to a type with at most 51 significand bits equals rounding
    hi + lo directly (see :mod:`ffaccel.drivers.rounding`): no double rounding.
    """
    inexact = lo != 0
    even = (hi.view(np.uint64) & np.uint64(1)) == 0
    toward = np.where(lo > 0, np.inf, -np.inf)
    return np.where(inexact & even, np.nextafter(hi, toward), hi)


def _exact_row(op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, bi: int, i: int,
               cols: np.ndarray | slice) -> tuple[list[float], list[float]]:
    """(hi, lo) of elements (bi, i, cols) of alpha * op(A) @ op(B) + beta * C, by math.fsum.

    hi is each value correctly rounded to float64 and lo the correctly rounded rest
    (see :func:`_sum_exact`). This is the slow, obviously exact path.
    """
    alpha, beta = float(op.alpha), float(op.beta)
    # With alpha and beta finite, the scalings go into the exact sum too; otherwise
    # (inf or NaN scalars) IEEE arithmetic on the exact dot product is the meaning.
    scalars_exact = math.isfinite(alpha) and math.isfinite(beta)
    rows: list[np.ndarray] = []  # each (1 or k, ncols) float64: terms summed per column
    if op.reads_ab:
        ai = a[bi, i, :].astype(np.float64)[:, None]  # (k, 1)
        bk = b[bi][:, cols].astype(np.float64)  # (k, ncols)
        ph, pl = _two_prod(ai, bk)
        if scalars_exact:
            for part in (ph, pl):
                rows += list(_two_prod(alpha, part))
        else:
            dots = np.array([_sum_exact(col)[0] for col in np.concatenate([ph, pl]).T.tolist()])
            with np.errstate(invalid="ignore", over="ignore"):
                rows.append((alpha * dots)[None, :])
    if op.reads_c:
        assert c is not None
        ci = c[bi, i, cols].astype(np.float64)[None, :]
        if scalars_exact:
            rows += list(_two_prod(beta, ci))
        else:
            with np.errstate(invalid="ignore", over="ignore"):
                rows.append(beta * ci)
    if not rows:
        return [], []
    pairs = [_sum_exact(col) for col in np.concatenate(rows, axis=0).T.tolist()]  # one list of terms per column
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ------------------------------------------------------------------------------------
# the fast path: exact products by slicing (Ozaki's scheme), a certified double-double
# sum, and the exact path above for every element it cannot certify

_MAX_SLICES = 8  # per operand: 8 slices of >= 14 bits cover any row of f32/f16/bf16 values


def _slice_exact(x: np.ndarray, axis: int, bits: int) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Split x (float64) exactly into integer-valued slices along the k axis.

    Returns (e, q, good): where good (shape of x reduced over ``axis``, kept), every value
    of that row (axis=-1) or column (axis=-2) is ``sum_s ldexp(q[s], e - (s + 1) * bits)``
    exactly, with each q[s] an integer of magnitude < 2**bits. good is False for a row or
    column with a non-finite value, with a value too small to scale exactly next to its
    largest one, or with bits left over after _MAX_SLICES slices.
    """
    finite = np.isfinite(x)
    x0 = np.where(finite, x, 0.0)
    _, e = np.frexp(np.abs(x0).max(axis=axis, keepdims=True))  # every |x| < 2**e (e = 0 for a zero row)
    with np.errstate(under="ignore"):
        y = np.ldexp(x0, bits - e)  # |y| < 2**bits
        good = finite.all(axis=axis, keepdims=True) & (np.ldexp(y, e - bits) == x0).all(axis=axis, keepdims=True)
    q = []
    for _ in range(_MAX_SLICES):
        t = np.trunc(y)
        q.append(t)
        y = np.ldexp(y - t, bits)  # y - t is y's fraction: exact, and so is the power-of-two scaling
        if not y.any():
            break
    good &= ~(y != 0).any(axis=axis, keepdims=True)
    return e, q, good


def _fast_accumulate(op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                     need_sign: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hi, lo, ok) for alpha * op(A) @ op(B) + beta * C, alpha and beta finite.

    Where ok: hi is the exact value correctly rounded to float64, and (if need_sign) lo
    has the sign of the exact rest (value - hi) and is 0 exactly when the rest is 0
    (all that rounding to odd uses). Where not ok, hi and lo mean nothing.

    How: with ``bits = (53 - ceil(log2 k)) // 2``, op(A)'s rows and op(B)'s columns are
    split exactly into integer slices below 2**bits (scaled by a power of two per row or
    column); every product of two slices is a float64 matmul of integers whose partial
    sums stay below k * 2**(2 bits) <= 2**53, so it is exact whatever the summation order
    or FMA use. Each element is then an exact sum of a few float64 terms (those products
    scaled back, times alpha split exactly by TwoProduct, and beta * C likewise). Those
    terms are summed by two cascades of TwoSum into (s, cs) and a few second-order errors
    q2 with ``exact == s + cs + sum(q2)`` exactly. Where every q2 is 0 (the common case),
    ``fl(s + cs)`` is the correctly rounded value and TwoSum gives the exact rest; otherwise
    an element is ok only where ``sum|q2|`` leaves no doubt about the float64 rounding (and
    the rest's sign). Every check that fails only costs speed: that element goes to the
    exact path.
    """
    shape = (op.batch, op.m, op.n)
    alpha, beta = float(op.alpha), float(op.beta)
    good = np.ones(shape, dtype=bool)
    terms: list[np.ndarray] = []

    def add_scaled(x: np.ndarray, scalar: float) -> None:
        # scalar * x as two float64 terms: exact unless the product is non-finite or below 2**-968
        # (then the low half could have lost bits below 2**-1074): such elements are not ok.
        nonlocal good
        if scalar == 1.0:
            terms.append(x)
            return
        h, lo = _two_prod(scalar, x)
        good &= np.isfinite(h) & ((h == 0) | (np.abs(h) >= 2.0**-968))
        terms.extend((h, lo))

    if op.reads_ab:
        k = op.k
        bits = (53 - (k - 1).bit_length()) // 2
        a64 = a.astype(np.float64)
        b64 = b.astype(np.float64)
        ea, qa, good_a = _slice_exact(a64, -1, bits)  # (batch, m, 1)
        eb, qb, good_b = _slice_exact(b64, -2, bits)  # (batch, 1, n)
        good &= good_a & good_b
        e_ab = ea + eb
        for s, qs in enumerate(qa):
            for t, qt in enumerate(qb):
                p = np.matmul(qs, qt)  # exact: integers, every partial sum below 2**53
                shift = e_ab - (s + t + 2) * bits
                with np.errstate(over="ignore", under="ignore"):
                    x = np.ldexp(p, shift)
                    good &= np.ldexp(x, -shift) == p  # the scaling neither overflowed nor lost bits
                add_scaled(x, alpha)
    if op.reads_c:
        assert c is not None
        add_scaled(np.broadcast_to(c.astype(np.float64), shape), beta)
    if not terms:
        z = np.zeros(shape)
        return z, z, np.ones(shape, dtype=bool)

    # A TwoSum cascade, twice: exact == s + sum(q) exactly, and sum(q) == cs + sum(q2) exactly.
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        s = np.array(np.broadcast_to(terms[0], shape), dtype=np.float64)
        cs = np.zeros(shape)
        q2sum = np.zeros(shape)
        for x in terms[1:]:
            t = s + x
            z = t - s
            q = (s - (t - z)) + (x - z)
            s = t
            t = cs + q
            z = t - cs
            q2sum += np.abs((cs - (t - z)) + (q - z))
            cs = t
        # TwoSum(s, cs): exact == hi + r + delta, |delta| <= sum|q2| <= err (q2sum is that sum of
        # a few values computed with relative error < gamma_N; the factor covers it). err == 0 means
        # exact == s + cs, so hi == fl(s + cs) is the correctly rounded value and r the exact rest.
        hi = s + cs
        z = hi - s
        r = (s - (hi - z)) + (cs - z)
        err = q2sum * (1.0 + len(terms) * 2.0**-51)
        tol = (np.abs(r) + err) * (1.0 + 2.0**-20)
        gap = np.minimum(np.nextafter(hi, np.inf) - hi, hi - np.nextafter(hi, -np.inf))
        # either exact, or strictly inside hi's rounding interval
        ok = good & np.isfinite(hi) & np.isfinite(r) & ((err == 0) | (tol < gap / 2))
        if need_sign:
            # the rest (exact - hi = r + delta) has r's sign, and is 0 only if r == 0 == err
            ok &= (err == 0) | (np.abs(r) > err * (1.0 + 2.0**-20))
    return hi, r, ok


def _float_accumulate(op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                      need_sign: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """alpha * op(A) @ op(B) + beta * C as (hi, lo) float64 arrays of shape (batch, m, n).

    hi is the value correctly rounded to float64; lo is the rest (value - hi), correctly
    rounded where the exact path computed it, and otherwise (fast path) a float64 with
    the rest's sign that is 0 exactly when the rest is 0 (if need_sign; without it, lo
    is meaningless on the fast path). A and B are read only when ``op.reads_ab``; C only
    when ``op.reads_c``.
    """
    shape = (op.batch, op.m, op.n)
    if math.isfinite(float(op.alpha)) and math.isfinite(float(op.beta)):
        hi, lo, ok = _fast_accumulate(op, a, b, c, need_sign)
        hi, lo = np.array(hi, dtype=np.float64), np.array(lo, dtype=np.float64)
    else:  # inf or NaN scalars: IEEE semantics, only the exact path knows them
        hi, lo, ok = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=bool)
    if ok.all():
        return hi, lo
    bad = ~ok
    for bi, i in zip(*np.nonzero(bad.any(axis=2))):
        cols = np.nonzero(bad[bi, i])[0]
        h, lo_ = _exact_row(op, a, b, c, int(bi), int(i), cols)
        if h:
            hi[bi, i, cols] = h
            lo[bi, i, cols] = lo_
        else:
            hi[bi, i, cols] = 0.0
            lo[bi, i, cols] = 0.0
    return hi, lo


# ------------------------------------------------------------------------------------
# epilogues


def _within_acc_range(x: np.ndarray, acc: DType) -> np.ndarray:
    """x, except that values beyond the accumulate type's range become the inf they round to there.

    The spec applies the epilogue in the accumulate precision. The golden model keeps
    float64 precision but not a wider *range*: a float32 accumulator that overflows holds
    inf, so e.g. gelu or scale(1e-30) after it must see inf, as every device does.
    """
    if acc == DType.F64:
        return x
    r = round_to(x, acc).astype(np.float64)
    return np.where(np.isinf(r) & np.isfinite(x), r, x)


def _float_post_op(kind: PostOpKind, p0: float, p1: float, x: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    with np.errstate(all="ignore"):  # overflow to inf and NaN propagation are the intended IEEE results
        if kind in OPERAND_POST_OPS:
            if v is None:
                raise ValueError(f"post-op {kind.name} needs its operand")
            return x + v.astype(np.float64)  # exact widening from acc or D's dtype
        if kind == PostOpKind.RELU:
            return np.maximum(x, 0.0)  # np.maximum propagates NaN
        if kind == PostOpKind.GELU_ERF:
            return gelu_erf(x)
        if kind == PostOpKind.GELU_TANH:
            return gelu_tanh(x)
        if kind == PostOpKind.CLAMP:
            return np.minimum(np.maximum(x, float(p0)), float(p1))  # NaN propagates
        if kind == PostOpKind.SCALE:
            return float(p0) * x
    raise ValueError(f"unknown post-op {kind!r}")


def _int_post_op(kind: PostOpKind, p0: int, p1: int, x: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    """One post-op on wrapped int32 values (int64), the result wrapped again. Sums and products
    are taken modulo 2**64 (uint64 wraps), exact modulo 2**32, all the result keeps; relu and
    clamp compare the signed values themselves (a bound past int64 clamps as int64's end would)."""
    if kind in OPERAND_POST_OPS:
        if v is None:
            raise ValueError(f"post-op {kind.name} needs its operand")
        y = x.astype(np.uint64) + v.astype(np.int64).astype(np.uint64)
    elif kind == PostOpKind.RELU:
        y = np.where(x > 0, x, 0)
    elif kind == PostOpKind.CLAMP:
        lo, hi = (max(-2**63, min(2**63 - 1, int(q))) for q in (p0, p1))
        y = np.minimum(np.maximum(x, lo), hi)
    elif kind == PostOpKind.SCALE:
        y = np.uint64(int(p0) % 2**64) * x.astype(np.uint64)
    else:
        raise ValueError(f"post-op {kind!r} is not defined for int32 outputs")
    return wrap_int32(y).astype(np.int64)


# ------------------------------------------------------------------------------------
# the driver


class RefDriver(Driver):
    """The golden model: exact-then-round-once GEMM and COPY on host memory.

    Examples
    --------
    >>> import numpy as np
    >>> from ffaccel.abi import Gemm, Matrix, DeviceCaps, check_command
    >>> from ffaccel.spec import DType
    >>> op = check_command(Gemm(m=1, n=1, k=2, a=Matrix(1, DType.F32, 1, 2), b=Matrix(2, DType.F32, 2, 1),
    ...                         d=Matrix(3, DType.F32, 1, 1)).encode(), DeviceCaps())
    >>> d = np.zeros((1, 1, 1), np.float32)
    >>> RefDriver().gemm(op, np.array([[[1.0, 2.0]]], np.float32), np.array([[[3.0], [4.0]]], np.float32),
    ...                  None, d, ())
    >>> float(d[0, 0, 0])
    11.0
    """

    name = "ref"
    version = "1.0"
    description = "golden model: exact arithmetic, one correct rounding (for judging other drivers)"

    def evaluate(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                 epi: tuple[np.ndarray | None, ...] | None) -> RefResult:
        """Compute a GEMM's golden result without writing anything.

        Parameters
        ----------
        op : GemmOp
            A validated GEMM.
        a, b, c, epi
            As for :meth:`gemm`: op(A) (batch, m, k), op(B) (batch, k, n), C or None,
            one operand (or None) per post-op.

        Returns
        -------
        RefResult
        """
        # One entry per post-op (None where it has no operand); a short tuple means "no operands".
        epi = tuple(epi) if epi is not None else ()
        if len(epi) > len(op.epilogue):
            raise ValueError(f"{len(epi)} epilogue operands for {len(op.epilogue)} post-ops")
        epi = epi + (None,) * (len(op.epilogue) - len(epi))
        # on the calling thread: OpenBLAS's workers, once woken, spin for a while, on the cores
        # the device being judged needs next (torch:cpu's conformance run: 1.6 s of its 7 in
        # GEMMs slowed tenfold, AMD EPYC, 2 cores)
        with one_blas_thread():
            if op.combo.is_int:
                return self._evaluate_int(op, a, b, c, epi)
            return self._evaluate_float(op, a, b, c, epi)

    def _evaluate_float(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                        epi: tuple[np.ndarray | None, ...]) -> RefResult:
        combo = op.combo
        shape = (op.batch, op.m, op.n)
        x, rest = _float_accumulate(op, a, b, c, need_sign=not op.epilogue and combo.d != DType.F64)
        stages = []
        if op.epilogue:
            x = _within_acc_range(x, combo.acc)
        for p, v in zip(op.epilogue, epi):
            y = _float_post_op(p.kind, p.param0, p.param1, x, v)
            y = np.broadcast_to(_within_acc_range(y, combo.acc), shape)
            stages.append((p.kind, x, y, float(p.param0) if p.kind == PostOpKind.SCALE else 0.0))
            x = y
        exact = np.array(x, dtype=np.float64)
        if op.epilogue or combo.d == DType.F64:
            rounded = round_to(exact, combo.d)
        else:
            # Narrower D, no epilogue: round the exact value itself once, via round-to-odd.
            rounded = round_to(_round_to_odd(exact, rest), combo.d)
        r64 = rounded.astype(np.float64)
        exact = np.where(np.isfinite(r64), exact, r64)

        if op.reads_ab:
            with np.errstate(over="ignore", invalid="ignore"):
                abs_ab = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
        else:
            abs_ab = np.zeros(shape)
        abs_c = np.abs(c.astype(np.float64)) if op.reads_c and c is not None else None
        with np.errstate(over="ignore", invalid="ignore"):
            bound = gemm_error_bound(combo.acc, combo.d, op.k, float(op.alpha), float(op.beta), abs_ab, abs_c,
                                     stages, exact)
        return RefResult(rounded, exact, np.broadcast_to(bound, shape).astype(np.float64))

    def _evaluate_int(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                      epi: tuple[np.ndarray | None, ...]) -> RefResult:
        shape = (op.batch, op.m, op.n)
        alpha, beta = int(op.alpha), int(op.beta)
        # Everything is computed modulo 2**64 in uint64 (numpy wraps unsigned arithmetic), which is
        # exact modulo 2**32, all the result keeps. (|a * b| <= 2**16, so the matmul itself is exact;
        # the wrapping is there for alpha and beta.)
        acc = np.zeros(shape, dtype=np.uint64)
        if op.reads_ab:
            if op.k < 2**36:  # every partial sum is an integer below 2**52: float64 (BLAS) is exact
                ab = np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64).astype(np.uint64)
            else:
                ab = np.matmul(a.astype(np.int64), b.astype(np.int64)).astype(np.uint64)
            acc = acc + np.uint64(alpha % 2**64) * ab
        if op.reads_c:
            assert c is not None
            acc = acc + np.uint64(beta % 2**64) * c.astype(np.int64).astype(np.uint64)
        rounded = wrap_int32(acc)
        if op.epilogue:
            x = rounded.astype(np.int64)  # each post-op wraps its result (see _int_post_op)
            for p, v in zip(op.epilogue, epi):
                x = np.broadcast_to(_int_post_op(p.kind, p.param0, p.param1, x, v), shape)
            rounded = wrap_int32(x)  # already in range: this is the int32 cast
        return RefResult(rounded, rounded.astype(np.float64), np.zeros(shape))

    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple[np.ndarray | None, ...]) -> None:
        """D = epilogue(alpha * op(A) @ op(B) + beta * C), see :mod:`ffaccel.drivers.base`."""
        if op.batch == 0 or op.m == 0 or op.n == 0:
            return  # nothing to write, nothing read
        # evaluate() returns fresh arrays, so D may be the very memory of C (in place).
        d[...] = self.evaluate(op, a, b, c, epi).rounded

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        """dst = src converted to dst's dtype: one round to nearest even for floats, a plain copy for ints."""
        s_info, d_info = DTYPES[op.src.dtype], DTYPES[op.dst.dtype]
        if s_info.is_float and d_info.is_float:
            np.copyto(dst, round_to(src.astype(np.float64), DType(op.dst.dtype)))
        elif op.src.dtype == op.dst.dtype:
            np.copyto(dst, src)
        else:  # the validator refuses this; say so rather than guess
            raise ValueError(f"COPY {s_info.name} -> {d_info.name} is not a spec conversion")


__all__ = ["RefDriver", "RefResult"]
