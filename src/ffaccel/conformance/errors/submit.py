"""The single-defect cases of the ``submit`` rules: submissions: the header (ABI version, engine,
flags, reserved fields, command count) and waits.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...abi import SUBMIT, WAIT, Copy, encode_submission
from ...abi.layout import MAX_WAITS_PER_SUBMIT
from ...runtime import Fence
from ...spec import Engine
from .harness import JUNK, Builder, Catalogue, Env, ValidGemm, patch


def _sub_header_case(cat: Catalogue, rule: str, param: str, seen: str, detail: str, patches: dict[str, int]) -> None:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        return s.submit_raw(patch(encode_submission([s.gemm()]), SUBMIT, patches if bad else None))
    cat.case(rule, param, seen, detail, build)


def _engine_by_name(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    return s.submit(s.gemm(), engine="video" if bad else "compute")


def _engine_undeclared(env: Env, bad: bool) -> Callable[[], Any]:
    # a device that declares the compute engine only: the copy engine does not exist there
    dev = env.open_caps(engines=frozenset({Engine.COMPUTE}))
    s = ValidGemm(env, dev=dev)
    return s.submit(Copy(src=s.c, dst=s.d), engine="copy" if bad else "compute")


def _wait_reserved(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    value = env.dev.submit([]).value
    raw = encode_submission([s.gemm()], waits=[(Engine.COMPUTE, value)])
    return s.submit_raw(patch(raw, WAIT, {"reserved": JUNK} if bad else None, base=SUBMIT.size_bytes))


def _count_of_two(header: dict[str, int] | None, cut: int | None = None, extra: bytes = b"") -> Builder:
    """Two valid GEMMs; the defective twin patches the header, cuts the bytes or appends some."""
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        _, d2m = s.operand(s.d_dt, s.m, s.n)
        raw = encode_submission([s.gemm(), s.gemm(d=d2m)])
        if bad:
            raw = patch(raw, SUBMIT, header)
            raw = (raw[:cut] if cut is not None else raw) + extra
        return s.submit_raw(raw)
    return build


def _wait_unsubmitted(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    value = env.dev.submit([]).value  # 1: the compute timeline is at 1 (2 once the test has probed it)
    return lambda: env.dev.submit([s.gemm()], wait=[Fence(env.dev, Engine.COMPUTE, value + (10 if bad else 0))])


def _wait_raw(waits_bad: list[tuple[int, int]], waits_good: list[tuple[int, int]],
              dev_caps: dict[str, Any] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_caps(**dev_caps) if dev_caps else env.dev
        s = ValidGemm(env, dev=dev)
        return s.submit_raw(encode_submission([s.gemm()], waits=waits_bad if bad else waits_good))
    return build


def _wait_foreign_fence(env: Env, bad: bool) -> Callable[[], Any]:
    other = env.open_other()
    foreign = other.submit([])
    own = env.dev.submit([])
    s = ValidGemm(env)
    return lambda: env.dev.submit([s.gemm()], wait=[foreign if bad else own])


def _gemm_on_copy_engine(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    return s.submit(s.gemm(), engine="copy" if bad else "compute")


def register(cat: Catalogue) -> None:
    """Add the ``submit`` cases to ``cat``."""
    for v in (0, 2, JUNK):
        _sub_header_case(cat, "submit.abi_version", "abi_version", str(v), f"version-{v}", {"abi_version": v})
    _sub_header_case(cat, "submit.engine", "engine", "got 2", "raw-engine-2", {"engine": 2})
    _sub_header_case(cat, "submit.engine", "engine", str(JUNK), "raw-engine-junk", {"engine": JUNK})
    cat.case("submit.engine", "engine", "video", "unknown-name", _engine_by_name)
    cat.case("submit.engine", "engine", "got 1", "copy-engine-undeclared", _engine_undeclared, portable=False)
    for bit in range(32):
        _sub_header_case(cat, "submit.flags", "flags", hex(1 << bit), f"bit{bit}", {"flags": 1 << bit})
    for name in (n for n in SUBMIT.names if "reserved" in n):
        _sub_header_case(cat, "submit.reserved", "reserved", f"{name} = {JUNK}", name, {name: JUNK})
    cat.case("submit.reserved", "reserved", f"wait[0].reserved = {JUNK}", "wait-reserved", _wait_reserved)
    _sub_header_case(cat, "submit.command_count", "command_count", "3 commands in", "count-3-of-1",
                     {"command_count": 3})
    cat.case("submit.command_count", "command_count", "1 commands in", "count-1-of-2",
             _count_of_two({"command_count": 1}))
    cat.case("submit.command_count", "command_count", "2 commands in", "truncated-by-8", _count_of_two(None, -8))
    cat.case("submit.command_count", "command_count", f"got {SUBMIT.size_bytes - 8} bytes", "shorter-than-header",
             _count_of_two(None, SUBMIT.size_bytes - 8))
    cat.case("submit.command_count", "command_count", "2 commands in", "one-byte-extra",
             _count_of_two(None, None, b"\0"))
    cat.case("submit.wait", "wait", "wait[0].value = 11", "never-submitted-value", _wait_unsubmitted)
    cat.case("submit.wait", "wait", "wait[0].engine = 5", "unknown-engine", _wait_raw([(5, 0)], [(0, 0)]))
    cat.case("submit.wait", "wait", "wait[0].engine = 1", "undeclared-engine",
             _wait_raw([(int(Engine.COPY), 0)], [(int(Engine.COMPUTE), 0)], {"engines": frozenset({Engine.COMPUTE})}),
             portable=False)
    cat.case("submit.wait", "wait", f"wait_count = {MAX_WAITS_PER_SUBMIT + 1}", "too-many-waits",
             _wait_raw([(0, 0)] * (MAX_WAITS_PER_SUBMIT + 1), [(0, 0)] * MAX_WAITS_PER_SUBMIT))
    cat.case("submit.wait", "wait", "a fence of device", "fence-of-another-device", _wait_foreign_fence)
    cat.case("submit.engine_opcode", "engine", "GEMM on COPY", "gemm-on-copy", _gemm_on_copy_engine)
