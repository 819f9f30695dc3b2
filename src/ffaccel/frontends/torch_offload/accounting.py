"""Where every FLOP of a session went: the device, or the host with a reason.

Offloaded FLOPs are counted by the handlers (2 m n k per GEMM they submit). Host FLOPs are
not estimated by hand: every ATen operator that runs in PyTorch inside a session passes a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` (:class:`HostFlops`), which prices
it with PyTorch's own FLOP formulas (``torch.utils.flop_counter.flop_registry``, the table
``FlopCounterMode`` uses) and decomposes composite operators it has no formula for (an LSTM,
``einsum``) until it finds priced ones, as ``FlopCounterMode`` does. So a convolution under
autograd, an ``einsum``, a transposed convolution or an op nobody thought of is counted on
the host, with a reason, and the share agrees with an independent ``FlopCounterMode`` count.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

#: Reasons a call stays in PyTorch (keys of ``stats["host_reasons"]``). A reason that comes from
#: what the device declares names what it lacks in brackets: "dtype unsupported (f32xf32->f32->f32)",
#: "post-op unsupported (gelu_erf)", "layout unsupported (a.offset_bytes)", "size unsupported (m)".
GRAD = "grad required"
DTYPE = "dtype unsupported"
SHAPE = "shape unsupported"
#: a post-op the device does not declare: the GEMM is offloaded, the post-op runs on the host after it
POST_OP = "post-op unsupported"
#: an operand layout the device refuses (alignment, leading dimension, batch stride)
LAYOUT = "layout unsupported"
#: a dimension, batch or buffer beyond the device's limits or memory
SIZE = "size unsupported"
MEMORY = "not in host memory"
ARGS = "arguments unsupported"
#: the function mode's call while PyTorch changes it below the Python level: autocast (the dtype),
#: a torch.func transform (vmap's batched tensors, grad, jvp) or forward-mode AD (the tangent)
TRANSFORM = "transform active"
REFUSED = "device refused"
#: prefix of the reason for an op that has no device lowering: "not offloaded (einsum)"
NOT_LOWERED = "not offloaded"


class Host(Exception):
    """Raised by a handler: run this call in PyTorch, for ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _sdpa_cpu_flop(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                   **kwargs: Any) -> int:
    """PyTorch's CPU attention kernel has no entry in flop_registry: price it as sdpa."""
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _mkldnn_rnn_layer_flop(input_shape: Any, w_ih_shape: Any, w_hh_shape: Any, *args: Any, out_shape: Any = None,
                           **kwargs: Any) -> int:
    """One layer and direction of PyTorch's oneDNN LSTM (its CPU kernel): both gate GEMMs of every step."""
    rows = math.prod(input_shape[:-1])  # time steps x batch, in either order
    return 2 * rows * w_ih_shape[0] * (w_ih_shape[1] + w_hh_shape[1])


def _mv_flop(a_shape: Any, v_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """``aten::mv`` (``A @ v``, what ``matmul`` with a 1-D right operand runs): the GEMM with n = 1."""
    return 2 * a_shape[0] * a_shape[1]


#: PyTorch's formulas, plus CPU kernels they lack: attention, the oneDNN LSTM layer and the GEMV
#: (offloaded like the other GEMMs: without a formula, ``x @ v`` went uncounted under the dispatcher).
#: Tests give the same to ``FlopCounterMode(custom_mapping=...)`` for the independent count.
EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {}
for _name, _f in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flop),
                  ("mkldnn_rnn_layer", _mkldnn_rnn_layer_flop), ("mv", _mv_flop)):
    if hasattr(torch.ops.aten, _name):
        EXTRA_FORMULAS[getattr(torch.ops.aten, _name)] = _f
REGISTRY: dict[Any, Callable[..., int]] = {**flop_counter.flop_registry,
                                           **{k: flop_counter.shape_wrapper(f) for k, f in EXTRA_FORMULAS.items()}}

#: shape queries that must not be decomposed or counted (as in FlopCounterMode)
_QUERIES = {getattr(torch.ops.aten, n).default for n in ("is_contiguous", "size", "stride", "storage_offset",
                                                           "numel", "dim", "sym_size", "sym_stride")}


def new_stats() -> dict[str, Any]:
    """The zeroed ``session.stats`` dict."""
    return dict(offloaded_calls=0, host_calls=0, offloaded_flops=0, host_flops=0, host_reasons=Counter(),
                host_flops_by_reason=Counter(), offloaded_fraction=1.0, relaxed_calls=0, relaxed_flops=0)


def count(stats: dict[str, Any], offloaded: bool, flops: int, reason: str = "", calls: int = 1) -> None:
    """Add ``calls`` calls with ``flops`` FLOPs, offloaded or on the host for ``reason``."""
    if offloaded:
        stats["offloaded_calls"] += calls
        stats["offloaded_flops"] += flops
    else:
        stats["host_calls"] += calls
        stats["host_flops"] += flops
        if calls:
            stats["host_reasons"][reason] += calls
        stats["host_flops_by_reason"][reason] += flops
    total = stats["offloaded_flops"] + stats["host_flops"]
    stats["offloaded_fraction"] = stats["offloaded_flops"] / total if total else 1.0


