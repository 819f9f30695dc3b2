"""The server's own Python per ring request, in one thread: no second process, no spinning, no wire.

Builds a server (not serving: its poller is stopped), one client of it and that client's ring,
then plays the client's part by hand in the same thread: write one 8x8 f32 GEMM entry into
the SQ, store ``sq_tail``, call the ring's ``poll()`` (what the poller thread does when it sees
the entry: copy it out, check it, run it inline, signal, write the CQE), reap the CQE. The
figure is what a ring batch-1 round trip costs the server's CPU, without the wake-ups and the
cache-line transfers that the two-process benchmarks add (``bench_dispatch.py``,
``profile_round_trip.py``). ``--profile`` adds a cProfile table of the same loop.

Usage: ``python benchmarks/ring_server_cost.py [--n 20000] [--profile]``
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import timeit

from ffaccel.abi import Gemm, Matrix
from ffaccel.drivers import open_driver
from ffaccel.spec import DType, Engine
from ffaccel.transports.protocol import CQE, SQE_BYTES, SQE_HEADER, ring_words
from ffaccel.transports.server.core import Client, Server
from ffaccel.transports.server.rings import Ring

N = 8


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000, help="requests per timed loop (best of 5 loops)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile table of one loop")
    args = p.parse_args()
    driver = open_driver("cpu")
    srv = Server(driver, os.path.join(tempfile.mkdtemp(), "cost.sock"))
    srv.poller.stop()  # this thread plays the poller
    client = Client(srv)
    handles = [client.alloc(N * N * 4)[0] for _ in range(3)]
    a, b, d = (Matrix(h, DType.F32, N, N) for h in handles)
    entry_tail = SQE_HEADER.struct.pack(0, int(Engine.COMPUTE), 0, 0, 0, 0, 0)[8:] + Gemm(m=N, n=N, k=N, a=a, b=b,
                                                                                          d=d).encode()
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    ring = Ring(client, 256, wake, srv.poller.waker)
    client.ring = ring
    words = ring_words(ring.mm)
    sq_tail, cq_head, mm = words["sq_tail"], words["cq_head"], ring.mm
    state = [0]  # requests so far

    def one() -> None:
        i = state[0]
        off = ring.sq_off + (i & 255) * SQE_BYTES
        mm[off: off + 8] = (i + 1).to_bytes(8, "little")  # user_data
        mm[off + 8: off + SQE_BYTES] = entry_tail
        state[0] = i = i + 1
        sq_tail.value = i
        ring.poll()
        cq_head.value = i

    one()
    user_data, status, *_ = CQE.struct.unpack_from(mm, ring.cq_off)
    assert (user_data, status) == (1, 0), "the first request failed"
    best = min(timeit.repeat(one, number=args.n, repeat=5)) / args.n
    print(f"server Python per ring batch-1 request (8x8 f32 GEMM, one thread): {best * 1e6:.2f} us "
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
