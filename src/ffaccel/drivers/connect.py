"""How long a client waits for a device that is not there yet, and the bounded retry that waits.

A device server started in the background (``ffaccel serve ... &``) needs a moment before its
socket listens; a program started right after it would fail at once with DEVICE_LOST. A client
can instead wait for the device for a bounded time: ``wait_s`` in the device name
(``unix:PATH?wait_s=10``, ``dask://HOST:PORT?wait_s=10``), the ``wait_s=`` keyword of
:func:`ffaccel.open`, or the environment variable ``FFACCEL_CONNECT_TIMEOUT`` (seconds) for every
open that gives none. The default is 0: an absent device fails at once, as before.

While waiting, only "not there yet" is retried: the socket file or its folder does not exist
(``ENOENT``), nobody listens yet (``ECONNREFUSED``), or the listen backlog is full (``EAGAIN``).
Anything else (a socket owned by another user, a reply that breaks the protocol) fails at once.
The wait is deadline-based (CLOCK_MONOTONIC) with a doubling pause of 1 to 50 ms, so it ends
within about 50 ms of its bound however the machine is loaded.

This lives with the drivers because a driver may connect too (the dask driver to its scheduler);
the socket transports above use the same rules.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import TypeVar

from ..spec import ErrorCode, FFAccelError

#: The environment variable that sets the default wait, in seconds (0 or unset: do not wait).
CONNECT_TIMEOUT_ENV = "FFACCEL_CONNECT_TIMEOUT"
#: Longest wait accepted, in seconds (a day): a typo must not park a program for years.
MAX_WAIT_S = 86_400.0
#: First and longest pause between two attempts, in seconds.
FIRST_PAUSE_S = 0.001
MAX_PAUSE_S = 0.05
#: The OSErrors that mean "the device is not there yet" (retried while waiting).
NOT_YET = (FileNotFoundError, ConnectionRefusedError, BlockingIOError)

T = TypeVar("T")


def check_wait_s(value: object, param: str) -> float:
    """``value`` as a wait in seconds: a finite number in [0, MAX_WAIT_S] (INVALID_PARAMETER otherwise)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 <= seconds <= MAX_WAIT_S:  # NaN fails both comparisons
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, param,
                           f"a wait for the device in seconds; got {value!r}, allowed a number in [0, {MAX_WAIT_S:g}]",
                           rule="device.name")
    return seconds


def connect_wait_s(explicit: object = None) -> float:
    """The wait to use: ``explicit`` when given, else ``$FFACCEL_CONNECT_TIMEOUT``, else 0."""
    if explicit is not None:
        return check_wait_s(explicit, "wait_s")
    env = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    return check_wait_s(env, CONNECT_TIMEOUT_ENV) if env else 0.0


def retry_until_ready(attempt: Callable[[], T], wait_s: float,
                      retryable: tuple[type[BaseException], ...] = NOT_YET) -> T:
    """``attempt()``, retried while it raises ``retryable`` and ``wait_s`` seconds have not passed.

    The last error is raised as it is once the deadline has passed (the caller says what it
    means); with ``wait_s`` 0 there is exactly one attempt.
    """
    deadline = time.monotonic() + wait_s
    pause = FIRST_PAUSE_S
    while True:
        try:
            return attempt()
        except retryable:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE_S)


__all__ = ["CONNECT_TIMEOUT_ENV", "MAX_WAIT_S", "NOT_YET", "check_wait_s", "connect_wait_s", "retry_until_ready"]
