"""The epilogue's post-ops on NumPy arrays, written once for every NumPy driver.

The ``ref`` golden model (on float64 values, see :mod:`ffaccel.drivers.ref`), the ``cpu``
driver (in place on its accumulator, after a BLAS or oneDNN GEMM) and the ``dask`` driver
(on each tile's accumulator) take their post-op arithmetic from here:

* :func:`gelu_erf` and :func:`gelu_tanh`: the two GELU forms, in the array's own precision,
  written without the cancellation their textbook forms have at x << 0;
* :func:`float_steps` / :func:`int_steps`: one in-place function per post-op of a validated
  epilogue; integer steps wrap modulo 2**32 (uint32 views), as int32 hardware does.

The ``torch`` driver runs the same definitions on tensors with PyTorch's operations
(``torch.nn.functional.gelu`` names the two forms), and the tests keep an independent
oracle of their own, so a slip here cannot hide behind itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from scipy import special

from ..spec import OPERAND_POST_OPS, PostOpKind

Step = Callable[[np.ndarray, tuple], None]
_U32 = np.uint32
_MASK32 = 0xFFFF_FFFF
_SQRT1_2 = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
#: The post-ops that carry an operand (a vector over n or m, or an m x n residual).
OPERAND_KINDS = OPERAND_POST_OPS


def gelu_erf(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """PyTorch's ``gelu(approximate="none")``: ``x * (1 + erf(x / sqrt 2)) / 2``, computed as
    ``x * erfc(-x / sqrt 2) / 2`` (no cancellation for x << 0, no intermediate 2x that could
    overflow), in x's precision.

    Examples
    --------
    >>> float(gelu_erf(np.array([1.0]))[0])
    0.8413447460685429
    """
    t = x.dtype.type
    w = np.multiply(x, t(-_SQRT1_2))
    special.erfc(w, out=w)
    w *= t(0.5)
    return np.multiply(x, w, out=out)


def gelu_tanh(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """PyTorch's ``gelu(approximate="tanh")``: ``x * (1 + tanh(z)) / 2``, z = sqrt(2/pi) (x +
    0.044715 x^3), computed as ``x / (1 + exp(-2 z))``: the same function without the
    cancellation of ``1 + tanh(z)`` at x << 0, in x's precision.

    Examples
    --------
    >>> round(float(gelu_tanh(np.array([1.0]))[0]), 6)
    0.841192
    """
    t = x.dtype.type
    w = np.multiply(x, x)
    w *= t(0.044715)
    w += t(1)
    w *= x
    w *= t(-2.0 * _SQRT_2_OVER_PI)  # -2 z
    np.exp(w, out=w)
    w += t(1)
    return np.divide(x, w, out=out)


def _triples(post_ops: Iterable[Any]) -> list[tuple[PostOpKind, Any, Any]]:
    """(kind, param0, param1) of validated post-ops (:class:`ffaccel.abi.ValidPostOp`) or of
    plain (kind, param0, param1, ...) tuples."""
    return [(p.kind, p.param0, p.param1) if hasattr(p, "kind") else (PostOpKind(p[0]), p[1], p[2])
            for p in post_ops]


def float_steps(post_ops: Iterable[Any], acc: np.dtype) -> list[Step]:
    """One in-place function ``step(x, epi)`` per post-op, on an accumulator x of dtype ``acc``.

    ``epi[i]`` is the i-th post-op's operand (None where it has none); an operand in D's
    dtype (f16/bf16) is widened exactly to ``acc`` by the add. NaN propagates through relu
    and clamp (``np.maximum``/``np.minimum``); overflow to inf is the intended IEEE result.
    """
    acc = np.dtype(acc)
    t = acc.type
    steps: list[Step] = []
    for i, (kind, p0, p1) in enumerate(_triples(post_ops)):
        if kind in OPERAND_KINDS:
            steps.append(lambda x, epi, i=i: np.add(x, epi[i], out=x, dtype=acc))
        elif kind == PostOpKind.RELU:
            steps.append(lambda x, epi, z=t(0): np.maximum(x, z, out=x))
        elif kind == PostOpKind.GELU_ERF:
            steps.append(lambda x, epi: gelu_erf(x, out=x))
        elif kind == PostOpKind.GELU_TANH:
            steps.append(lambda x, epi: gelu_tanh(x, out=x))
        elif kind == PostOpKind.CLAMP:
            steps.append(lambda x, epi, lo=t(p0), hi=t(p1): (np.maximum(x, lo, out=x), np.minimum(x, hi, out=x)))
        elif kind == PostOpKind.SCALE:
            steps.append(lambda x, epi, s=t(p0): np.multiply(x, s, out=x))
        else:  # pragma: no cover - the validator admits only known kinds
            raise ValueError(f"unknown post-op {kind!r}")
    return steps


def int_steps(post_ops: Iterable[Any]) -> list[Step]:
    """In-place int32 post-ops on D; sums and products wrap through uint32 views (mod 2**32)."""
    steps: list[Step] = []
    for i, (kind, p0, p1) in enumerate(_triples(post_ops)):
        if kind in OPERAND_KINDS:
            steps.append(lambda d, epi, i=i: np.add(d.view(_U32), epi[i].view(_U32), out=d.view(_U32)))
        elif kind == PostOpKind.RELU:
            steps.append(lambda d, epi: np.maximum(d, np.int32(0), out=d))
        elif kind == PostOpKind.CLAMP:
            lo, hi = np.int32(int(p0)), np.int32(int(p1))
            steps.append(lambda d, epi, lo=lo, hi=hi: (np.maximum(d, lo, out=d), np.minimum(d, hi, out=d)))
        elif kind == PostOpKind.SCALE:
            s = _U32(int(p0) & _MASK32)
            steps.append(lambda d, epi, s=s: np.multiply(d.view(_U32), s, out=d.view(_U32)))
        else:  # pragma: no cover - the validator refuses gelu for int32
            raise ValueError(f"post-op {kind!r} is not defined for int32 outputs")
    return steps


def run_steps(steps: list[Step], x: np.ndarray, epi: tuple) -> None:
    """Apply the steps in order, in place, with NumPy's floating-point warnings silenced."""
    with np.errstate(all="ignore"):  # overflow to inf, NaN propagation: intended IEEE results
        for s in steps:
            s(x, epi)


__all__ = ["OPERAND_KINDS", "Step", "float_steps", "gelu_erf", "gelu_tanh", "int_steps", "run_steps"]
