"""Bounded caches (issue 11, item 4): one LRU policy for every memo table, and a client that
meets endless GEMM shapes holds a bounded number of a shared server's buffers.

The server scenario is the issue's (``ffaccel.matmul`` over many distinct shapes from several
clients), shortened: a server whose per-client buffer limit is below the number of shapes a
client uses, so a client that kept a staging buffer per shape would be refused
(OUT_OF_MEMORY) before the end; the server's STATS show the buffers it holds.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import LruCache, ValidationCache, encode_submission
from ffaccel.abi.validate import check_submission
from ffaccel.conformance.errors import Env, ValidGemm
from ffaccel.transports import socket as socket_transport

from server_util import ServerProcess  # tests/ is on pytest's pythonpath (pyproject.toml)

# -- the policy -----------------------------------------------------------------------------------


def test_least_recently_used_goes_first() -> None:
    c: LruCache[str, int] = LruCache(4)
    for i, k in enumerate("abcd"):
        c.put(k, i)
    assert c.get("a") == 0  # a is now the most recently used
    c.put("e", 4)
    c.put("f", 5)
    assert "a" in c and len(c) <= 4
    assert "b" not in c  # b and c were used least recently
    assert c.evictions == len("abcdef") - len(c)


def test_a_used_entry_survives_any_number_of_insertions() -> None:
    """The guarantee: an entry used within the last max_entries // 2 insertions is never evicted."""
    c: LruCache[int, int] = LruCache(8)
    c.put(-1, -1)
    for i in range(1000):
        c.put(i, i)
        if i % 3 == 0:  # used every 3 insertions (< 8 // 2)
            assert c.get(-1) == -1, i
    assert len(c) <= 8


def test_count_bound_holds_for_every_size() -> None:
    for n in (1, 2, 3, 7, 64):
        c: LruCache[int, int] = LruCache(n)
        for i in range(10 * n):
            c.put(i, i)
            assert len(c) <= n
        assert (10 * n - 1) in c  # the newest stays


def test_byte_bound_and_on_evict() -> None:
    gone: list[tuple[str, int]] = []
    c: LruCache[str, int] = LruCache(100, max_bytes=100, on_evict=lambda k, v: gone.append((k, v)))
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    c.get("a")
    c.put("c", 3, 40)  # 120 > 100: the least recently used (b) goes, through on_evict
    assert gone == [("b", 2)] and c.nbytes == 80 and set(c.keys()) == {"a", "c"}
    c.put("huge", 4, 1000)  # larger than the bound: kept alone
    assert set(c.keys()) == {"huge"} and c.nbytes == 1000
    assert {k for k, _ in gone} == {"a", "b", "c"}
    c.put("huge", 5, 10)  # replaced: the old value is handed back too
    assert gone[-1] == ("huge", 4) and c.nbytes == 10
    assert c.pop("huge") == 5 and c.nbytes == 0 and len(c) == 0
    c.put("x", 6, 5)
    c.clear()
    assert gone[-1] == ("x", 6) and c.nbytes == 0 and len(c) == 0


def test_peek_sees_recent_entries_and_get_sees_all() -> None:
    c: LruCache[int, str] = LruCache(4)
    c.put(1, "one")
    assert c.peek(1) == "one"
    for i in range(2, 5):
        c.put(i, str(i))
    # 1 is in the old generation now: peek (one dict lookup) may miss it, get finds and promotes it
    assert c.get(1) == "one" and c.peek(1) == "one"
    assert c.get(99) is None and c.get(99, "default") == "default"


@dataclasses.dataclass(frozen=True)
class _Key:  # hashed and compared in Python, as GemmOp keys are: the GIL can switch inside a lookup
    k: int


