"""The embedded default: the device side, in the caller's own process.

It owns a driver, a per-client handle table (like a DRM file's GEM handles),
and one timeline per engine. Every submission arrives as ABI bytes and passes
the abi validator whole before anything executes, exactly as it would through
the socket or the ring. Execution is synchronous, so a submission's fence has
signalled by the time ``submit`` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np

from ..abi import DeviceCaps, GemmOp, check_command
from ..drivers import Driver, DriverInfo, FreshKernel, GemmKernel
from ..spec import Engine, ErrorCode, FFAccelError, violation
from .limits import SessionLimits
from .session import Session
from .usage import this_process_row


class InprocTransport:
    """One client's connection to a driver running in this process."""

    kind = "inproc"

    def __init__(self, driver: Driver, max_memory_bytes: int | None = None,
                 limits: SessionLimits | None = None) -> None:
        self.driver = driver
        self._info = driver.info()
        self._caps: DeviceCaps = self._info.caps
        if limits is None:
            limits = SessionLimits(max_memory_bytes=max_memory_bytes)
        self._session = Session(driver, self._caps, limits)
        self._timeline = self._session.submitted  # synchronous: submitted == completed
        self._lock = threading.Lock()
        self._opened_s = (time.time(), time.monotonic())

    # -- queries ------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        return self._info

    def usage(self) -> dict[str, object]:
        """What this device did since it was opened, in the shape of a server's USAGE reply:
        totals, one client (this process) and the driver's own counters (:mod:`.usage`)."""
        s = self._session
        opened_wall, opened_mono = self._opened_s
        uptime_s = time.monotonic() - opened_mono
        with self._lock:
            buffers, memory, totals = s.mapping_count, s.used_bytes, s.usage.totals()
        row = this_process_row(1, self.kind, uptime_s, buffers, memory, totals)
        return {"driver": self._info.name, "driver_version": self._info.version, "pid": row["pid"],
                "started_unix_s": opened_wall, "uptime_s": uptime_s, "clients_now": 1, "clients_since_start": 1,
                "client_id": 1, "buffers": buffers, "memory_bytes": memory, **totals, "clients": [row],
                "driver_usage": self.driver.usage()}

    # -- memory -------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]:
        s = self._session
        with self._lock:
            size = s.check_size(size_bytes)
            s.check_room(size)
            try:
                mem = self.driver.alloc(size)
            except MemoryError:
                raise violation("memory.quota", size, "what the device can allocate") from None
            return s.add_mapping(mem, mem, size), mem

    def free(self, handle: int) -> None:
        with self._lock:
            self._session.remove_mapping(handle)

    # -- work ---------------------------------------------------------------------------
    def submit(self, raw: bytes) -> tuple[Engine, int]:
        """Validate a whole submission, run it, and return the fence (engine, value) it signals."""
        s = self._session
        with self._lock:
            engine, runs, _waits = s.plan(raw)  # synchronous: every wait has signalled already
            for run in runs:  # nothing runs until every command has passed validation
                run()
            return engine, s.assign(engine, runs)

    # -- command lists ------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        """Validate a submission once (its engine is the list's) and keep it for replay."""
        with self._lock:
            return self._session.record(raw)

    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        """Run a recorded list again: only the engine, the waits and its buffers' liveness are checked."""
        s = self._session
        with self._lock:
            eng, runs, _waits = s.replay(list_id, engine, waits)  # synchronous: waits have signalled
            for run in runs:
                run()
            return eng, s.assign(eng, runs)

    def free_list(self, list_id: int) -> None:
        with self._lock:
            self._session.free_list(list_id)

    # -- sharing ---------------------------------------------------------------------------------
    def export_fd(self, handle: int) -> int:
        raise violation("wire.export", "an in-process device", "a server device (unix:PATH)")

    def import_fd(self, fd: int) -> tuple[int, np.ndarray]:
        raise violation("wire.export", "an in-process device", "a server device (unix:PATH)")

    def completed(self, engine: Engine) -> int:
        return self._timeline[engine]

    def signalled(self, engine: Engine, value: int) -> bool:
        return self._timeline[engine] >= value

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

    def prepare_gemm_fresh(self, descriptor: bytes) -> FreshKernel | None:
        """The driver's optional new-D kernel for one validated geometry (see Driver.prepare_gemm_fresh)."""
        self._check_open()
        op = check_command(descriptor, self._caps)
        return self.driver.prepare_gemm_fresh(op) if isinstance(op, GemmOp) else None

    @property
    def host_visible(self) -> bool:
        return True

    def thread_pool(self) -> str:
        """The driver's (see :meth:`ffaccel.drivers.base.Driver.thread_pool`): it runs in this process."""
        return self.driver.thread_pool()

    def close(self) -> None:
        with self._lock:
            self._session.close()
        self.driver.close()

    def _check_open(self) -> None:
        if self._session.closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
