"""Build, encode and decode the ABI's binary descriptors.

The dataclasses here are a convenience for callers; what crosses every
transport is the bytes they encode to (see :mod:`ffaccel.abi.layout`).
"""

from __future__ import annotations

import math
import numbers
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..spec import DTYPES, DType, Engine, Opcode, PostOpKind, violation
from .layout import (
    ABI_VERSION,
    COMMAND_BYTES,
    COPY,
    GEMM,
    SUBMIT,
    WAIT,
    GemmFlags,
)

_GEMM_STRUCT = GEMM.struct
_COPY_STRUCT = COPY.struct
_SUBMIT_STRUCT = SUBMIT.struct
_WAIT_STRUCT = WAIT.struct
_GEMM_INDEX = {name: i for i, name in enumerate(GEMM.names)}
_GEMM_ZEROS = [0] * len(GEMM.names)
_GEMM_PAD = bytes(COMMAND_BYTES - GEMM.size_bytes)
_GEMM_OPCODE, _TRANS_A, _TRANS_B = int(Opcode.GEMM), int(GemmFlags.TRANS_A), int(GemmFlags.TRANS_B)
(_G_OPCODE, _G_FLAGS, _G_SIZE, _G_USER, _G_M, _G_N, _G_K, _G_BATCH, _G_ACC, _G_EPI_COUNT, _G_ALPHA, _G_BETA,
 _G_A, _G_B, _G_C, _G_D) = (_GEMM_INDEX[x] for x in (
    "opcode", "flags", "size_bytes", "user_data", "m", "n", "k", "batch", "acc_dtype", "epilogue_count",
    "alpha_bits", "beta_bits", "a.handle", "b.handle", "c.handle", "d.handle"))
#: (index of kind, index of operand.handle) of each epilogue slot; kind, reserved, param0, param1 are consecutive
_G_SLOTS = tuple((_GEMM_INDEX[f"epilogue[{i}].kind"], _GEMM_INDEX[f"epilogue[{i}].operand.handle"])
                 for i in range(len([n for n in GEMM.names if n.endswith("].kind")])))
assert all(GEMM.names[i + 2].endswith("param0_bits") and GEMM.names[i + 3].endswith("param1_bits")
           for i, _ in _G_SLOTS)
_F64 = struct.Struct("<d")
_I64 = struct.Struct("<q")
_U64 = struct.Struct("<Q")


def f64_bits(x: float) -> int:
    return _U64.unpack(_F64.pack(float(x)))[0]


def bits_f64(bits: int) -> float:
    return _F64.unpack(_U64.pack(bits))[0]


def i64_bits(x: int) -> int:
    return x & 0xFFFF_FFFF_FFFF_FFFF


def bits_i64(bits: int) -> int:
    return _I64.unpack(_U64.pack(bits))[0]


@dataclass(frozen=True)
class Matrix:
    """A matrix operand: a row-major strided view into a buffer.

    Parameters
    ----------
    handle : int
        Buffer handle (``Buffer.handle``).
    dtype : DType
    rows, cols : int
        Shape of the stored matrix (for a transposed A, the stored k x m).
    ld_elems : int, optional
        Elements between row starts; defaults to ``max(1, cols)``.
    offset_bytes : int
        Byte offset of element [0, 0] of batch entry 0.
    batch_stride_elems : int
        Elements between batch entries (0 broadcasts one matrix to every entry).

    Examples
    --------
    >>> from ffaccel.abi import Matrix
    >>> from ffaccel.spec import DType
    >>> Matrix(handle=1, dtype=DType.F32, rows=4, cols=3).ld_elems
    3
    """

    handle: int
    dtype: DType
    rows: int
    cols: int
    ld_elems: int | None = None
    offset_bytes: int = 0
    batch_stride_elems: int = 0
    #: The device whose handle table ``handle`` is in (set by ``Buffer.matrix``; None: not known).
    #: Not encoded, not compared: a Device refuses a Matrix of another device's buffer, whose
    #: handle number may well name a buffer of its own (every client numbers from 1).
    owner: object = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.ld_elems is None:
            object.__setattr__(self, "ld_elems", max(1, self.cols))

    def values(self) -> tuple:
        """The operand's seven fields in layout order (handle, dtype, offset, rows, cols, ld, batch stride)."""
        return (self.handle, self.dtype, self.offset_bytes, self.rows, self.cols, self.ld_elems,
                self.batch_stride_elems)

    def fields(self, prefix: str) -> dict[str, int]:
        p = prefix + "."
        return {
            p + "handle": self.handle,
            p + "dtype": int(self.dtype),
            p + "offset_bytes": self.offset_bytes,
            p + "rows": self.rows,
            p + "cols": self.cols,
            p + "ld_elems": self.ld_elems,  # type: ignore[dict-item]
            p + "batch_stride_elems": self.batch_stride_elems,
        }


