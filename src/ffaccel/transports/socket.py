"""Client side of the socket path: one request and one reply per call (the ``ioctl`` model).

Buffers are memfds the server creates and passes with SCM_RIGHTS; this side maps them, so
``Buffer.array()`` is the very memory the driver computes in (zero copy). What crosses the
socket is ABI bytes (submissions) and small fixed-size replies.

The host-array path of the front-ends (``matmul`` on NumPy arrays, ``blas.gemm``) cannot
hand the server a pointer into this process: :meth:`SocketTransport.prepare_gemm` keeps one
shared staging buffer per GEMM geometry and **copies** inputs in and D out around each
call. Zero copy means working with Buffers.

A server that dies (or stops answering within ``timeout_s``) turns every call into
FFAccelError DEVICE_LOST; nothing blocks longer than its timeout.

Nothing the server sends is trusted (docs/spec.md, "Clients trust no reply"): a reply is read
into this process's memory once, its length capped (:data:`MAX_REPLY_PAYLOAD_BYTES`) from its
header and its deadline enforced while bytes still trickle in; each fixed-size reply must have
its layout's exact size and zero reserved fields; a memfd is mapped only once ``fstat`` and its
seals (``F_SEAL_SHRINK``) show the mapping cannot fault. Anything else makes the connection
lost: FFAccelError DEVICE_LOST, never another exception, a crash or a hang.

After sending a request the client busy-polls the (non-blocking) socket for up to
``poll_us`` before sleeping in poll(2): a small request is answered within tens of
microseconds, about what waking a blocked process costs on its own.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import numbers
import os
import array
import select
import socket
import stat
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..abi import (
    ABI_VERSION,
    Gemm,
    GemmOp,
    LruCache,
    Matrix,
    PostOpDesc,
    check_command,
    encode_submission,
)
from ..drivers import DriverInfo, GemmKernel
from ..drivers.connect import CONNECT_TIMEOUT_ENV, MAX_WAIT_S, connect_wait_s, retry_until_ready
from ..spec import DTYPES, Engine, ErrorCode, FFAccelError, violation
from .protocol import (
    MAX_FDS,
    MAX_REPLY_PAYLOAD_BYTES,
    MAX_USAGE_BYTES,
    FENCE_REPLY,
    LIST_ID,
    HANDLE_REPLY,
    HELLO,
    MSG,
    REPLAY_REQ,
    REPLY,
    STATS,
    WAIT_REQ,
    WIRE_VERSION,
    Msg,
    close_fds,
    collect_fds,
    decode_error,
    decode_info,
    decode_usage,
    memfd_problem,
)
from ..abi.layout import Layout
from .paths import check_peer, check_private_dir, is_default_path
from .spin import SpinBudget, step_aside

_U32x2 = struct.Struct("<II")
_U64 = struct.Struct("<Q")
_MSG = MSG.struct
_SUBMIT_MSG = int(Msg.SUBMIT)
_REPLY = REPLY.struct
_FENCE = FENCE_REPLY.struct
_REPLY_BYTES = _REPLY.size
#: Most bytes one read takes (replies are small; a longer one takes several reads).
_RECV_BYTES = 1 << 16
_ENGINE_OF = {int(e): e for e in Engine}
_COMPUTE, _COPY = Engine.COMPUTE, Engine.COPY
_CMSG_FDS = socket.CMSG_SPACE(MAX_FDS * 4)
_POLLIN = select.POLLIN | select.POLLERR | select.POLLHUP
_POLLOUT = select.POLLOUT | select.POLLERR | select.POLLHUP
_now_ns = time.monotonic_ns
#: Default busy-poll budget of a call (microseconds) before it sleeps waiting for the reply.
DEFAULT_POLL_US = 200
#: Largest poll_us accepted (one second).
MAX_POLL_US = 1_000_000


def device_lost(why: str) -> FFAccelError:
    return FFAccelError(ErrorCode.DEVICE_LOST, "device", f"the device server is gone or not answering: {why}")


class BadReply(Exception):
    """A reply that breaks the wire protocol (too long, more bytes than announced); the device is lost."""



def _refuse_non_socket(path: str) -> None:
    """Raise INVALID_PARAMETER when ``path`` exists and is not a socket (connect(2) answers a
    regular file or a folder with ECONNREFUSED, "nobody listening yet", which a wait would retry
    to its end)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISSOCK(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "not a socket"
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "name",
                           f"unix:{path}: {path!r} is {kind}, not a socket; allowed the socket of an ffaccel serve")

