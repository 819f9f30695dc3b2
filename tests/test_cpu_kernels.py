"""The cpu driver's kernel libraries, each path forced whatever this CPU would choose.

``FFACCEL_CPU_KERNELS`` / ``CpuDriver(kernels=...)`` choose OpenBLAS, oneDNN or the widened
f16/bf16 path per class; these tests force every choice this machine can run and run the
oracle checks of ``tests/test_cpu_driver.py`` through it, and check that a choice it cannot
run is refused with the reason. Where oneDNN is not installed, the forced-oneDNN tests check
that refusal instead (the embedded default still runs and conforms on OpenBLAS).
"""

from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np
import pytest
import test_cpu_driver as T  # the oracle helpers (tests/ is on the path)

import ffaccel
from ffaccel.conformance import check_device
from ffaccel.drivers import cpu as cpu_mod
from ffaccel.drivers import cpu_onednn, cpu_table, onednn
from ffaccel.drivers.cpu import KERNEL_CLASSES, CpuDriver, parse_kernels
from ffaccel.drivers.cpu_table import KernelClass, Library, Threads
from ffaccel.drivers.partial import restricted
from ffaccel.runtime import Device
from ffaccel.spec import DType, FFAccelError, PostOpKind, numpy_dtype
from ffaccel.transports import InprocTransport

LIB = onednn.library()
ONEDNN_CLASSES = [c.value for c in cpu_table.ONEDNN_CLASSES]
F32, F16, BF16, I8, U8, I32 = DType.F32, DType.F16, DType.BF16, DType.I8, DType.U8, DType.I32
#: Every forced setting this machine can run (what a CI machine with other features runs differs;
#: each class's own choices are also checked one by one below).
FORCED = ["blas", "f32=onednn,bf16=onednn,int8=onednn,f16=widened", "f16=onednn,bf16=widened", "bf16=widened",
          "f32=blas,int8=torch", "f32=gemv,f64=gemv"]


def runnable(spec: str) -> bool:
    try:
        CpuDriver(kernels=spec)
    except FFAccelError:
        return False
    return True


def runnable_part(spec: str) -> str | None:
    """``spec`` less the class choices this machine refuses (None when nothing is left): a setting
    that names one library the CPU lacks (bf16=onednn without AVX512_BF16) would otherwise leave
    its other choices (f32=onednn) untested on that CPU."""
    if runnable(spec):
        return spec
    kept = [part for part in spec.split(",") if runnable(part)]
    return ",".join(kept) or None


RUNNABLE = list(dict.fromkeys(p for p in map(runnable_part, FORCED) if p is not None))


@pytest.fixture(params=RUNNABLE or ["blas"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CpuDriver:
    drv = CpuDriver(kernels=request.param)
    monkeypatch.setattr(T, "DRIVER", drv)
    return drv


# -- choice parsing and refusal ----------------------------------------------------------


def test_parse_kernels() -> None:
    assert parse_kernels(None) == dict.fromkeys(KERNEL_CLASSES, "auto")
    assert parse_kernels("onednn") == {**dict.fromkeys(KERNEL_CLASSES, "onednn"), "f64": "blas"}
    assert parse_kernels(" int8=blas , f16=widened") == {"f32": "auto", "bf16": "auto", "f16": "widened",
                                                         "int8": "blas", "f64": "auto"}
    assert parse_kernels("f64=gemv,f32=gemv")["f64"] == "gemv"
    with pytest.raises(FFAccelError, match="only int8"):
        CpuDriver(kernels="f32=torch")
    with pytest.raises(FFAccelError, match="gemv kernel"):
        CpuDriver(kernels="int8=gemv")
    with pytest.raises(FFAccelError, match="f64 runs on OpenBLAS"):
        CpuDriver(kernels="f64=onednn")
    for bad in ("fast", "int4=blas", "int8=mkl"):
        with pytest.raises(FFAccelError) as e:
            parse_kernels(bad)
        assert e.value.param == "kernels" and bad in str(e.value)


def test_env_variable_chooses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_mod.KERNELS_ENV, "int8=blas")
    assert CpuDriver().kernel_choice["int8"] == "blas"
    assert CpuDriver(kernels="auto").kernel_choice["int8"] == "auto"  # the argument wins


def test_forced_onednn_without_the_library_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_mod, "_onednn_library", lambda choice: None)
    cpu_mod._resolved.cache_clear()
    try:
        for cls in ONEDNN_CLASSES:
            with pytest.raises(FFAccelError, match="not installed"):
                CpuDriver(kernels=f"{cls}=onednn")
        # the embedded default without oneDNN: everything on OpenBLAS, and it conforms
        drv = CpuDriver()
        assert not any("oneDNN" in v or "PyTorch" in v for v in drv.kernels().values())
        assert not any(b.library.openmp for bands in drv.kernel_table().rows.values() for b in bands)
        report = check_device(lambda: Device("cpu", InprocTransport(CpuDriver())), "quick")
        assert report.passed, report.to_markdown()
    finally:
        cpu_mod._resolved.cache_clear()


def test_int8_refused_where_the_sum_saturates(monkeypatch: pytest.MonkeyPatch) -> None:
    if LIB is None:  # nothing to pretend with: forcing it is refused for the missing library
        with pytest.raises(FFAccelError, match="not installed"):
            CpuDriver(kernels="int8=onednn")
        return
    monkeypatch.setattr(cpu_mod, "_onednn_library", lambda choice: _NoVnni(LIB))
    cpu_mod._resolved.cache_clear()
    try:
        with pytest.raises(FFAccelError, match="saturates"):
            CpuDriver(kernels="int8=onednn")
        assert CpuDriver().kernels()["int8xint8->int32->int32"].startswith("OpenBLAS")
    finally:
        cpu_mod._resolved.cache_clear()


class _NoVnni:
    """The library as a CPU without VNNI/AMX reports it."""

    def __init__(self, lib: onednn.Library) -> None:
        self._lib = lib

    int8_exact = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._lib, name)


def test_info_names_the_library_of_every_combination() -> None:
    info = CpuDriver(kernels="blas").info()
    kernels = dict(info.kernels)
    assert len(kernels) == 10 and kernels["f64xf64->f64->f64"] == "OpenBLAS dgemm (caller threads; own threads from m*n*k 262145)"
    assert not any("oneDNN" in v or "PyTorch" in v or "gemv" in v for v in kernels.values())
    auto = dict(CpuDriver(kernels="auto").info().kernels)
    if LIB is not None and LIB.int8_exact:
        assert auto["uint8xint8->int32->int32"].split("; ")[-1].startswith(f"oneDNN {LIB.version} brg")
        assert "shifted onto u8 x s8" in auto["uint8xuint8->int32->int32"]
        assert "PyTorch torch._int_mm" in auto["int8xint8->int32->int32"]  # PyTorch: a test extra
    assert "sgemv" in auto["f32xf32->f32->f32"]  # skinny rows: the defaults send them to ?gemv


# -- the kernel table: every row and band, forced whatever this CPU would choose --------------


COMBOS = {"f32": T.COMBO[F32, F32, F32], "bf16": T.COMBO[BF16, BF16, BF16], "f16": T.COMBO[F16, F16, F16],
          "int8": T.COMBO[I8, I8, I32], "f64": T.COMBO[DType.F64, DType.F64, DType.F64]}


def _crossovers(monkeypatch: pytest.MonkeyPatch, **changes: object) -> cpu_table.Crossovers:
    """Make the driver read these crossovers (the defaults with ``changes``) instead of this machine's."""
    cross = dataclasses.replace(cpu_table.DEFAULT_CROSSOVERS, **changes)  # type: ignore[arg-type]
    monkeypatch.setattr(cpu_mod, "crossovers", lambda: cross)
    cpu_mod._resolved.cache_clear()
    return cross


