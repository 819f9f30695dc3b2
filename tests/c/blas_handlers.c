/*
 * A program with its own BLAS error handlers (cblas_xerbla and xerbla_), as a program may define
 * them to replace the library's: each bad call below must reach them with the reference routine
 * name and parameter number. Prints one line per handler call.
 */
#include <cblas.h>
#include <stddef.h>
#include <stdio.h>

void xerbla_(const char *srname, const int *info, size_t len);
void sgemm_(const char *, const char *, const int *, const int *, const int *, const float *, const float *,
	    const int *, const float *, const int *, const float *, float *, const int *, size_t, size_t);

void cblas_xerbla(CBLAS_INT p, const char *rout, const char *form, ...)
{
	(void)form;
	printf("cblas_xerbla %d %s\n", (int)p, rout);
}

void xerbla_(const char *srname, const int *info, size_t len)
{
	size_t n = len < 6 ? len : 6;
	while (n && srname[n - 1] == ' ')
		n--;
	printf("xerbla %d %.*s\n", *info, (int)n, srname);
}

int main(void)
{
	float a[16] = {0}, b[16] = {0}, c[16] = {0};
	double ad[16] = {0}, bd[16] = {0}, cd[16] = {0};
	const int two = 2, one = 1;
	const float f1 = 1, f0 = 0;
	/* row-major lda 2 < K 3: parameter 9 */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1, a, 2, b, 2, 0, c, 2);
	/* column-major lda 2 < M 3: parameter 9 */
	cblas_dgemm(CblasColMajor, CblasNoTrans, CblasNoTrans, 3, 2, 2, 1, ad, 2, bd, 2, 0, cd, 3);
	/* row-major bad TransB: parameter 3 */
	cblas_dgemm(CblasRowMajor, CblasNoTrans, (CBLAS_TRANSPOSE)7, 2, 2, 2, 1, ad, 2, bd, 2, 0, cd, 2);
	/* Fortran ldc 1 < M 2: parameter 13 */
	sgemm_("N", "N", &two, &two, &two, &f1, a, &two, b, &two, &f0, c, &one, 1, 1);
	/* stridec 1 < ldc * M = 4 with two entries: parameter 17 */
	cblas_sgemm_batch_strided(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, 4, b, 2, 4, 0, c, 2, 1,
				  2);
	/* batch_size -1: parameter 18 */
	cblas_dgemm_batch_strided(CblasColMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, ad, 2, 4, bd, 2, 4, 0, cd, 2,
				  4, -1);
	/* row-major ldb 1 < N 2 of the strided batch: its parameter 12 */
	cblas_sgemm_batch_strided(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1, a, 2, 4, b, 1, 4, 0, c, 2, 4,
				  1);
	{ /* MKL's group API: group_count -1 (15); a negative group size (16); group 1's lda (9) */
		const CBLAS_TRANSPOSE t[2] = {CblasNoTrans, CblasNoTrans};
		const int mm[2] = {2, 2}, ld[2] = {2, 2}, bad_ld[2] = {2, 1}, size[2] = {1, -1}, ok_size[2] = {1, 1};
		const float al[2] = {1, 1}, be[2] = {0, 0};
		const float *ap[2] = {a, a}, *bp[2] = {b, b};
		float *cp[2] = {c, c};
		cblas_sgemm_batch(CblasRowMajor, t, t, mm, mm, mm, al, ap, ld, bp, ld, be, cp, ld, -1, ok_size);
		cblas_sgemm_batch(CblasRowMajor, t, t, mm, mm, mm, al, ap, ld, bp, ld, be, cp, ld, 2, size);
		cblas_sgemm_batch(CblasColMajor, t, t, mm, mm, mm, al, ap, bad_ld, bp, ld, be, cp, ld, 2, ok_size);
	}
	/* a routine the host BLAS runs: its own checks report through the program's handler too */
	cblas_dgemv(CblasColMajor, CblasNoTrans, 3, 2, 1, ad, 1, bd, 1, 0, cd, 1);
	return 0;
}
