"""benchmarks/gpu_check.sh's logic, run against torch:cpu with a tiny budget.

The script is meant for a CUDA machine (10 minutes); here its device override and a budget of
a few seconds check what does not need a GPU: the folder and summary it writes, that a step
out of budget is recorded (not fatal) and the exit status says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STEPS = ("env", "info", "conformance-quick", "report-quick", "offload", "conformance-full", "report")


def test_gpu_check_records_every_step_within_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "check"
    # The test lasts about the budget (the step it cuts short runs until the budget is spent):
    # 25 s leaves the env step (Python, torch, ffaccel: a few seconds, 15 s on a busy machine) its time.
    env = dict(os.environ, FFACCEL_GPU_CHECK_DEVICE="torch:cpu", FFACCEL_GPU_CHECK_BUDGET_S="25",
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    summary = (out / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| step")}
    assert set(rows) == set(STEPS), summary
    assert rows["env"] == "0", (out / "env.log").read_text()
    assert "cuda available" in (out / "env.log").read_text()
    if rows["info"] == "0":
        assert "kernels" in json.loads((out / "info.json").read_text())
    # 25 s cannot hold the full conformance, the report and the models: some step is cut short
    # or skipped, recorded as 124, and the exit status reports the failure
    assert any(rc == "124" for rc in rows.values()) and proc.returncode == 1, summary
    assert "SOME STEPS FAILED" in summary


def test_gpu_check_stops_early_without_the_device(tmp_path: Path) -> None:
    out = tmp_path / "check"
    env = dict(os.environ, FFACCEL_GPU_CHECK_DEVICE="torch:cuda", PYTHON=sys.executable,
               CUDA_VISIBLE_DEVICES="")  # no GPU visible, whatever the machine has
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "PyTorch sees no CUDA device" in (out / "env.log").read_text()
    assert "stopped: the environment check failed" in (out / "summary.md").read_text()
