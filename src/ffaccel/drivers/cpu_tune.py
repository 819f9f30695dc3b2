"""Measuring the cpu driver's crossovers on the running machine (``ffaccel tune``), and their cache.

The kernel table (:mod:`ffaccel.drivers.cpu_table`) changes library at sizes that depend on
the CPU and on the libraries installed: oneDNN's f32 matmul beat OpenBLAS from 160^3 on an
AMD EPYC with AVX-512, and the numbers differ on an Intel Xeon without BF16 or an AVX2-only
EPYC. :func:`tune` times the candidates side by side, each on one thread (what the CPU's vector
units and the library's kernels do per core: the part that differs between CPUs, and one a loaded
machine disturbs least), at a ladder of square sizes and at the shapes models run (a skinny
recurrent step, a batched convolution), and returns the
:class:`~ffaccel.drivers.cpu_table.Crossovers`; :func:`save_crossovers` writes
them to ``<cache dir>/cpu-kernels-<key>.json``, where the key hashes the CPU model and flags
and the versions of NumPy, OpenBLAS, oneDNN, PyTorch and ffaccel, so a new CPU or library
is never served another's numbers. :func:`load_crossovers` (the driver, at its first GEMM)
reads the file when it exists; where it does not, :func:`measured_crossovers` runs a short pass
(:data:`QUICK_BUDGET_S`, :data:`QUICK_LADDER`) once per process and writes the cache for the
next (a temporary file renamed over the old one: concurrent processes each leave a whole file).
The cache directory is ``$FFACCEL_CACHE_DIR``, else ``$XDG_CACHE_HOME/ffaccel``, else
``~/.cache/ffaccel``; ``FFACCEL_CPU_TUNED=0`` ignores it and keeps the defaults.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cpu_table import CHOOSABLE_NAMES, DEFAULT_CROSSOVERS, NEVER, Crossovers
from .envswitch import env_switch

#: Square sizes n (n^3 GEMMs) at which the libraries are compared; a crossover is one of their cubes.
LADDER = (32, 48, 64, 96, 128, 160, 192, 256, 320)
#: Skinny shapes (1 x k x n) at which ?gemv and ?gemm are compared.
SKINNY = ((1, 64, 64), (1, 512, 512), (1, 512, 2048))
#: The shapes models run, measured beside the squares (batch, m, n, k; A shared by the batch):
#: an LSTM step's recurrent GEMM (gates 512 x hidden 128 @ 128 x batch 8) and a CNN convolution's
#: batched GEMM (W 64 x 288 @ im2col columns 8 x 288 x 1024). Each joins the ladder at its
#: batch*m*n*k, so a library whose squares win but whose narrow or batched GEMMs lose there does
#: not get those sizes: oneDNN's f32 took 1.9x OpenBLAS's time on the convolution on an AVX2 EPYC.
SHAPES = ((1, 512, 8, 128), (8, 64, 1024, 288))
#: A library other than OpenBLAS takes a size only where its time is below this fraction of
#: OpenBLAS's: within 5 % the two are equal on a busy machine (the AVX2 EPYC's f32 at 192^3-512^3
#: measured 0.97-1.04x one run to the next), and OpenBLAS alone keeps one thread pool.
LIBRARY_WINS_BELOW = 0.95
#: The first-use pass: fewer squares, the same shapes, the budget in seconds (docs/kernels.md).
QUICK_LADDER = (64, 128, 256)
QUICK_SHAPES = ((1, 512, 8, 128), (2, 64, 1024, 288))  # the convolution's batch cut to 2: its cost
QUICK_SKINNY = ((1, 512, 512),)
QUICK_BUDGET_S = 0.5
#: Whatever the budget, a pass stops measuring past this many times it (a loaded machine): the
#: classes not reached keep :data:`~ffaccel.drivers.cpu_table.DEFAULT_CROSSOVERS`.
OVERRUN_FACTOR = 3.0


#: ``FFACCEL_CPU_TUNED=0`` keeps the table's defaults and reads no cache (a switch: 0 or 1).
TUNED_ENV = "FFACCEL_CPU_TUNED"


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
    # threadpoolctl lists the BLAS libraries loaded so far: SciPy's (the cpu driver's) is loaded
    # here first, or a key computed before the driver was imported (`ffaccel serve` and `report`
    # check the cache at start) would differ from the one the pass saved under, and every start
    # would measure again
    import scipy.linalg.blas  # noqa: F401
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


def _read_cache() -> tuple[Crossovers, dict[str, Any]] | None:
    """(crossovers, the whole file) of this machine's valid cache, or None."""
    key = machine_key()
    path = cache_path(key)
    try:
        data = json.loads(path.read_text())
        if data.get("key") != key:
            return None
        return Crossovers.from_json(data["crossovers"], str(path)), data
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_crossovers() -> Crossovers | None:
    """This machine's tuned crossovers, or None (no cache, ``FFACCEL_CPU_TUNED=0``, or a bad file)."""
    if not env_switch(TUNED_ENV):
        return None
    got = _read_cache()
    return got[0] if got is not None else None


