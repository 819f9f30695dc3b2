"""One bounded cache policy for every memo table of the client and device side.

Memo tables (validated submissions, prepared kernels, front-end plans, staging buffers) must
never grow without bound: a program that meets endless distinct shapes, or a hostile client,
would otherwise hold memory (and, for staging buffers, a shared server's buffers) for ever.
:class:`LruCache` bounds a table by entry count and, optionally, by bytes, and drops the
least recently used entries first, handing each to an ``on_evict`` callback so that what it
holds (a server buffer) is released at once rather than whenever the garbage collector runs.

Recency. :meth:`LruCache.get` marks an entry most recently used. For the dispatch hot path,
where a memo hit must cost one dict lookup and nothing more (moving a tuple key to the end of
an ordered dict hashes it a second time, which costs more than the lookup), there is
``peek``: a lookup with no bookkeeping, of the young generation only. Entries live in two
generations: when the young one holds ``max_entries // 2`` entries it becomes the old one,
and the previous old one is evicted, except for entries used meanwhile: :meth:`get` moves an
entry it finds in the old generation back to the young one. So an entry used (by ``get``, or
by ``peek`` falling back to ``get``) at least once every ``max_entries // 2`` insertions is
never evicted for count. The byte bound evicts the old generation first, then young entries
least recently used first; the entry just inserted is never evicted, so one entry larger than
``max_bytes`` is kept alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()


class LruCache(Generic[K, V]):
    """A memo bounded by entry count and, optionally, bytes; least recently used entries go first.

    Parameters
    ----------
    max_entries : int
        Most entries kept (>= 1).
    max_bytes : int, optional
        Most bytes kept, counting the ``nbytes`` given to :meth:`put` (None: no byte bound).
    on_evict : callable, optional
        Called as ``on_evict(key, value)`` for every entry dropped by a bound, by :meth:`clear`
        or replaced by :meth:`put` with another value; never while the cache's lock is held,
        so it may block or call back into the cache.

    Notes
    -----
    ``peek`` is the hot-path lookup: one ``dict.get`` on the recently used entries, no
    bookkeeping. It can miss an entry that :meth:`get` finds in the old generation, so use
    ``cache.peek(key) or cache.get(key)`` where values are truthy (``get`` alone elsewhere).
    Thread-safe: ``peek`` takes no lock; ``get`` (to reorder), insertions and evictions take the
    cache's own lock.

    Examples
    --------
    >>> from ffaccel.abi.cache import LruCache
    >>> c = LruCache(max_entries=2)
    >>> c.put("a", 1); c.put("b", 2); c.get("a")
    1
    >>> c.put("c", 3)  # "b" is the least recently used
    >>> sorted(c.keys())
    ['a', 'c']
    """

    __slots__ = ("max_entries", "max_bytes", "on_evict", "peek", "evictions", "_young", "_old", "_sizes",
                 "_bytes", "_lock")

    def __init__(self, max_entries: int, max_bytes: int | None = None,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_entries < 1 or (max_bytes is not None and max_bytes < 0):
            raise ValueError(f"max_entries must be >= 1 and max_bytes >= 0 or None; got {max_entries}, {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.on_evict = on_evict
        #: Entries dropped by a bound so far (for tests and statistics).
        self.evictions = 0
        self._young: OrderedDict[K, V] = OrderedDict()  # least recently used first
        self._old: dict[K, V] = {}  # the young generation's order when it became old
        self._sizes: dict[K, int] = {}  # key -> nbytes, for entries with nbytes > 0
        self._bytes = 0
        self._lock = threading.Lock()
        #: Hot-path lookup of the young generation (its ``get`` itself, no bookkeeping): see the class notes.
        self.peek: Callable[..., V | None] = self._young.get

    # -- lookups ---------------------------------------------------------------------------
    def get(self, key: K, default: V | None = None) -> V | None:
        """The value for ``key`` (marking it used), or ``default``."""
        young = self._young
        value = young.get(key, _MISSING)
        if value is not _MISSING:
            with self._lock:  # reordering under the lock: _insert iterates this dict
                if key in young:  # (evicted by another thread meanwhile: the value is still the answer)
                    young.move_to_end(key)
            return value  # type: ignore[return-value]
        if key not in self._old:
            return default
        with self._lock:
            value = self._old.pop(key, _MISSING)
            if value is _MISSING:  # evicted or promoted meanwhile
                value = self._young.get(key, _MISSING)
                return default if value is _MISSING else value  # type: ignore[return-value]
            evicted = self._insert(key, value)  # type: ignore[arg-type]
        self._drop(evicted)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._young or key in self._old

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def keys(self) -> list[K]:
        """Every key held (old generation first)."""
        with self._lock:
            return list(self._old) + list(self._young)

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    @property
    def nbytes(self) -> int:
        """Bytes held, as given to :meth:`put`."""
        return self._bytes

    # -- updates ---------------------------------------------------------------------------
    def put(self, key: K, value: V, nbytes: int = 0) -> None:
        """Insert or replace ``key``; then drop least recently used entries past either bound."""
        with self._lock:
            replaced = []
            old = self._young.pop(key, _MISSING)
            if old is _MISSING:
                old = self._old.pop(key, _MISSING)
            if old is not _MISSING:
                self._bytes -= self._sizes.pop(key, 0)
                if old is not value:
                    replaced.append((key, old))
            if nbytes > 0:
                self._sizes[key] = nbytes
                self._bytes += nbytes
            evicted = self._insert(key, value)
        self._drop(replaced, counted=False)
        self._drop(evicted)

    def __setitem__(self, key: K, value: V) -> None:
        """``cache[key] = value``: :meth:`put` with no byte count."""
        self.put(key, value)

    def pop(self, key: K, default: V | None = None) -> V | None:
        """Remove ``key`` and return its value (``on_evict`` is not called: the caller owns it)."""
        with self._lock:
            value = self._young.pop(key, _MISSING)
            if value is _MISSING:
                value = self._old.pop(key, _MISSING)
            if value is _MISSING:
                return default
            self._bytes -= self._sizes.pop(key, 0)
            return value  # type: ignore[return-value]

    def clear(self) -> None:
        """Drop every entry (each through ``on_evict``)."""
        with self._lock:
            gone = list(self._old.items()) + list(self._young.items())
            self._old.clear()
            self._young.clear()
            self._sizes.clear()
            self._bytes = 0
        self._drop(gone, counted=False)

    # -- policy ----------------------------------------------------------------------------
    def _insert(self, key: K, value: V) -> list[tuple[K, V]]:
        """Put ``key`` in the young generation and enforce the bounds (lock held); the dropped entries."""
        young, old = self._young, self._old
        dropped: list[tuple[K, V]] = []
        if len(young) >= max(1, self.max_entries // 2):  # a new generation: the old one goes
            dropped.extend(old.items())
            for k in old:
                self._bytes -= self._sizes.pop(k, 0)
            old.clear()
            old.update(young)
            young.clear()
        young[key] = value
        limit = self.max_bytes
        while len(young) + len(old) > self.max_entries or (limit is not None and self._bytes > limit):
            victim = next(iter(old), _MISSING)
            if victim is not _MISSING:
                dropped.append((victim, old.pop(victim)))  # type: ignore[arg-type]
            else:
                victim = next(iter(young))
                if victim == key:  # only the new entry is left: it stays, whatever its size
                    break
                dropped.append((victim, young.pop(victim)))
            self._bytes -= self._sizes.pop(victim, 0)  # type: ignore[arg-type]
        return dropped

    def _drop(self, entries: list[tuple[K, V]], counted: bool = True) -> None:
        if counted:
            self.evictions += len(entries)
        if self.on_evict is not None:
            for k, v in entries:
                self.on_evict(k, v)

    def __repr__(self) -> str:
        return (f"LruCache({len(self)} of {self.max_entries} entries, {self._bytes} of "
                f"{self.max_bytes if self.max_bytes is not None else 'unbounded'} bytes)")


__all__ = ["LruCache"]
