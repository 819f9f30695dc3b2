"""Device, Buffer and Fence: what user space holds.

A :class:`Device` talks to a transport: in-process (``"cpu"``, ``"ref"``...), or a
device server through its socket (``"unix:/path"``) or its shared-memory rings
(``"unix:/path?transport=ring"``). All speak the same ABI bytes. Buffers are owned by
the client that allocated them and named by handles in its own table.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, NoReturn, Protocol
from urllib.parse import parse_qs

import numpy as np

from ..abi import Copy, Gemm, LruCache, Matrix, encode_submission
from ..drivers import DriverInfo, GemmKernel, driver_targets, open_driver
from ..drivers.connect import check_wait_s
from ..spec import SPEC_VERSION, DType, Engine, ErrorCode, FFAccelError, dtype_of_numpy, violation
from ..transports.inproc import InprocTransport

ENGINES = {"compute": Engine.COMPUTE, "copy": Engine.COPY}


class Transport(Protocol):
    """What a Device needs from a transport (InprocTransport, SocketTransport, RingTransport)."""

    kind: str

    def info(self) -> DriverInfo: ...
    def alloc(self, size_bytes: int) -> tuple[int, np.ndarray]: ...
    def free(self, handle: int) -> None: ...
    def submit(self, raw: bytes) -> tuple[Engine, int]: ...
    def signalled(self, engine: Engine, value: int) -> bool: ...
    def completed(self, engine: Engine) -> int: ...
    def wait(self, engine: Engine, value: int, timeout_ns: int | None) -> None: ...
    def prepare_gemm(self, descriptor: bytes) -> GemmKernel: ...
    def record(self, raw: bytes) -> int: ...
    def replay(self, list_id: int, engine: Engine, waits: Sequence[tuple[Engine, int]]) -> tuple[Engine, int]: ...
    def free_list(self, list_id: int) -> None: ...
    def export_fd(self, handle: int) -> int: ...
    def import_fd(self, fd: int) -> tuple[int, np.ndarray]: ...
    @property
    def host_visible(self) -> bool: ...
    def thread_pool(self) -> str: ...
    def usage(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def _engine(engine: str | Engine) -> Engine:
    if isinstance(engine, Engine):
        return engine
    try:
        return ENGINES[engine]
    except (KeyError, TypeError):
        raise violation("submit.engine", engine, sorted(ENGINES)) from None


class Fence(NamedTuple):
    """A point on an engine's timeline (u64, monotonic): immutable, equal by value.

    A named tuple rather than a frozen dataclass: one is built per submission, and on the
    dispatch hot path building a frozen dataclass costs a sizable part of a tiny GEMM.

    Examples
    --------
    >>> import ffaccel
    >>> dev = ffaccel.open("cpu")
    >>> fence = dev.submit([])
    >>> fence.wait(timeout_ns=1_000_000)
    """

    device: "Device"
    engine: Engine
    value: int

    def wait(self, timeout_ns: int | None = None, *, deadline_ns: int | None = None) -> None:
        """Block until the fence signals; raise TIMEOUT at the deadline.

        ``timeout_ns`` is relative; ``deadline_ns`` is absolute on CLOCK_MONOTONIC
        (``time.monotonic_ns()``). With neither, waits at most ``Device.DEFAULT_TIMEOUT_NS``:
        a wait never hangs forever.
        """
        device = self.device
        if device._transport.signalled(self.engine, self.value):  # Device.wait's first look, one call sooner
            return
        device.wait(self, timeout_ns=timeout_ns, deadline_ns=deadline_ns)

    @property
    def signalled(self) -> bool:
        return self.device._transport.completed(self.engine) >= self.value


#: ``Fence(device, engine, value)`` without the named tuple's Python-level ``__new__`` (its
#: argument handling): ``_tuple_new(Fence, (device, engine, value))`` builds the same object in C,
#: 0.30 µs against 0.44 here, once per submission.
_tuple_new = tuple.__new__


def _waits(dev: "Device", wait: Any) -> list[tuple[Engine, int]]:
    """(engine, value) of each fence in ``wait``, all of ``dev`` (a submission's or a replay's waits)."""
    waits = []
    try:
        for f in wait:
            if getattr(f, "device", None) is not dev:
                raise violation("submit.wait", f"a fence of device {f.device.name!r}" if isinstance(f, Fence)
                                else type(f).__name__, "fences of this device")
            waits.append((f.engine, f.value))
    except TypeError:  # not a sequence at all (a Fence alone, None): named, not the for loop's error
        raise violation("submit.wait", type(wait).__name__, "a sequence of fences of this device") from None
    return waits


def _whole(v: Any, name: str) -> int:
    """``v`` as an int where a Buffer method takes a count or a byte offset; anything else named
    (a float, a string, None: they were TypeErrors from a comparison or a slice)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise violation("cmd.field_range", repr(v), "an integer", field=name)
    return int(v)


