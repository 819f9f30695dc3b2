"""The ``dask`` driver: large GEMMs spread over a Dask cluster (``dask.distributed``).

``ffaccel.open("dask://HOST:PORT")`` connects a :class:`distributed.Client` to a running
scheduler; ``DaskDriver(client=...)`` uses a client the caller already has. Options ride in
the device name as a query string, ``dask://HOST:PORT?min_flops=1e9&parts=8&worker=cpu``
(see :class:`DaskDriver` for each one).

How a GEMM runs
---------------
* **Small GEMMs run locally.** Below ``min_flops`` (2 * batch * m * n * k), and whenever A and
  B are not read (alpha == 0 or k == 0), the GEMM runs in the client's process on the
  ``local`` driver (``cpu`` by default); nothing goes to the cluster.
* **Large GEMMs are cut into tiles.** A batch is spread over its batch dimension first; what
  remains of the ``parts`` target is cut into a 2-D grid of output blocks over m and n, and,
  where k dominates (k > 2 * max(m, n)), k is split as well. Every tile is one task, run on a
  worker by that worker's own ffaccel driver (``worker``: ``cpu``, ``torch:cuda``, any
  installed driver, or, with ``worker_opener``, a worker-local device such as a server). A
  tile without a k-split is a complete GEMM of the same combination, scalars and epilogue, with
  its slices of C, the bias vectors and E, so the worker's driver applies alpha, beta and the
  epilogue itself. A k-split tile's chunks compute partial products ``op(A)[:, ks] @
  op(B)[ks, :]`` in the accumulate type (f32 for f16/bf16, int32 wrapping mod 2**32); one
  reduction task per output tile sums them in that type, then applies alpha, beta * C and the
  epilogue once and rounds once to D's dtype. Summing s f32 partials adds s - 1 roundings to
  the k of each chunk, well inside the spec's ``c * (k + 2) * u`` bound; int32 sums are exact
  modulo 2**32, as the spec requires.

What moves, and when
--------------------
Per call, each input block is scattered to the cluster **once** (one ``Client.scatter`` round
trip for all of them): A's row blocks (m x k, per k-chunk), B's column blocks (k x n), C's
and E's output-shaped blocks and the bias slices. The scheduler then copies a block to the
worker that runs a tile needing it, at most once per worker. Each D tile (or, for a k-split,
the reduced tile) comes back once and is written into D's window; nothing else is written.
A broadcast operand (batch stride 0) travels as one entry. Blocks are released when the
call returns. Operands the caller keeps on the cluster (:meth:`DaskDriver.keep`) are
scattered on their first use and reused by later calls until :meth:`DaskDriver.release`.

For an m x n output cut into t x t tiles, a tile reads ``2 * t * k * itemsize`` bytes and does
``2 * t * t * k`` FLOPs: ``itemsize / t`` bytes per FLOP, so bigger tiles amortise the
network better (t = 2048 in f32 is 1 byte per 512 FLOPs).
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..abi import CopyOp, DeviceCaps, Gemm, GemmOp, LruCache, Matrix, PostOpDesc, check_command
from ..spec import (
    OPERAND_POST_OPS,
    DType,
    ErrorCode,
    FFAccelError,
    GemmCombo,
    Limits,
    PostOpKind,
    dtype_of_numpy,
    numpy_dtype,
    violation,
)
from . import open_driver
from .base import Driver, DriverInfo, GemmKernel
from .connect import connect_wait_s, retry_until_ready
from .epilogue import float_steps, int_steps, run_steps

#: GEMMs with fewer FLOPs than this run locally (about a second of one core's BLAS at 1e9 FLOP/s).
DEFAULT_MIN_FLOPS = 2**30
#: k is split when it is larger than this many times max(m, n).
K_DOMINATES = 2
_U32 = np.uint32
_MASK32 = 0xFFFF_FFFF
_OPERANDED = OPERAND_POST_OPS


def _import_distributed() -> Any:
    """dask.distributed, imported on first use so ``import ffaccel`` never needs it."""
    try:
        import distributed
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise FFAccelError(ErrorCode.UNSUPPORTED, "device",
                           "the dask driver needs dask.distributed; got ImportError "
                           f"({e}); allowed: install the extra, pip install 'ffaccel[dask]'") from None
    return distributed


# --------------------------------------------------------------------------------------
# tiles: what a worker receives


@dataclass(frozen=True)
class _TileSpec:
    """A tile's GEMM: everything but the arrays (picklable, small)."""

    combo: GemmCombo
    m: int
    n: int
    k: int
    batch: int
    alpha: float | int
    beta: float | int
    has_c: bool
    #: (kind, param0, param1, operand dtype or None) per post-op
    epilogue: tuple[tuple[PostOpKind, float | int, float | int, DType | None], ...]
    #: batch stride 0 for A, B, C, then each epilogue operand (in epilogue order)
    broadcast: tuple[bool, ...]

    def descriptor(self, handles: Sequence[int]) -> Gemm:
        """The ABI descriptor of this tile on compact operands: A, B, [C], D, epilogue operands."""
        it = iter(handles)
        bc = iter(self.broadcast)
        c = self.combo
        bs = self.batch > 1

        def mat(dtype: DType, rows: int, cols: int, bcast: bool) -> Matrix:
            return Matrix(next(it), dtype, rows, cols, batch_stride_elems=0 if bcast or not bs else rows * cols)

        a = mat(c.a, self.m, self.k, next(bc))
        b = mat(c.b, self.k, self.n, next(bc))
        cb = next(bc)
        cm = mat(c.d, self.m, self.n, cb) if self.has_c else None
        d = mat(c.d, self.m, self.n, False)
        epi = []
        for kind, p0, p1, dt in self.epilogue:
            operand = None
            if dt is not None:
                rows, cols = {PostOpKind.BIAS_N: (1, self.n), PostOpKind.BIAS_M: (self.m, 1)}.get(
                    kind, (self.m, self.n))
                operand = mat(dt, rows, cols, next(bc))
            epi.append(PostOpDesc(kind, p0, p1, operand))
        return Gemm(m=self.m, n=self.n, k=self.k, a=a, b=b, c=cm, d=d, alpha=self.alpha, beta=self.beta,
                    batch=self.batch, acc_dtype=c.acc, epilogue=tuple(epi))


