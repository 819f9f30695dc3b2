"""Clients never trust a reply: a fuzzing fake server against the Python and the C client.

tests/fake_server.py answers each connection well except for one hostile reply (lengths, sizes,
fds: short, unsealed, not a memfd; ring geometry wrong or moved after setup; huge lengths,
truncated frames, stalls; plus seeded random mutations). Each client runs its whole API once
per connection. What a client may do: report FFAccelError / an ffa error code, DEVICE_LOST
where the plan is malformed for sure. What it may not: crash (the C client runs under
AddressSanitizer and UBSan), hang (every call has a 0.25 s timeout), or raise anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import traceback
from pathlib import Path

import numpy as np
import pytest
from c_util import CFLAGS, HERE, compiler, libraries
from fake_server import FENCE_KINDS, HELLO_CONTENT_KINDS, FakeServer, Plan, plans
from server_util import wait_until

from ffaccel.abi import encode_submission
from ffaccel.cli.build_c import source_dir
from ffaccel.spec import Engine, ErrorCode, FFAccelError
from ffaccel.transports.protocol import Msg
from ffaccel.transports.ring import RingTransport
from ffaccel.transports.socket import SocketTransport

TIMEOUT_S = 0.25
#: Size of the buffer each sequence allocates: many pages, so that a memfd half as long faults when touched.
BUFFER_BYTES = 1 << 16
SEEDS = 24
SANITIZERS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")


def _outcome(log: list[str], step: str, fn):  # noqa: ANN001, ANN202 - a test's tiny driver
    try:
        value = fn()
    except FFAccelError as e:
        log.append(f"{step} {e.code.name}")
        return None
    log.append(f"{step} OK")
    return value


def python_sequence(path: str, transport: str) -> list[str]:
    """The Python client's whole API once against ``path``: each step's outcome as 'STEP CODE'."""
    log: list[str] = []
    t = _outcome(log, "open", lambda: SocketTransport(path, timeout_s=TIMEOUT_S) if transport == "socket"
                 else RingTransport(path, entries=8, timeout_s=TIMEOUT_S))
    if t is None:
        return log
    try:
        got = _outcome(log, "alloc", lambda: t.alloc(BUFFER_BYTES))
        if got is not None:
            got[1][:] = 0x5A  # every byte mapped: a short or shrunk memfd would fault here
        _outcome(log, "stats", t.stats)
        fence = _outcome(log, "submit", lambda: t.submit(encode_submission([])))
        _outcome(log, "wait", lambda: t.wait(Engine.COMPUTE, fence[1] if fence else 1, 10**8))
        _outcome(log, "completed", lambda: t.completed(Engine.COMPUTE))
        lid = _outcome(log, "record", lambda: t.record(encode_submission([])))
        _outcome(log, "replay", lambda: t.replay(lid or 1, Engine.COMPUTE, [(Engine.COMPUTE, 1)]))
        _outcome(log, "free_list", lambda: t.free_list(lid or 1))
        if got is not None:
            fd = _outcome(log, "export", lambda: t.export_fd(got[0]))
            if fd is not None:
                imp = _outcome(log, "import", lambda: t.import_fd(fd))
                os.close(fd)
                if imp is not None:
                    imp[1][:] = 0xA5
                    _outcome(log, "free_import", lambda: t.free(imp[0]))
            got[1][:] = 0x3C  # again, after later requests: a memfd shrunk meanwhile would fault here
            _outcome(log, "free", lambda: t.free(got[0]))
    finally:
        t.close()
    return log


def _judge(srv: FakeServer, i: int, log: list[str], reads_info: bool = True) -> None:
    """Connection ``i`` gave only known codes, and DEVICE_LOST where its reply was malformed for sure.

    ``reads_info``: whether the client parses HELLO's JSON (the C client does not).
    """
    plan, conn = srv.plans[i], srv.conns[i]
    codes = [line.split()[1] for line in log]
    assert all(c == "OK" or c in ErrorCode.__members__ for c in codes), (str(plan), log)
    if conn.must_lose and (reads_info or conn.hit_msg != Msg.HELLO or plan.kind not in HELLO_CONTENT_KINDS):
        assert "DEVICE_LOST" in codes, (str(plan), log)


def _in_child(path: str, transport: str, count: int) -> tuple[int, int]:
    """``python_sequence`` ``count`` times in a forked child, so that a crash (SIGBUS) fails this test only.

    Forked before the fake server starts its threads (its socket already listens), so the child
    inherits no lock another thread holds.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report as JSON, leave without running the parent's cleanups
        code = 1
        try:
            os.close(r)
            logs = [python_sequence(path, transport) for _ in range(count)]
            with os.fdopen(w, "w") as f:
                json.dump(logs, f)
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit status and stderr
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    return r, pid


def _child_logs(r: int, pid: int) -> list[list[str]]:
    with os.fdopen(r) as f:
        text = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"the Python client died: {'signal ' + signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else f'exit {os.WEXITSTATUS(status)} (an exception other than FFAccelError: see stderr)'}")
    return json.loads(text)


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_python_client_survives_every_hostile_reply(tmp_path: Path, transport: str) -> None:
    plan_list = plans(transport, SEEDS)
    srv = FakeServer(str(tmp_path / "fake.sock"), plan_list, start=False)
    try:
        r, pid = _in_child(srv.path, transport, len(plan_list))
        srv.start()
        logs = _child_logs(r, pid)
    finally:
        srv.close()
    for i in range(len(plan_list)):
        _judge(srv, i, logs[i])


