"""Layer 4: Device, Buffer, Fence and the device registry."""

from .device import (
    DEFAULT_DEVICE,
    DEFAULT_DEVICE_ENV,
    Buffer,
    CommandList,
    Device,
    Fence,
    default_device,
    device_catalog,
    devices,
    open_device,
    resolve_device,
)

__all__ = [
    "Buffer", "CommandList", "DEFAULT_DEVICE", "DEFAULT_DEVICE_ENV", "Device", "Fence", "default_device", "device_catalog", "devices",
    "open_device", "resolve_device",
]
