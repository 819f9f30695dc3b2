"""The ``cpu`` driver's kernels on oneDNN (used where measured faster than OpenBLAS; see docs/kernels.md).

* Floating point (f32, bf16; f16 where the library implements it): one matmul primitive
  per layout computes ``epilogue(alpha * op(A) @ op(B) + beta * C)`` in a single pass:
  alpha as a leading ``linear`` eltwise, beta * C as the ``sum`` post-op on D (C is first
  copied into D unless D is C), bias and residual as ``binary_add`` with their own strides,
  gelu and scale as eltwise post-ops, up to the first relu or clamp (oneDNN's drop NaN;
  the rest of the epilogue runs in the driver's passes). Operands keep their strides (no copies);
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

import sys
import warnings
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from ..abi import GemmOp, LruCache
from ..spec import OPERAND_POST_OPS, DType, PostOpKind
from . import onednn
from .onednn import DnnlPostOp, Library, Matmul, OneDNNError, Operand

Kernel = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, tuple], None]
_U32 = np.uint32
_BF16 = np.dtype(ml_dtypes.bfloat16)
_ELTWISE = {PostOpKind.GELU_ERF: onednn.GELU_ERF, PostOpKind.GELU_TANH: onednn.GELU_TANH}
_BINARY = OPERAND_POST_OPS  # oneDNN binary post-ops: those with an operand
#: Most primitives one kernel keeps (one per distinct set of operand strides).
_MAX_PRIMS = 8


def usable(impl: str) -> bool:
    """Whether an implementation is one of oneDNN's optimised ones (not its reference code)."""
    return not impl.startswith("ref")


def dense(o: Operand) -> bool:
    """Whether a description is a dense row-major tensor (strides of size-1 dims ignored)."""
    step = 1
    for n, st in zip(reversed(o.dims), reversed(o.strides)):
        if n > 1 and st != step:
            return False
        step *= n
    return True


def exact_int8(impl: str) -> bool:
    """Whether an implementation sums u8 x s8 exactly in s32: the brgemm kernels on VNNI or AMX.
    Measured: oneDNN 3.2's ``gemm:jit`` (what a transposed src gets) rounds sums through f32."""
    return impl.startswith("brg") and ("vnni" in impl or "amx" in impl)


def operand(x: np.ndarray, batch: int, dtype: int | None = None) -> Operand | None:
    """x (batch, rows, cols) described for oneDNN; a broadcast batch becomes a batch of 1.
    None when a stride is negative or not a whole number of elements."""
    item = x.itemsize
    if any(s < 0 or s % item for s in x.strides):
        return None
    if batch > 1 and x.strides[0] == 0:
        x = x[:1]
    return Operand.of(x, dtype)


def fused_count(op: GemmOp) -> int:
    """How many leading post-ops oneDNN runs: all up to the first relu or clamp. Its relu and
    clip return 0 or a bound for NaN (max/min instructions drop a NaN operand), and the spec
    says NaN propagates; from there on the driver's own in-place passes run the epilogue."""
    for i, p in enumerate(op.epilogue):
        if p.kind in (PostOpKind.RELU, PostOpKind.CLAMP):
            return i
    return len(op.epilogue)


