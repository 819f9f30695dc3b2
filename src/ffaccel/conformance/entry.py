"""Every way into a driver, judged: not only the path a first submission takes.

A device is reached through submissions (first and repeated: a repeated command runs the
binding the transport made the first time), through the front-ends (``matmul`` takes the
driver's "fresh" kernel for plain GEMMs and its prepared kernel, reused across calls, for
the rest; ``blas.gemm`` updates C in place), and, in process, through every hook of
:class:`ffaccel.drivers.base.Driver`: ``gemm``, ``prepare_gemm`` (one kernel called with
several sets of arrays), ``bind_gemm`` (one binding called again after its inputs changed),
``prepare_gemm_fresh`` (and its kernel's ``contiguous`` form), ``kernel_family`` (the kernel of a smaller geometry of the class
run on a larger one it claims to cover) and ``bind_gemm_group`` (independent GEMMs of one geometry as one
call: bit for bit what each one's own binding writes). Each is judged like a GEMM case; front-end calls are compared
bit for bit with the same call on the golden model, on inputs whose exact result is known.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ..abi import DeviceCaps, Gemm, Matrix, check_command, gemm_arrays, gemm_group_arrays
from ..drivers.base import Driver
from ..drivers.ref import RefDriver
from ..frontends import blas as _blas
from ..frontends import post
from ..frontends.numpy_api import matmul
from ..runtime import Buffer, Device
from ..spec import DTYPES, GEMM_COMBOS, DType, FFAccelError, GemmCombo, PostOpKind
from ..transports import InprocTransport
from .cases import INT_SCALARS, FLOAT_SCALARS, GemmCase, PostOpCase, declared_epilogue
from .runner import CaseResult, build_gemm, judge_gemm, tie_base

EntryCheck = Callable[[Device], list[CaseResult]]
_GOLDEN: list[Device] = []


def _golden() -> Device:
    """The ref driver behind the same front-ends (opened once)."""
    if not _GOLDEN:
        _GOLDEN.append(Device("ref", InprocTransport(RefDriver())))
    return _GOLDEN[0]


def _combos(dev: Device) -> list[GemmCombo]:
    caps = dev.info().caps
    return [c for c in GEMM_COMBOS if c in caps.combos]


def _hook_cases(combo: GemmCombo, caps: DeviceCaps) -> list[GemmCase]:
    """A few geometries per combination: what bindings, fresh kernels and epilogues each take
    (the epilogue narrowed to the post-ops the device declares)."""
    sc = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    exact = "random" if combo.is_int else "exact"
    relu_bias = declared_epilogue((PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.RELU)), caps)
    return [
        GemmCase("entry", combo, 6, 5, 7, 1, False, False, sc[1], sc[0], "absent", fill=exact, seed=101,
                 exact=not combo.is_int),
        GemmCase("entry", combo, 9, 8, 5, 1, True, True, sc[1], sc[2], "in_place", fill=exact, seed=102,
                 exact=not combo.is_int),
        GemmCase("entry", combo, 8, 8, 8, 1, True, False, sc[4], sc[0], "absent", seed=103),
        GemmCase("entry", combo, 5, 9, 17, 1, False, True, sc[3], sc[4], "separate", (1, 2, 0, 1),
                 epilogue=relu_bias, seed=104),
        GemmCase("entry", combo, 7, 6, 5, 3, False, False, sc[1], sc[2], "separate", broadcast=(False, True, False),
                 seed=105),
        # a linear layer: the bias alone, no C (what a fresh kernel with an epilogue takes)
        GemmCase("entry", combo, 6, 7, 5, 1, False, False, sc[1], sc[0], "absent",
                 epilogue=declared_epilogue((PostOpCase(PostOpKind.BIAS_N),), caps), seed=106),
    ]


def _linear_cases(combo: GemmCombo, caps: DeviceCaps) -> list[GemmCase]:
    """Linear layers (the bias alone, no C) past OpenBLAS's threading sizes, where a driver's fresh
    kernel may be the BLAS library's own threaded call (the cpu driver: NumPy's ``matmul``, then
    the bias): a skinny one (1 x 130 x 80, a threaded ?gemv from 9216 elements) and a threaded
    ?gemm (40 x 90 x 80, past 2**18). Then the same skinny GEMM bare with alpha -1.5, above and
    below the 9216 elements (1 x 13 x 17): a fresh ?gemv kernel scales by alpha itself (NumPy's
    matmul has no alpha), a step no other skinny fresh case takes. Judged through
    ``prepare_gemm_fresh`` and ``fresh.contiguous`` only (the tiny cases judge the other hooks)."""
    sc = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    bias = declared_epilogue((PostOpCase(PostOpKind.BIAS_N),), caps)
    exact = "random" if combo.is_int else "exact"
    alpha = 3 if combo.is_int else -1.5  # exact on the exact fill (judged bit for bit)
    return [GemmCase("entry", combo, 1, 130, 80, 1, False, False, sc[1], sc[0], "absent", epilogue=bias, seed=109),
            GemmCase("entry", combo, 40, 90, 80, 1, False, False, sc[1], sc[0], "absent", epilogue=bias, seed=110),
            GemmCase("entry", combo, 1, 130, 80, 1, False, False, alpha, sc[0], "absent", fill=exact, seed=111,
                     exact=not combo.is_int),
            GemmCase("entry", combo, 1, 13, 17, 1, False, False, alpha, sc[0], "absent", fill=exact, seed=112,
                     exact=not combo.is_int)]


def _family_cases(combo: GemmCombo) -> list[GemmCase]:
    """Batched GEMMs with no C and no epilogue, as a decoding step's attention runs them (q @ K^T
    with K transposed, then p @ V): what a driver's ``kernel_family`` may cover. Each is judged
    through the kernel prepared for a smaller geometry of its class (:data:`FAMILY_SHRINK`)."""
    sc = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    return [GemmCase("entry", combo, 1, 13, 8, 4, False, True, sc[1], sc[0], "absent", seed=107),
            GemmCase("entry", combo, 1, 8, 13, 4, False, False, sc[1], sc[0], "absent", seed=108)]


#: How much smaller than a judged case the geometry is whose kernel ``kernel_family`` hands it:
#: n and k one element each short (a KV cache one row shorter, in both GEMMs of a step).
FAMILY_SHRINK = 1


def _refill(dev: Device, case: GemmCase, inputs: list[Buffer]) -> None:
    """New values in every input buffer (same layout, another seed): a stale binding shows."""
    _, fresh, d2 = build_gemm(dev, dataclasses.replace(case, seed=case.seed + 7919))
    try:
        for old, new in zip(inputs, fresh):
            old.write(new.read(np.uint8, new.size_bytes))
    finally:
        for b in fresh + [d2]:
            b.free()


def _resubmitted(case: GemmCase) -> Callable[[Device], CaseResult]:
    def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        dev.submit([g]).wait(timeout_ns=60 * 10**9)
        _refill(dev, case, inputs)  # in place, C is D itself: it now holds the first result

    return lambda dev: judge_gemm(dev, dataclasses.replace(case, group="entry:resubmitted"), setup=setup)


def _replayed(case: GemmCase) -> Callable[[Device], CaseResult]:
    state: dict[str, Any] = {}

    def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        cl = state["list"] = dev.record([g])
        cl.replay().wait(timeout_ns=60 * 10**9)
        _refill(dev, case, inputs)

    def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        state["list"].replay().wait(timeout_ns=60 * 10**9)
        state["list"].free()

    return lambda dev: judge_gemm(dev, dataclasses.replace(case, group="entry:replayed"), execute, setup)


def check_replayed(dev: Device) -> list[CaseResult]:
    """A recorded command list replayed after its inputs changed computes with the new values;
    replayed after one of its buffers was freed, it is refused (BAD_HANDLE) and runs nothing."""
    caps = dev.info().caps
    out = [_replayed(c)(dev) for combo in _combos(dev) for c in _hook_cases(combo, caps)[:2]]
    if not _combos(dev):  # a device with no GEMM (copies only) records no GEMM: nothing to judge
        return out
    combo = _combos(dev)[0]
    g, inputs, d_buf = build_gemm(dev, _hook_cases(combo, caps)[0])
    name = f"entry:replayed {combo.name}: replay after a FREE of A is refused"
    try:
        cl = dev.record([g])
        cl.replay().wait(timeout_ns=60 * 10**9)
        before = d_buf.read(np.uint8, d_buf.size_bytes)
        inputs[0].free()
        try:
            cl.replay().wait(timeout_ns=60 * 10**9)
        except FFAccelError as e:
            same = np.array_equal(d_buf.read(np.uint8, d_buf.size_bytes), before)
            ok = e.code.name == "BAD_HANDLE" and same
            out.append(CaseResult("GEMM", "entry:replayed", combo.name, name, ok,
                                  message="" if ok else f"{e.code.name} (D unchanged: {same})",
                                  expected="BAD_HANDLE, nothing written", got=f"{e.code.name}, D unchanged: {same}"))
        else:
            out.append(CaseResult("GEMM", "entry:replayed", combo.name, name, False, message="the replay ran",
                                  expected="BAD_HANDLE", got="accepted"))
        cl.free()
    finally:
        for b in inputs[1:] + [d_buf]:
            b.free()
    return out


def _list_case(combo: GemmCombo, caps: DeviceCaps) -> GemmCase:
    """A recorded GEMM with every kind of operand the device declares: A, B, C and the epilogue's."""
    sc = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    epi = declared_epilogue((PostOpCase(PostOpKind.BIAS_N), PostOpCase(PostOpKind.ADD), PostOpCase(PostOpKind.RELU),
                             PostOpCase(PostOpKind.BIAS_M)), caps)
    return GemmCase("entry:list", combo, 7, 6, 5, 1, False, True, sc[1], sc[4], "separate", (1, 0, 2, 1),
                    epilogue=epi, seed=211)


