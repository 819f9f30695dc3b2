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

import ml_dtypes
import numpy as np
import pytest

import ffaccel
from ffaccel.abi import COPY, GEMM, Copy, DeviceCaps, Gemm, Matrix, PostOpDesc, check_command, decode_command
from ffaccel.abi.commands import encode_fields
from ffaccel.abi.layout import MAX_EPILOGUE_SLOTS
from ffaccel.abi.validate import GEOMETRY_FIELDS, GemmClass, check_gemm
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


# --------------------------------------------------------------------------------------
# a known GEMM class: a new geometry is checked by the geometry rules alone (abi/validate.py
# GemmClass), and must answer exactly as the full validator does


_CLASS_CAPS = DeviceCaps(limits=Limits(max_dim=1 << 20, max_batch=1 << 16, alignment_elems=2,
                                       max_buffer_bytes=1 << 40))


def _class_templates(m: int = 4, n: int = 5, k: int = 6, batch: int = 1) -> list[Gemm]:
    """Valid GEMMs (for these sizes) of several classes: bare, transposed and batched, C with beta,
    bias + clamp, int8 + relu + bias_m, add."""
    f32, i8, i32 = DType.F32, DType.I8, DType.I32
    bs_a, bs_d = (m * k, m * n) if batch > 1 else (0, 0)
    return [
        Gemm(m=m, n=n, k=k, a=Matrix(1, f32, m, k), b=Matrix(2, f32, k, n), d=Matrix(3, f32, m, n)),
        Gemm(m=m, n=n, k=k, batch=batch, trans_a=True, trans_b=True,
             a=Matrix(1, f32, k, m, batch_stride_elems=bs_a), b=Matrix(2, f32, n, k),
             d=Matrix(3, f32, m, n, batch_stride_elems=bs_d)),
        Gemm(m=m, n=n, k=k, beta=0.5, a=Matrix(1, f32, m, k), b=Matrix(2, f32, k, n), c=Matrix(4, f32, m, n),
             d=Matrix(3, f32, m, n)),
        Gemm(m=m, n=n, k=k, a=Matrix(1, f32, m, k), b=Matrix(2, f32, k, n), d=Matrix(3, f32, m, n),
             epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=Matrix(5, f32, 1, n)),
                       PostOpDesc(PostOpKind.CLAMP, -1.0, 1.0))),
        Gemm(m=m, n=n, k=k, a=Matrix(1, i8, m, k), b=Matrix(2, i8, k, n), d=Matrix(3, i32, m, n),
             epilogue=(PostOpDesc(PostOpKind.RELU), PostOpDesc(PostOpKind.BIAS_M, operand=Matrix(5, i32, m, 1)))),
        Gemm(m=m, n=n, k=k, a=Matrix(1, f32, m, k), b=Matrix(2, f32, k, n), d=Matrix(3, f32, m, n),
             epilogue=(PostOpDesc(PostOpKind.ADD, operand=Matrix(6, f32, m, n)),)),
    ]


def _outcome(raw: bytes, caps: DeviceCaps, full: bool = False) -> Any:
    """check_command's answer; ``full``: the full validator's, with no class memo."""
    try:
        return check_gemm(decode_command(raw), raw, caps) if full else check_command(raw, caps)
    except FFAccelError as e:
        return (e.code, e.param, e.rule, str(e))


#: Values tried in each geometry field: small ones, each field's own value +- 1 (added per field
#: below), the limits of _CLASS_CAPS and their neighbours (max_dim 2**20, strides 2**38 elements of
#: f32), and the widths of the fields.
_TRIED = (0, 1, 2, 3, 7, 2**20, 2**20 + 1, 2**38, 2**38 + 1, 2**32 - 1, 2**63, 2**64 - 1)


def test_a_known_gemm_class_validates_a_new_geometry_as_the_full_check_does() -> None:
    """A user relies on every rule holding for every geometry, memo or not: a command whose class
    was validated before gets the very GemmOp, or the very error (code, parameter, rule, message),
    that validating it with no memo gives. Every geometry field of every template class, one at a
    time, over boundary values."""
    checked = 0
    for which in range(len(_class_templates())):
        check_command(_class_templates()[which].encode(), _CLASS_CAPS)  # the class is now known on these caps
        for shape in ((4, 5, 6, 1), (1, 7, 3, 3), (3, 2, 5, 4), (2**20, 1, 1, 2), (1, 1, 2**20 + 1, 1),
                      (2, 2**20 + 1, 1, 1), (1, 1, 1, 2**16 + 1)):
            base = _class_templates(*shape)[which].fields()  # a new geometry of the class (over a limit: invalid)
            for name in GEOMETRY_FIELDS:
                own = base.get(name, 0)
                for value in {*_TRIED, own + 1, max(0, own - 1)}:
                    try:
                        raw = encode_fields(GEMM, {**base, name: value})
                    except FFAccelError:  # wider than its field (u32): not a command at all
                        continue
                    assert _outcome(raw, _CLASS_CAPS) == _outcome(raw, _CLASS_CAPS, full=True), (which, shape, name, value)
                    checked += 1
    assert checked > 5000


