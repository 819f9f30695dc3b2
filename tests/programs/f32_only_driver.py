"""A partial device for the drop-in BLAS tests: the cpu driver declaring only the f32 GEMM.

Registered as a plug-in (an ``ffaccel.drivers`` entry point in a dist-info folder the test
writes) and served by ``ffaccel serve --driver f32only``, as a third-party driver would be.
"""

from __future__ import annotations

from dataclasses import replace

from ffaccel.abi.validate import DeviceCaps
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.spec import DType


class F32OnlyDriver(CpuDriver):
    name = "f32only"

    def caps(self) -> DeviceCaps:
        full = super().caps()
        return replace(full, combos=frozenset(c for c in full.combos if c.a == c.b == c.acc == c.d == DType.F32))