def _np_dtype(dtype: Any, name: str) -> np.dtype:
    """``dtype`` as a NumPy dtype where a Buffer method takes one (NumPy's TypeError named)."""
    try:
        return np.dtype(dtype)
    except (TypeError, ValueError):
        raise violation("operand.dtype", repr(dtype), "a NumPy dtype such as np.float32", operand=name) from None


class Buffer:
    """Device memory owned by one client, named by a handle in that client's table.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> dev = ffaccel.open("cpu")
    >>> buf = dev.alloc(64)
    >>> buf.write(np.arange(4, dtype=np.float32))
    >>> buf.read(np.float32, 4)
    array([0., 1., 2., 3.], dtype=float32)
    """

    def __init__(self, device: "Device", handle: int, memory: Any) -> None:
        self.device = device
        self.handle = handle
        self._memory = memory
        self.size_bytes = int(memory.nbytes)

    def array(self, dtype: Any, shape: int | Sequence[int] | None = None, offset_bytes: int = 0) -> np.ndarray:
        """A zero-copy NumPy view of the buffer's memory (host-visible devices only).

        On a device whose memory the host cannot address (see ``host_visible``) this raises
        UNSUPPORTED: use :meth:`read` and :meth:`write`, which copy.
        """
        if not isinstance(self._memory, np.ndarray):
            raise FFAccelError(ErrorCode.UNSUPPORTED, "buffer", f"a NumPy view of device memory "
                               f"({type(self._memory).__name__}); only host-visible buffers have one, "
                               "use read()/write() here")
        dt = _np_dtype(dtype, "dtype")
        offset_bytes = _whole(offset_bytes, "offset_bytes")
        try:
            dims = None if shape is None else tuple(_whole(s, "shape") for s in ((shape,) if np.ndim(shape) == 0
                                                                                else shape))
        except TypeError:  # not a sequence of integers at all
            raise violation("cmd.field_range", repr(shape), "an integer or a sequence of them", field="shape") from None
        # Python integers (math.prod, not np.prod: that wraps at 2**63), checked before NumPy sees them
        count = (self.size_bytes - offset_bytes) // dt.itemsize if dims is None else math.prod(dims)
        if offset_bytes < 0 or count < 0 or min(dims or (0,)) < 0 or offset_bytes + count * dt.itemsize > self.size_bytes:
            raise violation("operand.bounds", f"{dims if dims is not None else count} elements of {dt} from byte "
                            f"{offset_bytes}", f"within the buffer's {self.size_bytes} bytes",
                            operand="shape" if dims is not None else "offset_bytes")
        flat = np.ndarray((count,), dt, buffer=self._memory, offset=offset_bytes)
        return flat if dims is None else flat.reshape(dims)

    def write(self, data: np.ndarray, offset_bytes: int = 0) -> None:
        """Copy ``data``'s bytes into the buffer at ``offset_bytes``."""
        arr = np.ascontiguousarray(data)
        if arr.dtype.kind in "OU":  # a str's code points or object pointers are no data a device reads
            raise violation("operand.dtype", str(arr.dtype), "numbers or bytes", operand="data")
        raw = arr.view(np.uint8).reshape(-1)
        offset_bytes = _whole(offset_bytes, "offset_bytes")
        if offset_bytes < 0 or offset_bytes + raw.size > self.size_bytes:
            raise violation("operand.bounds", f"bytes [{offset_bytes}, {offset_bytes + raw.size})",
                            f"within the buffer's {self.size_bytes} bytes", operand="data")
        if isinstance(self._memory, np.ndarray):
            self._memory[offset_bytes: offset_bytes + raw.size] = raw
        else:  # device memory (abi.DeviceMemory): the driver copies the bytes in
            self._memory.write_bytes(offset_bytes, raw)

    def read(self, dtype: Any, count: int, offset_bytes: int = 0) -> np.ndarray:
        """Copy ``count`` elements of ``dtype`` out of the buffer."""
        dt = _np_dtype(dtype, "dtype")
        count, offset_bytes = _whole(count, "count"), _whole(offset_bytes, "offset_bytes")
        if offset_bytes < 0 or count < 0 or offset_bytes + count * dt.itemsize > self.size_bytes:
            raise violation("operand.bounds", f"bytes [{offset_bytes}, {offset_bytes + count * dt.itemsize})",
                            f"within the buffer's {self.size_bytes} bytes", operand="count")
        if not isinstance(self._memory, np.ndarray):  # device memory: the driver copies the bytes out
            return self._memory.read_bytes(offset_bytes, count * dt.itemsize).view(dt)
        return self.array(dtype, (count,), offset_bytes).copy()

    @property
    def host_visible(self) -> bool:
        """Whether :meth:`array` gives a zero-copy NumPy view (False for memory on a GPU)."""
        return isinstance(self._memory, np.ndarray)

    def matrix(self, dtype: Any, rows: int, cols: int, *, ld_elems: int | None = None, offset_bytes: int = 0,
               batch_stride_elems: int = 0) -> Matrix:
        """Describe a row-major matrix inside this buffer, for a GEMM or COPY descriptor."""
        code = dtype if isinstance(dtype, DType) else dtype_of_numpy(dtype)
        if code is None:
            raise violation("operand.dtype", str(dtype), "a spec dtype", operand="matrix")
        return Matrix(self.handle, code, rows, cols, ld_elems, offset_bytes, batch_stride_elems, self.device)

    def free(self) -> None:
        self.device._transport.free(self.handle)

    def export_fd(self) -> int:
        """A new file descriptor naming this buffer (a sealed memfd), to share it with another process.

        Pass it over a Unix socket (SCM_RIGHTS) or to a child process; the receiver calls
        :meth:`Device.import_buffer` on a device of the same server. Both then map the same
        memory: zero copies (the dma-buf model). The caller owns (and closes) the fd.
        Only server devices (``unix:...``) can export (UNSUPPORTED otherwise).
        """
        return self.device._transport.export_fd(self.handle)

    def __repr__(self) -> str:
        return f"Buffer(handle={self.handle}, size_bytes={self.size_bytes}, device={self.device.name!r})"


