"""The device server: one process owns the driver and serves many clients on a Unix socket.

Per client: a handle table (a client names only its own or imported buffers), a memory
quota, one timeline per engine, recorded command lists, and optionally a
submission/completion ring pair. Buffers are sealed memfds that server and client both
map (operands never cross the socket). Every request and every ring entry passes the one
abi validator (:func:`ffaccel.abi.check_submission`) before the driver sees it; ring
entries are copied out of shared memory exactly once and the copy is validated.

Threads: an accept loop, one thread per connection (socket requests), one ring poller for
all rings (busy-polls for ``poll_us`` after the last work, then sleeps on the rings'
doorbell eventfds), and one worker per engine. Work whose engine is idle and whose waits
are met runs inline in the thread that validated it (no hand-off: a tiny GEMM costs a
microsecond, a thread wake-up tens of them); everything else queues on the engine's
worker in submission order.
"""

from __future__ import annotations

import collections
import fcntl
import itertools
import logging
import mmap
import numbers
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..abi import ABI_VERSION, COMMAND_BYTES, SUBMIT, WAIT
from ..drivers import Driver
from ..spec import SPEC_LIMITS, Engine, ErrorCode, FFAccelError, violation
from .inproc import RecordedList, SubmissionPlans
from .protocol import (
    CQE,
    FENCE_REPLY,
    HANDLE_REPLY,
    HELLO,
    MAX_FDS,
    MAX_PAYLOAD_BYTES,
    MSG,
    NO_INDEX,
    REPLAY_REQ,
    REPLY,
    RING_HEADER,
    RING_SETUP,
    SQE_BYTES,
    SQE_FLAGS_KNOWN,
    SQE_HEADER,
    STATS,
    WAIT_REQ,
    WIRE_VERSION,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
    close_fds,
    collect_fds,
    encode_error,
    message_error,
    ring_bytes,
    ring_words,
    send_msg,
)

log = logging.getLogger("ffaccel.server")

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U32x2 = struct.Struct("<II")
_SUBMIT = SUBMIT.struct
_WAIT = WAIT.struct
_SQE = SQE_HEADER.struct
_SQE_HDR = SQE_HEADER.size_bytes
_SQE_FLAGS_AT = struct.Struct("<12xI").unpack_from  # an SQE's flags word (offset 12)
_SQE_FLAGS_WORD = 3  # ... as a u32 index
_LINK, _EMPTY, _REPLAY = int(SqeFlags.LINK), int(SqeFlags.EMPTY), int(SqeFlags.REPLAY)
_CQ_FULL = int(RingServerFlags.CQ_FULL)
_WAITING = int(RingClientFlags.WAITING)
_ZERO_CMD = bytes(COMMAND_BYTES)
_CQE = CQE.struct
_HDR_OFF = {f.name: off for f, off in RING_HEADER.offsets()}
_COMPLETED = {Engine.COMPUTE: "completed_compute", Engine.COPY: "completed_copy"}
#: Request kinds by wire value, how many fds each carries, and fixed payload sizes (SUBMIT and
#: RECORD carry a whole submission, checked by the validator).
_MSG_KINDS = {int(m): m for m in Msg}
_TAKES_FDS = {Msg.IMPORT: 1, Msg.RING_SETUP: 1}
_PAYLOAD_BYTES = {Msg.HELLO: HELLO.size_bytes, Msg.ALLOC: 8, Msg.FREE: 8, Msg.WAIT: WAIT_REQ.size_bytes,
                  Msg.COMPLETED: 8, Msg.IMPORT: 0, Msg.STATS: 0, Msg.RING_SETUP: RING_SETUP.size_bytes,
                  Msg.ERROR_TEXT: 8, Msg.REPLAY: REPLAY_REQ.size_bytes, Msg.FREE_LIST: 8}
_FENCE = FENCE_REPLY.struct
_SUBMIT_MSG, _REPLAY_MSG = int(Msg.SUBMIT), int(Msg.REPLAY)
_REPLAY_UNPACK = REPLAY_REQ.struct.unpack
_SUBMIT_REPLY_HEAD = REPLY.struct.pack(0, 0, FENCE_REPLY.size_bytes)
_REPLY_PACK = REPLY.struct.pack
_COMPUTE, _COPY = Engine.COMPUTE, Engine.COPY
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
#: Longest single sleep of a waiter: a missed wake-up (a race we allow, see the ring poller)
#: costs at most this, never a hang.
_NAP_S = 0.02
#: Default busy-poll of a connection thread for the next request after each reply (microseconds).
DEFAULT_SOCKET_POLL_US = 200
_CMSG_FDS = socket.CMSG_SPACE(MAX_FDS * 4)
_HEAD_BYTES = MSG.size_bytes
_MSG_UNPACK = MSG.struct.unpack_from
#: Most bytes one read of a request stream asks for (more when a message needs more).
_READ_BYTES = 1 << 16


