"""NumPy-style ``matmul`` on an ffaccel device.

Shapes follow ``numpy.matmul`` (1-D operands, broadcast batch dimensions).
Operands are handed to the device as zero-copy strided views wherever the GEMM
operand model (row-major with a leading dimension, or its transpose, and one
batch stride) can express them; otherwise they are copied once, never silently
promoted. The first call for a geometry validates its descriptor through the abi
validator and caches the driver's prepared kernel; later calls with the same
shapes, strides and dtypes go straight to that kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import sys
from typing import Any

import ml_dtypes
import numpy as np

from ..abi import Gemm, Matrix, PostOpDesc
from ..runtime import Device, resolve_device
from ..spec import DTYPES, GEMM_COMBOS, DType, FFAccelError, PostOpKind, dtype_of_numpy, violation
from .post import PostOp

_INPUT_DTYPES = sorted({c.a for c in GEMM_COMBOS})
_ALLOWED_NAMES = "float64, float32, float16, bfloat16, int8 or uint8"
# placeholder handles for the host-array path: the arrays themselves are the memory
_H_A, _H_B, _H_C, _H_D = 1, 2, 3, 4


def _spec_dtype(x: np.ndarray, arg: str) -> DType:
    code = dtype_of_numpy(x.dtype)
    if code not in _INPUT_DTYPES:
        raise violation("api.dtype", str(x.dtype), _ALLOWED_NAMES, arg=arg)
    return code  # type: ignore[return-value]


def _combo(a_dt: DType, b_dt: DType, out_dtype: Any) -> tuple[DType, DType]:
    """(acc, d) for the operand dtypes and the requested output dtype."""
    matches = [c for c in GEMM_COMBOS if (c.a, c.b) == (a_dt, b_dt)]
    if not matches:
        allowed = sorted(DTYPES[c.b].name for c in GEMM_COMBOS if c.a == a_dt)
        raise violation("api.dtype", DTYPES[b_dt].name, f"{allowed} with a of {DTYPES[a_dt].name} "
                        "(no silent promotion)", arg="b")
    if out_dtype is None:
        default = a_dt if DTYPES[a_dt].is_float else DType.I32
        return matches[0].acc, default
    d = dtype_of_numpy(out_dtype)
    for c in matches:
        if c.d == d:
            return c.acc, c.d
    raise violation("api.dtype", str(np.dtype(out_dtype)) if d is None else DTYPES[d].name,
                    sorted({str(DTYPES[c.d].numpy) for c in matches}), arg="out_dtype")


@dataclass(frozen=True)
class _Layout:
    """How a (batch, rows, cols) view maps onto a descriptor operand."""

    transposed: bool  # stored as cols x rows
    ld: int
    batch_stride: int


def _layout(x: np.ndarray, allow_transposed: bool) -> _Layout | None:
    """The operand layout of a 3-D view, or None when it needs a copy."""
    batch, rows, cols = x.shape
    if x.size == 0:  # nothing is read or written: any valid description will do
        return _Layout(False, max(1, cols), 0)
    sb, sr, sc = x.strides
    isz = x.itemsize
    if (sb % isz) or (sr % isz) or (sc % isz) or sb < 0:
        return None
    bs = sb // isz if batch > 1 else 0
    if (cols <= 1 or sc == isz) and (rows <= 1 or sr >= max(1, cols) * isz):
        return _Layout(False, sr // isz if rows > 1 else max(1, cols), bs)
    if allow_transposed and (rows <= 1 or sr == isz) and (cols <= 1 or sc >= max(1, rows) * isz):
        return _Layout(True, sc // isz if cols > 1 else max(1, rows), bs)
    return None


def _restride(x: np.ndarray, lay: _Layout) -> np.ndarray:
    """The view with the strides the descriptor states (size-1 dims may carry any stride in NumPy)."""
    isz = x.itemsize
    want = (lay.batch_stride * isz, isz, lay.ld * isz) if lay.transposed else (lay.batch_stride * isz,
                                                                                lay.ld * isz, isz)
    if x.strides == want or x.size == 0:
        return x
    return np.lib.stride_tricks.as_strided(x, x.shape, want)


def _operand3(x: np.ndarray, batch_shape: tuple[int, ...], allow_transposed: bool) -> tuple[np.ndarray, _Layout]:
    """Broadcast ``x`` (..., r, c) to batch_shape and flatten the batch into one strided axis."""
    full = batch_shape + x.shape[-2:]
    batch = int(np.prod(batch_shape)) if batch_shape else 1
    if x.ndim == 2 or all(s == 1 for s in x.shape[:-2]):
        x3 = x.reshape((1,) + x.shape[-2:]) if x.ndim != 3 or x.shape[0] != 1 else x
        if batch != 1:
            x3 = np.broadcast_to(x3, (batch,) + x.shape[-2:])
    else:
        xb = np.broadcast_to(x, full)
        try:
            x3 = xb.reshape((batch,) + x.shape[-2:], copy=False)
        except ValueError:  # batch dims that no single stride can express: one copy
            x3 = np.ascontiguousarray(xb).reshape((batch,) + x.shape[-2:])
    lay = _layout(x3, allow_transposed)
    if lay is None:
        x3 = np.ascontiguousarray(x3)
        lay = _layout(x3, allow_transposed)
        assert lay is not None
    return _restride(x3, lay), lay


def _matrix(handle: int, dt: DType, x3: np.ndarray, lay: _Layout) -> Matrix:
    rows, cols = x3.shape[1:]
    if lay.transposed:
        rows, cols = cols, rows
    return Matrix(handle, dt, rows, cols, lay.ld, 0, lay.batch_stride)


def _as_array(x: Any, arg: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any failure to convert is a bad argument
        raise violation("api.dtype", type(x).__name__, "an array", arg=arg) from e


def _fast_plan(kernel: Callable, m: int, n: int, d_dtype: np.dtype) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The per-call path for plain 2-D a and b of a cached geometry: allocate D, call the kernel.

    A closure with everything bound, because at 8 x 8 every attribute lookup shows.
    """
    empty = np.empty
    shape = (1, m, n)

    def plan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = empty(shape, d_dtype)
        kernel(a[None], b[None], None, d, ())
        return d[0]

    return plan