def _still_valid(got: tuple[Crossovers, dict[str, Any]] | None) -> Crossovers | None:
    """A cache's crossovers, unless a pass left classes unmeasured for want of PyTorch and this
    process has it (then they are measured now)."""
    if got is None or (got[1].get("unmeasured_without_torch") and "torch" in sys.modules):
        return None
    return got[0]


def save_crossovers(cross: Crossovers, timings: dict[str, Any], **extra: Any) -> Path:
    """Write the cache (OSError where the directory cannot be written); ``extra``: more fields."""
    key = machine_key()
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_text(json.dumps({"key": key, "crossovers": cross.to_json(), "timings_us": timings, **extra},
                                  indent=1))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)
    return path


_pass_lock = threading.Lock()
_measuring = threading.local()


def measuring() -> bool:
    """Whether this thread is inside a tuning pass (its drivers then read the defaults, not a pass)."""
    return getattr(_measuring, "active", False)


def measured_crossovers(budget_s: float | None = None) -> Crossovers:
    """This machine's crossovers: the cache's when valid, else measured now by the short first-use
    pass (:data:`QUICK_LADDER`, :data:`QUICK_SHAPES`) and written to the cache for the next process.
    An unwritable cache directory only loses the write. One pass at a time per process; a thread
    that waits reads the cache the other wrote."""
    got = _still_valid(_read_cache())
    if got is not None:
        return got
    with _pass_lock:
        got = _still_valid(_read_cache())
        if got is not None:
            return got
        t0 = time.thread_time()
        cross, timings = tune(QUICK_BUDGET_S if budget_s is None else budget_s, ladder=QUICK_LADDER, shapes=QUICK_SHAPES, skinny=QUICK_SKINNY, pool=False,
                              import_torch=False)
        timings["pass_thread_cpu_s"] = time.thread_time() - t0
        return dataclasses.replace(cross, source=f"measured at first use ({_save_quietly(cross, timings)})")


#: The budget of the pass ``ffaccel serve`` and ``ffaccel report`` run at start without a cache (s).
START_BUDGET_S = 6.0


def tune_at_start(say: Any = None) -> Crossovers | None:
    """At a long-running command's start (``ffaccel serve``, ``ffaccel report``): where this
    machine has no valid cache (and ``FFACCEL_CPU_TUNED`` is not 0), the full pass
    (:data:`START_BUDGET_S`, PyTorch not imported for it) and the cache written; else nothing (None)."""
    if not env_switch(TUNED_ENV) or _still_valid(_read_cache()) is not None:
        return None
    if say is not None:
        say(f"measuring the cpu driver's kernels on this machine (once, about {START_BUDGET_S:g} s CPU; "
            "`ffaccel tune` redoes it)")
    with _pass_lock:
        cross, timings = tune(START_BUDGET_S, import_torch=False)
        _save_quietly(cross, timings)
    return cross


def _save_quietly(cross: Crossovers, timings: dict[str, Any]) -> str:
    """Save the cache; "not saved" where the directory cannot be written (this process keeps them)."""
    unmeasured = [k.split()[0] for k, v in timings.items() if k.endswith("not measured")
                  and isinstance(v, str) and v.startswith("needs PyTorch")]
    try:
        return str(save_crossovers(cross, timings, unmeasured_without_torch=unmeasured))
    except OSError:  # read-only home, full disk
        return "not saved"


