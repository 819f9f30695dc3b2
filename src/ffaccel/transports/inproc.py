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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..abi import (
    ABI_VERSION,
    SUBMIT,
    WAIT,
    DeviceCaps,
    GemmOp,
    Op,
    ValidationCache,
    check_command,
    check_submission,
    copy_arrays,
    gemm_arrays,
    op_handles,
)
from ..drivers import Driver, DriverInfo, FreshKernel, GemmKernel
from ..spec import ENGINE_OPCODES, SPEC_LIMITS, Engine, ErrorCode, FFAccelError, Opcode, violation


_SUBMIT_PACK = SUBMIT.struct.pack
_WAIT_PACK = WAIT.struct.pack


def _nothing() -> None:
    return None


class BoundRuns:
    """The driver-prepared call for each validated op, bound to its arrays once.

    Keyed by the op object itself: a :class:`ValidationCache` hit returns the very object it
    validated before, so a repeated command skips view building and kernel planning and just
    calls the kernel. Sound because handles are never reused (a live handle always names the
    same memory) and every submission is validated, cache or not, before its runs are looked
    up; holding the op keeps its ``id`` from being reused. Bounded: cleared when full.
    """

    def __init__(self, driver: Driver, memory: Callable[[int], np.ndarray], max_entries: int = 8192) -> None:
        self.driver = driver
        self.memory = memory
        self.max_entries = max_entries
        self._runs: dict[int, tuple[Op, Callable[[], object]]] = {}
        self._blocks: dict[int, tuple[tuple[Op, ...], tuple[Callable[[], object], ...]]] = {}

    def get(self, op: Op) -> Callable[[], object]:
        hit = self._runs.get(id(op))
        if hit is not None and hit[0] is op:
            return hit[1]
        driver = self.driver
        if isinstance(op, GemmOp):
            a, b, c, d, epi = gemm_arrays(op, self.memory)
            if op.batch and op.m and op.n:
                run = driver.bind_gemm(op, a, b, c, d, epi)  # one C-level call, when the driver can
                if run is None:
                    kernel = driver.prepare_gemm(op)
                    run = lambda: kernel(a, b, c, d, epi)  # noqa: E731
            else:
                run = _nothing
        else:
            src, dst = copy_arrays(op, self.memory)
            run = (lambda: driver.copy(op, src, dst)) if src.size else _nothing  # type: ignore[arg-type]
        if len(self._runs) >= self.max_entries:
            self._runs.clear()
        self._runs[id(op)] = (op, run)
        return run

    def get_all(self, ops: tuple[Op, ...]) -> tuple[Callable[[], object], ...]:
        """The runs of a whole validated block; a block the cache returned whole is looked up once."""
        hit = self._blocks.get(id(ops))
        if hit is not None and hit[0] is ops:
            return hit[1]
        runs = tuple(self.get(op) for op in ops)
        if len(self._blocks) >= 256:
            self._blocks.clear()
        self._blocks[id(ops)] = (ops, runs)
        return runs

    def clear(self) -> None:
        self._runs.clear()
        self._blocks.clear()


