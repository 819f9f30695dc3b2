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

from ..abi import Copy, DeviceCaps, Gemm, PostOpDesc
from ..drivers.rounding import round_to
from ..runtime import Device, Fence
from ..spec import (
    COPY_CONVERSIONS,
    DTYPES,
    GEMM_COMBOS,
    POST_OPS,
    SPEC_VERSION,
    DType,
    Engine,
    ErrorCode,
    GemmCombo,
    FFAccelError,
    PostOpKind,
)
from .runner import CaseResult

WATCHDOG_S = 20.0


def _result(group: str, name: str, ok: bool, msg: str = "") -> CaseResult:
    return CaseResult("ENGINE" if group != "info" else "INFO", group, "-", name, ok, float("nan"), msg)


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


def preferred_combo(caps: DeviceCaps) -> GemmCombo | None:
    """The combination the engine checks use: f32 where declared (the common case), else the
    first declared float one, else the first declared (a partial device is checked on what it has)."""
    declared = [c for c in GEMM_COMBOS if c in caps.combos]
    floats = [c for c in declared if not c.is_int]
    f32 = [c for c in floats if c.a == DType.F32]
    return (f32 or floats or declared or [None])[0]


def _copy_into(caps: DeviceCaps, dst: DType) -> tuple[DType, DType] | None:
    """A declared COPY conversion into ``dst``, one that converts where there is one."""
    found = [(s, d) for s, d in COPY_CONVERSIONS if d == dst and (s, d) in caps.copies]
    return sorted(found, key=lambda sd: sd[0] == sd[1])[0] if found else None


def _copy_from(caps: DeviceCaps, src: DType) -> tuple[DType, DType] | None:
    """A declared COPY conversion out of ``src``, one that converts where there is one."""
    found = [(s, d) for s, d in COPY_CONVERSIONS if s == src and (s, d) in caps.copies]
    return sorted(found, key=lambda sd: sd[0] == sd[1])[0] if found else None


def _small_ints(rng: np.random.Generator, dt: DType, shape: tuple[int, ...]) -> np.ndarray:
    """Values every dtype holds exactly, whose products and sums stay exact in every accumulator."""
    return rng.integers(0 if dt == DType.U8 else -3, 4, shape).astype(DTYPES[dt].numpy)


def _buffer_of(dev: Device, x: np.ndarray):  # noqa: ANN202 - a Buffer
    buf = dev.alloc(max(8, x.nbytes))
    buf.write(x)
    return buf


def _exact_gemm(a: np.ndarray, b: np.ndarray, alpha: int, combo: GemmCombo) -> np.ndarray:
    """alpha * A @ B for small-integer inputs, rounded once to D's dtype (the exact answer)."""
    exact = alpha * (a.astype(np.int64) @ b.astype(np.int64))
    return exact.astype(np.int32) if combo.is_int else round_to(exact.astype(np.float64), combo.d)


def _engine_for_copy(caps: DeviceCaps) -> str:
    return "copy" if Engine.COPY in caps.engines else "compute"


def _combo_with_copy(caps, copy_for):  # type: ignore[no-untyped-def]
    """The first declared GEMM combination (the preferred one first) for which ``copy_for(combo)``
    finds a declared COPY conversion: (combo, conversion), or None where there is none."""
    for combo in [preferred_combo(caps)] + [c for c in GEMM_COMBOS if c in caps.combos]:
        conv = combo and copy_for(combo)
        if conv:
            return combo, conv
    return None


