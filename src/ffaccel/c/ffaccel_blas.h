/* SPDX-License-Identifier: MIT */
/*
 * Internal header of libffaccel_blas.so (the drop-in BLAS): the host BLAS's symbols, by the index
 * the generated ffaccel_blas_index.h gives them, and the visibility of what the library exports.
 */
#ifndef FFACCEL_BLAS_H
#define FFACCEL_BLAS_H

#include "cblas.h"
#include "ffaccel_gemm.h"
#include "ffaccel_host_blas.h"

#include <stddef.h>

#include "ffaccel_blas_index.h"

/* The library is built with -fvisibility=hidden: only the BLAS interface is exported. */
#define FFB_EXPORT __attribute__((visibility("default")))

/* The host symbol names, by index (generated from blas_routines.txt). */
FFA_INTERNAL extern const char *const ffb_host_names[FFB_HOST_COUNT];
/* The host BLAS's routine of that index (loading the host BLAS on first use; fatal when absent). */
FFA_INTERNAL void *ffb_host_symbol(enum ffb_host_index index);

#endif /* FFACCEL_BLAS_H */
