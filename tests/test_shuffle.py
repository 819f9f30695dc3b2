"""``--shuffle=SEED`` (tests/conftest.py) really reorders the tests, the same way for the same seed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _collected(folder: Path, *args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-o", f"pythonpath={folder}", "test_many.py", *args],
                         capture_output=True, text=True, check=True, cwd=folder,
                         env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}).stdout  # start faster
    return [line for line in out.splitlines() if "::" in line]


def test_shuffle_reorders_by_seed(tmp_path: Path) -> None:
    for name in ("conftest.py", "server_util.py"):  # this folder's plugin, in a project of 12 tests
        shutil.copy(HERE / name, tmp_path / name)
    (tmp_path / "test_many.py").write_text("".join(f"def test_{i}():\n    pass\n" for i in range(12)))
    plain = _collected(tmp_path)
    one, again, two = (_collected(tmp_path, f"--shuffle={seed}") for seed in (1, 1, 2))
    assert len(plain) == 12 and sorted(one) == sorted(plain) == sorted(two)
    assert one == again and one != two and plain not in (one, two)
