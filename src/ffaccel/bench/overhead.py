"""Would the dispatch overhead be too bad? Measured per-op cost against a device's GEMM time.

For each dispatch path (in-process, the server's socket and ring, command-list replay) the
report measures what one GEMM costs to dispatch (section 2, at its smallest size: almost all
of that is dispatch). An NPU spends ``2 * m * n * k / rate`` seconds on the GEMM itself. The
dispatch is cheap enough once it costs under ``DISPATCH_SHARE_LIMIT`` of the device's time:

* square GEMM n x n x n: ``cost <= share * 2 n^3 / rate``, so ``n >= cbrt(cost * rate / (2 share))``;
* batch-1 GEMM 1 x n x n (m = 1, a matrix-vector product as in token-by-token decoding):
  ``n >= sqrt(cost * rate / (2 share))``.

The device presets are published int8 peaks of NPUs in SoCs (see docs/report.md for the
sources); the GEMM is assumed to run at that peak, which is the worst case for dispatch
(a device below its peak takes longer, and dispatch weighs less).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DevicePreset:
    """An accelerator the dispatch cost is held against."""

    name: str
    #: peak int8 rate in tera-operations per second (one multiply-add = 2 operations)
    peak_tops: float
    #: where the figure comes from
    source: str

    @property
    def peak_ops_per_s(self) -> float:
        return self.peak_tops * 1e12


#: The presets, smallest first. The ``npu`` driver's presets are meant to be read from here (one list).
DEVICE_PRESETS: tuple[DevicePreset, ...] = (
    DevicePreset("Arm Ethos-U65", 1.0, "Arm: 512 int8 MACs/cycle at 1 GHz, about 1 TOPS"),
    DevicePreset("Rockchip RK3588 (3 cores)", 6.0, "Rockchip: 3 NPU cores, 6 TOPS int8"),
    DevicePreset("Intel NPU 3720", 9.5, "Intel Core Ultra (Meteor Lake) NPU: 4,096 MACs/cycle at 1.16 GHz, 9.5 TOPS"),
    DevicePreset("AMD XDNA2", 50.0, "AMD Ryzen AI 300 (Strix Point) NPU: 50 TOPS int8"),
)
#: Dispatch is cheap enough when it costs at most this share of the device's GEMM time.
DISPATCH_SHARE_LIMIT = 0.10


def device_time_s(m: int, n: int, k: int, preset: DevicePreset) -> float:
    """Seconds the device needs for an m x n x k GEMM at its peak."""
    return 2.0 * m * n * k / preset.peak_ops_per_s


def _smallest(cost_s: float, preset: DevicePreset, share: float, m_of: Any, power: int) -> int:
    guess = max(1, math.ceil((cost_s * preset.peak_ops_per_s / (2.0 * share)) ** (1.0 / power)))
    while guess > 1 and cost_s <= share * device_time_s(m_of(guess - 1), guess - 1, guess - 1, preset):
        guess -= 1  # the root was rounded up past the answer
    while cost_s > share * device_time_s(m_of(guess), guess, guess, preset):
        guess += 1
    return guess


def smallest_square(cost_s: float, preset: DevicePreset, share: float = DISPATCH_SHARE_LIMIT) -> int:
    """The smallest n for which dispatching an n x n x n GEMM costs at most ``share`` of its device time.

    Examples
    --------
    >>> smallest_square(10e-6, DevicePreset("1 TOPS", 1.0, ""))  # 10 µs against 1 TOPS: n^3 >= 5e7
    369
    """
    return _smallest(cost_s, preset, share, lambda n: n, 3)


def smallest_batch1(cost_s: float, preset: DevicePreset, share: float = DISPATCH_SHARE_LIMIT) -> int:
    """The smallest n for which dispatching a 1 x n x n GEMM (m = 1) costs at most ``share`` of its device time.

    Examples
    --------
    >>> smallest_batch1(10e-6, DevicePreset("1 TOPS", 1.0, ""))  # n^2 >= 5e7
    7072
    """
    return _smallest(cost_s, preset, share, lambda n: 1, 2)


#: Which dispatch figures answer the question: (method, batch) where "max" is the largest batch measured.
OVERHEAD_METHODS: tuple[tuple[str, str, str], ...] = (
    ("matmul", "1", "front-end matmul() on host arrays, one call per op"),
    ("submit", "1", "one submission per op (the ioctl model)"),
    ("submit", "max", "batched submission, cost per op"),
    ("replay", "max", "command-list replay, cost per op"),
)


def overhead_rows(points: Sequence[dict[str, Any]], presets: Sequence[DevicePreset] = DEVICE_PRESETS,
                  share: float = DISPATCH_SHARE_LIMIT) -> list[dict[str, Any]]:
    """For each path and dispatch method, its per-op cost and, per preset, the smallest GEMMs it suits.

    ``points`` are the dispatch section's points (``DispatchPoint.as_dict()``); each row uses
    the smallest size measured, where the GEMM's own work is least. A withheld figure gives a
    row without thresholds, with the reason; a disturbed one keeps its reasons (``disturbed``).
    """
    baselines = ("numpy", "torch")
    pts = [p for p in points if p["path"] not in baselines]
    if not pts:
        return []
    size = min(p["size"] for p in pts)
    rows = []
    for path in dict.fromkeys(p["path"] for p in pts):
        mine = [p for p in pts if p["path"] == path and p["size"] == size]
        for method, batch, what in OVERHEAD_METHODS:
            cands = [p for p in mine if p["method"] == method]
            if not cands:
                continue
            p = max(cands, key=lambda p: p["batch"]) if batch == "max" else \
                next((p for p in cands if p["batch"] == int(batch)), None)
            if p is None or (batch == "max" and p["batch"] == 1 and method == "submit"):
                continue
            row: dict[str, Any] = {"path": path, "method": method, "batch": p["batch"], "what": what,
                                   "size": size, "combo": p.get("combo"), "per_op_s": p["per_op_s"],
                                   "withheld": list(p.get("withheld") or []), "presets": {},
                                   # the thresholds are worked out from a disturbed figure too (the
                                   # answer is an upper bound), but the row says so: it is not a quiet one
                                   "disturbed": list(p.get("disturbed") or [])}
            if not row["withheld"]:
                row["presets"] = {pr.name: {"square_n": smallest_square(p["per_op_s"], pr, share),
                                            "batch1_n": smallest_batch1(p["per_op_s"], pr, share)}
                                  for pr in presets}
            rows.append(row)
    return rows


def overhead_section(points: Sequence[dict[str, Any]], presets: Sequence[DevicePreset] = DEVICE_PRESETS,
                     share: float = DISPATCH_SHARE_LIMIT) -> dict[str, Any]:
    """The report's section: the presets, the share and the rows (see :func:`overhead_rows`)."""
    return {"share_limit": share,
            "presets": [{"name": p.name, "peak_tops": p.peak_tops, "source": p.source} for p in presets],
            "rows": overhead_rows(points, presets, share)}
