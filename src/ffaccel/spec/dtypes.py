"""Element types of the op set, as data.

The numbers are ABI values (``*.dtype`` fields of a descriptor): never reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import ml_dtypes
import numpy as np


class DType(IntEnum):
    """Element type codes carried in descriptors (0 means "no operand")."""

    F64 = 1
    F32 = 2
    F16 = 3
    BF16 = 4
    I8 = 5
    U8 = 6
    I32 = 7


@dataclass(frozen=True)
class DTypeInfo:
    """Facts about one element type."""

    code: DType
    name: str
    numpy: np.dtype
    itemsize_bytes: int
    is_float: bool
    #: Unit roundoff u = 2**-p for a float type with p significand bits; 0 for integers.
    unit_roundoff: float
    #: Number of significand bits (floats) or value bits (integers).
    precision_bits: int


def _info(code: DType, name: str, np_dtype: object, is_float: bool, precision_bits: int) -> DTypeInfo:
    dt = np.dtype(np_dtype)
    u = 2.0 ** -precision_bits if is_float else 0.0
    return DTypeInfo(code, name, dt, dt.itemsize, is_float, u, precision_bits)


DTYPES: dict[DType, DTypeInfo] = {
    i.code: i
    for i in (
        _info(DType.F64, "f64", np.float64, True, 53),
        _info(DType.F32, "f32", np.float32, True, 24),
        _info(DType.F16, "f16", np.float16, True, 11),
        _info(DType.BF16, "bf16", ml_dtypes.bfloat16, True, 8),
        _info(DType.I8, "int8", np.int8, False, 7),
        _info(DType.U8, "uint8", np.uint8, False, 8),
        _info(DType.I32, "int32", np.int32, False, 31),
    )
}

_BY_NUMPY: dict[np.dtype, DType] = {i.numpy: i.code for i in DTYPES.values()}
_BY_NAME: dict[str, DType] = {i.name: i.code for i in DTYPES.values()}


def dtype_of_numpy(dt: object) -> DType | None:
    """The spec dtype of a NumPy dtype, or None when the spec has none."""
    try:
        return _BY_NUMPY.get(np.dtype(dt))  # type: ignore[call-overload]
    except TypeError:
        return None


def dtype_by_name(name: str) -> DType:
    """Look up a dtype by its spec name (``"f32"``, ``"bf16"``, ``"int8"`` ...)."""
    return _BY_NAME[name]


def numpy_dtype(code: DType) -> np.dtype:
    return DTYPES[code].numpy


def itemsize(code: DType) -> int:
    return DTYPES[code].itemsize_bytes
