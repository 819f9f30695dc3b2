"""Run one conformance case on a device and judge it.

Each operand lives in a buffer of its own, with rogue values before it, after it
and inside its leading-dimension padding. After the device has run the command,
the judge checks three things: D's m x n windows are within the spec's error
bound of the golden model (:class:`ffaccel.drivers.ref.RefDriver`), every other
byte of D's buffer is unchanged, and every input buffer is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..abi import Copy, DeviceCaps, Gemm, Matrix, PostOpDesc, check_command, copy_arrays, gemm_arrays
from ..drivers.ref import RefDriver
from ..runtime import Buffer, Device
from ..spec import DTYPES, DType, FFAccelError, PostOpKind
from ..spec.accuracy import error_ratio
from .cases import CopyCase, GemmCase

ROGUE_BYTE = 0x7F  # integer buffers: 0x7F7F... everywhere outside the operands
_REF = RefDriver()


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one case.

    ``worst_ratio`` is the largest |error| / bound over D (0 when exact; inf when a
    non-finite value is wrong or a bound of 0 is broken); NaN when not applicable.
    """

    op: str  # GEMM | COPY | ERROR | ENGINE | INFO
    group: str
    combo: str
    name: str
    passed: bool
    worst_ratio: float = float("nan")
    message: str = ""


def _finfo(dt: DType) -> ml_dtypes.finfo:
    return ml_dtypes.finfo(DTYPES[dt].numpy)


def _random(rng: np.random.Generator, dt: DType, n: int) -> np.ndarray:
    np_dt = DTYPES[dt].numpy
    if dt == DType.I8:
        return rng.integers(-128, 128, n).astype(np_dt)
    if dt == DType.U8:
        return rng.integers(0, 256, n).astype(np_dt)
    if dt == DType.I32:
        return rng.integers(-(2**31), 2**31, n, dtype=np.int64).astype(np_dt)
    return rng.standard_normal(n).astype(np_dt)


def _special(fill: str, role: str, dt: DType, out_dt: DType, rng: np.random.Generator, rows: int, cols: int
             ) -> np.ndarray | None:
    """Values for a named corner-case fill, or None for random values."""
    np_dt = DTYPES[dt].numpy
    shape = (rows, cols)
    if fill == "nan_c" and role == "c" and DTYPES[dt].is_float:
        return np.where(rng.random(shape) < 0.5, np.nan, np.inf).astype(np_dt)
    if fill == "nan_ab" and role in ("a", "b") and DTYPES[dt].is_float:
        return np.where(rng.random(shape) < 0.5, np.nan, -np.inf).astype(np_dt)
    if fill == "acc_width" and role in ("a", "b"):
        # a big value plus many ones: an f16 (or bf16) accumulator would stop counting the ones
        x = np.ones(shape)
        if role == "b":
            x[0, :] = 2048.0 if dt == DType.F16 else 256.0
        return x.astype(np_dt)
    if fill == "int_extreme" and role in ("a", "b", "c") and not DTYPES[dt].is_float:
        info = np.iinfo(np_dt)
        x = rng.choice(np.array([info.min, info.max, info.min + 1, 0], np.int64), shape)
        # D[0, 0] = k * max**2: far past 2**24 (inexact in f32 sums) and past 2**31 once scaled
        if role == "a" and rows:
            x[0, :] = info.max
        if role == "b" and cols:
            x[:, 0] = info.max
        return x.astype(np_dt)
    if fill == "sub_ulp" and role in ("a", "b"):
        # sums 1 + j * ulp/4 of the output type: truncation instead of rounding is off by 3/4 ulp
        x = np.zeros(shape)
        if role == "a":
            x[:, :2] = 1.0
        else:
            ulp = 2.0 ** (1 - DTYPES[out_dt].precision_bits)
            x[0, :] = 1.0
            x[1, :] = (np.arange(cols) % 4) * ulp / 4
        return x.astype(np_dt)
    if fill == "huge" and role in ("a", "b"):
        big = math.sqrt(float(_finfo(out_dt).max)) * 2.0
        big = min(big, float(_finfo(dt).max))
        # one sign per row of A: every sum overflows the same way (mixed signs would make
        # inf - inf inside the sum, whose outcome the spec leaves to the implementation)
        sign = np.where(rng.random((rows, 1)) < 0.5, -1.0, 1.0) if role == "a" else 1.0
        return (np.full(shape, big) * sign).astype(np_dt)
    return None


@dataclass
class _Placed:
    buf: Buffer
    matrix: Matrix


