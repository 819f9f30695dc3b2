"""What the server's parts need of a client, as a protocol: the one type they share.

The ring path (:mod:`.rings`) and the engine schedulers (:mod:`.scheduler`) work on behalf of
a client but must not import the module that defines it (:mod:`.core`, which imports them):
they name this protocol instead, and :class:`~.core.Client` satisfies it. The request
handlers (:mod:`.handlers`) name a wider one of their own. The imports of the server package
then point one way (core -> handlers -> rings -> ports; core -> scheduler -> ports), and
nothing but the package itself imports core.
"""

from __future__ import annotations

import threading
from typing import Protocol

from ...spec import Engine, FFAccelError


class ClientPort(Protocol):
    """One connected client, as the rings and the schedulers see it."""

    #: the connection's number (for logs)
    id: int
    #: the client has gone: its queued work is dropped, running work abandoned
    closed: bool
    #: submissions queued on the engines, not yet run
    queued: int
    #: serialises the client's requests (an RLock); the ring poller only ever try-acquires it
    lock: threading.RLock

    def submit_raw(self, raw: bytes | memoryview) -> tuple[Engine, int]:
        """Validate a whole submission, assign its fence value, run or queue it."""

    def replay(self, lid: int, engine_raw: int, waits: tuple[tuple[int, int], ...]) -> tuple[Engine, int]:
        """Replay recorded list ``lid`` on an engine after ``waits``."""

    def keep_error(self, e: FFAccelError) -> int:
        """Keep an error's full text for a later ERROR_TEXT request; its id."""

    def queue_full(self) -> bool:
        """Whether the client has as many submissions queued as it may."""

    def waits_met(self, waits: tuple[tuple[Engine, int], ...]) -> bool:
        """Whether every (engine, value) fence has signalled."""

    def signal(self, engine: Engine, value: int) -> None:
        """Fence ``value`` on ``engine`` completed."""

    def failed(self, engine: Engine, value: int, error: BaseException) -> None:
        """The work of fence ``value`` on ``engine`` raised ``error`` (called before its signal)."""


__all__ = ["ClientPort"]
