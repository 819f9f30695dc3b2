"""The offload session: the two modes it installs, and what it restores on exit."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...runtime import Device, resolve_device
from ...spec import FFAccelError, violation
from ..numpy_api import matmul
from . import conv, linear, rnn
from .accounting import _PLAIN_TYPES, ARGS, FREE, Host, HostFlops, count, new_stats, plain_types
from .fit import DeviceFit, check_relaxed, finish_on_host, narrow, refusal_reason


class OffloadSession:
    """What :func:`offload` returns: the device, and the statistics of the calls it saw.

    ``stats`` keys: ``offloaded_calls``, ``host_calls``, ``offloaded_flops``, ``host_flops``
    (FLOPs of GEMMs, convolutions, recurrent layers and attention, priced as
    ``torch.utils.flop_counter`` prices them), ``host_reasons`` (reason -> calls) and
    ``host_flops_by_reason``; ``offloaded_fraction`` is offloaded_flops / all FLOPs;
    ``relaxed_calls`` and ``relaxed_flops``: the offloaded f32 GEMMs that ran in the narrow
    dtype ``relaxed`` names (their share of the offloaded ones).
    """

    def __init__(self, device: "str | Device | None", threads: "int | str | None", relaxed: "str | None" = None
                 ) -> None:
        if not (threads in ("auto", None) or (isinstance(threads, int) and not isinstance(threads, bool)
                                              and threads >= 1)):
            raise violation("api.option", repr(threads), "'auto', None or an integer >= 1", arg="threads")
        narrow_dtype = check_relaxed(relaxed)
        self.device = resolve_device(device)
        #: the relaxed opt-in as given (None: off)
        self.relaxed = relaxed
        self.fit = DeviceFit(self.device.info().caps, narrow_dtype)
        self._threads = threads
        self._saved_threads: int | None = None
        self._saved_fastpath: bool | None = None
        self._mode: _Mode | None = None
        self._host: HostFlops | None = None
        self.stats: dict[str, Any] = new_stats()

    def reset(self) -> None:
        """Zero the statistics."""
        self.stats.clear()
        self.stats.update(new_stats())

    def __enter__(self) -> "OffloadSession":
        want = self._threads
        if want == "auto":  # one spinning pool at a time (see the package docstring)
            want = None if shares_torch_threads(self.device) else 1
        if want is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(want))
        mha = getattr(torch.backends, "mha", None)
        self._saved_fastpath = mha.get_fastpath_enabled() if mha is not None else None
        if mha is not None:  # the fused attention fast path hides its GEMMs (see the package docstring)
            mha.set_fastpath_enabled(False)
        self._host = HostFlops(self.stats)  # entered by the mode around the calls PyTorch runs itself
        self._mode = _Mode(self, self._host)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._mode is not None and self._host is not None
        self._mode.__exit__(*exc)
        self._mode = self._host = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        if self._saved_fastpath is not None:
            torch.backends.mha.set_fastpath_enabled(self._saved_fastpath)
            self._saved_fastpath = None


def offload(device: "str | Device | None" = None, *, threads: "int | str | None" = "auto",
            relaxed: "str | None" = None) -> OffloadSession:
    """Run PyTorch's GEMMs, convolutions, recurrent layers and attention on an ffaccel device.

    Parameters
    ----------
    device : str or Device, optional
        Device name (see :func:`ffaccel.devices`) or an open Device; default
        ``$FFACCEL_DEVICE``, else ``"cpu"``.
    threads : "auto", int or None
        PyTorch's intra-op threads inside the block. ``"auto"`` (default): unchanged when
        the device's GEMMs share PyTorch's thread pool (the ``torch`` driver, the ``cpu``
        driver with oneDNN: see :func:`shares_torch_threads`), else 1, so that two spinning
        thread pools never alternate; None: unchanged.
    relaxed : None, "bf16" or "f16"
        Off (None, the default): an f32 GEMM runs in f32 or stays in PyTorch. ``"bf16"``
        (``"f16"``): on a device that declares no f32 GEMM but bf16 (f16) inputs with an f32
        D, f32 GEMMs run there with their inputs rounded to bf16 (f16) and f32 accumulation,
        like NNAPI's relaxed float32 computation; counted in ``stats["relaxed_calls"]`` and
        ``["relaxed_flops"]``. A device with f32 GEMMs runs them in f32 whatever this says.

    Returns
    -------
    OffloadSession
        Its ``stats`` dict counts offloaded and host calls and FLOPs, with the reasons.

    Examples
    --------
    >>> import torch, ffaccel.torch
    >>> lin = torch.nn.Linear(8, 4)
    >>> with torch.no_grad(), ffaccel.torch.offload("cpu") as session:
    ...     y = torch.relu(lin(torch.ones(2, 8)))
    >>> session.stats["offloaded_calls"], session.stats["host_calls"]
    (1, 0)
    """
    return OffloadSession(device, threads, relaxed)


_COMPOSITE_LOCK = threading.RLock()


@functools.lru_cache(maxsize=1)
def _one_openmp_runtime() -> bool:
    """Whether this process has loaded a single OpenMP runtime (PyTorch's ``libgomp.so.1`` is
    then oneDNN's too: the loader shares a library by its name). Asked once, after the device
    loaded its libraries; a runtime loaded later is not seen."""
    from threadpoolctl import threadpool_info

    return len({i["filepath"] for i in threadpool_info() if i["user_api"] == "openmp"}) <= 1


def shares_torch_threads(device: Device) -> bool:
    """Whether the device's parallel GEMMs and PyTorch's own work may both use every core:
    they run on PyTorch's pool or on the one OpenMP runtime PyTorch uses (the ``cpu`` driver
    with oneDNN), or the device uses no threads of this machine's here.

    Not for a pool of the device's own (OpenBLAS's) or a server on this machine: their
    threads spin-wait after a call, and PyTorch's parallel work that starts meanwhile waits
    for them (measured: 20-50x slower); those sessions run PyTorch on one thread.

    Examples
    --------
    >>> import ffaccel
    >>> shares_torch_threads(ffaccel.open("torch:cpu"))
    True
    """
    pool = device.thread_pool()
    return pool in ("torch", "none") or (pool == "openmp" and _one_openmp_runtime())


def _widened(p: Any, dtype: np.dtype) -> Any:
    """A device post-op whose operand (bias, add) follows D to a wider dtype (bias and add come in
    the accumulate dtype or D's)."""
    if p.operand is None or p.operand.dtype == dtype or p.operand.dtype == np.float32:
        return p
    return dataclasses.replace(p, operand=p.operand.astype(dtype))


def _never(*_args: object) -> bool:
    return False


_HANDLERS: dict[Callable, Callable] = {}


def _handlers() -> dict[Callable, Callable]:
    """func -> handler, built once."""
    if not _HANDLERS:
        _HANDLERS.update({**linear.handlers(), **conv.handlers(), **rnn.handlers()})
    return _HANDLERS


class _Mode(TorchFunctionMode):
    def __init__(self, session: OffloadSession, host: HostFlops) -> None:
        super().__init__()
        self.session = session
        self.stats = session.stats
        self.dev = session.device
        self.host = host
        self.handlers = _handlers()
        self.fit = session.fit
        #: reasons of host post-ops of the call being handled (counted when it succeeds)
        self.host_post_ops: list[str] = []

    def run(self, flops: int, *a: Any, calls: int = 1, **kw: Any) -> np.ndarray:
        """One ``matmul`` on the device, counted as ``calls`` offloaded calls with ``flops``.

        On a device that lacks the GEMM's dtype combination or some of its post-ops, the
        route (:mod:`.fit`) adapts it: Host (a dtype reason) when nothing fits, else the
        device runs what it declares and the host the rest."""
        if self.fit.everything:
            r = matmul(*a, device=self.dev, **kw)
        else:
            return self._run_fitted(flops, a, calls, kw)
        count(self.stats, True, flops, calls=calls)
        return r

    def _run_fitted(self, flops: int, a: tuple, calls: int, kw: dict) -> np.ndarray:
        post_ops = kw.get("post_ops") or ()
        route = self.fit.route(a[0].dtype, a[1].dtype, kw.get("out_dtype"), tuple(p.kind for p in post_ops))
        if route.direct:
            r = matmul(*a, device=self.dev, **kw)
            count(self.stats, True, flops, calls=calls)
            return r
        a = list(a)
        if route.in_dtype is not None:  # relaxed: f32 inputs rounded to the narrow dtype
            a[0], a[1] = narrow(a[0], route.in_dtype), narrow(a[1], route.in_dtype)
        dev_ops, host_ops = list(post_ops[:route.device_ops]), post_ops[route.device_ops:]
        out = kw.pop("out", None)
        if route.d_dtype is not None:  # a wider D than the call's: C and operands follow it
            kw["out_dtype"] = route.d_dtype
            if len(a) > 2 and a[2] is not None and a[2].dtype != route.d_dtype:
                a[2] = a[2].astype(route.d_dtype)
            dev_ops = [_widened(p, route.d_dtype) for p in dev_ops]
        kw["post_ops"] = dev_ops
        if out is not None and not host_ops and route.final_dtype is None and out.dtype == (route.d_dtype or out.dtype):
            r = matmul(*a, device=self.dev, out=out, **kw)  # the device writes out itself
        else:
            r = finish_on_host(matmul(*a, device=self.dev, **kw), host_ops, route.final_dtype)
            if out is not None:
                np.copyto(out, r)
                r = out
        stats = self.stats
        count(stats, True, flops, calls=calls)
        if route.relaxed:
            stats["relaxed_calls"] += calls
            stats["relaxed_flops"] += flops
        # the post-ops' work on the host, counted (no FLOPs in PyTorch's count) once the call succeeds
        self.host_post_ops.extend(route.host_reasons)
        return r

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        # The common case first, in as few steps as possible: a call with no FLOPs (views,
        # elementwise work) costs this mode two dict lookups and a set lookup. The FLOP
        # counter (HostFlops, a dispatch mode: ~4 µs per ATen op) is entered only around the
        # calls PyTorch runs for FLOPs it may have: unknown ones and those a handler gives back.
        # Every ATen op of a session runs inside some Python-level call this mode sees (also
        # ``torch.ops.aten.*``, ``Tensor.backward``, ``torch.autograd.grad``), so none escapes it.
        handler = self.handlers.get(func)
        plain = _PLAIN_TYPES.get(types)
        if plain is None:
            plain = plain_types(types)
        if handler is None and plain and func in FREE:
            return func(*args, **kwargs) if kwargs else func(*args)
        kwargs = kwargs or {}
        host = self.host
        if handler is None:
            if func is F.multi_head_attention_forward:
                return self._open_composite(func, args, kwargs)
            host.outer = getattr(func, "__name__", None)  # names the op whose FLOPs stay on the host
            host.outer_counted = False
            try:
                with host:
                    return func(*args, **kwargs)
            finally:
                host.outer = None
        stats = self.stats
        before = stats["offloaded_calls"], stats["offloaded_flops"], stats["relaxed_calls"], stats["relaxed_flops"]
        try:
            if plain:
                r = handler(self, func, args, kwargs)  # device work (outside HostFlops: not host work)
                for reason in self.host_post_ops:  # post-ops the device lacks, run on the host
                    count(stats, False, 0, reason)
                self.host_post_ops.clear()
                return r
            raise Host(ARGS)  # tensor subclasses keep their own semantics
        except Host as h:
            reason = h.reason
        except FFAccelError as e:  # the device refused a call PyTorch may accept (or reports itself)
            reason = refusal_reason(e)
        # PyTorch redoes the whole call: device work a handler did before giving up does not count
        (stats["offloaded_calls"], stats["offloaded_flops"], stats["relaxed_calls"],
         stats["relaxed_flops"]) = before
        self.host_post_ops.clear()
        count(stats, False, 0, reason)  # the call; HostFlops adds its FLOPs as PyTorch runs it
        host.reason = reason
        try:
            with host:
                return func(*args, **kwargs)
        finally:
            host.reason = None

    def _open_composite(self, func: Callable, args: tuple, kwargs: dict) -> Any:
        """Run a Python-level composite (multi-head attention) with this mode still active inside.

        A mode is popped while it handles a call, so the composite's own linear / sdpa calls
        would be invisible. Re-entering the mode would hand the composite straight back to us
        (it begins with ``if has_torch_function(...)``), so for this one call that module-level
        check answers False; the calls inside then reach this mode as usual.
        """
        with _COMPOSITE_LOCK:
            saved = F.has_torch_function
            F.has_torch_function = _never
            try:
                with self:
                    return func(*args, **kwargs)
            finally:
                F.has_torch_function = saved
