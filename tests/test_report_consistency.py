"""The report's consistency rules as pure functions on crafted figures, and what a withheld figure
does to the report: re-measured once, then kept out of plots and headlines with its reason."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ffaccel.bench import consistency as cons
from ffaccel.bench.overhead import DEVICE_PRESETS, DevicePreset, device_time_s, smallest_batch1, smallest_square
from ffaccel.bench.timing import Timing


def test_a_dip_between_good_neighbours_is_found_and_nothing_else() -> None:
    # the issue's figures: f32 at n=256 dipped to 4.2 GFLOP/s between 30 and 114.5
    assert list(cons.dips([(64, 30.0), (256, 4.2), (1024, 114.5)])) == [256]
    assert cons.dips([(64, 0.1), (256, 40.0), (1024, 114.5)]) == {}  # small sizes are slow: not a dip
    assert cons.dips([(64, 30.0), (256, 12.0), (1024, 114.5)]) == {}  # within the factor of one neighbour
    assert list(cons.dips([(64, 30.0), (256, 90.0), (1024, 20.0)])) == [1024]  # the largest against the one below


def test_above_peak_applies_to_f32_and_f64_only() -> None:
    assert "138%" in cons.above_peak("f64xf64->f64->f64", 138.0, 100.0)
    assert cons.above_peak("f32xf32->f32->f32", 100.0 * (1 + cons.PEAK_TOLERANCE), 100.0) is None
    for combo in ("bf16xbf16->f32->f32", "int8xint8->int32->int32", "f16xf16->f32->f16"):
        assert cons.above_peak(combo, 500.0, 100.0) is None  # other units may outrun f32


def test_shares_never_negative_nor_above_the_whole() -> None:
    # the issue's breakdown: dispatch + driver -210.85 ms of a 68 ms block
    assert cons.share_problems({"gemm": 280.0, "dispatch": -210.85}, 68.0) == ["dispatch is negative (-211 s)"]
    assert cons.share_problems({"gemm": 0.6, "rest": 0.6}, 1.0) == ["the parts add up to 120% of the whole"]
    assert cons.share_problems({"gemm": 0.6, "rest": 0.4}, 1.0) == []


def test_a_repeat_is_trusted_when_quiet_or_agreeing() -> None:
    assert cons.repeat_disagrees(1.0, 3.0, still_disturbed=False) is None  # a quiet second stands on its own
    assert cons.repeat_disagrees(1.0, 1.0 + cons.REPEAT_TOLERANCE, still_disturbed=True) is None
    assert "differ by 1.5x" in cons.repeat_disagrees(1.0, 1.5, still_disturbed=True)
    assert cons.repeat_disagrees(None, 3.0, still_disturbed=True) is None  # measured once


def test_timing_withholds_a_noisy_repeat_that_disagrees_and_a_rule_broken_twice() -> None:
    noisy = (1.0, 1.0, 3.0, 3.0, 3.0)  # median 3x the best: disturbed
    assert Timing("x", noisy, remeasured=True, first_median_s=1.0).withheld
    assert not Timing("x", noisy, remeasured=True, first_median_s=2.8).withheld  # confirmed by its repeat
    assert not Timing("x", (1.0,) * 5, remeasured=True, first_median_s=9.0).withheld  # quiet second
    assert Timing("x", (1.0,) * 5, remeasured=True, notes=("2000x NumPy's @",)).withheld == ["2000x NumPy's @"]
    assert Timing("x", (1.0,) * 5, notes=("2000x NumPy's @",)).withheld == []  # not measured again yet


def test_rate_problems_names_each_point_and_skips_withheld_neighbours() -> None:
    pts = [{"combo": "f64xf64->f64->f64", "who": "numpy", "size": n, "gflops": r}
           for n, r in ((64, 20.0), (256, 2.1), (1024, 138.0))]
    got = cons.rate_problems(pts, peak_gflops=100.0)
    assert sorted(got) == [1, 2] and "far below" in got[1][0] and "impossible for f64" in got[2][0]
    pts[1]["withheld"] = ["earlier"]
    assert sorted(cons.rate_problems(pts, peak_gflops=None)) == []  # a withheld figure is no one's neighbour


def _rate_point(who: str, combo: str, n: int, gflops: float, **timing: object):
    from ffaccel.bench.throughput import RatePoint

    return RatePoint(who, combo, n, Timing(who, (2.0 * n**3 / (gflops * 1e9),) * 3, **timing))


@pytest.mark.parametrize("second_gflops,withheld", [(110.0, False), (4.0, True)], ids=["fixed", "still a dip"])
def test_verify_rates_remeasures_once_then_withholds(second_gflops: float, withheld: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A dip is measured again (once); a consistent second figure is published, an inconsistent one
    is withheld with its reason and the first figure remembered."""
    import ffaccel
    from ffaccel.bench import throughput

    f32 = "f32xf32->f32->f32"
    pts = [_rate_point("numpy", f32, 64, 30.0), _rate_point("numpy", f32, 256, 4.2),
           _rate_point("numpy", f32, 1024, 114.5)]
    calls = []

    def remeasure(passes, n, rounds, min_sample_s, after_numpy=False):
        calls.append((sorted(passes[0]), n))
        return {"numpy": Timing("numpy", (2.0 * n**3 / (second_gflops * 1e9),) * 3)}

    monkeypatch.setattr(throughput, "_measure_passes", remeasure)
    out = throughput.verify_rates(pts, 200.0, [("cpu", ffaccel.open("cpu"))])
    assert calls == [(["numpy"], 256)]
    d = out[1].as_dict()
    assert d["remeasured"] and d["first_median_s"] == pytest.approx(pts[1].timing.median_s)
    assert bool(d["withheld"]) is withheld and (not withheld or "far below its neighbours" in d["withheld"][0])
    calls.clear()
    again = throughput.verify_rates(out, 200.0, [("cpu", ffaccel.open("cpu"))])
    assert calls == []  # never a third measurement
    assert bool(again[1].as_dict()["withheld"]) is withheld