def _place(dev: Device, rng: np.random.Generator, dt: DType, batch: int, rows: int, cols: int, pad: int,
           broadcast: bool, values: np.ndarray | None = None) -> _Placed:
    info = DTYPES[dt]
    isz = info.itemsize_bytes
    lead = 3
    ld = max(1, cols) + pad
    stride = 0 if broadcast or batch <= 1 else rows * ld + 2
    n_batch = 1 if stride == 0 else batch
    span = ((n_batch - 1) * stride + rows * ld) if rows and cols else 0
    total = lead + span + 3
    buf = dev.alloc(total * isz)
    flat = np.empty(total, info.numpy)
    if info.is_float:
        flat[:] = np.nan
    else:
        flat.view(np.uint8)[:] = ROGUE_BYTE
    for b in range(n_batch):
        block = values if values is not None else _random(rng, dt, rows * cols).reshape(rows, cols)
        for r in range(rows):
            start = lead + b * stride + r * ld
            flat[start:start + cols] = block[r]
    buf.write(flat)
    return _Placed(buf, Matrix(buf.handle, dt, rows, cols, ld, lead * isz, stride))


def _snapshot(bufs: list[Buffer]) -> dict[int, np.ndarray]:
    return {b.handle: b.read(np.uint8, b.size_bytes) for b in bufs}


def build_gemm(dev: Device, case: GemmCase) -> tuple[Gemm, list[Buffer], Buffer]:
    """Allocate and fill the case's buffers; return the command, the input buffers and D's buffer."""
    rng = np.random.default_rng(case.seed)
    combo, m, n, k, batch = case.combo, case.m, case.n, case.k, case.batch
    ar, ac = (k, m) if case.trans_a else (m, k)
    br, bc = (n, k) if case.trans_b else (k, n)
    sp_a = _special(case.fill, "a", combo.a, combo.d, rng, m, k)
    sp_b = _special(case.fill, "b", combo.b, combo.d, rng, k, n)
    A = _place(dev, rng, combo.a, batch, ar, ac, case.pads[0], case.broadcast[0],
               None if sp_a is None else (sp_a.T if case.trans_a else sp_a))
    B = _place(dev, rng, combo.b, batch, br, bc, case.pads[1], case.broadcast[1],
               None if sp_b is None else (sp_b.T if case.trans_b else sp_b))
    D = _place(dev, rng, combo.d, batch, m, n, case.pads[3], False,
               _special(case.fill, "c", combo.d, combo.d, rng, m, n) if case.c_mode == "in_place" else None)
    inputs = [A.buf, B.buf]
    c_mat = None
    if case.c_mode == "in_place":
        c_mat = D.matrix
    elif case.c_mode == "separate":
        C = _place(dev, rng, combo.d, batch, m, n, case.pads[2], case.broadcast[2],
                   _special(case.fill, "c", combo.d, combo.d, rng, m, n))
        c_mat = C.matrix
        inputs.append(C.buf)
    epi = []
    for p in case.epilogue:
        shape = {PostOpKind.BIAS_N: (1, n), PostOpKind.BIAS_M: (m, 1), PostOpKind.ADD: (m, n)}.get(p.kind)
        operand = None
        if shape is not None:
            dt = combo.acc if p.operand_in_acc else combo.d
            E = _place(dev, rng, dt, batch, shape[0], shape[1], 1 if p.kind == PostOpKind.ADD else 0,
                       p.kind != PostOpKind.ADD)
            operand = E.matrix
            inputs.append(E.buf)
        epi.append(PostOpDesc(p.kind, p.param0, p.param1, operand))
    g = Gemm(m=m, n=n, k=k, batch=batch, a=A.matrix, b=B.matrix, c=c_mat, d=D.matrix, alpha=case.alpha,
             beta=case.beta, trans_a=case.trans_a, trans_b=case.trans_b, acc_dtype=combo.acc, epilogue=tuple(epi))
    return g, inputs, D.buf


def judge_gemm(dev: Device, case: GemmCase) -> CaseResult:
    """Run one GEMM case on ``dev`` and judge it against the golden model."""
    g, inputs, d_buf = build_gemm(dev, case)
    try:
        return _judge_gemm(dev, case, g, inputs, d_buf)
    finally:
        for b in inputs + [d_buf]:
            try:
                b.free()
            except FFAccelError:
                pass


