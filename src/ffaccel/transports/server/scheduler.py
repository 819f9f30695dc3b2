"""One scheduler per engine: fair between clients, large work in slices, a dead client's work stopped.

Each client has its own FIFO of submissions per engine (fences signal in submission order).
The engine's worker thread takes clients round-robin and runs about ``slice_target_s`` of
one client's work before moving to the next client that has work ready, so a small GEMM
waits at most about one slice behind anyone else's large one. A command too large for one
slice (:class:`~ffaccel.transports.session.SlicedRun`) runs a band of D's rows at a time, the
band sized from the rate the engine has measured. A client that goes away has its queued
work dropped and its running work abandoned at the next slice boundary.

The hot path stays as cheap as before: work whose engine is idle, with nothing queued, its
waits met and nothing large in it runs inline in the thread that validated it.

Who runs on the engine: the thread holding :attr:`EngineScheduler.running` (a lock taken only
without blocking: an inline run, or the worker for a job), from the start of the run through
its fence's signal. So one thread at a time signals an engine's fences, in the order they
ran, which is what lets ``Client.signal`` store a completed value without a lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ...spec import Engine
from ..session import RunBlock, SlicedRun
from .ports import ClientPort

log = logging.getLogger("ffaccel.server")
Run = Callable[[], object]
#: Longest a worker sleeps while every queued job waits on a fence (a missed poke costs this).
_NAP_S = 0.02
#: Thinnest band of D's rows a sliced GEMM runs while other clients wait, and while none does.
#: Each band re-packs B, so thin bands cost throughput (2048^3 f32 here: 128-row bands 3.5x the
#: whole GEMM's time, 256 2x, 512 1.1-1.25x): thin only when someone is waiting behind it.
MIN_BAND_ROWS = 128
MIN_BAND_ROWS_ALONE = 512
#: A slice's budget when no other client has work queued, in slice targets: fewer, larger bands
#: cost less (each re-packs B), and whoever arrives still waits only this long.
ALONE_BUDGET_FACTOR = 4


class Job:
    __slots__ = ("client", "value", "runs", "waits", "pieces")

    def __init__(self, client: ClientPort, value: int, runs: tuple[Run, ...], waits: tuple[tuple[Engine, int], ...]
                 ) -> None:
        self.client = client
        self.value = value
        self.runs = runs
        self.waits = waits
        self.pieces: Iterator[Run] | None = None


class EngineScheduler:
    """The engine's queues (one per client), its worker thread, and the inline fast path."""

    def __init__(self, engine: Engine, slice_target_s: float = 0.01) -> None:
        self.engine = engine
        self.slice_target_s = slice_target_s
        self.mutex = threading.Lock()
        self.cond = threading.Condition(self.mutex)
        #: clients with queued work, in round-robin order (the next to serve first)
        self.queues: collections.OrderedDict[ClientPort, collections.deque[Job]] = collections.OrderedDict()
        #: held by the thread running work on this engine, through its signal (see the module's doc)
        self.running = threading.Lock()
        self.blocked = False  # the worker sleeps because every head job waits on a fence
        self.stopping = False
        self._budget_s = slice_target_s
        self.units_per_s = 2e10  # measured rate of sliced work (multiply-adds or elements per second)
        self.thread = threading.Thread(target=self._loop, name=f"engine-{engine.name.lower()}", daemon=True)
        self.thread.start()

    # -- submitting --------------------------------------------------------------------------
    def submit(self, client: ClientPort, value: int, runs: tuple[Run, ...], waits: tuple[tuple[Engine, int], ...]
               ) -> None:
        mutex = self.mutex
        mutex.acquire()  # not `with`: once per request, and acquire/release cost half as much
        try:
            inline = (not self.queues and type(runs) is RunBlock and not runs.heavy
                      and (not waits or client.waits_met(waits)) and self.running.acquire(False))
            if not inline:
                q = self.queues.get(client)
                if q is None:
                    q = self.queues[client] = collections.deque()
                q.append(Job(client, value, runs, waits))
                client.queued += 1
                self.cond.notify_all()
        finally:
            mutex.release()
        if inline:
            self.run_claimed(client, value, runs)

    def claim(self) -> bool:
        """Take the engine for an inline run when nothing is queued on it or running; then
        :meth:`run_claimed` (or :meth:`unclaim`). The decision :meth:`submit` makes, for work that
        needs no other look (``Client.submit_raw``'s repeat path: not heavy, its waits met), in
        one lock round trip: a job queued by another thread in between runs after this one, as if
        it had come later; the caller's own client cannot queue meanwhile (its lock is held)."""
        return not self.queues and self.running.acquire(False)

    def unclaim(self) -> None:
        """Give the engine back; wake the worker if work was queued while it was held."""
        self.running.release()
        if self.queues:  # wake the worker only when it has work: a wake-up costs ~25 us
            with self.cond:
                self.cond.notify_all()

    def run_claimed(self, client: ClientPort, value: int, runs: tuple[Run, ...]) -> None:
        """Run ``runs`` in this thread on the engine it claimed, signal ``value``, give the engine back."""
        try:
            try:
                for run in runs:
                    run()
            except Exception as e:  # noqa: BLE001 - a driver failure must not take the server down
                log.exception("client %d: execution failed on %s", client.id, self.engine.name)
                client.failed(self.engine, value, e)  # reported to the client (Client.failed)
            client.signal(self.engine, value)
        finally:
            self.unclaim()

    def poke(self) -> None:
        """A fence signalled: a job waiting on it may be ready now."""
        if self.blocked:
            with self.cond:
                self.cond.notify_all()

    def cancel(self, client: ClientPort) -> int:
        """Drop a departed client's queued work; its running job stops at the next slice."""
        with self.cond:
            q = self.queues.pop(client, None)
            self.cond.notify_all()
        n = len(q) if q else 0
        client.queued -= n
        return n

    # -- the worker -------------------------------------------------------------------------
    def _pick(self) -> Job | None:
        for client, q in self.queues.items():
            job = q[0]
            if job.pieces is not None or not job.waits or client.waits_met(job.waits):
                return job
        return None

    def _loop(self) -> None:
        running = self.running
        while True:
            with self.cond:
                job = None
                while not self.stopping:
                    job = self._pick()
                    if job is not None and running.acquire(False):
                        break
                    job = None  # nothing ready, or the engine runs someone's inline work (its end wakes us)
                    self.blocked = bool(self.queues) and not running.locked()
                    self.cond.wait(_NAP_S if self.queues else None)
                    self.blocked = False
                if job is None:
                    return  # stopping
                contended = len(self.queues) > 1
            done = False
            try:
                try:
                    done = self._run_slice(job, self.slice_target_s if contended
                                           else ALONE_BUDGET_FACTOR * self.slice_target_s)
                except Exception as e:  # noqa: BLE001 - a driver failure must not take the server down
                    log.exception("client %d: execution failed on %s", job.client.id, self.engine.name)
                    job.client.failed(self.engine, job.value, e)  # reported to the client (Client.failed)
                    done = True
                finally:
                    with self.cond:
                        q = self.queues.get(job.client)
                        if q is not None:
                            if done:
                                q.popleft()
                                job.client.queued -= 1  # before the signal: a client waiting for queue room sees it
                                if not q:
                                    del self.queues[job.client]
                            if q:
                                self.queues.move_to_end(job.client)  # round robin: the next client goes first
                if done and not job.client.closed:
                    job.client.signal(self.engine, job.value)  # still holding the engine: see the module's doc
            finally:
                running.release()

    def _run_slice(self, job: Job, budget_s: float) -> bool:
        """Run pieces of ``job`` for about ``budget_s``; True when the job is finished (or abandoned)."""
        self._budget_s = budget_s
        if job.pieces is None:
            job.pieces = self._pieces(job.runs)
        client = job.client
        now = time.monotonic()
        end = now + budget_s
        for piece, units in job.pieces:
            if client.closed:
                return True  # abandoned: nobody is left to see the result
            piece()
            t = time.monotonic()
            if units:  # learn the rate from the sliced pieces (whole small runs say little)
                self.units_per_s = 0.5 * self.units_per_s + 0.5 * units / max(t - now, 1e-6)
            now = t
            if now >= end:
                return False
        return True

    def _pieces(self, runs: tuple[Run, ...]) -> Iterator[tuple[Run, int]]:
        for run in runs:
            if type(run) is SlicedRun:
                batch, rows, units_per_row = run.work_units
                units_per_row = max(1, units_per_row)
                size = [1]

                def band() -> int:
                    # about one budget of work, but never so thin a band that the GEMM runs at a
                    # fraction of its speed (a band re-packs B: BLAS needs rows to amortise it)
                    thinnest = MIN_BAND_ROWS if self._budget_s <= self.slice_target_s else MIN_BAND_ROWS_ALONE
                    size[0] = max(thinnest, int(self._budget_s * self.units_per_s / units_per_row))
                    return size[0]

                for piece in run.slices(band):
                    yield piece, size[0] * units_per_row
            else:
                yield run, 0

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


__all__ = ["EngineScheduler", "Job"]
