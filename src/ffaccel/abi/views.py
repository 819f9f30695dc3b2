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

from collections.abc import Callable, Sequence
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


def _stacked_view(views: "Sequence[View]", memory: Callable[[int], Any], batch: int) -> np.ndarray | None:
    """(len(views), batch, rows, cols): equally shaped views that lie in one host array, each a constant
    number of bytes (0 included) after the one before; None when they do not."""
    first = views[0]
    mem = memory(first.handle)
    if not isinstance(mem, np.ndarray) or batch == 0 or first.rows == 0 or first.cols == 0:
        return None
    start = first.offset_bytes
    step = views[1].offset_bytes - start
    for i, v in enumerate(views):
        if v.offset_bytes != start + i * step or (v.handle != first.handle and memory(v.handle) is not mem):
            return None
    s = DTYPES[first.dtype].itemsize_bytes
    try:  # NumPy checks that every element lies inside the memory (a negative step included)
        return np.ndarray((len(views), batch, first.rows, first.cols), DTYPES[first.dtype].numpy, buffer=mem,
                          offset=start, strides=(step, first.batch_stride * s, first.ld * s, s))
    except ValueError:
        return None


def gemm_group_arrays(ops: "Sequence[GemmOp]", memory: Callable[[int], Any]) -> GemmArrays | None:
    """:func:`gemm_arrays` of GEMMs of one geometry (equal but for their operands' handles and offsets),
    each stacked along a new leading axis, (count, batch, m, k) for A and so on: where every operand
    of every GEMM lies in one host array at a constant distance (0 included: one shared operand)
    from the previous GEMM's. None where one does not (or the memory is a driver's own).

    Examples
    --------
    >>> from ffaccel.abi import DeviceCaps, Gemm, Matrix, check_command
    >>> from ffaccel.spec import DType
    >>> def op(i):  # A and B shared, D stepping through buffer 2
    ...     return check_command(Gemm(m=2, n=2, k=2, a=Matrix(1, DType.F32, 2, 2), b=Matrix(1, DType.F32, 2, 2),
    ...                                d=Matrix(2, DType.F32, 2, 2, offset_bytes=16 * i)).encode(), DeviceCaps())
    >>> mem = {1: np.zeros(16, np.uint8), 2: np.zeros(48, np.uint8)}
    >>> a, b, c, d, epi = gemm_group_arrays([op(0), op(1), op(2)], mem.__getitem__)
    >>> a.shape, a.strides[0], d.strides[0], c, epi
    ((3, 1, 2, 2), 0, 16, None, ())
    """
    op = ops[0]
    a = _stacked_view([o.a for o in ops], memory, op.batch)
    b = _stacked_view([o.b for o in ops], memory, op.batch)
    d = _stacked_view([o.d for o in ops], memory, op.batch)
    if a is None or b is None or d is None:
        return None
    if op.trans_a:
        a = a.swapaxes(2, 3)
    if op.trans_b:
        b = b.swapaxes(2, 3)
    c = None
    if op.c is not None:
        c = _stacked_view([o.c for o in ops], memory, op.batch)
        if c is None:
            return None
    epi = []
    for j, p in enumerate(op.epilogue):
        x = None
        if p.operand is not None:
            x = _stacked_view([o.epilogue[j].operand for o in ops], memory, op.batch)  # type: ignore[misc]
            if x is None:
                return None
        epi.append(x)
    return a, b, c, d, tuple(epi)


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


__all__ = ["DeviceMemory", "GemmArrays", "copy_arrays", "gemm_arrays", "gemm_group_arrays", "view_array"]
