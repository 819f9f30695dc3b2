"""The ``cpu`` driver's kernels on oneDNN (used where measured faster than OpenBLAS; see docs/kernels.md).

* Floating point (f32, bf16; f16 where the library implements it): one matmul primitive
  per layout computes ``epilogue(alpha * op(A) @ op(B) + beta * C)`` in a single pass:
  alpha as a leading ``linear`` eltwise, beta * C as the ``sum`` post-op on D (C is first
  copied into D unless D is C), bias and residual as ``binary_add`` with their own strides,
  relu / gelu / clamp / scale as eltwise post-ops. Operands keep their strides (no copies);
  a batch stride of 0 becomes a batch dimension of 1 (oneDNN's broadcast; a 0 stride sends
  it to its reference code).
* Integers: only the bare u8 x s8 -> s32 product, the one combination oneDNN sums exactly
  (wrapping modulo 2**32) on VNNI/AMX hardware — any post-op, even an integer bias, sends it
  through f32. Other pairs are shifted onto it (``s8 ^ 0x80`` is ``s8 + 128`` as u8;
  ``u8 ^ 0x80`` is ``u8 - 128`` as s8) and corrected with row and column sums, all in
  wrapping uint32; alpha, beta and the epilogue stay in the driver's integer code.

A layout the library refuses, or would run only in its reference code (``ref:any``), runs
on the BLAS kernel instead; :attr:`FloatKernel.impls` records what ran.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..abi import GemmOp, LruCache
from ..spec import DType, PostOpKind
from . import onednn
from .onednn import DnnlPostOp, Library, Matmul, OneDNNError, Operand

Kernel = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, tuple], None]
_U32 = np.uint32
_ELTWISE = {PostOpKind.RELU: onednn.RELU, PostOpKind.GELU_ERF: onednn.GELU_ERF,
            PostOpKind.GELU_TANH: onednn.GELU_TANH, PostOpKind.CLAMP: onednn.CLIP, PostOpKind.SCALE: onednn.LINEAR}
_BINARY = (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD)
#: Most primitives one kernel keeps (one per distinct set of operand strides).
_MAX_PRIMS = 8


def usable(impl: str) -> bool:
    """Whether an implementation is one of oneDNN's optimised ones (not its reference code)."""
    return not impl.startswith("ref")


def operand(x: np.ndarray, batch: int, dtype: int | None = None) -> Operand | None:
    """x (batch, rows, cols) described for oneDNN; a broadcast batch becomes a batch of 1.
    None when a stride is negative or not a whole number of elements."""
    item = x.itemsize
    if any(s < 0 or s % item for s in x.strides):
        return None
    if batch > 1 and x.strides[0] == 0:
        x = x[:1]
    return Operand.of(x, dtype)


class FloatKernel:
    """``epilogue(alpha * a @ b + beta * c)`` into d by one oneDNN matmul per layout.

    Parameters
    ----------
    lib : the loaded library
    op : the validated GEMM (a float combination that reads A and B)
    fallback : the BLAS kernel, run for layouts the library does not take
    """

    def __init__(self, lib: Library, op: GemmOp, fallback: Kernel) -> None:
        self.lib, self.op, self.fallback = lib, op, fallback
        self.alpha, self.beta = float(op.alpha), float(op.beta)
        self.copy_c = op.reads_c and not op.in_place
        self._prims: LruCache[tuple, Matmul | None] = LruCache(_MAX_PRIMS)
        self.impls: set[str] = set()  # what ran: oneDNN implementation names, or "blas"

    def _post_ops(self, epi: tuple) -> tuple[list[DnnlPostOp], list[int]] | None:
        op = self.op
        posts: list[DnnlPostOp] = []
        if self.alpha != 1.0:
            posts.append(DnnlPostOp("eltwise", onednn.LINEAR, self.alpha, 0.0))
        if op.reads_c:
            posts.append(DnnlPostOp("sum", alpha=self.beta))
        binary: list[int] = []
        for i, p in enumerate(op.epilogue):
            if p.kind in _BINARY:
                o = operand(epi[i], op.batch)
                if o is None:
                    return None
                posts.append(DnnlPostOp("binary_add", operand=o))
                binary.append(i)
            elif p.kind == PostOpKind.CLAMP:
                posts.append(DnnlPostOp("eltwise", onednn.CLIP, float(p.param0), float(p.param1)))
            elif p.kind == PostOpKind.SCALE:
                posts.append(DnnlPostOp("eltwise", onednn.LINEAR, float(p.param0), 0.0))
            else:
                posts.append(DnnlPostOp("eltwise", _ELTWISE[p.kind], 0.0, 0.0))
        return posts, binary

    def _create(self, a: np.ndarray, b: np.ndarray, d: np.ndarray, epi: tuple) -> tuple[Matmul, list[int]] | None:
        batch = self.op.batch
        if batch > 1 and a.strides[0] == 0 and b.strides[0] == 0:
            return None  # D's batch would have to come from nowhere
        oa, ob, od = operand(a, batch), operand(b, batch), operand(d, batch)
        posts = self._post_ops(epi)
        if oa is None or ob is None or od is None or posts is None:
            return None
        try:
            prim = Matmul(self.lib, oa, ob, od, posts[0])
        except (OneDNNError, KeyError):
            return None
        if not usable(prim.impl):
            prim.close()
            return None
        return prim, posts[1]

    def __call__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        key = (a.strides, b.strides, d.strides, tuple(None if e is None else (e.strides, e.dtype) for e in epi))
        entry = self._prims.peek(key, False)  # None: the library does not take this layout
        if entry is False:
            entry = self._prims.get(key, False)
        if entry is False:
            entry = self._create(a, b, d, epi)
            self._prims.put(key, entry)
        if entry is None:
            self.impls.add("blas")
            self.fallback(a, b, c, d, epi)
            return
        prim, binary = entry
        if self.copy_c:
            np.copyto(d, c)  # then the sum post-op adds beta * C (D's dtype: C's)
        prim(a.ctypes.data, b.ctypes.data, d.ctypes.data, *[epi[i].ctypes.data for i in binary])
        self.impls.add(prim.impl)


