"""Handlers for the GEMM family: matmul/mm/bmm, addmm/baddbmm, linear, _int_mm, attention.

Each handler takes the mode (``m.run(flops, a, b, ...)`` submits one ``matmul`` and counts
it) and the call's ``func, args, kwargs``; it returns the result or raises :class:`Host`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import post
from ..numpy_api import matmul as device_matmul
from ...spec import FFAccelError, PostOpKind
from .accounting import ARGS, DTYPE, SHAPE, Host, count
from .tensors import FLOAT, check_tensors, param_memo, same_dtype, to_numpy, to_torch


def mm_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> int:
    """2 * (elements of the matmul result) * k, from the operand shapes (0 when they do not agree).

    Plain Python: ``torch.broadcast_shapes`` costs hundreds of µs per call (it goes through
    PyTorch's Python reference implementation), more than a batch-1 GEMM."""
    if len(a_shape) == 2 and len(b_shape) == 2:  # a plain GEMM (a batch-1 decode's every addmm): no batch loop
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    if len(a_shape) == 0 or len(b_shape) == 0:
        return 0
    k = a_shape[-1]
    m = a_shape[-2] if len(a_shape) > 1 else 1
    n = b_shape[-1] if len(b_shape) > 1 else 1
    batch = 1
    ba, bb = a_shape[:-2], b_shape[:-2]
    for i in range(1, max(len(ba), len(bb)) + 1):
        x = ba[-i] if i <= len(ba) else 1
        y = bb[-i] if i <= len(bb) else 1
        if x != y and x != 1 and y != 1:
            return 0
        batch *= max(x, y) if x and y else 0
    return 2 * batch * m * n * k


def _scalar(x: Any) -> float:
    if isinstance(x, torch.Tensor):
        raise Host(ARGS)
    return float(x)


def matmul(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    if kwargs.get("out") is not None or len(args) != 2:
        raise Host(ARGS)
    a, b = args
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise Host(ARGS)
    check_tensors(a, b)
    same_dtype(a, b)
    an, bn = to_numpy(a), to_numpy(b)  # shapes from here on as NumPy's tuples (a torch.Size costs more)
    return to_torch(np.asarray(m.run(mm_flops(an.shape, bn.shape), an, bn)))


def rmatmul(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    return matmul(m, func, (args[1], args[0]), kwargs)


def matmul_strict(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    a, b = args[0], args[1] if len(args) > 1 else kwargs.get("mat2")
    want = 2 if func in (torch.mm, torch.Tensor.mm) else 3
    if not isinstance(b, torch.Tensor) or a.ndim != want or b.ndim != want:
        raise Host(SHAPE)  # PyTorch raises its own error for bad shapes
    if want == 3 and a.shape[0] != b.shape[0]:
        raise Host(SHAPE)  # bmm does not broadcast; PyTorch reports it
    return matmul(m, func, (a, b), {k: v for k, v in kwargs.items() if k != "mat2"})


def mv(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``torch.mv(A, v)`` / ``aten::mv`` (what ``A @ v`` runs): a GEMM with n = 1."""
    a, v = args[0], args[1] if len(args) > 1 else kwargs.get("vec")
    if kwargs.get("out") is not None or not isinstance(v, torch.Tensor) or a.ndim != 2 or v.ndim != 1:
        raise Host(SHAPE)  # PyTorch raises its own error for bad shapes
    return matmul(m, func, (a, v), {})


_ADDMM = (torch.addmm, torch.Tensor.addmm)


def addmm(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    two_d = func in _ADDMM  # else baddbmm
    if not kwargs and len(args) == 3:  # the common call (a Linear / Conv1D layer): nothing to look up
        c, a, b = args
        beta = alpha = 1.0
    else:
        if kwargs.get("out") is not None:
            raise Host(ARGS)
        names = ("input", "mat1", "mat2") if two_d else ("input", "batch1", "batch2")
        c, a, b = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
        beta, alpha = _scalar(kwargs.get("beta", 1)), _scalar(kwargs.get("alpha", 1))
    return _gemm_epilogue(m, a, b, c, beta, alpha, None, 2 if two_d else 3)


def addmm_activation(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    c, a, b = args[:3]
    beta, alpha = _scalar(kwargs.get("beta", 1)), _scalar(kwargs.get("alpha", 1))
    # PyTorch's CPU kernel applies the exact (erf) gelu (its cuBLASLt epilogue, the tanh form)
    act = post.gelu("none") if kwargs.get("use_gelu", False) else post.relu()
    return _gemm_epilogue(m, a, b, c, beta, alpha, act, 2)


def _gemm_epilogue(m: Any, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, beta: float, alpha: float,
                   act: Any, ndim: int) -> torch.Tensor:
    """``alpha a @ b + beta c`` (then ``act``) for 2-D (``ndim`` 2) or batched (3) a and b."""
    if a is None or b is None or c is None:
        raise Host(ARGS)  # PyTorch reports the missing argument
    check_tensors(a, b, c)
    same_dtype(a, b, c)
    an, bn, cn = to_numpy(a), to_numpy(b), to_numpy(c)  # shapes as NumPy's tuples (cheaper than torch.Size)
    if an.ndim != ndim or bn.ndim != ndim or (ndim == 3 and an.shape[0] != bn.shape[0]):
        raise Host(SHAPE)  # PyTorch reports bad shapes itself
    flops = mm_flops(an.shape, bn.shape)
    post_ops = [] if act is None else [act]
    if beta == 1.0 and cn.ndim == 1 and cn.shape[0] == bn.shape[-1]:  # a bias row: fused epilogue
        # (post.bias's own checks are for user input: cn is already the bias's ndarray)
        r = m.run(flops, an, bn, alpha=alpha, post_ops=[post.PostOp(PostOpKind.BIAS_N, operand=cn)] + post_ops)
    else:
        r = m.run(flops, an, bn, cn, alpha=alpha, beta=beta, post_ops=post_ops)
    return to_torch(r)


#: tensor types the fast paths take (a subclass keeps its own semantics: the generic path decides)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
#: dtypes ``Tensor.numpy`` takes as they are (bf16 goes through the generic path's int16 view)
_FAST_DTYPES = frozenset({torch.float32, torch.float64, torch.float16})


def fast_addmm(m: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``aten::addmm(bias, x, B)`` as a decode step calls it (GPT-2's Conv1D, ``F.linear``'s
    ``addmm(bias, x, W.t())``), in one function, on a device that takes every GEMM as it is
    (``m.direct``); None: not this case, the generic path (:func:`addmm`, :func:`linear`) decides.

    The same verdicts as the generic path, from what the dispatcher guarantees: a CPU kernel gets
    dense strided CPU tensors; grad needs nothing here (the result comes from ``torch.from_numpy``,
    autograd recorded the call above). Plain tensors of one float dtype NumPy takes, 2-D x and B,
    a 1-D bias of B's columns; ``numpy(force=True)`` views a parameter that requires grad
    without a ``detach`` (and refuses what is not viewable: None), memoized for parameters with
    the bias's post-op (:func:`.tensors.param_memo`). The transposed weight goes with
    ``trans_b`` as in :func:`linear`; a device refusal (say, k disagrees) is left to the generic
    path, which counts it. ~25 µs of the generic path's checks, views and calls at GPT-2's
    1 x 256 x 768 were ~15-18 µs above ``ffaccel.matmul``; see docs/torch.md for what this is."""
    if kwargs or len(args) != 3:  # (beta and alpha come as keywords, and only when not 1)
        return None
    c, a, b = args
    dt = a.dtype
    if (type(a) not in _PLAIN or type(b) not in _PLAIN or type(c) not in _PLAIN or dt not in _FAST_DTYPES
            or b.dtype is not dt or c.dtype is not dt or a.ndim != 2 or b.ndim != 2 or c.ndim != 1):
        return None
    try:
        # (x, an activation, viewed as it is: memoizing it would keep it alive)
        an, (bn, trans_b), bias = a.numpy(force=True), param_memo(b, _gemm_b), param_memo(c, _bias_post_ops)
    except (TypeError, RuntimeError):
        return None
    n = bn.shape[0] if trans_b else bn.shape[1]
    if c.shape[0] != n:
        return None  # a bias of another length (PyTorch broadcasts or refuses): the generic path
    try:
        r = device_matmul(an, bn, trans_b=trans_b, post_ops=bias, device=m.dev)
    except FFAccelError:
        return None
    count(m.stats, True, 2 * an.shape[0] * an.shape[1] * n)
    return torch.from_numpy(r)


def fast_mm(m: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``aten::mm(a, b)`` (a Linear without bias, the LM head: ``mm(x, W.t())``) as
    :func:`fast_addmm` takes addmm: None where the generic path (:func:`matmul_strict`) decides."""
    if kwargs or len(args) != 2:
        return None
    a, b = args
    dt = a.dtype
    if (type(a) not in _PLAIN or type(b) not in _PLAIN or dt not in _FAST_DTYPES or b.dtype is not dt
            or a.ndim != 2 or b.ndim != 2):
        return None
    try:
        an, bn = a.numpy(force=True), param_memo(b)
        r = device_matmul(an, bn, device=m.dev)
    except (TypeError, RuntimeError, FFAccelError):
        return None
    count(m.stats, True, 2 * an.shape[0] * an.shape[1] * bn.shape[1])
    return torch.from_numpy(r)


_BIAS_N = PostOpKind.BIAS_N


def _gemm_b(b: torch.Tensor) -> tuple[np.ndarray, bool]:
    """B as :func:`fast_addmm` sends it: ``(W, True)`` for ``W.t()`` of a row-major W (``trans_b``,
    as :func:`linear`), else ``(B, False)`` (memoized for a parameter)."""
    bn = b.numpy(force=True)
    wn = bn.T
    if wn.flags.c_contiguous and not bn.flags.c_contiguous:
        return wn, True
    return bn, False


def _bias_post_ops(c: torch.Tensor) -> tuple[post.PostOp]:
    """``post_ops`` adding the 1-D ``c`` over D's columns (memoized for a parameter: :func:`fast_addmm`)."""
    return (post.PostOp(_BIAS_N, operand=c.numpy(force=True)),)


def linear(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    x = args[0] if args else kwargs["input"]
    w = args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    check_tensors(x, w, bias)
    same_dtype(x, w, bias)
    xn, wn = to_numpy(x), to_numpy(w)  # shapes as NumPy's tuples from here on (cheaper than torch.Size)
    bn = to_numpy(bias) if bias is not None else None
    if wn.ndim != 2 or xn.shape[-1] != wn.shape[1] or (bn is not None and bn.shape != (wn.shape[0],)):
        raise Host(SHAPE)
    # All leading dimensions are the rows of one GEMM: a view where the strides allow, else one
    # copy of x (as PyTorch's own linear makes). Never a batch of per-row GEMMs: the (L, N, E)
    # view of an (N, L, E) tensor that nn.MultiheadAttention(batch_first=True) hands its
    # projections was L GEMMs of N rows. (The ABI could take it copy-free as N GEMMs with the
    # weight broadcast and D's rows interleaved; the cpu driver runs a batch as a loop, and its
    # oneDNN kernel crashed on that layout with a bias: see docs/torch.md.)
    x2 = xn if xn.ndim == 2 else xn.reshape(-1, xn.shape[-1])
    flops = 2 * x2.shape[0] * wn.shape[0] * wn.shape[1]
    if bn is None:  # W^T as a strided view (no flag): matmul serves a plain GEMM from its plan cache
        r = m.run(flops, x2, wn.T)
    else:
        r = m.run(flops, x2, wn, trans_b=True, post_ops=[post.bias(bn)])
    return to_torch(r if xn.ndim == 2 else r.reshape(xn.shape[:-1] + (wn.shape[0],)))


def int_mm(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    a, b = args[:2]
    check_tensors(a, b, allowed=(torch.int8,))
    if a.ndim != 2 or b.ndim != 2:
        raise Host(SHAPE)
    return to_torch(m.run(mm_flops(tuple(a.shape), tuple(b.shape)), to_numpy(a), to_numpy(b)))


_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
_SDPA_KNOWN = frozenset(_SDPA_NAMES) | {"enable_gqa"}
_MASK_DTYPES = tuple(FLOAT) + (torch.bool,)


def sdpa(m: Any, func: Callable, args: tuple, kwargs: dict) -> torch.Tensor:
    """``F.scaled_dot_product_attention``: see :func:`_attention`."""
    p = dict(zip(_SDPA_NAMES, args))
    if kwargs:
        p.update(kwargs)
    get = p.get
    if get("dropout_p", 0.0) or not p.keys() <= _SDPA_KNOWN:
        raise Host(ARGS)  # dropout is random work, not a GEMM; unknown options stay in PyTorch
    return _attention(m, get("query"), get("key"), get("value"), get("attn_mask"), get("is_causal"), get("scale"),
                      get("enable_gqa"), False)[0]


def aten_sdpa(m: Any, func: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten::_scaled_dot_product_flash_attention_for_cpu`` (what ``F.scaled_dot_product_attention``
    runs on CPU tensors): ``(output, logsumexp)``. The log-sum-exp of the scores (what PyTorch's
    backward reads) is computed on the host; the dispatcher keeps the call on the host when grad is
    needed, so that backward always gets PyTorch's own saved tensors."""
    q, k, v = args[:3]
    dropout = args[3] if len(args) > 3 else kwargs.get("dropout_p", 0.0)
    causal = args[4] if len(args) > 4 else kwargs.get("is_causal", False)
    if dropout:
        raise Host(ARGS)  # random work, not a GEMM
    mask = kwargs.get("attn_mask")
    if not _flash_cpu_takes(q, k, v, mask):
        raise Host(SHAPE)  # PyTorch's kernel raises its own error
    # the CPU kernel takes grouped-query attention as it comes (``enable_gqa`` reaches it as a query
    # with a multiple of the keys' heads): the same grouping here
    return _attention(m, q, k, v, mask, causal, kwargs.get("scale"), True, True)


def _flash_cpu_takes(q: Any, k: Any, v: Any, mask: Any) -> bool:
    """Whether ``aten::_scaled_dot_product_flash_attention_for_cpu`` itself accepts these shapes: 4-D
    q, k, v of one head size and a 2-D or 4-D mask of q's dtype or f32, not bool (its checks in torch
    2.13). F.scaled_dot_product_attention sends it nothing else, but a direct call does, and PyTorch
    raises there (the handlers broadcast a 1-D or 3-D mask and take a bool one: they answered)."""
    return (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and q.dim() == 4 and k.dim() == 4 and v.dim() == 4 and q.shape[3] == k.shape[3] == v.shape[3]
            and (not isinstance(mask, torch.Tensor)
                 or (mask.dim() in (2, 4) and (mask.dtype is q.dtype or mask.dtype is _F32))))


def fast_sdpa(m: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``aten::_scaled_dot_product_flash_attention_for_cpu`` as a decode step or a BERT-style encoder
    calls it: f32 q, k, v of the same leading dimensions, no causal mask, no dropout, nothing needing
    grad, on a device that takes every GEMM as it is (``m.direct``), with no mask or a plain f32
    mask that broadcasts to the scores (BERT's ``(B, 1, L, S)`` padding mask, ``(L, S)``); None:
    the generic path (:func:`aten_sdpa`) decides.

    The two GEMMs on the device as in :func:`_attention`, on row-major copies of strided q, k, v
    and into a row-major result copied into the kernel's output layout: the cpu driver runs a
    batch of strided matrices ~3x slower than the copies cost (BERT's heads-transposed 8x12x17x32:
    QK^T 374 against 116 µs, S V into the strided layout 151 against 78 µs with the copy). The mask
    is added on the host to the scaled scores, as PyTorch's kernel adds it;
    the softmax and the log-sum-exp on the scores the device returned (in place: they are this
    call's own), ``p = exp(scale (s - max s)) / sum``, ``lse = scale max s + log(sum)`` (a scale
    <= 0 as the GEMM's alpha instead; with a mask the scale is applied before it), in NumPy for
    small scores and PyTorch's passes from :data:`SOFTMAX_TORCH_MIN_ELEMENTS`: a handful of calls,
    where the generic path's PyTorch softmax, reductions and the tensor views between them cost
    ~90 µs a call at GPT-2's 1 x 4 x 1 x 64 against a 40-row cache."""
    n = len(args)
    if n < 3 or (n > 3 and args[3]) or (n > 4 and args[4]) or n > 5:
        return None
    mask = kwargs.get("attn_mask")
    q, k, v = args[0], args[1], args[2]
    if (type(q) is not torch.Tensor or type(k) is not torch.Tensor or type(v) is not torch.Tensor
            or q.dtype is not _F32 or k.dtype is not _F32 or v.dtype is not _F32
            or q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    try:
        qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    except (TypeError, RuntimeError):
        return None
    qs, ks, vs = qn.shape, kn.shape, vn.shape
    if (len(qs) != 4 or len(ks) != 4 or len(vs) != 4 or qs[:-2] != ks[:-2] or ks[:-1] != vs[:-1]
            or qs[-1] != ks[-1] or vs[-1] != qs[-1] or not ks[-2] or not qs[-1]):
        return None  # broadcast batches, empty keys, shapes the kernel refuses: the generic path (or PyTorch's error)
    if mask is not None and (not _plain_mask(mask, (*qs[:-1], ks[-2])) or mask.dim() not in (2, 4)):
        return None
    scale = kwargs.get("scale")
    e = qs[-1]
    scale = 1.0 / math.sqrt(e) if scale is None else float(scale)
    # a positive scale folded into the softmax (exp(scale (s - max s)): the device's plain GEMM, where
    # an alpha sends a batch of small GEMMs through a per-entry loop (8x4x64x64: 470 against 230 µs)
    fold = scale > 0.0
    if len(qs) > 3:  # a batch of strided matrices (heads-transposed views): row-major copies (see above)
        qn, kn, vn = _row_major(qn), _row_major(kn), _row_major(vn)
    try:
        s = (device_matmul(qn, kn, trans_b=True, device=m.dev) if fold
             else device_matmul(qn, kn, trans_b=True, alpha=scale, device=m.dev))
        if mask is not None:  # scale (unless the GEMM's alpha did), then the mask, as PyTorch's kernel
            st = torch.from_numpy(s)
            if fold:
                st.mul_(scale)
                fold = False
            st.add_(mask)
        # A row the mask hides whole (every score -inf) gets probabilities 0 and a log-sum-exp of 0, as
        # PyTorch's kernel gives it (its output row is 0), not exp(-inf - -inf) = NaN: its max and its
        # sum are set to 0 and 1 (only with a mask: without one a row is -inf only for -inf inputs).
        limit = SOFTMAX_TORCH_MIN_ELEMENTS
        if limit is None:
            limit = softmax_torch_min_elements()
        softmax = _softmax_lse_torch if s.size >= limit else _softmax_lse_numpy
        lse = softmax(s, mask is not None, scale if fold else None)
        out = torch.from_numpy(device_matmul(s, vn, device=m.dev))
        like = _query_layout(q, (*qs[:-1], vs[-1]))  # the kernel's own output layout (see above)
        if like is not None:
            out = like.copy_(out)
    except FFAccelError:
        return None
    count(m.stats, True, 2 * (qn.size // e) * ks[-2] * (e + vs[-1]))
    return out, lse


def _softmax_lse_torch(s: np.ndarray, masked: bool, scale: float | None) -> torch.Tensor:
    """``s`` (scores, rows along the last axis) replaced in place by ``softmax(scale * s)`` and the
    rows' log-sum-exp returned, in PyTorch's vectorized passes (see :func:`fast_sdpa`). ``masked``:
    a row may be -inf throughout (probabilities 0, log-sum-exp 0); ``scale``: None when already applied."""
    st = torch.from_numpy(s)
    top = st.amax(-1, keepdim=True)
    hidden = top.isneginf() if masked else None
    if hidden is not None:
        top.masked_fill_(hidden, 0.0)
    st.sub_(top)
    if scale is not None:
        st.mul_(scale)
        top.mul_(scale)
    # exp of what underflows (a padding mask's -inf or finfo.min, or a score far below its row's
    # max) costs PyTorch 5-40x an ordinary exp (AVX2, 27,744 scores: 33 µs in range, 88-440 µs
    # masked): exp of the floor instead, then those terms set to the 0 they are
    st.clamp_min_(_EXP_FLOOR).exp_()
    torch.threshold_(st, _EXP_ZERO_UP_TO, 0.0)
    total = st.sum(-1, keepdim=True)
    if hidden is not None:
        total.masked_fill_(hidden, 1.0)
    st.div_(total)
    return total.log_().add_(top).squeeze_(-1)


def _softmax_lse_numpy(s: np.ndarray, masked: bool, scale: float | None) -> torch.Tensor:
    """As :func:`_softmax_lse_torch`, in NumPy's calls (~1 µs less per call, slower per element)."""
    top = s.max(-1, keepdims=True)
    hidden = np.isneginf(top) if masked else None
    if hidden is not None:
        top[hidden] = 0.0
    s -= top
    if scale is not None:
        s *= scale
        top *= scale
    np.exp(s, out=s)
    total = s.sum(-1, keepdims=True)
    if hidden is not None:
        total[hidden] = 1.0
    s /= total
    np.log(total, out=total)
    total += top
    return torch.from_numpy(total.reshape(total.shape[:-1]))


def softmax_torch_min_elements() -> int:
    """:data:`SOFTMAX_TORCH_MIN_ELEMENTS`, measured on this machine at its first use (once a process).

    Both softmax implementations timed (wall clock, so PyTorch's own threads count; the best of 5
    rounds of a few calls, which drops a round another process interrupted) on
    masked scores of a decode step (4 x 1 x 48) and of a small encoder batch (4 x 4 x 32 x 64); each
    cost taken as per-call + per-element, the crossover is where the lines meet (PyTorch from 0
    when it is cheaper at both sizes, never when dearer at both). 20-30 ms once; only speed depends
    on the answer, and scores near the crossover cost about the same either way. AMD EPYC (AVX2), one
    thread: 14,000-26,000 elements in four processes (a constant 8,192 before, measured unmasked)."""
    global SOFTMAX_TORCH_MIN_ELEMENTS
    rng = np.random.default_rng(0)
    costs = {}
    for shape in ((4, 1, 48), (4, 4, 32, 64)):
        src = rng.standard_normal(shape, dtype=np.float32)
        src[..., -shape[-1] // 4:] = np.finfo(np.float32).min  # a padding mask's share of the keys
        work = np.empty_like(src)
        for impl in (_softmax_lse_numpy, _softmax_lse_torch):
            best = math.inf
            calls = 4 if src.size > 4096 else 30
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(calls):
                    np.copyto(work, src)
                    impl(work, True, 0.125)
                best = min(best, (time.perf_counter() - t) / calls)
            costs[impl, src.size] = best
    (n_small, n_large) = sorted({n for _, n in costs})
    line = {}
    for impl in (_softmax_lse_numpy, _softmax_lse_torch):
        per_element = (costs[impl, n_large] - costs[impl, n_small]) / (n_large - n_small)
        line[impl] = (costs[impl, n_small] - per_element * n_small, per_element)
    limit = crossover_elements(line[_softmax_lse_numpy], line[_softmax_lse_torch])
    SOFTMAX_TORCH_MIN_ELEMENTS = limit
    return limit


def crossover_elements(first: tuple[float, float], second: tuple[float, float]) -> int:
    """The size (elements) from which ``second`` costs no more than ``first``, each cost a line
    (seconds per call, seconds per element): 0 when ``second`` is no dearer either way, ``1 << 62``
    (never) when it is dearer per element (dearer per call too, or cheaper per call only: then
    ``first`` is kept throughout, the sizes it loses being the small ones where either is cheap)."""
    (call_1, element_1), (call_2, element_2) = first, second
    if call_2 <= call_1 and element_2 <= element_1:
        return 0
    if element_2 >= element_1:
        return 1 << 62
    return min(1 << 62, math.ceil((call_2 - call_1) / (element_1 - element_2)))


def _row_major(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _plain_mask(mask: Any, scores_shape: tuple[int, ...]) -> bool:
    """Whether :func:`fast_sdpa` takes ``mask`` as it is: a plain f32 tensor (the ATen kernel takes
    only the query's dtype: ``F.scaled_dot_product_attention`` turns a bool mask into -inf/0) not needing
    grad, of at most the scores' dimensions, each equal to the scores' or 1 (it broadcasts over
    them as PyTorch broadcasts it; anything else: the generic path)."""
    if type(mask) is not torch.Tensor or mask.dtype is not _F32 or mask.requires_grad:
        return False
    ms = mask.shape
    if len(ms) > len(scores_shape):
        return False
    for x, y in zip(reversed(ms), reversed(scores_shape)):
        if x != y and x != 1:
            return False
    return True


#: scores (elements) from which :func:`fast_sdpa` runs its softmax as PyTorch's in-place passes rather
#: than NumPy's: NumPy's call costs ~1 µs less, PyTorch's pass less per element (AMD EPYC, AVX2, one
#: thread: 8x4x64x64 scores 230 against 440 µs; a decode's 1x4x1x40, 9 against 12 µs). Both depend
#: on the CPU's vector units and each library's exp, so None: measured at first use
#: (:func:`softmax_torch_min_elements`). Only speed depends on it; tests force both sides.
SOFTMAX_TORCH_MIN_ELEMENTS: int | None = None
#: :func:`fast_sdpa`'s PyTorch softmax gives a (scaled, max-shifted) score below -79 the weight 0:
#: its term, < 5e-35 against the row's largest (1), is 27 orders below f32's resolution, and PyTorch's
#: exp of what underflows takes a slow path; scores are clamped to the floor (exp(-80) is a normal
#: float), and terms up to exp(-79) set to 0 after the exp
_EXP_FLOOR = -80.0
_EXP_ZERO_UP_TO = float(np.exp(np.float32(-79.0)))
_F32 = torch.float32


def _attention(m: Any, q: Any, k: Any, v: Any, mask: Any, is_causal: Any, scale: Any, enable_gqa: Any,
               with_lse: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``S = scale * Q K^T (+ mask)`` on the device, softmax in PyTorch, ``S V``; and, with
    ``with_lse``, the scores' log-sum-exp per query row (else None).

    The scale is the GEMM's ``alpha`` (a GEMM parameter every device takes, not a post-op a
    partial device may lack); the mask is an ``add`` post-op (on the host after the GEMM
    where the device lacks it)."""
    if q is None or k is None or v is None:
        raise Host(ARGS)  # PyTorch reports the missing argument
    check_tensors(q, k, v)
    same_dtype(q, k, v)
    if mask is not None:
        check_tensors(mask, allowed=_MASK_DTYPES)
        if mask.dtype is not torch.bool and mask.dtype is not q.dtype and mask.dtype is not _F32:
            raise Host(DTYPE)  # (an f32 mask with bf16/f16 q, as autocast leaves it: PyTorch takes it too)
        if mask.ndim < 2:
            raise Host(SHAPE)  # PyTorch refuses a 1-D mask (IndexError), though it would broadcast
    qs, ks, vs = q.shape, k.shape, v.shape
    nd = len(qs)
    if nd < 2 or len(ks) != nd or len(vs) != nd or qs[-1] != ks[-1] or ks[-2] != vs[-2] or not qs[-1]:
        raise Host(SHAPE)  # (an empty head dimension: no 1/sqrt(E) scale; PyTorch decides what it gives)
    if enable_gqa and nd >= 3 and ks[-3] != qs[-3]:
        if qs[-3] % ks[-3]:
            raise Host(SHAPE)
        rep = qs[-3] // ks[-3]
        k, v = k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3)
    L, S, E = qs[-2], ks[-2], qs[-1]
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    add = None
    if is_causal:
        if mask is not None:
            raise Host(ARGS)  # PyTorch refuses this combination itself
        mask = torch.ones(L, S, dtype=torch.bool).tril()
    low = q.dtype is torch.float16 or q.dtype is torch.bfloat16
    if mask is not None:  # additive form, in the scores' dtype (f32 for f16/bf16 inputs)
        s_dtype = torch.float32 if low else q.dtype
        add = mask.to(s_dtype) if mask.dtype != torch.bool else torch.zeros(mask.shape, dtype=s_dtype).masked_fill_(
            ~mask, float("-inf"))
    post_ops = [post.add(to_numpy(add))] if add is not None else []
    qn, kn, vn = to_numpy(q), to_numpy(k), to_numpy(v)
    if nd > 3:  # a batch of strided matrices (heads-transposed views): row-major copies (see fast_sdpa)
        qn, kn, vn = _row_major(qn), _row_major(kn), _row_major(vn)
    # both GEMMs over the batch they broadcast to (a query batch of 1 against the keys' batch of B
    # makes B of each: counting q's own batch gave half the FLOPs there)
    flops = mm_flops(qn.shape, (*kn.shape[:-2], E, S)) + mm_flops((*qn.shape[:-2], L, S), vn.shape)
    # scores in f32 for f16/bf16 inputs (the f32-output combination), softmax in PyTorch
    s = to_torch(m.run(0, qn, kn, trans_b=True, alpha=scale, post_ops=post_ops,
                       out_dtype=np.float32 if low else None, calls=0))
    probs = torch.softmax(s, dim=-1)
    # log-sum-exp from what is at hand: each row's largest probability is exp(max s - lse), and it is
    # at least 1/S (never underflows), so lse = max s - log(max p): two reductions, where
    # torch.logsumexp makes a third pass of exp over the scores (4x the time at MHA's 8x4x64x64)
    # (the scores' row maxima are read once, for the log-sum-exp and for the rows a mask hides whole)
    top = s.amax(-1, keepdim=True) if with_lse or add is not None else None
    hidden = top.isneginf() if add is not None else None
    lse = top.squeeze(-1).sub_(probs.amax(-1).log_()) if with_lse else None
    if hidden is not None:  # a row the mask hides whole: probabilities and log-sum-exp 0, as PyTorch gives it
        probs.masked_fill_(hidden, 0.0)
        if lse is not None:
            lse.masked_fill_(hidden.squeeze(-1), 0.0)
    if low:
        probs = probs.to(q.dtype)
    out = to_torch(m.run(flops, to_numpy(probs), vn))
    like = _query_layout(q, out.shape)
    return (out if like is None else like.copy_(out)), lse


def _query_layout(q: torch.Tensor, shape: Any) -> torch.Tensor | None:
    """An empty output laid out as PyTorch's CPU attention kernel lays out its own, where that is not
    row-major (None: row-major, as the device returns it).

    The kernel writes its output in the memory order of a query that is a heads-transposed view
    (``x.view(B, L, H, E).transpose(1, 2)``, how BERT- and GPT-style layers make q), so code after
    it may ``out.transpose(1, 2).view(B, L, H * E)``, which a row-major result refuses. Measured on
    torch 2.13: that order for a 4-D query whose ``transpose(1, 2)`` is contiguous (and itself is
    not), with values of the query's head size; row-major otherwise."""
    if (q.dim() == 4 and tuple(shape) == tuple(q.shape) and not q.is_contiguous()
            and q.transpose(1, 2).is_contiguous()):
        b, h, n, e = q.shape
        return torch.empty((b, n, h, e), dtype=q.dtype).transpose(1, 2)
    return None


def handlers() -> dict[Callable, Callable]:
    """func -> handler for the GEMM family."""
    T = torch.Tensor
    h: dict[Callable, Callable] = {}
    for f in (torch.matmul, T.matmul, T.__matmul__):
        h[f] = matmul
    h[T.__rmatmul__] = rmatmul
    for f in (torch.mm, T.mm, torch.bmm, T.bmm):
        h[f] = matmul_strict
    h[torch.mv] = h[T.mv] = mv
    for f in (torch.addmm, T.addmm, torch.baddbmm, T.baddbmm):
        h[f] = addmm
    h[torch._addmm_activation] = addmm_activation
    h[F.linear] = linear
    h[F.scaled_dot_product_attention] = sdpa
    h[torch._int_mm] = int_mm
    return h
