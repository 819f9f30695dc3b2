"""The transport mutants of the seeded-bug catalogue: the in-process transport with one bug each
(what a device's runtime side gets wrong: validation it skips, fences it signals early, memos
it keeps). Each wraps any driver, so a partial device gets them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import numpy as np

from ...abi import COMMAND_BYTES, COPY, GEMM, SUBMIT, WAIT
from ...drivers.base import Driver
from ...spec import DType, Engine, Opcode
from ...transports import InprocTransport


class _ReservedBlindTransport(InprocTransport):
    """Zeroes reserved fields before validating: a device that accepts garbage in them."""

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        buf = bytearray(raw)
        for f, off in SUBMIT.offsets():
            if f.reserved:
                buf[off:off + (4 if f.fmt == "I" else 8)] = bytes(4 if f.fmt == "I" else 8)
        n_wait, n_cmd = SUBMIT.struct.unpack_from(buf, 0)[4], SUBMIT.struct.unpack_from(buf, 0)[3]
        base = SUBMIT.size_bytes + n_wait * 16
        for i in range(n_cmd):
            start = base + i * COMMAND_BYTES
            for f, off in GEMM.offsets():
                if f.reserved and start + off + 8 <= len(buf):
                    width = 4 if f.fmt == "I" else 8
                    buf[start + off:start + off + width] = bytes(width)
        return super().submit(bytes(buf))


class _HalfExecutingTransport(InprocTransport):
    """Validates and runs commands one by one: a rejected submission has half run."""

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        from ...abi import encode_submission

        head = SUBMIT.struct.unpack_from(raw, 0)
        engine, n_cmd, n_wait = head[1], head[3], head[4]
        base = SUBMIT.size_bytes + n_wait * 16
        waits = raw[SUBMIT.size_bytes:base]
        if n_cmd <= 1:
            return super().submit(raw)
        result = None
        for i in range(n_cmd):
            one = encode_submission([raw[base + i * COMMAND_BYTES: base + (i + 1) * COMMAND_BYTES]], Engine(engine))
            if i == 0 and waits:
                one = raw[:SUBMIT.size_bytes] + waits + one[SUBMIT.size_bytes:]
                one = one[:12] + (1).to_bytes(4, "little") + one[16:]
            result = super().submit(one)
        assert result is not None
        return result


class _EarlyFenceTransport(InprocTransport):
    """Signals a submission's fence at once but runs its work only when the next one arrives.

    (A deterministic stand-in for a device that signals completion when work is queued.)
    """

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        self._pending: bytes | None = None

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        head = SUBMIT.struct.unpack_from(raw, 0)
        engine = Engine(head[1]) if head[1] in (0, 1) else Engine.COMPUTE
        earlier, self._pending = self._pending, raw
        if earlier is not None:
            with contextlib.suppress(Exception):  # the bug also loses the late work's errors
                engine_, _ = super().submit(earlier)
                self._timeline[engine_] -= 1  # its fence was already signalled below
        with self._lock:
            self._timeline[engine] += 1
            return engine, self._timeline[engine]


# --- transport-level bugs, one per rule family ------------------------------------------------


def _field_at(layout, name: str) -> tuple[str, int]:  # noqa: ANN001
    for f, off in layout.offsets():
        if f.name == name:
            return "<" + f.fmt, off
    raise KeyError(name)


def _command_offsets(raw: bytes) -> list[int]:
    """Where each command of a submission starts (only when the header's counts fit the bytes)."""
    if len(raw) < SUBMIT.size_bytes:
        return []
    head = SUBMIT.struct.unpack_from(raw, 0)
    n_cmd, n_wait = head[3], head[4]
    base = SUBMIT.size_bytes + n_wait * WAIT.size_bytes
    if n_cmd > 64 or base + n_cmd * COMMAND_BYTES > len(raw):
        return []
    return [base + i * COMMAND_BYTES for i in range(n_cmd)]


def _get(buf: bytearray, layout, name: str, base: int) -> int:  # noqa: ANN001
    fmt, off = _field_at(layout, name)
    return struct.unpack_from(fmt, buf, base + off)[0]


def _put(buf: bytearray, layout, name: str, base: int, value: int) -> None:  # noqa: ANN001
    fmt, off = _field_at(layout, name)
    struct.pack_into(fmt, buf, base + off, value)


class _PatchingTransport(InprocTransport):
    """Rewrites a submission's bytes before the validator sees them (each subclass one way)."""

    def patch(self, buf: bytearray) -> None:
        raise NotImplementedError

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        buf = bytearray(raw)
        self.patch(buf)
        return super().submit(bytes(buf))


class _SubmitFlagsBlindTransport(_PatchingTransport):
    """Clears unknown submission flag bits instead of refusing them."""

    def patch(self, buf: bytearray) -> None:
        if len(buf) >= SUBMIT.size_bytes:
            _put(buf, SUBMIT, "flags", 0, 0)


class _LdBlindTransport(_PatchingTransport):
    """Raises a leading dimension below the row length to the row length instead of refusing it."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM):
                continue
            for role in ("a", "b", "c", "d"):
                cols, ld = _get(buf, GEMM, f"{role}.cols", base), _get(buf, GEMM, f"{role}.ld_elems", base)
                if _get(buf, GEMM, f"{role}.handle", base) and ld < cols:
                    _put(buf, GEMM, f"{role}.ld_elems", base, cols)


class _IntScalarWrapTransport(_PatchingTransport):
    """Wraps integer alpha/beta outside the int32 range into it instead of refusing them."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM) or _get(buf, GEMM, "a.dtype", base) not in (
                    int(DType.I8), int(DType.U8)):
                continue
            for name in ("alpha_bits", "beta_bits"):
                v = _get(buf, GEMM, name, base)
                signed = v - 2**64 if v >= 2**63 else v
                if not -(2**31) <= signed < 2**31:
                    w = (signed + 2**31) % 2**32 - 2**31
                    _put(buf, GEMM, name, base, w % 2**64)