def test_a_baselines_next_size_is_predicted_from_its_best_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A baseline whose median was disturbed but whose best sample was fast is still timed at the
    next size (the largest size is where rates are read); one slow in every sample (NumPy's f16
    without BLAS) is left out where one call would take longer than ``MAX_CALL_S``."""
    import ffaccel
    from ffaccel.bench import throughput

    f32 = next(c for c in throughput.GEMM_COMBOS if c.name == "f32xf32->f32->f32")
    timed: list[tuple[str, int]] = []
    best_gflops = {"numpy": 100.0, "ffaccel cpu": 100.0, "torch": 0.001}  # torch: slow in every sample

    def fake(passes, n, rounds, min_sample_s, after_numpy=False):
        out = {}
        for group in passes:
            for who in group:
                timed.append((who, n))
                best = 2.0 * n**3 / (best_gflops[who] * 1e9)
                out[who] = Timing(who, (best, best * 40, best * 40))  # a disturbed median, a fast best
        return out

    monkeypatch.setattr(throughput, "_measure_passes", fake)
    throughput.run_throughput([("cpu", ffaccel.open("cpu"))], (64, 1024), [f32])
    assert ("numpy", 1024) in timed and ("ffaccel cpu", 1024) in timed  # median: 0.9 s a call; best: 21 ms
    if ("torch", 64) in timed:  # PyTorch installed: 64^3 at 1 MFLOP/s predicts hours at 1024
        assert ("torch", 1024) not in timed


def _results_with(points: list[dict], throughput: list[dict], workload_withheld: dict) -> dict:
    return {"dispatch": {"points": points}, "throughput": throughput, "overhead": {"rows": []},
            "peak": {"gflops": 100.0}, "workload": [{
                "name": "block", "device": "cpu", "combo": "f32xf32->f32->f32", "host_post_ops": [],
                "ffaccel_s": 0.01, "numpy_s": 0.04, "speedup_vs_numpy": 4.0, "withheld": workload_withheld,
                "disturbed": {}}]}


def test_withheld_figures_stay_out_of_plots_and_headlines(monkeypatch: pytest.MonkeyPatch) -> None:
    from ffaccel.report import render

    pt = lambda n, us, **kw: {"path": "cpu in-process", "method": "submit", "batch": 1, "size": n,
                              "per_op_s": us * 1e-6, "combo": "f32xf32->f32->f32", **kw}
    thr = lambda n, g, **kw: {"who": "numpy", "combo": "f64xf64->f64->f64", "size": n, "gflops": g, **kw}
    res = _results_with([pt(4, 5.0), pt(8, 900.0, withheld=["a spike"]), pt(16, 6.0)],
                        [thr(64, 20.0), thr(256, 138.0, withheld=["impossible for f64"])],
                        {"numpy": ["its two measurements differ by 2.0x"]})
    plotted: list = []
    monkeypatch.setattr(render, "_png", lambda fig: plotted.append(fig) or b"")

    import matplotlib.pyplot as plt
    real_plot = plt.Axes.plot

    def spy(ax, xs, ys, *a, **kw):
        plotted.append(list(zip(xs, ys)))
        return real_plot(ax, xs, ys, *a, **kw)

    monkeypatch.setattr(plt.Axes, "plot", spy)
    render.plot_latency(res)
    render.plot_throughput(res)
    data = [pts for pts in plotted if isinstance(pts, list)]
    assert [(4, 5.0), (16, 6.0)] in data and not any((8, 900.0) in d for d in data)
    assert [(64, 20.0)] in data and not any((256, 138.0) in d for d in data)
    headline = render.workload_headline(res["workload"][0])
    assert "speed-up withheld" in headline and "4.00x" not in headline
    rows = render.throughput_rows(res)
    assert rows[1][4] == "-" and "✗ withheld: impossible for f64" in rows[1][6]
    from ffaccel.report.run import withheld_figures

    assert len(withheld_figures(res)) == 3


@given(cost_us=st.floats(0.05, 5000.0), preset=st.sampled_from(DEVICE_PRESETS))
@settings(max_examples=200, deadline=None)
def test_overhead_thresholds_are_the_smallest_sizes(cost_us: float, preset: DevicePreset) -> None:
    """The smallest n at which dispatch is within 10% of the device's time: n passes, n - 1 does not."""
    cost = cost_us * 1e-6
    n = smallest_square(cost, preset)
    assert cost <= 0.1 * device_time_s(n, n, n, preset)
    assert n == 1 or cost > 0.1 * device_time_s(n - 1, n - 1, n - 1, preset)
    m1 = smallest_batch1(cost, preset)
    assert cost <= 0.1 * device_time_s(1, m1, m1, preset)
    assert m1 == 1 or cost > 0.1 * device_time_s(1, m1 - 1, m1 - 1, preset)
    assert m1 >= n  # a matrix-vector product does n times less work than the square GEMM