class FloatKernel:
    """``epilogue(alpha * a @ b + beta * c)`` into d by one oneDNN matmul per layout.

    Parameters
    ----------
    lib : the loaded library
    op : the validated GEMM (a float combination that reads A and B)
    fallback : the BLAS kernel, run for layouts the library does not take
    """

    def __init__(self, lib: Library, op: GemmOp, fallback: Kernel,
                 tail: Callable[[np.ndarray, tuple], None] | None = None,
                 take: Callable[[tuple, np.dtype], np.ndarray] | None = None,
                 give: Callable[[list], None] | None = None) -> None:
        self.lib, self.op, self.fallback, self.tail = lib, op, fallback, tail
        self.alpha, self.beta = float(op.alpha), float(op.beta)
        self.copy_c = op.reads_c and not op.in_place
        self.fused = fused_count(op)
        # oneDNN's gelu gives NaN for an infinite input (inf * 0 inside); the spec's gelu(inf) is
        # inf. A NaN anywhere in D (one reduction pass) re-runs the GEMM on BLAS; with D == C,
        # C is gone by then, so that case runs on BLAS from the start.
        gelu = any(p.kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH) for p in op.epilogue[:self.fused])
        self.nan_check = gelu
        self.blas_only = gelu and op.in_place
        # native bf16 (vdpbf16ps, vcvtneps2bf16) treats subnormal inputs, products and results as
        # zero, whatever MXCSR says: a GEMM whose inputs could make a subnormal runs on the fallback
        # (see bf16_safe); then a bare product is 0 or normal, but alpha, beta * C or a post-op
        # can still make a subnormal result, so those round a bf16 D from an f32 accumulator
        self.bf16 = op.combo.a == DType.BF16
        more = self.alpha != 1.0 or op.reads_c or bool(op.epilogue)
        # the tail runs on the f32 accumulator: a bf16/f16 D then gets it from a pooled f32 array
        self.scratch = take if (tail is not None or (self.bf16 and more)) and op.combo.d != op.combo.acc else None
        self.take, self.give = take, give
        self.binary = any(p.kind in _BINARY for p in op.epilogue[:self.fused])  # see dense_d
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
        for i, p in enumerate(op.epilogue[:self.fused]):
            if p.kind in _BINARY:
                o = operand(epi[i], op.batch)
                if o is None:
                    return None
                posts.append(DnnlPostOp("binary_add", operand=o))
                binary.append(i)
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
        if posts[1] and not all(dense(o) for o in [od, *(p.operand for p in posts[0] if p.operand)]):
            # measured (3.2): binary post-ops address their operand from D's offset as if D were
            # dense, so a padded batch stride in D reads the wrong bias elements
            return None
        try:
            prim = Matmul(self.lib, oa, ob, od, posts[0])
        except (OneDNNError, KeyError):
            return None
        if not usable(prim.impl):
            prim.close()
            return None
        return prim, posts[1]

    def entry(self, a: np.ndarray, b: np.ndarray, d: np.ndarray, epi: tuple) -> tuple[Matmul, list[int]] | None:
        """The primitive for these operands' layout (created once), or None where the library
        does not take it."""
        key = (a.strides, b.strides, d.strides, tuple(None if e is None else (e.strides, e.dtype) for e in epi))
        entry = self._prims.peek(key, False)  # None: the library does not take this layout
        if entry is False:
            entry = self._prims.get(key, False)
        if entry is False:
            entry = self._create(a, b, d, epi)
            self._prims.put(key, entry)
        return entry

    def run(self, entry: tuple[Matmul, list[int]], a: np.ndarray, b: np.ndarray, d: np.ndarray, epi: tuple) -> None:
        """One call of an :meth:`entry` and the tail; D must already hold C when the GEMM reads C."""
        prim, binary = entry
        prim(a.ctypes.data, b.ctypes.data, d.ctypes.data, *[epi[i].ctypes.data for i in binary])
        self.impls.add(prim.impl)
        if self.tail is not None:
            self.tail(d, epi)

    def __call__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        held: list[np.ndarray] = []
        try:
            x = d
            if self.scratch is not None and self.give is not None:
                x = self.scratch(d.shape, np.dtype(np.float32))
                held.append(x)
            unsafe = self.blas_only or (self.bf16 and not bf16_safe(a, b))
            if not unsafe and self.binary and self.take is not None:
                x = dense_d(x, self.take, held)
            self.complete(None if unsafe else self.entry(a, b, x, epi), (a, b), a, b, c, d, x, epi)
        finally:
            if held and self.give is not None:
                self.give(held)

    def complete(self, entry: tuple[Matmul, list[int]] | None, operands: tuple[np.ndarray, np.ndarray],
                 a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, x: np.ndarray,
                 epi: tuple) -> None:
        """A call once its primitive is chosen: C into the accumulator ``x``, the GEMM of
        ``operands`` (A and B, or their widened copies) into it, and ``x`` rounded once into D;
        the fallback on A and B instead where the library does not take the layout (``entry``
        None) or GELU made a NaN."""
        if entry is None:
            self.impls.add("blas")
            self.fallback(a, b, c, d, epi)
            return
        if self.op.reads_c and (x is not d or not self.op.in_place):
            cast(x, c)  # then the sum post-op adds beta * C
        self.run(entry, *operands, x, epi)
        if self.nan_check and has_nan(x):
            self.impls.add("blas")
            self.fallback(a, b, c, d, epi)
            return
        if x is not d:
            cast(d, x)  # the one rounding to D's dtype


