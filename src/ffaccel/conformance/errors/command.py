"""The single-defect cases of the ``cmd`` rules: every command: opcode, size, flag bits, reserved
fields and padding, field ranges; a bad third command of three.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...abi import COMMAND_BYTES, COPY, GEMM, Copy, PostOpDesc, encode_submission
from ...abi.layout import GEMM_FLAGS_KNOWN, MAX_EPILOGUE_SLOTS
from ...spec import Engine, PostOpKind
from .harness import JUNK, Builder, Catalogue, Env, ValidGemm, patch_bytes
from .operand import field_set_to, third_command_invalid


GEMM_RESERVED = [n for n in GEMM.names if "reserved" in n]


COPY_RESERVED = [n for n in COPY.names if "reserved" in n]


def _copy_padding(offset: int) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        cmd = Copy(src=s.c, dst=s.d).encode()
        return s.submit_raw(encode_submission([patch_bytes(cmd, offset, 0x01) if bad else cmd], Engine.COPY))
    return build


def _m_field(env: Env, bad: bool) -> Callable[[], Any]:
    s = ValidGemm(env)
    return s.submit(s.gemm(m=-1) if bad else s.gemm())


def _wait_value_field(env: Env, bad: bool) -> Callable[[], Any]:
    def call() -> Any:
        raw = encode_submission([], waits=[(int(Engine.COMPUTE), 2**64 if bad else 0)])
        return env.dev.submit_raw(raw)
    return call


def register(cat: Catalogue) -> None:
    """Add the ``cmd`` cases to ``cat``."""
    for v in (0, 3, 0xFFFF_FFFF):
        cat.gemm_patch_case("cmd.opcode", "opcode", f"got {v}", f"opcode-{v}", {"opcode": v})
    for v in (0, 8, COMMAND_BYTES - 8, COPY.size_bytes, COMMAND_BYTES + 8):
        cat.gemm_patch_case("cmd.size", "size_bytes", f"got {v}", f"gemm-size-{v}", {"size_bytes": v})
    cat.copy_patch_case("cmd.size", "size_bytes", f"got {COPY.size_bytes}", "copy-size-own-struct",
                        {"size_bytes": COPY.size_bytes})
    for bit in range(32):
        if (1 << bit) & GEMM_FLAGS_KNOWN:
            continue
        cat.gemm_patch_case("cmd.flags", "flags", hex(1 << bit), f"gemm-bit{bit}", {"flags": 1 << bit})
    for bit in range(32):
        cat.copy_patch_case("cmd.flags", "flags", hex(1 << bit), f"copy-bit{bit}", {"flags": 1 << bit})
    for name in GEMM_RESERVED:
        cat.gemm_patch_case("cmd.reserved", name, f"got {JUNK}", f"gemm-{name}", {name: JUNK})
    for name in GEMM_RESERVED:  # also with every epilogue slot in use
        if name.startswith("epilogue["):
            cat.gemm_patch_case("cmd.reserved", name, f"got {JUNK}", f"gemm-4-relus-{name}", {name: JUNK},
                                epilogue=(PostOpDesc(PostOpKind.RELU),) * MAX_EPILOGUE_SLOTS)
    for name in COPY_RESERVED:
        cat.copy_patch_case("cmd.reserved", name, f"got {JUNK}", f"copy-{name}", {name: JUNK})
    for off in (COPY.size_bytes, (COPY.size_bytes + COMMAND_BYTES) // 2, COMMAND_BYTES - 1):
        cat.case("cmd.reserved", f"bytes[{COPY.size_bytes}:]", "nonzero bytes", f"copy-padding-byte-{off}",
                 _copy_padding(off))
    # values the encoder cannot put in their field (negative, or 2**32 / 2**64 and up)
    cat.case("cmd.field_range", "a.ld_elems", "got -1", "a-ld-negative", field_set_to("a", "ld_elems", -1))
    cat.case("cmd.field_range", "d.offset_bytes", f"got {2**64}", "d-offset-2**64",
             field_set_to("d", "offset_bytes", 2**64))
    cat.case("cmd.field_range", "b.batch_stride_elems", f"got {-(2**63)}", "b-batch-stride-i64-min",
             field_set_to("b", "batch_stride_elems", -(2**63)))
    cat.case("cmd.field_range", "c.rows", f"got {2**32}", "c-rows-2**32", field_set_to("c", "rows", 2**32))
    cat.case("cmd.field_range", "m", "got -1", "m-negative", _m_field)
    cat.case("cmd.field_range", "wait[0].value", f"got {2**64}", "wait-value-2**64", _wait_value_field)
    cat.case("cmd.reserved", "c.reserved", f"got {JUNK}", "third-of-three", third_command_invalid("reserved"),
             command_index=2)
