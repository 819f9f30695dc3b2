"""The error-code table and the one exception type every layer raises.

Codes are ABI numbers: they travel in completions and replies, so a number is
never reused and new codes are only ever appended.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    """Every failure ffaccel reports carries exactly one of these codes."""

    OK = 0
    INVALID_PARAMETER = 1
    BAD_HANDLE = 2
    OUT_OF_BOUNDS = 3
    OVERLAP = 4
    UNSUPPORTED = 5
    OUT_OF_MEMORY = 6
    TIMEOUT = 7
    DEVICE_LOST = 8
    ABI_VERSION_MISMATCH = 9


#: One line per code, for the reference page and ``ffaccel info``.
ERROR_MEANINGS: dict[ErrorCode, str] = {
    ErrorCode.OK: "success",
    ErrorCode.INVALID_PARAMETER: "a field or argument breaks a rule of the spec",
    ErrorCode.BAD_HANDLE: "a buffer handle is not in the caller's handle table",
    ErrorCode.OUT_OF_BOUNDS: "an operand reaches past the end of its buffer",
    ErrorCode.OVERLAP: "an output overlaps an input (other than D == C exactly) or itself",
    ErrorCode.UNSUPPORTED: "valid under the spec, but this device does not declare it",
    ErrorCode.OUT_OF_MEMORY: "an allocation failed or a client is over its memory quota",
    ErrorCode.TIMEOUT: "a wait reached its deadline before the fence signalled",
    ErrorCode.DEVICE_LOST: "the device (or the server that owns it) is gone",
    ErrorCode.ABI_VERSION_MISMATCH: "the caller speaks an ABI version the device does not",
}


class FFAccelError(Exception):
    """An error reported by ffaccel.

    Parameters
    ----------
    code : ErrorCode
        The code from the spec's error table.
    param : str
        Name of the offending parameter (descriptor field or API argument),
        as BLAS ``xerbla`` names the offending argument.
    message : str
        What was seen and what is allowed.
    rule : str, optional
        Identifier of the spec rule that was broken, when one applies.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> try:
    ...     ffaccel.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    ... except ffaccel.FFAccelError as e:
    ...     print(e.code.name, e.param)
    INVALID_PARAMETER b
    """

    def __init__(self, code: ErrorCode, param: str, message: str, rule: str | None = None) -> None:
        self.code = ErrorCode(code)
        self.param = param
        self.message = message
        self.rule = rule
        #: Index of the offending command within its submission, when there is one.
        self.command_index: int | None = None
        super().__init__(f"[{self.code.name}] {param}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the structured fields when errors cross process boundaries (pickle).
        return (type(self), (self.code, self.param, self.message, self.rule))