def test_overhead_rows_from_dispatch_points() -> None:
    from ffaccel.bench.overhead import overhead_rows

    pts = [{"path": "numpy", "method": "@", "batch": 1, "size": 4, "per_op_s": 1e-6},
           *({"path": p, "method": m, "batch": b, "size": n, "per_op_s": c * 1e-6, "withheld": w}
             for p, m, b, n, c, w in (("cpu in-process", "submit", 1, 4, 10.0, []),
                                      ("cpu in-process", "submit", 64, 4, 2.0, []),
                                      ("cpu in-process", "replay", 64, 4, 1.0, ["a spike"]),
                                      ("cpu in-process", "submit", 1, 8, 99.0, [])))]
    rows = overhead_rows(pts)
    assert [(r["method"], r["batch"]) for r in rows] == [("submit", 1), ("submit", 64), ("replay", 64)]
    one = DEVICE_PRESETS[0]
    assert rows[0]["presets"][one.name]["square_n"] == math.ceil((5 * 10e-6 * one.peak_ops_per_s) ** (1 / 3))
    assert rows[2]["presets"] == {} and rows[2]["withheld"] == ["a spike"]


def test_presets_are_the_issues_devices() -> None:
    assert [p.peak_tops for p in DEVICE_PRESETS] == [1.0, 6.0, 9.5, 50.0]


def test_a_dispatch_spike_is_found_and_a_withheld_neighbour_is_ignored() -> None:
    from ffaccel.bench.dispatch import DispatchPoint, _spikes

    def pt(n: int, us: float, **kw: object) -> DispatchPoint:
        return DispatchPoint("cpu in-process", "submit", n, 1, Timing("x", (us * 1e-6,) * 3, **kw))

    by_size = {4: [pt(4, 5.0)], 8: [pt(8, 90.0)], 16: [pt(16, 6.0)]}
    got = _spikes(by_size)
    assert list(got) == [("cpu in-process", "submit", 1, 8)] and "90 µs per op" in got[("cpu in-process", "submit", 1, 8)][0]
    # a withheld figure (a noisy repeat far from its first measurement) is no one's neighbour: at 32 it
    # would hide the spike at 16, which is held against 8 alone instead
    noisy = (100e-6, 100e-6, 500e-6, 500e-6, 500e-6)
    withheld = DispatchPoint("cpu in-process", "submit", 32, 1, Timing("x", noisy, remeasured=True, first_median_s=5e-6))
    assert withheld.timing.withheld
    by_size = {4: [pt(4, 5.0)], 8: [pt(8, 6.0)], 16: [pt(16, 90.0)], 32: [withheld]}
    assert list(_spikes(by_size)) == [("cpu in-process", "submit", 1, 16)]


