"""One client's device-side state, the same behind every transport.

A :class:`Session` is what a DRM file is to a GPU driver: the client's handle table,
its memory charge and limits, one timeline per engine, its recorded command lists,
the errors its completions refer to, and the memos that make repeated submissions
cheap. The in-process transport owns one; the device server owns one per connection.
Neither adds device-side logic of its own: validation, charging and planning happen
here, so both answer every request identically.

A session is not thread-safe by itself: its owner serialises calls (the in-process
transport and the server's per-client state each hold one lock around them).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..abi import (
    ABI_VERSION,
    SUBMIT,
    LruCache,
    WAIT,
    DeviceCaps,
    GemmOp,
    Op,
    ValidationCache,
    View,
    check_submission,
    copy_arrays,
    gemm_arrays,
    gemm_group_arrays,
    op_handles,
)
from ..drivers import Driver
from ..spec import ENGINE_OPCODES, SPEC_LIMITS, Engine, ErrorCode, FFAccelError, Opcode, violation
from .limits import SessionLimits
from .usage import EMPTY_USAGE, UsageCounter, block_usage

_SUBMIT_PACK = SUBMIT.struct.pack
_WAIT_PACK = WAIT.struct.pack
Run = Callable[[], object]


def _nothing() -> None:
    return None


# ------------------------------------------------------------------------------------------
# runs: what executing one validated command means


class SlicedRun:
    """A large command that a scheduler may run in slices (rows of D, or batch entries).

    Calling it runs the whole command at once (the in-process transport does). A scheduler
    that shares an engine between clients calls :meth:`slices` instead and runs one slice
    at a time, so another client's small work waits at most one slice. Slices of a GEMM are
    GEMMs over disjoint rows of D (or disjoint batch entries): each computes exactly what the
    whole command computes for those rows.
    """

    __slots__ = ("whole", "_make", "work_units")

    def __init__(self, whole: Run, make: Callable[[int, int, int, int], Run], batch: int, rows: int,
                 units_per_row: int) -> None:
        self.whole = whole
        self._make = make  # (batch0, batch1, row0, row1) -> run
        self.work_units = (batch, rows, units_per_row)

    def __call__(self) -> object:
        return self.whole()

    def slices(self, rows_per_slice: Callable[[], int]) -> Iterator[Run]:
        """Runs over consecutive pieces; ``rows_per_slice()`` is asked before each piece.

        The size is asked each time so a scheduler can adapt it to the rate it measures. A size
        of at least a whole batch entry takes whole entries at a time.
        """
        batch, rows, _units = self.work_units
        b = 0
        while b < batch:
            step = max(1, rows_per_slice())
            if step >= rows:
                nb = min(batch - b, step // rows)
                yield self._make(b, b + nb, 0, rows)
                b += nb
                continue
            r = 0
            while r < rows:
                yield self._make(b, b + 1, r, min(rows, r + step))
                r += step
                step = max(1, rows_per_slice())
            b += 1


class RunBlock(tuple):
    """The runs of one submission (or command list), with whether it is heavy, and its usage.

    Heavy: a command runs in slices, or the block's multiply-adds (elements, for COPY) exceed
    ``slice_units`` in all. A shared engine never runs heavy work inline in a client's thread:
    its scheduler interleaves it with other clients' work. ``usage``: what one submission of
    the block counts (:func:`ffaccel.transports.usage.block_usage`), worked out once.
    """

    heavy: bool
    usage: tuple[int, ...]

    def __new__(cls, runs: "Iterable[Run]", heavy: bool, usage: tuple[int, ...] = EMPTY_USAGE) -> "RunBlock":
        self = super().__new__(cls, runs)
        self.heavy = heavy
        self.usage = usage
        return self


def op_units(op: Op) -> int:
    """Multiply-adds of a GEMM, elements of a COPY (the scheduler's measure of work)."""
    if isinstance(op, GemmOp):
        return op.batch * op.m * op.n * max(1, op.k)
    return op.src.rows * op.src.cols


def _slice_rows(x: np.ndarray | None, b0: int, b1: int, r0: int, r1: int, rows: int) -> np.ndarray | None:
    """x[b0:b1, r0:r1] for operands shaped (batch, m, ...); (batch, 1, n) row vectors keep their row."""
    if x is None:
        return None
    x = x[b0:b1]
    if x.shape[1] == rows and rows > 1:
        x = x[:, r0:r1]
    return x


def _by_identity(cache: LruCache, key: Any, make: Callable[[Any], Any]) -> Any:
    """``make(key)``, memoized by the key object's identity (the entry holds the key, so its id stays its own)."""
    hit = cache.peek(id(key)) or cache.get(id(key))
    if hit is not None and hit[0] is key:
        return hit[1]
    value = make(key)
    cache.put(id(key), (key, value))
    return value


# ------------------------------------------------------------------------------------------
# groups: consecutive independent GEMMs of one geometry, offered to the driver as one call


#: Fewest consecutive GEMMs of one geometry that are offered to the driver's
#: :meth:`~ffaccel.drivers.base.Driver.bind_gemm_group` as one call.
MIN_GROUP = 2


def _placement(v: View | None) -> tuple | None:
    return None if v is None else (v.dtype, v.rows, v.cols, v.ld, v.batch_stride)


def _exact(x: float | int) -> object:
    """A scalar as a key that tells -0.0 from 0.0 and finds a NaN equal to itself."""
    return x.hex() if type(x) is float else x


def geometry_key(op: GemmOp) -> tuple:
    """Everything of a validated GEMM but its operands' handles and offsets and its ``user_data``:
    GEMMs with equal keys compute the same function of their operands.

    Examples
    --------
    >>> from ffaccel.abi import DeviceCaps, Gemm, Matrix, check_command
    >>> from ffaccel.spec import DType
    >>> def op(offset_bytes, alpha=1.0):
    ...     m = Matrix(1, DType.F32, 8, 8, offset_bytes=offset_bytes)
    ...     return check_command(Gemm(m=8, n=8, k=8, a=m, b=m, d=Matrix(2, DType.F32, 8, 8), alpha=alpha).encode(),
    ...                          DeviceCaps())
    >>> geometry_key(op(0)) == geometry_key(op(256)), geometry_key(op(0)) == geometry_key(op(0, -1.0))
    (True, False)
    """
    return (op.m, op.n, op.k, op.batch, op.trans_a, op.trans_b, op.combo, _exact(op.alpha), _exact(op.beta),
            op.in_place, _placement(op.a), _placement(op.b), _placement(op.c), _placement(op.d),
            tuple((p.kind, _exact(p.param0), _exact(p.param1), _placement(p.operand)) for p in op.epilogue))


class _Extents:
    """A union of byte ranges [lo, hi), kept as sorted disjoint ranges (touching ones merged)."""

    __slots__ = ("starts", "ends")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def hits(self, lo: int, hi: int) -> bool:
        """Whether [lo, hi) shares a byte with the union (an empty range shares none)."""
        if lo >= hi:
            return False
        i = bisect.bisect_right(self.starts, lo)
        if i and self.ends[i - 1] > lo:
            return True
        return i < len(self.starts) and self.starts[i] < hi

    def add(self, lo: int, hi: int) -> None:
        if lo >= hi:
            return
        i = bisect.bisect_left(self.ends, lo)  # the first range that ends at or after lo ...
        j = bisect.bisect_right(self.starts, hi)  # ... to the last that starts at or before hi: merged
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]