@dataclass(frozen=True)
class PostOpDesc:
    """One epilogue slot: a post-op kind, up to two parameters and an optional operand."""

    kind: PostOpKind
    param0: float | int = 0
    param1: float | int = 0
    operand: Matrix | None = None


@dataclass(frozen=True)
class Gemm:
    """A GEMM command. See the reference page (docs/spec.md) for every rule.

    Examples
    --------
    >>> from ffaccel.abi import Gemm, Matrix
    >>> from ffaccel.spec import DType
    >>> g = Gemm(m=2, n=2, k=2, a=Matrix(1, DType.F32, 2, 2), b=Matrix(2, DType.F32, 2, 2),
    ...          d=Matrix(3, DType.F32, 2, 2))
    >>> len(g.encode())
    544
    """

    m: int
    n: int
    k: int
    a: Matrix | None
    b: Matrix | None
    d: Matrix | None
    c: Matrix | None = None
    alpha: float | int = 1.0
    beta: float | int = 0.0
    trans_a: bool = False
    trans_b: bool = False
    batch: int = 1
    acc_dtype: DType | None = None
    epilogue: Sequence[PostOpDesc] = field(default_factory=tuple)
    user_data: int = 0

    def encode(self) -> bytes:
        try:
            return self._pack()
        except (struct.error, TypeError, ValueError, OverflowError, AttributeError):
            # a value that is not an integer fitting its field (or one that int() accepts, such as
            # 3.0): the field-by-field path converts it as it always has, or names it
            return encode_fields(GEMM, self.fields())

    def _pack(self) -> bytes:
        """:meth:`encode` through :func:`pack_gemm` (values that are not integers of their width raise)."""
        return pack_gemm(self.m, self.n, self.k, self.batch, self.trans_a, self.trans_b, self.acc_dtype,
                         self.alpha, self.beta, *(None if x is None else x.values() for x in (self.a, self.b, self.c, self.d)),
                         tuple((p.kind, p.param0, p.param1, p.operand.values() if p.operand is not None else None)
                               for p in self.epilogue), self.user_data)

    def fields(self) -> dict[str, int]:
        ops = {name: _operand(getattr(self, name), name) for name in ("a", "b", "c", "d")}
        try:
            epilogue = tuple(self.epilogue)
        except TypeError:  # not a sequence (a 0-d array, a bool): named, not tuple()'s error
            raise violation("cmd.field_range", repr(self.epilogue), "a sequence of PostOpDesc", field="epilogue") \
                from None
        acc = self.acc_dtype
        if acc is not None and (isinstance(acc, bool) or not isinstance(acc, numbers.Integral)):
            raise violation("cmd.field_range", repr(acc), "a DType or None", field="acc_dtype")
        if acc is None:
            acc = _default_acc(self.a.dtype if self.a is not None else None)
        is_int = acc in DTYPES and not DTYPES[acc].is_float
        flags = (GemmFlags.TRANS_A if self.trans_a else 0) | (GemmFlags.TRANS_B if self.trans_b else 0)
        f: dict[str, int] = {
            "opcode": Opcode.GEMM,
            "flags": int(flags),
            "size_bytes": COMMAND_BYTES,
            "user_data": self.user_data,
            "m": self.m,
            "n": self.n,
            "k": self.k,
            "batch": self.batch,
            "acc_dtype": int(acc),
            "epilogue_count": len(epilogue),
            "alpha_bits": scalar_bits(self.alpha, is_int, "alpha"),
            "beta_bits": scalar_bits(self.beta, is_int, "beta"),
        }
        for name, mat in ops.items():
            if mat is not None:
                f.update(mat.fields(name))
        for i, p in enumerate(epilogue):
            s = f"epilogue[{i}]."
            if not isinstance(p, PostOpDesc):
                raise violation("cmd.field_range", type(p).__name__, "a PostOpDesc", field=f"epilogue[{i}]")
            try:
                f[s + "kind"] = int(p.kind)
            except (TypeError, ValueError, OverflowError):
                raise violation("cmd.field_range", repr(p.kind), "a PostOpKind", field=s + "kind") from None
            f[s + "param0_bits"] = scalar_bits(p.param0, is_int, s + "param0")
            f[s + "param1_bits"] = scalar_bits(p.param1, is_int, s + "param1")
            if p.operand is not None:
                f.update(_operand(p.operand, s + "operand").fields(s + "operand"))
        return f