def _partial_spec(spec: _TileSpec) -> _TileSpec:
    """A k-chunk's GEMM: alpha 1, no C, no epilogue, output in the accumulate type."""
    c = spec.combo
    combo = GemmCombo(c.a, c.b, c.acc, c.acc)
    return replace(spec, combo=combo, alpha=1 if c.is_int else 1.0, beta=0 if c.is_int else 0.0, has_c=False,
                   epilogue=(), broadcast=spec.broadcast[:2] + (False,))


# --------------------------------------------------------------------------------------
# worker side (module-level functions: tasks pickle them by reference)

_worker_lock = threading.Lock()
_worker_drivers: dict[str, Driver] = {}
_worker_devices: dict[tuple[str, Any, str | None], Any] = {}
_worker_kernels: LruCache[tuple[str, bytes], GemmKernel] = LruCache(1024)


def _worker_driver(name: str) -> Driver:
    drv = _worker_drivers.get(name)
    if drv is None:
        with _worker_lock:
            drv = _worker_drivers.get(name)
            if drv is None:
                drv = _worker_drivers[name] = open_driver(name)
    return drv


def _worker_caps(name: str, opener: Callable[[str], Any] | None) -> DeviceCaps:
    if opener is not None:
        return _worker_device(name, opener).info().caps
    return _worker_driver(name).caps()


def _this_worker() -> str | None:
    """The address of the Dask worker running this task (None outside a task)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def _worker_device(name: str, opener: Callable[[str], Any]) -> Any:
    # one device per worker, also where several workers share a process (in-process workers): each
    # worker may reach a device of its own (a worker-local server), and each answers the caps probe
    key = (name, opener, _this_worker())
    dev = _worker_devices.get(key)
    if dev is None:
        with _worker_lock:
            dev = _worker_devices.get(key)
            if dev is None:
                dev = _worker_devices[key] = opener(name)
    return dev


def _run_tile(name: str, opener: Callable[[str], Any] | None, spec: _TileSpec,
              a: np.ndarray, b: np.ndarray, c: np.ndarray | None, *epi: np.ndarray) -> np.ndarray:
    """Run one tile GEMM on this worker's device; returns the (batch, m, n) D tile."""
    d = np.empty((spec.batch, spec.m, spec.n), numpy_dtype(spec.combo.d))
    operands = [a, b] + ([c] if spec.has_c else []) + list(epi)
    if opener is not None:
        _run_tile_on_device(_worker_device(name, opener), spec, operands, d)
        return d
    raw = spec.descriptor(range(1, 2 + len(operands))).encode()
    drv = _worker_driver(name)
    kernel = _worker_kernels.get((name, raw))  # least recently used dropped past 1024 geometries
    if kernel is None:
        # the tile passes the same validator as every submission before its driver sees it
        op = check_command(raw, drv.caps())
        assert isinstance(op, GemmOp)
        kernel = drv.prepare_gemm(op)
        _worker_kernels.put((name, raw), kernel)
    full = [np.broadcast_to(x, (spec.batch,) + x.shape[1:]) for x in operands]
    ea = iter(full[3 if spec.has_c else 2:])
    epi_arrays = tuple(next(ea) if dt is not None else None for _, _, _, dt in spec.epilogue)
    kernel(full[0], full[1], full[2] if spec.has_c else None, d, epi_arrays)
    return d


def _run_tile_on_device(dev: Any, spec: _TileSpec, operands: list[np.ndarray], d: np.ndarray) -> None:
    """The same tile through a Device's buffers and ABI (for worker-local servers)."""
    bufs = []
    try:
        for x in operands:
            buf = dev.alloc(max(1, x.nbytes))
            if x.nbytes:
                buf.write(x)
            bufs.append(buf)
        out = dev.alloc(max(1, d.nbytes))
        bufs.append(out)
        handles = [buf.handle for buf in bufs[:-1]]
        order = handles[:3 if spec.has_c else 2] + [out.handle] + handles[3 if spec.has_c else 2:]
        g = spec.descriptor(order)
        # descriptor() takes handles in A, B, [C], D, epilogue order
        dev.submit([g]).wait()
        if d.size:
            d[...] = out.read(d.dtype, d.size).reshape(d.shape)
    finally:
        for buf in bufs:
            buf.free()


