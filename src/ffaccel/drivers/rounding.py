"""Correct rounding helpers shared by drivers: float64 -> any spec float type, and int32 wrapping.

Why this exists: casting float64 to bfloat16 with ml_dtypes goes through float32
and so rounds twice. ``1 + 2**-8 + 2**-30`` lies just above the halfway point
between the bf16 neighbours 1 and 1 + 2**-7, so it must round up; float32 first
rounds it to exactly ``1 + 2**-8`` (a tie), which then rounds to even: 1.
:func:`round_to` avoids that by rounding to float32 *to odd* first: with at
least two more significand bits than the target, round-to-odd followed by
round-to-nearest-even equals one direct round-to-nearest-even (Boldo & Melquiond,
"Emulation of FMA and correctly rounded sums: proved algorithms using rounding
to odd", IEEE TC 2008).
"""

from __future__ import annotations

import numpy as np

from ..spec import DTYPES, DType

_INT32_MASK = 0xFFFF_FFFF


def _exact_f32_k_chunk(a: DType, b: DType) -> int:
    """The largest power-of-two k whose integer dot products of a and b stay within 2**24 in
    magnitude, where float32 holds every integer exactly (int8*int8: 1024 * 128**2 = 2**24;
    uint8*int8: 512 * 255 * 128 < 2**24; uint8*uint8: 256 * 255**2 < 2**24)."""
    def largest(dt: DType) -> int:
        info = np.iinfo(DTYPES[dt].numpy)
        return max(-int(info.min), int(info.max))

    k = (1 << 24) // (largest(a) * largest(b))
    return 1 << (k.bit_length() - 1)


#: k chunk of an exact integer GEMM through float32 GEMMs, per (a, b) int8/uint8 pair: every
#: driver that sums int8 products in float32 cuts k into chunks of this size.
INT_F32_EXACT_CHUNK: dict[tuple[DType, DType], int] = {
    (a, b): _exact_f32_k_chunk(a, b) for a in (DType.I8, DType.U8) for b in (DType.I8, DType.U8)}
assert INT_F32_EXACT_CHUNK == {(DType.I8, DType.I8): 1024, (DType.I8, DType.U8): 512, (DType.U8, DType.I8): 512,
                               (DType.U8, DType.U8): 256}


def _to_f32_odd(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 rounded to odd: truncate toward zero, then set the last bit if inexact.

    NaN and infinities pass through; values beyond float32's range become +-max with
    the (odd) last bit set, which the next rounding step sends to inf where it should.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        t = x.astype(np.float32)  # round to nearest even
        back = t.astype(np.float64)
        # Round-to-nearest may have gone away from zero; step back one ulp to truncate.
        too_far = np.abs(back) > np.abs(x)
        t = np.where(too_far, np.nextafter(t, np.float32(0)), t)
        inexact = t.astype(np.float64) != x
    bits = t.view(np.uint32) | inexact.astype(np.uint32)  # sticky bit
    out = bits.view(np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), out)


def round_to(x: np.ndarray, dtype: DType) -> np.ndarray:
    """Round float64 values to ``dtype`` once, to nearest with ties to even.

    Overflow gives a signed infinity, NaN stays NaN, signed zeros are kept.

    Parameters
    ----------
    x : ndarray
        Values; converted to float64 first (that conversion must be exact, so pass
        float64 or any narrower float type).
    dtype : DType
        A float spec dtype (F64, F32, F16 or BF16).

    Returns
    -------
    ndarray
        Same shape, in ``dtype``'s NumPy type.

    Examples
    --------
    >>> import numpy as np
    >>> from ffaccel.spec import DType
    >>> float(round_to(np.array([1 + 2**-8 + 2**-30]), DType.BF16)[0])  # no double rounding
    1.0078125
    """
    info = DTYPES[dtype]
    if not info.is_float:
        raise ValueError(f"round_to needs a float dtype, got {info.name}")
    x = np.asarray(x, dtype=np.float64)
    if dtype == DType.F64:
        return x.copy()
    if dtype == DType.F32:
        with np.errstate(over="ignore"):
            return x.astype(np.float32)  # NumPy's double -> float cast is one correct RNE
    with np.errstate(over="ignore"):
        return _to_f32_odd(x).astype(info.numpy)  # float32 -> f16/bf16 is one correct RNE


def wrap_int32(x: np.ndarray | int) -> np.ndarray:
    """Wrap integers modulo 2**32 into int32 (two's complement), like 32-bit hardware.

    Parameters
    ----------
    x : ndarray or int
        Integer array (any NumPy integer dtype, or an object array of Python ints
        of any size).

    Examples
    --------
    >>> wrap_int32(np.array([2**31, -2**31 - 1, 2**40 + 5], dtype=object)).tolist()
    [-2147483648, 2147483647, 5]
    """
    arr = np.asarray(x)
    if arr.dtype == object:
        # Python ints are exact at any size; & acts on their infinite two's complement.
        low = np.array([int(v) & _INT32_MASK for v in arr.ravel()], dtype=np.int64).reshape(arr.shape)
    else:
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"wrap_int32 needs integers, got {arr.dtype}")
        low = arr.astype(np.int64) & _INT32_MASK  # a uint64 input casts modulo 2**64: still fine mod 2**32
    low = np.asarray(low, dtype=np.int64)
    return np.where(low >= 2**31, low - 2**32, low).astype(np.int32)


__all__ = ["round_to", "wrap_int32"]
