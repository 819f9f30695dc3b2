"""Build the C libraries and the C test programs once per test process (skip without a C compiler)."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

from ffaccel.cli.build_c import BuildResult, build_c

HERE = Path(__file__).resolve().parent / "c"
#: Every test program is built warning-free.
CFLAGS = ("-std=c11", "-O1", "-Wall", "-Wextra", "-Werror")


def compiler() -> str:
    """The C compiler, or skip the calling test saying why."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        pytest.skip("no C compiler (cc, gcc or clang) on PATH: the C ABI tests need one (CI has gcc)")
    return cc


@lru_cache(maxsize=1)
def _built() -> BuildResult:
    out = Path(tempfile.mkdtemp(prefix="ffaccel-c-"))
    atexit.register(shutil.rmtree, out, True)
    return build_c(out, werror=True)  # the sources stay warning-free


def libraries() -> BuildResult:
    """``ffaccel build-c`` into a temporary folder (once per process)."""
    compiler()
    return _built()


def program(name: str, link: str, include: bool = True) -> Path:
    """Compile tests/c/NAME.c linked with ``-l<link>`` (once per process); the executable.

    ``include``: against the built headers and libraries (False: the system's only, as a program
    written for Debian's libblas-dev is built: its cblas.h, its -lblas, no path to ours).
    """
    res = libraries()
    exe = res.lib.parent / f"{name}-{link}{'' if include else '-sys'}"
    if not exe.exists():
        ours = [f"-I{res.include}", f"-L{res.lib}", f"-Wl,-rpath,{res.lib}"] if include else []
        proc = subprocess.run([compiler(), *CFLAGS, str(HERE / f"{name}.c"), *ours, f"-l{link}", "-lm", "-lpthread",
                               "-o", str(exe)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{name}.c does not build:\n{proc.stderr}"
    return exe