def check_copy_then_gemm(dev: Device) -> CaseResult | None:
    """COPY into A on the copy engine, then a GEMM on compute waiting on its fence (None where
    the device declares no COPY into a GEMM input dtype)."""
    caps = dev.info().caps
    found = _combo_with_copy(caps, lambda combo: _copy_into(caps, combo.a))
    if found is None:
        return None
    combo, (src_dt, a_dt) = found
    name = (f"COPY {DTYPES[src_dt].name}->{DTYPES[a_dt].name} on the copy engine, then GEMM {combo.name} "
            "on compute waiting on its fence")
    rng = np.random.default_rng(7)
    a_src = _small_ints(rng, a_dt, (33, 17)).astype(DTYPES[src_dt].numpy)
    b = _small_ints(rng, combo.b, (17, 9))
    src, bb = _buffer_of(dev, a_src), _buffer_of(dev, b)
    a_buf = dev.alloc(a_src.size * DTYPES[a_dt].itemsize_bytes)
    d = dev.alloc(33 * 9 * DTYPES[combo.d].itemsize_bytes)
    f1 = dev.submit([Copy(src=src.matrix(src_dt, 33, 17), dst=a_buf.matrix(a_dt, 33, 17))],
                    engine=_engine_for_copy(caps))
    f2 = dev.submit([Gemm(m=33, n=9, k=17, a=a_buf.matrix(a_dt, 33, 17), b=bb.matrix(combo.b, 17, 9),
                          d=d.matrix(combo.d, 33, 9), acc_dtype=combo.acc, alpha=1, beta=0)],
                    engine="compute", wait=[f1])
    f2.wait(timeout_ns=10**10)
    got = d.read(DTYPES[combo.d].numpy, 33 * 9).reshape(33, 9)
    want = _exact_gemm(a_src, b, 1, combo)
    ok = bool(np.array_equal(got, want)) and bool(np.any(want != 0))
    return _result("engines", name, ok and f1.signalled and f2.signalled,
                   "" if ok else "GEMM did not see the converted A (fence ordering broken)")


def check_gemm_then_copy(dev: Device) -> CaseResult | None:
    """A GEMM on compute, then a COPY of D on the copy engine waiting on its fence (None where
    the device declares no COPY out of a GEMM output dtype)."""
    caps = dev.info().caps
    found = _combo_with_copy(caps, lambda combo: _copy_from(caps, combo.d))
    if found is None:
        return None
    combo, (_, dst_dt) = found
    name = (f"GEMM {combo.name} on compute, then COPY {DTYPES[combo.d].name}->{DTYPES[dst_dt].name} on the copy "
            "engine waiting on its fence")
    rng = np.random.default_rng(8)
    a, b = _small_ints(rng, combo.a, (64, 64)), _small_ints(rng, combo.b, (64, 64))
    ba, bb = _buffer_of(dev, a), _buffer_of(dev, b)
    d = dev.alloc(64 * 64 * DTYPES[combo.d].itemsize_bytes)
    h = dev.alloc(64 * 64 * DTYPES[dst_dt].itemsize_bytes)
    f1 = dev.submit([Gemm(m=64, n=64, k=64, a=ba.matrix(combo.a, 64, 64), b=bb.matrix(combo.b, 64, 64),
                          d=d.matrix(combo.d, 64, 64), acc_dtype=combo.acc, alpha=1, beta=0)], engine="compute")
    f2 = dev.submit([Copy(src=d.matrix(combo.d, 64, 64), dst=h.matrix(dst_dt, 64, 64))],
                    engine=_engine_for_copy(caps), wait=[f1])
    f2.wait(timeout_ns=10**10)
    got = h.read(DTYPES[dst_dt].numpy, 64 * 64)
    d_want = _exact_gemm(a, b, 1, combo).reshape(-1)
    want = d_want.astype(DTYPES[dst_dt].numpy) if combo.is_int else round_to(d_want.astype(np.float64), dst_dt)
    ok = np.array_equal(got, want) and bool(np.any(want != 0))
    return _result("engines", name, ok, "" if ok else "the COPY did not see the finished GEMM")


def check_fence_after_work(dev: Device) -> CaseResult | None:
    combo = preferred_combo(dev.info().caps)
    if combo is None:
        return None
    name = f"a fence signals only after its work is visible (20 GEMMs {combo.name} in flight)"
    rng = np.random.default_rng(9)
    a = _small_ints(rng, combo.a, (96, 96))
    b = _small_ints(rng, combo.b, (96, 96))
    ba, bb = _buffer_of(dev, a), _buffer_of(dev, b)
    size = 96 * 96 * DTYPES[combo.d].itemsize_bytes
    outs = [dev.alloc(size) for _ in range(20)]
    fence = None
    for i, o in enumerate(outs):
        fence = dev.submit([Gemm(m=96, n=96, k=96, a=ba.matrix(combo.a, 96, 96), b=bb.matrix(combo.b, 96, 96),
                                 d=o.matrix(combo.d, 96, 96), acc_dtype=combo.acc,
                                 alpha=i + 1 if combo.is_int else float(i + 1), beta=0)])
    assert fence is not None
    fence.wait(timeout_ns=10**10)
    for i, o in enumerate(outs):
        got = o.read(DTYPES[combo.d].numpy, 96 * 96).reshape(96, 96)
        if not np.array_equal(got, _exact_gemm(a, b, i + 1, combo)):
            return _result("fences", name, False, f"submission {i} was not finished when the last fence signalled")
    return _result("fences", name, True)


