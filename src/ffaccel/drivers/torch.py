"""The ``torch`` driver: the op set on PyTorch, for any torch device (``torch:cpu``, ``torch:cuda:0``, ...).

Memory
    On ``cpu`` the driver's buffers are host memory (NumPy ``uint8`` arrays) that
    ``torch.from_numpy`` views without copying, so every runtime path (``Buffer.array``,
    front-ends, submissions) is zero copy. On any other device a buffer is a ``uint8``
    tensor on that device wrapped in :class:`TorchMemory`, which follows
    :class:`ffaccel.abi.DeviceMemory`: submissions bind operands as strided tensors *on the
    device*; ``Buffer.read`` / ``Buffer.write`` copy bytes across, and host arrays handed to
    a front-end kernel are uploaded and the result copied back.

Arithmetic (each a way of meeting the spec's accumulate type and one final rounding)
    * f64, f32: ``torch.mm`` / ``bmm`` / ``baddbmm`` in that precision. The float32
      matmul precision is forced to ``"highest"`` for the call (no TF32 or bf16 shortcuts),
      and on CUDA reduced-precision (split-K) reductions are switched off likewise.
    * bf16 / f16: when the device has native support (see :func:`native_default`), a
      GEMM whose result is just the rounded f32 accumulation (alpha == 1, no C, no
      epilogue but relu, which commutes with rounding) runs as PyTorch's own low-precision
      GEMM, which accumulates in f32 and rounds once. Where PyTorch offers an f32 output
      (``mm(..., out_dtype=torch.float32)``, CUDA) every bf16/f16 GEMM uses it. Otherwise
      the inputs are widened to f32 (exact) and multiplied in f32, the epilogue runs in
      f32 and the result is rounded once (round to nearest even, overflow to inf).
    * int8 / uint8 -> int32: with native support, ``torch._int_mm`` (int8 x int8 ->
      int32, wrapping); uint8 operands are shifted to int8 (``u = s + 128``) and the
      shift is corrected exactly in int64 (row and column sums). Otherwise the inputs are
      widened to f32 and multiplied in chunks of k small enough that every partial sum is
      an integer below 2**24 (exact in f32), chunks summed in f64 (exact). The epilogue
      runs in int64 and is reduced modulo 2**32 after every step, as int32 hardware wraps.

Native support is decided per device: CUDA has it for bf16, f16 and int8; a CPU has it
for bf16 when it has AVX512_BF16 or AMX-BF16 and for int8 with VNNI or AMX-INT8 (on a CPU
without them PyTorch's bf16 and int8 GEMMs are scalar code, 30-40x slower than f32 GEMM).
``$FFACCEL_TORCH_NATIVE`` overrides it: ``auto`` (default), ``none``, or a comma list
of ``bf16``, ``f16``, ``int8``. The conformance suite judges every path.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import ml_dtypes
import numpy as np

from .openmp import passive_unless_chosen

# before PyTorch loads GNU OpenMP (it reads the policy once): its team's threads then sleep between
# GEMMs instead of spinning against NumPy's OpenBLAS workers (docs/pytorch.md, the torch driver's pools)
passive_unless_chosen()

import torch  # noqa: E402 - after the OpenMP policy is set

from ..abi import CopyOp, DeviceCaps, GemmOp, LruCache  # noqa: E402
from ..spec import DTYPES, OPERAND_POST_OPS, DType, ErrorCode, FFAccelError, PostOpKind, violation  # noqa: E402
from .base import Driver, GemmKernel  # noqa: E402
from .rounding import INT_F32_EXACT_CHUNK, round_to  # noqa: E402

TORCH_DTYPES: dict[DType, torch.dtype] = {
    DType.F64: torch.float64, DType.F32: torch.float32, DType.F16: torch.float16, DType.BF16: torch.bfloat16,
    DType.I8: torch.int8, DType.U8: torch.uint8, DType.I32: torch.int32,
}
NATIVE_KINDS = ("bf16", "f16", "int8")
NATIVE_ENV = "FFACCEL_TORCH_NATIVE"
_BF16_NP = np.dtype(ml_dtypes.bfloat16)


# --------------------------------------------------------------------------------------
# capabilities


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_default(device: torch.device) -> frozenset[str]:
    """Which low-precision GEMMs PyTorch runs natively (and fast) on ``device``.

    Examples
    --------
    >>> import torch
    >>> native_default(torch.device("cuda")) == {"bf16", "f16", "int8"}
    True
    """
    if device.type != "cpu":
        return frozenset(NATIVE_KINDS)
    flags = _cpu_flags()
    kinds = set()
    if flags & {"avx512_bf16", "amx_bf16"}:
        kinds.add("bf16")
    if flags & {"avx512_fp16", "amx_fp16"}:
        kinds.add("f16")
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        kinds.add("int8")
    return frozenset(kinds)


def _parse_native(spec: str | None, device: torch.device) -> frozenset[str]:
    from_env = spec is None
    spec = (spec if spec is not None else os.environ.get(NATIVE_ENV, "auto")).strip().lower()
    if spec in ("", "auto"):
        return native_default(device)
    if spec == "none":
        return frozenset()
    kinds = frozenset(s.strip() for s in spec.split(",") if s.strip())
    if not kinds <= set(NATIVE_KINDS):
        allowed = f"'auto', 'none' or a comma list of {NATIVE_KINDS}"
        if from_env:  # the variable is the bad input, not the device name
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, NATIVE_ENV,
                               f"the kinds of GEMM run by PyTorch's native kernels; got {NATIVE_ENV}={spec!r}, "
                               f"allowed {allowed}")
        raise violation("device.name", f"native={spec!r}", allowed)
    return kinds


# --------------------------------------------------------------------------------------
# memory


class TorchMemory:
    """A buffer on a non-host torch device (follows :class:`ffaccel.abi.DeviceMemory`)."""

    def __init__(self, size_bytes: int, device: torch.device) -> None:
        self.nbytes = size_bytes
        # padded to 8 bytes so that the storage can be viewed as any element type
        self.tensor = torch.zeros((size_bytes + 7) // 8 * 8, dtype=torch.uint8, device=device)
        self._typed: dict[DType, torch.Tensor] = {}

    def strided(self, dtype: DType, shape: tuple[int, int, int], strides_elems: tuple[int, int, int],
                offset_bytes: int) -> torch.Tensor:
        t_dt = TORCH_DTYPES[dtype]
        if 0 in shape:
            return torch.empty(shape, dtype=t_dt, device=self.tensor.device)
        typed = self._typed.get(dtype)
        if typed is None:
            typed = self._typed[dtype] = self.tensor.view(t_dt)
        return typed.as_strided(shape, strides_elems, offset_bytes // DTYPES[dtype].itemsize_bytes)

    def read_bytes(self, offset_bytes: int, count: int) -> np.ndarray:
        """A copy (the DeviceMemory contract): on the CPU ``.cpu()`` returns the tensor itself, and its
        ``.numpy()`` a view of device memory that a later write or GEMM would change under the caller."""
        part = self.tensor[offset_bytes:offset_bytes + count]
        return part.numpy().copy() if part.device.type == "cpu" else part.cpu().numpy()

    def write_bytes(self, offset_bytes: int, data: np.ndarray) -> None:
        self.tensor[offset_bytes:offset_bytes + data.size].copy_(torch.from_numpy(np.ascontiguousarray(data)))


def as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """A torch view of a NumPy array (zero copy on the host; bfloat16 included), moved to ``device``.

    Examples
    --------
    >>> import numpy as np
    >>> as_tensor(np.ones((2, 3), np.float32)).shape
    torch.Size([2, 3])
    """
    if isinstance(x, torch.Tensor):
        t = x
    else:
        bf16 = x.dtype == _BF16_NP
        if bf16:
            x = x.view(np.uint16)
        if x.flags.writeable:
            t = torch.from_numpy(x)
        else:  # inputs (broadcast views) are read-only; the driver never writes them
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(x)
        if bf16:
            t = t.view(torch.bfloat16)
    if device is not None and t.device != device:
        t = t.to(device)
    return t


# --------------------------------------------------------------------------------------
# precision guards


@contextlib.contextmanager
def _exact_matmul_settings(device: torch.device) -> Iterator[None]:
    """No TF32 / bf16 shortcuts for f32 GEMM and no reduced-precision reductions, for the call."""
    saved_prec = torch.get_float32_matmul_precision()
    if saved_prec != "highest":
        torch.set_float32_matmul_precision("highest")
    saved_cuda = None
    if device.type == "cuda":
        m = torch.backends.cuda.matmul
        saved_cuda = (m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction)
        m.allow_bf16_reduced_precision_reduction = False
        m.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        if saved_prec != "highest":
            torch.set_float32_matmul_precision(saved_prec)
        if saved_cuda is not None:
            m = torch.backends.cuda.matmul
            m.allow_bf16_reduced_precision_reduction, m.allow_fp16_reduced_precision_reduction = saved_cuda


def _needs_guard(device: torch.device) -> bool:
    return device.type != "cpu" or torch.get_float32_matmul_precision() != "highest"


# --------------------------------------------------------------------------------------
# GEMM building blocks


def _bmm(a: torch.Tensor, b: torch.Tensor, **kw: Any) -> torch.Tensor:
    """(batch, m, k) @ (batch, k, n); a broadcast operand (batch stride 0) folds into one mm."""
    if a.shape[0] == 1:
        return torch.mm(a[0], b[0], **kw).unsqueeze(0)
    if b.stride(0) == 0:
        return torch.matmul(a, b[0]) if not kw else torch.mm(a.reshape(-1, a.shape[2]), b[0], **kw).view(
            a.shape[0], a.shape[1], b.shape[2])
    if a.stride(0) == 0 and not kw:
        return torch.matmul(a[0], b)
    return torch.bmm(a, b, **kw)


def _int_mm_ok(device: torch.device, m: int, k: int, n: int) -> bool:
    """The shapes ``torch._int_mm`` accepts: any on CPU; CUDA needs m > 16 and k, n multiples of 8."""
    if device.type == "cpu":
        return True
    return m > 16 and k % 8 == 0 and n % 8 == 0 and k > 0


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """x as a row-major 2-D tensor whose strides are exactly (cols, 1).

    ``contiguous()`` is not enough: PyTorch calls a (1, k) view with strides (1, 1) contiguous
    (a stride along an extent-1 dimension is ignored), but a kernel may still use it as the
    leading dimension; ``torch._int_mm`` on AVX-512 VNNI CPUs returns garbage for it.
    """
    if x.stride() == (x.shape[1], 1):
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out.copy_(x)
    return out


def _int_native(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b (int8/uint8 mixes) as int64 holding the true value modulo 2**32, via torch._int_mm.

    uint8 u is shifted to int8 s = u - 128 and the shift corrected in int64:
    (sa + 128)(sb + 128) = sa@sb + 128 rowsum(sa) + 128 colsum(sb) + 128**2 k.
    """
    k = a.shape[-1]
    ua, ub = a.dtype == torch.uint8, b.dtype == torch.uint8
    sa = (a.to(torch.int16) - 128).to(torch.int8) if ua else a
    sb = (b.to(torch.int16) - 128).to(torch.int8) if ub else b
    out = torch.stack([torch._int_mm(_canonical(sa[i]), _canonical(sb[i])) for i in range(sa.shape[0])])
    out = out.to(torch.int64)
    if ub:
        out += 128 * sa.to(torch.int64).sum(-1, keepdim=True)
    if ua:
        out += 128 * sb.to(torch.int64).sum(-2, keepdim=True)
    if ua and ub:
        out += 128 * 128 * k
    return out


