"""Bad input, one defect at a time: every abi and runtime validation rule (the Linux IGT pattern).

Each :class:`Case` builds a call twice from one recipe, on a fresh :class:`Env`: once *with*
its single defect and once without it. The defective call must raise
:class:`~ffaccel.spec.FFAccelError` with the rule's exact code, the exact parameter name and
the rule id, name the value it saw, and change nothing: every buffer of every device involved
is byte-identical afterwards and no fence value was consumed. The defect-free twin must be
accepted, which proves the defect was the only one.

Defects the dataclasses cannot express (reserved fields, flag bits, sizes, opcodes, padding,
header fields, waits) are made by encoding and patching the bytes at the field's offset,
found by name through the layouts (``GEMM.offsets()`` ...), never hard-coded.

:data:`CASES` lists the cases and :data:`RULE_CASES` maps each rule id to the ids of the cases
that trip it. Cases that need what a third-party device cannot be asked for (a driver that
declares less, a memory quota, the device registry) are not :attr:`Case.portable`: they are
built on the built-in ref driver whatever device is under test.
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import ml_dtypes
import numpy as np

from ..abi import (
    COMMAND_BYTES,
    COPY,
    GEMM,
    SUBMIT,
    WAIT,
    Copy,
    DeviceCaps,
    Gemm,
    Layout,
    Matrix,
    PostOpDesc,
    encode_submission,
)
from ..abi.layout import GEMM_FLAGS_KNOWN, MAX_EPILOGUE_SLOTS, MAX_WAITS_PER_SUBMIT
from ..drivers.ref import RefDriver
from ..runtime import Buffer, Device, Fence, open_device
from ..spec import (
    COMBO_BY_DTYPES,
    COPY_CONVERSIONS,
    RULES,
    DType,
    Engine,
    ErrorCode,
    FFAccelError,
    Limits,
    PostOpKind,
)
from ..transports import InprocTransport
from .engines import _with_watchdog
from .runner import CaseResult

#: Opens a new device (a new client, with a handle table and timelines of its own) per call.
DeviceFactory = Callable[[], Device]
#: (env, with the defect?) -> the call to make.
Builder = Callable[["Env", bool], Callable[[], Any]]

BF16 = ml_dtypes.bfloat16
M, N, K = 3, 4, 5
#: A value for patched fields that cannot be mistaken for anything else in a message.
JUNK = 0x5A5A  # 23130
#: How long one case (both twins) may take before the device is declared hung.
CASE_WATCHDOG_S = 20.0
#: Timeout of the wait on the fence of an accepted defect-free twin.
FENCE_WAIT_NS = 10 * 10**9

# ------------------------------------------------------------------------------------------
# environment: devices and buffers of one case, so that "nothing changed" covers all of them


class CapsDriver(RefDriver):
    """The ref driver, declaring whatever capabilities a case wants (less than the full set)."""

    def __init__(self, caps: DeviceCaps) -> None:
        super().__init__()
        self._caps = caps

    def caps(self) -> DeviceCaps:
        return self._caps


def _values(rng: np.random.Generator, dtype: Any, count: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt in (np.dtype(np.int8), np.dtype(np.int32)):
        return rng.integers(-5, 6, count).astype(dt)
    if dt == np.dtype(np.uint8):
        return rng.integers(0, 6, count).astype(dt)
    return rng.uniform(-2, 2, count).astype(dt)


class Env:
    """The devices and buffers one case uses; snapshots all of them.

    ``factory`` opens the device under test; "another client" is another device from it.
    The ``open_caps`` / ``open_limits`` / ``opener`` devices are the built-in ref driver's
    (and set :attr:`used_nonportable`).
    """

    def __init__(self, factory: DeviceFactory) -> None:
        self.factory = factory
        self.rng = np.random.default_rng(20240601)
        self.devices: list[Device] = []
        self.bufs: list[Buffer] = []
        #: True once the case used something only the ref driver can give (see Case.portable).
        self.used_nonportable = False
        self.dev = self.open_other()

    def open_other(self) -> Device:
        """Another client of the device under test."""
        dev = self.factory()
        self.devices.append(dev)
        return dev

    def open_caps(self, quota: int | None = None, **caps: Any) -> Device:
        """A ref device whose driver declares ``DeviceCaps(**caps)`` (and a memory quota)."""
        self.used_nonportable = True
        dev = Device("caps", InprocTransport(CapsDriver(DeviceCaps(**caps)), max_memory_bytes=quota))
        self.devices.append(dev)
        return dev

    def open_limits(self, **limits: Any) -> Device:
        return self.open_caps(limits=Limits(**limits))

    def opener(self, name: Any) -> Callable[[], Device]:
        """A call that opens ``name`` through the device registry."""
        self.used_nonportable = True

        def call() -> Device:
            dev = open_device(name)
            self.devices.append(dev)
            return dev
        return call

    def alloc(self, nbytes: int, dev: Device | None = None) -> Buffer:
        buf = (dev or self.dev).alloc(nbytes)
        self.bufs.append(buf)
        return buf

    def filled(self, dtype: Any, count: int, dev: Device | None = None) -> Buffer:
        """A buffer of exactly ``count`` random elements of ``dtype``."""
        dt = np.dtype(dtype)
        buf = self.alloc(max(1, count) * dt.itemsize, dev)
        buf.write(_values(self.rng, dt, max(1, count)))
        return buf

    def snapshot(self) -> list[bytes]:
        return [bytes(b.read(np.uint8, b.size_bytes)) for b in self.bufs]  # works for device memory too

    def probe_timelines(self) -> dict[tuple[int, Engine], int]:
        """Submit an empty submission on every engine of every device; the fence values seen."""
        out = {}
        for i, dev in enumerate(self.devices):
            for e in sorted(dev.info().caps.engines):
                out[(i, e)] = dev.submit([], engine=e).value
        return out

    def close(self) -> None:
        for dev in self.devices:
            try:
                dev.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def __enter__(self) -> Env:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Std:
    """A valid GEMM ``D = alpha * A @ B + beta * C``: A, B, C, D each in a buffer of its own.

    ``pad`` extra elements follow each matrix in its buffer (0: buffers sized exactly).
    """

    def __init__(self, env: Env, dt: Any = np.float32, d_dt: Any = None, *, m: int = M, n: int = N, k: int = K,
                 batch: int = 1, dev: Device | None = None, pad: int = 0) -> None:
        self.env, self.dev = env, dev or env.dev
        self.dt = np.dtype(dt)
        self.is_int = self.dt in (np.dtype(np.int8), np.dtype(np.uint8))
        self.d_dt = np.dtype(d_dt) if d_dt is not None else (np.dtype(np.int32) if self.is_int else self.dt)
        self.m, self.n, self.k, self.batch = m, n, k, batch
        self.A, self.a = self.operand(self.dt, m, k, pad)
        self.B, self.b = self.operand(self.dt, k, n, pad)
        self.C, self.c = self.operand(self.d_dt, m, n, pad)
        self.D, self.d = self.operand(self.d_dt, m, n, pad)

    def operand(self, dt: Any, rows: int, cols: int, pad: int = 0) -> tuple[Buffer, Matrix]:
        """A fresh buffer holding one rows x cols matrix per batch entry (plus ``pad`` elements)."""
        per = rows * cols
        buf = self.env.filled(dt, per * self.batch + pad, self.dev)
        return buf, buf.matrix(dt, rows, cols, batch_stride_elems=per if self.batch > 1 else 0)

    def vector(self, dt: Any, rows: int, cols: int) -> Matrix:
        """A bias / residual operand that does not vary over the batch (batch stride 0)."""
        buf = self.env.filled(dt, rows * cols, self.dev)
        return buf.matrix(dt, rows, cols)

    def gemm(self, **kw: Any) -> Gemm:
        f: dict[str, Any] = dict(m=self.m, n=self.n, k=self.k, batch=self.batch, a=self.a, b=self.b, c=self.c,
                                 d=self.d, alpha=2 if self.is_int else 1.5, beta=-1 if self.is_int else 0.5)
        f.update(kw)
        return Gemm(**f)

    def submit(self, *cmds: Gemm | Copy | bytes, engine: str = "compute") -> Callable[[], Any]:
        return lambda: self.dev.submit(list(cmds), engine=engine)

    def submit_raw(self, raw: bytes) -> Callable[[], Any]:
        return lambda: self.dev.submit_raw(raw)


# ------------------------------------------------------------------------------------------
# byte patching, by field name


def _field(layout: Layout, name: str) -> tuple[str, int]:
    for f, off in layout.offsets():
        if f.name == name:
            return "<" + f.fmt, off
    raise KeyError(f"{layout.name} has no field {name!r}")


def patch(raw: bytes, layout: Layout, patches: dict[str, int] | None, base: int = 0) -> bytes:
    """``raw`` with the named fields of the struct at ``base`` set to new values (None: unchanged)."""
    if not patches:
        return raw
    out = bytearray(raw)
    for name, value in patches.items():
        fmt, off = _field(layout, name)
        struct.pack_into(fmt, out, base + off, value)
    return bytes(out)


def patch_cmd(cmd: Gemm | Copy, patches: dict[str, int] | None) -> bytes:
    """One encoded command with fields patched."""
    return patch(cmd.encode(), GEMM if isinstance(cmd, Gemm) else COPY, patches)


def patch_bytes(raw: bytes, offset: int, value: int) -> bytes:
    out = bytearray(raw)
    out[offset] = value
    return bytes(out)


def u64(x: int) -> int:
    return x & 0xFFFF_FFFF_FFFF_FFFF


# ------------------------------------------------------------------------------------------
# the case table


@dataclass(frozen=True)
class Case:
    """One defect. ``seen`` must appear in the error's message (``{device}``: the device's name)."""

    id: str
    rule: str
    param: str
    seen: str
    build: Builder = field(repr=False)
    command_index: int | None = None  # for submissions: the index the error must carry
    portable: bool = True  # False: needs the ref driver (a smaller caps(), a quota, the registry)

    @property
    def code(self) -> ErrorCode:
        return RULES[self.rule].code

    def seen_in(self, env: Env) -> str:
        """The text the error's message must contain, for the devices of ``env``."""
        return self.seen.replace("{device}", repr(env.dev.name))


