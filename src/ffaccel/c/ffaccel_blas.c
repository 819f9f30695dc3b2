/* SPDX-License-Identifier: MIT */
/*
 * libffaccel_blas.so: a drop-in BLAS. It exports the whole reference BLAS (Fortran names) and
 * CBLAS, and can be preloaded (LD_PRELOAD) or installed in place of libblas.so.3.
 *
 * s/d GEMMs (sgemm_, dgemm_, cblas_sgemm, cblas_dgemm, cblas_?gemm_batch_strided) run on the
 * ffaccel device (FFACCEL_DEVICE) when they are large enough for the device to gain (a
 * threshold in FLOPs: FFACCEL_BLAS_MIN_FLOPS, else measured on this machine at first use and
 * cached); everything else runs on the host BLAS found at run time (FFACCEL_HOST_BLAS, else the
 * system's libblas.so.3, OpenBLAS, BLIS, ATLAS or netlib's, never this library itself), through
 * the wrappers generated from blas_routines.txt (ffaccel_blas_forward.c).
 *
 * A device failure never leaves a wrong C: the device writes C only after it succeeded, and a
 * failed call runs on the host BLAS instead (said once on stderr per outage), or aborts the
 * program when FFACCEL_BLAS_STRICT=1. docs/blas.md is the user's guide.
 */
#define _GNU_SOURCE
#include "ffaccel_blas.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* After the device was lost or timed out, calls stay on the host this long before trying again. */
#define RETRY_AFTER_LOST_S 1.0
/*
 * Calibration: square sizes tried in turn, each side warmed up by one call and then timed as the
 * best of REPS calls, until the device wins at two sizes in a row (n and 2n: one size alone can
 * mislead, e.g. a multithreaded host BLAS waking its threads on a loaded machine) or a host call
 * takes longer than CALIBRATION_MAX_HOST_S (larger sizes would cost the program too long).
 */
static const int calibration_sizes[] = {16, 32, 64, 128, 256, 512, 1024};
#define CALIBRATION_REPS 5
#define CALIBRATION_MAX_HOST_S 0.05
#define CALIBRATION_FORMAT "ffaccel-blas-calibration-v1"

/* Nonzero while this thread runs the host BLAS on this library's behalf: a host routine that
 * calls a BLAS routine by its exported name (netlib's cblas_sgemm calls sgemm_) reaches us again,
 * and must go straight to the host, never to the device a second time. */
static __thread int in_host;

/* The handlers (below) the GEMMs report illegal arguments through. */
FFB_EXPORT void xerbla_(const char *srname, const int *info, size_t srname_len);

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------------------------------------------- */
/* The host BLAS                                                                                    */

const char ffa_library_tag[] = "ffaccel blas";
static void *host_symbols[FFB_HOST_COUNT];

void *ffb_host_symbol(enum ffb_host_index index)
{
	void *p = __atomic_load_n(&host_symbols[index], __ATOMIC_ACQUIRE);
	if (p)
		return p;
	p = ffa_host_blas_symbol(ffb_host_names[index]);
	__atomic_store_n(&host_symbols[index], p, __ATOMIC_RELEASE);
	return p;
}

/* Call the host's routine SYM (its type FFB_TYPE_SYM) with ARGS, marked as on the host. */
#define HOST_CALL(sym, args)                                                                      \
	do {                                                                                      \
		FFB_TYPE_##sym *host_fn_ = (FFB_TYPE_##sym *)ffb_host_symbol(FFB_HOST_##sym);     \
		in_host++;                                                                        \
		host_fn_ args;                                                                    \
		in_host--;                                                                        \
	} while (0)

/* ---------------------------------------------------------------------------------------------- */
/* Settings (environment, read once)                                                               */

enum { F32, F64, DTYPES };
static const char *const dtype_names[DTYPES] = {"f32", "f64"};

static pthread_once_t config_once = PTHREAD_ONCE_INIT;
static int device_off;          /* FFACCEL_DEVICE=none: everything on the host */
static int device_named;        /* FFACCEL_DEVICE set: its failures are always reported */
static int verbose;             /* FFACCEL_BLAS_VERBOSE=1: every routing decision on stderr */
static double min_flops_env = -1; /* FFACCEL_BLAS_MIN_FLOPS, or -1 when unset */

