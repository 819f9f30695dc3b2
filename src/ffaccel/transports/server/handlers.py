"""Every request the server answers, as a table: message type -> (payload layout, fds, handler).

The table is the wire protocol's rule book in one place: a request with an unknown type,
other file descriptors than its type carries, or a payload that fails its layout's check
(:func:`~ffaccel.transports.protocol.check_message`: exact size, reserved fields zero) is
refused (``wire.message``) before its handler runs. A handler gets the payload's fields and
returns the reply payload, the fds to send with it, and what to do once the reply is sent.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...abi import ABI_VERSION, DeviceCaps
from ...abi.layout import Layout
from ...drivers import DriverInfo
from ...spec import Engine, violation
from ..protocol import (
    ALLOC_REQ,
    EMPTY,
    ENGINE_REQ,
    ERROR_TEXT_REQ,
    FENCE_REPLY,
    HANDLE_REPLY,
    HANDLE_REQ,
    HELLO,
    LIST_ID,
    REPLAY_REQ,
    RING_SETUP,
    STATS,
    WAIT_REQ,
    WIRE_VERSION,
    Msg,
    check_message,
    encode_error,
    encode_info,
    message_error,
)
from ..session import Session
from .memory import SharedMem
from .ports import ClientPort
from .rings import Ring, RingPoller, take_wake_fd, wait_pairs


class Client(ClientPort, Protocol):
    """A client as the request handlers use it (:class:`~.core.Client` is the one there is)."""

    lock: threading.RLock
    ring: Ring | None
    session: Session
    completed: dict[Engine, int]

    def alloc(self, size_bytes: int) -> tuple[int, SharedMem]: ...
    def import_fd(self, fd: int) -> tuple[int, SharedMem]: ...
    def free(self, handle: int) -> None: ...
    def wait(self, engine: Engine, value: int, timeout_ns: int) -> None: ...
    def record(self, raw: bytes) -> int: ...
    def free_list(self, lid: int) -> None: ...


class Server(Protocol):
    """The server as the request handlers use it (:class:`~.core.Server` is the one there is)."""

    info: DriverInfo
    caps: DeviceCaps
    poller: RingPoller

    def stats(self) -> tuple[int, int, int, int]: ...
    def usage(self, asking: Client | None = None) -> dict[str, object]: ...

_FENCE = FENCE_REPLY.struct
_LIST_PACK = LIST_ID.struct.pack
Reply = tuple[bytes, list[int], "Callable[[], None] | None"]
Fields = tuple[int, ...]


@dataclass(frozen=True)
class Handler:
    """One row: the payload's layout (None: an ABI submission of any size), fds carried, handler."""

    layout: Layout | None
    fds: int
    run: Callable[[Server, Client, Fields, bytes, list[int]], Reply]


def _engine(srv: Server, raw: int) -> Engine:
    if raw not in Engine._value2member_map_ or Engine(raw) not in srv.caps.engines:
        raise violation("submit.engine", raw, sorted(int(e) for e in srv.caps.engines))
    return Engine(raw)


def _fence(client: Client, engine: Engine, value: int) -> bytes:
    done = client.completed
    return _FENCE.pack(engine, 0, value, done[Engine.COMPUTE], done[Engine.COPY])


def _hello(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    wire, abi = f
    if wire != WIRE_VERSION:
        raise message_error("wire_version", wire, WIRE_VERSION)
    if abi != ABI_VERSION:
        raise violation("submit.abi_version", abi, ABI_VERSION)
    return encode_info(srv.info), [], None


def _alloc(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    handle, mem = client.alloc(f[0])
    return HANDLE_REPLY.struct.pack(handle, 0, mem.size), [mem.take_fd()], mem.drop_fd


def _free(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    client.free(f[0])
    return b"", [], None


def _submit(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    engine, value = client.submit_raw(payload)
    return _fence(client, engine, value), [], None


def _wait(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    eng, _res, value, timeout_ns = f
    engine = _engine(srv, eng)
    client.wait(engine, value, timeout_ns)
    return _fence(client, engine, value), [], None


def _completed(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    engine = _engine(srv, f[0])
    return _fence(client, engine, client.completed[engine]), [], None


def _import(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    handle, mem = client.import_fd(fds[0])
    return HANDLE_REPLY.struct.pack(handle, 0, mem.size), [], None


def _stats(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    return STATS.struct.pack(*srv.stats()), [], None


def _usage(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    return json.dumps(srv.usage(client)).encode(), [], None


def _ring_setup(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    entries = f[0]
    if not 2 <= entries <= 4096 or entries & (entries - 1):
        raise message_error("entries", entries, "a power of two in [2, 4096]")
    if client.ring is not None:
        raise message_error("msg_type", "a second RING_SETUP", "one ring per connection")
    wake = take_wake_fd(fds[0])
    try:
        ring = Ring(client, entries, wake, srv.poller.waker, srv.limits.slice_target_ms / 1e3)
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


def _error_text(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    err = client.session.errors.get(f[0])
    if err is None:
        raise message_error("error_id", f[0], "an error id from one of this client's completions")
    return encode_error(err), [], None


def _record(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    return _LIST_PACK(client.record(payload), 0), [], None


def _replay(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    lid, eng, wc, wp = f
    engine, value = client.replay(lid, eng, wait_pairs(wc, wp))
    return _fence(client, engine, value), [], None


def _free_list(srv: Server, client: Client, f: Fields, payload: bytes, fds: list[int]) -> Reply:
    client.free_list(f[0])
    return b"", [], None


HANDLERS: dict[int, Handler] = {
    Msg.HELLO: Handler(HELLO, 0, _hello),
    Msg.ALLOC: Handler(ALLOC_REQ, 0, _alloc),
    Msg.FREE: Handler(HANDLE_REQ, 0, _free),
    Msg.SUBMIT: Handler(None, 0, _submit),
    Msg.WAIT: Handler(WAIT_REQ, 0, _wait),
    Msg.COMPLETED: Handler(ENGINE_REQ, 0, _completed),
    Msg.IMPORT: Handler(EMPTY, 1, _import),
    Msg.STATS: Handler(EMPTY, 0, _stats),
    Msg.RING_SETUP: Handler(RING_SETUP, 1, _ring_setup),
    Msg.ERROR_TEXT: Handler(ERROR_TEXT_REQ, 0, _error_text),
    Msg.RECORD: Handler(None, 0, _record),
    Msg.REPLAY: Handler(REPLAY_REQ, 0, _replay),
    Msg.FREE_LIST: Handler(LIST_ID, 0, _free_list),
    Msg.USAGE: Handler(EMPTY, 0, _usage),
}
assert set(HANDLERS) == set(Msg), "every message type has a handler"


def dispatch(table: dict[int, Handler], srv: Server, client: Client, msg_type: int, payload: bytes,
             fds: list[int]) -> Reply:
    """Check a request against its table row (type, fds, then :func:`check_message`), then run its handler."""
    h = table.get(msg_type)
    if h is None:
        raise message_error("msg_type", msg_type, sorted(int(m) for m in Msg))
    if len(fds) != h.fds:
        raise message_error("fds", f"{len(fds)} file descriptors", h.fds)
    fields = () if h.layout is None else check_message(h.layout, payload)
    return h.run(srv, client, fields, payload, fds)


__all__ = ["HANDLERS", "Handler", "dispatch"]