def _combine(spec: _TileSpec, partials: Sequence[np.ndarray], c: np.ndarray | None,
             *epi: np.ndarray) -> np.ndarray:
    """Reduce a k-split tile: sum the partials, then alpha, beta * C, the epilogue, one rounding."""
    combo = spec.combo
    if combo.is_int:
        acc = partials[0].view(_U32).copy()
        for p in partials[1:]:
            np.add(acc, p.view(_U32), out=acc)  # int32 two's complement == uint32 mod 2**32
        ua, ub = _U32(int(spec.alpha) & _MASK32), _U32(int(spec.beta) & _MASK32)
        if ua != 1:
            np.multiply(acc, ua, out=acc)
        if spec.beta != 0:
            assert c is not None
            acc = acc + c.view(_U32) * ub
        x = _full(acc, spec).view(np.int32)
        _int_epilogue(spec, x, epi)
        return x
    acc_t = numpy_dtype(combo.acc)
    with np.errstate(all="ignore"):  # overflow to inf and NaN propagation are the IEEE results wanted
        x = partials[0].astype(acc_t, copy=True)
        for p in partials[1:]:
            np.add(x, p, out=x)
        if spec.alpha != 1:
            np.multiply(x, acc_t.type(spec.alpha), out=x)
        if spec.beta != 0:  # beta == 0: C is not read
            assert c is not None
            x = x + np.multiply(c, spec.beta, dtype=acc_t)
        x = _full(x, spec)
        _float_epilogue(spec, x, epi)
        if combo.d == combo.acc:
            return x
        # one round to nearest even; ml_dtypes' f32 -> bf16 and NumPy's f32 -> f16 are single roundings
        return x.astype(numpy_dtype(combo.d))


def _full(x: np.ndarray, spec: _TileSpec) -> np.ndarray:
    """x as a fresh, writeable (batch, m, n) array (x may be a broadcast partial of one entry)."""
    shape = (spec.batch, spec.m, spec.n)
    return x if x.shape == shape and x.flags.writeable and x.flags.c_contiguous else np.broadcast_to(x, shape).copy()


def _indexed(spec: _TileSpec, epi: Sequence[np.ndarray]) -> tuple[np.ndarray | None, ...]:
    """The tile's operands (one per post-op that has one) as one entry per post-op."""
    ops = iter(epi)
    return tuple(next(ops) if dt is not None else None for _, _, _, dt in spec.epilogue)


def _float_epilogue(spec: _TileSpec, x: np.ndarray, epi: Sequence[np.ndarray]) -> None:
    run_steps(float_steps(spec.epilogue, x.dtype), x, _indexed(spec, epi))


def _int_epilogue(spec: _TileSpec, x: np.ndarray, epi: Sequence[np.ndarray]) -> None:
    run_steps(int_steps(spec.epilogue), x, _indexed(spec, epi))


# --------------------------------------------------------------------------------------
# planning: which blocks, which tiles


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting n into min(parts, n) near-equal pieces."""
    parts = max(1, min(parts, n))
    return [(n * i // parts, n * (i + 1) // parts) for i in range(parts)]


def _grid(batch: int, m: int, n: int, k: int, parts: int, split_k: bool = True) -> tuple[int, int, int, int]:
    """(batch chunks, m blocks, n blocks, k chunks) for about ``parts`` tiles (k kept whole unless ``split_k``)."""
    nb = min(batch, parts)
    left = math.ceil(parts / nb)
    s = 1
    if split_k and k > K_DOMINATES * max(m, n):
        s = max(1, min(left, k // max(1, m, n)))
        left = math.ceil(left / s)
    # near-square output tiles: p * q ~ left with m / p ~ n / q
    p = max(1, min(m, left, round(math.sqrt(left * m / max(1, n)))))
    q = max(1, min(n, math.ceil(left / p)))
    return nb, p, q, s


def _extent(address: int, shape: Sequence[int], strides: Sequence[int], itemsize: int) -> tuple[int, int]:
    """[lo, hi) bytes an array view spans (empty at ``address`` when it has no element)."""
    if 0 in shape:
        return address, address
    lo = address + sum((n - 1) * st for n, st in zip(shape, strides) if st < 0)
    hi = address + sum((n - 1) * st for n, st in zip(shape, strides) if st > 0) + itemsize
    return lo, hi


def _overlaps(span: tuple[int, int], lo: int, hi: int) -> bool:
    return span[0] < hi and lo < span[1]


def _compact(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of a block, keeping a broadcast batch (stride 0) as one entry."""
    if x.shape[0] > 1 and x.strides[0] == 0:
        x = x[:1]
    return np.ascontiguousarray(x)


def _is_broadcast(x: np.ndarray) -> bool:
    return x.shape[0] > 1 and x.strides[0] == 0


# --------------------------------------------------------------------------------------
# the driver


def _intersect(a: DeviceCaps, b: DeviceCaps) -> DeviceCaps:
    la, lb = a.limits, b.limits
    limits = Limits(min(la.max_dim, lb.max_dim), min(la.max_batch, lb.max_batch),
                    min(la.max_epilogue_ops, lb.max_epilogue_ops), la.alignment_elems,
                    la.max_buffer_bytes)
    return DeviceCaps(a.combos & b.combos, a.copies, a.post_ops & b.post_ops, a.engines, limits)


