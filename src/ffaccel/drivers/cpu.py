"""The ``cpu`` driver: GEMM on the host's BLAS (OpenBLAS, through SciPy and NumPy), and on
oneDNN where it is installed (the ``onednn`` extra) and measured faster.

Which kernel library serves which combination (``FFACCEL_CPU_KERNELS`` / ``kernels=`` force
each; :meth:`CpuDriver.kernels` and ``ffaccel info`` say what runs here; docs/kernels.md has
the measurements): int8 on oneDNN's exact u8 x s8 VNNI/AMX kernel, bf16 natively where the
CPU has bf16 instructions, f16 (and bf16 without them) widened to f32 (PyTorch's casts where
the process has PyTorch, else NumPy's and ml_dtypes') onto oneDNN's f32 matmul, f32 with an epilogue fused in oneDNN's matmul
(:mod:`ffaccel.drivers.cpu_onednn`); f64, bare f32 and everything without oneDNN on the
OpenBLAS paths below. The epilogue's arithmetic is :mod:`ffaccel.drivers.epilogue`.

The OpenBLAS paths:

* f32 / f64: one BLAS ``?gemm`` call per GEMM (or per batch entry), with alpha,
  beta and the in-place C handled by BLAS itself, so they cost no extra pass.
  A row-major D is a column-major D^T, so the call computes
  ``D^T = alpha * op(B)^T op(A)^T + beta * C^T`` straight into D's memory; the
  transposition flags and leading dimensions come from the views' strides, so
  transposed and padded operands are never copied. Small compact GEMMs (which
  OpenBLAS runs on the calling thread) go through SciPy's f2py wrapper, about
  1 us a call; padded or multi-threaded ones call the Fortran symbol of the
  OpenBLAS NumPy itself uses, through ctypes (one thread pool for NumPy and the
  driver: two pools spinning against each other slow both down on small
  machines); SciPy's symbol is the fallback. Batches fold into one
  call when B (or A) is broadcast and the other operand's entries are adjacent;
  otherwise large entries loop over BLAS and small ones go to ``numpy.matmul``,
  which loops over the batch in C.
* f16 / bf16: the inputs are widened to f32 (exact, into pooled scratch arrays), multiplied with ``sgemm``
  (accumulating in f32), the epilogue runs in f32 and the result is rounded once
  to D's dtype (NumPy / ml_dtypes casts are round-to-nearest-even). f32 outputs
  are written directly.
* int8 / uint8 -> int32: exact. The inputs are widened to f32 and multiplied in
  chunks of k small enough that every partial sum is an integer below 2**24 (so
  f32 arithmetic is exact in any summation order); chunks are summed in f64
  (exact below 2**53). Everything after that is int32 two's-complement
  arithmetic done on uint32 views, which wrap modulo 2**32 by definition.

The widened operands and the f32 accumulator of f16/bf16 outputs (and the int
path's temporaries) are scratch arrays from a small, bounded, thread-safe pool
(:class:`_Workspace`) rather than fresh allocations: a large fresh array costs its
page faults on first touch. A kernel takes its scratch arrays and gives them back
when done, so two calls running at once never share one.

The epilogue runs in the accumulate precision, in place on D (or on the f32
temporary for f16/bf16 outputs). Overflow to inf and NaN propagation are the
intended IEEE results, so NumPy's floating-point warnings are silenced inside
the driver.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import math
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.linalg import blas as _blas
from scipy.linalg import cython_blas as _cython_blas

from ..abi import CopyOp, GemmOp, LruCache
from ..spec import DType, ErrorCode, FFAccelError, PostOpKind, numpy_dtype
from .base import BoundGemm, Driver, DriverInfo, GemmKernel, SizeBand
from .blas_threads import ThreadLimit, one_blas_thread
from .envswitch import env_switch
from .epilogue import Step, float_steps, int_steps
from .epilogue import run_steps as _run_steps
from .rounding import INT_F32_EXACT_CHUNK
from . import cpu_table as _table
from .cpu_table import (CHOOSABLE, DEFAULT_CROSSOVERS, OPENBLAS_SINGLE_THREAD_MNK, Band, Choice, ClassEntry,
                        Crossovers, KernelClass, KernelTable, Library, RowKey, Threads, build_table, combo_class)

try:  # correct f64 -> bf16 rounding (ml_dtypes rounds twice, through f32)
    from .rounding import round_to as _round_to
except ImportError:  # pragma: no cover - the module ships with ffaccel
    _round_to = None

Kernel = GemmKernel
_U32 = np.uint32
_MASK32 = 0xFFFF_FFFF
_INT_MAX = 2**31 - 1
#: OpenBLAS runs a gemm single-threaded when m*n*k is at or below this
#: (SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD), so a thread limit needs no call there.
_SINGLE_THREAD_MNK = OPENBLAS_SINGLE_THREAD_MNK

# NumPy reports the FPU's flags after a matmul (an overflow to inf would warn): the per-call paths
# run it with every floating-point error ignored. ``np.errstate(all="ignore")`` costs ~2 us a call
# here (it builds its error object each time); NumPy 2 keeps that object in a context variable,
# so setting it to one prepared "ignore all" object does the same for ~0.1 us. Use as
# ``token = _fp_ignore()`` ... ``finally: _fp_restore(token)``; any other NumPy: errstate itself.
try:
    from numpy._core._ufunc_config import _extobj_contextvar as _FP_STATE
    from numpy._core._ufunc_config import _make_extobj as _make_fp_state

    _FP_IGNORE_ALL = _make_fp_state(all="ignore")
    _fp_ignore: Callable[[], Any] = functools.partial(_FP_STATE.set, _FP_IGNORE_ALL)
    _fp_restore: Callable[[Any], Any] = _FP_STATE.reset
except (ImportError, AttributeError, TypeError):  # pragma: no cover - another NumPy
    def _fp_ignore() -> Any:
        state = np.errstate(all="ignore")
        state.__enter__()
        return state

    def _fp_restore(state: Any) -> None:
        state.__exit__(None, None, None)
#: Batch entries at least this big (m*n*k) get one BLAS call each; smaller ones go to numpy.matmul.
_LOOP_MIN_MNK = 32 * 32 * 32

#: The band of every GEMM that reads neither A nor B (alpha == 0 or k == 0): the OpenBLAS kernel's
#: ``epilogue(beta * C)`` passes on the calling thread, whatever library the table's row names
_NO_PRODUCT_BAND = Band(0, Library.BLAS, Threads.CALLER)


# --------------------------------------------------------------------------------------
# BLAS entry points


_GEMM_PROTO = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 13))


def _numpy_blas_gemm(prefix: str) -> tuple[Callable[..., None], type] | None:
    """The Fortran ``?gemm`` of the BLAS NumPy itself uses, and its integer type.

    Large GEMMs go there rather than to SciPy's copy of OpenBLAS: two OpenBLAS
    thread pools in one process fight for the cores (each spins for a while after
    a call), which on a small machine slows both several-fold whenever calls to
    NumPy and to the driver alternate.
    """
    try:
        import numpy  # noqa: F401  (its BLAS must be loaded for threadpoolctl to see it)
        from threadpoolctl import ThreadpoolController

        libs = [lc.filepath for lc in ThreadpoolController().lib_controllers
                if lc.internal_api == "openblas" and "numpy" in lc.filepath]
    except Exception:  # pragma: no cover - threadpoolctl cannot inspect this platform
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)  # already loaded: this only looks it up
        except OSError:  # pragma: no cover
            continue
        for sym, int_t in ((f"scipy_{prefix}gemm_64_", ctypes.c_int64), (f"{prefix}gemm_64_", ctypes.c_int64),
                           (f"scipy_{prefix}gemm_", ctypes.c_int), (f"{prefix}gemm_", ctypes.c_int)):
            fn = getattr(lib, sym, None)
            if fn is not None:
                return _GEMM_PROTO(ctypes.cast(fn, ctypes.c_void_p).value), int_t
    return None


def _scipy_blas_gemm(prefix: str) -> tuple[Callable[..., None], type]:
    """The Fortran ``?gemm`` SciPy links against (from ``scipy.linalg.cython_blas``)."""
    cap = _cython_blas.__pyx_capi__[f"{prefix}gemm"]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_ptr = ctypes.pythonapi.PyCapsule_GetPointer
    get_ptr.restype, get_ptr.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    return _GEMM_PROTO(get_ptr(cap, get_name(cap))), ctypes.c_int


class _Blas:
    """One precision's BLAS gemm: SciPy's f2py wrapper (fast dispatch, compact operands,
    small sizes) and a raw Fortran symbol (any leading dimension; NumPy's BLAS when found)."""

    def __init__(self, dtype: type, f2py: Callable[..., Any], prefix: str, scalar: type) -> None:
        self.dtype = np.dtype(dtype)
        self.f2py = f2py
        self._prefix = prefix
        self._scalar = scalar
        self._raw: tuple[Callable[..., None], type] | None = None

    def raw(self) -> tuple[Callable[..., None], type]:
        """(function taking 13 pointers, its Fortran integer type)."""
        if self._raw is None:
            self._raw = _numpy_blas_gemm(self._prefix) or _scipy_blas_gemm(self._prefix)
        return self._raw

    def scalar(self, x: float) -> Any:
        return self._scalar(x)


_SGEMM = _Blas(np.float32, _blas.sgemm, "s", ctypes.c_float)
_DGEMM = _Blas(np.float64, _blas.dgemm, "d", ctypes.c_double)
_CHAR_N = ctypes.c_char(b"N")
_CHAR_T = ctypes.c_char(b"T")


def _fortran_operand(rows: int, cols: int, sr: int, sc: int, limit: int) -> tuple[bool, int] | None:
    """How BLAS sees a rows x cols matrix with element (i, j) at ``i*sr + j*sc`` (element strides).

    Returns (transposed, ld): column-major with leading dimension ld (``transposed`` False),
    or the transpose of a column-major cols x rows matrix; None when neither fits.
    A stride along a dimension of extent 1 is never used, so it is normalised.
    """
    if cols == 1:
        sc = max(1, rows)
    if rows == 1:
        sr = max(1, cols)
    if sr == 1 and max(1, rows) <= sc <= limit:
        return False, sc
    if sc == 1 and max(1, cols) <= sr <= limit:
        return True, sr
    return None


def _elem_strides(x: np.ndarray) -> tuple[int, int] | None:
    s = x.itemsize
    r, c = x.strides
    if r % s or c % s or r < 0 or c < 0:
        return None
    return r // s, c // s


def _gemm2d(blas: _Blas, alpha: float, a: np.ndarray, b: np.ndarray, beta: float, x: np.ndarray) -> bool:
    """x = alpha * a @ b + beta * x in x's own memory (x read only when beta != 0).

    ``a`` (m, k), ``b`` (k, n) and ``x`` (m, n) are 2-D views in the BLAS dtype.
    Returns False (having done nothing) when a view cannot be handed to BLAS as it is.
    """
    if x.shape[0] * x.shape[1] * a.shape[1] > _SINGLE_THREAD_MNK:  # multi-threaded: NumPy's BLAS
        if alpha == 1.0 and beta == 0.0 and _blas_strides(a) and _blas_strides(b) and _blas_strides(x):
            token = _fp_ignore()  # NumPy's own ?gemm call: ~2 us against ~8 us through ctypes
            try:
                np.matmul(a, b, out=x)
            finally:
                _fp_restore(token)
            return True
        return _gemm2d_strided(blas, alpha, a, b, beta, x)
    args = _f2py_operands(a, b, x)
    if args is not None:  # fast path: compact operands through f2py
        y1, y2, xt, t1, t2 = args
        r = blas.f2py(alpha, y1, y2, beta, xt, t1, t2, 1)
        if r is not xt:  # f2py had to copy (e.g. misaligned memory): put the result in place
            np.copyto(x, r.T)
        return True
    return _gemm2d_strided(blas, alpha, a, b, beta, x)


def _blas_strides(x: np.ndarray) -> bool:
    """Whether NumPy hands this 2-D view to BLAS as it is (unit stride along one axis, the other a
    leading dimension that fits): then ``numpy.matmul`` makes no copy and loops in no C code."""
    s = x.itemsize
    r, c = x.strides
    rows, cols = x.shape
    return (c == s and r >= max(1, cols) * s and r % s == 0) or (r == s and c >= max(1, rows) * s and c % s == 0)


def _f2py_operands(a: np.ndarray, b: np.ndarray, x: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """(op(B)^T, op(A)^T, X^T, trans flags) as compact column-major arrays f2py takes as they are.

    The call computes X^T = alpha * B^T A^T + beta * X^T; each operand is passed either as
    its transpose (column-major when the operand is row-major) or as itself with the trans
    flag set. None when X is not compact or an operand is strided both ways.
    """
    xt = x.T
    if not xt.flags.f_contiguous:
        return None
    y1, y2 = _as_column_major(b), _as_column_major(a)
    if y1 is None or y2 is None:
        return None
    return y1[0], y2[0], xt, y1[1], y2[1]


def _as_column_major(m: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(array, trans): m's transpose when m is row-major (trans 0), m itself when column-major (1)."""
    mt = m.T
    if mt.flags.f_contiguous:
        return mt, 0
    if m.flags.f_contiguous:
        return m, 1
    return None


def _gemm2d_strided(blas: _Blas, alpha: float, a: np.ndarray, b: np.ndarray, beta: float,
                    x: np.ndarray) -> bool:
    """As :func:`_gemm2d`, for padded (leading dimension > cols) or transposed strided views."""
    m, k = a.shape
    n = b.shape[1]
    fn, ci = blas.raw()
    limit = _INT_MAX if ci is ctypes.c_int else 2**63 - 1
    if max(m, n, k) > limit:
        return False
    sa, sb, sx = _elem_strides(a), _elem_strides(b), _elem_strides(x)
    if sa is None or sb is None or sx is None:
        return False
    # Column-major view of the call: X^T (n x m) = alpha * B^T (n x k) A^T (k x m) + beta * X^T.
    o1 = _fortran_operand(n, k, sb[1], sb[0], limit)
    o2 = _fortran_operand(k, m, sa[1], sa[0], limit)
    ox = _fortran_operand(n, m, sx[1], sx[0], limit)
    if o1 is None or o2 is None or ox is None or ox[0]:
        return False
    args = (
        _CHAR_T if o1[0] else _CHAR_N, _CHAR_T if o2[0] else _CHAR_N, ci(n), ci(m), ci(k),
        blas.scalar(alpha), None, ci(o1[1]), None, ci(o2[1]), blas.scalar(beta), None, ci(ox[1]),
    )
    ref = [ctypes.addressof(v) if v is not None else None for v in args]
    ref[6], ref[8], ref[11] = b.ctypes.data, a.ctypes.data, x.ctypes.data
    fn(*ref)
    return True


def _gemm3d(blas: _Blas, alpha: float, a: np.ndarray, b: np.ndarray, beta: float, x: np.ndarray) -> bool:
    """x = alpha * a @ b + beta * x over a batch with BLAS alone; False when that needs copies."""
    batch = x.shape[0]
    if batch == 1:
        return _gemm2d(blas, alpha, a[0], b[0], beta, x[0])
    m, k = a.shape[1:]
    n = b.shape[2]
    if b.strides[0] == 0:  # B broadcast: fold the batch into m (one call for all entries)
        try:
            a2 = a.reshape(batch * m, k, copy=False)
            x2 = x.reshape(batch * m, n, copy=False)
        except ValueError:
            pass
        else:
            if _gemm2d(blas, alpha, a2, b[0], beta, x2):
                return True
    if a.strides[0] == 0:  # A broadcast: fold the batch into n (needs row-interleaved D)
        try:
            b2 = b.transpose(1, 0, 2).reshape(k, batch * n, copy=False)
            x2 = x.transpose(1, 0, 2).reshape(m, batch * n, copy=False)
        except ValueError:
            pass
        else:
            if _gemm2d(blas, alpha, a[0], b2, beta, x2):
                return True
    if alpha == 1.0 and beta == 0.0 and _blas_strides(a[0]) and _blas_strides(b[0]) and _blas_strides(x[0]):
        # numpy.matmul loops over the batch in C with one ?gemm per entry: 1.2x (8 x 256^3) to 14x
        # (12 x 1x64x40) faster than one Python-level call per entry (docs/kernels.md, "Batched GEMMs")
        token = _fp_ignore()
        try:
            np.matmul(a, b, out=x)
        finally:
            _fp_restore(token)
        return True
    if m * n * k < _LOOP_MIN_MNK:
        return False  # numpy.matmul's C loop beats one Python-level call per entry
    done = 0
    for i in range(batch):
        if not _gemm2d(blas, alpha, a[i], b[i], beta, x[i]):
            break
        done += 1
    if done == batch:
        return True
    _matmul_axpby(alpha, a[done:], b[done:], beta, x[done:])
    return True


def _matmul_axpby(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, x: np.ndarray) -> None:
    """x = alpha * a @ b + beta * x with numpy.matmul (batches looped in C) and in-place passes."""
    token = _fp_ignore()  # (an np.errstate costs ~2 us: attention's scaled q @ k^T comes here per call)
    try:
        if beta == 0.0:  # the product rounded once, then scaled: what the temporary gave, without it
            np.matmul(a, b, out=x)
            if alpha != 1.0:
                np.multiply(x, alpha, out=x)
            return
        t = np.matmul(a, b)
        if alpha != 1.0:
            np.multiply(t, alpha, out=t)
        if beta != 1.0:
            np.multiply(x, beta, out=x)
        np.add(x, t, out=x)
    finally:
        _fp_restore(token)


#: f16 casts in NumPy are scalar code (several ns an element): above this many elements they
#: are split across two threads (the casts release the GIL).
_PAR_CAST_MIN = 1 << 20


@functools.lru_cache(maxsize=1)
def _pool() -> Any:
    """The process's two cast threads (created on first use, as :func:`~.blas_threads.one_blas_thread`)."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=2, thread_name_prefix="ffaccel-cpu-cast")


def _cast_into(dst: np.ndarray, src: np.ndarray, parallel: bool) -> None:
    """np.copyto(dst, src, casting='unsafe'), on two threads for large arrays when allowed."""
    with np.errstate(all="ignore"):
        if not parallel or dst.size < _PAR_CAST_MIN or dst.shape[1] < 2:
            np.copyto(dst, src, casting="unsafe")
            return
        h = dst.shape[1] // 2
        src = np.broadcast_to(src, dst.shape)
        fut = _pool().submit(_cast_into, dst[:, h:], src[:, h:], False)
        np.copyto(dst[:, :h], src[:, :h], casting="unsafe")
        fut.result()


class _Workspace:
    """A small, bounded, thread-safe pool of scratch arrays (widened operands, f32 accumulators).

    :meth:`take` hands out an array that no one else holds (from the pool, or fresh);
    :meth:`give` puts it back. Two kernels running at once on the same geometry each
    take their own arrays, so they never share one. The pool keeps at most
    ``max_entries`` arrays and ``max_bytes`` bytes, evicting the least recently given
    back; arrays under ``min_bytes`` are never pooled (allocating them is cheap).
    Reuse saves the page faults of fresh large allocations, and their zeroing by the kernel.
    """

    def __init__(self, max_bytes: int, max_entries: int, min_bytes: int) -> None:
        from collections import OrderedDict

        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.min_bytes = min_bytes
        self._free: OrderedDict[int, np.ndarray] = OrderedDict()  # id -> array, oldest first
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` and ``dtype`` that only the caller holds (contents undefined)."""
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize >= self.min_bytes:
            with self._lock:
                for key in reversed(self._free):  # most recently given back first
                    arr = self._free[key]
                    if arr.shape == shape and arr.dtype == dtype:
                        del self._free[key]
                        self._bytes -= arr.nbytes
                        return arr
        return np.empty(shape, dtype)

    def give(self, arrays: list[np.ndarray]) -> None:
        """Return arrays from :meth:`take` (the caller must not use them afterwards)."""
        keep = [x for x in arrays if self.min_bytes <= x.nbytes <= self.max_bytes]
        if not keep:
            return
        with self._lock:
            for x in keep:
                if id(x) in self._free:  # pragma: no cover - given back twice
                    continue
                self._free[id(x)] = x
                self._bytes += x.nbytes
            while self._bytes > self.max_bytes or len(self._free) > self.max_entries:
                _, old = self._free.popitem(last=False)
                self._bytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0

    def stats(self) -> tuple[int, int]:
        """(arrays held, bytes held)."""
        with self._lock:
            return len(self._free), self._bytes


#: Scratch arrays shared by every cpu driver in the process: enough for the widened A and
#: B and the f32 accumulator of a 2048 x 2048 f16 GEMM (3 x 16 MiB), twice over.
_WORKSPACE = _Workspace(max_bytes=96 << 20, max_entries=8, min_bytes=256 << 10)


def _scratch_like(x: np.ndarray, dtype: np.dtype, held: list[np.ndarray]) -> np.ndarray:
    """A pooled array of x's shape in ``dtype`` (recorded in ``held``), laid out like x:
    an operand whose entries are column-major gets a column-major scratch, so BLAS reads it
    transposed instead of the widening copy transposing it."""
    if x.ndim == 3 and x.shape[1] > 1 and x.shape[2] > 1 and abs(x.strides[1]) < abs(x.strides[2]):
        buf = _WORKSPACE.take((x.shape[0], x.shape[2], x.shape[1]), dtype)
        held.append(buf)
        return buf.transpose(0, 2, 1)
    buf = _WORKSPACE.take(x.shape, dtype)
    held.append(buf)
    return buf


def _widen_pair(a: np.ndarray, b: np.ndarray, dtype: np.dtype, parallel: bool,
                held: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Both operands widened to ``dtype`` into pooled scratch arrays (recorded in ``held``);
    the two casts run side by side when large and allowed."""
    wa, sa = _widen_target(a, dtype, held)
    wb, sb = _widen_target(b, dtype, held)
    with np.errstate(all="ignore"):
        if parallel and a.dtype == np.float16 and a.size + b.size >= _PAR_CAST_MIN and sb is not None:
            fut = _pool().submit(np.copyto, sb[0], sb[1], casting="unsafe")
            if sa is not None:
                np.copyto(sa[0], sa[1], casting="unsafe")
            fut.result()
        else:
            for st in (sa, sb):
                if st is not None:
                    np.copyto(st[0], st[1], casting="unsafe")
    return wa, wb


def _widen(x: np.ndarray, dtype: np.dtype, held: list[np.ndarray]) -> np.ndarray:
    """x converted (exactly) to ``dtype`` in a pooled scratch array (recorded in ``held``),
    keeping a broadcast batch broadcast (no copies of it)."""
    w, st = _widen_target(x, dtype, held)
    if st is not None:
        with np.errstate(all="ignore"):
            np.copyto(st[0], st[1], casting="unsafe")
    return w


def _widen_target(x: np.ndarray, dtype: np.dtype, held: list[np.ndarray]
                  ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """(the widened operand, (destination, source) of the copy that fills it, or None)."""
    if x.dtype == dtype:
        return x, None
    if x.shape[0] > 1 and x.strides[0] == 0:
        dst = _scratch_like(x[:1], dtype, held)
        return np.broadcast_to(dst, x.shape), (dst, x[:1])
    dst = _scratch_like(x, dtype, held)
    return dst, (dst, x)


# --------------------------------------------------------------------------------------
# epilogues

def _float_steps(op: GemmOp, acc: np.dtype) -> list[Step]:
    """One in-place function per post-op, acting on the accumulate-precision array x."""
    return float_steps(op.epilogue, acc)


def _int_steps(op: GemmOp) -> list[Step]:
    """In-place int32 post-ops on D; sums and products wrap through uint32 views (mod 2**32)."""
    return int_steps(op.epilogue)


# --------------------------------------------------------------------------------------
# plans: one kernel per validated geometry


def _noop(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
    return None


def _plan_float(op: GemmOp, parallel: bool) -> Kernel:
    combo = op.combo
    acc = numpy_dtype(combo.acc)
    blas = _DGEMM if combo.acc == DType.F64 else _SGEMM
    direct = combo.d == combo.acc  # D itself holds the accumulator
    widen = combo.a != combo.acc
    alpha, beta = float(op.alpha), float(op.beta)
    reads_ab, reads_c, in_place = op.reads_ab, op.reads_c, op.in_place
    beta_eff = beta if reads_c else 0.0
    steps = _float_steps(op, acc)
    parallel = parallel and DType.F16 in (combo.a, combo.d)

    if direct and not widen and not steps and reads_ab and not (reads_c and not in_place):
        # f32/f64 with C absent or in place: BLAS writes D and nothing else runs (the 8x8 case).
        if op.batch == 1:
            def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
                x = d[0]
                if not _gemm2d(blas, alpha, a[0], b[0], beta_eff, x):
                    _matmul_axpby(alpha, a[0], b[0], beta_eff, x)
        else:
            def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
                if not _gemm3d(blas, alpha, a, b, beta_eff, d):
                    _matmul_axpby(alpha, a, b, beta_eff, d)
        return kernel

    if (direct and not widen and reads_ab and not reads_c and op.batch == 1 and len(op.epilogue) == 1
            and op.epilogue[0].kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M)):
        # a linear layer's GEMM + bias: the bias broadcast into D, then BLAS adds the product to it
        # (beta = 1): D = alpha * A @ B + bias, the same sum as the separate pass, with no pass
        # and no floating-point state to save (a NumPy errstate costs ~1 us at 8 x 8)
        copyto, f2py, add = np.copyto, blas.f2py, np.add
        small = op.m * op.n * op.k <= _SINGLE_THREAD_MNK

        def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
            x, a2, b2 = d[0], a[0], b[0]
            if not small and alpha == 1.0 and _blas_strides(a2) and _blas_strides(b2) and _blas_strides(x):
                # multi-threaded: NumPy's own ?gemm call, then the bias (a pass over D costs less
                # than the ~8 us of a ctypes call with beta = 1 at these sizes)
                token = _fp_ignore()  # inf - inf is NaN, as intended
                try:
                    np.matmul(a2, b2, out=x)
                    add(x, epi[0][0], out=x)
                finally:
                    _fp_restore(token)
                return
            copyto(x, epi[0][0])
            if small and a2.flags.c_contiguous and b2.flags.c_contiguous and x.flags.c_contiguous:
                xt = x.T  # plain row-major operands: the f2py call alone
                r = f2py(alpha, b2.T, a2.T, 1.0, xt, 0, 0, 1)
                if r is not xt:  # f2py had to copy (misaligned memory): put the result in place
                    copyto(x, r.T)
            elif not _gemm2d(blas, alpha, a2, b2, 1.0, x):
                _matmul_axpby(alpha, a2, b2, 1.0, x)

        return kernel

    shape = (op.batch, op.m, op.n)

    def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        held: list[np.ndarray] = []  # pooled scratch arrays, given back at the end
        try:
            if direct:
                x = d
            else:
                x = _WORKSPACE.take(shape, acc)
                held.append(x)
            if reads_ab:
                if reads_c and not (direct and in_place):
                    with np.errstate(all="ignore"):
                        np.copyto(x, c, casting="unsafe")  # same dtype, or an exact f16/bf16 -> f32 widening
                if widen:
                    a, b = _widen_pair(a, b, acc, parallel, held)
                if not _gemm3d(blas, alpha, a, b, beta_eff, x):
                    _matmul_axpby(alpha, a, b, beta_eff, x)
            elif reads_c:  # alpha == 0 or k == 0: A and B are not read
                with np.errstate(all="ignore"):
                    np.multiply(c, beta, out=x, dtype=acc)
            else:
                x[...] = 0
            if steps:
                _run_steps(steps, x, epi)
            if not direct:
                _cast_into(d, x, parallel)  # one round to nearest even (overflow -> inf)
        finally:
            _WORKSPACE.give(held)

    return kernel


def _matmul_into(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> None:
    """``numpy.matmul(a, b, out=d)`` with the FPU flags silenced (NumPy reports them after a matmul;
    BLAS alone does not): a group of tiny GEMMs as one call, and its probe."""
    token = _fp_ignore()
    try:
        np.matmul(a, b, out=d)
    finally:
        _fp_restore(token)


def _numpys_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A plain f32/f64 GEMM as NumPy's own ``a @ b`` runs it (its ?gemm or ?gemv, on NumPy's pool),
    into NumPy's new D, with the FPU flags silenced: the fresh kernel of the multi-threaded sizes
    (``numpy.matmul(..., out=)`` costs ~0.5 us more per call than letting NumPy allocate D)."""
    token = _fp_ignore()
    try:
        return np.matmul(a, b)
    finally:
        _fp_restore(token)


_GEMV = {np.dtype(np.float32): _blas.sgemv, np.dtype(np.float64): _blas.dgemv}
_SCAL_AXPY = {np.dtype(np.float32): (_blas.sscal, _blas.saxpy), np.dtype(np.float64): (_blas.dscal, _blas.daxpy)}
#: OpenBLAS runs a ?gemv on the calling thread below this many matrix elements (its interface's
#: 2304 * GEMM_MULTITHREAD_THRESHOLD): only there may SciPy's copy of OpenBLAS take it, waking no
#: worker of a second pool; above it the call goes to NumPy's OpenBLAS (numpy.matmul).
_GEMV_SINGLE_THREAD_ELEMS = 2304 * 4


def _gemv_into(alpha: float, a: np.ndarray, b: np.ndarray, beta: float, y: np.ndarray) -> bool:
    """y = alpha * (a @ b as a vector) + beta * y through SciPy's f2py ?gemv, in y's own memory
    (a 1-D contiguous view of D's single row or column; read only when beta != 0), for the sizes
    OpenBLAS runs on the calling thread.

    ``a`` (m, k) and ``b`` (k, n) with m == 1 or n == 1. One C call and no floating-point
    state to save (NumPy's matmul reports the FPU's flags and needs an errstate: ~2-4 us).
    False (nothing done) when an operand is strided both ways or y is not contiguous.
    """
    gemv = _GEMV.get(y.dtype)
    if (gemv is None or not y.flags.c_contiguous or a.dtype != y.dtype or b.dtype != y.dtype
            or a.shape[0] * a.shape[1] * b.shape[1] >= _GEMV_SINGLE_THREAD_ELEMS):
        return False  # (a multi-threaded ?gemv goes to NumPy's OpenBLAS: SciPy's is a second pool)
    if a.shape[0] == 1:  # y (n) = op(B)^T a_row: B^T is n x k
        mat, vec = b, a[0]
        if mat.T.flags.f_contiguous:
            mat, trans = mat.T, 0
        elif mat.flags.f_contiguous:
            trans = 1
        else:
            return False
    else:  # n == 1: y (m) = A b_col
        mat, vec = a, b[:, 0]
        if mat.flags.f_contiguous:
            trans = 0
        elif mat.T.flags.f_contiguous:
            mat, trans = mat.T, 1
        else:
            return False
    if alpha == 1.0:
        r = gemv(1.0, mat, vec, beta, y, 0, 1, 0, 1, trans, 1)
    else:
        # ?gemv scales the vector by alpha before the product (BLAS's temp = alpha * x(j)):
        # alpha * x overflows (inf * 0 = NaN) or underflows where alpha * (A @ x) is finite. The
        # product with alpha 1, then alpha applied to it (?scal, ?axpy: no FPU flags to save)
        scal, axpy = _SCAL_AXPY[y.dtype]
        if beta == 0.0:
            r = scal(alpha, gemv(1.0, mat, vec, 0.0, y, 0, 1, 0, 1, trans, 1))
        else:
            r = axpy(gemv(1.0, mat, vec, 0.0, None, 0, 1, 0, 1, trans, 1), scal(beta, y), a=alpha)
    if r is not y:  # f2py had to copy (misaligned memory): put the result in place
        np.copyto(y, r)
    return True


def _plan_gemv(op: GemmOp) -> Kernel | None:
    """Skinny f32/f64 GEMMs (batch 1, m or n = 1) on ``numpy.matmul``: what NumPy's @ runs for a
    vector times a matrix (OpenBLAS ?gemv, on NumPy's OpenBLAS and its threads). OpenBLAS's
    ?gemm with m = 1 ran 10-20x slower here (docs/kernels.md). None for other GEMMs."""
    combo = op.combo
    if (op.batch != 1 or not (op.m == 1 or op.n == 1) or combo.is_int or combo.a != combo.acc
            or combo.d != combo.acc or not op.reads_ab):
        return None
    alpha, beta = float(op.alpha), float(op.beta)
    reads_c, in_place = op.reads_c, op.in_place
    beta_eff = beta if reads_c else 0.0
    steps = _float_steps(op, numpy_dtype(combo.acc))
    matmul = np.matmul

    bias_first = (not reads_c and len(op.epilogue) == 1
                  and op.epilogue[0].kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M))
    copyto = np.copyto

    single = op.m * op.n * op.k < _GEMV_SINGLE_THREAD_ELEMS  # SciPy's ?gemv on the calling thread

    def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        x, a2, b2 = d[0], a[0], b[0]
        y = x[0] if x.shape[0] == 1 else x[:, 0]
        if bias_first:  # a linear layer
            if single:  # the bias in D, then ?gemv adds the product (beta = 1)
                copyto(x, epi[0][0])
                if not _gemv_into(alpha, a2, b2, 1.0, y):
                    with np.errstate(all="ignore"):
                        _matmul_axpby(alpha, a2, b2, 1.0, x)
                return
            token = _fp_ignore()  # NumPy's ?gemv, then the bias
            try:
                if alpha == 1.0:
                    matmul(a2, b2, out=x)
                else:
                    _matmul_axpby(alpha, a2, b2, 0.0, x)
                np.add(x, epi[0][0], out=x)
            finally:
                _fp_restore(token)
            return
        if reads_c and not in_place:
            copyto(x, c[0])  # type: ignore[index]  # C has D's dtype
        if not _gemv_into(alpha, a2, b2, beta_eff, y):
            token = _fp_ignore()
            try:
                if beta_eff == 0.0 and alpha == 1.0:
                    matmul(a2, b2, out=x)
                else:
                    _matmul_axpby(alpha, a2, b2, beta_eff, x)
            finally:
                _fp_restore(token)
        if steps:
            _run_steps(steps, d, epi)

    return kernel


def _int_sum(a: np.ndarray, b: np.ndarray, chunk: int, held: list[np.ndarray]) -> np.ndarray:
    """The exact integer a @ b, modulo 2**32, as a pooled uint32 (batch, m, n) array (in ``held``)."""
    batch, m, k = a.shape
    shape = (batch, m, b.shape[2])
    f32 = np.dtype(np.float32)
    af, bf = _widen(a, f32, held), _widen(b, f32, held)
    t = _WORKSPACE.take(shape, f32)
    w = _WORKSPACE.take(shape, np.dtype(_U32))
    held += (t, w)
    with np.errstate(all="ignore"):
        if k <= chunk:
            np.matmul(af, bf, out=t)
            np.copyto(w.view(np.int32), t, casting="unsafe")  # |sums| <= 2**24: exact in f32 and int32
            return w
        total = _WORKSPACE.take(shape, np.dtype(np.float64))
        held.append(total)
        for lo in range(0, k, chunk):
            hi = min(k, lo + chunk)
            np.matmul(af[:, :, lo:hi], bf[:, lo:hi, :], out=t)
            if lo == 0:
                np.copyto(total, t)
            else:
                np.add(total, t, out=total)  # exact: |total| <= k * 2**16 < 2**53
        wide = _WORKSPACE.take(shape, np.dtype(np.int64))
        held.append(wide)
        np.copyto(wide, total, casting="unsafe")  # exact: an integer below 2**53
        np.copyto(w, wide, casting="unsafe")  # int64 -> uint32 is reduction modulo 2**32
        return w


def _plan_int(op: GemmOp, product: Callable[..., np.ndarray | None] | None = None) -> Kernel:
    """The int8 kernel: the exact product from ``product`` (oneDNN's u8 x s8, see
    :mod:`ffaccel.drivers.cpu_onednn`) when given and it takes the layout, else from f32
    GEMMs on exact k chunks; alpha, beta and the epilogue in wrapping uint32 either way."""
    chunk = INT_F32_EXACT_CHUNK[(op.combo.a, op.combo.b)]
    ua, ub = _U32(int(op.alpha) & _MASK32), _U32(int(op.beta) & _MASK32)
    reads_ab, reads_c, in_place = op.reads_ab, op.reads_c, op.in_place
    steps = _int_steps(op)

    def kernel(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        du = d.view(_U32)  # two's-complement wrap == uint32 arithmetic
        held: list[np.ndarray] = []  # pooled scratch arrays, given back at the end
        try:
            if reads_ab:
                into_d = product is not None and ua == 1 and not reads_c  # the product lands in D itself
                w = product(a, b, d if into_d else None, held) if product is not None else None
                if w is None:
                    into_d = False
                    w = _int_sum(a, b, chunk, held)
                if ua != 1:
                    np.multiply(w, ua, out=w)
                if reads_c:
                    assert c is not None
                    if not (in_place and ub == 1):
                        np.multiply(c.view(_U32), ub, out=du)
                    np.add(du, w, out=du)
                elif not into_d:
                    np.copyto(du, w)
            elif reads_c:
                assert c is not None
                np.multiply(c.view(_U32), ub, out=du)
            else:
                du[...] = 0
        finally:
            _WORKSPACE.give(held)
        if steps:
            _run_steps(steps, d, epi)

    return kernel


#: Post-ops that only oneDNN fuses cheaply (OpenBLAS's path runs SciPy's erf or NumPy's tanh passes).
_GELU = (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH)


def _torch_loaded() -> bool:
    """Whether PyTorch is imported in this process (its OpenMP team is then a pool that works)."""
    return "torch" in sys.modules


def _with_threads(kernel: Kernel, limit: ThreadLimit) -> Kernel:
    def limited(a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray, epi: tuple) -> None:
        with limit:
            kernel(a, b, c, d, epi)

    return limited


# --------------------------------------------------------------------------------------
# the driver


# --------------------------------------------------------------------------------------
# which kernel library serves each combination: resolved once per choice into the kernel table

#: Environment variable choosing kernel libraries: ``auto`` (default), ``blas``, ``onednn``, or
#: per class, e.g. ``int8=onednn,f32=blas`` (classes not named stay ``auto``); f16 and bf16 also
#: take ``widened`` (casts to f32, then oneDNN's f32 matmul), int8 ``torch``
#: (``torch._int_mm``, which ``auto`` takes for int8 x int8 where it runs on VNNI/AMX), f32 and
#: f64 ``gemv`` (skinny GEMMs on OpenBLAS's ?gemv). See :mod:`ffaccel.drivers.cpu_table`.
KERNELS_ENV = "FFACCEL_CPU_KERNELS"
#: The combination classes whose kernel library can be chosen.
KERNEL_CLASSES = tuple(c.value for c in CHOOSABLE)
KERNEL_CHOICES = tuple(c.value for c in Choice)


def parse_kernels(spec: str | None) -> dict[str, str]:
    """Class name -> choice name from a ``FFACCEL_CPU_KERNELS``-style string.

    Examples
    --------
    >>> parse_kernels("int8=onednn")["int8"], parse_kernels("blas")["f32"]
    ('onednn', 'blas')
    """
    return {c.value: v.value for c, v in _table.parse_kernels(spec, KERNELS_ENV).items()}


#: ``FFACCEL_ONEDNN=0`` ignores an installed oneDNN (a switch: 0 or 1).
ONEDNN_ENV = "FFACCEL_ONEDNN"


def _onednn_library(choice: dict[str, str]) -> Any:
    """oneDNN when installed and something may use it (imported only then), else None."""
    if all(v in ("blas", "gemv") for v in choice.values()) or not env_switch(ONEDNN_ENV):
        return None
    from . import onednn

    lib = onednn.library()
    named = os.environ.get(onednn.ENV_LIB, "").strip()
    if lib is None and named:  # asked for by name: never a silent fall back to OpenBLAS
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, onednn.ENV_LIB,
                           f"the oneDNN library to load; got {onednn.ENV_LIB}={named!r}, which does not load as "
                           "oneDNN 3.x; allowed the path of a libdnnl.so.3, or unset (the one installed)")
    return lib


def _onednn_missing() -> str:
    """Why no oneDNN library is there, for a refusal of a forced choice."""
    if not env_switch(ONEDNN_ENV):
        return f"{ONEDNN_ENV}=0 turns oneDNN off"
    return "oneDNN is not installed (pip install 'ffaccel[onednn]')"


def _probe_impl(lib: Any, cls: str) -> str | None:
    """The oneDNN implementation a 64^3 GEMM of this class gets here (None: not implemented)."""
    from . import cpu_onednn, onednn

    dt = {"f32": onednn.F32, "bf16": onednn.BF16, "f16": onednn.F16}
    src, wei, dst = ((onednn.U8, onednn.S8, onednn.S32) if cls == "int8" else (dt[cls], dt[cls], onednn.F32))
    n = 64
    ops = [onednn.Operand(t, (1, n, n), (n * n, n, 1)) for t in (src, wei, dst)]
    try:
        prim = onednn.Matmul(lib, *ops)
    except onednn.OneDNNError:
        return None
    impl = prim.impl
    prim.close()
    ok = cpu_onednn.exact_int8(impl) if cls == "int8" else cpu_onednn.usable(impl)
    return impl if ok else None


#: Crossovers measured in this process, per cache directory (where a write failed, or to skip
#: re-reading the file for every new kernel choice).
_MEASURED: dict[str, Crossovers] = {}


def crossovers() -> Crossovers:
    """This machine's crossovers: the tuning cache's (``ffaccel tune``, or a first use before),
    else measured now by a short pass and cached (:func:`ffaccel.drivers.cpu_tune.measured_crossovers`);
    the defaults with ``FFACCEL_CPU_TUNED=0`` and inside a tuning pass."""
    from . import cpu_tune

    if not env_switch(cpu_tune.TUNED_ENV) or cpu_tune.measuring():
        return DEFAULT_CROSSOVERS
    where = str(cpu_tune.cache_dir())
    got = _MEASURED.get(where)
    if got is None:
        got = _MEASURED[where] = cpu_tune.measured_crossovers()
        # a pass built tables on the defaults (its own drivers'): none of them may serve from here on
        _resolved.cache_clear()
    return got


def forget_crossovers() -> None:
    """Read the crossovers again at the next kernel table (after ``ffaccel tune`` wrote the cache)."""
    _MEASURED.clear()
    _resolved.cache_clear()


@functools.lru_cache(maxsize=16)
def _resolved(choice: tuple[tuple[str, str], ...], threads: int | None, cross: Crossovers | None = None,
              single_thread_mnk: int = OPENBLAS_SINGLE_THREAD_MNK) -> tuple[Any, KernelTable]:
    """(library, kernel table) per distinct choice: probing costs a few primitive creations."""
    d = dict(choice)
    lib = _onednn_library(d)
    entries = resolve_kernels(d, lib, threads)
    if cross is None:  # every class forced: no crossover is read, nothing to measure
        cross = crossovers() if "auto" in d.values() else DEFAULT_CROSSOVERS
    return lib, build_table({KernelClass(k): Choice(v) for k, v in d.items()}, entries, cross, threads,
                            lib.version if lib is not None else None, single_thread_mnk)


def _refuse(cls: str, want: str, why: str) -> FFAccelError:
    return FFAccelError(ErrorCode.INVALID_PARAMETER, "kernels", f"{KERNELS_ENV}: {cls}={want} cannot run here: {why}",
                        rule="device.name")


def resolve_kernels(choice: dict[str, str], lib: Any, threads: int | None) -> dict[KernelClass, ClassEntry]:
    """Class -> what serves it here (:class:`ClassEntry`): "blas", "onednn" (oneDNN's matmul on
    the class's own dtypes), "widened" (f16/bf16 widened to f32, then oneDNN's f32 matmul;
    PyTorch's casts where the process has PyTorch: ``cpu_onednn.cast``), "torch" or "onednn+torch" (int8 on ``torch._int_mm``).

    ``auto`` takes oneDNN where it is exact and implemented: int8 only where its u8 x s8 sum is
    exact (VNNI/AMX); bf16 natively only with bf16 instructions (the library's emulation is ~5x
    slower than f32), else widened; f16 natively where the library implements it, else
    widened; f32. Never with a thread limit (``cpu:N`` limits OpenBLAS only). From which size
    it does so is the table's business (:class:`~ffaccel.drivers.cpu_table.Crossovers`).
    A forced choice that cannot run here is refused.
    """
    out: dict[KernelClass, ClassEntry] = {}
    torch_ok = importlib.util.find_spec("torch") is not None
    for kc in KernelClass:
        cls = kc.value
        want = choice.get(cls, "auto")
        if kc == KernelClass.F64 or want in ("blas", "gemv"):
            if want == "gemv" and kc not in (KernelClass.F32, KernelClass.F64):
                raise _refuse(cls, want, "only f32 and f64 GEMMs have a gemv kernel")
            if want not in ("auto", "blas", "gemv"):
                raise _refuse(cls, want, "f64 runs on OpenBLAS only (oneDNN has no f64 matmul on CPUs)")
            out[kc] = ClassEntry(Choice(want), Library.BLAS, None, want != "auto")
            continue
        impl = _probe_impl(lib, cls) if lib is not None else None
        f32_impl = _probe_impl(lib, "f32") if lib is not None and cls in ("f16", "bf16") else None
        exact = lib is not None and (cls != "int8" or lib.int8_exact)
        native = impl is not None and exact and (cls != "bf16" or lib.isa & 0x80 != 0)
        can_widen = f32_impl is not None and torch_ok
        if want == "auto":
            if threads is not None:
                out[kc] = ClassEntry(Choice.AUTO, Library.BLAS, None, False)
            elif native and cls == "int8" and torch_ok:
                # int8 x int8: torch._int_mm (on the same VNNI/AMX) needs no shift: measured 1.2x
                # oneDNN with the shift; the pairs with uint8 stay on oneDNN's u8 x s8
                out[kc] = ClassEntry(Choice.AUTO, Library.ONEDNN_TORCH, impl, False)
            elif native:
                out[kc] = ClassEntry(Choice.AUTO, Library.ONEDNN, impl, False)
            elif can_widen:
                out[kc] = ClassEntry(Choice.AUTO, Library.WIDENED, f32_impl, False)
            else:
                out[kc] = ClassEntry(Choice.AUTO, Library.BLAS, None, False)
            continue
        if want == "torch":
            if cls != "int8" or not torch_ok:
                raise _refuse(cls, want, "only int8 runs on torch._int_mm" if cls != "int8"
                              else "PyTorch is not installed")
            out[kc] = ClassEntry(Choice.TORCH, Library.TORCH, None, True)
            continue
        ok = (impl is not None and exact) if want == "onednn" else can_widen
        if not ok:
            raise _refuse(cls, want, _onednn_missing() if lib is None else
                          "only f16 and bf16 are widened" if want == "widened" and cls not in ("f16", "bf16") else
                          "PyTorch is not installed" if want == "widened" else
                          "oneDNN's u8 x s8 sum saturates without VNNI/AMX" if not exact else
                          f"oneDNN {lib.version} has no {cls} matmul for this CPU")
        out[kc] = ClassEntry(Choice(want), Library.ONEDNN if want == "onednn" else Library.WIDENED,
                             impl if want == "onednn" else f32_impl, True)
    return out


#: The environment variable with the default thread limit of a ``cpu`` device (``cpu:N`` overrides it).
THREADS_ENV = "FFACCEL_CPU_THREADS"


def _threads_from_env() -> int | None:
    v = os.environ.get(THREADS_ENV, "").strip()
    if not v:
        return None
    if not v.isdecimal() or int(v) < 1:  # named, not an int() ValueError (the CLI's "internal error")
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, THREADS_ENV,
                           f"the most BLAS threads a cpu device's GEMM may use; got {THREADS_ENV}={v!r}, "
                           "allowed an integer >= 1, or unset (the BLAS's own)")
    return int(v)


# --------------------------------------------------------------------------------------
# groups of tiny GEMMs as one numpy.matmul (CpuDriver.bind_gemm_group)


def _address(x: np.ndarray) -> int:
    return x.__array_interface__["data"][0]


#: Fewest GEMMs bound as one ``numpy.matmul``: its fixed cost (~1.6 us, with the floating-point state
#: set and restored) against ~0.45 us per bound ``?gemm`` call and ~0.12 per entry of the matmul. 8x8 f32,
#: group / one bound call each, µs: 2 1.78 / 1.12, 4 2.01 / 1.99, 8 2.52 / 3.84, 16 3.54 / 7.45
#: (AMD EPYC, NumPy 2.4, SciPy 1.17): a ratio of two call overheads, which moves little between CPUs.
_GROUP_MIN_GEMMS = 4
#: Layouts probed by :func:`_matmul_matches_bound`: (driver class, layout) -> the group may be bound.
_GROUP_PROBES: LruCache[tuple, bool] = LruCache(256)


def _twin(x: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` entries shaped and strided as those of the stacked view ``x`` (group, rows, cols), at
    the addresses modulo 64 that x's entries have (its first one's, stepping as x's step does), in
    memory of their own, filled with random values of x's dtype (every magnitude)."""
    _, rows, cols = x.shape
    sg, sr, sc = x.strides
    span = (rows - 1) * sr + (cols - 1) * sc + x.itemsize
    step = -(-span // 64) * 64 + sg % 64
    raw = np.zeros(count * step + 128, np.uint8)
    start = (-_address(raw)) % 64 + _address(x[0]) % 64
    out = np.ndarray((count, rows, cols), x.dtype, buffer=raw, offset=start, strides=(step, sr, sc))
    out[...] = rng.standard_normal(out.shape) * np.exp2(rng.integers(-20, 20, out.shape))
    return out


def _matmul_matches_bound(driver: Any, op: GemmOp, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> bool:
    """Whether ``numpy.matmul`` over stacked views laid out as ``a``, ``b``, ``d`` (group, rows, cols)
    writes bit for bit what the driver's bound call writes for each entry: asked once per layout
    (sizes, strides, dtype, the entries' addresses modulo 64), answered by running both on 64 random
    entries laid out the same way.

    The two differ where NumPy takes another kernel (``?gemv`` for m or n = 1) or its copy of
    OpenBLAS another code path than SciPy's; where they agree on random entries of every
    magnitude they run the same kernel (neither reads anything but sizes, strides and values).
    """
    if min(a.strides[1:] + b.strides[1:] + d.strides[1:]) < 0:
        return False  # (an operand's view never has one: view_array's strides come from ld and the itemsize)
    key = (type(driver), a.dtype.str, a.shape[1:], b.shape[1:], a.strides[1:], b.strides[1:], d.strides[1:],
           _address(a[0]) % 64, _address(b[0]) % 64, _address(d[0]) % 64,
           a.strides[0] % 64, b.strides[0] % 64, d.strides[0] % 64)
    hit = _GROUP_PROBES.get(key)
    if hit is not None:
        return hit
    rng = np.random.default_rng(0)
    count = 64
    a3, b3, d3, want = _twin(a, count, rng), _twin(b, count, rng), _twin(d, count, rng), _twin(d, count, rng)
    for i in range(count):
        bound = driver.bind_gemm(op, a3[i:i + 1], b3[i:i + 1], None, want[i:i + 1], ())
        if bound is None:
            _GROUP_PROBES.put(key, False)
            return False
        bound()
    _matmul_into(a3, b3, d3)
    same = bool(np.array_equal(want.view(np.uint8), d3.view(np.uint8)))
    _GROUP_PROBES.put(key, same)
    return same


class CpuDriver(Driver):
    """GEMM and COPY on the host CPU, through the BLAS SciPy and NumPy ship (OpenBLAS).

    Parameters
    ----------
    threads : int, optional
        Most BLAS threads a GEMM may use. Defaults to the environment variable
        ``FFACCEL_CPU_THREADS``, and without it to the BLAS library's own setting.

    Examples
    --------
    >>> import numpy as np
    >>> from ffaccel.abi import Gemm, Matrix, DeviceCaps, check_command
    >>> from ffaccel.spec import DType
    >>> op = check_command(Gemm(m=1, n=1, k=2, a=Matrix(1, DType.F32, 1, 2), b=Matrix(2, DType.F32, 2, 1),
    ...                         d=Matrix(3, DType.F32, 1, 1), alpha=2.0).encode(), DeviceCaps())
    >>> d = np.zeros((1, 1, 1), np.float32)
    >>> CpuDriver().gemm(op, np.array([[[1.0, 2.0]]], np.float32), np.array([[[3.0], [4.0]]], np.float32),
    ...                  None, d, ())
    >>> float(d[0, 0, 0])
    22.0
    """

    name = "cpu"
    version = "1.0"
    description = "host CPU: OpenBLAS (via SciPy/NumPy), and oneDNN where installed and faster; exact int8"

    def __init__(self, threads: int | str | None = None, *, kernels: str | None = None) -> None:
        if threads is None:
            threads = _threads_from_env()
        elif isinstance(threads, str):  # the device name "cpu:N" (ffaccel.open passes what follows ':')
            if not threads.isdecimal() or int(threads) < 1:
                raise FFAccelError(ErrorCode.INVALID_PARAMETER, "name",
                                   f"the cpu device takes an optional thread count; got 'cpu:{threads}', "
                                   "allowed cpu, or cpu:N for at most N >= 1 BLAS threads", rule="device.name")
            threads = int(threads)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "threads",
                               f"the most BLAS threads a GEMM may use; got {threads!r}, allowed an integer >= 1 or None")
        self.threads = threads
        self._limit = ThreadLimit(threads) if threads is not None else None
        self._plans: LruCache[GemmOp, Kernel] = LruCache(256)
        self.kernel_choice = parse_kernels(os.environ.get(KERNELS_ENV) if kernels is None else kernels)
        if any(v not in ("auto", "blas") for v in self.kernel_choice.values()):
            self._kernels()  # a forced library that cannot run here is refused now, not at the first GEMM

    def _kernels(self) -> tuple[Any, KernelTable]:
        """(oneDNN library or None, this driver's kernel table)."""
        key = self.__dict__.get("_choice_key")
        if key is None or key[0] is not self.kernel_choice:  # (sorting the choice each time cost ~2 us a GEMM plan)
            key = self._choice_key = (self.kernel_choice, tuple(sorted(self.kernel_choice.items())))
        return _resolved(key[1], self.threads, None, _SINGLE_THREAD_MNK)

    def kernel_table(self) -> KernelTable:
        """The table every kernel choice of this driver reads (:mod:`ffaccel.drivers.cpu_table`)."""
        return self._kernels()[1]

    def band_edges(self, combo: Any) -> tuple[int, ...]:
        """The sizes (``batch * m * n * k``) where a GEMM of this dtype combination changes kernel or
        threads here, ascending: read from the kernel table (what :meth:`size_bands` declares)."""
        return self.kernel_table().size_bands(combo_class(combo))

    def _library_names(self, combo: Any) -> dict[Library, str]:
        lib, table = self._kernels()
        cls = combo_class(combo)
        impl = table.classes[cls].impl
        one = f"oneDNN {table.onednn_version} {impl}" if lib is not None else "oneDNN"
        s8s8 = (combo.a, combo.b) == (DType.I8, DType.I8)
        torch_name = "PyTorch torch._int_mm" + ("" if s8s8 else " (uint8 shifted to int8)")
        if cls == KernelClass.INT8 and (combo.a, combo.b) != (DType.U8, DType.I8):
            one += " (shifted onto u8 x s8)"
        prec = "d" if cls == KernelClass.F64 else "s"
        return {
            Library.BLAS: (f"OpenBLAS {prec}gemm" if cls in (KernelClass.F64, KernelClass.F32) else
                           "OpenBLAS sgemm on widened f32" if cls in (KernelClass.BF16, KernelClass.F16) else
                           "OpenBLAS sgemm on exact f32 k-chunks"),
            Library.GEMV: f"OpenBLAS {prec}gemv",
            Library.ONEDNN: one,
            Library.WIDENED: f"{one} on f32 (widened)",
            Library.TORCH: torch_name,
            Library.ONEDNN_TORCH: torch_name if s8s8 else one,
        }

    def kernels(self) -> dict[str, str]:
        """Which kernel serves each dtype combination here, per band (what ``ffaccel info`` shows),
        written from the kernel table.

        Examples
        --------
        >>> CpuDriver(kernels="blas").kernels()["f32xf32->f32->f32"]
        'OpenBLAS sgemm (caller threads; own threads from m*n*k 262145)'
        """
        from ..spec import GEMM_COMBOS

        table = self.kernel_table()
        return {c.name: _table.describe(table, combo_class(c), self._library_names(c)) for c in GEMM_COMBOS}

    def info(self) -> DriverInfo:
        info = super().info()
        return dataclasses.replace(info, kernels=tuple(self.kernels().items()), size_bands=self.size_bands())

    def size_bands(self) -> tuple[SizeBand, ...]:
        """Where this driver's kernel or threads change with size, read from its kernel table (what
        ``info`` declares, so that the conformance suite checks both sides of each edge)."""
        from ..spec import GEMM_COMBOS

        names: dict[KernelClass, list[str]] = {}
        for c in GEMM_COMBOS:
            names.setdefault(combo_class(c), []).append(c.name)
        bands = [SizeBand(tuple(names[KernelClass.F32] + names[KernelClass.F64]), "any", "entry_mnk", _LOOP_MIN_MNK,
                          "batched GEMMs: one BLAS call per entry from here, NumPy's matmul loop below")]
        sides: dict[tuple[tuple[str, ...], int], dict[str, str]] = {}  # (combos, edge) -> epilogue side -> change
        for key, row in self.kernel_table().rows.items():
            for band in row:
                if band.min_mnk > 0:
                    shape = " (batch 1 with m or n = 1)" if key.skinny else ""
                    side = sides.setdefault((tuple(names[key.cls]), band.min_mnk), {})
                    side.setdefault("with" if key.fused else "without",
                                    f"{band.library.value} on {band.threads.value} threads{shape}")
        for (combos, edge), side in sides.items():  # an edge both kinds of GEMM change at is one band, "any"
            epilogue = "any" if len(side) == 2 else next(iter(side))
            changes = set(side.values())
            change = changes.pop() if len(changes) == 1 else "; ".join(f"{k} an epilogue: {v}".replace(
                "without an", "without") for k, v in sorted(side.items()))
            bands.append(SizeBand(combos, epilogue, "mnk", edge, change))
        return tuple(bands)

    def band(self, op: GemmOp) -> Band:
        """The table's band for one validated GEMM (A and B not read: OpenBLAS's path, no GEMM runs)."""
        if not op.reads_ab:
            # alpha == 0 or k == 0: no product. Never the row's own first band: a forced row
            # (f32=onednn, f16=widened) has one band, and its library multiplies A by B (NaN * 0)
            return _NO_PRODUCT_BAND
        table = self.kernel_table()
        cls = combo_class(op.combo)
        skinny = op.batch == 1 and (op.m == 1 or op.n == 1)
        return table.band(cls, bool(op.epilogue), skinny, op.batch * op.m * op.n * max(op.k, 1))

    def _library_kernel(self, op: GemmOp, library: Library, fallback: Kernel) -> Kernel:
        """The oneDNN / PyTorch kernel of a band (``fallback`` runs the layouts they refuse)."""
        from . import cpu_onednn

        lib = self._kernels()[0]
        if op.combo.is_int:
            s8s8 = (op.combo.a, op.combo.b) == (DType.I8, DType.I8)
            if library == Library.TORCH or (library == Library.ONEDNN_TORCH and s8s8):
                return _plan_int(op, cpu_onednn.TorchIntProduct(_WORKSPACE.take))
            return _plan_int(op, cpu_onednn.IntProduct(lib, op.combo.a, op.combo.b, _WORKSPACE.take))
        rest = _float_steps(op, np.dtype(np.float32))[cpu_onednn.fused_count(op):]
        tail = (lambda x, epi: _run_steps(rest, x, epi)) if rest else None
        if library == Library.WIDENED:
            return cpu_onednn.WidenedKernel(lib, op, fallback, _WORKSPACE.take, _WORKSPACE.give, tail)
        return cpu_onednn.FloatKernel(lib, op, fallback, tail, _WORKSPACE.take, _WORKSPACE.give)

    def _fast_paths_ok(self, op: GemmOp) -> bool:
        """Whether the f2py one-call paths may take this f32/f64 GEMM: its band is OpenBLAS's ?gemm
        on the calling thread."""
        band = self.band(op)
        return band.library == Library.BLAS and band.threads == Threads.CALLER

    def prepare_gemm(self, op: GemmOp) -> Kernel:
        """A kernel ``(a, b, c, d, epi) -> None`` for one validated geometry.

        The kernel table's band for the GEMM's class, epilogue, shape and size picks the library
        and the threads (:meth:`band`); conversions and the epilogue are decided here, once; the
        kernel only reads the arrays' strides to pick the BLAS call.
        """
        if op.batch == 0 or op.m == 0 or op.n == 0:
            return _noop
        band = self.band(op)
        parallel = self.threads is None or self.threads > 1
        blas = _plan_int(op) if op.combo.is_int else _plan_float(op, parallel)
        if band.library == Library.BLAS or (band.numpy_pool_without_torch and not _torch_loaded()
                                            and not any(p.kind in _GELU for p in op.epilogue)):
            kernel = blas
        elif band.library == Library.GEMV:
            kernel = _plan_gemv(op) or blas
        else:
            kernel = self._library_kernel(op, band.library, blas)
        hold = self._hold(op, band)
        if hold is not None:
            kernel = _with_threads(kernel, self._limit if hold == "limit" else one_blas_thread())
        return kernel

    def _hold(self, op: GemmOp, band: Band) -> str | None:
        """The thread hold :meth:`prepare_gemm` puts around this GEMM's kernel: "limit" (the
        driver's own thread limit), "one" (OpenBLAS held to one thread: the band says so, or it
        shares the cores with PyTorch's pool and PyTorch is loaded), or None. Only above the size
        OpenBLAS runs on the calling thread anyway (no call needed there). The fresh kernels take
        NumPy's own call only where this is None."""
        if op.batch * op.m * op.n * max(op.k, 1) <= _SINGLE_THREAD_MNK:
            return None
        if self._limit is not None:
            return "limit"
        if band.threads == Threads.ONE or (band.threads == Threads.SHARED and _torch_loaded()):
            return "one"
        return None

    def kernel_family(self, op: GemmOp) -> tuple[tuple, Callable[[int, int, int, int], bool]] | None:
        """Batched f32/f64 GEMMs whose kernel is OpenBLAS's through NumPy's batch loop with no epilogue
        (:func:`_plan_float`'s first branch, what attention's q @ K^T and p @ V run): the kernel reads
        no size, so it serves every batched geometry of the class with nonzero sizes whose
        ``batch*m*n*k`` stays in ``op``'s band and on ``op``'s side of the thread hold's threshold
        (the key: the band and the hold). Other GEMMs: None."""
        combo = op.combo
        if (op.batch < 2 or not op.m or not op.n or not op.reads_ab or op.epilogue or combo.is_int
                or combo.a != combo.acc or combo.d != combo.acc or (op.reads_c and not op.in_place)):
            return None
        table = self.kernel_table()
        row = table.rows[RowKey(combo_class(combo), False, False)]
        mnk = op.batch * op.m * op.n * op.k
        band = table.band(combo_class(combo), False, False, mnk)
        if not (band.library == Library.BLAS or (band.numpy_pool_without_torch and not _torch_loaded())):
            return None
        # [lo, hi): the band, cut at the size from which prepare_gemm holds the threads
        lo, hi = band.min_mnk, next((b.min_mnk for b in row if b.min_mnk > band.min_mnk), 1 << 126)
        if mnk > _SINGLE_THREAD_MNK:
            lo = max(lo, _SINGLE_THREAD_MNK + 1)
        else:
            hi = min(hi, _SINGLE_THREAD_MNK + 1)
        hold = self._hold(op, band)  # as prepare_gemm decides it

        def covers(m: int, n: int, k: int, batch: int) -> bool:
            return batch > 1 and m > 0 and n > 0 and k > 0 and lo <= batch * m * n * k < hi

        return (band, hold), covers

    def thread_pool(self) -> str:
        """"openmp" where the table sends f32 GEMMs to oneDNN (its multi-threaded GEMMs then run on
        the process's OpenMP runtime), else "own" (OpenBLAS's threads); "none" on one thread."""
        if self.threads == 1:
            return "none"
        return "openmp" if self.kernel_table().serves_openmp(KernelClass.F32) else "own"

    def prepare_gemm_fresh(self, op: GemmOp) -> Callable[..., np.ndarray] | None:
        """Tiny f32/f64 GEMMs with no C (and no epilogue but a bias): SciPy's ``?gemm`` returns D itself.

        f2py allocates the column-major D^T = alpha * B^T A^T, whose transpose is the C-ordered
        D: one BLAS call and no extra allocation or pass. Only below OpenBLAS's threading
        threshold, where SciPy's BLAS runs on the calling thread (see the module docstring).
        """
        combo = op.combo
        if (op.batch != 1 or op.c is not None or not op.reads_ab or not op.m or not op.n
                or combo.is_int or combo.a != combo.acc or combo.d != combo.acc):
            return None
        if op.epilogue:
            return self._fresh_with_bias(op)
        band = self.band(op)
        if band.library == Library.GEMV:
            if self._hold(op, band) is not None:
                return None  # held around the call: the prepared kernel does that
            if op.m * op.n * op.k >= _GEMV_SINGLE_THREAD_ELEMS and self._on_numpys_pool(op, band):
                return _numpys_matmul  # NumPy's own threaded ?gemv into its new D, as `a @ b` makes it
            matmul, empty = np.matmul, np.empty
            alpha, shape, dt = float(op.alpha), (op.m, op.n), numpy_dtype(combo.d)

            single = op.m * op.n * op.k < _GEMV_SINGLE_THREAD_ELEMS

            def gemv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
                d = empty(shape, dt)  # ?gemv (what NumPy's @ runs for a matrix-vector product) into it
                if single and _gemv_into(alpha, a, b, 0.0, d[0] if shape[0] == 1 else d[:, 0]):
                    return d
                token = _fp_ignore()
                try:
                    if alpha == 1.0:
                        return matmul(a, b, out=d)
                    _matmul_axpby(alpha, a, b, 0.0, d)
                finally:
                    _fp_restore(token)
                return d

            return gemv
        if self._on_numpys_pool(op, band):
            return _numpys_matmul
        if band.library != Library.BLAS or band.threads != Threads.CALLER:
            return None
        f2py = (_DGEMM if combo.acc == DType.F64 else _SGEMM).f2py
        alpha = float(op.alpha)
        # op(B)^T and op(A)^T are column-major exactly when the operands are stored untransposed
        tb, ta = int(op.trans_b), int(op.trans_a)
        if not ta and not tb:
            return lambda a, b: f2py(alpha, b.T, a.T).T
        return lambda a, b: f2py(alpha, b if tb else b.T, a if ta else a.T, 0.0, None, tb, ta).T

    def _fresh_with_bias(self, op: GemmOp) -> Callable[[np.ndarray, np.ndarray, tuple], np.ndarray] | None:
        """A linear layer's tiny GEMM + bias (f32/f64, the bias alone, OpenBLAS on the calling
        thread): a new D filled with the bias, and one f2py ?gemm adding alpha * A @ B to it
        (beta = 1). Layouts the one call cannot take run the prepared kernel into that D."""
        if len(op.epilogue) != 1 or op.epilogue[0].kind not in (PostOpKind.BIAS_N, PostOpKind.BIAS_M):
            return None
        if not self._fast_paths_ok(op):
            return self._fresh_numpy_with_bias(op)
        f2py = (_DGEMM if op.combo.acc == DType.F64 else _SGEMM).f2py
        kernel = self.prepare_gemm(op)
        alpha, shape, dt = float(op.alpha), (op.m, op.n), numpy_dtype(op.combo.d)
        empty, copyto = np.empty, np.copyto

        def contiguous(a: np.ndarray, b: np.ndarray, bias: np.ndarray) -> np.ndarray:
            d = empty(shape, dt)
            d[...] = bias  # (the broadcast store costs less than np.copyto's call at 8 x 8)
            dt_ = d.T
            r = f2py(alpha, b.T, a.T, 1.0, dt_, 0, 0, 1)
            if r is not dt_:  # f2py had to copy (misaligned memory)
                copyto(d, r.T)
            return d

        def fresh(a: np.ndarray, b: np.ndarray, epi: tuple) -> np.ndarray:
            if a.flags.c_contiguous and b.flags.c_contiguous:
                return contiguous(a, b, epi[0][0])  # the bias's (1, n) or (m, 1) view broadcasts over D
            d = empty(shape, dt)
            kernel(a[None], b[None], None, d[None], epi)
            return d

        #: ``fresh.contiguous(a, b, bias)``: the same for C-contiguous a and b (the caller vouches:
        #: a front-end whose per-call key fixes the strides), the bias as any array broadcast over
        #: the (m, n) D (the user's own (n,) vector for a bias along n): no flags read, no epilogue
        #: tuple, no view of the bias made per call (8 x 8 + bias, docs/kernels.md)
        fresh.contiguous = contiguous  # type: ignore[attr-defined]
        return fresh

    def _on_numpys_pool(self, op: GemmOp, band: Band) -> bool:
        """Whether this f32/f64 GEMM (alpha 1) may be NumPy's own ``numpy.matmul`` call as it is: its
        band runs OpenBLAS (or keeps NumPy's pool: PyTorch not loaded) past the calling thread, and
        :meth:`prepare_gemm` puts no thread hold around it (:meth:`_hold`): the prepared kernel would
        make that very call. (A GPT-2 decode's linear layers, 1 x 256 x 768 with PyTorch loaded:
        below the hold's size, so NumPy's call too.)"""
        on_blas = band.library in (Library.BLAS, Library.GEMV) or (band.numpy_pool_without_torch
                                                                   and not _torch_loaded())
        return (on_blas and float(op.alpha) == 1.0 and band.threads != Threads.CALLER
                and self._hold(op, band) is None)

    def _fresh_numpy_with_bias(self, op: GemmOp) -> Callable[[np.ndarray, np.ndarray, tuple], np.ndarray] | None:
        """A linear layer (the bias alone, alpha 1) past OpenBLAS's threading threshold, on NumPy's pool
        (:meth:`_on_numpys_pool`: a skinny one on ?gemv from 2304 x 4 matrix elements, any other
        above the ?gemm threshold): ``numpy.matmul``'s own new D, then the bias added in place, as
        ``a @ b + bias`` does, without the (batch, m, n) D and the views the prepared kernel takes.
        ``fresh.contiguous(a, b, bias)`` takes the user's bias as it broadcasts over D (any layout
        of a and b: NumPy's call takes them all). None where a one-thread hold or a thread limit
        applies (the prepared kernel does that)."""
        band = self.band(op)
        threaded = (op.m * op.n * op.k >= _GEMV_SINGLE_THREAD_ELEMS if band.library == Library.GEMV
                    else op.m * op.n * op.k > _SINGLE_THREAD_MNK)
        if not threaded or not self._on_numpys_pool(op, band):
            return None
        matmul, add = np.matmul, np.add

        def contiguous(a: np.ndarray, b: np.ndarray, bias: np.ndarray) -> np.ndarray:
            token = _fp_ignore()  # inf - inf is NaN, as intended
            try:
                d = matmul(a, b)
                add(d, bias, out=d)
            finally:
                _fp_restore(token)
            return d

        def fresh(a: np.ndarray, b: np.ndarray, epi: tuple) -> np.ndarray:
            return contiguous(a, b, epi[0][0])  # the bias's (1, n) or (m, 1) view broadcasts over D

        fresh.contiguous = contiguous  # type: ignore[attr-defined]  # (see _fresh_with_bias)
        return fresh

    def bind_gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                  epi: tuple[np.ndarray | None, ...]) -> BoundGemm | None:
        """Tiny f32/f64 GEMMs that BLAS writes straight into D: one f2py call with preset arguments.

        ``functools.partial`` over SciPy's ``?gemm`` with the operands' column-major views and
        ``overwrite_c``: a repeated command then costs one C-level call (about 0.6 us at 8x8
        here, against about 2 us through the kernel's stride checks). Bound only where f2py
        provably writes D in place (compact, aligned, writeable, exactly the BLAS dtype) and
        below OpenBLAS's threading threshold; everything else returns None.
        """
        combo = op.combo
        if (op.batch != 1 or op.epilogue or not op.reads_ab or not op.m or not op.n or combo.is_int
                or combo.a != combo.acc or combo.d != combo.acc or (op.reads_c and not op.in_place)
                or not self._fast_paths_ok(op)):
            return None
        blas = _DGEMM if combo.acc == DType.F64 else _SGEMM
        x = d[0]
        args = _f2py_operands(a[0], b[0], x)
        if args is None:
            return None
        y1, y2, xt, t1, t2 = args
        if any(v.dtype != blas.dtype or not v.flags.aligned for v in (y1, y2, xt)) or not xt.flags.writeable:
            return None
        beta = float(op.beta) if op.reads_c else 0.0
        return functools.partial(blas.f2py, float(op.alpha), y1, y2, beta, xt, t1, t2, 1)

    def bind_gemm_group(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                        epi: tuple[np.ndarray | None, ...]) -> BoundGemm | None:
        """Independent tiny f32/f64 GEMMs (alpha 1, no C read, no epilogue) that :meth:`bind_gemm`
        binds one by one, 4 or more: one ``numpy.matmul`` over the stacked views, a C loop of
        ``?gemm`` calls (64 8x8 f32 GEMMs sharing A and B: ~9 us against ~30 us for 64 bound calls
        here).

        NumPy's ``?gemm`` is another copy of OpenBLAS than the SciPy one the bound calls use (and
        NumPy takes ``?gemv`` where m or n is 1): the group is bound only where, for its sizes
        and layouts, a probe on this machine found the two bit for bit equal
        (:func:`_matmul_matches_bound`, once per layout). Anything else returns None (one call each).
        """
        count = d.shape[0]
        if float(op.alpha) != 1.0 or op.reads_c or count < _GROUP_MIN_GEMMS:
            return None
        if self.bind_gemm(op, a[0], b[0], None, d[0], ()) is None:
            return None  # what the group must equal bit for bit is that binding: nothing else is grouped
        a3, b3, d3 = a[:, 0], b[:, 0], d[:, 0]  # batch 1 (bind_gemm said so)
        item = d.itemsize
        # every entry aligned as the first (what bind_gemm checked), and written in place
        if any(x.strides[0] % item for x in (a3, b3, d3)) or not d3.flags.writeable:
            return None
        if not _matmul_matches_bound(self, op, a3, b3, d3):
            return None
        return functools.partial(_matmul_into, a3, b3, d3)

    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple[np.ndarray | None, ...]) -> None:
        """D = epilogue(alpha * op(A) @ op(B) + beta * C), see :mod:`ffaccel.drivers.base`."""
        kernel = self._plans.peek(op) or self._plans.get(op)
        if kernel is None:
            kernel = self.prepare_gemm(op)
            self._plans.put(op, kernel)
        kernel(a, b, c, d, epi)

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        """dst = src converted to dst's dtype, rounded once to nearest even.

        NumPy's and ml_dtypes' casts are single RNE roundings, except float64 ->
        bfloat16, which ml_dtypes rounds through float32; that one goes through
        :func:`ffaccel.drivers.rounding.round_to`.
        """
        if op.src.dtype == DType.F64 and op.dst.dtype == DType.BF16 and _round_to is not None:
            np.copyto(dst, _round_to(src, DType.BF16))
            return
        with np.errstate(all="ignore"):  # overflow to inf is the intended result
            np.copyto(dst, src, casting="unsafe")


__all__ = ["CpuDriver"]
