"""The dask driver against the in-process cpu driver, side by side in one run.

Starts two LocalClusters on loopback (1 and 2 worker processes, one thread each; every BLAS
pinned to one thread) and times one large f32 GEMM on:

* ``cpu-1t``: the in-process cpu driver, ``CpuDriver(threads=1)``;
* ``dask-1w``: the dask driver, 1 worker (its tiles run one after another there);
* ``dask-2w``: the dask driver, 2 workers.

Repeats are interleaved (this machine is shared and noisy) and the medians reported, with the
speed-up from 1 to 2 workers and the overhead of the distributed path at 1 worker.
Usage: ``python benchmarks/bench_dask.py [--n 4096] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ["FFACCEL_CPU_THREADS"] = "1"  # inherited by the worker processes (their cpu driver)
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import numpy as np  # noqa: E402

import ffaccel  # noqa: E402
from ffaccel.drivers.cpu import CpuDriver  # noqa: E402
from ffaccel.drivers.dask import DaskDriver  # noqa: E402
from ffaccel.runtime import Device  # noqa: E402
from ffaccel.transports.inproc import InprocTransport  # noqa: E402

LOOPBACK_ONLY = {"dashboard_address": None, "worker_dashboard_address": "127.0.0.1:0",
                 "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096, help="m = n = k")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parts", type=int, default=None, help="tiles per GEMM (default: 2 per worker thread)")
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    n = args.n
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), np.float32)
    b = rng.standard_normal((n, n), np.float32)
    flops = 2.0 * n**3

    devices: dict[str, Device] = {"cpu-1t": Device("cpu", InprocTransport(CpuDriver(threads=1)))}
    clusters = []
    for workers in (1, 2):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, protocol="tcp",
                               host="127.0.0.1", **LOOPBACK_ONLY)
        client = Client(cluster)
        clusters.append((cluster, client))
        drv = DaskDriver(client=client, min_flops=0, parts=args.parts)
        devices[f"dask-{workers}w"] = Device("dask", InprocTransport(drv))

    want = None
    times: dict[str, list[float]] = {k: [] for k in devices}
    for rep in range(args.repeats + 1):  # the first round warms up (workers import ffaccel, BLAS starts)
        for name, dev in devices.items():
            t = time.perf_counter()
            d = ffaccel.matmul(a, b, device=dev)
            dt = time.perf_counter() - t
            if want is None:
                want = d
            elif not np.allclose(d, want, rtol=1e-3, atol=1e-2 * np.sqrt(n)):
                raise SystemExit(f"{name}: result differs from cpu-1t")
            if rep:
                times[name].append(dt)
            elif isinstance(dev._transport.driver, DaskDriver):  # phase times: measured calls only
                st = dev._transport.driver.stats
                st.update({k: type(v)(0) for k, v in st.items()})

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{n}x{n}x{n} f32 GEMM, {flops / 1e9:.0f} GFLOP, median of {args.repeats} (interleaved), "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    for name, t in med.items():
        extra = ""
        drv = devices[name]._transport.driver
        if isinstance(drv, DaskDriver):
            s = drv.stats
            extra = (f"  {s['tiles'] // max(1, s['distributed'])} tiles/call, "
                     f"{s['bytes_scattered'] / max(1, s['distributed']) / 2**20:.0f} MiB scattered/call; per call "
                     f"scatter {s['scatter_s'] / s['distributed']:.2f} s, tiles {s['compute_s'] / s['distributed']:.2f} s, "
                     f"gather+write {s['gather_s'] / s['distributed']:.2f} s")
        print(f"  {name:8s} {t:7.3f} s  {flops / t / 1e9:6.1f} GFLOP/s{extra}")
    print(f"speed-up 1 -> 2 workers:            {med['dask-1w'] / med['dask-2w']:.2f}x")
    print(f"overhead of dask-1w over cpu-1t:    {med['dask-1w'] / med['cpu-1t'] - 1:+.1%} "
          f"({med['dask-1w'] - med['cpu-1t']:+.3f} s)")
    print(f"dask-2w against cpu-1t:             {med['cpu-1t'] / med['dask-2w']:.2f}x")
    for dev in devices.values():
        dev.close()
    for cluster, client in clusters:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
