"""Where one server round trip's time goes: stage stamps on both sides, nothing left on the hot path.

Starts a server in a subprocess with stamping wrappers patched in from outside (this script
wraps the stage functions; the library has no tracing code), runs N round trips of an 8x8 f32
GEMM over the socket and over the ring (batch 1), and prints the median time between stages
(CLOCK_MONOTONIC, the same clock in both processes) plus how each side's spins ended.

Usage: ``python benchmarks/profile_round_trip.py [--n 2000] [--poll-us 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SERVER = r"""
import json, os, sys, time, threading, atexit
from ffaccel.transports import spin as spin_mod
from ffaccel.transports.server import core, framing, rings, scheduler
ns = time.perf_counter_ns
stamps = {}  # stage -> list of stamps
counts = {}
def st(k):
    stamps.setdefault(k, []).append(ns())
def cnt(k):
    counts[k] = counts.get(k, 0) + 1
def wrap(cls, name, before=None, after=None):
    raw = cls.__dict__[name]
    f = getattr(cls, name)
    def w(*a, **kw):
        if before: st(before)
        r = f(*a, **kw)
        if after: st(after)
        return r
    setattr(cls, name, staticmethod(w) if isinstance(raw, staticmethod) else w)
wrap(framing.Inbox, "next_message", after="srv.msg")
wrap(core.Client, "submit_raw", after="srv.submitted")
wrap(rings.Ring, "poll", before="srv.ring.noticed")  # the poller saw sq_tail move
wrap(rings.Ring, "_complete", before="srv.ring.chain", after="srv.ring.cqe")
wrap(rings.Ring, "_wake_client", before="srv.ring.wakecheck")
wrap(rings.Waker, "wake", before="srv.waker.queued")
wrap(rings.Waker, "_write", before="srv.waker.write", after="srv.waker.written")
wrap(scheduler.EngineScheduler, "submit", before="srv.sched.in", after="srv.sched.out")
import socket as socket_mod
sa = socket_mod.socket.sendall
def sendall(self, *a, **kw):
    r = sa(self, *a, **kw); st("srv.sent"); return r
socket_mod.socket.sendall = sendall
SB = spin_mod.SpinBudget
ostart, opaid, okeep, oback = SB.start, SB.paid, SB.keep_spinning, SB._back_off
def start(self, *now):
    r = ostart(self, *now)
    if r is False: cnt("spin.skipped")
    return r
def paid(self):
    cnt("spin.paid"); opaid(self)
def keep(self, scale=1.0):
    r = okeep(self, scale)
    if not r: cnt("spin.empty")
    return r
def back(self, now):
    cnt("spin.backed_off"); oback(self, now)
SB.start, SB.paid, SB.keep_spinning, SB._back_off = start, paid, keep, back
if hasattr(SB, "restart"):  # paid() + start() in one call (the ring poller, once per request)
    orestart = SB.restart
    def restart(self):
        cnt("spin.paid")
        r = orestart(self)
        if r is False: cnt("spin.skipped")
        return r
    SB.restart = restart
def dump():
    with open(os.environ["PROFILE_OUT"], "w") as f:
        json.dump({"stamps": stamps, "counts": counts}, f)
def on_term(*_):
    dump(); os._exit(0)
