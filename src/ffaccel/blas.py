"""CBLAS-style ``gemm`` over flat storage (``from ffaccel.blas import gemm``).

:func:`ffaccel.frontends.blas.gemm`, under the name users write.

Examples
--------
>>> import numpy as np
>>> from ffaccel.blas import gemm
>>> c = np.zeros(4)
>>> gemm("row", "N", "N", 2, 2, 2, 1.0, np.array([1.0, 2, 3, 4]), 2, np.eye(2).ravel(), 2, 0.0, c, 2)
>>> c
array([1., 2., 3., 4.])
"""

from .frontends.blas import gemm

__all__ = ["gemm"]
