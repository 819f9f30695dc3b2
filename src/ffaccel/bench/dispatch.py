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
from dataclasses import dataclass, replace

import numpy as np

from ..abi import Gemm, encode_submission
from ..frontends import matmul
from ..runtime import Device
from ..spec import DTYPES, GemmCombo
from .consistency import MEASURED_AGAIN, dips
from .throughput import operands
from .timing import Timing, measure_checked

SIZES = (4, 8, 16, 32, 64)
#: ``report --quick``: every other size. At 4, 8 and 16 the cost is dispatch almost alone (the curve is
#: flat) and 32 lies between 16 and 64 on the log axis; 4 (the overhead answer's size), 16 (the middle
#: that the spike rule checks against both neighbours) and 64 keep the curve's ends and its shape.
QUICK_SIZES = (4, 16, 64)
BATCHES = (1, 8, 64, 256)
#: The GEMM each path is timed with: the first of these its device declares (f32 where it can, so
#: that paths compare with NumPy's f32 ``@``; a partial device's own dtypes otherwise).
DISPATCH_COMBOS: tuple[str, ...] = (
    "f32xf32->f32->f32", "bf16xbf16->f32->f32", "f16xf16->f32->f32", "bf16xbf16->f32->bf16", "f16xf16->f32->f16",
    "int8xint8->int32->int32", "uint8xint8->int32->int32", "int8xuint8->int32->int32", "uint8xuint8->int32->int32",
    "f64xf64->f64->f64")
#: A per-operation cost above this many times NumPy's ``@`` at the same size is flagged as disturbed.
RATIO_LIMIT = 50.0


@dataclass(frozen=True)
class DispatchPoint:
    path: str  # "numpy", "torch", or "<device path> <method>"
    method: str  # "@", "mm", "matmul", "submit", "replay"
    size: int
    batch: int
    timing: Timing
    combo: str = "f32xf32->f32->f32"
    #: reasons this figure is not published beyond the timing's own (see :mod:`ffaccel.bench.consistency`)
    withheld: tuple[str, ...] = ()
    #: NumPy's ``@`` per operation measured side by side with this figure (its group, or its spike's
    #: re-measurement), None where that NumPy figure was withheld: the ratio's denominator. A size's
    #: published NumPy row is its whole group's; a figure measured again alone has NumPy of its own.
    numpy_per_op_s: float | None = None

    @property
    def per_op_s(self) -> float:
        return self.timing.median_s / self.batch

    def as_dict(self) -> dict[str, object]:
        t = {k: v for k, v in self.timing.as_dict().items() if k != "name"}
        t["withheld"] = [*t["withheld"], *self.withheld]
        return {"path": self.path, "method": self.method, "size": self.size, "batch": self.batch,
                "combo": self.combo, "per_op_s": self.per_op_s, "numpy_per_op_s": self.numpy_per_op_s, **t}


def dispatch_combo(dev: Device) -> GemmCombo | None:
    """The GEMM a path is timed with (see :data:`DISPATCH_COMBOS`), None where it declares none."""
    declared = {c.name: c for c in dev.info().caps.combos}
    return next((declared[n] for n in DISPATCH_COMBOS if n in declared), None)


def _gemm_setup(dev: Device, combo: GemmCombo, n: int, batch: int) -> tuple[bytes, list]:
    a, b = operands(combo, n)
    d_dtype = DTYPES[combo.d].numpy
    ba, bb = dev.alloc(a.nbytes), dev.alloc(b.nbytes)
    ba.write(a)
    bb.write(b)
    outs = [dev.alloc(n * n * np.dtype(d_dtype).itemsize) for _ in range(min(batch, 8))]
    one = 1 if combo.is_int else 1.0  # integer alpha for integer GEMMs
    cmds = [Gemm(m=n, n=n, k=n, a=ba.matrix(a.dtype, n, n), b=bb.matrix(b.dtype, n, n), alpha=one, beta=0 * one,
                 d=outs[i % len(outs)].matrix(d_dtype, n, n), user_data=i) for i in range(batch)]
    return encode_submission(cmds), [ba, bb, *outs, cmds]


def path_candidates(name: str, dev: Device, n: int, batches: Sequence[int],
                    combo: GemmCombo | None = None) -> tuple[dict[str, Callable], list]:
    """Zero-argument callables for one device path and size; also the objects to keep alive."""
    combo = combo if combo is not None else dispatch_combo(dev)
    if combo is None:
        return {}, []
    keep: list = []
    a, b = operands(combo, n, seed=n + 1)
    d_dtype = DTYPES[combo.d].numpy
    cands: dict[str, Callable] = {f"{name}|matmul|1": lambda: matmul(a, b, out_dtype=d_dtype, device=dev)}
    for batch in batches:
        raw, objs = _gemm_setup(dev, combo, n, batch)
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
    """Figures more than ``RATIO_LIMIT`` times their floor per operation: disturbed, not slow.

    The floor is NumPy's ``@`` at that size, or for a device path the cheapest per-operation
    figure of that same path in this group, when higher: a device with a cost of its own per job
    (an NPU, the simulated ``npu``, a cluster) is slow by nature, and judged against NumPy alone
    every one of its figures was withheld (the ``npu``'s x1 figures are 100-300x NumPy's ``@``
    on this machine), leaving its rows of the report empty. No host path is that much slower
    than one BLAS call when it has its core (an idle run's worst is about 12x: the socket path at
    n = 4); figures like ``torch.mm`` at 2000x NumPy come from a machine that was busy.
    """
    ref = timings["numpy|@|1"].median_s if numpy_s is None else numpy_s
    per_op = {key: t.median_s / int(key.rsplit("|", 1)[1]) for key, t in timings.items()}
    own: dict[str, list[float]] = {}
    for key, s in per_op.items():
        path = key.split("|", 1)[0]
        if path not in ("numpy", "torch"):  # the baselines are the libraries a device is compared with
            own.setdefault(path, []).append(s)
    # a floor needs another figure of the path to stand on: a figure measured again alone (a
    # spike's re-measurement) is judged against NumPy, as before
    own_floor = {path: min(costs) for path, costs in own.items() if len(costs) > 1}
    out: dict[str, list[str]] = {}
    for key, s in per_op.items():
        ratio = s / ref
        if s / max(ref, own_floor.get(key.split("|", 1)[0], ref)) > RATIO_LIMIT:
            out[key] = [f"{ratio:.0f}x NumPy's @ per operation"]
    return out