def _judge_gemm(dev: Device, case: GemmCase, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> CaseResult:
    res = lambda ok, ratio=float("nan"), msg="": CaseResult(  # noqa: E731
        "GEMM", case.group, case.combo.name, case.name, ok, ratio, msg)
    before = _snapshot(inputs + [d_buf])
    memory = {h: v.copy() for h, v in before.items()}
    op = check_command(g.encode(), DeviceCaps())
    a, b, c, _, epi = gemm_arrays(op, memory.__getitem__)
    want = _REF.evaluate(op, a, b, c if op.reads_c else None, epi)
    try:
        dev.submit([g]).wait(timeout_ns=60 * 10**9)
    except FFAccelError as e:
        return res(False, msg=f"device refused a valid GEMM: {e}")
    except Exception as e:  # noqa: BLE001 - a driver that crashes on a valid GEMM fails the case
        return res(False, msg=f"device crashed on a valid GEMM: {e!r}")
    after = _snapshot(inputs + [d_buf])
    for buf in inputs:
        if buf.handle != d_buf.handle and not np.array_equal(after[buf.handle], before[buf.handle]):
            return res(False, msg="an input buffer was written")
    d_now = {d_buf.handle: after[d_buf.handle]}
    got = gemm_arrays(op, lambda h: d_now[h] if h == d_buf.handle else memory[h])[3]
    worst = 0.0
    if got.size:
        ratio = error_ratio(got.astype(np.float64), want.exact, want.bound)
        worst = float(ratio.max())
    mark = np.zeros(d_buf.size_bytes, np.uint8)
    view = gemm_arrays(op, lambda h: mark if h == d_buf.handle else memory[h])[3]
    if view.size:
        view.view(np.uint8)[...] = 1
    outside = mark == 0
    if not np.array_equal(after[d_buf.handle][outside], before[d_buf.handle][outside]):
        return res(False, worst, "bytes outside D's m x n windows changed")
    if not worst <= 1.0:
        idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        return res(False, worst, f"error {worst:.3g} x the bound at {tuple(int(i) for i in idx)}: got "
                   f"{got[idx]!r}, want {want.rounded[idx]!r}")
    return res(True, worst)


def judge_copy(dev: Device, case: CopyCase) -> CaseResult:
    """Run one COPY case: dst must be exactly the correctly rounded src; nothing else changes."""
    rng = np.random.default_rng(case.seed)
    src_vals = None
    if case.fill in ("ties", "huge") and DTYPES[case.src].is_float:
        if case.fill == "ties":
            ulp = 2.0 ** (1 - DTYPES[case.dst].precision_bits)
            src_vals = (1.0 + (np.arange(case.rows * case.cols) % 8) * ulp / 4).reshape(case.rows, case.cols)
        else:
            big = min(float(_finfo(case.dst).max) * 4, float(_finfo(case.src).max))
            src_vals = np.where(rng.random((case.rows, case.cols)) < 0.5, -big, big)
        src_vals = src_vals.astype(DTYPES[case.src].numpy)
    S = _place(dev, rng, case.src, 1, case.rows, case.cols, case.pads[0], False, src_vals)
    D = _place(dev, rng, case.dst, 1, case.rows, case.cols, case.pads[1], False)
    res = lambda ok, msg="": CaseResult("COPY", case.group,  # noqa: E731
                                        f"{DTYPES[case.src].name}->{DTYPES[case.dst].name}", case.name, ok,
                                        float("nan"), msg)
    try:
        cmd = Copy(src=S.matrix, dst=D.matrix)
        before = _snapshot([S.buf, D.buf])
        memory = {h: v.copy() for h, v in before.items()}
        op = check_command(cmd.encode(), DeviceCaps())
        src, dst_want = copy_arrays(op, memory.__getitem__)
        if src.size:
            _REF.copy(op, src, dst_want)
        try:
            dev.submit([cmd], engine="copy" if "copy" in _engines(dev) else "compute").wait(timeout_ns=60 * 10**9)
        except FFAccelError as e:
            return res(False, f"device refused a valid COPY: {e}")
        except Exception as e:  # noqa: BLE001
            return res(False, f"device crashed on a valid COPY: {e!r}")
        after = _snapshot([S.buf, D.buf])
        if not np.array_equal(after[S.buf.handle], before[S.buf.handle]):
            return res(False, "the source buffer was written")
        if not np.array_equal(after[D.buf.handle], memory[D.buf.handle]):
            return res(False, "dst differs from the correctly rounded conversion (or bytes outside it changed)")
        return res(True)
    finally:
        S.buf.free()
        D.buf.free()


def _engines(dev: Device) -> set[str]:
    return {e.name.lower() for e in dev.info().caps.engines}
