"""The device server: one process owns the driver and serves many clients on a Unix socket.

Files, by what they hold:

* :mod:`.core`: the server, accepting connections, per-client state (a
  :class:`~ffaccel.transports.session.Session` each) and the request loop;
* :mod:`.handlers`: every request as a row of one table (payload size, fds, handler);
* :mod:`.framing`: cutting a connection's bytes into requests, bounded and with a stall timeout;
* :mod:`.rings`: the ring path (SQ/CQ in shared memory), its poller and its waker;
* :mod:`.scheduler`: one scheduler per engine, fair between clients, large work in slices;
* :mod:`.memory`: buffers as sealed memfds and the registry IMPORT looks them up in.

Every request and every ring entry passes the one abi validator before the driver sees
it; every limit is in :mod:`ffaccel.transports.limits`.
"""

from ..paths import default_socket_path
from .core import DEFAULT_SOCKET_POLL_US, Client, Server, serve
from .memory import SharedMem, sealed_memfd
from .rings import Ring, RingPoller

__all__ = ["DEFAULT_SOCKET_POLL_US", "Client", "Ring", "RingPoller", "Server", "SharedMem", "default_socket_path",
           "sealed_memfd", "serve"]
