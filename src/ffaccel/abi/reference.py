"""Generate the reference page (docs/spec.md) from the spec and ABI tables.

This renders the op set and the ABI; the page itself (this plus the device server's wire
protocol, which this layer cannot see) is printed by ``python -m ffaccel.transports.reference >
docs/spec.md``. A test checks that the committed page equals it, so it never drifts from the code.
"""

from __future__ import annotations

import sys

from ..spec import (
    ACCURACY_C,
    COMBO_BIT,
    COPY_BIT,
    DTYPES,
    ENGINE_OPCODES,
    ERROR_MEANINGS,
    POST_OPS,
    RULES,
    SPEC_LIMITS,
    SPEC_VERSION,
    Engine,
    ErrorCode,
    Opcode,
)
from ..spec import accuracy
from .layout import (
    ABI_VERSION,
    COMMAND_BYTES,
    COPY,
    GEMM,
    MAX_COMMANDS_PER_SUBMIT,
    MAX_WAITS_PER_SUBMIT,
    OPERAND_BYTES,
    SUBMIT,
    WAIT,
    GemmFlags,
    Layout,
)

_SEMANTICS = """\
## GEMM

For each batch index `b` in `[0, batch)`:

    D[b] = epilogue(alpha * op(A)[b] @ op(B)[b] + beta * C[b])

* `op(A)` is m x k, `op(B)` is k x n, `C` and `D` are m x n. `op(X)` is `X` or `X^T`
  (flags `TRANS_A`, `TRANS_B`); a transposed operand is *stored* transposed (A as k x m).
* Every matrix operand is a row-major view into a buffer: (handle, `offset_bytes`, rows, cols,
  `ld_elems` >= max(1, cols), `batch_stride_elems`). Element `[b, i, j]` lives at byte
  `offset_bytes + (b * batch_stride_elems + i * ld_elems + j) * itemsize`.
* m, n, k and batch may be 0: then nothing is read, and D is written only where it has elements.
* **beta == 0: C is not read.** NaN or Inf in C cannot leak into D, and C may be absent (handle 0).
* **alpha == 0 or k == 0: A and B are not read**, and `D = epilogue(beta * C)`.
  (These are the reference BLAS rules; many libraries have shipped bugs here.)
* D may be exactly C (same handle, offset, ld, batch stride, dtype): the GEMM runs in place.
  Any other overlap of D with an input is refused (`OVERLAP`).
* A batch stride of 0 broadcasts A, B, C or an epilogue operand to every batch entry.
  D's batch entries must not overlap each other.
* Accumulation happens in the combination's accumulate type; the epilogue is applied in the
  accumulate precision; the result is rounded once to D's dtype: IEEE round-to-nearest-even,
  overflow to infinity.
* Integer GEMM (int8/uint8 in any pairing) is exact and all its arithmetic is int32 two's
  complement: the accumulator `alpha * sum + beta * C` wraps modulo 2**32, and every epilogue
  step that adds or multiplies (bias, scale, add) wraps again before the next post-op.
  alpha, beta, scale and clamp bounds are integers (int32 range).

### Epilogue

An ordered list of at most 4 post-ops (slots `epilogue[0..3]`, `epilogue_count` used).
`bias` and `add` operands come in the accumulate dtype or in D's dtype; a bias is a 1 x n
operand (`BIAS_N`) or an m x 1 operand (`BIAS_M`); `add`'s E is m x n.

| kind | value | parameters | operand | int32 output | meaning |
|---|---|---|---|---|---|
{post_ops}

## COPY

`dst = convert(src)` over a rows x cols window (2-D, no batch: both batch strides must be 0).
Any float type converts to any float type (round-to-nearest-even, overflow to infinity);
integer types copy only to themselves. `dst` must not overlap `src`. COPY runs on the `copy`
engine or the `compute` engine; GEMM runs on `compute` only. A copy engine and a compute
engine run side by side and are ordered by fences.
"""