import signal
signal.signal(signal.SIGUSR1, on_term)
ARGV = ["serve", "--socket", os.environ["PROFILE_SOCK"], "--ring-poll-us", os.environ["PROFILE_POLL"]]
from ffaccel.cli.main import main
main(ARGV)
"""


def stage_table(name: str, client: dict, server: dict) -> None:
    """Median µs between consecutive stamps of each round trip (matched by time order)."""
    marks = {**client, **server}
    t0s = client["cli.start"]
    rows: dict[str, list[float]] = {}
    for i, t0 in enumerate(t0s[:-1]):
        t_end = t0s[i + 1]
        seq = []
        for k, v in marks.items():
            # the first stamp of this stage inside [t0, next round trip's t0)
            import bisect
            j = bisect.bisect_left(v, t0)
            if j < len(v) and v[j] < t_end:
                seq.append((v[j], k))
        seq.sort()
        for (ta, ka), (tb, kb) in zip(seq, seq[1:]):
            rows.setdefault(f"{ka} -> {kb}", []).append((tb - ta) / 1e3)
        rows.setdefault("TOTAL (start -> next start)", []).append((t_end - t0) / 1e3)
    print(f"== {name}: median us between stages (count)")
    for k, v in sorted(rows.items(), key=lambda kv: -len(kv[1])):
        if len(v) >= len(t0s) // 10:
            print(f"  {k:60s} {statistics.median(v):8.2f}  ({len(v)})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--poll-us", type=int, default=200)
    p.add_argument("--busy", type=int, default=0, help="beside this many CPU-bound processes")
    args = p.parse_args()
    import numpy as np

    import ffaccel
    from ffaccel.transports import ring as ring_mod
    from ffaccel.transports import socket as sock_mod
    from ffaccel.transports import spin as spin_mod

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "p.sock")
    out = os.path.join(folder, "server.json")
    env = {**os.environ, "PROFILE_OUT": out, "PROFILE_SOCK": path, "PROFILE_POLL": str(args.poll_us)}
    srv = subprocess.Popen([sys.executable, "-c", SERVER], env=env)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > deadline or srv.poll() is not None:
            raise SystemExit("server did not start")
        time.sleep(0.05)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    ns = time.perf_counter_ns
    stamps: dict[str, list[int]] = {}
    counts: dict[str, int] = {}

    def st(k: str) -> None:
        stamps.setdefault(k, []).append(ns())

    def wrap(cls: type, name: str, before: str | None = None, after: str | None = None) -> None:
        f = getattr(cls, name)

        def w(*a, **kw):
            if before:
                st(before)
            r = f(*a, **kw)
            if after:
                st(after)
            return r
        setattr(cls, name, w)

    wrap(sock_mod.SocketTransport, "_send", after="cli.sent")
    wrap(sock_mod.SocketTransport, "_recv_reply", after="cli.replied")
    wrap(ring_mod.RingTransport, "_publish", after="cli.published")
    wrap(ring_mod.RingTransport, "_reap", after="cli.reaped")
    wrap(ring_mod.RingTransport, "_sleep", before="cli.sleep", after="cli.woken")
    SB = spin_mod.SpinBudget
    opaid, okeep, oback, ostart = SB.paid, SB.keep_spinning, SB._back_off, SB.start

    def bump(k: str) -> None:
        counts[k] = counts.get(k, 0) + 1

    def paid(self):
        bump("cli.spin.paid")
        opaid(self)

    def keep(self, scale=1.0):
        r = okeep(self, scale)
        if not r:
            bump("cli.spin.empty")
        return r

    def back(self, now):
        bump("cli.spin.backed_off")
        oback(self, now)

    def start(self):
        r = ostart(self)
        if not r:
            bump("cli.spin.skipped")
        return r
    SB.paid, SB.keep_spinning, SB._back_off, SB.start = paid, keep, back, start

    from ffaccel.abi import Gemm, encode_submission
    results = {}
    for name, url in (("socket", f"unix:{path}"),
                      ("ring b1", f"unix:{path}?transport=ring&poll_us={args.poll_us}&entries=64")):
        dev = ffaccel.open(url)
        a, b, d = dev.alloc(256), dev.alloc(256), dev.alloc(256)
        a.write(np.ones((8, 8), np.float32))
        b.write(np.ones((8, 8), np.float32))
        raw = encode_submission([Gemm(m=8, n=8, k=8, a=a.matrix(np.float32, 8, 8), b=b.matrix(np.float32, 8, 8),
                                      d=d.matrix(np.float32, 8, 8)).encode()])
        for _ in range(200):
            dev.submit_raw(raw).wait(timeout_ns=10**10)
        stamps.clear()
        counts.clear()
        t0 = ns()
        for _ in range(args.n):
            st("cli.start")
            dev.submit_raw(raw).wait(timeout_ns=10**10)
        st("cli.start")
        results[name] = ((ns() - t0) / args.n / 1e3, {k: list(v) for k, v in stamps.items()}, dict(counts))
        dev.close()
    for b_ in burners:
        b_.kill()
    srv.send_signal(10)
    srv.wait(10)
    with open(out) as f:
        server = json.load(f)
    print(f"load {open('/proc/loadavg').read().strip()}")
    for name, (per, cli, cc) in results.items():
        t_lo, t_hi = cli["cli.start"][0], cli["cli.start"][-1]
        sv = {k: [t for t in v if t_lo <= t <= t_hi] for k, v in server["stamps"].items()}
        print(f"{name}: {per:.2f} us/round trip; client spins {cc}")
        stage_table(name, cli, {k: v for k, v in sv.items() if v})
    print("server spin counts (whole run, every server spinner):", server["counts"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
