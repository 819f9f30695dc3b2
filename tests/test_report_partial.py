"""`ffaccel report` on a device that declares part of the op set: the cpu driver restricted to what
the seed's NPU does (int8 x int8 -> int32 and bf16 -> f32 (bf16|f32 D) GEMMs, bias and ReLU only,
one COPY). Every section picks from what the device declares and says, in one line, what it could
not run; nothing crashes, and a refusal is never a usage error."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from ffaccel import drivers
from ffaccel.abi.validate import DeviceCaps
from ffaccel.bench.consistency import MEASURED_AGAIN
from ffaccel.bench.workload import BlockShape, plan_block
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.report import ReportConfig, run_report, write_outputs
from ffaccel.spec import GEMM_COMBOS, DType, ErrorCode, FFAccelError, PostOpKind

NPU_LIKE = frozenset(c for c in GEMM_COMBOS if (c.a, c.b) == (DType.I8, DType.I8) or c.a == DType.BF16)


class NpuLikeCpu(CpuDriver):
    """The cpu driver declaring only what the seed's NPU does."""

    name = "npu-like"

    def caps(self) -> DeviceCaps:
        return dataclasses.replace(super().caps(), combos=NPU_LIKE,
                                   post_ops=frozenset({PostOpKind.BIAS_N, PostOpKind.BIAS_M, PostOpKind.RELU}),
                                   copies=frozenset({(DType.BF16, DType.BF16)}))