def _wait_pairs(wait_compute: int, wait_copy: int) -> tuple[tuple[int, int], ...]:
    """Waits as (engine, value) pairs, from per-engine values where 0 means none (REPLAY, ring entries)."""
    if not wait_compute and not wait_copy:
        return ()
    return tuple((e, v) for e, v in ((int(Engine.COMPUTE), wait_compute), (int(Engine.COPY), wait_copy)) if v)


def default_socket_path() -> str:
    """``$FFACCEL_SOCKET``, else ``$XDG_RUNTIME_DIR/ffaccel.sock``, else ``/tmp/ffaccel-<uid>.sock``."""
    env = os.environ.get("FFACCEL_SOCKET")
    if env:
        return env
    run = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(run, "ffaccel.sock") if run else f"/tmp/ffaccel-{os.getuid()}.sock"


def sealed_memfd(name: str, size_bytes: int) -> int:
    """A memfd of exactly ``size_bytes``, sealed so that nobody (client included) can resize it.

    The seals are why a client truncating its memfd cannot hurt the server: ftruncate fails
    with EPERM instead of turning the server's mapping into a SIGBUS.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size_bytes)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SharedMem:
    """One buffer: a sealed memfd mapped in the server (and by every client holding it)."""

    def __init__(self, size_bytes: int) -> None:
        self.fd = sealed_memfd("ffaccel-buffer", size_bytes)
        try:
            self.mm = mmap.mmap(self.fd, size_bytes)
        except BaseException:
            os.close(self.fd)
            raise
        st = os.fstat(self.fd)
        self.key = (st.st_dev, st.st_ino)
        self.size = size_bytes
        self.array = np.frombuffer(self.mm, np.uint8)
        self.refs = 0  # handles naming it over all clients

    def close(self) -> None:
        # The mapping itself goes when the last view of it does (queued work may still hold one).
        try:
            os.close(self.fd)
        except OSError:
            pass


# ------------------------------------------------------------------------------------------
# engines


@dataclass
class Work:
    client: "Client"
    engine: Engine
    value: int
    runs: tuple[Callable[[], object], ...]
    waits: tuple[tuple[Engine, int], ...]

    def ready(self) -> bool:
        return self.client.waits_met(self.waits)

    def execute(self) -> None:
        _execute(self.client, self.engine, self.value, self.runs)


def _execute(client: "Client", engine: Engine, value: int, runs: tuple[Callable[[], object], ...]) -> None:
    try:
        for run in runs:
            run()
    except Exception:  # noqa: BLE001 - a driver failure must not take the server down
        log.exception("client %d: execution failed on %s", client.id, engine.name)
    finally:
        client.signal(engine, value)


class EngineWorker:
    """One engine: a FIFO over all clients, run by its own thread (or inline when idle).

    The hot path (engine idle, waits met) takes one plain lock twice and runs the work in
    the calling thread; only queued work builds a :class:`Work` and wakes the worker.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: collections.deque[Work] = collections.deque()
        self.mutex = threading.Lock()
        self.cond = threading.Condition(self.mutex)
        self.busy = False
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name=f"engine-{engine.name.lower()}", daemon=True)
        self.thread.start()

    def submit(self, client: "Client", value: int, runs: tuple[Callable[[], object], ...],
               waits: tuple[tuple[Engine, int], ...]) -> None:
        mutex = self.mutex
        with mutex:
            inline = not self.busy and not self.queue and (not waits or client.waits_met(waits))
            if inline:
                self.busy = True
            else:
                self.queue.append(Work(client, self.engine, value, runs, waits))
                self.cond.notify_all()
        if inline:
            try:
                _execute(client, self.engine, value, runs)
            finally:
                with mutex:
                    self.busy = False
                    if self.queue:  # wake the worker only when it has work: a wake-up costs ~25 us
                        self.cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and (self.busy or not self.queue):
                    self.cond.wait()
                if self.stopping:
                    return
                work = self.queue.popleft()
                self.busy = True
            try:
                # waits name values submitted before this work, on queues that drain in order:
                # they always signal; the nap bounds each check, a closed client skips
                while not work.ready() and not work.client.closed:
                    work.client.wait_any(_NAP_S)
                work.execute()
            finally:
                with self.cond:
                    self.busy = False
                    self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


# ------------------------------------------------------------------------------------------
# clients


