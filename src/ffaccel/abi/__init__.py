"""Layer 1: binary command descriptors, their layouts, and the one validator.

A driver never sees an unvalidated command: every transport hands raw bytes to
:func:`check_submission` (or a front-end hands a descriptor to :func:`check_command`)
and passes on only the validated operation objects it returns.
"""

from .cache import LruCache
from .commands import Copy, Gemm, Matrix, PostOpDesc, decode_command, encode_submission, pack_gemm
from .layout import (
    ABI_VERSION,
    COMMAND_BYTES,
    COPY,
    GEMM,
    MAX_COMMANDS_PER_SUBMIT,
    OPERAND_BYTES,
    SUBMIT,
    WAIT,
    GemmFlags,
    Layout,
)
from .validate import (
    CopyOp,
    DeviceCaps,
    GemmOp,
    GeometryChecker,
    Op,
    ValidPostOp,
    Submission,
    ValidationCache,
    View,
    bind,
    check_command,
    check_submission,
    op_handles,
)
from .views import DeviceMemory, copy_arrays, gemm_arrays, gemm_group_arrays, view_array

__all__ = [
    "ABI_VERSION", "COMMAND_BYTES", "COPY", "Copy", "CopyOp", "DeviceCaps", "DeviceMemory", "GEMM", "Gemm", "GemmFlags",
    "GemmOp", "GeometryChecker", "Layout", "LruCache", "MAX_COMMANDS_PER_SUBMIT", "Matrix", "OPERAND_BYTES", "Op", "PostOpDesc",
    "SUBMIT", "Submission", "ValidPostOp", "ValidationCache", "View", "WAIT", "bind", "check_command", "check_submission", "copy_arrays",
    "decode_command", "encode_submission", "gemm_arrays", "gemm_group_arrays", "op_handles", "pack_gemm", "view_array",
]