def _operand(mat: object, name: str) -> Matrix | None:
    """``mat`` when it is a :class:`Matrix` or None; anything else named (it was an AttributeError)."""
    if mat is not None and not isinstance(mat, Matrix):
        raise violation("cmd.field_range", type(mat).__name__, "a Matrix (Buffer.matrix(...)) or None", field=name)
    return mat


@dataclass(frozen=True)
class Copy:
    """A COPY command: ``dst = convert(src)`` over a rows x cols window."""

    src: Matrix
    dst: Matrix
    user_data: int = 0

    def encode(self) -> bytes:
        f = {"opcode": Opcode.COPY, "flags": 0, "size_bytes": COMMAND_BYTES, "user_data": self.user_data}
        for name in ("src", "dst"):
            mat = _operand(getattr(self, name), name)
            if mat is None:  # COPY has no absent operand
                raise violation("cmd.field_range", "None", "a Matrix (Buffer.matrix(...))", field=name)
            f.update(mat.fields(name))
        return encode_fields(COPY, f)


Values = tuple  # an operand's seven fields, as Matrix.values() gives them


def pack_gemm(m: int, n: int, k: int, batch: int, trans_a: bool, trans_b: bool, acc_dtype: DType | None,
              alpha: float, beta: float, a: Values | None, b: Values | None, c: Values | None,
              d: Values | None, epilogue: Sequence[tuple[PostOpKind, float, float, Values | None]] = (),
              user_data: int = 0) -> bytes:
    """A GEMM command's bytes in one ``struct.pack`` over its fields, from plain values: operands as
    :meth:`Matrix.values` tuples, post-ops as ``(kind, param0, param1, operand values or None)``.

    What :meth:`Gemm.encode` runs, without building the dataclasses (a front-end encodes each new
    geometry it meets; the dict of named fields cost tens of microseconds). Values must be
    integers of their fields' widths (struct.error otherwise: :meth:`Gemm.encode` then names the
    field); scalars that do not fit raise FFAccelError as :func:`scalar_bits` says.
    """
    acc = acc_dtype if acc_dtype is not None else _default_acc(a[1] if a is not None else None)
    is_int = acc in DTYPES and not DTYPES[acc].is_float
    v = _GEMM_ZEROS.copy()
    v[_G_OPCODE] = _GEMM_OPCODE
    v[_G_FLAGS] = (_TRANS_A if trans_a else 0) | (_TRANS_B if trans_b else 0)
    v[_G_SIZE] = COMMAND_BYTES
    v[_G_USER] = user_data
    v[_G_M], v[_G_N], v[_G_K], v[_G_BATCH] = m, n, k, batch
    v[_G_ACC] = acc
    v[_G_EPI_COUNT] = len(epilogue)
    v[_G_ALPHA] = scalar_bits(alpha, is_int, "alpha")
    v[_G_BETA] = scalar_bits(beta, is_int, "beta")
    for i, x in ((_G_A, a), (_G_B, b), (_G_C, c), (_G_D, d)):
        if x is not None:
            v[i: i + 7] = x
    for (i_kind, i_op), (i, (kind, p0, p1, x)) in zip(_G_SLOTS, enumerate(epilogue)):
        s = f"epilogue[{i}]."
        v[i_kind] = kind
        v[i_kind + 2] = scalar_bits(p0, is_int, s + "param0")
        v[i_kind + 3] = scalar_bits(p1, is_int, s + "param1")
        if x is not None:
            v[i_op: i_op + 7] = x
    return _GEMM_STRUCT.pack(*v) + _GEMM_PAD


def _default_acc(a_dtype: DType | None) -> DType:
    if a_dtype in (DType.F16, DType.BF16):
        return DType.F32
    if a_dtype in (DType.I8, DType.U8):
        return DType.I32
    return a_dtype if a_dtype is not None else DType.F32


def scalar_bits(x: float | int, is_int: bool, name: str) -> int:
    """Encode a scalar: i64 for integer GEMM (must be integral), else f64 bits."""
    try:
        if is_int:
            v = int(x) if not isinstance(x, float) or (math.isfinite(x) and x == int(x)) else None
            if v is None or not -(2**63) <= v < 2**63:
                raise _int_scalar_error(name, x)
            return i64_bits(v)
        return f64_bits(x)
    except (TypeError, ValueError, OverflowError):  # a list, a complex, a string: named, not float()'s error
        raise violation("cmd.field_range", repr(x), "a real number", field=name) from None


