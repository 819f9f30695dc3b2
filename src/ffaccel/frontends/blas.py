"""CBLAS-style ``gemm`` over flat storage, on an ffaccel device.

Examples
--------
>>> import numpy as np, ffaccel
>>> a = np.array([1, 2, 3, 4], np.float64)          # 2 x 2, row-major
>>> c = np.array([1, 1, 1, 1, -7], np.float64)      # 2 x 2 window with ldc = 2; c[4] untouched
>>> ffaccel.blas.gemm("row", "N", "N", 2, 2, 2, 1.0, a, 2, a, 2, 1.0, c, 2)
>>> c
array([ 8., 11., 16., 23., -7.])
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..runtime import Device
from ..spec import FFAccelError, dtype_of_numpy, violation
from .numpy_api import gemm_dtypes, matmul, operand_dtype, real_argument

_ORDERS = ("row", "col")
_TRANS = ("N", "T")
#: matmul's argument names for what CBLAS calls c (the output, and its dtype).
_GEMM_NAMES = {"out": "c", "out_dtype": "c"}


def _dim(x: Any, arg: str) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0:
        raise violation("blas.dim", repr(x), "an integer >= 0", arg=arg)
    return int(x)


def _storage(x: Any, arg: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise violation("api.dtype", type(x).__name__, "a numpy array (flat storage)", arg=arg)
    if not (x.flags.c_contiguous or x.flags.f_contiguous):
        raise violation("blas.storage", "a non-contiguous array", "contiguous flat storage", arg=arg)
    return x.reshape(-1, order="A")


def _window(flat: np.ndarray, rows: int, cols: int, ld: int, arg: str, ld_arg: str) -> np.ndarray:
    """The rows x cols row-major window of flat storage with leading dimension ld."""
    if isinstance(ld, bool) or not isinstance(ld, numbers.Integral) or ld < max(1, cols):
        raise violation("blas.ld", repr(ld), f">= max(1, {cols})", arg=ld_arg)
    ld = int(ld)
    need = (rows - 1) * ld + cols if rows and cols else 0
    if flat.size < need:
        raise violation("blas.storage", f"{flat.size} elements", f">= {need} ({rows} x {cols} with {ld_arg}={ld})",
                        arg=arg)
    isz = flat.itemsize
    if not need:
        return np.empty((rows, cols), flat.dtype)
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (ld * isz, isz), writeable=arg == "c")


def gemm(order: str, trans_a: str, trans_b: str, m: int, n: int, k: int, alpha: float, a: np.ndarray, lda: int,
         b: np.ndarray, ldb: int, beta: float, c: np.ndarray, ldc: int, *, device: str | Device | None = None) -> None:
    """C = alpha * op(A) @ op(B) + beta * C, with CBLAS's arguments, updating ``c`` in place.

    Parameters
    ----------
    order : {"row", "col"}
        Storage order of all three matrices.
    trans_a, trans_b : {"N", "T"}
        op(X) = X or X^T.
    m, n, k : int
        op(A) is m x k, op(B) is k x n, C is m x n.
    alpha, beta : float
        Scalars (integers for int8/uint8 inputs). beta == 0: C is not read.
    a, b, c : numpy.ndarray
        Contiguous arrays read as flat storage, like CBLAS pointers. ``c``'s dtype is the
        output dtype (int32 for int8/uint8 inputs; float16 and bfloat16 inputs may write float32).
    lda, ldb, ldc : int
        Leading dimensions in elements.
    device : str or Device, optional

    Notes
    -----
    Only the m x n window of ``c`` is written. Errors name the CBLAS argument and
    leave ``c`` untouched.
    """
    if order not in _ORDERS:
        raise violation("blas.enum", repr(order), "'row' or 'col'", arg="order")
    for arg, t in (("trans_a", trans_a), ("trans_b", trans_b)):
        if t not in _TRANS:
            raise violation("blas.enum", repr(t), "'N' or 'T'", arg=arg)
    m, n, k = _dim(m, "m"), _dim(n, "n"), _dim(k, "k")
    alpha, beta = real_argument(alpha, "alpha"), real_argument(beta, "beta")  # both required, as in CBLAS
    af, bf, cf = _storage(a, "a"), _storage(b, "b"), _storage(c, "c")
    a_dt, b_dt = operand_dtype(af, "a"), operand_dtype(bf, "b")
    c_dt = dtype_of_numpy(cf.dtype)
    try:
        gemm_dtypes(a_dt, b_dt, cf.dtype if c_dt is not None else None)
    except FFAccelError as e:
        raise e.renamed(_GEMM_NAMES) from None
    if c_dt is None:
        raise violation("api.dtype", str(cf.dtype), "the output dtype of the a/b combination", arg="c")
    if not cf.flags.writeable:
        raise violation("api.writeable", "a read-only array", "a writeable array", arg="c")
    ta, tb = trans_a == "T", trans_b == "T"
    # stored shapes in row-major terms; a column-major matrix is its row-major transpose
    a_rows, a_cols = (k, m) if ta else (m, k)
    b_rows, b_cols = (n, k) if tb else (k, n)
    if order == "col":
        a_rows, a_cols, b_rows, b_cols = a_cols, a_rows, b_cols, b_rows
        c_rows, c_cols = n, m
    else:
        c_rows, c_cols = m, n
    aw = _window(af, a_rows, a_cols, lda, "a", "lda")
    bw = _window(bf, b_rows, b_cols, ldb, "b", "ldb")
    cw = _window(cf, c_rows, c_cols, ldc, "c", "ldc")
    # m or n of 0 still goes to the device (nothing is read or written there): returning here
    # accepted a dtype the device does not declare when m == 0 and refused it when m == 1
    # row order: C = op(A) op(B); col order: C^T = op(B)^T op(A)^T (the row-major view of C is C^T)
    if order == "row":
        x, y, tx, ty = aw, bw, ta, tb
    else:
        x, y, tx, ty = bw, aw, tb, ta
    try:
        # out_dtype: c's dtype is the output dtype (checked above); without it matmul took the
        # inputs' default D and refused an f32 c for f16/bf16 inputs, which the spec allows
        matmul(x, y, cw, alpha=alpha, beta=beta, trans_a=tx, trans_b=ty, out=cw, out_dtype=cf.dtype, device=device)
    except FFAccelError as e:
        raise e.renamed(_GEMM_NAMES) from None


__all__ = ["gemm"]
