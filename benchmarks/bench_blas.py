"""The drop-in BLAS's GEMM cost through the server against the host OpenBLAS, by size, and its measured threshold.

Builds the C libraries (``ffaccel build-c``), starts an ``ffaccel serve`` on a temporary socket,
and for each size N runs benchmarks/c/bench_sgemm.c, which interleaves in one process batches of
N x N ``cblas_sgemm`` calls through libffaccel_blas.so (every call forced to the device:
``FFACCEL_BLAS_MIN_FLOPS=0``) with batches through Debian's OpenBLAS (the drop-in's host BLAS).
Then it lets the drop-in calibrate itself as it does at a program's first GEMM (Debian's NumPy,
one f32 and one f64 product, a fresh cache) and prints the thresholds it chose. Only the ratios
measured side by side mean anything on a shared machine; the CPU and the load are printed.

Needs Debian's python3-numpy and libopenblas0-pthread (apt-get install -y python3-numpy
libopenblas0-pthread). Usage: ``python benchmarks/bench_blas.py [--sizes 16,32,64,128,256,512]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_cblas import serving_with_bench  # benchmarks/ is the script's folder, first on sys.path

OPENBLAS = Path("/usr/lib") / (subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                                              check=False).stdout.strip() or "x86_64-linux-gnu") \
    / "openblas-pthread" / "libblas.so.3"
#: FLOPs each sample aims at (the number of calls per sample follows from the size).
FLOPS_PER_SAMPLE = 4e7


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="16,32,64,128,256,512")
    p.add_argument("--samples", type=int, default=9)
    args = p.parse_args()
    if not OPENBLAS.exists():
        sys.exit(f"Debian's OpenBLAS ({OPENBLAS}) not found: apt-get install -y libopenblas0-pthread")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    with serving_with_bench() as (res, exe, sock), tempfile.TemporaryDirectory() as tmp:
        time.sleep(1)  # the socket exists before the server accepts: let it settle
        env = {k: v for k, v in os.environ.items() if not k.startswith("FFACCEL_")}
        env.update(FFACCEL_DEVICE=f"unix:{sock}", FFACCEL_BLAS_MIN_FLOPS="0", FFACCEL_HOST_BLAS=str(OPENBLAS))
        print(f"f32 cblas_sgemm N x N, microseconds per call, medians of {args.samples} interleaved samples "
              f"(host: {OPENBLAS}, its default threads)")
        print(f"{'N':>6} {'device':>12} {'OpenBLAS':>12} {'device/host':>12}")
        for n in (int(s) for s in args.sizes.split(",")):
            reps = max(2, int(FLOPS_PER_SAMPLE / (2 * n ** 3)))
            out = subprocess.run([str(exe), str(n), str(reps), str(args.samples), str(res.libblas), "cblas_sgemm",
                                  str(OPENBLAS), "cblas_sgemm"], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            dev, host = float(out[2]), float(out[7])
            print(f"{n:>6} {dev:>12.1f} {host:>12.1f} {dev / host:>11.2f}x")
        env.pop("FFACCEL_BLAS_MIN_FLOPS")
        env.update(FFACCEL_BLAS_CALIBRATION=str(Path(tmp) / "calibration.txt"), FFACCEL_BLAS_VERBOSE="1",
                   LD_PRELOAD=str(res.libblas))
        code = "import numpy as np\nfor t in (np.float32, np.float64):\n    a = np.ones((8, 8), t)\n    a @ a\n"
        cal = subprocess.run(["/usr/bin/python3", "-c", code], env=env, capture_output=True, text=True, check=True)
        print("the drop-in's own calibration (at a program's first GEMM of each dtype):")
        for line in cal.stderr.splitlines():
            if "threshold" in line and "measured" in line:
                print("  " + line)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
