"""Recurrent layers (``torch.lstm``/``gru``/``rnn_tanh``/``rnn_relu``, what ``nn.LSTM`` & co call)
and cells (``torch.lstm_cell`` & co, what ``nn.LSTMCell`` & co call).

Per layer and direction: the input projection of all time steps is one GEMM
(``X W_ih^T + b``, T N rows), then one GEMM per step for the recurrence (``W_hh h^T`` on
transposed state; see :func:`_step` for why, and why the input gates are added in PyTorch).
The gate nonlinearities and the cell update are elementwise and run in PyTorch.
LSTM and RNN fold both biases into the input projection; GRU keeps ``b_hh`` on the
recurrent GEMM (its candidate gate multiplies ``r`` into ``W_hn h + b_hn``). LSTM
projections (``proj_size``) are one more GEMM per step. An LSTM layer without projection (the
common one) runs :func:`_lstm_direction`: buffers made once per direction, each step's operands
contiguous, one sigmoid call for all four gates (the candidate's rows doubled), the cell update as
NumPy ufuncs in place. Left in PyTorch, and counted there with the reason: packed
sequences and dropout between layers in training (``arguments unsupported``), float16 and
bfloat16 (``dtype unsupported``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import post
from .accounting import ARGS, SHAPE, Host
from .tensors import check_tensors, same_dtype, to_numpy, to_torch

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
_KIND = {torch.lstm: "lstm", torch.gru: "gru", torch.rnn_tanh: "rnn_tanh", torch.rnn_relu: "rnn_relu"}
_FLOATS = (torch.float32, torch.float64)
#: Steps per chunk of an LSTM direction's step loop (:func:`_lstm_direction`): its input gates are
#: copied to contiguous blocks and its outputs written back a chunk at a time, in buffers made once
#: per direction (160 KB at hidden 128, batch 8, f32; the whole sequence's, 2.5 MB at T = 128, took
#: 580-650 page faults per call, fresh memory each time; chunks of 4-16 steps measured alike).
#: At least 2 (see the loop).
_CHUNK_STEPS = 8


def _project(m: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x W^T + b`` for x (T, N, I) as one GEMM over all T N rows, in x's own memory order."""
    T, N, I_ = x.shape
    flops = 2 * T * N * w.shape[0] * I_
    ops = [post.bias(to_numpy(b))] if b is not None else []
    if not x.is_contiguous() and x.transpose(0, 1).is_contiguous():  # batch-first memory
        r = to_torch(m.run(flops, to_numpy(x.transpose(0, 1).reshape(N * T, I_)), to_numpy(w), trans_b=True,
                           post_ops=ops))
        return r.view(N, T, w.shape[0]).transpose(0, 1)
    r = to_torch(m.run(flops, to_numpy(x.reshape(T * N, I_)), to_numpy(w), trans_b=True, post_ops=ops))
    return r.view(T, N, w.shape[0])


