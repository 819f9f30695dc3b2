"""PyTorch offload mode: unchanged PyTorch code runs its GEMMs on an ffaccel device.

Interception: a :class:`torch.overrides.TorchFunctionMode`. It sees PyTorch's Python-level
calls *before* autograd and before they are lowered to ATen, which is what this needs:

* whether a call needs grad is still known (``torch.is_grad_enabled()`` and the inputs'
  ``requires_grad``); below autograd (a ``TorchDispatchMode``) that is gone;
* ``F.linear(x, W, b)`` and ``addmm`` arrive whole, so the bias (and the activation of
  ``torch._addmm_activation``) become the GEMM's fused epilogue;
* ``F.scaled_dot_product_attention`` arrives whole (ATen would run it as one fused CPU
  kernel with no GEMM to intercept); it is decomposed here into
  ``S = scale * Q K^T (+ mask)`` on the device (scale and additive mask fused), softmax in
  PyTorch, ``S V`` on the device.

Composite functions that PyTorch implements as one call of its own (``nn.MultiheadAttention``
and ``nn.TransformerEncoderLayer``'s fused fast paths, ``F.multi_head_attention_forward``) run
in PyTorch untouched: a function mode does not see inside them. Everything that is not a GEMM
runs in PyTorch as usual. Every GEMM-family call is counted in :attr:`OffloadSession.stats`,
as offloaded or as a host call with its reason; nothing falls back silently.

Tensors are handed over without copies: a CPU tensor's memory is viewed as a NumPy array
(``Tensor.numpy()``, bfloat16 through an int16 view) and the device's result is viewed back
as a tensor (``torch.from_numpy``). Operands that the GEMM operand model cannot describe
(e.g. batch dimensions that no single stride spans) are copied once by the front-end.

Thread pools: PyTorch (OpenMP) and OpenBLAS (the ``cpu`` driver) both spin-wait after a
parallel call; alternating them on a small machine makes each wait for the other's
spinning threads (measured here: 20x slower). With a device whose GEMMs run outside
PyTorch, the session therefore runs PyTorch's own (non-GEMM) work on one thread
(``torch.set_num_threads(1)``) and restores the setting on exit: the GEMMs, which are the
bulk of the work, keep every core. ``threads=`` overrides this.

Attention layers: ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` have a fused
inference fast path (``torch._native_multi_head_attention`` and friends) whose matmuls no
Python-level hook can see. The session turns that fast path off
(``torch.backends.mha.set_fastpath_enabled(False)``) and restores it on exit, so those layers
take their ordinary path — linear projections, ``scaled_dot_product_attention`` — whose GEMMs
the session offloads and counts.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..runtime import Device, resolve_device
from ..spec import FFAccelError, violation
from . import post
from .numpy_api import matmul

_FLOAT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
          torch.bfloat16: ml_dtypes.bfloat16}

#: Reasons a GEMM-family call stays in PyTorch (keys of ``stats["host_reasons"]``).
GRAD = "grad required"
DTYPE = "dtype unsupported"
SHAPE = "shape unsupported"
MEMORY = "not in host memory"
ARGS = "arguments unsupported"
REFUSED = "device refused"


class _Host(Exception):
    """Raised by a handler: run this call in PyTorch, for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a CPU tensor (bfloat16 as ml_dtypes.bfloat16).

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype(bfloat16)
    """
    t = t.detach().resolve_neg().resolve_conj()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def to_torch(x: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a NumPy array (ml_dtypes.bfloat16 as torch.bfloat16)."""
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


