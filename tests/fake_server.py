"""A fake device server that answers with hostile replies, for fuzzing the clients (Python and C).

It speaks the wire protocol well enough for a client to get through its whole API (HELLO, ALLOC,
STATS, SUBMIT, WAIT, COMPLETED, RECORD, REPLAY, FREE_LIST, IMPORT, FREE, RING_SETUP and the ring
itself), and breaks it once per connection as that connection's :class:`Plan` says: connection
``i`` (in accept order) follows ``plans[i]``. What a client must do with every plan is the same:
report FFAccelError/ffa error codes (DEVICE_LOST for anything malformed) and never crash, hang
or raise anything else.

Everything is bounded: each connection is served by one thread that stops when the client hangs
up or after :data:`CONN_LIFETIME_S`; a stream of garbage stops after :data:`HUGE_STREAM_BYTES`.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

from ffaccel.abi import SUBMIT
from ffaccel.drivers.ref import RefDriver
from ffaccel.spec import ErrorCode, FFAccelError
from ffaccel.transports.protocol import (
    CQE,
    FENCE_REPLY,
    HANDLE_REPLY,
    LIST_ID,
    MSG,
    NO_INDEX,
    REPLY,
    RING_HEADER,
    SQE_BYTES,
    SQE_HEADER,
    STATS,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
    collect_fds,
    encode_error,
    encode_info,
    ring_bytes,
    ring_words,
)
from ffaccel.transports.server.memory import sealed_memfd

CONN_LIFETIME_S = 20.0
HUGE_STREAM_BYTES = 4 << 20
_HELLO = encode_info(RefDriver().info())

#: Mutations of any reply (applied at request index ``at``), each with whether a client must end up lost.
REPLY_KINDS = {
    "stall": True, "close": True, "truncated": True, "huge": True, "trickle": True, "short_body": True,
    "long_body": True, "bad_status": True, "error_garbage": True, "random_body": False, "reserved": False,
    "extra_fds": False, "extra_bytes": False, "flip": False,
}
#: Mutations of a reply to one message type (the first such request of the connection).
TYPED_KINDS = {
    Msg.HELLO: {"hello_deep": True, "hello_list": True, "hello_kernels": True, "hello_utf8": True},
    Msg.ALLOC: {"alloc_small": True, "alloc_big": True, "memfd_short": True, "memfd_unsealed": True,
                "fd_pipe": True, "fd_file": True, "fd_eventfd": True, "fd_socket": True, "no_fd": True,
                "two_fds": True, "size_huge": True, "size_zero": True, "write_sealed": False},
    Msg.IMPORT: {"import_big": True, "import_fd": False},
    Msg.STATS: {"stats_short": True, "stats_long": False},
    Msg.RECORD: {"record_short": True},
    Msg.RING_SETUP: {"ring_entries": True, "ring_overflow": True, "ring_cq_overflow": True, "ring_overlap": True,
                     "ring_short": True, "ring_unsealed": True, "doorbell_pipe": True, "ring_one_fd": True,
                     "ring_three_fds": True, "ring_body": True, "ring_moved": False, "cqe_user_data": True,
                     "cqe_engine": True, "cqe_status": True, "broken": True, "cq_tail_jump": True,
                     "sq_head_garbage": True, "doorbell_full": False},
}
#: Fence values no server could give, from the first submission's reply on (its SUBMIT reply, or its
#: CQEs and completed words on the ring): a fence value past every submission the connection sent,
#: an accepted fence 0, a completed value past every submission sent; each makes a client lost.
FENCE_KINDS = {"fence_past_sent": True, "fence_zero": True, "completed_past_sent": True}
#: What those replies carry instead: past any count of submissions a test could send.
FENCE_PAST_SENT = 2**63
#: Message types a client's sequence sends over the socket after HELLO (for random ``at`` choices).
SEQUENCE_LENGTH = 12


@dataclass(frozen=True)
class Plan:
    """One connection's mutation: ``kind`` at request index ``at`` or at the first request of ``msg``."""

    kind: str
    at: int | None = None
    msg: int | None = None
    seed: int = 0

    @property
    def must_lose(self) -> bool:
        if self.kind in FENCE_KINDS:
            return FENCE_KINDS[self.kind]
        if self.kind in REPLY_KINDS:
            return REPLY_KINDS[self.kind]
        return next(t[self.kind] for t in TYPED_KINDS.values() if self.kind in t)

    def __str__(self) -> str:
        where = f"@{self.at}" if self.at is not None else f"@{Msg(self.msg).name}" if self.msg else ""
        return f"{self.kind}{where}#{self.seed}"


