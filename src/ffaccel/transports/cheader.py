"""Generate the C uAPI header (``ffaccel_uapi.h``) from the ABI's and the wire protocol's tables.

Run ``python -m ffaccel.transports.cheader > src/ffaccel/c/ffaccel_uapi.h``; a test checks that
the committed header equals what this prints, so C never drifts from the Python tables (the
same tables docs/spec.md is generated from).

The flat field names of a :class:`~ffaccel.abi.layout.Layout` (``a.handle``,
``epilogue[2].operand.ld_elems``) become nested C structs and arrays: a dotted prefix is a
member struct, ``name[i]`` for consecutive ``i`` an array of identical structs. Every struct's
size and every field's offset is pinned by a static assertion, so a compiler that lays a
struct out differently refuses the header instead of speaking a different ABI. The header
lives in this layer (not in ``abi``) because it covers the wire protocol too.
"""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass, field
from enum import Enum

from ..abi.layout import (
    ABI_VERSION,
    COMMAND_BYTES,
    COPY,
    GEMM,
    MAX_COMMANDS_PER_SUBMIT,
    MAX_EPILOGUE_SLOTS,
    MAX_WAITS_PER_SUBMIT,
    OPERAND_BYTES,
    SUBMIT,
    WAIT,
    GemmFlags,
    Layout,
)
from ..spec import DTYPES, ERROR_MEANINGS, POST_OPS, SPEC_VERSION, DType, Engine, ErrorCode, Opcode, PostOpKind
from .protocol import (
    LAYOUTS,
    MAX_FDS,
    MAX_PAYLOAD_BYTES,
    MAX_REPLY_PAYLOAD_BYTES,
    NO_INDEX,
    RING_HEADER_BYTES,
    SQE_BYTES,
    WIRE_VERSION,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
)

#: The ABI layouts first (a command block's structs), then the wire protocol's.
HEADER_LAYOUTS: tuple[Layout, ...] = (SUBMIT, WAIT, GEMM, COPY) + LAYOUTS
#: Member structs shared by several layouts, named by their relative field names.
_SUBSTRUCT_NAMES = {"handle dtype offset_bytes rows cols ld_elems batch_stride_elems reserved": "ffa_operand",
                    "kind reserved param0_bits param1_bits operand": "ffa_post_op"}
_CTYPE = {"I": "uint32_t", "Q": "uint64_t"}
_SIZE = {"I": 4, "Q": 8}
_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+)\])?$")


@dataclass
class _Node:
    """A struct member: a scalar (``fmt`` set) or a member struct (``children``), maybe an array."""

    name: str
    fmt: str = ""
    doc: str = ""
    children: list["_Node"] = field(default_factory=list)
    count: int = 0  # 0: not an array

    def signature(self) -> str:
        return " ".join(c.name for c in self.children)

    def size(self) -> int:
        one = _SIZE[self.fmt] if self.fmt else sum(c.size() for c in self.children)
        return one * max(1, self.count)


def _tree(layout: Layout) -> list[_Node]:
    """Nest a layout's flat field names; array elements ``x[0]``, ``x[1]``... must be alike and consecutive."""
    root: list[_Node] = []
    index: dict[tuple[str, ...], _Node] = {}
    for f in layout.fields:
        parts = f.name.split(".")
        siblings, path = root, ()
        for depth, part in enumerate(parts):
            m = _NAME.match(part)
            if m is None:
                raise ValueError(f"{layout.name}: field name {f.name!r} has no C spelling")
            base, idx = m.group(1), m.group(2)
            path = path + (part,)
            leaf = depth == len(parts) - 1
            node = index.get(path)
            if node is None:
                if idx is not None and idx != "0":  # a later array element: checked against element 0 below
                    node = _Node(part)
                else:
                    node = _Node(base if idx is not None else part, count=1 if idx is not None else 0)
                    siblings.append(node)
                index[path] = node
                if leaf:
                    node.fmt, node.doc = f.fmt, f.doc
            if idx is not None and idx != "0":
                first = index[path[:-1] + (f"{base}[0]",)]
                first.count = max(first.count, int(idx) + 1)
                if siblings[-1] is not first:
                    raise ValueError(f"{layout.name}: array {base} is not contiguous at {f.name!r}")
            siblings = node.children
    return root


def _flatten(nodes: list[_Node], prefix: str = "") -> list[tuple[str, str]]:
    """(C member designator, fmt) of every scalar of every array element, in memory order."""
    out: list[tuple[str, str]] = []
    for n in nodes:
        for i in range(max(1, n.count)):
            d = prefix + n.name + (f"[{i}]" if n.count else "")
            out += [(d, n.fmt)] if n.fmt else _flatten(n.children, d + ".")
    return out


