"""The single-defect cases of the ``memory, fence and device`` rules: memory (sizes, quotas, handles),
fences (timeouts, foreign fences) and device names.

See :mod:`ffaccel.conformance.errors` for how a case is built and judged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...runtime import Buffer, Fence
from ...spec import Engine
from .harness import FENCE_WAIT_NS, Builder, Catalogue, Env, ValidGemm


def _alloc(size: Any, good: int, limits: dict[str, int] | None = None) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        dev = env.open_limits(**limits) if limits else env.dev
        return lambda: env.alloc(size if bad else good, dev)
    return build


def _quota(env: Env, bad: bool) -> Callable[[], Any]:
    dev = env.open_caps(quota=256)
    env.alloc(200, dev)
    return lambda: env.alloc(57 if bad else 56, dev)


def _quota_after_free(env: Env, bad: bool) -> Callable[[], Any]:
    # freeing returns the bytes to the quota; without the free the same request is over it
    dev = env.open_caps(quota=256)
    x = env.alloc(200, dev)
    if not bad:
        x.free()
    return lambda: env.alloc(100, dev)


def _free_twice(env: Env, bad: bool) -> Callable[[], Any]:
    x = env.alloc(16)
    if bad:
        x.free()
    return x.free


def _free_other_client(env: Env, bad: bool) -> Callable[[], Any]:
    # a Buffer object naming a handle of another client (2), which this client (1 buffer) lacks
    other = env.open_other()
    env.alloc(16, other)
    theirs = env.alloc(16, other)
    own = env.alloc(16)
    if bad:
        return lambda: Buffer(env.dev, theirs.handle, np.zeros(16, np.uint8)).free()
    return own.free


def _wait_fence(how: str) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        s = ValidGemm(env)
        value = s.dev.submit([s.gemm()]).value
        # An asynchronous device may still be running the GEMM: the short waits below are sure to
        # pass for the defect-free twin only once its fence has signalled.
        Fence(env.dev, Engine.COMPUTE, value).wait(timeout_ns=10**10)
        fence = Fence(env.dev, Engine.COMPUTE, value + 3 if bad else value)
        if how == "fence":
            return lambda: fence.wait(timeout_ns=1_000_000)
        return lambda: env.dev.wait(fence, timeout_ns=0)
    return build


def _wait_on_foreign_fence(env: Env, bad: bool) -> Callable[[], Any]:
    # A fence of another device (another client) cannot be waited on through this one.
    other = env.open_other()
    fence = (other if bad else env.dev).submit([])
    # the defect-free twin's fence may still be queued (a device with queued engines, a busy
    # machine): a deadline as long as the harness's own, not 1 ms, so it cannot time out by chance
    return lambda: env.dev.wait(fence, timeout_ns=FENCE_WAIT_NS)


def _open(name: Any) -> Builder:
    def build(env: Env, bad: bool) -> Callable[[], Any]:
        return env.opener(name if bad else "ref")
    return build


def register(cat: Catalogue) -> None:
    """Add the ``memory, fence and device`` cases to ``cat``."""
    for size, seen in ((0, "got 0"), (-1, "got -1"), (2.0, "got 2.0"), ("8", "got 8"), (2**48 + 1, f"got {2**48 + 1}")):
        cat.case("memory.size", "size_bytes", seen, f"size-{size!r}", _alloc(size, 8))
    cat.case("memory.size", "size_bytes", "got 4097", "size-over-device-max",
             _alloc(4097, 4096, {"max_buffer_bytes": 4096}),
             portable=False)
    cat.case("memory.quota", "size_bytes", "got 57", "quota-256-used-200-ask-57", _quota, portable=False)
    cat.case("memory.quota", "size_bytes", "got 100", "quota-freed-bytes-only-after-free", _quota_after_free,
             portable=False)
    cat.case("memory.handle", "handle", "got 1", "free-twice", _free_twice)
    cat.case("memory.handle", "handle", "got 2", "free-foreign-handle", _free_other_client)
    # The fence can never signal (its value was never submitted): the wait must end with TIMEOUT
    # at its deadline (naming timeout_ns, under rule fence.timeout), never hang.
    cat.case("fence.timeout", "timeout_ns", "", "fence-wait-unsubmitted-value", _wait_fence("fence"))
    cat.case("fence.timeout", "timeout_ns", "", "device-wait-unsubmitted-value-timeout-0", _wait_fence("device"))
    cat.case("fence.device", "fence", "a fence of device {device}", "wait-other-devices-fence", _wait_on_foreign_fence)
    for name, seen in (("nosuch-device", "nosuch-device"), ("REF", "REF"), ("", "got "), (3, "got 3"),
                       ("ref:bogus-option", "ref:bogus-option")):
        cat.case("device.name", "name", seen, f"open-{name!r}", _open(name), portable=False)