def test_threads_keep_the_bounds() -> None:
    c: LruCache[_Key, int] = LruCache(16, max_bytes=64)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(3000):
                k = _Key(int(rng.integers(0, 64)))
                if (c.peek(k) or c.get(k)) is None:
                    c.put(k, k.k + 1, int(rng.integers(1, 8)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(c) <= 16 and c.nbytes <= 64 + 8
    assert c.nbytes == sum(c._sizes.values())


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        LruCache(0)
    with pytest.raises(ValueError):
        LruCache(4, max_bytes=-1)


# -- the memo tables use it -------------------------------------------------------------------------


def test_validation_cache_is_bounded() -> None:
    """Distinct submissions past the bound: the memo stays within it and hits are still exact."""
    with Env(lambda: ffaccel.open("ref")) as env:
        s = ValidGemm(env)
        sizes = {buf.handle: buf.size_bytes for buf in env.bufs}
        cache = ValidationCache(max_entries=8)
        first = None
        for i in range(100):
            raw = encode_submission([s.gemm(user_data=i)])
            sub = check_submission(raw, env.dev.info().caps, sizes.get, lambda e: 0, cache)
            first = first or (raw, sub)
            assert len(cache._subs) <= 8 and len(cache._entries) <= 8
        raw, sub = first
        assert check_submission(raw, env.dev.info().caps, sizes.get, lambda e: 0, cache) == sub


def test_device_kernel_and_plan_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffaccel.Device, "MAX_KERNELS", 8)
    monkeypatch.setattr(ffaccel.Device, "MAX_FRONTEND_PLANS", 8)
    dev = ffaccel.open("cpu")
    try:
        for n in range(1, 40):
            a = np.ones((2, n), np.float32)
            np.testing.assert_array_equal(ffaccel.matmul(a, a.T, device=dev), a @ a.T)
            assert len(dev._kernels) <= 8 and len(dev.frontend_plans) <= 8
        assert dev._kernels.evictions > 0 and dev.frontend_plans.evictions > 0
    finally:
        dev.close()


# -- the scenario, shortened ------------------------------------------------------------------

MAPPINGS = 48  # per-client buffer limit of this module's server
SHAPES = 150  # distinct shapes per client: more than MAPPINGS
CLIENTS = 3


@pytest.fixture(scope="module")
def server_args() -> tuple[str, ...]:
    return ("--limit", f"max_mappings={MAPPINGS}")


def _many_shapes(dev: ffaccel.Device, seed: int, peak: list[int]) -> None:
    rng = np.random.default_rng(seed)
    pool = socket_transport.staging_pool(dev._transport)
    for i in range(SHAPES):
        m, k, n = 1 + i % 7, 1 + i, 1 + (seed + i) % 5
        a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
        np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-5, atol=1e-5)
        peak[0] = max(peak[0], len(pool))
        assert len(pool) <= pool.max_entries and pool.nbytes <= max(pool.max_bytes or 0, 1 << 20)


@pytest.mark.parametrize("path", ["socket", "ring"])
def test_many_shapes_from_several_clients_keep_server_buffers_bounded(server, path: str) -> None:
    """Each client meets SHAPES > MAPPINGS geometries; none is refused and the server's buffers stay bounded."""
    assert socket_transport.STAGING_MAX_ENTRIES < MAPPINGS  # else this test could not fail
    devs = [server.open(path) for _ in range(CLIENTS)]
    probe = server.open("socket")
    try:
        base = probe._transport.stats()["buffers"]
        peaks = [[0] for _ in devs]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                _many_shapes(devs[i], i, peaks[i])
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        held = probe._transport.stats()["buffers"] - base
        assert held <= CLIENTS * socket_transport.STAGING_MAX_ENTRIES, held
        assert all(p[0] == socket_transport.STAGING_MAX_ENTRIES for p in peaks), peaks  # the bound was reached
        for dev in devs:  # what the client holds is what the server holds for it
            assert len(socket_transport.staging_pool(dev._transport)) <= socket_transport.STAGING_MAX_ENTRIES
    finally:
        for dev in devs:
            dev.close()
        probe.close()


def _own_buffers(t: socket_transport.SocketTransport) -> int:
    """The server's buffers of this client alone (the server-wide count also moves while an
    earlier test's clients are still being cleaned up after they hung up)."""
    u = t.usage()
    return next(r["buffers"] for r in u["clients"] if r["id"] == u["client_id"])


def test_an_evicted_buffer_in_use_is_freed_when_its_call_ends(server) -> None:
    """Eviction while a call of that geometry is running: the call finishes, then the buffer goes."""
    dev = server.open("socket")
    try:
        t = dev._transport
        pool = socket_transport.staging_pool(t)
        a = np.ones((3, 4), np.float32)
        ffaccel.matmul(a, a.T, device=dev)
        (owner,) = pool.keys()
        before = _own_buffers(t)
        owner.busy = True  # as if a call were between staging and copying out
        pool.clear()  # evicts it
        assert owner.evicted and owner.staging is not None and _own_buffers(t) == before
        owner.busy = False
        np.testing.assert_array_equal(ffaccel.matmul(a, a.T, device=dev), a @ a.T)  # frees the old at its end
        assert owner.staging is None and not owner.evicted
        assert _own_buffers(t) == before - 1
        np.testing.assert_array_equal(ffaccel.matmul(a, a.T, device=dev), a @ a.T)  # a new buffer
        assert owner.staging is not None and _own_buffers(t) == before
    finally:
        dev.close()


@pytest.mark.parametrize("limit", ["max_mappings=4", f"max_memory_bytes={1 << 20}"])
def test_idle_staging_buffers_never_cause_a_refusal(tmp_path, limit: str) -> None:
    """A client at its buffer or memory limit frees its idle staging buffers and allocates again."""
    srv = ServerProcess(tmp_path, "--limit", limit)
    try:
        dev = srv.open("socket")
        pool = socket_transport.staging_pool(dev._transport)
        rng = np.random.default_rng(5)
        for i in range(12):  # each geometry stages ~260 KB: the pool alone would pass either limit
            a = rng.standard_normal((128, 200 + i)).astype(np.float32)
            b = rng.standard_normal((200 + i, 128)).astype(np.float32)
            np.testing.assert_allclose(ffaccel.matmul(a, b, device=dev), a @ b, rtol=1e-4, atol=1e-4)
        assert len(pool) < 12  # cleared at the limit (clear() is not counted as evictions)
        dev.close()
    finally:
        srv.stop()
