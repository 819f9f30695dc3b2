"""``ffaccel build-c``: headers and libraries where the issue says, and a clear answer without a compiler."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_util import compiler  # tests/ is on pytest's pythonpath (pyproject.toml)

from ffaccel.cli.errors import Exit
from ffaccel.cli.main import main
from ffaccel.transports import cheader


def test_build_c_writes_headers_and_libraries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    compiler()
    assert main(["build-c", "--out", str(tmp_path / "out")]) == 0
    inc, lib = tmp_path / "out" / "include", tmp_path / "out" / "lib"
    assert sorted(p.name for p in inc.iterdir()) == ["cblas.h", "ffaccel.h", "ffaccel_uapi.h"]
    assert sorted(p.name for p in lib.iterdir()) == ["libblas.so.3", "libffaccel.so", "libffaccel_blas.so",
                                                     "libffaccel_cblas.so"]
    assert (lib / "libblas.so.3").resolve() == (lib / "libffaccel_blas.so").resolve()
    assert (inc / "ffaccel_uapi.h").read_text() == cheader.render()
    out = capsys.readouterr().out
    assert "libffaccel_cblas.so" in out and "LD_PRELOAD=" in out


def test_no_compiler_is_said_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc or clang here
    assert main(["build-c", "--out", str(tmp_path / "out")]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "no C compiler found" in err and "apt-get install gcc" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_cc_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-c", "--out", str(tmp_path / "out"), "--cc", str(tmp_path / "nocc")]) == Exit.USAGE
    err = " ".join(capsys.readouterr().err.split())
    assert f"C compiler '{tmp_path / 'nocc'}' not found" in err
    assert not (tmp_path / "out").exists()


def test_a_failed_build_leaves_nothing_it_made(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A compiler that fails (``false``) ends the build with exit 2; the folders it made are gone, and
    in a folder that existed only what was there before remains (it left include/ and the headers)."""
    for out in (tmp_path / "new" / "out", tmp_path / "mine"):
        if out.name == "mine":
            (out / "include").mkdir(parents=True)
            (out / "include" / "own.h").write_text("/* the user's */")
        assert main(["build-c", "--out", str(out), "--cc", "false"]) == Exit.USAGE
        assert "false failed" in capsys.readouterr().err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "mine", "mine/include", "mine/include/own.h"]
