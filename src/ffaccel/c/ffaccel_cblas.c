/* SPDX-License-Identifier: MIT */
/*
 * CBLAS GEMM (and the Fortran sgemm_/dgemm_) on an ffaccel device server: libffaccel_cblas.so,
 * for programs that want their GEMMs on the device, every one of them whatever its size. The
 * drop-in BLAS that exports the whole BLAS and sends small GEMMs to the host (libffaccel_blas.so)
 * is ffaccel_blas.c.
 *
 * The device is the one FFACCEL_DEVICE names (unix:PATH[?transport=socket|ring]), else the
 * default socket of `ffaccel serve`; the library connects on the first call and again after
 * the server is lost (ffaccel_gemm.c). M == 0, N == 0, or (alpha == 0 or K == 0) with
 * beta == 1 return at once. Illegal arguments are reported with the reference parameter
 * numbers through cblas_xerbla (CBLAS names) or the Fortran XERBLA message (sgemm_, dgemm_),
 * and the call returns with C untouched, as the reference BLAS does.
 *
 * A device failure never leaves a wrong C (a BLAS caller has no status to check): the call runs
 * on the host BLAS instead, found as the drop-in finds it (FFACCEL_HOST_BLAS, else the system's;
 * ffaccel_host_blas.c), and one line on stderr says so, once until the device works again; with
 * no host BLAS, or with FFACCEL_BLAS_STRICT=1, the program aborts with the reason.
 */
#define _GNU_SOURCE
#include "ffaccel_host_blas.h"

#include <dlfcn.h>
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

const char ffa_library_tag[] = "ffaccel cblas";

/* The current device failure was said (cleared when a call works again: the next outage is said too). */
static int outage_reported;

/* g on the device; when the device fails, on the host BLAS (or the program stops: strict mode). */
static void run(const char *rout, const struct ffa_gemm_args *g)
{
	struct ffa_error_info why;
	char line[1024];
	int rc;
	if (ffa_gemm_quick_return(g)) /* nothing to do: says nothing about the device */
		return;
	rc = ffa_gemm_device(g, &why);
	if (!rc) {
		if (__atomic_load_n(&outage_reported, __ATOMIC_RELAXED))
			__atomic_store_n(&outage_reported, 0, __ATOMIC_RELAXED);
		return;
	}
	ffa_gemm_describe(line, sizeof(line), rout, rc, &why);
	ffa_device_failure_strict_check(line);
	ffa_host_blas(); /* found (or the program stops) before the line says it runs there */
	if (!__atomic_exchange_n(&outage_reported, 1, __ATOMIC_RELAXED))
		ffa_say("%s; this call runs on the host BLAS %s (said once until the device works again)", line,
			ffa_host_blas_path());
	ffa_gemm_host(g);
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

/* Whether addr lies in a library that has sgemm_ too: a BLAS, whose XERBLA is its own, not the program's. */
static int in_a_blas(const void *addr)
{
	Dl_info at, gemm_at;
	void *lib, *gemm;
	int blas;
	if (!dladdr(addr, &at) || !at.dli_fname || !*at.dli_fname)
		return 0;
	lib = dlopen(at.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
	if (!lib) /* the executable (named by argv[0]) is not found by name: a program's own */
		return 0;
	gemm = dlsym(lib, "sgemm_"); /* searches the library's dependencies too: compare where it lies */
	blas = gemm && dladdr(gemm, &gemm_at) && gemm_at.dli_fbase == at.dli_fbase;
	dlclose(lib);
	return blas;
}

/*
 * An illegal argument of sgemm_/dgemm_. The reference SGEMM reports through XERBLA, which a program
 * may replace with its own (R's raises an R error): that one gets the report, the name padded to 6
 * as the reference passes it; it was never called (the message was printed whatever the program
 * defined). A BLAS library's XERBLA (netlib's ends the program) or none at all: the reference
 * message here, and the call returns instead of stopping.
 */
/* Weak and undefined here: NULL unless something in the process defines it. Referenced (not looked up
 * by name) so that a program linked to this library exports its own, which it would not otherwise. */
extern void xerbla_(const char *srname, const int *info, size_t srname_len) __attribute__((weak));

static void f77_xerbla(const char *name, int info)
{
	void (*own)(const char *, const int *, size_t) = xerbla_;
	char padded[7];
	if (own && !ffa_in_this_library((const void *)own) && !in_a_blas((const void *)own)) {
		snprintf(padded, sizeof(padded), "%-6s", name);
		own(padded, &info, 6);
		return;
	}
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