class Device:
    """An open ffaccel device.

    Use :func:`ffaccel.open` to get one.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> from ffaccel.abi import Gemm
    >>> dev = ffaccel.open("cpu")
    >>> a, b, d = (dev.alloc(16) for _ in range(3))
    >>> a.write(np.eye(2, dtype=np.float32)); b.write(np.full((2, 2), 3, np.float32))
    >>> g = Gemm(m=2, n=2, k=2, a=a.matrix(np.float32, 2, 2), b=b.matrix(np.float32, 2, 2),
    ...          d=d.matrix(np.float32, 2, 2))
    >>> dev.submit([g]).wait()
    >>> d.read(np.float32, 4)
    array([3., 3., 3., 3.], dtype=float32)
    """

    #: Waits without a timeout give up after this long (nothing hangs forever).
    DEFAULT_TIMEOUT_NS = 60 * 10**9
    #: Most prepared GEMM kernels kept per device (one per geometry; least recently used dropped).
    MAX_KERNELS = 4096
    #: Most front-end fast-path plans kept per device (least recently used dropped).
    MAX_FRONTEND_PLANS = 4096

    def __init__(self, name: str, transport: Transport) -> None:
        self.name = name
        self._transport = transport
        # Bounded (least recently used first): a program that meets endless shapes keeps only the
        # recent ones. Kernels of a server device hold no server memory of their own: their
        # staging buffers live in the transport's byte-bounded pool (transports.socket).
        self._kernels: LruCache[Any, GemmKernel] = LruCache(self.MAX_KERNELS)
        self._lock = threading.Lock()
        #: Front-ends' per-call fast paths, keyed by argument geometry (see frontends.numpy_api).
        self.frontend_plans: LruCache[Any, Any] = LruCache(self.MAX_FRONTEND_PLANS)

    # -- queries ------------------------------------------------------------------------
    def info(self) -> DriverInfo:
        """What the device supports: driver, combinations, limits, engines, memory."""
        return self._transport.info()

    def stats(self) -> dict[str, Any]:
        """What the device has done: for a server (``unix:...``), since the server started, with a
        row per connected client; for an in-process device, since it was opened, with this process
        as its one client.

        Keys (every counter an integer; see :mod:`ffaccel.transports.usage` for what each counts):
        ``device``, ``driver``, ``driver_version``, ``pid`` (the server's), ``started_unix_s``,
        ``uptime_s``, ``clients_now``, ``clients_since_start``, ``client_id`` (this connection's
        row), ``buffers``, ``memory_bytes`` (charged now), the totals ``submissions``,
        ``gemm_commands``, ``gemm_flops``, ``gemm_bytes``, ``copy_commands``, ``copy_bytes``
        (clients that left included), ``clients`` (a list of rows: ``id``, ``pid``, ``uid``,
        ``command``, ``transport``, ``connected_s``, ``buffers``, ``memory_bytes`` and the same
        counters) and ``driver_usage`` (what the driver itself counts, e.g. the dask driver's
        local and distributed GEMMs, tiles and bytes scattered; ``{}`` for most drivers).
        ``ffaccel stats DEVICE [--json]`` prints it.

        Examples
        --------
        >>> import numpy as np, ffaccel
        >>> from ffaccel.abi import Gemm
        >>> dev = ffaccel.open("cpu")
        >>> a, d = dev.alloc(16), dev.alloc(16)
        >>> g = Gemm(m=2, n=2, k=2, a=a.matrix(np.float32, 2, 2), b=a.matrix(np.float32, 2, 2),
        ...          d=d.matrix(np.float32, 2, 2))
        >>> dev.submit([g]).wait()
        >>> s = dev.stats()
        >>> s["gemm_commands"], s["gemm_flops"], s["clients"][0]["transport"]
        (1, 16, 'inproc')
        """
        doc = self._transport.usage()
        doc.setdefault("device", self.name)  # a server names its own socket
        return doc

    @property
    def spec_version(self) -> tuple[int, int]:
        return SPEC_VERSION

    def thread_pool(self) -> str:
        """Where the device's parallel GEMMs run, as seen from this process: ``"openmp"`` (this
        process's OpenMP runtime), ``"torch"`` (PyTorch's pool), ``"own"`` (a pool of their own
        here, e.g. OpenBLAS's), ``"none"`` (no host threads here) or ``"remote"`` (a server).

        Examples
        --------
        >>> import ffaccel
        >>> ffaccel.open("ref").thread_pool()
        'own'
        """
        return self._transport.thread_pool()

    # -- memory -------------------------------------------------------------------------
    def alloc(self, size_bytes: int) -> Buffer:
        """Allocate a zero-filled buffer of ``size_bytes`` bytes."""
        handle, memory = self._transport.alloc(size_bytes)
        return Buffer(self, handle, memory)

    # -- work ---------------------------------------------------------------------------
    def submit(self, commands: Iterable[Gemm | Copy | bytes], *, engine: str | Engine = "compute",
               wait: Iterable[Fence] = ()) -> Fence:
        """Validate and queue commands on one engine; returns the fence they signal.

        The whole submission is validated first: if any command is invalid, nothing runs.
        """
        waits = _waits(self, wait)
        commands = self._own_operands(commands)
        raw = encode_submission(commands, _engine(engine), waits)
        eng, value = self._transport.submit(raw)
        return _tuple_new(Fence, (self, eng, value))

    def import_buffer(self, fd: int) -> Buffer:
        """Add a buffer another client exported (:meth:`Buffer.export_fd`) to this client's table."""
        handle, memory = self._transport.import_fd(fd)
        return Buffer(self, handle, memory)

    def record(self, commands: Iterable[Gemm | Copy | bytes], *, engine: str | Engine = "compute") -> "CommandList":
        """Validate commands once and keep them for cheap replays (the CUDA-graph idea).

        Validation (every rule, handles, bounds, overlap) happens here, on ``engine``'s
        terms; :meth:`CommandList.replay` only checks the engine, its waits and that every
        buffer the list names is still alive.
        """
        raw = encode_submission(self._own_operands(commands), _engine(engine))
        list_id = self._transport.record(raw)
        return CommandList(self, list_id, _engine(engine))

    def _own_operands(self, commands: Iterable[Gemm | Copy | bytes]) -> list[Gemm | Copy | bytes]:
        """``commands`` as a list, refused (BAD_HANDLE, nothing runs) where an operand is a Matrix of
        another device's buffer: its handle number is another table's, and may name one of ours."""
        cmds = commands if type(commands) is list else list(commands)
        try:  # the common case: a few attribute loads per command
            for c in cmds:
                t = type(c)
                if t is Gemm:
                    for m in (c.a, c.b, c.c, c.d):
                        if m is not None and m.owner is not self and m.owner is not None:
                            self._foreign_operand(cmds)
                    for p in c.epilogue:
                        m = p.operand
                        if m is not None and m.owner is not self and m.owner is not None:
                            self._foreign_operand(cmds)
                elif t is Copy and (c.src.owner not in (None, self) or c.dst.owner not in (None, self)):
                    self._foreign_operand(cmds)
        except (AttributeError, TypeError):  # not a Matrix, a PostOpDesc or a sequence: the encoder names it
            pass
        return cmds

    def _foreign_operand(self, cmds: list[Gemm | Copy | bytes]) -> NoReturn:
        """The error for the first operand of :meth:`_own_operands`'s commands owned by another device."""
        for i, c in enumerate(cmds):
            named = [("src", c.src), ("dst", c.dst)] if isinstance(c, Copy) else [
                ("a", c.a), ("b", c.b), ("c", c.c), ("d", c.d),
                *((f"epilogue[{j}].operand", getattr(p, "operand", None)) for j, p in enumerate(c.epilogue))] \
                if isinstance(c, Gemm) else []
            for name, m in named:
                owner = getattr(m, "owner", None)
                if owner is not None and owner is not self:
                    raise violation("operand.handle", m.handle, f"a buffer of this device ({self.name!r}), not "
                                    f"one of device {owner.name!r}'s (command {i})", operand=name)
        raise AssertionError("no foreign operand")  # pragma: no cover - called only when there is one

    def submit_raw(self, raw: bytes) -> Fence:
        """Submit already-encoded ABI bytes (header, waits, commands)."""
        try:
            eng, value = self._transport.submit(raw)
        except TypeError:  # checked only when it failed: this is the cheapest path there is
            if not isinstance(raw, (bytes, bytearray, memoryview)):
                raise violation("cmd.field_range", type(raw).__name__, "encoded bytes", field="raw") from None
            raise
        return _tuple_new(Fence, (self, eng, value))

    def wait(self, fence: Fence, *, timeout_ns: int | None = None, deadline_ns: int | None = None) -> None:
        if getattr(fence, "device", None) is not self:
            if not isinstance(fence, Fence):
                raise violation("fence.device", type(fence).__name__, f"a Fence of {self.name!r}")
            raise violation("fence.device", f"a fence of device {fence.device.name!r}", f"a fence of {self.name!r}")
        if self._transport.signalled(fence.engine, fence.value):  # known done: no clock, no system call
            return
        if deadline_ns is None:
            timeout_ns = self.DEFAULT_TIMEOUT_NS if timeout_ns is None else timeout_ns
            deadline_ns = time.monotonic_ns() + max(0, int(timeout_ns))
        left = max(0, deadline_ns - time.monotonic_ns())
        self._transport.wait(fence.engine, fence.value, left)

    def gemm_kernel(self, key: Any, descriptor: bytes) -> GemmKernel:
        """The validated, driver-prepared kernel for one GEMM geometry (cached by ``key``).

        Front-ends use this host-array path: the descriptor is validated once per geometry
        by the same abi validator that checks every submission.
        """
        kernels = self._kernels
        kernel = kernels.peek(key) or kernels.get(key)
        if kernel is None:
            kernel = self._transport.prepare_gemm(descriptor)
            kernels.put(key, kernel)
        return kernel

    def gemm_fresh_kernel(self, descriptor: bytes) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
        """The driver's kernel that returns a new D for this geometry, when it offers one.

        Only in-process drivers can (the result lives in this process's memory); others: None.
        """
        prepare = getattr(self._transport, "prepare_gemm_fresh", None)
        return prepare(descriptor) if prepare is not None else None

    def gemm_family(self, descriptor: bytes) -> Any:
        """A plan over every geometry of this descriptor's GEMM class, where the transport offers one
        (in-process drivers): ``family.kernel(m, n, k, batch, operands)`` -> the validated kernel of a
        new geometry, or None when a rule fails. Others: None (each geometry takes ``gemm_kernel``)."""
        prepare = getattr(self._transport, "prepare_gemm_family", None)
        return prepare(descriptor) if prepare is not None else None

    def close(self) -> None:
        self._transport.close()
        self._kernels.clear()
        self.frontend_plans.clear()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        info = self.info()
        return f"Device({self.name!r}, driver={info.name} {info.version})"


