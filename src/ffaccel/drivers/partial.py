"""Any driver restricted to part of the op set: a partial device built from a whole one.

A device that implements part of the spec (an NPU with two dtype combinations and two post-ops)
declares that part in :meth:`Driver.caps`; the validator refuses the rest as UNSUPPORTED before
the driver is called. :func:`restricted` makes such a device out of any driver, so that a driver
author (and the project's own tests) can see how the runtime, the front-ends and the conformance
suite treat a partial device without writing one. It is also a device name:

    restricted:cpu;combos=int8xint8->int32->int32,bf16;post_ops=bias_n,relu;copies=bf16->bf16

The part before the first ``;`` is the inner device's name (``cpu``, ``cpu:2``, ``ref``,
``torch:cpu``); each ``key=value`` after it narrows one field of the inner driver's caps, and a
field not named keeps the inner driver's. Values are comma-separated, an empty value declares
nothing of that kind (``post_ops=``); a word that names nothing the inner driver declares is
refused. Words (see docs/conformance.md, "Partial devices"):

* ``combos``: combination names as ``ffaccel info`` prints them (``bf16xbf16->f32->f32``), or a
  family: ``f64``, ``f32``, ``f16`` (both outputs), ``bf16`` (both outputs), ``int8`` (the four
  int8/uint8 pairs);
* ``copies``: ``SRC->DST`` dtype names (``f64->f32``, ``int8->int8``);
* ``post_ops``: ``bias_n``, ``bias_m``, ``relu``, ``gelu_erf``, ``gelu_tanh``, ``clamp``,
  ``scale``, ``add``;
* ``engines``: ``compute``, ``copy``.

Everything else (memory, kernels, every fast-path hook) is the inner driver's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from ..abi import DeviceCaps
from ..spec import COPY_CONVERSIONS, DTYPES, GEMM_COMBOS, DType, Engine, GemmCombo, PostOpKind, violation
from .base import Driver, DriverInfo

#: Family words accepted for ``combos``: each names the combinations whose A dtype is in the set.
COMBO_FAMILIES: dict[str, tuple[str, ...]] = {
    "f64": ("f64",), "f32": ("f32",), "f16": ("f16",), "bf16": ("bf16",), "int8": ("int8", "uint8"),
}
#: The fields of DeviceCaps a restriction may narrow, in the order the device name lists them.
FIELDS = ("combos", "copies", "post_ops", "engines")


def _combos(words: Iterable[str]) -> frozenset[GemmCombo]:
    by_name = {c.name: c for c in GEMM_COMBOS}
    out: set[GemmCombo] = set()
    for w in words:
        if w in by_name:
            out.add(by_name[w])
        elif w in COMBO_FAMILIES:
            out.update(c for c in GEMM_COMBOS if DTYPES[c.a].name in COMBO_FAMILIES[w])
        else:
            raise ValueError(f"combos: {w!r} is neither a combination ({', '.join(by_name)}) "
                             f"nor a family ({', '.join(COMBO_FAMILIES)})")
    return frozenset(out)


def _copies(words: Iterable[str]) -> frozenset[tuple[DType, DType]]:
    by_name = {f"{DTYPES[s].name}->{DTYPES[d].name}": (s, d) for s, d in COPY_CONVERSIONS}
    unknown = [w for w in words if w not in by_name]
    if unknown:
        raise ValueError(f"copies: {unknown[0]!r} is not one of {', '.join(by_name)}")
    return frozenset(by_name[w] for w in words)


def _named(enum: Any, field: str, words: Iterable[str]) -> frozenset:
    names = {e.name.lower(): e for e in enum}
    unknown = [w for w in words if w not in names]
    if unknown:
        raise ValueError(f"{field}: {unknown[0]!r} is not one of {', '.join(names)}")
    return frozenset(names[w] for w in words)


def _items(value: "str | Iterable[Any]") -> list:
    """A field's value as a list: the words of a comma-separated string, or the iterable's items."""
    return [w.strip() for w in value.split(",") if w.strip()] if isinstance(value, str) else list(value)


def _parse(field: str, value: "str | Iterable[Any]") -> frozenset:
    """One field's value, from words (a comma-separated string or an iterable of words) or from
    the spec's own objects (GemmCombo, (DType, DType), PostOpKind, Engine)."""
    items = _items(value)
    words = [w for w in items if isinstance(w, str)]
    objects = frozenset(w for w in items if not isinstance(w, str))
    parse = {"combos": _combos, "copies": _copies,
             "post_ops": lambda ws: _named(PostOpKind, "post_ops", ws),
             "engines": lambda ws: _named(Engine, "engines", ws)}[field]
    return objects | parse(words)


def _declared_names(field: str, caps: DeviceCaps) -> list[str]:
    """What ``caps`` declares in one field, in the words a restriction uses."""
    if field == "combos":
        return [c.name for c in GEMM_COMBOS if c in caps.combos]
    if field == "copies":
        return [f"{DTYPES[s].name}->{DTYPES[d].name}" for s, d in COPY_CONVERSIONS if (s, d) in caps.copies]
    return sorted(e.name.lower() for e in getattr(caps, field))


def _check_declared(inner: Driver, field: str, value: "str | Iterable[Any]") -> None:
    """A word that names nothing the inner driver declares is refused: the restriction keeps only
    what both declare, so ``restricted:npu;combos=f32`` silently opened an npu with no GEMM at all
    (a family word keeps what it finds: ``int8`` on the npu is its three int8 pairs)."""
    own = inner.caps()
    for word in _items(value):
        if isinstance(word, str) and not _parse(field, [word]) & getattr(own, field):
            raise ValueError(f"{field}: {word!r} names nothing the inner device ({inner.name}) declares; "
                             f"it declares {', '.join(_declared_names(field, own)) or 'none'}")


