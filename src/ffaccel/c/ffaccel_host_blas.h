/* SPDX-License-Identifier: MIT */
/*
 * The host BLAS, shared by libffaccel_blas.so (the drop-in: everything the device does not run)
 * and libffaccel_cblas.so (the GEMMs the device failed): finding it at run time
 * (FFACCEL_HOST_BLAS, else the system's libblas.so.3, OpenBLAS, BLIS, ATLAS or netlib's, never
 * the calling library itself), running a GEMM on it, and the one policy on a device failure
 * (FFACCEL_BLAS_STRICT=1: abort; else the host runs the call). Internal: hidden names only.
 */
#ifndef FFACCEL_HOST_BLAS_H
#define FFACCEL_HOST_BLAS_H

#include "ffaccel_gemm.h"

/* The prefix of the library's stderr lines ("ffaccel blas", "ffaccel cblas"): each library defines it. */
FFA_INTERNAL extern const char ffa_library_tag[];

/* One line "TAG: ..." on stderr; ffa_fatal then aborts the program. */
FFA_INTERNAL void ffa_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
FFA_INTERNAL void ffa_fatal(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* Nonzero when the environment variable is set to something other than "" or "0". */
FFA_INTERNAL int ffa_env_flag(const char *name);

/* Nonzero when addr lies in the calling library (a "host" that is ourselves would call itself forever). */
FFA_INTERNAL int ffa_in_this_library(const void *addr);

/* The host BLAS's dlopen handle, loaded on first use (thread-safe); fatal when none is found. */
FFA_INTERNAL void *ffa_host_blas(void);
/* The handle when already loaded, else NULL (never loads). */
FFA_INTERNAL void *ffa_host_blas_loaded(void);
/* The path of the loaded host BLAS ("" before ffa_host_blas). */
FFA_INTERNAL const char *ffa_host_blas_path(void);
/* The host's routine name (loading the host BLAS on first use); fatal when it has none. */
FFA_INTERNAL void *ffa_host_blas_symbol(const char *name);

/*
 * Run g (argument-checked, any batch) on the host's Fortran sgemm_/dgemm_: the row-major GEMM
 * is the column-major C^T = op(B)^T op(A)^T. Fortran ?gemm_ calls no other exported BLAS routine,
 * so a host reached this way never comes back into the calling library.
 */
FFA_INTERNAL void ffa_gemm_host(const struct ffa_gemm_args *g);

/*
 * A device failure described by line (ffa_gemm_describe): with FFACCEL_BLAS_STRICT=1 the program
 * stops here (fatal); otherwise this returns and the caller runs the call on the host BLAS.
 */
FFA_INTERNAL void ffa_device_failure_strict_check(const char *line);

#endif /* FFACCEL_HOST_BLAS_H */