def _op(m: int, n: int, k: int, dt: Any, fused: bool, batch: int = 1) -> Any:
    """A validated GEMM of these sizes (A shared by the batch; with ``fused`` a bias over n)."""
    from ..abi import DeviceCaps, Gemm, Matrix, PostOpDesc, check_command
    from ..spec import DType, PostOpKind

    acc = DType.I32 if dt in (DType.I8, DType.U8) else DType.F64 if dt == DType.F64 else DType.F32
    d_dt = acc if dt in (DType.I8, DType.U8) else dt
    epi = (PostOpDesc(PostOpKind.BIAS_N, 0, 0, Matrix(4, acc, 1, n)),) if fused else ()
    g = Gemm(m=m, n=n, k=k, a=Matrix(1, dt, m, k), b=Matrix(2, dt, k, n, batch_stride_elems=k * n),
             d=Matrix(3, d_dt, m, n, batch_stride_elems=m * n), batch=batch, epilogue=epi)
    return check_command(g.encode(), DeviceCaps())


#: Operands are placed at the start of a page (4096 bytes), as large PyTorch tensors and mapped
#: buffers are: at equal offsets modulo 4096, loads and stores of different operands alias in
#: the CPU's store buffer, which cost oneDNN's f32 kernel 1.9x on an AVX2 EPYC's batched
#: convolution GEMM (OpenBLAS unmoved) and nothing with NumPy's own placements.
PAGE_BYTES = 4096


