"""Binary layouts of the ABI, as documented field tables.

Rules (after the kernel's ``botching-up-ioctls.rst``): little-endian, fixed
size, every field naturally aligned and every struct a multiple of 8 bytes,
explicit reserved fields that must be zero, units in names, extension only at
the end, numbers never reused. The same bytes serve the in-process, socket and
ring transports.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag

#: ABI version spoken by this package. Bumped only for incompatible layout changes.
ABI_VERSION = 1


class GemmFlags(IntFlag):
    """``flags`` of a GEMM command. All other bits must be zero."""

    TRANS_A = 1 << 0  # op(A) = A^T: A is stored k x m
    TRANS_B = 1 << 1  # op(B) = B^T: B is stored n x k


GEMM_FLAGS_KNOWN = int(GemmFlags.TRANS_A | GemmFlags.TRANS_B)
COPY_FLAGS_KNOWN = 0
SUBMIT_FLAGS_KNOWN = 0


@dataclass(frozen=True)
class Field:
    name: str
    fmt: str  # struct code: I = u32, Q = u64 (all little-endian)
    doc: str

    @property
    def reserved(self) -> bool:
        return "reserved" in self.name


@dataclass(frozen=True)
class Layout:
    """A fixed-size little-endian struct described field by field.

    ``struct``, ``names`` and ``reserved_names`` are computed once: the validator
    uses them for every command of every submission.
    """

    name: str
    doc: str
    fields: tuple[Field, ...]
    struct: struct.Struct = field(init=False, repr=False, compare=False)
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    reserved_names: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "struct", struct.Struct("<" + "".join(f.fmt for f in self.fields)))
        object.__setattr__(self, "names", tuple(f.name for f in self.fields))
        object.__setattr__(self, "reserved_names", tuple(f.name for f in self.fields if f.reserved))

    @property
    def size_bytes(self) -> int:
        return self.struct.size

    def offsets(self) -> list[tuple[Field, int]]:
        out, pos = [], 0
        for f in self.fields:
            out.append((f, pos))
            pos += struct.calcsize("<" + f.fmt)
        return out


def _u32(name: str, doc: str) -> Field:
    return Field(name, "I", doc)


def _u64(name: str, doc: str) -> Field:
    return Field(name, "Q", doc)


def operand_fields(prefix: str, role: str) -> tuple[Field, ...]:
    """The 48-byte matrix operand: a row-major strided view into a buffer."""
    p = prefix + "."
    return (
        _u32(p + "handle", f"{role}: buffer handle in the caller's table; 0 = absent"),
        _u32(p + "dtype", f"{role}: element type (DType); 0 when absent"),
        _u64(p + "offset_bytes", f"{role}: byte offset of element [0, 0] of batch 0; multiple of the element size"),
        _u32(p + "rows", f"{role}: rows of the stored matrix"),
        _u32(p + "cols", f"{role}: columns of the stored matrix"),
        _u64(p + "ld_elems", f"{role}: elements between the starts of consecutive rows; >= max(1, cols)"),
        _u64(p + "batch_stride_elems", f"{role}: elements between consecutive batch entries; 0 broadcasts"),
        _u64(p + "reserved", "must be zero"),
    )


OPERAND_BYTES = 48

HEADER_FIELDS = (
    _u32("opcode", "Opcode: 1 = GEMM, 2 = COPY"),
    _u32("flags", "opcode-specific flag bits; undefined bits must be zero"),
    _u32("size_bytes", "size of this descriptor in bytes (COMMAND_BYTES in ABI v1)"),
    _u32("reserved0", "must be zero"),
    _u64("user_data", "opaque to the device; returned in the command's completion"),
)


def _epilogue_slot(i: int) -> tuple[Field, ...]:
    p = f"epilogue[{i}]."
    return (
        _u32(p + "kind", "PostOpKind; 0 = unused slot (then the whole slot must be zero)"),
        _u32(p + "reserved", "must be zero"),
        _u64(p + "param0_bits", "first parameter (clamp lo, scale s): f64 bits, or i64 for int32 outputs"),
        _u64(p + "param1_bits", "second parameter (clamp hi): f64 bits, or i64 for int32 outputs"),
    ) + operand_fields(p + "operand", f"epilogue[{i}] operand (bias vector or residual E)")


MAX_EPILOGUE_SLOTS = 4

GEMM = Layout(
    "ffa_gemm",
    "D = epilogue(alpha * op(A) @ op(B) + beta * C), for every batch index.",
    HEADER_FIELDS
    + (
        _u32("m", "rows of op(A), C and D"),
        _u32("n", "columns of op(B), C and D"),
        _u32("k", "columns of op(A), rows of op(B)"),
        _u32("batch", "number of batch entries (0 = nothing to do)"),
        _u32("acc_dtype", "accumulate dtype (DType); must match the combination"),
        _u32("epilogue_count", "number of used epilogue slots, <= 4"),
        _u64("alpha_bits", "alpha: f64 bits for float GEMM (used rounded to f32 where acc_dtype is f32), "
                           "two's-complement i64 for integer GEMM"),
        _u64("beta_bits", "beta: as alpha; beta == 0 means C is not read"),
    )
    + operand_fields("a", "A")
    + operand_fields("b", "B")
    + operand_fields("c", "C")
    + operand_fields("d", "D")
    + tuple(f for i in range(MAX_EPILOGUE_SLOTS) for f in _epilogue_slot(i)),
)

#: Every command occupies this many bytes (the size of the largest, GEMM), so that ring
#: slots are fixed-size. Bytes past an opcode's own fields are reserved and must be zero.
COMMAND_BYTES = GEMM.size_bytes

COPY = Layout(
    "ffa_copy",
    "dst = convert(src): a 2-D strided copy, converting between float dtypes.",
    HEADER_FIELDS + operand_fields("src", "source") + operand_fields("dst", "destination"),
)

SUBMIT = Layout(
    "ffa_submit",
    "A submission: this header, then wait_count waits, then command_count commands.",
    (
        _u32("abi_version", "ABI version the caller speaks (ABI_VERSION)"),
        _u32("engine", "Engine: 0 = compute, 1 = copy"),
        _u32("flags", "no flags are defined: must be zero"),
        _u32("command_count", "number of COMMAND_BYTES-sized commands that follow the waits"),
        _u32("wait_count", "number of ffa_wait entries that follow this header"),
        _u32("reserved0", "must be zero"),
        _u64("reserved1", "must be zero"),
    ),
)

WAIT = Layout(
    "ffa_wait",
    "Do not start the submission until the engine's timeline reaches value.",
    (
        _u32("engine", "Engine whose timeline is waited on"),
        _u32("reserved", "must be zero"),
        _u64("value", "timeline value to wait for (already submitted on that engine)"),
    ),
)

MAX_COMMANDS_PER_SUBMIT = 4096
MAX_WAITS_PER_SUBMIT = 16

for _l in (GEMM, COPY, SUBMIT, WAIT):
    assert _l.size_bytes % 8 == 0, _l.name
assert COPY.size_bytes <= COMMAND_BYTES