@pytest.fixture(autouse=True)
def _fresh_tables(monkeypatch: pytest.MonkeyPatch) -> object:
    """Each test reads the default crossovers (not a tuning cache this machine may hold), in fresh
    tables, as in a process with PyTorch loaded (oneDNN past its crossovers) whatever else the
    test run imported: the tests of the NumPy-pool side say so themselves."""
    monkeypatch.setenv("FFACCEL_CPU_TUNED", "0")
    monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: True)
    cpu_mod._resolved.cache_clear()
    yield
    cpu_mod._resolved.cache_clear()


def _kernel_of(drv: CpuDriver, case: T.Case) -> object:
    return drv.prepare_gemm(case.op)


@pytest.mark.parametrize("cls", ONEDNN_CLASSES)
def test_auto_crossover_and_forced_choice(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    combo = COMBOS[cls]
    post = ((PostOpKind.GELU_ERF, 0, 0, None),) if cls == "f32" else ()
    small = T.build(combo, 8, 8, 8, post=post)
    large = T.build(combo, 40, 40, 40, post=post)
    at = dict.fromkeys(ONEDNN_CLASSES, 40**3) | {"f64": cpu_table.NEVER}
    _crossovers(monkeypatch, onednn_bare_min_mnk=at, onednn_fused_min_mnk=at)  # force each side
    auto = CpuDriver(kernels="auto")
    assert _kernel_of(CpuDriver(kernels="blas"), large).__module__ == "ffaccel.drivers.cpu"
    uses_onednn = auto.kernel_table().classes[KernelClass(cls)].library != Library.BLAS
    assert not _is_onednn(_kernel_of(auto, small))
    assert _is_onednn(_kernel_of(auto, large)) == uses_onednn
    assert auto.band(large.op).library.openmp == uses_onednn
    assert (40**3 in auto.band_edges(combo)) == uses_onednn  # what conformance reads
    for choice in ("onednn", "widened", "torch"):
        if not runnable(f"{cls}={choice}"):
            continue
        drv = CpuDriver(kernels=f"{cls}={choice}")
        assert _is_onednn(_kernel_of(drv, small)) and _is_onednn(_kernel_of(drv, large))
        assert drv.band_edges(combo) == ()  # a forced library: one band
        monkeypatch.setattr(T, "DRIVER", drv)
        T.check(small)
        T.check(large)


def test_bare_f32_crossover_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare f32 GEMM (no epilogue) goes to oneDNN from its own crossover on."""
    if not runnable("f32=onednn"):
        pytest.skip("oneDNN is not installed here: the refusal is tested above")
    combo = T.COMBO[F32, F32, F32]
    _crossovers(monkeypatch, onednn_bare_min_mnk={**cpu_table.DEFAULT_CROSSOVERS.onednn_bare_min_mnk, "f32": 40**3},
                onednn_fused_min_mnk={**cpu_table.DEFAULT_CROSSOVERS.onednn_fused_min_mnk, "f32": 20**3})
    auto = CpuDriver(kernels="auto")
    assert not _is_onednn(_kernel_of(auto, T.build(combo, 30, 30, 30)))  # bare, below its crossover
    assert _is_onednn(_kernel_of(auto, T.build(combo, 30, 30, 30, post=((PostOpKind.RELU, 0, 0, None),))))
    large = T.build(combo, 40, 40, 40)
    assert _is_onednn(_kernel_of(auto, large))
    monkeypatch.setattr(T, "DRIVER", auto)
    T.check(large)
    # a tuned table that never sends bare f32 to oneDNN (an AVX2 CPU where OpenBLAS wins)
    _crossovers(monkeypatch, onednn_bare_min_mnk={**cpu_table.DEFAULT_CROSSOVERS.onednn_bare_min_mnk,
                                                  "f32": cpu_table.NEVER})
    never = CpuDriver(kernels="auto")
    assert not _is_onednn(_kernel_of(never, T.build(combo, 300, 300, 300)))
    assert never.kernel_table().band(KernelClass.F32, False, False, 2048**3).threads == Threads.OWN


@pytest.mark.parametrize("cls", ["f32", "f64"])
@pytest.mark.parametrize("choice", ["auto", "gemv", "blas"])
def test_skinny_rows(cls: str, choice: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """m = 1 and n = 1 (batch 1) go to ?gemv where the table says so, with alpha, beta, C, an
    epilogue and transposed operands, and are right either way."""
    for gemv in (True, False):
        _crossovers(monkeypatch, gemv_skinny={"f32": gemv, "f64": gemv})
        drv = CpuDriver(kernels=f"{cls}={choice}")
        monkeypatch.setattr(T, "DRIVER", drv)
        want_gemv = choice == "gemv" or (choice == "auto" and gemv)
        cases = [T.build(COMBOS[cls], 1, 96, 64), T.build(COMBOS[cls], 80, 1, 64, trans_a=True),
                 T.build(COMBOS[cls], 1, 40, 24, alpha=0.5, beta=2.0, with_c=True, trans_b=True),
                 T.build(COMBOS[cls], 1, 40, 24, beta=-1.0, in_place=True,
                         post=((PostOpKind.BIAS_N, 0, 0, COMBOS[cls].acc), (PostOpKind.RELU, 0, 0, None))),
                 T.build(COMBOS[cls], 1, 2048, 256, post=((PostOpKind.BIAS_N, 0, 0, COMBOS[cls].acc),)),
                 T.build(COMBOS[cls], 70, 1, 33, alpha=-2.0, post=((PostOpKind.BIAS_M, 0, 0, COMBOS[cls].acc),)),
                 T.build(COMBOS[cls], 70, 1, 33, pad=2, trans_a=True,  # D's column strided: the fallback
                         post=((PostOpKind.BIAS_M, 0, 0, COMBOS[cls].acc),)),
                 T.build(COMBOS[cls], 1, 1, 300, beta=0.5, with_c=True)]
        for case in cases:
            band = drv.band(case.op)
            assert (band.library == Library.GEMV) == want_gemv, (choice, gemv, band)
            T.check(case)
        big = T.build(COMBOS[cls], 1, 2048, 256).op
        if want_gemv and choice == "auto":  # one pool: held to one thread where PyTorch runs oneDNN's f32
            shared = drv.kernel_table().classes[KernelClass(cls)].library.openmp
            assert drv.band(big).threads == (Threads.SHARED if shared else Threads.OWN)
            assert (drv.prepare_gemm_fresh(big) is None) == shared  # (the fixture: PyTorch "loaded")
        assert drv.band(T.build(COMBOS[cls], 2, 40, 24).op).library != Library.GEMV  # not skinny
        assert drv.band(T.build(COMBOS[cls], 1, 40, 24, batch=2).op).library != Library.GEMV
    dt = numpy_dtype(COMBOS[cls].acc)
    for m, n, alpha in ((1, 96, 1.0), (96, 1, -0.5), (1, 200, 2.0)):  # the last: NumPy's OpenBLAS (threads)
        fresh = CpuDriver(kernels=f"{cls}=gemv").prepare_gemm_fresh(T.build(COMBOS[cls], m, n, 64, alpha=alpha).op)
        a, b = np.full((m, 64), np.inf, dt), np.zeros((64, n), dt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # inf * 0 is NaN, the intended IEEE result: no warning
            got = fresh(a, b)  # the front-end's per-call path: one ?gemv call into a new D
        assert got.shape == (m, n) and got.dtype == dt and got.flags.c_contiguous and np.isnan(got).all()
        a, b = np.arange(m * 64, dtype=dt).reshape(m, 64), np.ones((64, n), dt)
        np.testing.assert_allclose(fresh(a, b), alpha * (a.astype(np.float64) @ b), rtol=1e-5)
        np.testing.assert_allclose(fresh(np.asfortranarray(a), np.asfortranarray(b)), alpha * (a @ b), rtol=1e-5)


@pytest.mark.parametrize("cls", ONEDNN_CLASSES)
def test_openblas_threads_below_the_crossover(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below oneDNN's crossover, multi-threaded OpenBLAS GEMMs of a class oneDNN serves run on
    one thread where PyTorch is loaded (its OpenMP team stays the one working pool), on
    OpenBLAS's own threads (NumPy's pool) where it is not: forced both ways."""
    from threadpoolctl import threadpool_info

    case = T.build(COMBOS[cls], 24, 24, 24)
    monkeypatch.setattr(cpu_mod, "_SINGLE_THREAD_MNK", 16**3)  # this size would use OpenBLAS's threads
    seen: list[int] = []
    planner = "_plan_int" if cls == "int8" else "_plan_float"
    real = getattr(cpu_mod, planner)

    def spying(*args: object) -> object:
        kernel = real(*args)

        def k(*a: object) -> None:
            seen.append(max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"))
            kernel(*a)
        return k

    monkeypatch.setattr(cpu_mod, planner, spying)
    own = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")  # OpenBLAS's setting here
    for torch_loaded in (True, False):
        monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: torch_loaded)
        auto = CpuDriver(kernels="auto")
        band = auto.band(case.op)
        one_pool = auto.kernel_table().serves_openmp(KernelClass(cls))
        assert band.threads == (Threads.SHARED if one_pool else Threads.OWN)
        monkeypatch.setattr(T, "DRIVER", auto)
        seen.clear()
        T.check(case)  # below every crossover: OpenBLAS, and still right
        assert seen and all((n == 1) == (one_pool and torch_loaded) for n in seen), (seen, torch_loaded)
    seen.clear()
    monkeypatch.setattr(T, "DRIVER", CpuDriver(kernels="blas"))  # OpenBLAS chosen: its own threads
    T.check(case)
    assert seen and all(n == own for n in seen), (seen, own)


def test_thread_limit_band(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cpu:N``: every OpenBLAS band above OpenBLAS's threshold is held to N threads."""
    drv = CpuDriver(threads=1)
    table = drv.kernel_table()
    assert all(b.threads in (Threads.CALLER, Threads.LIMIT) for bands in table.rows.values() for b in bands)
    assert table.band(KernelClass.F32, False, False, 2048**3) == cpu_table.Band(
        cpu_mod._SINGLE_THREAD_MNK + 1, Library.BLAS, Threads.LIMIT)


def test_thread_pool_names_where_the_gemms_run(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CpuDriver(kernels="blas").thread_pool() == "own"
    assert CpuDriver(threads=1).thread_pool() == "none"
    assert CpuDriver(threads=2).thread_pool() == "own"  # a thread limit keeps every GEMM on OpenBLAS
    want = "openmp" if runnable("f32=onednn") else "own"
    assert CpuDriver(kernels="auto").thread_pool() == want
    assert ffaccel.open("cpu").thread_pool() == CpuDriver().thread_pool()
    never = dict.fromkeys(KERNEL_CLASSES, cpu_table.NEVER)
    _crossovers(monkeypatch, onednn_bare_min_mnk=never, onednn_fused_min_mnk=never)
    assert CpuDriver(kernels="auto").thread_pool() == "own"  # a table that never leaves OpenBLAS


def test_every_band_of_every_row_is_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each band's lower edge and the size just below it get that band and the neighbour
    (what a conformance suite tests both sides of)."""
    table = CpuDriver(kernels="auto").kernel_table()
    for key, bands in table.rows.items():
        assert bands[0].min_mnk == 0 and list(bands) == sorted(bands, key=lambda b: b.min_mnk)
        for lower, upper in zip(bands, bands[1:]):
            assert table.band(key.cls, key.fused, key.skinny, upper.min_mnk) == upper
            assert table.band(key.cls, key.fused, key.skinny, upper.min_mnk - 1) == lower
    for cls in KernelClass:
        edges = table.size_bands(cls)
        assert list(edges) == sorted(set(edges))


def test_tuning_cache_round_trip(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                 request: pytest.FixtureRequest) -> None:
    """``ffaccel tune``'s cache: written per CPU and library versions, read back by the driver,
    ignored when it belongs to another machine, is malformed, or FFACCEL_CPU_TUNED=0."""
    import json

    from ffaccel.drivers import cpu_tune

    monkeypatch.setenv("FFACCEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FFACCEL_CPU_TUNED", raising=False)
    request.addfinalizer(cpu_mod.forget_crossovers)  # later tests build their tables on the defaults again
    assert cpu_tune.load_crossovers() is None
    cross = dataclasses.replace(cpu_table.DEFAULT_CROSSOVERS, gemv_skinny={"f32": False, "f64": True},
                                onednn_bare_min_mnk={**cpu_table.DEFAULT_CROSSOVERS.onednn_bare_min_mnk,
                                                     "f32": cpu_table.NEVER})
    path = cpu_tune.save_crossovers(cross, {})
    got = cpu_tune.load_crossovers()
    assert got is not None and got.to_json() == cross.to_json() and got.source == str(path)
    cpu_mod._resolved.cache_clear()
    assert CpuDriver(kernels="auto").kernel_table().crossovers.source == str(path)
    monkeypatch.setenv("FFACCEL_CPU_TUNED", "0")
    assert cpu_tune.load_crossovers() is None
    monkeypatch.delenv("FFACCEL_CPU_TUNED")
    data = json.loads(path.read_text())
    for broken in ({**data, "key": {**data["key"], "cpu": "another CPU"}},
                   {**data, "crossovers": {**data["crossovers"], "gemv_skinny": {"f32": 1}}},
                   {**data, "crossovers": {**data["crossovers"], "onednn_bare_min_mnk": {"f32": -1}}}):
        path.write_text(json.dumps(broken))
        assert cpu_tune.load_crossovers() is None
    path.write_text("not json")
    assert cpu_tune.load_crossovers() is None


def test_tune_measures_a_table_that_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short tuning pass (two sizes) gives crossovers the table accepts, every class covered."""
    from ffaccel.drivers import cpu_tune

    monkeypatch.setattr(cpu_tune, "LADDER", (16, 24))
    monkeypatch.setattr(cpu_tune, "SHAPES", ((1, 32, 4, 16),))
    monkeypatch.setattr(cpu_tune, "SKINNY", ((1, 16, 16),))
    cross, timings = cpu_tune.tune(budget_s=0.2)
    assert timings and set(cross.onednn_bare_min_mnk) == set(KERNEL_CLASSES)
    for name, v in cross.onednn_bare_min_mnk.items():  # a measured size, or the default past the budget
        assert v in (0, 16**3, 32 * 4 * 16, 24**3, cpu_table.NEVER) or (
            f"{name} not measured" in timings and v == cpu_table.DEFAULT_CROSSOVERS.onednn_bare_min_mnk[name])
    assert cpu_table.Crossovers.from_json(cross.to_json(), "x").to_json() == cross.to_json()
    _crossovers(monkeypatch, **{f: getattr(cross, f) for f in ("onednn_bare_min_mnk", "onednn_fused_min_mnk",
                                                               "gemv_skinny")})
    monkeypatch.setattr(T, "DRIVER", CpuDriver(kernels="auto"))
    T.check(T.build(COMBOS["f32"], 24, 24, 24))


def _is_onednn(kernel: object) -> bool:
    if isinstance(kernel, (cpu_onednn.FloatKernel, cpu_onednn.WidenedKernel)):
        return True
    cells = getattr(kernel, "__closure__", None) or ()
    return any(isinstance(c.cell_contents, (cpu_onednn.IntProduct, cpu_onednn.TorchIntProduct)) for c in cells)


def test_small_f32_keeps_its_one_call_fast_paths() -> None:
    """Tiny bare f32 GEMMs are bound to one f2py call (their band: OpenBLAS on the calling thread)."""
    case = T.build(T.COMBO[F32, F32, F32], 8, 8, 8)
    assert CpuDriver().bind_gemm(case.op, *case.arrays) is not None
    assert CpuDriver().prepare_gemm_fresh(case.op) is not None
    if runnable("f32=onednn"):  # forcing oneDNN on f32 means every f32 GEMM, the tiny ones too
        assert CpuDriver(kernels="f32=onednn").bind_gemm(case.op, *case.arrays) is None


# -- the oracle tests through every forced path --------------------------------------------


@pytest.mark.parametrize("combo", T.GEMM_COMBOS, ids=lambda c: c.name)
def test_every_combo_and_layout(driver: CpuDriver, combo: T.GemmCombo) -> None:
    for pad in (0, 3):
        T.check(T.build(combo, 33, 35, 37, pad=pad, alpha=T.RNG.choice([1, 2]), beta=1))
    for ta in (False, True):
        for tb in (False, True):
            T.check(T.build(combo, 34, 36, 40, trans_a=ta, trans_b=tb, pad=2))


@pytest.mark.parametrize("bcast", ["a", "b", "c", "ab", "e", ""])
@pytest.mark.parametrize("combo", [T.COMBO[F32, F32, F32], T.COMBO[BF16, BF16, BF16], T.COMBO[F16, F16, F32],
                                   T.COMBO[I8, U8, I32], T.COMBO[U8, U8, I32]], ids=lambda c: c.name)
def test_batches_broadcast_and_in_place(driver: CpuDriver, combo: T.GemmCombo, bcast: str) -> None:
    post = ((PostOpKind.BIAS_N, 0, 0, combo.d),) if "e" in bcast else ()
    T.check(T.build(combo, 20, 21, 50, batch=3, bcast=bcast, post=post))
    T.check(T.build(combo, 20, 21, 50, batch=3, in_place=True, beta=1, alpha=2 if combo.is_int else 0.5))


def test_row_interleaved_d(driver: CpuDriver) -> None:
    for combo in (T.COMBO[F32, F32, F32], T.COMBO[I8, I8, I32], T.COMBO[BF16, BF16, F32]):
        T.check(T.build(combo, 24, 20, 40, batch=3, interleave="d"))


@pytest.mark.parametrize("combo", [c for c in T.GEMM_COMBOS if not c.is_int], ids=lambda c: c.name)
def test_fused_epilogues(driver: CpuDriver, combo: T.GemmCombo) -> None:
    chains = [((PostOpKind.BIAS_N, 0, 0, combo.acc), (PostOpKind.GELU_ERF, 0, 0, None)),
              ((PostOpKind.BIAS_M, 0, 0, combo.d), (PostOpKind.GELU_TANH, 0, 0, None), (PostOpKind.SCALE, -2.0, 0, None),
               (PostOpKind.ADD, 0, 0, combo.acc)),
              ((PostOpKind.SCALE, 0.5, 0, None), (PostOpKind.RELU, 0, 0, None), (PostOpKind.ADD, 0, 0, combo.d),
               (PostOpKind.CLAMP, -0.25, 0.5, None))]
    for post in chains:
        T.check(T.build(combo, 33, 34, 40, alpha=1.5, beta=0.5, post=post))
        T.check(T.build(combo, 33, 34, 40, batch=2, post=post, in_place=True, beta=-1.0))


def test_non_finite_values_through_fused_epilogues(driver: CpuDriver) -> None:
    """oneDNN's relu/clip drop NaN and its gelu turns inf into NaN: the driver keeps the spec's values."""
    f32 = T.COMBO[F32, F32, F32]
    a = np.ones((1, 40, 40), np.float32)
    a[0, :6, 0] = [1.0, -1e30, np.inf, -np.inf, np.nan, -9.0]
    b = np.ones((1, 40, 40), np.float32)
    for kind in (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH, PostOpKind.RELU):
        T.check(T.build(f32, 40, 40, 40, values={"a": a, "b": b}, post=((kind, 0, 0, None),)))
    got = T.check(T.build(f32, 40, 40, 40, values={"a": a, "b": b}, post=((PostOpKind.CLAMP, -1.0, 1.0, None),)))
    assert np.isnan(got[0, 4]).all()


def test_bf16_subnormals_survive(driver: CpuDriver) -> None:
    """Native bf16 instructions flush subnormal inputs, products and results to zero; the spec's
    f32 accumulation keeps them (the driver routes such GEMMs elsewhere)."""
    bf16 = T.COMBO[BF16, BF16, BF16]
    a = np.full((1, 40, 40), 1e-20, T.DTYPES[BF16].numpy)  # products ~1e-40: subnormal in f32
    b = np.full((1, 40, 40), 1e-20, T.DTYPES[BF16].numpy)
    a[0, 0, 0] = 1e-39  # a subnormal input
    for combo in (bf16, T.COMBO[BF16, BF16, F32]):
        got = T.check(T.build(combo, 40, 40, 40, values={"a": a, "b": b}))
        assert (got != 0).all()
        T.check(T.build(combo, 40, 40, 40, post=((PostOpKind.SCALE, 2.0**-140, 0, None),)))  # subnormal D
    assert cpu_onednn.bf16_safe(np.ones((2, 2), T.DTYPES[BF16].numpy), np.zeros((2, 2), T.DTYPES[BF16].numpy))
    assert not cpu_onednn.bf16_safe(a, b)


@pytest.mark.parametrize("combo", [c for c in T.GEMM_COMBOS if c.is_int], ids=lambda c: c.name)
def test_int8_exact_with_wrap_through_alpha_beta_and_epilogue(driver: CpuDriver, combo: T.GemmCombo) -> None:
    ext = {I8: (-128, 127), U8: (255, 255)}
    lo_a = ext[combo.a][0] if combo.a == I8 else 255
    lo_b = ext[combo.b][0] if combo.b == I8 else 255
    for ta in (False, True):  # a transposed A goes to oneDNN's inexact gemm:jit unless laid out
        k = 70_000  # 255 * 128 * 70000 > 2**31: the sum itself wraps
        a = np.full((1, 2, k), lo_a, T.DTYPES[combo.a].numpy)
        b = np.full((1, k, 3), lo_b, T.DTYPES[combo.b].numpy)
        a[0, 1, ::7] = 3
        if ta:
            a = a.transpose(0, 2, 1).copy()  # stored as k x m
        T.check(T.build(combo, 2, 3, k, values={"a": a, "b": b}, trans_a=ta))
        T.check(T.build(combo, 2, 3, k, values={"a": a, "b": b}, trans_a=ta, alpha=-3, beta=2**30 + 7,
                        post=((PostOpKind.BIAS_N, 0, 0, I32), (PostOpKind.SCALE, 65537, 0, None),
                              (PostOpKind.RELU, 0, 0, None))))
    T.check(T.build(combo, 48, 40, 2048, pad=3))


def test_conformance_quick_on_every_forced_path() -> None:
    """Conformance quick through every forced setting, judged on the combinations of the classes it
    forces (the others run the ``auto`` table, which the cpu device's own conformance run judges)."""
    for spec in RUNNABLE:
        forced = {cls.value for cls, choice in cpu_table.parse_kernels(spec).items() if choice != cpu_table.Choice.AUTO}
        combos = [c for c in T.GEMM_COMBOS if cpu_table.combo_class(c).value in forced]
        def device(spec: str = spec, combos: list = combos) -> Device:
            return Device("cpu", InprocTransport(restricted(CpuDriver(kernels=spec), combos=combos)))

        report = check_device(device, "quick")
        assert report.passed, f"{spec}: {report.to_markdown()}"


def test_front_end_matmul_uses_the_fused_path() -> None:
    a = np.random.default_rng(0).standard_normal((64, 64), np.float32)
    bias = np.linspace(-1, 1, 64, dtype=np.float32)
    want = a.astype(np.float64) @ a.astype(np.float64) + bias
    from scipy.special import erf

    want = want * 0.5 * (1 + erf(want / np.sqrt(2)))
    dev = Device("cpu", InprocTransport(CpuDriver(kernels="auto")))
    got = ffaccel.matmul(a, a, post_ops=[ffaccel.post.bias(bias), ffaccel.post.gelu()], device=dev)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_openmp_wait_policy_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """PASSIVE unless the user chose a policy or an OpenMP runtime already read its own."""
    from ffaccel.drivers import openmp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(openmp, "openmp_loaded", lambda: True)
    openmp.passive_unless_chosen()
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(openmp, "openmp_loaded", lambda: False)
    openmp.passive_unless_chosen()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    openmp.passive_unless_chosen()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _made(cls: type, monkeypatch: pytest.MonkeyPatch) -> list:
    """Every instance of ``cls`` made from now on in this test, in order."""
    made: list = []
    init = cls.__init__

    def keep(self: object, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(cls, "__init__", keep)
    return made


@pytest.mark.parametrize("epilogue", ["bias n", "bias m", "bias n + add"])
def test_broadcast_weight_into_row_interleaved_d(epilogue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy-free lowering of a linear layer on a seq-first view: one batched GEMM, the weight
    broadcast (batch stride 0), D's rows interleaved (``out`` is a transposed (L, N, O) array),
    with fused operands, on every kernel path this machine runs (the others are refused: tested
    above). oneDNN 3.2 misaddresses a binary post-op on a non-dense D: the driver must compute
    such a D through a dense one, never read the wrong bias or leave the process."""
    from ffaccel.frontends import post

    fused = _made(cpu_onednn.FloatKernel, monkeypatch)
    rng = np.random.default_rng(7)
    n, rows, k, o = 16, 24, 64, 192  # batch x (24 x 64) @ (64 x 192): m*n*k above every threshold
    x = rng.standard_normal((rows, n, k), dtype=np.float32).transpose(1, 0, 2)
    w = rng.standard_normal((o, k), dtype=np.float32)
    bn, bm = rng.standard_normal(o, dtype=np.float32), rng.standard_normal(rows, dtype=np.float32)
    res = rng.standard_normal((rows, n, o), dtype=np.float32).transpose(1, 0, 2)
    ops, extra = {"bias n": ([post.bias(bn)], bn), "bias m": ([post.bias(bm, axis="m")], bm[:, None]),
                  "bias n + add": ([post.bias(bn), post.add(res)], bn + res)}[epilogue]
    want = x.astype(np.float64) @ w.T.astype(np.float64) + extra
    specs = [s for s in ["auto", *FORCED] if runnable(s)]
    assert "auto" in specs and "blas" in specs
    for spec in specs:
        fused.clear()
        dev = Device("cpu", InprocTransport(CpuDriver(kernels=spec)))
        out = np.full((rows, n, o), np.nan, np.float32).transpose(1, 0, 2)
        ffaccel.matmul(x, np.broadcast_to(w, (n, o, k)), trans_b=True, post_ops=ops, out=out, device=dev)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3 * np.sqrt(k), err_msg=spec)
        if spec.startswith("f32=onednn") and epilogue != "bias n + add":
            # the vector operands stay fused: oneDNN writes a dense scratch D, copied into the
            # interleaved one (a residual as interleaved as D is not dense either: OpenBLAS takes it)
            assert fused and all(kern.impls and "blas" not in kern.impls for kern in fused), spec


def test_widened_f16_with_a_bias_into_row_interleaved_d_stays_on_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """The twin of the test above on the widened path (f16 inputs, f32 D): the same dense D."""
    if not runnable("f16=widened"):
        pytest.skip("the widened path needs oneDNN and PyTorch (its refusal is tested above)")
    from ffaccel.frontends import post

    kernels = _made(cpu_onednn.WidenedKernel, monkeypatch)
    rng = np.random.default_rng(8)
    n, rows, k, o = 16, 24, 64, 192
    x = rng.standard_normal((rows, n, k)).astype(np.float16).transpose(1, 0, 2)
    w = rng.standard_normal((o, k)).astype(np.float16)
    bias = rng.standard_normal(o).astype(np.float32)
    out = np.full((rows, n, o), np.nan, np.float32).transpose(1, 0, 2)
    dev = Device("cpu", InprocTransport(CpuDriver(kernels="f16=widened")))
    ffaccel.matmul(x, np.broadcast_to(w, (n, o, k)), trans_b=True, post_ops=[post.bias(bias)], out=out,
                   out_dtype=np.float32, device=dev)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3 * np.sqrt(k))
    assert kernels and all(kern.impls and "blas" not in kern.impls for kern in kernels)


@pytest.mark.parametrize("cls", ["f32", "f64"])
def test_gemm_plus_bias_fills_d_with_the_bias_then_accumulates(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear layer's GEMM + bias (batch 1, the bias alone) on OpenBLAS: the bias broadcast into
    D and BLAS adding the product (beta = 1). Right with alpha, either axis, padded and
    transposed operands, non-finite biases; not taken with C or a second post-op."""
    combo = COMBOS[cls]
    drv = CpuDriver(kernels="blas")
    monkeypatch.setattr(T, "DRIVER", drv)
    bn, bm = (PostOpKind.BIAS_N, 0, 0, combo.acc), (PostOpKind.BIAS_M, 0, 0, combo.acc)
    non_finite = T.build(combo, 6, 4, 5, post=(bn,))
    non_finite.arrays[4][0][0, 0, :] = [np.nan, np.inf, -np.inf, 1.0]
    for case in (T.build(combo, 8, 8, 8, post=(bn,)), T.build(combo, 9, 5, 7, alpha=2.5, post=(bm,)),
                 T.build(combo, 12, 10, 6, trans_a=True, pad=3, post=(bn,)),
                 T.build(combo, 70, 80, 90, trans_b=True, post=(bm,)), non_finite):
        kernel = drv.prepare_gemm(case.op)
        assert kernel.__code__.co_varnames[:5] == ("a", "b", "c", "d", "epi") and "copyto" in kernel.__code__.co_freevars
        T.check(case)
    for case in (T.build(combo, 8, 8, 8, beta=1.0, with_c=True, post=(bn,)),
                 T.build(combo, 8, 8, 8, post=(bn, (PostOpKind.RELU, 0, 0, None)))):
        assert "copyto" not in drv.prepare_gemm(case.op).__code__.co_freevars
        T.check(case)


def test_large_bare_f32_on_numpys_pool_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its crossover an f32 GEMM runs on NumPy's OpenBLAS where PyTorch is not loaded (one
    pool with NumPy's @), on oneDNN where it is (one pool with PyTorch): both sides forced, and
    the crossovers' switch that turns it off; an epilogue with a GELU stays fused on oneDNN."""
    if not runnable("f32=onednn"):
        pytest.skip("oneDNN is not installed here: bare f32 is on OpenBLAS whatever is loaded")
    combo = T.COMBO[F32, F32, F32]
    at = {**cpu_table.DEFAULT_CROSSOVERS.onednn_bare_min_mnk, "f32": 40**3}
    case = T.build(combo, 40, 40, 40)
    for pool_switch in (True, False):
        _crossovers(monkeypatch, onednn_bare_min_mnk=at, bare_f32_numpy_pool_without_torch=pool_switch)
        auto = CpuDriver(kernels="auto")
        assert auto.band(case.op).numpy_pool_without_torch == pool_switch
        for torch_loaded in (True, False):
            monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: torch_loaded)
            assert _is_onednn(auto.prepare_gemm(case.op)) == (torch_loaded or not pool_switch)
            monkeypatch.setattr(T, "DRIVER", auto)
            T.check(case)
    _crossovers(monkeypatch, onednn_bare_min_mnk=at, onednn_fused_min_mnk=at)
    monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: False)
    auto = CpuDriver(kernels="auto")
    monkeypatch.setattr(T, "DRIVER", auto)
    for post, onednn_fuses in ((((PostOpKind.BIAS_N, 0, 0, F32), (PostOpKind.RELU, 0, 0, None)), False),
                               (((PostOpKind.GELU_TANH, 0, 0, None),), True),
                               (((PostOpKind.BIAS_N, 0, 0, F32), (PostOpKind.GELU_ERF, 0, 0, None)), True)):
        fused = T.build(combo, 40, 40, 40, post=post)
        assert _is_onednn(auto.prepare_gemm(fused.op)) == onednn_fuses  # only GELU needs oneDNN's fusion
        T.check(fused)


@pytest.mark.parametrize("post", [(), ((PostOpKind.BIAS_N, 0, 0, F32),)])
def test_multithreaded_band_through_numpys_call_stays_silent_and_exact_in_ieee(
        post: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above OpenBLAS's threading threshold a plain GEMM (alpha 1, no C) is NumPy's own ?gemm call:
    inf * 0 gives NaN without a warning, padded and transposed operands still right."""
    monkeypatch.setattr(cpu_mod, "_SINGLE_THREAD_MNK", 8**3)  # these sizes are "multi-threaded"
    drv = CpuDriver(kernels="blas")
    monkeypatch.setattr(T, "DRIVER", drv)
    combo = T.COMBO[F32, F32, F32]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for case in (T.build(combo, 12, 10, 9, post=post), T.build(combo, 12, 10, 9, trans_a=True, pad=2, post=post),
                     T.build(combo, 12, 10, 9, trans_b=True, post=post)):
            case.arrays[0][0][0, :] = np.inf  # row 0 of A: inf; B has zeros below
            case.arrays[1][0][:, 0] = 0.0
            T.check(case)


@pytest.mark.parametrize("cls", ["f32", "f64"])
def test_fresh_kernel_of_a_linear_layer(cls: str) -> None:
    """``prepare_gemm_fresh`` with a bias alone: a new D holding alpha * A @ B + bias, for plain and
    column-major operands and either bias axis; not offered for a longer epilogue or past the
    calling-thread band."""
    combo, dt = COMBOS[cls], numpy_dtype(COMBOS[cls].acc)
    drv = CpuDriver(kernels="auto")
    rng = np.random.default_rng(9)
    for kind, alpha in ((PostOpKind.BIAS_N, 1.0), (PostOpKind.BIAS_M, -1.5)):
        case = T.build(combo, 6, 7, 5, alpha=alpha, post=((kind, 0, 0, combo.acc),))
        fresh = drv.prepare_gemm_fresh(case.op)
        assert fresh is not None
        a, b = rng.standard_normal((6, 5)).astype(dt), rng.standard_normal((5, 7)).astype(dt)
        v = rng.standard_normal(7 if kind == PostOpKind.BIAS_N else 6).astype(dt)
        view = v.reshape(1, 1, 7) if kind == PostOpKind.BIAS_N else v.reshape(1, 6, 1)
        want = alpha * (a.astype(np.float64) @ b) + (v if kind == PostOpKind.BIAS_N else v[:, None])
        for x, y in ((a, b), (np.asfortranarray(a), np.asfortranarray(b))):
            got = fresh(x, y, (view,))
            assert got.shape == (6, 7) and got.dtype == dt and got.flags.c_contiguous
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    relu = T.build(combo, 6, 7, 5, post=((PostOpKind.BIAS_N, 0, 0, combo.acc), (PostOpKind.RELU, 0, 0, None)))
    assert drv.prepare_gemm_fresh(relu.op) is None
    big = T.build(combo, 70, 80, 90, post=((PostOpKind.BIAS_N, 0, 0, combo.acc),)).op  # past the calling thread
    assert drv.prepare_gemm_fresh(big) is None or drv.band(big).threads in (Threads.OWN, Threads.SHARED)


def test_fresh_kernel_of_a_multithreaded_plain_gemm_is_numpys_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past OpenBLAS's threading threshold, on OpenBLAS's own threads (no PyTorch loaded), a plain
    f32/f64 GEMM's fresh kernel is NumPy's matmul (silenced), and a linear layer's (the bias alone)
    NumPy's matmul then the bias added in place (``fresh`` and ``fresh.contiguous``, any layout of
    a and b, either bias axis): not offered where the call must be held to one thread (PyTorch
    loaded) or to a thread limit, nor with alpha != 1."""
    rng = np.random.default_rng(11)
    for cls in ("f32", "f64"):
        combo, dt = COMBOS[cls], numpy_dtype(COMBOS[cls].acc)
        case = T.build(combo, 70, 80, 90)
        linear = {kind: T.build(combo, 70, 80, 90, post=((kind, 0, 0, combo.acc),))
                  for kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M)}
        monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: False)
        fresh = CpuDriver(kernels="auto").prepare_gemm_fresh(case.op)
        a, b = np.full((70, 90), np.inf, dt), np.zeros((90, 80), dt)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = fresh(a, b)
        assert got.shape == (70, 80) and got.dtype == dt and np.isnan(got).all()
        x, y = rng.standard_normal((70, 90)).astype(dt), rng.standard_normal((90, 80)).astype(dt)
        for kind, lin in linear.items():
            fresh_b = CpuDriver(kernels="auto").prepare_gemm_fresh(lin.op)
            if CpuDriver(kernels="auto").band(lin.op).threads not in (Threads.OWN, Threads.SHARED):
                assert fresh_b is None  # (a table that holds this size to one thread: the prepared kernel)
                continue
            v = rng.standard_normal(80 if kind == PostOpKind.BIAS_N else 70).astype(dt)
            view = v.reshape(1, 1, 80) if kind == PostOpKind.BIAS_N else v.reshape(1, 70, 1)
            want = x.astype(np.float64) @ y + view[0]
            for xx, yy in ((x, y), (np.asfortranarray(x), y), (x, np.asfortranarray(y))):
                got = fresh_b(xx, yy, (view,))
                assert got.shape == (70, 80) and got.dtype == dt and got.flags.c_contiguous
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                if kind == PostOpKind.BIAS_N:  # the user's own vector, as the front-end's plan hands it
                    np.testing.assert_allclose(fresh_b.contiguous(xx, yy, v), want, rtol=1e-4, atol=1e-4)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # inf * 0 is NaN, the intended IEEE result: no warning
                assert np.isnan(fresh_b(a, b, (view,))).all()
        assert CpuDriver(kernels="auto").prepare_gemm_fresh(T.build(combo, 70, 80, 90, alpha=2.0).op) is None
        assert CpuDriver(threads=2).prepare_gemm_fresh(case.op) is None
        assert CpuDriver(threads=2).prepare_gemm_fresh(linear[PostOpKind.BIAS_N].op) is None
        monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: True)
        shared = CpuDriver(kernels="auto").band(case.op).threads == Threads.SHARED
        assert (CpuDriver(kernels="auto").prepare_gemm_fresh(case.op) is None) == shared
        assert (CpuDriver(kernels="auto").prepare_gemm_fresh(linear[PostOpKind.BIAS_N].op) is None) == shared


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("batch", "m", "k", "n"), [(32, 16, 64, 16), (12, 1, 64, 40), (4, 40, 33, 36)])
def test_batched_blas_paths_match_numpy(dtype, batch: int, m: int, k: int, n: int) -> None:
    """_gemm3d's two BLAS paths on any CPU: alpha = 1, beta = 0 on BLAS-able views is one
    numpy.matmul over the batch (NaN in D's memory not read); other scalars, or a transposed D,
    take the per-entry calls (big entries) or say False (small ones, for numpy.matmul with passes)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((batch, m, k)).astype(dtype)
    bt = rng.standard_normal((batch, n, k)).astype(dtype)
    b = bt.swapaxes(1, 2)  # column-major entries: still one ?gemm each
    blas = cpu_mod._DGEMM if dtype == np.float64 else cpu_mod._SGEMM
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    tol = 1e-12 if dtype == np.float64 else 1e-4
    x = np.full((batch, m, n), np.nan, dtype)
    assert cpu_mod._gemm3d(blas, 1.0, a, b, 0.0, x)
    np.testing.assert_allclose(x, want, rtol=tol, atol=tol * k)
    c = rng.standard_normal((batch, m, n)).astype(dtype)
    x = c.copy()
    if cpu_mod._gemm3d(blas, 0.5, a, b, -1.0, x):
        assert m * n * k >= cpu_mod._LOOP_MIN_MNK
    else:  # what the kernel then runs
        assert m * n * k < cpu_mod._LOOP_MIN_MNK
        cpu_mod._matmul_axpby(0.5, a, b, -1.0, x)
    np.testing.assert_allclose(x, 0.5 * want - c, rtol=tol, atol=tol * k)
    xt = np.full((batch, n, m), np.nan, dtype).swapaxes(1, 2)  # D transposed per entry
    if not cpu_mod._gemm3d(blas, 1.0, a, b, 0.0, xt):
        cpu_mod._matmul_axpby(1.0, a, b, 0.0, xt)
    np.testing.assert_allclose(xt, want, rtol=tol, atol=tol * k)


def test_per_call_paths_silence_fpu_flags_and_restore_the_callers_error_state() -> None:
    """The per-call paths run NumPy's matmul with every floating-point error ignored (inf * 0 is
    NaN, as IEEE says, and warns nobody), and leave the caller's own error state as it was: a
    NumPy operation of the caller right after still warns (or raises) as the caller set it."""
    dev = ffaccel.open("cpu")
    shapes = (((1, 600), (600, 600)), ((8, 600), (600, 600)), ((12, 1, 64), (12, 64, 40)), ((600, 600), (600, 1)))
    for sa, sb in shapes:
        a, b = np.full(sa, np.inf, np.float32), np.zeros(sb, np.float32)
        bias = np.zeros(sb[-1], np.float32)
        for post_ops in ((), ffaccel.post.bias(bias)):
            with np.errstate(all="raise"), warnings.catch_warnings():
                warnings.simplefilter("error")
                for _ in range(3):  # the full path, then the cached per-call paths
                    got = ffaccel.matmul(a, b, post_ops=post_ops, device=dev)
                    assert np.isnan(got).all()
                    assert np.geterr() == {"divide": "raise", "over": "raise", "under": "raise", "invalid": "raise"}
                with pytest.raises(FloatingPointError):
                    np.multiply(a[..., :1, :1], 0)  # the caller's state is back in force


@pytest.mark.parametrize("cls", ["f32", "f64"])
def test_skinny_linear_layer_on_numpys_threads_returns_a_new_d(cls: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A skinny GEMM + bias large enough for NumPy's OpenBLAS to thread its ?gemv (1 x 200 x 64
    here) gets a fresh kernel where no one-thread hold applies (PyTorch not loaded): a new
    C-ordered D equal to a @ b + bias, along n and along m, inf * 0 giving NaN with no warning;
    with PyTorch loaded too, below the size from which the prepared kernel holds OpenBLAS to one
    thread (the prepared kernel above it)."""
    combo = T.COMBO[DType.F64, DType.F64, DType.F64] if cls == "f64" else COMBOS["f32"]
    dt = numpy_dtype(combo.acc)
    drv = CpuDriver(kernels=f"{cls}=gemv")
    monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: False)
    for m, n, kind in ((1, 200, PostOpKind.BIAS_N), (200, 1, PostOpKind.BIAS_M)):
        op = T.build(combo, m, n, 64, post=((kind, 0, 0, combo.d),)).op
        fresh = drv.prepare_gemm_fresh(op)
        assert fresh is not None
        a, b = np.arange(m * 64, dtype=dt).reshape(m, 64) / 7, np.ones((64, n), dt)
        bias = np.arange(n if kind == PostOpKind.BIAS_N else m, dtype=dt)
        view = bias.reshape(1, 1, n) if kind == PostOpKind.BIAS_N else bias.reshape(1, m, 1)
        got = fresh(a, b, (view,))
        assert got.shape == (m, n) and got.dtype == dt and got.flags.c_contiguous
        np.testing.assert_allclose(got, a.astype(np.float64) @ b + view[0], rtol=1e-5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.isnan(fresh(np.full((m, 64), np.inf, dt), np.zeros((64, n), dt), (view,))).all()
    monkeypatch.setattr(cpu_mod, "_torch_loaded", lambda: True)
    # where PyTorch is loaded the hold applies from OpenBLAS's ?gemm threading size on (the prepared
    # kernel's); below it the prepared kernel would make NumPy's call too (a GPT-2 decode's layers)
    op = T.build(combo, 1, 200, 64, post=((PostOpKind.BIAS_N, 0, 0, combo.d),)).op
    assert drv.prepare_gemm_fresh(op) is not None
    op = T.build(combo, 1, 2048, 256, post=((PostOpKind.BIAS_N, 0, 0, combo.d),)).op
    assert (drv.prepare_gemm_fresh(op) is None) == (drv.band(op).threads == Threads.SHARED)


# -- the kernel table measured at first use ----------------------------------------------------

#: A first-use pass cut to tiny sizes (the decisions are not the question here, the cache is).
_TINY_PASS = {"QUICK_LADDER": (16, 24), "QUICK_SHAPES": ((1, 32, 4, 16), (2, 8, 32, 16)),
              "QUICK_SKINNY": ((1, 16, 16),), "QUICK_BUDGET_S": 0.02}
#: A process that builds the default driver's table, cut to the tiny pass, and prints where its
#: crossovers came from.
_FIRST_USE = ("import ffaccel.drivers.cpu_tune as t\n"
              + "".join(f"t.{k} = {v!r}\n" for k, v in _TINY_PASS.items())
              + "from ffaccel.drivers.cpu import CpuDriver\n"
                "print(CpuDriver().kernel_table().crossovers.source)\n")


def _measuring_env(cache: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FFACCEL_CPU_TUNED", "FFACCEL_CPU_KERNELS")}
    env["FFACCEL_CACHE_DIR"] = str(cache)
    return env


@pytest.fixture
def first_use(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> object:
    """This process with no tuning cache (an empty FFACCEL_CACHE_DIR), measuring at first use with
    the tiny pass; the tables read before and after are forgotten."""
    from ffaccel.drivers import cpu_tune

    for name, value in _TINY_PASS.items():
        monkeypatch.setattr(cpu_tune, name, value)
    monkeypatch.setenv("FFACCEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FFACCEL_CPU_TUNED", raising=False)
    monkeypatch.delenv("FFACCEL_CPU_KERNELS", raising=False)
    cpu_mod.forget_crossovers()
    yield tmp_path
    cpu_mod.forget_crossovers()


def test_first_uses_measure_write_one_whole_cache_and_the_next_process_loads_it(tmp_path: object) -> None:
    """Without a cache the first kernel table is measured and the cache written. Two processes doing
    so at once each write a temporary file and rename it: one valid cache remains, no temporary
    file; the next process reads it instead of measuring."""
    import json
    import subprocess
    import sys

    env = _measuring_env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_USE], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    (path,) = list(tmp_path.iterdir())
    assert path.name.startswith("cpu-kernels-") and path.suffix == ".json"
    assert f"measured at first use ({path})" in outs and all(o in (f"measured at first use ({path})", str(path))
                                                             for o in outs)
    data = json.loads(path.read_text())
    assert data["key"]["cpu"] and set(data["crossovers"]["onednn_bare_min_mnk"]) == set(KERNEL_CLASSES)
    third = subprocess.run([sys.executable, "-c", _FIRST_USE], env=env, capture_output=True, text=True,
                           timeout=120, check=True).stdout.strip()
    assert third == str(path)  # read, not measured
    assert list(tmp_path.iterdir()) == [path]


def test_a_corrupt_or_foreign_cache_is_measured_over_and_replaced(first_use: object) -> None:
    import json

    from ffaccel.drivers import cpu_tune

    path = cpu_tune.cache_path()
    path.write_text("not json")
    assert cpu_mod.crossovers().source == f"measured at first use ({path})"
    data = json.loads(path.read_text())
    assert data["key"] == cpu_tune.machine_key()
    data["key"]["cpu"] = "another CPU"
    path.write_text(json.dumps(data))
    cpu_mod.forget_crossovers()
    assert CpuDriver().kernel_table().crossovers.source == f"measured at first use ({path})"
    assert json.loads(path.read_text())["key"] == cpu_tune.machine_key()


def test_an_unwritable_cache_directory_measures_once_and_keeps_it_in_memory(
        first_use: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache directory that cannot be made (its parent is a file; root ignores permissions) is no
    error: the pass's crossovers serve this process, measured once."""
    from ffaccel.drivers import cpu_tune

    blocker = first_use / "a file"
    blocker.write_text("")
    monkeypatch.setenv("FFACCEL_CACHE_DIR", str(blocker / "cache"))
    got = CpuDriver().kernel_table().crossovers
    assert got.source == "measured at first use (not saved)"
    monkeypatch.setattr(cpu_tune, "tune", lambda *a, **k: pytest.fail("measured twice"))
    cpu_mod._resolved.cache_clear()
    assert CpuDriver(kernels="f32=blas").kernel_table().crossovers.to_json() == got.to_json()
    assert cpu_tune.load_crossovers() is None


def test_tuned_0_and_forced_kernels_measure_nothing(first_use: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """FFACCEL_CPU_TUNED=0 keeps the defaults; a choice forcing every class reads no crossover; a
    class forced beside measured ones runs its forced library at every size."""
    from ffaccel.drivers import cpu_tune

    monkeypatch.setenv("FFACCEL_CPU_TUNED", "0")
    assert CpuDriver().kernel_table().crossovers is cpu_table.DEFAULT_CROSSOVERS
    monkeypatch.delenv("FFACCEL_CPU_TUNED")
    table = CpuDriver(kernels="blas").kernel_table()
    assert table.crossovers is cpu_table.DEFAULT_CROSSOVERS and not list(first_use.iterdir())
    for fused in (False, True):
        assert table.band(KernelClass.F32, fused, False, 2**40).library == Library.BLAS
    if runnable("f32=onednn"):
        forced = CpuDriver(kernels="f32=onednn").kernel_table()
        assert forced.crossovers.source.startswith("measured at first use")  # the other classes' auto
        assert {b.library for row in (forced.rows[k] for k in forced.rows if k.cls == KernelClass.F32 and not k.skinny)
                for b in row} == {Library.ONEDNN}
    monkeypatch.setattr(cpu_tune, "tune", lambda *a, **k: pytest.fail("measured with a cache present"))
    cpu_mod.forget_crossovers()
    assert CpuDriver().kernel_table().crossovers.source == str(cpu_tune.cache_path())


def test_the_pass_measures_the_model_shapes_and_restores_thread_settings(first_use: object,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first-use pass times every candidate at the ladder and at the model shapes (a narrow
    recurrent step, a batched convolution with A shared) and leaves the process's thread settings
    as they were."""
    import json

    from threadpoolctl import threadpool_info

    from ffaccel.drivers import cpu_tune

    # the whole pass: past OVERRUN_FACTOR x its budget of thread CPU time a pass keeps the defaults
    # for what is left (test_tune_measures_a_table_that_builds takes both), and a loaded machine got
    # there with the tiny pass's 0.02 s (66 ms of CPU: no skinny timing)
    monkeypatch.setattr(cpu_tune, "OVERRUN_FACTOR", 1e6)
    before = [(i.get("filepath"), i.get("num_threads")) for i in threadpool_info()]
    cpu_mod.crossovers()
    assert [(i.get("filepath"), i.get("num_threads")) for i in threadpool_info()] == before
    timings = json.loads(cpu_tune.cache_path().read_text())["timings_us"]
    assert timings["pass_thread_cpu_s"] > 0 and "f32 skinny 1x16x16" in timings
    if CpuDriver().kernel_table().classes[KernelClass.F32].library != Library.BLAS:
        for name in ("f32 bare 1x32x16x4", "f32 fused 2x8x16x32", "f32 bare 16^3", "f32 fused 24^3"):
            assert timings[name]["blas"] > 0 and timings[name]["lib"] > 0


def test_serve_and_report_measure_at_start_only_without_a_cache(first_use: object,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``tune_at_start`` (``ffaccel serve --driver cpu``, ``ffaccel report``): the full pass once,
    saying so, where no valid cache exists; nothing where one does or FFACCEL_CPU_TUNED=0."""
    from ffaccel.drivers import cpu_tune

    for name, value in (("LADDER", (16, 24)), ("SHAPES", ((1, 32, 4, 16),)), ("SKINNY", ((1, 16, 16),)),
                        ("START_BUDGET_S", 0.02)):
        monkeypatch.setattr(cpu_tune, name, value)
    monkeypatch.setenv("FFACCEL_CPU_TUNED", "0")
    assert cpu_tune.tune_at_start() is None and not list(first_use.iterdir())
    monkeypatch.delenv("FFACCEL_CPU_TUNED")
    said: list[str] = []
    cross = cpu_tune.tune_at_start(said.append)
    assert cross is not None and len(said) == 1 and "measuring" in said[0]
    assert cpu_tune.load_crossovers().to_json() == cross.to_json()
    assert cpu_tune.tune_at_start(said.append) is None and len(said) == 1


@pytest.mark.skipif(not runnable("f16=widened,bf16=widened"), reason="the widened kernel needs oneDNN and PyTorch installed")
def test_widened_kernel_does_not_import_pytorch() -> None:
    """A NumPy-only program's f16/bf16 GEMMs on the widened kernel (forced here, at every size)
    pass the suite's GEMM cases with NumPy's and ml_dtypes' casts, and PyTorch stays unimported
    (its import cost a first GEMM 1.5 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ffaccel.conformance import check_device\n"
        "r = check_device('cpu', 'quick', only=('f16xf16', 'bf16xbf16'))\n"
        "assert r.results and r.passed, r.failures_text(5)\n"
        "print('torch' in sys.modules)\n"
    )
    env = dict(os.environ, FFACCEL_CPU_KERNELS="f16=widened,bf16=widened")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kernels", ["auto", "blas", "f32=onednn"])
@pytest.mark.parametrize("threads", [None, 1])
def test_a_size_free_kernel_covers_only_geometries_that_get_it(kernels: str, threads: int | None) -> None:
    """``CpuDriver.kernel_family``: wherever its ``covers`` says a geometry of the class gets the same
    kernel, preparing that geometry asks for the same key (band and thread hold); the op's own sizes
    are covered; GEMMs whose kernel reads sizes (batch 1, an epilogue, int8) have no family."""
    from ffaccel.abi import Gemm, Matrix, PostOpDesc, check_command

    drv = CpuDriver(kernels=kernels, threads=threads)
    caps = drv.caps()

    def op(batch: int, m: int, n: int, k: int, post: tuple = ()):  # noqa: ANN202
        return check_command(Gemm(m=m, n=n, k=k, batch=batch, a=Matrix(1, DType.F32, m, k, batch_stride_elems=m * k),
                                  b=Matrix(2, DType.F32, k, n, batch_stride_elems=k * n),
                                  d=Matrix(3, DType.F32, m, n, batch_stride_elems=m * n), epilogue=post).encode(), caps)

    sizes = [(b, m, n, k) for b in (2, 12, 64) for m in (1, 8, 64) for n in (16, 40, 700, 4096) for k in (64, 256)]
    for s in sizes:
        family = drv.kernel_family(op(*s))
        if family is None:
            continue
        key, covers = family
        assert covers(s[1], s[2], s[3], s[0])
        for t in sizes:
            if covers(t[1], t[2], t[3], t[0]):
                assert drv.kernel_family(op(*t))[0] == key, (s, t)
    assert drv.kernel_family(op(1, 8, 40, 64)) is None  # batch 1: the 2-D kernels read the layout
    assert drv.kernel_family(op(2, 8, 40, 64, post=(PostOpDesc(PostOpKind.RELU, 0.0, 0.0),))) is None


def test_a_cache_written_after_the_driver_loaded_is_found_by_a_process_that_has_not(first_use: object) -> None:
    """``ffaccel serve`` and ``report`` look for the cache before the cpu driver (and SciPy's BLAS)
    is loaded; the key must not depend on which BLAS libraries happen to be loaded yet, or every
    start measures the table again (it did: a second key, a second file, on every run)."""
    import subprocess
    import sys

    from ffaccel.drivers import cpu_tune

    CpuDriver().kernel_table()  # measured here, SciPy loaded: the cache written
    path = cpu_tune.cache_path()
    assert path.exists()
    fresh = subprocess.run([sys.executable, "-c", "import ffaccel.drivers.cpu_tune as t\n"
                            "print(t._still_valid(t._read_cache()) is not None, t.cache_path())"],
                           env=_measuring_env(first_use), capture_output=True, text=True, timeout=120, check=True)
    assert fresh.stdout.split() == ["True", str(path)]
