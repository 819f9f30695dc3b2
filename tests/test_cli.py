"""The ``ffaccel`` command as a new user meets it: every error is one line on stderr with a
documented exit status, a reader that goes away is not an error, Ctrl-C leaves nothing behind.

Most cases call :func:`main` in this process; the ones about signals, pipes and a second
server need a real process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from server_util import ServerProcess, wait_until

import ffaccel
from ffaccel.cli.errors import EXIT_MEANINGS, Exit
from ffaccel.cli.main import main
from ffaccel.spec import ErrorCode, FFAccelError

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"  # the exit table moved here from the README
CLI = [sys.executable, "-m", "ffaccel.cli"]


def _one_line_error(err: str) -> str:
    """The single stderr line of a failed command (no traceback)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ffaccel"), err
    return lines[0]


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


# -- exit statuses -----------------------------------------------------------------------------


def test_exit_table_is_documented() -> None:
    text = CLI_DOC.read_text(encoding="utf-8")
    table = text[text.index("## Exit status"):]
    for status in Exit:
        assert re.search(rf"^\| {int(status)} \|", table, re.M), f"exit status {int(status)} missing from docs/cli.md"
    assert set(EXIT_MEANINGS) == set(Exit)


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--no-such-option"]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert "--no-such-option" in line and "--help" in line


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == Exit.OK
    out = capsys.readouterr().out
    # the time it states is the one docs/report.md measured, with the load it was measured at
    assert "about two minutes" not in out and "15-30 s" not in out
    text = " ".join(out.split())  # argparse wraps lines to the terminal's width
    assert "load ~2" in text and "docs/report.md" in text


def test_unknown_device_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "nope"]) == Exit.USAGE
    assert "nope" in _one_line_error(capsys.readouterr().err)


