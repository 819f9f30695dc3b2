"""The torch driver's int8 path that writes ``torch._int_mm``'s int32 product straight into D.

Forced with ``native="int8"`` whatever the CPU (without VNNI PyTorch's kernel is slow, not
wrong), and judged by the exact oracles of ``tests/test_cpu_driver.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_cpu_driver as T  # the oracle helpers (tests/ is on the path)

from ffaccel.drivers.torch import TorchDriver
from ffaccel.spec import DType

INT_COMBOS = [c for c in T.GEMM_COMBOS if c.is_int]


@pytest.fixture(params=["int8", "none"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> TorchDriver:
    drv = TorchDriver("cpu", native=request.param)
    monkeypatch.setattr(T, "DRIVER", drv)
    return drv


@pytest.mark.parametrize("combo", INT_COMBOS, ids=lambda c: c.name)
def test_exact_with_wrap_every_layout(driver: TorchDriver, combo: T.GemmCombo) -> None:
    lo = {DType.I8: -128, DType.U8: 255}
    k = 70_000  # the sum itself wraps modulo 2**32
    a = np.full((1, 2, k), lo[combo.a], T.DTYPES[combo.a].numpy)
    b = np.full((1, k, 3), lo[combo.b], T.DTYPES[combo.b].numpy)
    a[0, 1, ::5] = 7
    T.check(T.build(combo, 2, 3, k, values={"a": a, "b": b}))
    for ta in (False, True):
        for tb in (False, True):
            T.check(T.build(combo, 17, 19, 300, trans_a=ta, trans_b=tb, pad=2))
    T.check(T.build(combo, 9, 10, 64, batch=3, bcast="a"))
    T.check(T.build(combo, 9, 10, 64, batch=3, bcast="b", interleave="d"))
    T.check(T.build(combo, 9, 10, 64, batch=2, pad=1, gap=5))
