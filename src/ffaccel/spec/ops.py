"""The operation set, version 1, as data.

Everything the validator enforces, the reference page documents and the
conformance suite enumerates is derived from the tables in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from .dtypes import DTYPES, DType

#: (major, minor) of the op set. A major bump may change semantics; a minor one only adds.
SPEC_VERSION: tuple[int, int] = (1, 0)


class Opcode(IntEnum):
    """Command opcodes (``opcode`` field). 0 is never a valid opcode."""

    GEMM = 1
    COPY = 2


class Engine(IntEnum):
    """Engines a submission can target (``engine`` field)."""

    COMPUTE = 0
    COPY = 1


#: Which opcodes each engine executes.
ENGINE_OPCODES: dict[Engine, frozenset[Opcode]] = {
    Engine.COMPUTE: frozenset({Opcode.GEMM, Opcode.COPY}),
    Engine.COPY: frozenset({Opcode.COPY}),
}


class PostOpKind(IntEnum):
    """Epilogue post-op kinds (``epilogue[i].kind``). 0 marks an unused slot."""

    BIAS_N = 1  # add a vector over the n columns (one value per column)
    BIAS_M = 2  # add a vector over the m rows (one value per row)
    RELU = 3
    GELU_ERF = 4  # PyTorch gelu(approximate="none")
    GELU_TANH = 5  # PyTorch gelu(approximate="tanh")
    CLAMP = 6  # param0 = lo, param1 = hi
    SCALE = 7  # param0 = s
    ADD = 8  # residual: an m x n operand


@dataclass(frozen=True)
class PostOpSpec:
    kind: PostOpKind
    name: str
    params: tuple[str, ...]
    has_operand: bool
    int_ok: bool  # allowed when the output is int32
    doc: str


POST_OPS: dict[PostOpKind, PostOpSpec] = {
    p.kind: p
    for p in (
        PostOpSpec(PostOpKind.BIAS_N, "bias(axis='n')", (), True, True,
                   "x[i, j] + v[j]; v is a 1 x n operand"),
        PostOpSpec(PostOpKind.BIAS_M, "bias(axis='m')", (), True, True,
                   "x[i, j] + v[i]; v is an m x 1 operand"),
        PostOpSpec(PostOpKind.RELU, "relu", (), False, True, "max(x, 0); NaN propagates"),
        PostOpSpec(PostOpKind.GELU_ERF, "gelu(approximate='none')", (), False, False,
                   "x * (1 + erf(x / sqrt(2))) / 2"),
        PostOpSpec(PostOpKind.GELU_TANH, "gelu(approximate='tanh')", (), False, False,
                   "x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) / 2"),
        PostOpSpec(PostOpKind.CLAMP, "clamp(lo, hi)", ("lo", "hi"), False, True,
                   "min(max(x, lo), hi); needs lo <= hi, neither NaN; NaN in x propagates"),
        PostOpSpec(PostOpKind.SCALE, "scale(s)", ("s",), False, True,
                   "s * x; s finite (an integer when the output is int32)"),
        PostOpSpec(PostOpKind.ADD, "add(E)", (), True, True, "x + E[i, j]; E is an m x n operand"),
    )
}
#: The post-ops that carry an operand (a vector over n or m, or an m x n residual): read from
#: ``POST_OPS[k].has_operand``, the one place that says so.
OPERAND_POST_OPS: frozenset[PostOpKind] = frozenset(k for k, spec in POST_OPS.items() if spec.has_operand)


@dataclass(frozen=True)
class GemmCombo:
    """One dtype combination of GEMM: inputs -> accumulate -> output (C has D's dtype)."""

    a: DType
    b: DType
    acc: DType
    d: DType

    @property
    def name(self) -> str:
        n = DTYPES
        return f"{n[self.a].name}x{n[self.b].name}->{n[self.acc].name}->{n[self.d].name}"

    @property
    def is_int(self) -> bool:
        return not DTYPES[self.acc].is_float


def _combos() -> tuple[GemmCombo, ...]:
    f = [
        GemmCombo(DType.F64, DType.F64, DType.F64, DType.F64),
        GemmCombo(DType.F32, DType.F32, DType.F32, DType.F32),
        GemmCombo(DType.F16, DType.F16, DType.F32, DType.F16),
        GemmCombo(DType.F16, DType.F16, DType.F32, DType.F32),
        GemmCombo(DType.BF16, DType.BF16, DType.F32, DType.BF16),
        GemmCombo(DType.BF16, DType.BF16, DType.F32, DType.F32),
    ]
    i = [GemmCombo(x, y, DType.I32, DType.I32) for x in (DType.I8, DType.U8) for y in (DType.I8, DType.U8)]
    return tuple(f + i)


#: All GEMM combinations of spec v1. The index is the combination's capability bit.
GEMM_COMBOS: tuple[GemmCombo, ...] = _combos()
COMBO_BIT: dict[GemmCombo, int] = {c: i for i, c in enumerate(GEMM_COMBOS)}
COMBO_BY_DTYPES: dict[tuple[DType, DType, DType, DType], GemmCombo] = {
    (c.a, c.b, c.acc, c.d): c for c in GEMM_COMBOS
}

FLOAT_DTYPES = (DType.F64, DType.F32, DType.F16, DType.BF16)
#: COPY conversions (src, dst): any float to any float, and each integer type to itself.
COPY_CONVERSIONS: tuple[tuple[DType, DType], ...] = tuple(
    [(s, d) for s in FLOAT_DTYPES for d in FLOAT_DTYPES] + [(t, t) for t in (DType.I8, DType.U8, DType.I32)]
)
COPY_BIT: dict[tuple[DType, DType], int] = {c: i for i, c in enumerate(COPY_CONVERSIONS)}


@dataclass(frozen=True)
class Limits:
    """Limits a device declares; the spec's own are the ceilings a driver may lower."""

    max_dim: int = 2**31 - 1  # m, n, k, rows, cols
    max_batch: int = 2**31 - 1
    max_epilogue_ops: int = 4
    #: offset_bytes must be a multiple of the element size times this factor.
    alignment_elems: int = 1
    max_buffer_bytes: int = 2**48


SPEC_LIMITS = Limits()

#: Accuracy constant c in the GEMM error bound (see accuracy.py).
ACCURACY_C: float = 2.0
