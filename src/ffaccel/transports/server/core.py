"""The server and its clients: accepting, per-client state, the request loop, shutdown.

Per client: a :class:`~ffaccel.transports.session.Session` (the same device-side state the
in-process transport keeps), plus what only a server has: completions that other threads
signal, a ring, and the socket. Requests are answered by the handler table in
:mod:`.handlers`; SUBMIT and REPLAY, the hot paths, skip the table.

Threads: an accept loop, one thread per connection, one ring poller for all rings (and
its waker), and one scheduler per engine (:mod:`.scheduler`).
"""

from __future__ import annotations

import collections
import ctypes
import itertools
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from ...drivers import Driver
from ...spec import Engine, ErrorCode, FFAccelError, violation
from ..limits import ServerLimits, SessionLimits, raise_nofile_limit
from ..paths import default_socket_path, peer_pid_uid, prepare_listen_path
from ..protocol import FENCE_REPLY, MAX_PAYLOAD_BYTES, REPLAY_REQ, REPLY, Msg, close_fds, encode_error, \
    message_error, send_msg
from ..session import RunBlock, Session
from ..usage import UsageCounter, process_name, summed
from .framing import Inbox, Stalled, TooLong, set_send_timeout
from .handlers import HANDLERS, dispatch
from .memory import BufferRegistry, SharedMem
from .rings import Ring, RingPoller, wait_pairs
from .scheduler import EngineScheduler

log = logging.getLogger("ffaccel.server")

_SUBMIT_MSG, _REPLAY_MSG = int(Msg.SUBMIT), int(Msg.REPLAY)
_REPLAY_UNPACK = REPLAY_REQ.struct.unpack
#: A SUBMIT/REPLAY reply whole (header, then the fence), packed in one call: one bytes object
#: per request instead of a packed fence concatenated to the header. Both layouts are
#: little-endian with no padding, so the joined format is the two messages back to back.
_SUBMIT_REPLY_PACK = struct.Struct(REPLY.struct.format + FENCE_REPLY.struct.format.lstrip("<")).pack
_FENCE_BYTES = FENCE_REPLY.size_bytes
_REPLY_PACK = REPLY.struct.pack
_COMPUTE, _COPY = Engine.COMPUTE, Engine.COPY
#: Default busy-poll of a connection thread for the next request after each reply (microseconds).
DEFAULT_SOCKET_POLL_US = 200
#: How often a thread waiting on a fence for its client looks whether that client hung up.
_HANGUP_CHECK_S = 0.05
#: The server process's GIL switch interval (seconds; CPython's default is 5 ms). A thread that
#: busy-polls (the ring poller, a connection thread waiting for the next request) holds the GIL
#: between polls; another thread that needs it (a socket request, the engine worker, the waker)
#: gets it only when the holder is asked to drop it, after this long. At 5 ms the socket path
#: beside a spinning ring poller measured 190 µs/op and ring batch 1 470 µs (2-core AMD EPYC VM).
SERVER_SWITCH_INTERVAL_S = 50e-6
#: Most execution failures a client's session keeps until it is told of them (the first ones are
#: kept: each is a driver failure the log holds too; a client that never waits is not a leak).
MAX_KEPT_FAILURES = 64