def test_device_error_is_status_3(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # nothing listens there: the device is unreachable (DEVICE_LOST), not a malformed name
    assert main(["info", f"unix:{tmp_path / 'nobody.sock'}"]) == Exit.DEVICE
    assert "DEVICE_LOST" in _one_line_error(capsys.readouterr().err)


def test_a_bug_is_status_4_on_one_line_and_debug_shows_the_traceback(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.cli.main as cli

    def broken(*_: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_info", broken)
    monkeypatch.delenv("FFACCEL_DEBUG", raising=False)
    assert main(["info"]) == Exit.INTERNAL
    line = _one_line_error(capsys.readouterr().err)
    assert "boom" in line and "--debug" in line
    for argv in (["--debug", "info"], ["info", "--debug"]):
        assert main(argv) == Exit.INTERNAL
        err = capsys.readouterr().err
        assert "Traceback" in err and "RuntimeError: boom" in err
        assert err.splitlines()[-1].startswith("ffaccel: error:")


# -- ffaccel serve -----------------------------------------------------------------------------


def test_serve_unknown_driver(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--driver", "nope"]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert "'nope'" in line and "cpu" in line  # what is wrong, and what is installed


def test_serve_socket_in_a_missing_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "x.sock"
    assert main(["serve", "--socket", str(path)]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert str(path) in line and "does not exist" in line


def test_a_second_server_on_the_same_socket(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path)
    try:
        r = _run("serve", "--socket", first.path, timeout=60)
        assert r.returncode == Exit.USAGE, r  # the socket path is taken: choose another
        assert first.path in _one_line_error(r.stderr)
        first.open().close()  # the first server still serves
    finally:
        first.stop()


def test_server_oserrors_become_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    """Whatever the server raises (it owns the checks) becomes one line: path errors 2, the rest 3."""
    import ffaccel.transports.server as server

    sock = str(tmp_path / "s.sock")
    for exc, status in ((OSError("the server's socket could not be set up"), Exit.DEVICE),
                        (PermissionError(13, "Permission denied", sock), Exit.USAGE),
                        (FileExistsError(17, "File exists", sock), Exit.USAGE),
                        (OSError(36, "File name too long", sock), Exit.USAGE),  # ENAMETOOLONG: the path itself
                        (OSError(40, "Too many levels of symbolic links", sock), Exit.USAGE)):  # ELOOP
        def fail(*_: object, exc: BaseException = exc, **__: object) -> int:
            raise exc

        monkeypatch.setattr(server, "serve", fail)
        assert main(["serve", "--socket", sock]) == status
        line = _one_line_error(capsys.readouterr().err)
        assert sock in line


# -- output paths are checked before a run ---------------------------------------------------------


@pytest.mark.parametrize("argv", [["report", "--out", ""], ["conformance", "ref", "--report", ""],
                                  ["serve", "--socket", ""], ["serve", "--ready-file", " "],
                                  ["build-c", "--out", ""], ["build-c", "--out", "x", "--cc", ""]])
def test_an_empty_path_is_refused_not_read_as_a_default(argv: list[str], capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--out "$DIR"`` with DIR unset: Path("") is the current folder, and ``--socket ""`` was the
    default socket, ``--report ""`` no report at all; each is refused at parse time, naming the option."""
    import ffaccel.conformance as conformance
    import ffaccel.report as rep
    import ffaccel.transports.server as server
    from ffaccel.cli import build_c

    for module, name in ((rep, "run_report"), (conformance, "check_device"), (server, "serve"),
                         (build_c, "build_c")):  # nothing runs (without the check, each would)
        monkeypatch.setattr(module, name, _never)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert f"argument {next(a for a in reversed(argv) if a.startswith('--'))}: an empty value" in line
    assert list(tmp_path.iterdir()) == []


def _never(*_: object, **__: object) -> None:
    raise AssertionError("the run started although its output cannot be written")


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_report_out_unwritable_fails_before_running(where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report as rep

    monkeypatch.setattr(rep, "run_report", _never)
    if where == "proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc on this system")
        out = "/proc/x"
    else:
        (tmp_path / "file").write_text("")
        out = str(tmp_path / "file" / "x")
    assert main(["report", "--quick", "--out", out]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert out in line and "--out" in line


def test_conformance_report_unwritable_is_not_a_conformance_failure(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ffaccel.conformance as conformance

    monkeypatch.setattr(conformance, "check_device", _never)
    (tmp_path / "file").write_text("")
    target = str(tmp_path / "file" / "x.json")
    assert main(["conformance", "cpu", "--report", target]) == Exit.USAGE  # not 1, a FAIL's status
    assert "--report" in _one_line_error(capsys.readouterr().err)


def test_conformance_report_on_proc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc on this system")
    import ffaccel.conformance as conformance

    monkeypatch.setattr(conformance, "check_device", _never)
    assert main(["conformance", "cpu", "--report", "/proc/nope/x"]) == Exit.USAGE
    assert "/proc/nope/x" in _one_line_error(capsys.readouterr().err)


# -- interrupted runs leave nothing behind ---------------------------------------------------------


def test_interrupted_report_removes_its_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report as rep

    out = tmp_path / "new" / "report"

    def interrupted(cfg: object, log: object = None) -> None:
        assert out.is_dir()  # checked (and made) before the run
        raise KeyboardInterrupt

    monkeypatch.setattr(rep, "run_report", interrupted)
    assert main(["report", "--quick", "--out", str(out)]) == Exit.INTERRUPTED
    assert capsys.readouterr().err == "ffaccel: interrupted\n"
    assert not (tmp_path / "new").exists()  # every folder the run made is gone


def test_interrupted_report_keeps_an_existing_folder_and_its_files(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report as rep

    (tmp_path / "mine.txt").write_text("keep")
    (tmp_path / "results.json").write_text("{}")  # a previous run's

    def interrupted(cfg: object, log: object = None) -> None:
        (tmp_path / "report.html").write_text("half")  # as if the run had written it
        raise KeyboardInterrupt

    monkeypatch.setattr(rep, "run_report", interrupted)
    assert main(["report", "--quick", "--out", str(tmp_path)]) == Exit.INTERRUPTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "results.json"]


@pytest.mark.parametrize("sig,status,line", [(signal.SIGINT, Exit.INTERRUPTED, "ffaccel: interrupted\n"),
                                             (signal.SIGTERM, Exit.TERMINATED, "ffaccel: terminated\n")],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_in_report_is_one_line_and_cleans_up(sig: int, status: Exit, line: str, tmp_path: Path) -> None:
    """A real signal while the report runs: its status, one line, its output folder removed."""
    out = tmp_path / "out"
    # the child starts with SIGINT at its default, as from a terminal: a suite launched in the
    # background of a non-interactive shell inherits SIGINT ignored, and Python keeps it so
    proc = subprocess.Popen([*CLI, "report", "--quick", "--no-server", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(out.exists, bool, 60, "the report's output folder is made before the run")
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert err == line
    assert not out.exists()


def test_the_reports_server_and_temporary_folder_are_gone_afterwards(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from ffaccel.report.run import server_paths

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pids: set[int] = set()
    # a normal run
    with server_paths("cpu", lambda s: None, pids) as opened:
        assert [label for label, _ in opened] == ["socket", "ring"]
        assert len(pids) == 1
    assert list(tmp_path.iterdir()) == [] and pids == set()
    # an interrupted one
    with pytest.raises(KeyboardInterrupt), server_paths("cpu", lambda s: None, pids) as opened:
        (pid,) = pids
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [] and pids == set()
    with pytest.raises(ProcessLookupError):  # the server was stopped and reaped
        os.kill(pid, 0)


# -- a reader that goes away is not an error ---------------------------------------------------------


@pytest.mark.parametrize("args", [["info"], ["info", "--json"], ["--help"]])
def test_broken_pipe_exits_0(args: list[str]) -> None:
    """``ffaccel info | head -1``: the reader has gone before the first write (forced: its end is closed)."""
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([*CLI, *args], stdout=w, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_info_piped_into_head(tmp_path: Path) -> None:
    r = subprocess.run(f"{sys.executable} -m ffaccel.cli info | head -1; echo \"status=${{PIPESTATUS[0]}}\"",
                       shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines()[-1] == "status=0", r
    assert r.stdout.startswith("ffaccel ")


# -- messages that said the wrong thing ------------------------------------------------------------


def test_ffaccel_device_garbage_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FFACCEL_DEVICE", "garbage")
    with pytest.raises(FFAccelError) as e:
        ffaccel.open()
    assert e.value.code == ErrorCode.INVALID_PARAMETER and e.value.param == "FFACCEL_DEVICE"
    assert "FFACCEL_DEVICE='garbage'" in str(e.value) and "cpu" in str(e.value)
    assert main(["info"]) == Exit.USAGE
    assert "FFACCEL_DEVICE" in _one_line_error(capsys.readouterr().err)


def test_an_explicit_name_is_not_blamed_on_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FFACCEL_DEVICE", "cpu")
    with pytest.raises(FFAccelError) as e:
        ffaccel.open("garbage")
    assert e.value.param == "name"


def test_cpu_with_a_thread_count() -> None:
    with pytest.raises(FFAccelError) as e:
        ffaccel.open("cpu:0")
    assert e.value.code == ErrorCode.INVALID_PARAMETER and e.value.param == "name"
    assert "cpu:N" in e.value.message and "not supported between" not in e.value.message
    with pytest.raises(FFAccelError):
        ffaccel.open("cpu:two")
    dev = ffaccel.open("cpu:1")
    try:
        assert dev._transport.driver.threads == 1  # noqa: SLF001 - the option reached the driver
    finally:
        dev.close()


def test_dask_without_an_address_says_how_to_write_one(capsys: pytest.CaptureFixture[str]) -> None:
    if "dask" not in ffaccel.devices():
        pytest.skip("the dask driver is not installed (pip install 'ffaccel[dask]')")
    assert main(["info", "dask"]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert "scheduler" in line and "dask://HOST:PORT" in line
    assert "must be one ffaccel.devices() lists" not in line


def test_tune_measures_and_caches_this_machines_crossovers(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``ffaccel tune``: --dry-run prints the crossovers and writes nothing; without it the cache
    file appears where FFACCEL_CACHE_DIR says and the cpu driver's table reads it (a short
    ladder of sizes keeps the test fast)."""
    from ffaccel.drivers import cpu as cpu_mod
    from ffaccel.drivers import cpu_tune

    monkeypatch.setattr(cpu_tune, "LADDER", (16, 24))
    monkeypatch.setattr(cpu_tune, "SKINNY", ((1, 16, 16),))
    monkeypatch.setattr(cpu_tune, "ALTERNATE_N", 32)
    monkeypatch.setattr(cpu_tune, "SHAPES", ((1, 32, 4, 16),))
    monkeypatch.setenv("FFACCEL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("FFACCEL_CPU_TUNED", raising=False)
    assert main(["tune", "--dry-run", "--seconds", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "not saved" in out and "onednn_bare_min_mnk" in out and not list(tmp_path.iterdir())
    try:
        assert main(["tune", "--seconds", "0.1"]) == 0
        saved = list(tmp_path.glob("cpu-kernels-*.json"))
        assert len(saved) == 1 and str(saved[0]) in capsys.readouterr().out
        assert cpu_mod.CpuDriver().kernel_table().crossovers.source == str(saved[0])
    finally:
        cpu_mod.forget_crossovers()  # later tests read the defaults again


@pytest.mark.parametrize("seconds", ["nan", "inf", "-1", "0", "1e300"])
def test_tune_refuses_a_budget_that_is_no_number_of_seconds(seconds: str, capsys: pytest.CaptureFixture[str]) -> None:
    """nan or inf would measure forever: one line, the usage status, nothing measured."""
    assert main(["tune", "--dry-run", "--seconds", seconds]) == Exit.USAGE
    line = _one_line_error(capsys.readouterr().err)
    assert "--seconds" in line and "[0.01, 600]" in line


def test_info_says_none_where_a_partial_device_declares_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    # a device without COPY conversions or post-ops printed "COPY conversions: " with nothing after it
    assert main(["info", "restricted:cpu;combos=int8;post_ops=;copies="]) == 0
    out = capsys.readouterr().out
    assert "COPY conversions: none" in out and "epilogue post-ops: none" in out
