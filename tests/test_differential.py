"""Differential tests: every fast driver against the ref golden model, judged by the spec's bound.

Each case is a real submission through the device API: operands live in buffers whose
padding (around every operand and inside padded leading dimensions) holds rogue values.
After the GEMM, D's m x n windows must be within the spec's error bound of the golden
answer, every other byte of D's buffer must be unchanged, and inputs must be untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ffaccel
from ffaccel.abi import DeviceCaps, Gemm, Matrix, PostOpDesc, check_command, gemm_arrays
from ffaccel.drivers.ref import RefDriver
from ffaccel.spec import DTYPES, GEMM_COMBOS, POST_OPS, DType, GemmCombo, PostOpKind
from ffaccel.spec.accuracy import error_ratio

FAST_DEVICES = [d for d in ffaccel.devices() if d == "cpu"]
SIZES = [0, 1, 2, 3, 5, 7, 13, 17, 33]
ROGUE_FLOAT = np.nan
ROGUE_BYTE = 0x7F  # for integer buffers: every byte 0x7F, an unlikely value


def _values(rng: np.random.Generator, dtype: DType, shape: tuple[int, ...]) -> np.ndarray:
    np_dt = DTYPES[dtype].numpy
    if dtype == DType.I8:
        return rng.integers(-128, 128, shape).astype(np_dt)
    if dtype == DType.U8:
        return rng.integers(0, 256, shape).astype(np_dt)
    if dtype == DType.I32:
        return rng.integers(-(2**31), 2**31, shape, dtype=np.int64).astype(np_dt)
    return rng.standard_normal(shape).astype(np_dt)


@dataclass
class Placed:
    """An operand placed in its own buffer, surrounded by rogue values."""

    buf: ffaccel.Buffer
    matrix: Matrix


def _place(dev: ffaccel.Device, rng: np.random.Generator, dtype: DType, batch: int, rows: int, cols: int,
           pad_ld: int, broadcast: bool, lead_elems: int = 3) -> Placed:
    isz = DTYPES[dtype].itemsize_bytes
    ld = max(1, cols) + pad_ld
    stride = 0 if broadcast or batch == 1 else rows * ld + 2
    n_batch = 1 if stride == 0 else batch
    span = ((n_batch - 1) * stride + max(rows, 1) * ld) if rows and cols else 1
    total = lead_elems + span + 3
    buf = dev.alloc(total * isz)
    if DTYPES[dtype].is_float:
        buf.write(np.full(total, ROGUE_FLOAT, DTYPES[dtype].numpy))
    else:
        buf.write(np.full(total * isz, ROGUE_BYTE, np.uint8))
    flat = buf.array(DTYPES[dtype].numpy)
    for b in range(n_batch):
        for r in range(rows):
            start = lead_elems + b * stride + r * ld
            flat[start:start + cols] = _values(rng, dtype, (cols,))
    mat = Matrix(buf.handle, dtype, rows, cols, ld, lead_elems * isz, stride)
    return Placed(buf, mat)


def _snapshot(bufs: list[ffaccel.Buffer]) -> dict[int, np.ndarray]:
    return {b.handle: b.read(np.uint8, b.size_bytes) for b in bufs}


@st.composite
def gemm_cases(draw: st.DrawFn) -> dict:
    combo: GemmCombo = draw(st.sampled_from(GEMM_COMBOS))
    m, n, k = (draw(st.sampled_from(SIZES)) for _ in range(3))
    batch = draw(st.sampled_from([1, 1, 2, 3]))
    scalars = [0, 1, -1, 2, 3] if combo.is_int else [0.0, 1.0, -1.0, 0.7, 1.3]
    kinds = [kd for kd, spec in POST_OPS.items() if spec.int_ok or not combo.is_int]
    epi = draw(st.lists(st.sampled_from(kinds), max_size=4))
    return {
        "combo": combo, "m": m, "n": n, "k": k, "batch": batch,
        "trans_a": draw(st.booleans()), "trans_b": draw(st.booleans()),
        "alpha": draw(st.sampled_from(scalars)), "beta": draw(st.sampled_from(scalars)),
        "in_place": draw(st.booleans()),
        "pads": [draw(st.sampled_from([0, 0, 1, 3])) for _ in range(4)],
        "broadcast": [draw(st.booleans()) for _ in range(3)],
        "epi": epi,
        "epi_dtype_acc": [draw(st.booleans()) for _ in epi],
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _post_param(kind: PostOpKind, is_int: bool, rng: np.random.Generator) -> tuple[float, float]:
    if kind == PostOpKind.CLAMP:
        return (-40, 50) if is_int else (-0.5, 0.75)
    if kind == PostOpKind.SCALE:
        return (3, 0) if is_int else (-1.5, 0)
    return (0, 0)


def run_case(device: str, case: dict) -> None:
    dev = ffaccel.open(device)
    rng = np.random.default_rng(case["seed"])
    combo, m, n, k, batch = case["combo"], case["m"], case["n"], case["k"], case["batch"]
    ta, tb = case["trans_a"], case["trans_b"]
    ar, ac = (k, m) if ta else (m, k)
    br, bc = (n, k) if tb else (k, n)
    A = _place(dev, rng, combo.a, batch, ar, ac, case["pads"][0], case["broadcast"][0])
    B = _place(dev, rng, combo.b, batch, br, bc, case["pads"][1], case["broadcast"][1])
    D = _place(dev, rng, combo.d, batch, m, n, case["pads"][3], False)
    inputs = [A.buf, B.buf]
    c_mat = None
    beta = case["beta"]
    if beta != 0:
        if case["in_place"]:
            c_mat = D.matrix
        else:
            C = _place(dev, rng, combo.d, batch, m, n, case["pads"][2], case["broadcast"][2])
            c_mat = C.matrix
            inputs.append(C.buf)
    epi = []
    for kind, use_acc in zip(case["epi"], case["epi_dtype_acc"]):
        p0, p1 = _post_param(kind, combo.is_int, rng)
        operand = None
        dt = combo.acc if use_acc else combo.d
        shape = {PostOpKind.BIAS_N: (1, n), PostOpKind.BIAS_M: (m, 1), PostOpKind.ADD: (m, n)}.get(kind)
        if shape is not None:
            E = _place(dev, rng, dt, batch, shape[0], shape[1], 0, kind != PostOpKind.ADD)
            operand = E.matrix
            inputs.append(E.buf)
        epi.append(PostOpDesc(kind, p0, p1, operand))
    g = Gemm(m=m, n=n, k=k, batch=batch, a=A.matrix, b=B.matrix, c=c_mat, d=D.matrix, alpha=case["alpha"],
             beta=beta, trans_a=ta, trans_b=tb, acc_dtype=combo.acc, epilogue=tuple(epi))

    before = _snapshot(inputs + [D.buf])
    # the golden answer, from a private copy of the memory as it was before the GEMM
    memory = {h: v.copy() for h, v in before.items()}
    op = check_command(g.encode(), DeviceCaps())
    a, b, c, d, epi_arrays = gemm_arrays(op, memory.__getitem__)
    want = RefDriver().evaluate(op, a, b, c if op.reads_c else None, epi_arrays)

    dev.submit([g]).wait(timeout_ns=10**10)

    after = _snapshot(inputs + [D.buf])
    for buf in inputs:
        if buf is not D.buf:
            np.testing.assert_array_equal(after[buf.handle], before[buf.handle], err_msg="an input was written")
    # D: the windows within the bound, everything else byte-identical
    got_mem = {D.buf.handle: after[D.buf.handle].copy()}
    got = gemm_arrays(op, lambda h: got_mem[h] if h == D.buf.handle else memory[h])[3]
    if got.size:
        ratio = error_ratio(got.astype(np.float64), want.exact, want.bound)
        worst = float(ratio.max())
        assert worst <= 1.0, f"error/bound ratio {worst:.3g} for {combo.name} case {case}"
    window = np.zeros(D.buf.size_bytes, bool)
    view = gemm_arrays(op, lambda h: window.view(np.uint8) if h == D.buf.handle else memory[h])[3]
    if view.size:
        view.view(np.uint8)[...] = 1  # marks the window's bytes
    outside = window.view(np.uint8) == 0
    np.testing.assert_array_equal(after[D.buf.handle][outside], before[D.buf.handle][outside],
                                  err_msg="bytes outside D's m x n windows changed")


@pytest.mark.parametrize("device", FAST_DEVICES)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=gemm_cases())
def test_driver_matches_ref_within_bound(device: str, case: dict) -> None:
    run_case(device, case)


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
