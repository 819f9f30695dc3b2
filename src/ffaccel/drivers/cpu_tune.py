"""Measuring the cpu driver's crossovers on the running machine (``ffaccel tune``), and their cache.

The kernel table (:mod:`ffaccel.drivers.cpu_table`) changes library at sizes that depend on
the CPU and on the libraries installed: oneDNN's f32 matmul beat OpenBLAS from 160^3 on an
AMD EPYC with AVX-512, and the numbers differ on an Intel Xeon without BF16 or an AVX2-only
EPYC. :func:`tune` times the candidates side by side at a ladder of sizes (a few seconds) and
returns the :class:`~ffaccel.drivers.cpu_table.Crossovers`; :func:`save_crossovers` writes
them to ``<cache dir>/cpu-kernels-<key>.json``, where the key hashes the CPU model and flags
and the versions of NumPy, OpenBLAS, oneDNN, PyTorch and ffaccel, so a new CPU or library
is never served another's numbers. :func:`load_crossovers` (the driver, at its first GEMM)
reads the file when it exists. The cache directory is ``$FFACCEL_CACHE_DIR``, else
``$XDG_CACHE_HOME/ffaccel``, else ``~/.cache/ffaccel``; ``FFACCEL_CPU_TUNED=0`` ignores it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cpu_table import CHOOSABLE_NAMES, DEFAULT_CROSSOVERS, NEVER, Crossovers

#: Square sizes n (n^3 GEMMs) at which the libraries are compared; a crossover is one of their cubes.
LADDER = (32, 48, 64, 96, 128, 160, 192, 256, 320)
#: Skinny shapes (1 x k x n) at which ?gemv and ?gemm are compared.
SKINNY = ((1, 64, 64), (1, 512, 512), (1, 512, 2048))


def cache_dir() -> Path:
    env = os.environ.get("FFACCEL_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ffaccel"


def machine_key() -> dict[str, str]:
    """What the crossovers depend on: the CPU (model and vector flags) and the libraries' versions."""
    model, flags = platform.processor() or "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model.strip(" x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = " ".join(sorted(f for f in line.split(":", 1)[1].split()
                                        if f.startswith(("avx", "amx", "fma", "f16c"))))
    except OSError:  # pragma: no cover - not Linux
        pass
    key = {"cpu": model, "flags": flags, "numpy": np.__version__}
    try:
        from threadpoolctl import threadpool_info

        key["blas"] = ";".join(sorted(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')}"
                                      for i in threadpool_info() if i.get("user_api") == "blas"))
    except Exception:  # pragma: no cover - threadpoolctl cannot inspect this platform
        key["blas"] = "?"
    from importlib import metadata

    for dist in ("onednn-cpu-gomp", "torch", "ffaccel"):
        try:
            key[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            key[dist] = "-"
    return key


def cache_path(key: dict[str, str] | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key or machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"cpu-kernels-{digest}.json"


def load_crossovers() -> Crossovers | None:
    """This machine's tuned crossovers, or None (no cache, ``FFACCEL_CPU_TUNED=0``, or a bad file)."""
    if os.environ.get("FFACCEL_CPU_TUNED", "") == "0":
        return None
    key = machine_key()
    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        return Crossovers.from_json(data["crossovers"], str(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_crossovers(cross: Crossovers, timings: dict[str, Any]) -> Path:
    key = machine_key()
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "crossovers": cross.to_json(), "timings_us": timings}, indent=1))
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    return path


def _op(m: int, n: int, k: int, dt: Any, fused: bool) -> Any:
    from ..abi import DeviceCaps, Gemm, Matrix, PostOpDesc, check_command
    from ..spec import DType, PostOpKind

    acc = DType.I32 if dt in (DType.I8, DType.U8) else DType.F64 if dt == DType.F64 else DType.F32
    d_dt = acc if dt in (DType.I8, DType.U8) else dt
    epi = (PostOpDesc(PostOpKind.BIAS_N, 0, 0, Matrix(4, acc, 1, n)),) if fused else ()
    g = Gemm(m=m, n=n, k=k, a=Matrix(1, dt, m, k), b=Matrix(2, dt, k, n), d=Matrix(3, d_dt, m, n), epilogue=epi)
    return check_command(g.encode(), DeviceCaps())


def _arrays(op: Any, rng: np.random.Generator) -> tuple:
    from ..spec import numpy_dtype

    def make(rows: int, cols: int, dt: Any) -> np.ndarray:
        npdt = numpy_dtype(dt)
        if np.issubdtype(npdt, np.integer):
            return rng.integers(-8, 8, (1, rows, cols)).astype(npdt)
        return rng.standard_normal((1, rows, cols)).astype(npdt)

    c = op.combo
    a, b = make(op.m, op.k, c.a), make(op.k, op.n, c.b)
    d = np.empty((1, op.m, op.n), numpy_dtype(c.d))
    epi = tuple(make(1, op.n, c.acc) for _ in op.epilogue)
    return a, b, None, d, epi


def _best_us(kernel: Any, args: tuple, budget_s: float) -> float:
    """Best time of one call (µs) over repeated short runs within ``budget_s``."""
    kernel(*args)
    best = float("inf")
    end = time.perf_counter() + budget_s
    while True:
        t0 = time.perf_counter()
        kernel(*args)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > end:
            return best * 1e6


def tune(budget_s: float = 6.0, log: Any = None) -> tuple[Crossovers, dict[str, Any]]:
    """Measure this machine's crossovers: every class oneDNN (or PyTorch) can serve here, bare and
    with a bias, against OpenBLAS at each size of :data:`LADDER`; skinny GEMMs on ?gemv against
    ?gemm. A class's crossover is the smallest size from which its library was at least as fast
    at that size and every larger one measured (:data:`~ffaccel.drivers.cpu_table.NEVER` when it
    never was). Returns (crossovers, the timings in µs)."""
    from ..spec import DType
    from .cpu import CpuDriver
    from .cpu_table import ClassEntry, KernelClass, Library

    rng = np.random.default_rng(0)
    auto = CpuDriver(kernels="auto")
    entries: dict[KernelClass, ClassEntry] = dict(auto.kernel_table().classes)
    forced = {Library.ONEDNN: "onednn", Library.WIDENED: "widened", Library.TORCH: "torch",
              Library.ONEDNN_TORCH: "onednn"}
    dtypes = {KernelClass.F32: DType.F32, KernelClass.BF16: DType.BF16, KernelClass.F16: DType.F16,
              KernelClass.INT8: DType.U8}
    classes = [c for c in dtypes if entries[c].library != Library.BLAS]
    per_case = budget_s / max(1, (len(classes) * 2 * len(LADDER) * 2 + 2 * len(SKINNY)))
    bare = dict(DEFAULT_CROSSOVERS.onednn_bare_min_mnk)
    fused_min = dict(DEFAULT_CROSSOVERS.onednn_fused_min_mnk)
    timings: dict[str, Any] = {}
    for cls in dtypes:
        if cls not in classes:
            bare[cls.value] = fused_min[cls.value] = NEVER
            continue
        blas_drv = CpuDriver(kernels=f"{cls.value}=blas")
        lib_drv = CpuDriver(kernels=f"{cls.value}={forced[entries[cls].library]}")
        dt = dtypes[cls] if cls != KernelClass.INT8 else DType.U8
        for fused in (False, True):
            if fused and cls == KernelClass.INT8:
                continue  # int8 epilogues stay in the driver's integer passes either way
            wins = []
            for n in LADDER:
                op = _op(n, n, n, dt, fused)
                if cls == KernelClass.INT8:
                    from ..abi import DeviceCaps, Gemm, Matrix, check_command

                    op = check_command(Gemm(m=n, n=n, k=n, a=Matrix(1, DType.U8, n, n), b=Matrix(2, DType.I8, n, n),
                                            d=Matrix(3, DType.I32, n, n)).encode(), DeviceCaps())
                args = _arrays(op, rng)
                t_blas = _best_us(blas_drv.prepare_gemm(op), args, per_case)
                t_lib = _best_us(lib_drv.prepare_gemm(op), args, per_case)
                timings[f"{cls.value} {'fused' if fused else 'bare'} {n}^3"] = {"blas": t_blas, "lib": t_lib}
                wins.append(t_lib <= t_blas)
                if log:
                    log(f"{cls.value:5} {'fused' if fused else 'bare ':5} {n:4}^3  OpenBLAS {t_blas:9.1f} us"
                        f"  {entries[cls].library.value} {t_lib:9.1f} us")
            cross = NEVER
            for i in range(len(LADDER) - 1, -1, -1):
                if not wins[i]:
                    break
                cross = LADDER[i] ** 3 if i else 0
            (fused_min if fused else bare)[cls.value] = cross
        if cls == KernelClass.INT8:
            fused_min[cls.value] = bare[cls.value]
    gemv: dict[str, bool] = {}
    for name, dt in (("f32", DType.F32), ("f64", DType.F64)):
        drv_gemv, drv_gemm = CpuDriver(kernels=f"{name}=gemv"), CpuDriver(kernels=f"{name}=blas")
        score = 0
        for m, k, n in SKINNY:
            op = _op(m, n, k, dt, False)
            args = _arrays(op, rng)
            t_gemv = _best_us(drv_gemv.prepare_gemm(op), args, per_case)
            t_gemm = _best_us(drv_gemm.prepare_gemm(op), args, per_case)
            timings[f"{name} skinny {m}x{k}x{n}"] = {"gemv": t_gemv, "gemm": t_gemm}
            score += 1 if t_gemv <= t_gemm else -1
            if log:
                log(f"{name:5} skinny {m}x{k}x{n}  gemm {t_gemm:9.1f} us  gemv {t_gemv:9.1f} us")
        gemv[name] = score > 0
    pool = DEFAULT_CROSSOVERS.bare_f32_numpy_pool_without_torch
    if bare["f32"] < NEVER and KernelClass.F32 in classes:
        pool = _numpy_pool_wins(entries, per_case * 4, timings, log)
    for name in CHOOSABLE_NAMES:
        bare.setdefault(name, NEVER)
        fused_min.setdefault(name, NEVER)
    return Crossovers(bare, fused_min, gemv, DEFAULT_CROSSOVERS.one_thread_below_onednn, pool, "tuned"), timings


#: The size of the alternating loop that decides the pool of large bare f32 GEMMs (n^3).
ALTERNATE_N = 512


def _numpy_pool_wins(entries: Any, budget_s: float, timings: dict[str, Any], log: Any) -> bool:
    """Whether, in a loop alternating NumPy's @ with the driver's bare f32 GEMM, the GEMM is faster
    on NumPy's OpenBLAS (one pool) than on oneDNN (a second pool, OpenMP's, beside OpenBLAS's
    spinning threads). Best loop time of each, NumPy's call included."""
    from ..abi import DeviceCaps, Gemm, Matrix, check_command
    from ..spec import DType
    from .cpu import CpuDriver

    n = ALTERNATE_N
    op = check_command(Gemm(m=n, n=n, k=n, a=Matrix(1, DType.F32, n, n), b=Matrix(2, DType.F32, n, n),
                            d=Matrix(3, DType.F32, n, n)).encode(), DeviceCaps())
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    d = np.empty((1, n, n), np.float32)
    best = {}
    for name, spec in (("numpy pool", "f32=blas"), ("openmp pool", "f32=onednn")):
        kernel = CpuDriver(kernels=spec).prepare_gemm(op)

        def loop() -> None:
            a @ b  # noqa: B018 - NumPy's own call, whose threads then spin
            kernel(a[None], b[None], None, d, ())

        best[name] = _best_us(loop, (), budget_s)
        if log:
            log(f"f32   alternating with NumPy @ {n}^3 ({name}): {best[name]:9.1f} us per pair")
    timings[f"f32 alternating {n}^3"] = best
    return best["numpy pool"] <= best["openmp pool"]


__all__ = ["LADDER", "SKINNY", "cache_dir", "cache_path", "load_crossovers", "machine_key", "save_crossovers",
           "tune"]
