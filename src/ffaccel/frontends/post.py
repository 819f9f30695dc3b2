"""Epilogue post-ops for :func:`ffaccel.matmul`, applied in order in the accumulate precision.

Examples
--------
>>> import numpy as np, ffaccel
>>> a = np.array([[1.0, -2.0]], np.float32); b = np.eye(2, dtype=np.float32)
>>> ffaccel.matmul(a, b, post_ops=[ffaccel.post.bias(np.array([1, 1], np.float32)), ffaccel.post.relu()])
array([[2., 0.]], dtype=float32)
"""

from __future__ import annotations

import numbers
import sys
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ..spec import PostOpKind, violation


@dataclass(frozen=True, eq=False)
class PostOp:
    """One post-op as the front-ends take it: a kind, parameters, maybe an operand array."""

    kind: PostOpKind
    param0: float = 0.0
    param1: float = 0.0
    operand: np.ndarray | None = None


def _library(x: Any) -> Any:
    """The module of the array library ``x`` comes from (``torch`` for a torch.Tensor)."""
    return sys.modules[type(x).__module__.partition(".")[0]]


def _from_dlpack(x: Any, arg: str) -> Any:
    """A zero-copy NumPy view of a DLPack-capable array (NumPy arrays and None pass through)."""
    if x is None or isinstance(x, np.ndarray) or not hasattr(x, "__dlpack__"):
        return x
    try:
        if "bfloat16" in str(getattr(x, "dtype", "")):  # DLPack has bfloat16, NumPy does not: view as int16
            return np.from_dlpack(x.view(_library(x).int16)).view(ml_dtypes.bfloat16)
        return np.from_dlpack(x)
    except (BufferError, TypeError, RuntimeError, ValueError, AttributeError) as e:
        raise violation("api.dtype", f"a {type(x).__name__} NumPy cannot view through DLPack ({e})",
                        "an array in host memory that exports DLPack (detach() tensors that require grad)",
                        arg=arg) from None


def _operand(x: Any, arg: str) -> np.ndarray:
    """A post-op's operand as NumPy: another library's array through DLPack, as matmul takes a
    and b (np.asarray raised a foreign TypeError for a torch bfloat16 tensor and a RuntimeError
    for one that requires grad)."""
    if hasattr(x, "__dlpack__"):
        return _from_dlpack(x, arg)
    try:
        return np.asarray(x)
    except (ValueError, TypeError) as e:  # a ragged list: NumPy's own ValueError, named here
        raise violation("api.dtype", f"{type(x).__name__} NumPy cannot make an array of ({e})",
                        "an array or a list of numbers", arg=arg) from None


def bias(v: Any, axis: str = "n") -> PostOp:
    """Add a vector: over the n columns (``axis="n"``, length n) or the m rows (``axis="m"``, length m)."""
    kinds = {"n": PostOpKind.BIAS_N, "m": PostOpKind.BIAS_M}
    if not isinstance(axis, str) or axis not in kinds:
        raise violation("api.post_op", repr(axis), "'n' or 'm'", arg="axis")
    return PostOp(kinds[axis], operand=_operand(v, "v"))


def relu() -> PostOp:
    """max(x, 0); NaN propagates."""
    return PostOp(PostOpKind.RELU)


def gelu(approximate: str = "none") -> PostOp:
    """GELU as PyTorch names it: ``"none"`` (exact erf form) or ``"tanh"``."""
    kinds = {"none": PostOpKind.GELU_ERF, "tanh": PostOpKind.GELU_TANH}
    if not isinstance(approximate, str) or approximate not in kinds:
        raise violation("api.post_op", repr(approximate), "'none' or 'tanh'", arg="approximate")
    return PostOp(kinds[approximate])


def real_scalar(x: Any, arg: str, allowed: str = "a real number: int or float") -> Any:
    """``x`` when it is a real number a float64 can hold (descriptors carry f64 or int64); else the error."""
    if isinstance(x, numbers.Real):
        try:
            float(x)
            return x
        except OverflowError:  # an int beyond float64's range
            allowed += " within float64's range"
    raise violation("api.scalar", f"{x!r} ({type(x).__name__})", allowed, arg=arg)


def clamp(lo: float, hi: float) -> PostOp:
    """min(max(x, lo), hi); needs lo <= hi."""
    return PostOp(PostOpKind.CLAMP, real_scalar(lo, "lo"), real_scalar(hi, "hi"))


def scale(s: float) -> PostOp:
    """s * x."""
    return PostOp(PostOpKind.SCALE, real_scalar(s, "s"))


def add(e: Any) -> PostOp:
    """Add a residual E of the result's shape (broadcasting like NumPy)."""
    return PostOp(PostOpKind.ADD, operand=_operand(e, "e"))


__all__ = ["PostOp", "add", "bias", "clamp", "gelu", "relu", "scale"]
