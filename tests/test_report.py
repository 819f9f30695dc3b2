"""`ffaccel report`'s pieces, on tiny sizes: the JSON schema, that every path it claims was
measured really was, and that the HTML embeds real images."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from ffaccel.bench.timing import measure
from ffaccel.bench.workload import BlockShape
from ffaccel.cli.main import main
from ffaccel.report import ReportConfig, run_report, write_outputs
from ffaccel.spec import GEMM_COMBOS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny(out: Path, with_server: bool = False) -> ReportConfig:
    return ReportConfig(devices=["cpu"], quick=True, out=out, dispatch_sizes=(4, 8), dispatch_batches=(1, 4),
                        throughput_sizes=(8, 16), workload_shape=BlockShape(batch=1, seq=8, d_model=16, heads=2,
                                                                            d_ff=32),
                        with_server=with_server, rounds=2)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    res = run_report(_tiny(out))
    write_outputs(res, out)
    res["_out"] = out
    return res


def test_schema(results: dict) -> None:
    for key in ("schema_version", "date", "spec_version", "machine", "devices", "conformance", "dispatch", "peak",
                "throughput", "workload", "seconds"):
        assert key in results, key
    m = results["machine"]
    assert m["cores"] >= 1 and m["cpu"] and "numpy" in m["versions"]
    assert results["peak"]["gflops"] > 0 and "best of" in results["peak"]["method"]
    assert results["conformance"][0]["passed"] is True


def test_every_claimed_path_was_measured(results: dict) -> None:
    pts = results["dispatch"]["points"]
    for path in results["dispatch"]["paths"]:
        for size in (4, 8):
            got = {(p["method"], p["batch"]) for p in pts if p["path"] == path and p["size"] == size}
            assert {("matmul", 1), ("submit", 1), ("submit", 4)} <= got, (path, size, got)
            assert all(p["per_op_s"] > 0 and p["samples"] >= 2 for p in pts if p["path"] == path)
    assert {p["path"] for p in pts} >= {"numpy", *results["dispatch"]["paths"]}


def test_throughput_covers_every_combination(results: dict) -> None:
    combos = {p["combo"] for p in results["throughput"] if p["who"] == "ffaccel cpu"}
    assert combos == {c.name for c in GEMM_COMBOS}
    assert all(p["gflops"] > 0 for p in results["throughput"])


def test_workload_matches_numpy(results: dict) -> None:
    w = results["workload"][0]
    assert w["max_abs_err_ffaccel"] <= 1e-4 * max(1.0, w["output_scale"])
    assert w["ffaccel_s"] > 0 and w["numpy_s"] > 0


def test_html_embeds_the_plots_and_files_exist(results: dict) -> None:
    out: Path = results["_out"]
    doc = (out / "report.html").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', doc)
    saved = json.loads((out / "results.json").read_text())
    assert len(imgs) == len(saved["plots"]) == 3
    for data, name in zip(imgs, saved["plots"]):
        raw = base64.b64decode(data)
        assert raw.startswith(PNG_MAGIC)
        assert (out / name).read_bytes() == raw


def test_measure_interleaves_and_reports_every_candidate() -> None:
    calls: list[str] = []
    t = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1,
                min_sample_s=0.0)
    assert set(t) == {"a", "b"} and all(len(x.samples_s) == 3 for x in t.values())
    assert calls[:2] == ["a", "a"] or "b" in calls[:4]  # both ran early: warm-ups, then rotating rounds


def test_measure_of_nothing_is_nothing() -> None:
    # the PyTorch baselines are an empty set where PyTorch is not installed
    assert measure({}) == {}


def test_report_runs_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.bench.dispatch as dispatch
    import ffaccel.bench.throughput as throughput
    import ffaccel.report.run as run_mod

    monkeypatch.setattr(dispatch, "torch_candidates", lambda n: {})
    monkeypatch.setattr(throughput, "_torch_candidate", lambda combo, a, b: None)
    monkeypatch.setattr(run_mod, "torch_skipped", lambda: "PyTorch is not installed (forced by the test)")
    res = run_report(_tiny(tmp_path))
    assert not any(p["path"] == "torch" for p in res["dispatch"]["points"])
    assert not any(p["who"] == "torch" for p in res["throughput"])
    # said, not silently missing: in results.json and in the HTML
    assert [x["why"] for x in res["skipped"]] == ["PyTorch is not installed (forced by the test)"]
    write_outputs(res, tmp_path)
    assert "skipped — PyTorch is not installed (forced by the test)" in (tmp_path / "report.html").read_text()


def test_cli_report_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report.run as run

    tiny = _tiny(tmp_path / "cli")
    monkeypatch.setattr(run, "ReportConfig", lambda **kw: tiny)
    import ffaccel.report as rep

    monkeypatch.setattr(rep, "ReportConfig", lambda **kw: tiny)
    assert main(["report", "--quick", "--out", str(tmp_path / "cli"), "--no-server"]) == 0
    assert (tmp_path / "cli" / "report.html").exists()
