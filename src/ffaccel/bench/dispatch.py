"""Dispatch overhead: the per-operation cost of tiny GEMMs through every path.

A *path* is an open device: in-process (``cpu``), the server's socket path
(``unix:PATH``) or its ring path (``unix:PATH?transport=ring``). For each size the
harness times, side by side with NumPy's ``@`` (``torch.mm``, when installed, in a pass
of its own right after: see :mod:`ffaccel.bench.throughput` on spinning thread pools):

* ``matmul``: the NumPy-style front-end on host arrays (what existing code calls);
* ``submit xN``: one submission of N pre-encoded GEMM descriptors on pre-filled
  buffers, waited on; the cost is per operation (time / N) — batch 1 is the
  ``ioctl`` model, larger batches show what batching buys;
* ``replay xN``: a recorded command list of N GEMMs replayed (when the device
  supports command lists).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..abi import Gemm, encode_submission
from ..frontends import matmul
from ..runtime import Device
from .timing import Timing, measure_checked

SIZES = (4, 8, 16, 32, 64)
BATCHES = (1, 8, 64, 256)
#: A per-operation cost above this many times NumPy's ``@`` at the same size is flagged as disturbed.
RATIO_LIMIT = 50.0


@dataclass(frozen=True)
class DispatchPoint:
    path: str  # "numpy", "torch", or "<device path> <method>"
    method: str  # "@", "mm", "matmul", "submit", "replay"
    size: int
    batch: int
    timing: Timing

    @property
    def per_op_s(self) -> float:
        return self.timing.median_s / self.batch

    def as_dict(self) -> dict[str, object]:
        return {"path": self.path, "method": self.method, "size": self.size, "batch": self.batch,
                "per_op_s": self.per_op_s, **{k: v for k, v in self.timing.as_dict().items() if k != "name"}}


def _gemm_setup(dev: Device, n: int, batch: int) -> tuple[bytes, list]:
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, n)).astype(np.float32)
    ba, bb = dev.alloc(a.nbytes), dev.alloc(a.nbytes)
    ba.write(a)
    bb.write(a.T.copy())
    outs = [dev.alloc(a.nbytes) for _ in range(min(batch, 8))]
    cmds = [Gemm(m=n, n=n, k=n, a=ba.matrix(np.float32, n, n), b=bb.matrix(np.float32, n, n),
                 d=outs[i % len(outs)].matrix(np.float32, n, n), user_data=i) for i in range(batch)]
    return encode_submission(cmds), [ba, bb, *outs, cmds]


def path_candidates(name: str, dev: Device, n: int, batches: Sequence[int]) -> tuple[dict[str, Callable], list]:
    """Zero-argument callables for one device path and size; also the objects to keep alive."""
    keep: list = []
    rng = np.random.default_rng(n + 1)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    cands: dict[str, Callable] = {f"{name}|matmul|1": lambda: matmul(a, b, device=dev)}
    for batch in batches:
        raw, objs = _gemm_setup(dev, n, batch)
        keep.append(objs)
        cands[f"{name}|submit|{batch}"] = (lambda raw=raw: dev.submit_raw(raw).wait())
        record = getattr(dev, "record", None)
        if record is not None:
            cl = record(objs[-1])
            keep.append(cl)
            cands[f"{name}|replay|{batch}"] = (lambda cl=cl: cl.replay().wait())
    return cands, keep


def baseline_candidates(n: int) -> dict[str, Callable]:
    rng = np.random.default_rng(n + 2)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    return {"numpy|@|1": lambda: a @ b}


def torch_candidates(n: int) -> dict[str, Callable]:
    """torch.mm, timed in a pass of its own (see :mod:`ffaccel.bench.throughput` on thread pools)."""
    try:
        import torch
    except ImportError:
        return {}
    rng = np.random.default_rng(n + 2)
    ta = torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32))
    tb = torch.from_numpy(rng.standard_normal((n, n)).astype(np.float32))
    return {"torch|mm|1": lambda: torch.mm(ta, tb)}


def _implausible(timings: dict[str, Timing], numpy_s: float | None = None) -> dict[str, list[str]]:
    """Figures more than ``RATIO_LIMIT`` times NumPy's ``@`` per operation: disturbed, not slow.

    No path or library here is that much slower than one BLAS call when it has its core
    (an idle run's worst is about 12x: the socket path at n = 4); figures like ``torch.mm``
    at 2000x NumPy come from a machine that was busy.
    """
    ref = timings["numpy|@|1"].median_s if numpy_s is None else numpy_s
    out: dict[str, list[str]] = {}
    for key, t in timings.items():
        ratio = t.median_s / int(key.rsplit("|", 1)[1]) / ref
        if ratio > RATIO_LIMIT:
            out[key] = [f"{ratio:.0f}x NumPy's @ per operation"]
    return out


def run_dispatch(paths: Sequence[tuple[str, Device]], sizes: Sequence[int] = SIZES,
                 batches: Sequence[int] = BATCHES, *, rounds: int = 7, min_sample_s: float = 2e-3,
                 progress: Callable[[str], None] | None = None) -> list[DispatchPoint]:
    """Measure every path at every size, each size in one interleaved run with the baselines."""
    points: list[DispatchPoint] = []
    for n in sizes:
        cands = baseline_candidates(n)
        keep = []
        for name, dev in paths:
            c, k = path_candidates(name, dev, n, batches)
            cands.update(c)
            keep.append(k)
        if progress is not None:
            progress(f"dispatch {n}x{n}: {len(cands)} candidates")
        timings = measure_checked(cands, rounds=rounds, min_sample_s=min_sample_s, check=_implausible)
        numpy_s = timings["numpy|@|1"].median_s
        timings.update(measure_checked(torch_candidates(n), rounds=rounds, min_sample_s=min_sample_s,
                                       check=lambda t: _implausible(t, numpy_s)))
        for key, t in timings.items():
            path, method, batch = key.split("|")
            points.append(DispatchPoint(path, method, n, int(batch), t))
    return points