class OffloadSession:
    """What :func:`offload` returns: the device, and the statistics of the calls it saw.

    ``stats`` keys: ``offloaded_calls``, ``host_calls``, ``offloaded_flops``, ``host_flops``
    (GEMM FLOPs, 2 m n k per GEMM), ``host_reasons`` (reason -> calls) and
    ``host_flops_by_reason``; ``offloaded_fraction`` is offloaded_flops / all GEMM FLOPs.
    """

    def __init__(self, device: "str | Device | None", threads: "int | str | None") -> None:
        if not (threads in ("auto", None) or (isinstance(threads, int) and not isinstance(threads, bool)
                                              and threads >= 1)):
            raise violation("api.post_op", repr(threads), "'auto', None or an integer >= 1", arg="threads")
        self.device = resolve_device(device)
        self._threads = threads
        self._saved_threads: int | None = None
        self._saved_fastpath: bool | None = None
        self._mode: _Mode | None = None
        self.stats: dict[str, Any] = {}
        self.reset()

    def reset(self) -> None:
        """Zero the statistics."""
        self.stats.clear()
        self.stats.update(offloaded_calls=0, host_calls=0, offloaded_flops=0, host_flops=0,
                          host_reasons=Counter(), host_flops_by_reason=Counter(), offloaded_fraction=1.0)

    def _count(self, offloaded: bool, flops: int, reason: str = "") -> None:
        s = self.stats
        if offloaded:
            s["offloaded_calls"] += 1
            s["offloaded_flops"] += flops
        else:
            s["host_calls"] += 1
            s["host_flops"] += flops
            s["host_reasons"][reason] += 1
            s["host_flops_by_reason"][reason] += flops
        total = s["offloaded_flops"] + s["host_flops"]
        s["offloaded_fraction"] = s["offloaded_flops"] / total if total else 1.0

    def __enter__(self) -> "OffloadSession":
        want = self._threads
        if want == "auto":  # one spinning pool at a time (see the module docstring)
            want = None if self.device.info().name == "torch" else 1
        if want is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(want))
        mha = getattr(torch.backends, "mha", None)
        self._saved_fastpath = mha.get_fastpath_enabled() if mha is not None else None
        if mha is not None:  # the fused attention fast path hides its GEMMs (see the module docstring)
            mha.set_fastpath_enabled(False)
        self._mode = _Mode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None
        self._mode.__exit__(*exc)
        self._mode = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_fastpath is not None:
            torch.backends.mha.set_fastpath_enabled(self._saved_fastpath)
            self._saved_fastpath = None


def offload(device: "str | Device | None" = None, *, threads: "int | str | None" = "auto") -> OffloadSession:
    """Run PyTorch's GEMM-family calls on an ffaccel device inside a ``with`` block.

    Parameters
    ----------
    device : str or Device, optional
        Device name (see :func:`ffaccel.devices`) or an open Device; default
        ``$FFACCEL_DEVICE``, else ``"cpu"``.
    threads : "auto", int or None
        PyTorch's intra-op threads inside the block. ``"auto"`` (default): 1 when the
        device's GEMMs run outside PyTorch (so that two spinning thread pools never
        alternate), unchanged for the ``torch`` driver; None: unchanged.

    Returns
    -------
    OffloadSession
        Its ``stats`` dict counts offloaded and host calls and FLOPs, with the reasons.

    Examples
    --------
    >>> import torch, ffaccel.torch
    >>> lin = torch.nn.Linear(8, 4)
    >>> with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
    ...     y = torch.relu(lin(torch.ones(2, 8)))
    >>> session.stats["offloaded_calls"], session.stats["host_calls"]
    (1, 0)
    """
    return OffloadSession(device, threads)


# --------------------------------------------------------------------------------------
# the mode


def _check_tensors(*ts: torch.Tensor | None, allowed: tuple = tuple(_FLOAT)) -> None:
    """Raise _Host when a tensor cannot go to the device as it is."""
    grad = torch.is_grad_enabled()
    for t in ts:
        if t is None:
            continue
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            raise _Host(ARGS)  # tensor subclasses keep their own semantics
        if grad and t.requires_grad:
            raise _Host(GRAD)
        if t.device.type != "cpu":
            raise _Host(MEMORY)
        if t.layout != torch.strided or t.ndim == 0:
            raise _Host(SHAPE)
        if t.dtype not in allowed:
            raise _Host(DTYPE)


def _same_dtype(*ts: torch.Tensor | None) -> None:
    dts = {t.dtype for t in ts if t is not None}
    if len(dts) > 1:
        raise _Host(DTYPE)


def _mm_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """2 * (elements of the matmul result) * k, from the operand shapes (0 when they do not agree)."""
    try:
        if len(a_shape) == 0 or len(b_shape) == 0:
            return 0
        k = a_shape[-1]
        m = a_shape[-2] if len(a_shape) > 1 else 1
        n = b_shape[-1] if len(b_shape) > 1 else 1
        batch = torch.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2])).numel()
        return 2 * batch * m * n * k
    except RuntimeError:
        return 0


