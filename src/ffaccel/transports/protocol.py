"""The server's wire protocol and ring layouts, documented field by field.

Same rules as :mod:`ffaccel.abi.layout`: little-endian, fixed size, multiples of 8
bytes, reserved fields zero and checked, units in names. A request is one
``ffa_msg`` header and ``payload_bytes`` of payload on a Unix stream socket; file
descriptors (memfds, eventfds) travel beside it as SCM_RIGHTS. Every request gets
exactly one reply (an ``ffa_reply`` header and its payload, plus fds for ALLOC and
RING_SETUP). Operands and results never travel here: they live in memfds both
sides map.

A client may send several requests before reading any reply; they are answered in
order. File descriptors must go in the same ``sendmsg`` as their message's bytes: Linux
ends a read at the end of a message that carried fds, so the server gives a read's fds to
the message holding its last byte (one read usually brings a whole small request).
"""

from __future__ import annotations

import array
import ctypes
import dataclasses
import fcntl
import json
import os
import stat
import sys
import socket
import struct
from enum import IntEnum
from typing import TYPE_CHECKING

from ..abi.layout import COMMAND_BYTES, Field, Layout
from ..spec import ErrorCode, FFAccelError, violation

if TYPE_CHECKING:
    from ..drivers import DriverInfo

#: Wire protocol version (HELLO). Bumped only for incompatible changes.
WIRE_VERSION = 1
#: Largest payload the server reads (a full submission of MAX_COMMANDS_PER_SUBMIT commands fits).
MAX_PAYLOAD_BYTES = 8 << 20
#: Most file descriptors one message may carry.
MAX_FDS = 2


def _u32(name: str, doc: str) -> Field:
    return Field(name, "I", doc)


def _u64(name: str, doc: str) -> Field:
    return Field(name, "Q", doc)


class Msg(IntEnum):
    """``msg_type`` of a request. Numbers are never reused."""

    HELLO = 1        # payload ffa_hello; reply: the device's info as UTF-8 JSON (see encode_info)
    ALLOC = 2        # payload u64 size_bytes; reply ffa_handle_reply + the buffer's memfd
    FREE = 3         # payload u32 handle, u32 reserved
    SUBMIT = 4       # payload: an ABI submission (ffa_submit, waits, commands); reply ffa_fence_reply
    WAIT = 5         # payload ffa_wait_req; reply ffa_fence_reply (the engine's completed value)
    COMPLETED = 6    # payload u32 engine, u32 reserved; reply ffa_fence_reply
    IMPORT = 7       # payload empty + one fd (an exported memfd); reply ffa_handle_reply
    STATS = 8        # payload empty; reply ffa_stats
    RING_SETUP = 9   # payload ffa_ring_setup + the client's wake eventfd; reply ring memfd + doorbell eventfd
    ERROR_TEXT = 10  # payload u64 error_id (from a CQE); reply: the error record
    RECORD = 11      # payload: an ABI submission whose engine is the list's; reply u32 list id, u32 reserved
    REPLAY = 12      # payload ffa_replay; reply ffa_fence_reply
    FREE_LIST = 13   # payload u32 list id, u32 reserved
    USAGE = 14       # payload empty; reply: what the server did since it started, per client, as UTF-8 JSON


MSG = Layout("ffa_msg", "Request header; payload_bytes of payload follow.", (
    _u32("msg_type", "Msg"),
    _u32("reserved", "must be zero"),
    _u64("payload_bytes", f"bytes of payload that follow, <= {MAX_PAYLOAD_BYTES}"),
))

REPLY = Layout("ffa_reply", "Reply header; payload_bytes of payload follow.", (
    _u32("status", "ErrorCode: 0 = OK, else the payload is an error record"),
    _u32("reserved", "zero"),
    _u64("payload_bytes", "bytes of payload that follow"),
))

ERROR_RECORD = Layout("ffa_error", "An error reply's payload; the three UTF-8 strings follow in this order.", (
    _u32("command_index", "index of the offending command in its submission; 0xFFFFFFFF = none"),
    _u32("param_bytes", "length of the parameter name"),
    _u32("rule_bytes", "length of the spec rule id (0 = none)"),
    _u32("message_bytes", "length of the message (value seen, what is allowed)"),
))

