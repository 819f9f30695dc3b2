/*
 * CBLAS routines some host BLASes lack (OpenBLAS and ATLAS: cblas_scabs1, cblas_dcabs1; BLIS:
 * cblas_crotg, cblas_zrotg, cblas_csrot, cblas_zdrot): prints what each computed.
 */
#include <stdio.h>

#include "cblas.h"

int main(void)
{
	float a[2] = {3, 1}, b[2] = {4, -2}, c, s[2], x[4] = {1, 2, 3, 4}, y[4] = {5, 6, 7, 8};
	double az[2] = {1, 2}, bz[2] = {2, -1}, cz, sz[2], xz[4] = {1, 2, 3, 4}, yz[4] = {4, 3, 2, 1};
	float z[2] = {-3.0f, 4.5f};
	double w[2] = {1.25, -2.0};
	cblas_crotg(a, b, &c, s);
	cblas_zrotg(az, bz, &cz, sz);
	cblas_csrot(2, x, 1, y, 1, 0.6f, 0.8f);
	cblas_zdrot(2, xz, 1, yz, 1, 0.8, 0.6);
	printf("crotg %.5g %.5g %.5g %.5g %.5g\n", a[0], a[1], c, s[0], s[1]);
	printf("zrotg %.12g %.12g %.12g %.12g %.12g\n", az[0], az[1], cz, sz[0], sz[1]);
	printf("csrot %.5g %.5g %.5g %.5g %.5g %.5g %.5g %.5g\n", x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]);
	printf("zdrot %.12g %.12g %.12g %.12g %.12g %.12g %.12g %.12g\n", xz[0], xz[1], xz[2], xz[3], yz[0], yz[1],
	       yz[2], yz[3]);
	printf("cabs1 %g %g\n", cblas_scabs1(z), cblas_dcabs1(w));
	return 0;
}