def plans(transport: str, seeds: int) -> list[Plan]:
    """Every targeted mutation once, then ``seeds`` random ones (deterministic: seeded by their index)."""
    out: list[Plan] = []
    for msg, kinds in TYPED_KINDS.items():
        if msg == Msg.RING_SETUP and transport != "ring":
            continue
        out += [Plan(k, msg=int(msg)) for k in kinds]
    out += [Plan(k, msg=int(Msg.SUBMIT)) for k in FENCE_KINDS]
    generic = sorted(REPLY_KINDS)
    for at in (0, 1, 3):  # HELLO, ALLOC, a fence reply: the generic mutations where they hurt most
        out += [Plan(k, at=at) for k in generic if k not in ("stall", "trickle") or at == 1]
    for seed in range(seeds):
        rng = random.Random(seed)
        out.append(Plan(rng.choice([k for k in generic if k not in ("stall", "trickle")]),
                        at=rng.randrange(SEQUENCE_LENGTH), seed=seed))
    return out


def _memfd(size: int, seal: bool = True) -> int:
    if seal:
        return sealed_memfd("fake", size)
    fd = os.memfd_create("fake-unsealed", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    return fd


def _recv_exact(conn: socket.socket, n: int, fds: list[int]) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data, anc, _f, _a = conn.recvmsg(n - len(buf), socket.CMSG_SPACE(8 * 4))
        collect_fds(anc, fds)
        if not data:
            raise EOFError
        buf += data
    return bytes(buf)


class _Conn:
    """One client's connection, served by one thread as its plan says."""

    def __init__(self, conn: socket.socket, plan: Plan) -> None:
        self.conn, self.plan = conn, plan
        self.rng = random.Random(plan.seed * 7919 + len(plan.kind))
        self.handles = 0
        self.lists = 0
        self.value = 0
        self.hurt = False  # the mutation was applied
        self.must_lose = False  # ... and it is malformed for sure: the client must report DEVICE_LOST
        self.hit_msg: int | None = None  # the message type whose reply was mutated
        self.later: list[int] = []  # fds to shrink after the reply (unsealed memfds)
        self.keep: list[int] = []  # fds to close at the end
        self.ring: dict | None = None
        self.stop = threading.Event()

    # -- replies as a real server would send them --------------------------------------------
    def good(self, msg: int, payload: bytes, fds: list[int]) -> tuple[int, bytes, list[int]]:
        if msg == Msg.HELLO:
            return 0, _HELLO, []
        if msg == Msg.ALLOC:
            (size,) = struct.unpack_from("<Q", payload)
            self.handles += 1
            fd = _memfd(min(size, 1 << 30))
            self.keep.append(fd)
            return 0, HANDLE_REPLY.struct.pack(self.handles, 0, size), [fd]
        if msg in (Msg.FREE, Msg.FREE_LIST):
            return 0, b"", []
        if msg in (Msg.SUBMIT, Msg.REPLAY, Msg.WAIT, Msg.COMPLETED):
            if msg in (Msg.SUBMIT, Msg.REPLAY):
                self.value += 1
            engine = (SUBMIT.struct.unpack_from(payload)[1] if msg == Msg.SUBMIT and len(payload) >= 24
                      else struct.unpack_from("<I", payload, 4 if msg == Msg.REPLAY else 0)[0]) & 1
            return 0, FENCE_REPLY.struct.pack(engine, 0, self.value, self.value, self.value), []
        if msg == Msg.IMPORT:
            size = os.fstat(fds[0]).st_size if fds else 0
            self.handles += 1
            return 0, HANDLE_REPLY.struct.pack(self.handles, 0, size), []
        if msg == Msg.STATS:
            return 0, STATS.struct.pack(1, self.handles, 4096, self.value), []
        if msg == Msg.RECORD:
            self.lists += 1
            return 0, LIST_ID.struct.pack(self.lists, 0), []
        if msg == Msg.ERROR_TEXT:
            return 0, encode_error(FFAccelError(ErrorCode.INVALID_PARAMETER, "fake", "a refused entry")), []
        if msg == Msg.RING_SETUP:
            return self.ring_setup(payload, fds)
        return ErrorCode.INVALID_PARAMETER, encode_error(FFAccelError(ErrorCode.INVALID_PARAMETER, "msg_type",
                                                                      "unknown")), []

    def ring_setup(self, payload: bytes, fds: list[int]) -> tuple[int, bytes, list[int]]:
        (entries,) = struct.unpack_from("<I", payload)
        entries = max(2, min(entries, 4096))
        sq, cq, total = ring_bytes(entries)
        k = self.plan.kind
        fd = _memfd(total // 2 if k == "ring_short" else total, seal=k != "ring_unsealed")
        self.keep.append(fd)
        if k == "ring_unsealed":
            self.later.append(fd)
        import mmap

        mm = mmap.mmap(fd, os.fstat(fd).st_size)
        hdr = dict.fromkeys(RING_HEADER.names, 0)
        hdr.update(entries=entries, sq_offset_bytes=sq, cq_offset_bytes=cq)
        if k == "ring_entries":
            hdr["entries"] = entries * 2
        elif k == "ring_overflow":
            hdr["sq_offset_bytes"] = 2**64 - 64  # sq + entries * SQE wraps to a small number in 64 bits
        elif k == "ring_cq_overflow":
            hdr["cq_offset_bytes"] = 2**64 - 8
        elif k == "ring_overlap":
            hdr["cq_offset_bytes"] = sq + 8
        RING_HEADER.struct.pack_into(mm, 0, *hdr.values())
        doorbell = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.keep.append(doorbell)
        wake = fds[0] if fds else -1
        self.ring = {"mm": mm, "sq": sq, "cq": cq, "entries": entries, "wake": wake, "doorbell": doorbell}
        if k not in ("ring_short", "ring_unsealed"):  # a server would never read those rings itself
            threading.Thread(target=self.serve_ring, daemon=True).start()
        if k == "doorbell_full":
            os.eventfd_write(doorbell, 2**64 - 2)  # a client's next ring of it would block, were it blocking
            RING_HEADER.struct.pack_into(mm, 0, *{**hdr, "server_flags": int(RingServerFlags.SLEEPING)}.values())
        if k == "doorbell_pipe":
            r, w = os.pipe()
            self.keep += [r, w]
            return 0, b"", [fd, w]
        if k == "ring_one_fd":
            return 0, b"", [fd]
        if k == "ring_three_fds":
            return 0, b"", [fd, doorbell, doorbell]
        if k == "ring_body":
            return 0, b"\0" * 8, [fd, doorbell]
        return 0, b"", [fd, doorbell]

    def serve_ring(self) -> None:
        """Complete every chain the client publishes (with the plan's ring mutation on the first one)."""
        r = self.ring
        assert r is not None
        mm, entries, sq, cq = r["mm"], r["entries"], r["sq"], r["cq"]
        w = ring_words(mm)
        head = tail = 0
        chains = 0
        k = self.plan.kind
        end = time.monotonic() + CONN_LIFETIME_S
        try:
            while not self.stop.is_set() and time.monotonic() < end:
                if k == "ring_moved":  # the geometry moves under the client after setup
                    w["sq_offset_bytes"].value = 2**64 - 128
                    w["cq_offset_bytes"].value = 2**63
                if w["sq_tail"].value == head:
                    time.sleep(0.0005)
                    continue
                user_data, engine, flags, *_ = SQE_HEADER.struct.unpack_from(mm, sq + (head % entries) * SQE_BYTES)
                head += 1
                if k == "sq_head_garbage":
                    w["sq_head"].value = (head + 12345) & 0xFFFF_FFFF
                else:
                    w["sq_head"].value = head & 0xFFFF_FFFF
                if flags & SqeFlags.LINK:
                    continue
                chains += 1
                self.value += 1
                status, eng = 0, engine & 1
                if chains == 1 and k == "cqe_user_data":
                    user_data ^= 0x5A5A
                if chains == 1 and k == "cqe_engine":
                    eng = 7
                if chains == 1 and k == "cqe_status":
                    status = 99
                value = {"fence_past_sent": FENCE_PAST_SENT, "fence_zero": 0}.get(k, self.value)
                if k in FENCE_KINDS:
                    self.hurt = self.must_lose = True
                CQE.struct.pack_into(mm, cq + (tail % entries) * CQE.size_bytes, user_data, status, eng, value,
                                     NO_INDEX, 0, 0)
                tail += 1
                w["completed_compute"].value = w["completed_copy"].value = (
                    FENCE_PAST_SENT if k == "completed_past_sent" else self.value)
                if chains == 1 and k == "broken":
                    w["error"].value = 99
                    w["server_flags"].value = RingServerFlags.BROKEN
                w["cq_tail"].value = (tail + (1000 if chains == 1 and k == "cq_tail_jump" else 0)) & 0xFFFF_FFFF
                if w["client_flags"].value & RingClientFlags.WAITING and r["wake"] >= 0:
                    try:
                        os.eventfd_write(r["wake"], 1)
                    except OSError:
                        pass
        except (ValueError, OSError, IndexError):  # the mapping went away with the connection
            pass

    # -- the connection ------------------------------------------------------------------------
    def run(self) -> None:
        conn = self.conn
        conn.settimeout(CONN_LIFETIME_S)
        index = 0
        try:
            while True:
                fds: list[int] = []
                head = _recv_exact(conn, MSG.size_bytes, fds)
                msg, _res, n = MSG.struct.unpack(head)
                payload = _recv_exact(conn, n, fds) if n else b""
                for fd in self.later:  # an unsealed memfd shrinks once the client holds it
                    os.ftruncate(fd, 0)
                self.later.clear()
                status, body, out_fds = self.good(msg, payload, fds)
                hit = not self.hurt and (self.plan.at == index or (self.plan.msg == msg))
                index += 1
                if hit:
                    self.hurt = True
                    self.hit_msg = msg
                    # appended counters are an allowed extension of STATS, not a malformed reply
                    self.must_lose = self.plan.must_lose and not (self.plan.kind == "long_body" and msg == Msg.STATS)
                    if not self.mutate(msg, status, body, out_fds, payload, fds):
                        return
                else:
                    self.send(status, body, out_fds)
                for fd in fds:
                    os.close(fd)
        except (EOFError, OSError, struct.error):
            return
        finally:
            self.stop.set()
            conn.close()
            for fd in set(self.keep):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def send(self, status: int, body: bytes, fds: list[int], length: int | None = None) -> None:
        data = REPLY.struct.pack(status, 0, len(body) if length is None else length) + body
        if fds:
            self.conn.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.conn.sendall(data)

    def mutate(self, msg: int, status: int, body: bytes, fds: list[int], payload: bytes, got: list[int]) -> bool:
        """Send the plan's hostile reply; False ends the connection."""
        k, rng = self.plan.kind, self.rng
        if k == "stall":
            self.conn.settimeout(CONN_LIFETIME_S)
            self.conn.recv(1)  # until the client gives up and hangs up
            return False
        if k == "close":
            return False
        if k == "truncated":
            data = REPLY.struct.pack(status, 0, len(body) + 64) + body
            self.conn.sendall(data[: max(1, len(data) // 2)])
            return False
        if k == "huge":
            self.conn.settimeout(1.0)
            self.conn.sendall(REPLY.struct.pack(status, 0, 1 << 40))
            chunk = bytes(1 << 16)
            for _ in range(HUGE_STREAM_BYTES // len(chunk)):
                self.conn.sendall(chunk)  # a client that stopped reading makes this time out (OSError)
            return False
        if k == "trickle":
            data = REPLY.struct.pack(status, 0, len(body)) + body
            for i in range(len(data)):
                self.conn.sendall(data[i: i + 1])
                time.sleep(0.05)
            return True
        if k == "short_body":
            if body:
                self.send(status, body[:-1], fds, len(body) - 1)
            else:  # no payload to shorten: a stray byte past the reply, in the same write
                self.send(status, b"\x01", fds, 0)
            return True
        if k == "long_body":
            self.send(status, body + b"\xa5" * 8, fds)
            return True
        if k == "bad_status":
            self.send(77, body, fds)
            return True
        if k == "error_garbage":
            self.send(int(ErrorCode.INVALID_PARAMETER), struct.pack("<4I", 0, 2**31, 2**31, 2**31) + b"xy", fds)
            return True
        if k == "random_body":
            self.send(status, bytes(rng.randrange(256) for _ in body), fds)
            return True
        if k == "flip":
            b = bytearray(body)
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            self.send(status, bytes(b), fds)
            return True
        if k == "reserved":
            b = bytearray(body)
            if len(b) >= 8 and msg != Msg.HELLO:
                b[4] = 1  # the reserved word of every fixed reply with one (handle, fence, list id)
            self.send(status, bytes(b), fds)
            return True
        if k == "extra_fds":
            ev = os.eventfd(0, os.EFD_CLOEXEC)
            self.keep.append(ev)
            self.send(status, body, [*fds, ev])
            return True
        if k == "extra_bytes":
            self.conn.sendall(REPLY.struct.pack(status, 0, len(body)) + body + b"\x07" * 8)
            return True
        # -- typed ------------------------------------------------------------------------------
        if k == "hello_deep":
            self.send(0, b"[" * 60000 + b"]" * 60000, [])  # longer than a client reads: refused by its length
            return True
        if k == "hello_list":
            self.send(0, b"[" * 20000 + b"]" * 20000, [])  # nested deeper than a JSON parser recurses
            return True
        if k == "hello_kernels":
            self.send(0, _HELLO.replace(b'"kernels":[', b'"kernels":[[],'), [])
            return True
        if k == "hello_utf8":
            self.send(0, b"\xff\xfe" + _HELLO, [])
            return True
        if msg == Msg.ALLOC:
            return self.mutate_alloc(k, body, fds, payload)
        if k == "import_big":
            h, _r, size = HANDLE_REPLY.struct.unpack(body)
            self.send(0, HANDLE_REPLY.struct.pack(h, 0, size + (1 << 20)), [])
            return True
        if k == "import_fd":
            self.send(0, body, [])
            return True
        if k == "stats_short":
            self.send(0, body[:-8], [])
            return True
        if k == "stats_long":
            self.send(0, body + bytes(16), [])  # counters appended by a newer server: read the known ones
            return True
        if k == "record_short":
            self.send(0, body[:4], [])
            return True
        if k in FENCE_KINDS and msg == Msg.SUBMIT:
            engine, res, value, c0, c1 = FENCE_REPLY.struct.unpack(body)
            if k == "completed_past_sent":
                c0 = c1 = FENCE_PAST_SENT
            else:
                value = FENCE_PAST_SENT if k == "fence_past_sent" else 0
            self.send(0, FENCE_REPLY.struct.pack(engine, res, value, c0, c1), [])
            return True
        self.send(status, body, fds)  # ring mutations act in the ring itself
        return True

    def mutate_alloc(self, k: str, body: bytes, fds: list[int], payload: bytes) -> bool:
        handle, _r, size = HANDLE_REPLY.struct.unpack(body)
        reply = HANDLE_REPLY.struct.pack
        if k == "alloc_small":
            fd = _memfd(size - 1)
            self.keep.append(fd)
            self.send(0, reply(handle, 0, size - 1), [fd])
        elif k == "alloc_big":
            fd = _memfd(size + 4096)
            self.keep.append(fd)
            self.send(0, reply(handle, 0, size + 4096), [fd])
        elif k == "memfd_short":
            fd = _memfd(size // 2)
            self.keep.append(fd)
            self.send(0, body, [fd])
        elif k == "memfd_unsealed":
            fd = _memfd(size, seal=False)
            self.keep.append(fd)
            self.later.append(fd)
            self.send(0, body, [fd])
        elif k == "fd_pipe":
            r, w = os.pipe()
            self.keep += [r, w]
            self.send(0, body, [r])
        elif k == "fd_file":
            f = tempfile.TemporaryFile()
            os.ftruncate(f.fileno(), size)
            fd = os.dup(f.fileno())
            f.close()
            self.keep.append(fd)
            self.send(0, body, [fd])
        elif k == "fd_eventfd":
            fd = os.eventfd(0, os.EFD_CLOEXEC)
            self.keep.append(fd)
            self.send(0, body, [fd])
        elif k == "fd_socket":
            a, b = socket.socketpair()
            self.keep += [a.detach(), b.detach()]
            self.send(0, body, [self.keep[-2]])
        elif k == "no_fd":
            self.send(0, body, [])
        elif k == "two_fds":
            self.send(0, body, [*fds, *fds])
        elif k == "size_huge":
            self.send(0, reply(handle, 0, 1 << 62), fds)
        elif k == "size_zero":
            self.send(0, reply(handle, 0, 0), fds)
        elif k == "write_sealed":
            fd = os.memfd_create("fake-ro", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
            self.keep.append(fd)
            self.send(0, body, [fd])
        else:
            self.send(0, body, fds)
        return True


#: Mutations of the HELLO payload that only a client reading the device's info (JSON) can notice: the
#: framing stays whole. The C client reads no info (only the reply's status), so they are no loss to it.
HELLO_CONTENT_KINDS = frozenset({"short_body", "long_body", "random_body", "flip", "hello_list", "hello_kernels",
                                 "hello_utf8"})


class FakeServer:
    """Listens on ``path``; connection ``i`` is served as ``plans[i]`` says (well-formed past the list)."""

    def __init__(self, path: str, plan_list: list[Plan], start: bool = True) -> None:
        self.path = path
        self.plans = plan_list
        self.lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lst.bind(path)
        self.lst.listen(8)
        self.lst.settimeout(0.2)
        self.served = 0
        self.conns: list[_Conn] = []  # in accept order: conns[i].must_lose says what client i had to report
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        """Start serving (the socket listens from construction on: a client may connect before)."""
        self._accept.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.lst.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            plan = self.plans[self.served] if self.served < len(self.plans) else Plan("none")
            self.served += 1
            c = _Conn(conn, plan)
            self.conns.append(c)
            t = threading.Thread(target=c.run, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        if self._accept.is_alive():
            self._accept.join(5)
        self.lst.close()
        for t in self._threads:
            t.join(CONN_LIFETIME_S)


REPLY_KINDS["none"] = False
