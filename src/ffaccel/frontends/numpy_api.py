"""NumPy-style ``matmul`` on an ffaccel device.

Shapes follow ``numpy.matmul`` (1-D operands, broadcast batch dimensions).
Operands are handed to the device as zero-copy strided views wherever the GEMM
operand model (row-major with a leading dimension, or its transpose, and one
batch stride) can express them; otherwise they are copied once, never silently
promoted. The first call for a geometry validates its descriptor through the abi
validator and caches the driver's prepared kernel; later calls with the same
shapes, strides, dtypes, scalars and post-ops go straight to that kernel.

A call is resolved in named steps (see ``_matmul``): the operands, the scalars, the
output D, the addend C, the epilogue, the overlap check, then the kernel.

The operand rules are public helpers that the CBLAS front-end (:mod:`.blas`) shares:
:func:`operand_dtype`, :func:`gemm_dtypes` and :func:`real_argument`.
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import ml_dtypes
import numpy as np

from ..abi import Gemm, Matrix, PostOpDesc, pack_gemm
from ..runtime import Device, resolve_device
from ..runtime import device as _runtime_device
from ..spec import DTYPES, GEMM_COMBOS, DType, FFAccelError, PostOpKind, dtype_of_numpy, violation
from ..spec.errors import format_path
from .post import PostOp, _from_dlpack, _library, real_scalar

_INPUT_DTYPES = sorted({c.a for c in GEMM_COMBOS})
#: (a, b) -> the spec's GEMM combinations of those operand dtypes, in the spec's order.
_COMBOS_OF: dict[tuple[DType, DType], list] = {}
for _c in GEMM_COMBOS:
    _COMBOS_OF.setdefault((_c.a, _c.b), []).append(_c)
_ALLOWED_NAMES = "float64, float32, float16, bfloat16, int8 or uint8"
#: How the validator's descriptor fields are named in matmul's own arguments.
_MATMUL_NAMES = {"epilogue": "post_ops", "epilogue_count": "post_ops"}


class _Slot(IntEnum):
    """What a handle means in a host-array GEMM descriptor: an argument of the kernel call.

    The host-array path has no buffers: the kernel gets the arrays themselves,
    ``kernel(a, b, c, d, (post-op operands...))``. The abi validator, which checks the
    descriptor once per geometry, wants a nonzero handle for every operand present,
    so each handle names its argument; post-op i's operand is ``POST + i``.
    """

    A = 1
    B = 2
    C = 3
    D = 4
    POST = 5


def operand_dtype(x: np.ndarray, arg: str) -> DType:
    """The spec dtype of a GEMM input array; FFAccelError ``api.dtype`` naming ``arg`` for any other.

    Shared with the CBLAS front-end (:mod:`.blas`): both check operands by the same rules."""
    code = dtype_of_numpy(x.dtype)
    if code not in _INPUT_DTYPES:
        raise violation("api.dtype", str(x.dtype), _ALLOWED_NAMES, arg=arg)
    return code  # type: ignore[return-value]


def gemm_dtypes(a_dt: DType, b_dt: DType, out_dtype: Any) -> tuple[DType, DType]:
    """(acc, d) for the operand dtypes and the requested output dtype (None: the default D), from
    the spec's GEMM combinations; FFAccelError ``api.dtype`` (on ``b`` or ``out_dtype``) when none
    fits: no silent promotion. Shared with the CBLAS front-end."""
    matches = _COMBOS_OF.get((a_dt, b_dt), ())
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
    raise violation("api.dtype", _dtype_name(out_dtype), sorted({str(DTYPES[c.d].numpy) for c in matches}),
                    arg="out_dtype")


def _dtype_name(x: Any) -> str:
    """A dtype as NumPy names it (what the caller wrote), or the repr of what is not one."""
    try:
        return str(np.dtype(x))
    except TypeError:
        return repr(x)


class _Layout(NamedTuple):
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
    batch = math.prod(batch_shape)  # (numpy.prod costs ~5 us a call: a new geometry pays it thrice)
    if x.ndim == 2 or all(s == 1 for s in x.shape[:-2]):
        # a new axis has stride 0, the batch stride of one matrix: no as_strided in _restride
        x3 = (x if x.ndim == 2 else x.reshape(x.shape[-2:]))[None]
        if batch != 1:
            x3 = np.broadcast_to(x3, (batch,) + x.shape[-2:])
    else:
        xb = x if x.shape == full else np.broadcast_to(x, full)
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


class _Operand(NamedTuple):
    """One operand: the (batch, rows, cols) view the kernel gets and what the descriptor states."""

    view: np.ndarray
    dtype: DType
    layout: _Layout
    rows: int  # the stored matrix (for a transposed layout, the view's cols x rows)
    cols: int

    def matrix(self, slot: int) -> Matrix:
        return Matrix(slot, self.dtype, self.rows, self.cols, self.layout.ld, 0, self.layout.batch_stride)

    def values(self, slot: int) -> tuple:
        """The descriptor operand's fields, as :meth:`ffaccel.abi.Matrix.values` gives them."""
        return (slot, self.dtype, 0, self.rows, self.cols, self.layout.ld, self.layout.batch_stride)

    def geometry(self) -> tuple:
        return (self.dtype, self.rows, self.cols, self.layout)


def _stated(x3: np.ndarray, dt: DType, lay: _Layout) -> _Operand:
    rows, cols = x3.shape[1:]
    return _Operand(x3, dt, lay, *((cols, rows) if lay.transposed else (rows, cols)))


class _Post(NamedTuple):
    """One post-op as the descriptor states it, with its operand when it has one."""

    kind: PostOpKind
    param0: float | int
    param1: float | int
    operand: _Operand | None


