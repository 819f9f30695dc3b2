/*
 * The batched GEMMs of Intel MKL's CBLAS against a naive loop, in both layouts, on padded
 * leading dimensions: cblas_?gemm_batch_strided with A broadcast (stridea 0) and with every
 * operand strided, and cblas_?gemm_batch (groups of pointer arrays, each group its own
 * transposes, sizes, alpha and beta). Prints, per variant, whether the largest error relative
 * to the magnitude is within the dtype's bound, and how many elements outside the C windows
 * (padding, gaps between entries) were written.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

enum { M = 5, N = 7, K = 9, BATCH = 3, PAD = 2, SENTINEL = 12345 };

/* element (i, j) of a rows x cols matrix with leading dimension ld */
static size_t at(CBLAS_LAYOUT layout, int i, int j, int ld)
{
	return layout == CblasRowMajor ? (size_t)i * ld + j : (size_t)j * ld + i;
}

#define VARIANT(T, fn, tol)                                                                                        \
	static void run_##T(CBLAS_LAYOUT layout, int broadcast_a)                                                  \
	{                                                                                                          \
		int lda = (layout == CblasRowMajor ? K : M) + PAD, ldb = (layout == CblasRowMajor ? N : K) + PAD;  \
		int ldc = (layout == CblasRowMajor ? N : M) + PAD;                                                 \
		int sa = broadcast_a ? 0 : lda * (layout == CblasRowMajor ? M : K) + 3;                            \
		int sb = ldb * (layout == CblasRowMajor ? K : N) + 1, sc = ldc * (layout == CblasRowMajor ? M : N) + 4; \
		size_t na = (size_t)(broadcast_a ? lda * K + lda * M : sa * BATCH), nb = (size_t)sb * BATCH,         \
		       nc = (size_t)sc * BATCH;                                                                    \
		T *a = malloc(na * sizeof(T)), *b = malloc(nb * sizeof(T)), *c = malloc(nc * sizeof(T)),           \
		  *c0 = malloc(nc * sizeof(T));                                                                    \
		double worst = 0;                                                                                  \
		int outside = 0;                                                                                   \
		for (size_t i = 0; i < na; i++)                                                                    \
			a[i] = (T)((int)(i * 7 % 13) - 6) / 8;                                                     \
		for (size_t i = 0; i < nb; i++)                                                                    \
			b[i] = (T)((int)(i * 5 % 11) - 5) / 4;                                                     \
		for (size_t i = 0; i < nc; i++)                                                                    \
			c[i] = c0[i] = SENTINEL;                                                                   \
		for (int e = 0; e < BATCH; e++)                                                                    \
			for (int i = 0; i < M; i++)                                                                \
				for (int j = 0; j < N; j++)                                                        \
					c[e * sc + at(layout, i, j, ldc)] = c0[e * sc + at(layout, i, j, ldc)] =   \
						(T)((i + 2 * j + e) % 5) / 2;                                      \
		fn(layout, CblasNoTrans, CblasNoTrans, M, N, K, (T)1.5, a, lda, sa, b, ldb, sb, (T)0.5, c, ldc, sc,      \
		   BATCH);                                                                                         \
		for (int e = 0; e < BATCH; e++)                                                                    \
			for (int i = 0; i < M; i++)                                                                \
				for (int j = 0; j < N; j++) {                                                      \
					double want = 0.5 * c0[e * sc + at(layout, i, j, ldc)], mag = fabs(want);  \
					for (int p = 0; p < K; p++) {                                              \
						double x = 1.5 * a[e * sa + at(layout, i, p, lda)] *                \
							   b[e * sb + at(layout, p, j, ldb)];                       \
						want += x;                                                         \
						mag += fabs(x);                                                    \
					}                                                                          \
					double err = fabs(c[e * sc + at(layout, i, j, ldc)] - want) / (mag + 1e-300); \
					worst = err > worst ? err : worst;                                         \
					c[e * sc + at(layout, i, j, ldc)] = SENTINEL; /* checked: now the rest */ \
				}                                                                                  \
		for (size_t i = 0; i < nc; i++)                                                                    \
			outside += c[i] != SENTINEL;                                                               \
		printf("%s %s %s err %s written_outside %d\n", #fn, layout == CblasRowMajor ? "row" : "col",     \
		       broadcast_a ? "broadcast" : "strided", worst <= (tol) ? "ok" : "BAD", outside);             \
		free(a), free(b), free(c), free(c0);                                                               \
	}

VARIANT(float, cblas_sgemm_batch_strided, 1e-5)
VARIANT(double, cblas_dgemm_batch_strided, 1e-13)

/* Element (i, j) of op(X), X stored rows x cols with leading dimension ld. */
static size_t op_at(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE t, int i, int j, int ld)
{
	return t == CblasNoTrans ? at(layout, i, j, ld) : at(layout, j, i, ld);
}

enum { GROUPS = 2, ENTRIES = 5 };
static const CBLAS_TRANSPOSE g_ta[GROUPS] = {CblasNoTrans, CblasTrans}, g_tb[GROUPS] = {CblasTrans, CblasNoTrans};
static const int g_m[GROUPS] = {3, 6}, g_n[GROUPS] = {4, 2}, g_k[GROUPS] = {5, 3}, g_size[GROUPS] = {2, 3};