def dense_d(x: np.ndarray, take: Callable[[tuple, np.dtype], np.ndarray], held: list[np.ndarray]) -> np.ndarray:
    """The array a GEMM with a fused operand (bias, residual) writes for D ``x``: ``x`` where it
    is dense, else a dense pooled array (appended to ``held``) that the caller copies into ``x``.

    oneDNN 3.2 addresses a binary post-op's operand as if D were dense (wrong values, or a
    crash, on a D whose rows are interleaved: a seq-first linear layer), so :meth:`FloatKernel._create`
    refuses such a D; one copy keeps the GEMM on oneDNN rather than on OpenBLAS's own threads.
    """
    if x.flags.c_contiguous:
        return x
    y = take(x.shape, x.dtype)
    held.append(y)
    return y


def _min_exponent(x: np.ndarray) -> int:
    """The exponent field of x's smallest nonzero bf16 magnitude (0: a subnormal; 512: all zero),
    in three vectorised passes: ``(bits & 0x7FFF) - 1`` wraps zeros to 0xFFFF, so its minimum
    is the smallest nonzero magnitude less one."""
    m = np.bitwise_and(x.view(np.uint16), np.uint16(0x7FFF))
    if m.size == 0:
        return 512
    m -= np.uint16(1)
    return (int(m.min()) + 1) >> 7


