"""Every validation rule of spec v1, as data.

A rule has a stable identifier, the error code it raises, the parameter it
names (a template: ``{operand}`` is filled in with ``a``, ``b``, ``c``, ``d``,
``epilogue[i]`` ...) and a plain statement. The validator in ``abi`` and the
front-ends raise errors through :func:`violation`, the reference page lists the
table, and the tests check that every rule has a test that trips it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ErrorCode, FFAccelError


@dataclass(frozen=True)
class Rule:
    id: str
    code: ErrorCode
    param: str
    statement: str
    scope: str  # where it is enforced: "abi" (every transport) or a front-end name


_E = ErrorCode
_RULES = (
    # --- submissions ------------------------------------------------------------------
    Rule("submit.abi_version", _E.ABI_VERSION_MISMATCH, "abi_version",
         "the submission's ABI version must be one the device speaks", "abi"),
    Rule("submit.engine", _E.INVALID_PARAMETER, "engine", "the engine must be one the device declares", "abi"),
    Rule("submit.flags", _E.INVALID_PARAMETER, "flags", "unknown flag bits must be zero", "abi"),
    Rule("submit.reserved", _E.INVALID_PARAMETER, "reserved", "reserved fields must be zero", "abi"),
    Rule("submit.command_count", _E.INVALID_PARAMETER, "command_count",
         "command_count must match the commands given and not exceed the per-submission limit", "abi"),
    Rule("submit.wait", _E.INVALID_PARAMETER, "wait",
         "a wait must name a declared engine and a fence value already submitted on it", "abi"),
    Rule("submit.engine_opcode", _E.INVALID_PARAMETER, "engine",
         "the engine must execute the command's opcode (GEMM runs on compute only)", "abi"),
    # --- every command ----------------------------------------------------------------
    Rule("cmd.opcode", _E.INVALID_PARAMETER, "opcode", "the opcode must be one of the spec's", "abi"),
    Rule("cmd.size", _E.INVALID_PARAMETER, "size_bytes",
         "size_bytes must equal COMMAND_BYTES of this ABI version, and bytes past an opcode's own fields "
         "must be zero",
         "abi"),
    Rule("cmd.flags", _E.INVALID_PARAMETER, "flags", "flag bits the opcode does not define must be zero", "abi"),
    Rule("cmd.reserved", _E.INVALID_PARAMETER, "{field}", "reserved fields and padding must be zero", "abi"),
    Rule("cmd.field_range", _E.INVALID_PARAMETER, "{field}",
         "a value given to the encoder must be an integer that fits its field (u32 or u64: no negative values, "
         "nothing from 2**32 or 2**64 up)", "abi"),
    # --- operands (GEMM, COPY and epilogue operands alike) ------------------------------
    Rule("operand.present", _E.INVALID_PARAMETER, "{operand}.handle",
         "an operand that is read or written must name a buffer (handle 0 means absent)", "abi"),
    Rule("operand.absent_zero", _E.INVALID_PARAMETER, "{operand}",
         "an absent operand (handle 0) must have every field zero", "abi"),
    Rule("operand.handle", _E.BAD_HANDLE, "{operand}.handle",
         "the handle must name a live buffer in the caller's own handle table", "abi"),
    Rule("operand.dtype", _E.INVALID_PARAMETER, "{operand}.dtype", "the dtype must be a spec dtype", "abi"),
    Rule("operand.shape", _E.INVALID_PARAMETER, "{operand}.{dim}",
         "rows and cols must equal the shape the operation implies", "abi"),
    Rule("operand.ld", _E.INVALID_PARAMETER, "{operand}.ld_elems",
         "ld_elems must be >= max(1, cols), and ld_elems times the element size at most max_buffer_bytes "
         "(and 2**63 - 1)", "abi"),
    Rule("operand.alignment", _E.INVALID_PARAMETER, "{operand}.offset_bytes",
         "offset_bytes must be a multiple of the element size (times the device's alignment_elems)", "abi"),
    Rule("operand.bounds", _E.OUT_OF_BOUNDS, "{operand}",
         "every element the operand spans must lie inside its buffer", "abi"),
    Rule("operand.batch_stride", _E.INVALID_PARAMETER, "{operand}.batch_stride_elems",
         "batch_stride_elems must be 0 where the operation has no batch, and batch_stride_elems times the "
         "element size at most max_buffer_bytes (and 2**63 - 1)", "abi"),
    # --- GEMM ---------------------------------------------------------------------------
    Rule("gemm.dim", _E.INVALID_PARAMETER, "{dim}",
         "m, n, k must not exceed max_dim and batch must not exceed max_batch", "abi"),
    Rule("gemm.combo", _E.INVALID_PARAMETER, "{field}",
         "(a, b, acc, d) dtypes must form one of the spec's GEMM combinations; c has d's dtype", "abi"),
    Rule("gemm.combo_supported", _E.UNSUPPORTED, "dtypes",
         "the dtype combination must be one the device declares", "abi"),
    Rule("gemm.int_scalar", _E.INVALID_PARAMETER, "{scalar}",
         "alpha and beta of an integer GEMM must be integers in the int32 range", "abi"),
    Rule("gemm.float_scalar", _E.INVALID_PARAMETER, "{scalar}",
         "alpha and beta of a GEMM accumulating in f32 must be within f32's range (they are taken as "
         "f32 values, as BLAS's sgemm takes them; inf and NaN pass)", "abi"),
    Rule("gemm.overlap", _E.OVERLAP, "d",
         "D must not overlap any input, except that D may be exactly C (in place)", "abi"),
    Rule("gemm.d_batch_overlap", _E.OVERLAP, "d.batch_stride_elems",
         "D's batch entries must not overlap each other", "abi"),
    Rule("epilogue.count", _E.INVALID_PARAMETER, "epilogue_count",
         "at most max_epilogue_ops post-ops; slots past epilogue_count must be all zero", "abi"),
    Rule("epilogue.kind", _E.INVALID_PARAMETER, "epilogue[{i}].kind", "each used slot must hold a known post-op", "abi"),
    Rule("epilogue.int_unsupported", _E.UNSUPPORTED, "epilogue[{i}].kind",
         "gelu is not defined for int32 outputs", "abi"),
    Rule("epilogue.supported", _E.UNSUPPORTED, "epilogue[{i}].kind",
         "the post-op must be one the device declares", "abi"),
    Rule("epilogue.param", _E.INVALID_PARAMETER, "epilogue[{i}].{p}",
         "clamp needs lo <= hi (neither NaN); scale needs a finite s (within f32's range where the GEMM "
         "accumulates in f32, an int32 for int32 outputs); unused parameters must be zero", "abi"),
    Rule("epilogue.operand", _E.INVALID_PARAMETER, "epilogue[{i}].operand",
         "bias and add need an operand in the accumulate dtype or D's dtype, with no operand for the other post-ops",
         "abi"),
    # --- COPY ---------------------------------------------------------------------------
    Rule("copy.conversion", _E.INVALID_PARAMETER, "dst.dtype",
         "COPY converts any float type to any float type; integer types copy only to themselves", "abi"),
    Rule("copy.conversion_supported", _E.UNSUPPORTED, "dst.dtype",
         "the conversion must be one the device declares", "abi"),
    Rule("copy.overlap", _E.OVERLAP, "dst", "dst must not overlap src", "abi"),
    # --- memory and fences --------------------------------------------------------------
    Rule("memory.size", _E.INVALID_PARAMETER, "size_bytes",
         "a buffer's size must be between 1 and max_buffer_bytes", "runtime"),
    Rule("memory.quota", _E.OUT_OF_MEMORY, "size_bytes",
         "a client's buffers must fit in its memory quota", "runtime"),
    Rule("memory.handle", _E.BAD_HANDLE, "handle", "the handle must name a live buffer of this client", "runtime"),
    Rule("fence.timeout", _E.TIMEOUT, "timeout_ns", "the fence must signal before the deadline", "runtime"),
    Rule("fence.device", _E.INVALID_PARAMETER, "fence", "a fence can only be waited on through its own device",
         "runtime"),
    Rule("device.name", _E.INVALID_PARAMETER, "name", "the device name must be one ffaccel.devices() lists",
         "runtime"),
    # --- transports: the server's wire protocol, rings, sharing, command lists --------------
    Rule("wire.message", _E.INVALID_PARAMETER, "{field}",
         "a request to the server must be a well-formed wire message: a known msg_type, the exact payload "
         "size of that type, reserved fields zero, the file descriptors it carries and no others", "transport"),
    Rule("wire.import", _E.BAD_HANDLE, "fd",
         "an imported file descriptor must be a live buffer exported by the same server", "transport"),
    Rule("wire.export", _E.UNSUPPORTED, "device",
         "export and import need a device whose buffers are shareable memfds (a server device)", "transport"),
    Rule("ring.index", _E.INVALID_PARAMETER, "{field}",
         "the ring indices a client writes (sq_tail, cq_head) must stay within entries of the server's own "
         "(sq_head, cq_tail); a client that breaks this loses its ring, nothing else", "transport"),
    Rule("ring.entry", _E.INVALID_PARAMETER, "{field}",
         "a ring entry's header has known flags and zero reserved fields; linked entries share engine and "
         "waits; a chain fits in the ring", "transport"),
    Rule("cmdlist.id", _E.BAD_HANDLE, "command_list",
         "a command list must be a live list recorded by this client", "transport"),
    Rule("cmdlist.stale", _E.BAD_HANDLE, "handle",
         "every buffer a command list names must still be alive when it is replayed", "transport"),
    Rule("cmdlist.limit", _E.OUT_OF_MEMORY, "command_list",
         "a client holds at most max_command_lists recorded lists (their bytes count against its quota)",
         "transport"),
    Rule("memory.mappings", _E.OUT_OF_MEMORY, "size_bytes",
         "a client's handle table holds at most max_mappings buffers, and the server at most max_buffers",
         "transport"),
    Rule("wire.clients", _E.OUT_OF_MEMORY, "connection",
         "the server serves at most max_clients connections at once", "transport"),
    Rule("ring.wake", _E.INVALID_PARAMETER, "fds",
         "the wake file descriptor given with RING_SETUP must be an eventfd", "transport"),
    # --- front-ends ---------------------------------------------------------------------
    Rule("api.dtype", _E.INVALID_PARAMETER, "{arg}",
         "operands must be float64, float32, float16, bfloat16, int8 or uint8 arrays, with no silent promotion",
         "frontends"),
    Rule("api.shape", _E.INVALID_PARAMETER, "{arg}", "shapes must agree as numpy.matmul requires", "frontends"),
    Rule("api.out", _E.INVALID_PARAMETER, "out", "out must have exactly the result's shape and dtype", "frontends"),
    Rule("api.writeable", _E.INVALID_PARAMETER, "{arg}", "an array the call writes must be writeable", "frontends"),
    Rule("api.out_overlap", _E.OVERLAP, "out", "out must not overlap an input (except c, for in place)",
         "frontends"),
    Rule("api.post_op", _E.INVALID_PARAMETER, "{arg}",
         "post_ops must be made by ffaccel.post with valid arguments", "frontends"),
    Rule("api.scalar", _E.INVALID_PARAMETER, "{arg}",
         "scalars (alpha, beta, post-op parameters) must be real numbers: int or float", "frontends"),
    Rule("api.flag", _E.INVALID_PARAMETER, "{arg}", "trans_a and trans_b must be True or False", "frontends"),
    Rule("api.option", _E.INVALID_PARAMETER, "{arg}",
         "an option (such as offload's threads) must take one of the values its documentation lists", "frontends"),
    Rule("blas.enum", _E.INVALID_PARAMETER, "{arg}", "order is 'row' or 'col'; trans is 'N' or 'T'", "frontends"),
    Rule("blas.dim", _E.INVALID_PARAMETER, "{arg}", "m, n, k must be integers >= 0", "frontends"),
    Rule("blas.ld", _E.INVALID_PARAMETER, "{arg}",
         "the leading dimension must be >= max(1, the stored matrix's row length)", "frontends"),
    Rule("blas.storage", _E.OUT_OF_BOUNDS, "{arg}",
         "the flat storage must hold every element the dimensions and leading dimension address", "frontends"),
)

RULES: dict[str, Rule] = {r.id: r for r in _RULES}


class _Keep(dict):
    """Leaves unknown template fields as they are instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _fmt(value: object) -> str:
    if isinstance(value, str):
        return value
    return repr(value)


def violation(rule_id: str, seen: object, allowed: object, **names: object) -> FFAccelError:
    """Build the error for a broken rule.

    ``names`` fills the rule's parameter template, e.g. ``operand="a"``.
    The message states the rule, the value seen and what is allowed.
    """
    rule = RULES[rule_id]
    param = rule.param.format_map(_Keep(names))
    msg = f"{rule.statement}; got {_fmt(seen)}, allowed {_fmt(allowed)}"
    return FFAccelError(rule.code, param, msg, rule=rule.id)
