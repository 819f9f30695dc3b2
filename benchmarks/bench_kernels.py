"""Every dtype combination against the machine's best kernel for it, side by side (issue 15).

For each case the contenders run round-robin: before each timed sample, the contender runs
untimed for at least ``--settle`` seconds (OpenBLAS's and GNU OpenMP's worker threads spin
after a call and slow whichever library runs next; settling measures each library on its
own, as a program that calls only it would see it). Each sample is the median of
``--inner`` calls; the table shows medians over ``--rounds`` rounds, GFLOP/s (GOP/s for
int8) and the ratio the issue's goal is stated in. Nothing here asserts a time.

Contenders:

* int8: ``cpu`` (automatic kernel choice), ``cpu`` forced onto OpenBLAS
  (``kernels="blas"``), oneDNN's bare u8 x s8 matmul, ``torch._int_mm``, and the
  ``torch:cpu`` driver; i8 x i8 and u8 x i8;
* bf16: ``cpu`` auto and forced OpenBLAS, ``torch.mm`` on bf16 (native where the CPU has
  AVX512_BF16/AMX), and the f32 GEMM the via-f32 route runs (NumPy);
* f16: ``cpu`` against NumPy's f32 GEMM of the same size (the rate goal: no f16 units);
* f32 + bias + GELU(erf): ``cpu`` auto and forced OpenBLAS against the bare f32 GEMM;
* small (issue 21): ``ffaccel.matmul`` against NumPy's ``@`` per call at m = 1, 8, 32, 128 and
  8x8x8, bare and with a bias (against ``a @ b + bias``);
* alternate: a loop alternating NumPy's ``@`` and ``ffaccel.matmul`` at ``--size``^3 f32;
* batched (issue 21): batched attention GEMMs and an LSTM step per call, against NumPy's ``@``
  and ``torch.matmul``;
* decode (issue 21): a decoding step's two attention GEMMs with a KV cache growing one row a step
  (each step a geometry never seen), against NumPy and PyTorch;
* torch-alternate: ``torch:cpu`` matmul alternating with NumPy's ``@`` (PyTorch's OpenMP team
  against NumPy's OpenBLAS workers), against each alone.

Usage::

    python benchmarks/bench_kernels.py                 # 2048^3, all cases
    python benchmarks/bench_kernels.py --size 1024 --only int8,bf16
    python benchmarks/bench_kernels.py --only small,alternate     # per-call rows, NumPy alternating
    python benchmarks/bench_kernels.py --only batched,decode --clock thread   # batched, growing KV cache
    python benchmarks/bench_kernels.py --only torch-alternate   # then again with OMP_WAIT_POLICY=
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np

try:
    import ffaccel
except ImportError:  # a source checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import ffaccel
from ffaccel import post  # noqa: E402
from ffaccel.drivers.cpu import CpuDriver  # noqa: E402
from ffaccel.drivers.cpu_table import KernelClass  # noqa: E402
from ffaccel.runtime import Device  # noqa: E402
from ffaccel.transports import InprocTransport  # noqa: E402

torch = None  # imported in main() only for the cases that compare against it (see TORCH_CASES)


def cpu_device(kernels: str | None = None) -> Device:
    return Device("cpu", InprocTransport(CpuDriver(kernels=kernels)))


def measure(cands: dict[str, Callable[[], object]], rounds: int, inner: int, settle: float) -> dict[str, float]:
    """Median seconds per call of each candidate, round-robin, each settled before its sample."""
    samples: dict[str, list[float]] = {k: [] for k in cands}
    names = list(cands)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = cands[name]
            t_end = time.perf_counter() + settle
            fn()
            while time.perf_counter() < t_end:
                fn()
            ts = []
            for _ in range(inner):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            samples[name].append(statistics.median(ts))
    return {k: statistics.median(v) for k, v in samples.items()}


def table(title: str, n: int, times: dict[str, float], goals: list[tuple[str, str, str, float]]) -> None:
    ops = 2.0 * n**3
    print(f"\n### {title}, {n}^3\n\n| contender | ms | G(FL)OP/s |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {t * 1e3:.2f} | {ops / t / 1e9:,.0f} |")
    for label, num, den, goal in goals:  # goal > 1: a time ratio (at most); else a rate ratio (at least)
        if num in times and den in times:
            if goal > 1:
                print(f"\n{label}: **{times[num] / times[den]:.2f}x** the time (goal <= {goal}x)")
            else:
                print(f"\n{label}: **{times[den] / times[num]:.2f}x** the rate (goal >= {goal}x)")


def bench_int8(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    auto, blas = cpu_device(), cpu_device("blas")
    for name, a in (("i8 x i8", rng.integers(-128, 128, (n, n)).astype(np.int8)),
                    ("u8 x i8", rng.integers(0, 256, (n, n)).astype(np.uint8))):
        b = rng.integers(-128, 128, (n, n)).astype(np.int8)
        cands: dict[str, Callable[[], object]] = {
            "cpu (auto)": lambda: ffaccel.matmul(a, b, device=auto),
        }
        if n <= 1024 or args.slow:
            cands["cpu (OpenBLAS, exact f32 chunks)"] = lambda: ffaccel.matmul(a, b, device=blas)
        from ffaccel.drivers import onednn

        lib = onednn.library()
        if lib is not None:
            ua = a.view(np.uint8)
            d = np.empty((n, n), np.int32)
            prim = onednn.Matmul(lib, *(onednn.Operand.of(x[None]) for x in (ua, b, d)))
            cands["oneDNN u8 x s8 (bare)"] = lambda: prim(ua.ctypes.data, b.ctypes.data, d.ctypes.data)
        if torch is not None:
            ta, tb = torch.from_numpy(a.view(np.int8)), torch.from_numpy(b)
            cands["torch._int_mm"] = lambda: torch._int_mm(ta, tb)
            tdev = ffaccel.open("torch:cpu")
            cands["torch:cpu driver"] = lambda: ffaccel.matmul(a, b, device=tdev)
        t = measure(cands, args.rounds, args.inner, args.settle)
        best = min((k for k in t if not k.startswith("cpu") and "driver" not in k), key=t.get, default=None)
        goals = [("cpu / best int8 kernel", "cpu (auto)", best, 0.8)] if best else []
        if "torch:cpu driver" in t:
            goals.append(("torch:cpu / torch._int_mm", "torch:cpu driver", "torch._int_mm", 0.9))
        table(f"int8 {name} -> int32 (exact)", n, t, goals)


def bench_bf16(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(1)
    a32, b32 = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    a, b = a32.astype(ml_dtypes.bfloat16), b32.astype(ml_dtypes.bfloat16)
    auto, blas = cpu_device(), cpu_device("blas")
    cands: dict[str, Callable[[], object]] = {
        "cpu (auto)": lambda: ffaccel.matmul(a, b, device=auto),
        "cpu (OpenBLAS on widened f32)": lambda: ffaccel.matmul(a, b, device=blas),
        "f32 GEMM (NumPy)": lambda: a32 @ b32,
    }
    if torch is not None:
        ta, tb = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16), torch.from_numpy(b.view(np.int16)).view(
            torch.bfloat16)
        cands["torch.mm bf16"] = lambda: torch.mm(ta, tb)
    t = measure(cands, args.rounds, args.inner, args.settle)
    best = min(("f32 GEMM (NumPy)", "torch.mm bf16"), key=lambda k: t.get(k, float("inf")))
    table("bf16 x bf16 -> f32 -> bf16", n, t, [("cpu / max(native bf16, via f32)", "cpu (auto)", best, 0.9)])


def bench_f16(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(2)
    a32, b32 = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    a, b = a32.astype(np.float16), b32.astype(np.float16)
    auto = cpu_device()
    t = measure({"cpu f16 (auto)": lambda: ffaccel.matmul(a, b, device=auto),
                 "f32 GEMM (NumPy)": lambda: a32 @ b32}, args.rounds, args.inner, args.settle)
    table("f16 x f16 -> f32 -> f16", n, t, [("cpu f16 / f32 rate", "cpu f16 (auto)", "f32 GEMM (NumPy)", 0.9)])


def bench_epilogue(n: int, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    bias = rng.standard_normal(n, np.float32)
    auto, blas = cpu_device(), cpu_device("blas")
    ops = [post.bias(bias), post.gelu()]
    t = measure({"cpu GEMM+bias+GELU (auto)": lambda: ffaccel.matmul(a, b, post_ops=ops, device=auto),
                 "cpu GEMM+bias+GELU (OpenBLAS + NumPy passes)": lambda: ffaccel.matmul(a, b, post_ops=ops,
                                                                                         device=blas),
                 "cpu bare GEMM": lambda: ffaccel.matmul(a, b, device=auto),
                 "NumPy bare GEMM": lambda: a @ b}, args.rounds, args.inner, args.settle)
    table("f32 GEMM + bias + GELU(erf)", n, t,
          [("fused / NumPy bare GEMM", "cpu GEMM+bias+GELU (auto)", "NumPy bare GEMM", 1.15),
           ("fused / cpu bare GEMM", "cpu GEMM+bias+GELU (auto)", "cpu bare GEMM", 1.15)])


#: Per-call rows (issue 21): m x k x n, the shapes of inference (batch-1 decoding, sentence batches).
SMALL_SHAPES = ((8, 8, 8), (1, 512, 512), (1, 512, 2048), (8, 512, 512), (32, 256, 256), (128, 384, 384))


def per_call(cands: dict[str, Callable[[], object]], rounds: int, budget_s: float,
             clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Best (minimum) seconds per call of each candidate, round-robin: each round times a loop of
    calls sized to ~``budget_s``. The minimum is the figure least disturbed by other processes.
    ``clock``: wall time, or the calling thread's CPU time (``--clock thread``: on a crowded
    machine, the cost of the call itself without the waits for a core; a multi-threaded
    GEMM's helper threads are then not counted, for NumPy and ffaccel alike)."""
    calls = {}
    for name, fn in cands.items():  # size each loop once
        fn()
        t0 = time.perf_counter()
        fn()
        calls[name] = max(1, min(2000, int(budget_s / max(time.perf_counter() - t0, 1e-7))))
    best = dict.fromkeys(cands, float("inf"))
    names = list(cands)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = cands[name], calls[name]
            t0 = clock()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (clock() - t0) / n)
    return best


