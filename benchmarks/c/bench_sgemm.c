/*
 * Per-call cost of an N x N cblas_sgemm through two CBLAS libraries, interleaved in one process:
 * sample i times REPS calls through library 1, then REPS calls through library 2, and so on.
 * Prints each library's median and best microseconds per call.
 *
 * usage: bench_sgemm N REPS SAMPLES LIB1 SYMBOL1 LIB2 SYMBOL2
 * (SYMBOL: a function with cblas_sgemm's signature and 32-bit integers, e.g. cblas_sgemm in
 * libffaccel_cblas.so, scipy_cblas_sgemm in SciPy's OpenBLAS)
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float,
			 float *, int);

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static sgemm_fn load(const char *lib, const char *sym)
{
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	sgemm_fn f = h ? (sgemm_fn)(uintptr_t)dlsym(h, sym) : NULL;
	if (!f) {
		fprintf(stderr, "cannot load %s from %s: %s\n", sym, lib, dlerror());
		exit(2);
	}
	return f;
}

int main(int argc, char **argv)
{
	int n, reps, samples;
	sgemm_fn f[2];
	float *a, *b, *c[2];
	double *t[2];
	if (argc != 8)
		return 2;
	n = atoi(argv[1]);
	reps = atoi(argv[2]);
	samples = atoi(argv[3]);
	f[0] = load(argv[4], argv[5]);
	f[1] = load(argv[6], argv[7]);
	a = malloc(sizeof(float) * n * n);
	b = malloc(sizeof(float) * n * n);
	for (int i = 0; i < n * n; i++) {
		a[i] = (float)(i % 7) * 0.25f;
		b[i] = (float)(i % 5) * 0.5f;
	}
	for (int l = 0; l < 2; l++) {
		c[l] = calloc((size_t)n * n, sizeof(float));
		t[l] = malloc(sizeof(double) * samples);
		f[l](101, 111, 111, n, n, n, 1.0f, a, n, b, n, 0.0f, c[l], n); /* warm up: connect, map, load */
	}
	for (int s = 0; s < samples; s++) {
		for (int l = 0; l < 2; l++) {
			double t0 = now_s();
			for (int r = 0; r < reps; r++)
				f[l](101, 111, 111, n, n, n, 1.0f, a, n, b, n, 0.0f, c[l], n);
			t[l][s] = (now_s() - t0) / reps * 1e6;
		}
	}
	for (int i = 0; i < n * n; i++) {
		double d = c[0][i] - c[1][i];
		if (d > 1e-3 || d < -1e-3) {
			fprintf(stderr, "results differ at %d: %g vs %g\n", i, c[0][i], c[1][i]);
			return 1;
		}
	}
	for (int l = 0; l < 2; l++) {
		qsort(t[l], samples, sizeof(double), cmp);
		printf("%s median_us %.2f best_us %.2f\n", argv[5 + 2 * l], t[l][samples / 2], t[l][0]);
	}
	return 0;
}