class _Problem(NamedTuple):
    """The operands step's result: dtypes, sizes and the zero-copy views of a and b."""

    a: np.ndarray  # the arrays as given (converted from lists), for the overlap check
    b: np.ndarray
    acc: DType
    d_dt: DType
    m: int
    n: int
    k: int
    batch_shape: tuple[int, ...]
    batch: int
    result_shape: tuple[int, ...]  # what matmul returns (1-D operands drop their axis)
    full_shape: tuple[int, ...]  # batch_shape + (m, n)
    a_op: _Operand
    b_op: _Operand


def _as_array(x: Any, arg: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # noqa: BLE001 - any failure to convert is a bad argument
        raise violation("api.dtype", type(x).__name__, "an array", arg=arg) from e


def _is_typed(x: Any) -> bool:
    """Whether ``x`` brings its own dtype (an array), unlike a Python list, tuple or number."""
    return isinstance(x, np.ndarray) or hasattr(x, "dtype") or hasattr(x, "__array_interface__")


def _from_python(x: Any, arg: str, like: np.dtype | None) -> np.ndarray:
    """A Python list (or tuple, number) as an array: ``like``'s dtype, else float64.

    Python numbers have no dtype, so they take the other operand's (NumPy's own
    ``np.asarray`` would make integers int64, which no GEMM takes); values that dtype
    cannot hold exactly are refused. Two lists compute in float64, exactly for integers
    up to 2**53 (NumPy's result, as float64).
    """
    v = _as_array(x, arg)
    if v.dtype.kind not in "iuf":  # bool, complex, strings, objects: refused as they are
        return v
    target = like if like is not None else np.dtype(np.float64)
    if v.dtype == target:
        return v
    with np.errstate(invalid="ignore", over="ignore"):
        w = v.astype(target)
        exact = target.kind == "f" and v.dtype.kind == "f" or np.array_equal(w.astype(v.dtype), v)
    if not exact:
        bad = v.ravel()[int(np.argmax(w.astype(v.dtype).ravel() != v.ravel()))].item()
        raise violation("api.dtype", f"a list holding {bad!r}", f"values {target} holds exactly", arg=arg)
    return w


def _input_array(x: Any, arg: str, other: Any) -> np.ndarray:
    if _is_typed(x):
        return _as_array(x, arg)
    like = getattr(other, "dtype", None) if _is_typed(other) else None
    like = np.dtype(like) if like is not None and dtype_of_numpy(like) in _INPUT_DTYPES else None
    return _from_python(x, arg, like)


def real_argument(x: Any, arg: str) -> Any:
    """A scalar that must be a real number (int, float, or a NumPy real scalar) within float64's range
    (alpha, beta, post-op parameters); FFAccelError naming ``arg`` otherwise. Shared with the CBLAS
    front-end."""
    return real_scalar(x, arg, "a real number: int or float (an int for int8/uint8 inputs)")


def _scalar_key(x: Any) -> Any:
    """A scalar as a cache key: floats by their exact bits, so -0.0 and 0.0 differ."""
    return float(x).hex() if isinstance(x, (float, np.floating)) else x


def _post_ops_tuple(post_ops: Any) -> tuple:
    """``post_ops`` as a tuple: a list of post-ops, one post-op alone, or None for none."""
    if post_ops is None:
        return ()
    if isinstance(post_ops, PostOp):
        return (post_ops,)
    try:  # a 0-d array is an Iterable that cannot be iterated
        if isinstance(post_ops, (str, bytes)) or not isinstance(post_ops, Iterable):
            raise TypeError
        return tuple(post_ops)
    except TypeError:
        raise violation("api.post_op", type(post_ops).__name__,
                        "a list of ffaccel.post.bias/relu/gelu/clamp/scale/add, or one of them", arg="post_ops") from None


def _fast_plan(kernel: Callable, m: int, n: int, d_dtype: np.dtype,
               operand_views: tuple[Callable[[np.ndarray], np.ndarray] | None, ...] = ()
               ) -> Callable[..., np.ndarray]:
    """The per-call path for plain 2-D a and b of a cached geometry: allocate D, call the kernel.

    ``operand_views``: per post-op, how its operand becomes the view the kernel takes (None for
    post-ops without one); the plan is then called ``plan(a, b, post_ops)``, or ``plan(a, b,
    operand)`` for one post-op (its operand alone: see :func:`matmul`). A closure with
    everything bound, because at 8 x 8 every attribute lookup shows.
    """
    empty = np.empty
    shape = (1, m, n)
    if not operand_views:
        def plan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            d = empty(shape, d_dtype)
            kernel(a[None], b[None], None, d, ())
            return d[0]

        return plan
    if len(operand_views) == 1:  # the common linear layer: one bias (or one post-op without operand)
        view = operand_views[0] or (lambda v: None)

        def plan1(a: np.ndarray, b: np.ndarray, operand: np.ndarray | None) -> np.ndarray:
            d = empty(shape, d_dtype)
            kernel(a[None], b[None], None, d, (view(operand),))
            return d[0]

        return plan1

    def plan_n(a: np.ndarray, b: np.ndarray, post_ops: tuple) -> np.ndarray:
        d = empty(shape, d_dtype)
        kernel(a[None], b[None], None, d,
               tuple(v(p.operand) if v is not None else None for v, p in zip(operand_views, post_ops)))
        return d[0]

    return plan_n


def _fresh_plan(fresh: Callable, operand_views: tuple[Callable[[np.ndarray], np.ndarray] | None, ...],
                contiguous: bool = False) -> Callable[..., np.ndarray]:
    """The per-call path of a driver's fresh kernel with an epilogue: ``fresh(a, b, epi) -> D``;
    called ``plan(a, b, post_ops)``, or ``plan(a, b, operand)`` for one post-op (as :func:`matmul`
    calls the plan of a one-post-op key).

    ``contiguous``: a and b are C-contiguous (the per-call key fixes their strides); with one bias
    along n, whose view is a reshape of the user's vector, the driver's ``fresh.contiguous(a, b,
    vector)`` (when it offers one) takes the vector itself: it is then the plan, no Python call
    between matmul and the driver (1 x 512 x 512 + bias, docs/kernels.md)."""
    if len(operand_views) == 1:
        view = operand_views[0]
        if view is None:
            return lambda a, b, operand: fresh(a, b, (None,))
        shape = getattr(view, "reshape_to", None)
        direct = getattr(fresh, "contiguous", None) if contiguous else None
        if direct is not None and shape is not None and len(shape) == 3 and shape[:2] == (1, 1):
            return direct
        if shape is not None:  # the view is a reshape: done here, one Python call less per call (8 x 8 + bias)
            return lambda a, b, operand: fresh(a, b, (operand.reshape(shape),))
        return lambda a, b, operand: fresh(a, b, (view(operand),))
    return lambda a, b, post_ops: fresh(a, b, tuple(v(p.operand) if v is not None else None
                                                    for v, p in zip(operand_views, post_ops)))


#: PostOp's default parameter (one float object) and its bits as :func:`_post_key` writes them.
_ZERO = PostOp.__dataclass_fields__["param0"].default
assert _ZERO is PostOp.__dataclass_fields__["param1"].default
_ZERO_BITS = _ZERO.hex()
#: No single post-op operand (matmul's per-call path: none, or several post-ops).
_MANY = object()


def _post_key(post_ops: tuple) -> tuple:
    """The per-call cache key of a post-op list: kinds, parameters by their bits (clamp(-0.0, ...)
    and clamp(0.0, ...) differ), operands' geometry (not their values). Inlined: it runs per call."""
    out = []
    for p in post_ops:
        p0, p1, v = p.param0, p.param1, p.operand
        p0 = p0.hex() if p0.__class__ is float else p0
        p1 = p1.hex() if p1.__class__ is float else p1
        out.append((p.kind, p0, p1) if v is None else (p.kind, p0, p1, v.shape, v.strides, v.dtype))
    return tuple(out)


def _operand_view(user: np.ndarray, view: np.ndarray, trans: bool = False
                  ) -> Callable[[np.ndarray], np.ndarray] | None:
    """How the per-call path turns an operand (a, b, or a post-op's) into the kernel's view: a
    reshape, a new axis or a broadcast of the batch (of ``user``'s last two axes swapped when
    ``trans``) that gives exactly the view the full path made from ``user`` (same memory, shape and
    strides), or None when only the full path can (a copy)."""
    shape = view.shape
    if trans:
        makers: tuple = (lambda v: v.swapaxes(-1, -2).reshape(shape), lambda v: v.swapaxes(-1, -2)[None],
                         lambda v: np.broadcast_to(v.swapaxes(-1, -2).reshape(shape[1:]), shape))
    else:
        def reshape(v: np.ndarray) -> np.ndarray:
            return v.reshape(shape)

        reshape.reshape_to = shape  # type: ignore[attr-defined]  # (plans inline it: see _fresh_plan)
        makers = (reshape, lambda v: v[None], lambda v: np.broadcast_to(v.reshape(shape[1:]), shape))
    for make in makers:
        try:
            got = make(user)
        except ValueError:
            continue
        if (got.shape == shape and got.strides == view.strides and got.dtype == view.dtype
                and got.__array_interface__["data"][0] == view.__array_interface__["data"][0]):
            return make
    return None


def _plain_2d(x: np.ndarray, x3: np.ndarray) -> bool:
    """Whether the 2-D array ``x`` with a leading None axis is exactly the operand view x3."""
    if x.ndim != 2:
        return False
    probe = x[None]
    return probe.strides == x3.strides and probe.shape == x3.shape


#: matmul's default alpha, that very object: a call with every scalar and flag at its default
#: keys its plan by the operands alone (a shorter key to build, hash and compare: 8 x 8 x 8)
_ONE = 1.0


def matmul(
    a: Any,
    b: Any,
    c: Any = None,
    *,
    alpha: float = _ONE,
    beta: float | None = None,
    trans_a: bool = False,
    trans_b: bool = False,
    post_ops: Sequence[PostOp] | PostOp = (),
    out: np.ndarray | None = None,
    out_dtype: Any = None,
    device: str | Device | None = None,
) -> np.ndarray:
    """``epilogue(alpha * op(a) @ op(b) + beta * c)`` on an ffaccel device.

    Parameters
    ----------
    a, b : numpy.ndarray, any DLPack-capable array, or a Python list
        float64, float32, float16, ml_dtypes.bfloat16, int8 or uint8. Shapes follow
        ``numpy.matmul``; ``a`` and ``b`` must share a dtype (int8 and uint8 mix freely).
        Arrays of another library in host memory (a CPU ``torch.Tensor`` ...) are viewed
        through DLPack without copies, and the result comes back as that library's array.
        A (nested) Python list has no dtype: it takes the other operand's, or float64
        when both are lists; values that dtype cannot hold exactly are refused.
    c : numpy.ndarray, optional
        Added as ``beta * c``; broadcast to the result's shape; the result's dtype.
        Not read when ``beta == 0``.
    alpha : float
        Real scalar (an integer for int8/uint8 inputs).
    beta : float, optional
        Real scalar (an integer for int8/uint8 inputs). Default: 1 when ``c`` is given
        (``alpha * a @ b + c``, as ``torch.addmm`` and BLAS callers expect), else 0.
    trans_a, trans_b : bool
        Swap the last two axes of ``a`` / ``b`` (free: a strided view).
    post_ops : sequence of PostOp, or one PostOp
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
        1-D @ 1-D gives a NumPy scalar of that dtype, as ``numpy.matmul`` does (``out`` itself
        when given).

    Raises
    ------
    FFAccelError
        With the spec's code and the offending parameter's name (``e.param``, as a path in
        ``e.path``: ``post_ops[1].operand`` is ``("post_ops", 1, "operand")``); nothing is written.

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
    >>> ffaccel.matmul(a, a.T, np.ones((2, 2), np.float32))  # beta is 1 when c is given
    array([[ 6., 15.],
           [15., 51.]], dtype=float32)
    """
    if device is None:  # the process's default device, without resolve_device's call once it is known
        dev = _runtime_device.implicit_device or resolve_device(None)
    else:
        dev = device if isinstance(device, Device) else resolve_device(device)
    fast = c is None and out is None
    if fast:
        one = _MANY  # one post-op: its operand (a plan of a one-post-op key takes it alone)
        try:
            if post_ops:
                if type(post_ops) is PostOp:
                    post_ops = (post_ops,)
                elif type(post_ops) not in (list, tuple):  # a generator must not be consumed here
                    raise TypeError
                if len(post_ops) == 1:  # a linear layer's bias: _post_key inlined (a call costs ~0.2 us here)
                    p = post_ops[0]
                    p0, p1, one = p.param0, p.param1, p.operand
                    if (p0 is _ZERO and p1 is _ZERO and one is not None and alpha is _ONE and beta is None
                            and trans_a is False and trans_b is False and out_dtype is None):
                        # a bias (or add) with every scalar and flag at its default: one flat key of a
                        # length of its own (10), no nested post-op tuples to build, hash and compare
                        key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, p.kind, one.shape,
                               one.strides, one.dtype)
                    else:
                        # (a bias's parameters are PostOp's default 0.0, that very object: its bits known)
                        p0 = _ZERO_BITS if p0 is _ZERO else p0.hex() if p0.__class__ is float else p0
                        p1 = _ZERO_BITS if p1 is _ZERO else p1.hex() if p1.__class__ is float else p1
                        pk = ((p.kind, p0, p1) if one is None else (p.kind, p0, p1, one.shape, one.strides, one.dtype),)
                        key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, alpha, beta, trans_a,
                               trans_b, out_dtype, pk)
                else:
                    key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, alpha, beta, trans_a, trans_b,
                           out_dtype, _post_key(post_ops))
            elif alpha is _ONE and beta is None and trans_a is False and trans_b is False and out_dtype is None:
                key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype)  # (a length of its own)
            else:
                key = (a.shape, a.strides, a.dtype, b.shape, b.strides, b.dtype, alpha, beta, trans_a, trans_b,
                       out_dtype)
            plans = dev.frontend_plans  # an LruCache: peek is one dict lookup, get the full one
            plan = plans.peek(key) or plans.get(key)
        except (AttributeError, TypeError):
            plan = key = None
        if plan is not None:
            if not post_ops:
                return plan(a, b)
            return plan(a, b, post_ops) if one is _MANY else plan(a, b, one)
        if key is not None and not post_ops and type(a) is np.ndarray and type(b) is np.ndarray:
            # a geometry not seen: a plan over its GEMM class answers when the class is known (a
            # KV cache growing a row a step); the geometry's second call builds its own plan
            family = plans.peek(_family_key(a, b, alpha, beta, trans_a, trans_b, out_dtype))
            if family is not None:
                r = _family_call(family, a, b, trans_a, trans_b)
                if r is not None:
                    plans.put(key, _second_call(dev, family, key, alpha, beta, trans_a, trans_b, out_dtype))
                    return r
    post_ops = _post_ops_tuple(post_ops)
    if type(a) is not np.ndarray and hasattr(a, "__dlpack__"):  # torch, CuPy, JAX ... (host memory)
        return _matmul_dlpack(dev, a, b, c, alpha, beta, trans_a, trans_b, post_ops, out, out_dtype)
    r = _matmul(dev, a, b, c, alpha, beta, trans_a, trans_b, post_ops, out, out_dtype, key if fast else None)
    # 1-D @ 1-D: a NumPy scalar, as numpy.matmul returns (a 0-d array is unhashable, and no
    # np.floating); never a cached plan's result (those need 2-D operands)
    return r[()] if r.ndim == 0 and out is None else r