class CommandList:
    """Commands validated once by :meth:`Device.record`, replayed many times.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> from ffaccel.abi import Gemm
    >>> dev = ffaccel.open("cpu")
    >>> a, d = dev.alloc(16), dev.alloc(16)
    >>> a.write(np.eye(2, dtype=np.float32))
    >>> g = Gemm(m=2, n=2, k=2, a=a.matrix(np.float32, 2, 2), b=a.matrix(np.float32, 2, 2),
    ...          d=d.matrix(np.float32, 2, 2))
    >>> cl = dev.record([g])
    >>> cl.replay().wait()
    >>> d.read(np.float32, 4)
    array([1., 0., 0., 1.], dtype=float32)
    """

    def __init__(self, device: Device, list_id: int, engine: Engine) -> None:
        self.device = device
        self.id = list_id
        self.engine = engine

    def replay(self, *, engine: str | Engine | None = None, wait: Iterable[Fence] = ()) -> Fence:
        """Run the list once more on ``engine`` (default: the one it was recorded for); returns its fence."""
        dev = self.device
        waits = _waits(dev, wait)
        eng, value = dev._transport.replay(self.id, self.engine if engine is None else _engine(engine), waits)
        return Fence(dev, eng, value)

    def free(self) -> None:
        """Release the list (its buffers stay as they are)."""
        self.device._transport.free_list(self.id)

    def __repr__(self) -> str:
        return f"CommandList(id={self.id}, engine={self.engine.name}, device={self.device.name!r})"