def _shifted(x: np.ndarray, dtype: type, take: Callable[[tuple, np.dtype], np.ndarray],
             held: list[np.ndarray]) -> np.ndarray:
    """x ^ 0x80 reinterpreted as ``dtype`` (s8 + 128 as u8, or u8 - 128 as s8) in a pooled array,
    a broadcast batch kept broadcast."""
    src = x[:1] if x.shape[0] > 1 and x.strides[0] == 0 else x
    out = take(src.shape, np.dtype(np.uint8))
    held.append(out)
    np.bitwise_xor(src.view(np.uint8), np.uint8(0x80), out=out)
    out = out.view(dtype)
    return np.broadcast_to(out, x.shape) if src is not x else out


class IntProduct:
    """The exact integer product a @ b modulo 2**32 for any int8/uint8 pair, on oneDNN's u8 x s8.

    ``a`` is shifted to u8 when it is s8 and ``b`` to s8 when it is u8; with ``sa = a + 128``
    and ``sb = b - 128`` (where shifted), ``a @ b = sa @ sb + 128 rowsum(sa) [b shifted]
    - 128 colsum(sb) [a shifted] - 128**2 k [both]``, every term in wrapping uint32.
    """

    def __init__(self, lib: Library, combo_a: DType, combo_b: DType,
                 take: Callable[[tuple, np.dtype], np.ndarray]) -> None:
        self.lib, self.take = lib, take
        self.shift_a, self.shift_b = combo_a == DType.I8, combo_b == DType.U8
        self._prims: LruCache[tuple, Matmul | None] = LruCache(_MAX_PRIMS)
        self.impls: set[str] = set()

    def __call__(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None,
                 held: list[np.ndarray]) -> np.ndarray | None:
        """The product as uint32 (batch, m, n), in ``out`` (an int32 array) or a pooled array;
        None (having written nothing) when the library does not take this layout."""
        batch, m, k = a.shape
        n = b.shape[2]
        if batch > 1 and a.strides[0] == 0 and b.strides[0] == 0:
            return None
        sa = _shifted(a, np.uint8, self.take, held) if self.shift_a else a
        sb = _shifted(b, np.int8, self.take, held) if self.shift_b else b
        if out is None:
            out = self.take((batch, m, n), np.dtype(np.int32))
            held.append(out)
        key = (sa.strides, sb.strides, out.strides)
        prim = self._prims.peek(key, False)
        if prim is False:
            prim = self._prims.get(key, False)
        if prim is False:
            prim = self._create(sa, sb, out, batch)
            self._prims.put(key, prim)
        if prim is None:
            return None
        prim(sa.ctypes.data, sb.ctypes.data, out.ctypes.data)
        self.impls.add(prim.impl)
        w = out.view(_U32)
        if self.shift_b:  # + 128 rowsum(sa): sums of k values below 256 (exact in uint32 mod 2**32)
            rs = np.sum(sa, axis=2, dtype=_U32, keepdims=True)
            np.add(w, np.multiply(rs, _U32(128), out=rs), out=w)
        if self.shift_a:  # - 128 colsum(sb)
            cs = np.sum(sb, axis=1, dtype=np.int32, keepdims=True).view(_U32)
            if self.shift_b:
                cs += _U32((128 * k) & 0xFFFF_FFFF)  # folds the - 128**2 k term in: 128 (colsum + 128 k)
            np.subtract(w, np.multiply(cs, _U32(128), out=cs), out=w)
        return w

    def _create(self, sa: np.ndarray, sb: np.ndarray, out: np.ndarray, batch: int) -> Matmul | None:
        oa, ob, od = operand(sa, batch), operand(sb, batch), operand(out, batch)
        if oa is None or ob is None or od is None:
            return None
        try:
            prim = Matmul(self.lib, oa, ob, od)
        except OneDNNError:
            return None
        if not usable(prim.impl):
            prim.close()
            return None
        return prim


__all__ = ["FloatKernel", "IntProduct", "operand", "usable"]
