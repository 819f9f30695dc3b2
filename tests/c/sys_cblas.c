/*
 * A program written against the system's cblas.h (Debian's libblas-dev) and linked with -lblas:
 * GEMMs through CBLAS and the Fortran names, and routines of levels 1-3 whose return values use
 * every calling convention (float, double, complex, index). Each result is checked here against
 * a plain loop; prints "NAME ok" or "NAME BAD ...". usage: sys_cblas N (the GEMM size).
 */
#include <cblas.h>
#include <complex.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

float sdot_(const int *n, const float *x, const int *incx, const float *y, const int *incy);
float _Complex cdotu_(const int *n, const float _Complex *x, const int *incx, const float _Complex *y,
		      const int *incy);
int isamax_(const int *n, const float *x, const int *incx);
void dgemm_(const char *ta, const char *tb, const int *m, const int *n, const int *k, const double *alpha,
	    const double *a, const int *lda, const double *b, const int *ldb, const double *beta, double *c,
	    const int *ldc, size_t ta_len, size_t tb_len);

static int bad;

static void check(const char *name, double err, double tol)
{
	if (err <= tol) {
		printf("%s ok\n", name);
	} else {
		printf("%s BAD error %g > %g\n", name, err, tol);
		bad = 1;
	}
}

/* The largest |got - want| / (|A| |B| + |C|) of a row-major C = A B (m x k times k x n). */
#define GEMM_ERROR(T, got, a, b, m, n, k)                                                                         \
	({                                                                                                        \
		double worst_ = 0;                                                                                \
		for (int i_ = 0; i_ < (m); i_++)                                                                  \
			for (int j_ = 0; j_ < (n); j_++) {                                                        \
				double want_ = 0, mag_ = 0;                                                       \
				for (int p_ = 0; p_ < (k); p_++) {                                                \
					want_ += (double)(a)[i_ * (k) + p_] * (b)[p_ * (n) + j_];                  \
					mag_ += fabs((double)(a)[i_ * (k) + p_] * (b)[p_ * (n) + j_]);            \
				}                                                                                 \
				double e_ = fabs((got)[i_ * (n) + j_] - want_) / (mag_ + 1e-300);                 \
				worst_ = e_ > worst_ ? e_ : worst_;                                               \
			}                                                                                         \
		worst_;                                                                                           \
	})

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 64, m = n + 3, k = n - 1, one = 1, three = 3;
	float *as = malloc(sizeof(float) * m * k), *bs = malloc(sizeof(float) * k * n), *cs = malloc(sizeof(float) * m * n);
	double *ad = malloc(sizeof(double) * m * k), *bd = malloc(sizeof(double) * k * n),
	       *cd = malloc(sizeof(double) * m * n);
	double alpha = 1, beta = 0;
	for (int i = 0; i < m * k; i++)
		as[i] = (float)(ad[i] = (double)((i * 7) % 13 - 6) / 8);
	for (int i = 0; i < k * n; i++)
		bs[i] = (float)(bd[i] = (double)((i * 5) % 11 - 5) / 4);
	for (int i = 0; i < m * n; i++)
		cs[i] = NAN, cd[i] = NAN; /* beta = 0: never read, as numpy's uninitialised output */

	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, as, k, bs, n, 0.0f, cs, n);
	check("cblas_sgemm", GEMM_ERROR(float, cs, as, bs, m, n, k), 1e-5);
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0, ad, k, bd, n, 0.0, cd, n);
	check("cblas_dgemm", GEMM_ERROR(double, cd, ad, bd, m, n, k), 1e-13);
	for (int i = 0; i < m * n; i++)
		cd[i] = NAN;
	/* row-major C = A B is column-major C^T = B^T A^T: dgemm_ with the operands swapped */
	dgemm_("N", "N", &n, &m, &k, &alpha, bd, &n, ad, &k, &beta, cd, &n, 1, 1);
	check("dgemm_", GEMM_ERROR(double, cd, ad, bd, m, n, k), 1e-13);

	{ /* forwarded routines, one per return convention */
		float x[3] = {1, -2, 3}, y[3] = {2, 1, -1};
		float _Complex zx[3] = {1 + 2 * I, 3, -I}, zy[3] = {2, 1 - I, 4 + I}, zd;
		double dx[3] = {1, 2, 3}, dy[3] = {-1, 0.5, 2};
		double _Complex zsub;
		check("cblas_ddot", fabs(cblas_ddot(3, dx, 1, dy, 1) - 6.0), 0);
		check("sdot_", fabs(sdot_(&three, x, &one, y, &one) - (-3.0f)), 0);
		zd = cdotu_(&three, zx, &one, zy, &one); /* (1+2i)2 + 3(1-i) + (-i)(4+i) = 6 - 3i */
		check("cdotu_", cabsf(zd - (6 - 3 * I)), 1e-6);
		{
			double _Complex u[2] = {1 + I, 2}, v[2] = {3, 1 - 2 * I};
			cblas_zdotc_sub(2, u, 1, v, 1, &zsub); /* conj(1+i)3 + 2(1-2i) = 5 - 7i */
			check("cblas_zdotc_sub", cabs(zsub - (5 - 7 * I)), 1e-12);
		}
		check("isamax_", fabs((double)isamax_(&three, x, &one) - 3), 0);
		check("cblas_isamax", fabs((double)cblas_isamax(3, x, 1) - 2), 0);
		cblas_daxpy(3, 2.0, dx, 1, dy, 1);
		check("cblas_daxpy", fabs(dy[0] - 1) + fabs(dy[1] - 4.5) + fabs(dy[2] - 8), 0);
	}
	return bad;
}
