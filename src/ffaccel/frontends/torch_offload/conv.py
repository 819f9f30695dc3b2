"""Convolutions (``F.conv1d/2d/3d``) as im2col + one device GEMM; transposed ones as GEMM + col2im.

im2col is one strided view of the (padded) input — ``as_strided`` to (batch, channels,
kernel offsets..., output positions...) — and one copy into the GEMM's operand; PyTorch
makes the copy. A 1x1 convolution with stride 1 needs no copy: the view already is the
operand. Two layouts, chosen by the layout PyTorch gives the call's output (channels-last for a
channels-last input or weight; for 3-D, as the backend PyTorch picks decides: :func:`_stock_last`),
each without a transpose of the output:

* contiguous (NCHW): ``D[n] = W (O x C k) @ cols[n] (C k x L)`` for every image ``n`` — one
  batched GEMM with the weight broadcast (batch stride 0) and the bias fused over rows;
  the result is NCHW as PyTorch returns it;
* channels-last (NHWC): ``D = cols (N L x k C) @ W'^T`` — one GEMM whose rows are every
  output position of every image, bias fused over columns; the result is channels-last, as
  PyTorch returns it.

Groups are a batch of GEMMs (one per group; per image and group in NCHW), bias added after
(a per-group bias is not one vector of the GEMM). Padding: ``"valid"``, ``"same"`` (also
asymmetric, as PyTorch pads it: the extra element on the right) and explicit sizes; the
other padding modes (reflect, replicate, circular) reach ``F.conv*d`` already padded by
``nn.Conv*d``. An activation that follows is a separate call in PyTorch's graph and stays
there: a function mode sees one call at a time, not the model's graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .. import post
from .accounting import ARGS, NOT_LOWERED, SHAPE, Host
from .tensors import check_tensors, same_dtype, to_numpy, to_torch

_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DIMS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}


def _ints(v: Any, nd: int) -> tuple[int, ...]:
    """An int or a sequence of ``nd`` (or 1) ints as an ``nd``-tuple; else Host (PyTorch reports it)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,) * nd
    if isinstance(v, (tuple, list)) and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        if len(v) == nd:
            return tuple(v)
        if len(v) == 1:
            return (v[0],) * nd
    raise Host(ARGS)  # PyTorch reports what is wrong with it


def _channels_last(x: torch.Tensor) -> bool:
    """Whether x (N, C, spatial...) is stored channels-last (and is not also plain contiguous)."""
    if x.ndim == 4:
        fmt = torch.channels_last
    elif x.ndim == 5:
        fmt = torch.channels_last_3d
    else:
        return False
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=fmt)


_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _stock_last(x: torch.Tensor, w: torch.Tensor, bias: Any, stride: tuple, padding: list, dilation: tuple,
                transposed: bool, output_padding: tuple, groups: int) -> bool | None:
    """Whether PyTorch's CPU convolution returns this call's output channels-last (None: not known).

    Its rule is not the input's format alone: a channels-last weight makes the output channels-last
    too, and for 3-D it depends on the backend PyTorch picks (oneDNN: f32, and bf16/f16 where the
    CPU has them; the slow kernels return contiguous outputs). PyTorch's own choice is asked
    (~5 µs), so that code after the call sees stock's strides (``.view`` on them)."""
    try:
        backend = torch._C._select_conv_backend(x, w, bias, list(stride), padding, list(dilation), transposed,
                                                list(output_padding), groups, None)
        fmt = torch._C._conv_determine_backend_memory_format(x, w, backend)
    except (AttributeError, RuntimeError, TypeError):  # (private PyTorch API: absent or changed)
        return None
    return fmt == _LAST.get(x.ndim)


def _call(names: tuple[str, ...], args: tuple, kwargs: dict) -> tuple[dict, torch.Tensor, torch.Tensor, Any, int]:
    """A convolution call's arguments by name, its tensors checked, and its groups (Host if unusual)."""
    p = dict(zip(names, args))
    p.update(kwargs)
    if set(p) - set(names):
        raise Host(ARGS)
    x, w, bias = p["input"], p["weight"], p.get("bias")
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise Host(ARGS)
    check_tensors(x, w, bias)
    same_dtype(x, w, bias)
    groups = p.get("groups", 1)
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise Host(ARGS)
    return p, x, w, bias, groups


