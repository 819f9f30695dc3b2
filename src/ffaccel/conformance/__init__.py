"""Layer 6: the conformance suite every driver must pass — public, for third-party driver authors.

>>> from ffaccel.conformance import check_device
>>> report = check_device("cpu")          # doctest: +SKIP
>>> report.passed                         # doctest: +SKIP
True

Cases are generated from the spec (:mod:`.cases`), judged against the ``ref`` golden
model within the spec's error bound, or bit for bit where the inputs make the exact answer
known (:mod:`.runner`), together with every entry point into a driver (:mod:`.entry`),
engine, fence and ``info`` checks (:mod:`.engines`) and one single-defect case per
validation rule (:mod:`.errors`, one module per rule family). :mod:`.seeded` holds the
seeded-bug devices the suite is proven on; ``docs/conformance.md`` says what each group aims at.
"""

from .cases import LEVELS, CopyCase, GemmCase, copy_cases, gemm_cases
from .runner import CaseResult, judge_copy, judge_gemm
from .suite import ConformanceReport, check_device, format_failures

__all__ = [
    "CaseResult", "ConformanceReport", "CopyCase", "GemmCase", "LEVELS", "check_device", "copy_cases",
    "format_failures", "gemm_cases", "judge_copy", "judge_gemm",
]