CASES: list[Case] = []
RULE_CASES: dict[str, list[str]] = defaultdict(list)


def case(rule: str, param: str, seen: str, detail: str, build: Builder, command_index: int | None = None, *,
         portable: bool = True) -> None:
    c = Case(f"{rule}-{detail}", rule, param, seen, build, command_index, portable)
    if c.id in {x.id for x in CASES}:
        raise ValueError(f"duplicate case id {c.id}")
    CASES.append(c)
    RULE_CASES[rule].append(c.id)


def gemm_patch_case(rule: str, param: str, seen: str, detail: str, patches: dict[str, int], dt: Any = np.float32,
                    **gemm_kw: Any) -> None:
    """A case: the standard GEMM, encoded, with ``patches`` applied to the defective twin."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, dt)
        return s.submit_raw(encode_submission([patch_cmd(s.gemm(**gemm_kw), patches if bad else None)]))
    case(rule, param, seen, detail, build)


def copy_patch_case(rule: str, param: str, seen: str, detail: str, patches: dict[str, int]) -> None:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        cmd = Copy(src=s.c, dst=s.d)
        return s.submit_raw(encode_submission([patch_cmd(cmd, patches if bad else None)], Engine.COPY))
    case(rule, param, seen, detail, build)


# --- submissions -----------------------------------------------------------------------------

def _sub_header_case(rule: str, param: str, seen: str, detail: str, patches: dict[str, int]) -> None:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        return s.submit_raw(patch(encode_submission([s.gemm()]), SUBMIT, patches if bad else None))
    case(rule, param, seen, detail, build)


for _v in (0, 2, JUNK):
    _sub_header_case("submit.abi_version", "abi_version", str(_v), f"version-{_v}", {"abi_version": _v})

_sub_header_case("submit.engine", "engine", "got 2", "raw-engine-2", {"engine": 2})
_sub_header_case("submit.engine", "engine", str(JUNK), "raw-engine-junk", {"engine": JUNK})


def _engine_by_name(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    return s.submit(s.gemm(), engine="video" if bad else "compute")


case("submit.engine", "engine", "video", "unknown-name", _engine_by_name)


def _engine_undeclared(env: Env, bad: bool) -> Callable[[], Any]:
    # a device that declares the compute engine only: the copy engine does not exist there
    dev = env.open_caps(engines=frozenset({Engine.COMPUTE}))
    s = Std(env, dev=dev)
    return s.submit(Copy(src=s.c, dst=s.d), engine="copy" if bad else "compute")


case("submit.engine", "engine", "got 1", "copy-engine-undeclared", _engine_undeclared, portable=False)

for _bit in range(32):
    _sub_header_case("submit.flags", "flags", hex(1 << _bit), f"bit{_bit}", {"flags": 1 << _bit})

for _name in (n for n in SUBMIT.names if "reserved" in n):
    _sub_header_case("submit.reserved", "reserved", f"{_name} = {JUNK}", _name, {_name: JUNK})


def _wait_reserved(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    value = env.dev.submit([]).value
    raw = encode_submission([s.gemm()], waits=[(Engine.COMPUTE, value)])
    return s.submit_raw(patch(raw, WAIT, {"reserved": JUNK} if bad else None, base=SUBMIT.size_bytes))


case("submit.reserved", "reserved", f"wait[0].reserved = {JUNK}", "wait-reserved", _wait_reserved)

_sub_header_case("submit.command_count", "command_count", "3 commands in", "count-3-of-1", {"command_count": 3})


def _count_of_two(header: dict[str, int] | None, cut: int | None = None, extra: bytes = b"") -> Builder:
    """Two valid GEMMs; the defective twin patches the header, cuts the bytes or appends some."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        _, d2m = s.operand(s.d_dt, s.m, s.n)
        raw = encode_submission([s.gemm(), s.gemm(d=d2m)])
        if bad:
            raw = patch(raw, SUBMIT, header)
            raw = (raw[:cut] if cut is not None else raw) + extra
        return s.submit_raw(raw)
    return build


case("submit.command_count", "command_count", "1 commands in", "count-1-of-2", _count_of_two({"command_count": 1}))
case("submit.command_count", "command_count", "2 commands in", "truncated-by-8", _count_of_two(None, -8))
case("submit.command_count", "command_count", f"got {SUBMIT.size_bytes - 8} bytes", "shorter-than-header",
     _count_of_two(None, SUBMIT.size_bytes - 8))
case("submit.command_count", "command_count", "2 commands in", "one-byte-extra", _count_of_two(None, None, b"\0"))


