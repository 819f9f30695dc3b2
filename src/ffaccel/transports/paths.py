"""Where the device server's socket lives, and the checks both sides make before trusting it.

The default socket is ``$FFACCEL_SOCKET``, else ``$XDG_RUNTIME_DIR/ffaccel/server.sock``, else
``/tmp/ffaccel-<uid>/server.sock``. Its directory is private: the server creates it mode 0700
and both sides refuse it unless it is a real directory (not a link) owned by the user with no
group or other permission bits, so another local user can neither squat the path nor swap the
socket. Over any path, a client also checks the peer's credentials (``SO_PEERCRED``): the
server must run as the client's own user, or root.
"""

from __future__ import annotations

import os
import socket
import stat
import struct

from ..spec import ErrorCode, FFAccelError

SOCKET_NAME = "server.sock"
_UCRED = struct.Struct("3i")  # pid, uid, gid


def default_socket_dir() -> str:
    """``$XDG_RUNTIME_DIR/ffaccel``, else ``/tmp/ffaccel-<uid>``."""
    run = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(run, "ffaccel") if run else f"/tmp/ffaccel-{os.getuid()}"


def default_socket_path() -> str:
    """``$FFACCEL_SOCKET``, else the private directory's ``server.sock``."""
    env = os.environ.get("FFACCEL_SOCKET")
    return env if env else os.path.join(default_socket_dir(), SOCKET_NAME)


def _lost(why: str) -> FFAccelError:
    return FFAccelError(ErrorCode.DEVICE_LOST, "device", why)


def check_private_dir(path: str) -> None:
    """Refuse a directory another user could have made or can write (DEVICE_LOST, saying why)."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _lost(f"cannot use socket directory {path!r}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise _lost(f"socket directory {path!r} is not a directory (a link or a file); refusing it")
    if st.st_uid != os.getuid():
        raise _lost(f"socket directory {path!r} belongs to uid {st.st_uid}, not to this user "
                    f"(uid {os.getuid()}); refusing it")
    if st.st_mode & 0o077:
        raise _lost(f"socket directory {path!r} has mode {stat.S_IMODE(st.st_mode):o}; it must be private "
                    "(0700, no group or other bits)")


def make_private_dir(path: str) -> None:
    """Create ``path`` mode 0700 if missing, then check it like a client would."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise _lost(f"cannot create socket directory {path!r}: {e.strerror}") from None
    check_private_dir(path)


def is_default_path(path: str) -> bool:
    return os.path.abspath(path) == os.path.abspath(os.path.join(default_socket_dir(), SOCKET_NAME))


def check_peer(sock: socket.socket, path: str) -> None:
    """Refuse a server that runs as another user than ours (root excepted)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as e:
        raise _lost(f"cannot read the credentials of the server at {path!r}: {e.strerror}") from None
    _pid, uid, _gid = _UCRED.unpack(raw)
    if uid not in (os.getuid(), 0):
        raise _lost(f"the server at {path!r} runs as uid {uid}, not as this user (uid {os.getuid()}) or root; "
                    "refusing to talk to it")


def peer_pid_uid(sock: socket.socket) -> tuple[int, int]:
    """The connected peer's (pid, uid) from ``SO_PEERCRED``; (0, 0) when it cannot be read."""
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return (0, 0)
    return (pid, uid)


def prepare_listen_path(path: str) -> None:
    """Make ``path`` ready to bind: its private directory (default path), a stale socket removed.

    Only a socket nobody listens on is removed; anything else at the path (a file, a directory,
    a live server) is refused with one line saying why, never deleted.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if is_default_path(path):
        make_private_dir(folder)
    elif not os.path.isdir(folder):
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket",
                           f"cannot listen on {path!r}: the directory {folder!r} does not exist")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket", f"cannot use {path!r}: {e.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket",
                           f"{path!r} exists and is not a socket; refusing to replace it (choose another path)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        if st.st_uid != os.getuid():
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket",
                               f"{path!r} is a stale socket of uid {st.st_uid}; refusing to remove it") from None
        os.unlink(path)  # stale: nobody listens
    else:
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, "socket", f"a server is already listening on {path!r}")
    finally:
        probe.close()


__all__ = ["check_peer", "check_private_dir", "default_socket_dir", "default_socket_path", "is_default_path",
           "make_private_dir", "peer_pid_uid", "prepare_listen_path"]