def _family_key(a: np.ndarray, b: np.ndarray, alpha: Any, beta: Any, trans_a: Any, trans_b: Any,
                out_dtype: Any) -> tuple | None:
    """The key of a plan over every geometry of a call's GEMM class: the fast key less the shapes and
    strides (scalars by their bits), for calls of two ndarrays with no c, out or post-ops."""
    if a.ndim == 2 and b.ndim == 2 and not trans_a and not trans_b:
        # a plain 2-D call takes the driver's fresh kernel from its second call on (the fastest path
        # for tiny GEMMs: the driver returns D itself); a family plan would put the prepared kernel
        # there instead, for every geometry met after the first of its class
        return None
    # (a scalar by its bits only where equal values differ in bits: 0.0 and -0.0; .hex() costs per call)
    try:
        return ("family", a.ndim, a.dtype, b.ndim, b.dtype, alpha if alpha else _scalar_key(alpha),
                beta if beta else _scalar_key(beta), trans_a, trans_b, out_dtype)
    except (TypeError, ValueError):  # not a scalar (an array's truth value): the full path names it
        return None


class _Family(NamedTuple):
    """A plan over a growing axis: what every geometry of one GEMM class shares, and its kernels."""

    trans_a: bool  # the descriptor's flags: a geometry whose views store a or b the other way is not of it
    trans_b: bool
    d_dtype: np.dtype
    kernel: Callable  # (m, n, k, batch, placements) -> the validated kernel, or None (a rule failed)