def _all_independent(ops: Sequence[GemmOp], address: Callable[[int], int]) -> bool:
    """Whether GEMMs of one geometry are all independent of each other (see :func:`independent_spans`):
    the common case, checked in one sorted pass (every operand of a role spans the same bytes)."""
    op0 = ops[0]
    batch = op0.batch

    def span(v: View) -> int:
        lo, hi = v.extent_bytes(batch)
        return hi - lo

    d_span = span(op0.d)
    if not d_span:
        return True
    writes = sorted((address(op.d.handle) + op.d.offset_bytes, i) for i, op in enumerate(ops))
    starts = [lo for lo, _ in writes]
    for k in range(1, len(starts)):
        if starts[k] < starts[k - 1] + d_span:
            return False
    roles: list[Callable[[GemmOp], View | None]] = [lambda o: o.a, lambda o: o.b]
    if op0.c is not None and not op0.in_place:
        roles.append(lambda o: o.c)
    roles += [lambda o, j=j: o.epilogue[j].operand for j, p in enumerate(op0.epilogue) if p.operand is not None]
    for role in roles:
        length = span(role(op0))  # type: ignore[arg-type]
        if not length:
            continue
        readers: dict[int, list[int]] = {}  # where a read starts -> the GEMMs reading there
        for i, op in enumerate(ops):
            v = role(op)
            readers.setdefault(address(v.handle) + v.offset_bytes, []).append(i)  # type: ignore[union-attr]
        for lo, who in readers.items():
            k = max(0, bisect.bisect_right(starts, lo) - 1)  # the last write starting at or before lo, on
            while k < len(starts) and starts[k] < lo + length:
                if starts[k] + d_span > lo and who != [writes[k][1]]:
                    return False  # another GEMM reads bytes this one writes
                k += 1
    return True


