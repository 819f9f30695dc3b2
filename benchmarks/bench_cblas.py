"""Per-call cost of a 64x64 ``cblas_sgemm`` through libffaccel_cblas and a server, against OpenBLAS in process.

Builds the C libraries (``ffaccel build-c``), starts an ``ffaccel serve`` on a temporary socket,
and runs benchmarks/c/bench_sgemm.c, which interleaves in one process batches of calls through
libffaccel_cblas (socket path, then ring path) with batches through SciPy's bundled OpenBLAS
(``scipy_cblas_sgemm``, one thread). Only the ratios measured side by side mean anything on this
shared machine.

Usage: ``python benchmarks/bench_cblas.py [--n 64] [--reps 200] [--samples 15]``
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import scipy

from ffaccel.cli.build_c import BuildResult, build_c, find_compiler

HERE = Path(__file__).resolve().parent


def openblas() -> tuple[str, str]:
    """SciPy's bundled OpenBLAS (LP64: 32-bit integers, like the reference CBLAS) and its sgemm symbol."""
    libs = glob.glob(str(Path(scipy.__file__).parent.parent / "scipy.libs" / "libscipy_openblas-*.so"))
    if not libs:
        sys.exit("SciPy's bundled OpenBLAS (scipy.libs/libscipy_openblas-*.so) not found")
    return libs[0], "scipy_cblas_sgemm"


@contextlib.contextmanager
def serving_with_bench() -> Iterator[tuple[BuildResult, Path, str]]:
    """(``ffaccel build-c`` result, the compiled bench_sgemm, the socket of a started ``ffaccel serve``)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = build_c(Path(tmp) / "c")
        exe = Path(tmp) / "bench_sgemm"
        subprocess.run([*find_compiler(), "-std=c11", "-O2", str(HERE / "c" / "bench_sgemm.c"), "-ldl", "-o",
                        str(exe)], check=True)
        sock = str(Path(tmp) / "s.sock")
        server = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", sock],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.05)
            yield res, exe, sock
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--samples", type=int, default=15)
    args = p.parse_args()
    with serving_with_bench() as (res, exe, sock):
        ob_lib, ob_sym = openblas()
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
        print(f"{args.n}x{args.n} f32 cblas_sgemm, per call, medians of {args.samples} interleaved samples "
              f"of {args.reps} calls (OpenBLAS: {Path(ob_lib).name}, 1 thread)")
        for transport in ("socket", "ring"):
            env["FFACCEL_DEVICE"] = f"unix:{sock}?transport={transport}"
            out = subprocess.run([str(exe), str(args.n), str(args.reps), str(args.samples), str(res.libcblas),
                                  "cblas_sgemm", ob_lib, ob_sym], env=env, capture_output=True, text=True,
                                 check=True).stdout.split()
            ff, ob = float(out[2]), float(out[7])
            print(f"  libffaccel_cblas over {transport:6}: {ff:8.1f} us (best {float(out[4]):.1f})   "
                  f"OpenBLAS in process: {ob:6.1f} us (best {float(out[9]):.1f})   ratio {ff / ob:.1f}x")


if __name__ == "__main__":
    main()
