"""Conformance on every kernel path a driver can choose, each one forced, whatever this CPU has.

A driver picks kernels by CPU features and by sizes; CI's machine takes only some of those
paths by itself. Here each path is forced (a driver option, or the threshold that selects it
lowered) and the quick suite runs through it, so a path that is wrong fails on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ffaccel.conformance import check_device
from ffaccel.drivers import cpu as cpu_mod
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.runtime import Device
from ffaccel.transports import InprocTransport

torch = pytest.importorskip("torch")
from ffaccel.drivers import torch as torch_mod  # noqa: E402
from ffaccel.drivers.torch import TorchDriver  # noqa: E402


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    # NumPy/OpenBLAS (the golden model) and PyTorch alternate: one torch thread keeps the two
    # pools from spinning against each other on a small machine (see README, thread pools).
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.mark.parametrize("native", ["none", "bf16,f16,int8"])
def test_torch_driver_every_native_choice(one_torch_thread, native: str) -> None:
    def factory() -> Device:
        return Device("torch:cpu", InprocTransport(TorchDriver("cpu", native=native)))

    report = check_device(factory, "quick", only=("GEMM", "COPY"))
    assert report.passed, report.failures_text()


def test_torch_int_mm_is_handed_canonical_strides(one_torch_thread, monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch._int_mm`` on AVX-512 VNNI reads a (1, k) view with strides (1, 1) wrongly (its
    leading dimension 1 is below its row length); other CPUs do not. A strict stand-in refuses
    every operand that is not row-major with a leading dimension at least its row length, so
    the driver's canonicalisation is checked on any CPU."""
    real = torch._int_mm
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    def strict(x: torch.Tensor, y: torch.Tensor, **kw: torch.Tensor) -> torch.Tensor:
        for t in (x, y, *kw.values()):  # row-major, leading dimension >= row length (what BLAS-like kernels assume)
            if t.stride(1) != 1 or t.stride(0) < t.shape[1]:
                raise AssertionError(f"_int_mm handed shape {tuple(t.shape)} with strides {t.stride()}")
        seen.append((tuple(x.shape), tuple(y.shape)))
        return real(x, y, **kw)

    monkeypatch.setattr(torch, "_int_mm", strict)
    assert torch_mod.torch._int_mm is strict

    def factory() -> Device:
        return Device("torch:cpu", InprocTransport(TorchDriver("cpu", native="int8")))

    report = check_device(factory, "quick", only=("int8", "uint8"))
    assert report.passed, report.failures_text()
    assert any(x[0] == 1 for x, _ in seen), "no m == 1 GEMM reached _int_mm"


@pytest.mark.parametrize("path", ["strided-blas", "batch-loop", "parallel-casts", "one-thread"])
def test_cpu_driver_every_size_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """The cpu driver chooses by size: f2py or the raw strided BLAS call, numpy.matmul or a
    BLAS call per batch entry, serial or two-thread casts, and a thread limit. Each is forced
    for every case by moving its threshold."""
    threads = None
    if path == "strided-blas":  # every GEMM counts as multi-threaded: raw Fortran symbol, any ld
        monkeypatch.setattr(cpu_mod, "_SINGLE_THREAD_MNK", 0)
    elif path == "batch-loop":  # every batch entry gets its own BLAS call
        monkeypatch.setattr(cpu_mod, "_LOOP_MIN_MNK", 0)
    elif path == "parallel-casts":  # every f16 conversion split over two threads
        monkeypatch.setattr(cpu_mod, "_PAR_CAST_MIN", 2)
    else:
        threads = 1
        monkeypatch.setattr(cpu_mod, "_SINGLE_THREAD_MNK", 0)  # ... and the limit applies to every GEMM

    def factory() -> Device:  # the OpenBLAS paths: oneDNN's are forced in tests/test_cpu_kernels.py
        return Device("cpu", InprocTransport(CpuDriver(threads=threads, kernels="blas")))

    report = check_device(factory, "quick", only=("GEMM", "COPY", "ENTRY"))
    assert report.passed, report.failures_text()


def test_the_suites_golden_models_leave_no_blas_workers_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judging a GEMM computes its answer with every OpenBLAS held to one thread (the workers a
    multi-threaded call wakes spin on the cores the device under test needs next): the exact-fill
    model and the general one, each then restoring the process's setting."""
    import numpy as np
    from threadpoolctl import threadpool_info

    from ffaccel.conformance import runner
    from ffaccel.conformance.cases import GemmCase
    from ffaccel.runtime import open_device
    from ffaccel.spec import DType, GemmCombo

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    real = np.matmul
    seen: list[list[int]] = []

    def spying(*args: object, **kw: object) -> object:
        seen.append(blas_threads())
        return real(*args, **kw)

    f32 = GemmCombo(DType.F32, DType.F32, DType.F32, DType.F32)
    with open_device("ref") as dev:
        for fill, exact in (("exact", True), ("random", False)):
            seen.clear()
            monkeypatch.setattr(runner.np, "matmul", spying)
            result = runner.judge_gemm(dev, GemmCase("golden", f32, 48, 40, 56, fill=fill, exact=exact))
            monkeypatch.setattr(runner.np, "matmul", real)
            assert result.passed, result.message
            assert seen and all(n == [1] * len(before) for n in seen), (fill, seen, before)
            assert blas_threads() == before
