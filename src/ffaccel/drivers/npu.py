"""The ``npu`` driver: a simulated SoC NPU that only multiplies matrices.

What it declares (and nothing more): int8 x int8, uint8 x int8 and int8 x uint8 GEMMs accumulating in int32,
bf16 x bf16 GEMMs accumulating in f32 (D in bf16 or f32), the post-ops bias and relu, and COPY
between its own dtypes (plus f32 <-> bf16). Everything else is refused as UNSUPPORTED by the
validator before the driver is called. The device:

* has a fixed device-memory arena: an allocation that does not fit gets OUT_OF_MEMORY;
* runs every job on its own worker thread behind a FIFO queue, one per engine (the MAC array
  for GEMMs, the DMA engine for COPY); the caller waits for the job's completion with a
  deadline, so a fence signals when the job has completed;
* tiles every GEMM to fit its SRAM: the DMA engine loads an A tile and a B tile into the SRAM
  (a real byte array of ``sram_kib``), the MAC array multiplies them into an accumulator tile
  that lives in the SRAM too, and the post-processing unit applies alpha, beta * C, bias and
  relu before the tile is written back. int8 products are exact and the int32 accumulator wraps
  modulo 2**32; bf16 products are exact in f32 and accumulated in f32;
* models its own time per job (:class:`NpuModel`, presets in :data:`PRESETS`) and adds it to
  :meth:`NpuDriver.usage` (``Device.stats()["driver_usage"]``); with ``paced=1`` a job completes no earlier than its modeled time.

Device names: ``npu`` (the default preset, ``rk3588``) or ``npu:preset=NAME,KEY=VALUE,...`` where
each KEY is a field of :class:`NpuModel` (an override) or ``paced`` / ``timeout_s``. See
docs/npu.md for the presets' sources and the model's accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..abi import CopyOp, DeviceCaps, GemmOp
from ..spec import COPY_CONVERSIONS, GEMM_COMBOS, DType, Engine, ErrorCode, FFAccelError, PostOpKind, violation
from .base import Driver, DriverInfo
from .epilogue import OPERAND_KINDS, float_steps, int_steps, run_steps

_MASK32 = 0xFFFF_FFFF
_PAGE_BYTES = 4096  # arena allocations are whole pages, like a GEM object's backing store


@dataclass(frozen=True)
class NpuModel:
    """One NPU's figures: what the cost model and the tiler use. Units are in the names.

    The MAC array takes ``array_k`` values of k (int8; half as many for a bf16 rate half the
    int8 one) times ``int8_macs_per_cycle // array_k`` columns of n per cycle, one row of m
    after another: a tile whose k or n is not a multiple of the array's pays for the padding
    (tile utilisation). DMA moves tiles between device memory and SRAM at ``dma_gb_per_s``,
    overlapped with the MACs of the tile before (double buffering); every job pays
    ``job_latency_us`` (submission, descriptor fetch, completion interrupt).
    """

    int8_macs_per_cycle: int
    #: 0: the NPU has no bf16 MACs (it then declares no bf16 GEMM)
    bf16_macs_per_cycle: int
    clock_mhz: float
    array_k: int
    sram_kib: int
    dma_gb_per_s: float
    job_latency_us: float
    arena_mib: int

    @property
    def array_n(self) -> int:
        return self.int8_macs_per_cycle // self.array_k

    def k_per_cycle(self, is_int: bool) -> int:
        """Values of k the array takes per cycle for int8 (or bf16) operands."""
        return self.array_k if is_int else self.array_k * self.bf16_macs_per_cycle // self.int8_macs_per_cycle

    def peak_macs_per_s(self, is_int: bool) -> float:
        return (self.int8_macs_per_cycle if is_int else self.bf16_macs_per_cycle) * self.clock_mhz * 1e6

    def check(self) -> None:
        """Raise ValueError where the figures cannot describe an array."""
        for f in dataclasses.fields(self):
            value, least = getattr(self, f.name), 0 if f.name in ("bf16_macs_per_cycle", "job_latency_us") else 1
            if not (math.isfinite(value) and value >= least):
                raise ValueError(f"{f.name} must be finite and >= 1 (0 allowed for bf16_macs_per_cycle, "
                                 "job_latency_us)")
        if self.int8_macs_per_cycle % self.array_k:
            raise ValueError("array_k must divide int8_macs_per_cycle")
        if self.bf16_macs_per_cycle and self.k_per_cycle(False) < 1:
            raise ValueError("bf16_macs_per_cycle must be 0 or >= int8_macs_per_cycle / array_k")
        if self.sram_kib < 4:
            raise ValueError("sram_kib must be >= 4")


#: Presets from published figures; the sources and what is assumed are in docs/npu.md.
#: int8 MACs/cycle and clock are published; bf16 rate, array shape, SRAM, DMA bandwidth and
#: job latency are published where docs/npu.md cites them, assumptions otherwise.
PRESETS: dict[str, NpuModel] = {
    # Arm Ethos-U65 in its 512-MAC configuration at 1 GHz (1 TOPS); int8/int16 only: no bf16
    "ethos-u65": NpuModel(512, 0, 1000.0, 8, 256, 4.0, 50.0, 256),
    "ethos-u65-256": NpuModel(256, 0, 1000.0, 8, 256, 4.0, 50.0, 256),
    # one Rockchip RK3588 NPU core: 1,024 int8 MACs/cycle at 1 GHz (2 TOPS; three cores: 6)
    "rk3588": NpuModel(1024, 512, 1000.0, 32, 384, 10.0, 30.0, 1024),
    # Intel NPU 3720 (Meteor Lake): 4,096 int8 MACs/cycle at 1.16 GHz (9.5 TOPS), 16-bit floats at half rate
    "npu3720": NpuModel(4096, 2048, 1160.0, 64, 4096, 32.0, 20.0, 2048),
    # AMD XDNA 2 (Ryzen AI 300): 50 TOPS int8; 16,384 MACs/cycle at the clock that gives 50 TOPS
    "xdna2": NpuModel(16384, 8192, 50e12 / (2 * 16384) / 1e6, 128, 6144, 60.0, 20.0, 4096),
}
DEFAULT_PRESET = "rk3588"


# ------------------------------------------------------------------------------------------
# the tiler and the cost model (pure functions of the model and the shape)


@dataclass(frozen=True)
class Tiles:
    """A GEMM's SRAM tiling: tiles of op(A) are tm x tk, of op(B) tk x tn, of D tm x tn."""

    tm: int
    tn: int
    tk: int


