"""Tensors <-> NumPy views without copies, and the checks that decide whether a tensor can go."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np
import torch

from .accounting import ARGS, DTYPE, GRAD, MEMORY, SHAPE, Host

FLOAT = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
         torch.bfloat16: ml_dtypes.bfloat16}


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a CPU tensor (bfloat16 as ml_dtypes.bfloat16).

    Examples
    --------
    >>> import torch
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype
    dtype(bfloat16)
    """
    if t.requires_grad:  # a parameter (under no_grad): its data, without a new tensor otherwise
        t = t.detach()
    try:  # the common case in one call: it refuses (and only then) bf16 and the neg / conj bits
        return t.numpy()
    except (TypeError, RuntimeError):
        pass
    if t.is_neg() or t.is_conj():
        t = t.resolve_neg().resolve_conj()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


_PARAMETER = torch.nn.Parameter
#: what :func:`param_memo` made of a parameter or a view of one, by its key; emptied when it reaches
#: _PARAM_MEMO_MAX entries and when the dispatcher's kernels go (a memoized view keeps its tensor alive)
PARAM_MEMO: dict[tuple, Any] = {}
_PARAM_MEMO_MAX = 2048


def _numpy_view(t: torch.Tensor) -> np.ndarray:
    return t.numpy(force=True)


def param_memo(t: torch.Tensor, make: Callable[[torch.Tensor], Any] = _numpy_view) -> Any:
    """``make(t)`` (default ``t.numpy(force=True)``: a zero-copy view, a copy for the negative bit),
    memoized for a parameter or a view of one (a decode step's weights, ``W.t()``, and biases:
    ~1-2 µs a call each).

    The key is everything a view's reading depends on: the address of its first element, the
    shape, the strides (a square ``W`` and ``W.t()`` share the rest), the dtype, and ``make``; a
    view with the negative bit (``torch._neg_view``), whose NumPy form is a copy, is not memoized. Any tensor with that key reads those
    very bytes the same way, so a hit is right whatever happened since to the tensor it was made
    from (a view reads the memory at the time of the call, not a copy). Only parameters: a memoized
    view keeps its tensor's memory alive, which for activations would hold memory; an entry is
    dropped when its parameter is garbage-collected. Raises what ``make``
    raises (``numpy`` refuses bf16 and what it cannot view)."""
    owner = t if type(t) is _PARAMETER else t._base
    if type(owner) is _PARAMETER and not t.is_neg():
        # (a negative-bit view's NumPy form is a resolved copy: memoized, it would miss the
        # parameter's next in-place update, so it is made each time)
        key = (t.data_ptr(), t.shape, t.stride(), t.dtype, make)
        v = PARAM_MEMO.get(key)
        if v is None:
            v = make(t)
            if len(PARAM_MEMO) >= _PARAM_MEMO_MAX:
                PARAM_MEMO.clear()
            PARAM_MEMO[key] = v
            # the entry goes with its parameter: the view holds the parameter's memory, and the
            # memo outlives sessions (the dispatcher's kernels stay): a deleted model's weights
            # stayed allocated (~2 µs a miss; a later entry of the same key is just made again)
            weakref.finalize(owner, PARAM_MEMO.pop, key, None)
        return v
    return make(t)


def to_torch(x: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor view of a NumPy array (ml_dtypes.bfloat16 as torch.bfloat16)."""
    if x.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(x)


_STRIDED = torch.strided


def check_tensors(*ts: torch.Tensor | None, allowed: tuple = tuple(FLOAT)) -> None:
    """Raise Host when a tensor cannot go to the device as it is."""
    # Runs for every offloaded call: the cheapest attribute for each question (``is_cpu``, not a
    # new ``t.device`` object; ``is`` for the layout singleton).
    grad = torch.is_grad_enabled()
    for t in ts:
        if t is None:
            continue
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            raise Host(ARGS)  # tensor subclasses keep their own semantics
        if grad and t.requires_grad:
            raise Host(GRAD)
        if not t.is_cpu:
            raise Host(MEMORY)
        if t.layout is not _STRIDED or t.ndim == 0:
            raise Host(SHAPE)
        if t.dtype not in allowed:
            raise Host(DTYPE)


def same_dtype(*ts: torch.Tensor | None) -> None:
    """Raise Host unless every tensor given has one dtype (no silent promotion)."""
    first = None
    for t in ts:
        if t is not None:
            if first is None:
                first = t.dtype
            elif t.dtype is not first:  # dtypes are singletons
                raise Host(DTYPE)