class RestrictedDriver(Driver):
    """``inner`` with its caps narrowed to ``caps`` (an intersection: never more than the inner
    driver declares). Every hook is the inner driver's, so its fast paths (and its bugs) stay."""

    def __init__(self, inner: Driver, caps: DeviceCaps) -> None:
        self.inner = inner
        own = inner.caps()
        self._caps = DeviceCaps(combos=own.combos & caps.combos, copies=own.copies & caps.copies,
                                post_ops=own.post_ops & caps.post_ops, engines=own.engines & caps.engines,
                                limits=caps.limits if caps.limits != DeviceCaps().limits else own.limits)
        if Engine.COMPUTE not in self._caps.engines:
            raise ValueError("engines: a device needs the compute engine")
        self.name = f"{inner.name} (restricted)"  # type: ignore[misc] - per instance, like its caps
        self.version = inner.version  # type: ignore[misc]
        self.description = inner.description  # type: ignore[misc]
        self.host_visible = inner.host_visible

    def caps(self) -> DeviceCaps:
        return self._caps

    def info(self) -> DriverInfo:
        inner = self.inner.info()
        declared = {c.name for c in self._caps.combos}
        bands = tuple(dataclasses.replace(b, combos=tuple(c for c in b.combos if c in declared))
                      for b in inner.size_bands if declared & set(b.combos))
        return dataclasses.replace(inner, name=self.name, caps=self._caps, size_bands=bands,
                                   kernels=tuple((n, k) for n, k in inner.kernels if n in declared))

    def thread_pool(self) -> str:
        return self.inner.thread_pool()

    def memory_bytes(self) -> int:
        return self.inner.memory_bytes()

    def alloc(self, size_bytes: int) -> Any:
        return self.inner.alloc(size_bytes)

    def gemm(self, op, a, b, c, d, epi):  # type: ignore[no-untyped-def] - the base class's signature
        return self.inner.gemm(op, a, b, c, d, epi)

    def prepare_gemm(self, op):  # type: ignore[no-untyped-def]
        return self.inner.prepare_gemm(op)

    def kernel_family(self, op):  # type: ignore[no-untyped-def]
        return self.inner.kernel_family(op)

    def prepare_gemm_fresh(self, op):  # type: ignore[no-untyped-def]
        return self.inner.prepare_gemm_fresh(op)

    def bind_gemm(self, op, a, b, c, d, epi):  # type: ignore[no-untyped-def]
        return self.inner.bind_gemm(op, a, b, c, d, epi)

    def bind_gemm_group(self, op, a, b, c, d, epi):  # type: ignore[no-untyped-def]
        return self.inner.bind_gemm_group(op, a, b, c, d, epi)

    def copy(self, op, src, dst):  # type: ignore[no-untyped-def]
        return self.inner.copy(op, src, dst)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        # what a driver offers beyond the base class (the cpu driver's kernels(), the torch
        # driver's device) stays reachable; only called for names this class lacks
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def restricted(inner: "Driver | str", *, combos: "str | Iterable[Any] | None" = None,
               copies: "str | Iterable[Any] | None" = None, post_ops: "str | Iterable[Any] | None" = None,
               engines: "str | Iterable[Any] | None" = None) -> RestrictedDriver:
    """A driver (or a device name's driver) that declares only part of what it implements.

    Each field is None (keep the inner driver's) or the words of the module docstring (a
    comma-separated string or a list), or the spec's own objects. The result never declares more
    than ``inner`` does.

    Examples
    --------
    >>> from ffaccel.spec import PostOpKind
    >>> drv = restricted("cpu", combos="int8,bf16xbf16->f32->f32", post_ops="bias_n,relu", copies="bf16->bf16")
    >>> sorted(c.name for c in drv.caps().combos)[:2]
    ['bf16xbf16->f32->f32', 'int8xint8->int32->int32']
    >>> sorted(drv.caps().post_ops) == [PostOpKind.BIAS_N, PostOpKind.RELU]
    True
    """
    if isinstance(inner, str):
        from . import open_driver

        inner = open_driver(inner)
    whole = DeviceCaps()
    try:
        fields = {f: _parse(f, v) for f, v in (("combos", combos), ("copies", copies), ("post_ops", post_ops),
                                                ("engines", engines)) if v is not None}
        for f, v in (("combos", combos), ("copies", copies), ("post_ops", post_ops), ("engines", engines)):
            if v is not None:
                _check_declared(inner, f, v)
        # inside the try: a restriction without the compute engine is refused here too, and the
        # inner driver must be closed then (an npu's two engine threads stayed, per failed open)
        return RestrictedDriver(inner, dataclasses.replace(whole, **fields))
    except ValueError:
        inner.close()
        raise


class RestrictedByName(RestrictedDriver):
    """The ``restricted`` device name: ``restricted:INNER;field=words;...`` (module docstring)."""

    name = "restricted"

    def __init__(self, options: str = "") -> None:
        inner_name, *pairs = options.split(";")
        fields: dict[str, str] = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            key = key.strip()
            if not eq or key not in FIELDS or key in fields:
                raise violation("device.name", f"restricted:{options}",
                                f"restricted:INNER;FIELD=WORDS;... with FIELD one of {', '.join(FIELDS)}, each once")
            fields[key] = value
        if not inner_name.strip() or inner_name.strip().startswith("restricted"):
            raise violation("device.name", f"restricted:{options}", "restricted:INNER with INNER a device name "
                            "such as cpu, ref or torch:cpu")
        from . import open_driver

        try:
            drv = restricted(open_driver(inner_name.strip()), **fields)
        except ValueError as e:
            raise violation("device.name", f"restricted:{options}", str(e)) from None
        super().__init__(drv.inner, drv.caps())
