"""How busy the machine was while a section of the report ran.

Timings on a shared machine are only as good as the cores they got. Around each section
the report records, from Linux's own accounting:

* the load average (1, 5, 15 minutes) before and after;
* CPU steal: the share of CPU time the hypervisor gave to other guests (``/proc/stat``);
* what the rest of the machine used: busy CPU time of all cores minus this run's own
  (this process and the processes it started for the run, e.g. its device server),
  in cores on average over the section;
* the run's own CPU time against wall time.

A section is *busy* when the load average exceeded the cores, steal exceeded
``STEAL_LIMIT``, or other processes used more than ``OTHERS_LIMIT`` cores on average.
On a system without ``/proc`` the fields it cannot read are ``None``, never guessed.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

#: Steal above this share of all CPU time marks a section busy.
STEAL_LIMIT = 0.05
#: Other processes using more than this many cores on average mark a section busy.
OTHERS_LIMIT = 0.5
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


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


def _proc_stat() -> tuple[float, float, float] | tuple[None, None, None]:
    """(busy, total, steal) seconds of all cores from ``/proc/stat``'s ``cpu`` line."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, None, None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    fields += [0] * (8 - len(fields))
    total = sum(fields[:8])
    idle = fields[3] + fields[4]
    return (total - idle) / _TICK, total / _TICK, fields[7] / _TICK


def _child_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a running process of ours, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / _TICK  # utime, stime: fields 14 and 15
    except (OSError, IndexError, ValueError):
        return 0.0


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
    busy, total, steal = _proc_stat()
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
    if None not in (before.total_s, after.total_s, before.busy_s, after.busy_s, before.steal_s, after.steal_s):
        d_total = max(after.total_s - before.total_s, 1e-9)  # type: ignore[operator]
        out["steal_fraction"] = max(after.steal_s - before.steal_s, 0.0) / d_total  # type: ignore[operator]
        # busy CPU of the whole machine minus our own; /proc/stat ticks are coarse (10 ms), so clamp at 0
        out["others_cores"] = max((after.busy_s - before.busy_s) - own, 0.0) / wall  # type: ignore[operator]
    reasons = []
    peak_load = max((la[0] for la in (before.loadavg, after.loadavg) if la is not None), default=None)
    if peak_load is not None and peak_load > cores:
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
