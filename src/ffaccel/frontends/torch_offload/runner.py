"""The device side of a session, shared by both interceptions (the function mode and the dispatcher
kernels): one ``matmul`` on the device with the partial-device route, the counting, and the attempt
of a handler that may give the call back to PyTorch.

Handlers receive a :class:`Runner` as ``m`` and submit GEMMs with ``m.run(flops, a, b, ...)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ...spec import FFAccelError
from ..numpy_api import matmul
from .accounting import Host, count
from .fit import finish_on_host, narrow, refusal_reason


def _widened(p: Any, dtype: np.dtype) -> Any:
    """A device post-op whose operand (bias, add) follows D to a wider dtype (bias and add come in
    the accumulate dtype or D's)."""
    if p.operand is None or p.operand.dtype == dtype or p.operand.dtype == np.float32:
        return p
    return dataclasses.replace(p, operand=p.operand.astype(dtype))


class Runner:
    """One session's device calls: what handlers call as ``m``."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.stats = session.stats
        self.dev = session.device
        self.fit = session.fit
        #: the device takes every GEMM as it is (no partial-device route): the dispatcher's fast paths apply
        self.direct = session.fit.everything
        #: a dispatcher session's (else a function mode's: the dispatcher's kernels leave its calls to PyTorch)
        self.via_dispatcher = session.interception == "dispatcher"
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

    def repeated(self, flops: int, a: np.ndarray, calls: int) -> Callable[[np.ndarray], np.ndarray]:
        """``b -> a @ b`` on the device for a GEMM made ``calls`` times with one ``a`` and one
        geometry (an RNN's recurrent GEMM, once per step), each of ``flops``: counted here at once,
        so that each call is one bare ``matmul`` (~1.5 µs less than :meth:`run` per call). Where
        the route adapts the GEMM (partial device, relaxed), each call takes :meth:`run`."""
        if not self.fit.everything:
            return lambda b: self.run(flops, a, b)
        count(self.stats, True, flops * calls, calls=calls)
        return functools.partial(matmul, a, device=self.dev)

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

    def attempt(self, handler: Callable, func: Any, args: tuple, kwargs: dict) -> tuple[bool, Any]:
        """Run ``handler(self, func, args, kwargs)``: ``(True, result)``, or ``(False, reason)``
        when it gives the call back (:class:`Host`) or the device refuses it (the caller then
        runs it in PyTorch). Device work a handler did before giving up is not counted: PyTorch
        redoes the whole call."""
        stats = self.stats
        before = stats["offloaded_calls"], stats["offloaded_flops"], stats["relaxed_calls"], stats["relaxed_flops"]
        try:
            r = handler(self, func, args, kwargs)
        except Host as h:
            reason = h.reason
        except FFAccelError as e:  # the device refused a call PyTorch may accept (or reports itself)
            reason = refusal_reason(e)
        else:
            if self.host_post_ops:  # post-ops the device lacks, run on the host
                for why in self.host_post_ops:
                    count(stats, False, 0, why)
                self.host_post_ops.clear()
            return True, r
        (stats["offloaded_calls"], stats["offloaded_flops"], stats["relaxed_calls"],
         stats["relaxed_flops"]) = before
        self.host_post_ops.clear()
        return False, reason
