"""Differential tests: every fast driver against the ref golden model, judged by the spec's bound.

Hypothesis draws whole conformance cases (``ffaccel.conformance.GemmCase``): any combination,
shapes including 0, 1 and primes, transposes, alpha/beta including 0, padded leading
dimensions, batch strides including 0, in-place C, and epilogue chains. Each runs through
the conformance judge: operands sit in buffers with rogue values around them and in their
padding; D's windows must be within the spec's bound of the golden answer, every other byte
of D's buffer unchanged, and every input untouched.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffaccel
from ffaccel.conformance import GemmCase, judge_gemm
from ffaccel.conformance.cases import FLOAT_SCALARS, INT_SCALARS, PostOpCase
from ffaccel.spec import GEMM_COMBOS, POST_OPS, GemmCombo, PostOpKind

FAST_DEVICES = [d for d in ffaccel.devices() if d == "cpu"]
SIZES = [0, 1, 2, 3, 5, 7, 13, 17, 33]


def _post_op(kind: PostOpKind, combo: GemmCombo, in_acc: bool) -> PostOpCase:
    if kind == PostOpKind.CLAMP:
        return PostOpCase(kind, *((-40, 50) if combo.is_int else (-0.5, 0.75)), operand_in_acc=in_acc)
    if kind == PostOpKind.SCALE:
        return PostOpCase(kind, 3 if combo.is_int else -1.5, operand_in_acc=in_acc)
    return PostOpCase(kind, operand_in_acc=in_acc)


@st.composite
def gemm_cases(draw: st.DrawFn) -> GemmCase:
    combo: GemmCombo = draw(st.sampled_from(GEMM_COMBOS))
    scalars = INT_SCALARS if combo.is_int else FLOAT_SCALARS
    kinds = [kd for kd, spec in POST_OPS.items() if spec.int_ok or not combo.is_int]
    epilogue = tuple(_post_op(kd, combo, draw(st.booleans())) for kd in draw(st.lists(st.sampled_from(kinds),
                                                                                      max_size=4)))
    return GemmCase(
        "hypothesis", combo, *(draw(st.sampled_from(SIZES)) for _ in range(3)),
        batch=draw(st.sampled_from([1, 1, 2, 3])), trans_a=draw(st.booleans()), trans_b=draw(st.booleans()),
        alpha=draw(st.sampled_from(scalars)), beta=draw(st.sampled_from(scalars)),
        c_mode=draw(st.sampled_from(["separate", "in_place", "absent"])),
        pads=tuple(draw(st.sampled_from([0, 0, 1, 3])) for _ in range(4)),  # type: ignore[arg-type]
        broadcast=tuple(draw(st.booleans()) for _ in range(3)),  # type: ignore[arg-type]
        epilogue=epilogue, seed=draw(st.integers(0, 2**32 - 1)),
    )


@pytest.mark.parametrize("device", FAST_DEVICES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=gemm_cases())
def test_driver_matches_ref_within_bound(device: str, case: GemmCase) -> None:
    if case.c_mode == "absent" and case.beta != 0:
        case = GemmCase(**{**case.__dict__, "beta": 0 * case.beta})  # C absent means beta == 0
    result = judge_gemm(ffaccel.open(device), case)
    assert result.passed, f"{result.name}: {result.message}"


# --- the BLAS corner cases, named, on every device ------------------------------------------

ALL_DEVICES = [d for d in ("ref", "cpu") if d in ffaccel.devices()]


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_nan_in_c_does_not_leak_when_beta_is_zero(device: str) -> None:
    c = np.full((3, 3), np.nan, np.float32)
    out = np.full((3, 3), np.nan, np.float32)
    r = ffaccel.matmul(np.ones((3, 2), np.float32), np.ones((2, 3), np.float32), c, beta=0.0, out=out,
                       device=device)
    np.testing.assert_array_equal(r, np.full((3, 3), 2.0, np.float32))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_alpha_zero_reads_neither_a_nor_b(device: str) -> None:
    a = np.full((2, 4), np.nan)
    b = np.full((4, 2), np.inf)
    c = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(ffaccel.matmul(a, b, c, alpha=0.0, beta=2.0, device=device), 2 * c)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_k_zero_gives_beta_c(device: str) -> None:
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ffaccel.matmul(np.empty((2, 0), np.float32), np.empty((0, 3), np.float32), c, beta=-1.5, device=device)
    np.testing.assert_array_equal(got, -1.5 * c)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dt", [np.float16, ml_dtypes.bfloat16], ids=["f16", "bf16"])
def test_half_types_accumulate_in_f32(device: str, dt) -> None:
    # 256 + 1 + 1 + ... : in f16/bf16 arithmetic 256 + 1 rounds back to 256 (bf16) and
    # 2048 + 1 to 2048 (f16); an f32 accumulator keeps every 1.
    big = 2048.0 if dt == np.float16 else 256.0
    k = 64
    a = np.ones((1, k), dt)
    b = np.ones((k, 1), dt)
    b[0, 0] = big
    got = ffaccel.matmul(a, b, out_dtype=np.float32, device=device)
    assert got[0, 0] == big + k - 1


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_int8_accumulator_wraps_modulo_2_32(device: str) -> None:
    k = 2048
    a = np.full((1, k), -128, np.int8)
    b = np.full((k, 1), -128, np.int8)
    got = ffaccel.matmul(a, b, alpha=2**20, device=device)
    want = np.array(16384 * k * 2**20, dtype=np.int64).astype(np.int32)  # wraps like hardware
    assert got[0, 0] == want


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_output_rounding_is_nearest_even(device: str) -> None:
    # 1 + 2**-11 is exactly halfway between two f16 neighbours: ties go to the even one (1.0);
    # 1 + 3 * 2**-11 goes up to 1 + 2**-9.
    a = np.array([[1.0, 1.0]], np.float16)
    b = np.array([[1.0, 1.0], [2.0**-11, 3 * 2.0**-11]], np.float16)
    got = ffaccel.matmul(a, b, device=device)
    np.testing.assert_array_equal(got, np.array([[1.0, 1.0 + 2.0**-9]], np.float16))
