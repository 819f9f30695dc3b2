"""Every ``FFACCEL_*`` variable the package reads, set to garbage: an FFAccelError naming the
variable (the CLI's one line, exit 2), never an int() ValueError ("internal error", exit 4) and
never a value read as "not 0" that silently does the opposite of what was meant. The last test
keeps the table complete: a variable added to the code without a row here fails it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

import ffaccel
from ffaccel.drivers import cpu as cpu_mod
from ffaccel.drivers import onednn
from ffaccel.runtime import device as runtime_device
from ffaccel.spec import ErrorCode, FFAccelError


@pytest.fixture(autouse=True)
def _fresh_tables() -> object:
    """Kernel tables and the oneDNN library are memoised per process: forgotten around each case."""
    cpu_mod.forget_crossovers()
    onednn.library.cache_clear()
    yield
    cpu_mod.forget_crossovers()
    onednn.library.cache_clear()


def _open_cpu() -> None:
    ffaccel.open("cpu")


def _cpu_table() -> None:  # the variables read when the kernel table is built (at the first GEMM)
    cpu_mod.CpuDriver(kernels="auto").kernel_table()


def _forced_onednn() -> None:
    cpu_mod.CpuDriver(kernels="f32=onednn")


def _torch_cpu() -> None:
    pytest.importorskip("torch")
    ffaccel.open("torch:cpu")


def _unix() -> None:
    ffaccel.open("unix:/nonexistent/ffaccel.sock")


#: (variable, garbage values, what reads it)
CASES: list[tuple[str, tuple[str, ...], Callable[[], None]]] = [
    ("FFACCEL_DEVICE", ("nope", "cpu;x", "cpu:0"), lambda: ffaccel.matmul(*[__import__("numpy").ones((2, 2))] * 2)),
    ("FFACCEL_CPU_THREADS", ("abc", "0", "-2", "1.5"), _open_cpu),
    ("FFACCEL_CPU_KERNELS", ("garbage", "f32=nope"), _open_cpu),
    ("FFACCEL_CPU_TUNED", ("false", "no", "2"), _cpu_table),
    ("FFACCEL_ONEDNN", ("false", "off"), _cpu_table),
    ("FFACCEL_ONEDNN_LIB", ("/nonexistent/libdnnl.so.3", "/etc/hostname"), _cpu_table),
    ("FFACCEL_TORCH_NATIVE", ("garbage", "int8,zz"), _torch_cpu),
    ("FFACCEL_CONNECT_TIMEOUT", ("abc", "-1", "nan", "1e999"), _unix),
]
#: Read as given, documented so (a path, or the CLI's "anything but empty or 0" debug switch):
#: no value is garbage.
FREE_FORM = {"FFACCEL_SOCKET", "FFACCEL_CACHE_DIR", "FFACCEL_DEBUG"}


@pytest.mark.parametrize("name,value,action", [(n, v, a) for n, vs, a in CASES for v in vs],
                         ids=[f"{n}={v}" for n, vs, _ in CASES for v in vs])
def test_garbage_in_a_variable_is_an_error_naming_it(name: str, value: str, action: Callable[[], None],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if name == "FFACCEL_ONEDNN" or name == "FFACCEL_ONEDNN_LIB":
        monkeypatch.delenv("FFACCEL_CPU_KERNELS", raising=False)
    monkeypatch.setenv(name, value)
    # the implicit device is resolved from $FFACCEL_DEVICE once per process and kept (runtime):
    # a test before this one may have resolved it already
    monkeypatch.setattr(runtime_device, "implicit_device", None)
    with pytest.raises(FFAccelError) as e:
        action()
    assert e.value.code == ErrorCode.INVALID_PARAMETER, e.value
    assert name in str(e.value), e.value  # as the parameter, or in the message


def test_onednn_turned_off_is_said_so_when_it_is_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    """FFACCEL_ONEDNN=0 with a forced oneDNN choice: the refusal said "oneDNN is not installed"."""
    monkeypatch.setenv("FFACCEL_ONEDNN", "0")
    with pytest.raises(FFAccelError) as e:
        _forced_onednn()
    assert "FFACCEL_ONEDNN=0" in str(e.value) and "not installed" not in str(e.value)


def test_every_variable_the_package_reads_has_a_row() -> None:
    src = Path(ffaccel.__file__).parent
    read = set()
    for path in src.rglob("*.py"):
        read |= set(re.findall(r"\"(FFACCEL_[A-Z0-9_]+)\"", path.read_text(encoding="utf-8")))
    assert read - FREE_FORM - {n for n, _, _ in CASES} == set()


def test_tune_refuses_an_unwritable_cache_folder_before_measuring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """It measured for the whole budget, then failed to save with "PATH: File exists" (no variable named)."""
    from ffaccel.cli.errors import Exit
    from ffaccel.cli.main import main
    from ffaccel.drivers import cpu_tune

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FFACCEL_CACHE_DIR", str(tmp_path / "file"))
    monkeypatch.setattr(cpu_tune, "tune", lambda *a, **k: pytest.fail("measured although the cache cannot be saved"))
    assert main(["tune", "--seconds", "0.01"]) == Exit.USAGE
    assert "FFACCEL_CACHE_DIR" in capsys.readouterr().err