def _view3(x: np.ndarray, batch: int, transposed: bool) -> tuple[np.ndarray, tuple] | None:
    """The (batch, rows, cols) operand view of ``x`` (..., rows, cols) and its descriptor placement
    ``(rows, cols, ld, batch stride)`` as :func:`_operand3` states it, or None where that needs a
    copy or stores the operand the other way than ``transposed``."""
    nd = x.ndim
    if nd == 3:
        x3 = x
    elif nd == 2:
        x3 = x[None]
    else:
        try:
            x3 = x.reshape((batch,) + x.shape[-2:], copy=False)
        except ValueError:
            return None
    lay = _layout(x3, True)
    if lay is None or lay.transposed != transposed:
        return None
    x3 = _restride(x3, lay)
    _, rows, cols = x3.shape
    return x3, ((cols, rows, lay.ld, lay.batch_stride) if transposed else (rows, cols, lay.ld, lay.batch_stride))


def _family_call(family: _Family, a: np.ndarray, b: np.ndarray, trans_a: Any, trans_b: Any,
                 record: list | None = None) -> np.ndarray | None:
    """A new geometry of a known GEMM class: its views and placements computed here, checked by every
    geometry rule (``family.kernel``), the kernel called once. None (nothing done) where the full
    path must answer: broadcast batch dims, empty sizes, a copy, a failed rule (its exact error).

    ``record``: gets (kernel, a's view, b's view, (batch, m, n), the result's shape) appended, for
    the geometry's own plan (:func:`_second_call`)."""
    av = a.swapaxes(-1, -2) if trans_a else a
    bv = b.swapaxes(-1, -2) if trans_b else b
    sa, sb = av.shape, bv.shape
    batch_shape = sa[:-2]
    if batch_shape != sb[:-2] or len(sa) < 2 or len(sb) < 2:
        return None
    m, k = sa[-2:]
    k2, n = sb[-2:]
    batch = math.prod(batch_shape)
    if k != k2 or not (m and n and k and batch):
        return None
    va = _view3(av, batch, family.trans_a)
    vb = _view3(bv, batch, family.trans_b) if va is not None else None
    if vb is None:
        return None
    d3 = np.empty((batch, m, n), family.d_dtype)
    kernel = family.kernel(m, n, k, batch, (va[1], vb[1], None, (m, n, n, m * n if batch > 1 else 0)))
    if kernel is None:
        return None
    kernel(va[0], vb[0], None, d3, ())
    result_shape = batch_shape + (m, n)
    if record is not None:
        record.append((kernel, va[0], vb[0], (batch, m, n), result_shape))
    return d3.reshape(result_shape)


