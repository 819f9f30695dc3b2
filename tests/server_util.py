"""Helpers for the server tests: an ``ffaccel serve`` subprocess, and waiting for an event (never hangs).

Importable from test modules because pyproject.toml puts ``tests/`` on pytest's ``pythonpath``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import ffaccel

T = TypeVar("T")


def wait_until(probe: Callable[[], T], done: Callable[[T], bool], timeout_s: float, what: str,
               poll_s: float = 0.005) -> T:
    """Call ``probe`` until ``done(value)`` holds; return that value.

    The deadline bounds a wait for an event (a server noticing a hang-up, say); it is not a
    duration being tested: past it the test fails, naming ``what`` and the last value seen.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s; last seen {value!r}")
        time.sleep(poll_s)

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServerProcess:
    """``python -m ffaccel.cli serve`` on a socket in a temporary folder."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.path = str(folder / "ffaccel.sock")
        self.log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", self.path, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if os.path.exists(self.path):
                try:
                    ffaccel.open(self.name("socket") + "&timeout_s=5").close()
                    break
                except ffaccel.FFAccelError:
                    pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start: {Path(self.log.name).read_text()}")
            time.sleep(0.05)

    def name(self, transport: str = "socket") -> str:
        return f"unix:{self.path}?transport={transport}"

    def open(self, transport: str = "socket", timeout_s: float = 20.0) -> ffaccel.Device:
        return ffaccel.open(f"{self.name(transport)}&timeout_s={timeout_s}")

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.log.close()
        return self.proc.returncode

    def submissions(self) -> int:
        """Submissions the server accepted since it started (its STATS counter)."""
        with self.open() as dev:
            return dev._transport.stats()["submissions"]

    def log_text(self) -> str:
        return Path(self.log.name).read_text()
