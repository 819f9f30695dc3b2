"""Epilogue post-ops for :func:`ffaccel.matmul` (``import ffaccel.post`` or ``from ffaccel import post``).

What :mod:`ffaccel.frontends.post` defines, under the name users write.

Examples
--------
>>> import numpy as np, ffaccel.post
>>> a = np.array([[1.0, -2.0]], np.float32); b = np.eye(2, dtype=np.float32)
>>> ffaccel.matmul(a, b, post_ops=ffaccel.post.relu())
array([[1., 0.]], dtype=float32)
"""

from .frontends.post import PostOp, add, bias, clamp, gelu, relu, scale

__all__ = ["PostOp", "add", "bias", "clamp", "gelu", "relu", "scale"]