def _scalar(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        raise _Host(ARGS)
    return float(x)


_COMPOSITE_LOCK = threading.RLock()


def _never(*_args: object) -> bool:
    return False


class _Mode(TorchFunctionMode):
    def __init__(self, session: OffloadSession) -> None:
        super().__init__()
        self.session = session
        self.dev = session.device
        T = torch.Tensor
        h: dict[Callable, Callable] = {}
        for f in (torch.matmul, T.matmul, T.__matmul__):
            h[f] = self._matmul
        h[T.__rmatmul__] = lambda func, args, kw: self._matmul(func, (args[1], args[0]), kw)
        for f in (torch.mm, T.mm, torch.bmm, T.bmm):
            h[f] = self._matmul_strict
        for f in (torch.addmm, T.addmm, torch.baddbmm, T.baddbmm):
            h[f] = self._addmm
        h[torch._addmm_activation] = self._addmm_activation
        h[F.linear] = self._linear
        h[F.scaled_dot_product_attention] = self._sdpa
        h[torch._int_mm] = self._int_mm
        self.handlers = h

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is None:
            if func is F.multi_head_attention_forward:
                return self._open_composite(func, args, kwargs)
            return func(*args, **kwargs)
        try:
            return handler(func, args, kwargs)
        except _Host as h:
            reason = h.reason
        except FFAccelError as e:  # the device refused a call PyTorch may accept (or reports itself)
            reason = f"{REFUSED} ({e.code.name})"
        try:
            flops = self._flops_of(func, args, kwargs)
        except Exception:  # noqa: BLE001 - a malformed call: PyTorch raises its own error below
            flops = 0
        self.session._count(False, flops, reason)
        return func(*args, **kwargs)

    def _open_composite(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a Python-level composite (multi-head attention) with this mode still active inside.

        A mode is popped while it handles a call, so the composite's own linear / sdpa calls
        would be invisible. Re-entering the mode would hand the composite straight back to us
        (it begins with ``if has_torch_function(...)``), so for this one call that module-level
        check answers False; the calls inside then reach this mode as usual.
        """
        with _COMPOSITE_LOCK:
            saved = F.has_torch_function
            F.has_torch_function = _never
            try:
                with self:
                    return func(*args, **kwargs)
            finally:
                F.has_torch_function = saved

    # -- helpers --------------------------------------------------------------------------
    def _flops_of(self, func: Callable, args: tuple, kwargs: dict) -> int:
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            return 2 * x.numel() // max(1, x.shape[-1]) * w.shape[0] * x.shape[-1] if x.ndim else 0
        if func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            lq, e = q.shape[-2], q.shape[-1]
            s, ev = k.shape[-2], v.shape[-1]
            return 2 * (q.numel() // max(1, e)) * s * (e + ev)
        if func in (torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm, torch._addmm_activation):
            return _mm_flops(tuple(args[1].shape), tuple(args[2].shape))
        if func is torch.Tensor.__rmatmul__:
            return _mm_flops(tuple(args[1].shape), tuple(args[0].shape))
        return _mm_flops(tuple(args[0].shape), tuple(args[1].shape))

    def _run(self, flops: int, *a: Any, **kw: Any) -> np.ndarray:
        r = matmul(*a, device=self.dev, **kw)
        self.session._count(True, flops)
        return r

    # -- handlers -------------------------------------------------------------------------
    def _matmul(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if kwargs.get("out") is not None or len(args) != 2:
            raise _Host(ARGS)
        a, b = args
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
            raise _Host(ARGS)
        _check_tensors(a, b)
        _same_dtype(a, b)
        return to_torch(np.asarray(self._run(_mm_flops(tuple(a.shape), tuple(b.shape)), to_numpy(a), to_numpy(b))))

    def _matmul_strict(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("mat2")
        want = 2 if func in (torch.mm, torch.Tensor.mm) else 3
        if not isinstance(b, torch.Tensor) or a.ndim != want or b.ndim != want:
            raise _Host(SHAPE)  # PyTorch raises its own error for bad shapes
        if want == 3 and a.shape[0] != b.shape[0]:
            raise _Host(SHAPE)  # bmm does not broadcast; PyTorch reports it
        return self._matmul(func, (a, b), {k: v for k, v in kwargs.items() if k != "mat2"})

    def _addmm(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        if kwargs.get("out") is not None:
            raise _Host(ARGS)
        names = ("input", "mat1", "mat2") if func in (torch.addmm, torch.Tensor.addmm) else ("input", "batch1", "batch2")
        vals = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
        c, a, b = vals
        beta, alpha = _scalar(kwargs.get("beta", 1)), _scalar(kwargs.get("alpha", 1))
        want = 2 if names[1] == "mat1" else 3
        if a.ndim != want or b.ndim != want or (want == 3 and a.shape[0] != b.shape[0]):
            raise _Host(SHAPE)
        return self._gemm_epilogue(a, b, c, beta, alpha, None)

    def _addmm_activation(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        c, a, b = args[:3]
        beta, alpha = _scalar(kwargs.get("beta", 1)), _scalar(kwargs.get("alpha", 1))
        # PyTorch's CPU kernel applies the exact (erf) gelu (its cuBLASLt epilogue, the tanh form)
        act = post.gelu("none") if kwargs.get("use_gelu", False) else post.relu()
        if a.ndim != 2 or b.ndim != 2:
            raise _Host(SHAPE)
        return self._gemm_epilogue(a, b, c, beta, alpha, act)

    def _gemm_epilogue(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, beta: float, alpha: float,
                       act: Any) -> torch.Tensor:
        _check_tensors(a, b, c)
        _same_dtype(a, b, c)
        flops = _mm_flops(tuple(a.shape), tuple(b.shape))
        an, bn, cn = to_numpy(a), to_numpy(b), to_numpy(c)
        post_ops = [] if act is None else [act]
        if beta == 1.0 and cn.ndim == 1 and cn.shape[0] == b.shape[-1]:  # a bias row: fused epilogue
            r = self._run(flops, an, bn, alpha=alpha, post_ops=[post.bias(cn)] + post_ops)
        else:
            r = self._run(flops, an, bn, cn, alpha=alpha, beta=beta, post_ops=post_ops)
        return to_torch(r)

    def _linear(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        w = args[1] if len(args) > 1 else kwargs["weight"]
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        _check_tensors(x, w, bias)
        _same_dtype(x, w, bias)
        if w.ndim != 2 or x.shape[-1] != w.shape[1] or (bias is not None and tuple(bias.shape) != (w.shape[0],)):
            raise _Host(SHAPE)
        flops = 2 * (x.numel() // max(1, x.shape[-1])) * w.shape[0] * w.shape[1]
        post_ops = [post.bias(to_numpy(bias))] if bias is not None else []
        r = self._run(flops, to_numpy(x), to_numpy(w), trans_b=True, post_ops=post_ops)
        return to_torch(np.asarray(r))

    def _int_mm(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        a, b = args[:2]
        _check_tensors(a, b, allowed=(torch.int8,))
        if a.ndim != 2 or b.ndim != 2:
            raise _Host(SHAPE)
        return to_torch(self._run(_mm_flops(tuple(a.shape), tuple(b.shape)), to_numpy(a), to_numpy(b)))

    def _sdpa(self, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        p = dict(zip(names, args))
        p.update(kwargs)
        q, k, v = p["query"], p["key"], p["value"]
        mask = p.get("attn_mask")
        if p.get("dropout_p", 0.0) or set(p) - set(names) - {"enable_gqa"}:
            raise _Host(ARGS)  # dropout is random work, not a GEMM; unknown options stay in PyTorch
        _check_tensors(q, k, v)
        _same_dtype(q, k, v)
        if mask is not None:
            _check_tensors(mask, allowed=tuple(_FLOAT) + (torch.bool,))
            if mask.dtype != torch.bool and mask.dtype != q.dtype:
                raise _Host(DTYPE)
        if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim or q.shape[-1] != k.shape[-1] \
                or k.shape[-2] != v.shape[-2]:
            raise _Host(SHAPE)
        if p.get("enable_gqa") and q.ndim >= 3 and k.shape[-3] != q.shape[-3]:
            if q.shape[-3] % k.shape[-3]:
                raise _Host(SHAPE)
            rep = q.shape[-3] // k.shape[-3]
            k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
        L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
        scale = p.get("scale")
        scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
        add = None
        if p.get("is_causal"):
            if mask is not None:
                raise _Host(ARGS)  # PyTorch refuses this combination itself
            mask = torch.ones(L, S, dtype=torch.bool).tril()
        low = q.dtype in (torch.float16, torch.bfloat16)
        if mask is not None:  # additive form, in the scores' dtype (f32 for f16/bf16 inputs)
            s_dtype = torch.float32 if low else q.dtype
            add = mask.to(s_dtype) if mask.dtype != torch.bool else torch.zeros(mask.shape, dtype=s_dtype).masked_fill_(
                ~mask, float("-inf"))
        post_ops = [post.scale(scale)]
        if add is not None:
            post_ops.append(post.add(to_numpy(add)))
        flops = 2 * (q.numel() // max(1, E)) * S * (E + v.shape[-1])
        # scores in f32 for f16/bf16 inputs (the f32-output combination), softmax in PyTorch
        s = matmul(to_numpy(q), to_numpy(k), trans_b=True, post_ops=post_ops, device=self.dev,
                   out_dtype=np.float32 if low else None)
        probs = torch.softmax(to_torch(s), dim=-1)
        if low:
            probs = probs.to(q.dtype)
        out = matmul(to_numpy(probs), to_numpy(v), device=self.dev)
        self.session._count(True, flops)
        return to_torch(out)


__all__ = ["OffloadSession", "offload", "to_numpy", "to_torch"]