def _plain_2d(x: np.ndarray, x3: np.ndarray) -> bool:
    """Whether the 2-D array ``x`` with a leading None axis is exactly the operand view x3."""
    if x.ndim != 2:
        return False
    probe = x[None]
    return probe.strides == x3.strides and probe.shape == x3.shape


def matmul(
    a: Any,
    b: Any,
    c: Any = None,
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
    trans_a: bool = False,
    trans_b: bool = False,
    post_ops: Sequence[PostOp] = (),
    out: np.ndarray | None = None,
    out_dtype: Any = None,
    device: str | Device | None = None,
) -> np.ndarray:
    """``epilogue(alpha * op(a) @ op(b) + beta * c)`` on an ffaccel device.

    Parameters
    ----------
    a, b : numpy.ndarray or any DLPack-capable array
        float64, float32, float16, ml_dtypes.bfloat16, int8 or uint8. Shapes follow
        ``numpy.matmul``; ``a`` and ``b`` must share a dtype (int8 and uint8 mix freely).
        Arrays of another library in host memory (a CPU ``torch.Tensor`` ...) are viewed
        through DLPack without copies, and the result comes back as that library's array.
    c : numpy.ndarray, optional
        Added as ``beta * c``; broadcast to the result's shape; the result's dtype.
        Not read when ``beta == 0``.
    alpha, beta : float
        Scalars (integers for int8/uint8 inputs).
    trans_a, trans_b : bool
        Swap the last two axes of ``a`` / ``b`` (free: a strided view).
    post_ops : sequence of PostOp
        Epilogue made with :mod:`ffaccel.post`, at most 4, applied in order in the
        accumulate precision before the final rounding.
    out : numpy.ndarray, optional
        Where to write the result (exact shape and dtype). ``out`` may be ``c`` itself
        (in place); any other overlap with an input is an error.
    out_dtype : dtype, optional
        float32 to keep float16 / bfloat16 results in float32.
    device : str or Device, optional
        Device name (see :func:`ffaccel.devices`) or an open Device. Default:
        ``$FFACCEL_DEVICE``, else ``"cpu"``.

    Returns
    -------
    numpy.ndarray (or the array type of ``a``)
        The result: the input dtype (int32 for int8/uint8) unless ``out_dtype`` says otherwise.

    Raises
    ------
    FFAccelError
        With the spec's code and the offending parameter's name; nothing is written.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> ffaccel.matmul(a, a, trans_b=True)
    array([[ 5., 14.],
           [14., 50.]], dtype=float32)
    >>> ffaccel.matmul(np.ones((2, 2), np.int8), np.full((2, 2), 100, np.int8), alpha=3)
    array([[600, 600],
           [600, 600]], dtype=int32)
    """
    dev = device if isinstance(device, Device) else resolve_device(device)
    fast = c is None and out is None and not post_ops
    if fast:
        try:
            key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, alpha, beta, trans_a, trans_b,
                   out_dtype)
            plans = dev.frontend_plans  # an LruCache: peek is one dict lookup, get the full one
            plan = plans.peek(key) or plans.get(key)
        except (AttributeError, TypeError):
            plan = key = None
        if plan is not None:
            return plan(a, b)
    if type(a) is not np.ndarray and hasattr(a, "__dlpack__"):  # torch, CuPy, JAX ... (host memory)
        return _matmul_dlpack(dev, a, b, c, alpha, beta, trans_a, trans_b, tuple(post_ops), out, out_dtype)
    return _matmul(dev, a, b, c, alpha, beta, trans_a, trans_b, tuple(post_ops), out, out_dtype,
                   key if fast else None)


