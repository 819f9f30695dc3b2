"""The one validator that stands in front of every driver and every transport.

It turns untrusted bytes into validated, immutable operation objects. Every
check raises through :func:`ffaccel.spec.violation` with the rule it enforces,
so each error carries the spec's code, the parameter's name, the value seen and
what is allowed. A submission is validated whole before any command runs.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..spec import (
    COMBO_BY_DTYPES,
    COPY_CONVERSIONS,
    DTYPES,
    ENGINE_OPCODES,
    GEMM_COMBOS,
    OPERAND_POST_OPS,
    POST_OPS,
    SPEC_LIMITS,
    DType,
    Engine,
    FFAccelError,
    GemmCombo,
    Limits,
    Opcode,
    PostOpKind,
    violation,
)
from .cache import LruCache
from .commands import bits_f64, bits_i64, decode_command
from .layout import (
    ABI_VERSION,
    COMMAND_BYTES,
    COPY,
    COPY_FLAGS_KNOWN,
    GEMM,
    GEMM_FLAGS_KNOWN,
    MAX_COMMANDS_PER_SUBMIT,
    MAX_EPILOGUE_SLOTS,
    MAX_WAITS_PER_SUBMIT,
    SUBMIT,
    SUBMIT_FLAGS_KNOWN,
    WAIT,
    GemmFlags,
)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
#: Engine by its wire value (a dict lookup: the enum's own constructor costs a microsecond per call).
_ENGINES = {int(e): e for e in Engine}
_SUBMIT_UNPACK = SUBMIT.struct.unpack_from
_GEMM_OPCODE, _COPY_OPCODE = Opcode.GEMM, Opcode.COPY  # enum attribute access is slow on 3.11
#: The field names of each epilogue slot (an unused slot must be all zero).
_SLOT_FIELDS = tuple(tuple(n for n in GEMM.names if n.startswith(f"epilogue[{i}].")) for i in range(MAX_EPILOGUE_SLOTS))


@dataclass(frozen=True)
class DeviceCaps:
    """What a device declares; the validator refuses the rest as UNSUPPORTED."""

    combos: frozenset[GemmCombo] = frozenset(GEMM_COMBOS)
    copies: frozenset[tuple[DType, DType]] = frozenset(COPY_CONVERSIONS)
    post_ops: frozenset[PostOpKind] = frozenset(PostOpKind)
    engines: frozenset[Engine] = frozenset(Engine)
    limits: Limits = SPEC_LIMITS


@dataclass(frozen=True, slots=True)
class View:
    """A validated operand: typed, in bounds, within the caller's own buffer."""

    handle: int
    dtype: DType
    offset_bytes: int
    rows: int
    cols: int
    ld: int
    batch_stride: int

    def extent_bytes(self, batch: int) -> tuple[int, int]:
        """[start, end) byte range the view spans over ``batch`` entries (empty when no elements)."""
        if self.rows == 0 or self.cols == 0 or batch == 0:
            return (self.offset_bytes, self.offset_bytes)
        last = (batch - 1) * self.batch_stride + (self.rows - 1) * self.ld + self.cols
        return (self.offset_bytes, self.offset_bytes + last * DTYPES[self.dtype].itemsize_bytes)


@dataclass(frozen=True, slots=True)
class ValidPostOp:
    """A validated epilogue post-op (the front-end's ``ffaccel.post.PostOp`` is what a user asks for)."""

    kind: PostOpKind
    param0: float | int
    param1: float | int
    operand: View | None


@dataclass(frozen=True, slots=True)
class GemmOp:
    """A validated GEMM. ``a``/``b`` are stored operands (transposed per the flags)."""

    m: int
    n: int
    k: int
    batch: int
    trans_a: bool
    trans_b: bool
    combo: GemmCombo
    alpha: float | int
    beta: float | int
    a: View
    b: View
    c: View | None
    d: View
    epilogue: tuple[ValidPostOp, ...]
    user_data: int = 0

    @property
    def reads_ab(self) -> bool:
        """A and B are read only when alpha != 0 and k > 0 (reference BLAS rule)."""
        return self.alpha != 0 and self.k > 0

    @property
    def reads_c(self) -> bool:
        """C is read only when beta != 0."""
        return self.beta != 0

    @property
    def in_place(self) -> bool:
        return self.c is not None and self.c == self.d