def check_timelines(dev: Device) -> CaseResult:
    name = "fence values are monotonic per engine"
    values = [dev.submit([]).value for _ in range(4)]
    ok = all(b > a for a, b in zip(values, values[1:]))
    return _result("fences", name, ok, "" if ok else f"values {values}")


def _timeout_problem(never: Fence) -> str:
    """What is wrong with waiting on a fence that cannot signal ("" when both waits, relative and
    absolute, end with TIMEOUT); each wait runs on a watchdog thread."""
    for kw in ({"timeout_ns": 20_000_000}, {"deadline_ns": time.monotonic_ns() - 1}):
        box: list[FFAccelError] = []

        def wait(kw: dict = kw, box: list = box) -> None:
            try:
                never.wait(**kw)
            except FFAccelError as e:
                box.append(e)

        err = _with_watchdog(wait)
        if err is not None:
            return f"wait({kw}) -> {err!r}"
        if not box or box[0].code != ErrorCode.TIMEOUT:
            return f"wait({kw}) returned without TIMEOUT"
    return ""


def check_wait_timeout(dev: Device) -> CaseResult:
    name = "a wait on a fence that cannot signal ends with TIMEOUT, relative and absolute deadlines"
    last = dev.submit([])
    problem = _timeout_problem(Fence(dev, last.engine, last.value + 1000))
    return _result("fences", name, not problem, problem)