# ------------------------------------------------------------------------------------------
# registry

DEFAULT_DEVICE_ENV = "FFACCEL_DEVICE"
DEFAULT_DEVICE = "cpu"
_defaults: dict[str, Device] = {}
_defaults_lock = threading.Lock()


def devices() -> list[str]:
    """The installed drivers' names, and the default server socket's device names when one exists.

    A driver name opens its driver with its defaults (``ffaccel.open("torch")`` is ``torch:cpu``);
    a driver that needs more says what (``dask`` needs ``dask://HOST:PORT``). Every name form,
    with what it means and what it needs installed, is in :func:`device_catalog` (``ffaccel
    devices``). Listing imports no optional package (torch, dask).

    Examples
    --------
    >>> import ffaccel
    >>> {"ref", "cpu"} <= set(ffaccel.devices())
    True
    """
    names = sorted(driver_targets())
    from ..transports.paths import default_socket_path

    path = default_socket_path()
    if os.path.exists(path):  # a server is (or was) running at the default place
        names += [f"unix:{path}", f"unix:{path}?transport=ring"]
    return names


#: The server's device names: not a driver, a transport to whatever driver ``ffaccel serve`` runs.
SERVER_FORMS = (
    ("unix:PATH", "a device server (`ffaccel serve --socket PATH`), one request per call; options "
                  "?timeout_s=S&poll_us=N&wait_s=S"),
    ("unix:PATH?transport=ring", "the same server through shared-memory rings (entries=N: slots per queue)"),
    ("unix:", "the server on the default socket ($FFACCEL_SOCKET, else server.sock in $XDG_RUNTIME_DIR/ffaccel "
              "or /tmp/ffaccel-UID)"),
)


