"""A new user never races the server: ``serve`` says when it listens (a ready file, sd_notify), a
client can wait for a device for a bounded time, and a refused Dask port fails at once (issue 23).

Waits for events have deadlines (server_util.wait_until); no test asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_util import wait_until

import ffaccel
from ffaccel.drivers.connect import CONNECT_TIMEOUT_ENV, retry_until_ready
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.spec import ErrorCode, FFAccelError
from ffaccel.transports.server import Server

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CLI = [sys.executable, "-m", "ffaccel.cli"]
START_S = 60.0


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "serve", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


# -- the server says it is ready ---------------------------------------------------------------


def test_ready_file_appears_once_listening_and_goes_with_the_server(tmp_path: Path) -> None:
    sock, ready = tmp_path / "s.sock", tmp_path / "ready"
    # a stale file from an earlier server: must never be taken for this server's
    ready.write_text(json.dumps({"device": "unix:/old.sock", "socket": "/old.sock", "pid": 1, "driver": "cpu"}) + "\n")
    proc = _serve("--socket", str(sock), "--ready-file", str(ready))
    try:
        doc = wait_until(lambda: ready.exists() and ready.read_text(),
                         lambda t: bool(t) and t.startswith("{") and f'"pid": {proc.pid},' in t,
                         START_S, "the ready file is written")
        info = json.loads(doc)
        assert info == {"device": f"unix:{sock}", "socket": str(sock), "pid": proc.pid, "driver": "cpu"}
        dev = ffaccel.open(info["device"])  # no wait needed: the socket listens
        assert dev.info().name == "cpu"
        dev.close()
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    assert not ready.exists() and not sock.exists()


def test_systemd_notify_socket_gets_ready_and_stopping(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(START_S)
    proc = _serve("--socket", str(tmp_path / "s.sock"), env={"NOTIFY_SOCKET": str(tmp_path / "notify")})
    try:
        ready = notify.recv(4096).decode()
        assert ready.splitlines()[0] == "READY=1" and f"MAINPID={proc.pid}" in ready.splitlines()
        assert os.path.exists(tmp_path / "s.sock")  # READY=1 comes once the socket is there
    finally:
        status, err = _stop(proc)
    assert status == 0, err
    assert notify.recv(4096).decode() == "STOPPING=1"
    notify.close()


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_ready_file_path_that_cannot_be_used_is_one_line_status_2(tmp_path: Path, where: str) -> None:
    path = tmp_path / "no" / "ready" if where == "missing folder" else tmp_path
    proc = subprocess.run([*CLI, "serve", "--socket", str(tmp_path / "s.sock"), "--ready-file", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "--ready-file" in proc.stderr
    assert tmp_path.is_dir() and not (tmp_path / "s.sock").exists()


def test_a_file_at_the_ready_path_that_no_server_wrote_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ready-file notes.txt`` overwrote the user's file when the server listened and deleted
    it when the server stopped; only a ready file (or an empty one) is taken for a stale one."""
    import ffaccel.transports.server as server
    from ffaccel.cli.errors import Exit
    from ffaccel.cli.main import main

    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("served although the path is someone's file"))
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes\n")
    assert main(["serve", "--socket", str(tmp_path / "s.sock"), "--ready-file", str(mine)]) == Exit.USAGE
    err = capsys.readouterr().err
    assert "not a ready file" in err and str(mine) in err
    assert mine.read_text() == "my notes\n" and not (tmp_path / "s.sock").exists()


# -- the client waits, for a bounded time ----------------------------------------------------------


def test_retry_until_ready_retries_only_not_yet_and_only_until_the_deadline() -> None:
    calls = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError
        return "up"

    assert retry_until_ready(attempt, 60.0) == "up" and len(calls) == 3
    calls.clear()
    with pytest.raises(ConnectionRefusedError):
        retry_until_ready(attempt, 0.0)  # no wait: one attempt
    assert len(calls) == 1

    def denied() -> None:
        calls.append(1)
        raise PermissionError

    calls.clear()
    with pytest.raises(PermissionError):
        retry_until_ready(denied, 60.0)  # not "not yet": never retried
    assert len(calls) == 1


@pytest.fixture
def later_server(tmp_path: Path) -> Iterator[tuple[str, threading.Event]]:
    """A socket path whose server starts when the test sets the event (in this process)."""
    path = str(tmp_path / "late.sock")
    go = threading.Event()
    box: list[Server] = []

    def run() -> None:
        if go.wait(60):
            srv = Server(CpuDriver(), path)
            box.append(srv)
            srv.serve_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield path, go
    go.set()
    wait_until(lambda: box, bool, START_S, "the late server started")
    box[0].shutdown()
    thread.join(30)


