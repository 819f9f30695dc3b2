"""The dask driver against a LocalCluster that starts and stops inside these tests (loopback only)."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import ffaccel
from ffaccel.conformance import check_device
from ffaccel.runtime import Device
from ffaccel.spec import ErrorCode, FFAccelError
from ffaccel.transports.inproc import InprocTransport

distributed = pytest.importorskip("distributed")
from ffaccel.drivers.dask import DaskDriver  # noqa: E402  (after the skip: needs dask)

#: Low enough that most conformance GEMMs are tiled (k-splits included), high enough to keep
#: the run short: each tiled call costs a few scheduler round trips (tens of ms).
CONFORMANCE_MIN_FLOPS = 1000


#: No dashboard, and the HTTP servers Dask starts anyway (health routes) bound to loopback:
#: by default in-process workers' servers listen on every interface.
LOOPBACK_ONLY = {"dashboard_address": None, "worker_dashboard_address": "127.0.0.1:0",
                 "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}


def _listening() -> set[str]:
    psutil = pytest.importorskip("psutil")  # a dependency of distributed
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


@pytest.fixture(scope="module")
def cluster():
    # In-process workers over TCP on 127.0.0.1: tiles, specs and results really are serialised.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", **LOOPBACK_ONLY) as c:
        yield c


@pytest.fixture(scope="module")
def fast_client():
    # Dask's in-process transport: the lowest latency per tiled call, for the conformance run's
    # hundreds of GEMMs.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, **LOOPBACK_ONLY) as c, \
            distributed.Client(c, set_as_default=False) as cl:
        yield cl


def test_nothing_listens_beyond_loopback(cluster, fast_client) -> None:
    assert _listening() <= {"127.0.0.1", "::1"}, _listening()


@pytest.fixture(scope="module")
def client(cluster):
    # never the process-wide default client: the driver must work through the client it is given
    with distributed.Client(cluster, set_as_default=False) as c:
        yield c


def _device(client, **kw) -> tuple[Device, DaskDriver]:
    drv = DaskDriver(client=client, **kw)
    return Device("dask", InprocTransport(drv)), drv


def test_listing_dask_does_not_import_dask() -> None:
    code = ("import sys, ffaccel; assert 'dask' in ffaccel.devices(); "
            "assert not {'dask', 'distributed'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_conformance_quick_passes_with_tiles(fast_client) -> None:
    drivers: list[DaskDriver] = []

    def factory() -> Device:
        dev, drv = _device(fast_client, min_flops=CONFORMANCE_MIN_FLOPS, parts=4)
        drivers.append(drv)
        return dev

    report = check_device(factory, "quick")
    assert report.passed, report.to_markdown()
    stats = drivers[0].stats
    # the threshold really split GEMMs: 2-D tiles, k-split reductions, and small ones locally
    assert stats["distributed"] > 100 and stats["tiles"] > 2 * stats["distributed"], stats
    assert stats["reductions"] > 0 and stats["local"] > 0, stats


def _no_default_client() -> bool:
    try:
        distributed.default_client()
    except ValueError:
        return True
    return False


def test_open_by_url(cluster) -> None:
    assert _no_default_client()  # what a program that only opens "dask://HOST:PORT" has
    dev = ffaccel.open(f"dask:{cluster.scheduler_address.removeprefix('tcp:')}?min_flops=0&parts=3")
    try:
        rng = np.random.default_rng(1)
        a = rng.standard_normal((70, 40), np.float32)
        b = rng.standard_normal((40, 50), np.float32)
        np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-5, atol=1e-5)
        drv = dev._transport.driver
        assert dev.info().name == "dask" and drv.stats["tiles"] >= 3 and drv.parts == 3
    finally:
        dev.close()
    assert cluster.scheduler_address  # the cluster outlives the client the URL opened


def test_k_split_int8_wraps_exactly(client) -> None:
    dev, drv = _device(client, min_flops=0, parts=4)
    a = np.full((3, 5000), -128, np.int8)
    b = np.full((5000, 2), -128, np.int8)
    c = np.full((3, 2), 2**31 - 1, np.int32)
    d = c.copy()
    ffaccel.blas.gemm("row", "N", "N", 3, 2, 5000, 7, a.ravel(), 5000, b.ravel(), 2, -3, d.ravel(), 2,
                      device=dev)
    exact = (7 * (a.astype(np.int64) @ b.astype(np.int64)) - 3 * c.astype(np.int64)) % 2**32
    np.testing.assert_array_equal(d.view(np.uint32), exact.astype(np.uint32))
    assert drv.stats["reductions"] == 1 and drv.stats["tiles"] == 4


def test_k_split_f16_applies_beta_and_epilogue_once(client) -> None:
    dev, drv = _device(client, min_flops=0, parts=4)
    cpu = ffaccel.open("cpu")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 4000)).astype(np.float16)
    b = rng.standard_normal((4000, 5)).astype(np.float16)
    bias = rng.standard_normal(5).astype(np.float16)
    e = rng.standard_normal((6, 5)).astype(np.float32)
    post = [ffaccel.post.bias(bias), ffaccel.post.add(e), ffaccel.post.scale(0.5), ffaccel.post.relu()]
    got = ffaccel.matmul(a, b, post_ops=post, device=dev)
    want = ffaccel.matmul(a, b, post_ops=post, device=cpu)
    assert drv.stats["reductions"] == 1
    # f32 partials, one rounding to f16: within an ulp of the single-GEMM result
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=2e-3)


def test_batch_spreads_over_batch_dimension(client) -> None:
    dev, drv = _device(client, min_flops=0, parts=4)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((4, 20, 30))
    b = rng.standard_normal((30, 10))  # broadcast over the batch
    np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-12)
    assert drv.stats["tiles"] == 4 and drv.stats["reductions"] == 0


def test_small_gemms_run_locally(client) -> None:
    dev, drv = _device(client, min_flops=1e9)
    a = np.ones((8, 8), np.float32)
    np.testing.assert_array_equal(ffaccel.matmul(a, a, device=dev), np.full((8, 8), 8, np.float32))
    assert (drv.stats["local"], drv.stats["distributed"], drv.stats["tiles"]) == (1, 0, 0)


def test_kept_operands_are_scattered_once(client) -> None:
    dev, drv = _device(client, min_flops=0, parts=2)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((64, 32), np.float32)
    w = dev.alloc(a.nbytes)
    w.write(a)
    drv.keep(w.array(np.uint8))
    x = [rng.standard_normal((32, 16), np.float32) for _ in range(2)]
    y = [ffaccel.matmul(w.array(np.float32, (64, 32)), xi, device=dev) for xi in x]
    for xi, yi in zip(x, y):
        np.testing.assert_allclose(yi, a @ xi, rtol=1e-5, atol=1e-5)
    # second call: only the new B (and nothing of A) crossed to the cluster
    assert drv.stats["bytes_scattered"] == a.nbytes + 2 * x[0].nbytes
    drv.release(w.array(np.uint8))
    ffaccel.matmul(w.array(np.float32, (64, 32)), x[0], device=dev)
    assert drv.stats["bytes_scattered"] == 2 * a.nbytes + 3 * x[0].nbytes


def test_kept_memory_the_device_writes_is_scattered_again(client) -> None:
    # one kept arena holds a layer's input and output (as a model's activations do): the GEMM's own
    # write of D into it makes the cluster's copy of those blocks stale
    dev, drv = _device(client, min_flops=0, parts=2)
    arena = dev.alloc(2 * 16 * 16 * 4)
    drv.keep(arena.array(np.uint8))
    x = arena.array(np.float32, (2, 16, 16))
    x[0], x[1] = 1, 0
    eye = np.eye(16, dtype=np.float32)
    for scale in (1, 3):
        ffaccel.matmul(x[0], scale * eye, out=x[1], device=dev)  # D lands in kept memory
        np.testing.assert_array_equal(ffaccel.matmul(x[1], eye, device=dev), np.full((16, 16), scale))


def test_worker_opener_runs_tiles_through_a_device(client) -> None:
    dev, drv = _device(client, min_flops=0, parts=4, worker="cpu", worker_opener=ffaccel.open)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((2, 9, 300), np.float32)
    b = rng.standard_normal((2, 300, 7), np.float32)
    np.testing.assert_allclose(ffaccel.matmul(a, b, post_ops=[ffaccel.post.gelu()], device=dev),
                               ffaccel.matmul(a, b, post_ops=[ffaccel.post.gelu()], device="cpu"),
                               rtol=1e-4, atol=1e-5)
    assert drv.stats["tiles"] >= 4


@pytest.mark.parametrize("kw, param", [
    ({"min_flops": -1}, "min_flops"),
    ({"parts": 0}, "parts"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": math.inf}, "timeout_s"),  # a wait that never ends is no timeout
])
def test_bad_arguments_name_the_parameter(client, kw, param) -> None:
    with pytest.raises(FFAccelError) as e:
        DaskDriver(client=client, **kw)
    assert e.value.code == ErrorCode.INVALID_PARAMETER and e.value.param == param
    assert repr(next(iter(kw.values()))) in e.value.message


@pytest.mark.parametrize("name, names", [
    ("dask:", "HOST:PORT"), ("dask:127.0.0.1:1", "HOST:PORT"), ("dask://127.0.0.1:1?tiles=3", "tiles"),
    ("dask://127.0.0.1:1?min_flops=lots", "min_flops"),
    # nothing listens at 127.0.0.1:1: each name must be refused for itself, before any connection
    ("dask://127.0.0.1:1?min_flops=1&min_flops=2", "min_flops is given twice"),
    ("dask://127.0.0.1:1?parts=1.5", "parts"), ("dask://127.0.0.1:1/x", "no path"),
    ("dask://127.0.0.1:0", "1..65535"), ("dask://127.0.0.1:1?local=nosuch", "local='nosuch'"),
    ("dask://[::1", "HOST:PORT"),  # an unclosed IPv6 bracket: urlsplit's ValueError (was exit 4)
])
def test_bad_device_names_are_refused(name, names) -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(name)
    assert e.value.code == ErrorCode.INVALID_PARAMETER and e.value.param == "name"
    assert names in e.value.message, e.value


def test_unknown_worker_device_is_refused(client) -> None:
    with pytest.raises(FFAccelError) as e:
        DaskDriver(client=client, worker="nosuchdriver")
    assert e.value.param == "name" and "nosuchdriver" in e.value.message


def test_what_ran_where_is_public_through_device_stats(client) -> None:
    dev, _ = _device(client, min_flops=0)
    a = np.ones((64, 48), np.float32)
    ffaccel.matmul(a, a.T, device=dev)  # tiled on the cluster
    usage = dev.stats()["driver_usage"]
    assert usage["distributed"] == 1 and usage["tiles"] >= 1 and usage["bytes_scattered"] > 0, usage
    dev.close()


def test_the_wait_s_keyword_wins_over_the_name() -> None:
    # the runtime hands the keyword to the driver in the name, which refuses an option given twice
    with pytest.raises(FFAccelError) as e:
        ffaccel.open("dask://127.0.0.1:1?wait_s=5&timeout_s=1", wait_s=0)
    assert e.value.code == ErrorCode.DEVICE_LOST and e.value.param == "address", e.value


def test_no_scheduler_is_device_lost() -> None:
    with pytest.raises(FFAccelError) as e:
        DaskDriver("//127.0.0.1:9?timeout_s=1")
    assert e.value.code == ErrorCode.DEVICE_LOST and e.value.param == "address"


def test_a_port_that_is_not_a_scheduler_is_device_lost() -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as other:  # listens, never speaks (an HTTP port, say)
        port = other.getsockname()[1]
        got: list[BaseException] = []

        def open_it() -> None:
            try:
                DaskDriver(f"//127.0.0.1:{port}?timeout_s=0.5")
            except BaseException as e:  # noqa: BLE001 - asserted below
                got.append(e)

        opener = threading.Thread(target=open_it, daemon=True)
        opener.start()
        opener.join(60)  # Dask's own client waits for the handshake for ever
        assert not opener.is_alive() and got, "the open hung"
    assert isinstance(got[0], FFAccelError) and got[0].code == ErrorCode.DEVICE_LOST, got
    assert got[0].param == "address" and "handshake" in got[0].message


def test_tiles_not_done_within_timeout_s_are_device_lost(client) -> None:
    DaskDriver(client=client, min_flops=0)  # the workers' caps are probed once per client: not timed below
    dev, _ = _device(client, min_flops=0, timeout_s=1e-9)
    a = np.ones((64, 64), np.float32)
    with pytest.raises(FFAccelError) as e:
        ffaccel.matmul(a, a, device=dev)
    assert e.value.code == ErrorCode.DEVICE_LOST and "timeout_s=1e-09" in e.value.message, e.value


def test_k_split_runs_on_a_worker_device_without_accumulate_outputs(client) -> None:
    # the workers declare f16 -> f16 only: a k-split's f32 partials are not theirs to produce
    dev, drv = _device(client, min_flops=0, parts=4, worker="restricted:cpu;combos=f16xf16->f32->f16")
    a = np.ones((4, 300), np.float16)
    np.testing.assert_array_equal(ffaccel.matmul(a, a.T[:, :3], device=dev), np.full((4, 3), 300, np.float16))
    assert drv.stats["tiles"] == 4 and drv.stats["reductions"] == 0


def _second_worker_narrowed(name: str):  # a worker_opener: runs on each worker
    if distributed.get_worker().name == 1:
        return ffaccel.open("restricted:cpu;combos=f32xf32->f32->f32")
    return ffaccel.open(name)


def test_caps_are_what_every_worker_declares(client) -> None:
    dev, _ = _device(client, min_flops=0, worker_opener=_second_worker_narrowed)
    with pytest.raises(FFAccelError) as e:  # refused before anything runs, not by one tile of two
        ffaccel.matmul(np.ones((64, 64)), np.ones((64, 64)), device=dev)
    assert e.value.code == ErrorCode.UNSUPPORTED and e.value.param == "dtypes"
    a = np.ones((64, 64), np.float32)
    np.testing.assert_array_equal(ffaccel.matmul(a, a, device=dev), a @ a)


def test_a_closed_client_is_device_lost(cluster) -> None:
    own = distributed.Client(cluster, set_as_default=False)
    dev, _ = _device(own, min_flops=0)
    own.close()
    with pytest.raises(FFAccelError) as e:  # the scatter, too, speaks ffaccel's errors
        ffaccel.matmul(np.ones((8, 8)), np.ones((8, 8)), device=dev)
    assert e.value.code == ErrorCode.DEVICE_LOST


def _wanted_by(scheduler, client) -> list[str]:
    return [k for k, ts in scheduler.tasks.items() if any(cs.client_key == client.id for cs in ts.who_wants)]


def test_a_failed_gemm_leaves_no_task_on_the_scheduler(monkeypatch) -> None:
    import ffaccel.drivers.dask as mod

    go = threading.Event()
    run_tile = mod._run_tile

    def stuck(*args):  # a worker that hangs until the test lets it go
        go.wait(30)
        return run_tile(*args)

    stuck.__module__, stuck.__qualname__ = mod.__name__, "_run_tile"  # pickled by reference, as the driver's
    monkeypatch.setattr(mod, "_run_tile", stuck)
    # a cluster of its own: the hung tiles must not hold the shared cluster's workers
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, **LOOPBACK_ONLY) as cl, \
            distributed.Client(cl, set_as_default=False) as c:
        dev, _ = _device(c, min_flops=0, parts=4, timeout_s=0.5)
        try:
            with pytest.raises(FFAccelError) as e:
                ffaccel.matmul(np.ones((64, 64)), np.ones((64, 64)), device=dev)
            assert e.value.code == ErrorCode.DEVICE_LOST and "timeout_s=0.5" in e.value.message
            deadline = time.monotonic() + 10  # the release is a message to the scheduler: wait for it
            while _wanted_by(cl.scheduler, c) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not _wanted_by(cl.scheduler, c)  # tiles and scattered blocks all released
        finally:
            go.set()


def test_a_malformed_tile_is_device_lost_and_d_untouched(client, monkeypatch) -> None:
    import ffaccel.drivers.dask as mod

    run_tile = mod._run_tile

    def narrow(*args):  # a worker whose tile is one column: NumPy would broadcast it over the window
        return run_tile(*args)[:, :, :1]

    narrow.__module__, narrow.__qualname__ = mod.__name__, "_run_tile"
    monkeypatch.setattr(mod, "_run_tile", narrow)
    dev, _ = _device(client, min_flops=0, parts=2)
    d = np.full((16, 8), -1.0)
    with pytest.raises(FFAccelError) as e:
        ffaccel.matmul(np.ones((16, 4)), np.ones((4, 8)), out=d, device=dev)
    assert e.value.code == ErrorCode.DEVICE_LOST and "malformed tile" in e.value.message
    assert (d == -1).all()


def test_no_workers_then_workers_lost_then_back(tmp_path) -> None:
    # the client's timeout bounds a scatter's wait for a worker (Dask's), timeout_s the tiles' wait
    with distributed.LocalCluster(n_workers=0, threads_per_worker=1, processes=False, **LOOPBACK_ONLY) as cl, \
            distributed.Client(cl, set_as_default=False, timeout=1) as c:
        with pytest.raises(FFAccelError) as e:  # at once, not after timeout_s
            DaskDriver(client=c, timeout_s=600)
        assert e.value.code == ErrorCode.DEVICE_LOST and "no workers" in e.value.message

        def workers(n: int) -> None:
            cl.scale(n)
            deadline = time.monotonic() + 30
            while len(c.nthreads()) != n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(c.nthreads()) == n

        workers(1)
        dev, drv = _device(c, min_flops=0, timeout_s=1)
        rng = np.random.default_rng(6)
        w = dev.alloc(64 * 32 * 4)
        w.write(rng.standard_normal((64, 32), np.float32))
        drv.keep(w.array(np.uint8))
        x = rng.standard_normal((32, 16), np.float32)
        a = w.array(np.float32, (64, 32))
        np.testing.assert_allclose(ffaccel.matmul(a, x, device=dev), a @ x, rtol=1e-5)
        workers(0)  # the kept blocks went with the worker
        with pytest.raises(FFAccelError) as e:
            ffaccel.matmul(a, x, device=dev)
        assert e.value.code == ErrorCode.DEVICE_LOST
        workers(1)  # a new worker: the kept operand is scattered again, not failed on for ever
        np.testing.assert_allclose(ffaccel.matmul(a, x, device=dev), a @ x, rtol=1e-5)