def device_catalog() -> list[dict[str, Any]]:
    """Every kind of device ``ffaccel.open`` knows, with its name forms and what it needs.

    One dict per driver of the registry (optional ones included where their package is missing)
    and one for the device server: ``driver`` (the driver's name; ``None`` for the server),
    ``forms`` (a list of ``{"name", "meaning"}``; an upper-case placeholder such as N, HOST, PATH
    needs a value), ``requires`` (the Python package it needs beyond ffaccel, or for the server
    ``"ffaccel serve"``), ``installed`` (whether that is there), ``install`` (how to get it) and,
    for the server, ``running`` (device names of a server listening on the default socket).
    ``ffaccel devices [--json]`` prints it.

    Examples
    --------
    >>> import ffaccel
    >>> cat = {e["driver"]: e for e in ffaccel.device_catalog()}
    >>> [f["name"] for f in cat["cpu"]["forms"]]
    ['cpu', 'cpu:N']
    """
    from ..drivers import driver_catalog
    from ..transports.paths import default_socket_path

    out: list[dict[str, Any]] = [
        {"driver": e.name, "forms": [{"name": f, "meaning": m} for f, m in e.forms], "requires": e.requires,
         "installed": e.installed, "install": e.install}
        for e in driver_catalog()]
    path = default_socket_path()
    running = [f"unix:{path}", f"unix:{path}?transport=ring"] if _listening(path) else []
    out.append({"driver": None, "forms": [{"name": f, "meaning": m} for f, m in SERVER_FORMS],
                "requires": "ffaccel serve", "installed": True,
                "install": "start one: ffaccel serve --socket PATH --ready-file PATH.ready &", "running": running})
    return out


