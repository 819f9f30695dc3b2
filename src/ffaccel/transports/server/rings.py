"""The ring path (the io_uring model), server side: parsing, completions, the poller, the waker.

Shared memory is hostile input: each published entry is copied out exactly once and only
the copy is validated and run. A client that scribbles on its indices, overflows its
completion queue or truncates its memfd can hurt only its own ring.
"""

from __future__ import annotations

import collections
import ctypes
import fcntl
import logging
import mmap
import os
import select
import struct
import threading
import time
from collections.abc import Callable

import numpy as np

from ...abi import ABI_VERSION, COMMAND_BYTES, SUBMIT, WAIT
from ...spec import Engine, ErrorCode, FFAccelError, violation
from ..protocol import (
    CQE,
    EVENTFD_KIND,
    NO_INDEX,
    RING_HEADER,
    SQE_BYTES,
    SQE_FLAGS_KNOWN,
    SQE_HEADER,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
    fd_kind,
    ring_bytes,
    ring_words,
)
from .. import futex
from ..limits import ServerLimits
from ..spin import SpinBudget, step_aside
from .memory import sealed_memfd
from .ports import ClientPort

log = logging.getLogger("ffaccel.server")

_U64 = struct.Struct("<Q")
_SUBMIT = SUBMIT.struct
_WAIT = WAIT.struct
_SQE = SQE_HEADER.struct
_SQE_HDR = SQE_HEADER.size_bytes
_SQE_FLAGS_BYTE = 12  # an SQE's flags word (offset 12): its low byte, where LINK is (little-endian)
_LINK_OF_BYTE = bytes(b & int(SqeFlags.LINK) for b in range(256))  # a flags low byte -> its LINK bit
_LINK, _EMPTY, _REPLAY = int(SqeFlags.LINK), int(SqeFlags.EMPTY), int(SqeFlags.REPLAY)
_CQ_FULL = int(RingServerFlags.CQ_FULL)
_WAITING = int(RingClientFlags.WAITING)
_FUTEX_WAITING = int(RingClientFlags.FUTEX_WAITING)
_ZERO_CMD = bytes(COMMAND_BYTES)
_CQE = CQE.struct
_CQE_BYTES = CQE.size_bytes
_CQE_PACK_INTO = _CQE.pack_into
_COMPLETED = {Engine.COMPUTE: "completed_compute", Engine.COPY: "completed_copy"}
#: Longest the poller sleeps while a ring waits for its client's lock (Ring.poll's ``deferred``): the
#: client's own thread is in a request, and nothing rings a doorbell when it ends.
_DEFERRED_NAP_S = 0.001


def wait_pairs(wait_compute: int, wait_copy: int) -> tuple[tuple[int, int], ...]:
    """Waits as (engine, value) pairs, from per-engine values where 0 means none (REPLAY, ring entries)."""
    if not wait_compute and not wait_copy:
        return ()
    return tuple((e, v) for e, v in ((int(Engine.COMPUTE), wait_compute), (int(Engine.COPY), wait_copy)) if v)


def take_wake_fd(fd: int) -> int:
    """Check that a client's wake fd is an eventfd and make our copy non-blocking (``ring.wake``).

    Returns a duplicate the server owns. Any other kind of fd (a pipe, a regular file, a
    socket) is refused: the server would otherwise write into it.
    """
    kind = fd_kind(fd)
    if kind != EVENTFD_KIND:
        raise violation("ring.wake", kind, "an eventfd (anon_inode:[eventfd])")
    own = os.dup(fd)
    try:
        os.set_blocking(own, False)  # the flag is the open file's: the client's copy is non-blocking too
    except OSError:
        os.close(own)
        raise
    return own


