"""Throughput: GFLOP/s against size for every dtype combination, next to NumPy and PyTorch.

The machine's limit is *measured*, not looked up: the peak is the best f32 GEMM rate
reached in this run — NumPy's BLAS on a large f32 GEMM (calibration, best sample of
several) or any f32-accumulating GEMM measured later, whichever is higher — the rate a
single-precision GEMM can actually sustain on these cores with this BLAS.

NumPy and PyTorch are each timed in a pass of their own after ffaccel's devices, for each
point: OpenBLAS's threads (NumPy) and the OpenMP pool (PyTorch, and oneDNN inside the ``cpu``
driver) both spin-wait after a call, so interleaving them call by call measures two pools
fighting over the cores, not either library (measured: oneDNN GEMMs interleaved with
OpenBLAS ones 1.5-1.9x slower than in a process of their own). A baseline is not timed at
a size where one call would take longer than ``MAX_CALL_S``, predicted from the best sample
it reached at the smaller sizes: the slow baselines (NumPy's integer and f16 matmuls without
BLAS, PyTorch's half types on CPUs without native support) run at the same low rate at every
size, so their larger sizes would cost seconds and say nothing new (NumPy's f16 is timed up to
``NUMPY_F16_MAX``, ``QUICK_NUMPY_F16_MAX`` in the quick report). The best sample, not the median, predicts: a
disturbed median at 256 (NumPy's f32 at 2 GFLOP/s on a busy machine) would otherwise drop
the baselines at the largest size, the one the rates are read at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import ml_dtypes
import numpy as np

from ..drivers.cpu import _SINGLE_THREAD_MNK as OPENBLAS_SINGLE_THREAD_MNK  # nothing spins below it
from ..frontends import matmul
from ..runtime import Device
from ..spec import DTYPES, GEMM_COMBOS, GemmCombo
from .consistency import MEASURED_AGAIN, rate_problems
from .timing import Timing, measure, measure_checked

QUICK_SIZES = (64, 256, 1024)
FULL_SIZES = (64, 128, 256, 512, 1024, 2048)
#: NumPy's own f16 matmul runs without BLAS (~1 GFLOP/s): only time it on small sizes.
NUMPY_F16_MAX = 256
#: The same in the quick report: its rate is flat (0.3 GFLOP/s at 64 and at 256 here), and at 256 one
#: call takes 0.1 s: measured on 2 shared cores, 1-2.5 CPU seconds of a 10 s section, saying nothing new.
QUICK_NUMPY_F16_MAX = 64
#: A baseline is skipped at a size where its best rate at the smaller sizes predicts a call above this.
MAX_CALL_S = 0.25
#: From this size on, one call lasts longer than a sample's minimum: the calibration call is the warm-up.
LARGE_N = 512
#: How long OpenBLAS's threads spin after a call before they sleep (2**28 cycles: ~0.1 s at 2-3 GHz): the
#: pass after NumPy's waits this long, so that it is not measured against them.
OPENBLAS_SPIN_S = 0.15


@dataclass(frozen=True)
class RatePoint:
    who: str  # "ffaccel <device>", "numpy", "torch"
    combo: str
    size: int
    timing: Timing
    #: reasons this figure is not published beyond the timing's own (see :func:`verify_rates`)
    withheld: tuple[str, ...] = ()

    @property
    def gflops(self) -> float:
        return 2.0 * self.size**3 / self.timing.median_s / 1e9

    def as_dict(self) -> dict[str, object]:
        t = {k: v for k, v in self.timing.as_dict().items() if k != "name"}
        t["withheld"] = [*t["withheld"], *self.withheld]
        return {"who": self.who, "combo": self.combo, "size": self.size, "gflops": self.gflops, **t}


def operands(combo: GemmCombo, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two n x n operands of ``combo``'s input dtypes: the full integer range, or normal floats."""
    rng = np.random.default_rng(n if seed is None else seed)
    if combo.is_int:
        lo_a, hi_a = (-128, 128) if combo.a.name == "I8" else (0, 256)
        lo_b, hi_b = (-128, 128) if combo.b.name == "I8" else (0, 256)
        return (rng.integers(lo_a, hi_a, (n, n)).astype(DTYPES[combo.a].numpy),
                rng.integers(lo_b, hi_b, (n, n)).astype(DTYPES[combo.b].numpy))
    a = rng.standard_normal((n, n)).astype(DTYPES[combo.a].numpy)
    return a, rng.standard_normal((n, n)).astype(DTYPES[combo.b].numpy)


