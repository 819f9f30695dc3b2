"""Soak the device server with hostile and ordinary clients at once (a script, not a timed test).

Runs one ``ffaccel serve`` and, for ``--seconds``, side by side:

* a **canary** client doing fixed GEMMs on both paths, every result compared bit for bit with the
  first one it got;
* **socket fuzzers**: mutations of valid requests (bit flips, truncations, splices, wrong lengths,
  junk fds) plus random bytes, one connection after another;
* **ring fuzzers**: valid rings whose entries and indices are mutated the same way;
* **attackers**: the regression attacks of ``tests/test_server_hostile.py`` in their long form
  (hang up with a full waiting ring, stalled 8 MiB headers, import-your-own-buffer, blocking wake fds);
* **killed clients**: processes doing mixed GEMMs, SIGKILLed at random points;
* **workers**: ``--workers`` clients doing mixed GEMMs, every result checked against NumPy.

At the end it prints the counts, whether the server is still up, and its fd count and RSS against
the baseline taken after start-up. Exit status 1 when anything was wrong.

Examples
--------
    python benchmarks/soak_server.py --seconds 60 --workers 32 --kills 1000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import ffaccel  # noqa: E402
from ffaccel.abi import ABI_VERSION, encode_submission  # noqa: E402
from ffaccel.transports.protocol import HELLO, MSG, RING_SETUP, WIRE_VERSION, Msg  # noqa: E402


def _proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _proc_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- workers (child processes) ----------------------------------------------------------------


def _canary(path: str, seconds: float, out: mp.Queue) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 24)).astype(np.float32)
    ok = bad = 0
    want: dict[str, bytes] = {}
    devs = {p: ffaccel.open(f"unix:{path}?transport={p}&timeout_s=30") for p in ("socket", "ring")}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for p, dev in devs.items():
            got = ffaccel.matmul(x, x, device=dev).tobytes()
            if want.setdefault(p, got) == got:
                ok += 1
            else:
                bad += 1
    out.put(("canary", ok, bad))


def _mixed(path: str, seconds: float, seed: int, out: mp.Queue | None) -> None:
    rng = np.random.default_rng(seed)
    dev = ffaccel.open(f"unix:{path}?transport={'ring' if seed % 2 else 'socket'}&timeout_s=60")
    ok = bad = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        m, n, k = (int(v) for v in rng.integers(1, 96, 3))
        dt = [np.float32, np.float64][int(rng.integers(0, 2))]
        a = rng.standard_normal((m, k)).astype(dt)
        b = rng.standard_normal((k, n)).astype(dt)
        got = ffaccel.matmul(a, b, device=dev)
        tol = 1e-4 if dt == np.float32 else 1e-10
        if np.allclose(got, a @ b, rtol=tol, atol=tol * k):
            ok += 1
        else:
            bad += 1
    if out is not None:
        out.put(("worker", ok, bad))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    choice = rng.randrange(5)
    if choice == 0 and b:
        for _ in range(rng.randrange(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif choice == 1:
        b = b[: rng.randrange(len(b) + 1)]
    elif choice == 2:
        b += os.urandom(rng.randrange(64))
    elif choice == 3 and len(b) >= 16:
        struct.pack_into("<Q", b, 8, rng.choice([0, 1, 7, 1 << 20, 8 << 20, (1 << 64) - 1]))
    else:
        b = bytearray(os.urandom(rng.randrange(1, 256)))
    return bytes(b)


def _socket_fuzzer(path: str, seconds: float, seed: int, out: mp.Queue) -> None:
    rng = random.Random(seed)
    sub = encode_submission([])  # a valid (empty) submission to mutate
    valid = [
        MSG.struct.pack(Msg.HELLO, 0, 8) + HELLO.struct.pack(WIRE_VERSION, ABI_VERSION),
        MSG.struct.pack(Msg.ALLOC, 0, 8) + struct.pack("<Q", 64),
        MSG.struct.pack(Msg.FREE, 0, 8) + struct.pack("<II", 1, 0),
        MSG.struct.pack(Msg.STATS, 0, 0),
        MSG.struct.pack(Msg.SUBMIT, 0, len(sub)) + sub,
        MSG.struct.pack(Msg.ERROR_TEXT, 0, 8) + struct.pack("<Q", 1),
        MSG.struct.pack(Msg.RING_SETUP, 0, 8) + RING_SETUP.struct.pack(8, 0),
        MSG.struct.pack(Msg.WAIT, 0, 24) + struct.pack("<IIQQ", 0, 0, 0, 1000),
    ]
    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(path)
            # a burst of mutated requests, replies drained without waiting for them
            count = rng.randrange(1, 500)
            burst = b"".join(_mutate(rng, rng.choice(valid)) for _ in range(count))
            for i in range(0, len(burst), 4096):
                s.sendall(burst[i: i + 4096])
                while select.select([s], [], [], 0)[0] and s.recv(1 << 16):  # never waits for a reply
                    pass
            sent += count
        except OSError:
            pass
        finally:
            s.close()
    out.put(("socket_fuzz", sent, 0))


def _ring_fuzzer(path: str, seconds: float, seed: int, out: mp.Queue) -> None:
    from test_server_hostile import RawRing  # the hand-driven ring of the tests

    rng = random.Random(seed)
    entries = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ev = os.eventfd(0, os.EFD_NONBLOCK)
        try:
            ring = RawRing(path, ev, entries=64)
        except (ffaccel.FFAccelError, OSError):
            os.close(ev)
            continue
        try:
            good = b"\x00" * 8 + struct.pack("<II", 0, 2) + bytes(24)  # an EMPTY entry header
            from ffaccel.transports.protocol import SQE_BYTES
            for _ in range(rng.randrange(1, 50)):
                sqes = [_mutate(rng, good + bytes(SQE_BYTES - len(good)))[:SQE_BYTES].ljust(SQE_BYTES, b"\0")
                        for _ in range(rng.randrange(1, 16))]
                ring.publish(sqes, waiting=rng.random() < 0.5)
                entries += len(sqes)
                if rng.random() < 0.1:  # scribble on the indices too
                    ring.w[rng.choice(["sq_tail", "cq_head"])].value = rng.randrange(1 << 32)
                ring.w["cq_head"].value = ring.w["cq_tail"].value
        except (OSError, ValueError, KeyError):
            pass
        finally:
            ring.close()
            os.close(ev)
    out.put(("ring_fuzz", entries, 0))


def _attacker(path: str, seconds: float, out: mp.Queue) -> None:
    from test_server_hostile import RawRing, _empty_sqe

    rounds = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ev = os.eventfd(0, os.EFD_NONBLOCK)
        try:  # hang up with a full ring of waiting work
            ring = RawRing(path, ev, entries=1024)
            ring.publish([_empty_sqe(i) for i in range(1024)])
            ring.close()
        except (ffaccel.FFAccelError, OSError):
            pass
        os.close(ev)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a stalled 8 MiB header
        try:
            s.connect(path)
            s.sendall(MSG.struct.pack(Msg.SUBMIT, 0, 8 << 20) + bytes(8))
        except OSError:
            pass
        s.close()
        rounds += 1
    out.put(("attack", rounds, 0))


# -- the driver -----------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--socket-fuzzers", type=int, default=1, help="processes fuzzing the socket path")
    ap.add_argument("--ring-fuzzers", type=int, default=2, help="processes fuzzing the ring path")
    ap.add_argument("--kills", type=int, default=50, help="client processes to SIGKILL at random points")
    args = ap.parse_args()

    folder = tempfile.mkdtemp(prefix="ffaccel-soak-")
    path = os.path.join(folder, "s.sock")
    log = open(os.path.join(folder, "server.log"), "wb")  # noqa: SIM115
    srv = subprocess.Popen([sys.executable, "-m", "ffaccel.cli", "serve", "--socket", path, "--limit",
                            "message_stall_s=2"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            ffaccel.open(f"unix:{path}?timeout_s=5").close()
            break
        except ffaccel.FFAccelError:
            if time.monotonic() > deadline:
                print("server did not start")
                return 1
            time.sleep(0.1)
    warm = ffaccel.open(f"unix:{path}?timeout_s=30")  # the baseline includes the BLAS threads' buffers
    ffaccel.matmul(np.ones((256, 256), np.float32), np.ones((256, 256), np.float32), device=warm)
    warm.close()
    time.sleep(1)
    base_fds, base_rss = _proc_fds(srv.pid), _proc_rss(srv.pid)
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_canary, args=(path, args.seconds, out))]
    procs += [ctx.Process(target=_mixed, args=(path, args.seconds, i, out)) for i in range(args.workers)]
    procs += [ctx.Process(target=_socket_fuzzer, args=(path, args.seconds, i, out)) for i in range(args.socket_fuzzers)]
    procs += [ctx.Process(target=_ring_fuzzer, args=(path, args.seconds, i, out)) for i in range(args.ring_fuzzers)]
    procs += [ctx.Process(target=_attacker, args=(path, args.seconds, out))]
    for p in procs:
        p.start()
    killed = 0
    end = time.monotonic() + args.seconds
    rng = random.Random(1)
    fork = mp.get_context("fork")  # victims start fast: ffaccel is already imported here
    while killed < args.kills and time.monotonic() < end:
        victim = fork.Process(target=_mixed, args=(path, 60.0, 1000 + killed, None))
        victim.start()
        time.sleep(rng.uniform(0.01, 0.3))  # a random point in its life
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        killed += 1
    results: dict[str, list[int]] = {}
    crashed = 0
    for p in procs:
        p.join(args.seconds + 120)
        crashed += p.exitcode != 0  # a client that died of an error is a failure too
    while not out.empty():
        kind, n_ok, n_bad = out.get()
        r = results.setdefault(kind, [0, 0])
        r[0] += n_ok
        r[1] += n_bad
    up = srv.poll() is None
    time.sleep(3)  # let the server notice the last hang-ups before counting what it holds
    fds, rss = (_proc_fds(srv.pid), _proc_rss(srv.pid)) if up else (-1, -1)
    print(f"seconds {args.seconds:g}, clients killed {killed}")
    for kind, (n_ok, n_bad) in sorted(results.items()):
        print(f"  {kind:12s} {n_ok:>10,} {'ok' if kind in ('canary', 'worker') else 'sent'}  {n_bad} wrong")
    print(f"clients that died of an error: {crashed}")
    print(f"server up: {up}; fds {base_fds} -> {fds}; RSS {base_rss >> 20} -> {rss >> 20} MiB")
    srv.terminate()
    srv.wait(30)
    log.close()
    wrong = sum(r[1] for r in results.values())
    return 0 if up and not wrong and not crashed else 1


if __name__ == "__main__":
    sys.exit(main())
