"""The single-defect cases of the ``copy`` rules: COPY: conversions, declared conversions, overlap.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...abi import Copy
from ...spec import COPY_CONVERSIONS, DType
from .harness import Builder, Catalogue, Env, M, N


def _conversion(src_dt: Any, bad_dt: Any, good_dt: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        src = env.filled(src_dt, M * N).matrix(src_dt, M, N)
        dt = bad_dt if bad else good_dt
        dst = env.filled(dt, M * N).matrix(dt, M, N)
        return lambda: env.dev.submit([Copy(src=src, dst=dst)], engine="copy")
    return build


def _copy_unsupported(env: Env, bad: bool) -> Callable[[], Any]:
    copies = frozenset(COPY_CONVERSIONS) - {(DType.F32, DType.F16)}
    dev = env.open_caps(copies=copies) if bad else env.dev
    src = env.filled(np.float32, M * N, dev).matrix(np.float32, M, N)
    dst = env.filled(np.float16, M * N, dev).matrix(np.float16, M, N)
    return lambda: dev.submit([Copy(src=src, dst=dst)], engine="copy")


def _copy_overlap(shift: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dt = env.copy_dtype  # a conversion the device declares
        buf = env.filled(dt, 2 * M * N)
        src = buf.matrix(dt, M, N)
        dst = buf.matrix(dt, M, N, offset_bytes=(shift if bad else M * N) * np.dtype(dt).itemsize)
        return lambda: env.dev.submit([Copy(src=src, dst=dst)], engine="copy")
    return build


def register(cat: Catalogue) -> None:
    """Add the ``copy`` cases to ``cat``."""
    for s, b, g, seen in ((np.int8, np.float32, np.int8, "f32"), (np.float32, np.int8, np.float16, "int8"),
                          (np.uint8, np.int8, np.uint8, "int8"), (np.int32, np.float64, np.int32, "f64"),
                          (np.int8, np.int32, np.int8, "int32")):
        cat.case("copy.conversion", "dst.dtype", f"got {seen}", f"{np.dtype(s).name}-to-{np.dtype(b).name}",
                 _conversion(s, b, g))
    cat.case("copy.conversion_supported", "dst.dtype", "got f32->f16", "f32-to-f16-undeclared", _copy_unsupported,
             portable=False)
    for shift in (0, 1, M * N - 1):
        cat.case("copy.overlap", "dst", "dst bytes", f"dst-{shift}-elements-after-src", _copy_overlap(shift))
