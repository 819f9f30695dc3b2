/* SPDX-License-Identifier: MIT */
/* The host BLAS shared by the drop-in BLAS and libffaccel_cblas.so: ffaccel_host_blas.h says what. */
#define _GNU_SOURCE
#include "ffaccel_host_blas.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Where the host BLAS is looked for, in order, after FFACCEL_HOST_BLAS: first in the folder of
 * the C library (the multiarch folder on Debian: /lib/x86_64-linux-gnu), then by soname. The
 * system's libblas.so.3 comes first (on Debian, the alternative the administrator chose); when
 * that is the calling library (installed as the alternative), the next one found is used.
 */
static const char *const host_candidates[] = {
	"libblas.so.3",
	"libopenblas.so.0",
	"openblas-pthread/libblas.so.3",
	"openblas-openmp/libblas.so.3",
	"openblas-serial/libblas.so.3",
	"blis-pthread/libblas.so.3",
	"blis-openmp/libblas.so.3",
	"blis-serial/libblas.so.3",
	"atlas/libblas.so.3",
	"blas/libblas.so.3",
};

static void vsay(const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", ffa_library_tag);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void ffa_say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

void ffa_fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
	abort();
}

int ffa_env_flag(const char *name)
{
	const char *v = getenv(name);
	return v && *v && strcmp(v, "0") != 0;
}

int ffa_in_this_library(const void *addr)
{
	Dl_info there, here;
	if (!dladdr(addr, &there) || !dladdr((const void *)&ffa_in_this_library, &here))
		return 0;
	return there.dli_fbase == here.dli_fbase;
}

static pthread_once_t host_once = PTHREAD_ONCE_INIT;
static void *host_handle;
static char host_path[PATH_MAX];

/* A loaded BLAS that is not this library, or NULL (why: dlopen's reason, or "itself"). */
static void *try_host(const char *name, char *why, size_t cap)
{
	void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
	void *probe;
	if (!h) {
		const char *e = dlerror();
		snprintf(why, cap, "%s", e ? e : "cannot be loaded");
		return NULL;
	}
	probe = dlsym(h, "dgemm_");
	if (!probe || ffa_in_this_library(probe)) {
		snprintf(why, cap, "%s", probe ? "is this library itself" : "has no dgemm_: not a BLAS");
		dlclose(h);
		return NULL;
	}
	return h;
}

static void load_host(void)
{
	const char *env = getenv("FFACCEL_HOST_BLAS");
	char why[512], folder[PATH_MAX] = "", path[PATH_MAX];
	Dl_info libc;
	size_t i;
	void *h;
	if (env && *env) { /* what the user named, or nothing: no silent substitute */
		h = try_host(env, why, sizeof(why));
		if (!h)
			ffa_fatal("FFACCEL_HOST_BLAS=%s: %s; allowed: the path or soname of another BLAS "
				  "(e.g. /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3)", env, why);
		snprintf(host_path, sizeof(host_path), "%s", env);
		__atomic_store_n(&host_handle, h, __ATOMIC_RELEASE);
		return;
	}
	if (dladdr((const void *)&fopen, &libc) && libc.dli_fname && strrchr(libc.dli_fname, '/')) {
		snprintf(folder, sizeof(folder), "%s", libc.dli_fname);
		*strrchr(folder, '/') = '\0';
	}
	for (int by_soname = 0; by_soname < 2; by_soname++) {
		for (i = 0; i < sizeof(host_candidates) / sizeof(host_candidates[0]); i++) {
			if (by_soname && strchr(host_candidates[i], '/'))
				continue;
			if (by_soname)
				snprintf(path, sizeof(path), "%s", host_candidates[i]);
			else if (*folder)
				snprintf(path, sizeof(path), "%s/%s", folder, host_candidates[i]);
			else
				continue;
			h = try_host(path, why, sizeof(why));
			if (h) {
				char *real = realpath(path, NULL);
				snprintf(host_path, sizeof(host_path), "%s", real ? real : path);
				free(real);
				__atomic_store_n(&host_handle, h, __ATOMIC_RELEASE);
				return;
			}
		}
	}
	ffa_fatal("no host BLAS found for the calls the device does not run (looked in %s for libblas.so.3, "
		  "libopenblas.so.0, openblas-*/, blis-*/, atlas/ and blas/libblas.so.3); install one "
		  "(apt-get install libopenblas0 or libblas3) or name it in FFACCEL_HOST_BLAS",
		  *folder ? folder : "the C library's folder");
}

void *ffa_host_blas(void)
{
	pthread_once(&host_once, load_host);
	return host_handle;
}

void *ffa_host_blas_loaded(void)
{
	return __atomic_load_n(&host_handle, __ATOMIC_ACQUIRE);
}

const char *ffa_host_blas_path(void)
{
	return host_path;
}

void *ffa_host_blas_symbol(const char *name)
{
	void *p = dlsym(ffa_host_blas(), name);
	if (!p || ffa_in_this_library(p))
		ffa_fatal("the host BLAS %s has no %s (set FFACCEL_HOST_BLAS to a BLAS that has it)", host_path, name);
	return p;
}

typedef void f77_gemm_fn(const char *transa, const char *transb, const int *m, const int *n, const int *k,
			 const void *alpha, const void *a, const int *lda, const void *b, const int *ldb,
			 const void *beta, void *c, const int *ldc, size_t transa_len, size_t transb_len);

/* Entry i of a batch: the list's pointer, or base + i strides (elements). */
static const void *entry(const void *base, const void *const *list, uint64_t stride, size_t elem, uint64_t i)
{
	return list ? list[i] : (const unsigned char *)base + i * stride * elem;
}

void ffa_gemm_host(const struct ffa_gemm_args *g)
{
	static f77_gemm_fn *fns[2];
	int f64 = g->dtype == FFA_DTYPE_F64;
	f77_gemm_fn *fn = __atomic_load_n(&fns[f64], __ATOMIC_ACQUIRE);
	/* row-major m x n C is column-major n x m: C^T = op(B)^T op(A)^T, B first */
	const char *ta = g->tb ? "T" : "N", *tb = g->ta ? "T" : "N";
	int m = (int)g->n, n = (int)g->m, k = (int)g->k, lda = (int)g->ldb, ldb = (int)g->lda, ldc = (int)g->ldc;
	float alpha_f = (float)g->alpha, beta_f = (float)g->beta;
	const void *alpha = f64 ? (const void *)&g->alpha : &alpha_f, *beta = f64 ? (const void *)&g->beta : &beta_f;
	if (!fn) {
		fn = (f77_gemm_fn *)ffa_host_blas_symbol(f64 ? "dgemm_" : "sgemm_");
		__atomic_store_n(&fns[f64], fn, __ATOMIC_RELEASE);
	}
	for (uint64_t i = 0; i < g->batch; i++)
		fn(ta, tb, &m, &n, &k, alpha, entry(g->b, g->b_list, g->stride_b, g->elem, i), &lda,
		   entry(g->a, g->a_list, g->stride_a, g->elem, i), &ldb, beta,
		   (void *)entry(g->c, (const void *const *)g->c_list, g->stride_c, g->elem, i), &ldc, 1, 1);
}

void ffa_device_failure_strict_check(const char *line)
{
	if (ffa_env_flag("FFACCEL_BLAS_STRICT"))
		ffa_fatal("%s; FFACCEL_BLAS_STRICT is set, so the program stops here instead of running it on the "
			  "host BLAS", line);
}
