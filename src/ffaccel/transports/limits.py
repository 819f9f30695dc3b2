"""Every bound on what a client can make the device side hold, as data.

Each limit has a default, a unit in its name, and the rule (and so the error code) that
refuses a request past it. The reference page (docs/spec.md) lists these tables; the
server takes them from ``ffaccel serve`` options.
"""

from __future__ import annotations

import dataclasses
import resource
from dataclasses import dataclass, field


def _limit(default: object, rule: str, doc: str) -> object:
    return field(default=default, metadata={"rule": rule, "doc": doc})


@dataclass(frozen=True)
class SessionLimits:
    """Per-client bounds (one client = one in-process device or one server connection)."""

    max_memory_bytes: int | None = _limit(
        None, "memory.quota", "bytes of buffers (allocated and imported mappings alike) and recorded command "
        "lists a client may hold; None: unlimited (the server defaults to half the device's memory)")
    max_mappings: int = _limit(4096, "memory.mappings", "buffers in one client's handle table (ALLOC and IMPORT)")
    max_command_lists: int = _limit(1024, "cmdlist.limit", "live recorded command lists per client")
    command_list_overhead_bytes: int = _limit(
        4096, "memory.quota", "bytes charged per recorded list on top of its submission's bytes (the bound runs)")
    max_queued_submissions: int = _limit(
        1024, "-", "submissions queued and not yet run, per client; past it the client's socket requests wait "
        "and its ring is not read until some complete (back-pressure, not an error)")
    max_kept_errors: int = _limit(256, "-", "errors kept for ERROR_TEXT (the newest; older ids answer wire.message)")
    max_memo_entries: int = _limit(4096, "-", "entries of each validation and binding memo (least recently used "
                                   "dropped first)")
    slice_units: int = _limit(1 << 26, "-", "multiply-adds (GEMM) or elements (COPY) above which a command may run "
                              "in slices between other clients' work")


def _nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if hard == resource.RLIM_INFINITY else max(soft, hard)


@dataclass(frozen=True)
class ServerLimits:
    """Server-wide bounds of ``ffaccel serve``."""

    max_clients: int = _limit(256, "wire.clients", "connected clients; one more is answered with the error and closed")
    max_buffers: int | None = _limit(
        None, "memory.mappings", "live buffers over all clients (each costs the server one fd); None: what "
        "RLIMIT_NOFILE leaves after 4 fds per client and 64 spare")
    message_stall_s: float = _limit(10.0, "-", "seconds a connection may stay silent in the middle of a message "
                                    "before it is dropped (a request's bytes are read as they arrive, never "
                                    "allocated ahead)")
    slice_target_ms: float = _limit(10.0, "-", "the scheduler's target length of one slice of a large command "
                                    "(another client's small work waits about this long at most)")

    def buffer_budget(self) -> int:
        """The effective ``max_buffers``."""
        if self.max_buffers is not None:
            return self.max_buffers
        return max(64, _nofile() - 4 * self.max_clients - 64)


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (a server holds one fd per buffer)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def limits_from_overrides(items: "list[str] | tuple[str, ...]") -> tuple[SessionLimits, ServerLimits]:
    """Both limit tables with ``NAME=VALUE`` overrides (``ffaccel serve --limit``); ``none`` for None.

    >>> limits_from_overrides(["max_mappings=8", "max_clients=2"])[1].max_clients
    2
    """
    from ..spec import ErrorCode, FFAccelError

    values: dict[type, dict[str, object]] = {SessionLimits: {}, ServerLimits: {}}
    fields = {f.name: (cls, f) for cls in values for f in dataclasses.fields(cls)}
    for item in items:
        name, sep, raw = str(item).partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in fields:
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "limit",
                               f"--limit {item!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        cls, f = fields[name]
        try:
            if raw.strip().lower() == "none" and f.default is None:
                value: object = None
            elif "float" in str(f.type):
                value = float(raw)
            else:
                value = int(raw, 0)
            if value is not None and value < 0:  # type: ignore[operator]
                raise ValueError(raw)
        except ValueError:
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, "limit",
                               f"--limit {item!r}: {name} takes a number >= 0"
                               + (" or none" if f.default is None else "")) from None
        values[cls][name] = value
    return SessionLimits(**values[SessionLimits]), ServerLimits(**values[ServerLimits])  # type: ignore[arg-type]


def limit_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, default, rule, meaning) of each limit of ``cls``, for the reference page."""
    rows = []
    for f in dataclasses.fields(cls):
        rows.append((f.name, repr(f.default), f.metadata["rule"], f.metadata["doc"]))
    return rows


__all__ = ["ServerLimits", "SessionLimits", "limit_rows", "limits_from_overrides", "raise_nofile_limit"]
