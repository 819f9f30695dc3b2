"""The offload session: the interception it installs (the dispatcher's kernels or a function mode), and what it
restores on exit."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ...runtime import Device, resolve_device
from ...spec import ErrorCode, FFAccelError, violation
from . import conv, dispatcher, linear, rnn
from .accounting import _PLAIN_TYPES, ARGS, FREE, TRANSFORM, HostFlops, count, new_stats, plain_types
from .fit import DeviceFit, check_relaxed
from .runner import Runner


def _fast_path_sees_function_modes() -> bool:
    """Whether ``nn.MultiheadAttention`` / ``TransformerEncoderLayer`` leave their fused fast path by
    themselves while a function mode is active: they do when ``torch.overrides.has_torch_function``
    counts modes (torch 2.x), which the fast-path checks ask ("some Tensor argument has_torch_function")."""
    class _Probe(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
            return func(*args, **(kwargs or {}))

    t = torch.empty(0)
    with _Probe():
        return bool(torch.overrides.has_torch_function((t,)))


#: the interceptions ``offload(interception=...)`` takes -> whether the session turns off the fused
#: MHA / TransformerEncoderLayer fast path (its GEMMs are invisible to the function mode; the
#: dispatcher sees them as ATen GEMMs: see docs/torch.md for the measurement behind the choice).
#: The function mode only where the layers would not leave it by themselves: the switch is
#: process-wide, so turning it off changed other threads' stock attention (the slow path's values
#: at padded positions) and two overlapping sessions in two threads left it off after both
INTERCEPTIONS: dict[str, bool] = {"dispatcher": False, "function": not _fast_path_sees_function_modes()}


class OffloadSession:
    """What :func:`offload` returns: the device, and the statistics of the calls it saw.

    ``stats`` keys: ``offloaded_calls``, ``host_calls``, ``offloaded_flops``, ``host_flops``
    (FLOPs of GEMMs, convolutions, recurrent layers and attention, priced as
    ``torch.utils.flop_counter`` prices them), ``host_reasons`` (reason -> calls) and
    ``host_flops_by_reason``; ``offloaded_fraction`` is offloaded_flops / all FLOPs;
    ``relaxed_calls`` and ``relaxed_flops``: the offloaded f32 GEMMs that ran in the narrow
    dtype ``relaxed`` names (their share of the offloaded ones).
    """

    def __init__(self, device: "str | Device | None", threads: "int | str | None", relaxed: "str | None" = None,
                 interception: str = "dispatcher") -> None:
        if interception not in INTERCEPTIONS:
            raise violation("api.option", repr(interception), f"one of {sorted(INTERCEPTIONS)}", arg="interception")
        if not (threads in ("auto", None) or (isinstance(threads, int) and not isinstance(threads, bool)
                                              and threads >= 1)):
            raise violation("api.option", repr(threads), "'auto', None or an integer >= 1", arg="threads")
        narrow_dtype = check_relaxed(relaxed)
        self.device = resolve_device(device)
        #: the relaxed opt-in as given (None: off)
        self.relaxed = relaxed
        self.fit = DeviceFit(self.device.info().caps, narrow_dtype)
        self._threads = threads
        #: "dispatcher" or "function" (see :func:`offload`)
        self.interception = interception
        #: this thread's entries of the session, innermost last: one object may be entered again
        #: inside itself and from several threads at once, each entry with its own interception
        #: and what its exit restores (one set of attributes per object left an entry's runner or
        #: function mode active after every exit)
        self._entries = threading.local()
        self.stats: dict[str, Any] = new_stats()

    def reset(self) -> None:
        """Zero the statistics."""
        self.stats.clear()
        self.stats.update(new_stats())

    def __enter__(self) -> "OffloadSession":
        entry = _Entry()
        want = self._threads
        if want == "auto":  # one spinning pool at a time (see the package docstring)
            want = None if shares_torch_threads(self.device) else 1
        if want is not None:
            entry.saved_threads = torch.get_num_threads()
            torch.set_num_threads(int(want))
        mha = getattr(torch.backends, "mha", None)
        if mha is not None and INTERCEPTIONS[self.interception]:
            # the fused attention fast path hides its GEMMs from a function mode (see the package docstring)
            entry.saved_fastpath = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
        try:
            if self.interception == "dispatcher":
                entry.runner = Runner(self)
                dispatcher.push(entry.runner)
            else:
                # HostFlops: entered by the mode around the calls PyTorch runs itself
                entry.mode = _Mode(self, HostFlops(self.stats))
                entry.mode.__enter__()
                entry.runner = entry.mode.runner
                dispatcher.enter_thread(entry.runner)  # (the innermost session decides: see there)
        except BaseException:
            entry.restore()
            raise
        stack = self._entries.__dict__.setdefault("stack", [])
        stack.append(entry)
        return self

    def __exit__(self, *exc: object) -> None:
        stack = getattr(self._entries, "stack", None)
        if not stack:  # exited twice, or on a thread that never entered it: nothing to undo
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "session",
                               "the session was exited more times than it was entered on this thread; allowed one "
                               "exit per entry (a `with` block does both)")
        entry = stack.pop()  # this thread's innermost entry of the session
        if entry.mode is None:
            dispatcher.pop(entry.runner)
        else:
            dispatcher.leave_thread(entry.runner)
            entry.mode.__exit__(*exc)
        entry.restore()


class _Entry:
    """One entry of a session on one thread: its interception and what its exit restores."""

    def __init__(self) -> None:
        self.runner: Runner | None = None
        #: the function mode (None: a dispatcher session)
        self.mode: _Mode | None = None
        self.saved_threads: int | None = None
        self.saved_fastpath: bool | None = None

    def restore(self) -> None:
        """PyTorch's thread count and MHA fast path as they were before the entry."""
        if self.saved_threads is not None:
            torch.set_num_threads(self.saved_threads)
        if self.saved_fastpath is not None:
            torch.backends.mha.set_fastpath_enabled(self.saved_fastpath)


