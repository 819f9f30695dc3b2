"""What a device did, as ``Device.stats()`` and ``ffaccel stats`` report it: commands, FLOPs and
bytes counted once per accepted submission, per client and in total (issue 22's process table).

Each server test runs its own server in this process, so its totals are exactly that test's work.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import ffaccel
from ffaccel.abi import Copy, Gemm, PostOpDesc
from ffaccel.cli.errors import Exit
from ffaccel.cli.main import main
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.drivers.ref import RefDriver
from ffaccel.runtime import Device
from ffaccel.spec import ErrorCode, FFAccelError, PostOpKind
from ffaccel.transports import InprocTransport
from ffaccel.transports.protocol import decode_usage
from ffaccel.transports.server import Server
from ffaccel.transports.usage import USAGE_FIELDS, UsageCounter

from server_util import wait_until  # tests/ is on pytest's pythonpath (pyproject.toml)

F32 = np.float32


def _work(dev: Device) -> dict[str, int]:
    """One GEMM (batch 2, C read, a bias), one COPY, a recorded GEMM replayed twice and a refused
    submission; returns what must be counted for it."""
    m, n, k, batch = 3, 5, 4, 2
    a, b, c, d, bias, x = (dev.alloc(4096) for _ in range(6))
    gemm = Gemm(m=m, n=n, k=k, batch=batch, a=a.matrix(F32, m, k, batch_stride_elems=m * k),
                b=b.matrix(F32, k, n, batch_stride_elems=k * n), c=c.matrix(F32, m, n, batch_stride_elems=m * n),
                d=d.matrix(F32, m, n, batch_stride_elems=m * n), beta=1.0,
                epilogue=(PostOpDesc(PostOpKind.BIAS_N, operand=bias.matrix(F32, 1, n)),))
    dev.submit([gemm]).wait()
    dev.submit([Copy(src=a.matrix(F32, 2, 8), dst=x.matrix(F32, 2, 8))], engine="copy").wait()
    small = Gemm(m=2, n=2, k=2, a=a.matrix(F32, 2, 2), b=b.matrix(F32, 2, 2), d=d.matrix(F32, 2, 2))
    cl = dev.record([small])
    cl.replay().wait()
    cl.replay().wait()
    with pytest.raises(FFAccelError):  # refused: nothing runs, nothing is counted
        dev.submit([Gemm(m=2, n=2, k=2, a=a.matrix(F32, 2, 2), b=b.matrix(F32, 2, 2), d=a.matrix(F32, 2, 2))])
    gemm_bytes = batch * (m * k + k * n + 2 * m * n + n) * 4  # A, B, C, D and the bias, per entry
    return {"submissions": 4, "gemm_commands": 3, "gemm_flops": 2 * batch * m * n * k + 2 * (2 * 2 * 2 * 2),
            "gemm_bytes": gemm_bytes + 2 * (3 * 2 * 2 * 4), "copy_commands": 1, "copy_bytes": 2 * 8 * 4}


def _counters(row: dict) -> dict[str, int]:
    return {k: row[k] for k in USAGE_FIELDS}


def test_an_in_process_device_counts_what_it_accepted() -> None:
    dev = ffaccel.open("cpu")
    expected = _work(dev)
    s = dev.stats()
    assert _counters(s) == expected
    assert s["device"] == "cpu" and s["driver"] == "cpu" and s["clients_now"] == 1
    (row,) = s["clients"]
    assert _counters(row) == expected
    assert row["pid"] == os.getpid() and row["transport"] == "inproc" and row["buffers"] == 6
    assert s["driver_usage"] == {}
    dev.close()


def test_a_gemm_that_reads_neither_a_nor_b_does_no_flops() -> None:
    dev = ffaccel.open("ref")
    a, d = dev.alloc(64), dev.alloc(64)
    dev.submit([Gemm(m=2, n=2, k=2, a=a.matrix(F32, 2, 2), b=a.matrix(F32, 2, 2), d=d.matrix(F32, 2, 2),
                     alpha=0.0)]).wait()
    s = dev.stats()
    assert (s["gemm_commands"], s["gemm_flops"], s["gemm_bytes"]) == (1, 0, 2 * 2 * 4)


def test_a_drivers_own_counters_are_public() -> None:
    class Counting(RefDriver):
        def usage(self) -> dict[str, float]:
            return {"tiles": 7}

    dev = Device("counting", InprocTransport(Counting()))
    assert dev.stats()["driver_usage"] == {"tiles": 7}


def test_the_counter_folds_many_distinct_shapes_into_exact_totals() -> None:
    c = UsageCounter()
    for i in range(5000):  # more distinct tuples than it keeps apart
        c.add((1, 1, i, 0, 0, 0))
    c.add((1, 1, 3, 0, 0, 0))
    t = c.totals()
    assert (t["submissions"], t["gemm_commands"], t["gemm_flops"]) == (5001, 5001, sum(range(5000)) + 3)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    srv = Server(CpuDriver(), str(tmp_path / "s.sock"))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    thread.join(30)


def test_the_server_counts_per_client_and_in_total_since_it_started(served: Server) -> None:
    path = served.socket_path
    sock = ffaccel.open(f"unix:{path}")
    ring = ffaccel.open(f"unix:{path}?transport=ring")
    expected_sock = _work(sock)
    expected_ring = _work(ring)
    s = sock.stats()
    rows = {r["id"]: r for r in s["clients"]}
    me = rows[s["client_id"]]
    assert _counters(me) == expected_sock and me["transport"] == "socket"
    assert me["pid"] == os.getpid() and me["command"] and me["buffers"] == 6
    (other,) = [r for r in s["clients"] if r["id"] != s["client_id"]]
    assert _counters(other) == expected_ring and other["transport"] == "ring"
    assert _counters(s) == {k: expected_sock[k] + expected_ring[k] for k in USAGE_FIELDS}
    assert (s["clients_now"], s["clients_since_start"], s["driver"]) == (2, 2, "cpu")
    assert s["memory_bytes"] == me["memory_bytes"] + other["memory_bytes"] > 0
    fixed = sock._transport.stats()  # noqa: SLF001 - the fixed-size STATS reply reads the same counts
    assert (fixed["clients"], fixed["submissions"]) == (2, s["submissions"])

    ring.close()  # a client that leaves: its row goes, its work stays in the totals
    probe = ffaccel.open(f"unix:{path}")
    # the server notices the hang-up on its own thread: wait for the row to go, with a deadline
    after = wait_until(probe.stats, lambda st: len(st["clients"]) == 2, 30, "the closed client's row goes")
    assert _counters(after) == _counters(s)
    assert after["clients_since_start"] == 3
    assert {r["id"] for r in after["clients"]} == {s["client_id"], after["client_id"]}
    probe.close()
    sock.close()


def test_matmul_through_the_server_is_counted(served: Server) -> None:
    dev = ffaccel.open(f"unix:{served.socket_path}")
    for m in (1, 8, 32):
        ffaccel.matmul(np.ones((m, 16), F32), np.ones((16, 4), F32), device=dev)
    s = dev.stats()
    assert s["gemm_commands"] == 3
    assert s["gemm_flops"] == sum(2 * m * 16 * 4 for m in (1, 8, 32))
    dev.close()


def test_ffaccel_stats_prints_the_servers_table_and_json(served: Server, capsys: pytest.CaptureFixture[str]) -> None:
    dev = ffaccel.open(f"unix:{served.socket_path}")
    expected = _work(dev)
    assert main(["stats", f"unix:{served.socket_path}", "--json"]) == Exit.OK
    doc = json.loads(capsys.readouterr().out)
    assert (doc["gemm_commands"], doc["gemm_flops"]) == (expected["gemm_commands"], expected["gemm_flops"])
    assert main(["stats", f"unix:{served.socket_path}"]) == Exit.OK
    out = capsys.readouterr().out
    assert str(os.getpid()) in out and "GEMMs" in out and f"{expected['submissions']:,} submissions" in out
    dev.close()


def test_ffaccel_stats_without_a_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", f"unix:{tmp_path}/none.sock"]) == Exit.DEVICE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "DEVICE_LOST" in err


@pytest.mark.parametrize("reply", [b"[1]", b"{}", b'{"clients": [], "gemm_flops": -1}',
                                   b'{"clients": [1]}', b"\xff", b'{"clients": [{"gemm_commands": true}]}'])
def test_a_malformed_usage_reply_is_device_lost(reply: bytes) -> None:
    with pytest.raises(FFAccelError) as e:
        decode_usage(reply)
    assert e.value.code == ErrorCode.DEVICE_LOST
