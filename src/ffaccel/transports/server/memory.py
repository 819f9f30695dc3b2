"""Buffers as sealed memfds, and the server-wide registry that IMPORT looks them up in.

Each buffer costs the server exactly one file descriptor: the one its mapping keeps. The
memfd the server created is sent to the client with the ALLOC reply and closed right after.
A mapping lives as long as anything references it (a client's table, a bound run, queued
work), so work in flight never touches memory that was unmapped under it.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading

import numpy as np

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def sealed_memfd(name: str, size_bytes: int) -> int:
    """A memfd of exactly ``size_bytes``, sealed so that nobody (client included) can resize it.

    The seals are why a client truncating its memfd cannot hurt the server: ftruncate fails
    with EPERM instead of turning the server's mapping into a SIGBUS.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size_bytes)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


class SharedMem:
    """One buffer: a sealed memfd mapped in the server (and by every client holding it)."""

    def __init__(self, size_bytes: int) -> None:
        fd = sealed_memfd("ffaccel-buffer", size_bytes)
        try:
            self.mm = mmap.mmap(fd, size_bytes)  # keeps its own fd: the buffer's one fd in the server
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd_lock = threading.Lock()
        self._fd = fd  # only until the ALLOC reply has carried it to the client
        self.key = (st.st_dev, st.st_ino)
        self.size = size_bytes
        self.array = np.frombuffer(self.mm, np.uint8)
        self.refs = 0  # handles naming it, over all clients

    def take_fd(self) -> int:
        """The memfd to send with the ALLOC reply; call :meth:`drop_fd` once it is sent."""
        return self._fd

    def drop_fd(self) -> None:
        """Close the creation fd exactly once (its number may be reused at once by anyone)."""
        with self._fd_lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class BufferRegistry:
    """Every live buffer of the server, by (st_dev, st_ino), with the server-wide count bound."""

    def __init__(self, max_buffers: int) -> None:
        self.max_buffers = max_buffers
        self._by_key: dict[tuple[int, int], SharedMem] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._by_key)

    def has_room(self) -> bool:
        return len(self._by_key) < self.max_buffers

    def add(self, mem: SharedMem) -> None:
        with self.lock:
            mem.refs += 1
            self._by_key[mem.key] = mem

    def ref(self, key: tuple[int, int] | None) -> SharedMem | None:
        """A reference to the live buffer with this key (for IMPORT), or None."""
        if key is None:
            return None
        with self.lock:
            mem = self._by_key.get(key)
            if mem is not None:
                mem.refs += 1
            return mem

    def unref(self, mem: SharedMem) -> None:
        with self.lock:
            mem.refs -= 1
            gone = mem.refs <= 0
            if gone:
                self._by_key.pop(mem.key, None)
        if gone:
            mem.drop_fd()  # the mapping goes with the last view of it (queued work may hold one)


__all__ = ["BufferRegistry", "SharedMem", "sealed_memfd"]
