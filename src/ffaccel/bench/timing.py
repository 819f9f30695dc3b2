"""Measurement discipline for a shared, noisy machine.

Candidates are measured side by side: after warm-ups, rounds interleave every
candidate (in a rotating order, so none always runs first), and each sample is
the mean of an inner loop long enough to rise above timer resolution. Results
are medians with their interquartile spread; ratios are formed between medians
of the same run, never against numbers from another run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one candidate: median and interquartile range over samples."""

    name: str
    samples_s: tuple[float, ...]

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def q1_s(self) -> float:
        return _quantile(self.samples_s, 0.25)

    @property
    def q3_s(self) -> float:
        return _quantile(self.samples_s, 0.75)

    def as_dict(self) -> dict[str, float | int | str]:
        return {"name": self.name, "median_s": self.median_s, "q1_s": self.q1_s, "q3_s": self.q3_s,
                "samples": len(self.samples_s)}


def _quantile(xs: tuple[float, ...], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _inner_count(fn: Callable[[], object], min_sample_s: float) -> int:
    """How many calls make one sample last at least ``min_sample_s``."""
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_sample_s or n >= 1 << 20:
            return n
        n = max(n * 2, int(n * min_sample_s / max(dt, 1e-9)) + 1)


def measure(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 2,
            min_sample_s: float = 2e-3) -> dict[str, Timing]:
    """Time every candidate side by side.

    Parameters
    ----------
    candidates : mapping of name to a zero-argument callable (one operation per call)
    rounds : int
        Samples per candidate; rounds interleave all candidates in a rotating order.
    warmup : int
        Untimed calls of each candidate first (caches, plans, thread pools).
    min_sample_s : float
        Each sample runs an inner loop at least this long; the sample is the mean per call.

    Examples
    --------
    >>> import numpy as np
    >>> a = np.ones((8, 8))
    >>> t = measure({"numpy": lambda: a @ a}, rounds=3, min_sample_s=1e-4)
    >>> t["numpy"].median_s > 0
    True
    """
    names = list(candidates)
    if not names:  # e.g. the PyTorch baselines where PyTorch is not installed
        return {}
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    inner = {name: _inner_count(candidates[name], min_sample_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, n = candidates[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: Timing(name, tuple(s)) for name, s in samples.items()}


def side_by_side(ff: Callable[[], object], ref: Callable[[], object], rounds: int, *,
                 min_sample_s: float = 0.0) -> tuple[float, float]:
    """Median seconds per call of ``ff`` and ``ref``, measured interleaved (see :func:`measure`)."""
    t = measure({"ff": ff, "ref": ref}, rounds=rounds, warmup=1, min_sample_s=min_sample_s)
    return t["ff"].median_s, t["ref"].median_s
