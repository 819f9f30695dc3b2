"""The embedded default: the device side, in the caller's own process.

It owns a driver, a per-client handle table (like a DRM file's GEM handles),
and one timeline per engine. Every submission arrives as ABI bytes and passes
the abi validator whole before anything executes, exactly as it would through
the socket or the ring. Execution is synchronous, so a submission's fence has
signalled by the time ``submit`` returns.
"""

from __future__ import annotations

import itertools
import numbers
import threading

import numpy as np

from ..abi import DeviceCaps, GemmOp, check_command, check_submission, copy_arrays, gemm_arrays
from ..drivers import Driver, DriverInfo, GemmKernel
from ..spec import SPEC_LIMITS, Engine, ErrorCode, FFAccelError, violation


class InprocTransport:
    """One client's connection to a driver running in this process."""

    kind = "inproc"

    def __init__(self, driver: Driver, max_memory_bytes: int | None = None) -> None:
        self.driver = driver
        self._info = driver.info()
        self._caps: DeviceCaps = self._info.caps
        self._memory: dict[int, np.ndarray] = {}
        self._next_handle = itertools.count(1)
        self._timeline = {e: 0 for e in Engine}
        self._quota = max_memory_bytes
        self._used = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- queries ------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        return self._info

    # -- memory -------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]:
        self._check_open()
        limit = min(SPEC_LIMITS.max_buffer_bytes, self._caps.limits.max_buffer_bytes)
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, numbers.Integral) or not 1 <= size_bytes <= limit:
            raise violation("memory.size", size_bytes, f"an integer in [1, {limit}]")
        size_bytes = int(size_bytes)
        with self._lock:
            if self._quota is not None and self._used + size_bytes > self._quota:
                raise violation("memory.quota", size_bytes, f"<= {self._quota - self._used} bytes left of "
                                f"{self._quota}")
            try:
                mem = self.driver.alloc(size_bytes)
            except MemoryError:
                raise violation("memory.quota", size_bytes, "what the device can allocate") from None
            handle = next(self._next_handle)
            self._memory[handle] = mem
            self._used += size_bytes
        return handle, mem

    def free(self, handle: int) -> None:
        with self._lock:
            mem = self._memory.pop(handle, None)
            if mem is None:
                raise violation("memory.handle", handle, f"one of {sorted(self._memory)}")
            self._used -= mem.nbytes

    def _size(self, handle: int) -> int | None:
        mem = self._memory.get(handle)
        return None if mem is None else mem.nbytes

    # -- work ---------------------------------------------------------------------------
    def submit(self, raw: bytes) -> tuple[Engine, int]:
        """Validate a whole submission, run it, and return the fence (engine, value) it signals."""
        self._check_open()
        with self._lock:
            sub = check_submission(raw, self._caps, self._size, self._timeline.__getitem__)
            memory = self._memory.__getitem__
            for op in sub.ops:  # nothing runs until every command has passed validation
                if isinstance(op, GemmOp):
                    a, b, c, d, epi = gemm_arrays(op, memory)
                    if op.batch and op.m and op.n:
                        self.driver.gemm(op, a, b, c, d, epi)
                else:
                    src, dst = copy_arrays(op, memory)
                    if src.size:
                        self.driver.copy(op, src, dst)
            self._timeline[sub.engine] += 1
            return sub.engine, self._timeline[sub.engine]

    def completed(self, engine: Engine) -> int:
        return self._timeline[engine]

    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None:
        # Execution is synchronous: a submitted value has always completed.
        if value > self._timeline[engine]:
            raise violation("fence.timeout", f"fence {engine.name}:{value}, never submitted (timeline at "
                            f"{self._timeline[engine]}), so it cannot signal within {timeout_ns} ns",
                            f"a fence value <= {self._timeline[engine]}")

    def prepare_gemm(self, descriptor: bytes) -> GemmKernel:
        """Validate one GEMM geometry and return the driver's kernel for it (host-array path)."""
        self._check_open()
        op = check_command(descriptor, self._caps)
        if not isinstance(op, GemmOp):
            raise violation("cmd.opcode", "COPY", "GEMM")
        return self.driver.prepare_gemm(op)

    @property
    def host_visible(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._memory.clear()
            self._closed = True
        self.driver.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
