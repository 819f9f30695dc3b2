/*
 * The spellings OpenBLAS's and Intel MKL's cblas.h add to netlib's: the typedef CBLAS_ORDER,
 * CblasConjNoTrans, MKL's CBLAS_IDENTIFIER / CBLAS_STORAGE / CBLAS_OFFSET, and MKL's strided
 * batched GEMM. Compiled against ffaccel's cblas.h; prints the enum values.
 */
#include <cblas.h>
#include <stdio.h>

int main(void)
{
	CBLAS_ORDER order = CblasRowMajor; /* OpenBLAS */
	CBLAS_TRANSPOSE conj = CblasConjNoTrans; /* OpenBLAS */
	CBLAS_IDENTIFIER which = CblasBMatrix;  /* MKL */
	CBLAS_STORAGE storage = CblasPacked;    /* MKL */
	CBLAS_OFFSET offset = CblasFixOffset;   /* MKL */
	float a[1] = {2}, b[1] = {3}, c[2] = {0, 0};
	cblas_sgemm_batch_strided(order, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0f, a, 1, 0, b, 1, 0, 0.0f, c, 1, 1, 2);
	printf("%d %d %d %d %d %g %g\n", (int)order, (int)conj, (int)which, (int)storage, (int)offset, c[0], c[1]);
	return 0;
}