def bf16_safe(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether native bf16 arithmetic (which flushes subnormals) computes a @ b exactly as IEEE
    f32 would: no subnormal input, and every product a multiple of 2**-126 or coarser — then
    every partial sum is 0 or at least 2**-126 in magnitude, never subnormal. With exponent
    fields ea, eb of the smallest nonzero magnitudes, a product is a multiple of
    2**(ea - 134 + eb - 134): safe when ea, eb >= 1 and ea + eb >= 142."""
    ea, eb = _min_exponent(a), _min_exponent(b)
    return ea >= 1 and eb >= 1 and ea + eb >= 142


def has_nan(x: np.ndarray) -> bool:
    """Whether x holds a NaN (or +inf and -inf: a false alarm that costs a re-run, never a wrong
    result): one summing pass, no temporary array."""
    with np.errstate(all="ignore"):
        return bool(np.isnan(np.add.reduce(x, axis=None, dtype=np.float32)))


def cast(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src, converted and rounded to nearest even (subnormals kept): PyTorch's vectorised
    casts for f16/bf16 where the process has imported PyTorch, else NumPy's (f16: scalar, ~2 ns
    an element) and ml_dtypes' (bf16: ~0.25 ns up, ~0.5 down; PyTorch's on one thread: ~0.23
    and ~0.26, AMD EPYC VM). PyTorch is not imported for this: its import took 1.7 s here, more
    than its casts save on any one GEMM, and a NumPy-only program's first f16 GEMM paid it (as
    did every `ffaccel conformance cpu`)."""
    if src.dtype != dst.dtype and "torch" in sys.modules:
        torch_cast(dst, src)
    else:
        with np.errstate(all="ignore"):
            np.copyto(dst, src, casting="unsafe")


def _torch_view(x: np.ndarray) -> Any:
    """A zero-copy torch view of a host array (bfloat16 included; read-only broadcasts too)."""
    import torch

    bf16 = x.dtype == _BF16
    if bf16:
        x = x.view(np.uint16)
    if x.flags.writeable:
        t = torch.from_numpy(x)
    else:  # broadcast inputs: torch warns that it could write them; the kernel never does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(x)
    return t.view(torch.bfloat16) if bf16 else t


def torch_cast(dst: np.ndarray, src: np.ndarray) -> None:
    """dst = src converted (f16/bf16 <-> f32) by PyTorch's vectorised, multi-threaded casts, which
    round to nearest even and overflow to inf like NumPy's (scalar, ~2 ns an element) casts."""
    _torch_view(dst).copy_(_torch_view(src))


class WidenedKernel:
    """f16 / bf16 GEMMs through f32 on oneDNN: the operands widened exactly (:func:`cast`) into
    pooled f32 arrays, one f32 matmul with the fused epilogue (alpha, beta * C, post-ops) into
    an f32 accumulator (D itself for f32 outputs), then one rounding to D's dtype.

    Both PyTorch and oneDNN run on the process's one GNU OpenMP pool, so the casts and the
    GEMM do not fight two spinning thread pools (OpenBLAS's and OpenMP's) for the cores.
    """

    def __init__(self, lib: Library, op: GemmOp, fallback: Kernel,
                 take: Callable[[tuple, np.dtype], np.ndarray], give: Callable[[list], None],
                 tail: Callable[[np.ndarray, tuple], None] | None = None) -> None:
        self.inner = FloatKernel(lib, op, fallback, tail)  # runs on the f32 accumulator here
        self.op, self.take, self.give = op, take, give  # the fallback is the inner kernel's
        self.impls = self.inner.impls

    def _widened(self, x: np.ndarray, held: list[np.ndarray]) -> np.ndarray:
        src = x[:1] if x.shape[0] > 1 and x.strides[0] == 0 else x
        out = self.take(src.shape, np.dtype(np.float32))
        held.append(out)
        cast(out, src)
        return np.broadcast_to(out, x.shape) if src is not x else out

    def __call__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        op = self.op
        held: list[np.ndarray] = []
        try:
            x = d if d.dtype == np.float32 else self.take((op.batch, op.m, op.n), np.dtype(np.float32))
            if x is not d:
                held.append(x)
            elif not self.inner.blas_only and self.inner.binary:
                x = dense_d(x, self.take, held)
            aw, bw = self._widened(a, held), self._widened(b, held)
            entry = None if self.inner.blas_only else self.inner.entry(aw, bw, x, epi)
            self.inner.complete(entry, (aw, bw), a, b, c, d, x, epi)  # cast(): PyTorch's casts for f16/bf16
        finally:
            self.give(held)


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


class TorchIntProduct:
    """The exact integer product a @ b modulo 2**32 by ``torch._int_mm`` (int8 x int8 -> int32,
    wrapping; other pairs shifted and corrected as the torch driver does), written into ``out``
    or a pooled int32 array. Same call as :class:`IntProduct`."""

    def __init__(self, take: Callable[[tuple, np.dtype], np.ndarray]) -> None:
        from .torch import _int_mm_into  # imports PyTorch

        self.take, self._into = take, _int_mm_into
        self.impls: set[str] = set()

    def __call__(self, a: np.ndarray, b: np.ndarray, out: np.ndarray | None,
                 held: list[np.ndarray]) -> np.ndarray:
        if out is None:
            out = self.take((a.shape[0], a.shape[1], b.shape[2]), np.dtype(np.int32))
            held.append(out)
        self._into(a, b, out)
        self.impls.add("torch._int_mm")
        return out.view(_U32)


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
        if self.shift_a:
            sa = _shifted(a, np.uint8, self.take, held)
        elif k > 1 and a.strides[2] != 1:  # a transposed A goes to a kernel that is not exact: lay it out
            sa = self.take(a.shape, np.dtype(np.uint8))
            held.append(sa)
            np.copyto(sa, a)
        else:
            sa = a
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
        if not exact_int8(prim.impl):
            prim.close()
            return None
        return prim


__all__ = ["FloatKernel", "IntProduct", "TorchIntProduct", "WidenedKernel", "exact_int8", "fused_count", "operand", "torch_cast", "usable"]