class SocketTransport:
    """One client connection to an ``ffaccel serve`` process.

    Parameters
    ----------
    path : str
        The server's Unix socket.
    timeout_s : float
        Longest any call waits for the server (fence waits: their own timeout plus this).
    poll_us : int
        How long a call busy-polls for the reply before sleeping (0: sleep at once).
    wait_s : float, optional
        How long to wait for a server that is starting: no socket yet, or nobody listening yet
        (default ``$FFACCEL_CONNECT_TIMEOUT``, else 0; see :mod:`ffaccel.drivers.connect`).
    """

    kind = "socket"

    def __init__(self, path: str, timeout_s: float = 30.0, poll_us: int = DEFAULT_POLL_US,
                 wait_s: float | None = None) -> None:
        if isinstance(poll_us, bool) or not isinstance(poll_us, numbers.Integral) or not 0 <= poll_us <= MAX_POLL_US:
            raise violation("device.name", f"poll_us={poll_us!r}", f"poll_us an integer in [0, {MAX_POLL_US}]")
        # 0 timed every call out at once; a negative, NaN or infinite one was a ValueError or an
        # OverflowError where it was turned into a socket timeout or nanoseconds ("internal error")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real) \
                or not 0 < timeout_s <= MAX_WAIT_S:
            raise violation("device.name", f"timeout_s={timeout_s!r}",
                            f"timeout_s a number of seconds in (0, {MAX_WAIT_S:g}]")
        self.path = path
        self.timeout_s = float(timeout_s)
        self._timeout_ns = int(self.timeout_s * 1e9)
        self._prev_request: tuple[bytes, bytes] | None = None  # the last SUBMIT: (its payload, the framed request)
        self.poll_ns = int(poll_us) * 1000
        self._spin = SpinBudget(int(poll_us), step_aside)  # adaptive: backs off at once on an oversubscribed machine
        self._lock = threading.Lock()
        self._lost: FFAccelError | None = None
        self._closed = False
        self._fds: dict[int, int] = {}  # handle -> our memfd (kept for export)
        self._completed = {e: 0 for e in Engine}
        #: Submissions this connection has sent (SUBMIT, REPLAY, ring chains), counted before each
        #: goes out: every fence value the server hands out, and every completed value it reports,
        #: is at most this (it numbers each engine's accepted submissions 1, 2, ...), so a reply
        #: past it is malformed, never trusted (a Fence.wait would return before the work ran).
        self._sent = 0
        wait = connect_wait_s(wait_s)
        try:
            # a server that is still starting (no socket file yet, or not listening yet) is waited
            # for up to ``wait`` seconds (drivers.connect); anything else fails at once
            self._sock = retry_until_ready(lambda: self._connect(path), wait)
        except OSError as e:
            waited = f" within wait_s={wait:g} s" if wait else " (ffaccel.open(..., wait_s=S) or " \
                f"{CONNECT_TIMEOUT_ENV}=S waits for a server that is starting)"
            raise device_lost(f"cannot connect to {path!r} ({e.strerror or e}){waited}") from None
        try:
            check_peer(self._sock, path)
        except FFAccelError:
            self._sock.close()
            raise
        self._sock.setblocking(False)  # every call polls (bounded) and then sleeps in poll(2) itself
        self._poll = select.poll()
        self._poll.register(self._sock, _POLLIN)
        try:
            body, _ = self._call(Msg.HELLO, HELLO.struct.pack(WIRE_VERSION, ABI_VERSION))
            self._info: DriverInfo = decode_info(body)  # JSON, checked: nothing on the wire is unpickled
        except FFAccelError:
            self._closed = True
            self._sock.close()
            raise

    def _connect(self, path: str) -> socket.socket:
        """One connection attempt: a new socket, connected (a full listen backlog, EAGAIN, is
        retried until the timeout: a burst of connections), or the OSError that stopped it."""
        if is_default_path(path):
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.lexists(folder):  # the server creates it: not there yet
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), folder)
            check_private_dir(folder)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            retry_until_ready(lambda: sock.connect(path), self.timeout_s, (BlockingIOError,))
        except ConnectionRefusedError:
            sock.close()
            _refuse_non_socket(path)  # a file or folder never becomes a server: not waited for
            raise
        except BaseException:
            sock.close()
            raise
        return sock

    # -- framing ----------------------------------------------------------------------------
    def _call(self, msg: Msg, payload: bytes = b"", fds: Sequence[int] = (), want_fds: bool = False,
              timeout_s: float | None = None, reply_cap: int = MAX_REPLY_PAYLOAD_BYTES) -> tuple[bytes, list[int]]:
        return self._exchange(_MSG.pack(int(msg), 0, len(payload)) + payload, fds, want_fds, timeout_s, reply_cap)

    def _exchange(self, request: bytes, fds: Sequence[int] = (), want_fds: bool = False,
                  timeout_s: float | None = None, reply_cap: int = MAX_REPLY_PAYLOAD_BYTES,
                  submission: bool = False) -> tuple[bytes, list[int]]:
        """Send one framed request (header and payload) and read its reply: (body, fds received).

        ``submission``: the request is a SUBMIT or a REPLAY (counted in ``_sent`` under the lock,
        before it goes out, so a reply is never checked against a count that lacks it).
        """
        lock = self._lock
        lock.acquire()  # not `with`: once per request, and acquire/release cost half as much
        try:
            if self._lost is not None:
                raise self._lost
            if self._closed:
                raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
            if submission:
                self._sent += 1
            got: list[int] = []
            try:
                deadline = _now_ns() + (self._timeout_ns if timeout_s is None else int(timeout_s * 1e9))
                self._send(request, fds, deadline)
                status, body = self._recv_reply(deadline, got if want_fds else None, reply_cap)
            except (OSError, EOFError, BadReply) as e:  # OSError includes socket.timeout
                close_fds(got)
                raise self._give_up(device_lost(f"{type(e).__name__}: {e}")) from None
            except BaseException as e:  # Ctrl-C (or SIGTERM's exception) between request and reply
                close_fds(got)
                self._interrupted(e)
                raise
        finally:
            lock.release()
        if status:
            close_fds(got)
            raise decode_error(status, body)
        return body, got

    def _interrupted(self, exc: BaseException) -> None:
        """A call was interrupted with its reply unread (or its request half sent): the next reply
        read would be this one's, so the connection is given up, saying why (it read the stale
        reply as "malformed" and blamed the server). The server releases what it held."""
        self._give_up(FFAccelError(ErrorCode.DEVICE_LOST, "device", f"a call on this connection was interrupted "
                                   f"({type(exc).__name__}) between its request and its reply, so the replies no "
                                   "longer match the requests; the server is fine: open the device again"))
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def _malformed(self, why: str) -> FFAccelError:
        """The server broke the protocol: the connection is lost from now on (raise what this returns)."""
        return self._give_up(device_lost(f"malformed reply: {why}"))

    #: Called once when the connection is given up (the runtime's cache of devices opened by name
    #: forgets this one, so that the next call by that name connects again); None: nobody asked.
    on_lost: Callable[[], None] | None = None

    def _give_up(self, err: FFAccelError) -> FFAccelError:
        """The connection is lost from now on, with ``err`` for every later call (returned, to raise)."""
        self._lost = err
        hook, self.on_lost = self.on_lost, None
        if hook is not None:
            with contextlib.suppress(Exception):  # never hide why the connection was lost
                hook()
        return err

    def _fields(self, layout: Layout, body: bytes, prefix: bool = False) -> tuple[int, ...]:
        """A fixed-size reply's fields: exactly ``layout``'s size (at least, with ``prefix``), reserved fields zero."""
        n = layout.size_bytes
        if len(body) != n and not (prefix and len(body) > n):
            raise self._malformed(f"{layout.name} of {len(body)} bytes; allowed: {n}")
        values = layout.struct.unpack_from(body)
        for name, v in zip(layout.names, values):
            if v and name in layout.reserved_names:
                raise self._malformed(f"{layout.name}.{name} = {v}; allowed: 0")
        return values

    def _empty(self, body: bytes, what: str) -> None:
        if body:
            raise self._malformed(f"{len(body)} bytes in the reply to {what}; allowed: none")

    def _wait_ready(self, events: int, deadline: int) -> None:
        """Sleep until the socket is ready for ``events`` (TimeoutError past ``deadline``)."""
        p = self._poll
        p.modify(self._sock, events)
        try:
            while True:
                left = deadline - _now_ns()
                if left <= 0:
                    raise TimeoutError("timed out")
                if p.poll(-(-left // 1_000_000)):
                    return
        finally:
            if events != _POLLIN:
                p.modify(self._sock, _POLLIN)

    def _send(self, data: bytes, fds: Sequence[int], deadline: int) -> None:
        sock = self._sock
        if not fds:
            try:
                sent = sock.send(data)  # a request fits the socket buffer: one system call
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return
        else:
            sent = 0
        view = memoryview(data)
        while sent < len(data):
            try:
                if fds and not sent:  # fds ride on the message's first bytes
                    sent = sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    sent += sock.send(view[sent:])
            except BlockingIOError:
                self._wait_ready(_POLLOUT, deadline)

    def _recv_reply(self, deadline: int, fds: list[int] | None = None,
                    cap: int = MAX_REPLY_PAYLOAD_BYTES) -> tuple[int, bytes]:
        """Read one reply (header + body): busy-poll (adaptively, up to ``poll_us``), then sleep in poll(2).

        Only one request is ever outstanding on the connection (calls hold the lock), so a
        read can take whatever is there: it is all this reply, usually in one system call.
        ``fds`` collects file descriptors a reply carries (ALLOC, RING_SETUP); None: none expected.
        """
        sock = self._sock
        recv = sock.recv
        spin = self._spin
        spinning = spin.start()
        if not spinning:  # backed off: sleep in poll(2) at once (a failed read costs a system call)
            self._wait_ready(_POLLIN, deadline)
        else:
            # spin on poll(2) with a zero timeout and read once something is there: a failed
            # non-blocking read raises BlockingIOError, and building that exception made each poll
            # cost 2.8 µs against 0.9 (Python 3.11, AMD EPYC VM): the reply was noticed later
            ready = self._poll.poll
            while not ready(0):
                if not spin.keep_spinning():
                    spinning = False
                    self._wait_ready(_POLLIN, deadline)
                    break
        buf: bytes | bytearray = b""
        want = -1  # bytes of the whole reply, once its header is in
        status = 0  # the header's, once it is in
        while True:
            try:
                if fds is None:
                    data = recv(_RECV_BYTES)  # fds sent with it anyway are closed by the kernel
                else:
                    data, anc, flags, _ = sock.recvmsg(_RECV_BYTES, _CMSG_FDS, socket.MSG_CMSG_CLOEXEC)
                    collect_fds(anc, fds)
                    if flags & socket.MSG_CTRUNC:  # more fds than any reply carries (the kernel closed the rest)
                        raise BadReply(f"more than {MAX_FDS} file descriptors with a reply")
            except BlockingIOError:
                if spinning and spin.keep_spinning():
                    continue
                spinning = False
                self._wait_ready(_POLLIN, deadline)
                continue
            if spinning:
                spin.paid()
                spinning = False
            elif not buf:
                spin.found_after_sleep()
            if not data:
                raise EOFError("peer closed the connection")
            if not buf:
                buf = data  # the usual case: the whole reply in one read, no copy
            else:
                if type(buf) is bytes:
                    buf = bytearray(buf)
                buf += data  # type: ignore[operator]  # appended in place: never quadratic
            have = len(buf)
            if want < 0 and have >= _REPLY_BYTES:  # the header is in: it stays as read (one unpack)
                status, _res, length = _REPLY.unpack_from(buf)
                if length > cap:
                    raise BadReply(f"a reply of {length} bytes; allowed: at most {cap}")
                want = _REPLY_BYTES + length
            if 0 <= want <= have:
                if have > want:
                    raise BadReply(f"{have - want} bytes more than the reply announced")
                body = buf[_REPLY_BYTES:]  # bytes from bytes (the usual one read), else copied to bytes
                return status, body if type(body) is bytes else bytes(body)
            if _now_ns() > deadline:  # a server that keeps trickling bytes is held to the deadline too
                raise TimeoutError("timed out reading a reply")

    # -- queries ------------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        return self._info

    def stats(self) -> dict[str, int]:
        """Server-wide counters: clients, buffers, bytes charged to quotas, submissions."""
        body, _ = self._call(Msg.STATS)
        # a newer server may append counters (extension only at the end): this client reads those it knows
        return dict(zip(STATS.names, self._fields(STATS, body, prefix=True)))

    def usage(self) -> dict:
        """What the server did since it started: totals and one row per client (a USAGE request;
        :mod:`ffaccel.transports.usage`); ``client_id`` is this connection's row."""
        body, _ = self._call(Msg.USAGE, reply_cap=MAX_USAGE_BYTES)  # one row per client: longer than the rest
        return decode_usage(body)

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]:
        if isinstance(size_bytes, bool) or not isinstance(size_bytes, numbers.Integral) or not 0 < size_bytes < 2**64:
            # not representable in the u64 the wire carries; the server checks the range
            raise violation("memory.size", size_bytes, "an integer in [1, max_buffer_bytes]")
        body, fds = self._call(Msg.ALLOC, _U64.pack(int(size_bytes)), want_fds=True)
        return self._map(body, fds, int(size_bytes))

    def _map(self, body: bytes, fds: list[int], size_bytes: int | None) -> tuple[int, np.ndarray]:
        """Map the buffer a handle reply names; ``size_bytes``: the size asked (ALLOC), None for IMPORT."""
        try:
            handle, _res, size = self._fields(HANDLE_REPLY, body)
            if len(fds) != 1:
                raise self._malformed(f"{len(fds)} fds with a buffer; allowed: 1")
            if size_bytes is not None and size != size_bytes:
                raise self._malformed(f"a buffer of {size} bytes where {size_bytes} were asked")
            if handle in self._fds:
                raise self._malformed(f"handle {handle} given twice")
            why = memfd_problem(fds[0], size)
            if why is not None or size == 0:
                raise self._malformed(f"buffer {handle}: {why or 'an empty buffer'}")
            try:
                mm = mmap.mmap(fds[0], size)
            except (OSError, ValueError, OverflowError) as e:  # sealed against writes, past the address space
                raise self._malformed(f"buffer {handle} of {size} bytes cannot be mapped ({e})") from None
        except FFAccelError:
            close_fds(fds)
            raise
        self._fds[handle] = fds[0]
        return handle, np.frombuffer(mm, np.uint8)

    def free(self, handle: int) -> None:
        if isinstance(handle, bool) or not isinstance(handle, numbers.Integral) or not 0 <= handle < 2**32:
            raise violation("memory.handle", handle, "a handle of this client")
        body, _ = self._call(Msg.FREE, _U32x2.pack(int(handle), 0))
        self._empty(body, "FREE")
        fd = self._fds.pop(int(handle), None)
        if fd is not None:
            os.close(fd)

    def export_fd(self, handle: int) -> int:
        """A new file descriptor for a buffer (dma-buf style): pass it to another process to import."""
        fd = self._fds.get(handle)
        if fd is None:
            raise violation("memory.handle", handle, f"one of {sorted(self._fds)}")
        return os.dup(fd)

    def import_fd(self, fd: int) -> tuple[int, np.ndarray]:
        """Add a buffer exported by another client of the same server to this client's table."""
        if isinstance(fd, bool) or not isinstance(fd, numbers.Integral) or fd < 0:
            raise violation("wire.import", fd, "an open file descriptor")
        body, _ = self._call(Msg.IMPORT, b"", fds=[int(fd)])
        try:
            own = os.dup(fd)
        except OSError as e:  # the caller closed it meanwhile
            raise violation("wire.import", fd, f"an open file descriptor ({e.strerror})") from None
        return self._map(body, [own], None)

    # -- work -------------------------------------------------------------------------------------
    def _note(self, body: bytes, accepted: bool = False) -> tuple[Engine, int]:
        """A fence reply's (engine, value), its completed values noted; ``accepted``: the reply to a
        SUBMIT or REPLAY, whose value is the new fence (1 or more, within ``_sent``)."""
        if len(body) != _FENCE.size:
            raise self._malformed(f"a fence reply of {len(body)} bytes; allowed: {_FENCE.size}")
        engine, res, value, c0, c1 = _FENCE.unpack(body)
        eng = _ENGINE_OF.get(engine)
        if res or eng is None:
            raise self._malformed(f"a fence reply with engine {engine}, reserved {res}")
        sent = self._sent
        if c0 > sent or c1 > sent or (accepted and not 0 < value <= sent):
            raise self._malformed(f"a fence reply with value {value}, completed {c0} (compute) and {c1} "
                                  f"(copy); allowed: at most the {sent} submissions sent"
                                  + (", a new fence at least 1" if accepted else ""))
        done = self._completed
        if c0 > done[_COMPUTE]:
            done[_COMPUTE] = c0
        if c1 > done[_COPY]:
            done[_COPY] = c1
        return eng, value

    def submit(self, raw: bytes) -> tuple[Engine, int]:
        prev = self._prev_request
        if prev is not None and prev[0] is raw:  # the same bytes object again (immutable): framed already
            request = prev[1]
        else:
            payload = raw if type(raw) is bytes else bytes(raw)
            request = _MSG.pack(_SUBMIT_MSG, 0, len(payload)) + payload
            self._prev_request = (raw, request) if type(raw) is bytes else None
        body, _ = self._exchange(request, submission=True)
        return self._note(body, True)

    def signalled(self, engine: Engine, value: int) -> bool:
        """Whether an earlier reply already showed ``value`` complete (no system call)."""
        return self._completed[engine] >= value

    def completed(self, engine: Engine) -> int:
        body, _ = self._call(Msg.COMPLETED, _U32x2.pack(int(engine), 0))
        self._note(body)
        return self._completed[engine]

    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None:
        if self._completed[engine] >= value:  # known signalled from an earlier reply
            return
        t = 0 if timeout_ns is None else max(0, int(timeout_ns))
        body, _ = self._call(Msg.WAIT, WAIT_REQ.struct.pack(int(engine), 0, int(value), t),
                             timeout_s=t / 1e9 + self.timeout_s)
        self._note(body)

    # -- command lists ----------------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        body, _ = self._call(Msg.RECORD, bytes(raw))
        return self._fields(LIST_ID, body)[0]

    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]:
        w = {Engine.COMPUTE: 0, Engine.COPY: 0}
        for e, v in waits:
            w[e] = max(w[e], v)
        payload = REPLAY_REQ.struct.pack(list_id, int(engine), w[Engine.COMPUTE], w[Engine.COPY])
        body, _ = self._exchange(_MSG.pack(int(Msg.REPLAY), 0, len(payload)) + payload, submission=True)
        return self._note(body, True)

    def free_list(self, list_id: int) -> None:
        body, _ = self._call(Msg.FREE_LIST, _U32x2.pack(list_id, 0))
        self._empty(body, "FREE_LIST")

    # -- the host-array path ---------------------------------------------------------------------
    def prepare_gemm(self, descriptor: bytes) -> GemmKernel:
        """A kernel for one GEMM geometry that stages host arrays through a shared buffer.

        The descriptor's geometry is decoded by the abi's own check; the server validates
        the staged command again on every submission (it trusts nothing from here).
        Inputs are copied in, the GEMM runs in the server, D is copied out.
        """
        op = check_command(descriptor, self._info.caps)
        if not isinstance(op, GemmOp):
            raise violation("cmd.opcode", "COPY", "GEMM")
        return _StagedGemm(self, op).kernel  # its server buffer comes from staging_pool(self), bounded

    @property
    def host_visible(self) -> bool:
        return True

    def thread_pool(self) -> str:
        """``"remote"``: the server's threads are another process's, shared with nobody here."""
        return "remote"

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sock.close()
            except OSError:
                pass
            for fd in self._fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds.clear()


    def __del__(self) -> None:
        # a Device dropped without close(): hang up quietly (the server frees what it held)
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


