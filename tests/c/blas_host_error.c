/*
 * One illegal row-major call to a routine the host BLAS runs, then "returned" on stdout if the
 * error handler returned. usage: blas_host_error ROUTINE P, P: the argument made illegal (its
 * CBLAS position). Built against the system's cblas.h.
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
	double a[64] = {0}, b[64] = {0}, c[64] = {0}, z[2] = {0};
	const char *r = argc == 3 ? argv[1] : "";
	int w = argc == 3 ? atoi(argv[2]) : 0;
	if (!strcmp(r, "dgemv"))
		cblas_dgemv(CblasRowMajor, CblasNoTrans, w == 3 ? -1 : 2, w == 4 ? -1 : 2, 1.0, a, w == 7 ? 1 : 2, b,
			    w == 9 ? 0 : 1, 0.0, c, w == 12 ? 0 : 1);
	else if (!strcmp(r, "dgbmv"))
		cblas_dgbmv(CblasRowMajor, CblasNoTrans, w == 3 ? -1 : 2, w == 4 ? -1 : 2, w == 5 ? -1 : 1, w == 6 ? -1 : 1,
			    1.0, a, w == 9 ? 1 : 3, b, 1, 0.0, c, 1);
	else if (!strcmp(r, "dger"))
		cblas_dger(CblasRowMajor, w == 2 ? -1 : 2, w == 3 ? -1 : 2, 1.0, a, w == 6 ? 0 : 1, b, w == 8 ? 0 : 1, c,
			   w == 10 ? 1 : 2);
	else if (!strcmp(r, "zgeru"))
		cblas_zgeru(CblasRowMajor, w == 2 ? -1 : 2, w == 3 ? -1 : 2, z, a, w == 6 ? 0 : 1, b, w == 8 ? 0 : 1, c,
			    w == 10 ? 1 : 2);
	else if (!strcmp(r, "dtrsm"))
		cblas_dtrsm(CblasRowMajor, CblasLeft, CblasUpper, CblasNoTrans, CblasNonUnit, w == 6 ? -1 : 2,
			    w == 7 ? -1 : 2, 1.0, a, w == 10 ? 1 : 2, b, w == 12 ? 1 : 2);
	else if (!strcmp(r, "dsymm"))
		cblas_dsymm(CblasRowMajor, CblasLeft, CblasUpper, w == 4 ? -1 : 2, w == 5 ? -1 : 2, 1.0, a, w == 8 ? 1 : 2,
			    b, w == 10 ? 1 : 2, 0.0, c, w == 13 ? 1 : 2);
	else if (!strcmp(r, "dsyr2k"))
		cblas_dsyr2k(CblasRowMajor, CblasUpper, CblasNoTrans, w == 4 ? -1 : 2, w == 5 ? -1 : 2, 1.0, a,
			     w == 8 ? 1 : 2, b, w == 10 ? 1 : 2, 0.0, c, w == 13 ? 1 : 2);
	else
		return 2;
	printf("returned\n");
	return 0;
}