def _page_aligned(x: np.ndarray) -> np.ndarray:
    raw = np.empty(x.nbytes + PAGE_BYTES, np.uint8)
    start = -raw.ctypes.data % PAGE_BYTES
    out = raw[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def _arrays(op: Any, rng: np.random.Generator) -> tuple:
    """Operands for ``op`` (A shared by the batch), each page-aligned (:data:`PAGE_BYTES`)."""
    from ..spec import numpy_dtype

    def make(rows: int, cols: int, dt: Any, batch: int = 1) -> np.ndarray:
        npdt = numpy_dtype(dt)
        if np.issubdtype(npdt, np.integer):
            return _page_aligned(rng.integers(-8, 8, (batch, rows, cols)).astype(npdt))
        return _page_aligned(rng.standard_normal((batch, rows, cols)).astype(npdt))

    c = op.combo
    a = np.broadcast_to(make(op.m, op.k, c.a), (op.batch, op.m, op.k))
    b = make(op.k, op.n, c.b, op.batch)
    d = _page_aligned(np.empty((op.batch, op.m, op.n), numpy_dtype(c.d)))
    epi = tuple(make(1, op.n, c.acc) for _ in op.epilogue)
    return a, b, None, d, epi


def _best_us(kernel: Any, args: tuple, budget_s: float, clock: Any = time.thread_time) -> float:
    """Best time of one call (µs) over repeated calls within ``budget_s`` of ``clock``: the calling
    thread's CPU time by default (every kernel held to one thread: the whole of its work, and no
    time lost to other processes counted), wall-clock time where other threads work too."""
    kernel(*args)
    best = float("inf")
    end = clock() + budget_s
    while True:
        t0 = clock()
        kernel(*args)
        best = min(best, clock() - t0)
        if clock() > end:
            return best * 1e6


def _one_thread_everywhere() -> Any:
    """OpenBLAS and the OpenMP runtimes (oneDNN, PyTorch) held to one thread while measuring."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def tune(budget_s: float = 6.0, log: Any = None, *, ladder: tuple[int, ...] | None = None,
         shapes: tuple[tuple[int, int, int, int], ...] | None = None,
         skinny: tuple[tuple[int, int, int], ...] | None = None, pool: bool = True,
         import_torch: bool = True) -> tuple[Crossovers, dict[str, Any]]:
    """Measure this machine's crossovers: every class oneDNN (or PyTorch) can serve here, bare and
    with a bias, against OpenBLAS at each size of ``ladder`` (:data:`LADDER`) and at
    :data:`SHAPES`, every kernel on one thread; skinny GEMMs on ?gemv against ?gemm. A class's
    crossover is the smallest size from which its library was at least as fast at that size and
    every larger one measured (:data:`~ffaccel.drivers.cpu_table.NEVER` when it never was).
    ``pool``: also decide ``bare_f32_numpy_pool_without_torch`` (a loop alternating with NumPy);
    ``import_torch``: measure the classes PyTorch's casts serve even where it is not imported yet.
    Past :data:`OVERRUN_FACTOR` times the budget the classes not yet measured keep the defaults.
    Returns (crossovers, the timings in µs)."""
    _measuring.active = True
    try:
        # every library loaded before the limit is set: threadpoolctl limits the runtimes loaded then
        # (oneDNN's OpenMP loaded later ran on all cores, and thread CPU time hid its workers)
        from .cpu import CpuDriver
        from .cpu_table import Library

        classes = CpuDriver(kernels="auto").kernel_table().classes  # loads oneDNN (its probes ran)
        if import_torch and any(e.library in (Library.WIDENED, Library.TORCH) for e in classes.values()):
            import torch  # noqa: F401 - its OpenMP runtime, for the limit
        with _one_thread_everywhere():
            cross, timings, ask_pool = _tune(budget_s, log, LADDER if ladder is None else ladder,
                                             SHAPES if shapes is None else shapes, SKINNY if skinny is None else skinny,
                                             import_torch)
        if pool and ask_pool is not None:
            entries, per_case = ask_pool
            cross = dataclasses.replace(cross, bare_f32_numpy_pool_without_torch=_numpy_pool_wins(
                entries, per_case * 4, timings, log))
        return cross, timings
    finally:
        _measuring.active = False


def _tune(budget_s: float, log: Any, ladder: tuple[int, ...], shapes: tuple[tuple[int, int, int, int], ...],
          skinny: tuple[tuple[int, int, int], ...], import_torch: bool) -> tuple[Crossovers, dict[str, Any], Any]:
    from ..abi import DeviceCaps, Gemm, Matrix, check_command
    from ..spec import DType
    from .cpu import CpuDriver
    from .cpu_table import ClassEntry, KernelClass, Library

    rng = np.random.default_rng(0)
    deadline = time.thread_time() + budget_s * OVERRUN_FACTOR
    auto = CpuDriver(kernels="auto")
    entries: dict[KernelClass, ClassEntry] = dict(auto.kernel_table().classes)
    forced = {Library.ONEDNN: "onednn", Library.WIDENED: "widened", Library.TORCH: "torch",
              Library.ONEDNN_TORCH: "onednn"}
    dtypes = {KernelClass.F32: DType.F32, KernelClass.BF16: DType.BF16, KernelClass.F16: DType.F16,
              KernelClass.INT8: DType.U8}
    classes = [c for c in dtypes if entries[c].library != Library.BLAS]
    # (batch, m, n, k) points, ascending in batch*m*n*k: the squares and the model shapes
    points = sorted([(1, n, n, n) for n in ladder] + list(shapes), key=lambda p: p[0] * p[1] * p[2] * p[3])
    per_case = budget_s / max(1, (len(classes) * 2 * len(points) * 2 + 2 * len(skinny)))
    bare = dict(DEFAULT_CROSSOVERS.onednn_bare_min_mnk)
    fused_min = dict(DEFAULT_CROSSOVERS.onednn_fused_min_mnk)
    timings: dict[str, Any] = {}
    for cls in dtypes:
        if cls not in classes:
            bare[cls.value] = fused_min[cls.value] = NEVER
            continue
        if time.thread_time() > deadline:
            timings[f"{cls.value} not measured"] = "over budget: defaults kept"
            continue
        if entries[cls].library == Library.WIDENED and not import_torch and "torch" not in sys.modules:
            # importing PyTorch costs seconds, and a process that has it runs OpenBLAS on one thread
            # beside oneDNN (Threads.SHARED): the first-use pass leaves such a process as it was
            timings[f"{cls.value} not measured"] = "needs PyTorch, not loaded: defaults kept"
            continue
        blas_drv = CpuDriver(kernels=f"{cls.value}=blas")
        lib_drv = CpuDriver(kernels=f"{cls.value}={forced[entries[cls].library]}")
        dt = dtypes[cls]
        measured = {"bare": bare[cls.value], "fused": fused_min[cls.value]}
        for fused in (False, True):
            if fused and cls == KernelClass.INT8:
                continue  # int8 epilogues stay in the driver's integer passes either way
            wins = []
            for batch, m, n, k in points:
                if time.thread_time() > deadline:
                    break
                if cls == KernelClass.INT8:
                    op = check_command(Gemm(m=m, n=n, k=k, a=Matrix(1, DType.U8, m, k), b=Matrix(2, DType.I8, k, n, batch_stride_elems=k * n),
                                            d=Matrix(3, DType.I32, m, n, batch_stride_elems=m * n),
                                            batch=batch).encode(), DeviceCaps())
                else:
                    op = _op(m, n, k, dt, fused, batch)
                args = _arrays(op, rng)
                t_blas = _best_us(blas_drv.prepare_gemm(op), args, per_case)
                t_lib = _best_us(lib_drv.prepare_gemm(op), args, per_case)
                name = f"{n}^3" if (batch, m, k) == (1, n, n) else f"{batch}x{m}x{k}x{n}"
                timings[f"{cls.value} {'fused' if fused else 'bare'} {name}"] = {"blas": t_blas, "lib": t_lib}
                wins.append(t_lib <= t_blas * LIBRARY_WINS_BELOW)
                if log:
                    log(f"{cls.value:5} {'fused' if fused else 'bare ':5} {name:>14}  OpenBLAS {t_blas:9.1f} us"
                        f"  {entries[cls].library.value} {t_lib:9.1f} us")
            if len(wins) < len(points):  # over budget (a loaded machine): this class keeps the defaults
                timings[f"{cls.value} not measured"] = "over budget: defaults kept"
                bare[cls.value], fused_min[cls.value] = measured["bare"], measured["fused"]
                break
            cross = NEVER
            for i in range(len(points) - 1, -1, -1):
                if not wins[i]:
                    break
                b_, m_, n_, k_ = points[i]
                cross = b_ * m_ * n_ * k_ if i else 0
            (fused_min if fused else bare)[cls.value] = cross
        if cls == KernelClass.INT8 and len(wins) == len(points):
            fused_min[cls.value] = bare[cls.value]
    gemv = dict(DEFAULT_CROSSOVERS.gemv_skinny)
    for name, dt in (("f32", DType.F32), ("f64", DType.F64)):
        if time.thread_time() > deadline:
            break
        drv_gemv, drv_gemm = CpuDriver(kernels=f"{name}=gemv"), CpuDriver(kernels=f"{name}=blas")
        score = 0
        for m, k, n in skinny:
            op = _op(m, n, k, dt, False)
            args = _arrays(op, rng)
            t_gemv = _best_us(drv_gemv.prepare_gemm(op), args, per_case)
            t_gemm = _best_us(drv_gemm.prepare_gemm(op), args, per_case)
            timings[f"{name} skinny {m}x{k}x{n}"] = {"gemv": t_gemv, "gemm": t_gemm}
            score += 1 if t_gemv <= t_gemm else -1
            if log:
                log(f"{name:5} skinny {m}x{k}x{n}  gemm {t_gemm:9.1f} us  gemv {t_gemv:9.1f} us")
        gemv[name] = score > 0
    for name in CHOOSABLE_NAMES:
        bare.setdefault(name, NEVER)
        fused_min.setdefault(name, NEVER)
    cross = Crossovers(bare, fused_min, gemv, DEFAULT_CROSSOVERS.one_thread_below_onednn,
                       DEFAULT_CROSSOVERS.bare_f32_numpy_pool_without_torch, "tuned")
    # whether large bare f32 GEMMs stay on NumPy's pool is a question of the pools' own threads:
    # asked by the caller outside the one-thread limit
    ask_pool = bare["f32"] < NEVER and KernelClass.F32 in classes and time.thread_time() <= deadline
    return cross, timings, (entries, per_case) if ask_pool else None


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

        best[name] = _best_us(loop, (), budget_s, time.perf_counter)
        if log:
            log(f"f32   alternating with NumPy @ {n}^3 ({name}): {best[name]:9.1f} us per pair")
    timings[f"f32 alternating {n}^3"] = best
    return best["numpy pool"] <= best["openmp pool"]


__all__ = ["LADDER", "QUICK_BUDGET_S", "QUICK_LADDER", "QUICK_SHAPES", "QUICK_SKINNY", "SHAPES", "SKINNY",
           "START_BUDGET_S", "cache_dir", "cache_path", "load_crossovers", "machine_key", "measured_crossovers",
           "measuring", "save_crossovers", "tune", "tune_at_start"]