HELLO = Layout("ffa_hello", "First request of every connection.", (
    _u32("wire_version", "WIRE_VERSION"),
    _u32("abi_version", "ABI_VERSION the client speaks"),
))

HANDLE_REPLY = Layout("ffa_handle_reply", "A new buffer in the caller's table (ALLOC, IMPORT).", (
    _u32("handle", "buffer handle in this client's table (never reused)"),
    _u32("reserved", "zero"),
    _u64("size_bytes", "size of the buffer (the memfd is sealed at this size)"),
))

FENCE_REPLY = Layout("ffa_fence_reply", "A fence and the engines' progress.", (
    _u32("engine", "Engine the fence is on"),
    _u32("reserved", "zero"),
    _u64("value", "timeline value the submission signals (SUBMIT, REPLAY) or waited for"),
    _u64("completed_compute", "this client's completed value on the compute engine"),
    _u64("completed_copy", "this client's completed value on the copy engine"),
))

WAIT_REQ = Layout("ffa_wait_req", "Block until the engine's timeline reaches value, or the timeout.", (
    _u32("engine", "Engine"),
    _u32("reserved", "must be zero"),
    _u64("value", "timeline value"),
    _u64("timeout_ns", "relative timeout; the server's deadline is on CLOCK_MONOTONIC"),
))

REPLAY_REQ = Layout("ffa_replay", "Replay a recorded command list.", (
    _u32("list_id", "id from RECORD"),
    _u32("engine", "Engine to run on"),
    _u64("wait_compute_value", "wait for this compute value first (0 = no wait)"),
    _u64("wait_copy_value", "wait for this copy value first (0 = no wait)"),
))

STATS = Layout("ffa_stats", "Server-wide counters (for tests and operators).", (
    _u32("clients", "connected clients"),
    _u32("buffers", "live buffers over all clients"),
    _u64("bytes_charged", "bytes charged to clients' quotas"),
    _u64("submissions", "submissions accepted since start"),
))

RING_SETUP = Layout("ffa_ring_setup", "Ask for a submission/completion ring pair.", (
    _u32("entries", "slots in each queue: a power of two in [2, 4096]"),
    _u32("reserved", "must be zero"),
))

ALLOC_REQ = Layout("ffa_alloc_req", "ALLOC's payload.", (
    _u64("size_bytes", "bytes of the new buffer, in [1, max_buffer_bytes]"),
))

HANDLE_REQ = Layout("ffa_handle_req", "FREE's payload.", (
    _u32("handle", "a buffer handle of this client"),
    _u32("reserved", "must be zero"),
))

ENGINE_REQ = Layout("ffa_engine_req", "COMPLETED's payload.", (
    _u32("engine", "Engine"),
    _u32("reserved", "must be zero"),
))

ERROR_TEXT_REQ = Layout("ffa_error_text_req", "ERROR_TEXT's payload.", (
    _u64("error_id", "error_id from a CQE or a broken ring's header"),
))

LIST_ID = Layout("ffa_list_id", "FREE_LIST's payload, and RECORD's reply.", (
    _u32("list_id", "a command list id from RECORD"),
    _u32("reserved", "must be zero"),
))

EMPTY = Layout("ffa_empty", "No payload (IMPORT, whose fd is the request; STATS; USAGE).", ())

# ------------------------------------------------------------------------------------------
# rings (io_uring model): one sealed memfd = header, then SQ slots, then CQ slots

RING_HEADER = Layout("ffa_ring_header", "At offset 0 of the ring memfd.", (
    _u32("sq_head", "SQ entries the server has consumed (server writes; wraps mod 2**32)"),
    _u32("sq_tail", "SQ entries the client has published (client writes)"),
    _u32("cq_head", "CQ entries the client has consumed (client writes)"),
    _u32("cq_tail", "CQ entries the server has published (server writes)"),
    _u32("entries", "slots per queue (power of two; fixed at setup)"),
    _u32("server_flags", "RingServerFlags (server writes)"),
    _u32("client_flags", "RingClientFlags (client writes)"),
    _u32("error", "ErrorCode that broke the ring (server writes; 0 = fine)"),
    _u64("completed_compute", "this client's completed compute value (server writes)"),
    _u64("completed_copy", "this client's completed copy value (server writes)"),
    _u64("sq_offset_bytes", "where the SQ slots start"),
    _u64("cq_offset_bytes", "where the CQ slots start"),
    _u64("error_id", "error record (ERROR_TEXT) explaining a broken ring"),
    _u64("reserved", "zero"),
))