def independent_spans(ops: Sequence[GemmOp], address: Callable[[int], int]) -> list[tuple[int, int]]:
    """Cut consecutive GEMMs of one geometry into spans [start, stop) whose GEMMs are independent of each other.

    Independent: no GEMM's D shares a byte with another one's D or with any operand another
    one names (A, B, C, epilogue operands, whether read or not), so the span's GEMMs give the
    same result in any order. Byte ranges are the views' whole extents at the memory's real
    addresses (``address(handle)``: where the handle's memory starts), so two handles of one
    memory (an imported buffer) are seen for what they are. A GEMM that conflicts with the span
    so far starts the next span.

    Examples
    --------
    >>> from ffaccel.abi import DeviceCaps, Gemm, Matrix, check_command
    >>> from ffaccel.spec import DType
    >>> def op(d_offset_bytes):  # A and B in buffer 1, D in buffer 2
    ...     a = Matrix(1, DType.F32, 8, 8)
    ...     return check_command(Gemm(m=8, n=8, k=8, a=a, b=a, d=Matrix(2, DType.F32, 8, 8,
    ...                                    offset_bytes=d_offset_bytes)).encode(), DeviceCaps())
    >>> independent_spans([op(0), op(256), op(0), op(512)], {1: 0, 2: 4096}.__getitem__)  # the 3rd rewrites D[0]
    [(0, 2), (2, 4)]
    """
    if _all_independent(ops, address):
        return [(0, len(ops))]
    spans: list[tuple[int, int]] = []
    start = 0
    writes, reads = _Extents(), _Extents()
    for i, op in enumerate(ops):
        base = address(op.d.handle)
        lo, hi = op.d.extent_bytes(op.batch)
        w = (base + lo, base + hi)
        rs = []
        for v in (op.a, op.b, None if op.in_place else op.c, *(p.operand for p in op.epilogue)):
            if v is not None:
                base = address(v.handle)
                lo, hi = v.extent_bytes(op.batch)
                rs.append((base + lo, base + hi))
        if writes.hits(*w) or reads.hits(*w) or any(writes.hits(*r) for r in rs):
            spans.append((start, i))
            start = i
            writes, reads = _Extents(), _Extents()
        writes.add(*w)
        for r in rs:
            reads.add(*r)
    spans.append((start, len(ops)))
    return spans


