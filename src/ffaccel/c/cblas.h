/* SPDX-License-Identifier: MIT */
/*
 * CBLAS for ffaccel: the reference CBLAS names and types. libffaccel_blas.so (the drop-in BLAS)
 * exports every routine declared here; libffaccel_cblas.so only the GEMMs (on the device only).
 * A program written against netlib's, OpenBLAS's or Intel MKL's cblas.h compiles against this
 * one unchanged: the spellings of all three are accepted (enum CBLAS_ORDER / CBLAS_LAYOUT, the
 * typedefs without "enum", CBLAS_INDEX, CblasConjNoTrans, MKL's CBLAS_IDENTIFIER, ...).
 *
 * The prototypes below the enums are written by `ffaccel build-c` from blas_routines.txt.
 */
#ifndef CBLAS_H
#define CBLAS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The integer of the interface (LP64). A program may not redefine it: the library is built with int. */
#ifndef CBLAS_INT
#define CBLAS_INT int
#endif
/* The return type of cblas_i?amax (netlib, OpenBLAS and MKL all use size_t). */
#ifndef CBLAS_INDEX
#define CBLAS_INDEX size_t
#endif

typedef enum CBLAS_LAYOUT { CblasRowMajor = 101, CblasColMajor = 102 } CBLAS_LAYOUT;
/*
 * Two older names of the layout: netlib spells the enum tag "enum CBLAS_ORDER" (kept by netlib as
 * this very #define), OpenBLAS the typedef CBLAS_ORDER; the macro serves both spellings.
 */
#define CBLAS_ORDER CBLAS_LAYOUT
/* CblasConjNoTrans (114) is OpenBLAS's; the reference routines refuse it as an illegal value. */
typedef enum CBLAS_TRANSPOSE {
	CblasNoTrans = 111,
	CblasTrans = 112,
	CblasConjTrans = 113,
	CblasConjNoTrans = 114
} CBLAS_TRANSPOSE;
typedef enum CBLAS_UPLO { CblasUpper = 121, CblasLower = 122 } CBLAS_UPLO;
typedef enum CBLAS_DIAG { CblasNonUnit = 131, CblasUnit = 132 } CBLAS_DIAG;
typedef enum CBLAS_SIDE { CblasLeft = 141, CblasRight = 142 } CBLAS_SIDE;
/* MKL's names for its packed and integer GEMM extensions (declared for source compatibility only). */
typedef enum CBLAS_STORAGE { CblasPacked = 151 } CBLAS_STORAGE;
typedef enum CBLAS_IDENTIFIER { CblasAMatrix = 161, CblasBMatrix = 162 } CBLAS_IDENTIFIER;
typedef enum CBLAS_OFFSET { CblasRowOffset = 171, CblasColOffset = 172, CblasFixOffset = 173 } CBLAS_OFFSET;

/*
 * cblas_xerbla(p, rout, form, ...) reports an illegal argument (p: its 1-based position, counting
 * the layout) or, in libffaccel_cblas.so, a device error (p = 0), then returns. A program may
 * define its own cblas_xerbla (and xerbla_ for the Fortran names) to replace the library's.
 *
 * cblas_?gemm_batch_strided (Intel MKL's extension): for i < batch_size,
 * C + i*stridec = alpha op(A + i*stridea) op(B + i*strideb) + beta (C + i*stridec).
 * cblas_?gemm_batch (MKL's group API): group g holds group_size[g] GEMMs that share the g-th
 * entry of each array argument (transposes, sizes, alpha, lda, ...) and take their matrices from
 * A_array[i], B_array[i], C_array[i], i counting through the groups in order.
 */
/* @CBLAS_PROTOTYPES@ */

#ifdef __cplusplus
}
#endif

#endif /* CBLAS_H */
