"""The GEMM accuracy bound of spec v1, as a computable function.

For each element, with u the unit roundoff of the accumulate type::

    |D - exact| <= c * (k + 2) * u * (|alpha| * (|op(A)| @ |op(B)|) + |beta| * |C|)
                   + (epilogue terms) + ulp_D(exact) / 2

``c`` is :data:`ffaccel.spec.ops.ACCURACY_C`. The ``+ 2`` covers the rounding of the
alpha scaling and of the beta * C addition (so that k == 0 is covered too).
Each epilogue post-op propagates the error bound e of its input x (all in the
accumulate precision) to its output y:

* ``bias``, ``add``: e + u * |y|          (one rounded addition)
* ``relu``, ``clamp``: e                   (1-Lipschitz, exact)
* ``scale(s)``: |s| * e + u * |y|
* ``gelu`` (both forms): 1.13 * e + 8 * u * |x|   (gelu' <= 1.129; the erf/tanh
  evaluation loses a few units of u relative to |x| near the cancellation 1 + erf(x) ~ 0;
  the tanh form is compared against its own formula, not against the erf form)

Integer GEMM is exact: the bound is 0 and the result must equal the exact value
wrapped modulo 2**32.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_dtypes
import numpy as np

from .dtypes import DTYPES, DType
from .ops import ACCURACY_C, OPERAND_POST_OPS, PostOpKind

GELU_LIPSCHITZ = 1.13
GELU_EVAL_UNITS = 8.0


def half_ulp(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Half the spacing of ``dtype`` at each of ``values`` (float64 array, exact values)."""
    fi = ml_dtypes.finfo(DTYPES[dtype].numpy)
    p = DTYPES[dtype].precision_bits
    x = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        _, e = np.frexp(x)  # x = f * 2**e, f in [0.5, 1)
    min_exp = int(fi.minexp)  # smallest normal exponent (x >= 2**minexp)
    ulp = np.ldexp(1.0, np.maximum(e - p, min_exp - (p - 1)))
    return np.where(np.isfinite(x), ulp / 2.0, np.inf)


def gemm_error_bound(
    acc: DType,
    out: DType,
    k: int,
    alpha: float,
    beta: float,
    abs_ab: np.ndarray,
    abs_c: np.ndarray | None,
    stages: Sequence[tuple[PostOpKind, np.ndarray, np.ndarray, float]],
    exact: np.ndarray,
) -> np.ndarray:
    """Elementwise error bound for a GEMM result.

    Parameters
    ----------
    acc, out : DType
        Accumulate and output dtypes.
    k : int
        Inner dimension.
    alpha, beta : float
    abs_ab : ndarray
        ``|op(A)| @ |op(B)|`` in float64.
    abs_c : ndarray or None
        ``|C|`` (None when C is not read).
    stages : sequence of (kind, x, y, s)
        For each post-op, its kind, the exact input x, the exact output y, and
        the scale parameter s (0 for other kinds).
    exact : ndarray
        The exact final value, before rounding to ``out``.
    """
    if not DTYPES[acc].is_float:
        return np.zeros(np.shape(exact))
    u = DTYPES[acc].unit_roundoff
    mag = abs(alpha) * abs_ab
    if abs_c is not None and beta != 0:
        mag = mag + abs(beta) * abs_c
    e = ACCURACY_C * (k + 2) * u * mag
    for kind, x, y, s in stages:
        if kind in OPERAND_POST_OPS:
            e = e + u * np.abs(y)
        elif kind == PostOpKind.SCALE:
            e = abs(s) * e + u * np.abs(y)
        elif kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH):
            e = GELU_LIPSCHITZ * e + GELU_EVAL_UNITS * u * np.abs(x)
        # relu and clamp are 1-Lipschitz and exact: e is unchanged
    return e + half_ulp(exact, out)


def error_ratio(got: np.ndarray, exact: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """Elementwise ``|got - exact| / bound`` (0 where equal, inf where a bound is broken
    with a zero bound). Non-finite values must match exactly (same inf sign, NaN for NaN)."""
    g = np.asarray(got, dtype=np.float64)
    x = np.asarray(exact, dtype=np.float64)
    same = (g == x) | (np.isnan(g) & np.isnan(x))
    finite = np.isfinite(g) & np.isfinite(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(g - x) / bound
    r = np.where(finite, r, np.inf)
    r = np.where(same, 0.0, r)
    return np.nan_to_num(r, nan=np.inf, posinf=np.inf)
