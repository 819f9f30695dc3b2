"""Layer 5: front-ends that existing code already speaks (NumPy-style matmul, CBLAS-style gemm)."""

from . import blas, post
from .numpy_api import matmul

__all__ = ["blas", "matmul", "post"]