def _wait_unsubmitted(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    value = env.dev.submit([]).value  # 1: the compute timeline is at 1 (2 once the test has probed it)
    return lambda: env.dev.submit([s.gemm()], wait=[Fence(env.dev, Engine.COMPUTE, value + (10 if bad else 0))])


case("submit.wait", "wait", "wait[0].value = 11", "never-submitted-value", _wait_unsubmitted)


def _wait_raw(waits_bad: list[tuple[int, int]], waits_good: list[tuple[int, int]],
              dev_caps: dict[str, Any] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_caps(**dev_caps) if dev_caps else env.dev
        s = Std(env, dev=dev)
        return s.submit_raw(encode_submission([s.gemm()], waits=waits_bad if bad else waits_good))
    return build


case("submit.wait", "wait", "wait[0].engine = 5", "unknown-engine", _wait_raw([(5, 0)], [(0, 0)]))
case("submit.wait", "wait", "wait[0].engine = 1", "undeclared-engine",
     _wait_raw([(int(Engine.COPY), 0)], [(int(Engine.COMPUTE), 0)], {"engines": frozenset({Engine.COMPUTE})}),
     portable=False)
case("submit.wait", "wait", f"wait_count = {MAX_WAITS_PER_SUBMIT + 1}", "too-many-waits",
     _wait_raw([(0, 0)] * (MAX_WAITS_PER_SUBMIT + 1), [(0, 0)] * MAX_WAITS_PER_SUBMIT))


def _wait_foreign_fence(env: Env, bad: bool) -> Callable[[], Any]:
    other = env.open_other()
    foreign = other.submit([])
    own = env.dev.submit([])
    s = Std(env)
    return lambda: env.dev.submit([s.gemm()], wait=[foreign if bad else own])


case("submit.wait", "wait", "a fence of device", "fence-of-another-device", _wait_foreign_fence)


def _gemm_on_copy_engine(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    return s.submit(s.gemm(), engine="copy" if bad else "compute")


case("submit.engine_opcode", "engine", "GEMM on COPY", "gemm-on-copy", _gemm_on_copy_engine)

# --- every command ---------------------------------------------------------------------------

for _v in (0, 3, 0xFFFF_FFFF):
    gemm_patch_case("cmd.opcode", "opcode", f"got {_v}", f"opcode-{_v}", {"opcode": _v})

for _v in (0, 8, COMMAND_BYTES - 8, COPY.size_bytes, COMMAND_BYTES + 8):
    gemm_patch_case("cmd.size", "size_bytes", f"got {_v}", f"gemm-size-{_v}", {"size_bytes": _v})
copy_patch_case("cmd.size", "size_bytes", f"got {COPY.size_bytes}", "copy-size-own-struct",
                {"size_bytes": COPY.size_bytes})

for _bit in range(32):
    if (1 << _bit) & GEMM_FLAGS_KNOWN:
        continue
    gemm_patch_case("cmd.flags", "flags", hex(1 << _bit), f"gemm-bit{_bit}", {"flags": 1 << _bit})
for _bit in range(32):
    copy_patch_case("cmd.flags", "flags", hex(1 << _bit), f"copy-bit{_bit}", {"flags": 1 << _bit})

GEMM_RESERVED = [n for n in GEMM.names if "reserved" in n]
COPY_RESERVED = [n for n in COPY.names if "reserved" in n]

for _name in GEMM_RESERVED:
    gemm_patch_case("cmd.reserved", _name, f"got {JUNK}", f"gemm-{_name}", {_name: JUNK})
for _name in GEMM_RESERVED:  # also with every epilogue slot in use
    if _name.startswith("epilogue["):
        gemm_patch_case("cmd.reserved", _name, f"got {JUNK}", f"gemm-4-relus-{_name}", {_name: JUNK},
                        epilogue=(PostOpDesc(PostOpKind.RELU),) * MAX_EPILOGUE_SLOTS)
for _name in COPY_RESERVED:
    copy_patch_case("cmd.reserved", _name, f"got {JUNK}", f"copy-{_name}", {_name: JUNK})


def _copy_padding(offset: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        cmd = Copy(src=s.c, dst=s.d).encode()
        return s.submit_raw(encode_submission([patch_bytes(cmd, offset, 0x01) if bad else cmd], Engine.COPY))
    return build


for _off in (COPY.size_bytes, (COPY.size_bytes + COMMAND_BYTES) // 2, COMMAND_BYTES - 1):
    case("cmd.reserved", f"bytes[{COPY.size_bytes}:]", "nonzero bytes", f"copy-padding-byte-{_off}",
         _copy_padding(_off))

# --- operands --------------------------------------------------------------------------------


def _absent(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        return s.submit(s.gemm(**({role: None} if bad else {})))
    return build


for _role in ("a", "b", "d"):
    case("operand.present", f"{_role}.handle", "got 0", f"gemm-{_role}-absent", _absent(_role))


def _c_absent_beta(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    return s.submit(s.gemm(c=None, beta=0.5 if bad else 0.0))


case("operand.present", "c.handle", "got 0", "gemm-c-absent-beta-nonzero", _c_absent_beta)


def _epi_absent(kind: PostOpKind) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        shape = {PostOpKind.BIAS_N: (1, N), PostOpKind.BIAS_M: (M, 1), PostOpKind.ADD: (M, N)}[kind]
        operand = None if bad else s.vector(s.d_dt, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=operand),)))
    return build


for _kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
    case("operand.present", "epilogue[0].operand.handle", "got 0", f"{_kind.name.lower()}-without-operand",
         _epi_absent(_kind))
for _role in ("src", "dst"):
    copy_patch_case("operand.present", f"{_role}.handle", "got 0", f"copy-{_role}-absent", {f"{_role}.handle": 0})

for _key, _v in (("dtype", 2), ("offset_bytes", 4), ("rows", 3), ("cols", 4), ("ld_elems", 4),
                 ("batch_stride_elems", 12)):
    gemm_patch_case("operand.absent_zero", "c", f"c.{_key} = {_v}", f"c-{_key}", {f"c.{_key}": _v},
                    c=None, beta=0.0)
    gemm_patch_case("operand.absent_zero", "epilogue[0].operand", f"epilogue[0].operand.{_key} = {_v}",
                    f"relu-operand-{_key}", {f"epilogue[0].operand.{_key}": _v},
                    epilogue=(PostOpDesc(PostOpKind.RELU),))


def _freed(role: str) -> Builder:
    """The operand ``role`` moved to a buffer of its own, which the defective twin frees first."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        epi: tuple[PostOpDesc, ...] = ()
        if role in ("a", "b", "c", "d"):
            old: Matrix = getattr(s, role)
            buf = env.filled(np.float32, old.rows * old.cols)
            mat = buf.matrix(np.float32, old.rows, old.cols)
            kw: dict[str, Any] = {role: mat}
            if role == "d":
                kw["c"] = None  # keep C out of the way: this case is about D's handle
                kw["beta"] = 0.0
        else:
            kind, shape = {"bias": (PostOpKind.BIAS_N, (1, N)), "add": (PostOpKind.ADD, (M, N))}[role]
            buf = env.filled(np.float32, shape[0] * shape[1])
            epi = (PostOpDesc(kind, operand=buf.matrix(np.float32, *shape)),)
            kw = {}
        if bad:
            buf.free()
        return s.submit(s.gemm(epilogue=epi, **kw))
    return build


for _role, _param in (("a", "a"), ("b", "b"), ("c", "c"), ("d", "d"), ("bias", "epilogue[0].operand"),
                      ("add", "epilogue[0].operand")):
    # handles are numbered from 1 per client: this one is the 5th buffer of the device
    case("operand.handle", f"{_param}.handle", "got 5", f"freed-{_role}", _freed(_role))


def _copy_freed(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        buf = env.filled(np.float32, M * N)
        mats = {"src": s.c, "dst": s.d, role: buf.matrix(np.float32, M, N)}
        if bad:
            buf.free()
        return s.submit(Copy(**mats), engine="copy")
    return build


for _role in ("src", "dst"):
    case("operand.handle", f"{_role}.handle", "got 5", f"copy-freed-{_role}", _copy_freed(_role))


def _resubmitted_after_free(role: str) -> Builder:
    """Identical bytes, accepted once (and memoised by a fast transport), submitted again after
    the operand's buffer was freed: the memo must not let them through."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        buf = env.filled(np.float32, M * N if role in ("c", "d", "src", "dst") else M * K)
        mat = buf.matrix(np.float32, *((M, N) if role in ("c", "d", "src", "dst") else (M, K)))
        if role in ("src", "dst"):
            raw = encode_submission([Copy(**{"src": s.c, "dst": s.d, role: mat})], Engine.COPY)
        else:
            raw = encode_submission([s.gemm(**{role: mat})])
        for _ in range(2):
            env.dev.submit_raw(raw).wait(timeout_ns=FENCE_WAIT_NS)
        if bad:
            buf.free()
        return s.submit_raw(raw)
    return build


for _role in ("a", "d", "src"):
    case("operand.handle", f"{_role}.handle", "got 5", f"resubmitted-after-free-{_role}",
         _resubmitted_after_free(_role))


def _foreign(role: str) -> Builder:
    """The operand ``role`` in a buffer of another client (another Device), same contents."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        other = env.open_other()
        for _ in range(7):  # so the foreign handle (8) is not also a handle of this client (1..4)
            env.alloc(8, other)
        old: Matrix = getattr(s, role)
        dev = other if bad else env.dev
        buf = env.alloc(old.rows * old.cols * 4, dev)
        src = getattr(s, role.upper())
        buf.write(src.read(np.float32, src.size_bytes // 4))  # read(): device memory has no NumPy view
        if bad and buf.handle != 8:
            raise RuntimeError(f"case setup: the 8th buffer of a new client got handle {buf.handle}")
        return s.submit(s.gemm(**{role: buf.matrix(np.float32, old.rows, old.cols)}))
    return build


for _role in ("a", "d"):
    case("operand.handle", f"{_role}.handle", "got 8", f"{_role}-of-another-client", _foreign(_role))
gemm_patch_case("operand.handle", "b.handle", "got 999", "b-never-allocated", {"b.handle": 999})

for _role, _v in (("a", 99), ("b", 0), ("d", 8), ("d", JUNK)):
    gemm_patch_case("operand.dtype", f"{_role}.dtype", f"got {_v}", f"{_role}-dtype-{_v}", {f"{_role}.dtype": _v})
for _role in ("src", "dst"):
    copy_patch_case("operand.dtype", f"{_role}.dtype", "got 99", f"copy-{_role}-dtype-99", {f"{_role}.dtype": 99})


def _bias_dtype_patch(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    cmd = s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=s.vector(np.float32, 1, N)),))
    return s.submit_raw(encode_submission([patch_cmd(cmd, {"epilogue[0].operand.dtype": 42} if bad else None)]))


case("operand.dtype", "epilogue[0].operand.dtype", "got 42", "bias-dtype-42", _bias_dtype_patch)


def _shape(role: str, dim: str, delta: int = 1) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, pad=N + K)
        mat: Matrix = getattr(s, role)
        if bad:
            mat = replace(mat, **{dim: getattr(mat, dim) + delta})
        return s.submit(s.gemm(**{role: mat}))
    return build


_DIMS = {"a": (M, K), "b": (K, N), "c": (M, N), "d": (M, N)}
for _role, (_r, _c) in _DIMS.items():
    case("operand.shape", f"{_role}.rows", f"got {_r + 1}", f"{_role}-rows", _shape(_role, "rows"))
    case("operand.shape", f"{_role}.cols", f"got {_c + 1}", f"{_role}-cols", _shape(_role, "cols"))


def _trans_shape(role: str) -> Builder:
    """trans_a / trans_b set, but the operand still stored untransposed (shapes differ: m != k != n)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mat: Matrix = getattr(s, role)
        stored = mat if bad else replace(mat, rows=mat.cols, cols=mat.rows, ld_elems=mat.rows)
        return s.submit(s.gemm(**{role: stored, f"trans_{role}": True}))
    return build


case("operand.shape", "a.rows", f"got {M}", "trans_a-untransposed", _trans_shape("a"))
case("operand.shape", "b.rows", f"got {K}", "trans_b-untransposed", _trans_shape("b"))


def _epi_shape(kind: PostOpKind, good: tuple[int, int], bad_shape: tuple[int, int]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        shape = bad_shape if bad else good
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), PostOpDesc(kind, operand=s.vector(
            np.float32, *shape)))))
    return build


case("operand.shape", "epilogue[1].operand.cols", f"got {N + 1}", "bias_n-too-long",
     _epi_shape(PostOpKind.BIAS_N, (1, N), (1, N + 1)))
case("operand.shape", "epilogue[1].operand.rows", f"got {N}", "bias_n-as-column",
     _epi_shape(PostOpKind.BIAS_N, (1, N), (N, 1)))
case("operand.shape", "epilogue[1].operand.rows", "got 1", "bias_m-as-row",
     _epi_shape(PostOpKind.BIAS_M, (M, 1), (1, M)))
case("operand.shape", "epilogue[1].operand.rows", f"got {M + 1}", "add-too-tall",
     _epi_shape(PostOpKind.ADD, (M, N), (M + 1, N)))


def _copy_shape(dim: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, pad=N + 1)
        dst = replace(s.d, **{dim: getattr(s.d, dim) + 1}) if bad else s.d
        return s.submit(Copy(src=s.c, dst=dst), engine="copy")
    return build


case("operand.shape", "dst.rows", f"got {M + 1}", "copy-dst-rows", _copy_shape("rows"))
case("operand.shape", "dst.cols", f"got {N + 1}", "copy-dst-cols", _copy_shape("cols"))


def _ld(role: str, value: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, ld_elems=value) if bad else mat}))
    return build