def _matmul(dev: Device, a: Any, b: Any, c: Any, alpha: Any, beta: Any, trans_a: bool, trans_b: bool,
            post_ops: tuple, out: np.ndarray | None, out_dtype: Any, key: Any) -> np.ndarray:
    a = _as_array(a, "a")
    b = _as_array(b, "b")
    a_dt = _spec_dtype(a, "a")
    b_dt = _spec_dtype(b, "b")
    acc, d_dt = _combo(a_dt, b_dt, out_dtype)
    for name, x in (("a", a), ("b", b)):
        if x.ndim == 0:
            raise violation("api.shape", "a 0-d array", "at least 1 dimension", arg=name)
    for name, flag, x in (("trans_a", trans_a, a), ("trans_b", trans_b, b)):
        if flag and x.ndim < 2:
            raise violation("api.shape", f"{name}=True with a 1-D operand", "trans only for >= 2-D operands",
                            arg=name)
    av = a.swapaxes(-1, -2) if trans_a else a
    bv = b.swapaxes(-1, -2) if trans_b else b
    a1, b1 = av.ndim == 1, bv.ndim == 1
    if a1:
        av = av[None, :]
    if b1:
        bv = bv[:, None]
    m, k = av.shape[-2:]
    k2, n = bv.shape[-2:]
    if k != k2:
        raise violation("api.shape", f"op(b) with {k2} rows", f"{k} rows (op(a) has {k} columns)", arg="b")
    try:
        batch_shape = np.broadcast_shapes(av.shape[:-2], bv.shape[:-2])
    except ValueError:
        raise violation("api.shape", f"batch dims {bv.shape[:-2]}", f"broadcastable with {av.shape[:-2]}",
                        arg="b") from None
    final_shape = batch_shape + ((() if a1 else (m,)) + (() if b1 else (n,)))
    batch = int(np.prod(batch_shape)) if batch_shape else 1
    d_np = DTYPES[d_dt].numpy

    a3, alay = _operand3(av, batch_shape, True)
    b3, blay = _operand3(bv, batch_shape, True)

    # --- out (D) and c (C) ----------------------------------------------------------
    res_full = batch_shape + (m, n)
    d3 = None
    copy_back = None
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != final_shape or out.dtype != d_np:
            seen = (getattr(out, "shape", None), str(getattr(out, "dtype", type(out).__name__)))
            raise violation("api.out", f"shape {seen[0]}, dtype {seen[1]}", f"shape {final_shape}, dtype {d_np}")
        if not out.flags.writeable:
            raise violation("api.writeable", "a read-only array", "a writeable array", arg="out")
        out_full = out.reshape(res_full) if out.size else np.empty(res_full, d_np)
        if out_full.size and not np.shares_memory(out_full, out):
            out_full = None  # reshape had to copy: compute into a temporary, copy back
        if out_full is not None:
            try:
                d3 = out_full.reshape((batch, m, n), copy=False)
            except ValueError:
                d3 = None
        if d3 is not None and (_layout(d3, False) is None or (batch > 1 and d3.strides[0] == 0)):
            d3 = None
        if d3 is None:
            copy_back = out
        elif d3.size:
            d3 = _restride(d3, _layout(d3, False))  # type: ignore[arg-type]
    c3 = None
    clay = None
    in_place = False
    if c is not None and beta != 0:
        c = _as_array(c, "c")
        c_dt = dtype_of_numpy(c.dtype)
        if c_dt != d_dt:
            raise violation("api.dtype", str(c.dtype), f"{d_np} (the result's dtype; no silent promotion)", arg="c")
        try:
            cb = np.broadcast_to(c, res_full)
        except ValueError:
            raise violation("api.shape", f"c of shape {c.shape}", f"broadcastable to {res_full}", arg="c") from None
        c3, clay = _operand3(cb, batch_shape, False)
        if clay.transposed or (batch > 1 and m * n and c3.strides[-2] == 0):
            c3 = np.ascontiguousarray(c3)
            clay = _layout(c3, False)
        if d3 is not None and out is not None and c3.size and np.shares_memory(c3, d3):
            in_place = (c3.__array_interface__["data"][0] == d3.__array_interface__["data"][0]
                        and c3.strides == d3.strides)
            if not in_place:
                raise violation("api.out_overlap", "out partially overlapping c", "out exactly c, or disjoint")
    elif c is not None:
        c = _as_array(c, "c")
        if dtype_of_numpy(c.dtype) != d_dt:
            raise violation("api.dtype", str(c.dtype), f"{d_np} (the result's dtype; no silent promotion)", arg="c")

    # --- epilogue -----------------------------------------------------------------------
    if len(post_ops) > 4:
        raise _in_post_ops_terms(violation("epilogue.count", len(post_ops), "<= 4"))
    epi_descs: list[PostOpDesc] = []
    epi_arrays: list[np.ndarray | None] = []
    for i, p in enumerate(post_ops):
        if not isinstance(p, PostOp):
            raise violation("api.post_op", type(p).__name__, "ffaccel.post.bias/relu/gelu/clamp/scale/add",
                            arg=f"post_ops[{i}]")
        arr, desc = _post_operand(p, i, acc, d_dt, m, n, batch_shape, res_full)
        epi_descs.append(desc)
        epi_arrays.append(arr)

    # --- overlap of out with inputs ----------------------------------------------------------
    if out is not None:
        for name, x in (("a", a), ("b", b), *((f"post_ops[{i}]", e) for i, e in enumerate(epi_arrays))):
            if x is not None and x.size and out.size and np.shares_memory(out, x):
                raise violation("api.out_overlap", f"out sharing memory with {name}", "disjoint from inputs")

    if d3 is None:
        d3 = np.empty((batch, m, n), d_np)
    dlay = _layout(d3, False) if d3.size else _Layout(False, max(1, n), m * n if batch > 1 else 0)
    assert dlay is not None
    d3 = _restride(d3, dlay)

    d_mat = _matrix(_H_D, d_dt, d3, dlay)
    c_mat = None
    if c3 is not None and clay is not None:
        c_mat = d_mat if in_place else _matrix(_H_C, d_dt, c3, clay)
    gemm = Gemm(
        m=m, n=n, k=k, batch=batch,
        a=_matrix(_H_A, a_dt, a3, alay), b=_matrix(_H_B, b_dt, b3, blay), c=c_mat, d=d_mat,
        alpha=alpha, beta=beta if c3 is not None else 0, trans_a=alay.transposed, trans_b=blay.transposed,
        acc_dtype=acc, epilogue=tuple(epi_descs),
    )
    try:
        raw = gemm.encode()
        kernel = dev.gemm_kernel(raw, raw)
    except FFAccelError as e:
        raise _in_post_ops_terms(e) from None
    if batch and m and n:
        kernel(a3, b3, c3 if c_mat is not None else None, d3, tuple(epi_arrays))
    result = d3.reshape(final_shape) if out is None else out
    if copy_back is not None:
        np.copyto(copy_back, d3.reshape(final_shape))
    if (key is not None and out is None and batch == 1 and not trans_a and not trans_b
            and _plain_2d(a, a3) and _plain_2d(b, b3)):
        # the driver may return D itself (one BLAS call, no allocation of ours)
        fresh = dev.gemm_fresh_kernel(raw) if not epi_descs and c_mat is None else None
        dev.frontend_plans[key] = fresh if fresh is not None else _fast_plan(kernel, m, n, d_np)
    return result


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