#: Staging buffers one client keeps for the host-array path, one per recently used GEMM geometry
#: (see :class:`_StagedGemm`); past either bound the least recently used one is freed on the
#: server at once. Buffers of a running call are freed when the call ends.
STAGING_MAX_ENTRIES = 32
STAGING_MAX_BYTES = 256 << 20
_POOL_LOCK = threading.Lock()


def staging_pool(t: SocketTransport) -> LruCache["_StagedGemm", "_Staging"]:
    """The transport's pool of staging buffers (made on first use): an LruCache by count and bytes."""
    pool = getattr(t, "_staging", None)
    if pool is None:
        with _POOL_LOCK:
            pool = getattr(t, "_staging", None)
            if pool is None:
                pool = LruCache(STAGING_MAX_ENTRIES, STAGING_MAX_BYTES, on_evict=_evict_staging)
                t._staging = pool  # type: ignore[attr-defined]
    return pool


class _Staging(NamedTuple):
    """A staging buffer on the server, its regions as arrays, and the submission that computes in it."""

    handle: int
    av: np.ndarray
    bv: np.ndarray
    cv: np.ndarray | None
    dv: np.ndarray
    ev: list[np.ndarray | None]
    raw: bytes


class _StagedGemm:
    """One geometry's staging layout and kernel; its server buffer is taken from the transport's pool.

    The buffer is allocated on a call that finds none, and put in the pool (bounded by count and
    bytes, least recently used first: :data:`STAGING_MAX_ENTRIES`, :data:`STAGING_MAX_BYTES`).
    An evicted buffer is freed on the server at once, or, while a call of this geometry is
    using it, when that call ends; the next call allocates a new one. So a program that meets
    endless shapes holds a bounded number of server buffers, however many kernels the device
    and the front-ends keep.
    """

    def __init__(self, transport: SocketTransport, op: GemmOp) -> None:
        self._t = weakref.ref(transport)  # the pool (in the transport) holds this object: no cycle
        self.lock = threading.Lock()  # one call at a time uses the staging buffer
        self._mu = threading.Lock()  # guards busy / evicted / staging against eviction from other threads
        self.busy = False
        self.evicted = False
        self.staging: _Staging | None = None
        self.op = op
        batch = op.batch
        pos = 0
        regions: list[tuple[int, tuple[int, int, int], np.dtype]] = []

        def region(dtype: object, rows: int, cols: int, broadcast: bool) -> int:
            nonlocal pos
            nb = 1 if broadcast else batch
            start = pos
            regions.append((start, (nb, rows, cols), np.dtype(DTYPES[dtype].numpy)))  # type: ignore[index]
            pos = -(-(start + nb * rows * cols * DTYPES[dtype].itemsize_bytes) // 64) * 64  # type: ignore[index]
            return start

        m, n, k = op.m, op.n, op.k
        self.a_off = region(op.a.dtype, m, k, op.a.batch_stride == 0)
        self.b_off = region(op.b.dtype, k, n, op.b.batch_stride == 0)
        self.c_off = region(op.c.dtype, m, n, op.c.batch_stride == 0) if op.c is not None else None
        self.d_off = region(op.d.dtype, m, n, False)
        self.epi_offs: list[int | None] = []
        for p in op.epilogue:
            if p.operand is None:
                self.epi_offs.append(None)
            else:
                self.epi_offs.append(region(p.operand.dtype, p.operand.rows, p.operand.cols,
                                            p.operand.batch_stride == 0))
        self.regions = regions
        self.nbytes = max(64, pos)

    def _open(self, t: SocketTransport) -> _Staging:
        """Allocate the staging buffer on the server and encode the GEMM that computes in it."""
        op, batch = self.op, self.op.batch
        try:
            handle, memory = t.alloc(self.nbytes)
        except FFAccelError as e:
            pool = staging_pool(t)
            if e.code != ErrorCode.OUT_OF_MEMORY or not len(pool):
                raise
            # over this client's quota or buffer limit: our own idle staging buffers must not be
            # the reason, so free them (those in use go when their calls end) and try once more
            pool.clear()
            handle, memory = t.alloc(self.nbytes)

        def mat(dtype: object, off: int, rows: int, cols: int, broadcast: bool) -> Matrix:
            return Matrix(handle, dtype, rows, cols, max(1, cols), off,  # type: ignore[arg-type]
                          0 if broadcast or batch <= 1 else rows * cols)

        views = [np.ndarray(shape, dt, buffer=memory, offset=off) for off, shape, dt in self.regions]
        it = iter(views)
        av, bv = next(it), next(it)
        cv = next(it) if self.c_off is not None else None
        dv = next(it)
        ev = [next(it) if o is not None else None for o in self.epi_offs]
        m, n, k, c_off = op.m, op.n, op.k, self.c_off
        gemm = Gemm(
            m=m, n=n, k=k, batch=batch,
            a=mat(op.a.dtype, self.a_off, m, k, op.a.batch_stride == 0),
            b=mat(op.b.dtype, self.b_off, k, n, op.b.batch_stride == 0),
            c=mat(op.c.dtype, c_off, m, n, op.c.batch_stride == 0) if op.c is not None and c_off is not None else None,
            d=mat(op.d.dtype, self.d_off, m, n, False),
            alpha=op.alpha, beta=op.beta, acc_dtype=op.combo.acc,
            epilogue=tuple(
                PostOpDesc(p.kind, p.param0, p.param1,
                           None if p.operand is None or o is None else
                           mat(p.operand.dtype, o, p.operand.rows, p.operand.cols, p.operand.batch_stride == 0))
                for p, o in zip(op.epilogue, self.epi_offs)),
        )
        return _Staging(handle, av, bv, cv, dv, ev, encode_submission([gemm.encode()]))

    def kernel(self, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
               epi: tuple[np.ndarray | None, ...]) -> None:
        with self.lock:
            t = self._t()
            if t is None:
                raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device was closed")
            pool = staging_pool(t)
            with self._mu:
                st = self.staging
                self.busy = True
            try:
                if st is None:
                    st = self._open(t)
                    with self._mu:
                        self.staging = st
                    pool.put(self, st, self.nbytes)  # may evict (and free) other geometries' buffers
                elif pool.peek(self) is None:
                    pool.get(self)  # mark it used (it may have been evicted meanwhile: freed below)
                _stage(st.av, a)
                _stage(st.bv, b)
                if st.cv is not None and c is not None:
                    _stage(st.cv, c)
                for v, x in zip(st.ev, epi):
                    if v is not None and x is not None:
                        _stage(v, x)
                engine, value = t.submit(st.raw)
                t.wait(engine, value, int(t.timeout_s * 1e9))
                np.copyto(d, st.dv)
            finally:
                with self._mu:
                    self.busy = False
                    gone = self.staging if self.evicted else None
                    if gone is not None:
                        self.staging, self.evicted = None, False
                if gone is not None:
                    _free_quietly(t, gone.handle)


def _evict_staging(owner: _StagedGemm, st: _Staging) -> None:
    """The pool dropped ``owner``'s buffer: free it now, or when the call using it ends."""
    with owner._mu:
        if owner.staging is not st:
            return  # already replaced or freed
        if owner.busy:
            owner.evicted = True
            return
        owner.staging = None
    t = owner._t()
    if t is not None:
        _free_quietly(t, st.handle)


def _stage(view: np.ndarray, x: np.ndarray) -> None:
    np.copyto(view, x[: view.shape[0]] if view.shape[0] != x.shape[0] else x)


def _free_quietly(t: SocketTransport, handle: int) -> None:
    """Free a staging buffer; a closed or lost connection has freed everything already."""
    if not t._closed and t._lost is None:
        try:
            t.free(handle)
        except FFAccelError:  # the server went away meanwhile: it released the buffer with the client
            pass


__all__ = ["SocketTransport", "device_lost"]