class RingServerFlags(IntEnum):
    SLEEPING = 1   # the server stopped polling: ring the doorbell after publishing sq_tail
    CQ_FULL = 2    # the CQ had no free slot: the server stopped consuming the SQ until the client reaps
    BROKEN = 4     # the client broke a ring rule (see error, error_id); the ring is no longer served
    FUTEX_WAKES = 8  # set at setup: the server wakes FUTEX_WAITING clients (FUTEX_WAKE on cq_tail)


class RingClientFlags(IntEnum):
    WAITING = 1    # the client sleeps on its wake eventfd: signal it after publishing completions
    FUTEX_WAITING = 2  # the client sleeps in FUTEX_WAIT on cq_tail: FUTEX_WAKE cq_tail after publishing completions


SQE_HEADER = Layout("ffa_sqe", "A submission queue entry's header; COMMAND_BYTES of ABI command follow.", (
    _u64("user_data", "opaque; returned in the completion of the chain this entry ends"),
    _u32("engine", "Engine the submission runs on"),
    _u32("flags", "SqeFlags; undefined bits must be zero"),
    _u64("wait_compute_value", "wait for this compute timeline value (0 = no wait)"),
    _u64("wait_copy_value", "wait for this copy timeline value (0 = no wait)"),
    _u32("list_id", "REPLAY entries: the command list; otherwise must be zero"),
    _u32("reserved", "must be zero"),
))


class SqeFlags(IntEnum):
    LINK = 1     # the next entry belongs to the same submission (validated and run as one)
    EMPTY = 2    # a submission without commands (the command bytes must be zero)
    REPLAY = 4   # replay command list list_id (the command bytes must be zero)


SQE_FLAGS_KNOWN = int(SqeFlags.LINK | SqeFlags.EMPTY | SqeFlags.REPLAY)
SQE_BYTES = SQE_HEADER.size_bytes + COMMAND_BYTES

CQE = Layout("ffa_cqe", "A completion queue entry: one per submission (chain of linked SQEs).", (
    _u64("user_data", "the user_data of the chain's last SQE"),
    _u32("status", "ErrorCode: 0 = accepted (the fence is value), else nothing ran"),
    _u32("engine", "Engine of the fence"),
    _u64("value", "fence value the submission signals when it finishes (0 when refused)"),
    _u32("command_index", "offending command in the chain; 0xFFFFFFFF = none"),
    _u32("reserved", "zero"),
    _u64("error_id", "ERROR_TEXT id of the full error (param, value seen, what is allowed)"),
))

for _l in (MSG, REPLY, ERROR_RECORD, HELLO, HANDLE_REPLY, FENCE_REPLY, WAIT_REQ, REPLAY_REQ, STATS, RING_SETUP,
           ALLOC_REQ, HANDLE_REQ, ENGINE_REQ, ERROR_TEXT_REQ, LIST_ID, RING_HEADER, SQE_HEADER, CQE):
    assert _l.size_bytes % 8 == 0, _l.name

LAYOUTS = (MSG, REPLY, ERROR_RECORD, HELLO, HANDLE_REPLY, FENCE_REPLY, WAIT_REQ, REPLAY_REQ, STATS, RING_SETUP,
           ALLOC_REQ, HANDLE_REQ, ENGINE_REQ, ERROR_TEXT_REQ, LIST_ID,
           RING_HEADER, SQE_HEADER, CQE)
NO_INDEX = 0xFFFF_FFFF
assert sys.byteorder == "little", "the wire and ring layouts are little-endian"
RING_HEADER_BYTES = 128  # header padded to two cache lines; SQ slots start here


