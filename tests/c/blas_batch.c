/*
 * cblas_sgemm_batch_strided and cblas_dgemm_batch_strided (Intel MKL's extension) against a
 * naive loop, in both layouts, with A broadcast (stridea 0) and with every operand strided, on
 * padded leading dimensions. Prints, per variant, the largest error relative to the magnitude
 * and whether anything outside the C windows (padding, gaps between entries) was written.
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

int main(void)
{
	for (int l = 0; l < 2; l++)
		for (int bc = 0; bc < 2; bc++) {
			run_float(l ? CblasColMajor : CblasRowMajor, bc);
			run_double(l ? CblasColMajor : CblasRowMajor, bc);
		}
	return 0;
}