def _numpy_candidate(combo: GemmCombo, a: np.ndarray, b: np.ndarray, n: int,
                     f16_max: int = NUMPY_F16_MAX) -> Callable | None:
    """NumPy's own way to do this GEMM (same dtypes), or None where it has none worth timing."""
    if combo.is_int:
        a32, b32 = a.astype(np.int32), b.astype(np.int32)
        return lambda: a32 @ b32
    if a.dtype == ml_dtypes.bfloat16:
        return None  # no native bf16 matmul in NumPy
    if a.dtype == np.float16 and n > f16_max:
        return None
    return lambda: a @ b


def _torch_candidate(combo: GemmCombo, a: np.ndarray, b: np.ndarray) -> Callable | None:
    try:
        import torch
    except ImportError:
        return None
    if combo.is_int:
        if combo.a.name != "I8" or combo.b.name != "I8" or not hasattr(torch, "_int_mm") or a.shape[0] <= 16:
            return None
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        return lambda: torch._int_mm(ta, tb)
    if a.dtype == ml_dtypes.bfloat16:
        ta = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        tb = torch.from_numpy(b.view(np.int16)).view(torch.bfloat16)
    else:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    return lambda: torch.mm(ta, tb)


def _passes(devices: Sequence[tuple[str, Device]], combo: GemmCombo, n: int,
            last_rate: dict[str, float], numpy_f16_max: int = NUMPY_F16_MAX) -> list[dict[str, Callable]]:
    """The groups timed for one point, in order: NumPy, the devices that declare ``combo``, PyTorch.

    ``last_rate`` is each baseline's best rate so far (GFLOP/s); one that predicts a call above
    ``MAX_CALL_S`` leaves its baseline out."""
    a, b = operands(combo, n)
    out_dtype = DTYPES[combo.d].numpy
    cands: dict[str, Callable] = {}
    for name, dev in devices:
        if combo in dev.info().caps.combos:
            cands[f"ffaccel {name}"] = (lambda dev=dev: matmul(a, b, out_dtype=out_dtype, device=dev))
    # the same multiplication done NumPy's and PyTorch's own way (their output dtypes)
    affordable = lambda who: 2.0 * n**3 / (last_rate.get(who, float("inf")) * 1e9) <= MAX_CALL_S  # noqa: E731
    np_c = _numpy_candidate(combo, a, b, n, numpy_f16_max)
    t_c = _torch_candidate(combo, a, b)
    passes = ([{"numpy": np_c}] if np_c is not None and affordable("numpy") else []) + [cands] \
        + ([{"torch": t_c}] if t_c is not None and affordable("torch") else [])
    return [p for p in passes if p]


def _measure_passes(passes: list[dict[str, Callable]], n: int, rounds: int, min_sample_s: float,
                    after_numpy: bool = False) -> dict[str, Timing]:
    out: dict[str, Timing] = {}
    for i, group in enumerate(passes):
        if (after_numpy or (i and "numpy" in passes[i - 1])) and n**3 > OPENBLAS_SINGLE_THREAD_MNK:
            time.sleep(OPENBLAS_SPIN_S)
        # a large GEMM's first call (the inner-loop calibration of measure) warms it up: no extra call
        out.update(measure_checked(group, rounds=rounds, warmup=0 if n >= LARGE_N else 1, min_sample_s=min_sample_s))
    return out


def declared_combos(devices: Sequence[tuple[str, Device]], combos: Sequence[GemmCombo] = GEMM_COMBOS
                    ) -> list[GemmCombo]:
    """The combinations at least one of ``devices`` declares, in ``combos``' order."""
    declared = set().union(*(dev.info().caps.combos for _, dev in devices)) if devices else set()
    return [c for c in combos if c in declared]


def run_throughput(devices: Sequence[tuple[str, Device]], sizes: Sequence[int] = QUICK_SIZES,
                   combos: Sequence[GemmCombo] = GEMM_COMBOS, *, rounds: int = 5, min_sample_s: float = 0.02,
                   numpy_f16_max: int = NUMPY_F16_MAX, progress: Callable[[str], None] | None = None) -> list[RatePoint]:
    """GFLOP/s of each device, NumPy and torch, per combination and size (one interleaved run each).

    Only the combinations some device declares are measured (the baselines are there to compare a
    device with). A rate far below its neighbours is measured again and, if it still is, withheld
    (:func:`verify_rates`).
    """
    points: list[RatePoint] = []
    combos = declared_combos(devices, combos)
    for combo in combos:
        last_rate: dict[str, float] = {}
        for n in sizes:
            if progress is not None:
                progress(f"throughput {combo.name} {n}")
            r = 3 if n >= 1024 else rounds
            # NumPy first; then ffaccel, once OpenBLAS's threads have stopped spinning; then PyTorch
            for who, t in _measure_passes(_passes(devices, combo, n, last_rate, numpy_f16_max), n, r,
                                          min_sample_s).items():
                p = RatePoint(who, combo.name, n, t)
                last_rate[who] = max(last_rate.get(who, 0.0), 2.0 * n**3 / min(t.samples_s) / 1e9)
                points.append(p)
    return verify_rates(points, None, devices, rounds=rounds, min_sample_s=min_sample_s, progress=progress)


