"""How busy the machine was while a section of the report ran.

Timings on a shared machine are only as good as the cores they got. Around each section
the report records, from Linux's own accounting:

* the load average (1, 5, 15 minutes) before and after;
* CPU steal: the share of CPU time the hypervisor gave to other guests (``/proc/stat``);
* what the rest of the machine used: busy CPU time of all cores minus this run's own
  (this process and the processes it started for the run, e.g. its device server),
  in cores on average over the section;
* the run's own CPU time against wall time.

A section is *busy* when steal exceeded ``STEAL_LIMIT`` or other processes used more than
``OTHERS_LIMIT`` cores on average; where the others' CPU time cannot be counted, when the load
average exceeded the cores (it lags a minute behind and counts the run's own threads, so it is
recorded, not used, where the others' time is known).
The counters come from psutil (``/proc/stat`` and ``/proc/PID/stat`` on Linux); a figure a
system does not count (steal outside Linux guests) is ``None``, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

#: Steal above this share of all CPU time marks a section busy.
STEAL_LIMIT = 0.05
#: Other processes using more than this many cores on average mark a section busy.
OTHERS_LIMIT = 0.5
#: The kernel's CPU accounting tick, in seconds (``/proc/stat`` counts in these).
_TICK_S = 1.0 / (os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100)


@dataclass(frozen=True)
class Snapshot:
    """The counters at one moment (``None`` where this system does not have them)."""

    wall_s: float
    own_cpu_s: float
    loadavg: tuple[float, float, float] | None
    busy_s: float | None  # all cores' non-idle time since boot
    total_s: float | None  # all cores' time since boot
    steal_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"loadavg": None if self.loadavg is None else list(self.loadavg), "own_cpu_s": self.own_cpu_s}


def _cpu_times() -> tuple[float | None, float | None, float | None]:
    """(busy, total, steal) seconds of all cores since boot (psutil: ``/proc/stat`` on Linux).

    Steal exists only where the kernel counts it (Linux guests); elsewhere it is None.
    """
    try:
        ct = psutil.cpu_times()
    except (OSError, RuntimeError, AttributeError):
        return None, None, None
    # on Linux, guest time is already inside user and nice: do not count it twice
    parts = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    total = sum(getattr(ct, f, 0.0) for f in parts)
    idle = ct.idle + getattr(ct, "iowait", 0.0)
    steal = getattr(ct, "steal", None)
    return total - idle, total, steal


def _child_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a running process of ours, 0 when it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return 0.0
    return t.user + t.system


def snapshot(own_pids: Iterable[int] = ()) -> Snapshot:
    """Read the counters now.

    The run's own CPU time is this process's, its finished children's (``os.times``: a
    child's time is added when it is waited for) and that of the running processes
    ``own_pids`` that it started for the run.
    """
    try:
        la: tuple[float, float, float] | None = os.getloadavg()
    except OSError:
        la = None
    busy, total, steal = _cpu_times()
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system + sum(_child_cpu_s(p) for p in own_pids)
    return Snapshot(time.monotonic(), own, la, busy, total, steal)


def between(before: Snapshot, after: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots, and whether the machine was busy."""
    wall = max(after.wall_s - before.wall_s, 1e-9)
    own = max(after.own_cpu_s - before.own_cpu_s, 0.0)
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "wall_s": wall, "cpu_s": own, "cpu_per_wall": own / wall, "cores": cores,
        "loadavg_before": None if before.loadavg is None else list(before.loadavg),
        "loadavg_after": None if after.loadavg is None else list(after.loadavg),
        "steal_fraction": None, "others_cores": None,
    }
    if None not in (before.total_s, after.total_s, before.busy_s, after.busy_s):
        d_total = max(after.total_s - before.total_s, 1e-9)  # type: ignore[operator]
        if before.steal_s is not None and after.steal_s is not None:
            out["steal_fraction"] = max(after.steal_s - before.steal_s, 0.0) / d_total
        # busy CPU of the whole machine minus our own. The kernel counts in ticks (10 ms) per core,
        # so each counter may be a tick off at either end: that much is not counted as anyone's.
        # Without it a section that did next to nothing (a partial device's section that was not
        # run: a millisecond of wall) read one stray tick as "other processes used 114 cores".
        ticks_s = 2 * cores * _TICK_S
        others = max((after.busy_s - before.busy_s) - own - ticks_s, 0.0) / wall  # type: ignore[operator]
        out["others_cores"] = min(others, float(cores))  # never more than the machine has
    reasons = []
    peak_load = max((la[0] for la in (before.loadavg, after.loadavg) if la is not None), default=None)
    # the load average decides only where the others' CPU time cannot be counted: it is a 1-minute
    # average that counts this run's own threads and lags behind the machine by a minute (a quiet
    # section right after CPU hogs stopped read "load average 7.4 on 2 cores"), while the busy CPU
    # time of the others is what the section itself saw
    if peak_load is not None and peak_load > cores and out["others_cores"] is None:
        reasons.append(f"load average {peak_load:.1f} on {cores} cores")
    if out["steal_fraction"] is not None and out["steal_fraction"] > STEAL_LIMIT:
        reasons.append(f"CPU steal {out['steal_fraction']:.0%}")
    if out["others_cores"] is not None and out["others_cores"] > OTHERS_LIMIT:
        reasons.append(f"other processes used {out['others_cores']:.1f} cores")
    out["busy"] = bool(reasons)
    out["reasons"] = reasons
    return out


class LoadLog:
    """Records the machine's load around each named section of a run.

    ``pids`` holds the running processes started for the run: add one when it starts,
    discard it once it has been waited for (from then on ``os.times`` counts it).

    Examples
    --------
    >>> log = LoadLog()
    >>> with log.section("nothing"):
    ...     pass
    >>> sorted(log.sections["nothing"])[:3]
    ['busy', 'cores', 'cpu_per_wall']
    """

    def __init__(self) -> None:
        self.sections: dict[str, dict[str, Any]] = {}
        self.pids: set[int] = set()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        before = snapshot(self.pids)
        try:
            yield
        finally:
            self.sections[name] = between(before, snapshot(self.pids))

    @property
    def busy(self) -> list[str]:
        """Names of the sections that ran on a busy machine."""
        return [n for n, s in self.sections.items() if s["busy"]]
