"""The ``npu`` driver: a simulated partial device (int8/bf16 GEMMs, bias, relu, COPY).

What a user of the device relies on: exactly the declared set (info, CLI), results by the spec's
rules on every path (int8 exact with int32 wraparound, bf16 within the f32-accumulation bound),
tiling that really splits the work, the arena's OUT_OF_MEMORY, fences that signal after the job,
refusals of what it lacks (UNSUPPORTED, on every front-end and through the server), and a cost
model never faster than the peak MAC rate or the DMA bandwidth allow.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ffaccel
import ffaccel.post
import ffaccel.transports
from ffaccel.abi import Copy, Gemm
from ffaccel.drivers.npu import PRESETS, NpuDriver, gemm_cost, plan_tiles
from ffaccel.spec import Engine, ErrorCode, FFAccelError

BF16 = ml_dtypes.bfloat16
DECLARED_COMBOS = ["bf16xbf16->f32->bf16", "bf16xbf16->f32->f32", "int8xint8->int32->int32",
                   "int8xuint8->int32->int32", "uint8xint8->int32->int32"]
DECLARED_COPIES = ["f32->f32", "f32->bf16", "bf16->f32", "bf16->bf16", "int8->int8", "uint8->uint8",
                   "int32->int32"]
DECLARED_POST_OPS = ["bias(axis='n')", "bias(axis='m')", "relu"]


@pytest.fixture(scope="module")
def npu() -> ffaccel.Device:
    dev = ffaccel.open("npu:sram_kib=8")  # a small SRAM: even modest GEMMs take many tiles
    yield dev
    dev.close()


def _wrap32(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


# -- what it declares -------------------------------------------------------------------------


def test_info_lists_exactly_what_it_declares() -> None:
    r = subprocess.run([sys.executable, "-m", "ffaccel.cli", "info", "npu", "--json"], capture_output=True,
                       text=True, timeout=120, check=True)
    doc = json.loads(r.stdout)
    assert doc["driver"]["name"] == "npu"
    assert sorted(doc["gemm_combos"]) == sorted(DECLARED_COMBOS)
    assert sorted(doc["copy_conversions"]) == sorted(DECLARED_COPIES)
    assert sorted(doc["post_ops"]) == sorted(DECLARED_POST_OPS)
    assert doc["engines"] == ["compute", "copy"]
    assert doc["memory_bytes"] == PRESETS["rk3588"].arena_mib << 20


def test_a_preset_without_bf16_declares_int8_only() -> None:
    with ffaccel.open("npu:preset=ethos-u65") as dev:
        assert {c.name for c in dev.info().caps.combos} == {"int8xint8->int32->int32", "int8xuint8->int32->int32",
                                                          "uint8xint8->int32->int32"}
        with pytest.raises(FFAccelError) as e:
            ffaccel.matmul(np.ones((2, 2), BF16), np.ones((2, 2), BF16), device=dev)
        assert e.value.code == ErrorCode.UNSUPPORTED


def test_a_refused_restriction_of_the_npu_leaves_no_engine_thread() -> None:
    # restricted:npu;engines=copy is refused (no compute engine) after the npu was opened: its
    # two engine threads were never closed, two more per failed open
    def engine_threads() -> int:
        return sum(t.name.startswith("npu-") for t in threading.enumerate())

    before = engine_threads()
    for name in ("restricted:npu;engines=copy", "restricted:npu;combos=f8"):
        with pytest.raises(FFAccelError) as e:
            ffaccel.open(name)
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "name")
    assert engine_threads() == before  # close() joins the threads: nothing to wait for


@pytest.mark.parametrize("name, why", [
    ("npu:preset=nope", "preset"), ("npu:sram_kib=lots", "sram_kib"), ("npu:paced=2", "paced"),
    ("npu:colour=red", "colour"), ("npu:array_k=3", "array_k"), ("npu:sram_kib=1", "sram_kib"),
    ("npu:timeout_s=0", "timeout_s"), ("npu:dma_gb_per_s=inf", "dma_gb_per_s"), ("npu:clock_mhz=nan", "clock_mhz"),
    # a key twice: the last one silently won, an int8-only ethos-u65 opened as an xdna2 with bf16
    ("npu:preset=ethos-u65,sram_kib=64,preset=xdna2", "preset given twice"),
])
def test_bad_options_are_refused_naming_the_device_name(name: str, why: str) -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(name)
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "name")
    assert why in str(e.value)


def test_overrides_reach_the_model() -> None:
    with ffaccel.open("npu:preset=npu3720,sram_kib=256,clock_mhz=800,paced=0") as dev:
        drv = dev._transport.driver
        assert (drv.preset, drv.model.sram_kib, drv.model.clock_mhz) == ("npu3720", 256, 800.0)
        assert drv.model.int8_macs_per_cycle == PRESETS["npu3720"].int8_macs_per_cycle
        assert drv._sram.nbytes == 256 * 1024


# -- results ------------------------------------------------------------------------------------


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 70, 300), (8, 33, 5), (32, 64, 257), (128, 9, 40)])
@pytest.mark.parametrize("a_dt", [np.int8, np.uint8])
def test_int8_is_exact_and_wraps_like_int32(npu: ffaccel.Device, m: int, n: int, k: int, a_dt: type) -> None:
    rng = np.random.default_rng(m * 1000 + n + k)
    info = np.iinfo(a_dt)
    a = rng.integers(info.min, info.max + 1, (m, k), dtype=a_dt)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    c = rng.integers(-2**31, 2**31, (m, n), dtype=np.int64).astype(np.int32)
    alpha, beta = 2**21 + 3, -(2**30) + 7  # products far past int32: the result wraps modulo 2**32
    got = ffaccel.matmul(a, b, c, alpha=alpha, beta=beta, device=npu)
    want = _wrap32(alpha * (a.astype(np.int64) @ b.astype(np.int64)) + beta * c.astype(np.int64))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("out", [BF16, np.float32])
@pytest.mark.parametrize("m, n, k", [(1, 40, 500), (8, 8, 8), (33, 70, 129)])
def test_bf16_accumulates_in_f32_within_the_spec_bound(npu: ffaccel.Device, out: type, m: int, n: int,
                                                       k: int) -> None:
    rng = np.random.default_rng(7 + m + n + k)
    a = rng.standard_normal((m, k)).astype(BF16)
    b = rng.standard_normal((k, n)).astype(BF16)
    c = rng.standard_normal((m, n)).astype(out)
    got = ffaccel.matmul(a, b, c, alpha=0.75, beta=-1.5, out_dtype=out, device=npu).astype(np.float64)
    a64, b64, c64 = (x.astype(np.float64) for x in (a, b, c))
    exact = 0.75 * a64 @ b64 - 1.5 * c64
    bound = 2 * (k + 2) * 2.0**-24 * (0.75 * np.abs(a64) @ np.abs(b64) + 1.5 * np.abs(c64))
    half_ulp = np.abs(exact) * (2.0**-8 if out is BF16 else 2.0**-24)
    assert np.all(np.abs(got - exact) <= bound + half_ulp)


@pytest.mark.parametrize("axis", ["n", "m"])
def test_bias_and_relu_on_int8_and_bf16(npu: ffaccel.Device, axis: str) -> None:
    rng = np.random.default_rng(3)
    m, n, k = 37, 45, 64
    ai = rng.integers(-128, 128, (m, k), dtype=np.int8)
    bi = rng.integers(-128, 128, (k, n), dtype=np.int8)
    vi = rng.integers(-5000, 5000, n if axis == "n" else m, dtype=np.int32)
    got = ffaccel.matmul(ai, bi, post_ops=[ffaccel.post.bias(vi, axis=axis), ffaccel.post.relu()], device=npu)
    vec = vi[None, :] if axis == "n" else vi[:, None]
    np.testing.assert_array_equal(got, np.maximum(ai.astype(np.int64) @ bi.astype(np.int64) + vec, 0))

    af, bf = ai.astype(BF16), bi.astype(BF16)  # small integers: exact in bf16 and in the f32 accumulator
    vf = vi.astype(np.float32)
    got = ffaccel.matmul(af, bf, post_ops=[ffaccel.post.bias(vf, axis=axis), ffaccel.post.relu()],
                         out_dtype=np.float32, device=npu)
    np.testing.assert_array_equal(got, np.maximum(ai.astype(np.float64) @ bi.astype(np.float64) + vec, 0))


def test_beta_zero_does_not_read_c_and_alpha_zero_does_not_read_ab(npu: ffaccel.Device) -> None:
    a = np.full((4, 3), np.nan, BF16)
    c = np.full((4, 5), np.nan, np.float32)
    b = np.ones((3, 5), BF16)
    assert np.all(ffaccel.matmul(np.ones((4, 3), BF16), b, c, beta=0.0, out_dtype=np.float32, device=npu) == 3)
    c2 = np.full((4, 5), 2.0, np.float32)
    assert np.all(ffaccel.matmul(a, b, c2, alpha=0.0, beta=1.5, out_dtype=np.float32, device=npu) == 3)


def test_blas_gemm_on_the_npu_and_its_refusals(npu: ffaccel.Device) -> None:
    a = np.arange(6, dtype=np.int8)
    b = np.arange(6, dtype=np.int8)
    c = np.zeros(4, np.int32)
    ffaccel.blas.gemm("row", "N", "N", 2, 2, 3, 1, a, 3, b, 2, 0, c, 2, device=npu)
    np.testing.assert_array_equal(c.reshape(2, 2), a.reshape(2, 3).astype(np.int32) @ b.reshape(3, 2))
    for dt in (np.float32, np.float16, np.float64):
        x, y = np.ones(4, dt), np.full(4, 5.0, dt)
        with pytest.raises(FFAccelError) as e:
            ffaccel.blas.gemm("row", "N", "N", 2, 2, 2, 1.0, x, 2, x.copy(), 2, 0.0, y, 2, device=npu)
        assert e.value.code == ErrorCode.UNSUPPORTED
        np.testing.assert_array_equal(y, np.full(4, 5.0, dt))  # nothing written


def test_blas_gemm_bf16_into_an_f32_c_on_the_npu(npu: ffaccel.Device) -> None:
    # bf16 x bf16 -> f32 is declared and c's dtype is blas.gemm's output dtype: an f32 c was
    # refused ("c: ... allowed dtype bfloat16") because the front-end dropped c's dtype
    a = np.arange(6).astype(BF16)
    for order, ta, lda in (("row", "N", 3), ("col", "T", 3)):
        c = np.full(5, 7.0, np.float32)  # c[4] lies outside the 2 x 2 window
        ffaccel.blas.gemm(order, ta, "N", 2, 2, 3, 1.0, a, lda, np.ones(6, BF16), 2 if order == "row" else 3,
                          0.5, c, 2, device=npu)
        want = a.astype(np.float32).reshape(2, 3) @ np.ones((3, 2), np.float32) + 3.5
        np.testing.assert_array_equal(c[:4].reshape(2, 2), want if order == "row" else want.T)
        assert c[4] == 7.0


@pytest.mark.parametrize("dt", [np.float32, np.float16, np.float64])
def test_matmul_refuses_float_dtypes_it_lacks(npu: ffaccel.Device, dt: type) -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.matmul(np.ones((2, 2), dt), np.ones((2, 2), dt), device=npu)
    assert (e.value.code, e.value.param) == (ErrorCode.UNSUPPORTED, "dtypes")


@pytest.mark.parametrize("post", [ffaccel.post.gelu(), ffaccel.post.clamp(0.0, 1.0), ffaccel.post.scale(2.0)])
def test_matmul_refuses_post_ops_it_lacks(npu: ffaccel.Device, post: ffaccel.post.PostOp) -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.matmul(np.ones((2, 2), BF16), np.ones((2, 2), BF16), post_ops=post, device=npu)
    assert e.value.code == ErrorCode.UNSUPPORTED
    assert e.value.param == "post_ops[0].kind"


# -- tiling, the arena, the engines, the stats --------------------------------------------------


def test_every_gemm_is_tiled_to_fit_the_sram() -> None:
    for name, model in PRESETS.items():
        for is_int in (True, False):
            for m, n, k in ((1, 1, 1), (1, 4096, 4096), (4096, 4096, 4096), (7, 100_000, 3)):
                t = plan_tiles(model, is_int, m, n, k)
                in_bytes = 1 if is_int else 2
                used = (t.tm * t.tk + t.tk * t.tn) * in_bytes + t.tm * t.tn * 4
                assert used <= model.sram_kib * 1024, (name, is_int, m, n, k, t)
                assert 1 <= t.tm <= m and 1 <= t.tn <= n and 1 <= t.tk <= k


def test_stats_count_the_tiles_and_the_modeled_time(npu: ffaccel.Device) -> None:
    before = npu.stats()["driver_usage"]
    a = np.ones((100, 300), np.int8)
    ffaccel.matmul(a, a.T, device=npu)
    after = npu.stats()["driver_usage"]
    model = npu._transport.driver.model
    want = gemm_cost(model, True, 1, 100, 100, 300, 4)
    assert after["gemm_jobs"] - before["gemm_jobs"] == 1
    assert after["tiles"] - before["tiles"] == want.tiles > 1  # 8 KiB of SRAM: several tiles
    assert after["modeled_s"] - before["modeled_s"] == pytest.approx(want.seconds)
    assert after["mac_cycles"] - before["mac_cycles"] == want.mac_cycles


def test_the_arena_refuses_with_out_of_memory_and_frees() -> None:
    with ffaccel.open("npu:arena_mib=1") as dev:
        first = dev.alloc(700 * 1024)
        with pytest.raises(FFAccelError) as e:
            dev.alloc(400 * 1024)
        assert e.value.code == ErrorCode.OUT_OF_MEMORY
        with pytest.raises(FFAccelError) as e:
            dev.alloc(2 << 20)  # larger than the whole arena: out of memory too
        assert e.value.code == ErrorCode.OUT_OF_MEMORY
        first.free()
        dev.alloc(1 << 20).free()  # the whole arena again


def _int8_gemm(dev: ffaccel.Device, m: int, n: int, k: int) -> tuple[Gemm, ffaccel.runtime.Buffer]:
    a, b, d = dev.alloc(m * k), dev.alloc(k * n), dev.alloc(4 * m * n)
    a.write(np.ones(m * k, np.int8))
    b.write(np.ones(k * n, np.int8))
    return Gemm(m=m, n=n, k=k, a=a.matrix(np.int8, m, k), b=b.matrix(np.int8, k, n),
                d=d.matrix(np.int32, m, n)), d


def test_jobs_run_on_the_engine_threads_and_fences_signal_after_them() -> None:
    with ffaccel.open("npu") as dev:
        drv = dev._transport.driver
        seen: list[str] = []
        run_gemm = drv._run_gemm
        drv._run_gemm = lambda *args: (seen.append(threading.current_thread().name), run_gemm(*args))[1]
        g, d = _int8_gemm(dev, 16, 8, 32)
        fence = dev.submit([g])
        fence.wait(timeout_ns=10**10)
        assert fence.signalled
        assert seen == ["npu-compute"]
        np.testing.assert_array_equal(d.read(np.int32, 16 * 8), np.full(16 * 8, 32, np.int32))
        src, dst = dev.alloc(64), dev.alloc(32)
        src.write(np.arange(16, dtype=np.float32))
        dev.submit([Copy(src=src.matrix(np.float32, 4, 4), dst=dst.matrix(BF16, 4, 4))], engine="copy",
                   wait=[fence]).wait(timeout_ns=10**10)
        np.testing.assert_array_equal(dst.read(BF16, 16).astype(np.float32), np.arange(16, dtype=np.float32))
        assert dev.stats()["driver_usage"]["copy_jobs"] == 1


def test_submit_returns_before_the_job_runs_and_the_fence_signals_after_it() -> None:
    with ffaccel.open("npu") as dev:
        drv = dev._transport.driver
        gate = threading.Event()
        drv._engines[Engine.COMPUTE].post(lambda: gate.wait(30))  # the MAC array is busy until the gate opens
        g, d = _int8_gemm(dev, 8, 8, 8)
        fence = dev.submit([g])  # returns although the engine cannot start the job
        assert not fence.signalled
        with pytest.raises(FFAccelError) as e:
            fence.wait(timeout_ns=10**6)
        assert e.value.code == ErrorCode.TIMEOUT
        assert not d.read(np.int32, 64).any()  # nothing ran yet
        gate.set()
        fence.wait(timeout_ns=10**10)
        np.testing.assert_array_equal(d.read(np.int32, 64), np.full(64, 8, np.int32))


def test_a_job_waits_for_the_fences_it_names_on_the_other_engine() -> None:
    with ffaccel.open("npu") as dev:
        drv = dev._transport.driver
        gate = threading.Event()
        drv._engines[Engine.COPY].post(lambda: gate.wait(30))  # the DMA engine is busy until the gate opens
        src, a = dev.alloc(64), dev.alloc(64)
        src.write(np.full(64, 3, np.int8))
        copied = dev.submit([Copy(src=src.matrix(np.int8, 8, 8), dst=a.matrix(np.int8, 8, 8))], engine="copy")
        d = dev.alloc(256)
        g = Gemm(m=8, n=8, k=8, a=a.matrix(np.int8, 8, 8), b=src.matrix(np.int8, 8, 8), d=d.matrix(np.int32, 8, 8))
        done = dev.submit([g], wait=[copied])
        assert not copied.signalled and not done.signalled
        gate.set()
        done.wait(timeout_ns=10**10)
        assert copied.signalled
        np.testing.assert_array_equal(d.read(np.int32, 64), np.full(64, 72, np.int32))  # A was copied first


class _CopyInline(NpuDriver):
    """An NPU whose DMA engine runs in the submitting thread: only its compute engine is queued."""

    def async_queue(self, engine: Engine):  # noqa: ANN201
        return super().async_queue(engine) if engine == Engine.COMPUTE else None


def test_a_synchronous_engine_waits_for_the_queued_fences_it_names() -> None:
    with ffaccel.runtime.Device("half", ffaccel.transports.InprocTransport(_CopyInline(""))) as dev:
        gate = threading.Event()
        dev._transport.driver._engines[Engine.COMPUTE].post(lambda: gate.wait(30))
        g, d = _int8_gemm(dev, 4, 4, 4)
        gemm_done = dev.submit([g])
        out = dev.alloc(64)
        got: list = []
        copier = threading.Thread(target=lambda: got.append(dev.submit(
            [Copy(src=d.matrix(np.int32, 4, 4), dst=out.matrix(np.int32, 4, 4))], engine="copy", wait=[gemm_done])))
        copier.start()
        copier.join(0.2)
        assert copier.is_alive() and not gemm_done.signalled  # the copy waits for the GEMM it names
        gate.set()
        copier.join(30)
        assert got and got[0].signalled and gemm_done.signalled
        np.testing.assert_array_equal(out.read(np.int32, 16), np.full(16, 4, np.int32))


def test_a_failure_inside_a_queued_job_is_raised_by_the_wait() -> None:
    with ffaccel.open("npu") as dev:
        drv = dev._transport.driver

        def broken(*args: object) -> None:
            raise RuntimeError("MAC array on fire")
        drv._run_gemm = broken
        g, _ = _int8_gemm(dev, 4, 4, 4)
        fence = dev.submit([g])
        with pytest.raises(RuntimeError, match="on fire"):
            fence.wait(timeout_ns=10**10)
        assert fence.signalled
        fence.wait(timeout_ns=10**10)  # reported once


def test_copies_it_does_not_declare_are_refused() -> None:
    with ffaccel.open("npu") as dev:
        src, dst = dev.alloc(64), dev.alloc(32)
        with pytest.raises(FFAccelError) as e:
            dev.submit([Copy(src=src.matrix(np.float64, 2, 4), dst=dst.matrix(np.float32, 2, 4))], engine="copy")
        assert e.value.code == ErrorCode.UNSUPPORTED


def test_paced_jobs_complete_no_earlier_than_their_modeled_time() -> None:
    # A lower bound only (a deadline wait inside the device): it cannot flake, however slow the machine.
    with ffaccel.open("npu:preset=ethos-u65,paced=1,job_latency_us=20000") as dev:
        g, _ = _int8_gemm(dev, 64, 64, 64)
        t0 = time.monotonic()
        dev.submit([g]).wait(timeout_ns=10**10)
        elapsed = time.monotonic() - t0
        modeled = dev.stats()["driver_usage"]["modeled_s"]
        assert modeled >= 0.02
        assert elapsed >= modeled


def test_errors_inside_a_job_reach_the_caller() -> None:
    drv = NpuDriver("")
    try:
        def broken() -> None:
            raise RuntimeError("MAC array on fire")
        with pytest.raises(RuntimeError, match="on fire"):
            drv._engines[next(iter(drv._engines))].run(broken, 10.0)
    finally:
        drv.close()


# -- the cost model's bound ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(preset=st.sampled_from(sorted(PRESETS)), is_int=st.booleans(), batch=st.integers(1, 8),
       m=st.integers(1, 5000), n=st.integers(1, 5000), k=st.integers(1, 5000),
       sram_kib=st.sampled_from([4, 16, 64, 256, 4096]), extra=st.integers(0, 8))
def test_modeled_time_is_never_faster_than_peak_macs_or_dma_bandwidth(preset: str, is_int: bool, batch: int, m: int,
                                                                       n: int, k: int, sram_kib: int,
                                                                       extra: int) -> None:
    model = PRESETS[preset]
    if not is_int and not model.bf16_macs_per_cycle:
        model = dataclasses.replace(model, bf16_macs_per_cycle=model.int8_macs_per_cycle // 2)
    model = dataclasses.replace(model, sram_kib=sram_kib)
    d_bytes = 4 if is_int else 2
    cost = gemm_cost(model, is_int, batch, m, n, k, d_bytes, extra)
    in_bytes = 1 if is_int else 2
    macs = batch * m * n * k
    once_bytes = batch * ((m * k + k * n) * in_bytes + m * n * (d_bytes + extra))
    latency_s = model.job_latency_us * 1e-6
    assert cost.seconds >= latency_s + macs / model.peak_macs_per_s(is_int) * (1 - 1e-12)
    assert cost.seconds >= latency_s + once_bytes / (model.dma_gb_per_s * 1e9) * (1 - 1e-12)
    assert cost.mac_cycles * (model.int8_macs_per_cycle if is_int else model.bf16_macs_per_cycle) >= macs


# -- the server ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    return ("--driver", "npu:preset=rk3588,sram_kib=64")


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_served_npu_computes_and_refuses(server, transport: str) -> None:  # noqa: ANN001 - conftest fixture
    with server.open(transport) as dev:
        assert dev.info().name == "npu"
        assert "sram_kib" not in dev.info().description and "64 KiB SRAM" in dev.info().description
        rng = np.random.default_rng(11)
        a = rng.integers(-128, 128, (9, 130), dtype=np.int8)
        b = rng.integers(-128, 128, (130, 17), dtype=np.int8)
        np.testing.assert_array_equal(ffaccel.matmul(a, b, device=dev), a.astype(np.int32) @ b.astype(np.int32))
        x = np.ones((4, 4), BF16)
        assert np.all(ffaccel.matmul(x, x, post_ops=ffaccel.post.relu(), out_dtype=np.float32, device=dev) == 4)
        for dt in (np.float32, np.float16, np.float64):
            with pytest.raises(FFAccelError) as e:
                ffaccel.matmul(np.ones((2, 2), dt), np.ones((2, 2), dt), device=dev)
            assert e.value.code == ErrorCode.UNSUPPORTED
        with pytest.raises(FFAccelError) as e:
            ffaccel.matmul(x, x, post_ops=ffaccel.post.gelu(), device=dev)
        assert e.value.code == ErrorCode.UNSUPPORTED


def test_blas_gemm_refuses_an_undeclared_dtype_whatever_m_and_n(npu: ffaccel.Device) -> None:
    # blas.gemm returned early when m or n was 0, so the npu "accepted" f32 at m = 0 and refused
    # the same call at m = 1: a refusal must not depend on the size
    for m, n in ((0, 2), (2, 0), (1, 2)):
        c = np.full(4, 7.0, np.float32)
        with pytest.raises(FFAccelError) as e:
            ffaccel.blas.gemm("row", "N", "N", m, n, 2, 1.0, np.ones(4, np.float32), 2, np.ones(4, np.float32), 2,
                              0.0, c, 2, device=npu)
        assert (e.value.code, e.value.param) == (ErrorCode.UNSUPPORTED, "dtypes")
        assert np.all(c == 7.0)
    c = np.full(4, 7.0, np.float32)  # what it declares runs at m = 0: nothing written
    ffaccel.blas.gemm("row", "N", "N", 0, 2, 2, 1.0, np.ones(4, BF16), 2, np.ones(4, BF16), 2, 0.0, c, 2, device=npu)
    assert np.all(c == 7.0)