def _to_library(r: np.ndarray, lib: Any) -> Any:
    """The result as an array of ``lib`` (zero copy through DLPack)."""
    if r.dtype == ml_dtypes.bfloat16:
        return lib.from_dlpack(r.view(np.int16)).view(lib.bfloat16)
    return lib.from_dlpack(r)


def _matmul_dlpack(dev: Device, a: Any, b: Any, c: Any, alpha: Any, beta: Any, trans_a: bool, trans_b: bool,
                   post_ops: tuple, out: Any, out_dtype: Any) -> Any:
    """matmul for arrays of another library: view them as NumPy, run, view the result back."""
    lib = _library(a)
    if isinstance(out_dtype, str) or out_dtype is None:
        np_out_dtype = out_dtype
    else:  # a dtype of the caller's library (torch.float32): by name
        np_out_dtype = {"bfloat16": ml_dtypes.bfloat16}.get(str(out_dtype).rpartition(".")[2],
                                                            str(out_dtype).rpartition(".")[2])
    out_np = _from_dlpack(out, "out")
    r = _matmul(dev, _from_dlpack(a, "a"), _from_dlpack(b, "b"), _from_dlpack(c, "c"), alpha, beta, trans_a,
                trans_b, post_ops, out_np, np_out_dtype, None)
    return out if out is not None else _to_library(np.asarray(r), lib)


