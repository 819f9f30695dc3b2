"""Every bound on what a client can make the device side hold, as data.

Each limit has a default, a unit in its name, and the rule (and so the error code) that
refuses a request past it. The reference page (docs/spec.md) lists these tables; the
server takes them from ``ffaccel serve`` options.
"""

from __future__ import annotations

import dataclasses
import math
import resource
from dataclasses import dataclass, field

#: Largest value an integer limit takes: counts and byte sizes are C ``int64`` on every path that uses them.
_I64_MAX = 2**63 - 1
#: Longest duration a limit in seconds takes (a day): the server hands it to ``SO_SNDTIMEO`` and poll(2),
#: which take a ``time_t`` and an ``int`` of milliseconds.
_MAX_S = 86400.0


def _limit(default: object, rule: str, doc: str, low: float, high: float) -> object:
    """A limit's field: its default, the rule that refuses past it, its meaning, and its allowed range.

    ``low`` and ``high`` are the inclusive range a value must lie in (checked at construction, so
    ``ffaccel serve --limit`` refuses a value the server could not run with); a float limit must
    also be finite.
    """
    return field(default=default, metadata={"rule": rule, "doc": doc, "low": low, "high": high})


def _check_ranges(obj: object) -> None:
    """Refuse any field of a limits table outside its range (INVALID_PARAMETER naming the limit)."""
    from ..spec import ErrorCode, FFAccelError

    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not in_range(f, value):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, f.name,
                               f"limit {f.name} = {value!r}; allowed: {allowed_range(f)}")


def in_range(f: "dataclasses.Field[object]", value: object) -> bool:
    """Whether ``value`` is allowed for the limit ``f`` (its type, finiteness and range)."""
    if value is None:
        return f.default is None
    is_float = "float" in str(f.type)
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (is_float or isinstance(value, int))
            and math.isfinite(value) and f.metadata["low"] <= value <= f.metadata["high"])


def allowed_range(f: "dataclasses.Field[object]") -> str:
    """The allowed values of a limit's field, in words (for errors and the reference page)."""
    low, high = f.metadata["low"], f.metadata["high"]
    if "float" in str(f.type):
        kind = f"a finite number in [{low:g}, {high:g}]"
    else:
        kind = f"an integer in [{low}, {high}]"
    return kind + (" or none" if f.default is None else "")


@dataclass(frozen=True)
class SessionLimits:
    """Per-client bounds (one client = one in-process device or one server connection)."""

    max_memory_bytes: int | None = _limit(
        None, "memory.quota", "bytes of buffers (allocated and imported mappings alike) and recorded command "
        "lists a client may hold; None: unlimited (the server defaults to half the device's memory)", 0, _I64_MAX)
    max_mappings: int = _limit(4096, "memory.mappings", "buffers in one client's handle table (ALLOC and IMPORT)",
                               1, 2**31 - 1)
    max_command_lists: int = _limit(1024, "cmdlist.limit", "live recorded command lists per client", 0, 2**31 - 1)
    command_list_overhead_bytes: int = _limit(
        4096, "memory.quota", "bytes charged per recorded list on top of its submission's bytes (the bound runs)",
        0, 2**40)
    max_queued_submissions: int = _limit(
        1024, "-", "submissions queued and not yet run, per client; past it the client's socket requests wait "
        "and its ring is not read until some complete (back-pressure, not an error)", 1, 2**31 - 1)
    max_kept_errors: int = _limit(256, "-", "errors kept for ERROR_TEXT (the newest; older ids answer wire.message)",
                                  1, 2**31 - 1)
    max_memo_entries: int = _limit(4096, "-", "entries of each validation and binding memo (least recently used "
                                   "dropped first)", 1, 2**31 - 1)
    slice_units: int = _limit(1 << 26, "-", "multiply-adds (GEMM) or elements (COPY) above which a command may run "
                              "in slices between other clients' work", 1, _I64_MAX)

    def __post_init__(self) -> None:
        _check_ranges(self)


def _nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if hard == resource.RLIM_INFINITY else max(soft, hard)


@dataclass(frozen=True)
class ServerLimits:
    """Server-wide bounds of ``ffaccel serve``."""

    max_clients: int = _limit(256, "wire.clients", "connected clients; one more is answered with the error and closed",
                              1, 2**20)
    max_buffers: int | None = _limit(
        None, "memory.mappings", "live buffers over all clients (each costs the server one fd); None: what "
        "RLIMIT_NOFILE leaves after 4 fds per client and 64 spare", 1, 2**31 - 1)
    message_stall_s: float = _limit(10.0, "-", "seconds a connection may stay silent in the middle of a message "
                                    "before it is dropped (a request's bytes are read as they arrive, never "
                                    "allocated ahead)", 0.001, _MAX_S)
    slice_target_ms: float = _limit(10.0, "-", "the scheduler's target length of one slice of a large command "
                                    "(another client's small work waits about this long at most)", 0.01, 60_000.0)

    def __post_init__(self) -> None:
        _check_ranges(self)

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
        except ValueError:
            value = raw  # not a number: refused below, like one out of range
        if not in_range(f, value):
            raise FFAccelError(ErrorCode.INVALID_PARAMETER, name,
                               f"--limit {item}: {name} takes {allowed_range(f)}")
        values[cls][name] = value
    return SessionLimits(**values[SessionLimits]), ServerLimits(**values[ServerLimits])  # type: ignore[arg-type]


def limit_rows(cls: type) -> list[tuple[str, str, str, str, str]]:
    """(name, default, allowed values, rule, meaning) of each limit of ``cls``, for the reference page."""
    rows = []
    for f in dataclasses.fields(cls):
        rows.append((f.name, repr(f.default), allowed_range(f), f.metadata["rule"], f.metadata["doc"]))
    return rows


__all__ = ["ServerLimits", "SessionLimits", "allowed_range", "limit_rows", "limits_from_overrides", "raise_nofile_limit"]