class BoundRuns:
    """The driver-prepared call for each validated op, bound to its arrays once.

    Keyed by the op object itself: a :class:`ValidationCache` hit returns the very object it
    validated before, so a repeated command skips view building and kernel planning and just
    calls the kernel. Sound because handles are never reused (a live handle always names the
    same memory) and every submission is validated, cache or not, before its runs are looked
    up; holding the op keeps its ``id`` from being reused. Bounded by count, least recently
    used first (:class:`ffaccel.abi.LruCache`, ``SessionLimits.max_memo_entries``).

    Commands of more than ``slice_units`` multiply-adds (or elements, for COPY) come back as
    :class:`SlicedRun` so that a shared device can interleave them with other clients' work.
    """

    def __init__(self, driver: Driver, memory: Callable[[int], Any], max_entries: int = 8192,
                 slice_units: int = 1 << 26) -> None:
        self.driver = driver
        self.memory = memory
        self.max_entries = max_entries
        self.slice_units = slice_units
        self._runs: LruCache[int, tuple[Op, Run]] = LruCache(max_entries)
        self._blocks: LruCache[int, tuple[tuple[Op, ...], tuple[Run, ...]]] = LruCache(256)
        # whether the driver may take groups at all (a driver without the hook pays nothing for them)
        self._groups = type(driver).bind_gemm_group is not Driver.bind_gemm_group

    def get(self, op: Op) -> Run:
        return _by_identity(self._runs, op, self._bind)

    def _bind(self, op: Op) -> Run:
        driver = self.driver
        if isinstance(op, GemmOp):
            if not (op.batch and op.m and op.n):
                return _nothing
            a, b, c, d, epi = gemm_arrays(op, self.memory)
            units = op.batch * op.m * op.n * max(1, op.k)
            if units > self.slice_units and (op.m > 1 or op.batch > 1) and isinstance(d, np.ndarray):
                kernel = driver.prepare_gemm(op)
                whole = lambda: kernel(a, b, c, d, epi)  # noqa: E731
                return SlicedRun(whole, lambda b0, b1, r0, r1: self._gemm_slice(op, a, b, c, d, epi, b0, b1, r0, r1),
                                 op.batch, op.m, op.n * max(1, op.k))
            run = driver.bind_gemm(op, a, b, c, d, epi)  # one C-level call, when the driver can
            if run is None:
                kernel = driver.prepare_gemm(op)
                run = lambda: kernel(a, b, c, d, epi)  # noqa: E731
            return run
        src, dst = copy_arrays(op, self.memory)
        host = isinstance(src, np.ndarray) and isinstance(dst, np.ndarray)  # else a driver's device memory
        if host and not src.size:
            return _nothing
        whole = lambda: driver.copy(op, src, dst)  # type: ignore[arg-type]  # noqa: E731
        if host and src.size > self.slice_units and src.shape[0] > 1:
            def piece(_b0: int, _b1: int, r0: int, r1: int) -> Run:
                s, t = src[r0:r1], dst[r0:r1]
                return lambda: driver.copy(op, s, t)  # type: ignore[arg-type]
            return SlicedRun(whole, piece, 1, src.shape[0], src.shape[1])
        return whole

    def _gemm_slice(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                    epi: tuple, b0: int, b1: int, r0: int, r1: int) -> Run:
        m = op.m
        sub = dataclasses.replace(op, m=r1 - r0, batch=b1 - b0)
        kernel = self.driver.prepare_gemm(sub)
        sa = _slice_rows(a, b0, b1, r0, r1, m)
        sb = b[b0:b1]
        sc = _slice_rows(c, b0, b1, r0, r1, m)
        sd = _slice_rows(d, b0, b1, r0, r1, m)
        se = tuple(_slice_rows(x, b0, b1, r0, r1, m) for x in epi)
        return lambda: kernel(sa, sb, sc, sd, se)

    def get_all(self, ops: tuple[Op, ...]) -> RunBlock:
        """The runs of a whole validated block; a block the cache returned whole is looked up once."""
        return _by_identity(self._blocks, ops, self.block)

    def block(self, ops: tuple[Op, ...]) -> RunBlock:
        runs = self._grouped(ops) if self._groups and len(ops) >= MIN_GROUP else [self.get(op) for op in ops]
        heavy = (any(type(r) is SlicedRun for r in runs)
                 or sum(op_units(op) for op in ops) > self.slice_units)
        return RunBlock(runs, heavy, block_usage(ops))

    def _groupable(self, op: Op) -> bool:
        """A GEMM that could share a call: it computes something, runs whole (not in slices) and
        names host memory (a NumPy array: its address is known)."""
        return (type(op) is GemmOp and op.batch > 0 and op.m > 0 and op.n > 0
                and op_units(op) <= self.slice_units and isinstance(self.memory(op.d.handle), np.ndarray))

    def _grouped(self, ops: tuple[Op, ...]) -> list[Run]:
        """The runs of ``ops``, each span of consecutive independent GEMMs of one geometry bound as one
        call where the driver takes it (:meth:`~ffaccel.drivers.base.Driver.bind_gemm_group`)."""
        runs: list[Run] = []
        addresses: dict[int, int] = {}

        def address(handle: int) -> int:
            at = addresses.get(handle)
            if at is None:
                at = addresses[handle] = self.memory(handle).__array_interface__["data"][0]
            return at

        i, n = 0, len(ops)
        while i < n:
            op = ops[i]
            j = i + 1
            if self._groupable(op):
                key = geometry_key(op)  # (the same geometry: groupable too, but for its memory's kind)
                while (j < n and type(ops[j]) is GemmOp and geometry_key(ops[j]) == key  # type: ignore[arg-type]
                       and isinstance(self.memory(ops[j].d.handle), np.ndarray)):
                    j += 1
            if j - i < MIN_GROUP:
                runs.extend(self.get(o) for o in ops[i:j])
            else:
                same = ops[i:j]
                for lo, hi in independent_spans(same, address):  # type: ignore[arg-type]
                    runs.extend(self._group(same[lo:hi]))  # type: ignore[arg-type]
            i = j
        return runs

    def _group(self, ops: Sequence[GemmOp]) -> list[Run]:
        """One run for independent GEMMs of one geometry where their operands stack (each steps through
        one buffer by a constant stride) and the driver binds them together, else one run each."""
        if len(ops) >= MIN_GROUP:
            arrays = gemm_group_arrays(ops, self.memory)
            if arrays is not None:
                run = self.driver.bind_gemm_group(ops[0], *arrays)
                if run is not None:
                    return [run]
        return [self.get(op) for op in ops]

    def clear(self) -> None:
        self._runs.clear()
        self._blocks.clear()