class Client:
    """One connection's state: handle table, quota, timelines, lists, ring."""

    _ids = itertools.count(1)

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.id = next(Client._ids)
        self.table: dict[int, SharedMem] = {}
        self.charged: dict[int, int] = {}  # handle -> bytes charged to this client's quota
        self._handles = itertools.count(1)
        self.used = 0
        self.submitted = {e: 0 for e in Engine}
        self.completed = {e: 0 for e in Engine}
        self.lock = threading.RLock()  # serialises validation + value assignment + enqueue
        self.done_mutex = threading.Lock()  # completions: ``completed`` and ``waiters``
        self.cond = threading.Condition(self.done_mutex)
        self.waiters = 0  # threads in cond.wait: signal() notifies only when there are some
        table = self.table
        self.plans = SubmissionPlans(server.driver, lambda h: table[h].array, server.caps, self.size_of,
                                     self.submitted.__getitem__, table.keys)
        self.lists: dict[int, RecordedList] = {}
        self._list_ids = itertools.count(1)
        self.errors: collections.OrderedDict[int, FFAccelError] = collections.OrderedDict()
        self._error_ids = itertools.count(1)
        self.ring: "Ring | None" = None
        self.closed = False

    # -- memory ---------------------------------------------------------------------------
    def size_of(self, handle: int) -> int | None:
        mem = self.table.get(handle)
        return None if mem is None else mem.size

    def alloc(self, size_bytes: int) -> tuple[int, SharedMem]:
        srv = self.server
        limit = min(SPEC_LIMITS.max_buffer_bytes, srv.caps.limits.max_buffer_bytes)
        if not 1 <= size_bytes <= limit:
            raise violation("memory.size", size_bytes, f"an integer in [1, {limit}]")
        with self.lock:
            quota = srv.max_client_memory
            if quota is not None and self.used + size_bytes > quota:
                raise violation("memory.quota", size_bytes, f"<= {quota - self.used} bytes left of {quota} "
                                "(over quota)")
            try:
                mem = SharedMem(size_bytes)
            except (OSError, MemoryError, OverflowError, ValueError):
                raise violation("memory.quota", size_bytes, "what the device can allocate") from None
            handle = next(self._handles)
            srv.register(mem)
            self.table[handle] = mem
            self.charged[handle] = size_bytes
            self.used += size_bytes
        return handle, mem

    def import_fd(self, fd: int) -> tuple[int, SharedMem]:
        try:
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
        except OSError:
            key = None
        mem = self.server.lookup_shared(key)
        if mem is None:
            raise violation("wire.import", f"fd {fd} (not a buffer of this server)",
                            "an fd from Buffer.export_fd() of a live buffer of this server")
        with self.lock:
            handle = next(self._handles)
            self.server.register(mem)
            self.table[handle] = mem
        return handle, mem

    def free(self, handle: int) -> None:
        with self.lock:
            mem = self.table.pop(handle, None)
            if mem is None:
                raise violation("memory.handle", handle, f"one of {sorted(self.table)}")
            self.used -= self.charged.pop(handle, 0)
            self.server.unregister(mem)
            self.plans.buffer_freed()  # bound runs hold views of the mapping: let it go

    # -- work -------------------------------------------------------------------------------
    def submit_raw(self, raw: bytes | memoryview) -> tuple[Engine, int]:
        """Validate a whole submission, assign its fence value, and run or queue it."""
        with self.lock:
            self._check_open()
            engine, runs, waits = self.plans.plan(raw)
            return self._enqueue(engine, runs, waits)

    def _enqueue(self, engine: Engine, runs: tuple[Callable[[], object], ...],
                 waits: tuple[tuple[Engine, int], ...]) -> tuple[Engine, int]:
        value = self.submitted[engine] + 1
        self.submitted[engine] = value
        srv = self.server
        srv.stats_submissions += 1
        srv.engines[engine].submit(self, value, runs, waits)
        return engine, value

    def waits_met(self, waits: tuple[tuple[Engine, int], ...]) -> bool:
        done = self.completed
        for e, v in waits:
            if done[e] < v:
                return False
        return True

    def signal(self, engine: Engine, value: int) -> None:
        done = self.completed
        with self.done_mutex:
            if value > done[engine]:
                done[engine] = value
            if self.waiters:
                self.cond.notify_all()
        ring = self.ring
        if ring is not None:
            ring.publish_completed(engine, done[engine])

    def wait_any(self, timeout_s: float) -> None:
        with self.cond:
            self.waiters += 1
            try:
                self.cond.wait(timeout_s)
            finally:
                self.waiters -= 1

    def wait(self, engine: Engine, value: int, timeout_ns: int) -> None:
        if value > self.submitted[engine]:
            raise violation("fence.timeout", f"fence {engine.name}:{value}, never submitted (timeline at "
                            f"{self.submitted[engine]}), so it cannot signal within {timeout_ns} ns",
                            f"a fence value <= {self.submitted[engine]}")
        deadline = time.monotonic_ns() + timeout_ns
        with self.cond:
            self.waiters += 1
            try:
                while self.completed[engine] < value:
                    left = deadline - time.monotonic_ns()
                    if left <= 0 or self.closed:
                        raise violation("fence.timeout", f"fence {engine.name}:{value} not signalled after "
                                        f"{timeout_ns} ns (completed {self.completed[engine]})",
                                        "a fence that signals before its deadline")
                    self.cond.wait(min(left / 1e9, 1.0))
            finally:
                self.waiters -= 1

    # -- command lists ---------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        with self.lock:
            self._check_open()
            recorded = self.plans.record(raw)  # validated once, here, by the one validator
            lid = next(self._list_ids)
            self.lists[lid] = recorded
            return lid

    def replay(self, lid: int, engine_raw: int, waits: tuple[tuple[int, int], ...]) -> tuple[Engine, int]:
        with self.lock:
            self._check_open()
            cl = self.lists.get(lid)
            if cl is None:
                raise violation("cmdlist.id", lid, f"one of {sorted(self.lists)}")
            engine, checked_waits = self.plans.replay(cl, engine_raw, waits)
            return self._enqueue(engine, cl.runs, checked_waits)

    def free_list(self, lid: int) -> None:
        with self.lock:
            if self.lists.pop(lid, None) is None:
                raise violation("cmdlist.id", lid, f"one of {sorted(self.lists)}")

    # -- errors, lifetime ------------------------------------------------------------------------
    def keep_error(self, e: FFAccelError) -> int:
        eid = next(self._error_ids)
        self.errors[eid] = e
        while len(self.errors) > 256:
            self.errors.popitem(last=False)
        return eid

    def _check_open(self) -> None:
        if self.closed:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the connection is closed")

    def close(self) -> None:
        """Release everything the client held (its queued work drains; nothing else waits on it)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for mem in self.table.values():
                self.server.unregister(mem)
            self.table.clear()
            self.charged.clear()
            self.used = 0
            self.lists.clear()
            self.plans.clear()
        with self.cond:
            self.cond.notify_all()
        ring = self.ring
        self.ring = None
        if ring is not None:
            self.server.poller.remove(ring)
            ring.close()


# ------------------------------------------------------------------------------------------
# rings


class Ring:
    """Server side of one client's SQ/CQ pair (layout: :mod:`ffaccel.transports.protocol`)."""

    def __init__(self, client: Client, entries: int, client_evfd: int) -> None:
        self.client = client
        self.entries = entries
        sq_off, cq_off, total = ring_bytes(entries)
        self.sq_off, self.cq_off = sq_off, cq_off
        self.fd = sealed_memfd("ffaccel-ring", total)
        self.mm = mmap.mmap(self.fd, total)
        self.doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.client_evfd = client_evfd
        self.sq_head = 0  # the server's own copies: what the client writes is only ever compared to them
        self.cq_tail = 0
        self.pending = b""  # entries of a chain whose end has not been published yet
        self._prev_chain: tuple[int, bytes, bytes, bytes] | None = None  # (count, prefix, tail, submission)
        self.pending_count = 0
        self.broken = False
        hdr = dict.fromkeys(RING_HEADER.names, 0)
        hdr.update(entries=entries, sq_offset_bytes=sq_off, cq_offset_bytes=cq_off)
        RING_HEADER.struct.pack_into(self.mm, 0, *hdr.values())
        self.words = ring_words(self.mm)
        self._sq_tail_word = self.words["sq_tail"]  # the words the hot path touches, looked up once
        self._client_flags = self.words["client_flags"]
        self._completed_words = {e: self.words[name] for e, name in _COMPLETED.items()}
        self.cq_full = False

    def _get(self, name: str) -> int:
        return self.words[name].value

    def _set(self, name: str, value: int) -> None:
        self.words[name].value = value & 0xFFFF_FFFF

    def set_server_flag(self, flag: int, on: bool) -> None:
        if self.broken:
            return
        cur = self._get("server_flags")
        self._set("server_flags", (cur | flag) if on else (cur & ~flag))

    def publish_completed(self, engine: Engine, value: int) -> None:
        try:
            self._completed_words[engine].value = value
            self._wake_client()
        except ValueError:  # closed concurrently
            pass

    def _wake_client(self) -> None:
        if self._client_flags.value & _WAITING:
            try:
                os.eventfd_write(self.client_evfd, 1)
            except OSError:
                pass

    def has_work(self) -> bool:
        return not self.broken and self._sq_tail_word.value != self.sq_head

    def _break(self, e: FFAccelError) -> None:
        self.broken = True
        eid = self.client.keep_error(e)
        self._set("error", int(e.code))
        self.words["error_id"].value = eid
        self._set("server_flags", self._get("server_flags") | RingServerFlags.BROKEN)
        log.warning("client %d: ring broken: %s", self.client.id, e)
        self._wake_client()

    def poll(self) -> bool:
        """Consume what the client published; True when anything was done."""
        if self.broken:
            return False
        tail = self._sq_tail_word.value
        avail = (tail - self.sq_head) & 0xFFFF_FFFF
        if avail == 0:
            return False
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
        # chain ends: entries without LINK (one array pass for a batch, one unpack for a single entry)
        if avail == 1:
            ends = [0] if not _SQE_FLAGS_AT(span, 0)[0] & _LINK else []
        else:
            ends = np.flatnonzero((np.frombuffer(span, "<u4")[_SQE_FLAGS_WORD::SQE_BYTES // 4]
                                   & _LINK) == 0).tolist()
        start_head = self.sq_head
        pos = 0  # entries of span consumed
        for end in ends:
            if room == 0:
                room = self._cq_room()  # the client may have reaped meanwhile
                if room <= 0:
                    if room == 0:  # no room for a completion: stop consuming (only this client waits)
                        self.cq_full = True
                        self.set_server_flag(_CQ_FULL, True)
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
        if self.cq_full:
            self.cq_full = False
            self.set_server_flag(_CQ_FULL, False)
        return self.sq_head != start_head

    def _advance(self, n: int) -> None:
        """Hand ``n`` more consumed SQ slots back to the client (one store of sq_head)."""
        if n:
            self.sq_head = (self.sq_head + n) & 0xFFFF_FFFF
            self._set("sq_head", self.sq_head)

    def _cq_room(self) -> int:
        """Free CQ slots; -1 after breaking the ring when the client's cq_head is impossible."""
        cq_head = self._get("cq_head")
        used = (self.cq_tail - cq_head) & 0xFFFF_FFFF
        if used > self.entries:
            self._break(violation("ring.index", cq_head, f"within {self.entries} entries behind cq_tail "
                                  f"{self.cq_tail}", field="cq_head"))
            return -1
        return self.entries - used

    def _complete(self, chain: bytes, count: int) -> None:
        user_data = _U64.unpack_from(chain, (count - 1) * SQE_BYTES)[0]
        try:
            engine, value = self._submit(chain, count)
            cqe = _CQE.pack(user_data, 0, int(engine), value, NO_INDEX, 0, 0)
        except FFAccelError as e:
            eid = self.client.keep_error(e)
            idx = NO_INDEX if e.command_index is None else e.command_index
            cqe = _CQE.pack(user_data, int(e.code), 0, 0, idx, 0, eid)
        except Exception as e:  # noqa: BLE001 - an internal failure is reported, not fatal
            log.exception("client %d: ring entry failed", self.client.id)
            eid = self.client.keep_error(FFAccelError(ErrorCode.DEVICE_LOST, "device", f"server error: {e!r}"))
            cqe = _CQE.pack(user_data, int(ErrorCode.DEVICE_LOST), 0, 0, NO_INDEX, 0, eid)
        off = self.cq_off + (self.cq_tail & (self.entries - 1)) * CQE.size_bytes
        self.mm[off: off + CQE.size_bytes] = cqe
        self.cq_tail = (self.cq_tail + 1) & 0xFFFF_FFFF
        self._set("cq_tail", self.cq_tail)
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
            checked: "range | tuple[int, ...]" = (0,)
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
        waits = _wait_pairs(w_compute, w_copy)
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

    def close(self) -> None:
        for fd in (self.fd, self.doorbell, self.client_evfd):
            try:
                os.close(fd)
            except OSError:
                pass


class RingPoller:
    """One thread polls every ring: busy for ``poll_us`` after the last work, then sleeps.

    Before sleeping it sets SLEEPING in every ring, then looks once more: a client that
    published before seeing the flag is picked up by that look, one that published after
    rings the doorbell. (On a weakly ordered CPU the two could cross; the sleep is bounded
    by a short nap, so the cost of that would be latency, never a hang.)
    """

    def __init__(self, poll_us: int) -> None:
        self.poll_s = poll_us / 1e6
        self.rings: list[Ring] = []
        self.lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="ring-poller", daemon=True)
        self.thread.start()

    def add(self, ring: Ring) -> None:
        with self.lock:
            self.rings = self.rings + [ring]
        os.write(self.wake_w, b"r")

    def remove(self, ring: Ring) -> None:
        with self.lock:
            self.rings = [r for r in self.rings if r is not ring]
        os.write(self.wake_w, b"r")

    def _loop(self) -> None:
        last_work = time.monotonic()
        while not self.stopping:
            rings = self.rings
            did = False
            for r in rings:
                try:
                    did = r.poll() or did
                except ValueError:  # the ring was closed under us (client gone)
                    continue
            now = time.monotonic()
            if did:
                last_work = now
                continue
            if now - last_work < self.poll_s:
                os.sched_yield()  # releases the GIL: connection threads keep serving
                continue
            for r in rings:
                r.set_server_flag(RingServerFlags.SLEEPING, True)
            if not any(r.has_work() for r in rings):
                fds = [r.doorbell for r in rings if not r.broken] + [self.wake_r]
                try:
                    ready, _, _ = select.select(fds, [], [], 0.5)
                except (OSError, ValueError):
                    ready = []
                for fd in ready:
                    try:
                        os.read(fd, 8)
                    except OSError:
                        pass
            for r in rings:
                try:
                    r.set_server_flag(RingServerFlags.SLEEPING, False)
                except ValueError:
                    pass
            last_work = time.monotonic()

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"s")


