"""Layer 2: drivers, discovered as plug-ins through the ``ffaccel.drivers`` entry-point group.

The built-in ``ref``, ``cpu`` and ``dask`` drivers are also registered here directly, so a
source checkout works before the package is installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from importlib.metadata import entry_points

from ..spec import violation
from .base import BoundGemm, Driver, DriverInfo, FreshKernel, GemmKernel, SizeBand

ENTRY_POINT_GROUP = "ffaccel.drivers"
_BUILTIN = {
    "ref": "ffaccel.drivers.ref:RefDriver",
    "cpu": "ffaccel.drivers.cpu:CpuDriver",
    "dask": "ffaccel.drivers.dask:DaskDriver",  # listed where dask.distributed is installed
    "torch": "ffaccel.drivers.torch:TorchDriver",  # listed only where torch is installed
    "restricted": "ffaccel.drivers.partial:RestrictedByName",  # any driver narrowed to part of the op set
}
#: Built-in drivers that need an optional package: listed only where it is installed
#: (looked up without importing it, so ``ffaccel.devices()`` never imports torch).
_REQUIRES = {"ffaccel.drivers.torch:TorchDriver": "torch", "ffaccel.drivers.dask:DaskDriver": "distributed"}


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


def open_driver(name: str) -> Driver:
    """A driver instance by device name (``"cpu"``, ``"torch:cuda"``, ``"cpu:2"``).

    The part after the first ':' goes to the driver class's constructor; an unknown name or
    options the driver does not take raise INVALID_PARAMETER naming ``name``.
    """
    driver_name, _, options = name.partition(":")
    try:
        cls = load_driver_class(driver_name)
    except KeyError:
        raise violation("device.name", name, sorted(driver_targets())) from None
    try:
        return cls(options) if options else cls()
    except TypeError as e:  # the driver takes no (or other) options
        raise violation("device.name", name, f"{driver_name} with options it accepts ({e})") from None


def restricted(inner, **fields):  # type: ignore[no-untyped-def] - documented in drivers/partial.py
    """Any driver (or device name) declaring only part of the op set: see
    :func:`ffaccel.drivers.partial.restricted` and docs/conformance.md ("Partial devices")."""
    from .partial import restricted as narrow

    return narrow(inner, **fields)


__all__ = ["BoundGemm", "Driver", "DriverInfo", "FreshKernel", "ENTRY_POINT_GROUP", "GemmKernel", "driver_targets",
           "load_driver_class", "open_driver", "restricted", "SizeBand"]
