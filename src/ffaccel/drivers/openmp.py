"""The process's GNU OpenMP runtime (libgomp): whether it is loaded, and its wait policy.

oneDNN's CPU build (``onednn-cpu-gomp``) and PyTorch's CPU wheel load the same
``libgomp.so.1``, which reads ``OMP_WAIT_POLICY`` once, when it loads. Under its default policy
an OpenMP team's threads spin after every parallel region; next to NumPy's OpenBLAS, whose
workers spin too, a 2-core machine has more runnable threads than cores, and a team's barrier
then waits for a scheduler tick. A driver that loads the runtime (``cpu`` through oneDNN,
``torch`` through PyTorch) asks for the passive policy first, unless the user chose one or the
runtime is already loaded (its setting is then fixed). Measured: docs/kernels.md ("One pool
of threads per process") and docs/pytorch.md ("The torch driver's thread pools").
"""

from __future__ import annotations

import os


def openmp_loaded() -> bool:
    """Whether a GNU OpenMP runtime is in the process already (it reads its settings once, at load)."""
    try:
        with open("/proc/self/maps") as f:
            return any("libgomp" in line for line in f)
    except OSError:  # pragma: no cover - not Linux
        return True


def passive_unless_chosen() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy, before GNU OpenMP loads.

    A process that set the variable, or loaded OpenMP before (e.g. by importing PyTorch
    first), keeps its own setting.
    """
    if "OMP_WAIT_POLICY" not in os.environ and not openmp_loaded():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
