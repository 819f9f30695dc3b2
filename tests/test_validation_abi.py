"""Bad input at the raw ABI: every validation rule, one defect at a time (the Linux IGT pattern).

The catalogue of single-defect cases lives in :mod:`ffaccel.conformance.errors` (it is part of
the conformance suite third-party drivers run). Here every case runs on the ``ref`` device,
the portable ones also on ``cpu``: the defective twin must raise :class:`ffaccel.FFAccelError`
with the rule's exact code, parameter name and rule id, name the value it saw, and change
nothing (every buffer byte-identical, no fence value consumed); the defect-free twin must be
accepted. :func:`test_every_rule_has_a_case` checks that every rule enforced by the abi and
the runtime is covered (the front-end rules are covered in ``test_validation_frontends.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import COPY, GEMM, Copy, DeviceCaps
from ffaccel.abi.layout import MAX_EPILOGUE_SLOTS
from ffaccel.conformance import errors
from ffaccel.conformance.errors import (
    CASES,
    RULE_CASES,
    CapsDriver,
    Case,
    DeviceFactory,
    Env,
    K,
    M,
    N,
    ValidGemm,
    error_checks,
)
from ffaccel.spec import COMBO_BY_DTYPES, RULES, DType, Engine, FFAccelError, Limits, PostOpKind
from ffaccel.transports import InprocTransport


def ref() -> ffaccel.Device:
    return ffaccel.open("ref")


def cpu() -> ffaccel.Device:
    return ffaccel.open("cpu")


PORTABLE = [c for c in CASES if c.portable]

#: Rules of the abi and runtime scopes that no case can trip through the public API. Empty:
#: every rule is reachable (fence.timeout through Device.wait / Fence.wait on a value never
#: submitted; memory.quota through InprocTransport(max_memory_bytes=...); UNSUPPORTED rules
#: through a driver whose caps() declares less).
EXEMPT: dict[str, str] = {}

ABI_SCOPES = ("abi", "runtime")


def test_every_rule_has_a_case() -> None:
    assert {r.scope for r in RULES.values()} <= {"abi", "runtime", "frontends", "transport"}  # transport: test_server_*
    wanted = {rid for rid, r in RULES.items() if r.scope in ABI_SCOPES} - set(EXEMPT)
    assert set(RULE_CASES) == wanted
    assert set(EXEMPT) <= set(RULES)
    assert sorted(i for ids in RULE_CASES.values() for i in ids) == sorted(c.id for c in CASES)


def test_case_table_matches_rules() -> None:
    """Every case's expected code and parameter agree with the rule table."""
    for c in CASES:
        rule = RULES[c.rule]
        assert rule.scope in ABI_SCOPES, c.id
        assert c.code == rule.code
        if "{" not in rule.param:
            assert c.param == rule.param, c.id


def test_reserved_fields_are_all_patched() -> None:
    """The reserved-field cases patch every reserved field of both command layouts."""
    gemm = [n for n in GEMM.names if "reserved" in n]
    copy = [n for n in COPY.names if "reserved" in n]
    assert len(gemm) == 5 + 2 * MAX_EPILOGUE_SLOTS and len(copy) == 3
    ids = set(RULE_CASES["cmd.reserved"])
    assert {f"cmd.reserved-gemm-{n}" for n in gemm} | {f"cmd.reserved-copy-{n}" for n in copy} <= ids


def _refused(c: Case, factory: DeviceFactory) -> Env:
    with Env(factory) as env:
        call = c.build(env, True)
        fences = env.probe_timelines()
        before = env.snapshot()
        with pytest.raises(FFAccelError) as info:
            call()
        err = info.value
        assert (err.code, err.param, err.rule) == (c.code, c.param, c.rule), str(err)
        assert c.seen_in(env) in str(err), f"{c.seen_in(env)!r} not in {str(err)!r}"
        if c.command_index is not None:
            assert err.command_index == c.command_index
        assert env.snapshot() == before, "a refused call changed a buffer"
        after = env.probe_timelines()
        assert after == {key: v + 1 for key, v in fences.items()}, "a refused submission consumed a fence value"
    return env


def _accepted(c: Case, factory: DeviceFactory) -> None:
    with Env(factory) as env:
        c.build(env, False)()


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_single_defect_is_refused_and_nothing_changes(c: Case) -> None:
    env = _refused(c, ref)
    # a case is portable exactly when it needs nothing but devices from the factory
    assert env.used_nonportable == (not c.portable)


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_without_the_defect_the_call_is_accepted(c: Case) -> None:
    _accepted(c, ref)


@pytest.mark.parametrize("c", PORTABLE, ids=lambda c: c.id)
def test_portable_single_defect_on_cpu(c: Case) -> None:
    _refused(c, cpu)


@pytest.mark.parametrize("c", PORTABLE, ids=lambda c: c.id)
def test_portable_without_the_defect_on_cpu(c: Case) -> None:
    _accepted(c, cpu)


def test_error_checks_on_cpu() -> None:
    """The conformance entry point: every portable case, and only those, passes on cpu."""
    assert "cpu" in ffaccel.devices()
    results = error_checks(cpu)
    assert [r.message for r in results if not r.passed] == []
    assert len(results) == len(PORTABLE)
    assert {(r.op, r.combo) for r in results} == {("ERROR", "-")}
    assert [r.name for r in results] == [c.id for c in PORTABLE]


def _small_device() -> ffaccel.Device:
    """A third-party-like device declaring less: f32 GEMM with relu, the compute engine only."""
    f32 = (DType.F32,) * 4
    caps = DeviceCaps(combos=frozenset({COMBO_BY_DTYPES[f32]}), copies=frozenset({(DType.F32, DType.F32)}),
                      post_ops=frozenset({PostOpKind.RELU}), engines=frozenset({Engine.COMPUTE}),
                      limits=Limits(alignment_elems=2))
    return ffaccel.Device("small", InprocTransport(CapsDriver(caps)))


