/*
 * Runs GEMM cases read from a file through the CBLAS (or Fortran BLAS) interface and writes
 * every case's C buffer afterwards: an unmodified CBLAS program, linked with libffaccel_cblas.
 *
 * usage: cblas_cases IN OUT. IN holds, per case: int32 kind (0 cblas_sgemm, 1 cblas_dgemm,
 * 2 sgemm_, 3 dgemm_), layout, transa, transb (CBLAS enums, or characters for kinds 2-3),
 * m, n, k, lda, ldb, ldc, a_len, b_len, c_len, 0; float64 alpha, beta; then A, B and C
 * (a_len, b_len, c_len elements of the kind's type). OUT receives each case's C.
 */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void sgemm_(const char *, const char *, const int *, const int *, const int *, const float *, const float *,
	    const int *, const float *, const int *, const float *, float *, const int *);
void dgemm_(const char *, const char *, const int *, const int *, const int *, const double *, const double *,
	    const int *, const double *, const int *, const double *, double *, const int *);

static void *read_n(FILE *f, size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p || fread(p, 1, n, f) != n) {
		fprintf(stderr, "short input\n");
		exit(2);
	}
	return p;
}

int main(int argc, char **argv)
{
	FILE *in, *out;
	int32_t h[14];
	double s[2];
	if (argc != 3 || !(in = fopen(argv[1], "rb")) || !(out = fopen(argv[2], "wb")))
		return 2;
	while (fread(h, sizeof(h), 1, in) == 1) {
		size_t el = (h[0] == 0 || h[0] == 2) ? sizeof(float) : sizeof(double);
		void *a, *b, *c;
		if (fread(s, sizeof(s), 1, in) != 1)
			return 2;
		a = read_n(in, (size_t)h[10] * el);
		b = read_n(in, (size_t)h[11] * el);
		c = read_n(in, (size_t)h[12] * el);
		if (h[0] == 0)
			cblas_sgemm((CBLAS_LAYOUT)h[1], (CBLAS_TRANSPOSE)h[2], (CBLAS_TRANSPOSE)h[3], h[4], h[5], h[6],
				    (float)s[0], a, h[7], b, h[8], (float)s[1], c, h[9]);
		else if (h[0] == 1)
			cblas_dgemm((CBLAS_LAYOUT)h[1], (CBLAS_TRANSPOSE)h[2], (CBLAS_TRANSPOSE)h[3], h[4], h[5], h[6],
				    s[0], a, h[7], b, h[8], s[1], c, h[9]);
		else {
			char ta = (char)h[2], tb = (char)h[3];
			if (h[0] == 2) {
				float al = (float)s[0], be = (float)s[1];
				sgemm_(&ta, &tb, &h[4], &h[5], &h[6], &al, a, &h[7], b, &h[8], &be, c, &h[9]);
			} else {
				dgemm_(&ta, &tb, &h[4], &h[5], &h[6], &s[0], a, &h[7], b, &h[8], &s[1], c, &h[9]);
			}
		}
		fwrite(c, el, (size_t)h[12], out);
		free(a);
		free(b);
		free(c);
	}
	fclose(out);
	return 0;
}