_DECISIONS = """\
## Decisions where the design notes are silent

* **C has D's dtype** (as in cuBLASLt). For f16/bf16 inputs with an f32 output, C is f32.
* **Invalid versus unsupported.** A dtype combination that the spec does not define (f32 x f64)
  is `INVALID_PARAMETER`, naming the first field that breaks it (`b.dtype`, `acc_dtype`,
  `d.dtype`, `c.dtype`). A combination the spec defines but the device does not declare is
  `UNSUPPORTED`. The runtime never falls back silently.
* **Operands that are not read are still described.** A, B and D must always name a buffer
  and pass the shape, ld and alignment rules (as BLAS checks `lda` even when `k == 0`); bounds are
  checked for every operand that has elements. Only C (when beta == 0) and the operand slot of
  post-ops without an operand may be absent, and an absent operand must be all zero.
* **Overlap is judged by byte extents** (first to last element of each operand in the same
  buffer), like `numpy.may_share_memory`: conservative, never misses a real overlap. D's own
  batch entries must be disjoint either batch-major (`batch_stride >= (rows-1)*ld + cols`) or
  row-interleaved (`batch_stride >= cols` and `(batch-1)*batch_stride + cols <= ld`, the
  [m, batch, n] layout of attention heads).
* **alpha, beta and scale's factor are taken in the accumulate type.** The descriptor carries
  float64 bits; a GEMM accumulating in f32 (f32, f16 and bf16 inputs) uses them rounded to
  nearest f32, as BLAS's `sgemm` takes float scalars, and the validator does the rounding once,
  so every driver and the reference use the same value: an alpha that rounds to 0 there is
  alpha == 0 (A and B not read). A finite value beyond f32's range is refused
  (`gemm.float_scalar`, `epilogue.param`) rather than turned into inf.
* **An infinite alpha or beta** is IEEE arithmetic on a sum whose order the spec leaves free:
  where the exact value is +-inf, a device summing in blocks may give NaN (`inf * s1 + inf * s2`
  with partial sums of opposite signs), as where an accumulator overflows.
* **NaN** propagates through `relu` and `clamp` (as `torch.relu`, `torch.clamp`); clamp bounds
  themselves must not be NaN.
* **Front-ends never promote**: a/b dtypes must form a spec combination (int8 and uint8 mix;
  floats must match), `c` and `out` must have the result's dtype.
* **Front-ends copy only when the operand model cannot express a view**: a NumPy view that is
  row-major with a leading dimension, or its transpose, with one batch stride, goes to the
  device as it is; otherwise (negative strides, batch dims that no single stride describes,
  broadcasting inside a matrix) it is copied once. `out` that the model cannot express is
  computed into a temporary and copied back after success.
* **Waits never hang**: every wait has a deadline (`timeout_ns` relative, or an absolute
  CLOCK_MONOTONIC `deadline_ns`; 60 s when neither is given), and a wait on a fence value that
  was never submitted is refused at once.
* **Repeated submissions are validated by memo, exactly.** Every submission passes the validator,
  but the checks are pure functions of the bytes, the device's caps and the sizes of the buffers
  named, so bytes seen before (a loop, a ring batch, a command list) are looked up rather than
  re-parsed: the entry is reused only while every buffer it names is alive with the same size
  (handles are never reused; freeing any buffer drops the last-submission memo outright), and
  waits it passed stay passable (timelines only grow). Observable behaviour is that of
  validating every time; a tiny repeated GEMM then costs about one BLAS call.
"""


