"""A real workload: one transformer encoder block, forward, through the device.

Every GEMM goes through :func:`ffaccel.matmul` with its epilogue fused (QKV bias; the
attention scale as the GEMM's alpha; output projection bias plus residual; the MLP's bias
plus GELU; bias plus residual), softmax and layer norm stay in NumPy. The same block runs in
NumPy float32 (the speed baseline) and in float64 (the accuracy reference).

On a partial device the block picks the first of :data:`WORKLOAD_COMBOS` the device declares
(bf16 or f16 GEMMs with f32 results where it has no f32) and fuses the post-ops it declares;
the rest of each epilogue runs on the host right after the GEMM, timed as its own part.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy.special import erf

from ..abi.validate import DeviceCaps
from ..drivers.epilogue import float_steps, run_steps
from ..frontends import matmul, post
from ..runtime import Device
from ..spec import DTYPES, POST_OPS, GemmCombo, PostOpKind
from .consistency import share_problems
from .throughput import OPENBLAS_SPIN_S
from .timing import Timing


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


#: The block's GEMM dtypes in order of preference: (input dtype name, combination). Each takes f32
#: activations in and gives f32 out; bf16 and f16 inputs are rounded from f32 on the host (counted).
WORKLOAD_COMBOS: tuple[str, ...] = ("f32xf32->f32->f32", "bf16xbf16->f32->f32", "f16xf16->f32->f32")


@dataclass(frozen=True)
class BlockPlan:
    """How the block runs on one device: its GEMMs' dtypes and which post-ops the device fuses."""

    combo: GemmCombo
    post_ops: frozenset[PostOpKind]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(DTYPES[self.combo.a].numpy)

    def split(self, ops: Sequence[post.PostOp]) -> tuple[float, list[post.PostOp], list[post.PostOp]]:
        """(alpha, post-ops the device runs, post-ops the host runs after it).

        Leading scales are the GEMM's ``alpha`` (a GEMM parameter, not a post-op); then the
        longest run of post-ops the device declares stays fused, the rest (in order) runs on
        the host on the f32 result.
        """
        alpha = 1.0
        ops = list(ops)
        while ops and ops[0].kind == PostOpKind.SCALE:
            alpha *= float(ops.pop(0).param0)
        fused = 0
        while fused < len(ops) and ops[fused].kind in self.post_ops:
            fused += 1
        return alpha, ops[:fused], ops[fused:]

    def describe(self) -> str:
        return self.combo.name


def plan_block(caps: DeviceCaps) -> tuple[BlockPlan | None, str]:
    """The block's plan on a device that declares ``caps``, or None and why it cannot run there."""
    by_name = {c.name: c for c in caps.combos}
    for name in WORKLOAD_COMBOS:
        if name in by_name:
            return BlockPlan(by_name[name], frozenset(caps.post_ops)), ""
    have = ", ".join(sorted(c.name for c in caps.combos)) or "none"
    return None, (f"the block is a float model: it needs one of {', '.join(WORKLOAD_COMBOS)}; the device "
                  f"declares {have}")


