"""A minimal ctypes binding of oneDNN's matmul primitive (the optional ``onednn`` extra).

oneDNN (``pip install 'ffaccel[onednn]'``, PyPI's ``onednn-cpu-gomp``: a C library with no
Python part and no compiler needed) has exactly this spec's GEMM as one primitive:
strided and batched operands, f32 / bf16 / u8 x s8 inputs, an f32 or s32 accumulator,
and fused post-ops (``sum`` for beta * C, eltwise relu / gelu / clip / linear, binary add
for bias and residual). It dispatches to VNNI, AVX512_BF16 and AMX where the CPU has them.
The ``cpu`` driver uses it where it measured faster than OpenBLAS (see ``docs/kernels.md``);
this module only wraps the C API:

* :func:`library` loads ``libdnnl`` once (``$FFACCEL_ONEDNN_LIB`` names the file; otherwise
  the copy the wheel installs under ``sys.prefix/lib``, then the system's) and checks the
  enum values this binding relies on against the library's own names for them;
* :class:`Matmul` is one created primitive for fixed dimensions, strides, dtypes and
  post-ops, called with raw pointers.

Only what ffaccel needs is bound. Errors from the library raise :class:`OneDNNError`
(creation failures mean "this geometry is not supported here": callers fall back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .openmp import passive_unless_chosen

ENV_LIB = "FFACCEL_ONEDNN_LIB"

# dnnl_data_type_t
F16, BF16, F32, S32, S8, U8 = 1, 2, 3, 4, 5, 6
# dnnl_alg_kind_t
RELU, LINEAR, GELU_TANH, CLIP, GELU_ERF, BINARY_ADD = 0x20, 0x26, 0x2B, 0x2E, 0x31, 0x1FFF0
_ALG_NAMES = {RELU: "eltwise_relu", LINEAR: "eltwise_linear", GELU_TANH: "eltwise_gelu_tanh",
              CLIP: "eltwise_clip", GELU_ERF: "eltwise_gelu_erf", BINARY_ADD: "binary_add"}
_DT_NAMES = {F16: "f16", BF16: "bf16", F32: "f32", S32: "s32", S8: "s8", U8: "u8"}
# execution argument indices (dnnl_types.h)
ARG_SRC, ARG_SRC_1, ARG_DST, ARG_WEIGHTS = 1, 2, 17, 33
_ARG_POST_OP_BASE = 32768
_QUERY_IMPL_INFO_STR = 8
_MAX_DIMS = 12
_CPU_ENGINE = 1
_STREAM_IN_ORDER = 1
_FPMATH_STRICT = 0

_DIMS = ctypes.c_int64 * _MAX_DIMS
_p = ctypes.c_void_p

#: NumPy dtype -> oneDNN data type, for the dtypes ffaccel hands to the library.
NUMPY_TO_DNNL: dict[str, int] = {"float32": F32, "bfloat16": BF16, "float16": F16, "int32": S32,
                                 "int8": S8, "uint8": U8}


class OneDNNError(RuntimeError):
    """A oneDNN call returned a status other than success."""


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _p)]


@dataclass(frozen=True)
class Library:
    """The loaded library: its handle, one CPU engine and one in-order stream."""

    lib: ctypes.CDLL
    path: str
    version: str
    isa: int
    engine: int
    stream: int

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise OneDNNError(f"oneDNN {what} failed with status {status}")

    @property
    def int8_exact(self) -> bool:
        """Whether u8 x s8 -> s32 sums exactly here: VNNI or AMX instructions (vpdpbusd,
        tdpbusd) add 32-bit products without saturation; older ISAs' vpmaddubsw saturates
        pairs to 16 bits, so the u8 x s8 product is then not exact."""
        return self.isa & 0x40 != 0 or self.isa == 0xF  # avx512_core_vnni and above, or avx2_vnni


def _candidates() -> list[str]:
    env = os.environ.get(ENV_LIB, "").strip()
    if env:
        return [env]
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libdnnl.so*")))
    sys_lib = ctypes.util.find_library("dnnl")
    return found + ([sys_lib] if sys_lib else [])


def _bind(lib: ctypes.CDLL) -> None:
    i, c = ctypes.c_int, ctypes.c_char_p
    sigs = {
        "dnnl_engine_create": [ctypes.POINTER(_p), i, ctypes.c_size_t],
        "dnnl_stream_create": [ctypes.POINTER(_p), _p, ctypes.c_uint],
        "dnnl_stream_wait": [_p],
        "dnnl_memory_desc_create_with_strides": [ctypes.POINTER(_p), i, _DIMS, i, _DIMS],
        "dnnl_memory_desc_destroy": [_p],
        "dnnl_memory_create": [ctypes.POINTER(_p), _p, _p, _p],
        "dnnl_memory_set_data_handle": [_p, _p],
        "dnnl_memory_destroy": [_p],
        "dnnl_primitive_attr_create": [ctypes.POINTER(_p)],
        "dnnl_primitive_attr_destroy": [_p],
        "dnnl_primitive_attr_set_post_ops": [_p, _p],
        "dnnl_primitive_attr_set_fpmath_mode": [_p, i],
        "dnnl_post_ops_create": [ctypes.POINTER(_p)],
        "dnnl_post_ops_destroy": [_p],
        "dnnl_post_ops_append_sum": [_p, ctypes.c_float, ctypes.c_int32, i],
        "dnnl_post_ops_append_eltwise": [_p, i, ctypes.c_float, ctypes.c_float],
        "dnnl_post_ops_append_binary": [_p, i, _p],
        "dnnl_matmul_primitive_desc_create": [ctypes.POINTER(_p), _p, _p, _p, _p, _p, _p],
        "dnnl_primitive_desc_query": [_p, i, i, _p],
        "dnnl_primitive_desc_destroy": [_p],
        "dnnl_primitive_create": [ctypes.POINTER(_p), _p],
        "dnnl_primitive_execute": [_p, _p, i, ctypes.POINTER(_ExecArg)],
        "dnnl_primitive_destroy": [_p],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    for name in ("dnnl_dt2str", "dnnl_alg_kind2str"):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [i], c
    lib.dnnl_get_effective_cpu_isa.argtypes, lib.dnnl_get_effective_cpu_isa.restype = [], i
    lib.dnnl_version.argtypes, lib.dnnl_version.restype = [], ctypes.POINTER(ctypes.c_int * 3)


@functools.lru_cache(maxsize=1)
def library() -> Library | None:
    """The loaded oneDNN library, or None when it is not installed (or fails its checks).

    Examples
    --------
    >>> lib = library()
    >>> lib is None or lib.version.startswith("3.")
    True
    """
    candidates = _candidates()
    if candidates:
        # measured here (2 cores): with libgomp's default policy every oneDNN int8 call waited on
        # timer ticks (8.0 ms for 64^3, 512^3 and 1024^3 alike; 48 ms at 2048^3), passive 0.03,
        # 0.7, 5.0 and 41.5 ms
        passive_unless_chosen()
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            _bind(lib)
        except (OSError, AttributeError):
            continue
        # the enum values above are this binding's assumptions: the library names them
        if any(lib.dnnl_dt2str(v).decode() != n for v, n in _DT_NAMES.items()):
            continue
        if any(lib.dnnl_alg_kind2str(v).decode() != n for v, n in _ALG_NAMES.items()):
            continue
        ver = lib.dnnl_version().contents
        if ver[0] != 3:
            continue
        engine, stream = _p(), _p()
        if lib.dnnl_engine_create(ctypes.byref(engine), _CPU_ENGINE, 0) != 0:
            continue
        if lib.dnnl_stream_create(ctypes.byref(stream), engine, _STREAM_IN_ORDER) != 0:
            continue
        return Library(lib, path, f"{ver[0]}.{ver[1]}.{ver[2]}", lib.dnnl_get_effective_cpu_isa(),
                       engine.value, stream.value)
    return None


def dnnl_type(dtype: np.dtype) -> int:
    """oneDNN's data type for a NumPy dtype (KeyError for one it has no use for here)."""
    return NUMPY_TO_DNNL[np.dtype(dtype).name]