def band_name(band: object) -> str:
    """A band as it runs in this process (a band kept on NumPy's pool without PyTorch says so)."""
    if band.numpy_pool_without_torch and "torch" not in sys.modules:  # type: ignore[attr-defined]
        return "blas, own (NumPy's pool: PyTorch not loaded)"
    return f"{band.library.value}, {band.threads.value}"  # type: ignore[attr-defined]


def bench_small(n: int, args: argparse.Namespace) -> None:
    """ffaccel.matmul against NumPy's @ at the per-call shapes, bare and with a bias (against
    ``a @ b + bias``): the goals are <= 1.5x at 8x8x8 and <= 1.2x from 1x512x512 on."""
    rng = np.random.default_rng(4)
    dev = ffaccel.open("cpu")
    print(f"\n### per call, f32 (µs per call, best of round-robin loops; clock: {args.clock})\n")
    print("| m x k x n | NumPy @ | matmul | ratio | @ + bias | matmul + bias | ratio | band (bare) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for m, k, nn in SMALL_SHAPES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, nn), np.float32)
        bias = rng.standard_normal(nn, np.float32)
        ops = [post.bias(bias)]
        t = per_call({"np": lambda: a @ b, "ff": lambda: ffaccel.matmul(a, b, device=dev),
                      "np+b": lambda: a @ b + bias, "ff+b": lambda: ffaccel.matmul(a, b, post_ops=ops, device=dev)},
                     args.rounds * 2, 0.02, time.thread_time if args.clock == "thread" else time.perf_counter)
        goal = 1.5 if m * k * nn <= 8**3 else 1.2
        r1, r2 = t["ff"] / t["np"], t["ff+b"] / t["np+b"]
        band = CpuDriver().kernel_table().band(KernelClass.F32, False, m == 1 or nn == 1, m * k * nn)
        print(f"| {m}x{k}x{nn} | {t['np'] * 1e6:.1f} | {t['ff'] * 1e6:.1f} | **{r1:.2f}x** (<= {goal}) "
              f"| {t['np+b'] * 1e6:.1f} | {t['ff+b'] * 1e6:.1f} | **{r2:.2f}x** | {band_name(band)} |")


def bench_alternate(n: int, args: argparse.Namespace) -> None:
    """A loop alternating NumPy's @ and ffaccel.matmul (f32, n^3): each one's time in the loop and
    alone; the goal is ffaccel's rate >= 0.95x NumPy's in the loop (one pool per process)."""
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    dev = ffaccel.open("cpu")
    for fn in (lambda: a @ b, lambda: ffaccel.matmul(a, b, device=dev)):
        fn()
    reps = max(3, args.rounds)
    np_t, ff_t = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        t1 = time.perf_counter()
        ffaccel.matmul(a, b, device=dev)
        t2 = time.perf_counter()
        np_t.append(t1 - t0)
        ff_t.append(t2 - t1)
    alone = measure({"NumPy @ alone": lambda: a @ b, "matmul alone": lambda: ffaccel.matmul(a, b, device=dev)},
                    args.rounds, args.inner, args.settle)
    tn, tf = statistics.median(np_t), statistics.median(ff_t)
    band = CpuDriver().kernel_table().band(KernelClass.F32, False, False, n**3)
    print(f"\n### alternating NumPy @ and ffaccel.matmul, f32 {n}^3 (medians of {reps} pairs; matmul: "
          f"{band_name(band)})\n")
    print("| | NumPy @ ms | matmul ms | matmul rate / NumPy rate |\n|---|---:|---:|---:|")
    print(f"| alternating | {tn * 1e3:.1f} | {tf * 1e3:.1f} | **{tn / tf:.2f}x** (goal >= 0.95x) |")
    an, af = alone["NumPy @ alone"], alone["matmul alone"]
    print(f"| each alone | {an * 1e3:.1f} | {af * 1e3:.1f} | {an / af:.2f}x |")


#: Shapes of the torch driver's alternating loop: where PyTorch's OpenMP team works on both cores.
TORCH_ALTERNATE_SHAPES = ((32, 256, 256), (128, 384, 384), (512, 512, 512))


def bench_torch_alternate(n: int, args: argparse.Namespace) -> None:
    """``ffaccel.matmul`` on ``torch:cpu`` in a loop alternating with NumPy's ``@`` (what a NumPy
    program using the device does), against the same GEMM in a loop of its own. The driver
    imports PyTorch here (not this script), so its OpenMP policy applies: run once as is and
    once with ``OMP_WAIT_POLICY=`` (empty: libgomp's default, spinning) to see what it changes."""
    rng = np.random.default_rng(6)
    dev = ffaccel.open("torch:cpu")
    policy = os.environ.get("OMP_WAIT_POLICY")
    print(f"\n### torch:cpu matmul alternating with NumPy @, f32 (µs, best of round-robin loops; "
          f"OMP_WAIT_POLICY={policy!r})\n")
    print("| m x k x n | NumPy @ alone | matmul alone | pair (@, then matmul) | pair / (sum alone) |")
    print("|---|---:|---:|---:|---:|")
    for m, k, nn in TORCH_ALTERNATE_SHAPES:
        a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, nn), np.float32)

        def pair() -> None:
            a @ b  # noqa: B018 - NumPy's own call, whose OpenBLAS workers then spin
            ffaccel.matmul(a, b, device=dev)

        t: dict[str, float] = {}
        # one loop at a time (not round-robin): a loop "alone" must not follow the other's calls,
        # whose spinning workers are what the pair measures
        for name, fn in (("np", lambda: a @ b), ("ff", lambda: ffaccel.matmul(a, b, device=dev)), ("pair", pair)):
            t.update(per_call({name: fn}, args.rounds * 2, 0.05))
        print(f"| {m}x{k}x{nn} | {t['np'] * 1e6:.0f} | {t['ff'] * 1e6:.0f} | {t['pair'] * 1e6:.0f} "
              f"| **{t['pair'] / (t['np'] + t['ff']):.2f}x** |")


