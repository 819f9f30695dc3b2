"""``ffaccel build-c``: headers and libraries where the issue says, and a clear answer without a compiler."""

from __future__ import annotations

from pathlib import Path

import pytest
from c_util import compiler  # tests/ is on pytest's pythonpath (pyproject.toml)

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
    assert main(["build-c", "--out", str(tmp_path / "out"), "--cc", str(tmp_path / "nocc")]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"C compiler '{tmp_path / 'nocc'}' not found" in err