def _members(nodes: list[_Node], owner: str, named: dict[str, str], shared: bool = False) -> list[str]:
    lines = []
    for n in nodes:
        dim = f"[{n.count}]" if n.count else ""
        if n.fmt:
            # a shared member struct documents the field, not the role it was first seen in ("A: ...")
            doc = re.sub(r"^[A-Za-z][\w\[\] ]*: ", "", n.doc) if shared else n.doc
            lines.append(f"\t{_CTYPE[n.fmt]} {n.name}{dim};\t/* {doc} */")
        else:
            lines.append(f"\tstruct {_struct_name(n, owner, named)} {n.name}{dim};")
    return lines


def _struct_name(n: _Node, owner: str, named: dict[str, str]) -> str:
    return _SUBSTRUCT_NAMES.get(n.signature()) or named.setdefault(n.signature(), f"{owner}_{n.name}")


def _substructs(nodes: list[_Node], owner: str, named: dict[str, str], done: set[str], out: list[str]) -> None:
    """Emit member structs (depth first) before the struct that holds them."""
    for n in nodes:
        if n.fmt:
            continue
        _substructs(n.children, owner, named, done, out)
        name = _struct_name(n, owner, named)
        if name in done:
            continue
        done.add(name)
        out.append(f"struct {name} {{")
        out += _members(n.children, name, named, shared=name in _SUBSTRUCT_NAMES.values())
        out.append("};")
        size = n.size() // max(1, n.count)
        out.append(f"FFA_STATIC_ASSERT(sizeof(struct {name}) == {size}, \"{name} size\");")
        out.append("")


def _layout_c(layout: Layout, named: dict[str, str], done: set[str]) -> list[str]:
    tree = _tree(layout)
    out: list[str] = []
    _substructs(tree, layout.name, named, done, out)
    out.append(f"/* {layout.doc} */")
    out.append(f"struct {layout.name} {{")
    out += _members(tree, layout.name, named)
    out.append("};")
    out.append(f"FFA_STATIC_ASSERT(sizeof(struct {layout.name}) == {layout.size_bytes}, \"{layout.name} size\");")
    flat = _flatten(tree)
    for (designator, fmt), (f, off) in zip(flat, layout.offsets()):
        assert fmt == f.fmt, (layout.name, designator, f.name)
        out.append(f"FFA_STATIC_ASSERT(offsetof(struct {layout.name}, {designator}) == {off}, "
                   f"\"{layout.name}.{designator}\");")
    assert len(flat) == len(layout.fields), layout.name
    out.append("")
    return out