def _parse_options(options: str) -> tuple[str, dict[str, str]]:
    """``//HOST:PORT?key=value&...`` -> ("tcp://HOST:PORT", {key: value}).

    The whole name is checked before anything connects: a ``tcp`` address is exactly a host
    and a port in 1..65535 (no path, user, query or fragment of its own), and each option is
    given at most once (``min_flops=1&min_flops=2`` is refused, not read as either value).
    """
    where, _, query = options.partition("?")
    if where.startswith("//"):
        address = "tcp:" + where
    elif "://" in where:
        address = where
    else:
        raise violation("device.name", f"dask:{options}", "dask://HOST:PORT[?key=value&...]")
    if where in ("//", "") or where.endswith("://"):
        raise violation("device.name", f"dask:{options}", "dask://HOST:PORT with a host and a port")
    try:
        parts = urlsplit(address)
    except ValueError:  # "dask://[::1": an unclosed IPv6 bracket (was the CLI's "internal error")
        raise violation("device.name", f"dask:{options}", "dask://HOST:PORT with a host and a port") from None
    if parts.scheme == "tcp":
        try:
            host, port = parts.hostname, parts.port
        except ValueError:  # a port that is not a number, or out of 0..65535
            host = port = None
        if not host or not port or parts.path or parts.fragment or parts.username is not None or "#" in where:
            raise violation("device.name", f"dask:{options}",
                            "dask://HOST:PORT with a host and a port in 1..65535 (no path, user or fragment)")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise violation("device.name", f"dask:{options}", "a query string key=value&key=value") from None
    opts: dict[str, str] = {}
    for key, value in pairs:
        if key in opts:
            raise violation("device.name", f"dask:...?{key}={opts[key]}&{key}={value}",
                            f"each option at most once ({key} is given twice)")
        opts[key] = value
    return address, opts


def _option(key: str, text: str) -> Any:
    """One query-string option's value, converted and checked (INVALID_PARAMETER naming it)."""
    conv = _URL_KEYS.get(key)
    if conv is None:
        raise violation("device.name", f"dask:{key}={text}", f"options {sorted(_URL_KEYS)}")
    if conv is str:
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if conv is int:
        if not (math.isfinite(value) and value.is_integer()):
            raise violation("device.name", f"dask:{key}={text}", f"{key} as a whole number")
        return int(value)
    if math.isnan(value) and text.strip().lower() not in ("nan", "+nan", "-nan"):
        raise violation("device.name", f"dask:{key}={text}", f"{key} as a number")
    return value  # range checks (and NaN) are the keyword's own, below


_URL_KEYS = {"min_flops": float, "parts": int, "worker": str, "local": str, "timeout_s": float, "wait_s": float}
#: Longest a TCP connect to the scheduler may take before the driver gives up on it (seconds).
PROBE_TIMEOUT_S = 5.0


def _check_scheduler_listens(address: str, wait_s: float, probe_timeout_s: float,
                             handshake_timeout_s: float | None = None) -> None:
    """Fail fast (DEVICE_LOST) when nothing listens at a ``tcp://`` address.

    ``distributed.Client`` retries a refused connection for its whole timeout (36 s for a port
    nobody listens on); one plain TCP connect answers in about a millisecond. A refused port
    is retried only while ``wait_s`` lasts (a scheduler that is starting). Other schemes are
    left to Dask.

    A Dask server speaks first (its handshake), so the probe also waits up to
    ``handshake_timeout_s`` for that first byte: something else listening there (the dashboard's
    HTTP port 8787, another service) is DEVICE_LOST at once, where ``distributed.Client`` would
    wait for its handshake for ever (its read has no deadline).
    """
    try:
        parts = urlsplit(address)
    except ValueError:  # "dask://[::1": an unclosed IPv6 bracket (was the CLI's "internal error")
        raise violation("device.name", f"dask:{address}", "dask://HOST:PORT with a host and a port") from None
    if parts.scheme != "tcp":
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or port is None:
        raise violation("device.name", f"dask:{address}", "dask://HOST:PORT with a host and a port")

    def attempt() -> socket.socket:
        return socket.create_connection((host, port), timeout=probe_timeout_s)

    try:
        probe = retry_until_ready(attempt, wait_s, (ConnectionRefusedError,))
    except OSError as e:
        waited = f" within wait_s={wait_s:g} s" if wait_s else ""
        raise FFAccelError(ErrorCode.DEVICE_LOST, "address",
                           f"no Dask scheduler listens at {address}{waited}; got {e.strerror or e!r}; "
                           "allowed: the address of a running scheduler") from None
    wait = probe_timeout_s if handshake_timeout_s is None else handshake_timeout_s
    with probe:
        try:
            probe.settimeout(wait)
            first = probe.recv(1)
        except OSError as e:  # socket.timeout included
            first, why = b"", f"got {e.strerror or e!r} after {wait:g} s"
        else:
            why = "it closed the connection"
    if not first:
        raise FFAccelError(ErrorCode.DEVICE_LOST, "address",
                           f"something listens at {address} but sent no Dask handshake ({why}); allowed: the "
                           "address of a running Dask scheduler (its port, 8786 by default, not the dashboard's)")


def _naming(option: str, value: str, e: FFAccelError) -> FFAccelError:
    """``e`` (a device name refused) saying which option carried that name: ``worker='' ...``."""
    if e.rule != "device.name":
        return e
    return FFAccelError(e.code, e.param, f"the dask option {option}={value!r} must name a device; {e.message}",
                        rule=e.rule)