def _listening(path: str) -> bool:
    """Whether a server listens on the Unix socket ``path`` (one connect, closed at once)."""
    import socket

    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _open_remote(name: str, wait_s: float | None = None) -> Device:
    """``unix:PATH[?transport=socket|ring][&timeout_s=S][&poll_us=N][&entries=N][&wait_s=S]``."""
    from ..transports.ring import RingTransport
    from ..transports.socket import SocketTransport

    form = "unix:PATH[?transport=socket|ring&timeout_s=S&poll_us=N&entries=N&wait_s=S]"
    rest = name[len("unix:"):]
    path, _, query = rest.partition("?")
    try:
        pairs = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise violation("device.name", name, form) from None
    if any(len(v) > 1 for v in pairs.values()):  # transport=ring&transport=socket: neither wins silently
        raise violation("device.name", name, f"{form}, each option once")
    q = {k: v[0] for k, v in pairs.items()}
    allowed = {"transport", "timeout_s", "poll_us", "entries", "wait_s"}
    kind = q.get("transport", "socket")
    if not path:  # "unix:" alone: the default socket (in its private folder)
        from ..transports.paths import default_socket_path

        path = default_socket_path()
    if set(q) - allowed or kind not in ("socket", "ring"):
        raise violation("device.name", name, form)
    if "\x00" in path:  # no file system path holds one (it was os.stat's ValueError)
        raise violation("device.name", repr(name), f"{form} with a PATH without NUL bytes")
    try:
        timeout_s = float(q.get("timeout_s", 30.0))
        poll_us = int(q.get("poll_us", 200))
        entries = int(q.get("entries", 256))
    except ValueError:
        raise violation("device.name", name, "numbers for timeout_s, poll_us and entries") from None
    if wait_s is None and "wait_s" in q:
        wait_s = check_wait_s(q["wait_s"], "wait_s")
    if kind == "ring":
        if not 2 <= entries <= 4096 or entries & (entries - 1):
            raise violation("device.name", name, "entries a power of two in [2, 4096]")
        return Device(name, RingTransport(path, entries=entries, poll_us=poll_us, timeout_s=timeout_s, wait_s=wait_s))
    return Device(name, SocketTransport(path, timeout_s=timeout_s, poll_us=poll_us, wait_s=wait_s))