def _second_call(dev: Device, family: _Family, key: tuple, alpha: Any, beta: Any, trans_a: Any, trans_b: Any,
                 out_dtype: Any, build_plan: bool = True) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """What a geometry first met through a family plan runs on its second call: the family's call,
    caching the geometry's own per-call plan under ``key`` (replacing this); the full path where
    the family does not answer. ``build_plan`` False: the family's call alone, every call (the
    geometry's views need more than a reshape: no plan of its own)."""
    def second(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        record: list | None = [] if build_plan else None
        r = _family_call(family, a, b, trans_a, trans_b, record)
        if r is None:
            return _matmul(dev, a, b, None, alpha, beta, trans_a, trans_b, (), None, out_dtype, key,
                           seen_before=True)
        if record:  # the plan, as the full path caches it: each view a reshape, new axis or broadcast away
            kernel, va, vb, shape3, result_shape = record[0]
            view_a = _operand_view(a, va, bool(trans_a))
            view_b = _operand_view(b, vb, bool(trans_b))
            dev.frontend_plans[key] = (
                _batched_plan(kernel, view_a, view_b, shape3, result_shape, family.d_dtype, ())
                if view_a is not None and view_b is not None else
                _second_call(dev, family, key, alpha, beta, trans_a, trans_b, out_dtype, False))
        return r

    return second


def _matmul(dev: Device, a: Any, b: Any, c: Any, alpha: Any, beta: Any, trans_a: bool, trans_b: bool,
            post_ops: tuple, out: np.ndarray | None, out_dtype: Any, key: Any, seen_before: bool = False
            ) -> np.ndarray:
    """matmul on host arrays, step by step; every check runs before anything is written."""
    fkey = (_family_key(a, b, alpha, beta, trans_a, trans_b, out_dtype) if key is not None and not post_ops
            and type(a) is np.ndarray and type(b) is np.ndarray else None)
    p = _operands(a, b, trans_a, trans_b, out_dtype)
    alpha, beta = _scalars(alpha, beta, c)
    d_op, copy_back = _output(out, p)
    c_op, in_place = _addend(c, beta, out, d_op, p)
    epilogue = _epilogue(post_ops, p)
    if out is not None:
        _check_out_disjoint(out, p, epilogue)
    if d_op is None:
        d_np = DTYPES[p.d_dt].numpy
        d3 = np.empty((p.m, p.n), d_np)[None] if p.batch == 1 else np.empty((p.batch, p.m, p.n), d_np)
        d_op = _stated(d3, p.d_dt, _layout(d3, False) if d3.size else _Layout(False, max(1, p.n), 0))
    kernel, descriptor, seen = _kernel(dev, p, alpha, beta if c_op is not None else 0, c_op, in_place, d_op,
                                       epilogue)
    seen = seen or seen_before
    family = None
    if (fkey is not None and c_op is None and p.batch and p.m and p.n and p.k and a.ndim >= 2 and b.ndim >= 2
            and a.shape[:-2] == b.shape[:-2]):
        family = dev.frontend_plans.peek(fkey)
        if family is None:
            made = dev.gemm_family(descriptor)
            if made is not None:
                family = _Family(p.a_op.layout.transposed, p.b_op.layout.transposed, _d_dtype(p), made.kernel)
                dev.frontend_plans[fkey] = family
    d3 = d_op.view
    if p.batch and p.m and p.n:
        kernel(p.a_op.view, p.b_op.view, c_op.view if c_op is not None else None, d3,
               tuple(e.operand.view if e.operand is not None else None for e in epilogue))
    if copy_back is not None:
        np.copyto(copy_back, d3.reshape(p.result_shape))
    if (key is not None and out is None and p.batch == 1 and not trans_a and not trans_b and _plain_2d(p.a, p.a_op.view) and _plain_2d(p.b, p.b_op.view)):
        # a plain 2-D call: next time straight from matmul(); the driver may return D itself
        if not epilogue:
            fresh = dev.gemm_fresh_kernel(descriptor) if c_op is None else None
            dev.frontend_plans[key] = fresh if fresh is not None else _fast_plan(kernel, p.m, p.n, d3.dtype)
        else:  # the same for a fused epilogue, when each operand's view is a reshape away
            views = tuple(None if e.operand is None else _operand_view(post_ops[i].operand, e.operand.view)
                          for i, e in enumerate(epilogue))
            if all(v is not None or e.operand is None for v, e in zip(views, epilogue)):
                fresh = dev.gemm_fresh_kernel(descriptor) if c_op is None else None
                contiguous = p.a.flags.c_contiguous and p.b.flags.c_contiguous
                dev.frontend_plans[key] = (_fresh_plan(fresh, views, contiguous) if fresh is not None else
                                           _fast_plan(kernel, p.m, p.n, d3.dtype, views))
    elif (seen and key is not None and out is None and type(a) is np.ndarray and type(b) is np.ndarray
          and a.ndim >= 2 and b.ndim >= 2):  # (a subclass's reshape may differ from the one checked here)
        # from a geometry's second call on: a KV cache that grows each step builds no plan it never reuses
        _cache_batched_plan(dev, key, kernel, p, d3.dtype, post_ops, epilogue, trans_a, trans_b)
    elif family is not None and key is not None and out is None:
        # its second call builds its plan through the family (no second full path)
        dev.frontend_plans[key] = _second_call(dev, family, key, alpha, beta, trans_a, trans_b, out_dtype)
    return d3.reshape(p.result_shape) if out is None else out


def _cache_batched_plan(dev: Device, key: tuple, kernel: Callable, p: _Problem, d_dtype: np.dtype,
                        post_ops: tuple, epilogue: list[_Post], trans_a: bool, trans_b: bool) -> None:
    """The per-call path of a batched (or transposed) call of a cached geometry: each operand's view
    is a reshape, new axis or broadcast away (else no plan: the full path runs each time)."""
    va = _operand_view(p.a, p.a_op.view, bool(trans_a))
    vb = _operand_view(p.b, p.b_op.view, bool(trans_b))
    views = tuple(None if e.operand is None else _operand_view(post_ops[i].operand, e.operand.view)
                  for i, e in enumerate(epilogue))
    if va is None or vb is None or any(v is None and e.operand is not None for v, e in zip(views, epilogue)):
        return
    dev.frontend_plans[key] = _batched_plan(kernel, va, vb, (p.batch, p.m, p.n), p.result_shape, d_dtype, views)


def _batched_plan(kernel: Callable, view_a: Callable[[np.ndarray], np.ndarray],
                  view_b: Callable[[np.ndarray], np.ndarray], shape3: tuple[int, int, int],
                  result_shape: tuple[int, ...], d_dtype: np.dtype,
                  operand_views: tuple[Callable[[np.ndarray], np.ndarray] | None, ...]) -> Callable[..., np.ndarray]:
    """``plan(a, b[, post_ops]) -> D``: D allocated as (batch, m, n), the kernel called once on the
    operands' (batch, rows, cols) views; D returned in the result's shape (a view). With one post-op,
    ``plan(a, b, operand)`` (see :func:`matmul`)."""
    empty = np.empty
    if not operand_views:
        def plan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            d = empty(shape3, d_dtype)
            kernel(view_a(a), view_b(b), None, d, ())
            return d.reshape(result_shape)

        return plan
    if len(operand_views) == 1:
        view = operand_views[0] or (lambda v: None)

        def plan1(a: np.ndarray, b: np.ndarray, operand: np.ndarray | None) -> np.ndarray:
            d = empty(shape3, d_dtype)
            kernel(view_a(a), view_b(b), None, d, (view(operand),))
            return d.reshape(result_shape)

        return plan1

    def plan_n(a: np.ndarray, b: np.ndarray, post_ops: tuple) -> np.ndarray:
        d = empty(shape3, d_dtype)
        kernel(view_a(a), view_b(b), None, d,
               tuple(v(p.operand) if v is not None else None for v, p in zip(operand_views, post_ops)))
        return d.reshape(result_shape)

    return plan_n


def _operands(a: Any, b: Any, trans_a: bool, trans_b: bool, out_dtype: Any) -> _Problem:
    """Step 1: dtypes (no silent promotion), numpy.matmul shapes, zero-copy views of a and b."""
    a, b = _input_array(a, "a", b), _input_array(b, "b", a)
    a_dt = operand_dtype(a, "a")
    b_dt = operand_dtype(b, "b")
    acc, d_dt = gemm_dtypes(a_dt, b_dt, out_dtype)
    for name, x in (("a", a), ("b", b)):
        if x.ndim == 0:
            raise violation("api.shape", "a 0-d array", "at least 1 dimension", arg=name)
    for name, flag, x in (("trans_a", trans_a, a), ("trans_b", trans_b, b)):
        # a string is truthy: trans_a="N" must not silently transpose (blas.gemm takes "N"/"T")
        if not (isinstance(flag, (bool, np.bool_)) or isinstance(flag, numbers.Real) and flag in (0, 1)):
            raise violation("api.flag", repr(flag), "True or False", arg=name)
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
        batch_shape = (av.shape[:-2] if av.shape[:-2] == bv.shape[:-2] else
                       np.broadcast_shapes(av.shape[:-2], bv.shape[:-2]) if av.ndim > 2 or bv.ndim > 2 else ())
    except ValueError:
        raise violation("api.shape", f"batch dims {bv.shape[:-2]}", f"broadcastable with {av.shape[:-2]}",
                        arg="b") from None
    a3, alay = _operand3(av, batch_shape, True)
    b3, blay = _operand3(bv, batch_shape, True)
    return _Problem(a, b, acc, d_dt, m, n, k, batch_shape, math.prod(batch_shape),
                    batch_shape + ((() if a1 else (m,)) + (() if b1 else (n,))), batch_shape + (m, n),
                    _stated(a3, a_dt, alay), _stated(b3, b_dt, blay))


def _scalars(alpha: Any, beta: Any, c: Any) -> tuple[Any, Any]:
    """Step 2: alpha and beta are real numbers; beta defaults to 1 with c (BLAS's and torch.addmm's C)."""
    if beta is None:
        beta = 0 if c is None else 1
    return real_argument(alpha, "alpha"), real_argument(beta, "beta")


def _output(out: np.ndarray | None, p: _Problem) -> tuple[_Operand | None, np.ndarray | None]:
    """Step 3: D. ``out`` itself when the operand model can describe it; else a temporary to copy back.

    Returns (D, or None for a new array; the array to copy D into afterwards, or None).
    """
    if out is None:
        return None, None
    d_np = DTYPES[p.d_dt].numpy
    if not isinstance(out, np.ndarray) or out.shape != p.result_shape or out.dtype != d_np:
        seen = (getattr(out, "shape", None), str(getattr(out, "dtype", type(out).__name__)))
        raise violation("api.out", f"shape {seen[0]}, dtype {seen[1]}", f"shape {p.result_shape}, dtype {d_np}")
    if not out.flags.writeable:
        raise violation("api.writeable", "a read-only array", "a writeable array", arg="out")
    d3 = None
    base = out if type(out) is np.ndarray else out.view(np.ndarray)  # np.matrix stays 2-D when reshaped
    out_full = base.reshape(p.full_shape) if out.size else np.empty(p.full_shape, d_np)
    if not out_full.size or np.shares_memory(out_full, out):  # else reshape had to copy
        try:
            d3 = out_full.reshape((p.batch, p.m, p.n), copy=False)
        except ValueError:
            d3 = None
    lay = _layout(d3, False) if d3 is not None else None
    if d3 is None or lay is None or (p.batch > 1 and d3.strides[0] == 0):
        return None, out  # compute into a temporary, copy back
    if not d3.size:
        lay = _Layout(False, max(1, p.n), 0)
    return _stated(_restride(d3, lay), p.d_dt, lay), None


def _addend(c: Any, beta: Any, out: np.ndarray | None, d_op: _Operand | None,
            p: _Problem) -> tuple[_Operand | None, bool]:
    """Step 4: C, broadcast to the result; None when beta == 0 (then it is not read). (C, in place?)"""
    if c is None:
        return None, False
    d_np = DTYPES[p.d_dt].numpy
    c = _as_array(c, "c") if _is_typed(c) else _from_python(c, "c", np.dtype(d_np))
    if dtype_of_numpy(c.dtype) != p.d_dt:
        raise violation("api.dtype", str(c.dtype), f"{d_np} (the result's dtype; no silent promotion)", arg="c")
    if beta == 0:
        return None, False
    try:
        cb = np.broadcast_to(c, p.full_shape)
    except ValueError:
        raise violation("api.shape", f"c of shape {c.shape}", f"broadcastable to {p.full_shape}", arg="c") from None
    c3, clay = _operand3(cb, p.batch_shape, False)
    if clay.transposed or (p.batch > 1 and p.m * p.n and c3.strides[-2] == 0):
        c3 = np.ascontiguousarray(c3)
        clay = _layout(c3, False)
        assert clay is not None
    in_place = False
    if d_op is not None and out is not None and c3.size and np.shares_memory(c3, d_op.view):
        in_place = (c3.__array_interface__["data"][0] == d_op.view.__array_interface__["data"][0]
                    and c3.strides == d_op.view.strides)
        if not in_place:
            raise violation("api.out_overlap", "out partially overlapping c", "out exactly c, or disjoint")
    return _stated(c3, p.d_dt, clay), in_place


def _epilogue(post_ops: tuple, p: _Problem) -> list[_Post]:
    """Step 5: each post-op with its operand as a view the descriptor can state."""
    if len(post_ops) > 4:
        raise violation("epilogue.count", len(post_ops), "<= 4").renamed(_MATMUL_NAMES)
    out = []
    for i, op in enumerate(post_ops):
        if not isinstance(op, PostOp):
            raise violation("api.post_op", type(op).__name__, "ffaccel.post.bias/relu/gelu/clamp/scale/add",
                            arg=f"post_ops[{i}]")
        out.append(_Post(op.kind, op.param0, op.param1,
                         _post_operand(op, ("post_ops", i, "operand"), p) if op.operand is not None else None))
    return out


def _post_operand(op: PostOp, path: tuple, p: _Problem) -> _Operand:
    """A bias vector as a (1, 1, n) or (1, m, 1) view; an addend E broadcast to the result."""
    v = op.operand
    assert v is not None
    vdt = dtype_of_numpy(v.dtype)
    if vdt not in (p.acc, p.d_dt):
        raise violation("api.dtype", str(v.dtype), sorted({str(DTYPES[p.acc].numpy), str(DTYPES[p.d_dt].numpy)}),
                        arg=format_path(path))
    assert vdt is not None
    m, n = p.m, p.n
    if op.kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M):
        along_n = op.kind == PostOpKind.BIAS_N
        length = n if along_n else m
        if v.ndim != 1 or v.shape[0] != length:
            raise violation("api.shape", f"bias of shape {v.shape}", f"({length},) for axis={'n' if along_n else 'm'!r}",
                            arg=format_path(path))
        if v.size and v.strides[0] != v.itemsize:
            v = np.ascontiguousarray(v)
        # a reshape of the contiguous vector: the batch of 1 has any stride (as_strided cost 12 us);
        # a kernel gets every operand with the GEMM's batch (the driver contract: (batch, 1, n) or
        # (batch, m, 1), as the buffer path's views give it), so a batched GEMM's bias is broadcast
        v3 = v.reshape(1, 1, n) if along_n else v.reshape(1, m, 1)
        if p.batch > 1:
            v3 = np.broadcast_to(v3, (p.batch, *v3.shape[1:]))
        if along_n:
            return _Operand(v3, vdt, _Layout(False, max(1, n), 0), 1, n)
        return _Operand(v3, vdt, _Layout(False, 1, 0), m, 1)
    try:  # add(E): broadcast to the result, flatten the batch
        eb = np.broadcast_to(v, p.full_shape)
    except ValueError:
        raise violation("api.shape", f"E of shape {v.shape}", f"broadcastable to {p.full_shape}",
                        arg=format_path(path)) from None
    e3, lay = _operand3(eb, p.batch_shape, False)
    if lay.transposed or (m > 1 and n and e3.strides[-2] == 0):
        e3 = np.ascontiguousarray(e3)
        lay = _layout(e3, False)
        assert lay is not None
    return _stated(e3, vdt, lay)