@dataclass(frozen=True)
class RecordedList:
    """A command list: validated once, its runs bound, replayed by checking only what can change."""

    engine: Engine
    opcodes: frozenset[Opcode]
    handles: tuple[int, ...]
    runs: tuple[Run, ...]
    charged_bytes: int = 0


class SubmissionPlans:
    """Submissions validated and bound to their runs.

    Three memos, all exact: the validator's (:class:`ValidationCache`), the bound runs
    (:class:`BoundRuns`), and the last submission itself, so that a loop resubmitting the
    same bytes costs one comparison. That last one is dropped whenever a buffer is freed
    (the only change that can turn a valid submission invalid: handles are never reused,
    and waits name values that only stay reachable), and when the session closes.

    ``last``: that memo, ``(raw, engine, runs, waits)`` of the last submission planned from a
    ``bytes`` object, or None. While it holds the same ``raw``, that submission is still valid
    as it was planned (the server's repeat path reads it: ``Client.repeat``).
    """

    def __init__(self, driver: Driver, memory: Callable[[int], Any], caps: DeviceCaps,
                 size_of: Callable[[int], int | None], submitted: Callable[[Engine], int],
                 live_handles: Callable[[], Iterable[int]], limits: SessionLimits | None = None) -> None:
        limits = limits or SessionLimits()
        self.caps = caps
        self.size_of = size_of
        self.live_handles = live_handles
        self.submitted = submitted
        self.cache = ValidationCache(limits.max_memo_entries)
        self.runs = BoundRuns(driver, memory, limits.max_memo_entries, limits.slice_units)
        self.last: tuple[bytes, Engine, RunBlock, tuple[tuple[Engine, int], ...]] | None = None

    def plan(self, raw: bytes | memoryview) -> tuple[Engine, tuple[Run, ...], tuple[tuple[Engine, int], ...]]:
        """(engine, runs, waits) of a whole submission; raises on the first broken rule."""
        last = self.last
        if last is not None and last[0] == raw:
            return last[1], last[2], last[3]
        sub = check_submission(raw, self.caps, self.size_of, self.submitted, self.cache)
        runs = self.runs.get_all(sub.ops)
        if type(raw) is bytes:
            self.last = (raw, sub.engine, runs, sub.waits)
        return sub.engine, runs, sub.waits

    def record(self, raw: bytes, charged_bytes: int = 0) -> RecordedList:
        """Validate a submission once, on its engine's terms, and bind its runs for replays."""
        sub = check_submission(raw, self.caps, self.size_of, self.submitted)
        if sub.waits:
            raise violation("submit.wait", f"wait_count = {len(sub.waits)}",
                            "0 (a command list's waits are given at replay)")
        return RecordedList(sub.engine,
                            frozenset(Opcode.GEMM if isinstance(op, GemmOp) else Opcode.COPY for op in sub.ops),
                            tuple(sorted({h for op in sub.ops for h in op_handles(op)})),
                            self.runs.block(sub.ops), charged_bytes)

    def replay(self, recorded: RecordedList, engine: int, waits: Sequence[tuple[int, int]]
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
        self.last = None
        self.runs.clear()

    def clear(self) -> None:
        self.buffer_freed()
        self.cache.clear()


# ------------------------------------------------------------------------------------------
# the session


@dataclass
class Mapping:
    """One entry of a handle table: the memory object, its byte view and what it costs the client."""

    memory: Any  # what the owner releases (a server's SharedMem, a driver's array)
    array: Any  # what kernels address (a uint8 NumPy array, or a driver's DeviceMemory)
    size_bytes: int
    charged_bytes: int


class Session:
    """One client's handle table, charges, timelines, command lists, errors and memos.

    Parameters
    ----------
    driver : Driver
        The driver that runs the client's work.
    caps : DeviceCaps
        What the driver declares (the validator's terms).
    limits : SessionLimits
        The per-client bounds (memory, mappings, command lists, memos).

    Examples
    --------
    >>> from ffaccel.drivers.ref import RefDriver
    >>> s = Session(RefDriver(), RefDriver().caps(), SessionLimits(max_memory_bytes=1024))
    >>> import numpy as np
    >>> h = s.add_mapping(None, np.zeros(256, np.uint8), 256)
    >>> s.used_bytes, s.mapping_count
    (256, 1)
    """

    def __init__(self, driver: Driver, caps: DeviceCaps, limits: SessionLimits) -> None:
        self.caps = caps
        self.limits = limits
        self.table: dict[int, Mapping] = {}
        self._handles = itertools.count(1)
        self.used_bytes = 0
        self.submitted = {e: 0 for e in Engine}
        self.completed = {e: 0 for e in Engine}
        self.lists: dict[int, RecordedList] = {}
        self._list_ids = itertools.count(1)
        self.errors: collections.OrderedDict[int, FFAccelError] = collections.OrderedDict()
        self._error_ids = itertools.count(1)
        table = self.table
        self.plans = SubmissionPlans(driver, lambda h: table[h].array, caps, self.size_of,
                                     self.submitted.__getitem__, table.keys, limits)
        self.closed = False
        #: What this client had accepted: commands, FLOPs, bytes (:mod:`ffaccel.transports.usage`).
        self.usage = UsageCounter()

    # -- memory --------------------------------------------------------------------------------
    @property
    def mapping_count(self) -> int:
        return len(self.table)

    def size_of(self, handle: int) -> int | None:
        entry = self.table.get(handle)
        return None if entry is None else entry.size_bytes

    def check_size(self, size_bytes: object) -> int:
        """A valid ALLOC size, as an int (``memory.size``)."""
        limit = min(SPEC_LIMITS.max_buffer_bytes, self.caps.limits.max_buffer_bytes)
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, (int, np.integer)) \
                or not 1 <= size_bytes <= limit:
            raise violation("memory.size", size_bytes, f"an integer in [1, {limit}]")
        return int(size_bytes)

    def check_room(self, charge_bytes: int, mappings: int = 1) -> None:
        """Refuse, before anything is allocated, what would exceed this client's limits."""
        self.check_open()
        lim = self.limits
        if mappings and len(self.table) + mappings > lim.max_mappings:
            raise violation("memory.mappings", f"{len(self.table) + mappings} buffers",
                            f"at most {lim.max_mappings} per client (SessionLimits.max_mappings)")
        quota = lim.max_memory_bytes
        if quota is not None and self.used_bytes + charge_bytes > quota:
            raise violation("memory.quota", charge_bytes,
                            f"<= {quota - self.used_bytes} bytes left of {quota} (over quota)")

    def add_mapping(self, memory: Any, array: Any, size_bytes: int, charge_bytes: int | None = None) -> int:
        """Enter memory in the table (after :meth:`check_room`); returns its new handle.

        Every mapping is charged, imported ones included: a client cannot hold more than its
        quota by importing its own exported buffers.
        """
        charge = size_bytes if charge_bytes is None else charge_bytes
        self.check_room(charge)
        handle = next(self._handles)
        self.table[handle] = Mapping(memory, array, size_bytes, charge)
        self.used_bytes += charge
        return handle

    def remove_mapping(self, handle: int) -> Mapping:
        """Take a handle out of the table (``memory.handle`` if it names nothing); returns its entry."""
        entry = self.table.pop(handle, None) if isinstance(handle, int) else None
        if entry is None:
            raise violation("memory.handle", handle, f"one of {sorted(self.table)}")
        self.used_bytes -= entry.charged_bytes
        self.plans.buffer_freed()  # bound runs hold views of the mapping: let it go
        for lid, rec in self.lists.items():
            if handle in rec.handles and rec.runs:
                # the list can never replay (handles are never reused): drop its views of the
                # freed memory, or lists would pin memory the quota no longer counts
                self.lists[lid] = dataclasses.replace(rec, runs=RunBlock((), False))
        return entry

    # -- work ------------------------------------------------------------------------------------
    def plan(self, raw: bytes | memoryview) -> tuple[Engine, tuple[Run, ...], tuple[tuple[Engine, int], ...]]:
        """Validate a whole submission: (engine, runs, waits). Nothing is assigned yet."""
        if self.closed:
            self.check_open()
        return self.plans.plan(raw)

    def assign(self, engine: Engine, runs: RunBlock) -> int:
        """The next fence value on ``engine`` (call only once the submission of ``runs`` is accepted).

        Every transport calls it for every accepted submission and replay: the one place they
        are counted (``runs.usage`` into :attr:`usage`).
        """
        value = self.submitted[engine] + 1
        self.submitted[engine] = value
        self.usage.add(runs.usage)
        return value

    # -- command lists -----------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        """Validate a submission once and keep it as a command list (counted and charged)."""
        self.check_open()
        lim = self.limits
        if len(self.lists) >= lim.max_command_lists:
            raise violation("cmdlist.limit", f"{len(self.lists) + 1} command lists",
                            f"at most {lim.max_command_lists} per client (SessionLimits.max_command_lists)")
        charge = len(raw) + lim.command_list_overhead_bytes
        self.check_room(charge, mappings=0)
        recorded = self.plans.record(raw, charge)
        lid = next(self._list_ids)
        self.lists[lid] = recorded
        self.used_bytes += charge
        return lid

    def replay(self, lid: int, engine: int, waits: Sequence[tuple[int, int]]
               ) -> tuple[Engine, tuple[Run, ...], tuple[tuple[Engine, int], ...]]:
        self.check_open()
        recorded = self.lists.get(lid)
        if recorded is None:
            raise violation("cmdlist.id", lid, f"one of {sorted(self.lists)}")
        eng, checked_waits = self.plans.replay(recorded, engine, waits)
        return eng, recorded.runs, checked_waits

    def free_list(self, lid: int) -> None:
        recorded = self.lists.pop(lid, None)
        if recorded is None:
            raise violation("cmdlist.id", lid, f"one of {sorted(self.lists)}")
        self.used_bytes -= recorded.charged_bytes

    # -- errors, lifetime --------------------------------------------------------------------------
    def keep_error(self, e: FFAccelError) -> int:
        """Keep an error that a completion refers to by id (the newest ``max_kept_errors``)."""
        eid = next(self._error_ids)
        self.errors[eid] = e
        while len(self.errors) > self.limits.max_kept_errors:
            self.errors.popitem(last=False)
        return eid

    def check_open(self) -> None:
        if self.closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the connection is closed")

    def close(self) -> list[Mapping]:
        """Forget everything; returns the mappings the owner must release."""
        self.closed = True
        entries = list(self.table.values())
        self.table.clear()
        self.lists.clear()
        self.plans.clear()
        self.used_bytes = 0
        return entries


__all__ = ["MIN_GROUP", "BoundRuns", "Mapping", "RecordedList", "RunBlock", "Session", "SlicedRun", "SubmissionPlans",
           "geometry_key", "independent_spans", "op_units"]
