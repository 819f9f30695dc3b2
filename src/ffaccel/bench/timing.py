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
from dataclasses import dataclass, replace

from .consistency import repeat_disagrees

#: A figure whose interquartile range exceeds this share of its median was disturbed.
SPREAD_LIMIT = 0.25
#: A figure whose median exceeds its best sample by this factor was disturbed.
SLOW_LIMIT = 1.5


@dataclass(frozen=True)
class Timing:
    """Per-call seconds of one candidate: median and interquartile range over samples.

    ``notes`` are reasons found outside the samples (e.g. an implausible ratio to a
    baseline); ``remeasured`` says the figure comes from a second measurement.
    """

    name: str
    samples_s: tuple[float, ...]
    remeasured: bool = False
    notes: tuple[str, ...] = ()
    #: the median of the first measurement, where this one is the second (``remeasured``)
    first_median_s: float | None = None

    @property
    def spread(self) -> float:
        """Interquartile range over the median."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else 0.0

    @property
    def disturbed(self) -> list[str]:
        """Why this figure looks disturbed by other work on the machine (empty when it does not).

        Quiet repeats of the same call agree closely; on a busy machine some samples lose
        their core for part of their time, which widens the spread and lifts the median
        above the best sample.
        """
        why = []
        if self.spread > SPREAD_LIMIT:
            why.append(f"spread {self.spread:.0%} of the median")
        best = min(self.samples_s)
        if best > 0 and self.median_s > SLOW_LIMIT * best:
            why.append(f"median {self.median_s / best:.1f}x the best sample")
        return why + list(self.notes)

    @property
    def withheld(self) -> list[str]:
        """Why this figure may not be published (see :mod:`ffaccel.bench.consistency`): a second
        measurement that is still disturbed and disagrees with the first, or that still breaks a
        rule from outside the samples (``notes``: an implausible ratio to a baseline)."""
        why = repeat_disagrees(self.first_median_s, self.median_s, bool(self.disturbed))
        return ([why] if why else []) + (list(self.notes) if self.remeasured else [])

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def q1_s(self) -> float:
        return _quantile(self.samples_s, 0.25)

    @property
    def q3_s(self) -> float:
        return _quantile(self.samples_s, 0.75)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "median_s": self.median_s, "q1_s": self.q1_s, "q3_s": self.q3_s,
                "best_s": min(self.samples_s), "samples": len(self.samples_s), "spread": self.spread,
                "disturbed": self.disturbed, "remeasured": self.remeasured,
                "first_median_s": self.first_median_s, "withheld": self.withheld}


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
            min_sample_s: float = 2e-3, prepare: Mapping[str, Callable[[], object]] | None = None
            ) -> dict[str, Timing]:
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
    prepare : mapping of name to a zero-argument callable, optional
        Called untimed before each sample of that candidate (the state it is meant to run in,
        which another candidate's sample may have changed).

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
            if prepare and name in prepare:
                prepare[name]()
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


def measure_checked(candidates: Mapping[str, Callable[[], object]], *, rounds: int = 7, warmup: int = 2,
                    min_sample_s: float = 2e-3,
                    check: Callable[[dict[str, Timing]], dict[str, list[str]]] | None = None) -> dict[str, Timing]:
    """:func:`measure`, and once more when a figure looks disturbed.

    ``check`` may add reasons from outside the samples (name -> reasons, e.g. a ratio to a
    baseline nobody would believe). When any figure is disturbed, the whole group is
    measured again, side by side as before, so that ratios within the group still come from
    one measurement; the second figures are kept, marked ``remeasured``, and checked again
    (what is still disturbed stays flagged: a figure is re-measured once, not until it looks
    good).
    """
    def run() -> dict[str, Timing]:
        t = measure(candidates, rounds=rounds, warmup=warmup, min_sample_s=min_sample_s)
        notes = check(t) if check is not None else {}
        return {k: replace(v, notes=tuple(notes.get(k, ()))) if notes.get(k) else v for k, v in t.items()}

    first = run()
    if not any(t.disturbed for t in first.values()):
        return first
    return {k: replace(v, remeasured=True, first_median_s=first[k].median_s) for k, v in run().items()}