def _check_out_disjoint(out: np.ndarray, p: _Problem, epilogue: list[_Post]) -> None:
    """Step 6: ``out`` shares no memory with an input (c is checked with D: in place is allowed)."""
    if not out.size:
        return
    inputs = [("a", p.a), ("b", p.b)] + [(f"post_ops[{i}].operand", e.operand.view)
                                         for i, e in enumerate(epilogue) if e.operand is not None]
    for name, x in inputs:
        if x.size and np.shares_memory(out, x):
            raise violation("api.out_overlap", f"out sharing memory with {name}", "disjoint from inputs")


def _kernel(dev: Device, p: _Problem, alpha: Any, beta: Any, c_op: _Operand | None, in_place: bool,
            d_op: _Operand, epilogue: list[_Post]) -> tuple[Callable, bytes, bool]:
    """Step 7: the driver's kernel for this geometry, validated by the abi validator once.

    Cached in ``dev.frontend_plans`` by the geometry (every descriptor field, scalars by their
    bits), so a repeated call builds no descriptor. Returns (kernel, descriptor, whether the
    geometry was seen before).
    """
    key = ("gemm", p.m, p.n, p.k, p.batch, p.acc, _scalar_key(alpha), _scalar_key(beta), in_place,
           p.a_op.geometry(), p.b_op.geometry(), c_op.geometry() if c_op is not None else None, d_op.geometry(),
           tuple((e.kind, _scalar_key(e.param0), _scalar_key(e.param1),
                  e.operand.geometry() if e.operand is not None else None) for e in epilogue))
    plans = dev.frontend_plans
    cached = plans.peek(key) or plans.get(key)
    if cached is not None:
        return (*cached, True)
    epi = tuple((e.kind, real_argument(e.param0, f"post_ops[{i}].param0"),
                 real_argument(e.param1, f"post_ops[{i}].param1"),
                 e.operand.values(_Slot.POST + i) if e.operand is not None else None) for i, e in enumerate(epilogue))
    d_val = d_op.values(_Slot.D)
    try:
        try:  # the descriptor straight from the operands' fields (no dataclasses: a new geometry pays this)
            descriptor = pack_gemm(p.m, p.n, p.k, p.batch, p.a_op.layout.transposed, p.b_op.layout.transposed,
                                   p.acc, alpha, beta, p.a_op.values(_Slot.A), p.b_op.values(_Slot.B),
                                   None if c_op is None else d_val if in_place else c_op.values(_Slot.C), d_val, epi)
        except (struct.error, TypeError, ValueError, OverflowError):  # a size wider than its field: named by encode
            descriptor = Gemm(
                m=p.m, n=p.n, k=p.k, batch=p.batch, a=p.a_op.matrix(_Slot.A), b=p.b_op.matrix(_Slot.B),
                c=None if c_op is None else d_op.matrix(_Slot.D) if in_place else c_op.matrix(_Slot.C),
                d=d_op.matrix(_Slot.D), alpha=alpha, beta=beta, trans_a=p.a_op.layout.transposed,
                trans_b=p.b_op.layout.transposed, acc_dtype=p.acc,
                epilogue=tuple(PostOpDesc(kind, p0, p1, e.operand.matrix(_Slot.POST + i) if e.operand is not None
                                          else None) for i, ((kind, p0, p1, _), e) in enumerate(zip(epi, epilogue))),
            ).encode()
        kernel = dev.gemm_kernel(descriptor, descriptor)
    except FFAccelError as e:
        raise e.renamed(_MATMUL_NAMES) from None
    dev.frontend_plans[key] = kernel, descriptor
    return kernel, descriptor, False


