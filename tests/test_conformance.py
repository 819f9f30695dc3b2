"""The conformance suite passes the honest drivers and catches every seeded bug."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ffaccel
from ffaccel.abi import DeviceCaps
from ffaccel.cli.main import main
from ffaccel.conformance import check_device, copy_cases, gemm_cases
from ffaccel.conformance.cases import QUICK_SIZES
from ffaccel.conformance.errors import CASES, RULE_CASES, error_checks
from ffaccel.conformance.seeded import SEEDED_BUGS
from ffaccel.spec import COPY_CONVERSIONS, GEMM_COMBOS, POST_OPS


@pytest.fixture(scope="module")
def cpu_report() -> ffaccel.conformance.ConformanceReport:
    return check_device("cpu", "quick")


def test_quick_passes_cpu(cpu_report) -> None:
    assert cpu_report.passed, cpu_report.to_markdown()
    ops = {r.op for r in cpu_report.results}
    assert {"GEMM", "COPY", "ENGINE", "ERROR"} <= ops


def test_quick_passes_ref() -> None:
    report = check_device("ref", "quick")
    assert report.passed, report.to_markdown()


def test_cases_cover_the_spec() -> None:
    cases = gemm_cases(DeviceCaps(), "quick")
    assert {c.combo for c in cases} == set(GEMM_COMBOS)
    for dim in ("m", "n", "k"):
        assert {getattr(c, dim) for c in cases} >= set(QUICK_SIZES)
    assert {(c.trans_a, c.trans_b) for c in cases} == {(False, False), (False, True), (True, False), (True, True)}
    assert {p.kind for c in cases for p in c.epilogue} == set(POST_OPS)
    assert any(len(c.epilogue) == 4 for c in cases)
    assert {c.c_mode for c in cases} >= {"separate", "in_place"}
    assert any(any(c.broadcast) for c in cases) and any(any(c.pads) for c in cases)
    groups = {c.group for c in cases}
    for corner in ("corner:beta0-nan-c", "corner:alpha0-nan-ab", "corner:k0", "corner:accumulate-width",
                   "corner:int-wrap", "corner:output-rounding"):
        assert corner in groups
    assert {(c.src, c.dst) for c in copy_cases(DeviceCaps(), "quick")} == set(COPY_CONVERSIONS)


def test_undeclared_combinations_are_not_generated_and_are_checked_as_refused() -> None:
    caps = DeviceCaps(combos=frozenset(GEMM_COMBOS[:2]))
    assert {c.combo for c in gemm_cases(caps, "quick")} == set(GEMM_COMBOS[:2])


@pytest.mark.parametrize("bug", SEEDED_BUGS, ids=lambda b: b.name)
def test_quick_catches_seeded_bug(bug) -> None:
    """Each seeded bug fails the quick level in the check meant to catch it (only that part of
    the quick level runs here, to keep CI fast; ``benchmarks``-style whole runs are in the docs)."""
    if bug.unit == "ERROR":  # a validation rule: its single-defect cases
        cases = [c for c in CASES if c.rule == bug.caught_by or bug.caught_by in c.id]
        assert cases, bug.caught_by
        results = error_checks(bug.factory, cases=cases)
    else:
        results = check_device(bug.factory, "quick", only=(bug.caught_by,)).results
    assert results, f"no quick check matches {bug.caught_by!r}"
    caught = [r for r in results if not r.passed and (r.group == bug.caught_by or bug.caught_by in r.name)]
    assert caught, f"the check {bug.caught_by!r} missed the seeded bug {bug.name}: {bug.description}"


def test_catalogue_covers_every_kind_and_rule_family() -> None:
    assert len({b.name for b in SEEDED_BUGS}) == len(SEEDED_BUGS) >= 60
    checks = {b.caught_by for b in SEEDED_BUGS}
    # one seeded bug at least for each kind of gap issue 12 lists
    for kind in ("exact", "int-scalars", "nonfinite", "layout", "size", "copy:double-rounding", "entry:bind_gemm",
                 "entry:prepare_gemm_fresh", "entry:gemm", "entry:prepare_gemm", "resubmitted-after-free",
                 "corner:k0", "epilogue-chain", "shapes:square"):
        assert kind in checks, kind
    families = {r.split(".")[0] for r in RULE_CASES}
    caught_families = {c.rule.split(".")[0] for c in CASES for b in SEEDED_BUGS
                       if b.unit == "ERROR" and (c.rule == b.caught_by or b.caught_by in c.id)}
    # device.name is checked on the registry (not portable): a third-party device cannot get it wrong
    assert families - caught_families <= {"device"}, families - caught_families


def test_report_files_and_summary(cpu_report, tmp_path: Path) -> None:
    doc = json.loads(cpu_report.to_json())
    assert doc["passed"] is True and doc["cases"] == len(cpu_report.results) and doc["failed"] == 0
    combos = {row["combo"] for row in doc["summary"] if row["op"] == "GEMM"}
    assert combos == {c.name for c in GEMM_COMBOS}
    worst = [row["worst_ratio"] for row in doc["summary"] if row["op"] == "GEMM"]
    assert all(w is not None and 0 <= w <= 1 for w in worst)
    md = cpu_report.to_markdown()
    assert "PASS" in md and "| GEMM |" in md


def test_cli_writes_report_and_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep.json"
    assert main(["conformance", "ref", "--quick", "--report", str(out)]) == 0
    assert json.loads(out.read_text())["passed"] is True
    assert out.with_suffix(".md").read_text().startswith("# ffaccel conformance: ref")
    assert "PASS" in capsys.readouterr().out


def test_failures_are_listed_with_what_was_expected_and_what_came_back() -> None:
    bug = next(b for b in SEEDED_BUGS if b.name == "bf16-rounds-ties-away")
    report = check_device(bug.factory, "quick", only=("exact",))
    text = report.failures_text(limit=2)
    assert text.startswith("FAIL exact ") and "expected D[" in text and ", got " in text
    assert text.splitlines()[-1].startswith("... and ")
    doc = json.loads(report.to_json())
    assert doc["failures"] and all(f["case"] and f["expected"] and f["got"] for f in doc["failures"])
    assert "| case | expected | got |" in report.to_markdown()


def test_rule_catalogue_is_one_module_per_family_built_on_first_use() -> None:
    import subprocess
    import sys

    from ffaccel.conformance import errors

    code = ("import ffaccel.conformance.errors as e; assert e.catalogue.cache_info().currsize == 0; "
            "e.CASES; assert e.catalogue.cache_info().currsize == 1")
    subprocess.run([sys.executable, "-c", code], check=True)
    families = {rule.split(".")[0] for rule in RULE_CASES}
    modules = {m.__name__.rsplit(".", 1)[1] for m in errors.FAMILIES}
    assert modules == {"submit", "command", "operand", "gemm", "epilogue", "copy", "memory"}
    for family in errors.FAMILIES:  # each module registers the rules of its own family only
        cat = errors.Catalogue()
        family.register(cat)
        owned = {r.split(".")[0] for r in cat.by_rule}
        name = family.__name__.rsplit(".", 1)[1]
        assert owned == ({"memory", "fence", "device"} & families if name == "memory" else
                         {"cmd"} if name == "command" else {name}), (name, owned)


class _Dying:
    """A transport proxy whose device is lost (every call DEVICE_LOST) once ``state["calls"]`` ran out:
    a server killed in the middle of a run, for every device the factory opens."""

    def __init__(self, state: dict[str, int]) -> None:
        from ffaccel.drivers.ref import RefDriver
        from ffaccel.transports import InprocTransport

        self._inner, self._state = InprocTransport(RefDriver()), state

    def __getattr__(self, name: str) -> object:
        from ffaccel.spec import ErrorCode, FFAccelError

        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            self._state["calls"] -= 1
            if self._state["calls"] < 0:
                raise FFAccelError(ErrorCode.DEVICE_LOST, "device", "the device server is gone")
            return attr(*args, **kwargs)

        return call


def test_a_device_lost_mid_run_ends_the_run_instead_of_failing_every_case_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A server killed during ``ffaccel conformance unix:...`` gave "FAIL, 405 failed" (exit 1) and a
    report blaming the driver; now DEVICE_LOST naming the unit it happened in, exit 3, no report."""
    from ffaccel.runtime import Device
    from ffaccel.spec import ErrorCode, FFAccelError

    state = {"calls": 400}
    factory = lambda: Device("dying", _Dying(state))  # noqa: E731
    with pytest.raises(FFAccelError) as e:
        check_device(factory, "quick", only=("GEMM",))
    assert e.value.code == ErrorCode.DEVICE_LOST and "was lost during unit" in e.value.message
    state["calls"] = 400
    import ffaccel.conformance as conformance_pkg

    monkeypatch.setattr(conformance_pkg, "check_device",
                        lambda name, level, progress=None: check_device(factory, level, progress=progress, only=("GEMM",)))
    out = tmp_path / "out"
    assert main(["conformance", "dying", "--report", str(out)]) == 3
    assert "was lost during unit" in capsys.readouterr().err and not out.exists()
