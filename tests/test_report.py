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


def _fake_conformance(failures: list | None = None):  # noqa: ANN202
    """check_device's stand-in where conformance is not what a test is about (the real suite, on a
    subset of its units, runs in the module's fixture): a report with 10 cases and ``failures``."""
    import types

    failures = failures or []

    def check(name: str, level: str):  # noqa: ANN202
        return types.SimpleNamespace(passed=not failures, results=[None] * 10, failures=failures, seconds=0.01,
                                     to_json=lambda: json.dumps({"summary": []}))
    return check


#: The conformance units the module's report really runs: a real ConformanceReport from the real
#: suite on the cpu device (what the report section records), without the whole quick level, whose
#: verdict on cpu is test_conformance.py's (test_quick_passes_cpu, and through the CLI).
REPORT_CONFORMANCE_ONLY = ("COPY", "ENGINE")


def _real_conformance_subset(name: str, level: str):  # noqa: ANN202
    from ffaccel.conformance import check_device

    return check_device(name, level, only=REPORT_CONFORMANCE_ONLY)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import ffaccel.report.run as run_mod

    out = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "check_device", _real_conformance_subset)
        res = run_report(_tiny(out))
    write_outputs(res, out)
    res["_out"] = out
    return res


def test_schema(results: dict) -> None:
    for key in ("schema_version", "date", "spec_version", "machine", "devices", "conformance", "dispatch", "peak",
                "throughput", "workload", "seconds", "load", "busy_sections", "skipped"):
        assert key in results, key
    m = results["machine"]
    assert m["cores"] >= 1 and m["cpu"] and "numpy" in m["versions"]
    assert results["peak"]["gflops"] > 0 and "best of" in results["peak"]["method"]
    conf = results["conformance"][0]
    assert conf["passed"] is True and conf["cases"] > 0 and conf["failed"] == 0
    assert {row["op"] for row in conf["summary"]} >= {"COPY", "ENGINE"}, conf["summary"]


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
    assert len(imgs) == len(saved["plots"]) == 4
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
    monkeypatch.setattr(run_mod, "check_device", _fake_conformance())
    res = run_report(_tiny(tmp_path))
    assert not any(p["path"] == "torch" for p in res["dispatch"]["points"])
    assert not any(p["who"] == "torch" for p in res["throughput"])
    # said, not silently missing: in results.json and in the HTML
    assert [x["why"] for x in res["skipped"]] == ["PyTorch is not installed (forced by the test)"]
    write_outputs(res, tmp_path, pngs={})  # the plots are not what this test is about
    assert "skipped — PyTorch is not installed (forced by the test)" in (tmp_path / "report.html").read_text()


def test_cli_report_no_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.report.run as run

    monkeypatch.setattr(run, "check_device", _fake_conformance())
    tiny = _tiny(tmp_path / "cli")
    monkeypatch.setattr(run, "ReportConfig", lambda **kw: tiny)
    import ffaccel.report as rep

    monkeypatch.setattr(rep, "ReportConfig", lambda **kw: tiny)
    assert main(["report", "--quick", "--out", str(tmp_path / "cli"), "--no-server"]) == 0
    assert (tmp_path / "cli" / "report.html").exists()


# -- the report on a busy machine -------------------------------------------------------------------


def test_load_is_recorded_around_every_section(results: dict) -> None:
    assert set(results["load"]) == {"conformance", "dispatch", "peak", "throughput", "workload"}
    for name, s in results["load"].items():
        assert s["wall_s"] > 0 and s["cpu_s"] >= 0 and s["cores"] >= 1, name
        assert isinstance(s["busy"], bool) and (s["busy"] == bool(s["reasons"])), name
        assert len(s["loadavg_before"]) == 3 and len(s["loadavg_after"]) == 3, name
        assert 0.0 <= s["steal_fraction"] <= 1.0 and s["others_cores"] >= 0.0, name
    assert results["busy_sections"] == [n for n, s in results["load"].items() if s["busy"]]


def _snap(wall: float, own: float, la: float, busy: float, total: float, steal: float):  # noqa: ANN202
    from ffaccel.bench.load import Snapshot

    return Snapshot(wall, own, (la, la, la), busy, total, steal)