def _int_mm_into(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> None:
    """D = a @ b exactly (modulo 2**32) for host memory, with ``torch._int_mm`` writing int32 into
    D itself; uint8 operands shifted to int8 (``u ^ 0x80`` is ``u - 128``) and the shift corrected
    as in :func:`_int_native`, in wrapping uint32 on D. The shifts and sums are NumPy's
    single-threaded passes: no OpenMP barrier around small work on a busy machine."""
    k = a.shape[-1]
    ua, ub = a.dtype == np.uint8, b.dtype == np.uint8
    sa = np.bitwise_xor(a, np.uint8(0x80)).view(np.int8) if ua else a
    sb = np.bitwise_xor(b, np.uint8(0x80)).view(np.int8) if ub else b
    dt = as_tensor(d)
    for i in range(d.shape[0]):
        x, y = _canonical(as_tensor(sa[i])), _canonical(as_tensor(sb[i]))
        if dt[i].is_contiguous():
            torch._int_mm(x, y, out=dt[i])
        else:
            dt[i].copy_(torch._int_mm(x, y))
    du = d.view(np.uint32)
    if ub:  # + 128 rowsum(sa): an (batch, m, 1) vector
        rows = 128 * np.sum(sa, axis=2, dtype=np.int64, keepdims=True)
        np.add(du, (rows & 0xFFFF_FFFF).astype(np.uint32), out=du)
    if ua:  # + 128 colsum(sb) (+ 128**2 k when both were shifted): an (batch, 1, n) vector
        cols = 128 * np.sum(sb, axis=1, dtype=np.int64, keepdims=True) + (128 * 128 * k if ub else 0)
        np.add(du, (cols & 0xFFFF_FFFF).astype(np.uint32), out=du)


def _int_widened(a: torch.Tensor, b: torch.Tensor, chunk: int) -> torch.Tensor:
    """Exact a @ b as int64 through f32 GEMMs on k chunks (partial sums < 2**24) summed in f64."""
    k = a.shape[-1]
    af, bf = a.to(torch.float32), b.to(torch.float32)
    if k <= chunk:
        return _bmm(af, bf).to(torch.int64)
    total = torch.zeros((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.float64, device=a.device)
    for lo in range(0, k, chunk):
        hi = min(k, lo + chunk)
        total += _bmm(af[:, :, lo:hi], bf[:, lo:hi, :])
    return total.to(torch.int64)  # exact: |total| <= k * 2**16 < 2**53


def _wrap32(x: torch.Tensor) -> torch.Tensor:
    """int64 -> the int32 two's-complement value modulo 2**32, kept in int64."""
    return x.to(torch.int32).to(torch.int64)


Step = Callable[[torch.Tensor, tuple], torch.Tensor]


def _float_steps(op: GemmOp, dev: torch.device) -> list[Step]:
    steps: list[Step] = []
    for i, p in enumerate(op.epilogue):
        kind = p.kind
        if kind in OPERAND_POST_OPS:
            # an f16/bf16 operand is widened exactly by type promotion into x's f32
            steps.append(lambda x, epi, i=i: x.add_(as_tensor(epi[i], dev)))
        elif kind == PostOpKind.RELU:
            steps.append(lambda x, epi: x.clamp_(min=0))  # NaN propagates
        elif kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH):
            approx = "none" if kind == PostOpKind.GELU_ERF else "tanh"
            steps.append(lambda x, epi, a=approx: torch.nn.functional.gelu(x, approximate=a))
        elif kind == PostOpKind.CLAMP:
            lo, hi = float(p.param0), float(p.param1)
            steps.append(lambda x, epi, lo=lo, hi=hi: x.clamp_(lo, hi))
        elif kind == PostOpKind.SCALE:
            s = float(p.param0)
            steps.append(lambda x, epi, s=s: x.mul_(s))
        else:  # pragma: no cover - the validator admits only known kinds
            raise ValueError(f"unknown post-op {kind!r}")
    return steps


def _int_steps(op: GemmOp, dev: torch.device) -> list[Step]:
    steps: list[Step] = []
    for i, p in enumerate(op.epilogue):
        kind = p.kind
        if kind in OPERAND_POST_OPS:
            steps.append(lambda x, epi, i=i: _wrap32(x + as_tensor(epi[i], dev).to(torch.int64)))
        elif kind == PostOpKind.RELU:
            steps.append(lambda x, epi: x.clamp_(min=0))
        elif kind == PostOpKind.CLAMP:
            lo, hi = int(p.param0), int(p.param1)
            steps.append(lambda x, epi, lo=lo, hi=hi: x.clamp_(lo, hi))
        elif kind == PostOpKind.SCALE:
            s = int(p.param0)
            steps.append(lambda x, epi, s=s: _wrap32(x * s))
        else:  # pragma: no cover - the validator refuses gelu for int32
            raise ValueError(f"post-op {kind!r} is not defined for int32 outputs")
    return steps


def _store(d: np.ndarray | torch.Tensor, x: torch.Tensor, dev: torch.device) -> None:
    """Write x into D's windows (rounding once to D's dtype: PyTorch casts round to nearest even)."""
    as_tensor(d).copy_(x)


def _noop(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
    return None


# --------------------------------------------------------------------------------------
# the driver


class TorchDriver(Driver):
    """GEMM and COPY on PyTorch, for any torch device.

    Parameters
    ----------
    device : str
        A torch device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` ...
        ``ffaccel.open("torch:cuda:1")`` passes ``"cuda:1"`` here.
    native : str, optional
        Which low-precision GEMMs run as PyTorch's native kernels: ``"auto"``, ``"none"``
        or a comma list of ``bf16``, ``f16``, ``int8``. Default ``$FFACCEL_TORCH_NATIVE``,
        else ``"auto"`` (what the device runs fast, see :func:`native_default`).
    host_memory : bool, optional
        Keep buffers in host memory (NumPy, zero copy). Default: only on ``cpu``. False on
        ``cpu`` gives the device-memory path a GPU takes (:class:`TorchMemory`), for testing it.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> ffaccel.matmul(np.eye(2, dtype=np.float32), np.ones((2, 2), np.float32), device="torch:cpu")
    array([[1., 1.],
           [1., 1.]], dtype=float32)
    """

    name = "torch"
    version = "1.0"
    description = "PyTorch on any torch device (torch:cpu, torch:cuda, ...); exact int8"

    def __init__(self, device: str = "cpu", native: str | None = None, host_memory: bool | None = None) -> None:
        try:
            dev = torch.device(device)
            torch.empty(1, device=dev)  # the device exists and this build can use it
        except (RuntimeError, AssertionError, TypeError) as e:
            raise violation("device.name", f"torch:{device}", f"torch:cpu or a torch device this PyTorch build "
                            f"can use ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        self.device = dev
        self.native = _parse_native(native, dev)
        self.host_visible = dev.type == "cpu" if host_memory is None else bool(host_memory)
        if self.host_visible and dev.type != "cpu":
            raise violation("device.name", f"torch:{device} with host memory", "host memory only for torch:cpu")
        self._out_f32 = self._probe_out_dtype()
        self._plans: LruCache[GemmOp, GemmKernel] = LruCache(256)

    def _probe_out_dtype(self) -> bool:
        """Whether this device's PyTorch offers bf16/f16 GEMM with an f32 output (``mm(out_dtype=)``)."""
        x = torch.ones((2, 2), dtype=torch.bfloat16, device=self.device)
        try:
            return torch.mm(x, x, out_dtype=torch.float32).dtype == torch.float32
        except (RuntimeError, TypeError, NotImplementedError):
            return False

    def caps(self) -> DeviceCaps:
        return DeviceCaps()

    def thread_pool(self) -> str:
        """``"torch"``: PyTorch's own intra-op pool on the CPU; ``"none"`` on other devices."""
        return "torch" if self.device.type == "cpu" else "none"

    def memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.get_device_properties(self.device).total_memory)
        return super().memory_bytes()

    def alloc(self, size_bytes: int) -> np.ndarray | TorchMemory:
        """Host memory (NumPy, viewed by torch without copies) on ``cpu``; device memory elsewhere."""
        if self.host_visible:
            return np.zeros(size_bytes, np.uint8)
        try:
            return TorchMemory(size_bytes, self.device)
        except torch.OutOfMemoryError:
            raise MemoryError(f"{self.device}: cannot allocate {size_bytes} bytes") from None

    # -- GEMM -------------------------------------------------------------------------
    def prepare_gemm(self, op: GemmOp) -> GemmKernel:
        """A kernel ``(a, b, c, d, epi) -> None`` for one validated geometry.

        The kernel takes NumPy arrays (host memory) or torch tensors (this device's memory).
        """
        if op.batch == 0 or op.m == 0 or op.n == 0:
            return _noop
        kernel = self._plan_int(op) if op.combo.is_int else self._plan_float(op)
        if not _needs_guard(self.device):
            return kernel
        dev = self.device

        def guarded(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
            with _exact_matmul_settings(dev):
                kernel(a, b, c, d, epi)

        return guarded

    def gemm(self, op: GemmOp, a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
        """D = epilogue(alpha * op(A) @ op(B) + beta * C), see :mod:`ffaccel.drivers.base`."""
        kernel = self._plans.peek(op) or self._plans.get(op)
        if kernel is None:
            kernel = self.prepare_gemm(op)
            self._plans.put(op, kernel)
        kernel(a, b, c, d, epi)

    def _plan_float(self, op: GemmOp) -> GemmKernel:
        combo, dev = op.combo, self.device
        acc = TORCH_DTYPES[combo.acc]
        low = {DType.BF16: "bf16", DType.F16: "f16"}.get(combo.a)
        native = low is not None and low in self.native
        alpha, beta = float(op.alpha), float(op.beta)
        reads_ab, reads_c = op.reads_ab, op.reads_c
        steps = _float_steps(op, dev)
        direct = combo.d == combo.acc and low is None
        shape = (op.batch, op.m, op.n)
        # the native result is round(f32 accumulation): right when nothing comes between the two
        rounded_ok = (native and combo.d == combo.a and alpha == 1.0 and not reads_c and reads_ab
                      and all(p.kind == PostOpKind.RELU for p in op.epilogue))
        out_f32 = native and self._out_f32

        if rounded_ok and not out_f32:
            relu = bool(op.epilogue)

            def native_kernel(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
                x = _bmm(as_tensor(a, dev), as_tensor(b, dev))
                if relu:
                    x.clamp_(min=0)
                _store(d, x, dev)

            return native_kernel

        if direct and not steps and reads_ab and not reads_c and alpha == 1.0:
            def plain(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:  # the common case: D = A @ B
                dt = as_tensor(d)
                if dt.device == dev and dt.is_contiguous():
                    if op.batch == 1:
                        torch.mm(as_tensor(a, dev)[0], as_tensor(b, dev)[0], out=dt[0])
                    else:
                        torch.bmm(as_tensor(a, dev), as_tensor(b, dev), out=dt)
                else:
                    dt.copy_(_bmm(as_tensor(a, dev), as_tensor(b, dev)))

            return plain

        def kernel(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
            if reads_ab:
                at, bt = as_tensor(a, dev), as_tensor(b, dev)
                if out_f32:
                    x = _bmm(at, bt, out_dtype=acc)
                else:
                    if low is not None:
                        at, bt = at.to(acc), bt.to(acc)  # exact widening
                    if reads_c and alpha == 1.0:  # one baddbmm: beta * C + A @ B
                        # (never with alpha != 1: MKL's small f32 GEMMs scale an operand by alpha
                        # before the product, so alpha * A overflows (inf * 0 = NaN) or underflows
                        # where alpha * (A @ B) is finite: measured, torch 2.13 at 8x8x8)
                        ct = as_tensor(c, dev).to(acc)
                        x = torch.baddbmm(ct.expand(shape), at, bt, beta=beta)
                        return self._finish(x, d, epi, steps)
                    x = _bmm(at, bt)
                if alpha != 1.0:
                    x.mul_(alpha)
                if reads_c:
                    x.add_(as_tensor(c, dev).to(acc), alpha=beta)
            elif reads_c:  # alpha == 0 or k == 0: A and B are not read
                x = as_tensor(c, dev).to(acc) * beta
            else:
                x = torch.zeros(shape, dtype=acc, device=dev)
            self._finish(x, d, epi, steps)

        return kernel

    @staticmethod
    def _finish(x: torch.Tensor, d: Any, epi: tuple, steps: list[Step]) -> None:
        for s in steps:
            x = s(x, epi)
        as_tensor(d).copy_(x)  # one rounding to D's dtype

    def _plan_int(self, op: GemmOp) -> GemmKernel:
        dev = self.device
        native = "int8" in self.native and _int_mm_ok(dev, op.m, op.k, op.n)
        chunk = INT_F32_EXACT_CHUNK[(op.combo.a, op.combo.b)]
        alpha, beta = int(op.alpha), int(op.beta)
        reads_ab, reads_c = op.reads_ab, op.reads_c
        steps = _int_steps(op, dev)
        shape = (op.batch, op.m, op.n)
        # D = A @ B in host memory (torch:cpu): the int32 product straight into D, no int64 passes
        direct = native and dev.type == "cpu" and reads_ab and alpha == 1 and not reads_c and not steps

        def kernel(a: Any, b: Any, c: Any, d: Any, epi: tuple) -> None:
            if direct and isinstance(d, np.ndarray) and isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
                _int_mm_into(a, b, d)
                return
            if reads_ab:
                at, bt = as_tensor(a, dev), as_tensor(b, dev)
                x = _int_native(at, bt) if native else _int_widened(at, bt, chunk)
                if alpha != 1:
                    x = _wrap32(x) * alpha
                x = _wrap32(x)
                if reads_c:
                    x = _wrap32(x + as_tensor(c, dev).to(torch.int64) * beta)
            elif reads_c:
                x = _wrap32(as_tensor(c, dev).to(torch.int64) * beta)
            else:
                x = torch.zeros(shape, dtype=torch.int64, device=dev)
            for s in steps:
                x = s(x, epi)
            as_tensor(d).copy_(x.to(torch.int32))

        return kernel

    # -- COPY -------------------------------------------------------------------------
    def copy(self, op: CopyOp, src: Any, dst: Any) -> None:
        """dst = src converted to dst's dtype, rounded once to nearest even.

        Host memory goes through the NumPy conversions of the base driver. On a device,
        PyTorch's casts are single roundings except from f64 to f16/bf16, which round
        through f32; those go through :func:`ffaccel.drivers.rounding.round_to` on the host.
        """
        if isinstance(src, np.ndarray):
            with np.errstate(all="ignore"):  # overflow to inf is the intended result
                super().copy(op, src, dst)
            return
        if op.src.dtype == DType.F64 and op.dst.dtype in (DType.F16, DType.BF16):
            host = round_to(src.cpu().numpy(), op.dst.dtype)
            if op.dst.dtype == DType.BF16:
                dst.copy_(torch.from_numpy(np.ascontiguousarray(host).view(np.uint16)).view(torch.bfloat16))
            else:
                dst.copy_(torch.from_numpy(np.ascontiguousarray(host)))
            return
        dst.copy_(src)


__all__ = ["NATIVE_ENV", "TORCH_DTYPES", "TorchDriver", "TorchMemory", "as_tensor", "native_default"]
