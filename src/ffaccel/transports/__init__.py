"""Layer 3: how ABI bytes reach a driver: in-process (the embedded default), and later socket and ring."""

from .inproc import InprocTransport

__all__ = ["InprocTransport"]