class SubmissionPlans:
    """Submissions validated and bound to their runs: what both the in-process transport and
    the server do with every submission's bytes before anything runs.

    Three memos, all exact: the validator's (:class:`ValidationCache`), the bound runs
    (:class:`BoundRuns`), and the last submission itself, so that a loop resubmitting the
    same bytes costs one comparison. That last one is dropped whenever a buffer is freed
    (the only change that can turn a valid submission invalid: handles are never reused,
    and waits name values that only stay reachable).
    """

    def __init__(self, driver: Driver, memory: Callable[[int], np.ndarray], caps: DeviceCaps,
                 size_of: Callable[[int], int | None], submitted: Callable[[Engine], int],
                 live_handles: Callable[[], Iterable[int]]) -> None:
        self.caps = caps
        self.size_of = size_of
        self.live_handles = live_handles
        self.submitted = submitted
        self.cache = ValidationCache()
        self.runs = BoundRuns(driver, memory)
        self._last: tuple[bytes, Engine, tuple[Callable[[], object], ...], tuple[tuple[Engine, int], ...]] | None = None

    def plan(self, raw: bytes | memoryview
             ) -> tuple[Engine, tuple[Callable[[], object], ...], tuple[tuple[Engine, int], ...]]:
        """(engine, runs, waits) of a whole submission; raises on the first broken rule."""
        last = self._last
        if last is not None and last[0] == raw:
            return last[1], last[2], last[3]
        sub = check_submission(raw, self.caps, self.size_of, self.submitted, self.cache)
        runs = self.runs.get_all(sub.ops)
        if type(raw) is bytes:
            self._last = (raw, sub.engine, runs, sub.waits)
        return sub.engine, runs, sub.waits

    def record(self, raw: bytes) -> "RecordedList":
        """Validate a submission once, on its engine's terms, and bind its runs for replays."""
        sub = check_submission(raw, self.caps, self.size_of, self.submitted)
        if sub.waits:
            raise violation("submit.wait", f"wait_count = {len(sub.waits)}",
                            "0 (a command list's waits are given at replay)")
        return RecordedList(sub.engine,
                            frozenset(Opcode.GEMM if isinstance(op, GemmOp) else Opcode.COPY for op in sub.ops),
                            tuple(sorted({h for op in sub.ops for h in op_handles(op)})),
                            tuple(self.runs.get(op) for op in sub.ops))

    def replay(self, recorded: "RecordedList", engine: int, waits: Sequence[tuple[int, int]]
               ) -> tuple[Engine, tuple[tuple[Engine, int], ...]]:
        """(engine, waits) of a replay: only these and the list's buffers' liveness are checked.

        The engine and the waits pass the one validator as an empty submission (memoized like
        any other: a replay in a loop sends the same bytes).
        """
        raw = _SUBMIT_PACK(ABI_VERSION, int(engine), 0, 0, len(waits), 0, 0)
        if waits:
            raw += b"".join(_WAIT_PACK(int(e), 0, int(v)) for e, v in waits)
        sub = check_submission(raw, self.caps, self.size_of, self.submitted, self.cache)
        bad = recorded.opcodes - ENGINE_OPCODES[sub.engine]
        if bad:
            raise violation("submit.engine_opcode", f"{sorted(o.name for o in bad)} on {sub.engine.name}",
                            f"{sorted(o.name for o in ENGINE_OPCODES[sub.engine])} on {sub.engine.name}")
        size_of = self.size_of
        for h in recorded.handles:
            if size_of(h) is None:
                raise violation("cmdlist.stale", h, f"live handles of this client ({sorted(self.live_handles())})")
        return sub.engine, sub.waits

    def buffer_freed(self) -> None:
        """Forget everything bound to buffers (bound runs hold views of their memory)."""
        self._last = None
        self.runs.clear()

    def clear(self) -> None:
        self.buffer_freed()
        self.cache.clear()


@dataclass(frozen=True)
class RecordedList:
    """A command list: validated once, its runs bound, replayed by checking only what can change."""

    engine: Engine
    opcodes: frozenset[Opcode]
    handles: tuple[int, ...]
    runs: tuple[Callable[[], object], ...]


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
        self._lists: dict[int, RecordedList] = {}
        self._plans = SubmissionPlans(driver, self._memory.__getitem__, self._caps, self._size,
                                      self._timeline.__getitem__, self._memory.keys)
        self._list_ids = itertools.count(1)

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
            self._plans.buffer_freed()  # bound runs hold views of the memory: let it go

    def _size(self, handle: int) -> int | None:
        mem = self._memory.get(handle)
        return None if mem is None else mem.nbytes

    # -- work ---------------------------------------------------------------------------
    def submit(self, raw: bytes) -> tuple[Engine, int]:
        """Validate a whole submission, run it, and return the fence (engine, value) it signals."""
        self._check_open()
        with self._lock:
            engine, runs, _waits = self._plans.plan(raw)  # synchronous: every wait has signalled already
            for run in runs:  # nothing runs until every command has passed validation
                run()
            value = self._timeline[engine] + 1
            self._timeline[engine] = value
            return engine, value

    # -- command lists ------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        """Validate a submission once (its engine is the list's) and keep it for replay."""
        self._check_open()
        with self._lock:
            recorded = self._plans.record(raw)
            lid = next(self._list_ids)
            self._lists[lid] = recorded
            return lid

    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        """Run a recorded list again: only the engine, the waits and its buffers' liveness are checked."""
        self._check_open()
        with self._lock:
            cl = self._lists.get(list_id)
            if cl is None:
                raise violation("cmdlist.id", list_id, f"one of {sorted(self._lists)}")
            engine, _waits = self._plans.replay(cl, engine, waits)  # synchronous: waits have signalled
            for run in cl.runs:
                run()
            value = self._timeline[engine] + 1
            self._timeline[engine] = value
            return engine, value

    def free_list(self, list_id: int) -> None:
        with self._lock:
            if self._lists.pop(list_id, None) is None:
                raise violation("cmdlist.id", list_id, f"one of {sorted(self._lists)}")

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

    def close(self) -> None:
        with self._lock:
            self._memory.clear()
            self._lists.clear()
            self._plans.clear()
            self._closed = True
        self.driver.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
