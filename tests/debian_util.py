"""Debian's own BLAS, NumPy and cblas.h for the drop-in BLAS tests: installed once (apt) when missing.

CI runs as root on Debian 12 with its mirror reachable, so the tests install what they need
instead of skipping: a failed install fails the test, saying why. Only a system without apt/dpkg
(not Debian) skips, naming what it lacks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

#: python3-numpy: NumPy linked to the system libblas.so.3 and liblapack.so.3; libblas-dev: cblas.h,
#: libblas.so for -lblas, and netlib's reference BLAS (libblas3); libopenblas0-pthread: OpenBLAS,
#: which Debian then makes the libblas.so.3 alternative (the usual host BLAS).
#: libblis4-pthread and libatlas3-base: BLIS and ATLAS, the other host BLASes the drop-in looks for
#: (their libblas.so.3 alternatives rank below OpenBLAS's, so installing them changes no default).
PACKAGES = ("python3-numpy", "libblas-dev", "libopenblas0-pthread", "libblis4-pthread", "libatlas3-base")
APT_TIMEOUT_S = 900
#: The interpreter of Debian's python3 (not the test's venv): it imports Debian's NumPy.
SYSTEM_PYTHON = "/usr/bin/python3"


def _installed(pkg: str) -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "install ok installed"


@lru_cache(maxsize=1)
def _install() -> None:
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise AssertionError(f"Debian packages {missing} are missing and the tests do not run as root: "
                             f"install them (apt-get install -y {' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"],
                 ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False)
        if proc.returncode:
            raise AssertionError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                                 f"\n{proc.stderr[-2000:]}")
    still = [p for p in PACKAGES if not _installed(p)]
    assert not still, f"apt-get install finished but {still} are not installed"


def debian_blas() -> None:
    """Make sure Debian's NumPy, cblas.h, netlib BLAS, OpenBLAS, BLIS and ATLAS are installed (once per process)."""
    if not shutil.which("apt-get") or not shutil.which("dpkg-query"):
        pytest.skip("not a Debian system (no apt-get/dpkg-query): the drop-in BLAS tests use Debian's packages")
    _install()


@lru_cache(maxsize=1)
def multiarch_lib() -> Path:
    """/usr/lib/<triplet> (where Debian keeps libblas.so.3 and the BLAS folders)."""
    triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True, check=False).stdout.strip()
    return Path("/usr/lib") / (triplet or "x86_64-linux-gnu")


def netlib_blas() -> Path:
    """Debian's reference BLAS (libblas3)."""
    return multiarch_lib() / "blas" / "libblas.so.3"


def openblas_blas() -> Path:
    """Debian's OpenBLAS, as a libblas.so.3 (libopenblas0-pthread)."""
    return multiarch_lib() / "openblas-pthread" / "libblas.so.3"


def blis_blas() -> Path:
    """Debian's BLIS, as a libblas.so.3 (libblis4-pthread)."""
    return multiarch_lib() / "blis-pthread" / "libblas.so.3"


def atlas_blas() -> Path:
    """Debian's ATLAS, as a libblas.so.3 (libatlas3-base)."""
    return multiarch_lib() / "atlas" / "libblas.so.3"