#: Batched rows (issue 21): name -> (a shape, b shape, trans_b); f32, the GEMMs of attention and an
#: LSTM step as the PyTorch offload hands them over (k^T and W_hh^T as transposed views).
BATCHED_SHAPES = {
    "attention scores 8x4x64x64 @ 8x4x64x64": ((8, 4, 64, 64), (8, 4, 64, 64), False),
    "attention q @ k^T 32x16x64, k 32x16x64": ((32, 16, 64), (32, 16, 64), True),
    "decode step q @ K^T 12x1x64, K 12x40x64": ((12, 1, 64), (12, 40, 64), True),
    "decode step p @ V 12x1x40 @ 12x40x64": ((12, 1, 40), (12, 40, 64), False),
    "LSTM(128) step h @ W_hh^T 8x128, W_hh 512x128": ((8, 128), (512, 128), True),
}


def bench_batched(n: int, args: argparse.Namespace) -> None:
    """ffaccel.matmul against NumPy's @ and torch.matmul per call on batched attention GEMMs and an
    LSTM step (a repeated geometry: the cached per-call path)."""
    rng = np.random.default_rng(6)
    dev = ffaccel.open("cpu")
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    print(f"\n### batched and transposed per call, f32 (µs per call, best of round-robin loops; clock: {args.clock})\n")
    print("| case | NumPy @ | torch.matmul | matmul | / NumPy | / torch |\n|---|---:|---:|---:|---:|---:|")
    for name, (sa, sb, trans_b) in BATCHED_SHAPES.items():
        a, b = rng.standard_normal(sa, np.float32), rng.standard_normal(sb, np.float32)
        bt = np.swapaxes(b, -1, -2)
        cands = {"np": (lambda: a @ bt) if trans_b else (lambda: a @ b),
                 "ff": (lambda: ffaccel.matmul(a, b, trans_b=True, device=dev)) if trans_b else
                 (lambda: ffaccel.matmul(a, b, device=dev))}
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(bt if trans_b else b)
            cands["torch"] = lambda: torch.matmul(ta, tb)
        t = per_call(cands, args.rounds * 2, 0.02, clock)
        tt = t.get("torch", float("nan"))
        print(f"| {name} | {t['np'] * 1e6:.1f} | {tt * 1e6:.1f} | {t['ff'] * 1e6:.1f} | **{t['ff'] / t['np']:.2f}x** "
              f"| {t['ff'] / tt:.2f}x |")