def _in_post_ops_terms(e: FFAccelError) -> FFAccelError:
    """Name epilogue errors by matmul's own argument: ``epilogue[1].param0`` -> ``post_ops[1].param0``."""
    if e.param.startswith("epilogue["):
        return FFAccelError(e.code, "post_ops[" + e.param[len("epilogue["):], e.message, e.rule)
    if e.param == "epilogue_count":
        return FFAccelError(e.code, "post_ops", e.message, e.rule)
    return e


def _post_operand(p: PostOp, i: int, acc: DType, d_dt: DType, m: int, n: int, batch_shape: tuple[int, ...],
                  res_full: tuple[int, ...]) -> tuple[np.ndarray | None, PostOpDesc]:
    arg = f"post_ops[{i}]"
    handle = 5 + i
    if p.operand is None:
        return None, PostOpDesc(p.kind, p.param0, p.param1)
    v = p.operand
    vdt = dtype_of_numpy(v.dtype)
    if vdt not in (acc, d_dt):
        raise violation("api.dtype", str(v.dtype), sorted({str(DTYPES[acc].numpy), str(DTYPES[d_dt].numpy)}),
                        arg=arg)
    assert vdt is not None
    if p.kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M):
        length = n if p.kind == PostOpKind.BIAS_N else m
        if v.ndim != 1 or v.shape[0] != length:
            axis = "n" if p.kind == PostOpKind.BIAS_N else "m"
            raise violation("api.shape", f"bias of shape {v.shape}", f"({length},) for axis={axis!r}", arg=arg)
        x3 = v.reshape(1, 1, n) if p.kind == PostOpKind.BIAS_N else v.reshape(1, m, 1)
        if x3.size and x3.strides[-1 if p.kind == PostOpKind.BIAS_N else -2] != v.itemsize:
            x3 = np.ascontiguousarray(x3)
        if p.kind == PostOpKind.BIAS_N:
            mat = Matrix(handle, vdt, 1, n, max(1, n), 0, 0)
            x3 = np.lib.stride_tricks.as_strided(x3, (1, 1, n), (0, max(1, n) * v.itemsize, v.itemsize))
        else:
            mat = Matrix(handle, vdt, m, 1, 1, 0, 0)
            x3 = np.lib.stride_tricks.as_strided(x3, (1, m, 1), (0, v.itemsize, v.itemsize))
        return x3, PostOpDesc(p.kind, 0, 0, mat)
    # add(E): broadcast to the result, flatten the batch
    try:
        eb = np.broadcast_to(v, res_full)
    except ValueError:
        raise violation("api.shape", f"E of shape {v.shape}", f"broadcastable to {res_full}", arg=arg) from None
    e3, lay = _operand3(eb, batch_shape, False)
    if lay.transposed or (m > 1 and n and e3.strides[-2] == 0):
        e3 = np.ascontiguousarray(e3)
        lay = _layout(e3, False)
        assert lay is not None
    return e3, PostOpDesc(p.kind, 0, 0, _matrix(handle, vdt, e3, lay))


__all__ = ["matmul", "FFAccelError"]