def _int_scalar_error(name: str, x: object) -> Exception:
    allowed = "an integer in [-2**31, 2**31 - 1]"
    if name.startswith("epilogue["):  # "epilogue[i].paramN"
        slot, _, param = name.partition("].")
        return violation("epilogue.param", x, allowed, i=slot[len("epilogue["):], p=param.removesuffix("_bits"))
    return violation("gemm.int_scalar", x, allowed, scalar=name)


def encode_fields(layout_: object, values: dict[str, int]) -> bytes:
    """Pack named field values (missing fields are zero) into one COMMAND_BYTES slot."""
    lay = layout_  # a Layout
    st = lay.struct  # type: ignore[attr-defined]
    try:
        raw = st.pack(*[int(values.get(n, 0)) for n in lay.names])  # type: ignore[attr-defined]
    except (struct.error, TypeError, ValueError, OverflowError):
        raise _field_error(lay, values) from None
    return raw + bytes(COMMAND_BYTES - len(raw))


def _field_error(lay: object, values: dict[str, int]) -> Exception:
    """The error for the first value that is not an integer fitting its field (u32 or u64)."""
    for f in lay.fields:  # type: ignore[attr-defined]
        v = values.get(f.name, 0)
        bits = 32 if f.fmt == "I" else 64
        ok = isinstance(v, numbers.Integral)
        if not ok or not 0 <= int(v) < 2**bits:
            return violation("cmd.field_range", v if ok else repr(v), f"an integer in [0, 2**{bits} - 1]",
                             field=f.name)
    return violation("cmd.field_range", "a value", "integers that fit their fields", field="fields")


def decode_command(raw: bytes | memoryview) -> dict[str, int]:
    """Unpack one command slot into its named fields (layout chosen by the opcode)."""
    opcode = int.from_bytes(raw[0:4], "little")
    lay = COPY if opcode == Opcode.COPY else GEMM
    return dict(zip(lay.names, lay.struct.unpack_from(raw, 0)))


def encode_submission(
    commands: Iterable[Gemm | Copy | bytes],
    engine: Engine = Engine.COMPUTE,
    waits: Iterable[tuple[int, int]] = (),
    abi_version: int = ABI_VERSION,
) -> bytes:
    """Encode a whole submission: header, waits ``(engine, value)``, then commands."""
    try:
        cmds = [c if isinstance(c, (bytes, bytearray, memoryview)) else c.encode() for c in commands]
    except AttributeError:  # not a command at all (an int, None...): named, not a foreign AttributeError
        seen = [c for c in commands if not isinstance(c, (bytes, bytearray, memoryview, Gemm, Copy))] \
            if isinstance(commands, (list, tuple)) else []
        raise violation("cmd.opcode", type(seen[0]).__name__ if seen else "an object that is not a command",
                        "a Gemm, a Copy or encoded command bytes") from None
    waits = list(waits)
    try:
        head = _SUBMIT_STRUCT.pack(abi_version, int(engine), 0, len(cmds), len(waits), 0, 0)
        w = b"".join(_WAIT_STRUCT.pack(int(e), 0, int(v)) for e, v in waits)
    except (struct.error, TypeError, ValueError, OverflowError):
        raise _submission_error(abi_version, engine, waits) from None
    return head + w + b"".join(bytes(c) for c in cmds)


def _submission_error(abi_version: object, engine: object, waits: list) -> Exception:
    fields = [("abi_version", abi_version, 32), ("engine", engine, 32)]
    for i, w in enumerate(waits):
        e, v = w if isinstance(w, tuple) and len(w) == 2 else (None, w)
        fields += [(f"wait[{i}].engine", e, 32), (f"wait[{i}].value", v, 64)]
    for name, v, bits in fields:
        if not isinstance(v, numbers.Integral) or not 0 <= int(v) < 2**bits:
            return violation("cmd.field_range", v if isinstance(v, numbers.Integral) else repr(v),
                             f"an integer in [0, 2**{bits} - 1]", field=name)
    return violation("cmd.field_range", "a value", "integers that fit their fields", field="waits")


__all__ = [
    "Copy", "Gemm", "Matrix", "PostOpDesc", "bits_f64", "bits_i64", "decode_command", "encode_fields",
    "encode_submission", "f64_bits", "i64_bits", "pack_gemm", "scalar_bits",
]