def bench_decode(n: int, args: argparse.Namespace) -> None:
    """A decoding loop's attention with a KV cache that grows by one row a step (12 heads, d 64):
    every step is a geometry never seen (q @ K^T and p @ V), µs per step (both GEMMs)."""
    heads, dim, start, steps = 12, 64, 16, 64
    rng = np.random.default_rng(8)
    k_cache = rng.standard_normal((heads, start + steps * (args.rounds + 1), dim), np.float32)
    v_cache = rng.standard_normal(k_cache.shape, np.float32)
    q = rng.standard_normal((heads, 1, dim), np.float32)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter

    def numpy_step(length: int) -> None:
        s = q @ k_cache[:, :length].swapaxes(1, 2)
        s @ v_cache[:, :length]

    def ffaccel_step(length: int, dev: Device) -> None:
        s = ffaccel.matmul(q, k_cache[:, :length], trans_b=True, device=dev)
        ffaccel.matmul(s, v_cache[:, :length], device=dev)

    cands: dict[str, Callable[[int], None]] = {"np": numpy_step}
    if torch is not None:
        tq, tk, tv = torch.from_numpy(q), torch.from_numpy(k_cache), torch.from_numpy(v_cache)
        cands["torch"] = lambda length: torch.matmul(torch.matmul(tq, tk[:, :length].transpose(1, 2)),
                                                     tv[:, :length])
    best = dict.fromkeys(list(cands) + ["ff"], float("inf"))
    for r in range(args.rounds):
        dev = ffaccel.open("cpu")  # a device whose caches have seen none of these lengths
        lengths = range(start + r * steps, start + (r + 1) * steps)  # new lengths each round
        for name in best:
            t0 = clock()
            for length in lengths:
                if name == "ff":
                    ffaccel_step(length, dev)
                else:
                    cands[name](length)
            best[name] = min(best[name], (clock() - t0) / steps)
    tt = best.get("torch", float("nan"))
    print(f"\n### decoding attention, KV cache growing one row a step ({heads} heads, d {dim}; µs per step, "
          f"best of {args.rounds} rounds of {steps} steps; clock: {args.clock})\n")
    print("| NumPy @ | torch.matmul | matmul | / NumPy | / torch |\n|---:|---:|---:|---:|---:|")
    print(f"| {best['np'] * 1e6:.1f} | {tt * 1e6:.1f} | {best['ff'] * 1e6:.1f} | **{best['ff'] / best['np']:.2f}x** "
          f"| {best['ff'] / tt:.2f}x |")