@pytest.fixture
def npu_like(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register the restricted driver as ``npu-like`` for this test (the registry's own lookup)."""
    real = drivers.load_driver_class
    monkeypatch.setattr(drivers, "load_driver_class", lambda name: NpuLikeCpu if name == "npu-like" else real(name))
    return "npu-like"


def _tiny(out: Path, device: str) -> ReportConfig:
    return ReportConfig(devices=[device], quick=True, out=out, dispatch_sizes=(4, 8), dispatch_batches=(1, 4),
                        throughput_sizes=(8, 16), workload_shape=BlockShape(batch=1, seq=8, d_model=16, heads=2,
                                                                            d_ff=32),
                        with_server=False, rounds=2)


def test_report_on_a_partial_device_runs_every_section_on_what_it_declares(
        npu_like: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import ffaccel.report.run as run_mod
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import print_report

    # conformance is not what this test is about (its own suite judges partial devices)
    monkeypatch.setattr(run_mod, "check_device", lambda name, level: __import__("types").SimpleNamespace(
        passed=True, results=[None], failures=[], seconds=0.0, to_json=lambda: json.dumps({"summary": []})))
    res = run_report(_tiny(tmp_path, npu_like))
    # dispatch: the device's own GEMM, not f32
    mine = [p for p in res["dispatch"]["points"] if p["path"] == "npu-like in-process"]
    assert mine and {p["combo"] for p in mine} == {"bf16xbf16->f32->f32"}
    assert {(p["method"], p["batch"]) for p in mine} >= {("matmul", 1), ("submit", 1), ("submit", 4)}
    # throughput: the declared combinations only, the rest said in one line
    assert {p["combo"] for p in res["throughput"]} == {c.name for c in NPU_LIKE}
    lines = [u for u in res["unserved"] if u["section"] == "throughput"]
    assert len(lines) == 1 and "f32xf32->f32->f32" in lines[0]["why"] and "\n" not in lines[0]["why"]
    # workload: bf16 GEMMs, the post-ops it lacks on the host, accurate to bf16
    w = res["workload"][0]
    assert w["combo"] == "bf16xbf16->f32->f32" and w["host_post_ops"] == ["add(E)", "gelu(approximate='none')"]
    assert w["max_abs_err_ffaccel"] <= 0.05 * max(1.0, w["output_scale"])
    assert w["breakdown"]["ffaccel"]["parts_s"]["host epilogue"] > 0
    # the overhead table answers for the device's own paths
    assert {r["path"] for r in res["overhead"]["rows"]} == {"npu-like in-process"}
    write_outputs(res, tmp_path)
    doc = (tmp_path / "report.html").read_text()
    assert "throughput on npu-like: not run — it does not declare" in doc
    assert "bf16xbf16-&gt;f32-&gt;f32 GEMMs; on the host: add(E), gelu" in doc
    print_report(json.loads((tmp_path / "results.json").read_text()), _Console(width=400))
    out = capsys.readouterr().out
    assert re.search(r"throughput on npu-like: not run — it does not declare [^\n]*f32xf32->f32->f32", out)


def test_a_section_the_device_cannot_serve_says_why() -> None:
    int8_only = DeviceCaps(combos=frozenset(c for c in GEMM_COMBOS if c.is_int))
    plan, why = plan_block(int8_only)
    assert plan is None and "float model" in why and "int8xint8->int32->int32" in why
    from ffaccel.bench.dispatch import dispatch_combo

    class _Dev:
        def __init__(self, caps: DeviceCaps) -> None:
            self.caps = caps

        def info(self):
            return __import__("types").SimpleNamespace(caps=self.caps)

    assert dispatch_combo(_Dev(int8_only)).name == "int8xint8->int32->int32"
    assert dispatch_combo(_Dev(DeviceCaps(combos=frozenset()))) is None


def test_cli_report_on_a_partial_device_is_not_a_usage_error(npu_like: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The real conformance suite on the restricted device, through the command: whatever its verdict
    (0 or 1), the report runs to the end and writes its files; never 2.

    The suite builds every case for the declared set (where a partial device could trip it) and runs
    a few units of it here: a unit that raises is a failed case, not an error of the command, and the
    whole quick level on this declared set is test_conformance_partial.py's."""
    import ffaccel.report as rep
    import ffaccel.report.run as run_mod
    from ffaccel.cli.main import main

    real = run_mod.check_device
    monkeypatch.setattr(run_mod, "check_device", lambda name, level: real(name, level, only=("COPY", "ENGINE")))
    tiny = _tiny(tmp_path / "out", npu_like)
    monkeypatch.setattr(rep, "ReportConfig", lambda **kw: tiny)
    status = main(["report", npu_like, "--quick", "--no-server", "--out", str(tmp_path / "out")])
    assert status in (0, 1), capsys.readouterr().err
    assert (tmp_path / "out" / "report.html").exists() and (tmp_path / "out" / "overhead.png").exists()
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["conformance"][0]["passed"] is (status == 0)


def test_a_device_refusal_is_a_device_error_not_usage() -> None:
    from ffaccel.cli.errors import Exit, status_of

    refusal = FFAccelError(ErrorCode.UNSUPPORTED, "dtypes", "the device does not declare f32xf32->f32->f32")
    assert status_of(refusal) == Exit.DEVICE
    assert status_of(FFAccelError(ErrorCode.INVALID_PARAMETER, "m", "bad")) == Exit.USAGE


def test_the_install_hint_keeps_its_brackets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rich markup must not eat ``[torch]`` in ``pip install 'ffaccel[torch]'`` (the HTML had it right)."""
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import print_summary

    res = {"skipped": [{"what": "PyTorch baselines", "why": "pip install 'ffaccel[torch]' adds the torch.mm "
                                                                 "baselines"}]}
    print_summary(res, _Console(width=300))
    assert "pip install 'ffaccel[torch]' adds" in capsys.readouterr().out


def test_progress_counts_every_planned_step_and_prints_each_section_as_it_ends(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report.run as run_mod
    from ffaccel.report.run import ReportProgress

    monkeypatch.setattr(run_mod, "check_device", lambda name, level: __import__("types").SimpleNamespace(
        passed=True, results=[None], failures=[], seconds=0.0, to_json=lambda: json.dumps({"summary": []})))
    events: list[tuple] = []

    class Recorder(ReportProgress):
        def plan(self, steps: dict[str, int]) -> None:
            events.append(("plan", dict(steps)))

        def section(self, name: str) -> None:
            events.append(("section", name))

        def step(self, what: str) -> None:
            events.append(("step", what))

        def section_done(self, name: str, results: dict) -> None:
            events.append(("done", name, name in results))

    cfg = _tiny(tmp_path, "cpu")
    run_report(cfg, progress=Recorder())
    plan = events[0][1]
    assert events[0][0] == "plan" and plan["dispatch"] == 2 and plan["throughput"] == len(GEMM_COMBOS) * 2
    counted: dict[str, int] = {}
    current = None
    for e in events[1:]:
        if e[0] == "section":
            current = e[1]
        elif e[0] == "step" and MEASURED_AGAIN not in e[1]:
            counted[current] = counted.get(current, 0) + 1
    assert counted == plan  # step i of N: every planned step comes, and no other
    assert [e[1:] for e in events if e[0] == "done"] == [(s, True) for s in
                                                         ("conformance", "dispatch", "throughput", "workload")]


def test_the_terminal_says_each_unserved_line_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # each "not run" line was printed twice live: once as a note when it happened and once by the
    # section's printer above its table (the HTML and results.json had it once)
    import ffaccel.report.run as run_mod
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import TerminalProgress

    results: dict = {"unserved": [], "throughput": []}
    with TerminalProgress(_Console(width=400)) as prog:
        run_mod._unserved(results, "throughput", "npu", "it does not declare f32xf32->f32->f32", prog)
        prog.section_done("throughput", results)
    out = capsys.readouterr().out
    assert out.count("throughput on npu: not run — it does not declare f32xf32->f32->f32") == 1


def test_a_plot_names_what_its_section_did_not_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # a device declaring no GEMM got a dispatch plot of NumPy and PyTorch alone, with nothing
    # saying the device had been left out, nor why; the PNG is read alone (outside the HTML)
    from ffaccel.report import render

    results = {"unserved": [{"section": "dispatch", "device": "copy-engine in-process",
                             "why": "it declares no GEMM dtype combination"},
                            {"section": "throughput", "device": "copy-engine", "why": "it does not declare f32"}],
               "dispatch": {"points": []}}
    texts: list[str] = []
    real_png = render._png
    monkeypatch.setattr(render, "_png", lambda fig: texts.extend(t.get_text() for t in fig.texts) or real_png(fig))
    render.plot_latency(results)
    assert texts == ["dispatch on copy-engine in-process: not run — it declares no GEMM dtype combination"]


def test_the_throughput_plot_gives_each_series_one_colour_and_a_legend_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # on a partial device NumPy has some panels only (int8, not bf16): each panel's own colour
    # cycle gave torch in one panel the colour the legend (from the first panel) gave another
    # series, and NumPy had no legend entry
    from ffaccel.report import render

    def pt(combo: str, who: str, size: int) -> dict:
        return {"combo": combo, "who": who, "size": size, "gflops": 1.0 + size / 64}

    results = {"unserved": [], "peak": {"gflops": 10.0},
               "throughput": [pt(c, w, n) for n in (64, 128) for c, whos in
                              (("bf16xbf16->f32->f32", ("ffaccel npu", "torch")),
                               ("int8xint8->int32->int32", ("ffaccel npu", "numpy", "torch"))) for w in whos]}
    figs: list = []
    real_png = render._png
    monkeypatch.setattr(render, "_png", lambda fig: figs.append(fig) or real_png(fig))
    render.plot_throughput(results)
    colours: dict[str, set] = {}
    for ax in figs[0].axes:
        for line in ax.get_lines():
            if not line.get_label().startswith("_") and "peak" not in line.get_label() and "best" not in line.get_label():
                colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"ffaccel npu", "numpy", "torch"} and all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == 3
    legend = {t.get_text() for lg in figs[0].legends for t in lg.get_texts()}
    assert {"ffaccel npu", "numpy", "torch"} <= legend


def test_a_served_device_is_measured_through_its_server_not_served_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `ffaccel report unix:...` started a server of its own with --driver unix:... (which cannot
    # start: "server: did not start"), labelled the server's path "in-process" and said the socket
    # and ring paths were skipped. The served device stands in here for a server (no process)
    import ffaccel.report.run as run_mod

    launched: list[str] = []
    real_launch, real_open = run_mod.server_launch, run_mod.open_device
    monkeypatch.setattr(run_mod, "server_launch", lambda driver, *a: launched.append(driver) or real_launch(driver, *a))
    monkeypatch.setattr(run_mod, "open_device", lambda name: real_open("restricted:cpu;combos=int8;copies=" if
                                                                       name.startswith("unix:") else name))
    monkeypatch.setattr(run_mod, "check_device", lambda name, level: __import__("types").SimpleNamespace(
        passed=True, results=[None], failures=[], seconds=0.0, to_json=lambda: json.dumps({"summary": []})))
    name = "unix:/nowhere/ffaccel.sock?transport=ring"
    cfg = dataclasses.replace(_tiny(tmp_path, name), with_server=True, dispatch_sizes=(4,), dispatch_batches=(1,),
                              throughput_sizes=(8,))
    res = run_report(cfg)
    assert launched == []
    assert {p["path"] for p in res["dispatch"]["points"]} == {"numpy", "torch", name}
    assert not [s for s in res["skipped"] if "server" in s["what"]]


def test_the_html_of_a_device_without_gemm_has_no_empty_tables(tmp_path: Path) -> None:
    # a copies-only device's report showed the overhead, throughput and workload sections as tables
    # of headers alone, under explanations of figures that were not there
    results = {"schema_version": 3, "date": "2026-01-01T00:00:00+00:00", "spec_version": [1, 0], "quick": True,
               "seconds": 1.0, "machine": {"cpu": "cpu", "cores": 2, "versions": {"ffaccel": "0"}},
               "devices": ["copies"], "skipped": [], "load": {}, "busy_sections": [],
               "unserved": [{"section": s, "device": "copies", "why": "it declares no GEMM dtype combination"}
                            for s in ("dispatch", "throughput", "workload")],
               "conformance": [{"device": "copies", "passed": True, "cases": 1, "failed": 0, "seconds": 0.1}],
               "dispatch": {"paths": [], "points": []}, "overhead": {"rows": [], "presets": [], "share_limit": 0.1},
               "peak": {"gflops": 10.0, "method": "NumPy"}, "throughput": [], "workload": []}
    write_outputs(results, tmp_path, pngs={})
    doc = (tmp_path / "report.html").read_text()
    assert "No device path was measured" in doc and "No combination was measured" in doc
    assert "<th>combination</th>" not in doc and "Where the block's time goes" not in doc
    assert doc.count("not run — it declares no GEMM dtype combination") == 3


def test_a_long_device_name_keeps_its_method_in_the_plot_legend(monkeypatch: pytest.MonkeyPatch) -> None:
    # a restricted or served device's name is long; its legend entries ran off the figure, cutting
    # "matmul", "submit" and "replay" off so that one device's series could not be told apart
    from ffaccel.report import render

    path = "restricted:cpu;combos=int8xint8->int32->int32;post_ops= in-process"
    points = [{"path": path, "method": m, "size": n, "batch": 1, "per_op_s": 1e-5, "combo": "int8xint8->int32->int32"}
              for m in ("matmul", "submit", "replay") for n in (4, 16)]
    figs: list = []
    real_png = render._png
    monkeypatch.setattr(render, "_png", lambda fig: figs.append(fig) or real_png(fig))
    render.plot_latency({"unserved": [], "dispatch": {"points": points}})
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    assert sorted(label.rsplit(None, 1)[1] for label in labels) == ["matmul", "replay", "submit"]
    assert all(len(line) <= render.LEGEND_LINE_CHARS for label in labels for line in label.splitlines())