@dataclass(frozen=True)
class Operand:
    """A strided tensor's description: oneDNN data type, dims and element strides (same length)."""

    dtype: int
    dims: tuple[int, ...]
    strides: tuple[int, ...]

    @staticmethod
    def of(x: np.ndarray, dtype: int | None = None) -> Operand:
        """The description of a NumPy array (strides in elements; 0 strides only on size-1 dims)."""
        item = x.itemsize
        strides = tuple(s // item for s in x.strides)
        strides = tuple(st if n > 1 else 0 for n, st in zip(x.shape, strides))
        return Operand(dnnl_type(x.dtype) if dtype is None else dtype, tuple(x.shape), strides)


def _desc(lib: Library, op: Operand) -> int:
    dims, strides = _DIMS(*op.dims), _DIMS()
    # a size-1 dimension's stride is irrelevant; oneDNN wants one consistent with a dense layout
    dense = 1
    for j in reversed(range(len(op.dims))):
        strides[j] = op.strides[j] if op.dims[j] > 1 else dense
        dense = max(dense, strides[j] * op.dims[j])
    md = _p()
    lib.check(lib.lib.dnnl_memory_desc_create_with_strides(ctypes.byref(md), len(op.dims), dims, op.dtype, strides),
              f"memory descriptor {op}")
    return md.value


@dataclass(frozen=True)
class DnnlPostOp:
    """One oneDNN post-op: ``kind`` "sum" (scale in ``alpha``), "eltwise" (``alg``, ``alpha``,
    ``beta``) or "binary_add" (``operand``); not the spec's post-ops, which the driver maps here."""

    kind: str
    alg: int = 0
    alpha: float = 0.0
    beta: float = 0.0
    operand: Operand | None = None


class _Primitive:
    """A created primitive with one memory object per execution argument, called with raw pointers.

    Calls are serialised per primitive (its memory objects hold the pointers of the call in flight).
    """

    impl = "?"

    def _build(self, lib: Library, make_pd, descs: Sequence[tuple[int, int]]) -> None:
        """``make_pd(pd_pointer) -> status`` creates the primitive descriptor; ``descs`` lists
        (argument index, memory descriptor) in the order :meth:`__call__` takes pointers."""
        L = lib.lib
        pd, prim = _p(), _p()
        try:
            lib.check(make_pd(ctypes.byref(pd)), f"{type(self).__name__} descriptor")
            name = ctypes.c_char_p()
            L.dnnl_primitive_desc_query(pd, _QUERY_IMPL_INFO_STR, 0, ctypes.byref(name))
            self.impl = (name.value or b"?").decode()
            lib.check(L.dnnl_primitive_create(ctypes.byref(prim), pd), "primitive")
            self._prim = prim.value
            for _, md in descs:
                mem = _p()
                lib.check(L.dnnl_memory_create(ctypes.byref(mem), md, lib.engine, None), "memory")
                self._mems.append(mem.value)
        finally:
            if pd:
                L.dnnl_primitive_desc_destroy(pd)
        self._args = (_ExecArg * len(descs))(*[_ExecArg(a, m) for (a, _), m in zip(descs, self._mems)])
        self._nargs = len(descs)
        self._set = L.dnnl_memory_set_data_handle
        self._exec = L.dnnl_primitive_execute
        self._wait = L.dnnl_stream_wait
        self._call_lock = threading.Lock()

    def __call__(self, *pointers: int) -> None:
        """Run once, with one pointer per argument in the order the constructor documents."""
        with self._call_lock:
            for mem, ptr in zip(self._mems, pointers):
                self._set(mem, ptr)
            status = self._exec(self._prim, self._lib.stream, self._nargs, self._args)
            if status == 0:
                status = self._wait(self._lib.stream)
        if status != 0:
            raise OneDNNError(f"oneDNN {self.impl} failed with status {status}")

    def close(self) -> None:
        L = self._lib.lib
        for mem in self._mems:
            L.dnnl_memory_destroy(mem)
        self._mems = []
        if self._prim:
            L.dnnl_primitive_destroy(self._prim)
            self._prim = None

    def __del__(self) -> None:  # primitives are few and cached by their users
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


class Matmul(_Primitive):
    """One oneDNN matmul primitive: ``dst = post_ops(src @ weights)`` for fixed descriptions.

    ``src`` is (batch, m, k), ``weights`` (batch, k, n), ``dst`` (batch, m, n); a batch of 1
    in src or weights broadcasts it. Called with pointers to src, weights, dst and then each
    binary post-op's operand. Raises :class:`OneDNNError` when the library cannot create it
    (a combination or layout it does not implement on this CPU).
    """

    def __init__(self, lib: Library, src: Operand, weights: Operand, dst: Operand,
                 post_ops: Sequence[DnnlPostOp] = ()) -> None:
        self._lib, self._mems, self._prim = lib, [], None
        L = lib.lib
        mds: list[int] = []
        attr, po = _p(), _p()
        try:
            for o in (src, weights, dst):
                mds.append(_desc(lib, o))
            lib.check(L.dnnl_primitive_attr_create(ctypes.byref(attr)), "attr")
            lib.check(L.dnnl_primitive_attr_set_fpmath_mode(attr, _FPMATH_STRICT), "fpmath")
            lib.check(L.dnnl_post_ops_create(ctypes.byref(po)), "post-ops")
            binary: list[tuple[int, int]] = []  # (argument index, descriptor)
            for i, p in enumerate(post_ops):
                if p.kind == "sum":
                    lib.check(L.dnnl_post_ops_append_sum(po, p.alpha, 0, 0), "sum post-op")
                elif p.kind == "eltwise":
                    lib.check(L.dnnl_post_ops_append_eltwise(po, p.alg, p.alpha, p.beta), "eltwise post-op")
                else:
                    assert p.operand is not None
                    md = _desc(lib, p.operand)
                    mds.append(md)
                    lib.check(L.dnnl_post_ops_append_binary(po, BINARY_ADD, md), "binary post-op")
                    binary.append((_ARG_POST_OP_BASE * (i + 1) | ARG_SRC_1, md))
            lib.check(L.dnnl_primitive_attr_set_post_ops(attr, po), "set post-ops")
            self._build(lib, lambda pd: L.dnnl_matmul_primitive_desc_create(pd, lib.engine, mds[0], mds[1], None,
                                                                            mds[2], attr),
                        [(ARG_SRC, mds[0]), (ARG_WEIGHTS, mds[1]), (ARG_DST, mds[2]), *binary])
        except BaseException:
            self.close()
            raise
        finally:
            for md in mds:
                L.dnnl_memory_desc_destroy(md)
            if po:
                L.dnnl_post_ops_destroy(po)
            if attr:
                L.dnnl_primitive_attr_destroy(attr)


__all__ = ["BF16", "CLIP", "F16", "F32", "GELU_ERF", "GELU_TANH", "LINEAR", "Library", "Matmul", "NUMPY_TO_DNNL",
           "OneDNNError", "Operand", "DnnlPostOp", "RELU", "S32", "S8", "U8", "dnnl_type", "library"]