@pytest.mark.parametrize("how", ["keyword", "name", "environment"])
def test_open_waits_for_a_server_that_starts_later(later_server: tuple[str, threading.Event], how: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path, go = later_server
    name, kw = f"unix:{path}", {}
    if how == "keyword":
        kw = {"wait_s": 120}
    elif how == "name":
        name += "?transport=ring&wait_s=120"
    else:
        monkeypatch.setenv(CONNECT_TIMEOUT_ENV, "120")
    from ffaccel.transports.socket import SocketTransport

    tried = threading.Event()  # set when an attempt found no server: the wait is really exercised
    connect = SocketTransport._connect

    def connect_seen(self: SocketTransport, where: str) -> object:
        try:
            return connect(self, where)
        except OSError:
            tried.set()
            raise

    monkeypatch.setattr(SocketTransport, "_connect", connect_seen)
    got: list[object] = []

    def opener() -> None:
        try:
            got.append(ffaccel.open(name, **kw))
        except Exception as e:  # noqa: BLE001 - handed to the test thread
            got.append(e)

    thread = threading.Thread(target=opener)
    thread.start()
    assert tried.wait(60), "the opener never tried"
    go.set()
    thread.join(150)
    (dev,) = got
    assert isinstance(dev, ffaccel.Device), dev
    assert dev.info().name == "cpu"
    dev.close()


def test_without_a_wait_an_absent_server_fails_at_once_and_says_how_to_wait(tmp_path: Path) -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(f"unix:{tmp_path}/none.sock")
    assert e.value.code == ErrorCode.DEVICE_LOST
    assert "wait_s" in e.value.message and CONNECT_TIMEOUT_ENV in e.value.message


def test_a_bounded_wait_ends_with_device_lost(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))  # bound, never listening: ECONNREFUSED
    try:
        with pytest.raises(FFAccelError) as e:
            ffaccel.open(f"unix:{tmp_path}/stale.sock", wait_s=0.2)
        assert e.value.code == ErrorCode.DEVICE_LOST and "wait_s=0.2" in e.value.message
    finally:
        stale.close()


@pytest.mark.parametrize("transport", ["", "?transport=ring"])
def test_a_path_that_is_not_a_socket_is_refused_not_waited_for(tmp_path: Path, transport: str) -> None:
    """connect(2) answers a regular file or a folder with ECONNREFUSED, which was read as "a server
    not listening yet": DEVICE_LOST "Connection refused", after waiting out the whole wait."""
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    for name, kind in (("file", "a regular file"), ("folder", "a folder")):
        with pytest.raises(FFAccelError) as e:
            ffaccel.open(f"unix:{tmp_path / name}{transport}", wait_s=5)
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "name"), e.value
        assert f"is {kind}, not a socket" in e.value.message


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "1e300"])
def test_a_bad_wait_is_refused_naming_where_it_came_from(value: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONNECT_TIMEOUT_ENV, value)
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(f"unix:{tmp_path}/none.sock")
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, CONNECT_TIMEOUT_ENV)
    monkeypatch.delenv(CONNECT_TIMEOUT_ENV)
    with pytest.raises(FFAccelError) as e:
        ffaccel.open(f"unix:{tmp_path}/none.sock?wait_s={value}")
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "wait_s")


def test_a_refused_dask_port_fails_before_dask_is_even_imported() -> None:
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        code = ("import sys, ffaccel\n"
                "try:\n"
                f"    ffaccel.open('dask://127.0.0.1:{port}')\n"
                "except ffaccel.FFAccelError as e:\n"
                "    print(e.code.name, e.param)\n"
                "assert 'distributed' not in sys.modules, 'Dask was imported: its client retries for 30 s'\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DEVICE_LOST", "address"]


# -- the README's example, run as one script ---------------------------------------------------------


def _readme_serve_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- serve-example -->\s*```bash\n(.*?)```", text, re.S)
    assert found, "README.md has no serve example marked <!-- serve-example -->"
    return found.group(1)


def test_the_readmes_serve_then_use_example_works_as_one_script(tmp_path: Path) -> None:
    """The example, verbatim, with ``ffaccel`` and ``python`` being this checkout's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, command in (("ffaccel", f"{sys.executable} -m ffaccel.cli"), ("python", sys.executable)):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        shim.chmod(0o755)
    script = tmp_path / "example.sh"
    script.write_text("set -eu\n" + _readme_serve_example())
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    env.pop("FFACCEL_DEVICE", None)
    env.pop(CONNECT_TIMEOUT_ENV, None)
    # its own session: whatever the script leaves behind (a server, if a step failed) is ended here
    # (output to a file, not a pipe: a server left running must not keep the test waiting for EOF)
    log = tmp_path / "out.txt"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(["bash", str(script)], stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
                                start_new_session=True)
        try:
            proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out
    assert "[[3. 3.]" in out  # the product the example prints
    assert "GEMMs" in out  # and ffaccel stats's table