def test_the_quick_report_times_numpys_f16_at_its_smallest_size_only() -> None:
    """NumPy's f16 matmul has no BLAS (a flat ~0.3 GFLOP/s): the quick report times it at 64, the
    full one up to 256; its BLAS-backed f32 is timed at every size."""
    import numpy as np

    from ffaccel.bench import throughput

    combos = {c.name: c for c in throughput.GEMM_COMBOS}
    f16, f32 = combos["f16xf16->f32->f16"], combos["f32xf32->f32->f32"]
    a = np.ones((4, 4), np.float16)
    assert throughput._numpy_candidate(f16, a, a, 64, throughput.QUICK_NUMPY_F16_MAX) is not None
    assert throughput._numpy_candidate(f16, a, a, 256, throughput.QUICK_NUMPY_F16_MAX) is None
    assert throughput._numpy_candidate(f16, a, a, 256) is not None
    assert throughput._numpy_candidate(f32, a.astype(np.float32), a.astype(np.float32), 1024,
                                       throughput.QUICK_NUMPY_F16_MAX) is not None


def test_a_spikes_re_measurement_leaves_the_other_figures_ratios_side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spiked figure is measured again alone with NumPy's @. Its group's other figures must keep
    their ratio to the NumPy they ran beside: replacing the size's NumPy row with the re-measured one
    gave them a ratio between two moments (here NumPy took 3 µs beside them and 9 µs later)."""
    from ffaccel.bench import dispatch
    from ffaccel.runtime import open_device
    from ffaccel.report.render import dispatch_pivot, dispatch_rows

    calls: list[set[str]] = []

    def fake_measure_checked(cands, **kw):  # synthetic medians (µs): no timing at all
        if not cands:  # the PyTorch pass, left out
            return {}
        calls.append(set(cands))
        again = len(calls) > 3  # after the three sizes' groups: the spike's re-measurement
        us = {"numpy|@|1": 9.0 if again else 3.0, "cpu in-process|matmul|1": 6.0,
              "cpu in-process|submit|1": 5.5 if again else (100.0 if len(calls) == 2 else 5.0)}
        return {k: Timing(k, (us.get(k, 4.0) * 1e-6,) * 3) for k in cands}

    monkeypatch.setattr(dispatch, "measure_checked", fake_measure_checked)
    monkeypatch.setattr(dispatch, "torch_candidates", lambda n: {})
    dev = open_device("cpu")
    try:
        pts = [p.as_dict() for p in dispatch.run_dispatch([("cpu in-process", dev)], sizes=(4, 16, 64), batches=(1,))]
    finally:
        dev.close()
    assert len(calls) == 4 and calls[3] == {"numpy|@|1", "cpu in-process|submit|1"}
    at16 = {(p["path"], p["method"]): p for p in pts if p["size"] == 16}
    # NumPy's row is its group's; the re-measured figure carries the NumPy it ran beside
    assert at16[("numpy", "@")]["per_op_s"] == pytest.approx(3e-6)
    assert at16[("cpu in-process", "matmul")]["numpy_per_op_s"] == pytest.approx(3e-6)
    assert at16[("cpu in-process", "submit")]["remeasured"]
    assert at16[("cpu in-process", "submit")]["numpy_per_op_s"] == pytest.approx(9e-6)
    rows = {(r[0], r[1], r[3]): r[6] for r in dispatch_rows({"dispatch": {"points": pts}})}
    assert rows[(16, "cpu in-process", "matmul")] == "2.00x"  # 6 µs beside 3 µs, not 6 / 9
    assert rows[(16, "cpu in-process", "submit")] == "0.61x"  # 5.5 µs beside 9 µs
    _, pivot = dispatch_pivot({"dispatch": {"points": pts}})
    matmul_row = next(r for r in pivot if r[:2] == ["cpu in-process", "matmul"])
    assert matmul_row[4] == "6.00 (2.0x)"


def test_the_overhead_answer_from_a_disturbed_figure_is_marked() -> None:
    """The overhead table's per-op cost is a dispatch figure: when that figure is marked disturbed
    (on a busy machine, every one is), its row must say so, in results.json and in the table, not
    present it as a quiet measurement; a quiet figure's row has no mark."""
    from ffaccel.bench.overhead import overhead_section
    from ffaccel.report.render import DISTURBED_MARK, overhead_table

    busy = "measured while the machine was busy (other processes used 1.4 cores)"
    pts = [{"path": "cpu in-process", "method": "submit", "batch": b, "size": 4, "per_op_s": c * 1e-6,
            "withheld": [], "disturbed": d} for b, c, d in ((1, 10.0, [busy]), (64, 2.0, []))]
    ov = overhead_section(pts)
    assert [r["disturbed"] for r in ov["rows"]] == [[busy], []]
    for short in (True, False):
        _, rows = overhead_table({"overhead": ov}, short=short)
        assert rows[0][2] == f"10.0 {DISTURBED_MARK}" and rows[1][2] == "2.0"
