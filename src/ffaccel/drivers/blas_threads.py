"""How many threads the process's OpenBLAS libraries use, for the duration of a call.

NumPy and SciPy each load an OpenBLAS whose worker threads spin for a while after every
multi-threaded call. Code that runs next to another thread pool (oneDNN's or PyTorch's OpenMP
team, the one a device under test works on) holds them to one thread around its own BLAS
calls, so that those workers neither run nor spin: the ``cpu`` driver around OpenBLAS GEMMs
where PyTorch is loaded, the ``ref`` golden model around every evaluation (a judge must not
take the cores of the device it judges).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any


class ThreadLimit:
    """Sets every loaded OpenBLAS to ``threads`` threads for the duration of a ``with`` block.

    Nested and concurrent users share one setting: the first to enter sets it, the
    last to leave restores what was there. The OpenBLAS libraries are called through their
    own ``openblas_get/set_num_threads`` symbols (found once by threadpoolctl): a call through
    threadpoolctl's controllers cost ~3.5 us each, ~21 us per limited GEMM here (six calls),
    against ~1 us this way. The libraries are those loaded when the limit is made.
    """

    def __init__(self, threads: int) -> None:
        from threadpoolctl import ThreadpoolController  # after NumPy and SciPy loaded their BLAS

        self.threads = threads
        self._libs: list[tuple[Callable[[], int], Callable[[int], None]]] = []
        for lc in ThreadpoolController().lib_controllers:
            if lc.user_api != "blas":
                continue
            raw = _raw_thread_calls(lc)
            self._libs.append(raw if raw is not None else (lc.get_num_threads, lc.set_num_threads))
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: list[int] = []

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._saved = [get() for get, _ in self._libs]
                for _, put in self._libs:
                    put(self.threads)
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for (_, put), n in zip(self._libs, self._saved):
                    put(n)


def _raw_thread_calls(lc: Any) -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of an OpenBLAS on pthreads, straight from its symbols; None where threadpoolctl
    must do it (OpenMP-threaded OpenBLAS, other libraries, symbols not found)."""
    if getattr(lc, "internal_api", None) != "openblas" or getattr(lc, "threading_layer", None) != "pthreads":
        return None
    try:
        prefix, suffix = lc._find_affixes()
        get = getattr(lc.dynlib, f"{prefix}openblas_get_num_threads{suffix}")
        put = getattr(lc.dynlib, f"{prefix}openblas_set_num_threads{suffix}")
    except (AttributeError, TypeError):  # pragma: no cover - another threadpoolctl or library
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    put.restype, put.argtypes = None, [ctypes.c_int]
    return get, put


@functools.lru_cache(maxsize=1)
def one_blas_thread() -> ThreadLimit:
    """The process's one-thread limit, shared by all its users (so that nested and concurrent
    ones restore the right setting). Made on first use, after NumPy's and SciPy's BLAS load:
    every ffaccel process that runs a host driver has both."""
    import numpy  # noqa: F401 - their BLAS libraries must be loaded for the limit to see them
    import scipy.linalg.blas  # noqa: F401

    return ThreadLimit(1)