def _free_functions() -> frozenset:
    """Python-level calls that lower to no op with a FLOP formula: views, elementwise work,
    reductions, normalisation, pooling, indexing. Only speed depends on this list: a call not
    in it is priced below autograd like any other."""
    T, F = torch.Tensor, torch.nn.functional
    names = {
        T: "view reshape transpose permute contiguous unsqueeze squeeze flatten unflatten expand expand_as narrow "
           "select chunk split unbind size dim t to float half bfloat16 double clone detach masked_fill "
           "masked_fill_ __getitem__ __setitem__ add sub mul div add_ mul_ __add__ __radd__ __iadd__ __sub__ "
           "__rsub__ __mul__ __rmul__ __imul__ __truediv__ __neg__ neg relu sigmoid tanh exp pow sqrt rsqrt "
           "mean sum max amax softmax log_softmax copy_ zero_ fill_ new_empty new_zeros new_ones type_as "
           "is_contiguous numel stride storage_offset data_ptr repeat_interleave tril triu "
           "__eq__ __ne__ __lt__ __le__ __gt__ __ge__ eq ne lt le gt ge __or__ __and__ __xor__ __invert__ __bool__ "
           "any all argmax argmin cumsum long int bool item tolist is_floating_point abs clamp clamp_ min topk "
           "sort gather index_select new_full new_tensor pow __pow__ where isnan isinf masked_fill cpu type "
           "__len__ sub_ div_ exp_ tanh_ sigmoid_ relu_ addcmul_ sqrt_ neg_ square",
        torch: "cat stack concat zeros ones empty full zeros_like ones_like empty_like full_like arange add mul "
               "relu sigmoid tanh softmax log_softmax layer_norm dropout max_pool1d max_pool2d max_pool3d "
               "avg_pool1d flatten transpose unsqueeze squeeze chunk split "
               "where isin tensor as_tensor is_tensor is_floating_point argmax argmin pow cumsum gather index_select "
               "topk sort eq ne lt le gt ge any all abs clamp min maximum minimum exp sqrt rsqrt neg logical_not "
               "logical_and logical_or bitwise_or bitwise_and bitwise_not full tril triu masked_fill",
        F: "relu relu_ gelu silu sigmoid tanh softmax log_softmax dropout layer_norm batch_norm group_norm "
           "instance_norm pad embedding max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d "
           "adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d "
           "hardtanh leaky_relu elu",
    }
    free = {getattr(mod, n) for mod, ns in names.items() for n in ns.split() if hasattr(mod, n)}
    # attribute reads (x.shape, x.dtype, ...) reach the mode as their descriptors' __get__
    free |= {getattr(T, n).__get__ for n in "shape dtype device ndim T mT H mH data is_cuda requires_grad layout "
             "is_sparse is_quantized is_meta names grad_fn itemsize nbytes real imag".split() if hasattr(T, n)}
    free.add(torch._C._set_grad_enabled)
    return frozenset(free)


FREE = _free_functions()
#: tensor types whose ATen ops may skip the Python dispatch keys (subclasses keep their own)
PLAIN = (torch.Tensor, torch.nn.Parameter)
#: a call's tensor types -> whether all are plain (read directly by the function mode's fast path)
_PLAIN_TYPES: dict[tuple, bool] = {}


def plain_types(types: tuple) -> bool:
    """Whether every tensor type of a call is a plain tensor (cached: one dict lookup per call)."""
    r = _PLAIN_TYPES.get(types)
    if r is None:
        r = _PLAIN_TYPES[types] = all(t in PLAIN for t in types)
    return r


class HostFlops(TorchDispatchMode):
    """Counts the FLOPs of every ATen operator PyTorch runs while it is entered (the function
    mode enters it around each call it does not handle, and each call a handler gives back).

    The function-level mode names the ``reason`` of a call it hands back to PyTorch; FLOPs
    of any other op go to "not offloaded (<outer function>)".
    """

    def __init__(self, stats: dict[str, Any]) -> None:
        super().__init__()
        self.stats = stats
        self.reason: str | None = None  # set by the function mode around a refused call
        self.outer: str | None = None  # the outermost Python-level call not handled
        self.outer_counted = False  # whether that call has been counted once

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _QUERIES:
            return func(*args, **kwargs)
        formula = REGISTRY.get(func._overloadpacket)
        if formula is None:
            with self:  # composite (lstm, einsum, ...): count what it is made of
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        flops = int(formula(*args, **kwargs, out_val=out))
        if flops:
            if self.reason:  # the function mode counted the refused call itself; here only its FLOPs
                count(self.stats, False, flops, self.reason, calls=0)
            else:  # one call per Python-level call, however many priced ops it is made of
                count(self.stats, False, flops, f"{NOT_LOWERED} ({self.outer or func._overloadpacket.__name__})",
                      calls=0 if self.outer_counted else 1)
                self.outer_counted = self.outer is not None
        return out