for _role, (_r, _c) in _DIMS.items():
    case("operand.ld", f"{_role}.ld_elems", f"got {_c - 1}", f"{_role}-ld-cols-minus-1", _ld(_role, _c - 1))
case("operand.ld", "a.ld_elems", "got 0", "a-ld-0", _ld("a", 0))


def _epi_ld(kind: PostOpKind, shape: tuple[int, int], ld: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        v = s.vector(np.float32, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=replace(v, ld_elems=ld) if bad else v),)))
    return build


case("operand.ld", "epilogue[0].operand.ld_elems", "got 0", "bias_m-ld-0", _epi_ld(PostOpKind.BIAS_M, (M, 1), 0))
case("operand.ld", "epilogue[0].operand.ld_elems", f"got {N - 1}", "add-ld-short",
     _epi_ld(PostOpKind.ADD, (M, N), N - 1))


def _copy_ld(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], ld_elems=N - 1)
        return s.submit(Copy(**mats), engine="copy")
    return build


for _role in ("src", "dst"):
    case("operand.ld", f"{_role}.ld_elems", f"got {N - 1}", f"copy-{_role}-ld", _copy_ld(_role))


def _align(role: str, dt: Any, good_off: int, bad_off: int, dev_limits: dict[str, int] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_limits(**dev_limits) if dev_limits else None
        s = Std(env, dt, pad=64, dev=dev)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, offset_bytes=bad_off if bad else good_off)}))
    return build


for _role in ("a", "b", "c", "d"):
    case("operand.alignment", f"{_role}.offset_bytes", "got 2", f"{_role}-f32-offset-2",
         _align(_role, np.float32, 4, 2))
case("operand.alignment", "a.offset_bytes", "got 4", "a-f64-offset-4", _align("a", np.float64, 8, 4))
case("operand.alignment", "b.offset_bytes", "got 1", "b-bf16-offset-1", _align("b", BF16, 2, 1))
case("operand.alignment", "a.offset_bytes", "got 4", "a-f32-device-alignment-4-elems",
     _align("a", np.float32, 16, 4, {"alignment_elems": 4}), portable=False)
case("operand.alignment", "a.offset_bytes", "got 2", "a-int8-device-alignment-4-elems",
     _align("a", np.int8, 4, 2, {"alignment_elems": 4}), portable=False)


def _epi_align(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    buf = env.filled(np.float32, N + 1)
    v = buf.matrix(np.float32, 1, N, offset_bytes=2 if bad else 4)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=v),)))


case("operand.alignment", "epilogue[0].operand.offset_bytes", "got 2", "bias-offset-2", _epi_align)


def _copy_align(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env, pad=1)
    return s.submit(Copy(src=replace(s.c, offset_bytes=2 if bad else 4), dst=s.d), engine="copy")


case("operand.alignment", "src.offset_bytes", "got 2", "copy-src-offset-2", _copy_align)


def _bounds(role: str) -> Builder:
    """Buffers sized exactly; the defective twin starts the operand one element later."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, offset_bytes=4 if bad else 0)}))
    return build


for _role, (_r, _c) in _DIMS.items():
    case("operand.bounds", _role, f"bytes [4, {4 + _r * _c * 4})", f"{_role}-one-element-past", _bounds(_role))


def _bounds_ld(env: Env, bad: bool) -> Callable[[], Any]:
    # the last row is where the overrun shows: ld one larger runs M - 1 elements past the end
    s = Std(env, pad=M - 2)
    return s.submit(s.gemm(a=replace(s.a, ld_elems=K + (1 if bad else 0))))


case("operand.bounds", "a", f"bytes [0, {((M - 1) * (K + 1) + K) * 4})", "a-ld-one-larger", _bounds_ld)


def _bounds_batch(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env, batch=2)
    return s.submit(s.gemm(b=replace(s.b, batch_stride_elems=K * N + (1 if bad else 0))))


case("operand.bounds", "b", f"bytes [0, {(2 * K * N + 1) * 4})", "b-batch-stride-one-larger", _bounds_batch)


def _epi_bounds(kind: PostOpKind, shape: tuple[int, int]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        v = s.vector(np.float32, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=replace(v, offset_bytes=4 if bad else 0)),)))
    return build


case("operand.bounds", "epilogue[0].operand", f"bytes [4, {4 + N * 4})", "bias-one-element-past",
     _epi_bounds(PostOpKind.BIAS_N, (1, N)))
case("operand.bounds", "epilogue[0].operand", f"bytes [4, {4 + M * N * 4})", "add-one-element-past",
     _epi_bounds(PostOpKind.ADD, (M, N)))


def _copy_bounds(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], offset_bytes=4)
        return s.submit(Copy(**mats), engine="copy")
    return build


for _role in ("src", "dst"):
    case("operand.bounds", _role, f"bytes [4, {4 + M * N * 4})", f"copy-{_role}-one-element-past", _copy_bounds(_role))


def _copy_batch_stride(role: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        mats = {"src": s.c, "dst": s.d}
        if bad:
            mats[role] = replace(mats[role], batch_stride_elems=M * N)
        return s.submit(Copy(**mats), engine="copy")
    return build


for _role in ("src", "dst"):
    case("operand.batch_stride", f"{_role}.batch_stride_elems", f"got {M * N}", f"copy-{_role}",
         _copy_batch_stride(_role))


# --- overflow: strides and offsets no buffer can hold, values no field can hold ----------------
# A stride times the element size must stay within max_buffer_bytes even where it is multiplied
# by zero (one row, one batch entry): drivers compute C int64 byte offsets from it.

def _huge(role: str, field_: str, value: int, **std: Any) -> Builder:
    """The standard GEMM (sized by ``std``) with operand ``role``'s ``field_`` set to ``value``."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, **std)
        mat: Matrix = getattr(s, role)
        return s.submit(s.gemm(**{role: replace(mat, **{field_: value}) if bad else mat}))
    return build