def _d_dtype(p: _Problem) -> np.dtype:
    """D's NumPy dtype."""
    return np.dtype(DTYPES[p.d_dt].numpy)


def _to_library(r: np.ndarray, lib: Any) -> Any:
    """The result as an array of ``lib`` (zero copy through DLPack)."""
    if r.dtype == ml_dtypes.bfloat16:
        return lib.from_dlpack(r.view(np.int16)).view(lib.bfloat16)
    return lib.from_dlpack(r)


def _matmul_dlpack(dev: Device, a: Any, b: Any, c: Any, alpha: Any, beta: Any, trans_a: bool, trans_b: bool,
                   post_ops: tuple, out: Any, out_dtype: Any) -> Any:
    """matmul for arrays of another library: view them as NumPy, run, view the result back."""
    lib = _library(a)
    try:  # what NumPy takes as a dtype (np.float32, "float32", ml_dtypes.bfloat16) as it is: its str()
        # is "<class 'numpy.float32'>", which the name rule below cut to "float32'>" and refused
        np_out_dtype = out_dtype if out_dtype is None else np.dtype(out_dtype)
    except TypeError:  # a dtype of the caller's library (torch.float32): by name
        np_out_dtype = {"bfloat16": ml_dtypes.bfloat16}.get(str(out_dtype).rpartition(".")[2],
                                                            str(out_dtype).rpartition(".")[2])
    out_np = _from_dlpack(out, "out")
    r = _matmul(dev, _from_dlpack(a, "a"), _from_dlpack(b, "b"), _from_dlpack(c, "c"), alpha, beta, trans_a,
                trans_b, post_ops, out_np, np_out_dtype, None)
    return out if out is not None else _to_library(np.asarray(r), lib)


__all__ = ["matmul", "FFAccelError"]
