"""The harness of the validation-rule catalogue: what every single-defect case is made of and judged by.

:class:`Env` (the devices and buffers of one case), :class:`ValidGemm` (the valid GEMM a case
starts from), byte patching by field name, :class:`Case` and :class:`Catalogue` (the record
of one case, and the list the family modules add theirs to), and :func:`error_checks`, which
runs cases against a device. The cases themselves live in one module per rule family.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from ...abi import COPY, GEMM, Copy, DeviceCaps, Gemm, Layout, Matrix, encode_submission
from ...drivers.ref import RefDriver
from ...runtime import Buffer, Device, Fence, open_device
from ...spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, RULES, DType, Engine, ErrorCode, FFAccelError, Limits
from ...transports import InprocTransport
from ..engines import _with_watchdog, preferred_combo
from ..runner import CaseResult

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
        #: (device index, engine) -> the last fence value a submission or replay of the case got
        self._seen_fences: dict[tuple[int, Engine], int] = {}
        self.dev = self.open_other()
        caps = self.caps = self.dev.info().caps
        combo = preferred_combo(caps) or GEMM_COMBOS[1]
        #: the GEMM a case starts from, where it names no dtype: one the device declares (f32 first)
        self.gemm_dtypes = (DTYPES[combo.a].numpy, DTYPES[combo.d].numpy)
        same = [s for s, d in COPY_CONVERSIONS if s == d and (s, d) in caps.copies]
        #: the dtype of a COPY that converts nothing, where a case names none: one the device declares
        self.copy_dtype = DTYPES[DType.F32 if DType.F32 in same or not same else same[0]].numpy

    def declares(self, dt: Any, d_dt: Any = None) -> bool:
        """Whether the device under test declares a GEMM with A in ``dt`` (and D in ``d_dt``, if given)."""
        return any(np.dtype(DTYPES[c.a].numpy) == np.dtype(dt)
                   and (d_dt is None or np.dtype(DTYPES[c.d].numpy) == np.dtype(d_dt)) for c in self.caps.combos)

    def elem_bytes(self, role: str) -> int:
        """Bytes per element of operand ``role`` of the standard GEMM: A and B in the device's input
        dtype, C, D and the epilogue operands (``bias``, ``add``) in its output dtype."""
        return np.dtype(self.gemm_dtypes[0 if role in ("a", "b") else 1]).itemsize

    def aligned_bytes(self, role: str) -> int:
        """The smallest nonzero offset the device accepts for operand ``role``: one element times
        the device's ``limits.alignment_elems`` (the spec's ``operand.alignment`` rule)."""
        return self.elem_bytes(role) * self.caps.limits.alignment_elems

    def misaligned_bytes(self, role: str) -> int:
        """An offset the device must refuse for operand ``role`` under ``operand.alignment``: one
        element short of :meth:`aligned_bytes` where the device aligns to several elements, else
        half an element (0 where no offset breaks the rule: one-byte elements, alignment 1)."""
        size, align = self.elem_bytes(role), self.caps.limits.alignment_elems
        return size * (align - 1) if align > 1 else size // 2

    def open_other(self) -> Device:
        """Another client of the device under test."""
        dev = self.factory()
        self._track(dev)
        self.devices.append(dev)
        return dev

    def _track(self, dev: Device) -> None:
        """Note the fence value of every submission and replay the case makes on ``dev``, so that
        the timelines are known before the defective call without probing them then: a probe is a
        submission, and a device's memo of its last submission (or any other state) would be
        replaced by it, hiding the defect (the harness takes what it needs before the defective step)."""
        transport = dev._transport
        seen = self._seen_fences
        index = len(self.devices)

        def noting(call: Callable[..., tuple[Engine, int]]) -> Callable[..., tuple[Engine, int]]:
            def noted(*args: Any, **kw: Any) -> tuple[Engine, int]:
                engine, value = call(*args, **kw)
                key = (index, Engine(engine))
                seen[key] = max(seen.get(key, 0), value)
                return engine, value
            return noted

        for name in ("submit", "replay"):
            if hasattr(transport, name):
                setattr(transport, name, noting(getattr(transport, name)))

    def open_caps(self, quota: int | None = None, **caps: Any) -> Device:
        """A ref device whose driver declares ``DeviceCaps(**caps)`` (and a memory quota)."""
        self.used_nonportable = True
        dev = Device("caps", InprocTransport(CapsDriver(DeviceCaps(**caps)), max_memory_bytes=quota))
        self._track(dev)
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

    def known_timelines(self) -> dict[tuple[int, Engine], int]:
        """The fence value every engine of every device is at, from what the case submitted
        (fence values count from 1 per engine and client), without submitting anything."""
        return {(i, e): self._seen_fences.get((i, e), 0)
                for i, dev in enumerate(self.devices) for e in sorted(dev.info().caps.engines)}

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


class ValidGemm:
    """A valid GEMM ``D = alpha * A @ B + beta * C``: A, B, C, D each in a buffer of its own.

    ``pad`` extra elements follow each matrix in its buffer (0: buffers sized exactly).
    """

    def __init__(self, env: Env, dt: Any = None, d_dt: Any = None, *, m: int = M, n: int = N, k: int = K,
                 batch: int = 1, dev: Device | None = None, pad: int = 0) -> None:
        self.env, self.dev = env, dev or env.dev
        own = self.dev is env.dev
        if dt is None or (own and not env.declares(dt, d_dt)):
            # the device's own combination (a partial device has no f32): a case that names a dtype
            # the device does not declare runs its defect on the device's own GEMM
            dt, d_dt = env.gemm_dtypes if own else (np.float32, d_dt)
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
    """One defect. ``seen`` must appear in the error's message (``{device}``: the device's name);
    a callable ``seen`` gives it for the case's :class:`Env` (byte counts of the device's own dtypes)."""

    id: str
    rule: str
    param: str
    seen: str | Callable[[Env], str]
    build: Builder = field(repr=False)
    command_index: int | None = None  # for submissions: the index the error must carry
    portable: bool = True  # False: needs the ref driver (a smaller caps(), a quota, the registry)

    @property
    def code(self) -> ErrorCode:
        return RULES[self.rule].code

    def seen_in(self, env: Env) -> str:
        """The text the error's message must contain, for the devices of ``env``."""
        seen = self.seen(env) if callable(self.seen) else self.seen
        return seen.replace("{device}", repr(env.dev.name))