def test_a_known_gemm_class_is_reused_for_a_new_geometry() -> None:
    """The decode loop's case: the same GEMM with a KV cache one row longer is not re-validated
    whole (its class is remembered), and its op is the full validator's."""
    caps = replace(_CLASS_CAPS)
    f32 = DType.F32
    first = Gemm(m=1, n=40, k=64, batch=12, trans_b=True, a=Matrix(1, f32, 1, 64, batch_stride_elems=64),
                 b=Matrix(2, f32, 40, 64, batch_stride_elems=64 * 4000), d=Matrix(3, f32, 1, 40, batch_stride_elems=40))
    check_command(first.encode(), caps)
    calls = []
    original = GemmClass.check_geometry

    def counting(self: GemmClass, v: tuple) -> Any:
        calls.append(v)
        return original(self, v)

    nxt = replace(first, n=41, b=replace(first.b, rows=41), d=replace(first.d, cols=41, ld_elems=41,
                                                                       batch_stride_elems=41))
    GemmClass.check_geometry = counting  # type: ignore[method-assign]
    try:
        op = check_command(nxt.encode(), caps)
    finally:
        GemmClass.check_geometry = original  # type: ignore[method-assign]
    assert len(calls) == 1
    assert op == _outcome(nxt.encode(), caps, full=True)


def test_gemm_encode_packs_the_named_fields() -> None:
    """Gemm.encode (one struct.pack over the layout's fields) gives the bytes of the field-by-field
    encoder, and the same error or conversion for a value that is not an integer of its width."""
    for shape in ((4, 5, 6, 3), (1, 1, 1, 1)):
        for g in _class_templates(*shape):
            g = replace(g, user_data=2**40 + 3, alpha=-0.0 if g.a.dtype == DType.F32 else 3)
            assert g.encode() == encode_fields(GEMM, g.fields())
    g = _class_templates()[0]
    assert replace(g, m=4.0).encode() == g.encode()  # int() accepts an integral float, as it always has
    for bad in (replace(g, m=-1), replace(g, n=2**32), replace(g, a=replace(g.a, rows=[4]))):
        with pytest.raises(FFAccelError) as e:
            bad.encode()
        assert e.value.rule == "cmd.field_range"


@pytest.mark.parametrize("device", ["ref", "cpu", "npu", "torch:cpu"])
def test_f32_accumulation_takes_alpha_and_beta_as_f32(device: str) -> None:
    """alpha and beta are used in the accumulate type (BLAS's sgemm takes float scalars), rounded
    once by the validator, so every device and the reference agree at f32's range ends: an alpha
    that rounds to 0 is alpha == 0 (A and B not read: their NaN must not reach D), one past f32's
    range is refused naming it (not turned into inf), and an f64 GEMM keeps the float64 value."""
    if device == "torch:cpu":
        pytest.importorskip("torch")
    dt = ml_dtypes.bfloat16 if device == "npu" else np.float32  # (the npu multiplies bf16 into f32)
    a = np.full((4, 3), np.nan, dt)
    b = np.ones((3, 2), dt)
    c = np.full((4, 2), 2.0, np.float32)
    with ffaccel.open(device) as dev:
        got = ffaccel.matmul(a, b, c, alpha=1e-46, beta=0.5, out_dtype=np.float32, device=dev)  # 1e-46: 0 in f32
        np.testing.assert_array_equal(got, np.full((4, 2), 1.0, np.float32))
        for name in ("alpha", "beta"):
            with pytest.raises(FFAccelError) as e:
                ffaccel.matmul(b.T, b, c[:2], out_dtype=np.float32, device=dev, **{name: 1e39})
            assert e.value.code.name == "INVALID_PARAMETER" and e.value.param == name, e.value
        if device in ("ref", "cpu"):
            x = np.full((2, 2), 1e-20)
            np.testing.assert_allclose(ffaccel.matmul(x, x, alpha=1e39, device=dev), np.full((2, 2), 2e-1))