def member_docs(cls: type) -> dict[str, str]:
    """Trailing ``# comments`` of an enum's members in its source (their only documentation).

    Parameters
    ----------
    cls : type
        An enum class defined in a source file.

    Returns
    -------
    dict
        Member name -> comment text; empty when the source is not available.
    """
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*(\w+)\s*=\s*[^#\n]+#\s*(.*)$", src, re.M)}


def _enum(c_name: str, prefix: str, members: list[tuple[str, int, str]], doc: str) -> list[str]:
    out = [f"/* {doc} */", f"enum {c_name} {{"]
    for name, value, text in members:
        out.append(f"\t{prefix}{name} = {value}," + (f"\t/* {text} */" if text else ""))
    out += ["};", ""]
    return out


def _enum_of(cls: type[Enum], c_name: str, prefix: str, doc: str, texts: dict[str, str] | None = None) -> list[str]:
    notes = texts if texts is not None else member_docs(cls)
    return _enum(c_name, prefix, [(m.name, int(m.value), notes.get(m.name, "")) for m in cls], doc)


def render() -> str:
    """The whole header as C source."""
    out = [
        "/* SPDX-License-Identifier: MIT */",
        "/*",
        f" * ffaccel uAPI: the binary ABI (spec v{SPEC_VERSION[0]}.{SPEC_VERSION[1]}, ABI version {ABI_VERSION})"
        f" and the device server's wire protocol (version {WIRE_VERSION}).",
        " *",
        " * GENERATED by `python -m ffaccel.transports.cheader` from the same tables as docs/spec.md;",
        " * do not edit (a test fails when it drifts). Every field is little-endian and fixed-width;",
        " * reserved fields, padding and unknown flag bits must be zero. Every struct's size and every",
        " * field's offset is checked below at compile time. C11 or C++11.",
        " */",
        "#ifndef FFACCEL_UAPI_H",
        "#define FFACCEL_UAPI_H",
        "",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#ifdef __cplusplus",
        "#define FFA_STATIC_ASSERT(cond, msg) static_assert(cond, msg)",
        'extern "C" {',
        "#else",
        "#define FFA_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)",
        "#endif",
        "",
        f"#define FFA_SPEC_VERSION_MAJOR {SPEC_VERSION[0]}",
        f"#define FFA_SPEC_VERSION_MINOR {SPEC_VERSION[1]}",
        f"#define FFA_ABI_VERSION {ABI_VERSION}\t/* ffa_submit.abi_version, ffa_hello.abi_version */",
        f"#define FFA_WIRE_VERSION {WIRE_VERSION}\t/* ffa_hello.wire_version */",
        f"#define FFA_COMMAND_BYTES {COMMAND_BYTES}\t/* every command occupies this many bytes (GEMM's size) */",
        f"#define FFA_OPERAND_BYTES {OPERAND_BYTES}",
        f"#define FFA_MAX_EPILOGUE_SLOTS {MAX_EPILOGUE_SLOTS}",
        f"#define FFA_MAX_COMMANDS_PER_SUBMIT {MAX_COMMANDS_PER_SUBMIT}",
        f"#define FFA_MAX_WAITS_PER_SUBMIT {MAX_WAITS_PER_SUBMIT}",
        f"#define FFA_MAX_PAYLOAD_BYTES {MAX_PAYLOAD_BYTES}u\t/* largest request payload the server reads */",
        f"#define FFA_MAX_REPLY_PAYLOAD_BYTES {MAX_REPLY_PAYLOAD_BYTES}u\t/* largest reply payload a client reads */",
        f"#define FFA_MAX_FDS {MAX_FDS}\t/* most file descriptors one message carries */",
        f"#define FFA_NO_INDEX {NO_INDEX:#x}u\t/* command_index when no command is at fault */",
        f"#define FFA_RING_HEADER_BYTES {RING_HEADER_BYTES}\t/* SQ slots start here in the ring memfd */",
        f"#define FFA_SQE_BYTES {SQE_BYTES}\t/* one SQ slot: struct ffa_sqe, then one command */",
        "",
    ]
    out += _enum_of(Opcode, "ffa_opcode", "FFA_OPCODE_", "ffa_gemm.opcode, ffa_copy.opcode")
    out += _enum_of(DType, "ffa_dtype", "FFA_DTYPE_", "operand dtype fields (0 = no operand)",
                    {d.name: f"{DTYPES[d].name}, {DTYPES[d].itemsize_bytes} bytes" for d in DType})
    out += _enum_of(PostOpKind, "ffa_post_op_kind", "FFA_POST_OP_", "ffa_post_op.kind (0 = unused slot)",
                    {k.name: f"{p.name}: {p.doc}" for k, p in POST_OPS.items()})
    out += _enum_of(GemmFlags, "ffa_gemm_flags", "FFA_GEMM_", "ffa_gemm.flags bits (ffa_copy has none)")
    out += _enum_of(Engine, "ffa_engine", "FFA_ENGINE_", "engine fields")
    out += _enum_of(ErrorCode, "ffa_error_code", "FFA_ERR_", "status fields and error replies",
                    {c.name: ERROR_MEANINGS[c] for c in ErrorCode})
    out += _enum_of(Msg, "ffa_msg_type", "FFA_MSG_", "ffa_msg.msg_type: one request, exactly one reply each")
    out += _enum_of(RingServerFlags, "ffa_ring_server_flags", "FFA_RING_SERVER_", "ffa_ring_header.server_flags")
    out += _enum_of(RingClientFlags, "ffa_ring_client_flags", "FFA_RING_CLIENT_", "ffa_ring_header.client_flags")
    out += _enum_of(SqeFlags, "ffa_sqe_flags", "FFA_SQE_", "ffa_sqe.flags")
    named: dict[str, str] = {}
    done: set[str] = set()
    for lay in HEADER_LAYOUTS:
        out += _layout_c(lay, named, done)
    out += [
        "/* One command slot of a submission or an SQ entry: FFA_COMMAND_BYTES bytes. */",
        "union ffa_command {",
        "\tstruct ffa_gemm gemm;",
        "\tstruct ffa_copy copy;",
        "\tuint8_t bytes[FFA_COMMAND_BYTES];",
        "};",
        "FFA_STATIC_ASSERT(sizeof(union ffa_command) == FFA_COMMAND_BYTES, \"ffa_command size\");",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        "",
        "#endif /* FFACCEL_UAPI_H */",
    ]
    return "\n".join(out) + "\n"


__all__ = ["HEADER_LAYOUTS", "member_docs", "render"]

if __name__ == "__main__":
    sys.stdout.write(render())
