"""A real workload: one transformer encoder block, forward, through the device.

Every GEMM goes through :func:`ffaccel.matmul` with its epilogue fused (QKV bias; the
attention scale; output projection bias plus residual; the MLP's bias plus GELU; bias
plus residual), softmax and layer norm stay in NumPy. The same block runs in NumPy
float32 (the speed baseline) and in float64 (the accuracy reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import erf

from ..frontends import matmul, post
from ..runtime import Device
from .timing import measure_checked


@dataclass(frozen=True)
class BlockShape:
    batch: int = 8
    seq: int = 128
    d_model: int = 256
    heads: int = 4
    d_ff: int = 1024

    @property
    def gemm_flops(self) -> float:
        t, d, f, s = self.batch * self.seq, self.d_model, self.d_ff, self.seq
        return 2.0 * t * (3 * d * d + d * d + 2 * d * f) + 2.0 * 2 * self.batch * s * s * d


def make_weights(shape: BlockShape, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f = shape.d_model, shape.d_ff
    w = {
        "wqkv": rng.standard_normal((d, 3 * d)) / math.sqrt(d), "bqkv": rng.standard_normal(3 * d) * 0.1,
        "wo": rng.standard_normal((d, d)) / math.sqrt(d), "bo": rng.standard_normal(d) * 0.1,
        "w1": rng.standard_normal((d, f)) / math.sqrt(d), "b1": rng.standard_normal(f) * 0.1,
        "w2": rng.standard_normal((f, d)) / math.sqrt(f), "b2": rng.standard_normal(d) * 0.1,
        "x": rng.standard_normal((shape.batch * shape.seq, d)),
    }
    return w


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _layernorm(x: np.ndarray) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + 1e-5)


def _heads(x: np.ndarray, shape: BlockShape) -> np.ndarray:
    b, s, h = shape.batch, shape.seq, shape.heads
    return x.reshape(b, s, h, -1).transpose(0, 2, 1, 3)  # (b, h, s, dh): a strided view


def block_numpy(w: dict[str, np.ndarray], shape: BlockShape) -> np.ndarray:
    """The block in NumPy, in whatever float dtype the weights have."""
    x = w["x"]
    d, dh = shape.d_model, shape.d_model // shape.heads
    qkv = x @ w["wqkv"] + w["bqkv"]
    q, k, v = (_heads(qkv[:, i * d:(i + 1) * d], shape) for i in range(3))
    p = _softmax((q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(dh)))
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(-1, d)
    h1 = _layernorm(ctx @ w["wo"] + w["bo"] + x)
    z = h1 @ w["w1"] + w["b1"]
    g = z * (1 + erf(z / math.sqrt(2))) / 2
    return _layernorm(g @ w["w2"] + w["b2"] + h1)


def block_device(w: dict[str, np.ndarray], shape: BlockShape, device: Device) -> np.ndarray:
    """The same block with every GEMM (and its bias, scale, GELU, residual) on the device."""
    x = w["x"]
    d, dh = shape.d_model, shape.d_model // shape.heads
    qkv = matmul(x, w["wqkv"], post_ops=[post.bias(w["bqkv"])], device=device)
    q, k, v = (_heads(qkv[:, i * d:(i + 1) * d], shape) for i in range(3))
    scores = matmul(q, k, trans_b=True, post_ops=[post.scale(1.0 / math.sqrt(dh))], device=device)
    ctx = matmul(_softmax(scores), v, device=device).transpose(0, 2, 1, 3).reshape(-1, d)
    h1 = _layernorm(matmul(ctx, w["wo"], post_ops=[post.bias(w["bo"]), post.add(x)], device=device))
    g = matmul(h1, w["w1"], post_ops=[post.bias(w["b1"]), post.gelu()], device=device)
    return _layernorm(matmul(g, w["w2"], post_ops=[post.bias(w["b2"]), post.add(h1)], device=device))


def _gemm_calls(w: dict[str, np.ndarray], shape: BlockShape) -> list[tuple[str, dict[str, Any], Callable, Callable]]:
    """The block's six GEMM calls on realistic operands (from one f32 forward pass).

    Each entry: (name, keyword arguments of ``matmul``, NumPy's GEMM of the same operands,
    NumPy's epilogue of that call applied to a product).
    """
    x = w["x"]
    d, dh = shape.d_model, shape.d_model // shape.heads
    qkv = x @ w["wqkv"] + w["bqkv"]
    q, k, v = (_heads(qkv[:, i * d:(i + 1) * d], shape) for i in range(3))
    s = 1.0 / math.sqrt(dh)
    p = _softmax((q @ k.swapaxes(-1, -2)) * np.float32(s))
    ctx = (p @ v).transpose(0, 2, 1, 3).reshape(-1, d)
    h1 = _layernorm(ctx @ w["wo"] + w["bo"] + x)
    z = h1 @ w["w1"] + w["b1"]
    g = (z * (1 + erf(z / math.sqrt(2))) / 2).astype(np.float32)
    gelu = lambda y: y * (1 + erf(y / math.sqrt(2))) / 2  # noqa: E731
    return [
        ("qkv projection", dict(a=x, b=w["wqkv"], post_ops=[post.bias(w["bqkv"])]),
         lambda: x @ w["wqkv"], lambda y: y + w["bqkv"]),
        ("attention scores", dict(a=q, b=k, trans_b=True, post_ops=[post.scale(s)]),
         lambda: q @ k.swapaxes(-1, -2), lambda y: y * np.float32(s)),
        ("attention x V", dict(a=p, b=v, post_ops=[]), lambda: p @ v, lambda y: y),
        ("output projection", dict(a=ctx, b=w["wo"], post_ops=[post.bias(w["bo"]), post.add(x)]),
         lambda: ctx @ w["wo"], lambda y: y + w["bo"] + x),
        ("MLP up + GELU", dict(a=h1, b=w["w1"], post_ops=[post.bias(w["b1"]), post.gelu()]),
         lambda: h1 @ w["w1"], lambda y: gelu(y + w["b1"])),
        ("MLP down", dict(a=g, b=w["w2"], post_ops=[post.bias(w["b2"]), post.add(h1)]),
         lambda: g @ w["w2"], lambda y: y + w["b2"] + h1),
    ]


def time_breakdown(device: Device, shape: BlockShape = BlockShape(), *, rounds: int = 5,
                   w32: dict[str, np.ndarray] | None = None, min_sample_s: float = 0.01) -> dict[str, Any]:
    """Where the block's time goes, on the device and in NumPy, measured side by side.

    For each of the block's GEMM calls, four figures in one interleaved measurement, with
    both whole blocks: NumPy's ``@`` of the same operands (the GEMM itself), ``matmul``
    without its epilogue, ``matmul`` with it (as the block calls it) and NumPy's epilogue
    on a product. Then, per block:

    * ``gemm_s``: NumPy's ``@`` of the block's GEMMs, the BLAS work both blocks share;
    * ``dispatch_s`` (device): ``matmul`` without epilogue minus that — front-end, runtime
      and driver cost around the BLAS call (negative where the driver's GEMM is faster);
    * ``epilogue_s``: ``matmul`` with minus without its epilogue (device); NumPy's own
      epilogue operations (NumPy);
    * ``rest_s``: the whole block minus the above — softmax, layer norm, head reshapes.

    Pieces measured apart do not add up exactly to the block (caches are warmer when a
    call repeats), so ``rest_s`` absorbs the difference; all figures are medians.
    """
    w32 = w32 if w32 is not None else {k: v.astype(np.float32) for k, v in make_weights(shape).items()}
    calls = _gemm_calls(w32, shape)
    cands: dict[str, Callable[[], object]] = {
        "block|ffaccel": lambda: block_device(w32, shape, device), "block|numpy": lambda: block_numpy(w32, shape)}
    for name, kw, np_gemm, np_epi in calls:
        plain = {k: v for k, v in kw.items() if k != "post_ops"}
        product = np_gemm()
        cands[f"{name}|fused"] = lambda kw=kw: matmul(device=device, **kw)
        cands[f"{name}|plain"] = lambda plain=plain: matmul(device=device, **plain)
        cands[f"{name}|numpy gemm"] = np_gemm
        cands[f"{name}|numpy epilogue"] = lambda f=np_epi, y=product: f(y)
    # samples of several calls (10 ms by default): one call of a small GEMM is too short to
    # survive a busy machine
    t = measure_checked(cands, rounds=rounds, warmup=1, min_sample_s=min_sample_s)
    med = {k: v.median_s for k, v in t.items()}
    per_call = []
    for name, _, _, _ in calls:
        per_call.append({"call": name, "numpy_gemm_s": med[f"{name}|numpy gemm"],
                         "matmul_plain_s": med[f"{name}|plain"], "matmul_fused_s": med[f"{name}|fused"],
                         "numpy_epilogue_s": med[f"{name}|numpy epilogue"]})
    gemm = sum(c["numpy_gemm_s"] for c in per_call)
    plain = sum(c["matmul_plain_s"] for c in per_call)
    fused = sum(c["matmul_fused_s"] for c in per_call)
    np_epi = sum(c["numpy_epilogue_s"] for c in per_call)
    return {
        "device": {"total_s": med["block|ffaccel"], "gemm_s": gemm, "dispatch_s": plain - gemm,
                   "epilogue_s": fused - plain, "rest_s": med["block|ffaccel"] - fused},
        "numpy": {"total_s": med["block|numpy"], "gemm_s": gemm, "dispatch_s": 0.0, "epilogue_s": np_epi,
                  "rest_s": med["block|numpy"] - gemm - np_epi},
        "calls": per_call,
        "disturbed": {k: v.disturbed for k, v in t.items() if v.disturbed},
        "remeasured": any(v.remeasured for v in t.values()),
    }


def run_workload(device: Device, shape: BlockShape = BlockShape(), *, rounds: int = 5,
                 min_sample_s: float = 0.01) -> dict[str, object]:
    """Time the block on the device and in NumPy (f32), compare both to a float64 reference, and
    show where the time goes (:func:`time_breakdown`, samples of at least ``min_sample_s``)."""
    w64 = make_weights(shape)
    w32 = {k: v.astype(np.float32) for k, v in w64.items()}
    ref = block_numpy(w64, shape)
    got = block_device(w32, shape, device)
    base = block_numpy(w32, shape)
    t = measure_checked({"ffaccel": lambda: block_device(w32, shape, device),
                         "numpy": lambda: block_numpy(w32, shape)}, rounds=rounds, warmup=1, min_sample_s=0.0)
    scale = float(np.abs(ref).max())
    return {
        "name": "transformer encoder block (forward, f32)",
        "shape": shape.__dict__,
        "gemm_flops": shape.gemm_flops,
        "device": device.name,
        "ffaccel_s": t["ffaccel"].median_s,
        "numpy_s": t["numpy"].median_s,
        "speedup_vs_numpy": t["numpy"].median_s / t["ffaccel"].median_s,
        "max_abs_err_ffaccel": float(np.abs(got - ref).max()),
        "max_abs_err_numpy": float(np.abs(base - ref).max()),
        "max_abs_diff_ffaccel_vs_numpy": float(np.abs(got - base).max()),
        "output_scale": scale,
        "disturbed": {k: v.disturbed for k, v in t.items() if v.disturbed},
        "remeasured": any(v.remeasured for v in t.values()),
        "breakdown": time_breakdown(device, shape, rounds=rounds, w32=w32, min_sample_s=min_sample_s),
    }