def _list_run(case: GemmCase, what: str, before_first_replay: bool, free_unrelated: bool
              ) -> Callable[[Device], CaseResult]:
    """Record; maybe replay; maybe allocate, write and free a buffer the list does not name; give
    every operand (epilogue operands included) new values; then the replay judged must use them."""
    state: dict[str, Any] = {}

    def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        cl = state["list"] = dev.record([g])
        if not before_first_replay:
            cl.replay().wait(timeout_ns=60 * 10**9)
        if free_unrelated:
            other = dev.alloc(4096)
            other.write(np.full(4096, 0x3C, np.uint8))
            other.free()
        _refill(dev, case, inputs)

    def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        state["list"].replay().wait(timeout_ns=60 * 10**9)
        state["list"].free()

    named = dataclasses.replace(case, group=f"entry:list {what}")
    return lambda dev: judge_gemm(dev, named, execute, setup)


def _replay_after_named_free(dev: Device, case: GemmCase, index: int, role: str) -> CaseResult:
    """Replay after a FREE of the buffer of one of the list's operands: refused, nothing written."""
    g, inputs, d_buf = build_gemm(dev, case)
    name = f"entry:list {case.combo.name}: replay after a FREE of {role} is refused"
    try:
        cl = dev.record([g])
        cl.replay().wait(timeout_ns=60 * 10**9)
        before = d_buf.read(np.uint8, d_buf.size_bytes)
        inputs[index].free()
        try:
            cl.replay().wait(timeout_ns=60 * 10**9)
        except FFAccelError as e:
            same = np.array_equal(d_buf.read(np.uint8, d_buf.size_bytes), before)
            ok = e.code.name == "BAD_HANDLE" and same
            return CaseResult("GEMM", "entry:list", case.combo.name, name, ok,
                              message="" if ok else f"{e.code.name} (D unchanged: {same})",
                              expected="BAD_HANDLE, nothing written", got=f"{e.code.name}, D unchanged: {same}")
        finally:
            cl.free()
        return CaseResult("GEMM", "entry:list", case.combo.name, name, False, message="the replay ran",
                          expected="BAD_HANDLE", got="accepted")
    finally:
        for i, b in enumerate(inputs + [d_buf]):
            if i != index:
                b.free()