def offload(device: "str | Device | None" = None, *, threads: "int | str | None" = "auto",
            relaxed: "str | None" = None, interception: str = "dispatcher") -> OffloadSession:
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
    interception : "dispatcher" or "function"
        How PyTorch's work is reached. ``"dispatcher"`` (default): ATen's CPU kernels of the
        operators with FLOPs (GEMMs, convolutions, attention, the LSTM layer) are replaced while
        the session is active (:mod:`.dispatcher`); only those reach Python, below autograd, so a
        model under grad is offloaded too and its backward GEMMs as well. ``"function"``: a
        ``TorchFunctionMode`` sees every Python-level call of the thread (~3 µs each, ~10,000 per
        GPT-2 decode), before autograd; calls that need grad stay on the host. docs/torch.md
        compares them.

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
    return OffloadSession(device, threads, relaxed, interception)


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


def _never(*_args: object) -> bool:
    return False


_forward_ad = torch.autograd.forward_ad
_functorch_level = getattr(torch._C._functorch, "maybe_current_level", lambda: None)


def _transformed() -> bool:
    """Whether PyTorch changes a call below the Python level, where the function mode's handlers
    do not look: autocast (it would run a Linear in bf16 and return bf16), a torch.func transform
    (vmap's batched tensors have no storage to view; grad, jvp) or forward-mode AD (the result
    carries a tangent). Such a call is PyTorch's (the dispatcher, below them all, offloads it).
    ~0.4 µs, on the handler path only."""
    return torch.is_autocast_enabled("cpu") or _functorch_level() is not None or _forward_ad._current_level >= 0


_HANDLERS: dict[Callable, Callable] = {}


def _handlers() -> dict[Callable, Callable]:
    """func -> handler, built once."""
    if not _HANDLERS:
        _HANDLERS.update({**linear.handlers(), **conv.handlers(), **rnn.handlers()})
    return _HANDLERS


class _Mode(TorchFunctionMode):
    """The function-level interception: every Python-level PyTorch call of the thread."""

    def __init__(self, session: OffloadSession, host: HostFlops) -> None:
        super().__init__()
        self.runner = Runner(session)
        self.stats = session.stats
        self.host = host
        self.handlers = _handlers()

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
        if dispatcher.innermost() is not self.runner:
            # a session entered inside this one decides (a dispatcher session below, or a function
            # mode whose call, given back to PyTorch, passes here): this one neither runs nor counts it
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
        # tensor subclasses keep their own semantics; so does an ``out=`` tensor (F.linear,
        # torch._int_mm, torch._addmm_activation take one): the handlers return a fresh result
        # and would leave ``out`` unwritten
        reason = ARGS
        if plain and kwargs.get("out") is None:
            if _transformed():
                reason = TRANSFORM
            else:
                done, r = self.runner.attempt(handler, func, args, kwargs)  # device work: outside HostFlops
                if done:
                    return r
                reason = r
        count(self.stats, False, 0, reason)  # the call; HostFlops adds its FLOPs as PyTorch runs it
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