#define GROUPED(T, fn, tol)                                                                                        \
	static void group_##T(CBLAS_LAYOUT layout)                                                                 \
	{                                                                                                          \
		const T alpha[GROUPS] = {(T)1.5, (T)-0.5}, beta[GROUPS] = {0, (T)0.25};                            \
		int lda[GROUPS], ldb[GROUPS], ldc[GROUPS], outside = 0;                                            \
		const T *ap[ENTRIES], *bp[ENTRIES];                                                                \
		T *cp[ENTRIES], *c0[ENTRIES], *store[3][ENTRIES];                                                  \
		double worst = 0;                                                                                  \
		for (int g = 0, e = 0; g < GROUPS; g++) {                                                          \
			int ar = g_ta[g] == CblasNoTrans ? g_m[g] : g_k[g], ac = g_ta[g] == CblasNoTrans ? g_k[g] : g_m[g]; \
			int br = g_tb[g] == CblasNoTrans ? g_k[g] : g_n[g], bc = g_tb[g] == CblasNoTrans ? g_n[g] : g_k[g]; \
			lda[g] = (layout == CblasRowMajor ? ac : ar) + PAD;                                        \
			ldb[g] = (layout == CblasRowMajor ? bc : br) + PAD;                                        \
			ldc[g] = (layout == CblasRowMajor ? g_n[g] : g_m[g]) + PAD;                                \
			for (int i = 0; i < g_size[g]; i++, e++) {                                                 \
				size_t na = (size_t)lda[g] * (layout == CblasRowMajor ? ar : ac),                  \
				       nb = (size_t)ldb[g] * (layout == CblasRowMajor ? br : bc),                  \
				       nc = (size_t)ldc[g] * (layout == CblasRowMajor ? g_m[g] : g_n[g]);          \
				T *a = malloc(na * sizeof(T)), *b = malloc(nb * sizeof(T));                        \
				cp[e] = malloc(nc * sizeof(T));                                                    \
				c0[e] = malloc(nc * sizeof(T));                                                    \
				for (size_t x = 0; x < na; x++)                                                    \
					a[x] = (T)((int)((x + e) * 7 % 13) - 6) / 8;                               \
				for (size_t x = 0; x < nb; x++)                                                    \
					b[x] = (T)((int)((x + 2 * e) * 5 % 11) - 5) / 4;                           \
				for (size_t x = 0; x < nc; x++)                                                    \
					cp[e][x] = c0[e][x] = beta[g] != 0 ? (T)((int)(x % 5) - 2) : (T)NAN;       \
				ap[e] = a, bp[e] = b;                                                              \
				store[0][e] = a, store[1][e] = b, store[2][e] = (T *)(size_t)nc;                   \
			}                                                                                          \
		}                                                                                                  \
		fn(layout, g_ta, g_tb, g_m, g_n, g_k, alpha, ap, lda, bp, ldb, beta, cp, ldc, GROUPS, g_size);     \
		for (int g = 0, e = 0; g < GROUPS; g++)                                                            \
			for (int x = 0; x < g_size[g]; x++, e++) {                                                 \
				for (int i = 0; i < g_m[g]; i++)                                                   \
					for (int j = 0; j < g_n[g]; j++) {                                         \
						size_t ci = at(layout, i, j, ldc[g]);                              \
						double want = beta[g] != 0 ? beta[g] * c0[e][ci] : 0, mag = fabs(want); \
						for (int p = 0; p < g_k[g]; p++) {                                 \
							double v = alpha[g] * ap[e][op_at(layout, g_ta[g], i, p, lda[g])] * \
								   bp[e][op_at(layout, g_tb[g], p, j, ldb[g])];   \
							want += v;                                                 \
							mag += fabs(v);                                            \
						}                                                                  \
						double err = fabs(cp[e][ci] - want) / (mag + 1e-300);              \
						worst = err == err && err > worst ? err : (err != err ? 1 : worst); \
						cp[e][ci] = c0[e][ci]; /* checked: now the rest must be untouched */ \
					}                                                                          \
				for (size_t y = 0; y < (size_t)store[2][e]; y++)                                   \
					outside += !(cp[e][y] == c0[e][y] || (cp[e][y] != cp[e][y] && c0[e][y] != c0[e][y])); \
				free(store[0][e]), free(store[1][e]), free(cp[e]), free(c0[e]);                    \
			}                                                                                          \
		printf("%s %s groups err %s written_outside %d\n", #fn, layout == CblasRowMajor ? "row" : "col",   \
		       worst <= (tol) ? "ok" : "BAD", outside);                                                    \
	}

GROUPED(float, cblas_sgemm_batch, 1e-5)
GROUPED(double, cblas_dgemm_batch, 1e-13)

int main(void)
{
	for (int l = 0; l < 2; l++) {
		CBLAS_LAYOUT layout = l ? CblasColMajor : CblasRowMajor;
		for (int bc = 0; bc < 2; bc++) {
			run_float(layout, bc);
			run_double(layout, bc);
		}
		group_float(layout);
		group_double(layout);
	}
	return 0;
}
