/*
 * One small cblas_sgemm per line of stdin, printing C afterwards ("C c00 c01 c10 c11"); C is
 * reset to 9s before each call, so a call that fails leaves "C 9 9 9 9".
 */
#include <cblas.h>
#include <stdio.h>

int main(void)
{
	char line[64];
	const float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1};
	while (fgets(line, sizeof(line), stdin)) {
		float c[4] = {9, 9, 9, 9};
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2);
		printf("C %g %g %g %g\n", c[0], c[1], c[2], c[3]);
		fflush(stdout);
	}
	return 0;
}
