"""ffaccel: a fixed-function accelerator interface.

A closed, fully documented set of GEMM-family operations (spec v1) that any
driver can implement, behind one validated binary ABI, with front-ends that
existing NumPy and BLAS code already speaks.

Examples
--------
>>> import numpy as np, ffaccel
>>> a = np.ones((2, 3), np.float32)
>>> ffaccel.matmul(a, a.T)
array([[3., 3.],
       [3., 3.]], dtype=float32)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from . import blas, post  # real modules: `import ffaccel.post`, `from ffaccel.blas import gemm`
from .frontends import matmul
from .runtime import Buffer, Device, Fence, device_catalog, devices
from .runtime import open_device as open  # noqa: A001 - the public name the contract asks for
from .spec import SPEC_VERSION, ErrorCode, FFAccelError

try:
    __version__ = version("ffaccel")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Buffer", "Device", "ErrorCode", "FFAccelError", "Fence", "SPEC_VERSION", "__version__", "blas", "device_catalog", "devices",
    "matmul", "open", "post",
]


def __getattr__(name: str) -> object:
    # ``ffaccel.torch`` imports PyTorch: load it on first use only, never on ``import ffaccel``.
    if name == "torch":
        import importlib

        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'ffaccel' has no attribute {name!r}")
