/* SPDX-License-Identifier: MIT */
/*
 * The GEMM core of the CBLAS libraries (see ffaccel_gemm.h).
 *
 * The server cannot see this process's memory, so each call copies the operands' windows into
 * one shared staging buffer (packed), submits one GEMM descriptor and copies D's window back
 * into C: padding between rows of C is never written. The reference BLAS rules hold exactly:
 * beta == 0 never reads C (it is not copied, and the descriptor has no C); alpha == 0 or K == 0
 * never reads A and B (they are not copied, and the descriptor has k = 0, so D = beta * C).
 */
#define _GNU_SOURCE
#include "ffaccel_gemm.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The longest a GEMM may take on the device before the call reports a timeout. */
#define GEMM_TIMEOUT_NS (600ull * 1000000000ull)
/* The largest operand, in elements, a call may stage (its byte size then fits 64 bits with room). */
#define MAX_STAGED_ELEMS (1ull << 58)

void ffa_xerbla_print(int p, const char *rout, const char *form, va_list ap)
{
	if (p)
		fprintf(stderr, "Parameter %d to routine %s was incorrect\n", p, rout);
	vfprintf(stderr, form, ap);
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static ffa_client *client;
static uint32_t stage_handle;
static unsigned char *stage;
static uint64_t stage_bytes;

static void drop_client(void)
{
	ffa_close(client);
	client = NULL;
	stage = NULL;
	stage_bytes = 0;
}

/* A forked child must not speak on its parent's connection: it opens its own when it needs one. */
static void forget_in_child(void)
{
	drop_client();
	pthread_mutex_init(&lock, NULL);
}

static void install_atfork(void)
{
	pthread_atfork(NULL, NULL, forget_in_child);
}

static int fail(struct ffa_error_info *why, const struct ffa_error_info *from, int rc)
{
	if (from && from != why)
		*why = *from;
	why->code = (uint32_t)rc;
	return rc;
}

/* A connection and a staging buffer of at least bytes, under the lock. */
static int ready(uint64_t bytes, struct ffa_error_info *why)
{
	int rc;
	if (!client) {
		rc = ffa_open(NULL, &client, why);
		if (rc) {
			client = NULL;
			return fail(why, NULL, rc);
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
			fail(why, ffa_last_error(client), rc);
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

/* Entry i of a batched operand: list[i], or src + i * stride elements. */
static const unsigned char *entry(const void *src, const void *const *list, uint64_t i, uint64_t stride, size_t elem)
{
	return list ? (const unsigned char *)list[i] : (const unsigned char *)src + i * stride * elem;
}

/* Pack `count` entries of a rows x cols operand. */
static void pack_entries(unsigned char *dst, const void *src, const void *const *list, uint64_t count, uint64_t stride,
			 uint64_t rows, uint64_t cols, uint64_t ld, size_t elem)
{
	for (uint64_t i = 0; i < count; i++)
		pack(dst + i * rows * cols * elem, entry(src, list, i, stride, elem), rows, cols, ld, elem);
}

int ffa_trans_char(char t)
{
	t = (char)toupper((unsigned char)t);
	return t == 'N' ? 0 : (t == 'T' || t == 'C') ? 1 : -1;
}

int ffa_trans_enum(CBLAS_TRANSPOSE t)
{
	return t == CblasNoTrans ? 0 : (t == CblasTrans || t == CblasConjTrans) ? 1 : -1;
}

static int max1(int x)
{
	return x > 1 ? x : 1;
}

int ffa_gemm_check_f77(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc)
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
 * The reference CBLAS checks layout (1), TransA (2) and TransB (3), then calls the Fortran routine
 * and shifts its INFO by one for the layout argument. Row-major calls the Fortran routine with A
 * and B swapped, so its M/N and lda/ldb numbers are swapped back.
 */
int ffa_gemm_check_cblas(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, int M, int N, int K,
			 int lda, int ldb, int ldc)
{
	static const int row_major_number[14] = {0, 1, 2, 3, 5, 4, 6, 7, 8, 11, 10, 9, 12, 13};
	int ta = ffa_trans_enum(TransA), tb = ffa_trans_enum(TransB), info;
	if (layout != CblasRowMajor && layout != CblasColMajor)
		return 1;
	if (ta < 0)
		return 2;
	if (tb < 0)
		return 3;
	if (layout == CblasColMajor) {
		info = ffa_gemm_check_f77(ta, tb, M, N, K, lda, ldb, ldc);
		return info ? info + 1 : 0;
	}
	info = ffa_gemm_check_f77(tb, ta, N, M, K, ldb, lda, ldc);
	if (!info)
		return 0;
	info += 1;
	return info < 14 ? row_major_number[info] : info;
}

void ffa_gemm_xerbla_cblas(int info, const char *rout, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
			   CBLAS_TRANSPOSE TransB)
{
	if (info == 1)
		cblas_xerbla(1, rout, "Illegal layout setting, %d\n", (int)layout);
	else if (info == 2)
		cblas_xerbla(2, rout, "Illegal TransA setting, %d\n", (int)TransA);
	else if (info == 3)
		cblas_xerbla(3, rout, "Illegal TransB setting, %d\n", (int)TransB);
	else
		cblas_xerbla(info, rout, "");
}

static struct ffa_gemm_args row_major(uint32_t dtype, size_t elem, int ta, int tb, int m, int n, int k, double alpha,
				      const void *A, int lda, const void *B, int ldb, double beta, void *C, int ldc)
{
	struct ffa_gemm_args g;
	memset(&g, 0, sizeof(g));
	g.dtype = dtype;
	g.elem = elem;
	g.ta = ta;
	g.tb = tb;
	g.m = (uint64_t)m;
	g.n = (uint64_t)n;
	g.k = (uint64_t)k;
	g.alpha = alpha;
	g.beta = beta;
	g.a = A;
	g.lda = (uint64_t)lda;
	g.b = B;
	g.ldb = (uint64_t)ldb;
	g.c = C;
	g.ldc = (uint64_t)ldc;
	g.batch = 1;
	return g;
}

struct ffa_gemm_args ffa_gemm_from_cblas(uint32_t dtype, size_t elem, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
					 CBLAS_TRANSPOSE TransB, int M, int N, int K, double alpha, const void *A,
					 int lda, const void *B, int ldb, double beta, void *C, int ldc)
{
	int ta = ffa_trans_enum(TransA), tb = ffa_trans_enum(TransB);
	if (layout == CblasColMajor) /* column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T */
		return row_major(dtype, elem, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
	return row_major(dtype, elem, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

struct ffa_gemm_args ffa_gemm_from_f77(uint32_t dtype, size_t elem, char transa, char transb, int m, int n, int k,
				       double alpha, const void *a, int lda, const void *b, int ldb, double beta, void *c,
				       int ldc)
{
	return row_major(dtype, elem, ffa_trans_char(transb), ffa_trans_char(transa), n, m, k, alpha, b, ldb, a, lda,
			 beta, c, ldc);
}

int ffa_gemm_cblas_call(const char *rout, uint32_t dtype, size_t elem, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
			CBLAS_TRANSPOSE TransB, int M, int N, int K, double alpha, const void *A, int lda, const void *B,
			int ldb, double beta, void *C, int ldc, struct ffa_gemm_args *g)
{
	int info = ffa_gemm_check_cblas(layout, TransA, TransB, M, N, K, lda, ldb, ldc);
	if (info) {
		ffa_gemm_xerbla_cblas(info, rout, layout, TransA, TransB);
		return info;
	}
	*g = ffa_gemm_from_cblas(dtype, elem, layout, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
	return 0;
}

int ffa_gemm_quick_return(const struct ffa_gemm_args *g)
{
	return g->batch == 0 || g->m == 0 || g->n == 0 || ((g->alpha == 0 || g->k == 0) && g->beta == 1);
}

int ffa_gemm_device(const struct ffa_gemm_args *g, struct ffa_error_info *why)
{
	union ffa_command cmd;
	struct ffa_gemm *d = &cmd.gemm;
	uint64_t kd, ar, ac, br, bc, na, nb, a_off, b_off, c_off, total, fence;
	int rc;
	memset(why, 0, sizeof(*why));
	if (ffa_gemm_quick_return(g))
		return 0;
	kd = g->alpha == 0 ? 0 : g->k; /* alpha == 0: A and B are not read */
	ar = g->ta ? kd : g->m;
	ac = g->ta ? g->m : kd;
	br = g->tb ? g->n : kd;
	bc = g->tb ? kd : g->n;
	na = g->a_list || g->stride_a || g->batch == 1 ? g->batch : 1; /* stride 0: one A for every entry */
	nb = g->b_list || g->stride_b || g->batch == 1 ? g->batch : 1;
	if (g->m > UINT32_MAX || g->n > UINT32_MAX || kd > UINT32_MAX || g->batch > UINT32_MAX) {
		snprintf(why->param, sizeof(why->param), "m");
		snprintf(why->message, sizeof(why->message), "m %llu, n %llu, k %llu, batch %llu; allowed: at most "
			 "2^32 - 1 each on the device", (unsigned long long)g->m, (unsigned long long)g->n,
			 (unsigned long long)kd, (unsigned long long)g->batch);
		return fail(why, NULL, FFA_ERR_UNSUPPORTED);
	}
	/* each product fits (< 2^64 / 8), their sum may not: say so instead of wrapping */
	if (ar * ac > MAX_STAGED_ELEMS / na || br * bc > MAX_STAGED_ELEMS / nb ||
	    g->m * g->n > MAX_STAGED_ELEMS / g->batch) {
		snprintf(why->param, sizeof(why->param), "size");
		snprintf(why->message, sizeof(why->message), "operands of %llu, %llu and %llu elements; allowed: at "
			 "most 2^58 each", (unsigned long long)(ar * ac * na), (unsigned long long)(br * bc * nb),
			 (unsigned long long)(g->m * g->n * g->batch));
		return fail(why, NULL, FFA_ERR_OUT_OF_MEMORY);
	}
	a_off = 0;
	b_off = align64(ar * ac * na * g->elem);
	c_off = b_off + align64(br * bc * nb * g->elem);
	total = c_off + align64(g->m * g->n * g->batch * g->elem);

	pthread_once(&once, install_atfork);
	pthread_mutex_lock(&lock);
	rc = ready(total, why);
	if (rc)
		goto out;
	if (kd) {
		pack_entries(stage + a_off, g->a, g->a_list, na, g->stride_a, ar, ac, g->lda, g->elem);
		pack_entries(stage + b_off, g->b, g->b_list, nb, g->stride_b, br, bc, g->ldb, g->elem);
	}
	if (g->beta != 0) /* beta == 0: C is not read */
		pack_entries(stage + c_off, g->c, (const void *const *)g->c_list, g->batch, g->stride_c, g->m, g->n, g->ldc,
			     g->elem);

	memset(&cmd, 0, sizeof(cmd));
	d->opcode = FFA_OPCODE_GEMM;
	d->flags = (g->ta ? FFA_GEMM_TRANS_A : 0) | (g->tb ? FFA_GEMM_TRANS_B : 0);
	d->size_bytes = FFA_COMMAND_BYTES;
	d->m = (uint32_t)g->m;
	d->n = (uint32_t)g->n;
	d->k = (uint32_t)kd;
	d->batch = (uint32_t)g->batch;
	d->acc_dtype = g->dtype;
	d->alpha_bits = ffa_f64_bits(g->alpha);
	d->beta_bits = ffa_f64_bits(g->beta);
	d->a = ffa_matrix(stage_handle, g->dtype, a_off, (uint32_t)ar, (uint32_t)ac, ac ? ac : 1, na > 1 ? ar * ac : 0);
	d->b = ffa_matrix(stage_handle, g->dtype, b_off, (uint32_t)br, (uint32_t)bc, bc ? bc : 1, nb > 1 ? br * bc : 0);
	d->d = ffa_matrix(stage_handle, g->dtype, c_off, (uint32_t)g->m, (uint32_t)g->n, g->n,
			  g->batch > 1 ? g->m * g->n : 0);
	if (g->beta != 0)
		d->c = d->d; /* in place: D == C exactly */

	rc = ffa_submit(client, FFA_ENGINE_COMPUTE, NULL, 0, &cmd, 1, &fence);
	if (!rc)
		rc = ffa_wait(client, FFA_ENGINE_COMPUTE, fence, GEMM_TIMEOUT_NS);
	if (rc) {
		fail(why, ffa_last_error(client), rc);
		if (rc == FFA_ERR_DEVICE_LOST)
			drop_client(); /* reconnect on the next call: the server may be back */
		goto out;
	}
	for (uint64_t i = 0; i < g->batch; i++)
		unpack((unsigned char *)entry(g->c, (const void *const *)g->c_list, i, g->stride_c, g->elem),
		       stage + c_off + i * g->m * g->n * g->elem, g->m, g->n, g->ldc, g->elem);
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

void ffa_gemm_describe(char *out, size_t cap, const char *rout, int code, const struct ffa_error_info *why)
{
	const char *dev = getenv("FFACCEL_DEVICE");
	snprintf(out, cap, "%s: the ffaccel device %s refused or failed the call: %s %s: %s", rout,
		 dev && *dev ? dev : "(default socket)", ffa_error_name((uint32_t)code), why->param, why->message);
}
