/* SPDX-License-Identifier: MIT */
/*
 * CBLAS GEMM (and the Fortran sgemm_/dgemm_) on an ffaccel device server, and nowhere else:
 * libffaccel_cblas.so, for programs that want their GEMMs on the device or not at all. The
 * drop-in BLAS that falls back to the host (libffaccel_blas.so) is ffaccel_blas.c.
 *
 * The device is the one FFACCEL_DEVICE names (unix:PATH[?transport=socket|ring]), else the
 * default socket of `ffaccel serve`; the library connects on the first call and again after
 * the server is lost (ffaccel_gemm.c). M == 0, N == 0, or (alpha == 0 or K == 0) with
 * beta == 1 return at once. Illegal arguments are reported with the reference parameter
 * numbers through cblas_xerbla (CBLAS names) or the Fortran XERBLA message (sgemm_, dgemm_);
 * a device error is reported the same way (parameter 0). Either way the call returns with C
 * untouched instead of ending the program.
 */
#define _GNU_SOURCE
#include "ffaccel_gemm.h"

#include <stdarg.h>
#include <stdio.h>

/* The reference message; then the call returns instead of exiting. A program's own replaces it. */
__attribute__((weak)) void cblas_xerbla(CBLAS_INT p, const char *rout, const char *form, ...)
{
	va_list ap;
	va_start(ap, form);
	ffa_xerbla_print((int)p, rout, form, ap);
	va_end(ap);
}

static void run(const char *rout, const struct ffa_gemm_args *g)
{
	struct ffa_error_info why;
	int rc = ffa_gemm_device(g, &why);
	if (rc) {
		char line[1024];
		ffa_gemm_describe(line, sizeof(line), rout, rc, &why);
		cblas_xerbla(0, rout, "%s\n", line);
	}
}

static void cblas_gemm(const char *rout, uint32_t dtype, size_t elem, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
		       CBLAS_TRANSPOSE TransB, int M, int N, int K, double alpha, const void *A, int lda,
		       const void *B, int ldb, double beta, void *C, int ldc)
{
	struct ffa_gemm_args g;
	if (!ffa_gemm_cblas_call(rout, dtype, elem, layout, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C,
				 ldc, &g))
		run(rout, &g);
}

void cblas_sgemm(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, const CBLAS_INT M,
		 const CBLAS_INT N, const CBLAS_INT K, const float alpha, const float *A, const CBLAS_INT lda,
		 const float *B, const CBLAS_INT ldb, const float beta, float *C, const CBLAS_INT ldc)
{
	cblas_gemm("cblas_sgemm", FFA_DTYPE_F32, sizeof(float), layout, TransA, TransB, M, N, K, alpha, A, lda, B,
		   ldb, beta, C, ldc);
}

void cblas_dgemm(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, const CBLAS_INT M,
		 const CBLAS_INT N, const CBLAS_INT K, const double alpha, const double *A, const CBLAS_INT lda,
		 const double *B, const CBLAS_INT ldb, const double beta, double *C, const CBLAS_INT ldc)
{
	cblas_gemm("cblas_dgemm", FFA_DTYPE_F64, sizeof(double), layout, TransA, TransB, M, N, K, alpha, A, lda, B,
		   ldb, beta, C, ldc);
}

/* The reference XERBLA's message (Fortran callers); the call then returns instead of stopping. */
static void f77_xerbla(const char *name, int info)
{
	fprintf(stderr, " ** On entry to %-6s parameter number %2d had an illegal value\n", name, info);
}

static void f77_gemm(const char *name, const char *rout, uint32_t dtype, size_t elem, const char *transa,
		     const char *transb, const int *m, const int *n, const int *k, double alpha, const void *a,
		     const int *lda, const void *b, const int *ldb, double beta, void *c, const int *ldc)
{
	struct ffa_gemm_args g;
	int info = ffa_gemm_check_f77(ffa_trans_char(*transa), ffa_trans_char(*transb), *m, *n, *k, *lda, *ldb, *ldc);
	if (info) {
		f77_xerbla(name, info);
		return;
	}
	g = ffa_gemm_from_f77(dtype, elem, *transa, *transb, *m, *n, *k, alpha, a, *lda, b, *ldb, beta, c, *ldc);
	run(rout, &g);
}

/* Fortran BLAS (column-major, arguments by reference; hidden string lengths are not used). */
void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const float *alpha,
	    const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
	    const int *ldc);
void dgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const double *alpha,
	    const double *a, const int *lda, const double *b, const int *ldb, const double *beta, double *c,
	    const int *ldc);

void sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const float *alpha,
	    const float *a, const int *lda, const float *b, const int *ldb, const float *beta, float *c,
	    const int *ldc)
{
	f77_gemm("SGEMM", "sgemm", FFA_DTYPE_F32, sizeof(float), transa, transb, m, n, k, *alpha, a, lda, b, ldb,
		 *beta, c, ldc);
}

void dgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k, const double *alpha,
	    const double *a, const int *lda, const double *b, const int *ldb, const double *beta, double *c,
	    const int *ldc)
{
	f77_gemm("DGEMM", "dgemm", FFA_DTYPE_F64, sizeof(double), transa, transb, m, n, k, *alpha, a, lda, b, ldb,
		 *beta, c, ldc);
}