def verify_rates(points: list[RatePoint], peak_gflops: float | None, devices: Sequence[tuple[str, Device]], *,
                 rounds: int = 3, min_sample_s: float = 0.005,
                 progress: Callable[[str], None] | None = None) -> list[RatePoint]:
    """Re-measure each rate that breaks a rule of :func:`ffaccel.bench.consistency.rate_problems`
    (above the peak, when ``peak_gflops`` is given; a dip), once; withhold what still breaks one.

    A point re-measured before (``timing.remeasured`` and a first median) is not measured a third
    time: if it breaks a rule now, it is withheld.
    """
    problems = rate_problems([p.as_dict() for p in points], peak_gflops)
    if not problems:
        return points
    points = list(points)
    by_name = {c.name: c for c in GEMM_COMBOS}
    for i in sorted(problems):
        p = points[i]
        if p.timing.first_median_s is not None:
            continue
        if progress is not None:
            progress(f"throughput {p.combo} {p.size}: {p.who} {MEASURED_AGAIN} ({problems[i][0]})")
        group = [g for g in _passes(devices, by_name[p.combo], p.size, {}) if p.who in g]
        if not group:
            continue
        t = _measure_passes([{p.who: group[0][p.who]}], p.size, 3 if p.size >= 1024 else rounds, min_sample_s,
                            after_numpy=True)[p.who]
        points[i] = replace(p, timing=replace(t, remeasured=True, first_median_s=p.timing.median_s))
    still = rate_problems([p.as_dict() for p in points], peak_gflops)
    return [replace(p, withheld=tuple(dict.fromkeys([*p.withheld, *still.get(i, [])])))
            if i in still else p for i, p in enumerate(points)]


def limit_class(combo_name: str) -> str:
    """Which machine limit a combination is held against: the inputs' kind (int8 for every
    int8/uint8 pair, else the input dtype), whatever the output dtype."""
    a = combo_name.split("x", 1)[0]
    return "int8" if a in ("int8", "uint8") else a


def machine_limits(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per :func:`limit_class`: the best median rate any kernel reached in the run (ffaccel's
    devices, NumPy or PyTorch, at any size) and who reached it. Points are ``RatePoint.as_dict()``.

    Examples
    --------
    >>> machine_limits([{"combo": "int8xint8->int32->int32", "who": "torch", "size": 64, "gflops": 9.0},
    ...                 {"combo": "uint8xint8->int32->int32", "who": "ffaccel cpu", "size": 64, "gflops": 7.0}])
    {'int8': {'gflops': 9.0, 'who': 'torch', 'combo': 'int8xint8->int32->int32', 'size': 64}}
    """
    best: dict[str, dict[str, Any]] = {}
    for p in points:
        cls = limit_class(p["combo"])
        if cls not in best or p["gflops"] > best[cls]["gflops"]:
            best[cls] = {"gflops": p["gflops"], "who": p["who"], "combo": p["combo"], "size": p["size"]}
    return best


def best_f32_rate(points: Sequence[RatePoint]) -> float:
    """The best single sample of any f32-accumulating float GEMM among ``points`` (GFLOP/s)."""
    best = 0.0
    for p in points:
        if p.combo.split("->")[1] == "f32" and not p.combo.startswith(("int", "uint")):
            best = max(best, 2.0 * p.size**3 / min(p.timing.samples_s) / 1e9)
    return best


def calibrate_peak(size: int = 2048, rounds: int = 5) -> dict[str, float | str]:
    """The best f32 GEMM rate NumPy's BLAS reaches here (GFLOP/s) and how it was measured."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    t = measure({"peak": lambda: a @ a}, rounds=rounds, warmup=1, min_sample_s=0.0)["peak"]
    best = min(t.samples_s)
    return {"gflops": 2.0 * size**3 / best / 1e9, "size": size,
            "method": f"best of {rounds} NumPy float32 {size}x{size} GEMMs (BLAS), after one warm-up",
            "disturbed": t.disturbed}