def check_command_lists(dev: Device) -> list[CaseResult]:
    """Command lists hold operands, never their values: new contents of A, B, C and of every
    epilogue operand between RECORD and the first REPLAY, and between replays, are what a replay
    computes with, also after a FREE of a buffer the list does not name; a FREE of one it names
    makes the replay refused (BAD_HANDLE) with nothing written."""
    caps = dev.info().caps
    out = []
    for combo in _combos(dev):
        case = _list_case(combo, caps)
        out.append(_list_run(case, "changed between RECORD and REPLAY", True, False)(dev))
        out.append(_list_run(case, "changed between replays", False, False)(dev))
        out.append(_list_run(case, "changed after a FREE of an unrelated buffer", False, True)(dev))
    if not _combos(dev):  # a device with no GEMM (copies only): no list of GEMMs to replay
        return out
    case = _list_case(_combos(dev)[0], caps)
    roles = ["A", "B", "C"] + [f"epilogue operand {i}" for i, p in enumerate(case.epilogue)
                                if p.kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD)]
    for index, role in enumerate(roles):
        out.append(_replay_after_named_free(dev, case, index, role))
    return out


def check_resubmitted(dev: Device) -> list[CaseResult]:
    """The same command bytes submitted again after the inputs changed: the transport's
    cached binding (or the driver's ``bind_gemm``) must read the new values."""
    caps = dev.info().caps
    return [_resubmitted(c)(dev) for combo in _combos(dev) for c in _hook_cases(combo, caps)]


# -- driver hooks (in-process devices with host memory) ----------------------------------------


def _driver(dev: Device) -> Driver | None:
    transport = getattr(dev, "_transport", None)
    driver = getattr(transport, "driver", None)
    return driver if isinstance(transport, InprocTransport) and isinstance(driver, Driver) else None


def _arrays(g: Gemm, bufs: list[Buffer]) -> tuple[Any, tuple]:
    op = check_command(g.encode(), DeviceCaps())
    mem = {b.handle: b.array(np.uint8) for b in bufs}
    return op, gemm_arrays(op, mem.__getitem__)


def _on_scratch(dev: Device, case: GemmCase, probe: Callable[[Gemm, list[Buffer]], Any]) -> Any:
    """``probe(g, buffers)`` on a case's own buffers, freed afterwards: what a hook offers for the
    case's geometry, asked before the case is judged on buffers of its own."""
    g, inputs, d_buf = build_gemm(dev, case)
    try:
        return probe(g, inputs + [d_buf])
    finally:
        for b in inputs + [d_buf]:
            b.free()


def _hook_result(case: GemmCase, hook: str, ok: bool, msg: str) -> CaseResult:
    return CaseResult("GEMM", f"entry:{hook}", case.combo.name, f"entry:{hook} {case.name}", ok, message=msg)


