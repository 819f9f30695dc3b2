"""Layer 3: how ABI bytes reach a driver.

* ``inproc``: the embedded default, the driver in the caller's process;
* ``socket``: one request and reply per call to an ``ffaccel serve`` process (the ioctl model);
* ``ring``: submission/completion rings in shared memory to the same server (the io_uring model);
* ``server``: that server; ``protocol``: its wire and ring layouts.
"""

from .inproc import InprocTransport

__all__ = ["InprocTransport"]
