"""docs/drivers.md's minimal driver, as a third party would ship it.

The test takes the guide's ``# file: tinynpu.py`` code block verbatim, installs it the way an
ordinary distribution would be (a module plus a ``*.dist-info`` folder whose entry_points.txt
registers it in the ``ffaccel.drivers`` group) and uses it only through what users run: ``ffaccel
info``, the conformance suite, and ``ffaccel serve`` on the socket and the ring.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from server_util import ServerProcess

import ffaccel
import ffaccel.post
from ffaccel.spec import ErrorCode, FFAccelError

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "drivers.md"
SRC = Path(__file__).resolve().parents[1] / "src"


def guide_driver_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith("# file: tinynpu.py\n")]
    assert len(found) == 1, "docs/drivers.md must hold exactly one '# file: tinynpu.py' block"
    return found[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder on which the guide's driver is an installed distribution."""
    root = tmp_path_factory.mktemp("site")
    (root / "tinynpu.py").write_text(guide_driver_source())
    dist = root / "tinynpu-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinynpu\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text('[ffaccel.drivers]\ntinynpu = tinynpu:TinyNpu\n')
    return root


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SRC)])}


def _python(site: Path, code: str, timeout_s: float = 600) -> str:
    r = subprocess.run([sys.executable, "-c", code], env=_env(site), capture_output=True, text=True,
                       timeout=timeout_s)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_installed_driver_is_listed_with_exactly_what_it_declares(site: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "ffaccel.cli", "info", "tinynpu", "--json"], env=_env(site),
                       capture_output=True, text=True, timeout=120, check=True)
    doc = json.loads(r.stdout)
    assert doc["driver"]["name"] == "tinynpu"
    assert doc["gemm_combos"] == ["int8xint8->int32->int32"]
    assert sorted(doc["copy_conversions"]) == ["int32->int32", "int8->int8"]
    assert doc["post_ops"] == ["relu"]


def test_conformance_on_the_guide_driver(site: Path) -> None:
    out = _python(site, """
import json
from ffaccel.conformance import check_device
r = check_device("tinynpu", "quick")
print(json.dumps({"passed": r.passed, "cases": len(r.results),
                  "gemm_passed": sum(x.passed for x in r.results if x.op == "GEMM" and x.combo.startswith("int8")),
                  "failures": [[x.op, x.name, x.message] for x in r.failures]}))
""")
    got = json.loads(out.strip().splitlines()[-1])
    assert got["gemm_passed"] > 50  # the declared combination went through the GEMM groups and passed
    # a partial device passes the whole suite: what it declares is judged, the rest must be refused
    assert got["passed"], got["failures"][:5]


@pytest.fixture(scope="module")
def tiny_server(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = _env(site)["PYTHONPATH"]  # the server subprocess inherits it
    try:
        srv = ServerProcess(tmp_path_factory.mktemp("tiny"), "--driver", "tinynpu")
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    yield srv
    srv.stop()


@pytest.mark.parametrize("transport", ["socket", "ring"])
def test_the_guide_driver_serves(tiny_server: ServerProcess, transport: str) -> None:
    with tiny_server.open(transport) as dev:
        assert dev.info().name == "tinynpu"
        rng = np.random.default_rng(5)
        a = rng.integers(-128, 128, (5, 40), dtype=np.int8)
        b = rng.integers(-128, 128, (40, 7), dtype=np.int8)
        want = np.maximum(a.astype(np.int32) @ b.astype(np.int32), 0)
        np.testing.assert_array_equal(ffaccel.matmul(a, b, post_ops=ffaccel.post.relu(), device=dev), want)
        for dt in (np.float32, ml_dtypes.bfloat16):
            with pytest.raises(FFAccelError) as e:
                ffaccel.matmul(np.ones((2, 2), dt), np.ones((2, 2), dt), device=dev)
            assert e.value.code == ErrorCode.UNSUPPORTED
        with pytest.raises(FFAccelError) as e:
            ffaccel.matmul(a, b, post_ops=ffaccel.post.gelu(), device=dev)
        assert e.value.code == ErrorCode.UNSUPPORTED
