"""Exit statuses and one-line errors for the ``ffaccel`` command.

Every failure ends the command with one line on stderr that says what is wrong (and, where
there is one, what to do) and a status from :class:`Exit`; ``--debug`` (or
``FFACCEL_DEBUG=1``) adds the traceback. The table is documented in docs/cli.md
("Exit status") and is part of the command's interface: scripts test these numbers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from enum import IntEnum

from ..spec import ErrorCode, FFAccelError


class Exit(IntEnum):
    """The exit statuses of every ``ffaccel`` command."""

    OK = 0
    #: a device failed conformance cases (``conformance``, ``report``)
    FAILED = 1
    #: bad usage or input: an unknown option, device or driver name, an invalid argument, an
    #: output or socket path that cannot be used (argparse's own status for usage errors)
    USAGE = 2
    #: device error: the device or its server is lost, timed out or out of memory, or the device
    #: refused an operation it does not declare (UNSUPPORTED: the device's limit, not the user's mistake)
    DEVICE = 3
    #: a bug in ffaccel: an exception nobody expected (``--debug`` shows where)
    INTERNAL = 4
    #: interrupted (Ctrl-C, SIGINT: 128 + 2); what the run made is removed
    INTERRUPTED = 130
    #: terminated (SIGTERM: 128 + 15); what the run made is removed, as for Ctrl-C
    TERMINATED = 143


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that a run unwinds (and cleans up) as on Ctrl-C."""


#: One line per status, for ``ffaccel --help`` and docs/cli.md.
EXIT_MEANINGS: dict[Exit, str] = {
    Exit.OK: "success (also when the reader of the output goes away: `ffaccel info | head -1`)",
    Exit.FAILED: "conformance failed: a device failed at least one case",
    Exit.USAGE: "bad usage or input: option, device or driver name, argument value, unusable path",
    Exit.DEVICE: "device error: device or server lost or not answering, timeout, out of memory, or the device "
                 "refused an operation it does not declare (UNSUPPORTED)",
    Exit.INTERNAL: "internal error (a bug in ffaccel; rerun with --debug and report the traceback)",
    Exit.INTERRUPTED: "interrupted (Ctrl-C); what the run made is removed",
    Exit.TERMINATED: "terminated (SIGTERM); what the run made is removed",
}

#: FFAccelError codes that say the device (not the request) is in trouble, or cannot do what was
#: asked: a partial device refusing a dtype or post-op it does not declare is not a usage error.
_DEVICE_CODES = frozenset({ErrorCode.DEVICE_LOST, ErrorCode.TIMEOUT, ErrorCode.OUT_OF_MEMORY,
                           ErrorCode.ABI_VERSION_MISMATCH, ErrorCode.UNSUPPORTED})
#: OSErrors about a path the user gave (bad input), as opposed to a resource in use.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
#: errno values of an OSError that also say the path itself is unusable (they have no subclass).
_PATH_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ELOOP, errno.EROFS})


def nonempty(value: str) -> str:
    """An argparse ``type`` for a path or command: an empty value is refused at parse time.

    ``--out "$DIR"`` with DIR unset must not mean the current folder (Path("") is "."), and
    ``--socket ""`` must not quietly mean the default socket.
    """
    if not value.strip():
        import argparse

        raise argparse.ArgumentTypeError("an empty value; give a path or a name")
    return value


class CommandError(Exception):
    """An error the command line reports as one line with a given exit status.

    Parameters
    ----------
    status : Exit
        The exit status (see :class:`Exit`).
    message : str
        What is wrong and what to do, on one line.
    """

    def __init__(self, status: Exit, message: str) -> None:
        super().__init__(message)
        self.status = Exit(status)
        self.message = message


def status_of(exc: BaseException) -> Exit:
    """The exit status for an exception that ended a command."""
    if isinstance(exc, CommandError):
        return exc.status
    if isinstance(exc, FFAccelError):
        return Exit.DEVICE if exc.code in _DEVICE_CODES else Exit.USAGE
    if isinstance(exc, KeyboardInterrupt):
        return Exit.INTERRUPTED
    if isinstance(exc, Terminated):
        return Exit.TERMINATED
    if isinstance(exc, _PATH_ERRORS) or (isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS):
        return Exit.USAGE
    if isinstance(exc, OSError):
        return Exit.DEVICE
    return Exit.INTERNAL


def one_line(exc: BaseException) -> str:
    """The message for ``exc`` on a single line (newlines and runs of spaces folded)."""
    if isinstance(exc, CommandError):
        text = exc.message
    elif isinstance(exc, FFAccelError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    elif isinstance(exc, OSError):
        text = str(exc) or type(exc).__name__
    else:
        text = (f"internal error, a bug in ffaccel: {type(exc).__name__}: {exc} "
                "(rerun with --debug and report the traceback)")
    return " ".join(text.split())


def debug_enabled(flag: bool) -> bool:
    """``--debug`` given, or ``FFACCEL_DEBUG`` set to something other than empty or 0."""
    return flag or os.environ.get("FFACCEL_DEBUG", "") not in ("", "0")


def report_error(exc: BaseException, *, debug: bool, prog: str = "ffaccel") -> Exit:
    """Print ``exc`` as one line on stderr (after its traceback with ``debug``); its exit status."""
    signalled = {KeyboardInterrupt: "interrupted", Terminated: "terminated"}.get(type(exc))
    if debug and signalled is None:
        traceback.print_exception(exc, file=sys.stderr)
    try:
        sys.stderr.write(f"{prog}: error: {one_line(exc)}\n" if signalled is None else f"{prog}: {signalled}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr itself is gone: the status still says it
        pass
    return status_of(exc)


def stdout_gone() -> Exit:
    """The reader of stdout went away (``ffaccel info | head -1``): not an error.

    Python's own advice: point stdout at /dev/null so the interpreter's final flush
    does not raise again, and exit quietly.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)
    return Exit.OK


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (cleanup runs).

    Python's default for SIGTERM ends the process at once: a report's device server and
    temporary folder would outlive it. Outside the main thread nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