def _step(m: Any, kind: str, gx_t: torch.Tensor, h_t: torch.Tensor, c_t: torch.Tensor | None,
          w_hh: torch.Tensor, b_hh: torch.Tensor | None, w_hr: torch.Tensor | None,
          into: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One time step on transposed state (``h_t`` is h^T, hidden x batch): the recurrent GEMM
    ``W_hh h^T`` on the device, the cell update in PyTorch; returns (h^T, c^T).

    The step's GEMM is small (gates x hidden x batch) and repeats T times with one geometry.
    Transposed, its long side is the GEMM's m: OpenBLAS runs ``W_hh (4H x H) @ h^T (H x N)`` in
    half the time of ``h (N x H) @ W_hh^T`` (21 vs 44 µs at 512 x 128 x 8, measured), and each
    gate is a contiguous block of rows. It goes as a plain GEMM, which ``matmul`` serves from its
    per-geometry plan cache; an epilogue or a C operand would take the full descriptor path each
    step, several times the cost of the GEMM here. So the input gates ``gx_t`` (and GRU's
    ``b_hh``) are added in PyTorch, in place in the fresh result.

    Each elementwise op costs a few µs of PyTorch dispatch at these sizes, more than its
    arithmetic: the LSTM update runs in place on the fresh gates (sigmoid over i, f and o,
    tanh over the candidate; no temporaries for them) and writes h^T straight into ``into``
    (the layer's output slot for this step, a strided view) where given, instead of a copy.
    """
    hsz, n = h_t.shape
    g = to_torch(m.run(2 * n * w_hh.shape[0] * hsz, to_numpy(w_hh), to_numpy(h_t)))
    if kind == "gru":
        H = w_hh.shape[0] // 3
        if b_hh is not None:
            g += b_hh[:, None]
        rz = torch.sigmoid(gx_t[:2 * H] + g[:2 * H])
        r, z = rz[:H], rz[H:]
        cand = torch.tanh(gx_t[2 * H:] + r * g[2 * H:])
        return cand + z * (h_t - cand), None  # (1 - z) * cand + z * h
    g += gx_t
    if kind == "rnn_relu":
        return g.relu_(), None
    if kind == "rnn_tanh":
        return g.tanh_(), None
    assert c_t is not None
    H = w_hh.shape[0] // 4
    g[:2 * H].sigmoid_()  # i, f (rows of the transposed gates: contiguous blocks)
    g[3 * H:].sigmoid_()  # o
    cand = g[2 * H:3 * H].tanh_()
    c_t = torch.mul(g[H:2 * H], c_t).addcmul_(g[:H], cand)  # f c + i cand (c_t itself may be the caller's)
    th = torch.tanh(c_t)
    if w_hr is not None:
        h_t = th.mul_(g[3 * H:])
        return to_torch(m.run(2 * n * w_hr.shape[0] * H, to_numpy(w_hr), to_numpy(h_t))), c_t
    if into is not None:
        return torch.mul(g[3 * H:], th, out=into), c_t
    return th.mul_(g[3 * H:]), c_t


def _ifog(w: torch.Tensor | None) -> torch.Tensor | None:
    """An LSTM weight or bias with its gate blocks reordered from PyTorch's (i, f, g, o) to
    (i, f, o, g), the candidate block doubled: the step then takes one sigmoid over all four gates
    (:func:`_lstm_direction`). The doubling is exact in every dtype (a power of two), so the GEMMs
    give exactly twice the candidate's pre-activation, on a relaxed (bf16) device too."""
    if w is None:
        return None
    H = w.shape[0] // 4
    return torch.cat((w[:2 * H], w[3 * H:], w[2 * H:3 * H] * 2))


def _lstm_direction(m: Any, gx: np.ndarray, w_hh: np.ndarray, h: np.ndarray, c: np.ndarray, out: np.ndarray,
                    reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM layer and direction on transposed state: per step the recurrent GEMM
    ``W_hh h^T`` on the device, the cell update on the host; returns (h^T, c^T) after the last step.

    ``gx`` (T, N, 4H): the input projection (both biases in it), ``w_hh`` (4H, H), both from
    :func:`_ifog` (gates in (i, f, o, g) order, the candidate's rows doubled); ``h``, ``c`` (H, N):
    the initial state, transposed; ``out`` (T, N, H): this direction's output slots, written.

    The step is the whole per-call cost of an LSTM (T of them per layer, each a small GEMM), so
    it does no per-step set-up, and every host op reads and writes contiguous memory:

    - ``gx`` is copied to (4H, N) blocks, one per step, :data:`_CHUNK_STEPS` steps at a time
      (after the GEMM, the add of the strided ``gx[t].T`` cost 4.3 µs more per step than of a
      contiguous block, the copy ~3 µs; 512 x 8 gates);
    - each step's h^T goes into a contiguous (H, N) block of the chunk's buffer, which the next
      step's GEMM reads and which is copied to ``out`` once per chunk (a strided write into
      ``out`` cost ~2 µs more per step);
    - one PyTorch sigmoid over all four gates: the candidate's rows come doubled, and
      ``tanh(z) = 2 sigmoid(2z) - 1``; its product with ``i`` is ``2 (i s) - i`` (s = sigmoid(2z)),
      three NumPy ufuncs of ~1 µs instead of a tanh of ~3.7 µs (and a sigmoid over 3H rows of
      ~5 µs becomes one over 4H of ~5.6 µs);
    - the other products and sums as NumPy ufuncs into buffers made once per direction (about
      1 µs each, against 2-5 µs for a PyTorch call; the cell state sits under the gates in one
      buffer, so ``i s`` and ``f c`` are one call: 0-0.6 µs per step, the results bit for bit), ``tanh(c)`` as NumPy's (3.6 µs, PyTorch's
      4.9 µs); SciPy's expit (a scalar loop) is 3x slower than PyTorch's sigmoid here;
    - the GEMM through :meth:`Runner.repeated <.runner.Runner.repeated>`: its T calls counted once,
      each step one bare ``ffaccel.matmul`` (~1.5 µs less than ``m.run``; on a partial device
      each step still takes ``m.run``'s route).

    Per step at T = 128, batch 8, hidden 128, one thread: ~42 µs (main's loop before these: ~52),
    of which the GEMM ~20 µs (NumPy's own ``W @ h``: 19.2-19.5 µs); docs/torch.md, "The LSTM step
    loop, third look", has the figures and what was tried and dropped.

    The arithmetic is PyTorch's up to the rounding of that candidate (``c = f c + i g`` then
    ``h = o tanh(c)``): the max difference from stock PyTorch (oneDNN) over T = 128 steps at
    hidden 128, batch 8, f32, is 4e-7 in c and 3e-7 in the output, as before this layout.
    """
    T = gx.shape[0]
    H = w_hh.shape[1]
    N = h.shape[1]
    dt = gx.dtype
    K = min(T, _CHUNK_STEPS)
    gxs = np.empty((K, 4 * H, N), dt)  # a chunk of steps' input gates, each step's block contiguous
    hs = np.empty((K, H, N), dt)  # the chunk's h^T, contiguous: the next step's GEMM operand
    buf = np.empty((5 * H, N), dt)  # the gates' rows (i, f, o, s) then the cell state's
    g, c_new = buf[:4 * H], buf[4 * H:]
    g_t = to_torch(g)  # one view made once: the sigmoid over all gates
    i_g, o_g = g[:H], g[2 * H:3 * H]  # (s: sigmoid(2 z) of the candidate, rows 3H-4H)
    s_c, i_f = buf[3 * H:], g[:2 * H]  # (s; c) and (i; f): one product gives (i s; f c)
    prod = np.empty((2 * H, N), dt)
    i_s, f_c = prod[:H], prod[H:]
    np.copyto(c_new, c)  # the cell state, updated in place (c0 is the caller's)
    c = c_new
    h = np.array(h, dtype=dt, order="C")  # one GEMM geometry (strides) for every step
    th = np.empty_like(c)
    add, sub, mul, tanh, copyto = np.add, np.subtract, np.multiply, np.tanh, np.copyto
    gemm = m.repeated(2 * N * w_hh.shape[0] * H, w_hh, T)  # b -> W_hh b on the device, its T calls counted
    gx_blocks, h_blocks = list(gxs), list(hs)  # each step's views, made once
    starts = range(0, T, K)
    for t0 in (reversed(starts) if reverse else starts):
        k = min(K, T - t0)
        copyto(gxs[:k], gx[t0:t0 + k].transpose(0, 2, 1))
        steps = zip(gx_blocks[:k], h_blocks[:k])
        for gx_j, h_j in (reversed(list(steps)) if reverse else steps):
            add(gemm(h), gx_j, out=g)
            g_t.sigmoid_()
            mul(s_c, i_f, out=prod)  # i s and f c in one call
            add(i_s, i_s, out=i_s)
            sub(i_s, i_g, out=i_s)  # i (2 s - 1) = i tanh(z)
            add(f_c, i_s, out=c)
            tanh(c, out=th)
            h = mul(th, o_g, out=h_j)  # (read by the next step before h_j is written again: K >= 2)
        copyto(out[t0:t0 + k], hs[:k].transpose(0, 2, 1))
    return h, c


def rnn(m: Any, func: Callable, args: tuple, kwargs: dict) -> Any:
    kind = _KIND[func]
    if kwargs or len(args) != 9:
        raise Host(ARGS)
    packed = not isinstance(args[1] if kind == "lstm" else args[2], (list, tuple))
    if packed:
        raise Host(ARGS)  # PackedSequence: variable lengths per step
    x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
    if train and dropout and num_layers > 1:
        raise Host(ARGS)  # random work between layers
    h0, c0 = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    params = list(params)
    check_tensors(x, h0, c0, *params, allowed=_FLOATS)
    same_dtype(x, h0, c0, *params)
    dirs = 2 if bidirectional else 1
    per = len(params) // max(1, num_layers * dirs)
    if x.ndim != 3 or num_layers < 1 or per * num_layers * dirs != len(params) or per not in (2, 3, 4, 5):
        raise Host(SHAPE)
    proj = kind == "lstm" and per == (5 if has_biases else 3)
    xt = x.transpose(0, 1) if batch_first else x  # (T, N, I)
    T, N = xt.shape[:2]
    if T == 0:
        raise Host(SHAPE)  # PyTorch refuses an empty sequence with its own error
    h_out = h0.shape[-1]
    layer_in = xt
    hn: list[torch.Tensor] = []
    cn: list[torch.Tensor] = []
    for layer in range(num_layers):
        # time-major, as PyTorch's own kernel (its batch-first output is a transposed view too)
        out = torch.empty(T, N, dirs * h_out, dtype=x.dtype)
        for d in range(dirs):
            p = params[(layer * dirs + d) * per:(layer * dirs + d + 1) * per]
            w_ih, w_hh = p[0], p[1]
            b_ih, b_hh = (p[2], p[3]) if has_biases else (None, None)
            w_hr = p[-1] if proj else None
            G = _GATES[kind]
            if w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] != layer_in.shape[2] or w_hh.shape[0] % G \
                    or w_ih.shape[0] != w_hh.shape[0] or w_hh.shape[1] != h_out:
                raise Host(SHAPE)
            b_in = b_ih
            if kind != "gru" and b_ih is not None and b_hh is not None:
                b_in = b_ih + b_hh  # both biases once, in the input projection's epilogue
            i = layer * dirs + d
            if kind == "lstm" and not proj:  # the common layer: its own loop (see _lstm_direction)
                w_ih, w_hh, b_in = _ifog(w_ih), _ifog(w_hh), _ifog(b_in)
                h_np, c_np = _lstm_direction(m, to_numpy(_project(m, layer_in, w_ih, b_in)), to_numpy(w_hh),
                                             to_numpy(h0[i].T), to_numpy(c0[i].T),
                                             to_numpy(out)[:, :, d * h_out:(d + 1) * h_out], reverse=d == 1)
                hn.append(to_torch(h_np).T)
                cn.append(to_torch(c_np).T)
                continue
            gates = _project(m, layer_in, w_ih, b_in)
            h, c = h0[i].T, (c0[i].T if c0 is not None else None)  # transposed state (see _step)
            direct = kind == "lstm" and not proj  # the step writes h^T into its output slot itself
            for t in (range(T) if d == 0 else range(T - 1, -1, -1)):
                slot = out[t, :, d * h_out:(d + 1) * h_out]
                h, c = _step(m, kind, gates[t].T, h, c, w_hh, b_hh if kind == "gru" else None, w_hr,
                             slot.T if direct else None)
                if not direct:
                    slot.copy_(h.T)
            hn.append(h.T)
            if c is not None:
                cn.append(c.T)
        layer_in = out
    output = layer_in.transpose(0, 1) if batch_first else layer_in
    h_n = torch.stack(hn) if hn else h0.clone()
    if kind == "lstm":
        return output, h_n, (torch.stack(cn) if cn else c0.clone())
    return output, h_n


_CELLS = {torch.lstm_cell: "lstm", torch.gru_cell: "gru", torch.rnn_tanh_cell: "rnn_tanh",
          torch.rnn_relu_cell: "rnn_relu"}


def cell(m: Any, func: Callable, args: tuple, kwargs: dict) -> Any:
    """One step of ``nn.LSTMCell`` & co: the input GEMM, then :func:`_step` as in a layer."""
    kind = _CELLS[func]
    names = ("input", "hx", "w_ih", "w_hh", "b_ih", "b_hh")
    p = dict(zip(names, args))
    p.update(kwargs)
    if set(p) - set(names):
        raise Host(ARGS)
    x, hx, w_ih, w_hh, b_ih, b_hh = (p.get(n) for n in names)
    h, c = (hx[0], hx[1]) if kind == "lstm" else (hx, None)
    check_tensors(x, h, c, w_ih, w_hh, b_ih, b_hh, allowed=_FLOATS)
    same_dtype(x, h, c, w_ih, w_hh, b_ih, b_hh)
    G = _GATES[kind]
    if x.ndim != 2 or h.ndim != 2 or w_ih.ndim != 2 or w_hh.ndim != 2 or w_ih.shape[1] != x.shape[1] \
            or w_ih.shape[0] != w_hh.shape[0] or w_hh.shape[0] % G or w_hh.shape[1] != h.shape[1] \
            or h.shape[0] != x.shape[0]:
        raise Host(SHAPE)
    b_in = b_ih
    if kind != "gru" and b_ih is not None and b_hh is not None:
        b_in = b_ih + b_hh
    gx = _project(m, x[None], w_ih, b_in)[0]
    h_t, c_t = _step(m, kind, gx.T, h.T, c.T if c is not None else None, w_hh, b_hh if kind == "gru" else None, None)
    h = h_t.T.contiguous()  # a cell returns (batch, hidden) tensors in PyTorch's own layout
    return (h, c_t.T.contiguous()) if kind == "lstm" else h


_LSTM_MODE = 2  # mkldnn_rnn_layer's ``mode`` for an LSTM (oneDNN's cell kinds: 0 RNN tanh, 1 RNN relu, 2 LSTM, 3 GRU)


def mkldnn_layer(m: Any, func: Any, args: tuple, kwargs: dict) -> tuple:
    """``aten::mkldnn_rnn_layer``: one layer and direction of ``nn.LSTM`` as PyTorch runs it with
    oneDNN (f32 on CPU), time-major whatever ``batch_first`` says; returns (output, h_n, c_n,
    workspace). :func:`_lstm_direction` runs it; the workspace (oneDNN's, for its backward) is
    returned empty: the dispatcher keeps the layer on the host when grad is needed."""
    if kwargs or len(args) != 16:
        raise Host(ARGS)
    x, w_ih, w_hh, b_ih, b_hh, hx, cx, reverse, batch_sizes, mode, hidden, _layers, has_biases = args[:13]
    if batch_sizes or mode != _LSTM_MODE:
        raise Host(ARGS)  # packed sequences (variable lengths per step); other cells
    check_tensors(x, w_ih, w_hh, hx, cx, allowed=_FLOATS)
    same_dtype(x, w_ih, w_hh, hx, cx)
    if x.ndim != 3 or w_ih.ndim != 2 or w_hh.ndim != 2 or hx.ndim != 2 or cx.ndim != 2 or x.shape[0] == 0 \
            or w_hh.shape != (4 * hidden, hidden) or w_ih.shape != (4 * hidden, x.shape[2]) \
            or hx.shape != (x.shape[1], hidden) or cx.shape != hx.shape:
        raise Host(SHAPE)
    b_in = None
    if has_biases:
        check_tensors(b_ih, b_hh, allowed=_FLOATS)
        same_dtype(x, b_ih, b_hh)
        b_in = _ifog(b_ih + b_hh)  # both biases once, in the input projection's epilogue
    T, N = x.shape[:2]
    out = torch.empty(T, N, hidden, dtype=x.dtype)
    h, c = _lstm_direction(m, to_numpy(_project(m, x, _ifog(w_ih), b_in)), to_numpy(_ifog(w_hh)), to_numpy(hx.T),
                           to_numpy(cx.T), to_numpy(out), reverse=bool(reverse))
    # h and c are the direction's own (H, N) buffers: fresh contiguous (N, H) tensors, as PyTorch's
    return out, to_torch(h).T.contiguous(), to_torch(c).T.contiguous(), None


def handlers() -> dict[Callable, Callable]:
    """func -> handler for recurrent layers and cells."""
    return {**{f: rnn for f in _KIND}, **{f: cell for f in _CELLS}}
