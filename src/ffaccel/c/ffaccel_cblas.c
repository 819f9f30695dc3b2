/* SPDX-License-Identifier: MIT */
/*
 * CBLAS GEMM (and the Fortran sgemm_/dgemm_) on an ffaccel device server.
 *
 * The device is the one FFACCEL_DEVICE names (unix:PATH[?transport=socket|ring]), else the
 * default socket of `ffaccel serve`; the library connects on the first call and again after
 * the server is lost. The server cannot see this process's memory, so each call copies the
 * operands' windows into one shared staging buffer (packed), submits one GEMM descriptor and
 * copies D's window back into C: padding between rows of C is never written.
 *
 * The reference BLAS rules hold exactly: beta == 0 never reads C (it is not copied, and the
 * descriptor has no C); alpha == 0 or K == 0 never reads A and B (they are not copied, and
 * the descriptor has k = 0, so D = beta * C); M == 0, N == 0, or (alpha == 0 or K == 0) with
 * beta == 1 return at once. Illegal arguments are reported with the reference parameter
 * numbers through cblas_xerbla (CBLAS names) or the Fortran XERBLA message (sgemm_, dgemm_);
 * a device error is reported the same way (parameter 0). Either way the call returns with C
 * untouched instead of ending the program.
 */
#define _GNU_SOURCE
#include "cblas.h"
#include "ffaccel.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The longest a GEMM may take on the device before the call reports a timeout. */
#define GEMM_TIMEOUT_NS (600ull * 1000000000ull)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static ffa_client *client;
static uint32_t stage_handle;
static unsigned char *stage;
static uint64_t stage_bytes;

__attribute__((weak)) void cblas_xerbla(CBLAS_INT p, const char *rout, const char *form, ...)
{
	va_list ap;
	if (p)
		fprintf(stderr, "Parameter %d to routine %s was incorrect\n", (int)p, rout);
	va_start(ap, form);
	vfprintf(stderr, form, ap);
	va_end(ap);
}

/* A forked child must not speak on its parent's connection: it opens its own when it needs one. */
static void forget_in_child(void)
{
	ffa_close(client);
	client = NULL;
	stage = NULL;
	stage_bytes = 0;
	pthread_mutex_init(&lock, NULL);
}

static void install_atfork(void)
{
	pthread_atfork(NULL, NULL, forget_in_child);
}

static void drop_client(void)
{
	ffa_close(client);
	client = NULL;
	stage = NULL;
	stage_bytes = 0;
}

static void report(const char *rout, uint32_t code, const struct ffa_error_info *e)
{
	const char *dev = getenv("FFACCEL_DEVICE");
	cblas_xerbla(0, rout, "%s: the ffaccel device %s refused or failed the call: %s %s: %s\n", rout,
		     dev && *dev ? dev : "(default socket)", ffa_error_name(code), e->param, e->message);
}

/* A connection and a staging buffer of at least bytes; reports and returns nonzero when not. */
static int ready(const char *rout, uint64_t bytes)
{
	int rc;
	if (!client) {
		struct ffa_error_info err;
		memset(&err, 0, sizeof(err));
		rc = ffa_open(NULL, &client, &err);
		if (rc) {
			client = NULL;
			report(rout, (uint32_t)rc, &err);
			return rc;
		}
	}
	if (bytes > stage_bytes) {
		void *p;
		uint32_t h;
		uint64_t want = bytes < 4096 ? 4096 : bytes;
		if (stage) {
			ffa_free(client, stage_handle);
			stage = NULL;
			stage_bytes = 0;
		}
		rc = ffa_alloc(client, want, &h, &p);
		if (rc) {
			report(rout, (uint32_t)rc, ffa_last_error(client));
			if (rc == FFA_ERR_DEVICE_LOST)
				drop_client();
			return rc;
		}
		stage_handle = h;
		stage = p;
		stage_bytes = want;
	}
	return 0;
}

static uint64_t align64(uint64_t x)
{
	return (x + 63) & ~(uint64_t)63;
}

