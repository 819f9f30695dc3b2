"""Process-shared futexes on a ring's words: a wake-up that can never block the waker.

A ring client that sleeps in ``FUTEX_WAIT`` on its ring's ``cq_tail`` word is woken by the
server with ``FUTEX_WAKE`` on the same word of its own mapping, from whichever thread
published the completion: no system call on a file the client controls, so nothing the client
does to it can block the server, and no hand-over to a waker thread (a thread hop costs a
wake-up and a GIL hand-off, measured at 35-60 µs a completion on a 2-core VM). The kernel
compares the word before sleeping, so a completion published before the wait starts is
never slept through.

The calls go through libc's ``syscall()`` with ctypes (which releases the GIL for the call).
Where the architecture's system call number is not known here, :data:`AVAILABLE` is False
and the ring client sleeps on its eventfd as before.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

#: ``SYS_futex`` by ``platform.machine()`` (asm-generic numbering for the newer ports).
_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98, "ppc64le": 221,
              "ppc64": 221, "s390x": 238}
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # not FUTEX_PRIVATE_FLAG: the word is shared between processes
_INT_MAX = 0x7FFF_FFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load() -> "tuple[ctypes._CFuncPtr, int] | None":
    nr = _SYS_FUTEX.get(platform.machine().lower())
    if nr is None:
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_long
    fn.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_uint32]
    return fn, nr


_loaded = _load()
_syscall, _NR = _loaded if _loaded is not None else (None, 0)
#: Whether this process can wait on and wake a shared futex.
AVAILABLE = _syscall is not None


def wake(address: int) -> None:
    """Wake every thread (of any process) in ``FUTEX_WAIT`` on the u32 at ``address``; never blocks."""
    if _syscall is not None:
        _syscall(_NR, address, _FUTEX_WAKE, _INT_MAX, None, None, 0)


def wait(address: int, expected: int, timeout_s: float) -> bool:
    """Sleep while the u32 at ``address`` holds ``expected``, at most ``timeout_s``.

    Returns False only when the timeout passed; True when woken, when the word had changed
    already, or on a signal (the caller looks at the word again either way).
    """
    if _syscall is None:
        raise OSError(errno.ENOSYS, "futex is not available here")
    timeout_s = max(0.0, timeout_s)
    ts = _Timespec(int(timeout_s), int((timeout_s % 1.0) * 1e9))
    if _syscall(_NR, address, _FUTEX_WAIT, expected & 0xFFFF_FFFF, ctypes.byref(ts), None, 0) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, os.strerror(err))


__all__ = ["AVAILABLE", "wait", "wake"]