class DaskDriver(Driver):
    """GEMMs spread over a Dask cluster: tiles run on the workers' own ffaccel drivers.

    Parameters
    ----------
    address : str, optional
        What follows ``dask:`` in a device name: ``"//HOST:PORT"`` (TCP) or
        ``"//HOST:PORT?min_flops=1e9&parts=8&worker=cpu&local=cpu&timeout_s=600"``; any other
        ``SCHEME://HOST:PORT`` Dask accepts is passed through. Mutually exclusive with ``client``.
    client : distributed.Client, optional
        An existing client; the driver never closes it.
    min_flops : float, optional
        GEMMs below this many FLOPs (2 * batch * m * n * k) run locally; larger ones get about FLOPs / min_flops tiles
        (default :data:`DEFAULT_MIN_FLOPS`; 0 tiles everything, as the tests do).
    parts : int, optional
        Tiles to aim for per GEMM (default: twice the cluster's worker threads at connection time).
    worker : str
        The device name each worker opens for its tiles (``"cpu"``, ``"torch:cuda"``, any
        installed driver; default ``"cpu"``).
    worker_opener : callable, optional
        ``worker_opener(worker) -> Device`` run on each worker, once, instead of opening a driver:
        for worker-local devices the driver registry does not name, such as a server
        (pass ``ffaccel.open``). Tiles then travel through that device's buffers and ABI.
    local : str
        The driver that runs small GEMMs and COPY in the client's process (default ``"cpu"``).
    timeout_s : float
        Longest wait for a GEMM's tiles; past it the call raises DEVICE_LOST (default 600).
    wait_s : float, optional
        How long to wait for a scheduler that refuses connections (one that is starting):
        default ``$FFACCEL_CONNECT_TIMEOUT``, else 0, so a refused port fails at once with
        DEVICE_LOST instead of after Dask's own 30 s of retries (:mod:`ffaccel.drivers.connect`).

    Examples
    --------
    >>> import ffaccel                                             # doctest: +SKIP
    >>> from distributed import Client, LocalCluster               # doctest: +SKIP
    >>> from ffaccel.drivers.dask import DaskDriver                # doctest: +SKIP
    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1)  # doctest: +SKIP
    >>> dev = ffaccel.runtime.Device("dask", ffaccel.transports.InprocTransport(
    ...     DaskDriver(client=Client(cluster), min_flops=1e9)))    # doctest: +SKIP
    >>> ffaccel.matmul(a, b, device=dev)                           # doctest: +SKIP
    """

    name = "dask"
    version = "1.0"
    description = "GEMMs tiled over a Dask cluster (dask.distributed); each tile on a worker's ffaccel driver"

    def __init__(self, address: str | None = None, *, client: Any = None, min_flops: float | None = None,
                 parts: int | None = None, worker: str = "cpu", worker_opener: Callable[[str], Any] | None = None,
                 local: str = "cpu", timeout_s: float = 600.0, wait_s: float | None = None) -> None:
        self._kept: dict[int, tuple[np.ndarray, dict[tuple, Any]]] = {}
        self._own_client = False
        if address is None and client is None:  # ffaccel.open("dask") passes no options
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "name",
                               "the dask device needs the address of a running scheduler; got 'dask' with none, "
                               "allowed dask://HOST:PORT[?key=value&...], e.g. dask://127.0.0.1:8786",
                               rule="device.name")
        if address is not None and client is not None:
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "client",
                               f"give an address or a client, not both; got address={address!r} and a client")
        if address is not None:
            address, opts = _parse_options(address)
            for key, text in opts.items():
                value = _option(key, text)
                if key == "min_flops":
                    min_flops = value
                elif key == "parts":
                    parts = value
                elif key == "worker":
                    worker = value
                elif key == "local":
                    local = value
                elif key == "wait_s":
                    wait_s = value
                else:
                    timeout_s = value
        min_flops = DEFAULT_MIN_FLOPS if min_flops is None else min_flops
        if not (isinstance(min_flops, (int, float)) and min_flops >= 0 and math.isfinite(min_flops)):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "min_flops",
                               f"min_flops must be a finite number >= 0; got {min_flops!r}")
        if parts is not None and not (isinstance(parts, int) and not isinstance(parts, bool) and parts >= 1):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "parts", f"parts must be an integer >= 1; got {parts!r}")
        if isinstance(timeout_s, bool) or not (0 < timeout_s < math.inf):  # a wait never lasts forever
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "timeout_s",
                               f"timeout_s must be a finite number of seconds > 0; got {timeout_s!r}")
        self.min_flops = float(min_flops)
        self.worker = worker
        self.worker_opener = worker_opener
        self.timeout_s = float(timeout_s)
        try:  # a bad local driver name is refused before anything connects
            self._local = open_driver(local)
        except FFAccelError as e:
            raise _naming("local", local, e) from None
        wait = connect_wait_s(wait_s)
        if client is None:  # before importing Dask (seconds): a refused port fails in milliseconds
            _check_scheduler_listens(address, wait, min(self.timeout_s, PROBE_TIMEOUT_S), min(self.timeout_s, 30.0))
        dist = _import_distributed()
        self._dist = dist
        self._own_client = client is None
        if client is None:
            try:
                client = dist.Client(address, timeout=min(self.timeout_s, 30.0), set_as_default=False)
            except (OSError, TimeoutError) as e:
                raise FFAccelError(ErrorCode.DEVICE_LOST, "address",
                                   f"no Dask scheduler answered at {address}; got {e!r}; "
                                   "allowed: the address of a running scheduler") from None
            except Exception as e:  # noqa: BLE001 - Dask refused the address itself (e.g. a malformed inproc://)
                raise FFAccelError(ErrorCode.INVALID_PARAMETER, "name",
                                   f"Dask refused the scheduler address {address!r}; got {e!r}; allowed "
                                   "dask://HOST:PORT or another SCHEME://ADDRESS Dask accepts",
                                   rule="device.name") from None
        self.client = client
        try:
            threads, worker_caps = self._probe(client, worker, worker_opener, wait)
        except FFAccelError as e:
            self.close()
            raise _naming("worker", worker, e) from None
        except Exception as e:  # noqa: BLE001 - the workers could not open their device
            self.close()
            raise FFAccelError(ErrorCode.DEVICE_LOST, "worker",
                               f"the workers could not open device {worker!r}; got {e!r}") from None
        self.parts = parts if parts is not None else max(1, 2 * threads)
        self._worker_caps = worker_caps  # what a tile may ask of a worker (a k-split's partial combination)
        self._caps = _intersect(self._local.caps(), worker_caps)
        #: What ran where: GEMMs run locally / on the cluster, tile tasks, k-split reductions, bytes
        #: scattered, and seconds spent scattering, waiting for the tiles, and gathering + writing D.
        self.stats: dict[str, float] = {"local": 0, "distributed": 0, "tiles": 0, "reductions": 0,
                                        "bytes_scattered": 0, "scatter_s": 0.0, "compute_s": 0.0, "gather_s": 0.0}
        self._stats_lock = threading.Lock()

    _probed: dict[tuple[str, str, Any], tuple[int, DeviceCaps]] = {}

    def _probe(self, client: Any, worker: str, opener: Callable[[str], Any] | None,
               wait_s: float = 0.0) -> tuple[int, DeviceCaps]:
        """(worker threads, what every worker's device supports): once per client and worker device.

        Each worker present is asked (one task per worker) and the answers are intersected: a
        cluster whose workers differ (one without the GPU, an older install) declares only what
        all of them can do, so no tile lands on a worker that must refuse it. A scheduler with
        no worker is waited for up to ``wait_s``, then refused with DEVICE_LOST at once rather
        than after ``timeout_s`` (a task with no worker to run on would wait that long).
        """
        key = (client.id, worker, opener)
        got = DaskDriver._probed.get(key)
        if got is None:
            nthreads = client.nthreads()
            if not nthreads and wait_s > 0:
                try:
                    client.wait_for_workers(1, timeout=wait_s)
                except TimeoutError:
                    pass
                nthreads = client.nthreads()
            if not nthreads:
                waited = f" within wait_s={wait_s:g} s" if wait_s else ""
                raise FFAccelError(ErrorCode.DEVICE_LOST, "address",
                                   f"the Dask scheduler at {client.scheduler.address} has no workers{waited}; "
                                   "allowed: a scheduler with at least one worker (or wait_s=S to wait for one)")
            # one task per worker; a worker that left meanwhile lets another answer for it
            futures = [client.submit(_worker_caps, worker, opener, workers=[w], allow_other_workers=True, pure=False)
                       for w in nthreads]
            deadline = time.monotonic() + self.timeout_s
            try:
                answers = [f.result(timeout=max(0.0, deadline - time.monotonic())) for f in futures]
            finally:  # a worker that refused or hung leaves no task behind (see _withdraw)
                for f in futures:
                    f.release()
            caps = answers[0]
            for other in answers[1:]:
                caps = _intersect(caps, other)
            got = DaskDriver._probed[key] = (sum(nthreads.values()), caps)
        return got

    # -- queries -------------------------------------------------------------------------
    def caps(self) -> DeviceCaps:
        """What both the local driver and the workers' driver support."""
        return self._caps

    def info(self) -> DriverInfo:
        return DriverInfo(self.name, self.version,
                          f"{self.description}; workers run {self.worker!r} in about {self.parts} tiles per GEMM, "
                          f"GEMMs under min_flops={self.min_flops:.3g} FLOPs and COPY run here on {self._local.name!r}",
                          self._caps, self.memory_bytes())

    # -- data kept on the cluster --------------------------------------------------------
    def keep(self, memory: np.ndarray) -> None:
        """Keep blocks of ``memory`` on the cluster across calls (a distributed buffer).

        Blocks of operands that lie inside ``memory`` are scattered on first use and reused by
        later GEMMs with the same geometry. The caller promises not to change ``memory`` until
        :meth:`release`; ``Buffer.array(np.uint8)`` gives a runtime buffer's memory.
        """
        base = memory.__array_interface__["data"][0]
        self._kept.setdefault(base, (memory, {}))

    def release(self, memory: np.ndarray) -> None:
        """Forget ``memory``'s blocks on the cluster (they are freed there)."""
        self._kept.pop(memory.__array_interface__["data"][0], None)

    def _forget_written(self, x: np.ndarray) -> None:
        """Drop kept blocks that overlap ``x``, which this device has just written (a GEMM's D, a
        COPY's destination): the cluster's copy of them is stale. The caller promises not to
        change kept memory; the device's own writes into it (an arena holding weights and
        activations, D == C in place) are this driver's to account for."""
        if not self._kept or x.size == 0:
            return
        lo, hi = _extent(x.__array_interface__["data"][0], x.shape, x.strides, x.itemsize)
        for _, cache in self._kept.values():
            for ck in [ck for ck in cache if _overlaps(_extent(ck[0], ck[1], ck[2], np.dtype(ck[3]).itemsize), lo, hi)]:
                del cache[ck]  # dropped, not released: a call running now may still use it

    def _kept_cache(self, x: np.ndarray) -> dict[tuple, Any] | None:
        if not self._kept:
            return None
        lo = x.__array_interface__["data"][0]
        for base, (mem, cache) in self._kept.items():
            if base <= lo < base + mem.nbytes:
                return cache
        return None

    # -- work -----------------------------------------------------------------------------
    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple[np.ndarray | None, ...]) -> None:
        """D = epilogue(alpha * op(A) @ op(B) + beta * C): tiled on the cluster when large enough."""
        flops = 2.0 * op.batch * op.m * op.n * op.k
        if not op.reads_ab or flops < self.min_flops or flops == 0:
            with self._stats_lock:
                self.stats["local"] += 1
            self._local.gemm(op, a, b, c, d, epi)
            self._forget_written(d)
            return
        parts = self.parts if self.min_flops <= 0 else max(1, min(self.parts, int(flops // self.min_flops)))
        self._gemm_tiled(op, a, b, c, d, epi, parts)

    def prepare_gemm(self, op: GemmOp) -> GemmKernel:
        return lambda a, b, c, d, epi: self.gemm(op, a, b, c, d, epi)

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        """COPY runs locally: the buffers live in the client's memory."""
        self._local.copy(op, src, dst)
        self._forget_written(dst)

    def _gemm_tiled(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                    epi: tuple[np.ndarray | None, ...], parts: int) -> None:
        # a k-split's chunks are GEMMs into the accumulate type: only where every worker declares that
        # combination (a worker device narrowed to f16 -> f16 cannot return f32 partials)
        combo = op.combo
        split_k = GemmCombo(combo.a, combo.b, combo.acc, combo.acc) in self._worker_caps.combos
        nb, p, q, s = _grid(op.batch, op.m, op.n, op.k, parts, split_k)
        b_cuts, m_cuts, n_cuts, k_cuts = _cuts(op.batch, nb), _cuts(op.m, p), _cuts(op.n, q), _cuts(op.k, s)
        c_read = c if op.reads_c else None
        # Every block to scatter, named by (operand, batch range, row range, col range); one scatter call.
        blocks: dict[tuple, np.ndarray] = {}
        kept: dict[tuple, Any] = {}

        def block(name: str, x: np.ndarray, br: tuple[int, int], rr: slice, cr: slice) -> tuple:
            key = (name, br, rr.start, rr.stop, cr.start, cr.stop)
            if key not in blocks and key not in kept:
                view = x[br[0]:br[1], rr, cr]
                cache = self._kept_cache(view)
                ck = (view.__array_interface__["data"][0], view.shape, view.strides, view.dtype.str)
                if cache is not None and ck in cache and cache[ck].status == "finished":  # still on the cluster
                    kept[key] = cache[ck]
                else:
                    blocks[key] = _compact(view)
                    if cache is not None:
                        kept[key] = (cache, ck)  # filled in after the scatter
            return key

        full = slice(None)
        tiles = []
        for br in b_cuts:
            for mr in m_cuts:
                rs = slice(*mr)
                for nr in n_cuts:
                    cs = slice(*nr)
                    ka = [block("a", a, br, rs, slice(*kr)) for kr in k_cuts]
                    kb = [block("b", b, br, slice(*kr), cs) for kr in k_cuts]
                    kc = block("c", c_read, br, rs, cs) if c_read is not None else None
                    ke = []
                    for post, x in zip(op.epilogue, epi):
                        if x is None:
                            continue
                        if post.kind == PostOpKind.BIAS_N:
                            ke.append(block(f"e{len(ke)}", x, br, full, cs))
                        elif post.kind == PostOpKind.BIAS_M:
                            ke.append(block(f"e{len(ke)}", x, br, rs, full))
                        else:
                            ke.append(block(f"e{len(ke)}", x, br, rs, cs))
                    tiles.append((br, mr, nr, ka, kb, kc, ke))

        client = self.client
        if client is None:
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the dask driver was closed")
        futures: dict[tuple, Any] = {}
        pending: list[tuple[Any, tuple]] = []  # (output tile's future, where it goes in D)
        chunks: list[Any] = []  # the k-split chunks' futures
        n_tasks = n_red = 0
        deadline = time.monotonic() + self.timeout_s
        t0 = t1 = t2 = time.perf_counter()
        phase = "scattering its operands"  # what the call was doing, for the error
        # Every call to the cluster is inside this try: a scheduler or worker that goes away, a client
        # closed by another thread, a cluster with no workers left -- all are DEVICE_LOST, never
        # Dask's own exception; and a call that fails cancels its tasks and blocks on the cluster.
        try:
            if blocks:
                names = list(blocks)
                # no timeout= here: Dask hands it to the scheduler's scatter, and one that expires there
                # leaves a closed connection in the client's pool that fails the client's next call;
                # the wait for a worker is bounded by the client's own timeout (min(timeout_s, 30 s)
                # for a client this driver opened)
                data = [blocks[k] for k in names]
                try:
                    scattered = client.scatter(data, hash=False)
                except self._dist.comm.CommClosedError:
                    # after a call that timed out, Dask can hand out a pooled connection to the
                    # scheduler that is already closed ("Stream is closed"); once more, on a fresh one
                    scattered = client.scatter(data, hash=False)
                futures.update(zip(names, scattered))
                with self._stats_lock:
                    self.stats["bytes_scattered"] += sum(x.nbytes for x in blocks.values())
            for key, v in kept.items():
                if isinstance(v, tuple):  # first use of a kept block: remember its future
                    cache, ck = v
                    cache[ck] = futures[key]
                else:
                    futures[key] = v

            epi_dtypes = [(p.kind, p.param0, p.param1, x.dtype if x is not None else None)
                          for p, x in zip(op.epilogue, epi)]
            for br, mr, nr, ka, kb, kc, ke in tiles:
                bcast = [_is_broadcast(a), _is_broadcast(b), c_read is not None and _is_broadcast(c_read)]
                bcast += [_is_broadcast(x) for x in epi if x is not None]
                spec = _TileSpec(
                    op.combo, mr[1] - mr[0], nr[1] - nr[0], op.k, br[1] - br[0], op.alpha, op.beta,
                    c_read is not None,
                    tuple((kind, p0, p1, dtype_of_numpy(dt) if dt is not None else None)
                          for kind, p0, p1, dt in epi_dtypes),
                    tuple(bcast))
                cf = futures[kc] if kc is not None else None
                ef = [futures[e] for e in ke]
                if len(k_cuts) == 1:
                    fut = client.submit(_run_tile, self.worker, self.worker_opener, spec, futures[ka[0]],
                                        futures[kb[0]], cf, *ef, pure=False)
                    n_tasks += 1
                else:
                    parts_f = []
                    for (klo, khi), fa, fb in zip(k_cuts, ka, kb):
                        ps = replace(_partial_spec(spec), k=khi - klo)
                        parts_f.append(client.submit(_run_tile, self.worker, self.worker_opener, ps, futures[fa],
                                                     futures[fb], None, pure=False))
                    chunks += parts_f
                    fut = client.submit(_combine, spec, parts_f, cf, *ef, pure=False)
                    n_tasks += len(parts_f)
                    n_red += 1
                pending.append((fut, (br, mr, nr)))
            outputs = [f for f, _ in pending]

            t1 = time.perf_counter()
            phase = f"running its {n_tasks + n_red} tasks"
            # Wait through this driver's own client: distributed.wait() needs a process-wide default
            # client, which a program that only opened "dask://HOST:PORT" does not have.
            for _ in self._dist.as_completed(outputs, loop=client.loop,
                                             timeout=max(0.0, deadline - time.monotonic())):
                pass
            t2 = time.perf_counter()
            phase = "gathering its tiles"
            results = client.gather(outputs)
            # The cluster's replies are checked as a server's would be (untrusted): each tile exactly the
            # shape and dtype of its window -- NumPy would broadcast a (1, m, 1) tile over the window and
            # cast a float64 one silently -- and all of them before D is touched (nothing half-written).
            for (_, (br, mr, nr)), tile in zip(pending, results):
                want = (br[1] - br[0], mr[1] - mr[0], nr[1] - nr[0])
                if not (isinstance(tile, np.ndarray) and tile.shape == want and tile.dtype == d.dtype):
                    got = (f"{type(tile).__name__} {getattr(tile, 'shape', '')} {getattr(tile, 'dtype', '')}").strip()
                    raise FFAccelError(ErrorCode.DEVICE_LOST, "device",
                                       f"a worker returned a malformed tile; got {got}, allowed an array of shape "
                                       f"{want} and dtype {d.dtype}")
        except BaseException as e:  # KeyboardInterrupt too: the call's work is withdrawn
            self._withdraw([f for f, _ in pending] + chunks + [futures[k] for k in blocks if k in futures], kept)
            if isinstance(e, FFAccelError) or not isinstance(e, Exception):
                raise
            if isinstance(e, TimeoutError):
                raise FFAccelError(ErrorCode.DEVICE_LOST, "device",
                                   f"the cluster did not finish a GEMM within timeout_s={self.timeout_s} "
                                   f"(it was {phase}); got {e!r}") from None
            # a worker or the scheduler went away mid-call, or the client was closed
            raise FFAccelError(ErrorCode.DEVICE_LOST, "device",
                               f"the cluster failed while {phase} for a GEMM; got {e!r}") from None
        for (_, (br, mr, nr)), tile in zip(pending, results):
            d[br[0]:br[1], mr[0]:mr[1], nr[0]:nr[1]] = tile
        self._forget_written(d)
        t3 = time.perf_counter()
        with self._stats_lock:
            self.stats["scatter_s"] += t1 - t0
            self.stats["compute_s"] += t2 - t1
            self.stats["gather_s"] += t3 - t2
            self.stats["distributed"] += 1
            self.stats["tiles"] += n_tasks
            self.stats["reductions"] += n_red

    def _withdraw(self, futures: list[Any], kept: dict[tuple, Any]) -> None:
        """After a failed call: release its tasks and the blocks it scattered, and forget kept blocks
        the cluster no longer holds (a lost worker, a restarted scheduler), so the next call scatters
        them again instead of failing on them for ever.

        ``Future.release`` only queues a message to the scheduler (no round trip that a dead
        scheduler could stall); the scheduler then drops every task no client wants, queued or
        running (a running tile's result is discarded).
        """
        for v in kept.values():
            if isinstance(v, tuple):  # first scattered by this call: withdrawn with it
                cache, ck = v
                cache.pop(ck, None)
        for _, cache in self._kept.values():
            for ck in [ck for ck, f in cache.items() if f.status != "finished"]:
                del cache[ck]
        for f in futures:
            try:
                f.release()
            except Exception:  # noqa: BLE001,S110 - a closed client has released them already
                pass

    def usage(self) -> dict[str, float]:
        """A copy of :attr:`stats`: what ran where (``Device.stats()["driver"]`` shows it)."""
        with self._stats_lock:
            return dict(self.stats)

    def close(self) -> None:
        """Forget kept blocks; close the client when the driver opened it."""
        self._kept.clear()
        if getattr(self, "_own_client", False) and getattr(self, "client", None) is not None:
            gone = self.client.id
            for key in [key for key in DaskDriver._probed if key[0] == gone]:  # its probes die with it
                DaskDriver._probed.pop(key, None)
            self.client.close()
            self.client = None


__all__ = ["DEFAULT_MIN_FLOPS", "DaskDriver"]