/* Copy a rows x cols window between strided and packed storage. */
static void pack(unsigned char *dst, const unsigned char *src, uint64_t rows, uint64_t cols, uint64_t ld,
		 size_t elem)
{
	for (uint64_t i = 0; i < rows; i++)
		memcpy(dst + i * cols * elem, src + i * ld * elem, cols * elem);
}

static void unpack(unsigned char *dst, const unsigned char *src, uint64_t rows, uint64_t cols, uint64_t ld,
		   size_t elem)
{
	for (uint64_t i = 0; i < rows; i++)
		memcpy(dst + i * ld * elem, src + i * cols * elem, cols * elem);
}

/* Row-major GEMM with validated arguments: C (m x n, ldc) = alpha op(A) op(B) + beta C. */
static void gemm_row(const char *rout, uint32_t dtype, size_t elem, int ta, int tb, int m, int n, int k,
		     double alpha, const void *A, int lda, const void *B, int ldb, double beta, void *C, int ldc)
{
	union ffa_command cmd;
	struct ffa_gemm *g = &cmd.gemm;
	uint64_t kd, ar, ac, br, bc, a_off, b_off, c_off, total, fence;
	int rc;
	if (m == 0 || n == 0 || ((alpha == 0 || k == 0) && beta == 1))
		return;
	kd = alpha == 0 ? 0 : (uint64_t)k; /* alpha == 0: A and B are not read */
	ar = ta ? kd : (uint64_t)m;
	ac = ta ? (uint64_t)m : kd;
	br = tb ? (uint64_t)n : kd;
	bc = tb ? kd : (uint64_t)n;
	a_off = 0;
	/* each product fits (< 2^62 * 8), their sum may not: say so instead of wrapping */
	if (ar * ac > (1ull << 58) || br * bc > (1ull << 58) || (uint64_t)m * (uint64_t)n > (1ull << 58)) {
		cblas_xerbla(0, rout, "%s: OUT_OF_MEMORY size: operands of %llu, %llu and %llu elements; allowed: "
			     "at most 2^58 each\n", rout, (unsigned long long)(ar * ac), (unsigned long long)(br * bc),
			     (unsigned long long)m * (unsigned long long)n);
		return;
	}
	b_off = align64(ar * ac * elem);
	c_off = b_off + align64(br * bc * elem);
	total = c_off + align64((uint64_t)m * (uint64_t)n * elem);

	pthread_once(&once, install_atfork);
	pthread_mutex_lock(&lock);
	if (ready(rout, total))
		goto out;
	if (kd) {
		pack(stage + a_off, A, ar, ac, (uint64_t)lda, elem);
		pack(stage + b_off, B, br, bc, (uint64_t)ldb, elem);
	}
	if (beta != 0) /* beta == 0: C is not read */
		pack(stage + c_off, C, (uint64_t)m, (uint64_t)n, (uint64_t)ldc, elem);

	memset(&cmd, 0, sizeof(cmd));
	g->opcode = FFA_OPCODE_GEMM;
	g->flags = (ta ? FFA_GEMM_TRANS_A : 0) | (tb ? FFA_GEMM_TRANS_B : 0);
	g->size_bytes = FFA_COMMAND_BYTES;
	g->m = (uint32_t)m;
	g->n = (uint32_t)n;
	g->k = (uint32_t)kd;
	g->batch = 1;
	g->acc_dtype = dtype;
	g->alpha_bits = ffa_f64_bits(alpha);
	g->beta_bits = ffa_f64_bits(beta);
	g->a = ffa_matrix(stage_handle, dtype, a_off, (uint32_t)ar, (uint32_t)ac, ac ? ac : 1, 0);
	g->b = ffa_matrix(stage_handle, dtype, b_off, (uint32_t)br, (uint32_t)bc, bc ? bc : 1, 0);
	g->d = ffa_matrix(stage_handle, dtype, c_off, (uint32_t)m, (uint32_t)n, (uint64_t)n, 0);
	if (beta != 0)
		g->c = g->d; /* in place: D == C exactly */

	rc = ffa_submit(client, FFA_ENGINE_COMPUTE, NULL, 0, &cmd, 1, &fence);
	if (!rc)
		rc = ffa_wait(client, FFA_ENGINE_COMPUTE, fence, GEMM_TIMEOUT_NS);
	if (rc) {
		report(rout, (uint32_t)rc, ffa_last_error(client));
		if (rc == FFA_ERR_DEVICE_LOST)
			drop_client(); /* reconnect on the next call: the server may be back */
		goto out;
	}
	unpack(C, stage + c_off, (uint64_t)m, (uint64_t)n, (uint64_t)ldc, elem);
out:
	pthread_mutex_unlock(&lock);
}

