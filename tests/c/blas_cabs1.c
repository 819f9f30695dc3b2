/* cblas_scabs1 and cblas_dcabs1 (|Re z| + |Im z|) next to the Fortran scabs1_ and dcabs1_: prints all four. */
#include <stdio.h>

#include "cblas.h"

float scabs1_(const float *z);
double dcabs1_(const double *z);

int main(void)
{
	float z[2] = {-3.0f, 4.5f};
	double w[2] = {1.25, -2.0};
	printf("%g %g %g %g\n", (double)cblas_scabs1(z), cblas_dcabs1(w), (double)scabs1_(z), dcabs1_(w));
	return 0;
}
