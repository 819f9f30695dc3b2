"""Run one conformance case on a device and judge it.

Each operand lives in a buffer of its own, with rogue values before it, after it
and inside its leading-dimension padding. After the device has run the command,
the judge checks three things: D's m x n windows are within the spec's error
bound of the golden model (:class:`ffaccel.drivers.ref.RefDriver`), every other
byte of D's buffer is unchanged, and every input buffer is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from ..abi import Copy, DeviceCaps, Gemm, GemmOp, Matrix, PostOpDesc, check_command, copy_arrays, gemm_arrays
from ..drivers.blas_threads import one_blas_thread
from ..drivers.ref import RefDriver
from ..drivers.rounding import round_to
from ..runtime import Buffer, Device
from ..spec import DTYPES, DType, FFAccelError, PostOpKind
from ..spec.accuracy import error_ratio
from .cases import ALPHA_PAST_OPERAND, CopyCase, GemmCase

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
    #: for a failure: what the spec required and what came back (where one value says it)
    expected: str = ""
    got: str = ""


def tie_base(dt: DType) -> float:
    """A value of ``dt`` around which every odd integer is a tie of the rounding to ``dt``
    (1.5 * 2**precision); 0 where integers near the accumulate range do not round (f32, f64, ints)."""
    if dt in (DType.F16, DType.BF16):
        return 1.5 * 2.0 ** DTYPES[dt].precision_bits
    return 0.0


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


def _special(fill: str, role: str, dt: DType, out_dt: DType, rng: np.random.Generator, rows: int, cols: int,
             tie: float = 0.0) -> np.ndarray | None:
    """Values for a named corner-case fill, or None for random values.

    ``role`` is a, b, c or e (an epilogue operand); ``tie`` is the tie base of the exact fill.
    """
    np_dt = DTYPES[dt].numpy
    shape = (rows, cols)
    if fill == "nan_c" and role == "c" and DTYPES[dt].is_float:
        return np.where(rng.random(shape) < 0.5, np.nan, np.inf).astype(np_dt)
    if fill == "nan_ab" and role in ("a", "b") and DTYPES[dt].is_float:
        return np.where(rng.random(shape) < 0.5, np.nan, -np.inf).astype(np_dt)
    if fill == "alpha_past_operand" and role in ("a", "b"):
        # small nonzero integers; A's last column and B's row k - 2 hold a value alpha times
        # which overflows the accumulator, B's last row and A's column k - 2 are 0: alpha * (A @ B)
        # is finite, (alpha * A) @ B and A @ (alpha * B) are NaN (OpenBLAS's ?gemv scales its
        # vector by alpha in the loop over k's tail: hence the last columns)
        x = rng.integers(1, 4, shape) * np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        big = ALPHA_PAST_OPERAND[dt][0]
        if role == "a" and cols > 1:
            x[:, -1], x[:, -2] = big, 0.0
        if role == "b" and rows > 1:
            x[-1, :], x[-2, :] = 0.0, big
        return x.astype(np_dt)
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
    if fill == "exact" and DTYPES[dt].is_float:
        # small integers: every product and partial sum is exact in any order, so D is known
        # exactly; A's first column holds the tie base of D's dtype and B's first row ones, so
        # most results are odd integers just above a power of two: ties for D's rounding
        # (epilogue operands get 9-bit values: an f16 operand narrowed through bf16 would show)
        x = rng.integers(-300, 301, shape) if role == "e" else rng.integers(-3, 4, shape)
        x = x.astype(np.float64)
        if role == "a" and cols:
            x[:, 0] = tie
        elif role == "b" and rows:
            x[0, :] = 1.0
        return x.astype(np_dt)
    if fill == "nonfinite" and DTYPES[dt].is_float and role in ("a", "b"):
        # B has no zeros (inf * 0 would be NaN): A's row 0 holds a NaN, row 1 a +inf, row 2 a -inf
        x = rng.integers(1, 4, shape) * np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        if role == "a":
            for r, v in ((0, np.nan), (1, np.inf), (2, -np.inf)):
                if r < rows and cols:
                    x[r, (r * 2) % cols] = v
        return x.astype(np_dt)
    if fill == "int_chunk" and role in ("a", "b") and not DTYPES[dt].is_float:
        # the largest products, with one odd product among them: past 2**24 in k-chunks bigger
        # than the exact-int8 limit, a float32 sum cannot hold the odd total
        info = np.iinfo(np_dt)
        big = info.min if info.min else info.max
        x = rng.integers(int(info.min), int(info.max) + 1, shape)
        if role == "a" and rows:
            x[0, :] = big
            if cols:
                x[0, cols // 2] = info.max
        elif role == "b" and cols:
            x[:, 0] = big
            if rows:
                x[rows // 2, 0] = info.max
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
           broadcast: bool, values: np.ndarray | None = None, interleave: bool = False,
           fill: Callable[[], np.ndarray | None] | None = None, gapless: bool = False) -> _Placed:
    """Put a (batch of) rows x cols matrices in a new buffer, rogue values everywhere else.

    Batch entries follow each other (with a gap), or are row-interleaved (entry b of row r at
    ``r * ld + b * cols``), or are one matrix (broadcast: batch stride 0). ``values`` fills every
    entry alike; ``fill`` is called per entry (random values when both are None or it returns None).
    """
    info = DTYPES[dt]
    isz = info.itemsize_bytes
    # rogue values before the operand, and an offset the device's alignment allows (a valid case
    # never hands a driver that declares limits.alignment_elems a misaligned operand)
    align = dev.info().caps.limits.alignment_elems
    lead = -(-3 // align) * align
    interleave = interleave and batch > 1 and not broadcast
    ld = (batch * max(1, cols) if interleave else max(1, cols)) + pad
    stride = 0 if broadcast or batch <= 1 else (max(1, cols) if interleave else rows * ld + (0 if gapless else 2))
    n_batch = 1 if stride == 0 else batch
    span = ((n_batch - 1) * stride + (rows - 1) * ld + cols) if rows and cols else 0
    total = lead + span + 3
    buf = dev.alloc(total * isz)
    # ld elements of slack past the end: an entry's rows are then one (rows, ld) reshape, written
    # in one assignment (the last row's tail falls in the slack, which is never written to the device)
    ext = np.empty(total + ld, info.numpy)
    flat = ext[:total]
    if info.is_float:
        flat[:] = np.nan
    else:
        flat.view(np.uint8)[:] = ROGUE_BYTE
    for b in range(n_batch):
        block = values if values is not None else (fill() if fill is not None else None)
        if block is None:
            block = _random(rng, dt, rows * cols).reshape(rows, cols)
        if rows and cols:
            start = lead + b * stride
            ext[start:start + rows * ld].reshape(rows, ld)[:, :cols] = block
    buf.write(flat)
    return _Placed(buf, Matrix(buf.handle, dt, rows, cols, ld, lead * isz, stride))


def _snapshot(bufs: list[Buffer]) -> dict[int, np.ndarray]:
    # np.array copies: a device's read() may hand back a view of its memory (torch device memory
    # on the CPU does), and a snapshot must not change when the device writes
    return {b.handle: np.array(b.read(np.uint8, b.size_bytes)) for b in bufs}


def build_gemm(dev: Device, case: GemmCase) -> tuple[Gemm, list[Buffer], Buffer]:
    """Allocate and fill the case's buffers; return the command, the input buffers and D's buffer."""
    rng = np.random.default_rng(case.seed)
    combo, m, n, k, batch = case.combo, case.m, case.n, case.k, case.batch
    ar, ac = (k, m) if case.trans_a else (m, k)
    br, bc = (n, k) if case.trans_b else (k, n)
    tie = tie_base(combo.d) if case.fill == "exact" else 0.0

    def special(role: str, dt: DType, rows: int, cols: int, trans: bool = False) -> Callable[[], np.ndarray | None]:
        def make() -> np.ndarray | None:
            x = _special(case.fill, role, dt, combo.d, rng, rows, cols, tie)
            return x.T if x is not None and trans else x
        return make

    inter, gl = case.interleave, case.gapless
    A = _place(dev, rng, combo.a, batch, ar, ac, case.pads[0], case.broadcast[0], interleave=inter[0],
               fill=special("a", combo.a, m, k, case.trans_a), gapless=gl)
    B = _place(dev, rng, combo.b, batch, br, bc, case.pads[1], case.broadcast[1], interleave=inter[1],
               fill=special("b", combo.b, k, n, case.trans_b), gapless=gl)
    D = _place(dev, rng, combo.d, batch, m, n, case.pads[3], False, interleave=inter[3],
               fill=special("c", combo.d, m, n) if case.c_mode == "in_place" else None, gapless=gl)
    inputs = [A.buf, B.buf]
    c_mat = None
    if case.c_mode == "in_place":
        c_mat = D.matrix
    elif case.c_mode == "separate":
        C = _place(dev, rng, combo.d, batch, m, n, case.pads[2], case.broadcast[2], interleave=inter[2],
                   fill=special("c", combo.d, m, n), gapless=gl)
        c_mat = C.matrix
        inputs.append(C.buf)
    epi = []
    for p in case.epilogue:
        shape = {PostOpKind.BIAS_N: (1, n), PostOpKind.BIAS_M: (m, 1), PostOpKind.ADD: (m, n)}.get(p.kind)
        operand = None
        if shape is not None:
            dt = combo.acc if p.operand_in_acc else combo.d
            bcast = p.kind != PostOpKind.ADD if case.epi_broadcast is None else case.epi_broadcast
            E = _place(dev, rng, dt, batch, shape[0], shape[1], case.epi_pad if p.kind == PostOpKind.ADD else 0, bcast,
                       fill=special("e", dt, *shape))
            operand = E.matrix
            inputs.append(E.buf)
        epi.append(PostOpDesc(p.kind, p.param0, p.param1, operand))
    g = Gemm(m=m, n=n, k=k, batch=batch, a=A.matrix, b=B.matrix, c=c_mat, d=D.matrix, alpha=case.alpha,
             beta=case.beta, trans_a=case.trans_a, trans_b=case.trans_b, acc_dtype=combo.acc, epilogue=tuple(epi))
    return g, inputs, D.buf


#: How a case's command is executed: (device, command, input buffers, D's buffer) -> None.
Execute = Callable[[Device, Gemm, "list[Buffer]", Buffer], None]


def _submit(dev: Device, g: Gemm, inputs: list[Buffer], d_buf: Buffer) -> None:
    dev.submit([g]).wait(timeout_ns=60 * 10**9)


def judge_gemm(dev: Device, case: GemmCase, execute: Execute | None = None,
               setup: Execute | None = None) -> CaseResult:
    """Run one GEMM case on ``dev`` and judge it against the golden model.

    ``execute`` runs the command (default: submit it and wait); ``setup`` runs first, before
    the golden model reads the inputs (e.g. a first submission, then new input values).
    """
    g, inputs, d_buf = build_gemm(dev, case)
    try:
        if setup is not None:
            try:
                setup(dev, g, inputs, d_buf)
            except Exception as e:  # noqa: BLE001 - a crash of the first run fails the case
                return CaseResult("GEMM", case.group, case.combo.name, case.name, False,
                                  message=f"the first run failed: {e!r}")
        return _judge_gemm(dev, case, g, inputs, d_buf, execute or _submit)
    finally:
        for b in inputs + [d_buf]:
            try:
                b.free()
            except FFAccelError:
                pass


def _judge_gemm(dev: Device, case: GemmCase, g: Gemm, inputs: list[Buffer], d_buf: Buffer,
                execute: Execute) -> CaseResult:
    res = lambda ok, ratio=float("nan"), msg="", want="", got="": CaseResult(  # noqa: E731
        "GEMM", case.group, case.combo.name, case.name, ok, ratio, msg, want, got)
    before = _snapshot(inputs + [d_buf])
    memory = {h: v.copy() for h, v in before.items()}
    op = check_command(g.encode(), DeviceCaps())
    a, b, c, _, epi = gemm_arrays(op, memory.__getitem__)
    small = case.fill == "exact" and all(p.kind not in _INEXACT for p in case.epilogue)
    want = _small_integer_golden(op, a, b, c, epi) if small else _REF.evaluate(op, a, b, c if op.reads_c else None,
                                                                               epi)
    try:
        execute(dev, g, inputs, d_buf)
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
    if got.size and want.bound is not None:
        ratio = error_ratio(got.astype(np.float64), want.exact, want.bound)
        worst = float(ratio.max())
    # the small-integer golden model has no bound: its answer is exact, so it is judged bit for bit
    # even where the case does not ask for it (without this, such a case judged nothing inside D)
    if (case.exact or want.bound is None) and got.size:
        want_d = want.rounded.astype(got.dtype)
        same = (got == want_d) | (np.isnan(got.astype(np.float64)) & np.isnan(want_d.astype(np.float64)))
        if not same.all():
            idx = tuple(int(i) for i in np.argwhere(~same)[0])
            return res(False, worst, f"not bit for bit the correctly rounded result at {idx}: got {got[idx]!r}, "
                       f"want {want_d[idx]!r} (exact {want.exact[idx]!r})",
                       f"D{list(idx)} = {want_d[idx]!r} (bit for bit)", f"{got[idx]!r}")
    mark = np.zeros(d_buf.size_bytes, np.uint8)
    view = gemm_arrays(op, lambda h: mark if h == d_buf.handle else memory[h])[3]
    if view.size:
        view.view(np.uint8)[...] = 1
    outside = mark == 0
    if not np.array_equal(after[d_buf.handle][outside], before[d_buf.handle][outside]):
        return res(False, worst, "bytes outside D's m x n windows changed")
    if not worst <= 1.0:
        idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        where = tuple(int(i) for i in idx)
        return res(False, worst, f"error {worst:.3g} x the bound at {where}: got "
                   f"{got[idx]!r}, want {want.rounded[idx]!r}",
                   f"D{list(where)} = {want.rounded[idx]!r} (within {float(want.bound[idx]):.3g})", f"{got[idx]!r}")
    return res(True, worst)


_INEXACT = (PostOpKind.GELU_ERF, PostOpKind.GELU_TANH)


@dataclass(frozen=True)
class _Known:
    """The golden answer of an exact-fill case (``bound`` None: only bit-for-bit equality counts)."""

    exact: np.ndarray
    rounded: np.ndarray
    bound: None = None


def _small_integer_golden(op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, epi: tuple) -> _Known:
    """The exact result of an ``exact`` fill case, in float64 arithmetic that is exact here.

    Inputs, scalars and post-op parameters are small integers, halves and powers of two, so
    every product, sum and post-op result is a float64 with few bits: computed exactly in any
    order, then rounded once to D's dtype. (The general golden model gets the same answer; this
    is fast on the suite's large outputs.)
    """
    f64 = np.float64
    shape = (op.batch, op.m, op.n)
    x = np.zeros(shape, f64)
    if op.reads_ab:
        with one_blas_thread():  # as the general golden model: no OpenBLAS workers left spinning
            x = float(op.alpha) * np.matmul(a.astype(f64), b.astype(f64))
    if op.reads_c and c is not None:
        x = x + float(op.beta) * c.astype(f64)
    x = np.broadcast_to(x, shape).copy()
    for p, v in zip(op.epilogue, epi):
        if p.kind in (PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.ADD):
            x += v.astype(f64)
        elif p.kind == PostOpKind.RELU:
            np.maximum(x, 0.0, out=x)
        elif p.kind == PostOpKind.CLAMP:
            np.minimum(np.maximum(x, float(p.param0)), float(p.param1), out=x)
        elif p.kind == PostOpKind.SCALE:
            x *= float(p.param0)
    return _Known(x, round_to(x, op.combo.d))


def judge_copy(dev: Device, case: CopyCase) -> CaseResult:
    """Run one COPY case: dst must be exactly the correctly rounded src; nothing else changes."""
    if case.one_buffer:
        return judge_copy_one_buffer(dev, case)
    rng = np.random.default_rng(case.seed)
    src_vals = None
    if case.fill in ("ties", "huge", "ties_eps", "specials") and DTYPES[case.src].is_float:
        count = case.rows * case.cols
        if case.fill == "ties":
            ulp = 2.0 ** (1 - DTYPES[case.dst].precision_bits)
            src_vals = (1.0 + (np.arange(count) % 8) * ulp / 4).reshape(case.rows, case.cols)
        elif case.fill == "ties_eps":
            # a tie of dst plus or minus a tiny epsilon: rounding through an intermediate type
            # (f64 -> f32 -> f16) loses the epsilon and then rounds the tie to even: wrong
            ulp = 2.0 ** (1 - DTYPES[case.dst].precision_bits)
            j = np.arange(count)
            eps = np.where(j % 2 == 0, 1.0, -1.0) * 2.0 ** -40
            sign = np.where(j % 3 == 0, -1.0, 1.0)
            src_vals = (sign * np.ldexp(1.0 + ((j % 16) + 0.5) * ulp + eps, (j % 5) - 2)).reshape(case.rows,
                                                                                                  case.cols)
        elif case.fill == "specials":
            fi = _finfo(case.dst)
            tiny = float(fi.smallest_subnormal)
            vals = [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5 * tiny, 2.5 * tiny, -3.5 * tiny, 0.5 * tiny,
                    0.49 * tiny, float(fi.max), -float(fi.max), float(fi.tiny), float(fi.tiny) * (1 - 2.0 ** -12)]
            src_vals = np.resize(np.array(vals), count).reshape(case.rows, case.cols)
            with np.errstate(over="ignore"):  # a wider dst's max is inf in a narrower src
                src_vals = src_vals.astype(DTYPES[case.src].numpy).astype(np.float64)
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
        if DTYPES[case.dst].is_float and src.size:
            # a NaN must stay a NaN; its sign and payload are not specified: compare NaNs as equal
            now = {S.buf.handle: after[S.buf.handle], D.buf.handle: after[D.buf.handle]}
            got_dst = copy_arrays(op, now.__getitem__)[1]
            both = np.isnan(got_dst.astype(np.float64)) & np.isnan(dst_want.astype(np.float64))
            got_dst[both] = dst_want[both]
        if not np.array_equal(after[D.buf.handle], memory[D.buf.handle]):
            bad = np.flatnonzero(after[D.buf.handle] != memory[D.buf.handle])
            at = int(bad[0]) // DTYPES[case.dst].itemsize_bytes * DTYPES[case.dst].itemsize_bytes
            isz = DTYPES[case.dst].itemsize_bytes
            dt = DTYPES[case.dst].numpy
            want_v = memory[D.buf.handle][at:at + isz].view(dt)[0]
            got_v = after[D.buf.handle][at:at + isz].view(dt)[0]
            return CaseResult("COPY", case.group, f"{DTYPES[case.src].name}->{DTYPES[case.dst].name}", case.name,
                              False, float("nan"),
                              "dst differs from the correctly rounded conversion (or bytes outside it changed)",
                              f"byte {at} of dst = {want_v!r}", f"{got_v!r}")
        return res(True)
    finally:
        S.buf.free()
        D.buf.free()


def judge_copy_one_buffer(dev: Device, case: CopyCase) -> CaseResult:
    """A COPY whose source and destination lie in one buffer, side by side (``case.one_buffer``:
    "dst-after" or "dst-before" the source; padded rows, no overlap): the destination must be
    the converted source, row for row, and no other byte of the buffer may change."""
    rng = np.random.default_rng(case.seed)
    s_isz, d_isz = DTYPES[case.src].itemsize_bytes, DTYPES[case.dst].itemsize_bytes
    s_ld, d_ld = case.cols + case.pads[0], case.cols + case.pads[1]
    s_bytes, d_bytes = case.rows * s_ld * s_isz, case.rows * d_ld * d_isz
    align = 8 * max(s_isz, d_isz) * dev.info().caps.limits.alignment_elems
    first = s_bytes if case.one_buffer == "dst-after" else d_bytes
    gap = -(-first // align) * align - first + align  # the second starts aligned for either dtype
    s_off, d_off = (0, s_bytes + gap) if case.one_buffer == "dst-after" else (d_bytes + gap, 0)
    buf = dev.alloc(s_bytes + d_bytes + gap)
    name = f"{DTYPES[case.src].name}->{DTYPES[case.dst].name}"
    try:
        fill = np.frombuffer(_random(rng, case.src, (s_bytes + d_bytes + gap) // s_isz).tobytes(), np.uint8)
        raw = np.zeros(buf.size_bytes, np.uint8)
        raw[:fill.size] = fill
        if DTYPES[case.src].is_float and DTYPES[case.dst].is_float:  # dst's area: valid values of dst too
            raw[d_off:d_off + d_bytes] = np.frombuffer(_random(rng, case.dst, d_bytes // d_isz).tobytes(), np.uint8)
        buf.write(raw)
        cmd = Copy(src=buf.matrix(case.src, case.rows, case.cols, ld_elems=s_ld, offset_bytes=s_off),
                   dst=buf.matrix(case.dst, case.rows, case.cols, ld_elems=d_ld, offset_bytes=d_off))
        memory = {buf.handle: np.array(buf.read(np.uint8, buf.size_bytes))}
        op = check_command(cmd.encode(), DeviceCaps())
        src, dst_want = copy_arrays(op, memory.__getitem__)
        _REF.copy(op, src.copy(), dst_want)
        try:
            dev.submit([cmd], engine="copy" if "copy" in _engines(dev) else "compute").wait(timeout_ns=60 * 10**9)
        except FFAccelError as e:
            return CaseResult("COPY", case.group, name, case.name, False, message=f"device refused a valid COPY: {e}")
        after = np.array(buf.read(np.uint8, buf.size_bytes))
        want = memory[buf.handle]
        if DTYPES[case.dst].is_float:  # NaN == NaN (sign and payload are not specified)
            got_dst = copy_arrays(op, {buf.handle: after}.__getitem__)[1]
            both = np.isnan(got_dst.astype(np.float64)) & np.isnan(dst_want.astype(np.float64))
            got_dst[both] = dst_want[both]
        if not np.array_equal(after, want):
            at = int(np.flatnonzero(after != want)[0])
            return CaseResult("COPY", case.group, name, case.name, False,
                              message="the buffer differs from the copy done row for row (or bytes outside dst changed)",
                              expected=f"byte {at} = {int(want[at])}", got=f"{int(after[at])}")
        return CaseResult("COPY", case.group, name, case.name, True)
    finally:
        buf.free()


def _engines(dev: Device) -> set[str]:
    return {e.name.lower() for e in dev.info().caps.engines}