CASES = {"int8": bench_int8, "bf16": bench_bf16, "f16": bench_f16, "epilogue": bench_epilogue,
         "small": bench_small, "alternate": bench_alternate, "batched": bench_batched, "decode": bench_decode,
         "torch-alternate": bench_torch_alternate}
#: The cases that compare against PyTorch (imported only for them: a loaded PyTorch changes the
#: cpu driver's thread policy below oneDNN's crossover, see docs/kernels.md).
TORCH_CASES = ("int8", "bf16", "batched", "decode")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--inner", type=int, default=3)
    p.add_argument("--settle", type=float, default=0.15, help="untimed seconds before each sample")
    p.add_argument("--only", default=",".join(CASES), help="comma list of " + ", ".join(CASES))
    p.add_argument("--slow", action="store_true", help="also time the slow OpenBLAS int8 path at large sizes")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="small: wall time, or the calling thread's CPU time (a crowded machine)")
    args = p.parse_args()
    global torch
    chosen = [c.strip() for c in args.only.split(",")]
    if any(c in TORCH_CASES for c in chosen):
        try:
            import torch as _torch

            torch = _torch
        except ImportError:  # pragma: no cover - PyTorch is optional
            pass
    from ffaccel.drivers.cpu_tune import machine_key

    print(f"machine: {machine_key()['cpu']}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"numpy {np.__version__}, torch {torch.__version__ if torch else 'not loaded'}, "
          f"crossovers: {CpuDriver().kernel_table().crossovers.source}")
    print("cpu driver kernels:", *(f"\n  {k}: {v}" for k, v in CpuDriver().kernels().items()))
    for name in chosen:
        CASES[name](args.size, args)


if __name__ == "__main__":
    main()