def _return_free_memory() -> None:
    """glibc keeps freed heap pages mapped; hand them back so a server's RSS returns to its baseline."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: "Callable[[int], int] | bool | None" = None


class Client:
    """One connection: its session, completions, ring and socket.

    ``repeat_path``: whether :meth:`submit_raw` takes the repeat path when it applies (tests set
    it False on an instance to force the general path).
    """

    repeat_path = True

    _ids = itertools.count(1)

    def __init__(self, server: "Server") -> None:
        self.server = server
        self.id = next(Client._ids)
        self.session = Session(server.driver, server.caps, server.session_limits)
        self.plans = self.session.plans  # its last-plan memo: the repeat path's one look (submit_raw)
        self.completed = self.session.completed
        self.submitted = self.session.submitted
        self.lock = threading.RLock()  # serialises validation + value assignment + enqueue
        self.done_mutex = threading.Lock()  # ``waiters``, and the condition completions are waited on
        self.cond = threading.Condition(self.done_mutex)
        self.waiters = 0  # threads in cond.wait: signal() notifies only when there are some
        self.queued = 0  # submissions queued on the engines, not yet run
        #: (engine, fence value, error) of work whose execution raised, not yet reported to the
        #: client (:meth:`failed`); guarded by ``done_mutex``
        self.failures: list[tuple[Engine, int, FFAccelError]] = []
        self.ring: Ring | None = None
        self.sock: socket.socket | None = None
        self.closed = False
        self.peer = (0, 0)  # the client process's (pid, uid), from SO_PEERCRED (the USAGE table)
        self.since_s = time.monotonic()
        self._schedulers = tuple(server.engines.values())
        self._engines = server.engines

    # -- memory ---------------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> tuple[int, SharedMem]:
        srv = self.server
        s = self.session
        with self.lock:
            size = s.check_size(size_bytes)
            s.check_room(size)
            if not srv.buffers.has_room():
                raise violation("memory.mappings", f"{len(srv.buffers) + 1} buffers on the server",
                                f"at most {srv.buffers.max_buffers} (ServerLimits.max_buffers)")
            try:
                mem = SharedMem(size)
            except (OSError, MemoryError, OverflowError, ValueError):
                raise violation("memory.quota", size, "what the device can allocate") from None
            srv.buffers.add(mem)
            return s.add_mapping(mem, mem.array, size), mem

    def import_fd(self, fd: int) -> tuple[int, SharedMem]:
        try:
            st = os.fstat(fd)
            key: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            key = None
        srv = self.server
        with self.lock:
            mem = srv.buffers.ref(key)
            if mem is None:
                raise violation("wire.import", f"fd {fd} (not a buffer of this server)",
                                "an fd from Buffer.export_fd() of a live buffer of this server")
            try:
                return self.session.add_mapping(mem, mem.array, mem.size), mem  # imports are charged too
            except BaseException:
                srv.buffers.unref(mem)
                raise

    def free(self, handle: int) -> None:
        with self.lock:
            entry = self.session.remove_mapping(handle)
        self.server.buffers.unref(entry.memory)

    # -- work -------------------------------------------------------------------------------------
    def submit_raw(self, raw: bytes | memoryview) -> tuple[Engine, int]:
        """Validate a whole submission, assign its fence value, and run or queue it.

        The repeat path first (a loop's every request): ``raw`` equal to the bytes of the
        session's last-plan memo (kept only while that submission is valid as planned: a free or
        a close drops it) is that plan again; when, besides, it is not heavy, its waits are met
        and its engine has nothing queued or running, the scheduler would run it inline in this
        thread, so it runs here after one claim of the engine (no queue decision is skipped).
        Same results, fence values, counts and errors as the general path below, which takes
        everything else (``repeat_path`` False on an instance forces it: tests).
        """
        lock = self.lock
        lock.acquire()  # not `with`: this runs once per request, and acquire/release cost half as much
        try:
            last = self.plans.last
            if last is not None and last[0] == raw and self.repeat_path:
                engine, runs, waits = last[1], last[2], last[3]
                if not runs.heavy and (not waits or self.waits_met(waits)):
                    sched = self._engines[engine]
                    if sched.claim():
                        try:
                            value = self.session.assign(engine, runs)
                        except BaseException:
                            sched.unclaim()
                            raise
                        sched.run_claimed(self, value, runs)
                        if self.failures:
                            self.raise_failure(engine, value, value)
                        return engine, value
            engine, runs, waits = self.session.plan(raw)
            return self._enqueue(engine, runs, waits)
        finally:
            lock.release()

    def replay(self, lid: int, engine_raw: int, waits: tuple[tuple[int, int], ...]) -> tuple[Engine, int]:
        with self.lock:
            engine, runs, checked = self.session.replay(lid, engine_raw, waits)
            return self._enqueue(engine, runs, checked)

    def _enqueue(self, engine: Engine, runs: RunBlock, waits: tuple[tuple[Engine, int], ...]
                 ) -> tuple[Engine, int]:
        value = self.session.assign(engine, runs)  # counted there (STATS and USAGE read the counts)
        self._engines[engine].submit(self, value, runs, waits)
        if self.failures:  # it ran inline and failed: this submission's answer is the error (see failed)
            self.raise_failure(engine, value, value)
        return engine, value

    def queue_full(self) -> bool:
        return self.queued >= self.server.session_limits.max_queued_submissions

    def wait_for_queue_room(self) -> bool:
        """Back-pressure for the socket path: this client's own thread waits for its work to drain.

        False when the client hung up meanwhile (looked at after each nap, as :meth:`wait` does):
        its connection must end now, so that its queued work is dropped (``close``) instead of
        run for nobody, and the request read before it is not accepted.
        """
        while self.queue_full() and not self.closed:
            self.wait_any(_HANGUP_CHECK_S)
            if self.queue_full() and self.peer_gone():
                return False
        return True

    def waits_met(self, waits: tuple[tuple[Engine, int], ...]) -> bool:
        done = self.completed
        for e, v in waits:
            if done[e] < v:
                return False
        return True

    def signal(self, engine: Engine, value: int) -> None:
        """Fence ``value`` on ``engine`` completed: publish it, wake whoever waits for it.

        Called only by the thread holding the engine (``EngineScheduler.running``), so no two
        threads signal one engine at once and ``completed[engine]`` is stored without a lock. A
        waiter counts itself in ``waiters`` under the mutex before it looks at ``completed``;
        this looks at ``waiters`` after the store, so either the waiter sees the new value or
        this sees the waiter and notifies it under the mutex (after it sleeps).
        """
        done = self.completed
        if value > done[engine]:
            done[engine] = value
        if self.waiters:
            cond = self.cond
            with cond:
                cond.notify_all()
        ring = self.ring
        if ring is not None:
            ring.publish_completed(engine, done[engine])
        for sched in self._schedulers:
            if sched.blocked:  # poke() without the call: nearly always nobody waits on a fence
                sched.poke()

    def failed(self, engine: Engine, value: int, error: BaseException) -> None:
        """The work of fence ``value`` raised ``error`` while it ran (a driver failure: validation
        had passed). Kept until the client is told, as the in-process transport tells it: the
        submission that ran inline answers with the error instead of its fence (its value is
        used and signalled all the same, so later fences and waits go on), and a wait on this
        fence or a later one of its engine (WAIT) raises it, once. An error that is no
        FFAccelError is DEVICE_LOST with its text (the traceback goes to the server's log)."""
        if not isinstance(error, FFAccelError):
            error = FFAccelError(ErrorCode.DEVICE_LOST, "device", f"the driver failed while running fence "
                                 f"{engine.name}:{value}: {type(error).__name__}: {error}")
        with self.done_mutex:
            if len(self.failures) < MAX_KEPT_FAILURES:
                self.failures.append((engine, value, error))

    def raise_failure(self, engine: Engine, low: int, high: int) -> None:
        """Raise the first kept failure of a fence of ``engine`` from ``low`` to ``high``, after
        dropping every one in that span (each failure is reported once); nothing kept: return."""
        with self.done_mutex:
            hit = [f for f in self.failures if f[0] == engine and low <= f[1] <= high]
            if not hit:
                return
            self.failures = [f for f in self.failures if f not in hit]
        raise hit[0][2]

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
                    if not self.cond.wait(min(left / 1e9, _HANGUP_CHECK_S)) and self.peer_gone():
                        raise EOFError("the client hung up while waiting")  # ends the connection
            finally:
                self.waiters -= 1
        if self.failures:  # work up to this fence that failed while it ran: told once (see failed)
            self.raise_failure(engine, 1, value)

    def peer_gone(self) -> bool:
        """Whether the client hung up (checked while its thread waits, so its work is cancelled at once)."""
        sock = self.sock
        if sock is None:
            return False
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- command lists, errors ---------------------------------------------------------------------
    def record(self, raw: bytes) -> int:
        with self.lock:
            return self.session.record(raw)

    def free_list(self, lid: int) -> None:
        with self.lock:
            self.session.free_list(lid)

    def keep_error(self, e: FFAccelError) -> int:
        with self.lock:
            return self.session.keep_error(e)

    # -- lifetime -----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release everything: queued work is dropped, running work stops at its next slice."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            entries = self.session.close()
        srv = self.server
        for sched in srv.engines.values():
            sched.cancel(self)
        for entry in entries:
            srv.buffers.unref(entry.memory)
        with self.cond:
            self.cond.notify_all()
        ring = self.ring
        self.ring = None
        if ring is not None:
            srv.poller.remove(ring)
            ring.close()  # its fds close when the last thread using it is done


class Server:
    """Serve one driver on a Unix socket.

    Parameters
    ----------
    driver : Driver
        The driver that owns the device.
    socket_path : str
        Where to listen (created with mode 0600; removed on close). Only a stale socket at the
        path is replaced; anything else there is refused.
    max_client_memory : int, optional
        Per-client memory quota in bytes (None: half the device's memory). Buffers, imported
        mappings and recorded command lists count against it (OUT_OF_MEMORY past it).
    poll_us : int
        The ring poller's busy-poll budget after the last work (adaptive, see transports.spin).
    socket_poll_us : int
        A connection thread's busy-poll budget for the next request after a reply (adaptive).
    session_limits, limits : SessionLimits, ServerLimits, optional
        Every other bound (see docs/spec.md, "Limits").
    """

    def __init__(self, driver: Driver, socket_path: str, *, max_client_memory: int | None = None,
                 poll_us: int = 200, socket_poll_us: int = DEFAULT_SOCKET_POLL_US,
                 session_limits: SessionLimits | None = None, limits: ServerLimits | None = None) -> None:
        self.driver = driver
        self.info = driver.info()
        self.caps = self.info.caps
        self.socket_path = socket_path
        self.limits = limits or ServerLimits()
        sl = session_limits or SessionLimits()
        if max_client_memory is None and sl.max_memory_bytes is None and self.info.memory_bytes:
            max_client_memory = self.info.memory_bytes // 2
        if max_client_memory is not None:
            sl = SessionLimits(**{**sl.__dict__, "max_memory_bytes": max_client_memory})
        self.session_limits = sl
        self.max_client_memory = sl.max_memory_bytes
        self.socket_poll_us = max(0, socket_poll_us)
        prepare_listen_path(socket_path)  # before any thread starts: a refused path leaves nothing behind
        raise_nofile_limit()
        self.buffers = BufferRegistry(self.limits.buffer_budget())
        self.engines = {e: EngineScheduler(e, self.limits.slice_target_ms / 1e3) for e in Engine
                        if e in self.caps.engines}
        self.poller = RingPoller(poll_us)
        self.clients: set[Client] = set()
        self.lock = threading.Lock()
        self.started_s = time.time()  # wall clock, for the USAGE reply (uptime from the monotonic one)
        self._started_mono = time.monotonic()
        self.clients_served = 0  # connections admitted since start
        self.departed = UsageCounter()  # what clients that left had done (USAGE's totals include it)
        self._stop = threading.Event()
        self._refused: collections.deque[socket.socket] = collections.deque()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(socket_path)
        except OSError as e:
            self.listener.close()
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket",
                               f"cannot listen on {socket_path!r}: {e.strerror or e}") from None
        finally:
            os.umask(old)
        self._bound = True
        self.listener.listen(socket.SOMAXCONN)  # a burst of connections queues instead of being refused

    def stats(self) -> tuple[int, int, int, int]:
        """The STATS reply: clients, buffers, bytes charged, submissions since start (the usage counts)."""
        with self.lock:
            clients = list(self.clients)
            departed = self.departed.totals()["submissions"]
        charged = sum(c.session.used_bytes for c in clients)
        return len(clients), len(self.buffers), charged, departed + sum(
            c.session.usage.totals()["submissions"] for c in clients)

    def usage(self, asking: "Client | None" = None) -> dict[str, object]:
        """What the server has done since it started: totals (clients that left included) and a
        row per connected client, like nvidia-smi's process table (:mod:`ffaccel.transports.usage`)."""
        with self.lock:
            clients = sorted(self.clients, key=lambda c: c.id)
            departed = self.departed.totals()
            served = self.clients_served
        now = time.monotonic()
        rows = []
        for c in clients:
            s = c.session
            pid, uid = c.peer
            rows.append({"id": c.id, "pid": pid, "uid": uid, "command": process_name(pid) if pid else "",
                         "transport": "ring" if c.ring is not None else "socket", "connected_s": now - c.since_s,
                         "buffers": s.mapping_count, "memory_bytes": s.used_bytes, **s.usage.totals()})
        return {"device": f"unix:{self.socket_path}", "driver": self.info.name, "driver_version": self.info.version,
                "pid": os.getpid(), "started_unix_s": self.started_s, "uptime_s": now - self._started_mono,
                "clients_now": len(rows), "clients_since_start": served, "client_id": asking.id if asking else None,
                "buffers": sum(r["buffers"] for r in rows), "memory_bytes": sum(r["memory_bytes"] for r in rows),
                **summed([departed, *rows]), "clients": rows, "driver_usage": self.driver.usage()}

    # -- serving -------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        log.info("serving %s %s on %s, quota %s, buffers %d", self.info.name, self.info.version,
                 self.socket_path, self.max_client_memory, self.buffers.max_buffers)
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as e:
                if self._stop.is_set():
                    break
                # EMFILE, ENFILE, ENOBUFS, ECONNABORTED...: this connection is lost, the server is not
                log.warning("accept failed (%s); going on", e)
                self._stop.wait(0.05)
                continue
            try:
                self._admit(conn)
            except Exception:  # noqa: BLE001 - one connection must never end the server
                log.exception("could not start serving a connection")
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        conn.settimeout(None)
        set_send_timeout(conn, self.limits.message_stall_s)
        with self.lock:
            full = len(self.clients) >= self.limits.max_clients
        if full:
            err = violation("wire.clients", f"{self.limits.max_clients + 1} connections",
                            f"at most {self.limits.max_clients} (ServerLimits.max_clients)")
            self._reply_error(conn, err)
            # not closed yet: closing with the client's HELLO unread would reset the connection before
            # the client reads why; the newest few refused connections linger until pushed out
            try:
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self._refused.append(conn)
            while len(self._refused) > 64:
                self._refused.popleft().close()
            return
        client = Client(self)
        client.sock = conn
        client.peer = peer_pid_uid(conn)
        with self.lock:
            self.clients.add(client)
            self.clients_served += 1
        try:
            threading.Thread(target=self._serve_client, args=(conn, client), name=f"client-{client.id}",
                             daemon=True).start()
        except BaseException:
            with self.lock:
                self.clients.discard(client)
            client.close()
            raise

    def shutdown(self) -> None:
        """Stop accepting, disconnect every client, remove the socket file (only ours)."""
        self._stop.set()
        try:
            self.listener.close()
        except OSError:
            pass
        if self._bound:
            self._bound = False
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        while self._refused:
            self._refused.popleft().close()
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            if c.sock is not None:
                try:
                    c.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.poller.stop()
        for eng in self.engines.values():
            eng.stop()

    def _serve_client(self, conn: socket.socket, client: Client) -> None:
        log.info("client %d connected", client.id)
        inbox = Inbox(conn, self.socket_poll_us, self.limits.message_stall_s)
        fds: list[int] = []
        try:
            while True:
                try:
                    msg_type, reserved, length, payload, fds = inbox.next_message()
                except TooLong as e:
                    # the stream cannot be resynchronised past a length we will not read: answer, hang up
                    self._reply_error(conn, message_error("payload_bytes", e.length, f"<= {MAX_PAYLOAD_BYTES}"))
                    return
                except Stalled as e:
                    log.warning("client %d: %s; dropped", client.id, e)
                    return
                except (EOFError, OSError):
                    return
                if client.queued and client.queue_full() and not client.wait_for_queue_room():
                    return  # it hung up while its queue was full: close() drops its queued work
                if (msg_type == _SUBMIT_MSG or (msg_type == _REPLAY_MSG and length == REPLAY_REQ.size_bytes)
                        ) and not reserved and not fds:
                    # the hot paths (the ioctl model's one request per submission or replay), without
                    # the handler table
                    try:
                        if msg_type == _SUBMIT_MSG:
                            engine, value = client.submit_raw(payload)
                        else:
                            lid, eng, wc, wp = _REPLAY_UNPACK(payload)
                            engine, value = client.replay(lid, eng, wait_pairs(wc, wp))
                        done = client.completed
                        reply = _SUBMIT_REPLY_PACK(0, 0, _FENCE_BYTES, engine, 0, value, done[_COMPUTE], done[_COPY])
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
                after: Callable[[], None] | None = None
                try:
                    if reserved:
                        raise message_error("reserved", reserved, 0)
                    out, out_fds, after = dispatch(HANDLERS, self, client, msg_type, payload, fds)
                except FFAccelError as e:
                    self._reply_error(conn, e)
                except EOFError:
                    return  # the client hung up during a wait
                except Exception as e:  # noqa: BLE001 - one bad request must not take the server down
                    log.exception("client %d: request %s failed", client.id, msg_type)
                    self._reply_error(conn, FFAccelError(ErrorCode.DEVICE_LOST, "device", f"server error: {e!r}"))
                else:
                    try:
                        send_msg(conn, _REPLY_PACK(0, 0, len(out)), out, out_fds)
                    except OSError:
                        return
                    finally:
                        if after is not None:
                            after()  # e.g. close the memfd the reply carried: one fd per buffer
                finally:
                    close_fds(fds)
        finally:
            close_fds(fds)
            inbox.close()
            client.close()
            with self.lock:
                self.clients.discard(client)
                self.departed.absorb(client.session.usage)
                idle = not self.clients
            try:
                conn.close()
            except OSError:
                pass
            if idle:
                _return_free_memory()  # the last client left: give the heap's free pages back
            log.info("client %d disconnected; its buffers, lists and queued work released", client.id)

    def _reply_error(self, conn: socket.socket, e: FFAccelError) -> None:
        body = encode_error(e)
        try:
            send_msg(conn, REPLY.struct.pack(int(e.code), 0, len(body)), body)
        except OSError:
            pass


