"""Tensors <-> NumPy views without copies, and the checks that decide whether a tensor can go."""

from __future__ import annotations

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