def _judge_hook(dev: Device, drv: Driver, case: GemmCase, hook: str) -> CaseResult | None:
    """Judge one hook on one case; None where the driver does not offer the hook for it."""
    named = dataclasses.replace(case, group=f"entry:{hook}")
    state: dict[str, Any] = {}

    def other_arrays(dev: Device) -> tuple[Any, tuple, list[Buffer]]:
        g2, in2, d2 = build_gemm(dev, dataclasses.replace(case, seed=case.seed + 31))
        op2, arrs2 = _arrays(g2, in2 + [d2])
        return op2, arrs2, in2 + [d2]

    if hook == "gemm":
        def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            op, arrs = _arrays(g, inputs + [d_buf])
            drv.gemm(op, *arrs)
        return judge_gemm(dev, named, execute)

    if hook == "prepare_gemm":
        def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            op, _ = _arrays(g, inputs + [d_buf])
            kernel = state["kernel"] = drv.prepare_gemm(op)
            _, arrs2, bufs2 = other_arrays(dev)  # the kernel runs on other arrays first
            try:
                kernel(*arrs2)
            finally:
                for b in bufs2:
                    b.free()

        def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            _, arrs = _arrays(g, inputs + [d_buf])
            state["kernel"](*arrs)
        return judge_gemm(dev, named, execute, setup)

    if hook == "bind_gemm":
        def offered(g: Gemm, bufs: list[Buffer]) -> bool:
            op0, arrs0 = _arrays(g, bufs)
            return op0.batch > 0 and op0.m > 0 and op0.n > 0 and drv.bind_gemm(op0, *arrs0) is not None

        if not _on_scratch(dev, case, offered):
            return None

        def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            op, arrs = _arrays(g, inputs + [d_buf])
            run = state["run"] = drv.bind_gemm(op, *arrs)
            if run is None:
                raise RuntimeError("bind_gemm offered a binding for one geometry and not for its twin")
            run()
            _refill(dev, case, inputs)  # the binding must read these, not what it saw when bound

        def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            state["run"]()
        return judge_gemm(dev, named, execute, setup)

    if hook == "kernel_family":
        # the kernel prepared for a smaller geometry of the class, run on this one's arrays, where
        # the driver says that kernel covers it (and gives this geometry the same key)
        seed = dataclasses.replace(case, n=max(1, case.n - FAMILY_SHRINK), k=max(1, case.k - FAMILY_SHRINK))
        g0, in0, d0 = build_gemm(dev, seed)
        try:
            op0, _ = _arrays(g0, in0 + [d0])
            family = drv.kernel_family(op0)
            if family is None:
                return None
            key, covers = family
            if not covers(op0.m, op0.n, op0.k, op0.batch):
                return _hook_result(named, hook, False, "kernel_family's covers() is false for the op's own sizes")
            if not covers(case.m, case.n, case.k, case.batch):
                return None
            kernel = drv.prepare_gemm(op0)
        finally:
            for b in in0 + [d0]:
                b.free()

        def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            op, arrs = _arrays(g, inputs + [d_buf])
            other = drv.kernel_family(op)
            if other is None or other[0] != key:
                raise AssertionError(f"covers() holds for {op.m}x{op.n}x{op.k} (batch {op.batch}) but that "
                                     "geometry's kernel_family key differs")
            kernel(*arrs)
        return judge_gemm(dev, named, execute)

    if hook == "fresh.contiguous":
        # a fresh kernel's ``contiguous(a, b, bias)`` (one bias along n, C-contiguous a and b)
        if (case.batch != 1 or case.c_mode != "absent" or case.trans_a or case.trans_b or any(case.pads)
                or [p.kind for p in case.epilogue] != [PostOpKind.BIAS_N]):
            return None
        def contiguous_fresh(g: Gemm, bufs: list[Buffer]) -> Any:
            op0, (a0, b0, _, _, _) = _arrays(g, bufs)
            fresh = drv.prepare_gemm_fresh(op0)
            return fresh if fresh is not None and a0[0].flags.c_contiguous and b0[0].flags.c_contiguous else None

        fresh = _on_scratch(dev, case, contiguous_fresh)
        if fresh is None:
            return None
        direct = getattr(fresh, "contiguous", None)
        if direct is None:
            return None

        def setup_direct(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            _, arrs2, bufs2 = other_arrays(dev)
            try:
                direct(arrs2[0][0], arrs2[1][0], arrs2[4][0][0, 0])  # other operands and bias first
            finally:
                for b in bufs2:
                    b.free()

        def execute_direct(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
            _, (a, b, _, d, epi) = _arrays(g, inputs + [d_buf])
            out = np.asarray(direct(a[0], b[0], epi[0][0, 0]))
            if out.shape != d.shape[1:] or out.dtype != d.dtype:
                raise AssertionError(f"fresh.contiguous returned {out.shape} {out.dtype}, want {d.shape[1:]} {d.dtype}")
            d[0][...] = out
        return judge_gemm(dev, named, execute_direct, setup_direct)

    # prepare_gemm_fresh: offered for batch 1, no C; (a, b) -> D, or (a, b, epi) -> D with an epilogue
    if case.batch != 1 or case.c_mode != "absent":
        return None
    fresh = _on_scratch(dev, case, lambda g, bufs: drv.prepare_gemm_fresh(_arrays(g, bufs)[0]))
    if fresh is None:
        return None

    def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        _, arrs2, bufs2 = other_arrays(dev)
        try:
            fresh(arrs2[0][0], arrs2[1][0], *((arrs2[4],) if case.epilogue else ()))  # other operands first
        finally:
            for b in bufs2:
                b.free()

    def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        op, (a, b, _, d, epi) = _arrays(g, inputs + [d_buf])
        out = np.asarray(fresh(a[0], b[0], *((epi,) if case.epilogue else ())))
        if out.shape != d.shape[1:] or out.dtype != d.dtype:
            raise AssertionError(f"the fresh kernel returned {out.shape} {out.dtype}, want {d.shape[1:]} {d.dtype}")
        d[0][...] = out
    return judge_gemm(dev, named, execute, setup)


#: GEMMs in one group judged through ``bind_gemm_group`` (the cpu driver binds groups of 4 and more).
GROUP_SIZE = 6
#: The orders in which a group takes a batched case's entries: each operand stepping through its
#: buffer forwards or backwards (a negative stride along the group's axis).
GROUP_ORDERS: dict[str, Callable[[int], list[int]]] = {
    "in order": lambda n: list(range(n)),
    "reversed": lambda n: list(range(n - 1, -1, -1)),
}


def _group_cases(combo: GemmCombo) -> list[GemmCase]:
    """Batched geometries whose ``GROUP_SIZE`` entries the judge hands ``bind_gemm_group`` as that many
    separate GEMMs: A and B per entry or one shared pair (a ring chain of GEMMs with one weight),
    transposed and padded, C absent, in place or separate (the cpu driver groups only what it binds
    one by one: compact operands, alpha 1, no C read)."""
    sc = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    return [
        GemmCase("entry", combo, 8, 8, 8, GROUP_SIZE, False, False, sc[1], sc[0], "absent", seed=111),
        GemmCase("entry", combo, 8, 8, 8, GROUP_SIZE, False, False, sc[1], sc[0], "absent",
                 broadcast=(True, True, False), seed=112),
        GemmCase("entry", combo, 6, 5, 7, GROUP_SIZE, True, True, sc[1], sc[0], "in_place", seed=113),
        GemmCase("entry", combo, 6, 5, 7, GROUP_SIZE, False, False, sc[1], sc[0], "absent", (1, 2, 0, 1), seed=115),
        GemmCase("entry", combo, 9, 8, 5, GROUP_SIZE, False, True, sc[3], sc[2], "separate",
                 broadcast=(False, True, False), seed=114),
    ]


def _members(g: Gemm) -> list[Gemm]:
    """The batch entries of ``g`` as batch-1 GEMMs (an operand with batch stride 0 shared by all)."""
    def entry(mat: Matrix | None, i: int) -> Matrix | None:
        if mat is None:
            return None
        step = mat.batch_stride_elems * DTYPES[mat.dtype].itemsize_bytes
        return dataclasses.replace(mat, offset_bytes=mat.offset_bytes + i * step, batch_stride_elems=0)

    return [dataclasses.replace(g, batch=1, a=entry(g.a, i), b=entry(g.b, i), c=entry(g.c, i), d=entry(g.d, i),
                                epilogue=tuple(dataclasses.replace(p, operand=entry(p.operand, i)) for p in g.epilogue))
            for i in range(g.batch)]


def _judge_group(dev: Device, drv: Driver, case: GemmCase, order: str) -> CaseResult | None:
    """``bind_gemm_group`` over a batched case's entries as separate GEMMs, in ``order``: judged against the
    golden model like the batched GEMM, and bit for bit against each GEMM's own binding (or prepared
    kernel) run one by one. None where the driver does not bind this group."""
    named = dataclasses.replace(case, group="entry:bind_gemm_group")
    pick = GROUP_ORDERS[order]
    state: dict[str, Any] = {}

    def bind(g: Gemm, bufs: list[Buffer]) -> tuple[list, Any]:
        members = _members(g)
        pairs = [_arrays(members[i], bufs) for i in pick(len(members))]  # each GEMM's (op, arrays)
        mem = {b.handle: b.array(np.uint8) for b in bufs}
        stacked = gemm_group_arrays([op for op, _ in pairs], mem.__getitem__)
        assert stacked is not None, "a batched case's entries always stack"
        return pairs, drv.bind_gemm_group(pairs[0][0], *stacked)

    if _on_scratch(dev, case, lambda g, bufs: bind(g, bufs)[1]) is None:
        return None

    def setup(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        pairs, run = bind(g, inputs + [d_buf])
        if run is None:
            raise RuntimeError("bind_gemm_group offered a binding for one group and not for its twin")
        state.update(pairs=pairs, run=run)
        run()
        _refill(dev, case, inputs)  # the binding must read these, not what it saw when bound

    def execute(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
        d = d_buf.array(np.uint8)
        before = d.copy()
        for op, arrs in state["pairs"]:  # each GEMM's own way, one by one: what the group must equal
            own = drv.bind_gemm(op, *arrs)
            if own is not None:
                own()
            else:
                drv.prepare_gemm(op)(*arrs)
        want = d.copy()
        d[...] = before
        state["run"]()
        if not np.array_equal(d, want):
            at = int(np.flatnonzero(d != want)[0])
            state["differs"] = (f"not bit for bit what its GEMMs write one by one: byte {at} of D's buffer is "
                                f"{int(d[at])}, one by one {int(want[at])}")

    res = dataclasses.replace(judge_gemm(dev, named, execute, setup), name=f"{named.name} order={order}")
    if "differs" in state:
        res = dataclasses.replace(res, passed=False, message="; ".join(filter(None, (state["differs"], res.message))))
    return res


def check_driver_hooks(dev: Device) -> list[CaseResult]:
    """Each hook of an in-process driver with host memory, judged (nothing for other devices:
    their hooks are reached through submissions and the front-ends only)."""
    drv = _driver(dev)
    if drv is None or not drv.host_visible:
        return []
    out = []
    caps = dev.info().caps
    every = ("gemm", "prepare_gemm", "bind_gemm", "prepare_gemm_fresh", "fresh.contiguous", "kernel_family")
    for combo in _combos(dev):
        cases = [(case, every) for case in _hook_cases(combo, caps)]
        cases += [(case, ("kernel_family",)) for case in _family_cases(combo)]
        cases += [(case, ("prepare_gemm_fresh", "fresh.contiguous")) for case in _linear_cases(combo, caps)]
        for case, hooks in cases:
            for hook in hooks:
                try:
                    r = _judge_hook(dev, drv, case, hook)
                except Exception as e:  # noqa: BLE001 - a crashing hook fails its case
                    r = _hook_result(case, hook, False, f"raised {e!r}")
                if r is not None:
                    out.append(r)
        for case in _group_cases(combo):
            for order in GROUP_ORDERS:
                try:
                    r = _judge_group(dev, drv, case, order)
                except Exception as e:  # noqa: BLE001 - a crashing hook fails its case
                    r = _hook_result(case, "bind_gemm_group", False, f"{order}: raised {e!r}")
                if r is not None:
                    out.append(r)
    return out


# -- front-ends ----------------------------------------------------------------------------------


def _exact_values(rng: np.random.Generator, dt: DType, shape: tuple[int, ...], tie: float = 0.0,
                  tie_axis: int | None = None) -> np.ndarray:
    lo = 0 if dt == DType.U8 else -3
    x = rng.integers(lo, 4, shape).astype(np.float64)
    if tie and tie_axis is not None:
        idx = [slice(None)] * len(shape)
        idx[tie_axis] = 0
        x[tuple(idx)] = tie if tie_axis == len(shape) - 1 else 1.0
    return x.astype(DTYPES[dt].numpy)


def _compare(dev: Device, name: str, combo: GemmCombo, call: Callable[[Device], np.ndarray]) -> CaseResult | None:
    def res(ok: bool, msg: str = "") -> CaseResult:
        return CaseResult("GEMM", "entry:frontend", combo.name, f"entry:frontend {combo.name} {name}", ok, message=msg)

    try:
        want = np.asarray(call(_golden()))
    except FFAccelError:
        return None  # the front-end cannot express this combination this way
    try:
        got = np.asarray(call(dev))
    except FFAccelError as e:
        return res(False, f"device refused a valid call: {e}")
    except Exception as e:  # noqa: BLE001
        return res(False, f"device crashed: {e!r}")
    if got.shape != want.shape or got.dtype != want.dtype:
        return res(False, f"got {got.shape} {got.dtype}, want {want.shape} {want.dtype}")
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    same = (g64 == w64) | (np.isnan(g64) & np.isnan(w64))
    if not same.all():
        idx = tuple(int(i) for i in np.argwhere(~same)[0])
        return res(False, f"not bit for bit the golden result at {idx}: got {got[idx]!r}, want {want[idx]!r}")
    return res(True)


_TRANS = ((False, False), (True, False), (False, True), (True, True))


def check_frontends(dev: Device) -> list[CaseResult]:
    """``matmul`` (fresh kernels, prepared kernels reused across calls, transposed views,
    batches, C, post-ops, ``out``) and ``blas.gemm``, bit for bit against the golden model."""
    out: list[CaseResult | None] = []
    for combo in _combos(dev):
        rng = np.random.default_rng(int(combo.a) * 16 + int(combo.d))
        tie = tie_base(combo.d)
        out_dtype = np.float32 if combo.d == DType.F32 and combo.a != DType.F32 else None
        kw: dict[str, Any] = {} if out_dtype is None else {"out_dtype": out_dtype}
        d_np, acc_np = DTYPES[combo.d].numpy, DTYPES[combo.acc].numpy

        def vals(dt: DType, shape: tuple[int, ...], axis: int | None = None) -> np.ndarray:
            return _exact_values(rng, dt, shape, tie, axis)

        # around the cpu driver's fresh-kernel limit (m*n*k <= 2**18); the second call of a geometry
        # reuses the first one's plan, with new values
        # (the front-end takes a driver's fresh kernel from the second call of a plain geometry on)
        for m, n, k, trans, reps in ((5, 7, 9, _TRANS, 2), (16, 16, 16, _TRANS, 2), (60, 64, 67, _TRANS[::3], 2),
                                     (70, 71, 72, _TRANS[:3], 1)):
            for ta, tb in trans:
                for rep in range(reps):
                    a = vals(combo.a, (m, k), 1)
                    b = vals(combo.b, (k, n), 0)
                    av = np.ascontiguousarray(a.T).T if ta else a  # a transposed view: trans_a
                    bt = np.ascontiguousarray(b.T)  # stored transposed, passed with trans_b
                    alpha = 1 if m * n * k < 1000 else 2  # small ones plain, larger ones scaled
                    what = f"matmul {m}x{n}x{k} alpha={alpha} view-T={ta} flag-T={tb} call {rep + 1}"
                    out.append(_compare(dev, what, combo, lambda d, av=av, b=b, bt=bt, tb=tb, alpha=alpha: matmul(
                        av, bt if tb else b, alpha=alpha, trans_b=tb, device=d, **kw)))
        a3 = vals(combo.a, (3, 6, 9), 2)
        b2 = vals(combo.b, (9, 5), 0)
        out.append(_compare(dev, "matmul batch 3 @ 2-D", combo, lambda d: matmul(a3, b2, device=d, **kw)))
        a2 = vals(combo.a, (6, 9), 1)
        b3 = vals(combo.b, (2, 9, 5), 1)
        out.append(_compare(dev, "matmul 2-D @ batch 2", combo, lambda d: matmul(a2, b3, device=d, **kw)))
        a, b = vals(combo.a, (7, 9), 1), vals(combo.b, (9, 6), 0)
        e_dt = combo.d if combo.d in (DType.F16, DType.BF16) else combo.acc
        bias_n = _exact_values(rng, e_dt, (6,))
        bias_m = _exact_values(rng, combo.acc, (7,))
        resid = _exact_values(rng, e_dt, (7, 6))
        c = _exact_values(rng, combo.d, (7, 6))
        if combo.is_int:
            chains = [[post.bias(bias_n), post.relu()], [post.scale(3), post.add(resid), post.clamp(-50, 60)],
                      [post.clamp(-(2**24) - 1, 2**24 + 1), post.bias(bias_m, axis="m")]]
            alpha, beta = 2**24 + 1, -3
        else:
            chains = [[post.bias(bias_n), post.relu()],
                      [post.scale(0.5), post.add(resid), post.clamp(-tie - 9, tie + 6)],
                      [post.add(resid), post.bias(bias_m, axis="m"), post.scale(-2.0)]]
            alpha, beta = -1.5, 2.0
        caps = dev.info().caps
        chains = [c for c in ([p for p in chain if p.kind in caps.post_ops] for chain in chains) if c]
        for i, chain in enumerate(chains):
            out.append(_compare(dev, f"matmul post_ops chain {i}", combo,
                                lambda d, chain=chain: matmul(a, b, post_ops=chain, device=d, **kw)))
            out.append(_compare(dev, f"matmul c, alpha, beta, post_ops chain {i}", combo,
                                lambda d, chain=chain: matmul(a, b, c, alpha=alpha, beta=beta, post_ops=chain,
                                                              device=d, **kw)))

        def into_out(d: Device) -> np.ndarray:
            o = np.full((7, 6), 7, d_np)
            matmul(a, b, out=o, device=d)
            return o

        if out_dtype is None:
            out.append(_compare(dev, "matmul out=", combo, into_out))
        for order, ta, tb in (("row", "N", "N"), ("row", "T", "N"), ("col", "N", "T"), ("col", "T", "T")):
            m, n, k = 6, 5, 7
            lda, ldb, ldc = 9, 8, 7
            af = _exact_values(rng, combo.a, (lda * 9,))
            bf = _exact_values(rng, combo.b, (ldb * 9,))
            cf = _exact_values(rng, combo.d, (ldc * 7,))
            for bet in (beta, 0):
                def call(d: Device, order: str = order, ta: str = ta, tb: str = tb, bet: Any = bet) -> np.ndarray:
                    cc = cf.copy()
                    if bet == 0 and not combo.is_int:
                        cc[:] = np.nan  # beta == 0: C is not read
                    _blas.gemm(order, ta, tb, m, n, k, alpha, af, lda, bf, ldb, bet, cc, ldc, device=d)
                    return cc
                out.append(_compare(dev, f"blas.gemm {order} {ta}{tb} beta={bet}", combo, call))
    return [r for r in out if r is not None]


def check_reads_are_copies(dev: Device, torch_offload: bool | None = None) -> list[CaseResult]:
    """What a read returns is the caller's: written after the read, the device must not change it.

    Through :meth:`Buffer.read` (which a device with memory of its own serves with
    ``DeviceMemory.read_bytes``), through ``DeviceMemory`` itself for an in-process driver whose
    memory the host cannot address, and through the front-ends (``matmul``'s result, then another
    ``matmul`` on the device; ``blas.gemm``'s C, then another call) — and the PyTorch offload
    front-end (a tensor from ``x @ w`` inside ``offload(dev)``, then two more GEMMs) where
    ``torch_offload`` is True, or None and PyTorch is already imported (the suite does not pay
    PyTorch's import for it; ``tests/test_conformance_reach.py`` runs it on every device)."""
    out: list[CaseResult] = []

    def res(what: str, ok: bool, msg: str = "") -> None:
        out.append(CaseResult("ENGINE", "memory:reads", "-", f"memory:reads {what}", ok, message="" if ok else msg,
                              expected="" if ok else "the first read unchanged", got="" if ok else msg))

    first, second = np.arange(96, dtype=np.uint8), np.arange(96, dtype=np.uint8)[::-1].copy()
    buf = dev.alloc(96)
    try:
        buf.write(first)
        got = buf.read(np.uint8, 96)
        buf.write(second)
        again = buf.read(np.uint8, 96)
        res("Buffer.read, then write, then read", np.array_equal(got, first) and np.array_equal(again, second),
            f"the first read now holds {got[:4].tolist()}..., the second {again[:4].tolist()}...")
    finally:
        buf.free()
    drv = _driver(dev)
    if drv is not None and not drv.host_visible:
        mem = drv.alloc(96)
        mem.write_bytes(0, first)
        got = np.asarray(mem.read_bytes(0, 96))
        mem.write_bytes(0, second)
        res("DeviceMemory.read_bytes, then write_bytes", np.array_equal(got, first),
            f"the read now holds {got[:4].tolist()}...")
    caps = dev.info().caps
    combo = next((c for c in GEMM_COMBOS if c in caps.combos and c.a == DType.F32),
                 next((c for c in GEMM_COMBOS if c in caps.combos), None))
    if combo is None:
        return out
    rng = np.random.default_rng(5)
    kw: dict[str, Any] = {"out_dtype": np.float32} if combo.d == DType.F32 and combo.a != DType.F32 else {}
    a1, a2 = _exact_values(rng, combo.a, (6, 5)), _exact_values(rng, combo.a, (6, 5))
    b = _exact_values(rng, combo.b, (5, 4))
    for label, extra in (("matmul", {}), ("matmul with C", {"c": _exact_values(rng, combo.d, (6, 4)),
                                                            "beta": 1 if combo.is_int else 1.0})):
        try:  # the geometry's first call, then the one whose result is kept: a front-end may take
            # another path from a geometry's second call on (matmul's fresh kernel)
            matmul(a2, b, device=dev, **kw, **extra)
            r1 = np.asarray(matmul(a1, b, device=dev, **kw, **extra))
            kept = r1.copy()
            matmul(a2, b, device=dev, **kw, **extra)
            matmul(a2 + (1 if combo.a != DType.U8 else 0), b, device=dev, **kw, **extra)
        except FFAccelError as e:  # the front-end cannot express this combination this way
            if e.code.name == "UNSUPPORTED":
                continue
            raise
        res(f"{label} {combo.name}, then two more calls", np.array_equal(r1, kept),
            "the first call's result changed when the device ran the next")
    if torch_offload or (torch_offload is None and "torch" in sys.modules):
        out.extend(_offload_reads_are_copies(dev, res))
    return out


def _offload_reads_are_copies(dev: Device, res: Callable[[str, bool, str], None]) -> list[CaseResult]:
    """The PyTorch offload front-end: a tensor ``x @ w`` (and ``F.linear`` with a bias) handed back
    inside ``offload(dev)`` must stay as it was while the device runs the next GEMMs."""
    import torch

    from ..frontends.torch_offload import offload

    caps = dev.info().caps
    f32 = next((c for c in GEMM_COMBOS if c in caps.combos and c.a == DType.F32 and c.d == DType.F32), None)
    if f32 is None:  # offload sends f32 tensors; a device without f32 GEMMs leaves them on the host
        return []
    x = torch.arange(48, dtype=torch.float32).reshape(8, 6) % 7 - 3
    w, bias = torch.ones(6, 5) * 0.5, torch.arange(5, dtype=torch.float32)
    calls: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [("x @ w", lambda t: t @ w)]
    if PostOpKind.BIAS_N in caps.post_ops:
        calls.append(("F.linear with a bias", lambda t: torch.nn.functional.linear(t, w.T, bias)))
    for label, call in calls:
        with offload(dev, threads=None) as session:
            call(x - 1)  # the geometry's first call (a front-end may take another path from the second on)
            first = call(x)
            kept = first.clone()
            call(x + 1)
            call(x + 2)
            ran = session.stats.get("offloaded_calls", 1)
        res(f"torch offload {label}, then two more calls", bool(ran) and torch.equal(first, kept),
            "the first tensor changed when the device ran the next GEMMs (it aliases device memory)"
            if ran else "offload ran nothing on the device")
    return []


def entry_checks(level: str) -> list[tuple[str, EntryCheck]]:
    """(name, check) for every entry-point check of a level (the same at both levels)."""
    return [
        ("entry:resubmitted (same bytes, new input values)", check_resubmitted),
        ("entry:replayed (command lists)", check_replayed),
        ("entry:list (command lists: operands changed before and between replays, FREEs)", check_command_lists),
        ("entry:frontend (matmul, blas.gemm)", check_frontends),
        ("entry:gemm, entry:prepare_gemm, entry:bind_gemm, entry:prepare_gemm_fresh, entry:fresh.contiguous, "
         "entry:kernel_family, entry:bind_gemm_group (driver hooks)",
         check_driver_hooks),
        ("memory:reads (reads are copies: Buffer, DeviceMemory, front-ends)", check_reads_are_copies),
    ]


__all__ = ["check_command_lists", "check_driver_hooks", "check_frontends", "check_reads_are_copies", "check_replayed", "check_resubmitted", "entry_checks"]