class Parts:
    """Wall time per part of one block call, each part a measured interval (never a difference)."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.s[name] = self.s.get(name, 0.0) + time.perf_counter() - t0


def _host_post_ops(y: np.ndarray, ops: Sequence[post.PostOp]) -> np.ndarray:
    """``ops`` applied to an f32 or f64 result on the host (the drivers' own post-op arithmetic)."""
    if not ops:
        return y
    y = np.array(y, copy=True) if not y.flags.writeable or y.base is not None else y
    epi = tuple(None if o.operand is None else (o.operand[:, None] if o.kind == PostOpKind.BIAS_M else o.operand)
                for o in ops)
    run_steps(float_steps(ops, y.dtype), y, epi)
    return y


def numpy_gemm(parts: Parts) -> GemmFn:
    """The block's GEMMs in NumPy: ``@`` (part "GEMM"), then the epilogue (part "epilogue")."""
    def gemm(a: np.ndarray, b: np.ndarray, ops: Sequence[post.PostOp], trans_b: bool = False) -> np.ndarray:
        with parts("GEMM"):
            y = a @ (b.swapaxes(-1, -2) if trans_b else b)
        with parts("epilogue"):
            return _host_post_ops(y, ops)
    return gemm


def device_gemm(device: Device, plan: BlockPlan, parts: Parts) -> GemmFn:
    """The block's GEMMs on the device: operands rounded to the plan's dtype (part "conversion"),
    ``matmul`` with alpha and the fused post-ops (part "ffaccel matmul"), the rest of the epilogue
    on the host (part "host epilogue")."""
    in_dtype = plan.input_dtype

    def gemm(a: np.ndarray, b: np.ndarray, ops: Sequence[post.PostOp], trans_b: bool = False) -> np.ndarray:
        alpha, fused, host = plan.split(ops)
        if a.dtype != in_dtype:
            with parts("conversion"):
                a, b = a.astype(in_dtype), b.astype(in_dtype)
        with parts("ffaccel matmul"):
            y = matmul(a, b, alpha=alpha, trans_b=trans_b, post_ops=fused, out_dtype=np.float32, device=device)
        if host:
            with parts("host epilogue"):
                y = _host_post_ops(y, host)
        return y
    return gemm


GemmFn = Callable[..., np.ndarray]


def block(w: dict[str, np.ndarray], shape: BlockShape, gemm: GemmFn, parts: Parts | None = None) -> np.ndarray:
    """The encoder block with its GEMMs (and their bias, scale, GELU, residual) through ``gemm``;
    softmax, layer norm and the head reshapes are the part "rest" of ``parts``."""
    parts = parts if parts is not None else Parts()
    x = w["x"]
    d, dh = shape.d_model, shape.d_model // shape.heads
    qkv = gemm(x, w["wqkv"], [post.bias(w["bqkv"])])
    with parts("rest"):
        q, k, v = (_heads(qkv[:, i * d:(i + 1) * d], shape) for i in range(3))
    scores = gemm(q, k, [post.scale(1.0 / math.sqrt(dh))], trans_b=True)
    with parts("rest"):
        p = _softmax(scores)
    ctx = gemm(p, v, [])
    with parts("rest"):
        ctx = ctx.transpose(0, 2, 1, 3).reshape(-1, d)
    h1 = gemm(ctx, w["wo"], [post.bias(w["bo"]), post.add(x)])
    with parts("rest"):
        h1 = _layernorm(h1)
    g = gemm(h1, w["w1"], [post.bias(w["b1"]), post.gelu()])
    y = gemm(g, w["w2"], [post.bias(w["b2"]), post.add(h1)])
    with parts("rest"):
        return _layernorm(y)


def block_device(w: dict[str, np.ndarray], shape: BlockShape, device: Device, plan: BlockPlan | None = None) -> np.ndarray:
    """The block with every GEMM on the device (see :func:`device_gemm`)."""
    if plan is None:
        plan, why = plan_block(device.info().caps)
        if plan is None:
            raise ValueError(why)
    return block(w, shape, device_gemm(device, plan, Parts()))


#: The post-ops the block's GEMMs carry (the attention scale is alpha, not a post-op).
BLOCK_POST_OPS = frozenset({PostOpKind.BIAS_N, PostOpKind.ADD, PostOpKind.GELU_ERF})
#: The parts of each block's breakdown, in the order they are shown; "other" is the block's time
#: outside every measured part (Python glue between them): the whole minus parts measured inside it.
DEVICE_PARTS = ("ffaccel matmul", "conversion", "host epilogue", "rest", "other")
NUMPY_PARTS = ("GEMM", "epilogue", "rest", "other")


def _sample_block(run: Callable[[Parts], object]) -> tuple[float, dict[str, float]]:
    parts = Parts()
    t0 = time.perf_counter()
    run(parts)
    total = time.perf_counter() - t0
    measured = dict(parts.s)
    measured["other"] = max(total - sum(measured.values()), 0.0)  # the parts lie inside the whole
    return total, measured


def measure_blocks(runs: dict[str, Callable[[Parts], object]], rounds: int, warmup: int = 1
                   ) -> dict[str, tuple[Timing, list[dict[str, float]]]]:
    """Each block called once per sample, each in a pass of its own, in the order of ``runs``;
    per sample its parts. Returns who -> (Timing of the whole, the parts of each sample in order).

    Not interleaved call by call: NumPy's OpenBLAS threads and the OpenMP pool of the ``cpu``
    driver's oneDNN both spin after a call, and blocks interleaved measure the two pools fighting
    (see :mod:`ffaccel.bench.throughput`); the pass after NumPy's waits until OpenBLAS's threads sleep.
    """
    out: dict[str, tuple[Timing, list[dict[str, float]]]] = {}
    for i, name in enumerate(runs):
        if i:
            time.sleep(OPENBLAS_SPIN_S)
        for _ in range(warmup):
            runs[name](Parts())
        samples = [_sample_block(runs[name]) for _ in range(rounds)]
        out[name] = (Timing(name, tuple(t for t, _ in samples)), [p for _, p in samples])
    return out


def median_sample(timing: Timing, parts: list[dict[str, float]]) -> dict[str, float]:
    """The parts of the sample whose whole is the (lower) median: the headline's own sample, so
    the breakdown adds up to the headline exactly."""
    order = sorted(range(len(timing.samples_s)), key=lambda i: timing.samples_s[i])
    i = order[(len(order) - 1) // 2]
    return dict(parts[i], total_s=timing.samples_s[i])


def run_workload(device: Device, shape: BlockShape = BlockShape(), *, rounds: int = 5,
                 plan: BlockPlan | None = None) -> dict[str, Any]:
    """Time the block on the device and in NumPy (f32), one after the other, compare both to a float64
    reference, and show where each block's time goes — headline and breakdown from the same
    samples (:func:`measure_blocks`). A group that looks disturbed is measured once more; a
    figure whose repeat still disagrees is withheld (see :mod:`ffaccel.bench.consistency`)."""
    if plan is None:
        plan, why = plan_block(device.info().caps)
        if plan is None:
            raise ValueError(why)
    w64 = make_weights(shape)
    w32 = {k: v.astype(np.float32) for k, v in w64.items()}
    ref = block_numpy(w64, shape)  # written apart from block(): an independent reference
    runs = {"numpy": lambda parts: block(w32, shape, numpy_gemm(parts), parts),
            "ffaccel": lambda parts: block(w32, shape, device_gemm(device, plan, parts), parts)}
    got = runs["ffaccel"](Parts())
    base = block_numpy(w32, shape)
    measured = measure_blocks(runs, rounds)
    if any(t.disturbed for t, _ in measured.values()):
        again = measure_blocks(runs, rounds, warmup=0)
        measured = {k: (replace(t, remeasured=True, first_median_s=measured[k][0].median_s), p)
                    for k, (t, p) in again.items()}
    t = {k: v[0] for k, v in measured.items()}
    breakdown: dict[str, Any] = {}
    for who, names in (("ffaccel", DEVICE_PARTS), ("numpy", NUMPY_PARTS)):
        sample = median_sample(*measured[who])
        parts = {n: sample.get(n, 0.0) for n in names}
        breakdown[who] = {"total_s": sample["total_s"], "parts_s": parts,
                          "problems": share_problems(parts, sample["total_s"])}
    withheld = {k: v.withheld for k, v in t.items() if v.withheld}
    for who in ("ffaccel", "numpy"):
        if breakdown[who]["problems"]:
            withheld.setdefault(who, []).extend(breakdown[who]["problems"])
    scale = float(np.abs(ref).max())
    return {
        "name": "transformer encoder block (forward, f32 activations)",
        "shape": shape.__dict__,
        "gemm_flops": shape.gemm_flops,
        "device": device.name,
        "combo": plan.combo.name,
        "host_post_ops": sorted(POST_OPS[k].name for k in BLOCK_POST_OPS - plan.post_ops),
        # the headline is the median sample's own whole (the lower one of an even count), so that the
        # breakdown below adds up to it exactly
        "ffaccel_s": breakdown["ffaccel"]["total_s"],
        "numpy_s": breakdown["numpy"]["total_s"],
        "speedup_vs_numpy": breakdown["numpy"]["total_s"] / breakdown["ffaccel"]["total_s"],
        "max_abs_err_ffaccel": float(np.abs(got - ref).max()),
        "max_abs_err_numpy": float(np.abs(base - ref).max()),
        "max_abs_diff_ffaccel_vs_numpy": float(np.abs(got - base).max()),
        "output_scale": scale,
        "disturbed": {k: v.disturbed for k, v in t.items() if v.disturbed},
        "remeasured": any(v.remeasured for v in t.values()),
        "withheld": withheld,
        "breakdown": breakdown,
    }