def conv(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    nd = _DIMS[func]
    p, x, w, bias, groups = _call(_NAMES, args, kwargs)
    stride = _ints(p.get("stride", 1), nd)
    dilation = _ints(p.get("dilation", 1), nd)
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x.unsqueeze(0)
    if x.ndim != nd + 2 or w.ndim != nd + 2 or min(stride) < 1 or min(dilation) < 1:
        raise Host(SHAPE)
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    ks = tuple(w.shape[2:])
    g = groups
    if C != Cg * g or O % g or (bias is not None and tuple(bias.shape) != (O,)) or min(ks) < 1 or not O or not C:
        # PyTorch raises its own error (also for no output channels; for no input channels it
        # returns an empty result of no channels, not the zeros of O channels the GEMM gives)
        raise Host(SHAPE)
    padding = p.get("padding", 0)
    if padding == "valid":
        pads = [(0, 0)] * nd
    elif padding == "same":
        if max(stride) > 1:
            raise Host(ARGS)  # PyTorch refuses it
        pads = []
        for k, d in zip(ks, dilation):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))  # PyTorch puts the odd element on the right
    else:
        pads = [(q, q) for q in _ints(padding, nd)]
    if min(min(a) for a in pads) < 0:
        raise Host(SHAPE)
    outs = tuple((s + lo + hi - d * (k - 1) - 1) // st + 1
                 for s, (lo, hi), k, d, st in zip(x.shape[2:], pads, ks, dilation, stride))
    if min(outs) < 1:
        raise Host(SHAPE)  # PyTorch reports an input smaller than the kernel
    x_last = _channels_last(x)
    # the output's layout as PyTorch gives it (the layout computed in: see the module docstring)
    last = _stock_last(x, w, bias, stride, [lo for lo, _ in pads], dilation, False, (0,) * nd, g)
    if last is None:
        last = x_last
    if any(lo or hi for lo, hi in pads):  # zero padding, kept in the input's memory format
        flat = [v for lo_hi in reversed(pads) for v in lo_hi]
        x = F.pad(x, flat)
        if x_last and not _channels_last(x):
            x = x.contiguous(memory_format=torch.channels_last if nd == 2 else torch.channels_last_3d)
    L = math.prod(outs)
    K = Cg * math.prod(ks)
    flops = 2 * N * O * L * K
    sN, sC, *sS = x.stride()
    kstr = [d * s for d, s in zip(dilation, sS)]
    ostr = [st * s for st, s in zip(stride, sS)]
    # the copy (reshape of the strided view) is PyTorch's: faster than F.unfold here, any dimension
    if last:
        # rows: (n, output position), columns: (group, kernel offset, channel in group)
        cols = x.as_strided((N, *outs, g, *ks, Cg), (sN, *ostr, Cg * sC, *kstr, sC), x.storage_offset())
        cols = cols.reshape(N * L, g * K)
        wt = w.permute(0, *range(2, nd + 2), 1)  # (O, kernel..., Cg): the column order of cols
        if g == 1:
            bias_ops = [post.bias(to_numpy(bias))] if bias is not None else []
            r = m.run(flops, to_numpy(cols), to_numpy(wt.reshape(O, K)), trans_b=True, post_ops=bias_ops)
            d = to_torch(r)
        else:
            d = torch.empty((N * L, O), dtype=x.dtype)
            a = cols.view(N * L, g, K).transpose(0, 1)
            b = wt.reshape(g, O // g, K)
            out = d.view(N * L, g, O // g).transpose(0, 1)
            m.run(flops, to_numpy(a), to_numpy(b), trans_b=True, out=to_numpy(out))
            if bias is not None:
                d += bias
        y = d.view(N, *outs, O).permute(0, nd + 1, *range(1, nd + 1))
    else:
        # rows: (group, channel in group, kernel offset), columns: output position
        cols = x.as_strided((N, C, *ks, *outs), (sN, sC, *kstr, *ostr), x.storage_offset())
        if g == 1:
            bias_ops = [post.bias(to_numpy(bias), axis="m")] if bias is not None else []
            r = m.run(flops, to_numpy(w.reshape(O, K)), to_numpy(cols.reshape(N, K, L)), post_ops=bias_ops)
            d = to_torch(r)
        else:
            r = m.run(flops, to_numpy(w.reshape(g, O // g, K)), to_numpy(cols.reshape(N, g, K, L)))
            d = to_torch(r).view(N, O, L)
            if bias is not None:
                d += bias.view(O, 1)
        y = d.view(N, O, *outs)
    return y[0] if unbatched else y


_T_NAMES = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_T_DIMS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2}


def conv_transpose(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.conv_transpose1d/2d``: ``cols = W^T @ x`` on the device, col2im (``F.fold``) in PyTorch.

    A transposed convolution scatters every input position through the kernel: the GEMM
    ``(C_out k x C_in) @ (C_in x H W)`` per image and group makes every product, and
    ``F.fold`` sums the overlapping blocks into the output (additions only: no FLOPs in
    PyTorch's count). 3-D has no ``F.fold`` and stays in PyTorch, counted.
    """
    nd = _T_DIMS[func]
    p, x, w, bias, g = _call(_T_NAMES, args, kwargs)
    stride, dilation = _ints(p.get("stride", 1), nd), _ints(p.get("dilation", 1), nd)
    padding, out_pad = _ints(p.get("padding", 0), nd), _ints(p.get("output_padding", 0), nd)
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x.unsqueeze(0)
    if x.ndim != nd + 2 or w.ndim != nd + 2 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise Host(SHAPE)
    N, C = x.shape[:2]
    ks = tuple(w.shape[2:])
    O = w.shape[1] * g
    if w.shape[0] != C or C % g or (bias is not None and tuple(bias.shape) != (O,)) or not C or not O \
            or any(op >= max(st, d) or op < 0 for op, st, d in zip(out_pad, stride, dilation)):
        raise Host(SHAPE)  # PyTorch raises its own error (also for no input or output channels)
    outs = tuple((s - 1) * st - 2 * pd + d * (k - 1) + op + 1
                 for s, st, pd, d, k, op in zip(x.shape[2:], stride, padding, dilation, ks, out_pad))
    if min(outs) < 1:
        raise Host(SHAPE)
    last = nd == 2 and _stock_last(x, w, bias, stride, list(padding), dilation, True, out_pad, g)
    if nd == 1:  # F.fold is 2-D: a 1-D convolution is a 2-D one of height 1
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        ks, stride, dilation, padding, outs = (1, *ks), (1, *stride), (1, *dilation), (0, *padding), (1, *outs)
    L = math.prod(x.shape[2:])
    Cg, Ok = C // g, (O // g) * math.prod(ks)
    flops = 2 * N * g * Ok * Cg * L
    xs = x.reshape(N, g, Cg, L)
    wt = w.reshape(g, Cg, Ok).transpose(1, 2)  # (g, O/g k, C/g): W^T per group, a strided view
    a = to_numpy(wt if g > 1 else wt[0])
    cols = to_torch(m.run(flops, a, to_numpy(xs if g > 1 else xs[:, 0])))  # (N, [g,] O/g k, L)
    y = F.fold(cols.reshape(N, O * math.prod(ks), L), outs, ks, dilation=dilation, padding=padding, stride=stride)
    if bias is not None:
        y += bias.view(O, 1, 1)
    if last:  # PyTorch's layout for this call (a channels-last input or weight)
        y = y.contiguous(memory_format=torch.channels_last)
    if nd == 1:
        y = y.squeeze(2)
    return y[0] if unbatched else y


_BY_DIMS = {nd: f for f, nd in _DIMS.items()}
_T_BY_DIMS = {nd: f for f, nd in _T_DIMS.items()}


def aten_convolution(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    """``aten::convolution`` / ``aten::_convolution`` (what every ``F.conv*d`` and
    ``F.conv_transpose*d`` runs): ``(input, weight, bias, stride, padding, dilation, transposed,
    output_padding, groups, ...)``, handed to :func:`conv` or :func:`conv_transpose` as the
    functional call of its dimension would be."""
    if len(args) < 9:
        raise Host(ARGS)
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = args[:9]
    if not isinstance(w, torch.Tensor):
        raise Host(ARGS)
    nd = w.ndim - 2
    if transposed:
        fn = _T_BY_DIMS.get(nd)
        if fn is None:  # no F.fold in 3-D (see conv_transpose): the name the function mode gives it
            raise Host(f"{NOT_LOWERED} (conv_transpose{nd}d)")
        return conv_transpose(m, fn, (x, w, bias, stride, padding, output_padding, groups, dilation), {})
    fn = _BY_DIMS.get(nd)
    if fn is None:
        raise Host(SHAPE)
    return conv(m, fn, (x, w, bias, stride, padding, dilation, groups), {})


def handlers() -> dict[Callable, Callable]:
    """func -> handler for convolutions."""
    return {**{f: conv for f in _DIMS}, **{f: conv_transpose for f in _T_DIMS}}
