"""Every request the server answers, as a table: message type -> (payload size, fds, handler).

The table is the wire protocol's rule book in one place: a request with an unknown type,
another payload size than its type's, or other file descriptors than its type carries is
refused (``wire.message``) before its handler runs. A handler returns the reply payload, the
fds to send with it, and what to do once the reply is sent.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...abi import ABI_VERSION
from ...spec import Engine, violation
from ..protocol import (
    FENCE_REPLY,
    HANDLE_REPLY,
    HELLO,
    REPLAY_REQ,
    RING_SETUP,
    STATS,
    WAIT_REQ,
    WIRE_VERSION,
    Msg,
    encode_error,
    encode_info,
    message_error,
)
from .rings import Ring, take_wake_fd, wait_pairs

if TYPE_CHECKING:
    from .core import Client, Server

_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")
_FENCE = FENCE_REPLY.struct
_REPLAY_UNPACK = REPLAY_REQ.struct.unpack
Reply = tuple[bytes, list[int], "Callable[[], None] | None"]


@dataclass(frozen=True)
class Handler:
    payload_bytes: int | None  # None: variable (an ABI submission)
    fds: int
    run: Callable[["Server", "Client", bytes, list[int]], Reply]


def _engine(srv: "Server", raw: int, reserved: int) -> Engine:
    if reserved:
        raise message_error("reserved", reserved, 0)
    if raw not in Engine._value2member_map_ or Engine(raw) not in srv.caps.engines:
        raise violation("submit.engine", raw, sorted(int(e) for e in srv.caps.engines))
    return Engine(raw)


def _fence(client: "Client", engine: Engine, value: int) -> bytes:
    done = client.completed
    return _FENCE.pack(engine, 0, value, done[Engine.COMPUTE], done[Engine.COPY])


def _hello(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    wire, abi = HELLO.struct.unpack(payload)
    if wire != WIRE_VERSION:
        raise message_error("wire_version", wire, WIRE_VERSION)
    if abi != ABI_VERSION:
        raise violation("submit.abi_version", abi, ABI_VERSION)
    return encode_info(srv.info), [], None


def _alloc(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    (size,) = _U64.unpack(payload)
    handle, mem = client.alloc(size)
    return HANDLE_REPLY.struct.pack(handle, 0, mem.size), [mem.take_fd()], mem.drop_fd


def _free(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    handle, res = _U32x2.unpack(payload)
    if res:
        raise message_error("reserved", res, 0)
    client.free(handle)
    return b"", [], None


def _submit(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    engine, value = client.submit_raw(payload)
    return _fence(client, engine, value), [], None


def _wait(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    eng, res, value, timeout_ns = WAIT_REQ.struct.unpack(payload)
    engine = _engine(srv, eng, res)
    client.wait(engine, value, timeout_ns)
    return _fence(client, engine, value), [], None


def _completed(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    eng, res = _U32x2.unpack(payload)
    engine = _engine(srv, eng, res)
    return _fence(client, engine, client.completed[engine]), [], None


def _import(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    handle, mem = client.import_fd(fds[0])
    return HANDLE_REPLY.struct.pack(handle, 0, mem.size), [], None


def _stats(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    return STATS.struct.pack(*srv.stats()), [], None


def _ring_setup(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    entries, res = RING_SETUP.struct.unpack(payload)
    if res:
        raise message_error("reserved", res, 0)
    if not 2 <= entries <= 4096 or entries & (entries - 1):
        raise message_error("entries", entries, "a power of two in [2, 4096]")
    if client.ring is not None:
        raise message_error("msg_type", "a second RING_SETUP", "one ring per connection")
    wake = take_wake_fd(fds[0])
    try:
        ring = Ring(client, entries, wake, srv.poller.waker)
    except BaseException:
        os.close(wake)
        raise
    with client.lock:
        if client.closed:
            ring.close()
            raise message_error("msg_type", "RING_SETUP on a closing connection", "an open connection")
        client.ring = ring
    srv.poller.add(ring)
    return b"", [ring.fd, ring.doorbell], ring.drop_setup_fd


def _error_text(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    (eid,) = _U64.unpack(payload)
    err = client.session.errors.get(eid)
    if err is None:
        raise message_error("error_id", eid, "an error id from one of this client's completions")
    return encode_error(err), [], None


def _record(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    lid = client.record(payload)
    return _U32x2.pack(lid, 0), [], None


def _replay(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    lid, eng, wc, wp = _REPLAY_UNPACK(payload)
    engine, value = client.replay(lid, eng, wait_pairs(wc, wp))
    return _fence(client, engine, value), [], None


def _free_list(srv: "Server", client: "Client", payload: bytes, fds: list[int]) -> Reply:
    lid, res = _U32x2.unpack(payload)
    if res:
        raise message_error("reserved", res, 0)
    client.free_list(lid)
    return b"", [], None


HANDLERS: dict[int, Handler] = {
    Msg.HELLO: Handler(HELLO.size_bytes, 0, _hello),
    Msg.ALLOC: Handler(8, 0, _alloc),
    Msg.FREE: Handler(8, 0, _free),
    Msg.SUBMIT: Handler(None, 0, _submit),
    Msg.WAIT: Handler(WAIT_REQ.size_bytes, 0, _wait),
    Msg.COMPLETED: Handler(8, 0, _completed),
    Msg.IMPORT: Handler(0, 1, _import),
    Msg.STATS: Handler(0, 0, _stats),
    Msg.RING_SETUP: Handler(RING_SETUP.size_bytes, 1, _ring_setup),
    Msg.ERROR_TEXT: Handler(8, 0, _error_text),
    Msg.RECORD: Handler(None, 0, _record),
    Msg.REPLAY: Handler(REPLAY_REQ.size_bytes, 0, _replay),
    Msg.FREE_LIST: Handler(8, 0, _free_list),
}
assert set(HANDLERS) == set(Msg), "every message type has a handler"


def dispatch(table: dict[int, Handler], srv: "Server", client: "Client", msg_type: int, payload: bytes,
             fds: list[int]) -> Reply:
    """Check a request against its table row, then run its handler."""
    h = table.get(msg_type)
    if h is None:
        raise message_error("msg_type", msg_type, sorted(int(m) for m in Msg))
    if len(fds) != h.fds:
        raise message_error("fds", f"{len(fds)} file descriptors", h.fds)
    if h.payload_bytes is not None and len(payload) != h.payload_bytes:
        raise message_error("payload_bytes", len(payload), f"{h.payload_bytes} for {Msg(msg_type).name}")
    return h.run(srv, client, payload, fds)


__all__ = ["HANDLERS", "Handler", "dispatch"]