def ring_words(mm: object) -> dict[str, "ctypes.c_uint32 | ctypes.c_uint64"]:
    """Every ring header field as a ctypes word over the shared mapping.

    Both processes update these while the other runs. ``struct.pack_into`` / ``unpack_from``
    may copy an integer piecewise, so the other side can read half of an update (measured
    here: thousands of torn reads per second); a ctypes word is one aligned load or store.
    """
    out: dict[str, ctypes.c_uint32 | ctypes.c_uint64] = {}
    for f, off in RING_HEADER.offsets():
        word = ctypes.c_uint32 if f.fmt == "I" else ctypes.c_uint64
        out[f.name] = word.from_buffer(mm, off)  # type: ignore[arg-type]
    return out


def ring_bytes(entries: int) -> tuple[int, int, int]:
    """(sq_offset_bytes, cq_offset_bytes, total bytes) of a ring with ``entries`` slots."""
    sq = RING_HEADER_BYTES
    cq = sq + entries * SQE_BYTES
    return sq, cq, cq + entries * CQE.size_bytes


# ------------------------------------------------------------------------------------------
# framing

_MSG = MSG.struct
_REPLY = REPLY.struct
_ERR = ERROR_RECORD.struct


def encode_error(e: FFAccelError) -> bytes:
    param, rule, msg = e.param.encode(), (e.rule or "").encode(), e.message.encode()
    idx = NO_INDEX if e.command_index is None else e.command_index
    return _ERR.pack(idx, len(param), len(rule), len(msg)) + param + rule + msg


def decode_error(code: int, payload: bytes) -> FFAccelError:
    try:
        idx, lp, lr, lm = _ERR.unpack_from(payload, 0)
        pos = _ERR.size
        if pos + lp + lr + lm != len(payload):  # the three strings fill the record exactly
            raise ValueError("string lengths")
        param = payload[pos: pos + lp].decode()
        rule = payload[pos + lp: pos + lp + lr].decode() or None
        msg = payload[pos + lp + lr: pos + lp + lr + lm].decode()
        err = FFAccelError(ErrorCode(code), param, msg, rule)
    except (struct.error, ValueError, UnicodeDecodeError):
        return FFAccelError(ErrorCode.DEVICE_LOST, "device", f"the server sent a malformed error reply ({code})")
    err.command_index = None if idx == NO_INDEX else idx
    return err