static void read_config(void)
{
	const char *dev = getenv("FFACCEL_DEVICE"), *mf = getenv("FFACCEL_BLAS_MIN_FLOPS");
	device_named = dev && *dev;
	device_off = device_named && strcmp(dev, "none") == 0;
	verbose = ffa_env_flag("FFACCEL_BLAS_VERBOSE");
	if (mf && *mf) {
		char *end;
		double v = strtod(mf, &end);
		if (*end || !(v >= 0)) /* NaN and negatives fail this too */
			ffa_say("FFACCEL_BLAS_MIN_FLOPS=%s ignored; allowed: a number >= 0 (FLOPs, 2*m*n*k per "
			    "GEMM) or inf; the threshold is measured instead", mf);
		else
			min_flops_env = v;
	}
}

/* ---------------------------------------------------------------------------------------------- */
/* Device state: outages, refusals, and the measured threshold                                      */

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t retry_at_ns;         /* no device attempt before this (CLOCK_MONOTONIC ns) */
static int outage_reported;         /* the current failure was said once */
static int unsupported[DTYPES];     /* the device refused this dtype's GEMM (UNSUPPORTED) */
static int threshold_known[DTYPES];
static double threshold_flops[DTYPES];

static void device_failed(const char *rout, int rc, const struct ffa_error_info *why, int dt)
{
	char line[1024];
	int first, newly_unsupported = 0;
	ffa_gemm_describe(line, sizeof(line), rout, rc, why);
	ffa_device_failure_strict_check(line);
	pthread_mutex_lock(&state_lock);
	if (rc == FFA_ERR_UNSUPPORTED && dt >= 0)
		newly_unsupported = !__atomic_exchange_n(&unsupported[dt], 1, __ATOMIC_RELAXED);
	if (rc == FFA_ERR_DEVICE_LOST || rc == FFA_ERR_TIMEOUT)
		__atomic_store_n(&retry_at_ns, (int64_t)((now_s() + RETRY_AFTER_LOST_S) * 1e9), __ATOMIC_RELAXED);
	first = !outage_reported;
	outage_reported = 1;
	pthread_mutex_unlock(&state_lock);
	/* A dtype's refusal decides where that dtype runs for the rest of the process: it is said once per
	 * dtype, even after another line (a device with neither f32 nor f64 GEMM, the npu, said only the
	 * f32 one, and its f64 GEMMs went to the host without a word). */
	if (!(newly_unsupported || (first && (device_named || rc != FFA_ERR_DEVICE_LOST))) && !verbose)
		return;
	if (rc == FFA_ERR_UNSUPPORTED && dt >= 0)
		ffa_say("%s; %s GEMMs run on the host BLAS from now on", line, dtype_names[dt]);
	else if (rc == FFA_ERR_DEVICE_LOST || rc == FFA_ERR_TIMEOUT)
		ffa_say("%s; this call and the next ones run on the host BLAS (said once until the device works "
		    "again)", line);
	else
		ffa_say("%s; this call runs on the host BLAS (said once until the device works again)", line);
}

static void device_worked(void)
{
	if (__atomic_load_n(&outage_reported, __ATOMIC_RELAXED)) {
		pthread_mutex_lock(&state_lock);
		outage_reported = 0;
		pthread_mutex_unlock(&state_lock);
	}
}

static void cpu_model(char *out, size_t cap)
{
	char line[256];
	FILE *f = fopen("/proc/cpuinfo", "r");
	snprintf(out, cap, "unknown-cpu");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char *colon = strchr(line, ':');
		if (strncmp(line, "model name", 10) == 0 && colon) {
			snprintf(out, cap, "%s", colon + 2);
			out[strcspn(out, "\n")] = '\0';
			break;
		}
	}
	fclose(f);
}

