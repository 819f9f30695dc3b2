/*
 * The drop-in under threads and fork: THREADS threads each run CALLS small cblas_sgemm calls at
 * once, then the process forks and parent and child each run more. Every result is checked
 * against a plain loop; prints "threads ok", "child ok", "parent ok" (or "... BAD").
 */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

enum { THREADS = 4, CALLS = 10, M = 6, N = 5, K = 7 };

/* 1 when C = A B (row-major, A M x K, B K x N; A, B filled from the seed) comes out right. */
static int one_call(int seed)
{
	float a[M * K], b[K * N], c[M * N];
	for (int i = 0; i < M * K; i++)
		a[i] = (float)((i + seed) % 7) - 3;
	for (int i = 0; i < K * N; i++)
		b[i] = (float)((i * 3 + seed) % 5) - 2;
	for (int i = 0; i < M * N; i++)
		c[i] = NAN;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
	for (int i = 0; i < M; i++)
		for (int j = 0; j < N; j++) {
			float want = 0;
			for (int p = 0; p < K; p++)
				want += a[i * K + p] * b[p * N + j];
			if (c[i * N + j] != want) /* small integers: exact */
				return 0;
		}
	return 1;
}

static void *worker(void *arg)
{
	long ok = 1;
	for (int i = 0; i < CALLS; i++)
		ok &= one_call((int)(long)arg * CALLS + i);
	return (void *)ok;
}

int main(void)
{
	pthread_t t[THREADS];
	int ok = 1, status;
	pid_t child;
	for (long i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	for (int i = 0; i < THREADS; i++) {
		void *r;
		pthread_join(t[i], &r);
		ok &= r != NULL;
	}
	printf("threads %s\n", ok ? "ok" : "BAD");
	fflush(stdout);
	child = fork();
	if (child == 0) {
		int good = one_call(100) && one_call(101);
		printf("child %s\n", good ? "ok" : "BAD");
		return good ? 0 : 1;
	}
	waitpid(child, &status, 0);
	printf("parent %s\n", one_call(200) && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "ok" : "BAD");
	return 0;
}
