"""Cutting a connection's byte stream into requests, and sending replies.

A request's bytes are read as they arrive and never allocated ahead: a header announcing
8 MiB costs nothing until 8 MiB arrive, and a peer that stops in the middle of a message
is dropped after ``stall_s``. Receive memory per connection is bounded by one message
(``MAX_PAYLOAD_BYTES``) plus one read.
"""

from __future__ import annotations

import select
import socket
import struct

from ..protocol import MAX_FDS, MAX_PAYLOAD_BYTES, MSG, close_fds, collect_fds
from ..spin import SpinBudget, step_aside

_CMSG_FDS = socket.CMSG_SPACE(MAX_FDS * 4)
HEAD_BYTES = MSG.size_bytes
_MSG_UNPACK = MSG.struct.unpack_from
#: Most bytes one read asks for.
READ_BYTES = 1 << 16
_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP


class TooLong(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class Stalled(Exception):
    """The peer stopped sending in the middle of a message."""


class Inbox:
    """One connection's request stream, cut into whole messages with as few reads as possible.

    A small request (header and payload, sent together) arrives in one read. A read may take
    more than one message when a client sends several before reading replies; the rest waits
    here. File descriptors come with the read that reaches the end of the sender's
    ``sendmsg`` that carried them (Linux never merges past such a message), so they belong to
    the message holding that read's last byte. Waiting for a message busy-polls (adaptively,
    see :class:`SpinBudget`) and then blocks; waiting for the rest of a started message
    blocks at most ``stall_s``.
    """

    def __init__(self, conn: socket.socket, spin_us: int, stall_s: float) -> None:
        self.conn = conn
        self.spin = SpinBudget(spin_us, step_aside)  # a sync wake-up queues the client behind us: see step_aside
        self.stall_ms = max(1, int(stall_s * 1000))
        self.buf = b""  # received, not yet consumed
        self.base = 0  # stream offset of buf[0]
        self.marks: list[tuple[int, list[int]]] = []  # (stream offset of a read's last byte, its fds)
        self.first = True  # the first request is not spun for (the client may take its time)
        self._poll = select.poll()
        self._poll.register(conn, _POLLIN)

    def _take(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> None:
        fds: list[int] = []
        if anc:  # nearly never (IMPORT, RING_SETUP): no call per request for an empty control list
            collect_fds(anc, fds)
        if not data:
            close_fds(fds)
            raise EOFError("peer closed the connection")
        self.buf = self.buf + data if self.buf else data
        if fds:
            self.marks.append((self.base + len(self.buf) - 1, fds))

    def _wait_stalled(self) -> None:
        if not self._poll.poll(self.stall_ms):
            raise Stalled(f"no byte for {self.stall_ms} ms in the middle of a message")

    def _read(self) -> None:
        """At least one more byte: busy-poll while it pays, then block."""
        recvmsg = self.conn.recvmsg
        if not self.first and not self.buf:
            spin = self.spin
            spinning = spin.start()  # False: backed off, block at once
            ready = self._poll.poll
            while spinning and spin.keep_spinning():
                # spin on poll(2) with a zero timeout, read only once something is there: a failed
                # non-blocking read raises BlockingIOError, and building that exception made each
                # poll cost 3.1 µs against 0.9 (Python 3.11, AMD EPYC VM), so the request was
                # noticed 1-2 µs later on average
                if not ready(0):
                    continue
                try:
                    data, anc, _flags, _ = recvmsg(READ_BYTES, _CMSG_FDS, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                spin.paid()
                self._take(data, anc)
                return
            data, anc, _flags, _ = recvmsg(READ_BYTES, _CMSG_FDS)
            spin.found_after_sleep()
            self._take(data, anc)
            return
        if self.buf:
            self._wait_stalled()
        data, anc, _flags, _ = recvmsg(READ_BYTES, _CMSG_FDS)
        self._take(data, anc)

    def next_message(self) -> tuple[int, int, int, bytes, list[int]]:
        """(msg_type, reserved, payload_bytes, payload, fds) of the next request."""
        while len(self.buf) < HEAD_BYTES:
            self._read()
        self.first = False
        msg_type, reserved, length = _MSG_UNPACK(self.buf)
        if length > MAX_PAYLOAD_BYTES:
            raise TooLong(length)
        need = HEAD_BYTES + length
        if len(self.buf) < need:
            self._read_rest(need)
        buf = self.buf
        payload = buf[HEAD_BYTES: need] if length else b""
        self.buf = buf[need:]
        self.base += need
        fds: list[int] = []
        if self.marks:  # fds that came with reads ending inside this message are its own
            keep = []
            for pos, got in self.marks:
                if pos < self.base:
                    fds.extend(got)
                else:
                    keep.append((pos, got))
            self.marks = keep
        return msg_type, reserved, length, payload, fds

    def _read_rest(self, need: int) -> None:
        """Read exactly the rest of a message of ``need`` bytes, as the bytes arrive (no read goes past it)."""
        chunks = [self.buf]
        got = len(self.buf)
        while got < need:
            self._wait_stalled()
            data, anc, _flags, _ = self.conn.recvmsg(min(need - got, 1 << 20), _CMSG_FDS)
            fds: list[int] = []
            collect_fds(anc, fds)
            if not data:
                close_fds(fds)
                raise EOFError("peer closed the connection")
            chunks.append(data)
            got += len(data)
            if fds:
                self.marks.append((self.base + got - 1, fds))
        self.buf = b"".join(chunks)

    def close(self) -> None:
        for _pos, got in self.marks:
            close_fds(got)
        self.marks.clear()


def set_send_timeout(conn: socket.socket, seconds: float) -> None:
    """Bound every reply's send: a client that never reads its replies is dropped, not waited for."""
    sec = int(seconds)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, int((seconds - sec) * 1e6)))


__all__ = ["HEAD_BYTES", "Inbox", "READ_BYTES", "Stalled", "TooLong", "set_send_timeout"]
