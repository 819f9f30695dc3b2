"""Bind validated operands to memory as strided NumPy views (zero copy).

Drivers whose memory is host-visible receive their operands this way: each
matrix as an array of shape (batch, rows, cols) whose strides come straight
from the descriptor (a batch stride of 0 broadcasts).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..spec import DTYPES
from .validate import CopyOp, GemmOp, View


def view_array(memory: np.ndarray, v: View, batch: int) -> np.ndarray:
    """The (batch, rows, cols) array a validated, bound view names inside ``memory``."""
    info = DTYPES[v.dtype]
    if batch == 0 or v.rows == 0 or v.cols == 0:
        return np.empty((batch, v.rows, v.cols), info.numpy)
    s = info.itemsize_bytes
    return np.ndarray((batch, v.rows, v.cols), info.numpy, buffer=memory, offset=v.offset_bytes,
                      strides=(v.batch_stride * s, v.ld * s, s))


GemmArrays = tuple[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, tuple["np.ndarray | None", ...]]


def gemm_arrays(op: GemmOp, memory: Callable[[int], np.ndarray]) -> GemmArrays:
    """op(A) (batch, m, k), op(B) (batch, k, n), C or None, D (batch, m, n), epilogue operands.

    Bias operands come as (batch, 1, n) or (batch, m, 1) so they broadcast against D.
    """
    a = view_array(memory(op.a.handle), op.a, op.batch)
    b = view_array(memory(op.b.handle), op.b, op.batch)
    if op.trans_a:
        a = a.swapaxes(1, 2)
    if op.trans_b:
        b = b.swapaxes(1, 2)
    c = view_array(memory(op.c.handle), op.c, op.batch) if op.c is not None else None
    d = view_array(memory(op.d.handle), op.d, op.batch)
    epi = tuple(
        view_array(memory(p.operand.handle), p.operand, op.batch) if p.operand is not None else None
        for p in op.epilogue
    )
    return a, b, c, d, epi


def copy_arrays(op: CopyOp, memory: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    src = view_array(memory(op.src.handle), op.src, 1)[0]
    dst = view_array(memory(op.dst.handle), op.dst, 1)[0]
    return src, dst


__all__ = ["GemmArrays", "copy_arrays", "gemm_arrays", "view_array"]