def test_python_client_works_with_the_fake_server_when_it_behaves(tmp_path: Path) -> None:
    """The fuzzing only means something if an unmutated run gets through every step."""
    srv = FakeServer(str(tmp_path / "fake.sock"), [Plan("none"), Plan("none")])
    try:
        for transport in ("socket", "ring"):
            log = python_sequence(srv.path, transport)
            assert [line.split()[1] for line in log] == ["OK"] * 13, log
    finally:
        srv.close()


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_python_client_refuses_fence_values_no_submission_gave(tmp_path: Path, transport: str) -> None:
    # a fence value (or a completed value) past every submission the connection sent, or an accepted
    # fence 0, was taken as it came: a Fence.wait on it returned before the work had run
    plan_list = [Plan(kind, msg=int(Msg.SUBMIT)) for kind in FENCE_KINDS]
    srv = FakeServer(str(tmp_path / "fake.sock"), plan_list)
    try:
        logs = [python_sequence(srv.path, transport) for _ in plan_list]
    finally:
        srv.close()
    for i, log in enumerate(logs):
        assert srv.conns[i].hurt, (str(plan_list[i]), log)
        _judge(srv, i, log)
        # lost at the reply that carried it (its submit, or the wait that read the ring's word), and from then on
        first = next(line for line in log if not line.endswith(" OK"))
        assert first in ("submit DEVICE_LOST", "wait DEVICE_LOST"), (str(plan_list[i]), log)


def test_ring_client_never_believes_a_completed_word_that_went_back(tmp_path: Path) -> None:
    srv = FakeServer(str(tmp_path / "fake.sock"), [Plan("none")])
    try:
        t = RingTransport(srv.path, entries=8, timeout_s=TIMEOUT_S)
        try:
            _engine, value = t.submit(encode_submission([]))
            assert t.completed(Engine.COMPUTE) == value
            t._w["completed_compute"].value = 0  # the shared word goes back (as the server would write it)
            assert t.completed(Engine.COMPUTE) == value  # what was seen complete stays complete
        finally:
            t.close()
    finally:
        srv.close()


def _fuzz_exe() -> Path:
    """tests/c/client_fuzz.c and the C client, built together under ASan and UBSan."""
    res = libraries()
    exe = res.lib.parent / "client_fuzz_asan"
    if not exe.exists():
        proc = subprocess.run([compiler(), *CFLAGS, *SANITIZERS, f"-I{res.include}", str(HERE / "client_fuzz.c"),
                               str(source_dir() / "ffaccel_client.c"), "-o", str(exe)],
                              capture_output=True, text=True, check=False)
        if proc.returncode and "sanitize" in proc.stderr and "cannot find" in proc.stderr:
            pytest.skip(f"the compiler has no ASan/UBSan runtime: {proc.stderr.strip()[:200]}")
        assert proc.returncode == 0, proc.stderr
    return exe


def _run_c(path: str, transport: str, count: int) -> dict[int, list[str]]:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87"}
    proc = subprocess.run([str(_fuzz_exe()), str(count), f"unix:{path}?transport={transport}&timeout_s={TIMEOUT_S}"
                           "&entries=8"], capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0 and "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, \
        proc.stderr[-4000:]
    out: dict[int, list[str]] = {}
    for line in proc.stdout.splitlines():
        it, step, code = line.split()
        out.setdefault(int(it), []).append(f"{step} {code}")
    return out


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_c_client_survives_every_hostile_reply_under_sanitizers(tmp_path: Path, transport: str) -> None:
    plan_list = [Plan("none"), *plans(transport, SEEDS)]
    srv = FakeServer(str(tmp_path / "fake.sock"), plan_list)
    try:
        logs = _run_c(srv.path, transport, len(plan_list))
    finally:
        srv.close()
    assert sorted(logs) == list(range(len(plan_list)))
    assert [line.split()[1] for line in logs[0]] == ["OK"] * 13, logs[0]  # unmutated: every step gets through
    for i in range(len(plan_list)):
        wait_until(lambda: srv.conns[i].stop.is_set(), bool, 10, f"connection {i} served")
        _judge(srv, i, logs[i], reads_info=False)


def test_the_fake_server_plans_are_deterministic() -> None:
    """Same seeds, same plans: a failure names a plan that reproduces it."""
    assert [str(p) for p in plans("ring", SEEDS)] == [str(p) for p in plans("ring", SEEDS)]
    assert len({str(p) for p in plans("ring", SEEDS)}) > 60
    assert np.mean([p.must_lose for p in plans("socket", SEEDS)]) > 0.5


def test_the_real_server_seals_every_memfd_it_sends(server) -> None:
    """The clients require F_SEAL_SHRINK; the real server's buffers (and rings: opening one maps it) have it."""
    import fcntl

    from ffaccel.transports.protocol import memfd_problem

    with server.open("ring") as dev:  # the ring's memfd passed the same check, or this open would fail
        buf = dev.alloc(4096)
        fd = buf.export_fd()
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
            assert memfd_problem(fd, 4096) is None
            assert memfd_problem(fd, 4097) is not None  # and a reply claiming more than fstat shows is refused
        finally:
            os.close(fd)
