"""The dispatcher-level interception: ATen's CPU kernels of the operators with FLOPs, replaced
through ``torch.library`` while a session is active.

Only the operators of :data:`RULES` reach Python (a GPT-2 decode step's ~16 GEMMs, not its
~300 PyTorch calls), below autograd: autograd records the call above the kernel, so a result the
device computed gets PyTorch's own backward, and the backward's GEMMs (``mm``) come back through
these kernels too.

* **Registration.** Process-wide: the process's first session registers the kernels (~0.2 ms; the
  originals are looked up then and called directly), and they stay registered until
  :func:`release` (called when no other thread runs PyTorch) or, where :data:`LINGER_S` is set
  finite, until that many seconds after the last session exits (a daemon reaper;
  :func:`wait_released` waits for it). Not removed by themselves by default, because removing
  a kernel while another thread dispatches that operator is a use-after-free in PyTorch's
  dispatcher (its table is read without a lock; the freed kernel's memory is reused): measured
  here with sessions entered and left in two threads and ``torch.addmm`` in a third,
  ``LINGER_S = 0`` had ``aten::addmm`` calls reach the ``mm`` and ``addmm.out`` kernels within
  seconds; registered once, never. A thread without a session dispatches through the kernels
  meanwhile (~5 µs per intercepted op, PyTorch's own result); see docs/torch.md.
* **Per thread.** Each kernel reads a thread-local stack of active sessions: a thread without
  one calls the original kernel (what other threads pay while a session is active elsewhere:
  one Python call, ~5 µs, per intercepted op; every other op is untouched). The innermost
  session of the thread counts. A call made while one of these kernels runs on the same thread
  (the original kernel's own inner ops, such as ``aten::_convolution`` inside
  ``aten::convolution``, or a ``torch`` device's ``torch.mm``) calls the original kernel and
  is not counted again: the outermost op counts, as ``HostFlops`` counts the outermost call.
* **Rules as data.** :data:`RULES` maps each operator overload to its adapter (which offloads
  it through the function mode's handlers) or None. Every operator there has a FLOP formula
  (:data:`FORMULAS`), so work that stays on the host (an operator with no adapter, a call an
  adapter gives back, a device refusal) is counted with its reason and PyTorch's formula:
  ``session.stats`` is complete without any Python mode.
* **Grad.** Under autograd a GEMM or a convolution is offloaded like any other call (the
  adapter runs with grad mode off: nothing it does is recorded); attention and the oneDNN LSTM
  layer (:data:`GRAD_ON_HOST`) return extra tensors that PyTorch's backward reads (log-sum-exp,
  oneDNN's workspace), so they stay on the host, counted as ``grad required``, when an input
  needs grad.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from . import conv, linear, rnn
from .accounting import ARGS, GRAD, NOT_LOWERED, REGISTRY, Host, count
from .tensors import PARAM_MEMO

_C = torch._C
_CPU = _C.DispatchKeySet(_C.DispatchKey.CPU)
_aten = torch.ops.aten


def _mm(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    return linear.matmul_strict(m, torch.mm, args, kwargs)


def _bmm(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    return linear.matmul_strict(m, torch.bmm, args, kwargs)


def _addmm(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    if not kwargs and len(args) == 3:
        c, a, w_t = args
        if (c.ndim == 1 and a.ndim == 2 and w_t.ndim == 2 and not w_t.is_contiguous() and w_t.t().is_contiguous()
                and c.shape[0] == w_t.shape[1]):  # (a broadcast bias is addmm's: the linear handler refuses it)
            # F.linear's addmm (bias, x, W.t()): the same device call as the function mode's linear
            # handler (W with trans_b), which the cpu driver serves on PyTorch's thread pool; the
            # transposed view as a plain B went to OpenBLAS's own spinning threads (MHA 64x8 at two
            # threads: 11.7 against 6.0 ms)
            return linear.linear(m, F.linear, (a, w_t.t(), c), {})
    return linear.addmm(m, torch.addmm, args, kwargs)  # aten::addmm takes torch.addmm's arguments


def _baddbmm(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
    return linear.addmm(m, torch.baddbmm, args, kwargs)


def _into_out(adapter: Callable) -> Callable:
    """The ``.out`` overload of an adapter's operator: the adapter's result copied into ``out``;
    an ``out`` of another shape or dtype (which PyTorch resizes, or refuses) goes to PyTorch."""
    def run(m: Any, func: Any, args: tuple, kwargs: dict) -> torch.Tensor:
        rest = dict(kwargs)
        out = rest.pop("out", None)
        if not isinstance(out, torch.Tensor):
            raise Host(ARGS)
        r = adapter(m, func, args, rest)
        if r.shape != out.shape or r.dtype is not out.dtype:
            raise Host(ARGS)
        return out.copy_(r)
    return run


#: ATen operator overload -> the adapter that offloads it (``adapter(m, name, args, kwargs)``,
#: returning the kernel's result or raising Host), or None: run by PyTorch, counted on the host as
#: "not offloaded (<operator>)". Every operator here has a FLOP formula (:data:`FORMULAS`); an
#: overload PyTorch has no CPU kernel for (or implements as a composite of others) is skipped.
#: Of the formula table's operators with a CPU kernel only ``convolution_overrideable`` is left
#: out: its CPU kernel only raises (it is for out-of-tree backends), and each registration
#: costs ~25 µs of every session's entry.
RULES: dict[str, Callable | None] = {
    "mm": _mm, "mm.out": _into_out(_mm), "mv": linear.mv, "mv.out": _into_out(linear.mv),
    "addmm": _addmm, "addmm.out": _into_out(_addmm),
    "bmm": _bmm, "bmm.out": _into_out(_bmm),
    "baddbmm": _baddbmm, "baddbmm.out": _into_out(_baddbmm),
    "_int_mm": linear.int_mm, "_int_mm.out": _into_out(linear.int_mm),
    "_addmm_activation": linear.addmm_activation, "_addmm_activation.out": _into_out(linear.addmm_activation),
    "convolution": conv.aten_convolution, "convolution.out": _into_out(conv.aten_convolution),
    "_convolution": conv.aten_convolution, "_convolution.out": _into_out(conv.aten_convolution),
    "_scaled_dot_product_flash_attention_for_cpu": linear.aten_sdpa,
    "mkldnn_rnn_layer": rnn.mkldnn_layer, "mkldnn_rnn_layer.out": None,
    "convolution_backward": None, "convolution_backward.out": None,
    "_slow_conv2d_forward": None, "_slow_conv2d_forward.output": None,
    "_scaled_mm": None, "_scaled_mm.out": None,
}
#: ATen operator overload -> a fast path tried first on a device that takes every GEMM as it is
#: (``fast(runner, args, kwargs)`` -> the result, or None: the adapter of :data:`RULES` decides): a
#: decode step's per-call cost (see docs/torch.md)
FAST: dict[str, Callable] = {"addmm": linear.fast_addmm, "mm": linear.fast_mm,
                             "_scaled_dot_product_flash_attention_for_cpu": linear.fast_sdpa}
#: operators whose adapter cannot serve autograd (see the module docstring): on the host with
#: "grad required" when grad is enabled and an input requires it
GRAD_ON_HOST = frozenset({"_scaled_dot_product_flash_attention_for_cpu", "mkldnn_rnn_layer"})
#: operator (packet name) -> FLOP formula: PyTorch's (``accounting.REGISTRY``), plus the two
#: offloaded operators it has none for, priced as the GEMM they are (as the function mode counts them)
FORMULAS: dict[str, Callable[..., int]] = {
    **{p.__name__: f for p, f in REGISTRY.items() if isinstance(p, torch._ops.OpOverloadPacket)},
    "_int_mm": REGISTRY[_aten.mm], "_addmm_activation": REGISTRY[_aten.addmm]}


class _State(threading.local):
    #: this thread's active sessions' runners, innermost last, of either interception (a function
    #: mode's too: the innermost session decides, whichever interception it uses)
    runners: tuple = ()
    #: inside an intercepted op on this thread (an adapter or an original kernel is running)
    busy = False


_STATE = _State()
_LOCK = threading.Lock()
#: signalled (under _LOCK) when the last session exits or the kernels are removed
_CHANGED = threading.Condition(_LOCK)
_users = 0
_library: torch.library.Library | None = None
#: seconds the kernels stay registered after the process's last session exits (a session entered
#: meanwhile finds them in place and registers nothing); inf, the default: until :func:`release`
#: (removal races with other threads' dispatch: see the module docstring)
LINGER_S = math.inf
#: time.monotonic() at which the reaper removes the kernels (None: not due, a session is active)
_release_at: float | None = None
_reaper: threading.Thread | None = None
#: time.monotonic() at which the reaper wakes by itself (inf: it waits to be woken). An exit wakes it
#: only when the kernels are due before that, so a back-to-back loop's exits, which move
#: _release_at later, wake no thread
_reaper_wakes_at = float("inf")
#: how many times the kernels were registered in this process (tests read it)
registrations = 0

def _needs_grad(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in (*args, *kwargs.values()))


def _kernel(name: str, original: Any, adapter: Callable | None, formula: Callable[..., int]) -> Callable:
    """The CPU kernel that replaces ``aten::<name>`` while sessions are active."""
    call = original.call_boxed
    op = name.split(".")[0]
    not_lowered = f"{NOT_LOWERED} ({op})"
    grad_on_host = op in GRAD_ON_HOST
    fast = FAST.get(name)
    is_grad_enabled, set_grad_enabled = torch.is_grad_enabled, _C._set_grad_enabled

    def kernel(*args: Any, **kwargs: Any) -> Any:
        st = _STATE
        if st.busy or not st.runners:  # no session on this thread, or an inner call: PyTorch's own
            return call(_CPU, *args, **kwargs)
        runner = st.runners[-1]
        if not runner.via_dispatcher:  # the innermost session is a function mode: it decided (and counts)
            return call(_CPU, *args, **kwargs)
        st.busy = True
        try:
            if fast is not None and runner.direct:
                r = fast(runner, args, kwargs)
                if r is not None:
                    return r
            if adapter is None:
                reason = not_lowered
            else:
                if not is_grad_enabled():
                    done, r = runner.attempt(adapter, name, args, kwargs)
                elif grad_on_host and _needs_grad(args, kwargs):
                    done, r = False, GRAD
                else:  # below autograd: the adapter's own PyTorch calls are not recorded either
                    set_grad_enabled(False)
                    try:
                        done, r = runner.attempt(adapter, name, args, kwargs)
                    finally:
                        set_grad_enabled(True)
                if done:
                    return r
                reason = r
            out = call(_CPU, *args, **kwargs)
            count(runner.stats, False, int(formula(*args, **kwargs, out_val=out)), reason)
            return out
        finally:
            st.busy = False
    return kernel


def _intercepted(full_name: str) -> bool:
    """Whether an overload has a CPU kernel of its own to replace (not a composite of others,
    which reach the intercepted ones)."""
    return _C._dispatch_has_computed_kernel_for_dispatch_key(full_name, "CPU") and \
        not _C._dispatch_has_kernel_for_dispatch_key(full_name, "CompositeImplicitAutograd")


_KERNELS: dict[str, Callable] = {}


def _kernels() -> dict[str, Callable]:
    """Overload name -> its replacement kernel, made once per process, at the first registration
    (so the original kernels are looked up while PyTorch's own are in place): a session's entry
    then only registers them."""
    if not _KERNELS:
        for name, adapter in RULES.items():
            op, _, overload = name.partition(".")
            if not hasattr(_aten, op) or (overload or "default") not in getattr(_aten, op).overloads():
                continue  # not in this PyTorch version
            full = f"aten::{name}"
            if _intercepted(full):
                original = _C._dispatch_get_computed_kernel_for_dispatch_key(full, _C.DispatchKey.CPU)
                _KERNELS[name] = _kernel(name, original, adapter, FORMULAS[op])
    return _KERNELS


def _register() -> torch.library.Library:
    kernels = _kernels()
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": meant
            for name, kernel in kernels.items():
                # the C++ registration without Library.impl's Python checks (~15 % of the time; it
                # also leaves torch.library's record of Python overrides, which would refuse a
                # user's own override of these operators while ours lingers)
                lib.m.impl(name, "CPU", kernel, False)
    except BaseException:
        lib._destroy()
        raise
    return lib


def registered() -> bool:
    """Whether the kernels are registered now (a session of this kind has been entered in this
    process and :func:`release` has not removed them since)."""
    return _library is not None


def _unregister() -> None:
    """Remove the kernels (caller holds _LOCK, no session active)."""
    global _library, _release_at
    if _library is not None:
        _library._destroy()
        _library = None
        PARAM_MEMO.clear()  # the memoized views keep their parameters alive: not past the sessions
    _release_at = None
    _CHANGED.notify_all()


def _reap() -> None:
    """The reaper thread: removes the kernels once the linger after the last exit has passed."""
    global _reaper_wakes_at, _release_at
    with _CHANGED:
        while True:
            if _release_at is None:
                _reaper_wakes_at = float("inf")
                _CHANGED.wait()
                continue
            left = _release_at - time.monotonic()
            if left > 0:
                _reaper_wakes_at = _release_at
                _CHANGED.wait(left)  # a session entered meanwhile clears _release_at; one exited moves it
            elif _users == 0:
                _unregister()
            else:  # (not reached: an entry clears _release_at)
                _release_at = None


def release() -> bool:
    """Remove the kernels now if no session is active (PyTorch's own kernels again, and no ~5 µs
    per intercepted op for calls outside sessions); True if none are registered afterwards.

    Call it where no other thread runs PyTorch operators: PyTorch's dispatcher reads its kernel
    table without a lock, and a thread dispatching an operator while its kernel is removed may
    run freed memory (see the module docstring)."""
    with _LOCK:
        if _users == 0:
            _unregister()
        return _library is None


def wait_released(timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` seconds for the kernels to be removed (the linger after the last
    session); True once none are registered."""
    deadline = time.monotonic() + timeout_s
    with _CHANGED:
        while _library is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            _CHANGED.wait(left)
        return True


def _after_fork_in_child() -> None:
    """A forked child has no reaper thread, and _LOCK may have been held by it at the fork: new ones."""
    global _LOCK, _CHANGED, _reaper, _reaper_wakes_at
    _LOCK = threading.Lock()
    _CHANGED = threading.Condition(_LOCK)
    _reaper, _reaper_wakes_at = None, float("inf")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def enter_thread(runner: Any) -> None:
    """Make ``runner`` (a session of either interception) this thread's innermost session: the
    kernels act only for a dispatcher session that is innermost, and a function mode only when it
    is (:func:`innermost`); an outer session sees neither what an inner one runs nor what it gives
    back to PyTorch."""
    _STATE.runners = (*_STATE.runners, runner)


def leave_thread(runner: Any) -> None:
    """Remove ``runner`` from this thread's sessions."""
    runners = list(_STATE.runners)
    for i in range(len(runners) - 1, -1, -1):
        if runners[i] is runner:
            del runners[i]
            break
    _STATE.runners = tuple(runners)


def innermost() -> Any:
    """This thread's innermost session's runner (None: none)."""
    runners = _STATE.runners
    return runners[-1] if runners else None


def push(runner: Any) -> None:
    """Activate ``runner`` on this thread (registering the kernels unless they are in place)."""
    global _users, _library, _release_at, registrations
    with _LOCK:
        if _library is None:
            _library = _register()
            registrations += 1
        _users += 1
        _release_at = None
    enter_thread(runner)


def pop(runner: Any) -> None:
    """Deactivate ``runner`` on this thread (the kernels go :data:`LINGER_S` after the process's last)."""
    global _users, _release_at, _reaper
    leave_thread(runner)
    with _LOCK:
        _users -= 1
        if _users == 0 and _library is not None:
            if LINGER_S <= 0:
                _unregister()
                return
            if LINGER_S == math.inf:  # the default: in place until release()
                return
            _release_at = time.monotonic() + LINGER_S
            if _reaper is None or not _reaper.is_alive():  # (not alive: first use, or a forked child)
                _reaper = threading.Thread(target=_reap, name="ffaccel-dispatcher-release", daemon=True)
                _reaper.start()
            elif _release_at < _reaper_wakes_at:
                _CHANGED.notify_all()
