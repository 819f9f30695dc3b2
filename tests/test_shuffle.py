"""``--shuffle=SEED`` (tests/conftest.py) really reorders the tests, the same way for the same seed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _collected(folder: Path, *runs: tuple[str, ...]) -> list[list[str]]:
    """The test ids one ``pytest --collect-only`` lists, for each set of extra arguments in ``runs``.

    The collections run side by side (each its own process): most of each is starting pytest."""
    procs = [subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                               "-o", f"pythonpath={folder}", "test_many.py", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=folder,
                              env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})  # start faster
             for args in runs]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (proc.args, out, err)
        outs.append([line for line in out.splitlines() if "::" in line])
    return outs


def test_shuffle_reorders_by_seed(tmp_path: Path) -> None:
    for name in ("conftest.py", "server_util.py"):  # this folder's plugin, in a project of 12 tests
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_many.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(12)))
    plain, one, again, two = _collected(tmp_path, (), *((f"--shuffle={seed}",) for seed in (1, 1, 2)))
    assert len(plain) == 12 and sorted(one) == sorted(plain) == sorted(two)
    assert one == again and one != two and plain not in (one, two)
