"""The server's own Python per ring request, in one thread: no second process, no spinning, no wire.

Builds a server (not serving: its poller is stopped), one client of it and that client's ring,
then plays the client's part by hand in the same thread: write one 8x8 f32 GEMM entry (or a
chain of ``--batch`` linked ones, each writing its own 8x8 block of one D buffer, as
``bench_dispatch.py``'s batches do) into the SQ, store ``sq_tail``, call the ring's ``poll()`` (what the poller thread does when it sees
the entry: copy it out, check it, run it inline, signal, write the CQE), reap the CQE. The
figure is what a ring batch-1 round trip costs the server's CPU, without the wake-ups and the
cache-line transfers that the two-process benchmarks add (``bench_dispatch.py``,
``profile_round_trip.py``). ``--profile`` adds a cProfile table of the same loop.

Usage: ``python benchmarks/ring_server_cost.py [--n 20000] [--batch 1] [--profile] [--clock wall|thread]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
import timeit

from ffaccel.abi import Gemm, Matrix
from ffaccel.drivers import open_driver
from ffaccel.spec import DType, Engine
from ffaccel.transports.protocol import CQE, SQE_BYTES, SQE_HEADER, SqeFlags, ring_words
from ffaccel.transports.server.core import Client, Server
from ffaccel.transports.server.rings import Ring

N = 8
RING_ENTRIES = 512


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="requests per timed loop (best of 5 loops)")
    p.add_argument("--batch", type=int, default=1, help="GEMMs per request: one chain of linked entries")
    p.add_argument("--profile", action="store_true", help="also print a cProfile table of one loop")
    p.add_argument("--clock", choices=("wall", "thread"), default="wall",
                   help="thread: this thread's CPU time (time.thread_time), so time the thread spent "
                        "preempted by other processes is not counted (steadier on a loaded host)")
    args = p.parse_args()
    batch = args.batch
    if batch not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        p.error("--batch must be a power of two up to 256 (chains then never wrap the 512-entry ring)")
    driver = open_driver("cpu")
    srv = Server(driver, os.path.join(tempfile.mkdtemp(), "cost.sock"))
    srv.poller.stop()  # this thread plays the poller
    client = Client(srv)
    handles = [client.alloc(N * N * 4 * (batch if i == 2 else 1))[0] for i in range(3)]
    a, b = (Matrix(h, DType.F32, N, N) for h in handles[:2])
    entries = b"".join(  # every entry but the last LINKed; user_data is stored per request
        SQE_HEADER.struct.pack(0, int(Engine.COMPUTE), int(SqeFlags.LINK) if j < batch - 1 else 0, 0, 0, 0, 0)[8:]
        + Gemm(m=N, n=N, k=N, a=a, b=b, d=Matrix(handles[2], DType.F32, N, N, offset_bytes=j * N * N * 4)).encode()
        + bytes(8) for j in range(batch))[:-8]  # each entry's tail, then the next one's user_data
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    ring = Ring(client, RING_ENTRIES, wake, srv.poller.waker)
    client.ring = ring
    words = ring_words(ring.mm)
    sq_tail, cq_head, mm = words["sq_tail"], words["cq_head"], ring.mm
    state = [0]  # requests so far

    def one() -> None:
        i = state[0]  # requests so far: each takes `batch` SQ slots (a whole number of them fill the ring)
        off = ring.sq_off + ((i * batch) & (RING_ENTRIES - 1)) * SQE_BYTES
        mm[off + 8: off + batch * SQE_BYTES] = entries
        mm[off + (batch - 1) * SQE_BYTES: off + (batch - 1) * SQE_BYTES + 8] = (i + 1).to_bytes(8, "little")
        state[0] = i = i + 1
        sq_tail.value = (i * batch) & 0xFFFF_FFFF
        ring.poll()
        cq_head.value = i

    one()
    user_data, status, *_ = CQE.struct.unpack_from(mm, ring.cq_off)
    assert (user_data, status) == (1, 0), "the first request failed"
    timer = time.thread_time if args.clock == "thread" else time.perf_counter
    best = min(timeit.repeat(one, number=args.n, repeat=5, timer=timer)) / args.n
    print(f"server Python per ring batch-{batch} request (8x8 f32 GEMMs, one thread, {args.clock} clock): "
          f"{best * 1e6:.2f} us"
          f" ({best * 1e6 / batch:.3f} us per GEMM) "
          f"(load {os.getloadavg()[0]:.2f})")
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(lambda: [one() for _ in range(args.n)])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    ring.close()  # closes the wake eventfd too: the ring owns it
    srv.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
