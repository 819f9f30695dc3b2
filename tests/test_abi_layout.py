"""The ABI's binary layouts keep the kernel's uAPI rules."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ffaccel.abi import COMMAND_BYTES, COPY, GEMM, SUBMIT, WAIT, Copy, Gemm, Matrix, PostOpDesc, decode_command
from ffaccel.abi.commands import bits_f64, bits_i64
from ffaccel.spec import DType, PostOpKind

LAYOUTS = [GEMM, COPY, SUBMIT, WAIT]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: l.name)
def test_fields_naturally_aligned_and_size_multiple_of_8(layout) -> None:
    for field, offset in layout.offsets():
        assert offset % struct.calcsize("<" + field.fmt) == 0, field.name
    assert layout.size_bytes % 8 == 0
    assert layout.struct.size == sum(struct.calcsize("<" + f.fmt) for f in layout.fields)  # no hidden padding


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda l: l.name)
def test_every_field_documented_and_named_uniquely(layout) -> None:
    names = [f.name for f in layout.fields]
    assert len(names) == len(set(names))
    assert all(f.doc for f in layout.fields)


def test_gemm_roundtrip_preserves_every_field() -> None:
    g = Gemm(m=3, n=5, k=7, batch=2, a=Matrix(1, DType.F16, 7, 3, 9, 16, 40), b=Matrix(2, DType.F16, 7, 5),
             c=Matrix(3, DType.F32, 3, 5, 6), d=Matrix(4, DType.F32, 3, 5, 8, 8, 32), alpha=-0.5, beta=2.25,
             trans_a=True, acc_dtype=DType.F32, user_data=0xDEADBEEF12345678,
             epilogue=(PostOpDesc(PostOpKind.CLAMP, -1.0, 3.5), PostOpDesc(PostOpKind.BIAS_N, operand=Matrix(
                 5, DType.F32, 1, 5))))
    raw = g.encode()
    assert len(raw) == COMMAND_BYTES
    f = decode_command(raw)
    assert (f["m"], f["n"], f["k"], f["batch"], f["flags"]) == (3, 5, 7, 2, 1)
    assert bits_f64(f["alpha_bits"]) == -0.5 and bits_f64(f["beta_bits"]) == 2.25
    assert (f["a.ld_elems"], f["a.offset_bytes"], f["a.batch_stride_elems"]) == (9, 16, 40)
    assert f["user_data"] == 0xDEADBEEF12345678
    assert bits_f64(f["epilogue[0].param1_bits"]) == 3.5 and f["epilogue[1].operand.handle"] == 5
    assert f["epilogue_count"] == 2 and f["epilogue[2].kind"] == 0


def test_integer_scalars_are_twos_complement_i64() -> None:
    g = Gemm(m=1, n=1, k=1, a=Matrix(1, DType.I8, 1, 1), b=Matrix(2, DType.U8, 1, 1), d=Matrix(3, DType.I32, 1, 1),
             alpha=-3, beta=7)
    f = decode_command(g.encode())
    assert bits_i64(f["alpha_bits"]) == -3 and bits_i64(f["beta_bits"]) == 7


def test_copy_occupies_a_full_zero_padded_slot() -> None:
    raw = Copy(src=Matrix(1, DType.F32, 2, 2), dst=Matrix(2, DType.BF16, 2, 2)).encode()
    assert len(raw) == COMMAND_BYTES
    assert not any(raw[COPY.size_bytes:])
    assert np.frombuffer(raw[:4], "<u4")[0] == 2
