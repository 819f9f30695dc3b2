"""Bad input, one defect at a time: every abi and runtime validation rule (the Linux IGT pattern).

Each :class:`Case` builds a call twice from one recipe, on a fresh :class:`Env`: once *with*
its single defect and once without it. The defective call must raise
:class:`~ffaccel.spec.FFAccelError` with the rule's exact code, the exact parameter name and
the rule id, name the value it saw, and change nothing: every buffer of every device involved
is byte-identical afterwards and no fence value was consumed. The defect-free twin must be
accepted, which proves the defect was the only one.

Defects the dataclasses cannot express (reserved fields, flag bits, sizes, opcodes, padding,
header fields, waits) are made by encoding and patching the bytes at the field's offset,
found by name through the layouts (``GEMM.offsets()`` ...), never hard-coded.

Layout, mirroring :mod:`ffaccel.spec.rules`: :mod:`.harness` holds what every case is made
of and judged by; one module per rule family holds its cases (:mod:`.submit`,
:mod:`.command`, :mod:`.operand`, :mod:`.gemm`, :mod:`.epilogue`, :mod:`.copy`, and
:mod:`.memory` for the memory, fence and device rules). A new rule's case goes into its
family's ``register``. Importing builds nothing: :func:`catalogue` builds the case list once,
on first use; :data:`CASES` lists the cases and :data:`RULE_CASES` maps each rule id to the
ids of the cases that trip it.

Cases that need what a third-party device cannot be asked for (a driver that declares less,
a memory quota, the device registry) are not :attr:`Case.portable`: they are built on the
built-in ref driver whatever device is under test.
"""

from __future__ import annotations

import functools
from typing import Any

from . import command, copy, epilogue, gemm, memory, operand, submit
from .harness import (
    BF16,
    CASE_WATCHDOG_S,
    FENCE_WAIT_NS,
    JUNK,
    Builder,
    CapsDriver,
    Case,
    Catalogue,
    DeviceFactory,
    Env,
    K,
    M,
    N,
    ValidGemm,
    error_checks,
    patch,
    patch_bytes,
    patch_cmd,
    u64,
)

#: The family modules, in the order of :mod:`ffaccel.spec.rules`.
FAMILIES = (submit, command, operand, gemm, epilogue, copy, memory)


@functools.cache
def catalogue() -> tuple[tuple[Case, ...], dict[str, tuple[str, ...]]]:
    """(every case, {rule id: ids of its cases}), built once from the family modules."""
    cat = Catalogue()
    for family in FAMILIES:
        family.register(cat)
    return tuple(cat.cases), {rule: tuple(ids) for rule, ids in cat.by_rule.items()}


def __getattr__(name: str) -> Any:
    # CASES and RULE_CASES are computed on first use (PEP 562), not as a side effect of import.
    if name == "CASES":
        return list(catalogue()[0])
    if name == "RULE_CASES":
        return {rule: list(ids) for rule, ids in catalogue()[1].items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BF16", "CASES", "CASE_WATCHDOG_S", "FAMILIES", "FENCE_WAIT_NS", "JUNK", "K", "M", "N", "RULE_CASES", "Builder",
    "CapsDriver", "Case", "Catalogue", "DeviceFactory", "Env", "ValidGemm", "catalogue", "error_checks", "patch",
    "patch_bytes", "patch_cmd", "u64",
]
