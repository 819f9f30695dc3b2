"""Run the whole suite against one device and summarise it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..runtime import Device, open_device
from ..spec import SPEC_VERSION, ErrorCode, FFAccelError
from .cases import LEVELS, band_cases, copy_cases, gemm_cases
from .engines import check_fences_per_engine, engine_checks
from .entry import entry_checks
from .runner import CaseResult, judge_copy, judge_gemm

DeviceFactory = Callable[[], Device]
#: progress(done, total, description) — called after every case.
Progress = Callable[[int, int, str], None]


@dataclass
class ConformanceReport:
    """Everything one run found. ``passed`` is True only when every case passed."""

    device: str
    driver: str
    level: str
    spec_version: tuple[int, int]
    seconds: float
    results: list[CaseResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[CaseResult]:
        return [r for r in self.results if not r.passed]

    def failures_text(self, limit: int | None = 20) -> str:
        """The failing cases, one per line: id, what was expected, what came back (see :func:`format_failures`)."""
        return format_failures(self.failures, limit)

    def summary(self) -> list[dict[str, Any]]:
        """One row per (op, combination): cases, failures and the worst error/bound ratio."""
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self.results:
            key = (r.op, r.combo)
            row = rows.setdefault(key, {"op": r.op, "combo": r.combo, "cases": 0, "failed": 0, "worst_ratio": None})
            row["cases"] += 1
            row["failed"] += 0 if r.passed else 1
            if not math.isnan(r.worst_ratio):
                w = row["worst_ratio"]
                row["worst_ratio"] = r.worst_ratio if w is None else max(w, r.worst_ratio)
        return list(rows.values())

    def to_json(self) -> str:
        def clean(x: float) -> float | str | None:
            if isinstance(x, float) and math.isnan(x):
                return None
            if isinstance(x, float) and math.isinf(x):
                return "inf"
            return x

        doc = {
            "device": self.device, "driver": self.driver, "level": self.level,
            "spec_version": list(self.spec_version), "seconds": round(self.seconds, 3), "passed": self.passed,
            "cases": len(self.results), "failed": len(self.failures),
            "summary": [{k: clean(v) for k, v in row.items()} for row in self.summary()],
            "failures": [{"case": r.name, "op": r.op, "group": r.group, "expected": r.expected, "got": r.got,
                          "message": r.message} for r in self.failures],
            "results": [{k: clean(v) for k, v in asdict(r).items()} for r in self.results],
        }
        return json.dumps(doc, indent=1)

    def to_markdown(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"# ffaccel conformance: {self.device} — {verdict}", "",
            f"Driver {self.driver}, spec v{self.spec_version[0]}.{self.spec_version[1]}, level `{self.level}`, "
            f"{len(self.results)} cases in {self.seconds:.1f} s, {len(self.failures)} failed.", "",
            "Accuracy is judged by the spec's bound (docs/spec.md, Accuracy); the ratio column is the worst "
            "|error| / bound seen (<= 1 passes).", "",
            "| op | combination | cases | failed | worst error/bound |", "|---|---|---|---|---|",
        ]
        for row in self.summary():
            w = row["worst_ratio"]
            lines.append(f"| {row['op']} | {row['combo']} | {row['cases']} | {row['failed']} | "
                         f"{'-' if w is None else f'{w:.3g}'} |")
        if self.failures:
            lines += ["", "## Failures", "", "| case | expected | got | what went wrong |", "|---|---|---|---|"]
            for r in self.failures:
                cells = (r.name, r.expected or "-", r.got or "-", r.message)
                lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _as_factory(device: "Device | DeviceFactory | str") -> tuple[DeviceFactory, str]:
    if isinstance(device, str):
        return (lambda: open_device(device)), device
    if isinstance(device, Device):
        # A second client is opened by name where the name opens (the error cases need one);
        # otherwise (a name with no address, a hand-built device) the suite uses this device.
        try:
            open_device(device.name).close()
        except Exception:  # noqa: BLE001 - any failure to reopen means: use the instance
            return (lambda: device), device.name
        return (lambda: open_device(device.name)), device.name
    if callable(device):
        return device, ""
    raise TypeError(f"device must be a name, a Device or a factory returning one; got {type(device).__name__}")


def iter_checks(dev: Device, factory: DeviceFactory, level: str, only: Sequence[str] = ()
                ) -> Iterator[tuple[str, Callable[[], list[CaseResult]]]]:
    """(description, thunk) pairs: every unit of work of a run, in order.

    ``only``: run just the units whose kind (GEMM, COPY, ENTRY, ENGINE, ERROR) is one of these
    words or whose description contains one of them (all units when empty).
    """
    info = dev.info()
    caps = info.caps

    def wanted(kind: str, desc: str) -> bool:
        return not only or any(w == kind or w in desc for w in only)

    for case in gemm_cases(caps, level):
        if wanted("GEMM", case.name):
            yield case.name, (lambda c=case: [judge_gemm(dev, c)])
    for bcase in band_cases(caps, info.size_bands, level):  # both sides of every declared size edge
        if wanted("GEMM", bcase.name):
            yield bcase.name, (lambda c=bcase: [judge_gemm(dev, c)])
    for ccase in copy_cases(caps, level):
        if wanted("COPY", ccase.name):
            yield ccase.name, (lambda c=ccase: [judge_copy(dev, c)])
    for name, check in entry_checks(level):
        if wanted("ENTRY", name):
            yield name, (lambda check=check: check(dev))
    if wanted("ENGINE", "engines, fences, memory and info"):
        yield "engines, fences, memory and info", (lambda: engine_checks(dev))
    if wanted("ENGINE", "fences:per-engine (every fence check on every engine, the others moved on)"):
        yield ("fences:per-engine (every fence check on every engine, the others moved on)",
               (lambda: check_fences_per_engine(dev)))
    if wanted("ERROR", "validation rules (error cases)"):
        from .errors import error_checks  # the rule catalogue is large: import it when it is needed

        yield "validation rules (error cases)", (lambda: error_checks(factory))


def check_device(device: "Device | DeviceFactory | str", level: str = "quick", *,
                 progress: Progress | None = None, only: Sequence[str] = ()) -> ConformanceReport:
    """Run the conformance suite against a device.

    Parameters
    ----------
    device : str, Device or callable
        A device name (``"cpu"``), an open Device, or a factory returning a fresh Device
        (preferred for third-party drivers: the error cases open a second client to check
        that handles do not leak between clients).
    level : {"quick", "full"}
        ``quick`` runs every declared combination through every group of cases on small
        shapes; ``full`` adds every shape triple and a large GEMM.
    progress : callable, optional
        ``progress(done, total, description)`` after each unit of work.
    only : sequence of str, optional
        Run only part of the suite: the units whose kind (``GEMM``, ``COPY``, ``ENTRY``,
        ``ENGINE``, ``ERROR``) is one of these words, or whose description (a case name such
        as ``"exact bf16xbf16->..."``) contains one of them. A partial run never passes for
        the whole suite; it is for finding or re-running failures.

    Returns
    -------
    ConformanceReport
        ``report.passed`` is True only when every case passed.

    Examples
    --------
    A driver author's own pytest::

        from ffaccel.conformance import check_device

        def test_my_driver_conforms():
            report = check_device(lambda: ffaccel.runtime.Device("mine", InprocTransport(MyDriver())))
            assert report.passed, report.to_markdown()
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}; got {level!r}")
    factory, name = _as_factory(device)
    start = time.perf_counter()
    first = factory()
    info = first.info()
    checks = list(iter_checks(first, factory, level, tuple(only)))
    results: list[CaseResult] = []
    for i, (desc, thunk) in enumerate(checks):
        try:
            results.extend(thunk())
        except Exception as e:  # noqa: BLE001 - a crash is a failure of that unit, not of the suite
            if isinstance(e, FFAccelError) and e.code == ErrorCode.DEVICE_LOST and not _answers(factory):
                # the device is gone (a server killed, a card lost): every case left would "fail" with
                # the same error and the report would blame the driver for hundreds of cases; the run
                # ends here, naming the unit it was in (which may be what killed it)
                raise FFAccelError(ErrorCode.DEVICE_LOST, e.param, f"the device was lost during unit {i + 1} of "
                                   f"{len(checks)} ({desc}), and a fresh one does not answer; no report: "
                                   f"{e.message}") from e
            results.append(CaseResult("CRASH", "crash", "-", desc, False, float("nan"), f"raised {e!r}"))
        if progress is not None:
            progress(i + 1, len(checks), desc)
    shown_level = level if not only else f"{level} (only {', '.join(only)})"  # a partial run says so
    return ConformanceReport(name or first.name, f"{info.name} {info.version}", shown_level, SPEC_VERSION,
                             time.perf_counter() - start, results)


def _answers(factory: Callable[[], Device]) -> bool:
    """Whether a fresh device from ``factory`` opens and answers ``info()``."""
    try:
        dev = factory()
    except FFAccelError:
        return False
    try:
        dev.info()
        return True
    except FFAccelError:
        return False
    finally:
        with contextlib.suppress(Exception):
            dev.close()


def format_failures(failures: Sequence[CaseResult], limit: int | None = 20) -> str:
    """Failing cases as plain lines for a terminal or a log: ``FAIL <case id>: expected X, got Y``
    (or what went wrong, where no single value says it), at most ``limit`` of them (None: all)."""
    lines = []
    shown = failures if limit is None else failures[:limit]
    for r in shown:
        if r.expected or r.got:
            extra = f" ({r.message})" if r.message and r.message != r.got else ""
            lines.append(f"FAIL {r.name}: expected {r.expected}, got {r.got or '-'}{extra}")
        else:
            lines.append(f"FAIL {r.name}: {r.message}")
    if len(shown) < len(failures):
        lines.append(f"... and {len(failures) - len(shown)} more failures")
    return "\n".join(lines)


def group_failures(report: ConformanceReport) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for r in report.failures:
        out[r.group] += 1
    return dict(out)
