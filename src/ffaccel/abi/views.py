"""Bind validated operands to memory as strided NumPy views (zero copy).

Drivers whose memory is host-visible receive their operands this way: each
matrix as an array of shape (batch, rows, cols) whose strides come straight
from the descriptor (a batch stride of 0 broadcasts).

A driver whose memory is *not* host-visible (a GPU) returns, from ``alloc``,
an object that follows :class:`DeviceMemory` instead of a NumPy array: the
same binding then yields the driver's own strided arrays (e.g. torch tensors
on the GPU), and the runtime moves bytes in and out through ``read_bytes`` /
``write_bytes``. Transports need not know which kind they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class DeviceMemory(Protocol):
    """Device memory that the host cannot address directly (what a non-host driver's ``alloc`` returns)."""

    #: Size of the allocation in bytes.
    nbytes: int

    def strided(self, dtype: DType, shape: tuple[int, int, int], strides_elems: tuple[int, int, int],
                offset_bytes: int) -> Any:
        """The driver-native (batch, rows, cols) array at ``offset_bytes`` with these element strides."""

    def read_bytes(self, offset_bytes: int, count: int) -> np.ndarray:
        """Copy ``count`` bytes out to a fresh host uint8 array."""

    def write_bytes(self, offset_bytes: int, data: np.ndarray) -> None:
        """Copy the host uint8 array ``data`` in at ``offset_bytes``."""

from ..spec import DTYPES, DType
from .validate import CopyOp, GemmOp, View


def view_array(memory: np.ndarray, v: View, batch: int) -> np.ndarray:
    """The (batch, rows, cols) array a validated, bound view names inside ``memory``."""
    info = DTYPES[v.dtype]
    if not isinstance(memory, np.ndarray):  # device memory: the driver's own strided array
        return memory.strided(v.dtype, (batch, v.rows, v.cols), (v.batch_stride, v.ld, 1), v.offset_bytes)
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


__all__ = ["DeviceMemory", "GemmArrays", "copy_arrays", "gemm_arrays", "view_array"]