def _slot_setting_init(cls: type) -> type:
    """Give a frozen slots dataclass an ``__init__`` that stores each field through its slot's own
    descriptor: the generated one goes through ``object.__setattr__`` per field (frozen), ~1.9 us
    for a View and ~2.6 us for a GemmOp here, paid by every operand of every new geometry; this
    one ~2x less. Same fields, defaults, equality, hash and immutability (assignment still raises)."""
    fields = dataclasses.fields(cls)
    env = {f"_set_{f.name}": cls.__dict__[f.name].__set__ for f in fields}
    params = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            env[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        else:
            params.append(f.name)
    body = "".join(f"    _set_{f.name}(self, {f.name})\n" for f in fields)
    exec(f"def __init__(self, {', '.join(params)}):\n{body}", env)  # noqa: S102 - as dataclasses does
    init = env["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls


_slot_setting_init(View)
_slot_setting_init(ValidPostOp)
_slot_setting_init(GemmOp)


@dataclass(frozen=True, slots=True)
class CopyOp:
    src: View
    dst: View
    user_data: int = 0


Op = GemmOp | CopyOp
#: handle -> size in bytes, or None when the handle is not in the caller's table.
HandleLookup = Callable[[int], "int | None"]


class Submission(NamedTuple):
    """A validated submission (a named tuple: built once per submission, on the hot path)."""

    engine: Engine
    waits: tuple[tuple[Engine, int], ...]
    ops: tuple[Op, ...]


# --------------------------------------------------------------------------------------
# geometry: everything that does not depend on the caller's memory


def _check_reserved(f: dict[str, int], reserved_names: Sequence[str]) -> None:
    for name in reserved_names:
        if f[name] != 0:
            raise violation("cmd.reserved", f[name], 0, field=name)


def _check_header(f: dict[str, int], raw: bytes | memoryview, flags_known: int, body_bytes: int) -> None:
    if f["size_bytes"] != COMMAND_BYTES:
        raise violation("cmd.size", f["size_bytes"], COMMAND_BYTES)
    if f["flags"] & ~flags_known:
        raise violation("cmd.flags", hex(f["flags"]), f"only bits in {hex(flags_known)}")
    if any(raw[body_bytes:COMMAND_BYTES]):
        raise violation("cmd.reserved", "nonzero bytes", "zero padding", field=f"bytes[{body_bytes}:]")


def _dtype(value: int, operand: str) -> DType:
    try:
        return DType(value)
    except ValueError:
        raise violation("operand.dtype", value, [int(d) for d in DType], operand=operand) from None


def _operand(f: dict[str, int], name: str, rows: int, cols: int, required: bool, limits: Limits,
             allow_batch: bool = True) -> View | None:
    p = name + "."
    handle = f[p + "handle"]
    if handle == 0:
        if required:
            raise violation("operand.present", 0, "a nonzero handle", operand=name)
        for key in ("dtype", "offset_bytes", "rows", "cols", "ld_elems", "batch_stride_elems"):
            if f[p + key]:
                raise violation("operand.absent_zero", f"{p}{key} = {f[p + key]}", "0", operand=name)
        return None
    dt = _dtype(f[p + "dtype"], name)
    if f[p + "rows"] != rows:
        raise violation("operand.shape", f[p + "rows"], rows, operand=name, dim="rows")
    if f[p + "cols"] != cols:
        raise violation("operand.shape", f[p + "cols"], cols, operand=name, dim="cols")
    ld = f[p + "ld_elems"]
    if ld < max(1, cols):
        raise violation("operand.ld", ld, f">= {max(1, cols)}", operand=name)
    size = DTYPES[dt].itemsize_bytes
    # Strides reach drivers as C int64 byte strides (NumPy, torch, BLAS), even where they are
    # multiplied by zero (one row, one batch entry): bounded here, before anything multiplies
    # them, every byte offset a driver computes fits. Bounds and extents then stay below
    # 2**31 * 2**63 (Python integers: exact) and are compared with the buffer's size.
    max_stride = min(limits.max_buffer_bytes, INT64_MAX) // size
    if ld > max_stride:
        raise violation("operand.ld", ld, f"<= {max_stride} (max_buffer_bytes / element size)", operand=name)
    align = size * limits.alignment_elems
    if f[p + "offset_bytes"] % align:
        raise violation("operand.alignment", f[p + "offset_bytes"], f"a multiple of {align}", operand=name)
    bs = f[p + "batch_stride_elems"]
    if bs and not allow_batch:
        raise violation("operand.batch_stride", bs, 0, operand=name)
    if bs > max_stride:
        raise violation("operand.batch_stride", bs, f"<= {max_stride} (max_buffer_bytes / element size)",
                        operand=name)
    return View(handle, dt, f[p + "offset_bytes"], rows, cols, ld, bs)


def _float_or_int(bits: int, is_int: bool) -> float | int:
    return bits_i64(bits) if is_int else bits_f64(bits)


_F32_ROUND = struct.Struct("<f")


def _as_f32(v: float) -> float | None:
    """``v`` (a descriptor's float64) rounded to nearest f32, the value an f32 accumulator uses (as
    BLAS's ``sgemm`` takes float scalars); None for a finite value past f32's range, which the
    caller refuses rather than turning it into inf (inf and NaN pass as they are). Every driver and
    the reference get this one value, so they agree at the range's ends: a float64 alpha that
    underflows f32 is 0 there (or a subnormal), and alpha == 0 then reads neither A nor B."""
    try:
        return _F32_ROUND.unpack(_F32_ROUND.pack(v))[0]
    except OverflowError:
        return None


def _f32_scalar(v: float, name: str) -> float:
    """alpha or beta as an f32 accumulator takes it (:func:`_as_f32`), or ``gemm.float_scalar``."""
    r = _as_f32(v)
    if r is None:
        raise violation("gemm.float_scalar", repr(v), "within f32's range (|x| <= 3.4028235e38), inf or NaN",
                        scalar=name)
    return r


def check_gemm(f: dict[str, int], raw: bytes | memoryview, caps: DeviceCaps) -> GemmOp:
    """Validate a decoded GEMM descriptor's geometry (no memory needed)."""
    _check_header(f, raw, GEMM_FLAGS_KNOWN, GEMM.size_bytes)
    _check_reserved(f, GEMM.reserved_names)
    lim = caps.limits
    m, n, k, batch = f["m"], f["n"], f["k"], f["batch"]
    for dim, v in (("m", m), ("n", n), ("k", k)):
        if v > lim.max_dim:
            raise violation("gemm.dim", v, f"<= {lim.max_dim}", dim=dim)
    if batch > lim.max_batch:
        raise violation("gemm.dim", batch, f"<= {lim.max_batch}", dim="batch")
    count = f["epilogue_count"]
    if count > min(lim.max_epilogue_ops, MAX_EPILOGUE_SLOTS):
        raise violation("epilogue.count", count, f"<= {min(lim.max_epilogue_ops, MAX_EPILOGUE_SLOTS)}")
    for i in range(count, MAX_EPILOGUE_SLOTS):
        for name in _SLOT_FIELDS[i]:
            if f[name]:
                raise violation("epilogue.count", f"{name} = {f[name]}", f"0 (slot {i} >= epilogue_count)")

    # dtype combination, in descriptor order so the first wrong field is named
    a_dt = _dtype(f["a.dtype"], "a") if f["a.handle"] else None
    b_dt = _dtype(f["b.dtype"], "b") if f["b.handle"] else None
    if a_dt is None:
        raise violation("operand.present", 0, "a nonzero handle", operand="a")
    if b_dt is None:
        raise violation("operand.present", 0, "a nonzero handle", operand="b")
    pairs = {(c.a, c.b) for c in GEMM_COMBOS}
    if a_dt not in {c.a for c in GEMM_COMBOS}:
        raise violation("gemm.combo", DTYPES[a_dt].name, sorted({DTYPES[c.a].name for c in GEMM_COMBOS}),
                        field="a.dtype")
    if (a_dt, b_dt) not in pairs:
        allowed = sorted({DTYPES[c.b].name for c in GEMM_COMBOS if c.a == a_dt})
        raise violation("gemm.combo", DTYPES[b_dt].name, f"{allowed} with a = {DTYPES[a_dt].name}", field="b.dtype")
    accs = {c.acc for c in GEMM_COMBOS if (c.a, c.b) == (a_dt, b_dt)}
    acc = DType(f["acc_dtype"]) if f["acc_dtype"] in DType._value2member_map_ else None
    if acc not in accs:
        raise violation("gemm.combo", f["acc_dtype"], [int(x) for x in accs], field="acc_dtype")
    d_dt = _dtype(f["d.dtype"], "d") if f["d.handle"] else None
    if d_dt is None:
        raise violation("operand.present", 0, "a nonzero handle", operand="d")
    combo = COMBO_BY_DTYPES.get((a_dt, b_dt, acc, d_dt))
    if combo is None:
        allowed = sorted(DTYPES[c.d].name for c in GEMM_COMBOS if (c.a, c.b, c.acc) == (a_dt, b_dt, acc))
        raise violation("gemm.combo", DTYPES[d_dt].name, allowed, field="d.dtype")
    if f["c.handle"] and f["c.dtype"] != d_dt:
        raise violation("gemm.combo", f["c.dtype"], f"{int(d_dt)} (d's dtype)", field="c.dtype")
    if combo not in caps.combos:
        raise violation("gemm.combo_supported", combo.name, sorted(c.name for c in caps.combos))

    is_int = combo.is_int
    alpha = _float_or_int(f["alpha_bits"], is_int)
    beta = _float_or_int(f["beta_bits"], is_int)
    if is_int:
        for name, v in (("alpha", alpha), ("beta", beta)):
            if not INT32_MIN <= v <= INT32_MAX:
                raise violation("gemm.int_scalar", v, "an integer in [-2**31, 2**31 - 1]", scalar=name)
    elif acc is DType.F32:
        alpha, beta = _f32_scalar(alpha, "alpha"), _f32_scalar(beta, "beta")

    flags = f["flags"]
    trans_a, trans_b = bool(flags & GemmFlags.TRANS_A), bool(flags & GemmFlags.TRANS_B)
    a = _operand(f, "a", *((k, m) if trans_a else (m, k)), True, lim)
    b = _operand(f, "b", *((n, k) if trans_b else (k, n)), True, lim)
    c = _operand(f, "c", m, n, beta != 0, lim)
    d = _operand(f, "d", m, n, True, lim)
    assert a is not None and b is not None and d is not None

    epilogue = tuple(_post_op(f, i, combo, m, n, caps) for i in range(count))

    if batch > 1 and m and n and not _batches_disjoint(d, batch):
        raise violation("gemm.d_batch_overlap", d.batch_stride,
                        f">= {(d.rows - 1) * d.ld + d.cols} (or interleaved rows with ld >= batch * stride)")
    return GemmOp(m, n, k, batch, trans_a, trans_b, combo, alpha, beta, a, b, c, d, epilogue, f["user_data"])


def _batches_disjoint(d: View, batch: int) -> bool:
    return _entries_disjoint(d.batch_stride, d.rows, d.cols, d.ld, batch)


def _entries_disjoint(s: int, rows: int, cols: int, ld: int, batch: int) -> bool:
    """Whether ``batch`` entries ``s`` elements apart of a rows x cols operand with leading
    dimension ``ld`` share no element (the rule on D)."""
    if s >= (rows - 1) * ld + cols:  # batch-major: each entry after the previous one
        return True
    # row-interleaved (e.g. [m, batch, n] layouts): the batch entries sit side by side in each row
    return s >= cols and (batch - 1) * s + cols <= ld


#: The shape of each operand-carrying post-op's operand: (spans the m rows, spans the n columns).
_OPERAND_SHAPE = {PostOpKind.BIAS_N: (False, True), PostOpKind.BIAS_M: (True, False), PostOpKind.ADD: (True, True)}
assert set(_OPERAND_SHAPE) == OPERAND_POST_OPS


def _post_op(f: dict[str, int], i: int, combo: GemmCombo, m: int, n: int, caps: DeviceCaps) -> ValidPostOp:
    s = f"epilogue[{i}]."
    raw_kind = f[s + "kind"]
    try:
        kind = PostOpKind(raw_kind)
    except ValueError:
        raise violation("epilogue.kind", raw_kind, [int(x) for x in PostOpKind], i=i) from None
    spec = POST_OPS[kind]
    if combo.is_int and not spec.int_ok:
        raise violation("epilogue.int_unsupported", spec.name, "bias, relu, clamp, scale, add for int32", i=i)
    if kind not in caps.post_ops:
        raise violation("epilogue.supported", spec.name, sorted(POST_OPS[x].name for x in caps.post_ops), i=i)
    is_int = combo.is_int
    p = [_float_or_int(f[s + "param0_bits"], is_int), _float_or_int(f[s + "param1_bits"], is_int)]
    for j in range(len(spec.params), 2):
        if f[s + f"param{j}_bits"]:
            raise violation("epilogue.param", p[j], 0, i=i, p=f"param{j}")
    if kind == PostOpKind.CLAMP:
        lo, hi = p
        if is_int:
            for j, v in enumerate(p):
                if not INT32_MIN <= v <= INT32_MAX:
                    raise violation("epilogue.param", v, "an int32", i=i, p=f"param{j}")
        for j, v in enumerate(p):
            if math.isnan(v):
                raise violation("epilogue.param", v, "a number (not NaN)", i=i, p=f"param{j}")
        if lo > hi:
            raise violation("epilogue.param", f"lo={lo}, hi={hi}", "lo <= hi", i=i, p="param0")
    if kind == PostOpKind.SCALE:
        v = p[0]
        if is_int and not INT32_MIN <= v <= INT32_MAX:
            raise violation("epilogue.param", v, "an int32", i=i, p="param0")
        if not is_int and not math.isfinite(v):
            raise violation("epilogue.param", v, "a finite number", i=i, p="param0")
        if combo.acc is DType.F32:  # applied in the accumulate precision: the f32 value (see _as_f32)
            r = _as_f32(v)
            if r is None:
                raise violation("epilogue.param", repr(v), "within f32's range (|x| <= 3.4028235e38)", i=i,
                                p="param0")
            p[0] = r
    name = s + "operand"
    if kind not in OPERAND_POST_OPS:
        if f[name + ".handle"]:
            raise violation("epilogue.operand", f"handle {f[name + '.handle']}", f"no operand for {spec.name}", i=i)
        _operand(f, name, 0, 0, False, caps.limits)  # absent: every field must be zero
        return ValidPostOp(kind, p[0], p[1], None)
    along = _OPERAND_SHAPE[kind]
    operand = _operand(f, name, m if along[0] else 1, n if along[1] else 1, True, caps.limits)
    assert operand is not None
    if operand.dtype not in (combo.acc, combo.d):
        raise violation("epilogue.operand", DTYPES[operand.dtype].name,
                        sorted({DTYPES[combo.acc].name, DTYPES[combo.d].name}), i=i)
    return ValidPostOp(kind, p[0], p[1], operand)


def check_copy(f: dict[str, int], raw: bytes | memoryview, caps: DeviceCaps) -> CopyOp:
    """Validate a decoded COPY descriptor's geometry."""
    _check_header(f, raw, COPY_FLAGS_KNOWN, COPY.size_bytes)
    _check_reserved(f, COPY.reserved_names)
    lim = caps.limits
    src = _operand(f, "src", f["src.rows"], f["src.cols"], True, lim, allow_batch=False)
    assert src is not None
    for dim in ("rows", "cols"):
        if f["dst." + dim] != f["src." + dim] and f["dst.handle"]:
            raise violation("operand.shape", f["dst." + dim], f"{f['src.' + dim]} (src.{dim})", operand="dst", dim=dim)
    dst = _operand(f, "dst", src.rows, src.cols, True, lim, allow_batch=False)
    assert dst is not None
    for name, v in (("rows", src.rows), ("cols", src.cols)):
        if v > lim.max_dim:
            raise violation("gemm.dim", v, f"<= {lim.max_dim}", dim=f"src.{name}")
    conv = (src.dtype, dst.dtype)
    if conv not in COPY_CONVERSIONS:
        allowed = sorted(DTYPES[d].name for s, d in COPY_CONVERSIONS if s == src.dtype)
        raise violation("copy.conversion", DTYPES[dst.dtype].name, f"{allowed} from {DTYPES[src.dtype].name}")
    if conv not in caps.copies:
        raise violation("copy.conversion_supported", f"{DTYPES[src.dtype].name}->{DTYPES[dst.dtype].name}",
                        sorted(f"{DTYPES[s].name}->{DTYPES[d].name}" for s, d in caps.copies))
    return CopyOp(src, dst, f["user_data"])


def check_command(raw: bytes | memoryview, caps: DeviceCaps) -> Op:
    """Decode and validate the geometry of one COMMAND_BYTES slot.

    A GEMM whose class (every field but its sizes and offsets, see :data:`GEOMETRY_FIELDS`) was
    validated before on the same ``caps`` is checked by the geometry rules alone (see
    :class:`GemmClass`); the result, and any error, is what the full check gives.
    """
    if len(raw) < COMMAND_BYTES:
        raise violation("cmd.size", len(raw), COMMAND_BYTES)
    opcode = int.from_bytes(raw[0:4], "little")
    if opcode not in (Opcode.GEMM, Opcode.COPY):
        raise violation("cmd.opcode", opcode, [int(o) for o in Opcode])
    if opcode == _GEMM_OPCODE:
        whole = int.from_bytes(raw if len(raw) == COMMAND_BYTES else raw[:COMMAND_BYTES], "little")
        key = (whole & _CLASS_MASK, id(caps))
        known = _GEMM_CLASSES.peek(key) or _GEMM_CLASSES.get(key)
        if known is not None and known.caps is caps and not whole & known.zero_mask:
            op = known.check_geometry(_GEMM_UNPACK(raw, 0))
            if op is not None:
                return op
    f = decode_command(raw)
    if f["reserved0"]:
        raise violation("cmd.reserved", f["reserved0"], 0, field="reserved0")
    if opcode != _GEMM_OPCODE:
        return check_copy(f, raw, caps)
    op = check_gemm(f, raw, caps)
    if known is None:
        _GEMM_CLASSES.put(key, GemmClass.of(op, caps))
    return op


# --------------------------------------------------------------------------------------
# a GEMM's class, validated once: what a new geometry of a known kind of GEMM re-checks

_OPERAND_PREFIXES = ("a", "b", "c", "d") + tuple(f"epilogue[{i}].operand" for i in range(MAX_EPILOGUE_SLOTS))
_PLACEMENT_SUFFIXES = ("offset_bytes", "rows", "cols", "ld_elems", "batch_stride_elems")
#: The fields that make a GEMM's geometry: its sizes, where each operand sits, and ``user_data``
#: (opaque, no rule of its own). Every other field (opcode, flags, handles, dtypes, scalars,
#: post-op kinds and parameters, reserved bytes) makes its class: see :class:`GemmClass`.
GEOMETRY_FIELDS: tuple[str, ...] = ("user_data", "m", "n", "k", "batch") + tuple(
    f"{p}.{s}" for p in _OPERAND_PREFIXES for s in _PLACEMENT_SUFFIXES)
_GEMM_UNPACK = GEMM.struct.unpack_from
_INDEX = {name: i for i, name in enumerate(GEMM.names)}
_I_USER, _I_M, _I_N, _I_K, _I_BATCH = (_INDEX[x] for x in ("user_data", "m", "n", "k", "batch"))


#: Each GEMM field's bits in a command read as one little-endian integer (built once: a new GEMM
#: class asks for the mask of its absent operands, and rebuilding this map cost ~0.15 ms a class).
_FIELD_BITS: dict[str, int] = {f.name: ((1 << (8 * struct.calcsize("<" + f.fmt))) - 1) << (8 * pos)
                               for f, pos in GEMM.offsets()}


def _field_mask(names: Sequence[str]) -> int:
    """The bits of ``names`` in a GEMM command read as one little-endian integer."""
    mask = 0
    for name in names:
        mask |= _FIELD_BITS[name]
    return mask


_CLASS_MASK = ((1 << (8 * COMMAND_BYTES)) - 1) & ~_field_mask(GEOMETRY_FIELDS)
#: Most GEMM classes remembered (per process; each is a few hundred bytes).
MAX_GEMM_CLASSES = 1024
#: (class bits of a command, id(caps)) -> GemmClass; an entry holds its caps, so the id stays its own.
_GEMM_CLASSES: LruCache[tuple[int, int], GemmClass] = LruCache(MAX_GEMM_CLASSES)


class _Placed(NamedTuple):
    """A present operand of a class: where its placement fields are, and what bounds them."""

    i_offset: int
    handle: int
    dtype: DType
    max_stride: int  # elements: min(max_buffer_bytes, INT64_MAX) // element size (as _operand)
    align_bytes: int


def _placed(prefix: str, view: View, limits: Limits) -> _Placed:
    size = DTYPES[view.dtype].itemsize_bytes
    return _Placed(_INDEX[prefix + ".offset_bytes"], view.handle, view.dtype,
                   min(limits.max_buffer_bytes, INT64_MAX) // size, size * limits.alignment_elems)


def _placed_ok(v: Sequence[int], p: _Placed, rows: int, cols: int) -> bool:
    """Whether an operand's placement fields pass :func:`_operand`'s rules for a rows x cols operand."""
    i = p.i_offset  # offset, rows, cols, ld, batch stride: consecutive fields of the layout
    ld, bs = v[i + 3], v[i + 4]
    return (v[i + 1] == rows and v[i + 2] == cols and max(1, cols) <= ld <= p.max_stride
            and not v[i] % p.align_bytes and bs <= p.max_stride)


def _view_of(v: Sequence[int], p: _Placed) -> View:
    """The View of an operand whose placement passed :func:`_placed_ok`."""
    i = p.i_offset
    return View(p.handle, p.dtype, v[i], v[i + 1], v[i + 2], v[i + 3], v[i + 4])


@dataclass(frozen=True)
class GemmClass:
    """A GEMM validated once, less its geometry: the decision of how validation is reused.

    Two commands of one class differ only in :data:`GEOMETRY_FIELDS`. The class rules (header,
    reserved fields, dtype combination and the device's combinations, scalars, trans flags, which
    operands are present, post-op kinds, parameters and operand dtypes) read no geometry field,
    so they hold for every command of a validated class, on the same caps. What a new geometry
    must still pass is the rules that read one: the size limits, each operand's shape, leading
    dimension, alignment and strides, zeros in the placement fields of absent operands (``zero_mask``)
    and disjoint batches of D. :meth:`check_geometry` checks exactly those, in a few
    microseconds; when any fails it answers None and the full validator runs, so an error is
    always the one (code, parameter, message) the full check raises.
    """

    caps: DeviceCaps
    zero_mask: int  # placement bits of the absent operands (C, unused or operand-less post-op slots)
    trans_a: bool
    trans_b: bool
    combo: GemmCombo
    alpha: float | int
    beta: float | int
    a: _Placed
    b: _Placed
    c: _Placed | None
    d: _Placed
    epilogue: tuple[tuple[PostOpKind, float | int, float | int, _Placed | None], ...]

    @classmethod
    def of(cls, op: GemmOp, caps: DeviceCaps) -> GemmClass:
        lim = caps.limits
        present = {"a", "b", "d"} | ({"c"} if op.c is not None else set())
        present |= {f"epilogue[{i}].operand" for i, p in enumerate(op.epilogue) if p.operand is not None}
        absent = [f"{p}.{s}" for p in _OPERAND_PREFIXES if p not in present for s in _PLACEMENT_SUFFIXES]
        return cls(caps, _field_mask(absent), op.trans_a, op.trans_b, op.combo, op.alpha, op.beta,
                   _placed("a", op.a, lim), _placed("b", op.b, lim),
                   _placed("c", op.c, lim) if op.c is not None else None, _placed("d", op.d, lim),
                   tuple((p.kind, p.param0, p.param1,
                          _placed(f"epilogue[{i}].operand", p.operand, lim) if p.operand is not None else None)
                         for i, p in enumerate(op.epilogue)))

    def geometry_holds(self, v: Sequence[int]) -> bool:
        """Whether a command of this class (its fields ``v``) passes every rule that reads a geometry
        field: the size limits, each present operand's shape, leading dimension, stride bounds and
        alignment, and disjoint batches of D. (Zeros in absent operands' fields: ``zero_mask``.)"""
        m, n, k, batch = v[_I_M], v[_I_N], v[_I_K], v[_I_BATCH]
        lim = self.caps.limits
        if m > lim.max_dim or n > lim.max_dim or k > lim.max_dim or batch > lim.max_batch:
            return False
        if not (_placed_ok(v, self.a, *((k, m) if self.trans_a else (m, k)))
                and _placed_ok(v, self.b, *((n, k) if self.trans_b else (k, n)))
                and _placed_ok(v, self.d, m, n) and (self.c is None or _placed_ok(v, self.c, m, n))):
            return False
        for kind, _, _, placed in self.epilogue:
            if placed is not None:
                shape = _OPERAND_SHAPE[kind]
                if not _placed_ok(v, placed, m if shape[0] else 1, n if shape[1] else 1):
                    return False
        i = self.d.i_offset
        return not (batch > 1 and m and n) or _entries_disjoint(v[i + 4], m, n, v[i + 3], batch)

    def check_geometry(self, v: Sequence[int]) -> GemmOp | None:
        """The GemmOp of a command of this class (its fields ``v``), or None when a geometry rule fails."""
        if not self.geometry_holds(v):
            return None
        epilogue = tuple(ValidPostOp(kind, p0, p1, None if placed is None else _view_of(v, placed))
                         for kind, p0, p1, placed in self.epilogue)
        return GemmOp(v[_I_M], v[_I_N], v[_I_K], v[_I_BATCH], self.trans_a, self.trans_b, self.combo, self.alpha,
                      self.beta, _view_of(v, self.a), _view_of(v, self.b),
                      None if self.c is None else _view_of(v, self.c), _view_of(v, self.d), epilogue, v[_I_USER])



class GeometryChecker:
    """One validated GEMM class with its descriptor as the template of every geometry of it.

    What a plan over a growing axis reuses (a KV cache that grows a row a step meets a new
    geometry each step; docs/kernels.md, "A plan over a growing axis"): the descriptor is
    validated whole once (``check_command``), and :meth:`check` answers for a new geometry of the
    same class from the geometry values alone, without encoding and decoding a descriptor: the
    template's fields with the sizes and each operand's placement replaced, checked by
    :meth:`GemmClass.check_geometry` (every rule that reads a geometry field; the class rules
    hold for the whole class). None when a rule fails: the caller then takes its full path, whose
    validator raises the exact error.
    """

    __slots__ = ("_slots", "_template", "gemm_class")

    def __init__(self, raw: bytes, caps: DeviceCaps) -> None:
        op = check_command(raw, caps)
        if not isinstance(op, GemmOp):
            raise violation("cmd.opcode", "COPY", "GEMM")
        self.gemm_class = GemmClass.of(op, caps)
        self._template = list(_GEMM_UNPACK(raw, 0))
        cls = self.gemm_class
        #: (a, b, c, d, post-op operands) -> the index of its rows field, None where absent
        self._slots = tuple(None if p is None else p.i_offset + 1
                            for p in (cls.a, cls.b, cls.c, cls.d, *(e[3] for e in cls.epilogue)))

    def fields(self, m: int, n: int, k: int, batch: int, operands: tuple) -> list[int] | None:
        """This class's command fields with these sizes and placements, or None when ``operands``
        does not name the class's operands.

        ``operands``: per operand of the class (a, b, c, d, then each post-op's), its
        ``(rows, cols, ld_elems, batch_stride_elems)`` at offset 0, None where the class has none."""
        v = self._template.copy()
        v[_I_M], v[_I_N], v[_I_K], v[_I_BATCH] = m, n, k, batch
        if len(operands) != len(self._slots):
            return None
        for i, place in zip(self._slots, operands):
            if i is None or place is None:
                if i is not place:
                    return None
                continue
            v[i: i + 4] = place
        return v

    def check(self, m: int, n: int, k: int, batch: int, operands: tuple) -> GemmOp | None:
        """The GemmOp of this class's command with these sizes, or None when a geometry rule fails
        (or ``operands`` does not name the class's operands: see :meth:`fields`)."""
        v = self.fields(m, n, k, batch, operands)
        return None if v is None else self.gemm_class.check_geometry(v)

    def holds(self, m: int, n: int, k: int, batch: int, operands: tuple) -> bool:
        """Whether this geometry passes every geometry rule (:meth:`check` without building the op:
        for a caller that already holds the kernel it needs)."""
        v = self.fields(m, n, k, batch, operands)
        return v is not None and self.gemm_class.geometry_holds(v)


# --------------------------------------------------------------------------------------
# binding: handles, bounds and overlap against the caller's memory


def _bind(view: View | None, name: str, batch: int, lookup: HandleLookup) -> tuple[int, int] | None:
    if view is None:
        return None
    size = lookup(view.handle)
    if size is None:
        raise violation("operand.handle", view.handle, "a handle from this client's table", operand=name)
    lo, hi = view.extent_bytes(batch)
    if hi > size:
        raise violation("operand.bounds", f"bytes [{lo}, {hi})", f"within the buffer's {size} bytes", operand=name)
    return (lo, hi)


def _overlaps(x: View, xr: tuple[int, int], y: View, yr: tuple[int, int]) -> bool:
    return x.handle == y.handle and xr[0] < yr[1] and yr[0] < xr[1]


def bind_gemm(op: GemmOp, lookup: HandleLookup) -> None:
    """Check a validated GEMM's handles, bounds and overlap against the caller's buffers."""
    a_bs = op.batch
    ranges = {
        "a": _bind(op.a, "a", a_bs, lookup),
        "b": _bind(op.b, "b", a_bs, lookup),
        "c": _bind(op.c, "c", a_bs, lookup),
    }
    for i, p in enumerate(op.epilogue):
        ranges[f"epilogue[{i}].operand"] = _bind(p.operand, f"epilogue[{i}].operand", a_bs, lookup)
    d_range = _bind(op.d, "d", a_bs, lookup)
    assert d_range is not None
    if d_range[0] == d_range[1]:
        return
    views = {"a": op.a, "b": op.b, "c": op.c}
    views.update({f"epilogue[{i}].operand": p.operand for i, p in enumerate(op.epilogue)})
    for name, r in ranges.items():
        v = views[name]
        if v is None or r is None or r[0] == r[1]:
            continue
        if name == "c" and op.in_place:
            continue
        if _overlaps(op.d, d_range, v, r):
            raise violation("gemm.overlap", f"d bytes {list(d_range)} vs {name} bytes {list(r)} in buffer "
                            f"{v.handle}", "disjoint (or d exactly equal to c)")


def bind_copy(op: CopyOp, lookup: HandleLookup) -> None:
    s = _bind(op.src, "src", 1, lookup)
    d = _bind(op.dst, "dst", 1, lookup)
    assert s is not None and d is not None
    if s[0] != s[1] and _overlaps(op.dst, d, op.src, s):
        raise violation("copy.overlap", f"dst bytes {list(d)} vs src bytes {list(s)}", "disjoint")


def bind(op: Op, lookup: HandleLookup) -> None:
    if isinstance(op, GemmOp):
        bind_gemm(op, lookup)
    else:
        bind_copy(op, lookup)


# --------------------------------------------------------------------------------------
# whole submissions


def op_handles(op: Op) -> tuple[int, ...]:
    """Every buffer handle a validated operation names (operands that are present)."""
    if isinstance(op, CopyOp):
        return (op.src.handle, op.dst.handle)
    views = [op.a, op.b, op.c, op.d] + [p.operand for p in op.epilogue]
    return tuple(v.handle for v in views if v is not None)


def _unchanged(handles: tuple[int, ...], sizes: tuple[int | None, ...], lookup: HandleLookup) -> bool:
    """Whether every buffer still has the size it had when a memo entry was made."""
    for h, size in zip(handles, sizes):
        if lookup(h) != size:
            return False
    return True


class ValidationCache:
    """Memo of :func:`check_command` + :func:`bind` for one client's repeated commands.

    Both are pure functions of the command bytes, the caps and the sizes of the buffers the
    command names, so an entry is reused only when the bytes are identical and every handle
    it names still has the size it had: a hit returns exactly what validating again would.
    This is how a server validates the same GEMM arriving 10^6 times at ring speed without
    a second validator. Each of its three tables is an :class:`~ffaccel.abi.cache.LruCache`
    (least recently used entries dropped first): ``max_entries`` commands, ``max_entries``
    whole submissions of at most MAX_SUBMISSION_BYTES together, ``max_entries // 16 + 1``
    command blocks.
    """

    #: Bytes of whole submissions kept as keys (a 64-GEMM submission is about 35 KiB).
    MAX_SUBMISSION_BYTES = 16 << 20

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: LruCache[bytes, tuple[Op, tuple[int, ...], tuple[int | None, ...]]] = LruCache(max_entries)
        # whole command blocks (a batch of commands on one engine), for submissions repeated as a unit
        self._blocks: LruCache[tuple[Engine, bytes], tuple[tuple[Op, ...], tuple[int, ...], tuple[int | None, ...]]] \
            = LruCache(max_entries // 16 + 1)
        # whole submissions (header, waits, commands), for a loop that resubmits the very same bytes
        self._subs: LruCache[bytes, tuple[Submission, tuple[int, ...], tuple[int | None, ...]]] = LruCache(
            max_entries, self.MAX_SUBMISSION_BYTES)

    def get_submission(self, raw: bytes, lookup: HandleLookup) -> "Submission | None":
        """A whole submission validated before, if every buffer it names is unchanged.

        Exact: the checks are pure functions of the bytes, the caps, the named buffers' sizes
        and, for waits, of the engines' submitted values, which only grow (a wait that was
        within them stays within them).
        """
        ent = self._subs.peek(raw) or self._subs.get(raw)
        if ent is None or not _unchanged(ent[1], ent[2], lookup):
            return None
        return ent[0]

    def put_submission(self, raw: bytes, sub: "Submission", lookup: HandleLookup) -> None:
        handles = tuple(sorted({h for op in sub.ops for h in op_handles(op)}))
        self._subs.put(raw, (sub, handles, tuple(lookup(h) for h in handles)), len(raw))

    def get_block(self, engine: Engine, block: bytes, lookup: HandleLookup) -> tuple[Op, ...] | None:
        """The ops of a whole command block validated before, if every buffer it names is unchanged."""
        ent = self._blocks.peek((engine, block)) or self._blocks.get((engine, block))
        if ent is None or not _unchanged(ent[1], ent[2], lookup):
            return None
        return ent[0]

    def put_block(self, engine: Engine, block: bytes, ops: tuple[Op, ...], lookup: HandleLookup) -> None:
        handles = tuple(sorted({h for op in ops for h in op_handles(op)}))
        self._blocks.put((engine, block), (ops, handles, tuple(lookup(h) for h in handles)))

    def get(self, key: bytes, lookup: HandleLookup) -> Op | None:
        ent = self._entries.peek(key) or self._entries.get(key)
        if ent is None or not _unchanged(ent[1], ent[2], lookup):
            return None
        return ent[0]

    def put(self, key: bytes, op: Op, lookup: HandleLookup) -> None:
        handles = op_handles(op)
        self._entries.put(key, (op, handles, tuple(lookup(h) for h in handles)))

    def clear(self) -> None:
        self._entries.clear()
        self._blocks.clear()
        self._subs.clear()


def check_submission(
    raw: bytes | memoryview,
    caps: DeviceCaps,
    lookup: HandleLookup,
    submitted: Callable[[Engine], int],
    cache: ValidationCache | None = None,
) -> Submission:
    """Validate a whole submission; raises on the first broken rule, before anything runs.

    ``submitted(engine)`` gives the last timeline value already submitted on an engine
    (waits on later values could never signal, so they are refused). ``cache`` (optional)
    memoizes the per-command checks for a client that repeats commands (see ValidationCache).
    """
    if cache is not None and type(raw) is bytes:
        hit = cache.get_submission(raw, lookup)
        if hit is not None:
            return hit
    sub = _check_submission(raw, caps, lookup, submitted, cache)
    if cache is not None and type(raw) is bytes:
        cache.put_submission(raw, sub, lookup)
    return sub


def _check_submission(raw: bytes | memoryview, caps: DeviceCaps, lookup: HandleLookup,
                      submitted: Callable[[Engine], int], cache: ValidationCache | None) -> Submission:
    hs = SUBMIT.size_bytes
    if len(raw) < hs:
        raise violation("submit.command_count", f"{len(raw)} bytes", f">= {hs} bytes (the header)")
    abi, eng_raw, flags, n_cmd, n_wait, reserved0, reserved1 = _SUBMIT_UNPACK(raw, 0)
    if abi != ABI_VERSION:
        raise violation("submit.abi_version", abi, ABI_VERSION)
    if flags & ~SUBMIT_FLAGS_KNOWN:
        raise violation("submit.flags", hex(flags), 0)
    if reserved0 or reserved1:
        name, value = ("reserved0", reserved0) if reserved0 else ("reserved1", reserved1)
        raise violation("submit.reserved", f"{name} = {value}", 0)
    engine = _ENGINES.get(eng_raw)
    if engine is None or engine not in caps.engines:
        raise violation("submit.engine", eng_raw, sorted(int(e) for e in caps.engines))
    if n_wait > MAX_WAITS_PER_SUBMIT:
        raise violation("submit.wait", f"wait_count = {n_wait}", f"<= {MAX_WAITS_PER_SUBMIT}")
    expect = hs + n_wait * WAIT.size_bytes + n_cmd * COMMAND_BYTES
    if n_cmd > MAX_COMMANDS_PER_SUBMIT or len(raw) != expect:
        raise violation("submit.command_count", f"{n_cmd} commands in {len(raw)} bytes",
                        f"<= {MAX_COMMANDS_PER_SUBMIT} commands, exactly {expect} bytes for them")
    waits = []
    for i in range(n_wait):
        we, wres, wval = WAIT.struct.unpack_from(raw, hs + i * WAIT.size_bytes)
        if wres:
            raise violation("submit.reserved", f"wait[{i}].reserved = {wres}", 0)
        w_engine = _ENGINES.get(we)
        if w_engine is None or w_engine not in caps.engines:
            raise violation("submit.wait", f"wait[{i}].engine = {we}", sorted(int(e) for e in caps.engines))
        if wval > submitted(w_engine):
            raise violation("submit.wait", f"wait[{i}].value = {wval}",
                            f"<= {submitted(w_engine)} (already submitted on that engine)")
        waits.append((w_engine, wval))
    base = hs + n_wait * WAIT.size_bytes
    # A batch repeated as a unit (a ring loop, a benchmark, a model's layer) is looked up whole:
    # the same bytes on the same engine naming buffers of the same sizes validate the same way.
    block = bytes(raw[base:]) if cache is not None and n_cmd > 1 else None
    if block is not None:
        hit_ops = cache.get_block(engine, block, lookup)  # type: ignore[union-attr]
        if hit_ops is not None:
            return Submission(engine, tuple(waits), hit_ops)
    # Slicing bytes copies once (the cache key is that copy); other buffers go through a view.
    src = raw if isinstance(raw, bytes) else memoryview(raw)
    ops = []
    allowed = ENGINE_OPCODES[engine]
    for i in range(n_cmd):
        cmd = src[base + i * COMMAND_BYTES: base + (i + 1) * COMMAND_BYTES]
        try:
            if cache is not None:
                key = cmd if isinstance(cmd, bytes) else bytes(cmd)
                hit = cache.get(key, lookup)
            else:
                hit = None
            op = hit if hit is not None else check_command(cmd, caps)
            opcode = _GEMM_OPCODE if type(op) is GemmOp else _COPY_OPCODE
            if opcode not in allowed:
                raise violation("submit.engine_opcode", f"{opcode.name} on {engine.name}",
                                f"{sorted(o.name for o in allowed)} on {engine.name}")
            if hit is None:
                bind(op, lookup)
                if cache is not None:
                    cache.put(key, op, lookup)
        except FFAccelError as e:
            e.command_index = i
            e.args = (f"command {i} of {n_cmd}: {e.args[0]}",)
            raise
        ops.append(op)
    if block is not None:
        cache.put_block(engine, block, tuple(ops), lookup)  # type: ignore[union-attr]
    return Submission(engine, tuple(waits), tuple(ops))