class Catalogue:
    """The cases of the catalogue, added family by family (see :func:`ffaccel.conformance.errors.catalogue`)."""

    def __init__(self) -> None:
        self.cases: list[Case] = []
        self.by_rule: dict[str, list[str]] = defaultdict(list)
        self._ids: set[str] = set()

    def case(self, rule: str, param: str, seen: str | Callable[[Env], str], detail: str, build: Builder, command_index: int | None = None,
             *, portable: bool = True) -> None:
        """Add the case ``{rule}-{detail}``."""
        c = Case(f"{rule}-{detail}", rule, param, seen, build, command_index, portable)
        if c.id in self._ids:
            raise ValueError(f"duplicate case id {c.id}")
        self._ids.add(c.id)
        self.cases.append(c)
        self.by_rule[rule].append(c.id)

    def gemm_patch_case(self, rule: str, param: str, seen: str, detail: str, patches: dict[str, int],
                        dt: Any = None, **gemm_kw: Any) -> None:
        """A case: the standard GEMM, encoded, with ``patches`` applied to the defective twin."""
        def build(env: Env, bad: bool) -> Callable[[], Any]:
            s = ValidGemm(env, dt)
            return s.submit_raw(encode_submission([patch_cmd(s.gemm(**gemm_kw), patches if bad else None)]))
        self.case(rule, param, seen, detail, build)

    def copy_patch_case(self, rule: str, param: str, seen: str, detail: str, patches: dict[str, int]) -> None:
        """A case: the standard COPY (an M x N matrix to another, in a dtype the device copies),
        encoded, with ``patches`` applied to the defective twin."""
        def build(env: Env, bad: bool) -> Callable[[], Any]:
            dt = env.copy_dtype
            cmd = Copy(src=env.filled(dt, M * N).matrix(dt, M, N), dst=env.filled(dt, M * N).matrix(dt, M, N))
            raw = encode_submission([patch_cmd(cmd, patches if bad else None)], Engine.COPY)
            return lambda: env.dev.submit_raw(raw)
        self.case(rule, param, seen, detail, build)


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
        fences = env.known_timelines()  # no probe here: nothing may run between the build and the call
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
    if cases is None:
        from . import catalogue  # the family modules import this one

        cases = catalogue()[0]
    for c in cases:
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
            results.append(CaseResult("ERROR", c.rule, "-", c.id, not msg, message=msg,
                                      expected=f"{c.code.name} naming {c.param!r} under rule {c.rule}, nothing changed"
                                      if msg else "", got=msg or ""))
    return results


__all__ = ["BF16", "CASE_WATCHDOG_S", "FENCE_WAIT_NS", "JUNK", "K", "M", "N", "Builder", "CapsDriver", "Case",
           "Catalogue", "DeviceFactory", "Env", "ValidGemm", "error_checks", "patch", "patch_bytes", "patch_cmd", "u64"]