case("operand.ld", "a.ld_elems", f"got {2**62}", "a-ld-2**62-one-row", _huge("a", "ld_elems", 2**62, m=1))
case("operand.ld", "d.ld_elems", f"got {2**64 - 1}", "d-ld-u64-max-one-row", _huge("d", "ld_elems", 2**64 - 1, m=1))
case("operand.ld", "b.ld_elems", f"got {2**48 // 4 + 1}", "b-ld-past-max-buffer-bytes-one-row",
     _huge("b", "ld_elems", 2**48 // 4 + 1, k=1))
case("operand.batch_stride", "a.batch_stride_elems", f"got {2**63 - 1}", "a-2**63-1-batch-1",
     _huge("a", "batch_stride_elems", 2**63 - 1))
case("operand.batch_stride", "c.batch_stride_elems", f"got {2**64 - 1}", "c-u64-max-batch-1",
     _huge("c", "batch_stride_elems", 2**64 - 1))
case("operand.bounds", "a", f"bytes [{2**64 - 4}, {2**64 + 4 * (M * K - 1)})", "a-offset-u64-max",
     _huge("a", "offset_bytes", 2**64 - 4))
case("operand.bounds", "b", f"bytes [0, {4 * (2**46 + K * N)})", "b-largest-batch-stride-batch-2",
     _huge("b", "batch_stride_elems", 2**46, batch=2))


def _epi_huge_ld(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    v = s.vector(np.float32, 1, N)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=replace(v, ld_elems=2**62) if bad else v),)))


case("operand.ld", "epilogue[0].operand.ld_elems", f"got {2**62}", "bias-ld-2**62", _epi_huge_ld)


def _copy_huge_ld(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env, m=1)
    src = replace(s.c, ld_elems=2**63 - 1) if bad else s.c
    return s.submit(Copy(src=src, dst=s.d), engine="copy")


case("operand.ld", "src.ld_elems", f"got {2**63 - 1}", "copy-src-ld-2**63-1-one-row", _copy_huge_ld)

# values the encoder cannot put in their field (negative, or 2**32 / 2**64 and up)
case("cmd.field_range", "a.ld_elems", "got -1", "a-ld-negative", _huge("a", "ld_elems", -1))
case("cmd.field_range", "d.offset_bytes", f"got {2**64}", "d-offset-2**64", _huge("d", "offset_bytes", 2**64))
case("cmd.field_range", "b.batch_stride_elems", f"got {-(2**63)}", "b-batch-stride-i64-min",
     _huge("b", "batch_stride_elems", -(2**63)))
case("cmd.field_range", "c.rows", f"got {2**32}", "c-rows-2**32", _huge("c", "rows", 2**32))


