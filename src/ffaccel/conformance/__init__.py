"""Layer 6: the conformance suite every driver must pass — public, for third-party driver authors.

>>> from ffaccel.conformance import check_device
>>> report = check_device("cpu")          # doctest: +SKIP
>>> report.passed                         # doctest: +SKIP
True

Cases are generated from the spec (:mod:`.cases`), judged against the ``ref`` golden
model within the spec's error bound (:mod:`.runner`), together with engine, fence and
``info`` checks (:mod:`.engines`) and one single-defect case per validation rule
(:mod:`.errors`). :mod:`.seeded` holds the seeded-bug devices the suite is proven on.
"""

from .cases import LEVELS, CopyCase, GemmCase, copy_cases, gemm_cases
from .runner import CaseResult, judge_copy, judge_gemm
from .suite import ConformanceReport, check_device, format_failures

__all__ = [
    "CaseResult", "ConformanceReport", "CopyCase", "GemmCase", "LEVELS", "check_device", "copy_cases",
    "format_failures", "gemm_cases", "judge_copy", "judge_gemm",
]
