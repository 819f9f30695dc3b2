"""The ``ref`` driver: ffaccel's golden model.

It is written to be obviously correct, not fast. Every other driver is judged
against :meth:`RefDriver.evaluate`, which returns what ``gemm`` writes together
with the value before the final rounding and the spec's elementwise error bound.

How the value is computed (floats):

* ``alpha * op(A) @ op(B) + beta * C`` is computed *correctly rounded* to float64:
  every product ``a * b`` is split exactly into two doubles (Dekker's TwoProduct on
  the frexp mantissas, so the splitting cannot overflow), scaled by alpha the same
  way, and all terms of one output element are summed with :func:`math.fsum`.
  (Exact unless a product falls below float64's normal range, 2**-1022, where
  bits below 2**-1074 are lost: far below any bound.)
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
wraps modulo 2**32, and so does the value after every post-op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from ..abi import CopyOp, GemmOp
from ..spec import DTYPES, DType, PostOpKind
from ..spec.accuracy import gemm_error_bound
from .base import Driver
from .rounding import round_to, wrap_int32

_SPLIT = 134217729.0  # 2**27 + 1: Dekker's splitting constant for float64
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


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


def _float_accumulate(op: GemmOp, a: np.ndarray, b: np.ndarray,
                      c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """alpha * op(A) @ op(B) + beta * C as (hi, lo) float64 arrays of shape (batch, m, n).

    hi is the value correctly rounded to float64 and lo the rest, so hi + lo is the
    exact value to about 106 bits. A and B are read only when ``op.reads_ab``; C only
    when ``op.reads_c``.
    """
    batch, m, n = op.batch, op.m, op.n
    alpha, beta = float(op.alpha), float(op.beta)
    hi = np.zeros((batch, m, n))
    lo = np.zeros((batch, m, n))
    # With alpha and beta finite, the scalings go into the exact sum too; otherwise
    # (inf or NaN scalars) IEEE arithmetic on the exact dot product is the meaning.
    scalars_exact = math.isfinite(alpha) and math.isfinite(beta)
    for bi in range(batch):
        for i in range(m):
            rows: list[np.ndarray] = []  # each (1 or k, n) float64: terms summed per column
            if op.reads_ab:
                ai = a[bi, i, :].astype(np.float64)[:, None]  # (k, 1)
                bk = b[bi].astype(np.float64)  # (k, n)
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
                ci = c[bi, i, :].astype(np.float64)[None, :]
                if scalars_exact:
                    rows += list(_two_prod(beta, ci))
                else:
                    with np.errstate(invalid="ignore", over="ignore"):
                        rows.append(beta * ci)
            if rows:
                cols = np.concatenate(rows, axis=0).T.tolist()  # n lists of terms
                pairs = [_sum_exact(col) for col in cols]
                hi[bi, i, :] = [p[0] for p in pairs]
                lo[bi, i, :] = [p[1] for p in pairs]
    return hi, lo


# ------------------------------------------------------------------------------------
# epilogues


def _gelu_erf(x: np.ndarray) -> np.ndarray:
    # x * (1 + erf(x / sqrt 2)) / 2 == x * erfc(-x / sqrt 2) / 2, without the cancellation at x << 0
    return 0.5 * x * special.erfc(-x * _SQRT1_2)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # PyTorch: x * (1 + tanh(z)) / 2 with z = sqrt(2/pi) * (x + 0.044715 x^3);
    # 1 + tanh(z) == 2 / (1 + exp(-2 z)), which has no cancellation at x << 0.
    z = _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
    return x / (1.0 + np.exp(-2.0 * z))


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
        if kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
            if v is None:
                raise ValueError(f"post-op {kind.name} needs its operand")
            return x + v.astype(np.float64)  # exact widening from acc or D's dtype
        if kind == PostOpKind.RELU:
            return np.maximum(x, 0.0)  # np.maximum propagates NaN
        if kind == PostOpKind.GELU_ERF:
            return _gelu_erf(x)
        if kind == PostOpKind.GELU_TANH:
            return _gelu_tanh(x)
        if kind == PostOpKind.CLAMP:
            return np.minimum(np.maximum(x, float(p0)), float(p1))  # NaN propagates
        if kind == PostOpKind.SCALE:
            return float(p0) * x
    raise ValueError(f"unknown post-op {kind!r}")


def _int_post_op(kind: PostOpKind, p0: int, p1: int, x: np.ndarray, v: np.ndarray | None) -> np.ndarray:
    """One post-op on wrapped int32 values held as Python ints; the result is wrapped again."""
    if kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
        if v is None:
            raise ValueError(f"post-op {kind.name} needs its operand")
        y = x + v.astype(np.int64).astype(object)
    elif kind == PostOpKind.RELU:
        y = np.where(x > 0, x, 0)
    elif kind == PostOpKind.CLAMP:
        y = np.minimum(np.maximum(x, int(p0)), int(p1))
    elif kind == PostOpKind.SCALE:
        y = int(p0) * x
    else:
        raise ValueError(f"post-op {kind!r} is not defined for int32 outputs")
    return wrap_int32(np.asarray(y, dtype=object)).astype(object)


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
    description = "golden model: exact arithmetic, one correct rounding (slow; for judging other drivers)"

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
        if op.combo.is_int:
            return self._evaluate_int(op, a, b, c, epi)
        return self._evaluate_float(op, a, b, c, epi)

    def _evaluate_float(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None,
                        epi: tuple[np.ndarray | None, ...]) -> RefResult:
        combo = op.combo
        shape = (op.batch, op.m, op.n)
        x, rest = _float_accumulate(op, a, b, c)
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
        acc = np.zeros(shape, dtype=object)  # Python ints: no overflow before we choose to wrap
        if op.reads_ab:
            # |a * b| <= 2**16 and k < 2**31, so int64 sums are exact; then exact Python ints.
            acc = acc + alpha * (a.astype(np.int64) @ b.astype(np.int64)).astype(object)
        if op.reads_c:
            assert c is not None
            acc = acc + beta * c.astype(np.int64).astype(object)
        x = wrap_int32(acc).astype(object)
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
