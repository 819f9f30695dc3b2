"""The suite reaches every path a driver takes (issue 24): epilogues on both sides of every declared
size edge (or a log-uniform sweep), command lists whose operands change, fences on every engine,
reads that must be copies, and an error harness that runs nothing between a defect and its check.
Each new kind of case has a seeded bug that it, and only it, catches, on the default kernels."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ffaccel
from ffaccel.cli.main import main
from ffaccel.conformance import check_device
from ffaccel.conformance.cases import SWEEP_CEILING_MNK, SWEEP_SIZES, band_cases
from ffaccel.conformance.errors import CASES, error_checks
from ffaccel.conformance.seeded import seeded_bug
from ffaccel.drivers.base import SizeBand
from ffaccel.drivers.cpu import CpuDriver
from ffaccel.spec import PostOpKind

#: (seeded bug, the kind of case that must catch it): one per kind issue 24 adds
NEW_KINDS = [
    ("fused-epilogue-drops-last", "band:"),
    ("fused-scale-twice", "band:"),
    ("widened-rounds-before-tail", "band:"),
    ("fused-clamp-drops-nan", "band:"),
    ("interleaved-d-drops-bias", "band:"),
    ("list-captures-epilogue", "entry:list"),
    ("fence-on-other-timeline", "fences:per-engine"),
    ("read-returns-view", "memory:reads"),
    ("fresh-kernel-reuses-output", "memory:reads"),
    ("family-kernel-keeps-its-sizes", "entry:kernel_family"),
    ("fresh-contiguous-keeps-first-bias", "entry:fresh.contiguous"),
    ("group-reads-first-a", "entry:bind_gemm_group"),
    ("one-buffer-copy-backwards", "copy:one-buffer"),
    ("free-keeps-last-memo", "resubmitted-after-free"),
]

#: (seeded bug, the kind of case that must catch it): paths of the cpu driver a bug planted in the real
#: code survived before (docs/conformance.md, "Planted bugs in the real drivers"): quick level only
PATH_KINDS = [
    ("threaded-linear-drops-bias", "band:"),
    ("skinny-ignores-alpha", "band:"),
    ("fresh-skinny-ignores-alpha", "entry:prepare_gemm_fresh"),
]


def _measure(case, band: SizeBand) -> int:  # noqa: ANN001 - a GemmCase
    return case.m * case.n * case.k * (case.batch if band.measure == "mnk" else 1)


def test_cpu_declares_its_size_bands_from_its_thresholds(capsys: pytest.CaptureFixture[str]) -> None:
    drv = CpuDriver()
    bands = drv.info().size_bands
    edges = {(b.epilogue, b.measure, b.edge) for b in bands}
    table = drv.kernel_table()  # every edge of every row of the kernel table is declared, on its side of epilogues
    for key, row in table.rows.items():
        for band in row:
            if band.min_mnk > 0:
                side = "with" if key.fused else "without"
                assert {(side, "mnk", band.min_mnk), ("any", "mnk", band.min_mnk)} & edges, (key, band)
    onednn_edges = {x for d in (table.crossovers.onednn_bare_min_mnk, table.crossovers.onednn_fused_min_mnk)
                    for x in d.values()}
    if drv.kernels()["f32xf32->f32->f32"].startswith("oneDNN"):  # where oneDNN serves f32 here
        for side, edge in (("with", table.crossovers.onednn_fused_min_mnk["f32"]),
                           ("without", table.crossovers.onednn_bare_min_mnk["f32"])):
            assert {(side, "mnk", edge), ("any", "mnk", edge)} & edges
    # one library at every size: no oneDNN edge of its own
    assert {b.edge for b in CpuDriver(kernels="blas").info().size_bands}.isdisjoint(onednn_edges)
    assert main(["info", "cpu", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {(b["epilogue"], b["measure"], b["edge"]) for b in doc["size_bands"]} == edges
    assert main(["info", "cpu"]) == 0
    assert "size bands" in capsys.readouterr().out


def test_band_cases_run_every_post_op_on_both_sides_of_every_edge() -> None:
    info = ffaccel.open("cpu").info()
    cases = band_cases(info.caps, info.size_bands, "quick")
    for band in info.size_bands:
        for name in band.combos:
            mine = [c for c in cases if c.combo.name == name and f">={band.edge}" in c.group]
            below = [c for c in mine if _measure(c, band) < band.edge]
            above = [c for c in mine if _measure(c, band) >= band.edge]
            assert below and above, (name, band)
            if band.epilogue == "without":
                assert all(not c.epilogue for c in mine)
                continue
            kinds = {p.kind for c in above for p in c.epilogue}
            assert kinds >= (set(PostOpKind) - {PostOpKind.GELU_ERF, PostOpKind.GELU_TANH}), (name, band)
            assert any(c.epilogue for c in below)
            if not mine[0].combo.is_int:  # NaN/Inf through the epilogue above the edge
                assert any(c.fill == "nonfinite" for c in above)
    full = band_cases(info.caps, info.size_bands, "full")
    assert any(any(c.interleave) and c.epilogue for c in full)
    assert {c.broadcast for c in full if c.epilogue} >= {(True, False, False), (False, True, False), (False, False, True)}


def test_without_a_declaration_the_sizes_are_swept_up_to_the_ceiling() -> None:
    caps = ffaccel.open("ref").info().caps
    for level in ("quick", "full"):
        cases = band_cases(caps, (), level)
        sizes = sorted({c.m * c.n * c.k for c in cases if c.combo.name == "f32xf32->f32->f32" and c.batch == 1
                        and "linear" not in c.group})  # (the linear-layer cases add a small skinny GEMM)
        assert len(sizes) == SWEEP_SIZES[level]
        assert sizes[-1] >= SWEEP_CEILING_MNK[level] and sizes[-1] < 1.1 * SWEEP_CEILING_MNK[level]
        ratios = [b / a for a, b in zip(sizes, sizes[1:])]
        assert max(ratios) < 1.2 * min(ratios)  # spread log-uniformly
        assert {p.kind for c in cases if c.m * c.n * c.k == sizes[-1] for p in c.epilogue} == set(PostOpKind)


def test_band_cases_keep_to_a_partial_device() -> None:
    dev = ffaccel.open("restricted:cpu;combos=int8xint8->int32->int32,bf16;post_ops=bias_n,relu;copies=bf16->bf16")
    info = dev.info()
    assert info.size_bands and all(set(b.combos) <= {c.name for c in info.caps.combos} for b in info.size_bands)
    cases = band_cases(info.caps, info.size_bands, "full")
    assert cases and all(p.kind in info.caps.post_ops for c in cases for p in c.epilogue)
    assert {c.combo for c in cases} == set(info.caps.combos)


@pytest.mark.parametrize("level", ["quick", "full"])
@pytest.mark.parametrize(("bug_name", "kind"), NEW_KINDS, ids=[b for b, _ in NEW_KINDS])
def test_each_new_kind_catches_its_seeded_bug(bug_name: str, kind: str, level: str) -> None:
    bug = seeded_bug(bug_name)
    assert bug.caught_by == kind
    if bug.unit == "ERROR":  # the error cases are the same at both levels
        results = error_checks(bug.factory, cases=[c for c in CASES if kind in c.id])
    else:
        results = check_device(bug.factory, level, only=(kind,)).results
    assert results
    assert [r for r in results if not r.passed and (r.group == kind or kind in r.name)], bug.description


@pytest.mark.parametrize(("bug_name", "kind"), PATH_KINDS, ids=[b for b, _ in PATH_KINDS])
def test_each_real_path_gap_catches_its_seeded_bug(bug_name: str, kind: str) -> None:
    bug = seeded_bug(bug_name)
    assert bug.caught_by == kind
    results = check_device(bug.factory, "quick", only=(kind,)).results
    assert [r for r in results if not r.passed and (r.group == kind or kind in r.name)], bug.description


@pytest.mark.slow
@pytest.mark.parametrize(("bug_name", "kind"), NEW_KINDS[:-1], ids=[b for b, _ in NEW_KINDS[:-1]])
def test_only_the_new_kind_catches_its_seeded_bug(bug_name: str, kind: str) -> None:
    """The whole quick level: every failure is in the kind meant for the bug (no other case sees it)."""
    report = check_device(seeded_bug(bug_name).factory, "quick")
    assert report.failures and all(kind in r.name or r.group == kind for r in report.failures), \
        report.failures_text()


def test_the_error_harness_runs_nothing_between_the_defect_and_the_defective_call() -> None:
    """A one-entry memo kept across free() is replaced by any submission: the harness may not probe
    the timelines between the build and the call, or the defect hides."""
    bug = seeded_bug("free-keeps-last-memo")
    case = next(c for c in CASES if c.id == "operand.handle-resubmitted-after-free-a")
    (result,) = error_checks(bug.factory, cases=[case])
    assert not result.passed and "accepted" in result.message
    (honest,) = error_checks(lambda: ffaccel.open("cpu"), cases=[case])
    assert honest.passed, honest.message


def test_torch_device_memory_reads_are_copies() -> None:
    pytest.importorskip("torch")
    from ffaccel.conformance.entry import check_reads_are_copies
    from ffaccel.drivers.torch import TorchDriver
    from ffaccel.runtime import Device
    from ffaccel.transports import InprocTransport

    drv = TorchDriver("cpu", host_memory=False)
    mem = drv.alloc(16)
    mem.write_bytes(0, np.arange(16, dtype=np.uint8))
    got = mem.read_bytes(0, 16)
    mem.write_bytes(0, np.zeros(16, np.uint8))
    assert got.tolist() == list(range(16))  # a view of the tensor would now read zeros
    results = check_reads_are_copies(Device("torch-device-memory", InprocTransport(TorchDriver("cpu", host_memory=False))))
    assert results and all(r.passed for r in results), [r.message for r in results]
    assert any("DeviceMemory" in r.name for r in results)


def test_front_end_results_do_not_alias_device_memory() -> None:
    """matmul's result and a PyTorch offload tensor stay as they were while the device runs the next
    GEMMs: a driver whose fresh kernel hands back one output array per geometry is caught there."""
    pytest.importorskip("torch")
    from ffaccel.conformance.entry import check_reads_are_copies

    bad = check_reads_are_copies(seeded_bug("fresh-kernel-reuses-output").factory(), torch_offload=True)
    failed = {r.name for r in bad if not r.passed}
    assert any("torch offload" in n for n in failed) and any("matmul" in n for n in failed), failed
    for name in ("cpu", "torch:cpu"):
        good = check_reads_are_copies(ffaccel.open(name), torch_offload=True)
        assert any("torch offload" in r.name for r in good)
        assert all(r.passed for r in good), [r.message for r in good if not r.passed]


def test_a_driver_declaring_alignment_gets_aligned_operands_and_must_refuse_misaligned() -> None:
    """limits.alignment_elems: valid cases never hand the driver a misaligned operand, and the
    catalogue's alignment cases (at the declared alignment) fail a device that declares it but
    lets misaligned operands through."""
    import dataclasses

    from ffaccel.runtime import Device
    from ffaccel.transports import InprocTransport

    class Aligned(CpuDriver):
        def caps(self):  # noqa: ANN202 - the cpu driver's, with 4-element alignment
            c = super().caps()
            return dataclasses.replace(c, limits=dataclasses.replace(c.limits, alignment_elems=4))

    def aligned() -> Device:
        return Device("aligned", InprocTransport(Aligned()))

    report = check_device(aligned, "quick", only=("GEMM", "COPY"))
    assert report.results and report.passed, report.failures_text()
    cases = [c for c in CASES if c.rule == "operand.alignment" and c.portable]
    ran = error_checks(aligned, cases=cases)
    assert {r.name for r in ran} >= {f"operand.alignment-{x}-misaligned" for x in ("a", "b", "c", "d", "bias")}
    assert all(r.passed for r in ran), [r.message for r in ran if not r.passed]
    bad = error_checks(seeded_bug("alignment-declared-not-checked").factory, cases=cases)
    assert any(not r.passed and "accepted" in r.message for r in bad)