def test_error_checks_on_a_device_declaring_less() -> None:
    """Cases not defined for what a device declares are left out, never failed."""
    results = error_checks(_small_device)
    assert [r.message for r in results if not r.passed] == []
    ran = {r.name for r in results}
    assert 0 < len(ran) < len(PORTABLE)
    # a case naming a dtype the device lacks runs on the device's own GEMM where it is defined there:
    # bf16 offsets 2 (good) and 1 (bad) are both misaligned for f32 at alignment_elems=2
    assert "operand.alignment-b-bf16-offset-1" not in ran
    assert "operand.alignment-a-misaligned" in ran  # at the device's own alignment (2 f32 elements)
    assert "submit.engine_opcode-gemm-on-copy" not in ran  # no copy engine: refused as submit.engine
    assert "operand.ld-a-ld-0" in ran


def test_error_checks_reports_what_went_wrong() -> None:
    """A wrong expectation, a crashing case and a hang each fail alone, with a message."""
    good = next(c for c in CASES if c.id == "cmd.reserved-third-of-three")
    wrong = replace(good, id="wrong", param="a.reserved")

    def crash(env: Env, bad: bool) -> Callable[[], Any]:
        raise RuntimeError("boom")

    crashing = replace(good, id="crash", build=crash)
    results = error_checks(ref, cases=[wrong, crashing, good])
    assert [r.passed for r in results] == [False, False, True]
    assert "'a.reserved'" in results[0].message and "c.reserved" in results[0].message
    assert "boom" in results[1].message


def test_error_checks_never_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    good = next(c for c in CASES if c.id == "cmd.reserved-third-of-three")
    hanging = replace(good, id="hang", build=lambda env, bad: lambda: time.sleep(0.5))
    monkeypatch.setattr(errors.harness, "CASE_WATCHDOG_S", 0.05)  # where error_checks reads it
    results = error_checks(ref, cases=[hanging, good])
    assert [r.passed for r in results] == [False, False]
    assert "hang" in results[0].message and results[1].message == "not run: hang hung"


# ------------------------------------------------------------------------------------------
# companions: what the single-defect cases lean on


def test_first_two_commands_would_have_written() -> None:
    """The third-command cases are meaningful: without the defect, the first two GEMMs write their D."""
    env = Env(ref)
    s = ValidGemm(env)
    d1_buf, d1 = s.operand(s.d_dt, M, N)
    d2_buf, d2 = s.operand(s.d_dt, M, N)
    b1, b2 = bytes(d1_buf.array(np.uint8)), bytes(d2_buf.array(np.uint8))
    s.dev.submit([s.gemm(d=d1), s.gemm(d=d2), s.gemm(a=replace(s.a, ld_elems=K))])
    assert bytes(d1_buf.array(np.uint8)) != b1 and bytes(d2_buf.array(np.uint8)) != b2
    # and with the defect, neither did
    d1_buf.write(np.frombuffer(b1, np.uint8))
    d2_buf.write(np.frombuffer(b2, np.uint8))
    with pytest.raises(FFAccelError) as info:
        s.dev.submit([s.gemm(d=d1), s.gemm(d=d2), s.gemm(a=replace(s.a, ld_elems=K - 1))])
    assert info.value.command_index == 2
    assert bytes(d1_buf.array(np.uint8)) == b1 and bytes(d2_buf.array(np.uint8)) == b2


@pytest.mark.parametrize("dt", [np.float32, np.float64, np.int8], ids=lambda d: np.dtype(d).name)
def test_d_exactly_c_is_accepted_and_computes_in_place(dt: Any) -> None:
    env = Env(ref)
    s = ValidGemm(env, dt)
    a = s.A.array(s.dt, (M, K)).astype(np.float64)
    b = s.B.array(s.dt, (K, N)).astype(np.float64)
    c = s.C.array(s.d_dt, (M, N)).astype(np.float64)
    alpha, beta = (2, -1) if s.is_int else (1.5, 0.5)
    d_before = bytes(s.D.array(np.uint8))
    s.dev.submit([s.gemm(d=s.c, alpha=alpha, beta=beta)])
    got = s.C.array(s.d_dt, (M, N)).astype(np.float64)
    np.testing.assert_allclose(got, alpha * a @ b + beta * c, rtol=1e-5 if dt == np.float32 else 1e-12)
    assert bytes(s.D.array(np.uint8)) == d_before  # the other D buffer was not named


def test_quota_unchanged_by_a_refused_alloc() -> None:
    env = Env(ref)
    dev = env.open_caps(quota=256)
    env.alloc(200, dev)
    with pytest.raises(FFAccelError):
        dev.alloc(57)
    dev.alloc(56)  # exactly what is left: the refused request took nothing
    with pytest.raises(FFAccelError) as info:
        dev.alloc(1)
    assert info.value.rule == "memory.quota"


def test_handles_are_per_client() -> None:
    """The same handle number names each client's own buffer, never the other's."""
    env = Env(ref)
    other = env.open_other()
    mine = env.filled(np.float32, 4)
    theirs = env.filled(np.float32, 4, other)
    assert mine.handle == theirs.handle  # per-client tables, numbered alike
    dst = env.alloc(16)
    env.dev.submit([Copy(src=mine.matrix(np.float32, 1, 4), dst=dst.matrix(np.float32, 1, 4))], engine="copy")
    assert bytes(dst.array(np.uint8)) == bytes(mine.array(np.uint8)) != bytes(theirs.array(np.uint8))