class _EpilogueSlotsBlindTransport(_PatchingTransport):
    """Zeroes epilogue slots past epilogue_count instead of refusing what is in them."""

    def patch(self, buf: bytearray) -> None:
        for base in _command_offsets(bytes(buf)):
            if _get(buf, GEMM, "opcode", base) != int(Opcode.GEMM):
                continue
            count = _get(buf, GEMM, "epilogue_count", base)
            for f, off in GEMM.offsets():
                if f.name.startswith("epilogue[") and int(f.name[9:f.name.index("]")]) >= count:
                    width = struct.calcsize("<" + f.fmt)
                    buf[base + off:base + off + width] = bytes(width)


class _CopyConversionBlindTransport(_PatchingTransport):
    """Makes an integer COPY's destination type match its source instead of refusing the conversion."""

    def patch(self, buf: bytearray) -> None:
        ints = (int(DType.I8), int(DType.U8), int(DType.I32))
        for base in _command_offsets(bytes(buf)):
            if _get(buf, COPY, "opcode", base) != int(Opcode.COPY):
                continue
            src, dst = _get(buf, COPY, "src.dtype", base), _get(buf, COPY, "dst.dtype", base)
            if (src in ints or dst in ints) and src != dst:
                _put(buf, COPY, "dst.dtype", base, src)


class _AllocRoundsUpTransport(InprocTransport):
    """Allocates one byte for a size of 0 or less instead of refusing it."""

    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]:
        if isinstance(size_bytes, int) and size_bytes <= 0:
            size_bytes = 1
        return super().alloc(size_bytes)


class _WaitReturnsAtDeadlineTransport(InprocTransport):
    """A wait that reaches its deadline returns as if the fence had signalled."""

    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None:
        return None


class _MemoIgnoresFreeTransport(InprocTransport):
    """Trusts bytes it has accepted before: a resubmission skips validation (and, with it, the
    check that its buffers are still alive) and goes straight to its fence."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        self._seen: set[bytes] = set()

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        from ...abi import encode_submission

        if raw in self._seen:
            head = SUBMIT.struct.unpack_from(raw, 0)
            return super().submit(encode_submission([], Engine(head[1])))
        result = super().submit(raw)
        self._seen.add(raw)
        return result


class _LastMemoKeptAfterFreeTransport(InprocTransport):
    """Remembers its last accepted submission; the same bytes again skip validation (and with it
    the check that their buffers are alive), and free() does not forget the memo. One entry
    only: any other submission in between (a probe of the timelines) replaces it and hides the bug."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        self._last: bytes | None = None

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        from ...abi import encode_submission

        if raw == self._last:
            head = SUBMIT.struct.unpack_from(raw, 0)
            return super().submit(encode_submission([], Engine(head[1])))
        result = super().submit(raw)
        self._last = bytes(raw)
        return result


class _ListCapturesEpilogueTransport(InprocTransport):
    """A command list captures its epilogue operands' *values* at RECORD: every replay computes
    with the bias / residual as they were then (the buffers themselves are left as they are)."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        self._captured: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}

    def record(self, raw: bytes) -> int:
        lid = super().record(raw)
        saved = []
        for base in _command_offsets(raw):
            if _get(bytearray(raw), GEMM, "opcode", base) != int(Opcode.GEMM):
                continue
            for i in range(_get(bytearray(raw), GEMM, "epilogue_count", base)):
                entry = self._session.table.get(_get(bytearray(raw), GEMM, f"epilogue[{i}].operand.handle", base))
                if entry is not None and isinstance(entry.array, np.ndarray):
                    saved.append((entry.array, entry.array.copy()))
        self._captured[lid] = saved
        return lid

    def replay(self, list_id: int, engine: Engine, waits) -> tuple[Engine, int]:  # noqa: ANN001
        captured = self._captured.get(list_id, [])
        now = [(arr, arr.copy()) for arr, _ in captured]
        for arr, old in captured:
            arr[...] = old
        try:
            return super().replay(list_id, engine, waits)
        finally:
            for arr, current in now:
                arr[...] = current


class _FenceOnOtherTimelineTransport(InprocTransport):
    """Keeps one completion counter for both engines: whether a fence has signalled is read from
    whichever timeline is further on (waits are right), so a fence of the engine that is behind
    reads as signalled once the other engine has passed its value."""

    def completed(self, engine: Engine) -> int:
        return max(InprocTransport.completed(self, e) for e in Engine)

    def signalled(self, engine: Engine, value: int) -> bool:
        return self.completed(engine) >= value


class _AlignmentDeclaredNotCheckedTransport(InprocTransport):
    """Declares ``limits.alignment_elems = 2`` in ``info`` (as a device whose DMA needs 2-element
    alignment would) but validates with the spec's alignment of 1: misaligned operands get through."""

    def __init__(self, driver: Driver) -> None:
        super().__init__(driver)
        caps = self._info.caps
        self._info = dataclasses.replace(self._info, caps=dataclasses.replace(
            caps, limits=dataclasses.replace(caps.limits, alignment_elems=2)))