/* The calibration cache: FFACCEL_BLAS_CALIBRATION, else $XDG_CACHE_HOME or ~/.cache, /ffaccel/. */
static int cache_file(char *out, size_t cap)
{
	const char *env = getenv("FFACCEL_BLAS_CALIBRATION"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	if (env && *env)
		return snprintf(out, cap, "%s", env) < (int)cap;
	if (xdg && *xdg)
		return snprintf(out, cap, "%s/ffaccel/blas-calibration.txt", xdg) < (int)cap;
	if (home && *home)
		return snprintf(out, cap, "%s/.cache/ffaccel/blas-calibration.txt", home) < (int)cap;
	return 0;
}

/* The cache's key of a measurement: what it depends on (newlines made spaces); 0 when too long. */
static int cache_key(char *out, size_t cap, int dt)
{
	const char *dev = getenv("FFACCEL_DEVICE");
	char cpu[200];
	int n;
	cpu_model(cpu, sizeof(cpu));
	n = snprintf(out, cap, "%s\t%s\t%s\t%s\t%s", CALIBRATION_FORMAT, dtype_names[dt],
		     dev && *dev ? dev : "(default socket)", ffa_host_blas_path(), cpu);
	for (char *p = out; *p; p++)
		if (*p == '\n')
			*p = ' ';
	return n > 0 && (size_t)n < cap;
}

static int cache_read(const char *key, double *flops)
{
	char path[PATH_MAX], line[4 * PATH_MAX];
	size_t kl = strlen(key);
	int found = 0;
	FILE *f;
	if (!cache_file(path, sizeof(path)) || !(f = fopen(path, "r")))
		return 0;
	while (fgets(line, sizeof(line), f)) /* the last line for the key wins */
		if (strncmp(line, key, kl) == 0 && line[kl] == '\t') {
			char *end;
			double v = strtod(line + kl + 1, &end);
			if (end != line + kl + 1 && v >= 0) {
				*flops = v;
				found = 1;
			}
		}
	fclose(f);
	return found;
}

static void cache_write(const char *key, double flops, const char *how)
{
	char path[PATH_MAX], line[4 * PATH_MAX];
	int fd, n;
	if (!cache_file(path, sizeof(path)))
		return;
	for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
		*slash = '\0';
		mkdir(path, 0700); /* EEXIST is fine; a real failure shows at open */
		*slash = '/';
	}
	n = snprintf(line, sizeof(line), "%s\t%.17g\t%s\n", key, flops, how); /* exact when read back */
	fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0 || n <= 0 || n >= (int)sizeof(line) || write(fd, line, (size_t)n) != n) /* one append: atomic */
		ffa_say("cannot write the calibration cache %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Best-of-REPS seconds of one n^3 GEMM on the host and on the device; 0, or the device's error. */
static int time_both(int dt, int n, void *a, void *b, void *c, double *host_s, double *dev_s,
		     struct ffa_error_info *why)
{
	size_t elem = dt == F32 ? sizeof(float) : sizeof(double);
	struct ffa_gemm_args g = ffa_gemm_from_f77(dt == F32 ? FFA_DTYPE_F32 : FFA_DTYPE_F64, elem, 'N', 'N', n, n, n,
						   1.0, a, n, b, n, 0.0, c, n);
	float one_f = 1, zero_f = 0;
	double one_d = 1, zero_d = 0;
	char no[] = "N";
	*host_s = *dev_s = INFINITY;
	for (int r = -1; r < CALIBRATION_REPS; r++) { /* r = -1: warm-up, not counted */
		double t0 = now_s(), t1;
		int rc;
		if (dt == F32)
			HOST_CALL(sgemm_, (no, no, &n, &n, &n, &one_f, a, &n, b, &n, &zero_f, c, &n, 1, 1));
		else
			HOST_CALL(dgemm_, (no, no, &n, &n, &n, &one_d, a, &n, b, &n, &zero_d, c, &n, 1, 1));
		t1 = now_s();
		rc = ffa_gemm_device(&g, why);
		if (rc)
			return rc;
		if (r >= 0) {
			*host_s = fmin(*host_s, t1 - t0);
			*dev_s = fmin(*dev_s, now_s() - t1);
		}
	}
	return 0;
}

/*
 * The smallest FLOP count worth the device for dtype dt: measured with square GEMMs of growing
 * size, host BLAS against the device, side by side; the flops of the first of two sizes in a row
 * where the device was faster (inf when it never was). Returns 0, or the device's error.
 */
static int calibrate(int dt, double *flops, char *how, size_t cap, struct ffa_error_info *why)
{
	size_t elem = dt == F32 ? sizeof(float) : sizeof(double);
	size_t max_n = (size_t)calibration_sizes[sizeof(calibration_sizes) / sizeof(int) - 1];
	unsigned char *a = malloc(max_n * max_n * elem), *b = malloc(max_n * max_n * elem),
		      *c = malloc(max_n * max_n * elem);
	int rc = 0, used = 0, first_win = 0;
	*flops = INFINITY;
	if (!a || !b || !c) {
		free(a), free(b), free(c);
		snprintf(why->param, sizeof(why->param), "calibration");
		snprintf(why->message, sizeof(why->message), "no memory for the calibration's matrices");
		return FFA_ERR_OUT_OF_MEMORY;
	}
	for (size_t i = 0; i < max_n * max_n; i++) { /* small exact values: no overflow, no denormals */
		if (dt == F32)
			((float *)a)[i] = ((float *)b)[i] = (float)(i % 7) * 0.25f;
		else
			((double *)a)[i] = ((double *)b)[i] = (double)(i % 7) * 0.25;
	}
	how[0] = '\0';
	for (size_t s = 0, last = sizeof(calibration_sizes) / sizeof(int) - 1; s <= last; s++) {
		int n = calibration_sizes[s], win;
		double host_s, dev_s;
		rc = time_both(dt, n, a, b, c, &host_s, &dev_s, why);
		if (rc)
			break;
		if (used < (int)cap)
			used += snprintf(how + used, cap - (size_t)used, "%sn=%d host %.3g us device %.3g us",
					 used ? ", " : "", n, host_s * 1e6, dev_s * 1e6);
		win = dev_s < host_s;
		if (win && first_win) { /* confirmed at the next size: from the first one on */
			*flops = 2.0 * first_win * first_win * first_win;
			break;
		}
		first_win = win ? n : 0;
		if (win && (s == last || host_s > CALIBRATION_MAX_HOST_S)) { /* no larger size to confirm on */
			*flops = 2.0 * n * n * n;
			break;
		}
		if (host_s > CALIBRATION_MAX_HOST_S)
			break;
	}
	free(a), free(b), free(c);
	return rc;
}

/* The threshold of dt (measured once per machine, device and host BLAS, then read from the cache);
 * -1 when it cannot be known now (the device does not answer). */
static double threshold(int dt, const char *rout)
{
	static pthread_mutex_t calibration_lock = PTHREAD_MUTEX_INITIALIZER;
	char key[2 * PATH_MAX], how[1024];
	int keyed;
	struct ffa_error_info why;
	double flops;
	int rc;
	if (min_flops_env >= 0)
		return min_flops_env;
	if (__atomic_load_n(&threshold_known[dt], __ATOMIC_ACQUIRE))
		return threshold_flops[dt];
	pthread_mutex_lock(&calibration_lock);
	if (threshold_known[dt]) {
		pthread_mutex_unlock(&calibration_lock);
		return threshold_flops[dt];
	}
	ffa_host_blas();
	keyed = cache_key(key, sizeof(key), dt);
	if (keyed && cache_read(key, &flops)) {
		if (verbose)
			ffa_say("%s GEMM threshold %g FLOPs, from the calibration cache", dtype_names[dt], flops);
	} else {
		rc = calibrate(dt, &flops, how, sizeof(how), &why);
		if (rc) {
			pthread_mutex_unlock(&calibration_lock);
			device_failed(rout, rc, &why, dt);
			return -1;
		}
		if (keyed)
			cache_write(key, flops, how);
		if (verbose)
			ffa_say("%s GEMM threshold %g FLOPs, measured: %s", dtype_names[dt], flops, how);
	}
	threshold_flops[dt] = flops;
	__atomic_store_n(&threshold_known[dt], 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&calibration_lock);
	return flops;
}

/*
 * Run g on the device if it should go there: 1 when done (C written, or nothing to do), 0 when
 * the caller must run it on the host (too small, device off or refusing, or the device failed:
 * C is then untouched).
 */
static int on_device(const char *rout, const struct ffa_gemm_args *g)
{
	int dt = g->dtype == FFA_DTYPE_F32 ? F32 : F64, rc;
	double flops = 2.0 * (double)g->m * (double)g->n * (double)g->k * (double)g->batch, t;
	struct ffa_error_info why;
	if (ffa_gemm_quick_return(g))
		return 1;
	pthread_once(&config_once, read_config);
	if (device_off || __atomic_load_n(&unsupported[dt], __ATOMIC_RELAXED) ||
	    now_s() * 1e9 < (double)__atomic_load_n(&retry_at_ns, __ATOMIC_RELAXED))
		return 0;
	t = threshold(dt, rout);
	if (t < 0 || flops < t) {
		if (verbose)
			ffa_say("%s %llux%llux%llu x%llu: host (%g FLOPs, threshold %g)", rout, (unsigned long long)g->m,
			    (unsigned long long)g->n, (unsigned long long)g->k, (unsigned long long)g->batch, flops, t);
		return 0;
	}
	rc = ffa_gemm_device(g, &why);
	if (rc) {
		device_failed(rout, rc, &why, dt);
		return 0;
	}
	device_worked();
	if (verbose)
		ffa_say("%s %llux%llux%llu x%llu: device", rout, (unsigned long long)g->m, (unsigned long long)g->n,
		    (unsigned long long)g->k, (unsigned long long)g->batch);
	return 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* The routines the device may run                                                                  */

/* cblas_sgemm and cblas_dgemm: checked, then on the device if it should go there, else on the host. */
#define CBLAS_GEMM(name, T, dtype)                                                                              \
	FFB_EXPORT void name(const CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE TransA, const CBLAS_TRANSPOSE TransB, \
			     const CBLAS_INT M, const CBLAS_INT N, const CBLAS_INT K, const T alpha, const T *A,       \
			     const CBLAS_INT lda, const T *B, const CBLAS_INT ldb, const T beta, T *C,                 \
			     const CBLAS_INT ldc)                                                                      \
	{                                                                                                         \
		struct ffa_gemm_args g;                                                                           \
		if (!in_host && (ffa_gemm_cblas_call(#name, dtype, sizeof(T), layout, TransA, TransB, M, N, K, alpha, \
						     A, lda, B, ldb, beta, C, ldc, &g) ||                         \
				 on_device(#name, &g)))                                                           \
			return;                                                                                   \
		HOST_CALL(name, (layout, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc));          \
	}

CBLAS_GEMM(cblas_sgemm, float, FFA_DTYPE_F32)
CBLAS_GEMM(cblas_dgemm, double, FFA_DTYPE_F64)

/* A Fortran ?GEMM's checks and device attempt: 1 when the call is done (reported or run). */
static int f77_gemm(const char *name, uint32_t dtype, size_t elem, const char *transa, const char *transb,
		    const int *m, const int *n, const int *k, double alpha, const void *a, const int *lda,
		    const void *b, const int *ldb, double beta, void *c, const int *ldc)
{
	struct ffa_gemm_args g;
	int info = ffa_gemm_check_f77(ffa_trans_char(*transa), ffa_trans_char(*transb), *m, *n, *k, *lda, *ldb, *ldc);
	if (info) {
		xerbla_(name, &info, strlen(name));
		return 1;
	}
	g = ffa_gemm_from_f77(dtype, elem, *transa, *transb, *m, *n, *k, alpha, a, *lda, b, *ldb, beta, c, *ldc);
	return on_device(dtype == FFA_DTYPE_F32 ? "sgemm" : "dgemm", &g);
}

/* sgemm_ and dgemm_ (arguments by address, the TRANS lengths hidden at the end). */
#define F77_GEMM(name, T, dtype, xname)                                                                          \
	FFB_EXPORT void name(void *transa, void *transb, void *m, void *n, void *k, void *alpha, void *a, void *lda, \
			     void *b, void *ldb, void *beta, void *c, void *ldc, size_t transa_len,                \
			     size_t transb_len)                                                                    \
	{                                                                                                         \
		if (!in_host && f77_gemm(xname, dtype, sizeof(T), transa, transb, m, n, k, *(T *)alpha, a, lda, b, \
					 ldb, *(T *)beta, c, ldc))                                                \
			return;                                                                                   \
		HOST_CALL(name, (transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, transa_len,         \
				 transb_len));                                                                    \
	}

F77_GEMM(sgemm_, float, FFA_DTYPE_F32, "SGEMM ")
F77_GEMM(dgemm_, double, FFA_DTYPE_F64, "DGEMM ")

/*
 * Checks of cblas_?gemm_batch_strided, numbered by its own argument positions: those it shares
 * with cblas_?gemm map to theirs, then stridea (10), strideb (13), stridec (17: at least C's
 * footprint when batch_size > 1, so that no two entries write the same C) and batch_size (18).
 */
static int check_batch_strided(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, int M, int N,
			       int K, int lda, int stridea, int ldb, int strideb, int ldc, int stridec, int batch)
{
	static const int from_gemm[15] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 16};
	int info = ffa_gemm_check_cblas(layout, TransA, TransB, M, N, K, lda, ldb, ldc);
	if (info)
		return info < 15 ? from_gemm[info] : info;
	if (stridea < 0)
		return 10;
	if (strideb < 0)
		return 13;
	if (batch > 1 && (int64_t)stridec < (int64_t)ldc * (layout == CblasRowMajor ? M : N))
		return 17;
	if (batch < 0)
		return 18;
	return 0;
}

#define GEMM_BATCH_STRIDED(name, T, dtype, gemm)                                                                 \
	FFB_EXPORT void name(const CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE TransA, const CBLAS_TRANSPOSE TransB, \
			     const CBLAS_INT M, const CBLAS_INT N, const CBLAS_INT K, const T alpha, const T *A,       \
			     const CBLAS_INT lda, const CBLAS_INT stridea, const T *B, const CBLAS_INT ldb,            \
			     const CBLAS_INT strideb, const T beta, T *C, const CBLAS_INT ldc,                         \
			     const CBLAS_INT stridec, const CBLAS_INT batch_size)                                      \
	{                                                                                                         \
		struct ffa_gemm_args g;                                                                           \
		int info = check_batch_strided(layout, TransA, TransB, M, N, K, lda, stridea, ldb, strideb, ldc,  \
					       stridec, batch_size);                                              \
		if (info) {                                                                                       \
			ffa_gemm_xerbla_cblas(info, #name, layout, TransA, TransB);                               \
			return;                                                                                   \
		}                                                                                                 \
		g = ffa_gemm_from_cblas(dtype, sizeof(T), layout, TransA, TransB, M, N, K, alpha, A, lda, B, ldb, \
					beta, C, ldc);                                                            \
		g.batch = (uint64_t)batch_size;                                                                   \
		/* column-major swapped A and B (ffa_gemm_from_cblas): their strides swap too */                 \
		g.stride_a = (uint64_t)(layout == CblasColMajor ? strideb : stridea);                             \
		g.stride_b = (uint64_t)(layout == CblasColMajor ? stridea : strideb);                             \
		g.stride_c = (uint64_t)stridec;                                                                   \
		if (!in_host && on_device(#name, &g))                                                             \
			return;                                                                                   \
		for (CBLAS_INT i = 0; i < batch_size; i++) /* the host BLAS has no batched GEMM */               \
			HOST_CALL(gemm, (layout, TransA, TransB, M, N, K, alpha, A + (int64_t)i * stridea, lda,   \
					 B + (int64_t)i * strideb, ldb, beta, C + (int64_t)i * stridec, ldc));    \
	}

GEMM_BATCH_STRIDED(cblas_sgemm_batch_strided, float, FFA_DTYPE_F32, cblas_sgemm)
GEMM_BATCH_STRIDED(cblas_dgemm_batch_strided, double, FFA_DTYPE_F64, cblas_dgemm)

/*
 * Checks of cblas_?gemm_batch (MKL's group API), whose arguments sit where cblas_?gemm's do, as
 * arrays with one entry per group; then group_count (15) and group_size (16). *group receives the
 * offending group.
 */
static int check_batch_groups(CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE *ta, const CBLAS_TRANSPOSE *tb,
			      const int *m, const int *n, const int *k, const int *lda, const int *ldb, const int *ldc,
			      int group_count, const int *group_size, int *group)
{
	*group = 0;
	if (layout != CblasRowMajor && layout != CblasColMajor)
		return 1;
	if (group_count < 0)
		return 15;
	for (*group = 0; *group < group_count; ++*group) {
		int g = *group, info = ffa_gemm_check_cblas(layout, ta[g], tb[g], m[g], n[g], k[g], lda[g], ldb[g], ldc[g]);
		if (info)
			return info;
		if (group_size[g] < 0)
			return 16;
	}
	return 0;
}

/*
 * cblas_?gemm_batch: group g has group_size[g] GEMMs sharing its transposes, sizes, leading
 * dimensions, alpha and beta, with their own matrices (A_array[i], B_array[i], C_array[i], i
 * counting through all groups). A group large enough is one device GEMM (its matrices packed as
 * one batch); otherwise each of its GEMMs runs on the host.
 */
#define GEMM_BATCH(name, T, dtype, gemm)                                                                          \
	FFB_EXPORT void name(const CBLAS_LAYOUT layout, const CBLAS_TRANSPOSE *TransA_array,                       \
			     const CBLAS_TRANSPOSE *TransB_array, const CBLAS_INT *M_array, const CBLAS_INT *N_array, \
			     const CBLAS_INT *K_array, const T *alpha_array, const T **A_array,                        \
			     const CBLAS_INT *lda_array, const T **B_array, const CBLAS_INT *ldb_array,                \
			     const T *beta_array, T **C_array, const CBLAS_INT *ldc_array,                             \
			     const CBLAS_INT group_count, const CBLAS_INT *group_size)                                 \
	{                                                                                                         \
		int bad, info = check_batch_groups(layout, TransA_array, TransB_array, M_array, N_array, K_array,  \
						   lda_array, ldb_array, ldc_array, group_count, group_size, &bad);  \
		if (info) {                                                                                       \
			ffa_gemm_xerbla_cblas(info, #name, layout, info == 2 ? TransA_array[bad] : CblasNoTrans,  \
					      info == 3 ? TransB_array[bad] : CblasNoTrans);                      \
			return;                                                                                   \
		}                                                                                                 \
		for (CBLAS_INT g = 0, first = 0; g < group_count; first += group_size[g], g++) {                 \
			int col = layout == CblasColMajor;                                                        \
			struct ffa_gemm_args args = ffa_gemm_from_cblas(                                          \
				dtype, sizeof(T), layout, TransA_array[g], TransB_array[g], M_array[g], N_array[g],   \
				K_array[g], alpha_array[g], NULL, lda_array[g], NULL, ldb_array[g], beta_array[g], NULL, \
				ldc_array[g]);                                                                    \
			args.batch = (uint64_t)group_size[g];                                                     \
			/* column-major swapped A and B (ffa_gemm_from_cblas): their lists swap too */           \
			args.a_list = (const void *const *)(col ? B_array : A_array) + first;                     \
			args.b_list = (const void *const *)(col ? A_array : B_array) + first;                     \
			args.c_list = (void *const *)C_array + first;                                             \
			if (!in_host && on_device(#name, &args))                                                  \
				continue;                                                                         \
			for (CBLAS_INT i = first; i < first + group_size[g]; i++)                                 \
				HOST_CALL(gemm, (layout, TransA_array[g], TransB_array[g], M_array[g], N_array[g],  \
						 K_array[g], alpha_array[g], A_array[i], lda_array[g], B_array[i],       \
						 ldb_array[g], beta_array[g], C_array[i], ldc_array[g]));                \
		}                                                                                                 \
	}

GEMM_BATCH(cblas_sgemm_batch, float, FFA_DTYPE_F32, cblas_sgemm)
GEMM_BATCH(cblas_dgemm_batch, double, FFA_DTYPE_F64, cblas_dgemm)

/*
 * CBLAS routines some host BLASes lack, where forwarding by name stopped the program ("the host
 * BLAS ... has no cblas_dcabs1"): OpenBLAS (Debian's usual host) and ATLAS have no cblas_scabs1 or
 * cblas_dcabs1, BLIS no cblas_crotg, cblas_zrotg, cblas_csrot or cblas_zdrot. Each runs as the
 * host's CBLAS routine when it has one, else as the host's Fortran routine of the same computation.
 * ATLAS has no scabs1_/dcabs1_ either: |Re z| + |Im z|, their whole definition, is computed here.
 */

/* Whether the host BLAS has name; asked once (*known: 0 not yet, 1 yes, 2 no). */
static int host_has(const char *name, int *known)
{
	int k = __atomic_load_n(known, __ATOMIC_RELAXED);
	if (!k) {
		void *p = dlsym(ffa_host_blas(), name);
		k = p && !ffa_in_this_library(p) ? 1 : 2;
		__atomic_store_n(known, k, __ATOMIC_RELAXED);
	}
	return k == 1;
}

#define CBLAS_CABS1(name, T, fortran, abs_fn)                                                         \
	FFB_EXPORT T name(const void *z)                                                              \
	{                                                                                             \
		static int has_cblas, has_fortran;                                                    \
		const T *v = z;                                                                       \
		if (host_has(#name, &has_cblas))                                                      \
			return ((FFB_TYPE_##name *)ffb_host_symbol(FFB_HOST_##name))(z);              \
		if (host_has(#fortran, &has_fortran))                                                 \
			return ((FFB_TYPE_##fortran *)ffb_host_symbol(FFB_HOST_##fortran))((void *)z); \
		return abs_fn(v[0]) + abs_fn(v[1]);                                                   \
	}

CBLAS_CABS1(cblas_scabs1, float, scabs1_, fabsf)
CBLAS_CABS1(cblas_dcabs1, double, dcabs1_, fabs)

#define CBLAS_ROTG(name, R, fortran)                                                                  \
	FFB_EXPORT void name(void *a, void *b, R *c, void *s)                                         \
	{                                                                                             \
		static int has_cblas;                                                                 \
		if (host_has(#name, &has_cblas))                                                      \
			HOST_CALL(name, (a, b, c, s));                                                \
		else                                                                                  \
			HOST_CALL(fortran, (a, b, c, s));                                             \
	}

CBLAS_ROTG(cblas_crotg, float, crotg_)
CBLAS_ROTG(cblas_zrotg, double, zrotg_)

#define CBLAS_ROT(name, R, fortran)                                                                   \
	FFB_EXPORT void name(const CBLAS_INT N, void *X, const CBLAS_INT incX, void *Y, const CBLAS_INT incY, \
			     const R c, const R s)                                                        \
	{                                                                                             \
		static int has_cblas;                                                                 \
		int n = N, incx = incX, incy = incY;                                                  \
		R cc = c, ss = s;                                                                     \
		if (host_has(#name, &has_cblas))                                                      \
			HOST_CALL(name, (N, X, incX, Y, incY, c, s));                                 \
		else                                                                                  \
			HOST_CALL(fortran, (&n, X, &incx, Y, &incy, &cc, &ss));                       \
	}

CBLAS_ROT(cblas_csrot, float, csrot_)
CBLAS_ROT(cblas_zdrot, double, zdrot_)

/* ---------------------------------------------------------------------------------------------- */
/* Error handlers (the program's own replace these: they are weak)                                  */

/*
 * The reference message; then the call returns (as OpenBLAS's XERBLA does) instead of stopping.
 * One exception: netlib's CBLAS runs its checks in the Fortran routine it calls, whose XERBLA call
 * reaches this one (it is first in the program's scope); when netlib's flag CBLAS_CallFromC says
 * so, netlib's own xerbla_ gets it back, to report through cblas_xerbla with the CBLAS numbering.
 */
FFB_EXPORT __attribute__((weak)) void xerbla_(const char *srname, const int *info, size_t srname_len)
{
	void *host = ffa_host_blas_loaded();
	const int *from_cblas = host ? dlsym(host, "CBLAS_CallFromC") : NULL;
	void *host_xerbla = from_cblas && *from_cblas ? dlsym(host, "xerbla_") : NULL;
	size_t n = srname_len < 32 ? srname_len : 32; /* a C caller may pass no length: bounded */
	if (host_xerbla && !ffa_in_this_library(host_xerbla)) {
		((void (*)(const char *, const int *, size_t))host_xerbla)(srname, info, srname_len);
		return;
	}
	n = strnlen(srname, n);
	while (n && srname[n - 1] == ' ')
		n--;
	fprintf(stderr, " ** On entry to %-6.*s parameter number %2d had an illegal value\n", (int)n, srname, *info);
}

/*
 * netlib's CBLAS reports a row-major call's errors with the numbers of the column-major call it
 * made (M and N swapped, ...), and its cblas_xerbla swaps them back, by routine, when netlib's
 * flag RowMajorStrg is set. The pairs it swaps (checked against netlib's libblas3 in the tests):
 */
static const struct {
	const char *name_part; /* first match wins */
	int swap[2][2];
} netlib_row_major_swaps[] = {
	{"gemm", {{4, 5}, {9, 11}}}, {"symm", {{4, 5}, {0, 0}}}, {"hemm", {{4, 5}, {0, 0}}},
	{"trmm", {{6, 7}, {0, 0}}},  {"trsm", {{6, 7}, {0, 0}}}, {"gemv", {{3, 4}, {0, 0}}},
	{"gbmv", {{3, 4}, {5, 6}}},  {"ger", {{2, 3}, {6, 8}}},
};

static int netlib_row_major_number(int p, const char *rout)
{
	void *host = ffa_host_blas_loaded();
	const int *row_major = host ? dlsym(host, "RowMajorStrg") : NULL;
	if (!row_major || !*row_major || ffa_in_this_library(row_major))
		return p;
	for (size_t i = 0; i < sizeof(netlib_row_major_swaps) / sizeof(netlib_row_major_swaps[0]); i++) {
		if (!strstr(rout, netlib_row_major_swaps[i].name_part))
			continue;
		for (int s = 0; s < 2; s++) {
			const int *pair = netlib_row_major_swaps[i].swap[s];
			if (p == pair[0] || p == pair[1])
				return p == pair[0] ? pair[1] : pair[0];
		}
		break;
	}
	return p;
}

/* The reference message (numbered as netlib's when netlib's CBLAS reports); then it returns. */
FFB_EXPORT __attribute__((weak)) void cblas_xerbla(CBLAS_INT p, const char *rout, const char *form, ...)
{
	va_list ap;
	va_start(ap, form);
	ffa_xerbla_print(netlib_row_major_number((int)p, rout), rout, form, ap);
	va_end(ap);
}

/* XERBLA for callers that have the routine's name as an array of characters (LAPACK's C callers). */
FFB_EXPORT __attribute__((weak)) void xerbla_array_(const char *srname_array, const int *srname_len,
						     const int *info)
{
	char name[33];
	int n = *srname_len < 0 ? 0 : *srname_len > 32 ? 32 : *srname_len;
	memcpy(name, srname_array, (size_t)n);
	name[n] = '\0';
	xerbla_(name, info, (size_t)n);
}
