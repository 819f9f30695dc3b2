"""The error-code table and the one exception type every layer raises.

Codes are ABI numbers: they travel in completions and replies, so a number is
never reused and new codes are only ever appended.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, Union

#: One step of a parameter path: a name, or an index into a sequence (``post_ops[1]``).
PathPart = Union[str, int]
_PART = re.compile(r"\[(\d+)\]|\.?([^.\[\]]+)")


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
    param : str or sequence of str and int
        Name of the offending parameter (descriptor field or API argument),
        as BLAS ``xerbla`` names the offending argument: ``"b"``, ``"epilogue[1].param0"``;
        or the same as a path, ``("epilogue", 1, "param0")``.
    message : str
        What was seen and what is allowed.
    rule : str, optional
        Identifier of the spec rule that was broken, when one applies.

    Attributes
    ----------
    param : str
        The parameter's name as written above (``"post_ops[1].operand"``).
    path : tuple of str and int
        The same name as a structured path (``("post_ops", 1, "operand")``): what a
        front-end maps onto its own argument names, with :meth:`renamed`.

    Examples
    --------
    >>> import numpy as np, ffaccel
    >>> try:
    ...     ffaccel.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    ... except ffaccel.FFAccelError as e:
    ...     print(e.code.name, e.param)
    INVALID_PARAMETER b
    """

    def __init__(self, code: ErrorCode, param: str | Sequence[PathPart], message: str,
                 rule: str | None = None) -> None:
        if not isinstance(param, str):
            param = format_path(param)
        self.code = ErrorCode(code)
        self.param = param
        self.message = message
        self.rule = rule
        #: Index of the offending command within its submission, when there is one.
        self.command_index: int | None = None
        super().__init__(f"[{self.code.name}] {param}: {message}")

    @property
    def path(self) -> tuple[PathPart, ...]:
        """``param`` as a path: ``"post_ops[1].operand"`` -> ``("post_ops", 1, "operand")``."""
        return parse_path(self.param)

    def renamed(self, names: Mapping[str, str | Sequence[PathPart]]) -> "FFAccelError":
        """The same error naming the caller's parameter: the path's first name mapped by ``names``.

        A front-end names its own arguments this way, e.g. ``{"epilogue": "post_ops"}`` turns
        ``epilogue[1].param0`` into ``post_ops[1].param0``; a path whose first name is not in
        ``names`` is kept. Code, message, rule and command index are unchanged.

        Examples
        --------
        >>> from ffaccel.spec import ErrorCode, FFAccelError
        >>> e = FFAccelError(ErrorCode.INVALID_PARAMETER, "epilogue[1].param0", "lo <= hi")
        >>> e.renamed({"epilogue": "post_ops"}).param
        'post_ops[1].param0'
        """
        path = self.path
        if not path or not isinstance(path[0], str) or path[0] not in names:
            return self
        head = names[path[0]]
        new = FFAccelError(self.code, ((head,) if isinstance(head, str) else tuple(head)) + path[1:], self.message,
                           self.rule)
        new.command_index = self.command_index
        return new

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the structured fields when errors cross process boundaries (pickle).
        return (type(self), (self.code, self.param, self.message, self.rule))


def parse_path(param: str) -> tuple[PathPart, ...]:
    """A parameter name as a path: ``"epilogue[1].operand.ld_elems"`` -> ``("epilogue", 1, "operand", "ld_elems")``.

    Examples
    --------
    >>> parse_path("post_ops[1].operand")
    ('post_ops', 1, 'operand')
    """
    return tuple(int(i) if i else name for i, name in _PART.findall(param))


def format_path(path: Sequence[PathPart]) -> str:
    """The inverse of :func:`parse_path`: ``("post_ops", 1, "operand")`` -> ``"post_ops[1].operand"``."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
