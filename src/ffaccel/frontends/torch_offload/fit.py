"""How a GEMM reaches a device that declares only part of the op set.

A device says what it does in its :class:`~ffaccel.abi.DeviceCaps`: GEMM dtype combinations,
post-ops, limits. :class:`DeviceFit` reads them once per session and decides, per GEMM
(cached by dtypes and post-op kinds), a :class:`Route`:

* **dtype.** The combination asked for, when declared. Else, for f16/bf16 results, the same
  inputs with an f32 D, rounded on the host. Else, with the relaxed opt-in (``relaxed="bf16"``
  or ``"f16"``, NNAPI's "relaxed float32 computation"), an f32 GEMM runs as bf16 (f16) inputs
  with f32 accumulation and an f32 D: the inputs are rounded on the host, the GEMM is
  offloaded and counted in ``stats["relaxed_calls"]``/``["relaxed_flops"]``. Else the call stays
  in PyTorch with ``"dtype unsupported (<combination>)"``.
* **post-ops.** The leading post-ops the device declares (at most its ``max_epilogue_ops``)
  run in its epilogue; from the first one it lacks on, they run on the host right after the
  device GEMM, in f32 (f64 for f64) with :mod:`ffaccel.drivers.epilogue`'s definitions, then
  D is rounded once. Each GEMM with host post-ops counts one host call per post-op kind,
  ``"post-op unsupported (<kind>)"``, with no FLOPs (PyTorch's count gives elementwise work none).

Refusals the route cannot foresee (alignment, sizes beyond the device's limits, memory) come
back from the device as errors and are named by :func:`refusal_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from ...abi import DeviceCaps
from ...drivers.epilogue import OPERAND_KINDS, float_steps, int_steps, run_steps
from ...spec import DTYPES, GEMM_COMBOS, DType, FFAccelError, PostOpKind, dtype_of_numpy, violation
from ..post import PostOp
from .accounting import DTYPE, LAYOUT, POST_OP, REFUSED, SIZE, Host

#: The relaxed opt-in's names -> the narrow input dtype f32 GEMMs may run in.
RELAXED: dict[str, DType] = {"bf16": DType.BF16, "f16": DType.F16}
_NARROW_NUMPY = {DType.BF16: np.dtype(ml_dtypes.bfloat16), DType.F16: np.dtype(np.float16)}
_F32 = np.dtype(np.float32)

#: Error rule -> the kind of reason a device refusal is counted under.
REASON_BY_RULE: dict[str, str] = {
    "gemm.combo_supported": DTYPE,
    "epilogue.supported": POST_OP,
    "epilogue.int_unsupported": POST_OP,
    "epilogue.count": POST_OP,
    "operand.alignment": LAYOUT,
    "operand.ld": LAYOUT,
    "operand.batch_stride": LAYOUT,
    "gemm.dim": SIZE,
    "memory.size": SIZE,
    "memory.quota": SIZE,
    "memory.mappings": SIZE,
}


def refusal_reason(e: FFAccelError) -> str:
    """The host reason for a device refusal: its kind (dtype, post-op, layout, size) and the
    parameter it names, else ``"device refused (<code>)"``."""
    kind = REASON_BY_RULE.get(getattr(e, "rule", None) or "")
    if kind is None:
        return f"{REFUSED} ({e.code.name})"
    return f"{kind} ({e.param})"


def check_relaxed(relaxed: Any) -> DType | None:
    """The narrow dtype named by ``relaxed`` (None: off); else INVALID_PARAMETER naming ``relaxed``."""
    if relaxed is None:
        return None
    if isinstance(relaxed, str) and relaxed in RELAXED:
        return RELAXED[relaxed]
    raise violation("api.option", repr(relaxed), f"None or one of {sorted(RELAXED)}", arg="relaxed")


@dataclass(frozen=True)
class Route:
    """How one GEMM goes: what is converted before, what the device runs, what the host does after."""

    #: convert A and B to this dtype first (the relaxed path), else None
    in_dtype: np.dtype | None
    #: ``out_dtype`` to ask the device for (None: the call's own)
    d_dtype: np.dtype | None
    #: round the result to this dtype on the host at the end (None: keep the device's D)
    final_dtype: np.dtype | None
    #: how many of the leading post-ops run in the device's epilogue
    device_ops: int
    #: the reason of each host post-op kind (one host call each)
    host_reasons: tuple[str, ...]
    #: counted as relaxed (f32 run in a narrow dtype)
    relaxed: bool

    @property
    def direct(self) -> bool:
        """Nothing to adapt: the call goes to the device as it is."""
        return self.in_dtype is None and self.d_dtype is None and self.final_dtype is None and not self.host_reasons


_DIRECT = Route(None, None, None, 4, (), False)


def _combo_name(a: DType, b: DType, d: DType) -> str:
    for c in GEMM_COMBOS:
        if (c.a, c.b, c.d) == (a, b, d):
            return c.name
    return f"{DTYPES[a].name}x{DTYPES[b].name}->{DTYPES[d].name}"


class DeviceFit:
    """A device's declared capabilities, as the offload session asks them per GEMM."""

    def __init__(self, caps: DeviceCaps, relaxed: DType | None = None) -> None:
        self.combos = {(c.a, c.b, c.d) for c in caps.combos}
        self.post_ops = frozenset(caps.post_ops)
        self.max_ops = caps.limits.max_epilogue_ops
        self.relaxed = relaxed
        #: every combination and post-op declared: each GEMM goes as it is (no per-call work)
        self.everything = self.combos >= {(c.a, c.b, c.d) for c in GEMM_COMBOS} and \
            self.post_ops >= frozenset(PostOpKind) and self.max_ops >= 4
        self._routes: dict[tuple, Route] = {}

    def route(self, a_dtype: np.dtype, b_dtype: np.dtype, out_dtype: Any, kinds: tuple[PostOpKind, ...]) -> Route:
        """The route of a GEMM (cached); Host with a dtype reason when none exists."""
        key = (a_dtype, b_dtype, out_dtype, kinds)
        r = self._routes.get(key)
        if r is None:
            r = self._routes[key] = self._decide(a_dtype, b_dtype, out_dtype, kinds)
        if isinstance(r, str):
            raise Host(r)
        return r

    def _decide(self, a_dtype: np.dtype, b_dtype: np.dtype, out_dtype: Any, kinds: tuple) -> "Route | str":
        a, b = dtype_of_numpy(a_dtype), dtype_of_numpy(b_dtype)
        if a is None or b is None:
            return DTYPE
        is_float = DTYPES[a].is_float
        want = dtype_of_numpy(out_dtype) if out_dtype is not None else (a if is_float else DType.I32)
        if want is None:
            return DTYPE
        n_dev = 0
        while n_dev < len(kinds) and n_dev < self.max_ops and kinds[n_dev] in self.post_ops:
            n_dev += 1
        host = tuple(dict.fromkeys(f"{POST_OP} ({k.name.lower()})" for k in kinds[n_dev:]))
        narrow_d = want in (DType.F16, DType.BF16)
        in_dtype = None
        relaxed = False
        d = want
        if (a, b, want) in self.combos and not (host and narrow_d and (a, b, DType.F32) in self.combos):
            pass  # as asked (host post-ops on a narrow D: below, on an f32 D where the device has one)
        elif narrow_d and (a, b, DType.F32) in self.combos:
            d = DType.F32  # an f32 D, rounded on the host (after any host post-ops)
        elif a == b == want == DType.F32 and self.relaxed is not None \
                and (self.relaxed, self.relaxed, DType.F32) in self.combos:
            in_dtype, relaxed = _NARROW_NUMPY[self.relaxed], True
        else:
            return f"{DTYPE} ({_combo_name(a, b, want)})"
        if n_dev == len(kinds) and d == want and in_dtype is None:
            return _DIRECT
        return Route(in_dtype, DTYPES[d].numpy if d != want or in_dtype is not None else None,
                     DTYPES[want].numpy if d != want else None, n_dev, host, relaxed)


