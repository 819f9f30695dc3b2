"""Proof with real programs: Debian's unmodified NumPy and a -lblas C program run their GEMMs on the server.

Debian's python3-numpy (linked to the system libblas.so.3) runs under LD_PRELOAD of the drop-in:
f32 and f64 ``@`` land on ``ffaccel serve`` (``ffaccel stats`` counts their GEMMs and FLOPs, and the drop-in's
verbose log says where each GEMM ran), ``numpy.linalg.solve`` (LAPACK, on the host BLAS) stays
right, and with the server stopped every answer is still right (host fallback, said once) or,
in strict mode, the program stops. A C program written against Debian's cblas.h and linked
with -lblas does the same. The packages are installed once by apt when missing (debian_util).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from c_util import libraries, program  # tests/ is on pytest's pythonpath (pyproject.toml)
from debian_util import SYSTEM_PYTHON, debian_blas
from server_util import ServerProcess

SCRIPT = Path(__file__).resolve().parent / "programs" / "numpy_blas.py"
TIMEOUT_S = 120


@pytest.fixture(scope="module", autouse=True)
def _debian() -> None:
    debian_blas()


def run_numpy(tmp: Path, device: str, returncode: int = 0, preload: Path | None = None,
              **env_extra: str) -> tuple[dict[str, np.ndarray], str]:
    """Debian's python3 on numpy_blas.py with preload (default: the drop-in) preloaded; (its saved
    arrays, its stderr)."""
    out = tmp / "numpy.npz"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FFACCEL_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(LD_PRELOAD=str(preload or libraries().libblas), FFACCEL_DEVICE=device, **env_extra)
    proc = subprocess.run([SYSTEM_PYTHON, str(SCRIPT), str(out)], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert proc.returncode == returncode, proc.stderr
    if returncode:
        return {}, proc.stderr
    with np.load(out) as z:
        return dict(z), proc.stderr


def check_numpy(res: dict[str, np.ndarray]) -> None:
    assert str(res["numpy_file"]).startswith("/usr/lib/python3/dist-packages/numpy/")  # Debian's, not the venv's
    for name, u in (("f32", 2.0 ** -24), ("f64", 2.0 ** -53)):
        a, b, c = (res[f"{name}_{x}"].astype(np.float64) for x in "abc")
        bound = 2 * (a.shape[1] + 2) * u * (abs(a) @ abs(b)) + u * abs(a @ b)
        assert np.all(abs(c - a @ b) <= bound), name
    m, rhs, x = res["solve_m"], res["solve_rhs"], res["solve_x"]
    assert np.allclose(m @ x, rhs, rtol=0, atol=1e-12)


def ffaccel_stats(device: str) -> dict:
    """What ``ffaccel stats DEVICE --json`` prints, as a user would read it."""
    proc = subprocess.run([sys.executable, "-m", "ffaccel.cli", "stats", device, "--json"], capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_numpy_matmul_runs_on_the_server_and_solve_stays_right(server: ServerProcess, tmp_path: Path) -> None:
    before = ffaccel_stats(f"unix:{server.path}")
    res, err = run_numpy(tmp_path, f"unix:{server.path}", FFACCEL_BLAS_MIN_FLOPS="0", FFACCEL_BLAS_VERBOSE="1")
    check_numpy(res)
    assert "ffaccel blas: cblas_sgemm 130x90x70 x1: device" in err.splitlines()
    assert "ffaccel blas: cblas_dgemm 130x90x70 x1: device" in err.splitlines()
    after = ffaccel_stats(f"unix:{server.path}")  # seen where a user looks: `ffaccel stats`
    # the f32 and the f64 product at least; LAPACK's own dgemm_ calls may add more (netlib LAPACK)
    assert after["gemm_commands"] - before["gemm_commands"] >= 2
    assert after["gemm_flops"] - before["gemm_flops"] >= 2 * (2 * 130 * 90 * 70)


def test_numpy_with_the_server_stopped_is_right_and_says_so_once(tmp_path: Path) -> None:
    dev = f"unix:{tmp_path}/stopped.sock"
    res, err = run_numpy(tmp_path, dev, FFACCEL_BLAS_MIN_FLOPS="0")
    check_numpy(res)  # the answers NumPy gets are right: no NaN garbage from an untouched output
    lines = err.splitlines()
    assert len(lines) == 1 and "DEVICE_LOST" in lines[0] and "run on the host BLAS" in lines[0], err


def test_numpy_in_strict_mode_stops_when_the_server_is_gone(tmp_path: Path) -> None:
    _, err = run_numpy(tmp_path, f"unix:{tmp_path}/stopped.sock", returncode=-signal.SIGABRT,
                       FFACCEL_BLAS_MIN_FLOPS="0", FFACCEL_BLAS_STRICT="1")
    assert "FFACCEL_BLAS_STRICT is set" in err


def test_numpy_under_the_device_only_cblas_with_the_server_stopped_is_right(tmp_path: Path) -> None:
    """libffaccel_cblas.so (GEMMs on the device, whatever their size) preloaded into Debian's NumPy
    with no server: the GEMMs it takes run on the host BLAS instead, the answers are right (never
    the NaN garbage of an untouched output), and one line says so."""
    dev = f"unix:{tmp_path}/stopped.sock"
    res, err = run_numpy(tmp_path, dev, preload=libraries().libcblas)
    check_numpy(res)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffaccel cblas: ") and "DEVICE_LOST" in lines[0], err
    assert "runs on the host BLAS" in lines[0]


def test_numpy_under_the_device_only_cblas_runs_on_the_server(server: ServerProcess, tmp_path: Path) -> None:
    before = ffaccel_stats(f"unix:{server.path}")
    res, err = run_numpy(tmp_path, f"unix:{server.path}", preload=libraries().libcblas)
    check_numpy(res)
    assert err == ""
    after = ffaccel_stats(f"unix:{server.path}")
    assert after["gemm_commands"] - before["gemm_commands"] >= 2


@pytest.mark.parametrize("serving", [True, False], ids=["server", "stopped"])
def test_a_lblas_c_program_runs_on_the_server_or_falls_back(server: ServerProcess, tmp_path: Path,
                                                           serving: bool) -> None:
    exe = program("sys_cblas", "blas", include=False)  # Debian's cblas.h and -lblas, nothing of ours
    dev = f"unix:{server.path}" if serving else f"unix:{tmp_path}/stopped.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FFACCEL_")}
    env.update(LD_PRELOAD=str(libraries().libblas), FFACCEL_DEVICE=dev, FFACCEL_BLAS_MIN_FLOPS="0",
               FFACCEL_BLAS_VERBOSE="1")
    before = server.submissions()
    proc = subprocess.run([str(exe), "96"], env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BAD" not in proc.stdout and proc.stdout.count(" ok") == 10
    assert server.submissions() - before == (3 if serving else 0)
    assert proc.stderr.count(": device\n") == (3 if serving else 0), proc.stderr