def send_msg(sock: socket.socket, header: bytes, payload: bytes = b"", fds: list[int] | tuple[int, ...] = ()) -> None:
    """Send one message (header + payload) with optional SCM_RIGHTS fds."""
    data = header + payload
    if fds:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def collect_fds(ancillary: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    """Append the file descriptors an SCM_RIGHTS control message carried to ``fds``."""
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fa = array.array("i")
            fa.frombytes(raw[: len(raw) - len(raw) % fa.itemsize])
            fds.extend(fa)


def recv_exact(sock: socket.socket, n: int, fds: list[int] | None = None) -> bytes:
    """Read exactly ``n`` bytes; collects fds passed along into ``fds``. EOF raises EOFError."""
    if fds is None:
        first = sock.recv(n)  # usually all of it: one system call, no extra copy
        if len(first) == n:
            return first
        if not first:
            raise EOFError("peer closed the connection")
        buf = bytearray(first)
    else:
        buf = bytearray()
    while len(buf) < n:
        if fds is not None:
            data, anc, _flags, _ = sock.recvmsg(n - len(buf), socket.CMSG_SPACE(MAX_FDS * 4))
            collect_fds(anc, fds)
        else:
            data = sock.recv(n - len(buf))
        if not data:
            raise EOFError("peer closed the connection")
        buf += data
    return bytes(buf)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


#: Largest reply payload a client reads: the HELLO JSON (a few KiB) and any error record fit. A reply
#: announcing more is a lost device, found out from its header before a byte of payload is read.
MAX_REPLY_PAYLOAD_BYTES = 1 << 16
#: Largest HELLO reply a client reads (its JSON is a few KiB).
MAX_INFO_BYTES = MAX_REPLY_PAYLOAD_BYTES
#: What /proc/self/fd/N names an eventfd as.
EVENTFD_KIND = "anon_inode:[eventfd]"


def fd_kind(fd: int) -> str:
    """What kind of file ``fd`` is, as /proc/self/fd names it (``anon_inode:[eventfd]``, ``pipe:[..]``, a path)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


def memfd_problem(fd: int, size_bytes: int) -> str | None:
    """Why a memfd the peer sent cannot be mapped at ``size_bytes`` without risk, or None when it can.

    A mapping past a file's end, or of a file the peer can shrink later, faults with SIGBUS
    when touched; so the fd must be a regular (memfd) file at least ``size_bytes`` long per
    ``fstat`` and sealed with ``F_SEAL_SHRINK``. Only the kernel's answers are trusted here,
    never the sizes a reply states.
    """
    try:
        st = os.fstat(fd)
    except OSError as e:
        return f"an fd that cannot be inspected ({e.strerror})"
    if not stat.S_ISREG(st.st_mode):
        return f"not a memfd but {fd_kind(fd)}"
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        return f"not a memfd but {fd_kind(fd)} (no seals)"
    if not seals & fcntl.F_SEAL_SHRINK:
        return "a memfd without F_SEAL_SHRINK (it could be shrunk under the mapping)"
    if st.st_size < size_bytes:
        return f"a memfd of {st.st_size} bytes where the reply says {size_bytes}"
    return None


def encode_info(info: "DriverInfo") -> bytes:
    """The HELLO reply: the device's info as UTF-8 JSON (nothing on the wire is pickled).

    ``{"name", "version", "description", "memory_bytes", "kernels": [[combination, library]...],
    "size_bands": [[[combination...], epilogue, measure, edge, change]...],
    "caps": {"combos": [[a, b, acc, d]
    dtype codes...], "copies": [[src, dst]...], "post_ops": [kinds], "engines": [engines],
    "limits": {Limits fields}}}``; every number is an integer of the spec's enums.
    """
    caps = info.caps
    doc = {
        "name": info.name, "version": info.version, "description": info.description,
        "memory_bytes": int(info.memory_bytes),
        "kernels": [[str(combo), str(lib)] for combo, lib in info.kernels],
        "size_bands": [[list(b.combos), b.epilogue, b.measure, int(b.edge), b.change] for b in info.size_bands],
        "caps": {
            "combos": sorted([int(c.a), int(c.b), int(c.acc), int(c.d)] for c in caps.combos),
            "copies": sorted([int(s), int(d)] for s, d in caps.copies),
            "post_ops": sorted(int(k) for k in caps.post_ops),
            "engines": sorted(int(e) for e in caps.engines),
            "limits": {f.name: int(getattr(caps.limits, f.name)) for f in dataclasses.fields(caps.limits)},
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


#: Longest USAGE reply a client reads as JSON (a row per client: 256 clients take about 100 KiB).
MAX_USAGE_BYTES = 4 << 20


def decode_usage(payload: bytes) -> dict:
    """Parse a USAGE reply: a JSON object whose counters are integers >= 0, and a list of clients.

    Anything else is DEVICE_LOST saying so (a client never trusts a reply).
    """
    from .usage import USAGE_FIELDS

    try:
        if len(payload) > MAX_USAGE_BYTES:
            raise ValueError(f"{len(payload)} bytes, more than {MAX_USAGE_BYTES}")
        doc = json.loads(payload.decode())
        if not isinstance(doc, dict) or not isinstance(doc.get("clients"), list):
            raise ValueError("not an object with a list of clients")
        for row in (doc, *doc["clients"]):
            if not isinstance(row, dict):
                raise ValueError("a client that is not an object")
            for key in USAGE_FIELDS:
                value = row.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{key} = {value!r}")
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise FFAccelError(ErrorCode.DEVICE_LOST, "device", f"malformed USAGE reply from the server: {e}") from None
    return doc


def decode_info(payload: bytes) -> "DriverInfo":
    """Parse a HELLO reply strictly; anything malformed is DEVICE_LOST saying so."""
    from ..abi import DeviceCaps
    from ..drivers import DriverInfo, SizeBand
    from ..spec import DType, Engine, GemmCombo, Limits, PostOpKind

    try:
        if len(payload) > MAX_INFO_BYTES:
            raise ValueError(f"{len(payload)} bytes")
        doc = json.loads(payload.decode())
        caps = doc["caps"]
        lim_fields = {f.name for f in dataclasses.fields(Limits)}
        lim = caps["limits"]
        if set(lim) != lim_fields or not all(type(v) is int for v in lim.values()):
            raise ValueError("limits")
        kernels = tuple((k[0], k[1]) for k in doc.get("kernels", []))
        strings = [doc["name"], doc["version"], doc["description"], *(x for k in kernels for x in k)]
        bands = tuple(SizeBand(tuple(b[0]), b[1], b[2], b[3], b[4]) for b in doc.get("size_bands", []))
        strings += [x for b in bands for x in (*b.combos, b.epilogue, b.measure, b.change)]
        if not all(type(x) is str for x in strings) or type(doc["memory_bytes"]) is not int:
            raise ValueError("fields")
        if not all(type(b.edge) is int and b.edge >= 0 and b.epilogue in ("any", "with", "without")
                   and b.measure in ("mnk", "entry_mnk") for b in bands):
            raise ValueError("size_bands")
        if not isinstance(doc, dict) or not isinstance(caps, dict) or not isinstance(lim, dict):
            raise TypeError("not an object")
        return DriverInfo(
            doc["name"], doc["version"], doc["description"],
            DeviceCaps(
                combos=frozenset(GemmCombo(*(DType(x) for x in c)) for c in caps["combos"]),
                copies=frozenset((DType(a), DType(b)) for a, b in caps["copies"]),
                post_ops=frozenset(PostOpKind(k) for k in caps["post_ops"]),
                engines=frozenset(Engine(e) for e in caps["engines"]),
                limits=Limits(**lim),
            ),
            doc["memory_bytes"],
            kernels,
            bands,
        )
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OverflowError) as e:
        # (UnicodeDecodeError and json's errors are ValueErrors; RecursionError: nesting deeper than the parser goes)
        raise FFAccelError(ErrorCode.DEVICE_LOST, "device",
                           f"the server sent a malformed HELLO reply ({type(e).__name__}: {e})") from None


def check_message(layout: Layout, payload: bytes) -> tuple[int, ...]:
    """The wire's one validator for fixed-size payloads: exact size, reserved fields zero.

    Returns the unpacked fields; refuses (``wire.message``, naming the field) a payload of
    another size than ``layout``'s or with a nonzero reserved field.
    """
    if len(payload) != layout.size_bytes:
        raise message_error("payload_bytes", len(payload), f"{layout.size_bytes} for {layout.name}")
    values = layout.struct.unpack(payload) if layout.fields else ()
    if layout.reserved_names:
        for name, v in zip(layout.names, values):
            if v and name in layout.reserved_names:
                raise message_error(name, v, 0)
    return values


def message_error(field: str, seen: object, allowed: object) -> FFAccelError:
    return violation("wire.message", seen, allowed, field=field)


__all__ = [
    "ALLOC_REQ", "CQE", "EMPTY", "ENGINE_REQ", "ERROR_RECORD", "ERROR_TEXT_REQ", "HANDLE_REQ", "LIST_ID",
    "check_message", "FENCE_REPLY", "HANDLE_REPLY", "HELLO", "LAYOUTS", "MAX_PAYLOAD_BYTES", "MAX_REPLY_PAYLOAD_BYTES", "MAX_USAGE_BYTES", "MSG", "Msg",
    "NO_INDEX", "REPLAY_REQ", "REPLY", "RING_HEADER", "RING_HEADER_BYTES", "RING_SETUP", "RingClientFlags",
    "RingServerFlags", "SQE_BYTES", "SQE_FLAGS_KNOWN", "SQE_HEADER", "STATS", "SqeFlags", "WAIT_REQ",
    "WIRE_VERSION", "EVENTFD_KIND", "close_fds", "fd_kind", "memfd_problem", "decode_info", "decode_usage", "encode_info", "ring_words", "decode_error", "encode_error", "message_error", "recv_exact", "ring_bytes",
    "send_msg",
]