def check_fences_per_engine(dev: Device) -> list[CaseResult]:
    """Every fence check on every declared engine, against that engine's own timeline while the
    other engine's timeline has moved on past it: values grow by one per submission; a fence of
    finished work has signalled and its wait returns; a fence past the engine's timeline has not
    signalled (though the other engine is past that value) and its waits, relative and
    absolute, end with TIMEOUT; a submission on one engine waiting on the other's fence runs."""
    caps = dev.info().caps
    out = []
    for engine in sorted(caps.engines):
        others = [e for e in sorted(caps.engines) if e != engine]
        name = f"fences:per-engine {engine.name.lower()}" + (
            f" (with {', '.join(e.name.lower() for e in others)} moved on)" if others else "")
        problems: list[str] = []
        first = dev.submit([], engine=engine)
        for other in others:  # the other timelines run well ahead of this one
            for _ in range(first.value + 3):
                dev.submit([], engine=other)
        values = [dev.submit([], engine=engine).value for _ in range(3)]
        if values != [first.value + 1, first.value + 2, first.value + 3]:
            problems.append(f"{engine.name.lower()} gave values {[first.value] + values} (one per submission)")
        last = Fence(dev, engine, values[-1])
        ahead = Fence(dev, engine, values[-1] + 1)
        for other in others:  # every submission of the others done too (an asynchronous device)
            err = _with_watchdog(lambda other=other: dev.submit([], engine=other).wait(timeout_ns=10**10))
            if err is not None:
                problems.append(f"waiting on {other.name.lower()} raised {err!r}")
        err = _with_watchdog(lambda: last.wait(timeout_ns=10**10))
        if err is not None:
            problems.append(f"waiting on a fence of submitted work raised {err!r}")
        if not last.signalled:
            problems.append("a fence whose wait returned has not signalled")
        if ahead.signalled:
            problems.append(f"a fence past the timeline ({engine.name.lower()}:{ahead.value}) has signalled")
        problem = _timeout_problem(ahead)
        if problem:
            problems.append(f"on a fence past the timeline: {problem}")
        for other in others:  # a submission on another engine ordered after this engine's fence
            try:
                dev.submit([], engine=other, wait=[last]).wait(timeout_ns=10**10)
            except FFAccelError as e:
                problems.append(f"a submission on {other.name.lower()} waiting on {engine.name.lower()}:"
                                f"{last.value} was refused: {e}")
        out.append(CaseResult("ENGINE", "fences:per-engine", "-", name, not problems, message="; ".join(problems),
                              expected="" if not problems else "each fence judged on its own engine's timeline",
                              got="; ".join(problems)))
    return out


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
    """What is not declared must be refused as the spec requires (UNSUPPORTED naming ``dtypes``,
    ``dst.dtype`` or ``epilogue[0].kind``; an undeclared engine: INVALID_PARAMETER naming
    ``engine``), writing nothing."""
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
        out.append(_refused(dev, [g], d, f"undeclared combination {combo.name} is refused as UNSUPPORTED",
                            ErrorCode.UNSUPPORTED, "dtypes"))
    for src, dst in COPY_CONVERSIONS:
        if (src, dst) in caps.copies:
            continue
        s, t = dev.alloc(64), dev.alloc(64)
        t.write(np.full(64, 0x5A, np.uint8))
        cmd = Copy(src=s.matrix(src, 2, 2), dst=t.matrix(dst, 2, 2))
        out.append(_refused(dev, [cmd], t, f"undeclared COPY {DTYPES[src].name}->{DTYPES[dst].name} is refused",
                            ErrorCode.UNSUPPORTED, "dst.dtype", engine=_engine_for_copy(caps)))
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
        int_param = combo.is_int and kind in (PostOpKind.SCALE, PostOpKind.CLAMP)
        p = PostOpDesc(kind, (1 if int_param else 0.5) if kind == PostOpKind.SCALE else 0,
                       1 if kind == PostOpKind.CLAMP else 0, operand)
        g = Gemm(m=2, n=2, k=2, a=a.matrix(combo.a, 2, 2), b=b.matrix(combo.b, 2, 2), d=d.matrix(combo.d, 2, 2),
                 acc_dtype=combo.acc, alpha=1, beta=0, epilogue=(p,))
        out.append(_refused(dev, [g], d, f"undeclared post-op {POST_OPS[kind].name} is refused",
                            ErrorCode.UNSUPPORTED, "epilogue[0].kind"))
    combo = preferred_combo(caps)
    for engine in Engine:
        if engine in caps.engines or combo is None or not caps.copies:
            continue
        src, dst = sorted(caps.copies)[0]
        s, t = dev.alloc(64), dev.alloc(64)
        t.write(np.full(64, 0x5A, np.uint8))
        cmd = Copy(src=s.matrix(src, 2, 2), dst=t.matrix(dst, 2, 2))
        out.append(_refused(dev, [cmd], t, f"a submission to the undeclared {engine.name.lower()} engine is refused",
                            ErrorCode.INVALID_PARAMETER, "engine", engine=engine.name.lower()))
    return out


def _refused(dev: Device, cmds: list, out_buf, name: str, code: ErrorCode, param: str,  # noqa: ANN001
             engine: str = "compute") -> CaseResult:
    before = out_buf.read(np.uint8, out_buf.size_bytes)
    try:
        dev.submit(cmds, engine=engine).wait(timeout_ns=10**10)
    except FFAccelError as e:
        unchanged = np.array_equal(out_buf.read(np.uint8, out_buf.size_bytes), before)
        ok = e.code == code and e.param == param and unchanged
        return CaseResult("INFO", "info", "-", name, ok, message="" if ok else str(e),
                          expected=f"{code.name} naming {param!r}, nothing written",
                          got=f"{e.code.name} naming {e.param!r}, unchanged={unchanged}")
    return CaseResult("INFO", "info", "-", name, False, message="accepted: the device ran something it does not "
                      "declare", expected=f"{code.name} naming {param!r}", got="accepted")


def engine_checks(dev: Device) -> list[CaseResult]:
    results = []
    for check in (check_copy_then_gemm, check_gemm_then_copy, check_fence_after_work, check_timelines,
                  check_wait_timeout, check_new_buffers_are_zero):
        try:
            r = check(dev)
            if r is not None:  # None: the device declares nothing this check can use
                results.append(r)
        except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
            results.append(_result("engines", check.__name__, False, f"raised {e!r}"))
    results.extend(check_info(dev))
    return results


__all__ = ["check_fences_per_engine", "check_info", "check_new_buffers_are_zero", "engine_checks"]
