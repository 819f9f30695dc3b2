"""Layer 2: drivers, discovered as plug-ins through the ``ffaccel.drivers`` entry-point group.

The built-in ``ref``, ``cpu``, ``npu``, ``dask`` and ``torch`` drivers are also registered here directly, so a
source checkout works before the package is installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import entry_points

from ..spec import violation
from .base import BoundGemm, Driver, DriverInfo, FreshKernel, GemmKernel, SizeBand

ENTRY_POINT_GROUP = "ffaccel.drivers"
_BUILTIN = {
    "ref": "ffaccel.drivers.ref:RefDriver",
    "cpu": "ffaccel.drivers.cpu:CpuDriver",
    "npu": "ffaccel.drivers.npu:NpuDriver",  # a simulated SoC NPU (int8/bf16 GEMMs, bias, relu, COPY)
    "dask": "ffaccel.drivers.dask:DaskDriver",  # listed where dask.distributed is installed
    "torch": "ffaccel.drivers.torch:TorchDriver",  # listed only where torch is installed
    "restricted": "ffaccel.drivers.partial:RestrictedByName",  # any driver narrowed to part of the op set
}
#: Built-in drivers that need an optional package: listed only where it is installed
#: (looked up without importing it, so ``ffaccel.devices()`` never imports torch).
_REQUIRES = {"ffaccel.drivers.torch:TorchDriver": "torch", "ffaccel.drivers.dask:DaskDriver": "distributed"}


#: How a missing requirement is installed (``ffaccel devices`` says it next to the driver).
_INSTALL_HINTS = {"torch": "pip install 'ffaccel[torch]'", "distributed": "pip install 'ffaccel[dask]'"}
#: The device names each built-in driver opens under, with what each means. A driver not listed
#: here (a plug-in, or one added later) is asked for its class's ``device_forms`` (the same
#: pairs), else listed under its bare name. A form with an upper-case placeholder (N, HOST...)
#: needs a value; one without opens as written.
_FORMS: dict[str, tuple[tuple[str, str], ...]] = {
    "ref": (("ref", "the golden model: exact arithmetic, one rounding; slow (for judging drivers)"),),
    "cpu": (("cpu", "the host CPU through OpenBLAS (and oneDNN with the onednn extra); the default device"),
            ("cpu:N", "the same with at most N BLAS threads (default $FFACCEL_CPU_THREADS, else the BLAS's own)")),
    "torch": (("torch:cpu", "PyTorch on the CPU"),
              ("torch:cuda", "PyTorch on the current GPU (a CUDA build of PyTorch and a GPU)"),
              ("torch:DEVICE", "any device this PyTorch build can use, e.g. torch:cuda:1")),
    "npu": (("npu", "a simulated SoC NPU (int8 and bf16 GEMMs, bias and ReLU, COPY), preset rk3588"),
            ("npu:preset=NAME,KEY=VALUE", "another preset (ethos-u65, ethos-u65-256, rk3588, npu3720, xdna2), "
             "paced=1 (jobs take their modeled time), or any field of the cost model (docs/npu.md)")),
    "restricted": (("restricted:NAME;combos=...;post_ops=...;copies=...;engines=...",
                    "any device narrowed to part of the op set, e.g. restricted:cpu;combos=int8xint8->int32->int32 "
                    "(docs/conformance.md, \"Partial devices\")"),),
    "dask": (("dask://HOST:PORT", "large GEMMs tiled over the workers of a running Dask scheduler; options "
              "?min_flops=F&parts=N&worker=NAME&local=NAME&timeout_s=S&wait_s=S"),),
}


@dataclass(frozen=True)
class DriverEntry:
    """One driver of the registry, as ``ffaccel devices`` lists it.

    ``forms``: (device name form, what it means) pairs; ``requires``: the Python package it needs
    (None: nothing beyond ffaccel); ``installed``: whether that package is there; ``install``: how
    to install it.
    """

    name: str
    target: str
    forms: tuple[tuple[str, str], ...]
    requires: str | None
    installed: bool
    install: str


def _forms_of(name: str, target: str, installed: bool) -> tuple[tuple[str, str], ...]:
    if name in _FORMS:
        return _FORMS[name]
    if installed:
        try:
            module, _, attr = target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            forms = getattr(cls, "device_forms", ())
            if forms:
                return tuple((str(f), str(what)) for f, what in forms)
            return ((name, str(getattr(cls, "description", "")) or f"the {name} driver"),)
        except Exception:  # noqa: BLE001 - a broken plug-in is listed, not fatal to the listing
            pass
    return ((name, f"the {name} driver"),)


def driver_catalog() -> list[DriverEntry]:
    """Every driver the registry knows (built-in ones included where their package is missing),
    with its device name forms and what it needs installed; sorted by name."""
    known = dict(_BUILTIN)
    for name, value in _installed():
        known.setdefault(name, value)
    out = []
    for name, target in sorted(known.items()):
        need = _REQUIRES.get(target)
        installed = _available(target)
        out.append(DriverEntry(name, target, _forms_of(name, target, installed), need, installed,
                               _INSTALL_HINTS.get(need or "", f"pip install {need}" if need else "")))
    return out


@functools.lru_cache(maxsize=None)
def _available(target: str) -> bool:
    need = _REQUIRES.get(target)
    return need is None or importlib.util.find_spec(need) is not None


@functools.lru_cache(maxsize=1)
def _installed() -> tuple[tuple[str, str], ...]:
    # Scanning entry points costs milliseconds: once per process is enough.
    return tuple((ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP))


def driver_targets() -> dict[str, str]:
    """Driver name -> "module:Class" for every installed driver."""
    found = {name: value for name, value in _BUILTIN.items() if _available(value)}
    for name, value in _installed():
        if _available(value):
            found.setdefault(name, value)
    return found


def load_driver_class(name: str) -> type[Driver]:
    """Import the class of the driver called ``name`` (KeyError when there is none)."""
    target = driver_targets()[name]
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def missing_package(driver_name: str) -> str | None:
    """For a known driver whose package is not installed: what it needs and how to install it
    ("the torch driver needs torch, not installed: pip install 'ffaccel[torch]'"); else None."""
    known = dict(_BUILTIN)
    for name, value in _installed():
        known.setdefault(name, value)
    target = known.get(driver_name)
    if target is None or _available(target):
        return None
    need = _REQUIRES[target]
    return f"the {driver_name} driver needs {need}, not installed: " \
           + _INSTALL_HINTS.get(need, f"pip install {need}")


def open_driver(name: str) -> Driver:
    """A driver instance by device name (``"cpu"``, ``"torch:cuda"``, ``"cpu:2"``).

    The part after the first ':' goes to the driver class's constructor; an unknown name or
    options the driver does not take raise INVALID_PARAMETER naming ``name``.
    """
    driver_name, _, options = name.partition(":")
    try:
        cls = load_driver_class(driver_name)
    except KeyError:
        missing = missing_package(driver_name)  # a driver whose extra is not installed says how to get it
        raise violation("device.name", name, missing if missing else sorted(driver_targets())) from None
    try:
        return cls(options) if options else cls()
    except TypeError as e:  # the driver takes no (or other) options
        raise violation("device.name", name, f"{driver_name} with options it accepts ({e})") from None


def restricted(inner, **fields):  # type: ignore[no-untyped-def] - documented in drivers/partial.py
    """Any driver (or device name) declaring only part of the op set: see
    :func:`ffaccel.drivers.partial.restricted` and docs/conformance.md ("Partial devices")."""
    from .partial import restricted as narrow

    return narrow(inner, **fields)


__all__ = ["BoundGemm", "Driver", "DriverEntry", "DriverInfo", "FreshKernel", "ENTRY_POINT_GROUP", "GemmKernel",
           "SizeBand", "driver_catalog", "driver_targets", "load_driver_class", "missing_package", "open_driver",
           "restricted"]
