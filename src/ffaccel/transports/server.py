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

import array
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

from ..abi import (
    ABI_VERSION,
    COMMAND_BYTES,
    SUBMIT,
    WAIT,
    CopyOp,
    GemmOp,
    Op,
    ValidationCache,
    check_submission,
    op_handles,
)
from ..drivers import Driver
from ..spec import ENGINE_OPCODES, SPEC_LIMITS, Engine, ErrorCode, FFAccelError, Opcode, violation
from .inproc import BoundRuns
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
    encode_error,
    message_error,
    recv_exact,
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


@dataclass
class RecordedList:
    engine: Engine
    opcodes: frozenset[Opcode]
    handles: tuple[int, ...]
    runs: tuple[Callable[[], object], ...]


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
        self.cache = ValidationCache()
        table = self.table
        self.runs = BoundRuns(server.driver, lambda h: table[h].array)  # kernels bound per validated op
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
            self.runs.clear()  # bound runs hold views of the mapping: let it go

    # -- work -------------------------------------------------------------------------------
    def submit_raw(self, raw: bytes | memoryview) -> tuple[Engine, int]:
        """Validate a whole submission, assign its fence value, and run or queue it."""
        with self.lock:
            if self.closed:
                self._check_open()
            sub = check_submission(raw, self.server.caps, self.size_of, self.submitted.__getitem__, self.cache)
            return self._enqueue(sub.engine, self.runs.get_all(sub.ops), sub.waits)

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
            # validated once, here, by the one validator (as a submission on the list's engine)
            sub = check_submission(raw, self.server.caps, self.size_of, self.submitted.__getitem__)
            if sub.waits:
                raise violation("submit.wait", f"wait_count = {len(sub.waits)}",
                                "0 (a command list's waits are given at replay)")
            runs = tuple(self.runs.get(op) for op in sub.ops)
            opcodes = frozenset(Opcode.GEMM if isinstance(op, GemmOp) else Opcode.COPY for op in sub.ops)
            handles = tuple(sorted({h for op in sub.ops for h in op_handles(op)}))
            lid = next(self._list_ids)
            self.lists[lid] = RecordedList(sub.engine, opcodes, handles, runs)
            return lid

    def replay(self, lid: int, engine_raw: int, waits: tuple[tuple[int, int], ...]) -> tuple[Engine, int]:
        with self.lock:
            self._check_open()
            cl = self.lists.get(lid)
            if cl is None:
                raise violation("cmdlist.id", lid, f"one of {sorted(self.lists)}")
            # the engine and the waits pass the one validator as an empty submission
            head = _SUBMIT.pack(ABI_VERSION, engine_raw, 0, 0, len(waits), 0, 0)
            body = b"".join(_WAIT.pack(e, 0, v) for e, v in waits)
            sub = check_submission(head + body, self.server.caps, self.size_of, self.submitted.__getitem__)
            bad = cl.opcodes - ENGINE_OPCODES[sub.engine]
            if bad:
                raise violation("submit.engine_opcode", f"{sorted(o.name for o in bad)} on {sub.engine.name}",
                                f"{sorted(o.name for o in ENGINE_OPCODES[sub.engine])} on {sub.engine.name}")
            for h in cl.handles:
                if h not in self.table:
                    raise violation("cmdlist.stale", h, f"live handles of this client ({sorted(self.table)})")
            return self._enqueue(sub.engine, cl.runs, sub.waits)

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
            self.runs.clear()
            self.cache.clear()
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
        self.pending: list[bytes] = []
        self.broken = False
        hdr = dict.fromkeys(RING_HEADER.names, 0)
        hdr.update(entries=entries, sq_offset_bytes=sq_off, cq_offset_bytes=cq_off)
        RING_HEADER.struct.pack_into(self.mm, 0, *hdr.values())
        self.words = ring_words(self.mm)

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
            self.words[_COMPLETED[engine]].value = value
            self._wake_client()
        except ValueError:  # closed concurrently
            pass

    def _wake_client(self) -> None:
        if self._get("client_flags") & RingClientFlags.WAITING:
            try:
                os.eventfd_write(self.client_evfd, 1)
            except OSError:
                pass

    def has_work(self) -> bool:
        return not self.broken and self._get("sq_tail") != self.sq_head

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
        tail = self._get("sq_tail")
        avail = (tail - self.sq_head) & 0xFFFF_FFFF
        if avail == 0:
            return False
        if avail > self.entries:
            self._break(violation("ring.index", tail, f"within {self.entries} entries of sq_head {self.sq_head}",
                                  field="sq_tail"))
            return False
        # The one copy out of shared memory: every published entry in one go (two slices when the
        # span wraps). Only this private copy is read from here on; entries it holds beyond the
        # point where we stop (CQ full, broken ring) are dropped unread and copied again later.
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
        start = self.sq_head
        consumed = 0
        pending = self.pending
        for pos in range(0, avail * SQE_BYTES, SQE_BYTES):
            if room == 0:
                room = self._cq_room()  # the client may have reaped meanwhile
                if room <= 0:
                    if room == 0:  # no room for a completion: stop consuming (only this client waits)
                        self.set_server_flag(RingServerFlags.CQ_FULL, True)
                    break
            entry = span[pos: pos + SQE_BYTES]
            consumed += 1
            pending.append(entry)
            if _SQE_FLAGS_AT(entry, 0)[0] & SqeFlags.LINK:
                if len(pending) >= self.entries:
                    pending.clear()
                    self._advance(consumed)
                    self._break(violation("ring.entry", f"a chain of {self.entries} linked entries",
                                          f"fewer than entries ({self.entries}) per chain", field="flags"))
                    return True
                continue
            chain, pending = pending, []
            self.pending = pending
            # publish our progress before running the chain: the client may refill the slots
            self._advance(consumed)
            consumed = 0
            self._complete(chain)
            room -= 1
        else:
            self.set_server_flag(RingServerFlags.CQ_FULL, False)
        self._advance(consumed)
        return self.sq_head != start

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

    def _complete(self, chain: list[bytes]) -> None:
        user_data = _SQE.unpack_from(chain[-1], 0)[0]
        try:
            engine, value = self._submit(chain)
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

    def _submit(self, chain: list[bytes]) -> tuple[Engine, int]:
        # Entries whose header (past user_data) repeats the first one's pass or fail exactly as it
        # does, so a uniform chain checks only its first and last entries; any other chain checks
        # every entry, and the first offending one is named.
        same = chain[0][8:_SQE_HDR]
        last = len(chain) - 1
        if all(e[8:_SQE_HDR] == same for e in chain[1:last]) and chain[last][16:_SQE_HDR] == same[8:]:
            checked = (0, last) if last else (0,)
        else:
            checked = range(len(chain))
        heads = {i: _SQE.unpack_from(chain[i], 0) for i in checked}
        _ud, engine, flags, w_compute, w_copy, list_id, reserved = heads[0]
        for i, (_u, eng_i, fl, wc, wp, lid, res) in heads.items():
            where = f"sqe[{i}]."
            if fl & ~SQE_FLAGS_KNOWN:
                raise violation("ring.entry", hex(fl), f"only bits in {hex(SQE_FLAGS_KNOWN)}", field=where + "flags")
            if res:
                raise violation("ring.entry", res, 0, field=where + "reserved")
            if (eng_i, wc, wp) != (engine, w_compute, w_copy):
                raise violation("ring.entry", f"engine/waits {(eng_i, wc, wp)}",
                                f"those of the chain's first entry {(engine, w_compute, w_copy)}", field=where + "engine")
            special = fl & (SqeFlags.EMPTY | SqeFlags.REPLAY)
            if special and len(chain) != 1:
                raise violation("ring.entry", "EMPTY/REPLAY in a linked chain", "a chain of one entry",
                                field=where + "flags")
            if special == (SqeFlags.EMPTY | SqeFlags.REPLAY):
                raise violation("ring.entry", hex(fl), "EMPTY or REPLAY, not both", field=where + "flags")
            if lid and not fl & SqeFlags.REPLAY:
                raise violation("ring.entry", lid, "0 (only REPLAY entries name a list)", field=where + "list_id")
            if special and any(memoryview(chain[i])[SQE_HEADER.size_bytes:]):
                raise violation("ring.entry", "nonzero command bytes", "zero in an EMPTY or REPLAY entry",
                                field=where + "command")
        waits = tuple((e, v) for e, v in ((int(Engine.COMPUTE), w_compute), (int(Engine.COPY), w_copy)) if v)
        if flags & SqeFlags.REPLAY:
            return self.client.replay(list_id, engine, waits)
        n_cmd = 0 if flags & SqeFlags.EMPTY else len(chain)
        raw = b"".join([_SUBMIT.pack(ABI_VERSION, engine, 0, n_cmd, len(waits), 0, 0)]
                       + [_WAIT.pack(e, 0, v) for e, v in waits]
                       + ([] if flags & SqeFlags.EMPTY else [c[_SQE_HDR:] for c in chain]))
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
        fds: list[int] = []
        spin_s = self.socket_poll_s
        first = True
        try:
            while True:
                try:
                    if first or not spin_s:
                        head = recv_exact(conn, _HEAD_BYTES, fds)
                    else:
                        head = _spin_recv_head(conn, fds, spin_s)
                    first = False
                except (EOFError, OSError):
                    return
                msg_type, reserved, length = MSG.struct.unpack(head)
                if length > MAX_PAYLOAD_BYTES:
                    # the stream cannot be resynchronised past a length we will not read: answer, hang up
                    close_fds(fds)
                    self._reply_error(conn, message_error("payload_bytes", length, f"<= {MAX_PAYLOAD_BYTES}"))
                    return
                try:
                    # fds ride on a message's first bytes (the header); the payload is plain data
                    payload = recv_exact(conn, length) if length else b""
                except (EOFError, OSError):
                    return
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
            lid, eng, wc, wp = REPLAY_REQ.struct.unpack(payload)
            waits = tuple((e, v) for e, v in ((int(Engine.COMPUTE), wc), (int(Engine.COPY), wp)) if v)
            engine, value = client.replay(lid, eng, waits)
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


def _spin_recv_head(conn: socket.socket, fds: list[int], spin_s: float) -> bytes:
    """A request header: busy-poll (non-blocking reads) for up to ``spin_s``, then block."""
    end = time.monotonic() + spin_s
    recvmsg = conn.recvmsg
    while True:
        try:
            data, anc, _flags, _ = recvmsg(_HEAD_BYTES, _CMSG_FDS, socket.MSG_DONTWAIT)
        except BlockingIOError:
            if time.monotonic() < end:
                continue
            return recv_exact(conn, _HEAD_BYTES, fds)
        for level, kind, raw in anc:  # fds ride on a message's first bytes
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fa = array.array("i")
                fa.frombytes(raw[: len(raw) - len(raw) % fa.itemsize])
                fds.extend(fa)
        if not data:
            raise EOFError("peer closed the connection")
        if len(data) < _HEAD_BYTES:
            data += recv_exact(conn, _HEAD_BYTES - len(data), fds)
        return data


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