def _m_field(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    return s.submit(s.gemm(m=-1) if bad else s.gemm())


case("cmd.field_range", "m", "got -1", "m-negative", _m_field)


def _wait_value_field(env: Env, bad: bool) -> Callable[[], Any]:
    def call() -> Any:
        raw = encode_submission([], waits=[(int(Engine.COMPUTE), 2**64 if bad else 0)])
        return env.dev.submit_raw(raw)
    return call


case("cmd.field_range", "wait[0].value", f"got {2**64}", "wait-value-2**64", _wait_value_field)

# --- GEMM ------------------------------------------------------------------------------------


def _dim_limit(dim: str) -> Builder:
    """A device with max_dim 4 (max_batch 1); the GEMM has ``dim`` = 5 (batch = 2)."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        big = 5 if dim != "batch" else 2
        limit = (big - 1) if bad else big
        dev = env.open_limits(max_dim=limit if dim != "batch" else 8, max_batch=limit if dim == "batch" else 8)
        sizes = {"m": 3, "n": 3, "k": 3, "batch": 1, dim: big}
        s = Std(env, dev=dev, **sizes)
        return s.submit(s.gemm())
    return build


for _dim in ("m", "n", "k", "batch"):
    case("gemm.dim", _dim, "got 5" if _dim != "batch" else "got 2", f"{_dim}-over-device-limit", _dim_limit(_dim),
         portable=False)
gemm_patch_case("gemm.dim", "m", f"got {2**31}", "m-2**31-over-spec-limit", {"m": 2**31})
gemm_patch_case("gemm.dim", "batch", f"got {2**32 - 1}", "batch-u32-max-over-spec-limit", {"batch": 2**32 - 1})


def _copy_dim(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_limits(max_dim=N - 1 if bad else N)
    s = Std(env, dev=dev)
    return s.submit(Copy(src=s.c, dst=s.d), engine="copy")


case("gemm.dim", "src.cols", f"got {N}", "copy-cols-over-device-limit", _copy_dim, portable=False)


def _combo_operand(role: str, base_dt: Any, bad_dt: Any, d_dt: Any = None) -> Builder:
    """The standard ``base_dt`` GEMM with operand ``role`` stored in ``bad_dt`` instead."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, base_dt, d_dt)
        kw: dict[str, Any] = {"acc_dtype": s.gemm().fields()["acc_dtype"]}  # the base combination's
        if bad:
            old: Matrix = getattr(s, role)
            kw[role] = s.vector(bad_dt, old.rows, old.cols)
        return s.submit(s.gemm(**kw))
    return build


case("gemm.combo", "b.dtype", "got f64", "f32-x-f64", _combo_operand("b", np.float32, np.float64))
case("gemm.combo", "b.dtype", "got int8", "f16-x-int8", _combo_operand("b", np.float16, np.int8))
case("gemm.combo", "a.dtype", "got int32", "a-int32", _combo_operand("a", np.float32, np.int32))
case("gemm.combo", "d.dtype", "got f64", "f32-to-d-f64", _combo_operand("d", np.float32, np.float64))
case("gemm.combo", "d.dtype", "got bf16", "f16-to-d-bf16", _combo_operand("d", np.float16, BF16))
case("gemm.combo", "d.dtype", "got f32", "int8-to-d-f32", _combo_operand("d", np.int8, np.float32))
case("gemm.combo", "d.dtype", "got int8", "int8-to-d-int8", _combo_operand("d", np.int8, np.int8))
case("gemm.combo", "c.dtype", f"got {int(DType.F32)}", "f16-d-f16-c-f32", _combo_operand("c", np.float16, np.float32))
case("gemm.combo", "c.dtype", f"got {int(DType.F64)}", "f32-c-f64", _combo_operand("c", np.float32, np.float64))


def _acc(base_dt: Any, acc: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, base_dt)
        return s.submit_raw(encode_submission([patch_cmd(s.gemm(), {"acc_dtype": acc} if bad else None)]))
    return build


case("gemm.combo", "acc_dtype", f"got {int(DType.F64)}", "f32-acc-f64", _acc(np.float32, DType.F64))
case("gemm.combo", "acc_dtype", f"got {int(DType.F16)}", "f16-acc-f16", _acc(np.float16, DType.F16))
case("gemm.combo", "acc_dtype", f"got {int(DType.F32)}", "int8-acc-f32", _acc(np.int8, DType.F32))
case("gemm.combo", "acc_dtype", "got 99", "acc-99", _acc(np.float32, 99))
case("gemm.combo", "acc_dtype", "got 0", "acc-0", _acc(np.float32, 0))


def _unsupported_combo(dt: Any, d_dt: Any, declared: list[tuple[DType, DType, DType, DType]]) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_caps(combos=frozenset(COMBO_BY_DTYPES[c] for c in declared)) if bad else None
        s = Std(env, dt, d_dt, dev=dev)
        return s.submit(s.gemm())
    return build


_F32C = (DType.F32, DType.F32, DType.F32, DType.F32)
_F16C = (DType.F16, DType.F16, DType.F32, DType.F16)
case("gemm.combo_supported", "dtypes", "got f64xf64->f64->f64", "f64-on-f32-only-device",
     _unsupported_combo(np.float64, None, [_F32C]), portable=False)
case("gemm.combo_supported", "dtypes", "got f16xf16->f32->f32", "f16-to-f32-on-f16-to-f16-device",
     _unsupported_combo(np.float16, np.float32, [_F32C, _F16C]), portable=False)
case("gemm.combo_supported", "dtypes", "got int8xuint8->int32->int32", "int8-x-uint8-on-f32-only-device",
     lambda env, bad: _mixed_int(env, bad), portable=False)


def _mixed_int(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_caps(combos=frozenset({COMBO_BY_DTYPES[_F32C]})) if bad else None
    s = Std(env, np.int8, dev=dev)
    return s.submit(s.gemm(b=s.vector(np.uint8, K, N)))


for _name, _v in (("alpha", 2**31), ("alpha", -(2**31) - 1), ("beta", 2**31), ("beta", -(2**63))):
    gemm_patch_case("gemm.int_scalar", _name, f"got {_v}", f"int8-{_name}-{_v}-patched", {f"{_name}_bits": u64(_v)},
                    dt=np.int8)


def _int_scalar_dataclass(name: str, bad_value: Any, good_value: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, np.int8)
        return lambda: s.dev.submit([s.gemm(**{name: bad_value if bad else good_value})])
    return build


case("gemm.int_scalar", "alpha", "got 2147483648", "int8-alpha-2**31", _int_scalar_dataclass("alpha", 2**31, 2**31 - 1))
case("gemm.int_scalar", "alpha", "got 0.5", "int8-alpha-0.5", _int_scalar_dataclass("alpha", 0.5, 1.0))
case("gemm.int_scalar", "beta", "got inf", "int8-beta-inf", _int_scalar_dataclass("beta", math.inf, -3))


def _overlap(role: str) -> Builder:
    """D placed in the buffer of input ``role``, right after it (disjoint) or one element into it."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        shapes = {"a": (M, K), "b": (K, N), "bias": (1, N), "bias_m": (M, 1), "add": (M, N)}
        rows, cols = shapes[role]
        buf = env.filled(np.float32, rows * cols + M * N)
        x = buf.matrix(np.float32, rows, cols)
        d = buf.matrix(np.float32, M, N, offset_bytes=(rows * cols - (1 if bad else 0)) * 4)
        kw: dict[str, Any] = {"d": d}
        if role in ("a", "b"):
            kw[role] = x
        else:
            kind = {"bias": PostOpKind.BIAS_N, "bias_m": PostOpKind.BIAS_M, "add": PostOpKind.ADD}[role]
            kw["epilogue"] = (PostOpDesc(PostOpKind.RELU), PostOpDesc(kind, operand=x))
        return s.submit(s.gemm(**kw))
    return build


for _role in ("a", "b", "bias", "bias_m", "add"):
    case("gemm.overlap", "d", "d bytes", f"d-overlaps-{_role}", _overlap(_role))


def _overlap_c(how: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, pad=M * N + N)
        c = s.c
        if how == "shifted":
            d = replace(c, offset_bytes=4) if bad else replace(c, offset_bytes=M * N * 4)
        else:  # same start, another leading dimension: not "exactly C"
            d = replace(c, ld_elems=N + 1) if bad else c
        return s.submit(s.gemm(d=d))
    return build


case("gemm.overlap", "d", "d bytes", "d-partially-overlaps-c", _overlap_c("shifted"))
case("gemm.overlap", "d", "d bytes", "d-same-start-as-c-other-ld", _overlap_c("ld"))


def _d_batch(stride: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, batch=2)
        return s.submit(s.gemm(d=replace(s.d, batch_stride_elems=stride) if bad else s.d, c=None, beta=0.0))
    return build


for _stride in (0, 1, M * N - 1):
    case("gemm.d_batch_overlap", "d.batch_stride_elems", f"got {_stride}", f"d-batch-stride-{_stride}",
         _d_batch(_stride))


def _epi_count_patch(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    cmd = s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * MAX_EPILOGUE_SLOTS)
    return s.submit_raw(encode_submission([patch_cmd(cmd, {"epilogue_count": MAX_EPILOGUE_SLOTS + 1} if bad
                                                     else None)]))


case("epilogue.count", "epilogue_count", "got 5", "count-5-patched", _epi_count_patch)


def _epi_count_dataclass(env: Env, bad: bool) -> Callable[[], Any]:
    s = Std(env)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * (5 if bad else 4)))


case("epilogue.count", "epilogue_count", "got 5", "five-relus", _epi_count_dataclass)


def _epi_count_limit(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_limits(max_epilogue_ops=2 if bad else 3)
    s = Std(env, dev=dev)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU),) * 3))


case("epilogue.count", "epilogue_count", "got 3", "three-ops-on-device-limit-2", _epi_count_limit, portable=False)

_SLOT_FIELDS = ("kind", "param0_bits", "param1_bits", "operand.handle", "operand.dtype", "operand.offset_bytes",
                "operand.rows", "operand.cols", "operand.ld_elems", "operand.batch_stride_elems")
for _slot in range(1, MAX_EPILOGUE_SLOTS):
    for _f in _SLOT_FIELDS if _slot == MAX_EPILOGUE_SLOTS - 1 else ("kind",):
        _name = f"epilogue[{_slot}].{_f}"
        gemm_patch_case("epilogue.count", "epilogue_count", f"{_name} = 3", f"unused-{_name}", {_name: 3},
                        epilogue=(PostOpDesc(PostOpKind.RELU),))


def _epi_kind(kind: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        second = PostOpDesc(kind) if bad else PostOpDesc(PostOpKind.RELU)  # type: ignore[arg-type]
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), second)))
    return build


for _kind in (0, 9, 99):
    case("epilogue.kind", "epilogue[1].kind", f"got {_kind}", f"kind-{_kind}", _epi_kind(_kind))


def _int_gelu(kind: PostOpKind) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, np.int8)
        return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.RELU), PostOpDesc(kind if bad else PostOpKind.RELU))))
    return build


case("epilogue.int_unsupported", "epilogue[1].kind", "gelu(approximate='none')", "int8-gelu-erf",
     _int_gelu(PostOpKind.GELU_ERF))
case("epilogue.int_unsupported", "epilogue[1].kind", "gelu(approximate='tanh')", "int8-gelu-tanh",
     _int_gelu(PostOpKind.GELU_TANH))


def _undeclared_post_op(env: Env, bad: bool) -> Callable[[], Any]:
    # A device that does not declare gelu(tanh): refused as UNSUPPORTED, never computed otherwise.
    dev = env.open_caps(post_ops=frozenset(PostOpKind) - {PostOpKind.GELU_TANH}) if bad else None
    s = Std(env, dev=dev)
    return s.submit(s.gemm(epilogue=(PostOpDesc(PostOpKind.GELU_TANH),)))


case("epilogue.supported", "epilogue[0].kind", "gelu(approximate='tanh')", "f32-gelu-tanh-undeclared",
     _undeclared_post_op, portable=False)


def _param(dt: Any, good: tuple[PostOpDesc, ...], bad_: tuple[PostOpDesc, ...],
           vector: tuple[int, int] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, dt)
        epi = bad_ if bad else good
        if vector is not None:  # give the slots that need one an operand
            v = s.vector(s.d_dt, *vector)
            epi = tuple(replace(p, operand=v) if p.kind in (PostOpKind.BIAS_N, PostOpKind.ADD) else p for p in epi)
        return s.submit(s.gemm(epilogue=epi))
    return build


_R = PostOpDesc(PostOpKind.RELU)
_CL = PostOpKind.CLAMP
_SC = PostOpKind.SCALE
case("epilogue.param", "epilogue[1].param0", "lo=2.0, hi=1.0", "clamp-lo-above-hi",
     _param(np.float32, (_R, PostOpDesc(_CL, 1.0, 2.0)), (_R, PostOpDesc(_CL, 2.0, 1.0))))
case("epilogue.param", "epilogue[0].param0", "got nan", "clamp-lo-nan",
     _param(np.float32, (PostOpDesc(_CL, -1.0, 1.0),), (PostOpDesc(_CL, math.nan, 1.0),)))
# The offending parameter of clamp(lo, nan) is hi, i.e. param1.
case("epilogue.param", "epilogue[0].param1", "got nan", "clamp-hi-nan",
     _param(np.float32, (PostOpDesc(_CL, -1.0, 1.0),), (PostOpDesc(_CL, -1.0, math.nan),)))
for _s in (math.inf, -math.inf, math.nan):
    case("epilogue.param", "epilogue[1].param0", f"got {_s}", f"scale-{_s}",
         _param(np.float32, (_R, PostOpDesc(_SC, 2.0)), (_R, PostOpDesc(_SC, _s))))
case("epilogue.param", "epilogue[0].param0", "got 1.5", "relu-param0",
     _param(np.float32, (PostOpDesc(PostOpKind.RELU),), (PostOpDesc(PostOpKind.RELU, 1.5),)))
case("epilogue.param", "epilogue[0].param1", "got 2.5", "gelu-param1",
     _param(np.float32, (PostOpDesc(PostOpKind.GELU_ERF),), (PostOpDesc(PostOpKind.GELU_ERF, 0, 2.5),)))
case("epilogue.param", "epilogue[0].param1", "got 3.0", "scale-param1",
     _param(np.float32, (PostOpDesc(_SC, 2.0),), (PostOpDesc(_SC, 2.0, 3.0),)))
case("epilogue.param", "epilogue[0].param0", "got 1.0", "bias-param0",
     _param(np.float32, (PostOpDesc(PostOpKind.BIAS_N),), (PostOpDesc(PostOpKind.BIAS_N, 1.0),), vector=(1, N)))
case("epilogue.param", "epilogue[0].param1", "got 2147483648", "int8-clamp-hi-2**31",
     _param(np.int8, (PostOpDesc(_CL, -1, 2**31 - 1),), (PostOpDesc(_CL, -1, 2**31),)))
case("epilogue.param", "epilogue[0].param0", "lo=3, hi=2", "int8-clamp-lo-above-hi",
     _param(np.int8, (PostOpDesc(_CL, 2, 3),), (PostOpDesc(_CL, 3, 2),)))
case("epilogue.param", "epilogue[0].param0", f"got {-(2**31) - 1}", "int8-scale-below-int32",
     _param(np.int8, (PostOpDesc(_SC, -(2**31)),), (PostOpDesc(_SC, -(2**31) - 1),)))
# A fractional scale of an integer GEMM breaks the epilogue's rule ("an int32 for int32 outputs"),
# even though the encoder is what catches it.
case("epilogue.param", "epilogue[0].param0", "got 0.5", "int8-scale-0.5",
     _param(np.int8, (PostOpDesc(_SC, 3),), (PostOpDesc(_SC, 0.5),)))


def _operand_on(kind: PostOpKind, shape: tuple[int, int], ld: int | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        v = replace(s.vector(np.float32, *shape), ld_elems=ld) if ld is not None else s.vector(np.float32, *shape)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=v if bad else None),)))
    return build


# An operand on a post-op that takes none is refused as such, whatever its shape.
case("epilogue.operand", "epilogue[0].operand", "handle 5", "relu-with-1xn-operand",
     _operand_on(PostOpKind.RELU, (1, N)))
case("epilogue.operand", "epilogue[0].operand", "handle 5", "scale-with-mxn-operand",
     _operand_on(PostOpKind.SCALE, (M, N)))
case("epilogue.operand", "epilogue[0].operand", "handle 5", "relu-with-0x0-operand",
     _operand_on(PostOpKind.RELU, (0, 0), ld=1))


def _epi_dtype(dt: Any, kind: PostOpKind, shape: tuple[int, int], good_dt: Any, bad_dt: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env, dt)
        return s.submit(s.gemm(epilogue=(PostOpDesc(kind, operand=s.vector(bad_dt if bad else good_dt, *shape)),)))
    return build


case("epilogue.operand", "epilogue[0].operand", "got f64", "f32-bias-f64",
     _epi_dtype(np.float32, PostOpKind.BIAS_N, (1, N), np.float32, np.float64))
case("epilogue.operand", "epilogue[0].operand", "got bf16", "f16-bias_m-bf16",
     _epi_dtype(np.float16, PostOpKind.BIAS_M, (M, 1), np.float16, BF16))
case("epilogue.operand", "epilogue[0].operand", "got int8", "int8-add-int8",
     _epi_dtype(np.int8, PostOpKind.ADD, (M, N), np.int32, np.int8))

# --- COPY ------------------------------------------------------------------------------------


def _conversion(src_dt: Any, bad_dt: Any, good_dt: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        src = env.filled(src_dt, M * N).matrix(src_dt, M, N)
        dt = bad_dt if bad else good_dt
        dst = env.filled(dt, M * N).matrix(dt, M, N)
        return lambda: env.dev.submit([Copy(src=src, dst=dst)], engine="copy")
    return build


for _s, _b, _g, _seen in ((np.int8, np.float32, np.int8, "f32"), (np.float32, np.int8, np.float16, "int8"),
                          (np.uint8, np.int8, np.uint8, "int8"), (np.int32, np.float64, np.int32, "f64"),
                          (np.int8, np.int32, np.int8, "int32")):
    case("copy.conversion", "dst.dtype", f"got {_seen}", f"{np.dtype(_s).name}-to-{np.dtype(_b).name}",
         _conversion(_s, _b, _g))


def _copy_unsupported(env: Env, bad: bool) -> Callable[[], Any]:
    copies = frozenset(COPY_CONVERSIONS) - {(DType.F32, DType.F16)}
    dev = env.open_caps(copies=copies) if bad else env.dev
    src = env.filled(np.float32, M * N, dev).matrix(np.float32, M, N)
    dst = env.filled(np.float16, M * N, dev).matrix(np.float16, M, N)
    return lambda: dev.submit([Copy(src=src, dst=dst)], engine="copy")


case("copy.conversion_supported", "dst.dtype", "got f32->f16", "f32-to-f16-undeclared", _copy_unsupported,
     portable=False)


def _copy_overlap(shift: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        buf = env.filled(np.float32, 2 * M * N)
        src = buf.matrix(np.float32, M, N)
        dst = buf.matrix(np.float32, M, N, offset_bytes=(shift if bad else M * N) * 4)
        return lambda: env.dev.submit([Copy(src=src, dst=dst)], engine="copy")
    return build


for _shift in (0, 1, M * N - 1):
    case("copy.overlap", "dst", "dst bytes", f"dst-{_shift}-elements-after-src", _copy_overlap(_shift))

# --- a submission whose third command is invalid --------------------------------------------


def _third_invalid(kind: str) -> Builder:
    """Two valid GEMMs (each writing a D of its own), then a third command with one defect."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        _, d1 = s.operand(s.d_dt, M, N)
        _, d2 = s.operand(s.d_dt, M, N)
        first, second = s.gemm(d=d1), s.gemm(d=d2)
        if kind == "ld":
            third: Gemm | bytes = s.gemm(a=replace(s.a, ld_elems=K - 1) if bad else s.a)
        else:
            third = patch_cmd(s.gemm(), {"c.reserved": JUNK} if bad else None)
        return s.submit(first, second, third)
    return build


case("operand.ld", "a.ld_elems", f"got {K - 1}", "third-of-three", _third_invalid("ld"), command_index=2)
case("cmd.reserved", "c.reserved", f"got {JUNK}", "third-of-three", _third_invalid("reserved"), command_index=2)

# --- memory, fences, device names ------------------------------------------------------------


def _alloc(size: Any, good: int, limits: dict[str, int] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_limits(**limits) if limits else env.dev
        return lambda: env.alloc(size if bad else good, dev)
    return build


for _size, _seen in ((0, "got 0"), (-1, "got -1"), (2.0, "got 2.0"), ("8", "got 8"), (2**48 + 1, f"got {2**48 + 1}")):
    case("memory.size", "size_bytes", _seen, f"size-{_size!r}", _alloc(_size, 8))
case("memory.size", "size_bytes", "got 4097", "size-over-device-max", _alloc(4097, 4096, {"max_buffer_bytes": 4096}),
     portable=False)


def _quota(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_caps(quota=256)
    env.alloc(200, dev)
    return lambda: env.alloc(57 if bad else 56, dev)


case("memory.quota", "size_bytes", "got 57", "quota-256-used-200-ask-57", _quota, portable=False)


def _quota_after_free(env: Env, bad: bool) -> Callable[[], Any]:
    # freeing returns the bytes to the quota; without the free the same request is over it
    dev = env.open_caps(quota=256)
    x = env.alloc(200, dev)
    if not bad:
        x.free()
    return lambda: env.alloc(100, dev)


case("memory.quota", "size_bytes", "got 100", "quota-freed-bytes-only-after-free", _quota_after_free, portable=False)


def _free_twice(env: Env, bad: bool) -> Callable[[], Any]:
    x = env.alloc(16)
    if bad:
        x.free()
    return x.free


case("memory.handle", "handle", "got 1", "free-twice", _free_twice)


def _free_other_client(env: Env, bad: bool) -> Callable[[], Any]:
    # a Buffer object naming a handle of another client (2), which this client (1 buffer) lacks
    other = env.open_other()
    env.alloc(16, other)
    theirs = env.alloc(16, other)
    own = env.alloc(16)
    if bad:
        return lambda: Buffer(env.dev, theirs.handle, np.zeros(16, np.uint8)).free()
    return own.free


case("memory.handle", "handle", "got 2", "free-foreign-handle", _free_other_client)


def _wait_fence(how: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = Std(env)
        value = s.dev.submit([s.gemm()]).value
        fence = Fence(env.dev, Engine.COMPUTE, value + 3 if bad else value)
        if how == "fence":
            return lambda: fence.wait(timeout_ns=1_000_000)
        return lambda: env.dev.wait(fence, timeout_ns=0)
    return build


# The fence can never signal (its value was never submitted): the wait must end with TIMEOUT
# at its deadline (naming timeout_ns, under rule fence.timeout), never hang.
case("fence.timeout", "timeout_ns", "", "fence-wait-unsubmitted-value", _wait_fence("fence"))
case("fence.timeout", "timeout_ns", "", "device-wait-unsubmitted-value-timeout-0", _wait_fence("device"))


def _wait_on_foreign_fence(env: Env, bad: bool) -> Callable[[], Any]:
    # A fence of another device (another client) cannot be waited on through this one.
    other = env.open_other()
    fence = (other if bad else env.dev).submit([])
    return lambda: env.dev.wait(fence, timeout_ns=1_000_000)


case("fence.device", "fence", "a fence of device {device}", "wait-other-devices-fence", _wait_on_foreign_fence)


def _open(name: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        return env.opener(name if bad else "ref")
    return build


for _name, _seen in (("nosuch-device", "nosuch-device"), ("REF", "REF"), ("", "got "), (3, "got 3"),
                     ("ref:bogus-option", "ref:bogus-option")):
    case("device.name", "name", _seen, f"open-{_name!r}", _open(_name), portable=False)



# ------------------------------------------------------------------------------------------
# running the catalogue against a device


def _applies(c: Case, caps: DeviceCaps) -> bool:
    """Whether ``c`` is well defined on a device declaring ``caps``.

    It is when the built-in ref driver, declaring the same, passes it: a device declaring
    less may refuse the defect-free twin as UNSUPPORTED, or the defective one under
    another rule first (GEMM on an engine it does not have).
    """
    return caps == DeviceCaps() or not _judge(c, lambda: Device("ref", InprocTransport(CapsDriver(caps))))


def _judge(c: Case, factory: DeviceFactory) -> str:
    """Run both twins of ``c``; what went wrong ("" when nothing did)."""
    with Env(factory) as env:
        try:
            done = c.build(env, False)()
            if isinstance(done, Fence):
                done.wait(timeout_ns=FENCE_WAIT_NS)
        except FFAccelError as e:
            return f"the defect-free twin was refused: {e}"
    with Env(factory) as env:
        call = c.build(env, True)
        fences = env.probe_timelines()
        before = env.snapshot()
        try:
            call()
        except FFAccelError as e:
            err = e
        else:
            return "the defective call was accepted"
        problems = []
        got = (err.code.name, err.param, err.rule)
        want = (c.code.name, c.param, c.rule)
        if got != want:
            problems.append(f"(code, param, rule) is {got}, want {want}")
        seen = c.seen_in(env)
        if seen not in str(err):
            problems.append(f"the message does not contain {seen!r}")
        if c.command_index is not None and err.command_index != c.command_index:
            problems.append(f"command_index is {err.command_index}, want {c.command_index}")
        changed = [i for i, (x, y) in enumerate(zip(before, env.snapshot())) if x != y]
        if changed:
            problems.append(f"buffers {changed} (in allocation order) changed")
        if env.probe_timelines() != {key: v + 1 for key, v in fences.items()}:
            problems.append("a fence value was consumed")
        return "; ".join(problems) + f" -- the error: {err}" if problems else ""


def error_checks(factory: DeviceFactory, *, portable_only: bool = True, cases: Sequence[Case] | None = None
                 ) -> list[CaseResult]:
    """Every single-defect case of :data:`CASES`, run on devices from ``factory``.

    Each case runs on fresh devices: its defect-free twin must be accepted (and its fence
    signal), and its defective twin must raise :class:`~ffaccel.spec.FFAccelError` with
    the rule's code, parameter name and rule id (and command index, for a submission whose
    third command is the bad one), name the value seen in its message, and change nothing:
    every buffer byte-identical, no fence value consumed.

    Parameters
    ----------
    factory : callable
        Opens a **new** device (a new client) on each call, e.g.
        ``lambda: ffaccel.open("mydevice")``. A case may open two ("another client").
        The cases rely on the runtime's per-client numbering: handles from 1, fence
        values from 1 per engine.
    portable_only : bool, optional
        Leave out the cases that are not :attr:`Case.portable` (they need a driver
        declaring less than the full set, a memory quota or the device registry, and run
        on the built-in ref driver whatever ``factory`` opens). Default True.
    cases : sequence of Case, optional
        Run these instead of all of :data:`CASES` (e.g. one that failed, by its id).

    Returns
    -------
    list of CaseResult
        One per case run, ``op="ERROR"``, ``group`` the rule id, ``name`` the case id;
        ``message`` says what went wrong. Cases that are not defined on a device declaring
        what this one declares (a dtype combination, post-op, engine or limit it lacks) are
        not run: :func:`ffaccel.conformance.engines.check_info` checks what is undeclared. A case
        that raises fails alone; one that takes over ``CASE_WATCHDOG_S`` fails as hung, and
        the cases after it are failed without running.
    """
    try:
        with Env(factory) as env:
            caps = env.dev.info().caps
    except Exception as e:  # noqa: BLE001 - reported as a failed result
        return [CaseResult("ERROR", "device", "-", "open", False, message=f"the factory raised {e!r}")]
    results: list[CaseResult] = []
    hung = ""
    for c in CASES if cases is None else cases:
        if portable_only and not c.portable:
            continue
        box: list[str | None] = []  # the verdict
        ended: list[bool] = []
        if hung:
            msg: str | None = f"not run: {hung} hung"
        else:
            def run(c: Case = c, box: list[str | None] = box, ended: list[bool] = ended) -> None:
                try:
                    box.append(_judge(c, factory) if not c.portable or _applies(c, caps) else None)
                finally:
                    ended.append(True)
            exc = _with_watchdog(run, CASE_WATCHDOG_S)
            if not ended:
                hung = c.id
                msg = str(exc)
            else:
                msg = f"raised {exc!r}" if exc is not None else box[0]
        if msg is not None:
            results.append(CaseResult("ERROR", c.rule, "-", c.id, not msg, message=msg))
    return results


__all__ = ["CASES", "RULE_CASES", "CapsDriver", "Case", "DeviceFactory", "Env", "Std", "error_checks"]