def run_dispatch(paths: Sequence[tuple[str, Device]], sizes: Sequence[int] = SIZES,
                 batches: Sequence[int] = BATCHES, *, rounds: int = 7, min_sample_s: float = 2e-3,
                 progress: Callable[[str], None] | None = None) -> list[DispatchPoint]:
    """Measure every path at every size, each size in one interleaved run with the baselines.

    Each path runs the GEMM of :func:`dispatch_combo` (paths that declare no GEMM are left
    out: the caller says so). A cost far above its neighbours along size (a spike: see
    :func:`ffaccel.bench.consistency.dips`) is measured once more with its size's group and,
    if it still is one, withheld.
    """
    combos = {name: dispatch_combo(dev) for name, dev in paths}
    paths = [(name, dev) for name, dev in paths if combos[name] is not None]

    built: dict[int, tuple[dict[str, Callable], list]] = {}

    def one_size(n: int, only: set[str] | None = None) -> list[DispatchPoint]:
        """Every candidate at size n (or, measuring again, the keys ``only`` with NumPy's @)."""
        if n not in built:  # set up once per size (encoding 329 commands per path): measured again, reused
            cands, keep = baseline_candidates(n), []
            for name, dev in paths:
                c, k = path_candidates(name, dev, n, batches, combos[name])
                cands.update(c)
                keep.append(k)
            built[n] = (cands, keep)
        cands = built[n][0]
        if only is not None:
            cands = {k: v for k, v in cands.items() if k in only or k == "numpy|@|1"}
        if progress is not None:
            progress(f"dispatch {n}x{n}x{n}: " + (f"{len(only)} {MEASURED_AGAIN} (a cost far above its neighbours)"
                                                  if only is not None else f"{len(cands)} candidates"))
        timings = measure_checked(cands, rounds=rounds, min_sample_s=min_sample_s, check=_implausible)
        numpy_s = timings["numpy|@|1"].median_s
        if only is None or "torch|mm|1" in only:
            timings.update(measure_checked(torch_candidates(n), rounds=rounds, min_sample_s=min_sample_s,
                                           check=lambda t: _implausible(t, numpy_s)))
        ref = timings["numpy|@|1"]
        ref_s = None if ref.withheld else ref.median_s
        out = []
        for key, t in timings.items():
            path, method, batch = key.split("|")
            combo = combos[path].name if path in combos else "f32xf32->f32->f32"
            out.append(DispatchPoint(path, method, n, int(batch), t, combo, numpy_per_op_s=ref_s))
        return out

    by_size = {n: one_size(n) for n in sizes}
    spiked = _spikes(by_size)
    for n in sorted({key[3] for key in spiked}):
        # measured again: the spiked figures alone, with NumPy's @ for their ratio (a whole size's
        # group again would cost seconds on a busy machine, where spikes are many)
        keys = {f"{path}|{method}|{batch}" for path, method, batch, size in spiked if size == n}
        again = {f"{p.path}|{p.method}|{p.batch}": p for p in one_size(n, keys)}
        # NumPy's row stays the whole group's (unless NumPy itself spiked): the figures not measured
        # again keep their ratio to the NumPy they ran beside, the re-measured ones carry the NumPy
        # of their own re-measurement (replacing the row made every other path's ratio mix two
        # measurements taken at different moments, on a busy machine 2x apart)
        by_size[n] = [replace(again[k], timing=replace(again[k].timing, remeasured=True,
                                                       first_median_s=p.timing.median_s))
                      if (k := f"{p.path}|{p.method}|{p.batch}") in keys else p
                      for p in by_size[n]]
    spikes = _spikes(by_size)
    return [replace(p, withheld=tuple(spikes.get((p.path, p.method, p.batch, p.size), ())))
            for n in sizes for p in by_size[n]]


def _spikes(by_size: dict[int, list[DispatchPoint]]) -> dict[tuple[str, str, int, int], list[str]]:
    """(path, method, batch, size) -> why its cost is a spike: operations per second far below
    both neighbours' (the same rule as a throughput dip, on 1 / cost)."""
    series: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for n, pts in by_size.items():
        for p in pts:
            if not p.timing.withheld:  # a withheld figure is no one's neighbour
                series.setdefault((p.path, p.method, p.batch), []).append((n, 1.0 / p.per_op_s))
    out: dict[tuple[str, str, int, int], list[str]] = {}
    for (path, method, batch), s in series.items():
        for n in dips(s):
            cost = {size: 1e6 / r for size, r in s}
            near = sorted(cost)
            i = near.index(n)
            said = " and ".join(f"{cost[m]:.3g} µs at n={m}" for m in near[max(i - 1, 0):i + 2] if m != n)
            out[(path, method, batch, n)] = [f"a spike: {cost[n]:.3g} µs per op against {said}"]
    return out