def _host_operand(p: PostOp) -> np.ndarray | None:
    """A post-op's operand shaped to broadcast over D (bias over rows as a column)."""
    if p.kind not in OPERAND_KINDS or p.operand is None:
        return None
    return p.operand.reshape(-1, 1) if p.kind == PostOpKind.BIAS_M else p.operand


def finish_on_host(r: np.ndarray, host_ops: "tuple[PostOp, ...] | list[PostOp]", final: np.dtype | None
                   ) -> np.ndarray:
    """Apply post-ops the device lacks to its result ``r``, in f32 (f64 for f64, int32 for
    int32), then round once to ``final`` (else r's dtype)."""
    out_dtype = final if final is not None else r.dtype
    if host_ops:
        if r.dtype == np.int32:
            steps = int_steps(host_ops)
            x = r
        else:
            acc = np.dtype(np.float64) if r.dtype == np.float64 else _F32
            steps = float_steps(host_ops, acc)
            x = r if r.dtype == acc else r.astype(acc)
        run_steps(steps, x, tuple(_host_operand(p) for p in host_ops))
        r = x
    return r if r.dtype == out_dtype else r.astype(out_dtype)


def narrow(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``x`` rounded to ``dtype`` (the relaxed path's inputs), keeping its memory order."""
    return x.astype(dtype, order="K")


__all__ = ["DeviceFit", "RELAXED", "REASON_BY_RULE", "Route", "check_relaxed", "finish_on_host", "narrow",
           "refusal_reason"]
