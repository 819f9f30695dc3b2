"""Layer 0: the op set as data (ops, dtype combinations, parameters, limits, rules, errors).

Nothing here imports another ffaccel layer; everything above derives from these tables.
"""

from .dtypes import DTYPES, DType, DTypeInfo, dtype_by_name, dtype_of_numpy, itemsize, numpy_dtype
from .errors import ERROR_MEANINGS, ErrorCode, FFAccelError
from .ops import (
    ACCURACY_C,
    COMBO_BIT,
    COMBO_BY_DTYPES,
    COPY_BIT,
    COPY_CONVERSIONS,
    ENGINE_OPCODES,
    GEMM_COMBOS,
    OPERAND_POST_OPS,
    POST_OPS,
    SPEC_LIMITS,
    SPEC_VERSION,
    Engine,
    GemmCombo,
    Limits,
    Opcode,
    PostOpKind,
)
from .rules import RULES, Rule, violation

__all__ = [
    "ACCURACY_C", "COMBO_BIT", "COMBO_BY_DTYPES", "COPY_BIT", "COPY_CONVERSIONS", "DTYPES", "DType",
    "DTypeInfo", "ENGINE_OPCODES", "ERROR_MEANINGS", "Engine", "ErrorCode", "FFAccelError", "GEMM_COMBOS",
    "GemmCombo", "Limits", "OPERAND_POST_OPS", "Opcode", "POST_OPS", "PostOpKind", "RULES", "Rule", "SPEC_LIMITS", "SPEC_VERSION",
    "dtype_by_name", "dtype_of_numpy", "itemsize", "numpy_dtype", "violation",
]