static int max1(int x)
{
	return x > 1 ? x : 1;
}

/* 1 for 'T'/'C', 0 for 'N' (either case), -1 otherwise: the Fortran TRANS argument. */
static int trans_char(char t)
{
	t = (char)toupper((unsigned char)t);
	return t == 'N' ? 0 : (t == 'T' || t == 'C') ? 1 : -1;
}

static int trans_enum(CBLAS_TRANSPOSE t)
{
	return t == CblasNoTrans ? 0 : (t == CblasTrans || t == CblasConjTrans) ? 1 : -1;
}

/* The reference Fortran GEMM's argument checks, in its order: INFO, the parameter number, or 0. */
static int check_f77(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc)
{
	if (ta < 0)
		return 1;
	if (tb < 0)
		return 2;
	if (m < 0)
		return 3;
	if (n < 0)
		return 4;
	if (k < 0)
		return 5;
	if (lda < max1(ta ? k : m))
		return 8;
	if (ldb < max1(tb ? n : k))
		return 10;
	if (ldc < max1(m))
		return 13;
	return 0;
}

/*
 * CBLAS front: checks as the reference CBLAS does (layout 1, TransA 2, TransB 3, then the
 * Fortran routine's checks shifted by one for the layout argument; row-major calls the Fortran
 * routine with A and B swapped, so its M/N and lda/ldb numbers are swapped back).
 */
static void cblas_gemm(const char *rout, uint32_t dtype, size_t elem, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
		       CBLAS_TRANSPOSE TransB, int M, int N, int K, double alpha, const void *A, int lda,
		       const void *B, int ldb, double beta, void *C, int ldc)
{
	int ta = trans_enum(TransA), tb = trans_enum(TransB), info;
	if (layout != CblasRowMajor && layout != CblasColMajor) {
		cblas_xerbla(1, rout, "Illegal layout setting, %d\n", (int)layout);
		return;
	}
	if (ta < 0) {
		cblas_xerbla(2, rout, "Illegal TransA setting, %d\n", (int)TransA);
		return;
	}
	if (tb < 0) {
		cblas_xerbla(3, rout, "Illegal TransB setting, %d\n", (int)TransB);
		return;
	}
	if (layout == CblasColMajor) {
		info = check_f77(ta, tb, M, N, K, lda, ldb, ldc);
		if (info) {
			cblas_xerbla(info + 1, rout, "");
			return;
		}
		/* column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T */
		gemm_row(rout, dtype, elem, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
		return;
	}
	info = check_f77(tb, ta, N, M, K, ldb, lda, ldc);
	if (info) {
		static const int swap[14] = {0, 1, 2, 3, 5, 4, 6, 7, 8, 11, 10, 9, 12, 13};
		info += 1;
		cblas_xerbla(info < 14 ? swap[info] : info, rout, "");
		return;
	}
	gemm_row(rout, dtype, elem, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
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
	int ta = trans_char(*transa), tb = trans_char(*transb);
	int info = check_f77(ta, tb, *m, *n, *k, *lda, *ldb, *ldc);
	if (info) {
		f77_xerbla(name, info);
		return;
	}
	gemm_row(rout, dtype, elem, tb, ta, *n, *m, *k, alpha, b, *ldb, a, *lda, beta, c, *ldc);
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
