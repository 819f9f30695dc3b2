"""The drop-in BLAS's routine table (ffaccel/c/blas_routines.txt) and what is generated from it."""

from __future__ import annotations

import pytest

from ffaccel.cli import blas_gen


def test_the_table_expands_precisions_and_adds_the_hidden_character_lengths() -> None:
    rs = {r.symbol: r for r in blas_gen.routines()}
    assert rs["dgemv_"].prototype() == ("void dgemv_(void *trans, void *m, void *n, void *alpha, void *a, void *lda, "
                                        "void *x, void *incx, void *beta, void *y, void *incy, size_t trans_len)")
    assert rs["cdotu_"].returns == "float _Complex" and rs["isamax_"].returns == "int"
    assert rs["cblas_zaxpy"].prototype() == ("void cblas_zaxpy(const CBLAS_INT N, const void *alpha, const void *X, "
                                             "const CBLAS_INT incX, void *Y, const CBLAS_INT incY)")
    assert rs["cblas_xerbla"].variadic and rs["sgemm_"].own and not rs["cgemm_"].own
    fwd = blas_gen.render_forwarders(list(rs.values()))
    assert "FFB_EXPORT void cgemm_(" in fwd and "FFB_EXPORT void sgemm_(" not in fwd  # own: written by hand


@pytest.mark.parametrize("line,why", [
    ("X void foo a", "a line starts with F or C"),
    ("F quad foo a", "unknown Fortran return 'quad' of foo"),
    ("C void cblas_$Tfoo(int n)", "precision macro without a {..} group"),
    ("C void notcblas(int n)", "not a C prototype"),
    ("F void {s,s}scal n a x incx", "a routine is listed twice"),
])
def test_a_bad_table_line_is_named(line: str, why: str) -> None:
    with pytest.raises(ValueError, match="blas_routines.txt") as err:
        blas_gen.routines(line)
    assert why in str(err.value)
