/*
 * A program with its own XERBLA, linked to libffaccel_cblas: the Fortran GEMMs' illegal arguments
 * must reach it with the reference routine name (padded to 6) and parameter number, as the
 * reference SGEMM/DGEMM report them. Prints one line per handler call.
 */
#include <stddef.h>
#include <stdio.h>

void xerbla_(const char *srname, const int *info, size_t len);
void sgemm_(const char *, const char *, const int *, const int *, const int *, const float *, const float *,
	    const int *, const float *, const int *, const float *, float *, const int *);
void dgemm_(const char *, const char *, const int *, const int *, const int *, const double *, const double *,
	    const int *, const double *, const int *, const double *, double *, const int *);

void xerbla_(const char *srname, const int *info, size_t len)
{
	printf("xerbla %d '%.*s'\n", *info, (int)len, srname);
}

int main(void)
{
	float a[4] = {0}, c[4] = {0};
	double ad[4] = {0}, cd[4] = {0};
	const int two = 2, one = 1;
	const float f1 = 1;
	const double d1 = 1;
	sgemm_("N", "N", &two, &two, &two, &f1, a, &two, a, &two, &f1, c, &one); /* ldc 1 < M 2: 13 */
	dgemm_("X", "N", &two, &two, &two, &d1, ad, &two, ad, &two, &d1, cd, &two); /* TRANSA: 1 */
	printf("%g %g\n", (double)c[0], cd[0]); /* nothing written */
	return 0;
}