# ------------------------------------------------------------------------------------------
# the server


class Server:
    """Serve one driver on a Unix socket.

    Parameters
    ----------
    driver : Driver
        The driver that owns the device.
    socket_path : str
        Where to listen (created with mode 0600; removed on close).
    max_client_memory : int, optional
        Per-client memory quota in bytes (None: unlimited). Allocations past it fail with
        OUT_OF_MEMORY ("over quota").
    poll_us : int
        How long the ring poller busy-polls after the last work before sleeping.
    socket_poll_us : int
        How long a connection thread busy-polls its socket for the next request after a reply
        before blocking (a client in a loop sends its next request within microseconds; a
        blocked thread costs a wake-up of tens of them). Idle connections cost nothing after it.
    """

    def __init__(self, driver: Driver, socket_path: str, *, max_client_memory: int | None = None,
                 poll_us: int = 200, socket_poll_us: int = DEFAULT_SOCKET_POLL_US) -> None:
        self.driver = driver
        self.socket_poll_s = max(0, socket_poll_us) / 1e6
        self.info = driver.info()
        self.caps = self.info.caps
        self.socket_path = socket_path
        self.max_client_memory = max_client_memory
        self.engines = {e: EngineWorker(e) for e in Engine if e in self.caps.engines}
        self.poller = RingPoller(poll_us)
        self.clients: set[Client] = set()
        self._shared: dict[tuple[int, int], SharedMem] = {}
        self.lock = threading.Lock()
        self.stats_submissions = 0
        self._stop = threading.Event()
        if os.path.exists(socket_path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(socket_path)
            except OSError:
                os.unlink(socket_path)  # stale: nobody listens
            else:
                probe.close()
                raise OSError(f"a server is already listening on {socket_path}")
            finally:
                probe.close()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(socket_path)
        finally:
            os.umask(old)
        self.listener.listen(64)

    # -- shared-memory registry (for import) ------------------------------------------------
    def register(self, mem: SharedMem) -> None:
        with self.lock:
            mem.refs += 1
            self._shared[mem.key] = mem

    def unregister(self, mem: SharedMem) -> None:
        with self.lock:
            mem.refs -= 1
            if mem.refs <= 0:
                self._shared.pop(mem.key, None)
                mem.close()

    def lookup_shared(self, key: tuple[int, int] | None) -> SharedMem | None:
        with self.lock:
            return self._shared.get(key) if key is not None else None

    def stats(self) -> tuple[int, int, int, int]:
        with self.lock:
            clients = list(self.clients)
            buffers = len(self._shared)
        charged = sum(c.used for c in clients)
        return len(clients), buffers, charged, self.stats_submissions

    # -- serving ------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("serving %s (%s %s) on %s, quota %s", self.info.name, self.info.name, self.info.version,
                 self.socket_path, self.max_client_memory)
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            conn.settimeout(None)
            client = Client(self)
            with self.lock:
                self.clients.add(client)
            threading.Thread(target=self._serve_client, args=(conn, client), name=f"client-{client.id}",
                             daemon=True).start()

    def shutdown(self) -> None:
        """Stop accepting, disconnect every client, remove the socket file."""
        self._stop.set()
        try:
            self.listener.close()
        except OSError:
            pass
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            sock = getattr(c, "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.poller.stop()
        for eng in self.engines.values():
            eng.stop()

    def _serve_client(self, conn: socket.socket, client: Client) -> None:
        client.sock = conn  # type: ignore[attr-defined]
        log.info("client %d connected", client.id)
        inbox = _Inbox(conn, self.socket_poll_s)
        fds: list[int] = []
        try:
            while True:
                try:
                    msg_type, reserved, length, payload, fds = inbox.next_message()
                except _TooLong as e:
                    # the stream cannot be resynchronised past a length we will not read: answer, hang up
                    self._reply_error(conn, message_error("payload_bytes", e.length, f"<= {MAX_PAYLOAD_BYTES}"))
                    return
                except (EOFError, OSError):
                    return
                if (msg_type == _SUBMIT_MSG or (msg_type == _REPLAY_MSG and length == REPLAY_REQ.size_bytes)
                        ) and not reserved and not fds:
                    # the hot paths (the ioctl model's one request per submission or replay), without
                    # the dispatch table
                    try:
                        if msg_type == _SUBMIT_MSG:
                            engine, value = client.submit_raw(payload)
                        else:
                            lid, eng, wc, wp = _REPLAY_UNPACK(payload)
                            engine, value = client.replay(lid, eng, _wait_pairs(wc, wp))
                        done = client.completed
                        reply = _SUBMIT_REPLY_HEAD + _FENCE.pack(engine, 0, value, done[_COMPUTE], done[_COPY])
                    except FFAccelError as e:
                        self._reply_error(conn, e)
                        continue
                    except Exception as e:  # noqa: BLE001 - one bad request must not take the server down
                        log.exception("client %d: request %s failed", client.id, msg_type)
                        self._reply_error(conn, FFAccelError(ErrorCode.DEVICE_LOST, "device", f"server error: {e!r}"))
                        continue
                    try:
                        conn.sendall(reply)
                    except OSError:
                        return
                    continue
                try:
                    if reserved:
                        raise message_error("reserved", reserved, 0)
                    out, out_fds = self._dispatch(client, msg_type, payload, fds)
                except FFAccelError as e:
                    self._reply_error(conn, e)
                except Exception as e:  # noqa: BLE001 - one bad request must not take the server down
                    log.exception("client %d: request %s failed", client.id, msg_type)
                    self._reply_error(conn, FFAccelError(ErrorCode.DEVICE_LOST, "device", f"server error: {e!r}"))
                else:
                    try:
                        send_msg(conn, _REPLY_PACK(0, 0, len(out)), out, out_fds)
                    except OSError:
                        return
                finally:
                    close_fds(fds)
        finally:
            close_fds(fds)
            inbox.close()
            client.close()
            with self.lock:
                self.clients.discard(client)
            try:
                conn.close()
            except OSError:
                pass
            log.info("client %d disconnected; its buffers, lists and queued work released", client.id)

    def _reply_error(self, conn: socket.socket, e: FFAccelError) -> None:
        body = encode_error(e)
        try:
            send_msg(conn, REPLY.struct.pack(int(e.code), 0, len(body)), body)
        except OSError:
            pass

    def _dispatch(self, client: Client, msg_type: int, payload: bytes, fds: list[int]
                  ) -> tuple[bytes, list[int]]:
        kind = _MSG_KINDS.get(msg_type)
        if kind is None:
            raise message_error("msg_type", msg_type, sorted(int(m) for m in Msg))
        want = _TAKES_FDS.get(kind, 0)
        if len(fds) != want:
            raise message_error("fds", f"{len(fds)} file descriptors", want)
        size = _PAYLOAD_BYTES.get(kind)
        if size is not None and len(payload) != size:
            raise message_error("payload_bytes", len(payload), f"{size} for {kind.name}")
        if kind is Msg.SUBMIT:
            engine, value = client.submit_raw(payload)
            return self._fence(client, engine, value), []
        if kind == Msg.WAIT:
            eng, res, value, timeout_ns = WAIT_REQ.struct.unpack(payload)
            engine = self._engine(eng, res)
            client.wait(engine, value, timeout_ns)
            return self._fence(client, engine, value), []
        if kind == Msg.COMPLETED:
            eng, res = _U32x2.unpack(payload)
            engine = self._engine(eng, res)
            return self._fence(client, engine, client.completed[engine]), []
        if kind == Msg.HELLO:
            wire, abi = HELLO.struct.unpack(payload)
            if wire != WIRE_VERSION:
                raise message_error("wire_version", wire, WIRE_VERSION)
            if abi != ABI_VERSION:
                raise violation("submit.abi_version", abi, ABI_VERSION)
            return pickle.dumps(self.info), []
        if kind == Msg.ALLOC:
            (size,) = _U64.unpack(payload)
            handle, mem = client.alloc(size)
            return HANDLE_REPLY.struct.pack(handle, 0, mem.size), [mem.fd]
        if kind == Msg.FREE:
            handle, res = _U32x2.unpack(payload)
            if res:
                raise message_error("reserved", res, 0)
            client.free(handle)
            return b"", []
        if kind == Msg.IMPORT:
            handle, mem = client.import_fd(fds[0])
            return HANDLE_REPLY.struct.pack(handle, 0, mem.size), []
        if kind == Msg.STATS:
            return STATS.struct.pack(*self.stats()), []
        if kind == Msg.RING_SETUP:
            entries, res = RING_SETUP.struct.unpack(payload)
            if res:
                raise message_error("reserved", res, 0)
            if not 2 <= entries <= 4096 or entries & (entries - 1):
                raise message_error("entries", entries, "a power of two in [2, 4096]")
            if client.ring is not None:
                raise message_error("msg_type", "a second RING_SETUP", "one ring per connection")
            ring = Ring(client, entries, os.dup(fds[0]))
            client.ring = ring
            self.poller.add(ring)
            return b"", [ring.fd, ring.doorbell]
        if kind == Msg.ERROR_TEXT:
            (eid,) = _U64.unpack(payload)
            err = client.errors.get(eid)
            if err is None:
                raise message_error("error_id", eid, "an error id from one of this client's completions")
            return encode_error(err), []
        if kind == Msg.RECORD:
            lid = client.record(payload)
            return _U32x2.pack(lid, 0), []
        if kind == Msg.REPLAY:
            lid, eng, wc, wp = _REPLAY_UNPACK(payload)
            engine, value = client.replay(lid, eng, _wait_pairs(wc, wp))
            return self._fence(client, engine, value), []
        if kind == Msg.FREE_LIST:
            lid, res = _U32x2.unpack(payload)
            if res:
                raise message_error("reserved", res, 0)
            client.free_list(lid)
            return b"", []
        raise message_error("msg_type", msg_type, sorted(int(m) for m in Msg))  # pragma: no cover

    def _engine(self, raw: int, reserved: int) -> Engine:
        if reserved:
            raise message_error("reserved", reserved, 0)
        if raw not in Engine._value2member_map_ or Engine(raw) not in self.caps.engines:
            raise violation("submit.engine", raw, sorted(int(e) for e in self.caps.engines))
        return Engine(raw)

    def _fence(self, client: Client, engine: Engine, value: int) -> bytes:
        done = client.completed
        return _FENCE.pack(engine, 0, value, done[_COMPUTE], done[_COPY])


class _TooLong(Exception):
    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class _Inbox:
    """One connection's request stream, cut into whole messages with as few reads as possible.

    A small request (header and payload, sent together) arrives in one read. A read may take
    more than one message when a client sends several before reading replies; the rest waits
    here. File descriptors come with the read that reaches the end of the sender's
    ``sendmsg`` that carried them (Linux never merges past such a message), so they belong to
    the message holding that read's last byte. Waiting for a message busy-polls (non-blocking
    reads) for ``spin_s`` and then blocks.
    """

    def __init__(self, conn: socket.socket, spin_s: float) -> None:
        self.conn = conn
        self.spin_s = spin_s
        self.buf = b""  # received, not yet consumed
        self.base = 0  # stream offset of buf[0]
        self.marks: list[tuple[int, list[int]]] = []  # (stream offset of a read's last byte, its fds)
        self.first = True  # the first request is not spun for (the client may take its time)

    def _take(self, data: bytes, anc: list[tuple[int, int, bytes]]) -> None:
        fds: list[int] = []
        collect_fds(anc, fds)
        if not data:
            close_fds(fds)
            raise EOFError("peer closed the connection")
        self.buf = self.buf + data if self.buf else data
        if fds:
            self.marks.append((self.base + len(self.buf) - 1, fds))

    def _read(self) -> None:
        """At least one more byte: busy-poll for ``spin_s``, then block."""
        recvmsg = self.conn.recvmsg
        size = _READ_BYTES
        if self.spin_s and not self.first:
            end = time.monotonic() + self.spin_s
            while True:
                try:
                    data, anc, _flags, _ = recvmsg(size, _CMSG_FDS, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    if time.monotonic() < end:
                        continue
                    break
                self._take(data, anc)
                return
        data, anc, _flags, _ = recvmsg(size, _CMSG_FDS)
        self._take(data, anc)

    def next_message(self) -> tuple[int, int, int, bytes, list[int]]:
        """(msg_type, reserved, payload_bytes, payload, fds) of the next request."""
        while len(self.buf) < _HEAD_BYTES:
            self._read()
        self.first = False
        msg_type, reserved, length = _MSG_UNPACK(self.buf)
        if length > MAX_PAYLOAD_BYTES:
            raise _TooLong(length)
        need = _HEAD_BYTES + length
        if len(self.buf) < need:
            self._read_rest(need)
        buf = self.buf
        payload = buf[_HEAD_BYTES: need] if length else b""
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
        """Read exactly the rest of a message of ``need`` bytes (a large one: no read goes past it)."""
        acc = bytearray(need)
        got = len(self.buf)
        acc[:got] = self.buf
        view = memoryview(acc)
        while got < need:
            n, anc, _flags, _ = self.conn.recvmsg_into([view[got:]], _CMSG_FDS)
            fds: list[int] = []
            collect_fds(anc, fds)
            if not n:
                close_fds(fds)
                raise EOFError("peer closed the connection")
            got += n
            if fds:
                self.marks.append((self.base + got - 1, fds))
        view.release()
        self.buf = bytes(acc)

    def close(self) -> None:
        for _pos, got in self.marks:
            close_fds(got)
        self.marks.clear()


def serve(socket_path: str | None = None, driver: str = "cpu", *, max_client_memory: int | None = None,
          poll_us: int = 200, socket_poll_us: int = DEFAULT_SOCKET_POLL_US,
          ready: Callable[[Server], None] | None = None) -> int:
    """Run a server until SIGINT/SIGTERM (main thread) or until ``ready``'s server is shut down.

    Returns the process exit status (0 on a clean shutdown).
    """
    from ..drivers import load_driver_class

    if max_client_memory is not None and (not isinstance(max_client_memory, numbers.Integral)
                                          or max_client_memory < 0):
        raise violation("memory.quota", max_client_memory, "a byte count >= 0")
    cls = load_driver_class(driver)
    path = socket_path or default_socket_path()
    srv = Server(cls(), path, max_client_memory=max_client_memory, poll_us=poll_us,
                 socket_poll_us=socket_poll_us)
    if threading.current_thread() is threading.main_thread():
        def _stop(signum: int, _frame: object) -> None:
            log.info("signal %d: shutting down", signum)
            srv._stop.set()
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    if ready is not None:
        ready(srv)
    try:
        srv.serve_forever()
    finally:
        srv.shutdown()
        srv.driver.close()
        log.info("stopped; %s removed", path)
    return 0


__all__ = ["Client", "Ring", "RingPoller", "Server", "SharedMem", "default_socket_path", "sealed_memfd", "serve"]