class Ring:
    """Server side of one client's SQ/CQ pair (layout: :mod:`ffaccel.transports.protocol`).

    Lifetime: the ring's memfd mapping, doorbell and the client's wake eventfd are released
    only when the client is gone *and* no thread is using the ring any more (:meth:`use` /
    :meth:`done`; the poller holds one reference for as long as the ring is in its list): a
    completion that finishes after its client hung up is dropped, and no fd number is ever
    written after its close.

    ``turn_s``: how long one :meth:`poll` goes on running this client's chains (the server's
    ``slice_target_ms``): past it, the chains published after the one that ran last wait for
    the poller's next pass, so the other rings are served in between (see :meth:`poll`).
    """

    def __init__(self, client: ClientPort, entries: int, client_evfd: int, waker: Waker,
                 turn_s: float | None = None) -> None:
        self.client = client
        self.entries = entries
        self.turn_s = ServerLimits().slice_target_ms / 1e3 if turn_s is None else turn_s
        sq_off, cq_off, total = ring_bytes(entries)
        self.sq_off, self.cq_off = sq_off, cq_off
        fd = sealed_memfd("ffaccel-ring", total)
        try:
            self.mm = mmap.mmap(fd, total)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd  # sent with the RING_SETUP reply, then closed (drop_setup_fd)
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.client_evfd = client_evfd
        self.waker = waker
        self._life = threading.Lock()
        self._users = 0
        self._closing = False
        self._released = False
        self.sq_head = 0  # the server's own copies: what the client writes is only ever compared to them
        self.cq_tail = 0
        self.pending = b""  # entries of a chain whose end has not been published yet
        self._prev_chain: tuple[int, bytes, bytes, bytes] | None = None  # (count, prefix, tail, submission)
        self.pending_count = 0
        self.broken = False
        self.parked = False  # CQ full or the client's queue full: not read until that changes
        self.deferred = False  # its client's lock was busy at the last poll: looked at again after a nap
        hdr = dict.fromkeys(RING_HEADER.names, 0)
        hdr.update(entries=entries, sq_offset_bytes=sq_off, cq_offset_bytes=cq_off,
                   server_flags=int(RingServerFlags.FUTEX_WAKES) if futex.AVAILABLE else 0)
        RING_HEADER.struct.pack_into(self.mm, 0, *hdr.values())
        self.words = ring_words(self.mm)
        self._sq_tail_word = self.words["sq_tail"]  # the words the hot path touches, looked up once
        self._cq_head_word = self.words["cq_head"]
        self._sq_head_word = self.words["sq_head"]
        self._cq_tail_word = self.words["cq_tail"]
        self._client_flags = self.words["client_flags"]
        self._cq_tail_address = ctypes.addressof(self.words["cq_tail"])  # the futex a sleeping client waits on
        self._completed_words = {e: self.words[name] for e, name in _COMPLETED.items()}
        self.cq_full = False

    # -- lifetime ---------------------------------------------------------------------------
    def use(self) -> bool:
        """Take a reference for a piece of work on the ring; False once the client is gone."""
        life = self._life  # acquire/release, not `with`: the poller takes one per request (half the cost)
        life.acquire()
        try:
            if self._closing:
                return False
            self._users += 1
            return True
        finally:
            life.release()

    def done(self) -> None:
        life = self._life
        life.acquire()
        try:
            self._users -= 1
            release = self._closing and self._users == 0 and not self._released
            if release:
                self._released = True
        finally:
            life.release()
        if release:
            self._release()

    def close(self) -> None:
        """The client is gone: release now, or when the last user is done."""
        with self._life:
            self._closing = True
            release = self._users == 0 and not self._released
            if release:
                self._released = True
        if release:
            self._release()

    def _release(self) -> None:
        self.drop_setup_fd()
        for fd in (self.doorbell, self.client_evfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.words = {}
        self._sq_tail_word = self._cq_head_word = self._client_flags = None  # type: ignore[assignment]
        self._sq_head_word = self._cq_tail_word = None  # type: ignore[assignment]
        self._completed_words = {}
        try:
            self.mm.close()
        except (BufferError, ValueError):
            pass  # a ctypes word still points in: the mapping goes with the last of them

    def drop_setup_fd(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    # -- header words -------------------------------------------------------------------------
    def _get(self, name: str) -> int:
        return self.words[name].value

    def _set(self, name: str, value: int) -> None:
        self.words[name].value = value & 0xFFFF_FFFF

    def set_server_flag(self, flag: int, on: bool) -> None:
        if self.broken or not self.use():
            return
        try:
            cur = self._get("server_flags")
            self._set("server_flags", (cur | flag) if on else (cur & ~flag))
        finally:
            self.done()

    def publish_completed(self, engine: Engine, value: int) -> None:
        # no use() reference: only words of the mapping are written here, and a ctypes word keeps
        # the mapping alive after release (mm.close() refuses while one points in), so a late
        # store lands in memory nobody reads any more; the wakes take their own references
        word = self._completed_words.get(engine)
        flags = self._client_flags
        if word is None or flags is None:
            return  # the client is gone: its completion is dropped
        word.value = value
        if self.parked:
            self.waker.poke_poller()
        # only a client asleep on its eventfd: one asleep on the futex waits for cq_tail to move
        # (both clients' only futex wait), which a fence signal does not do; a wake here would
        # cost a system call and a wake-up for nothing (the CQE's own wake follows)
        if flags.value & _WAITING:
            self.waker.wake(self)

    def _wake_client(self) -> None:
        """Wake the client if it sleeps: on the futex right here (a wake that cannot block), on its
        eventfd through the waker thread (the fd is the client's: never written here, see Waker).

        Called with a use() reference held, so the mapping (and the futex word) is still there.
        """
        flags = self._client_flags.value
        if flags & _FUTEX_WAITING:
            futex.wake(self._cq_tail_address)
        if flags & _WAITING:
            self.waker.wake(self)

    def has_work(self) -> bool:
        if self.broken or self._closing or self.deferred:
            return False  # (a deferred ring: the poller's sleep is a short nap, see RingPoller._sleep)
        if self.parked:
            if self.cq_full and self._cq_room_quiet() == 0:
                return False
            if self.client.queue_full():
                return False
            self.parked = False
        return self._sq_tail_word.value != self.sq_head

    def _cq_room_quiet(self) -> int:
        return self.entries - ((self.cq_tail - self._cq_head_word.value) & 0xFFFF_FFFF)

    def _break(self, e: FFAccelError) -> None:
        self.broken = True
        eid = self.client.keep_error(e)
        self._set("error", int(e.code))
        self.words["error_id"].value = eid
        self._set("server_flags", self._get("server_flags") | RingServerFlags.BROKEN)
        log.warning("client %d: ring broken: %s", self.client.id, e)
        self._wake_client()

    def broken_by_client(self, why: str) -> None:
        """Stop serving a ring whose client broke the wake rules (ring.wake)."""
        if self.broken or not self.use():
            return
        try:
            self._break(violation("ring.wake", why, "a non-blocking eventfd the server can always write"))
        finally:
            self.done()

    def poll(self) -> bool:
        """Consume what the client published; True when anything was done.

        The caller holds a :meth:`use` reference: the poller holds one on every ring of its
        list for as long as the ring is in it (:meth:`RingPoller._hold`), not one per call (two
        lock round trips a request). A ring whose client is gone is not read any more.
        """
        if self.broken or self._closing:
            return False
        tail = self._sq_tail_word.value
        head = self.sq_head
        avail = (tail - head) & 0xFFFF_FFFF
        if avail == 0:
            return False
        lock = self.client.lock
        if not lock.acquire(False):
            # The client's own thread is in a request under its lock (validating a large submission
            # takes it ~0.2 s, recording a list as long): blocking here held every other ring for as
            # long (measured: another ring client's 8x8 GEMM at p99 646 ms). Its ring waits for a later
            # pass (the poller naps _DEFERRED_NAP_S at most meanwhile); the submit_raw below re-enters
            # the lock (an RLock) held here, so this costs one non-blocking round trip a request.
            self.deferred = True
            return False
        self.deferred = False
        try:
            if avail == 1 and not (self.pending_count or self.cq_full):
                # one entry (a batch-1 loop's every request): the checks below, without the batch machinery
                lo = self.sq_off + (head & (self.entries - 1)) * SQE_BYTES
                entry = self.mm[lo: lo + SQE_BYTES]  # the one copy out of shared memory
                used = (self.cq_tail - self._cq_head_word.value) & 0xFFFF_FFFF
                client = self.client
                if (used < self.entries and not (client.queued and client.queue_full())
                        and not entry[_SQE_FLAGS_BYTE] & _LINK):  # LINK: the flags word's low byte
                    self.sq_head = head = (head + 1) & 0xFFFF_FFFF
                    self._sq_head_word.value = head  # our progress first: the client may refill the slot
                    prev = self._prev_chain
                    self._complete(entry, 1, prev is not None and prev[0] == 1 and entry.startswith(prev[2], 8))
                    return True
                # a full CQ or queue, an impossible cq_head, a chain's first entry: the general path
            if avail > self.entries:
                self._break(violation("ring.index", tail, f"within {self.entries} entries of sq_head {self.sq_head}",
                                      field="sq_tail"))
                return False
            # The one copy out of shared memory: every published entry in one go (two slices when the
            # span wraps). Only this private copy is read from here on; entries it holds beyond the
            # point where we stop (CQ full) are dropped unread and copied again later.
            mask = self.entries - 1
            first = self.sq_head & mask
            n1 = min(avail, self.entries - first)
            lo = self.sq_off + first * SQE_BYTES
            span = self.mm[lo: lo + n1 * SQE_BYTES]
            if n1 < avail:
                span += self.mm[self.sq_off: self.sq_off + (avail - n1) * SQE_BYTES]
            room = self._cq_room()
            if room < 0:
                return False
            if room == 0 or self.client.queue_full():
                self._park(room == 0)
                return False
            prev = self._prev_chain
            if (prev is not None and prev[0] == avail and not self.pending_count and span.startswith(prev[1])
                    and span.startswith(prev[2], (avail - 1) * SQE_BYTES + 8)):
                # the previous chain again, whole, but for its user_data (a batch loop's every request):
                # its one end is its last entry, and it is the same submission (see _submit)
                self._advance(avail)
                self._complete(span, avail, True)
                self._unpark_cq()
                return True
            # chain ends: entries without LINK, from one byte per entry (the flags word's low byte)
            links = span[_SQE_FLAGS_BYTE::SQE_BYTES].translate(_LINK_OF_BYTE)
            if links.count(0) == 1:
                ends = [links.index(0)]
            else:
                ends = [i for i, link in enumerate(links) if not link]
            start_head = self.sq_head
            pos = 0  # entries of span consumed
            # One turn: the poller runs the chains of a span inline, one after the other (each is at
            # most slice_units of work; heavier ones are queued), and reads no other ring meanwhile.
            # A span of many chains (up to `entries` of them) once held another ring client's tiny
            # GEMM for all of them (measured: 62 inline 384^3 GEMMs, 680 ms); past turn_s, the rest
            # waits for the next pass, after the other rings (a clock read per chain, only here).
            turn_end = time.monotonic() + self.turn_s if len(ends) > 1 else 0.0
            for end in ends:
                if pos and turn_end and time.monotonic() >= turn_end:  # a chain ran: the turn is over
                    self._unpark_cq()
                    return True
                if room == 0:
                    room = self._cq_room()  # the client may have reaped meanwhile
                    if room <= 0:
                        if room == 0:  # no room for a completion: stop consuming (only this client waits)
                            self._park(True)
                        return self.sq_head != start_head
                if self.client.queue_full():  # back-pressure: read no more until some of its work ran
                    self._park(False)
                    return self.sq_head != start_head
                count = end + 1 - pos
                chain = span if count == avail else span[pos * SQE_BYTES: (end + 1) * SQE_BYTES]
                if self.pending_count:
                    chain = self.pending + chain
                    count += self.pending_count
                    self.pending, self.pending_count = b"", 0
                # publish our progress before running the chain: the client may refill the slots
                self._advance(end + 1 - pos)
                pos = end + 1
                if count > self.entries:
                    self._break(violation("ring.entry", f"a chain of {count - 1} linked entries",
                                          f"fewer than entries ({self.entries}) per chain", field="flags"))
                    return True
                self._complete(chain, count)
                room -= 1
            if pos < avail:  # an unterminated chain: keep its entries until its end arrives
                self.pending += span[pos * SQE_BYTES:]
                self.pending_count += avail - pos
                self._advance(avail - pos)
                if self.pending_count >= self.entries:
                    self.pending, self.pending_count = b"", 0
                    self._break(violation("ring.entry", f"a chain of {self.entries} linked entries",
                                          f"fewer than entries ({self.entries}) per chain", field="flags"))
                    return True
            self._unpark_cq()
            return self.sq_head != start_head
        finally:
            lock.release()

    def _park(self, cq_full: bool) -> None:
        """Stop reading this ring (the poller sleeps past it) until the client reaps or work drains."""
        self.parked = True
        if cq_full and not self.cq_full:
            self.cq_full = True
            self._set("server_flags", self._get("server_flags") | _CQ_FULL)

    def _unpark_cq(self) -> None:
        """Completions were written again: clear the CQ-full flag :meth:`_park` set, if it did."""
        if self.cq_full:
            self.cq_full = False
            self._set("server_flags", self._get("server_flags") & ~_CQ_FULL)

    def _advance(self, n: int) -> None:
        """Hand ``n`` more consumed SQ slots back to the client (one store of sq_head)."""
        if n:
            self.sq_head = (self.sq_head + n) & 0xFFFF_FFFF
            self._sq_head_word.value = self.sq_head

    def _cq_room(self) -> int:
        """Free CQ slots; -1 after breaking the ring when the client's cq_head is impossible."""
        cq_head = self._get("cq_head")
        used = (self.cq_tail - cq_head) & 0xFFFF_FFFF
        if used > self.entries:
            self._break(violation("ring.index", cq_head, f"within {self.entries} entries behind cq_tail "
                                  f"{self.cq_tail}", field="cq_head"))
            return -1
        return self.entries - used

    def _complete(self, chain: bytes, count: int, same: bool = False) -> None:
        """Run one chain and publish its completion. ``same``: the caller found the chain equal to
        the previous one but for its user_data (so it is the same submission, see :meth:`_submit`)."""
        user_data = _U64.unpack_from(chain, (count - 1) * SQE_BYTES)[0]
        try:
            if same:
                engine, value = self.client.submit_raw(self._prev_chain[3])  # type: ignore[index]
            else:
                engine, value = self._submit(chain, count)
            status, eng, eid, idx = 0, engine, 0, NO_INDEX  # an IntEnum: packed as its int, no int() call
        except FFAccelError as e:
            eid = self.client.keep_error(e)
            idx = NO_INDEX if e.command_index is None else e.command_index
            status, eng, value = int(e.code), 0, 0
        except Exception as e:  # noqa: BLE001 - an internal failure is reported, not fatal
            log.exception("client %d: ring entry failed", self.client.id)
            eid = self.client.keep_error(FFAccelError(ErrorCode.DEVICE_LOST, "device", f"server error: {e!r}"))
            status, eng, value, idx = int(ErrorCode.DEVICE_LOST), 0, 0, NO_INDEX
        cq_tail = self.cq_tail
        # written in place: the client reads a CQE only once cq_tail (stored next) covers it
        _CQE_PACK_INTO(self.mm, self.cq_off + (cq_tail & (self.entries - 1)) * _CQE_BYTES,
                       user_data, status, eng, value, idx, 0, eid)
        self.cq_tail = cq_tail = (cq_tail + 1) & 0xFFFF_FFFF
        self._cq_tail_word.value = cq_tail
        if self._client_flags.value:  # nearly always 0: the client spins on cq_tail
            self._wake_client()

    def _submit(self, chain: bytes, count: int) -> tuple[Engine, int]:
        # Entries whose header (past user_data) repeats the first one's pass or fail exactly as it
        # does, so when every middle entry repeats it only the first and last are checked; any
        # other chain checks every entry, and the first offending one is named.
        last = count - 1
        cut = last * SQE_BYTES + 8  # everything but the last entry's user_data decides the outcome
        prev = self._prev_chain
        if (prev is not None and prev[0] == count and len(chain) == count * SQE_BYTES
                and chain.startswith(prev[1]) and chain.startswith(prev[2], cut)):
            return self.client.submit_raw(prev[3])  # the same chain as last time: the same submission
        if count == 1:
            checked: range | tuple[int, ...] = (0,)
            entries = None
        else:
            entries = np.frombuffer(chain, np.uint8).reshape(count, SQE_BYTES)
            if count == 2 or (entries[1:last, 8:_SQE_HDR] == entries[0, 8:_SQE_HDR]).all():
                checked = (0, last)
            else:
                checked = range(count)
        _ud, engine, flags, w_compute, w_copy, list_id, reserved = _SQE.unpack_from(chain, 0)
        for i in checked:
            _u, eng_i, fl, wc, wp, lid, res = _SQE.unpack_from(chain, i * SQE_BYTES)
            where = f"sqe[{i}]."
            if fl & ~SQE_FLAGS_KNOWN:
                raise violation("ring.entry", hex(fl), f"only bits in {hex(SQE_FLAGS_KNOWN)}", field=where + "flags")
            if res:
                raise violation("ring.entry", res, 0, field=where + "reserved")
            if (eng_i, wc, wp) != (engine, w_compute, w_copy):
                raise violation("ring.entry", f"engine/waits {(eng_i, wc, wp)}",
                                f"those of the chain's first entry {(engine, w_compute, w_copy)}", field=where + "engine")
            special = fl & (_EMPTY | _REPLAY)
            if special and count != 1:
                raise violation("ring.entry", "EMPTY/REPLAY in a linked chain", "a chain of one entry",
                                field=where + "flags")
            if special == (_EMPTY | _REPLAY):
                raise violation("ring.entry", hex(fl), "EMPTY or REPLAY, not both", field=where + "flags")
            if lid and not fl & _REPLAY:
                raise violation("ring.entry", lid, "0 (only REPLAY entries name a list)", field=where + "list_id")
            if special and chain[i * SQE_BYTES + _SQE_HDR: (i + 1) * SQE_BYTES] != _ZERO_CMD:
                raise violation("ring.entry", "nonzero command bytes", "zero in an EMPTY or REPLAY entry",
                                field=where + "command")
        waits = wait_pairs(w_compute, w_copy)
        if flags & _REPLAY:
            return self.client.replay(list_id, engine, waits)
        n_cmd = 0 if flags & _EMPTY else count
        if not n_cmd:
            commands = b""
        elif entries is None:
            commands = chain[_SQE_HDR:]
        else:
            commands = entries[:, _SQE_HDR:].tobytes()  # the commands, without their entry headers
        raw = b"".join([_SUBMIT.pack(ABI_VERSION, engine, 0, n_cmd, len(waits), 0, 0),
                        *[_WAIT.pack(e, 0, v) for e, v in waits], commands])
        # a ring loop resubmits the same chain: next time two memcmps replace the checks above, and
        # the validator's memo finds this very bytes object (its hash already computed)
        self._prev_chain = (count, chain[: last * SQE_BYTES], chain[cut:], raw)
        return self.client.submit_raw(raw)


class Waker:
    """Signals sleeping ring clients, from its own thread, never while holding a lock.

    The wake eventfd is the client's: it may be made blocking again or have its counter at
    the maximum. The server writes it only here, non-blocking (O_NONBLOCK is checked before
    each write; a client that cleared it has its ring broken), and EAGAIN ("counter full")
    means the client is already woken. Should a write block all the same, only this thread
    waits: the poller notices, breaks that client's ring and starts a new waker.
    """

    STUCK_S = 0.5

    def __init__(self, poke_poller: Callable[[], None]) -> None:
        self.poke_poller = poke_poller
        self._queue: collections.deque[Ring] = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._current: tuple[Ring, float] | None = None
        self._stopping = False
        self._generation = 0
        self._start()

    def _start(self) -> None:
        self._generation += 1
        threading.Thread(target=self._loop, args=(self._generation,), name="ring-waker", daemon=True).start()

    def wake(self, ring: Ring) -> None:
        with self._cond:
            if ring not in self._queue:
                self._queue.append(ring)
                self._cond.notify()

    def _loop(self, generation: int) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping and generation == self._generation:
                    self._cond.wait()
                if self._stopping or generation != self._generation:
                    return
                ring = self._queue.popleft()
                self._current = (ring, time.monotonic())
            try:
                self._write(ring)
            finally:
                with self._cond:
                    if generation == self._generation:
                        self._current = None

    @staticmethod
    def _write(ring: Ring) -> None:
        if not ring.use():
            return  # the client is gone: its fd may already be closed, never write it
        try:
            fd = ring.client_evfd
            if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK:
                ring.broken_by_client("the wake eventfd was made blocking after RING_SETUP")
                return
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                pass  # the counter is full: the client has been woken already
            except OSError:
                pass
        finally:
            ring.done()

    def check_stuck(self) -> None:
        """Called by the poller: replace a waker stuck in a write (a client raced its fd's flags)."""
        with self._cond:
            cur = self._current
            if cur is None or time.monotonic() - cur[1] < self.STUCK_S:
                return
            self._current = None
            self._start()  # the stuck thread exits when its write returns
        cur[0].broken_by_client("the wake eventfd blocked the server's write")

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


class RingPoller:
    """One thread polls every ring: busy while it pays, then sleeps on the doorbells.

    Before sleeping it sets SLEEPING in every ring, then looks once more: a client that
    published before seeing the flag is picked up by that look, one that published after
    rings the doorbell. (On a weakly ordered CPU the two could cross; the sleep is bounded
    by a short nap, so the cost of that would be latency, never a hang.) Parked rings (CQ
    full, client queue full) are not polled: the client's reap or its completions wake
    the poller. Busy-polling is adaptive (:class:`~ffaccel.transports.spin.SpinBudget`).
    The poller thread holds a reference on every ring in its list (:meth:`_hold`), so that a
    request's :meth:`Ring.poll` takes none.
    """

    def __init__(self, poll_us: int) -> None:
        self.spin = SpinBudget(poll_us, step_aside)
        self.rings: list[Ring] = []
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.waker = Waker(self.poke)
        self.stopping = False
        self._held: list[Ring] = []  # the rings the poller thread holds a reference on (_hold)
        self.thread = threading.Thread(target=self._loop, name="ring-poller", daemon=True)
        self.thread.start()

    def poke(self) -> None:
        try:
            os.write(self.wake_w, b"r")
        except OSError:
            pass  # the pipe is full: the poller is due to wake anyway

    def add(self, ring: Ring) -> None:
        with self.lock:
            self.rings = self.rings + [ring]
        self.poke()

    def remove(self, ring: Ring) -> None:
        with self.lock:
            self.rings = [r for r in self.rings if r is not ring]
        self.poke()

    @staticmethod
    def _hold(held: list[Ring], rings: list[Ring]) -> list[Ring]:
        """The rings of ``rings`` this thread holds a :meth:`Ring.use` reference on, from ``held``.

        One reference per ring for as long as it is in the poller's list, instead of one per
        poll (two lock round trips a request): a ring that left the list (:meth:`remove`, its
        client gone) is let go here, and released here if it closed meanwhile; one that closed
        before it was ever held is not held (``use()`` says False) and never polled.
        """
        kept = []
        for r in held:
            if any(r is x for x in rings):
                kept.append(r)
            else:
                r.done()
        for r in rings:
            if not any(r is x for x in held) and r.use():
                kept.append(r)
        return kept

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            held, self._held = self._held, []
            for r in held:
                r.done()

    def _serve(self) -> None:
        spin = self.spin
        spinning, slept = spin.start(), False
        held: list[Ring] = []
        listed: list[Ring] = []  # the list `held` was taken from: a new list is a ring added or removed
        while not self.stopping:
            rings = self.rings
            if rings is not listed:
                held = self._held = self._hold(held, rings)
                listed = rings
            did = False
            for r in held:
                # whether the client may have published: one load, no lock (most looks find nothing);
                # after release the word still reads (the mapping stays while a ctypes word points in)
                word = r._sq_tail_word
                if word is not None and word.value != r.sq_head:
                    did = r.poll() or did
            if did:
                if spinning:
                    spinning = spin.restart()  # paid(), then start() the next spin
                else:
                    if slept:
                        spin.found_after_sleep()
                    spinning = spin.start()
                slept = False
                continue
            if spinning and spin.keep_spinning():
                # no sched_yield: beside CPU-bound processes it gives the core away for a time
                # slice (measured: ring batch 1 noticed 226 µs late); the server's other threads
                # get the GIL within the switch interval serve() sets
                continue
            self.waker.check_stuck()
            self._sleep(held)
            spinning, slept = False, True  # not start(): found_after_sleep looks at how the last spin ended

    def _sleep(self, rings: list[Ring]) -> None:
        held = [r for r in rings if r.use()]  # no fd of a closed ring is ever selected or read
        try:
            for r in held:
                r.set_server_flag(RingServerFlags.SLEEPING, True)
            if not any(r.has_work() for r in held):
                fds = [r.doorbell for r in held if not r.broken] + [self.wake_r]
                nap = _DEFERRED_NAP_S if any(r.deferred for r in held) else 0.5
                try:
                    ready, _, _ = select.select(fds, [], [], nap)
                except (OSError, ValueError):
                    ready = []
                for fd in ready:
                    try:
                        os.read(fd, 8)
                    except OSError:
                        pass
            for r in held:
                r.set_server_flag(RingServerFlags.SLEEPING, False)
        finally:
            for r in held:
                r.done()

    def stop(self) -> None:
        self.stopping = True
        self.waker.stop()
        self.poke()
