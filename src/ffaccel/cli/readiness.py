"""``ffaccel serve`` says when it is ready: a ready file, and systemd's notification socket.

A server started in the background is not listening the moment its process exists; a program
that connects at once can fail. Two ways to know (the client side can also just wait:
``ffaccel.open(name, wait_s=S)`` or ``FFACCEL_CONNECT_TIMEOUT``, see :mod:`ffaccel.drivers.connect`):

* ``--ready-file PATH``: once the socket listens, the server writes PATH atomically (a temporary
  file in the same folder, then ``rename``), so whoever sees the file sees all of it: one line of
  JSON, ``{"device": "unix:SOCKET", "socket": SOCKET, "pid": PID, "driver": NAME}``. A stale file
  at PATH is removed before the server starts, and the file is removed again when the server
  stops. A script waits for it with a bound, e.g.
  ``timeout 30 sh -c 'until [ -e "$F" ]; do sleep 0.1; done'``.
* ``$NOTIFY_SOCKET`` (set by systemd for ``Type=notify`` services): the server sends
  ``READY=1`` (with ``MAINPID`` and a ``STATUS`` line) once listening and ``STOPPING=1`` when it
  stops, the datagrams ``sd_notify(3)`` sends. Nothing is sent when the variable is unset.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import tempfile

from .errors import CommandError, Exit

log = logging.getLogger("ffaccel.server")

#: The environment variable systemd sets for a ``Type=notify`` service.
NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


def prepare_ready_file(path: str) -> None:
    """Check ``--ready-file PATH`` before the server starts, and remove a stale file there.

    Refused (status 2): a folder that does not exist, or something at PATH that is not a
    regular file (a folder, a socket...), which is never deleted.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(Exit.USAGE, f"--ready-file {path}: the folder {folder} "
                                       f"{'is not a folder' if os.path.lexists(folder) else 'does not exist'}; "
                                       "create it or choose a path in an existing folder")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise CommandError(Exit.USAGE, f"--ready-file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CommandError(Exit.USAGE, f"--ready-file {path}: exists and is not a regular file; refusing to "
                                       "replace it (choose another path)")
    if not _is_ready_file(path):  # someone's own file: never overwritten, never deleted
        raise CommandError(Exit.USAGE, f"--ready-file {path}: exists and is not a ready file an ffaccel server "
                                       "wrote; refusing to replace it (choose another path, or remove it)")
    os.unlink(path)  # a file from an earlier run must not say "ready" before this server listens


#: The keys of the one line of JSON a ready file holds (:func:`write_ready_file`).
READY_KEYS = frozenset({"device", "socket", "pid", "driver"})


def _is_ready_file(path: str) -> bool:
    """Whether ``path`` holds what :func:`write_ready_file` writes (one JSON object of READY_KEYS),
    or nothing (an empty file, as ``touch`` or ``mktemp`` leaves)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4097)
    except OSError:
        return False
    if not raw.strip():
        return True
    try:
        doc = json.loads(raw)
    except ValueError:
        return False
    return isinstance(doc, dict) and set(doc) == READY_KEYS


def write_ready_file(path: str, doc: dict[str, object]) -> os.stat_result:
    """Write ``doc`` as one line of JSON to ``path`` atomically; the written file's stat (for removal)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ffaccel-ready-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc) + "\n")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return os.stat(path)


def remove_ready_file(path: str, written: os.stat_result | None) -> None:
    """Remove the ready file, only if it is still the one this server wrote."""
    if written is None:
        return
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (written.st_dev, written.st_ino):
            os.unlink(path)
    except OSError:
        pass


def notify_service_manager(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET`` as sd_notify does; False when unset.

    A failure to notify is logged, never fatal: the server serves either way.
    """
    target = os.environ.get(NOTIFY_SOCKET_ENV, "")
    if not target:
        return False
    if target.startswith("@"):  # an abstract socket address
        target = "\0" + target[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), target)
    except OSError as e:
        log.warning("could not notify %s=%s: %s", NOTIFY_SOCKET_ENV, os.environ.get(NOTIFY_SOCKET_ENV), e)
        return False
    return True


__all__ = ["NOTIFY_SOCKET_ENV", "notify_service_manager", "prepare_ready_file", "remove_ready_file",
           "write_ready_file"]
