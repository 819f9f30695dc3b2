"""Run by Debian's /usr/bin/python3 with Debian's NumPy, unmodified, under the drop-in BLAS.

usage: python3 numpy_blas.py OUT.npz. Computes f32 and f64 products with ``@`` (NumPy calls
cblas_sgemm / cblas_dgemm of the system BLAS) and ``numpy.linalg.solve`` (LAPACK), and saves the
inputs and the answers for the test to check with its own NumPy.
"""

import sys

import numpy as np

rng = np.random.default_rng(22)
out = {}
for name, dtype in (("f32", np.float32), ("f64", np.float64)):
    a = rng.uniform(-1, 1, (130, 70)).astype(dtype)
    b = rng.uniform(-1, 1, (70, 90)).astype(dtype)
    out[f"{name}_a"], out[f"{name}_b"], out[f"{name}_c"] = a, b, a @ b
m = rng.uniform(-1, 1, (120, 120)) + 120 * np.eye(120)
rhs = rng.uniform(-1, 1, (120, 3))
out["solve_m"], out["solve_rhs"], out["solve_x"] = m, rhs, np.linalg.solve(m, rhs)
out["numpy_file"] = np.array(np.__file__)
np.savez(sys.argv[1], **out)
