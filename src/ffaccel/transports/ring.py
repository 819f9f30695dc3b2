"""Client side of the ring path: submission/completion queues in a shared memfd (the io_uring model).

A submission becomes one ring entry per command (``ffa_sqe`` header + the ABI's
COMMAND_BYTES descriptor), linked into one chain; the server answers each chain with one
completion carrying the chain's ``user_data``, its status and its fence value. Publishing
is a store of ``sq_tail``; the doorbell (an eventfd write) is rung only when the server
has said it sleeps. Waiting polls shared memory for ``poll_us`` first and only then sleeps
on this client's own eventfd. Fence progress is read from the ring header without any
system call.

Everything else (buffers, errors' full text, malformed submissions, command-list
recording) goes through the socket path this class extends. Submissions the fast path
does not express (more than one wait per engine, a malformed header) go there too: the
server's validator then gives them their exact error.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..abi import ABI_VERSION, COMMAND_BYTES, SUBMIT, WAIT
from ..abi.layout import MAX_WAITS_PER_SUBMIT
from ..spec import Engine, ErrorCode, FFAccelError
from .protocol import (
    CQE,
    EVENTFD_KIND,
    RING_HEADER,
    RING_HEADER_BYTES,
    RING_SETUP,
    SQE_BYTES,
    SQE_HEADER,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
    close_fds,
    decode_error,
    fd_kind,
    memfd_problem,
    ring_words,
)
from . import futex
from .spin import SpinBudget, step_aside
from .socket import _ENGINE_OF, SocketTransport, device_lost

_U64 = struct.Struct("<Q")
_SUBMIT = SUBMIT.struct
_WAIT = WAIT.struct
_SQE = SQE_HEADER.struct
_CQE = CQE.struct
_CQE_BYTES = CQE.size_bytes
_SQE_HDR = SQE_HEADER.size_bytes
_ZERO_CMD = bytes(COMMAND_BYTES)
_SLEEPING, _BROKEN = int(RingServerFlags.SLEEPING), int(RingServerFlags.BROKEN)
_CQ_FULL = int(RingServerFlags.CQ_FULL)
_WAITING, _FUTEX_WAITING = int(RingClientFlags.WAITING), int(RingClientFlags.FUTEX_WAITING)
#: Longest nap of a sleeping wait before it looks whether the server died (seconds).
_NAP_S = 0.05


class RingTransport(SocketTransport):
    """A socket connection plus an SQ/CQ ring pair for submissions and fence progress.

    Parameters
    ----------
    path : str
        The server's Unix socket.
    entries : int
        Slots per queue (a power of two); a submission of more commands uses the socket.
    poll_us : int
        How long a wait busy-polls shared memory before sleeping on the eventfd.
    timeout_s : float
        Longest any call waits for the server.
    wait_s : float, optional
        How long to wait for a server that is starting (see :mod:`ffaccel.drivers.connect`).
    """

    kind = "ring"

    def __init__(self, path: str, entries: int = 256, poll_us: int = 200, timeout_s: float = 30.0,
                 wait_s: float | None = None) -> None:
        super().__init__(path, timeout_s, wait_s=wait_s)
        self.poll_ns = int(poll_us * 1000)
        self._spin = SpinBudget(int(poll_us), step_aside)  # adaptive: backs off at once on an oversubscribed machine
        self.entries = entries
        self._evfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._doorbell = -1
        try:
            body, fds = self._call(Msg.RING_SETUP, RING_SETUP.struct.pack(entries, 0), fds=[self._evfd],
                                   want_fds=True)
            self._mm, self._sq_off, self._cq_off = self._take_ring(body, fds, entries)
        except BaseException:
            super().close()
            os.close(self._evfd)
            if self._doorbell >= 0:
                os.close(self._doorbell)
            self._evfd = self._doorbell = -1
            raise
        self._mask = entries - 1
        self._w = ring_words(self._mm)  # header words: single loads and stores (see ring_words)
        # the last submission sent by ring: (its bytes, its commands, the SQ slots it takes, its
        # entries but for user_data, see _entries)
        self._prev_chain: tuple[bytes, int, int, bytes] | None = None
        self._sq_tail_word, self._sq_head_word = self._w["sq_tail"], self._w["sq_head"]
        self._cq_tail_word, self._cq_head_word = self._w["cq_tail"], self._w["cq_head"]
        self._completed_words = {Engine.COMPUTE: self._w["completed_compute"], Engine.COPY: self._w["completed_copy"]}
        self._server_flags = self._w["server_flags"]
        self._cq_tail_address = ctypes.addressof(self._w["cq_tail"])
        # sleep on the futex only with a server that says it wakes it (an older one would not)
        self._futex = futex.AVAILABLE and bool(self._server_flags.value & RingServerFlags.FUTEX_WAKES)
        self._sq_tail = 0  # our own copies of the indices we write
        #: first slot -> the chain entries (a `_chain` blob) that still fill the slots from there as we
        #: wrote them, but for the last one's user_data: nothing but this client writes the SQ, so
        #: a loop resubmitting a chain that lands on the same slots again rewrites only that field
        self._written: dict[int, bytes] = {}
        #: slot -> the first slot of the chain in `_written` that fills it, -1 for none (so that a write
        #: finds the chains it overwrites by looking at its own slots only)
        self._owner: list[int] = [-1] * entries
        self._cq_head = 0
        self._list_sizes: dict[int, int] = {}  # command list id -> commands (see replay)

    def _take_ring(self, body: bytes, fds: list[int], entries: int) -> tuple[mmap.mmap, int, int]:
        """Check the RING_SETUP reply and map the ring: (mapping, SQ offset, CQ offset).

        The geometry is read from shared memory once, here, checked against the memfd's real
        size (``fstat``), and kept in this object: a server that rewrites the header later
        moves nothing. The doorbell must be an eventfd, and is made non-blocking so that
        ringing it can never block.
        """
        try:
            self._empty(body, "RING_SETUP")
            if len(fds) != 2:
                raise self._malformed(f"{len(fds)} fds for a ring; allowed: 2")
            ring_fd, doorbell = fds
            if fd_kind(doorbell) != EVENTFD_KIND:
                raise self._malformed(f"the doorbell is {fd_kind(doorbell)}; allowed: an eventfd")
            os.set_blocking(doorbell, False)
            why = memfd_problem(ring_fd, RING_HEADER_BYTES)
            if why is not None:
                raise self._malformed(f"the ring: {why}")
            size = os.fstat(ring_fd).st_size
            mm = mmap.mmap(ring_fd, size)
        except FFAccelError:
            close_fds(fds)
            raise
        except (OSError, ValueError, OverflowError) as e:
            close_fds(fds)
            raise self._malformed(f"the ring cannot be mapped ({e})") from None
        os.close(ring_fd)
        self._doorbell = doorbell
        hdr = dict(zip(RING_HEADER.names, RING_HEADER.struct.unpack_from(mm, 0)))  # one copy of the geometry
        sq, cq = hdr["sq_offset_bytes"], hdr["cq_offset_bytes"]
        sq_end, cq_end = sq + entries * SQE_BYTES, cq + entries * CQE.size_bytes  # Python ints: no overflow
        if hdr["entries"] != entries or sq < RING_HEADER_BYTES or sq_end > cq or cq_end > size:
            mm.close()
            raise self._malformed(f"ring geometry entries={hdr['entries']} sq_offset_bytes={sq} "
                                  f"cq_offset_bytes={cq} in {size} bytes; allowed: {entries} entries, the "
                                  f"header, SQ and CQ in order inside the memfd")
        return mm, sq, cq

    def _ring_doorbell(self) -> None:
        """Tell the server there is work (or room); a doorbell that cannot take it means the server is broken."""
        try:
            os.eventfd_write(self._doorbell, 1)
        except BlockingIOError:
            pass  # its counter is full: the server has wake-ups pending already
        except OSError as e:
            raise self._lose(f"ringing the doorbell failed ({e.strerror})") from None

    # -- shared-memory helpers ---------------------------------------------------------------
    def _get32(self, name: str) -> int:
        return self._w[name].value

    def _check_ring(self) -> None:
        """Raise the ring's error if the server broke it (called with ``_lock`` held)."""
        if self._server_flags.value & _BROKEN:
            eid = self._w["error_id"].value
            self._raise_completion(eid, self._get32("error"))

    def _sleep(self, deadline_ns: int, done: Callable[[], bool] | None = None) -> None:
        """Sleep on our eventfd (or the socket, which turns readable when the server dies).

        ``done`` is looked at once more after WAITING is set: the server signals only clients it
        sees waiting, so progress it made just before would otherwise be noticed a nap later.
        """
        word = self._w["client_flags"]
        flags = word.value
        word.value = flags | _WAITING
        try:
            if done is not None and done():
                return
            left = (deadline_ns - time.monotonic_ns()) / 1e9
            r, _, _ = select.select([self._evfd, self._sock], [], [], max(0.0, min(left, _NAP_S)))
            if self._sock in r:
                raise self._lose("the server closed the connection")
            if r:
                try:
                    os.eventfd_read(self._evfd)
                except BlockingIOError:
                    pass
        finally:
            word.value = flags & ~_WAITING

    def _sleep_for_completion(self, deadline_ns: int) -> None:
        """Sleep until ``cq_tail`` moves past what we reaped: FUTEX_WAIT on the word itself.

        The server wakes the futex from the thread that published the completion (no eventfd,
        no waker thread); the kernel compares the word first, so a completion that landed
        after our last look ends the wait at once. A nap that ends with nothing looks whether
        the server closed the connection (the socket turns readable).
        """
        if not (self._futex and futex.AVAILABLE):
            cq_tail = self._w["cq_tail"]
            self._sleep(deadline_ns, lambda: cq_tail.value != self._cq_head)
            return
        word = self._w["client_flags"]
        flags = word.value
        word.value = flags | _FUTEX_WAITING
        try:
            left = (deadline_ns - time.monotonic_ns()) / 1e9
            if not futex.wait(self._cq_tail_address, self._cq_head, min(left, _NAP_S)):
                r, _, _ = select.select([self._sock], [], [], 0)
                if r:
                    raise self._lose("the server closed the connection")
        finally:
            word.value = flags & ~_FUTEX_WAITING

    def _lose(self, why: str) -> FFAccelError:
        return self._give_up(device_lost(why))

    # -- work ---------------------------------------------------------------------------------
    def submit(self, raw: bytes) -> tuple[Engine, int]:
        prev = self._prev_chain
        if prev is not None and (prev[0] is raw or prev[0] == raw):
            n_cmd, count, blob = prev[1], prev[2], prev[3]  # a loop resubmitting the same batch: built already
        else:
            if type(raw) is not bytes:
                raw = bytes(raw)  # a copy to remember: a bytearray may change before it comes again
            shape = self._ring_shape(raw)
            if shape is None:
                return super().submit(raw)  # the socket path; the server's validator decides
            blob = self._entries(raw, *shape)
            n_cmd = shape[1]
            count = max(1, n_cmd)  # SQ slots: an empty submission takes one
            self._prev_chain = (raw, n_cmd, count, blob)
        lock = self._lock
        lock.acquire()  # not `with`: once per request, and acquire/release cost half as much
        try:
            if self._lost is not None:
                raise self._lost
            if self._closed:
                raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
            if self._server_flags.value & _BROKEN:
                self._check_ring()
            self._sent = seq = self._sent + 1  # counted (see SocketTransport._sent) and its user_data
            tail = self._sq_tail
            if ((tail - self._sq_head_word.value) & 0xFFFF_FFFF) + count <= self.entries:
                first = tail & self._mask  # room: nearly always
            else:
                first = self._reserve(count)
            mm = self._mm
            if count == 1:  # one entry: everything but user_data was built once
                if self._owner[first] >= 0:
                    self._forget(first, 1)
                off = self._sq_off + first * SQE_BYTES
                mm[off + 8: off + SQE_BYTES] = blob
                _U64.pack_into(mm, off, seq)
            else:
                if self._written.get(first) is not blob:  # else the slots hold these entries already
                    self._write(first, blob)
                    self._written[first] = blob
                    for lo, hi in self._pieces(first, n_cmd):
                        self._owner[lo:hi] = [first] * (hi - lo)
                last = self._sq_off + ((first + n_cmd - 1) & self._mask) * SQE_BYTES
                _U64.pack_into(mm, last, seq)  # the chain's user_data, on its last entry
            # publish: one store of sq_tail, and the doorbell only if the server said it sleeps
            self._sq_tail = tail = (tail + count) & 0xFFFF_FFFF
            self._sq_tail_word.value = tail
            if self._server_flags.value & _SLEEPING:
                self._ring_doorbell()
            return self._reap(seq, count)
        finally:
            lock.release()

    @classmethod
    def _entries(cls, raw: bytes, engine: int, n_cmd: int, wc: int, wp: int) -> bytes:
        """What a submission's ring entries are, but for the user_data the last one carries.

        One entry (0 or 1 command) comes without its user_data field (the first 8 bytes), a
        chain whole with user_data 0 throughout (see :meth:`_chain`).
        """
        if n_cmd > 1:
            return cls._chain(raw, engine, n_cmd, wc, wp)
        if n_cmd == 1:
            return _SQE.pack(0, engine, 0, wc, wp, 0, 0)[8:] + raw[len(raw) - COMMAND_BYTES:]
        return _SQE.pack(0, engine, SqeFlags.EMPTY, wc, wp, 0, 0)[8:] + _ZERO_CMD

    def _ring_shape(self, raw: bytes) -> tuple[int, int, int, int] | None:
        """(engine, commands, compute wait, copy wait) of a submission the ring can carry as one chain.

        None sends it over the socket instead: more commands than slots, more than one wait
        per engine, or anything malformed (the server's validator then gives the exact error).
        """
        hs = _SUBMIT.size
        if len(raw) < hs:
            return None
        abi, engine, flags, n_cmd, n_wait, r0, r1 = _SUBMIT.unpack_from(raw, 0)
        if (abi != ABI_VERSION or flags or r0 or r1 or n_wait > MAX_WAITS_PER_SUBMIT or n_cmd >= self.entries
                or len(raw) != hs + n_wait * WAIT.size_bytes + n_cmd * COMMAND_BYTES):
            return None
        w = {int(Engine.COMPUTE): 0, int(Engine.COPY): 0}
        for i in range(n_wait):
            e, res, v = _WAIT.unpack_from(raw, hs + i * WAIT.size_bytes)
            if res or e not in w or w[e] or v == 0:  # one wait per engine; 0 means "none" on the ring
                return None
            w[e] = v
        return engine, n_cmd, w[int(Engine.COMPUTE)], w[int(Engine.COPY)]

    def _reserve(self, count: int) -> int:
        """Wait for ``count`` free SQ slots; the first one's index."""
        if ((self._sq_tail - self._sq_head_word.value) & 0xFFFF_FFFF) + count <= self.entries:
            return self._sq_tail & self._mask
        deadline = time.monotonic_ns() + int(self.timeout_s * 1e9)
        # room in the SQ (the server consumes while the CQ has room; we reap everything we submit)
        while ((self._sq_tail - self._sq_head_word.value) & 0xFFFF_FFFF) + count > self.entries:
            self._check_ring()
            if time.monotonic_ns() > deadline:
                raise self._lose("the ring's submission queue stayed full")
            self._sleep(deadline)
        return self._sq_tail & self._mask

    def _write(self, slot: int, entries: bytes) -> None:
        """Copy whole entries into the SQ from ``slot`` on (in two pieces when they wrap)."""
        if self._written:
            self._forget(slot, len(entries) // SQE_BYTES)
        mm = self._mm
        off = self._sq_off + slot * SQE_BYTES
        n1 = min(len(entries), (self.entries - slot) * SQE_BYTES)  # bytes before the queue wraps
        mm[off: off + n1] = entries[:n1] if n1 < len(entries) else entries
        if n1 < len(entries):
            mm[self._sq_off: self._sq_off + len(entries) - n1] = entries[n1:]

    def _pieces(self, slot: int, count: int) -> list[tuple[int, int]]:
        """Slots [slot, slot + count) modulo the ring, as one or two ranges of list indices."""
        end = slot + count
        if end <= self.entries:
            return [(slot, end)]
        return [(slot, self.entries), (0, end - self.entries)]

    def _forget(self, slot: int, count: int) -> None:
        """Slots [slot, slot + count) (modulo the ring) are about to be written: chains there are gone."""
        owner = self._owner
        for lo, hi in self._pieces(slot, count):
            for first in set(owner[lo:hi]) - {-1}:
                blob = self._written.pop(first, None)
                if blob is not None:
                    for a, b in self._pieces(first, len(blob) // SQE_BYTES):
                        owner[a:b] = [-1] * (b - a)

    @staticmethod
    def _chain(raw: bytes, engine: int, n_cmd: int, wc: int, wp: int) -> bytes:
        """The entries of a linked chain carrying ``raw``'s commands (user_data 0 throughout)."""
        out = np.empty((n_cmd, SQE_BYTES), np.uint8)
        out[:, _SQE_HDR:] = np.frombuffer(raw, np.uint8, count=n_cmd * COMMAND_BYTES,
                                          offset=len(raw) - n_cmd * COMMAND_BYTES).reshape(n_cmd, COMMAND_BYTES)
        out[:-1, :_SQE_HDR] = np.frombuffer(_SQE.pack(0, engine, SqeFlags.LINK, wc, wp, 0, 0), np.uint8)
        out[-1, :_SQE_HDR] = np.frombuffer(_SQE.pack(0, engine, 0, wc, wp, 0, 0), np.uint8)
        return out.tobytes()

    def _publish(self, count: int) -> None:
        """Hand ``count`` written slots to the server with one store of sq_tail (and the doorbell if it sleeps)."""
        self._sq_tail = (self._sq_tail + count) & 0xFFFF_FFFF
        self._sq_tail_word.value = self._sq_tail
        if self._server_flags.value & _SLEEPING:
            self._ring_doorbell()

    def _reap(self, seq: int, count: int = 1) -> tuple[Engine, int]:
        """Wait for the completion of chain ``seq`` of ``count`` entries.

        Busy-polls ``poll_us`` per entry before sleeping: the server runs a chain's entries back
        to back and answers once, so a long chain would otherwise outlast the budget and make
        the server pay for waking us (an eventfd write that wakes a sleeping core costs about
        as much as several tiny GEMMs here) and us for being woken.
        """
        cq_tail = self._cq_tail_word
        head = self._cq_head
        spin = self._spin
        spinning = spin.start()  # False: backed off, sleep at once
        deadline = 0
        while cq_tail.value == head:
            if spinning:
                if spin.keep_spinning(count):
                    # no sched_yield here: beside CPU-bound work it hands the core to them for a
                    # time slice (measured: ring batch 64 at 57 µs/op); a spin that competes for
                    # its core is seen losing it and backs off (SpinBudget)
                    continue
                spinning = False
            now = time.monotonic_ns()
            if not deadline:  # counted from the first sleep: a spin lasts µs, the timeout seconds
                deadline = now + int(self.timeout_s * 1e9)
            self._check_ring()
            if now > deadline:
                raise self._lose(f"no completion within {self.timeout_s} s")
            self._sleep_for_completion(deadline)
        user_data, status, engine, value, idx, _res, eid = _CQE.unpack_from(
            self._mm, self._cq_off + (head & self._mask) * _CQE_BYTES)
        self._cq_head = head = (head + 1) & 0xFFFF_FFFF
        self._cq_head_word.value = head
        if self._server_flags.value & _CQ_FULL:  # the server parked our ring: room again
            self._ring_doorbell()
        if spinning:
            spin.paid()
        else:
            spin.found_after_sleep()
        if user_data != seq:
            raise self._lose(f"completion for {user_data}, expected {seq}")
        if status:
            return self._raise_completion(eid, status)
        eng = _ENGINE_OF.get(engine)
        if eng is None:
            raise self._lose(f"malformed reply: a completion on engine {engine}")
        if not 0 < value <= self._sent:  # a fence no submission of ours got: never waited on as if it were
            raise self._lose(f"malformed reply: a completion with fence value {value}; allowed: 1 to the "
                             f"{self._sent} submissions sent")
        return eng, value

    def _raise_completion(self, eid: int, status: int) -> tuple[Engine, int]:
        # the CQE carries the code; the full text (param, value seen, allowed) comes once, by socket
        if not status or status not in ErrorCode._value2member_map_:
            raise self._lose(f"malformed reply: ring status {status} is no error code")
        self._lock.release()
        try:
            body, _ = self._call(Msg.ERROR_TEXT, _U64.pack(eid))
        finally:
            self._lock.acquire()
        raise decode_error(status, body)

    def _past_sent(self, engine: Engine, done: int) -> FFAccelError:
        """The ring's completed word of ``engine`` reads past every submission sent: the server is
        broken (an honest one numbers each engine's accepted submissions 1, 2, ...)."""
        return self._lose(f"malformed ring: completed_{engine.name.lower()} = {done}; allowed: at most the "
                          f"{self._sent} submissions sent")

    def completed(self, engine: Engine) -> int:
        if self._lost is not None:
            raise self._lost
        done = self._completed_words[engine].value
        if done > self._sent:
            raise self._past_sent(engine, done)
        known = self._completed  # a word that went back is not believed: the highest value seen stands
        if done < known[engine]:
            return known[engine]
        known[engine] = done
        return done

    def signalled(self, engine: Engine, value: int) -> bool:
        # the word is read once, then checked: _sent only grows, so a completion the server made
        # of a submission counted there is never refused
        done = self._completed_words[engine].value
        if done < value or self._lost is not None:
            return False
        if done > self._sent:
            raise self._past_sent(engine, done)
        return True

    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None:
        if self.signalled(engine, value):
            return
        word = self._completed_words[engine]
        end = time.monotonic_ns() + min(self.poll_ns, max(0, timeout_ns or 0))
        while time.monotonic_ns() < end:
            if word.value >= value:
                if self.signalled(engine, value):
                    return
                break  # lost meanwhile: the socket call below says so
        super().wait(engine, value, timeout_ns)  # the server blocks for us, with the deadline

    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        w = {Engine.COMPUTE: 0, Engine.COPY: 0}
        for e, v in waits:
            w[e] = max(w[e], v)
        with self._lock:
            if self._lost is not None:
                raise self._lost
            self._check_ring()
            self._sent = seq = self._sent + 1
            self._write(self._reserve(1), _SQE.pack(seq, int(engine), SqeFlags.REPLAY, w[Engine.COMPUTE],
                                                    w[Engine.COPY], list_id, 0) + _ZERO_CMD)
            self._publish(1)
            return self._reap(seq, self._list_sizes.get(list_id, 1))

    def record(self, raw: bytes) -> int:
        list_id = super().record(raw)
        # a replay runs the whole list before it completes: its size sets the busy-poll budget
        self._list_sizes[list_id] = max(1, _SUBMIT.unpack_from(raw, 0)[3])
        return list_id

    def free_list(self, list_id: int) -> None:
        super().free_list(list_id)
        self._list_sizes.pop(list_id, None)

    def close(self) -> None:
        if self._closed:
            return  # never close fd numbers twice: they may name someone else's files by now
        super().close()
        for fd in (self._evfd, self._doorbell):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass


__all__ = ["RingTransport"]