def serve(socket_path: str | None = None, driver: str = "cpu", *, max_client_memory: int | None = None,
          poll_us: int = 200, socket_poll_us: int = DEFAULT_SOCKET_POLL_US,
          ready: Callable[[Server], None] | None = None, session_limits: SessionLimits | None = None,
          limits: ServerLimits | None = None) -> int:
    """Run a server until SIGINT/SIGTERM (main thread) or until ``ready``'s server is shut down.

    Returns the process exit status (0 on a clean shutdown).
    """
    from ...drivers import open_driver

    if max_client_memory is not None and (isinstance(max_client_memory, bool)
                                          or not isinstance(max_client_memory, int) or max_client_memory < 0):
        raise violation("memory.quota", max_client_memory, "a byte count >= 0")
    dev = open_driver(driver)  # "npu:preset=rk3588" passes its options, as ffaccel.open does
    sys.setswitchinterval(SERVER_SWITCH_INTERVAL_S)  # this process is the server: see the constant
    path = socket_path or default_socket_path()
    try:
        srv = Server(dev, path, max_client_memory=max_client_memory, poll_us=poll_us,
                     socket_poll_us=socket_poll_us, session_limits=session_limits, limits=limits)
    except BaseException:
        dev.close()
        raise
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


__all__ = ["DEFAULT_SOCKET_POLL_US", "Client", "Server", "serve"]