def plan_tiles(model: NpuModel, is_int: bool, m: int, n: int, k: int) -> Tiles:
    """The largest tiles (favouring long k, then wide n) whose A, B and accumulator fit the SRAM."""
    in_bytes = 1 if is_int else 2
    sram = model.sram_kib * 1024
    tk, tn = max(1, min(k, 1024)), max(1, min(n, 4 * model.array_n))
    while True:
        tm = (sram - tk * tn * in_bytes) // (tk * in_bytes + tn * 4)
        if tm >= min(m, 16) or (tk == 1 and tn == 1):
            return Tiles(max(1, min(m, tm)), tn, tk)
        if tk >= tn:
            tk = max(1, tk // 2)
        else:
            tn = max(1, tn // 2)


def _cuts(total: int, step: int) -> list[tuple[int, int]]:
    """(size, how many) of the tiles along one dimension: full ones, then the remainder."""
    full, rest = divmod(total, step)
    return [(s, c) for s, c in ((step, full), (rest, 1 if rest else 0)) if c]


@dataclass(frozen=True)
class Cost:
    """Modeled time of one job and what it consists of."""

    seconds: float
    mac_cycles: int
    dma_bytes: int
    tiles: int


def gemm_cost(model: NpuModel, is_int: bool, batch: int, m: int, n: int, k: int, d_bytes: int,
              extra_bytes_per_d_elem: int = 0) -> Cost:
    """Modeled time of one GEMM job.

    Per output tile: for each k tile, max(MAC cycles / clock, A and B tile bytes / DMA bandwidth)
    (the next tiles load while these multiply), then the D tile's write (and C's and the bias's
    reads, ``extra_bytes_per_d_elem``) at DMA bandwidth. So the total is never below the peak-MAC
    time of the MACs done nor below the bytes every operand needs moved once over the bandwidth.
    """
    clock_hz = model.clock_mhz * 1e6
    bw = model.dma_gb_per_s * 1e9
    kpc, npc = model.k_per_cycle(is_int), model.array_n
    in_bytes = 1 if is_int else 2
    t = plan_tiles(model, is_int, m, n, k)
    seconds = 0.0
    cycles = dma = tiles = 0
    for tm, cm in _cuts(m, t.tm):
        for tn, cn in _cuts(n, t.tn):
            count = cm * cn * batch
            tile_s = 0.0
            for tk, ck in _cuts(k, t.tk):
                c = tm * math.ceil(tk / kpc) * math.ceil(tn / npc)
                b = (tm * tk + tk * tn) * in_bytes
                tile_s += ck * max(c / clock_hz, b / bw)
                cycles += count * ck * c
                dma += count * ck * b
            out = tm * tn * (d_bytes + extra_bytes_per_d_elem)
            tile_s += out / bw
            dma += count * out
            tiles += count
            seconds += count * tile_s
    return Cost(model.job_latency_us * 1e-6 + seconds, cycles, dma, tiles)


def copy_cost(model: NpuModel, bytes_read: int, bytes_written: int) -> Cost:
    """Modeled time of one COPY job on the DMA engine."""
    moved = bytes_read + bytes_written
    return Cost(model.job_latency_us * 1e-6 + moved / (model.dma_gb_per_s * 1e9), 0, moved, 0)


# ------------------------------------------------------------------------------------------
# the engines: a worker thread per engine, behind a FIFO queue


class _Job:
    """Queued work: costed (returns its Cost; a caller waits on ``done``) or a posted submission."""

    __slots__ = ("work", "costed", "done", "error")

    def __init__(self, work: Callable[[], object], costed: bool) -> None:
        self.work = work
        self.costed = costed
        self.done = threading.Event()
        self.error: BaseException | None = None


_on_engine = threading.local()  # .active: this thread is one of an NPU's engine threads


class _Engine:
    """One engine of the NPU: jobs run in order on its thread; ``run`` returns once the job is done.

    ``post`` queues a job and returns at once (the in-process transport's asynchronous
    submissions); ``run`` queues a costed piece of work and waits for it, or runs it in place
    when called on an engine thread already (a command of a posted job).

    The engine keeps a modeled timeline: a job starts when the previous one ends (or when it is
    queued, if later) and ends its modeled time after. With ``paced``, the job completes only
    when the wall clock has reached that end (a deadline wait that close() interrupts).
    """

    def __init__(self, name: str, paced: bool, record: Callable[[str, Cost, float], None]) -> None:
        self.name = name
        self.paced = paced
        self._record = record
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._free_at = 0.0  # time.monotonic() at which the modeled device finishes its queue
        self._thread = threading.Thread(target=self._loop, name=f"npu-{name}", daemon=True)
        self._thread.start()

    def run(self, work: Callable[[], Cost], timeout_s: float) -> None:
        if getattr(_on_engine, "active", False):
            self._execute(work)
            return
        if self._stop.is_set():
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the npu device was closed")
        job = _Job(work, costed=True)
        self._jobs.put(job)
        if not job.done.wait(timeout_s):
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device",
                               f"the npu's {self.name} engine did not finish a job within timeout_s={timeout_s}")
        if job.error is not None:
            raise job.error

    def post(self, job: Callable[[], None]) -> None:
        """Queue a job that costs itself (its commands call :meth:`run` on this thread); return at once."""
        self._jobs.put(_Job(job, costed=False))

    def _execute(self, work: Callable[[], Cost]) -> None:
        """Do the work, advance the modeled timeline, wait for it when paced, and count it."""
        start = time.monotonic()
        cost = work()
        self._free_at = max(self._free_at, start) + cost.seconds
        if self.paced:
            self._stop.wait(max(0.0, self._free_at - time.monotonic()))  # returns early only on close
        self._record(self.name, cost, time.monotonic() - start)

    def _loop(self) -> None:
        _on_engine.active = True
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.costed:
                    self._execute(job.work)
                else:
                    job.work()
            except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
                job.error = e
            job.done.set()

    def close(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        self._thread.join(timeout=10.0)


# ------------------------------------------------------------------------------------------
# the driver

_DRIVER_OPTIONS = {"paced": "0 or 1", "timeout_s": "seconds > 0", "preset": f"one of {sorted(PRESETS)}"}
#: int8 weights with int8 or uint8 activations, in either operand order: a column-major caller (BLAS
#: "col" order computes D^T = B^T A^T) swaps them, and the array does not care which side is which
_INT_PAIRS = ((DType.I8, DType.I8), (DType.U8, DType.I8), (DType.I8, DType.U8))
#: dtypes the DMA engine moves as they are, and the one conversion pair it has
_COPY_DTYPES = (DType.I8, DType.U8, DType.I32, DType.BF16, DType.F32)


def _parse(options: str) -> tuple[str, NpuModel, bool, float]:
    """(preset, model, paced, timeout_s) from ``preset=NAME,KEY=VALUE,...``; a bad part raises ``device.name``."""
    pairs = [p.partition("=")[::2] for p in options.split(",") if p] if options else []
    parts = dict(pairs)
    fields = {f.name: f.type for f in dataclasses.fields(NpuModel)}
    allowed = f"npu[:preset=NAME][,KEY=VALUE...] with KEY in {sorted(_DRIVER_OPTIONS) + sorted(fields)}"
    if len(parts) < len(pairs):  # a key given twice: the last one silently won (preset=a,...,preset=b)
        twice = sorted({k for k, _ in pairs if sum(k == j for j, _ in pairs) > 1})
        raise violation("device.name", f"npu:{options}", f"{allowed}, each once ({', '.join(twice)} given twice)")
    name = parts.pop("preset", DEFAULT_PRESET)
    if name not in PRESETS:
        raise violation("device.name", f"npu:{options}", f"preset one of {sorted(PRESETS)}")
    model, paced, timeout_s = PRESETS[name], False, 600.0
    try:
        for key, text in parts.items():
            if key == "paced":
                if text not in ("0", "1"):
                    raise ValueError("paced must be 0 or 1")
                paced = text == "1"
            elif key == "timeout_s":
                timeout_s = float(text)
                if not (timeout_s > 0 and math.isfinite(timeout_s)):
                    raise ValueError("timeout_s must be a finite number > 0")
            elif key in fields:
                model = dataclasses.replace(model, **{key: int(text) if fields[key] in (int, "int") else float(text)})
            else:
                raise ValueError(f"unknown option {key!r}")
        model.check()
    except ValueError as e:
        raise violation("device.name", f"npu:{options}", f"{allowed} ({e})") from None
    return name, model, paced, timeout_s


def _tile_of(x: np.ndarray, b: int, rows: slice, cols: slice) -> np.ndarray:
    """x[b, rows, cols] of a (batch, m|1, n|1) epilogue operand: a vector keeps its single row/column."""
    return x[b, rows if x.shape[1] != 1 else slice(None), cols if x.shape[2] != 1 else slice(None)]


class NpuDriver(Driver):
    """A simulated NPU: int8 and bf16 GEMMs with bias and relu, COPY, an arena, SRAM tiling, a cost model.

    Parameters
    ----------
    options : str
        What follows ``npu:`` in the device name: ``preset=NAME`` (default ``rk3588``; see
        :data:`PRESETS`), overrides of :class:`NpuModel` fields (``sram_kib=256``,
        ``clock_mhz=800`` ...), ``paced=1`` (jobs complete no earlier than their modeled time)
        and ``timeout_s`` (longest a caller waits for one job).

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> dev = ffaccel.open("npu:preset=rk3588,sram_kib=64")
    >>> a = np.arange(6, dtype=np.int8).reshape(2, 3)
    >>> ffaccel.matmul(a, a.T.copy(), device=dev).tolist()
    [[5, 14], [14, 50]]
    >>> use = dev.stats()["driver_usage"]
    >>> use["gemm_jobs"], use["modeled_s"] > 0
    (1, True)
    """

    name = "npu"
    version = "1.0"
    description = "simulated SoC NPU: int8->int32 and bf16->f32 GEMMs with bias/relu, COPY; SRAM tiling, cost model"

    def __init__(self, options: str = "") -> None:
        self.preset, self.model, self.paced, self.timeout_s = _parse(options)
        self._sram = np.zeros(self.model.sram_kib * 1024, np.uint8)  # the only memory the MAC array touches
        self._arena_bytes = self.model.arena_mib << 20
        self._arena_used = 0
        self._allocated: dict[int, int] = {}  # id(memory) -> bytes charged to the arena
        self._lock = threading.Lock()
        #: Jobs run, tiles, MACs and bytes moved, modeled device seconds (total and per engine),
        #: and wall seconds the simulation spent computing them.
        self.counters: dict[str, float] = {"gemm_jobs": 0, "copy_jobs": 0, "tiles": 0, "mac_cycles": 0,
                                        "dma_bytes": 0, "modeled_s": 0.0, "modeled_compute_s": 0.0,
                                        "modeled_copy_s": 0.0, "simulated_wall_s": 0.0}
        self._engines = {e: _Engine(e.name.lower(), self.paced, self._record) for e in Engine}

    # -- queries -------------------------------------------------------------------------
    def caps(self) -> DeviceCaps:
        combos = frozenset(c for c in GEMM_COMBOS
                           if (c.is_int and (c.a, c.b) in _INT_PAIRS)
                           or (c.a == DType.BF16 and self.model.bf16_macs_per_cycle > 0))
        copies = frozenset((s, d) for s, d in COPY_CONVERSIONS if s in _COPY_DTYPES and d in _COPY_DTYPES
                           and (s == d or {s, d} == {DType.F32, DType.BF16}))
        return DeviceCaps(combos=combos, copies=copies,
                          post_ops=frozenset({PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.RELU}))

    def usage(self) -> dict[str, float]:
        """The counters above, a copy (``Device.stats()["driver_usage"]``, in process and through a server)."""
        with self._lock:
            return dict(self.counters)

    def info(self) -> DriverInfo:
        m = self.model
        desc = (f"{self.description}; preset {self.preset}: {m.int8_macs_per_cycle} int8 MACs/cycle at "
                f"{m.clock_mhz:g} MHz, {m.sram_kib} KiB SRAM, {m.arena_mib} MiB arena"
                + (", paced" if self.paced else ""))
        return DriverInfo(self.name, self.version, desc, self.caps(), self.memory_bytes())

    def memory_bytes(self) -> int:
        return self._arena_bytes

    # -- the arena -------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> np.ndarray:
        """Zeroed memory charged to the arena in whole pages; MemoryError (OUT_OF_MEMORY) past it."""
        charge = -(-size_bytes // _PAGE_BYTES) * _PAGE_BYTES
        with self._lock:
            if self._arena_used + charge > self._arena_bytes:
                raise MemoryError(f"{charge} bytes do not fit: {self._arena_bytes - self._arena_used} "
                                  f"of the arena's {self._arena_bytes} left")
            mem = np.zeros(size_bytes, np.uint8)
            self._arena_used += charge
            self._allocated[id(mem)] = charge
        return mem

    def free(self, memory: object) -> None:
        with self._lock:
            self._arena_used -= self._allocated.pop(id(memory), 0)

    # -- jobs ---------------------------------------------------------------------------------
    def _record(self, engine: str, cost: Cost, wall_s: float) -> None:
        with self._lock:
            s = self.counters
            s["gemm_jobs" if engine == "compute" else "copy_jobs"] += 1
            s["tiles"] += cost.tiles
            s["mac_cycles"] += cost.mac_cycles
            s["dma_bytes"] += cost.dma_bytes
            s["modeled_s"] += cost.seconds
            s[f"modeled_{engine}_s"] += cost.seconds
            s["simulated_wall_s"] += wall_s

    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple[np.ndarray | None, ...]) -> None:
        self._engines[Engine.COMPUTE].run(lambda: self._run_gemm(op, a, b, c, d, epi), self.timeout_s)

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        def work() -> Cost:
            super(NpuDriver, self).copy(op, src, dst)  # f32 <-> bf16 rounds once, to nearest even
            return copy_cost(self.model, src.nbytes, dst.nbytes)
        self._engines[Engine.COPY].run(work, self.timeout_s)

    def _run_gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                  epi: tuple[np.ndarray | None, ...]) -> Cost:
        """The job: every D tile computed in SRAM, k tile by k tile, then post-processed and written."""
        is_int = op.combo.is_int
        m, n, k = op.m, op.n, op.k
        reads_ab, reads_c = op.reads_ab, op.reads_c
        t = plan_tiles(self.model, is_int, m, n, k if reads_ab else 0)
        in_bytes = 1 if is_int else 2
        acc_dt = np.int32 if is_int else np.float32
        # carve the SRAM: A tile, B tile, accumulator tile (their sizes are what plan_tiles fitted)
        sram = self._sram
        a_bytes, b_bytes = t.tm * t.tk * in_bytes, t.tk * t.tn * in_bytes
        acc_all = sram[a_bytes + b_bytes: a_bytes + b_bytes + t.tm * t.tn * 4].view(acc_dt)
        steps = int_steps(op.epilogue) if is_int else float_steps(op.epilogue, np.dtype(np.float32))
        alpha_u32 = np.uint32(int(op.alpha) & _MASK32) if is_int else None
        beta_u32 = np.uint32(int(op.beta) & _MASK32) if is_int else None
        with np.errstate(all="ignore"):  # overflow to inf, NaN propagation: IEEE results the spec wants
            for bi in range(op.batch):
                for m0 in range(0, m, t.tm):
                    rows = slice(m0, min(m, m0 + t.tm))
                    for n0 in range(0, n, t.tn):
                        cols = slice(n0, min(n, n0 + t.tn))
                        tm, tn = rows.stop - m0, cols.stop - n0
                        acc = acc_all[: tm * tn].reshape(tm, tn)
                        acc[...] = 0
                        for k0 in range(0, k if reads_ab else 0, t.tk):
                            ks = slice(k0, min(k, k0 + t.tk))
                            tk = ks.stop - k0
                            # DMA in: the tiles of op(A) and op(B) (of whatever dtype the op names)
                            sa = sram[: tm * tk * a.itemsize].view(a.dtype).reshape(tm, tk)
                            sb = sram[a_bytes: a_bytes + tk * tn * b.itemsize].view(b.dtype).reshape(tk, tn)
                            np.copyto(sa, a[bi, rows, ks])
                            np.copyto(sb, b[bi, ks, cols])
                            self._mac(is_int, sa, sb, acc)
                        self._post(op, is_int, acc, c, bi, rows, cols, reads_c, alpha_u32, beta_u32, steps, epi)
                        # DMA out: round (floats) into D's dtype and write the tile
                        np.copyto(d[bi, rows, cols], acc, casting="unsafe")
        extra = (c.itemsize if reads_c and c is not None else 0) + sum(
            x.itemsize for p, x in zip(op.epilogue, epi) if x is not None and p.kind in OPERAND_KINDS)
        return gemm_cost(self.model, is_int, op.batch, m, n, k if reads_ab else 0, d.itemsize, extra)

    @staticmethod
    def _mac(is_int: bool, sa: np.ndarray, sb: np.ndarray, acc: np.ndarray) -> None:
        """The MAC array: acc += sa @ sb (int32 wrapping, or f32 accumulation of exact bf16 products)."""
        if is_int:
            # int8 products summed in float64 are exact integers (|sum| < k * 2**16 << 2**53);
            # adding them into the int32 accumulator through uint32 wraps modulo 2**32
            part = np.matmul(sa.astype(np.float64), sb.astype(np.float64)).astype(np.int64)
            np.add(acc.view(np.uint32), (part & _MASK32).astype(np.uint32), out=acc.view(np.uint32))
        else:
            acc += np.matmul(sa.astype(np.float32), sb.astype(np.float32))  # bf16 x bf16 is exact in f32

    @staticmethod
    def _post(op: GemmOp, is_int: bool, acc: np.ndarray, c: np.ndarray | None, bi: int, rows: slice, cols: slice,
              reads_c: bool, alpha_u32: np.uint32 | None, beta_u32: np.uint32 | None, steps: list,
              epi: tuple[np.ndarray | None, ...]) -> None:
        """The post-processing unit: acc = epilogue(alpha * acc + beta * C) on one tile, in place."""
        if is_int:
            u = acc.view(np.uint32)
            if op.reads_ab and alpha_u32 != 1:
                np.multiply(u, alpha_u32, out=u)
            if reads_c:
                np.add(u, c[bi, rows, cols].view(np.uint32) * beta_u32, out=u)
        else:
            if op.reads_ab and op.alpha != 1:
                acc *= np.float32(op.alpha)
            if reads_c:
                acc += np.float32(op.beta) * c[bi, rows, cols].astype(np.float32)
        if steps:
            tile_epi = tuple(None if x is None else _tile_of(x, bi, rows, cols)[None] for x in epi)
            run_steps(steps, acc[None], tile_epi)

    def async_queue(self, engine: Engine) -> Callable[[Callable[[], None]], None]:
        """Submissions queue on the engine's thread and ``submit`` returns at once (fences signal later)."""
        return self._engines[engine].post

    def close(self) -> None:
        for e in self._engines.values():
            e.close()


__all__ = ["Cost", "DEFAULT_PRESET", "NpuDriver", "NpuModel", "PRESETS", "Tiles", "copy_cost", "gemm_cost",
           "plan_tiles"]