@pytest.mark.parametrize("case,after,reason", [
    ("quiet", (10.0, 10.0, 0.1, 10.5, 20.0, 0.0), None),
    # a load average left by work that stopped (it lags a minute) is no busy verdict where the others'
    # CPU time is counted and was nil; it decides only where that cannot be counted
    ("load average, others counted", (10.0, 10.0, 9.0, 10.5, 20.0, 0.0), None),
    ("load average, others not counted", (10.0, 10.0, 9.0, None, None, None), "load average 9.0"),
    ("steal", (10.0, 10.0, 0.1, 10.5, 20.0, 2.0), "CPU steal 10%"),
    ("others", (10.0, 10.0, 0.1, 18.0, 20.0, 0.0), "other processes used 0.8 cores"),
])
def test_busy_verdict_each_reason(case: str, after: tuple, reason: str | None,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Each way a section is found busy, forced with counters (whatever this machine is doing)."""
    import ffaccel.bench.load as load

    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    got = load.between(_snap(0.0, 0.0, 0.1, 0.0, 0.0, 0.0), _snap(*after))
    assert got["busy"] is (reason is not None), (case, got)
    if reason is not None:
        assert any(reason in r for r in got["reasons"]), got["reasons"]
    assert got["cpu_per_wall"] == pytest.approx(1.0)


def test_a_section_that_did_nothing_is_not_busy_from_one_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    # a partial device's section that is not run lasts a millisecond: one stray 10 ms tick of
    # another process read as "other processes used 114 cores" (on 2) and a busy verdict
    import ffaccel.bench.load as load

    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    got = load.between(_snap(0.0, 0.0, 0.1, 0.0, 0.0, 0.0), _snap(0.001, 0.0, 0.1, 0.01, 0.02, 0.0))
    assert got["others_cores"] == 0.0 and not got["busy"], got
    saturated = load.between(_snap(0.0, 0.0, 0.1, 0.0, 0.0, 0.0), _snap(1.0, 0.0, 0.1, 5.0, 5.0, 0.0))
    assert saturated["others_cores"] == 2.0  # never more cores than the machine has


@pytest.mark.parametrize("counters,others", [((None, None, None), False), ((1.0, 2.0, None), True)],
                         ids=["no counters", "no steal"])
def test_missing_counters_are_none_not_guesses(counters: tuple, others: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.bench.load as load

    monkeypatch.setattr(load, "_cpu_times", lambda: counters)
    got = load.between(load.snapshot(), load.snapshot())
    assert got["steal_fraction"] is None and (got["others_cores"] is not None) is others


class _FakeClock:
    """time.perf_counter for measure(): candidates advance it by what they 'cost'."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_disturbed_figures_are_remeasured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import ffaccel.bench.timing as timing

    clock = _FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    calls = {"steady": 0, "noisy": 0}
    noisy_costs = iter([1.0, 1.0] + [1.0, 9.0, 1.0, 9.0, 9.0] * 2)  # warm-up, inner count, then samples

    def steady() -> None:
        calls["steady"] += 1
        clock.t += 1.0

    def noisy() -> None:
        calls["noisy"] += 1
        clock.t += next(noisy_costs, 1.0)

    t = timing.measure_checked({"steady": steady, "noisy": noisy}, rounds=5, warmup=1, min_sample_s=0.0)
    assert t["noisy"].remeasured and t["steady"].remeasured  # the whole group, side by side again
    assert t["noisy"].disturbed and not t["steady"].disturbed  # still disturbed: flagged, not hidden
    assert calls["steady"] == 2 * (1 + 1 + 5)  # measured twice, not until it looked good
    quiet = timing.measure_checked({"steady": steady}, rounds=5, warmup=1, min_sample_s=0.0)
    assert not quiet["steady"].remeasured and not quiet["steady"].disturbed


def test_an_implausible_ratio_flags_a_dispatch_figure() -> None:
    from ffaccel.bench.dispatch import RATIO_LIMIT, _implausible
    from ffaccel.bench.timing import Timing

    t = {"numpy|@|1": Timing("numpy|@|1", (1e-6,) * 3), "torch|mm|1": Timing("torch|mm|1", (2e-3,) * 3),
         "cpu|submit|64": Timing("cpu|submit|64", (64 * 2e-6,) * 3)}
    flags = _implausible(t)
    assert list(flags) == ["torch|mm|1"] and f"{2000:.0f}x NumPy" in flags["torch|mm|1"][0]
    assert RATIO_LIMIT < 2000


def test_a_slow_device_is_judged_against_its_own_floor_not_numpy() -> None:
    # a device with a cost of its own per job (the npu: 100-300x NumPy's @ at n = 4) had every
    # figure withheld as implausible; a figure far above the same path's cheapest is still flagged
    from ffaccel.bench.dispatch import RATIO_LIMIT, _implausible
    from ffaccel.bench.timing import Timing

    def t(key: str, per_op_s: float) -> Timing:
        return Timing(key, (per_op_s * int(key.rsplit("|", 1)[1]),) * 3)

    slow = {k: t(k, s) for k, s in (("numpy|@|1", 1e-6), ("npu|matmul|1", 300e-6), ("npu|submit|1", 150e-6),
                                     ("npu|replay|256", 60e-6))}
    assert _implausible(slow) == {}
    slow["npu|submit|8"] = t("npu|submit|8", 60e-6 * (RATIO_LIMIT + 1))
    assert list(_implausible(slow)) == ["npu|submit|8"]
    alone = {k: slow[k] for k in ("numpy|@|1", "npu|matmul|1")}  # measured again alone: no floor of its own
    assert list(_implausible(alone)) == ["npu|matmul|1"]


def test_flagged_figures_and_busy_sections_are_said_in_html_and_terminal(
        results: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import print_report as _print_report

    res = json.loads(json.dumps({k: v for k, v in results.items() if k != "_out"}, default=str))
    res["dispatch"]["points"][0]["disturbed"] = ["spread 80% of the median"]
    res["dispatch"]["points"][0]["remeasured"] = True
    res["dispatch"]["points"][0]["withheld"] = []  # disturbed, and confirmed by its repeat: published, flagged
    res["load"]["dispatch"].update(busy=True, reasons=["load average 9.0 on 2 cores"])
    res["busy_sections"] = ["dispatch"]
    write_outputs(res, tmp_path, pngs={})  # the plots are not what this test is about
    doc = (tmp_path / "report.html").read_text()
    assert "The machine was busy during dispatch: load average 9.0 on 2 cores" in doc
    assert "⚠ spread 80% of the median (re-measured)" in doc
    assert "Measurement conditions" in doc
    _print_report(res, _Console(width=200))
    out = capsys.readouterr().out
    assert "busy during dispatch" in out and re.search(r"[1-9]\d* figure\(s\) look disturbed", out)


def test_quick_dispatch_table_has_every_row_at_every_size(results: dict) -> None:
    from ffaccel.report.render import dispatch_pivot

    sizes, rows = dispatch_pivot(results)
    assert sizes == [4, 8]
    assert {r[0] for r in rows} == {"numpy", "torch", "cpu in-process"} - ({"torch"} if not any(
        p["path"] == "torch" for p in results["dispatch"]["points"]) else set())
    for row in rows:
        assert all(cell != "-" for cell in row[3:]), row  # ffaccel rows at every size, like NumPy's


def test_workload_breakdown_adds_up(results: dict) -> None:
    """Headline and breakdown from the same sample: the parts add up to the headline, none negative."""
    w = results["workload"][0]
    b = w["breakdown"]
    for who, total in (("ffaccel", w["ffaccel_s"]), ("numpy", w["numpy_s"])):
        x = b[who]
        assert x["total_s"] == total  # the median sample's own whole is the headline
        assert all(v >= 0 for v in x["parts_s"].values()), x
        assert sum(x["parts_s"].values()) == pytest.approx(x["total_s"])
        assert x["problems"] == []
    assert b["ffaccel"]["parts_s"]["ffaccel matmul"] > 0 and b["numpy"]["parts_s"]["GEMM"] > 0
    doc = (results["_out"] / "report.html").read_text()
    assert "ffaccel matmul (dispatch + GEMM + fused epilogue)" in doc and "GEMM (NumPy @)" in doc


def test_failing_cases_are_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A device that fails conformance: its failing cases in results.json, the HTML and the terminal."""
    import types

    import ffaccel.report.run as run_mod
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import print_report as _print_report

    from ffaccel.conformance.runner import CaseResult

    bad = [CaseResult("GEMM", "gemm", "f32", f"gemm/f32/case{i}", False, message=f"D[0,0] off by {i}",
                      expected="1.0", got=f"{1 + i}.0") for i in range(60)]
    monkeypatch.setattr(run_mod, "check_device", _fake_conformance(bad))
    res = run_report(_tiny(tmp_path))
    c = res["conformance"][0]
    assert c["passed"] is False and c["failed"] == 60
    assert [f["case"] for f in c["failures"]] == [f"gemm/f32/case{i}" for i in range(run_mod.MAX_FAILURES_LISTED)]
    write_outputs(res, tmp_path, pngs={})  # the plots are not what this test is about
    doc = (tmp_path / "report.html").read_text()
    assert "gemm/f32/case0" in doc and "D[0,0] off by 0" in doc and "<td>2.0</td>" in doc and "10 more" in doc
    _print_report(res, _Console(width=200))
    out = capsys.readouterr().out
    assert "cpu: FAIL gemm/f32/case1: expected 1.0, got 2.0 (D[0,0] off by 1)" in out and "50 more" in out


# -- output folders ----------------------------------------------------------------------------------


def test_output_folder_checks(tmp_path: Path) -> None:
    from ffaccel.report.output import check_writable, output_folder, write_atomic
    from ffaccel.spec import ErrorCode, FFAccelError

    (tmp_path / "file").write_text("")
    with pytest.raises(FFAccelError) as e:
        check_writable(tmp_path / "file" / "x", param="--out")
    assert e.value.code == ErrorCode.INVALID_PARAMETER and e.value.param == "--out"
    assert str(tmp_path / "file" / "x") in e.value.message
    with pytest.raises(FFAccelError):
        check_writable(tmp_path / "file", param="--out")  # exists, not a folder
    # a failed run removes the folders it made, and nothing else
    with pytest.raises(RuntimeError), output_folder(tmp_path / "a" / "b", ["r.json"]) as out:
        write_atomic(out / "r.json", "{}")
        raise RuntimeError
    assert not (tmp_path / "a").exists() and (tmp_path / "file").exists()
    # a finished run keeps what it wrote; no temporary or probe files are left
    with output_folder(tmp_path / "c", ["r.json"]) as out:
        write_atomic(out / "r.json", "{}")
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["r.json"]
    assert (tmp_path / "c" / "r.json").stat().st_mode & 0o044  # the umask's mode, not mkstemp's 0600


def test_output_paths_found_bad_only_when_written_are_refused_before_the_run(tmp_path: Path) -> None:
    """A name too long for the file system, a loop of symbolic links, or an output name that is a
    folder: INVALID_PARAMETER naming the option before the run (they were an OSError after it,
    exit 3, results lost), and nothing left behind."""
    from ffaccel.report.output import output_folder
    from ffaccel.spec import ErrorCode, FFAccelError

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "r.json").mkdir()
    long = "x" * 300
    before = sorted(p.name for p in tmp_path.iterdir())
    for folder, names in ((tmp_path / long / "sub", ["r.json"]), (tmp_path, [long + ".json"]),
                          (tmp_path / "loop" / "sub", ["r.json"]), (tmp_path / "taken", ["r.json"])):
        with pytest.raises(FFAccelError) as e, output_folder(folder, names, param="--out"):
            raise AssertionError("the run must not start")
        assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "--out"), e.value
        assert sorted(p.name for p in tmp_path.iterdir()) == before
        assert (tmp_path / "taken" / "r.json").is_dir() and not list((tmp_path / "taken").glob(".*"))


def test_default_output_folder_is_ignored_by_git() -> None:
    gitignore = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/ffaccel-report/" in gitignore


def test_throughput_times_numpy_apart_and_waits_out_openblas_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """NumPy's pass comes first; the next pass starts only after OpenBLAS's threads stopped spinning
    (forced here at a tiny size by moving the threshold), so ffaccel is not measured against them."""
    import ffaccel
    from ffaccel.bench import throughput

    events: list[object] = []
    real = throughput.measure_checked
    monkeypatch.setattr(throughput, "measure_checked",
                        lambda group, **kw: events.append(sorted(group)) or real(group, **kw))
    monkeypatch.setattr(throughput.time, "sleep", lambda s: events.append(("sleep", s)))
    f32 = [c for c in GEMM_COMBOS if c.name == "f32xf32->f32->f32"]
    monkeypatch.setattr(throughput, "OPENBLAS_SINGLE_THREAD_MNK", 0)
    throughput.run_throughput([("cpu", ffaccel.open("cpu"))], sizes=(8,), combos=f32, rounds=1, min_sample_s=0.0)
    assert events[:3] == [["numpy"], ("sleep", throughput.OPENBLAS_SPIN_S), ["ffaccel cpu"]], events
    assert ("sleep", throughput.OPENBLAS_SPIN_S) not in events[3:]  # PyTorch's pass follows ffaccel's: no wait
    events.clear()
    monkeypatch.setattr(throughput, "OPENBLAS_SINGLE_THREAD_MNK", 8**3)  # at or below it OpenBLAS runs alone
    throughput.run_throughput([("cpu", ffaccel.open("cpu"))], sizes=(8,), combos=f32, rounds=1, min_sample_s=0.0)
    assert events[:2] == [["numpy"], ["ffaccel cpu"]], events


def test_every_figure_of_a_busy_section_is_marked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beside CPU hogs the figures are steadily slower (tight spread, nothing for a figure's own
    checks to see) while the section's load record says others used most of the cores: each figure
    of such a section carries the disturbed mark, with the section's reason (forced here, whatever
    this machine is doing); a quiet section's figures get no such mark."""
    import ffaccel.bench.load as load_mod
    import ffaccel.report.run as run_mod
    from ffaccel.report.render import dispatch_rows, throughput_rows

    real_between = load_mod.between
    busy_in = {"dispatch", "throughput", "workload", "peak"}
    order = iter(["conformance", "dispatch", "peak", "throughput", "workload"])

    def forced(before, after):  # noqa: ANN001, ANN202
        out = real_between(before, after)
        busy = next(order) in busy_in - {"dispatch"}  # dispatch stays quiet: its figures are left alone
        out.update(busy=busy, reasons=["other processes used 1.4 cores"] if busy else [])
        return out

    monkeypatch.setattr(load_mod, "between", forced)
    monkeypatch.setattr(run_mod, "check_device", _fake_conformance())
    res = run_report(_tiny(tmp_path))
    why = "measured while the machine was busy (other processes used 1.4 cores)"
    assert res["throughput"] and all(why in p["disturbed"] for p in res["throughput"])
    assert why in res["peak"]["disturbed"]
    assert all(why in w["disturbed"]["ffaccel"] and why in w["disturbed"]["numpy"] for w in res["workload"])
    assert not any(why in p["disturbed"] for p in res["dispatch"]["points"])
    # shown as such: every published throughput row carries the mark and the reason (a withheld one
    # shows why it is withheld instead)
    rows = [row for row, p in zip(throughput_rows(res), res["throughput"]) if not p["withheld"]]
    assert rows and all(why in row[-1] for row in rows)
    assert not any(why in row[-1] for row in dispatch_rows(res))
    # their count says how they came to be marked: these were not measured again
    from ffaccel.cli.main import _Console
    from ffaccel.report.terminal import print_summary

    write_outputs(res, tmp_path, pngs={})
    doc = (tmp_path / "report.html").read_text()
    console = _Console(width=400, record=True)
    print_summary(res, console)
    for text in (doc, console.export_text()):
        assert "figure(s) look disturbed" in text and "each was measured once more" not in text
        assert "each measured once more" not in text and "busy machine is marked too" in text
