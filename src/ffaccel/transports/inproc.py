"""The embedded default: the device side, in the caller's own process.

It owns a driver, a per-client handle table (like a DRM file's GEM handles),
and one timeline per engine. Every submission arrives as ABI bytes and passes
the abi validator whole before anything executes, exactly as it would through
the socket or the ring. Execution is synchronous — a submission's fence has
signalled by the time ``submit`` returns — unless the driver runs its engines on
threads of its own (:meth:`ffaccel.drivers.Driver.async_queue`, the ``npu`` driver):
then ``submit`` queues the validated work on the engine and returns, and the fence
signals when the engine has run it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..abi import DeviceCaps, GemmOp, GeometryChecker, LruCache, check_command
from ..drivers import Driver, DriverInfo, FreshKernel, GemmKernel
from ..spec import Engine, ErrorCode, FFAccelError, violation
from .limits import SessionLimits
from .session import Session
from .usage import this_process_row

#: Longest a queued job waits for the fences it names (then it fails with TIMEOUT): never forever.
_JOB_WAIT_NS = 600 * 10**9


class GemmFamily:
    """The kernels of one GEMM class across geometries: a plan over a growing axis.

    ``kernel(m, n, k, batch, operands)`` checks the new geometry by every rule that reads one
    (:class:`ffaccel.abi.GeometryChecker`) and returns the driver's kernel for it, or None when a
    rule fails (the caller's full path then raises the validator's error). A kernel the driver
    declares size-free (:meth:`ffaccel.drivers.Driver.kernel_family`) is prepared once per key and
    reused; any other is prepared per geometry.
    """

    #: Most kernels kept per family (one per size band and thread hold: a handful).
    MAX_KERNELS = 16

    __slots__ = ("_check", "_driver", "_holds", "_kernels", "_last")

    def __init__(self, checker: GeometryChecker, driver: Driver) -> None:
        self._check = checker.check
        self._holds = checker.holds
        self._driver = driver
        self._kernels: LruCache = LruCache(self.MAX_KERNELS)
        #: (covers, kernel) of the last size-free kernel: a growing length stays in one band for long
        self._last: tuple[Callable[[int, int, int, int], bool], GemmKernel] | None = None

    def kernel(self, m: int, n: int, k: int, batch: int, operands: tuple) -> GemmKernel | None:
        last = self._last
        if last is not None and last[0](m, n, k, batch):  # its kernel serves it: the rules alone, no op
            return last[1] if self._holds(m, n, k, batch, operands) else None
        op = self._check(m, n, k, batch, operands)
        if op is None:
            return None
        driver = self._driver
        family = driver.kernel_family(op)
        if family is None:
            return driver.prepare_gemm(op)
        key, covers = family
        kernels = self._kernels
        kernel = kernels.peek(key) or kernels.get(key)
        if kernel is None:
            kernel = driver.prepare_gemm(op)
            kernels.put(key, kernel)
        self._last = (covers, kernel)
        return kernel


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
        self._lock = threading.Lock()
        #: engine -> the driver's queue for it, where the driver runs that engine asynchronously
        self._queues = {e: q for e in self._caps.engines if (q := driver.async_queue(e)) is not None}
        # synchronous engines: submitted == completed; queued ones complete when their job returns
        self._timeline = self._session.submitted if not self._queues else self._session.completed
        self._done = threading.Condition()
        self._errors: dict[Engine, list[tuple[int, BaseException]]] = {e: [] for e in Engine}
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
            entry = self._session.remove_mapping(handle)
        self.driver.free(entry.memory)

    # -- work ---------------------------------------------------------------------------
    def submit(self, raw: bytes) -> tuple[Engine, int]:
        """Validate a whole submission, run it, and return the fence (engine, value) it signals."""
        s = self._session
        with self._lock:
            engine, runs, waits = s.plan(raw)  # nothing runs until every command has passed validation
            if not self._queues:  # synchronous: every wait has signalled already
                for run in runs:
                    run()
                return engine, s.assign(engine, runs)
            return self._run(engine, runs, waits)

    def _run(self, engine: Engine, runs: Sequence, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        """With a driver that queues some engines: queue a validated submission on its engine, or run it
        now (an engine the driver does not queue) once its waits have signalled; (engine, fence value)."""
        s = self._session
        queue = self._queues.get(engine)
        if queue is None:
            for e, v in waits:
                if not self._wait_completed(e, v, _JOB_WAIT_NS):
                    raise violation("fence.timeout", f"fence {e.name}:{v} not signalled within {_JOB_WAIT_NS} ns",
                                    "a fence that signals before the deadline")
            for run in runs:
                run()
            value = s.assign(engine, runs)
            self._complete(engine, value, None)
            return engine, value
        value = s.assign(engine, runs)

        def job() -> None:
            error = None
            try:
                for e, v in waits:  # in the engine's own order: later jobs of this engine wait too
                    if not self._wait_completed(e, v, _JOB_WAIT_NS):
                        raise violation("fence.timeout", f"fence {e.name}:{v} not signalled within {_JOB_WAIT_NS} ns "
                                        "(a job's wait)", "a fence that signals before the deadline")
                for run in runs:
                    run()
            except BaseException as e:  # noqa: BLE001 - reported by the wait on this fence
                error = e
            self._complete(engine, value, error)

        queue(job)
        return engine, value

    def _complete(self, engine: Engine, value: int, error: BaseException | None) -> None:
        with self._done:
            if error is not None:
                self._errors[engine].append((value, error))
            self._timeline[engine] = max(self._timeline[engine], value)
            self._done.notify_all()

    def _wait_completed(self, engine: Engine, value: int, timeout_ns: int | None) -> bool:
        with self._done:
            return self._done.wait_for(lambda: self._timeline[engine] >= value,
                                       None if timeout_ns is None else timeout_ns / 1e9)

    # -- command lists ------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        """Validate a submission once (its engine is the list's) and keep it for replay."""
        with self._lock:
            return self._session.record(raw)

    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        """Run a recorded list again: only the engine, the waits and its buffers' liveness are checked."""
        s = self._session
        with self._lock:
            eng, runs, checked = s.replay(list_id, engine, waits)
            if not self._queues:  # synchronous: every wait has signalled already
                for run in runs:
                    run()
                return eng, s.assign(eng, runs)
            return self._run(eng, runs, checked)

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
        """Wait until ``engine`` has completed ``value``; raise what its work raised, once."""
        submitted = self._session.submitted[engine]
        if value > submitted:
            raise violation("fence.timeout", f"fence {engine.name}:{value}, never submitted (timeline at "
                            f"{submitted}), so it cannot signal within {timeout_ns} ns",
                            f"a fence value <= {submitted}")
        if not self._wait_completed(engine, value, timeout_ns):
            raise violation("fence.timeout", f"fence {engine.name}:{value} still running after {timeout_ns} ns "
                            f"(completed {self._timeline[engine]})", "a fence that signals before the deadline")
        with self._done:
            failed = [err for v, err in self._errors[engine] if v <= value]
            self._errors[engine] = [(v, err) for v, err in self._errors[engine] if v > value]
        if failed:
            raise failed[0]

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

    def prepare_gemm_family(self, descriptor: bytes) -> GemmFamily:
        """A plan over every geometry of one validated GEMM class (see :class:`GemmFamily`)."""
        self._check_open()
        return GemmFamily(GeometryChecker(descriptor, self._caps), self.driver)

    @property
    def host_visible(self) -> bool:
        return True

    def thread_pool(self) -> str:
        """The driver's (see :meth:`ffaccel.drivers.base.Driver.thread_pool`): it runs in this process."""
        return self.driver.thread_pool()

    def close(self) -> None:
        if self._queues:  # let queued work finish (bounded: each job waits with a deadline) before the engines stop
            for e in self._queues:
                self._wait_completed(e, self._session.submitted[e], 60 * 10**9)
        with self._lock:
            entries = self._session.close()
        for entry in entries:
            self.driver.free(entry.memory)
        self.driver.close()

    def _check_open(self) -> None:
        if self._session.closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
