"""Engine, fence and ``info`` checks.

* COPY on the copy engine and GEMM on the compute engine, ordered by fences, give the
  right result in both directions;
* a fence has signalled only when its work is visible; timelines are monotonic;
* waits on a fence that cannot signal end with TIMEOUT at their deadline (the check
  itself runs the wait on a watchdog thread, so a hanging device fails instead of
  hanging the suite);
* what ``info`` declares works (the GEMM and COPY cases cover it) and what it does not
  declare is refused with UNSUPPORTED, writing nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from ..abi import Copy, Gemm, PostOpDesc
from ..runtime import Device, Fence
from ..spec import (
    COPY_CONVERSIONS,
    DTYPES,
    GEMM_COMBOS,
    POST_OPS,
    SPEC_VERSION,
    Engine,
    ErrorCode,
    FFAccelError,
    PostOpKind,
)
from .runner import CaseResult

WATCHDOG_S = 20.0


def _result(group: str, name: str, ok: bool, msg: str = "") -> CaseResult:
    return CaseResult("ENGINE" if group != "info" else "INFO", group, "-", name, ok, float("nan"), msg)


def _f32_buffer(dev: Device, x: np.ndarray):  # noqa: ANN202 - a Buffer
    buf = dev.alloc(max(4, x.nbytes))
    buf.write(x)
    return buf


def _with_watchdog(fn: Callable[[], None], seconds: float = WATCHDOG_S) -> BaseException | None:
    """Run fn on a thread; return its exception, or a TimeoutError when it did not return in time."""
    box: list[BaseException | None] = [None]

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            box[0] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        return TimeoutError(f"did not return within {seconds:.0f} s (hang)")
    return box[0]


def check_copy_then_gemm(dev: Device) -> CaseResult:
    name = "COPY f64->f32 on the copy engine, then GEMM on compute waiting on its fence"
    rng = np.random.default_rng(7)
    a64 = rng.standard_normal((33, 17))
    b = rng.standard_normal((17, 9)).astype(np.float32)
    src = _f32_buffer(dev, a64)
    a32 = dev.alloc(a64.size * 4)
    bb = _f32_buffer(dev, b)
    d = dev.alloc(33 * 9 * 4)
    f1 = dev.submit([Copy(src=src.matrix(np.float64, 33, 17), dst=a32.matrix(np.float32, 33, 17))],
                    engine="copy" if Engine.COPY in dev.info().caps.engines else "compute")
    f2 = dev.submit([Gemm(m=33, n=9, k=17, a=a32.matrix(np.float32, 33, 17), b=bb.matrix(np.float32, 17, 9),
                          d=d.matrix(np.float32, 33, 9))], engine="compute", wait=[f1])
    f2.wait(timeout_ns=10**10)
    got = d.read(np.float32, 33 * 9).reshape(33, 9)
    want = a64.astype(np.float32).astype(np.float64) @ b.astype(np.float64)
    ok = bool(np.all(np.abs(got - want) <= 2 * 19 * 2.0**-24 * (np.abs(a64) @ np.abs(b)) + 1e-30))
    return _result("engines", name, ok and f1.signalled and f2.signalled,
                   "" if ok else "GEMM did not see the converted A (fence ordering broken)")


def check_gemm_then_copy(dev: Device) -> CaseResult:
    name = "GEMM on compute, then COPY f32->f16 on the copy engine waiting on its fence"
    rng = np.random.default_rng(8)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    ba, d, h = _f32_buffer(dev, a), dev.alloc(64 * 64 * 4), dev.alloc(64 * 64 * 2)
    f1 = dev.submit([Gemm(m=64, n=64, k=64, a=ba.matrix(np.float32, 64, 64), b=ba.matrix(np.float32, 64, 64),
                          d=d.matrix(np.float32, 64, 64))], engine="compute")
    f2 = dev.submit([Copy(src=d.matrix(np.float32, 64, 64), dst=h.matrix(np.float16, 64, 64))],
                    engine="copy" if Engine.COPY in dev.info().caps.engines else "compute", wait=[f1])
    f2.wait(timeout_ns=10**10)
    got = h.read(np.float16, 64 * 64)
    want = d.read(np.float32, 64 * 64).astype(np.float16)
    ok = np.array_equal(got, want) and bool(np.any(want != 0))
    return _result("engines", name, ok, "" if ok else "the COPY did not see the finished GEMM")


def check_fence_after_work(dev: Device) -> CaseResult:
    name = "a fence signals only after its work is visible (20 GEMMs in flight)"
    rng = np.random.default_rng(9)
    a = rng.standard_normal((96, 96)).astype(np.float32)
    ba = _f32_buffer(dev, a)
    outs = [dev.alloc(96 * 96 * 4) for _ in range(20)]
    fence = None
    for i, o in enumerate(outs):
        fence = dev.submit([Gemm(m=96, n=96, k=96, a=ba.matrix(np.float32, 96, 96), b=ba.matrix(np.float32, 96, 96),
                                 d=o.matrix(np.float32, 96, 96), alpha=float(i + 1))])
    assert fence is not None
    fence.wait(timeout_ns=10**10)
    ref = a.astype(np.float64) @ a.astype(np.float64)
    tol = 2 * 98 * 2.0**-24 * (np.abs(a).astype(np.float64) @ np.abs(a)) + 1e-30
    for i, o in enumerate(outs):
        got = o.read(np.float32, 96 * 96).reshape(96, 96)
        if not np.all(np.abs(got - (i + 1) * ref) <= (i + 1) * tol):
            return _result("fences", name, False, f"submission {i} was not finished when the last fence signalled")
    return _result("fences", name, True)


def check_timelines(dev: Device) -> CaseResult:
    name = "fence values are monotonic per engine"
    values = [dev.submit([]).value for _ in range(4)]
    ok = all(b > a for a, b in zip(values, values[1:]))
    return _result("fences", name, ok, "" if ok else f"values {values}")


def check_wait_timeout(dev: Device) -> CaseResult:
    name = "a wait on a fence that cannot signal ends with TIMEOUT, relative and absolute deadlines"
    last = dev.submit([])
    never = Fence(dev, last.engine, last.value + 1000)
    for kw in ({"timeout_ns": 20_000_000}, {"deadline_ns": time.monotonic_ns() - 1}):
        box: list[FFAccelError] = []

        def wait(kw: dict = kw) -> None:
            try:
                never.wait(**kw)
            except FFAccelError as e:
                box.append(e)

        err = _with_watchdog(wait)
        if err is not None:
            return _result("fences", name, False, f"wait({kw}) -> {err!r}")
        if not box or box[0].code != ErrorCode.TIMEOUT:
            return _result("fences", name, False, f"wait({kw}) returned without TIMEOUT")
    return _result("fences", name, True)


def check_new_buffers_are_zero(dev: Device) -> CaseResult:
    """A new buffer reads as zeros (``Device.alloc``), also where a freed one's memory may be reused:
    a client never sees bytes it did not write (another client's, or its own freed ones)."""
    name = "a new buffer reads as zeros, also after a buffer of its size was written and freed"
    for size in (1, 8, 4099, 1 << 16):
        first = dev.alloc(size)
        got = np.array(first.read(np.uint8, size))  # a copy, whatever read() returns
        first.write(np.full(size, 0x5A, np.uint8))
        first.free()
        again = dev.alloc(size)
        got2 = np.array(again.read(np.uint8, size))
        again.free()
        for label, data in (("new", got), ("after a free", got2)):
            if data.any():
                at = int(np.flatnonzero(data)[0])
                return CaseResult("ENGINE", "memory", "-", name, False, message=f"a {label} buffer of {size} bytes "
                                  f"holds {int(data[at]):#x} at byte {at}", expected="zeros", got=f"{int(data[at]):#x}")
    return _result("memory", name, True)


def check_info(dev: Device) -> list[CaseResult]:
    """What is not declared must be refused as UNSUPPORTED (and write nothing)."""
    out = []
    info = dev.info()
    caps = info.caps
    out.append(_result("info", "info reports spec v1 and the compute engine",
                       dev.spec_version == SPEC_VERSION and Engine.COMPUTE in caps.engines))
    for combo in GEMM_COMBOS:
        if combo in caps.combos:
            continue
        a, b, d = dev.alloc(64), dev.alloc(64), dev.alloc(64)
        d.write(np.full(64, 0x5A, np.uint8))
        g = Gemm(m=2, n=2, k=2, a=a.matrix(combo.a, 2, 2), b=b.matrix(combo.b, 2, 2), d=d.matrix(combo.d, 2, 2),
                 acc_dtype=combo.acc, alpha=1, beta=0)
        out.append(_refused(dev, [g], d, f"undeclared combination {combo.name} is refused as UNSUPPORTED"))
    for src, dst in COPY_CONVERSIONS:
        if (src, dst) in caps.copies:
            continue
        s, t = dev.alloc(64), dev.alloc(64)
        t.write(np.full(64, 0x5A, np.uint8))
        cmd = Copy(src=s.matrix(src, 2, 2), dst=t.matrix(dst, 2, 2))
        out.append(_refused(dev, [cmd], t, f"undeclared COPY {DTYPES[src].name}->{DTYPES[dst].name} is refused"))
    declared = [c for c in GEMM_COMBOS if c in caps.combos and not c.is_int] or [c for c in GEMM_COMBOS
                                                                                 if c in caps.combos]
    for kind in PostOpKind:
        if kind in caps.post_ops or not declared:
            continue
        combo = declared[0]
        a, b, d, e = dev.alloc(64), dev.alloc(64), dev.alloc(64), dev.alloc(64)
        d.write(np.full(64, 0x5A, np.uint8))
        shape = {PostOpKind.BIAS_N: (1, 2), PostOpKind.BIAS_M: (2, 1), PostOpKind.ADD: (2, 2)}.get(kind)
        operand = e.matrix(combo.acc, *shape) if shape else None
        p = PostOpDesc(kind, 0.5 if kind == PostOpKind.SCALE else 0, 1 if kind == PostOpKind.CLAMP else 0, operand)
        g = Gemm(m=2, n=2, k=2, a=a.matrix(combo.a, 2, 2), b=b.matrix(combo.b, 2, 2), d=d.matrix(combo.d, 2, 2),
                 acc_dtype=combo.acc, epilogue=(p,))
        out.append(_refused(dev, [g], d, f"undeclared post-op {POST_OPS[kind].name} is refused"))
    return out


def _refused(dev: Device, cmds: list, out_buf, name: str) -> CaseResult:  # noqa: ANN001
    before = out_buf.read(np.uint8, out_buf.size_bytes)
    try:
        dev.submit(cmds).wait(timeout_ns=10**10)
    except FFAccelError as e:
        unchanged = np.array_equal(out_buf.read(np.uint8, out_buf.size_bytes), before)
        ok = e.code == ErrorCode.UNSUPPORTED and unchanged
        return _result("info", name, ok, "" if ok else f"got {e.code.name} (unchanged={unchanged})")
    return _result("info", name, False, "accepted: the device ran something it does not declare")


def engine_checks(dev: Device) -> list[CaseResult]:
    results = []
    for check in (check_copy_then_gemm, check_gemm_then_copy, check_fence_after_work, check_timelines,
                  check_wait_timeout, check_new_buffers_are_zero):
        try:
            results.append(check(dev))
        except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
            results.append(_result("engines", check.__name__, False, f"raised {e!r}"))
    results.extend(check_info(dev))
    return results


__all__ = ["check_info", "check_new_buffers_are_zero", "engine_checks"]
