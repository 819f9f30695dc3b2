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


def program(name: str, link: str) -> Path:
    """Compile tests/c/NAME.c against the built headers, linked with ``-l<link>``; the executable."""
    res = libraries()
    exe = res.lib.parent / name
    if not exe.exists():
        proc = subprocess.run([compiler(), *CFLAGS, str(HERE / f"{name}.c"), f"-I{res.include}", f"-L{res.lib}",
                               f"-l{link}", f"-Wl,-rpath,{res.lib}", "-lm", "-o", str(exe)],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"{name}.c does not build:\n{proc.stderr}"
    return exe
