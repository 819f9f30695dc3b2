"""When a measured figure may be published: the report's consistency rules, as pure functions.

A figure that contradicts what else the run knows is not a measurement of the path, it is a
measurement of the machine at a bad moment. Each rule below names one contradiction; the
harness re-measures a figure that breaks one, and a figure that still breaks one after that
is *withheld*: kept in ``results.json`` and the tables with its reason, never plotted, never
used for a headline (see docs/report.md, "When a figure is published").

The rules (tolerances are module constants, stated in the report):

* **repeat**: a figure measured twice (because the first looked disturbed) whose second
  measurement is still disturbed and differs from the first by more than
  ``REPEAT_TOLERANCE``: neither can be trusted;
* **above peak**: an f32 or f64 GEMM rate above the measured f32 peak by more than
  ``PEAK_TOLERANCE`` (no f64 GEMM outruns f32 on the same cores, and the peak is the best
  f32 rate of the run);
* **dip**: a rate below ``1 / DIP_FACTOR`` of both neighbours (the sizes on either side,
  same combination and implementation), or of its one neighbour below at the largest size;
  a rate grows with size, so a hole between two good figures is a lost core, not a kernel;
* **share**: a part of a time breakdown that is negative, or parts that add up to more
  than the whole (beyond ``SHARE_TOLERANCE``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: Two medians of the same figure agree when they differ by at most this share of the smaller.
REPEAT_TOLERANCE = 0.30
#: An f32/f64 rate may exceed the measured f32 peak by this share (timer and clock-boost noise).
PEAK_TOLERANCE = 0.10
#: A rate below 1/DIP_FACTOR of both its neighbours along size is a dip.
DIP_FACTOR = 3.0
#: Parts of a breakdown may add up to the whole plus this share (rounding of measured intervals).
SHARE_TOLERANCE = 0.01
#: Progress messages of a re-measurement contain this: a watcher shows them without counting a step.
MEASURED_AGAIN = "measured again"
#: Input dtypes whose GEMM rate is bounded by the measured f32 peak on the same machine.
PEAK_BOUND_INPUTS = ("f32", "f64")


def repeat_disagrees(first_s: float | None, second_s: float, still_disturbed: bool,
                     tolerance: float = REPEAT_TOLERANCE) -> str | None:
    """Why two measurements of one figure cannot be published (None when they can).

    A second measurement that is itself quiet stands on its own; a disturbed one is
    published only when it agrees with the first.

    Examples
    --------
    >>> repeat_disagrees(1.0, 2.0, still_disturbed=True)
    'its two measurements differ by 2.0x (more than 30%) and the second is still disturbed'
    >>> repeat_disagrees(1.0, 1.2, still_disturbed=True) is None
    True
    """
    if first_s is None or not still_disturbed or first_s <= 0 or second_s <= 0:
        return None
    lo, hi = sorted((first_s, second_s))
    if hi <= lo * (1.0 + tolerance):
        return None
    return (f"its two measurements differ by {hi / lo:.1f}x (more than {tolerance:.0%}) and the second is still "
            "disturbed")


def above_peak(combo: str, gflops: float, peak_gflops: float, tolerance: float = PEAK_TOLERANCE) -> str | None:
    """Why an f32/f64 rate is impossible against the measured f32 peak (None when it is not).

    Examples
    --------
    >>> above_peak("f64xf64->f64->f64", 138.0, 100.0)
    '138.0 GFLOP/s is 138% of the measured f32 peak (100.0 GFLOP/s): impossible for f64'
    >>> above_peak("int8xint8->int32->int32", 300.0, 100.0) is None  # integer units may outrun f32
    True
    """
    dtype = combo.split("x", 1)[0]
    if dtype not in PEAK_BOUND_INPUTS or peak_gflops <= 0 or gflops <= peak_gflops * (1.0 + tolerance):
        return None
    return (f"{gflops:.1f} GFLOP/s is {gflops / peak_gflops:.0%} of the measured f32 peak ({peak_gflops:.1f} "
            f"GFLOP/s): impossible for {dtype}")


def dips(series: Sequence[tuple[int, float]], factor: float = DIP_FACTOR) -> dict[int, str]:
    """Sizes whose rate is far below their neighbours': size -> reason.

    ``series`` is (size, rate) for one combination and implementation, any order. The
    smallest size has no neighbour below and is never a dip (small sizes are slow); the
    largest is held against the size below it only.

    Examples
    --------
    >>> dips([(64, 30.0), (256, 4.2), (1024, 114.5)])
    {256: 'far below its neighbours (4.2 against 30 at n=64 and 114 at n=1024)'}
    >>> dips([(64, 30.0), (256, 90.0), (1024, 20.0)])
    {1024: 'far below its neighbours (20 against 90 at n=256)'}
    >>> dips([(64, 1.0), (256, 9.0), (1024, 100.0)])
    {}
    """
    pts = sorted(series)
    out: dict[int, str] = {}
    for i, (size, rate) in enumerate(pts):
        if i == 0:
            continue
        near = [pts[i - 1]] + ([pts[i + 1]] if i + 1 < len(pts) else [])
        if all(r > 0 and rate * factor < r for _, r in near):
            said = " and ".join(f"{r:.3g} at n={s}" for s, r in near)
            out[size] = f"far below its neighbours ({rate:.3g} against {said})"
    return out


def share_problems(parts: Mapping[str, float], total: float, tolerance: float = SHARE_TOLERANCE) -> list[str]:
    """What is impossible about a time breakdown: negative parts, parts adding up to more than the whole.

    Examples
    --------
    >>> share_problems({"gemm": 2.0, "rest": -0.5}, 1.5)
    ['rest is negative (-0.5 s)']
    >>> share_problems({"gemm": 2.0, "rest": 0.5}, 1.5)
    ['the parts add up to 167% of the whole']
    >>> share_problems({"gemm": 1.0, "rest": 0.5}, 1.5)
    []
    """
    out = [f"{name} is negative ({v:.3g} s)" for name, v in parts.items() if v < 0]
    if not out and total > 0 and sum(parts.values()) > total * (1.0 + tolerance):
        out.append(f"the parts add up to {sum(parts.values()) / total:.0%} of the whole")
    if total <= 0:
        out.append(f"the whole is not positive ({total:.3g} s)")
    return out


def rate_problems(points: Sequence[Mapping[str, Any]], peak_gflops: float | None,
                  series_key: Iterable[str] = ("combo", "who"), rate: str = "gflops") -> dict[int, list[str]]:
    """Index of each point in ``points`` that breaks a rate rule -> its reasons.

    ``points`` are dicts with ``size``, ``rate`` (GFLOP/s) and the ``series_key`` fields
    that name a series along size; ``combo`` is needed for the peak rule (None: no peak rule).
    Points already withheld take no part (they are no one's neighbour).
    """
    keys = tuple(series_key)
    series: dict[tuple, list[tuple[int, float, int]]] = defaultdict(list)
    out: dict[int, list[str]] = defaultdict(list)
    for i, p in enumerate(points):
        if p.get("withheld"):
            continue
        series[tuple(p[k] for k in keys)].append((p["size"], p[rate], i))
        if peak_gflops is not None and "combo" in p:
            why = above_peak(p["combo"], p[rate], peak_gflops)
            if why:
                out[i].append(why)
    for pts in series.values():
        at = {size: i for size, _, i in pts}
        for size, why in dips([(s, r) for s, r, _ in pts]).items():
            out[at[size]].append(why)
    return dict(out)