def open_device(name: str | None = None, *, wait_s: float | None = None) -> Device:
    """Open a device by name: ``None`` means ``$FFACCEL_DEVICE``, else ``"cpu"``.

    ``"cpu"``, ``"ref"`` (any installed driver) run in this process. ``"unix:PATH"`` connects
    to an ``ffaccel serve`` process (one request per call; ``"unix:"`` alone: the default socket,
    ``$FFACCEL_SOCKET`` or ``server.sock`` in the private folder ``$XDG_RUNTIME_DIR/ffaccel`` or
    ``/tmp/ffaccel-UID``); ``"unix:PATH?transport=ring"``
    submits through shared-memory rings instead (options: ``poll_us``, ``entries``,
    ``timeout_s``, ``wait_s``). A server that is unreachable raises DEVICE_LOST.
    ``ffaccel devices`` (or :func:`device_catalog`) lists every name form and what it needs.

    ``wait_s`` (or ``?wait_s=S`` in the name, or ``$FFACCEL_CONNECT_TIMEOUT`` when neither is
    given) waits up to that many seconds for a device that is not there yet: a server whose
    socket does not exist or does not listen yet, a Dask scheduler that refuses. The default 0
    fails at once. In-process devices are always there: it changes nothing for them.

    Examples
    --------
    >>> import ffaccel
    >>> ffaccel.open("ref").info().name
    'ref'
    """
    if name is None:
        env = os.environ.get(DEFAULT_DEVICE_ENV)
        if env:
            try:
                return open_device(env, wait_s=wait_s)
            except FFAccelError as e:  # say where the name came from: the user never typed it here
                if e.rule != "device.name":
                    raise
                raise FFAccelError(e.code, DEFAULT_DEVICE_ENV,
                                   f"the environment variable {DEFAULT_DEVICE_ENV} names the default device; got "
                                   f"{DEFAULT_DEVICE_ENV}={env!r}, allowed a name ffaccel.open() accepts "
                                   f"({e.message})", rule=e.rule) from None
        name = DEFAULT_DEVICE
    if not isinstance(name, str):
        raise violation("device.name", repr(name), devices())
    if wait_s is not None:
        wait_s = check_wait_s(wait_s, "wait_s")
    if name.startswith("unix:"):
        return _open_remote(name, wait_s)
    driver_name = name
    if wait_s is not None and name.startswith("dask:"):  # the dask driver connects: it takes the wait
        # the keyword wins over a wait_s in the name (as for unix:), and the driver refuses an option twice
        where, _, query = name.partition("?")
        others = [kv for kv in query.split("&") if kv and kv.partition("=")[0] != "wait_s"]
        driver_name = f"{where}?{'&'.join(others + [f'wait_s={wait_s!r}'])}"
    return Device(name, InprocTransport(open_driver(driver_name)))


def default_device(name: str | None = None) -> Device:
    """A shared, lazily opened device per name (what front-ends use when given a name or None)."""
    key = name if name is not None else os.environ.get(DEFAULT_DEVICE_ENV) or DEFAULT_DEVICE
    dev = _defaults.get(key)
    if dev is None:
        with _defaults_lock:
            dev = _defaults.get(key)
            if dev is None:
                dev = _defaults[key] = open_device(name)  # None: errors name $FFACCEL_DEVICE
                if hasattr(dev._transport, "on_lost"):  # a lost connection is forgotten: the next call reconnects
                    dev._transport.on_lost = functools.partial(_forget_default, key, dev)
    return dev


def _forget_default(key: str, dev: Device) -> None:
    """Drop ``dev`` (lost) from the devices opened by name, so the next call by that name (or with
    no device, for the implicit default) opens a new connection instead of failing for good."""
    global implicit_device
    if _defaults.get(key) is dev:
        del _defaults[key]
    if implicit_device is dev:
        implicit_device = None


#: The process's implicit default Device once :func:`resolve_device` has resolved it, else None.
#: Public so that a per-call front-end can read it without a call (``implicit_device or
#: resolve_device(None)``); only :func:`resolve_device` sets it.
implicit_device: Device | None = None


def resolve_device(device: "str | Device | None") -> Device:
    """The Device a front-end call should use.

    ``None`` means the process's implicit default, resolved from ``$FFACCEL_DEVICE``
    (else ``"cpu"``) on first use and then kept: reading the environment costs about
    a microsecond, as much as a whole tiny GEMM.
    """
    global implicit_device
    if device is None:
        if implicit_device is None:
            implicit_device = default_device(None)
        return implicit_device
    if isinstance(device, Device):
        return device
    if isinstance(device, str):
        return default_device(device)
    raise FFAccelError(ErrorCode.INVALID_PARAMETER, "device",
                       f"device must be a name, a Device or None; got {type(device).__name__}")
