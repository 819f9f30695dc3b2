/*
 * A program in the spellings of netlib's cblas.h (the reference): the enum tags, among them the
 * old "enum CBLAS_ORDER", the typedef names, CBLAS_INDEX, and routines of every level. It must
 * compile unchanged against netlib's header and against ffaccel's; prints what it computed.
 */
#include <cblas.h>
#include <stdio.h>

int main(void)
{
	enum CBLAS_ORDER order = CblasColMajor;
	CBLAS_LAYOUT layout = CblasRowMajor;
	enum CBLAS_TRANSPOSE no = CblasNoTrans;
	CBLAS_TRANSPOSE tr = CblasTrans;
	enum CBLAS_UPLO up = CblasUpper;
	enum CBLAS_DIAG diag = CblasNonUnit;
	CBLAS_SIDE side = CblasLeft;
	double a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 2, 1}, c[4] = {0, 0, 0, 0};
	float x[3] = {1, 2, 3}, y[3] = {4, -1, 2};
	CBLAS_INDEX imax;
	CBLAS_INT n = 3;
	cblas_dgemm(order, no, tr, 2, 2, 2, 1.0, a, 2, b, 2, 0.0, c, 2);
	printf("dgemm %g %g %g %g\n", c[0], c[1], c[2], c[3]);
	cblas_dtrmm(layout, side, up, no, diag, 2, 2, 1.0, a, 2, b, 2);
	printf("dtrmm %g %g %g %g\n", b[0], b[1], b[2], b[3]);
	cblas_saxpy(n, 2.0f, x, 1, y, 1);
	printf("saxpy %g %g %g\n", y[0], y[1], y[2]);
	printf("sdot %g\n", cblas_sdot(n, x, 1, y, 1));
	imax = cblas_isamax(n, y, 1);
	printf("isamax %d\n", (int)imax);
	return 0;
}
