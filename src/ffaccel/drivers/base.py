"""What a driver is: one small class (tinygrad-style).

A driver executes *validated* operations (see :mod:`ffaccel.abi.validate`) on
arrays that the runtime has already bound to memory:

* ``a``: op(A) of shape (batch, m, k) — transposition is already applied as a
  strided view; ``b``: op(B) of shape (batch, k, n);
* ``c``: C of shape (batch, m, n), or None when absent; it must not be read when
  ``op.beta == 0``; D may be the very same memory as C (``op.in_place``);
* ``d``: D of shape (batch, m, n), written only inside its m x n windows;
* ``epi``: one array per post-op, None for post-ops without an operand; bias
  comes as (batch, 1, n) or (batch, m, 1).

A batch stride of 0 shows up as a 0 stride (broadcast). Inputs must never be
written. Only :meth:`Driver.gemm` is required; optional hooks hoist work out of the
per-call path: :meth:`Driver.prepare_gemm` (once per geometry),
:meth:`Driver.prepare_gemm_fresh` (the driver allocates D), :meth:`Driver.bind_gemm`
(once per validated command, bound to its arrays: what a loop of tiny GEMMs runs) and
:meth:`Driver.bind_gemm_group` (independent GEMMs of one geometry in one submission, as one
call). A driver that supports less than the full op set says so in :meth:`Driver.caps`; the
validator then refuses the rest as UNSUPPORTED before the driver is called.

Third parties ship drivers as entry points in the ``ffaccel.drivers`` group::

    [project.entry-points."ffaccel.drivers"]
    mydev = "mypackage.driver:MyDriver"
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..abi import CopyOp, DeviceCaps, DeviceMemory, GemmOp
from ..spec import Engine
from .rounding import round_to

GemmKernel = Callable[[np.ndarray, np.ndarray, "np.ndarray | None", np.ndarray, tuple], None]
FreshKernel = Callable[..., np.ndarray]  # (a, b) -> D, or (a, b, epi) -> D for a GEMM with an epilogue
BoundGemm = Callable[[], object]


#: What a size band's edge measures (see :class:`SizeBand`).
BAND_MEASURES = ("mnk", "entry_mnk")
#: Which GEMMs a size band applies to, by their epilogue (see :class:`SizeBand`).
BAND_EPILOGUES = ("any", "with", "without")


@dataclass(frozen=True)
class SizeBand:
    """One size at which a driver's implementation changes (another library, threads, a fused
    epilogue), declared in :attr:`DriverInfo.size_bands` so that the conformance suite runs the
    GEMMs on both sides of it (every epilogue kind and order, NaN/Inf, interleaved and broadcast
    layouts). A GEMM is on the upper side when its ``measure`` is ``>= edge``.

    Examples
    --------
    >>> SizeBand(("f32xf32->f32->f32",), "with", "mnk", 96**3, "oneDNN with a fused epilogue").edge
    884736
    """

    #: the dtype combinations it applies to, by name as ``ffaccel info`` prints them
    combos: tuple[str, ...]
    #: "with": only GEMMs with at least one post-op; "without": only GEMMs with none; "any"
    epilogue: str
    #: "mnk": batch * m * n * k (multiply-adds of the whole GEMM); "entry_mnk": m * n * k of one
    #: batch entry (an edge of batched GEMMs only)
    measure: str
    #: the first size of the upper side, in the unit of ``measure`` (multiply-adds)
    edge: int
    #: what changes there, in words
    change: str


@dataclass(frozen=True)
class DriverInfo:
    """What ``info`` reports about a driver."""

    name: str
    version: str
    description: str
    caps: DeviceCaps = field(default_factory=DeviceCaps)
    memory_bytes: int = 0
    #: (dtype combination, the kernel library serving it) pairs, where the driver says
    kernels: tuple[tuple[str, str], ...] = ()
    #: where the implementation changes with size, where the driver says (see :class:`SizeBand`);
    #: empty: the conformance suite sweeps sizes spread log-uniformly instead
    size_bands: tuple[SizeBand, ...] = ()


class Driver:
    """Base class of every driver. Subclasses implement :meth:`gemm` (and may override the rest)."""

    name: ClassVar[str] = "base"
    #: Whether :meth:`alloc` returns host memory (a NumPy array). A driver whose memory lives
    #: elsewhere (a GPU) returns :class:`ffaccel.abi.DeviceMemory` objects instead and sets
    #: this False; its kernels then receive its own strided arrays from submissions, and
    #: NumPy arrays from the front-ends' host-array path.
    host_visible: bool = True
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    #: (device name form, what it means) pairs that ``ffaccel devices`` lists for a plug-in driver,
    #: e.g. ``(("mydev", "the first card"), ("mydev:N", "card N"))``; empty: the bare name.
    device_forms: ClassVar[tuple[tuple[str, str], ...]] = ()

    def caps(self) -> DeviceCaps:
        """The combinations, conversions, post-ops, engines and limits this driver supports."""
        return DeviceCaps()

    def info(self) -> DriverInfo:
        return DriverInfo(self.name, self.version, self.description, self.caps(), self.memory_bytes())

    def thread_pool(self) -> str:
        """Which threads run this driver's parallel kernels in the process that loads it:
        ``"openmp"`` (the process's OpenMP runtime, which PyTorch's CPU build shares),
        ``"torch"`` (PyTorch's own intra-op pool), ``"own"`` (a pool of the driver's own, such
        as OpenBLAS's, whose threads spin-wait after a call) or ``"none"`` (one thread, or not
        the host's CPU). A front-end that runs
        parallel work of its own next to the device (PyTorch offload) decides by it whether
        both may use every core. The default claims nothing: ``"own"``."""
        return "own"

    def memory_bytes(self) -> int:
        """Device memory available for buffers (host drivers: physical memory)."""
        try:
            import os

            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 0

    def alloc(self, size_bytes: int) -> "np.ndarray | DeviceMemory":
        """Zero-filled device memory: a 1-D uint8 array when host-visible, else a DeviceMemory."""
        return np.zeros(size_bytes, np.uint8)

    def free(self, memory: "np.ndarray | DeviceMemory") -> None:
        """Called with what :meth:`alloc` returned once the in-process transport's handle to it is
        gone (freed, or the device closed). Memory is reclaimed by garbage collection anyway; a driver
        that accounts for a fixed arena (the ``npu`` driver) gives the bytes back here."""

    def gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
             epi: tuple[np.ndarray | None, ...]) -> None:
        raise NotImplementedError

    def prepare_gemm(self, op: GemmOp) -> GemmKernel:
        """A kernel for one validated geometry, called many times with fresh arrays.

        The runtime caches it per geometry; drivers override this to hoist per-geometry
        work (BLAS routine choice, temporaries) out of the per-call path.
        """
        gemm = self.gemm
        return lambda a, b, c, d, epi: gemm(op, a, b, c, d, epi)

    def kernel_family(self, op: GemmOp) -> tuple[Hashable, Callable[[int, int, int, int], bool]] | None:
        """Optional: ``(key, covers)`` when :meth:`prepare_gemm`'s kernel for ``op`` also serves other
        geometries of ``op``'s GEMM class (every descriptor field but the sizes and placements): the
        kernel reads no size of its own, only its arrays'. Every geometry of the class for which
        ``covers(m, n, k, batch)`` is true gets that very kernel (and the same ``key``; ``op``'s own
        sizes must be covered). A plan over a growing axis (a KV cache growing a row a step) then
        prepares one kernel, not one per step, and does not ask again while ``covers`` holds (it
        still checks every geometry's rules). None (the default): one kernel per geometry.
        """
        return None

    def prepare_gemm_fresh(self, op: GemmOp) -> FreshKernel | None:
        """Optional fast path: a kernel ``(a, b) -> D`` that returns D as a new array.

        Offered only for GEMMs that read no C, batch 1; ``a`` and ``b`` are the 2-D op(A) and
        op(B) views and the result is a new C-contiguous (m, n) array of D's dtype. For a GEMM
        with an epilogue the kernel is ``(a, b, epi) -> D``, ``epi`` the epilogue operands as
        the ordinary kernel takes them (a linear layer's bias, without a D to fill first). For
        the tiniest GEMMs, letting the driver allocate D (BLAS returns a fresh array anyway)
        saves a whole allocation and an in-place pass. None (the default) means the front-end
        allocates D and calls the ordinary kernel.

        A kernel for a GEMM whose epilogue is one ``BIAS_N`` may carry an attribute
        ``contiguous(a, b, bias) -> D``: the same result for C-contiguous ``a`` and ``b`` (the
        caller vouches) and the bias as the caller's own ``(n,)`` vector, broadcast over D. A
        front-end whose per-call key fixes the strides calls it instead (8 x 8 + bias: no flags
        read, no epilogue tuple, no bias view per call). The conformance suite judges it
        (``entry:fresh.contiguous``).
        """
        return None

    def bind_gemm(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                  epi: tuple[np.ndarray | None, ...]) -> BoundGemm | None:
        """Optional fast path: the whole GEMM bound to these very arrays, as a no-argument call.

        Transports call it once per validated command (the arrays are views of buffers that
        stay alive and are never remapped while the binding is cached) and then call the
        result for every repetition of that command, so a driver can hoist everything but
        the arithmetic out of the per-run path (for a tiny GEMM the Python around one BLAS
        call costs more than the call). Calling the binding must do exactly what
        ``prepare_gemm(op)(a, b, c, d, epi)`` does; it must not run anything when bound.
        None (the default) means the transport calls the prepared kernel.
        """
        return None

    def bind_gemm_group(self, op: GemmOp, a: np.ndarray, b: np.ndarray, c: np.ndarray | None, d: np.ndarray,
                        epi: tuple[np.ndarray | None, ...]) -> BoundGemm | None:
        """Optional fast path: several GEMMs of one geometry, bound as one call.

        ``op`` is the first of them; every other one has the same descriptor but for its
        operands' offsets (and ``user_data``). Each array has one more leading axis than
        :meth:`bind_gemm`'s, the group: ``a[g]`` is GEMM g's A as :meth:`bind_gemm` would take
        it, and so on; along that axis each operand steps through one buffer by a constant
        stride (0 where the GEMMs share it, negative where they go backwards). The transport
        vouches that the GEMMs are independent: no GEMM's D shares a byte with another one's D
        or with any operand another one names, so they may run in any order or all at once (a
        submission of 64 tiny GEMMs writing 64 blocks of one buffer: one batched call instead
        of 64). Calling the result must leave every D bit for bit as calling each GEMM's own
        :meth:`bind_gemm` binding (or, where it offers none, ``prepare_gemm(op)``'s kernel) in
        order does, reading the values the operands hold at the call; it must not run anything
        when bound. The conformance suite judges it (``entry:bind_gemm_group``). None (the
        default) means the transport runs them one by one.
        """
        return None

    def copy(self, op: CopyOp, src: np.ndarray, dst: np.ndarray) -> None:
        """dst = convert(src), rounding once to nearest even.

        Casts from f32/f16/bf16 are single RNE roundings in NumPy / ml_dtypes; f64 sources go
        through :func:`round_to`, because ml_dtypes' f64 -> bf16 cast double-rounds via f32.
        """
        if src.dtype == np.float64 and dst.dtype != np.float64:
            np.copyto(dst, round_to(src, op.dst.dtype), casting="unsafe")
        else:
            np.copyto(dst, src.astype(dst.dtype), casting="unsafe")

    def async_queue(self, engine: Engine) -> "Callable[[Callable[[], None]], None] | None":
        """Optional: where the in-process transport queues ``engine``'s submissions.

        None (the default): a submission runs in the submitting thread and its fence has
        signalled when ``submit`` returns. A driver that runs jobs on its own engine threads
        returns a function that puts a job (a no-argument callable: the submission's fence
        waits, then its commands) on that engine's queue and returns at once; jobs of one engine
        must run in the order queued. The transport signals the fence when the job returns.
        Commands then run on the driver's engine thread: ``gemm`` and ``copy`` called there must
        not queue again and wait (that thread would wait for itself).
        """
        return None

    def usage(self) -> dict[str, float]:
        """What the driver itself counts since it was opened, by name (``Device.stats()["driver"]``).

        The transport counts commands, FLOPs and bytes for every driver; this is for what only
        the driver knows (the dask driver: GEMMs run locally or on the cluster, tiles, bytes
        scattered, seconds per phase). Default: nothing.
        """
        return {}

    def close(self) -> None:
        """Release whatever the driver holds."""
