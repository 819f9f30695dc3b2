"""The C client alone (libffaccel): a batched GEMM with an epilogue, and error replies as the spec's codes.

tests/c/client_batched.c builds its commands with ffaccel_uapi.h's structs, submits them to a
real server over the socket and the ring, and prints inputs, outputs and errors for NumPy and
the spec's error table to judge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from c_util import program  # tests/ is on pytest's pythonpath (pyproject.toml)

from ffaccel.spec import ErrorCode

BATCH, M, N, K, LDD = 3, 4, 5, 6, 7


def run_client(device: str) -> dict[str, list[str]]:
    exe = program("client_batched", "ffaccel")
    env = {**os.environ, "FFACCEL_DEVICE": device}
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        key, *rest = line.split()
        out[key if key != "err" else "err " + rest[0]] = rest if key != "err" else rest[1:]
    return out


# poll_us=0: the C client sleeps for every completion (on the futex of cq_tail, which the server
# wakes from the thread that published the completion)
@pytest.mark.parametrize(("transport", "options"), [("socket", ""), ("ring", ""), ("ring", "&poll_us=0")])
def test_batched_gemm_with_epilogue_and_error_codes(server, transport: str, options: str) -> None:
    out = run_client(f"unix:{server.path}?transport={transport}{options}")
    assert out["transport"] == [transport]
    arr = {k: np.array([float(x) for x in out[k]], np.float32) for k in ("A", "B", "bias", "D", "D2")}
    a = arr["A"].reshape(BATCH, M, K).astype(np.float64)
    b = arr["B"].reshape(K, N).astype(np.float64)
    want = np.maximum(1.5 * (a @ b) + arr["bias"].astype(np.float64), 0)
    d = arr["D"].reshape(BATCH, M, LDD)
    bound = 2 * (K + 2) * 2.0**-24 * (1.5 * abs(a) @ abs(b) + abs(arr["bias"])) + 2.0**-24 * abs(want)
    assert np.all(abs(d[:, :, :N] - want) <= bound)
    assert np.all(d[:, :, N:] == 777.0)  # padding between D's rows untouched
    assert np.all(arr["D2"] == 0)  # a refused submission ran none of its commands

    def err(name: str) -> tuple[ErrorCode, str, int]:
        code_name, code, param, index = out["err " + name]
        assert ErrorCode[code_name] == int(code)
        return ErrorCode(int(code)), param, int(index)

    assert err("lda") == (ErrorCode.INVALID_PARAMETER, "a.ld_elems", 1)
    assert err("handle") == (ErrorCode.BAD_HANDLE, "a.handle", 0)
    assert err("reserved")[:2] == (ErrorCode.INVALID_PARAMETER, "reserved0")
    assert err("wait")[0] == ErrorCode.TIMEOUT
    assert err("freed")[:2] == (ErrorCode.BAD_HANDLE, "a.handle")
    assert err("double_free")[0] == ErrorCode.BAD_HANDLE


def test_a_server_running_as_another_user_is_refused() -> None:
    """SO_PEERCRED: a socket served by another uid (not root) is someone impersonating the device."""
    if os.getuid() != 0:
        pytest.skip("needs root to listen as another user (uid 65534) on this machine")
    exe = program("client_batched", "ffaccel")
    folder = tempfile.mkdtemp(prefix="ffaccel-impostor-")  # pytest's own folders are closed to other users
    os.chmod(folder, 0o777)
    path = os.path.join(folder, "s.sock")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the impostor: listens as uid 65534 and never answers
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            import socket

            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(path)
            s.listen(1)
            os.write(w, b"r")
            s.settimeout(30)
            s.accept()
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"r"
        proc = subprocess.run([str(exe)], env={**os.environ, "FFACCEL_DEVICE": f"unix:{path}"}, capture_output=True,
                              text=True, timeout=60, check=False)
    finally:
        os.close(r)
        os.kill(pid, 15)
        os.waitpid(pid, 0)
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 1
    assert proc.stdout.startswith(f"open DEVICE_LOST device refusing the server at {path}: it runs as uid 65534")


def test_error_names_follow_the_spec_table() -> None:
    exe = program("error_names", "ffaccel")
    names = subprocess.run([str(exe)], capture_output=True, text=True, check=True, timeout=30).stdout.split()
    assert names == [ErrorCode(i).name if i in ErrorCode._value2member_map_ else "UNKNOWN" for i in range(32)]


def test_a_server_that_never_answers_is_lost_not_waited_for(tmp_path) -> None:
    """A listener that accepts nothing and says nothing: HELLO gives DEVICE_LOST once timeout_s passes."""
    import socket

    exe = program("client_batched", "ffaccel")
    path = str(tmp_path / "mute.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mute:
        mute.bind(path)
        mute.listen(1)
        proc = subprocess.run([str(exe)], env={**os.environ, "FFACCEL_DEVICE": f"unix:{path}?timeout_s=0.3"},
                              capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith("open DEVICE_LOST device the device server is gone or not answering: timed out")


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_command_lists_completed_stats_and_shared_buffers_from_c(server, transport: str) -> None:
    """ffa_record/ffa_replay/ffa_free_list, ffa_completed, ffa_stats, ffa_export/ffa_import against a real server."""
    from ffaccel.spec import RULES

    exe = program("client_features", "ffaccel")
    proc = subprocess.run([str(exe)], env={**os.environ, "FFACCEL_DEVICE": f"unix:{server.path}?transport={transport}"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.endswith("done\n"), proc.stdout + proc.stderr
    out = {}
    for line in proc.stdout.splitlines():
        key, *rest = line.split()
        out[key if key != "err" else "err " + rest[0]] = rest if key != "err" else rest[1:]
    assert out["transport"] == [transport, transport]
    a = np.array(out["A"], np.float64).reshape(4, 5)
    b = np.array(out["B"], np.float64).reshape(5, 3)
    np.testing.assert_allclose(np.array(out["D"], np.float64).reshape(4, 3), a @ b, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(np.array(out["D2"], np.float64).reshape(4, 3), 2 * (a @ b), rtol=1e-6, atol=1e-5)
    f1, f2, _, done = out["fences"]
    assert int(f1) < int(f2) <= int(done)  # the replay waited on the first; COMPLETED shows both done
    assert out["import"] == ["size", str(4 * (4 * 5 + 5 * 3 + 2 * 4 * 3)), "same_bytes", "1"]
    stats = dict(zip(out["stats"][::2], map(int, out["stats"][1::2])))
    assert stats["clients"] >= 2 and stats["buffers"] >= 1 and stats["submissions"] >= 3
    stale = [RULES["cmdlist.id"].code.name, RULES["cmdlist.id"].param]  # what the Python client gets too
    assert out["err replay_freed"] == stale
    assert out["err free_list_twice"] == stale
    assert out["err record_lda"] == ["INVALID_PARAMETER", "a.ld_elems"]
    assert out["err export_unknown"] == ["BAD_HANDLE", "handle"]
    assert out["err import_closed"] == ["INVALID_PARAMETER", "fd"]
    assert out["err free_import"] == ["OK"]
