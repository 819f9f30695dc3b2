"""Core performance targets of the cpu driver, measured against NumPy side by side.

Every case times an ffaccel call and its NumPy counterpart in the same run, in
interleaved repeats (ffaccel, numpy, numpy, ffaccel, ...), and compares their
medians, because this machine is shared and noisy: absolute times drift, ratios
measured this way do not. ``speedup`` is NumPy's median time over ffaccel's
(above 1: ffaccel is faster).

Usage::

    python benchmarks/bench_core.py            # full sizes (a few minutes)
    python benchmarks/bench_core.py --quick    # small sizes, few repeats (smoke test)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

try:
    import ffaccel
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ffaccel

from rich.console import Console
from rich.table import Table

from ffaccel.bench.timing import side_by_side


@dataclass(frozen=True)
class Result:
    case: str
    ff_s: float
    np_s: float
    target: float  # minimum speedup (NumPy time / ffaccel time)
    note: str

    @property
    def speedup(self) -> float:
        return self.np_s / self.ff_s

    @property
    def met(self) -> bool:
        return self.speedup >= self.target


def _rand(shape: tuple[int, ...], dtype: object, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32).astype(dtype)


def _check(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Guard against timing a wrong answer (a loose check; the tests are the real judge)."""
    g, w = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(w).max()))
    if not np.allclose(g, w, rtol=rtol, atol=rtol * scale):
        raise SystemExit(f"wrong result: max error {np.abs(g - w).max()}")


def run(quick: bool) -> list[Result]:
    rng = np.random.default_rng(0)
    big = 512 if quick else 2048
    mid = 256 if quick else 1024
    small_np = 128 if quick else 512  # NumPy's own f16 / int32 matmuls are plain loops: keep them short
    reps_big = 3 if quick else 9
    results: list[Result] = []

    # 1-2: large f32 / f64 GEMM, plain a @ b
    for dt in (np.float32, np.float64):
        a, b = _rand((big, big), dt, rng), _rand((big, big), dt, rng)
        _check(ffaccel.matmul(a, b), a @ b, 1e-3)
        t_ff, t_np = side_by_side(lambda: ffaccel.matmul(a, b), lambda: a @ b, reps_big)
        results.append(Result(f"{np.dtype(dt).name} GEMM {big}", t_ff, t_np, 0.97, "vs a @ b"))

    # 3: alpha/beta GEMM: BLAS does alpha, beta and C in one pass; NumPy needs three more
    a, b, c = (_rand((mid, mid), np.float32, rng) for _ in range(3))
    _check(ffaccel.matmul(a, b, c, alpha=1.5, beta=0.5), 1.5 * (a @ b) + 0.5 * c, 1e-3)
    t_ff, t_np = side_by_side(lambda: ffaccel.matmul(a, b, c, alpha=1.5, beta=0.5),
                              lambda: 1.5 * (a @ b) + 0.5 * c, reps_big + 16)
    results.append(Result(f"f32 GEMM beta!=0 {mid}", t_ff, t_np, 1.0, "vs alpha*(a@b) + beta*c"))

    # 3b: the same through the CBLAS-style front-end, C updated in place
    cc = c.copy()
    t_ff, t_np = side_by_side(
        lambda: ffaccel.blas.gemm("row", "N", "N", mid, mid, mid, 1.5, a, mid, b, mid, 0.5, cc, mid),
        lambda: 1.5 * (a @ b) + 0.5 * c, reps_big + 16)
    results.append(Result(f"blas.gemm f32 beta!=0 {mid}", t_ff, t_np, 1.0, "in place vs alpha*(a@b) + beta*c"))

    # 4: f16 against NumPy's own f16 matmul (a scalar loop in NumPy)
    a16, b16 = _rand((small_np, small_np), np.float16, rng), _rand((small_np, small_np), np.float16, rng)
    _check(ffaccel.matmul(a16, b16), a16.astype(np.float32) @ b16.astype(np.float32), 2e-2)
    t_ff, t_np = side_by_side(lambda: ffaccel.matmul(a16, b16), lambda: a16 @ b16, 3 if quick else 5)
    results.append(Result(f"f16 GEMM {small_np}", t_ff, t_np, 20.0, "vs NumPy f16 a @ b"))

    # 5-6: f16 / bf16 at the f32 rate (same size, against NumPy's f32 a @ b)
    a32, b32 = _rand((big, big), np.float32, rng), _rand((big, big), np.float32, rng)
    for name, dt in (("f16", np.float16), ("bf16", ml_dtypes.bfloat16)):
        ah, bh = a32.astype(dt), b32.astype(dt)
        _check(ffaccel.matmul(ah, bh), ah.astype(np.float32) @ bh.astype(np.float32), 2e-2)
        t_ff, t_np = side_by_side(lambda: ffaccel.matmul(ah, bh), lambda: a32 @ b32, reps_big)
        results.append(Result(f"{name} GEMM {big}", t_ff, t_np, 0.7, "vs f32 a @ b (rate)"))

    # 7: exact int8 -> int32 against NumPy's int32 matmul (no BLAS for integers)
    ai = rng.integers(-128, 128, (small_np, small_np)).astype(np.int8)
    bi = rng.integers(-128, 128, (small_np, small_np)).astype(np.int8)
    ref_i = ai.astype(np.int32) @ bi.astype(np.int32)
    if not np.array_equal(ffaccel.matmul(ai, bi), ref_i):
        raise SystemExit("int8 GEMM is not exact")
    t_ff, t_np = side_by_side(lambda: ffaccel.matmul(ai, bi),
                              lambda: ai.astype(np.int32) @ bi.astype(np.int32), 3 if quick else 5)
    results.append(Result(f"int8 GEMM {small_np} (exact)", t_ff, t_np, 10.0, "vs int32 a @ b"))

    # 8: dispatch cost of a tiny call
    a8, b8 = _rand((8, 8), np.float32, rng), _rand((8, 8), np.float32, rng)
    _check(ffaccel.matmul(a8, b8), a8 @ b8, 1e-5)
    t_ff, t_np = side_by_side(lambda: ffaccel.matmul(a8, b8), lambda: a8 @ b8, 9 if quick else 21,
                              min_sample_s=2e-3)
    results.append(Result("f32 matmul 8x8 call", t_ff, t_np, 1 / 3, "time <= 3x NumPy's a @ b"))
    return results


def _fmt_time(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke test)")
    args = p.parse_args(argv)
    console = Console(width=130)
    console.print(f"ffaccel {ffaccel.__version__}, NumPy {np.__version__}; medians of interleaved repeats")
    results = run(args.quick)
    table = Table(title="ffaccel cpu driver vs NumPy" + (" (--quick)" if args.quick else ""))
    for col in ("case", "ffaccel", "numpy", "speedup", "target", "met?", "compared with"):
        table.add_column(col, justify="right" if col in ("ffaccel", "numpy", "speedup", "target") else "left")
    for r in results:
        table.add_row(r.case, _fmt_time(r.ff_s), _fmt_time(r.np_s), f"{r.speedup:.3g}x", f">= {r.target:.3g}x",
                      "[green]yes[/]" if r.met else "[red]no[/]", r.note)
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