def _table(header: list[str], rows: list[list[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _layout_table(layout: Layout) -> str:
    rows = []
    for f, off in layout.offsets():
        kind = {"I": "u32", "Q": "u64"}[f.fmt]
        rows.append([off, f"`{f.name}`", kind, f.doc])
    return f"### `{layout.name}` ({layout.size_bytes} bytes)\n\n{layout.doc}\n\n" + _table(
        ["offset", "field", "type", "meaning"], rows)


def _compact_gemm_table() -> str:
    """GEMM's table without repeating the four identical epilogue slots."""
    fields = [(f, off) for f, off in GEMM.offsets() if not f.name.startswith("epilogue[") or
              f.name.startswith("epilogue[0]")]
    rows = [[off, f"`{f.name}`", {"I": "u32", "Q": "u64"}[f.fmt], f.doc] for f, off in fields]
    slot = sum(1 for f in GEMM.fields if f.name.startswith("epilogue[0]."))
    return (f"### `{GEMM.name}` ({GEMM.size_bytes} bytes)\n\n{GEMM.doc} Slots `epilogue[1..3]` repeat "
            f"`epilogue[0]`'s {slot} fields, each slot {(GEMM.size_bytes - 256) // 4} bytes.\n\n"
            + _table(["offset", "field", "type", "meaning"], rows))


def render() -> str:
    """The whole reference page as Markdown."""
    parts = [
        f"# ffaccel op set, spec v{SPEC_VERSION[0]}.{SPEC_VERSION[1]} (ABI version {ABI_VERSION})",
        "This page is generated from the code's own tables by `python -m ffaccel.transports.reference`; "
        "a test fails when it drifts. Everything a driver must implement and everything the "
        "validator refuses is here.",
    ]
    po_rows = [f"| {p.name} | {int(k)} | {', '.join(p.params) or '-'} | {'yes' if p.has_operand else '-'} | "
               f"{'yes' if p.int_ok else 'unsupported'} | {p.doc} |" for k, p in POST_OPS.items()]
    parts.append(_SEMANTICS.replace("{post_ops}", "\n".join(po_rows)))

    parts.append("## Element types\n\n" + _table(
        ["dtype", "value", "NumPy", "bytes", "unit roundoff u"],
        [[i.name, int(i.code), i.numpy.name, i.itemsize_bytes, f"2^-{i.precision_bits}" if i.is_float else "exact"]
         for i in DTYPES.values()]))
    parts.append("## GEMM dtype combinations\n\nInputs -> accumulate -> output. The capability bit is the "
                 "combination's bit in a device's `combos` mask.\n\n" + _table(
                     ["bit", "A", "B", "accumulate", "C and D"],
                     [[bit, DTYPES[c.a].name, DTYPES[c.b].name, DTYPES[c.acc].name, DTYPES[c.d].name]
                      for c, bit in COMBO_BIT.items()]))
    parts.append("## COPY conversions\n\n" + _table(
        ["bit", "src", "dst"], [[bit, DTYPES[s].name, DTYPES[d].name] for (s, d), bit in COPY_BIT.items()]))

    doc = accuracy.__doc__ or ""
    body = doc.split("\n\n", 1)[1] if "\n\n" in doc else doc
    parts.append(f"## Accuracy\n\nc = {ACCURACY_C:g}.\n\n{body.strip()}\n\nThe conformance suite reports "
                 "the worst ratio of error to this bound, as the reference BLAS testers do.")

    lim = SPEC_LIMITS
    parts.append("## Limits\n\nThe spec's ceilings; a device may declare lower ones in `info`.\n\n" + _table(
        ["limit", "value"],
        [["max_dim (m, n, k, rows, cols)", lim.max_dim], ["max_batch", lim.max_batch],
         ["max_epilogue_ops", lim.max_epilogue_ops], ["alignment_elems", lim.alignment_elems],
         ["max_buffer_bytes", lim.max_buffer_bytes], ["commands per submission", MAX_COMMANDS_PER_SUBMIT],
         ["waits per submission", MAX_WAITS_PER_SUBMIT]]))

    parts.append("## Error codes\n\nEvery error carries one code, the offending parameter's name and a "
                 "message with the value seen and the value allowed. A rejected submission executes "
                 "nothing.\n\n" + _table(["code", "value", "meaning"],
                                         [[c.name, int(c), ERROR_MEANINGS[c]] for c in ErrorCode]))
    parts.append("## Validation rules\n\nEach rule has a test that breaks it alone and checks the code, the "
                 "parameter and that nothing was written.\n\n" + _table(
                     ["rule", "code", "parameter", "where", "rule text"],
                     [[f"`{r.id}`", r.code.name, f"`{r.param}`", r.scope, r.statement] for r in RULES.values()]))

    enums = "\n".join([
        "## ABI", "",
        f"Little-endian, fixed size, 8-byte aligned; every command occupies `COMMAND_BYTES` = {COMMAND_BYTES} "
        f"bytes (GEMM's size) so that ring slots are fixed; bytes past an opcode's own fields are reserved. "
        f"Reserved fields, padding and unknown flag bits must be zero and are checked. A submission is "
        f"`ffa_submit`, then `wait_count` x `ffa_wait`, then `command_count` commands. Extension happens "
        f"only at the end, and numbers are never reused. An operand is {OPERAND_BYTES} bytes.", "",
        "Opcodes: " + ", ".join(f"`{o.name}` = {int(o)}" for o in Opcode) + ".",
        "GEMM flags: " + ", ".join(f"`{f.name}` = {int(f):#x}" for f in GemmFlags) + "; COPY has no flags.",
        "Engines: " + ", ".join(f"`{e.name.lower()}` = {int(e)} (runs {', '.join(sorted(o.name for o in ENGINE_OPCODES[e]))})"
                                for e in Engine) + ".",
    ])
    parts.append(enums)
    parts.append(_layout_table(SUBMIT))
    parts.append(_layout_table(WAIT))
    parts.append(_compact_gemm_table())
    parts.append(_layout_table(COPY))
    parts.append(_DECISIONS)
    return "\n\n".join(p.rstrip() for p in parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
