/* SPDX-License-Identifier: MIT */
/*
 * The GEMM core shared by libffaccel_cblas.so (device only) and libffaccel_blas.so (the drop-in
 * BLAS): the reference BLAS argument checks with their parameter numbers, the mapping of CBLAS
 * and Fortran calls onto one row-major GEMM, and that GEMM on the device server. Internal: every
 * name here is hidden from the libraries' exported symbols.
 */
#ifndef FFACCEL_GEMM_H
#define FFACCEL_GEMM_H

#include "cblas.h"
#include "ffaccel.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#define FFA_INTERNAL __attribute__((visibility("hidden")))

/*
 * One row-major GEMM (or a batch of them), arguments already checked:
 * for each entry i < batch, C_i (m x n, ldc) = alpha op(A_i) op(B_i) + beta C_i, where X_i is
 * x_list[i] when the list is given (a batch of pointers), else starts stride_x elements after
 * X_(i-1) (stride 0 for A or B: every entry uses the same matrix).
 */
struct ffa_gemm_args {
	uint32_t dtype; /* FFA_DTYPE_F32 or FFA_DTYPE_F64 */
	size_t elem;    /* bytes of one element */
	int ta, tb;     /* 1: op(X) = X^T */
	uint64_t m, n, k;
	double alpha, beta;
	const void *a;
	uint64_t lda;
	const void *b;
	uint64_t ldb;
	void *c;
	uint64_t ldc;
	uint64_t batch;
	uint64_t stride_a, stride_b, stride_c;
	const void *const *a_list, *const *b_list; /* all three or none */
	void *const *c_list;
};

/* The reference cblas_xerbla's message: "Parameter P to routine ROUT was incorrect" (P > 0), then form. */
FFA_INTERNAL void ffa_xerbla_print(int p, const char *rout, const char *form, va_list ap);

/* 1, 0, or -1 (illegal) for a CBLAS transpose enum or a Fortran TRANS character. */
FFA_INTERNAL int ffa_trans_enum(CBLAS_TRANSPOSE t);
FFA_INTERNAL int ffa_trans_char(char t);

/* The reference Fortran ?GEMM checks in its order: 0, or INFO (the 1-based parameter number). */
FFA_INTERNAL int ffa_gemm_check_f77(int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc);

/*
 * The reference CBLAS checks of cblas_?gemm, numbered as the reference cblas_xerbla reports them
 * in either layout: 0 when legal, else the parameter number (1 layout, 2 TransA, 3 TransB, ...).
 */
FFA_INTERNAL int ffa_gemm_check_cblas(CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, int M,
				      int N, int K, int lda, int ldb, int ldc);
/* Report a failed ffa_gemm_check_cblas through cblas_xerbla, with the reference messages. */
FFA_INTERNAL void ffa_gemm_xerbla_cblas(int info, const char *rout, CBLAS_LAYOUT layout, CBLAS_TRANSPOSE TransA,
					CBLAS_TRANSPOSE TransB);

/* A checked CBLAS call as the row-major GEMM it is (column-major: C^T = op(B)^T op(A)^T). */
FFA_INTERNAL struct ffa_gemm_args ffa_gemm_from_cblas(uint32_t dtype, size_t elem, CBLAS_LAYOUT layout,
						      CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, int M, int N,
						      int K, double alpha, const void *A, int lda, const void *B,
						      int ldb, double beta, void *C, int ldc);
/* A checked Fortran call (column-major, TRANS characters) as the row-major GEMM it is. */
FFA_INTERNAL struct ffa_gemm_args ffa_gemm_from_f77(uint32_t dtype, size_t elem, char transa, char transb, int m,
						    int n, int k, double alpha, const void *a, int lda, const void *b,
						    int ldb, double beta, void *c, int ldc);

/*
 * A CBLAS ?gemm call as *g: 0, or nonzero when an argument is illegal (then reported through
 * cblas_xerbla as rout, with the reference number, and *g is not set).
 */
FFA_INTERNAL int ffa_gemm_cblas_call(const char *rout, uint32_t dtype, size_t elem, CBLAS_LAYOUT layout,
				     CBLAS_TRANSPOSE TransA, CBLAS_TRANSPOSE TransB, int M, int N, int K, double alpha,
				     const void *A, int lda, const void *B, int ldb, double beta, void *C, int ldc,
				     struct ffa_gemm_args *g);

/* Nothing to compute and nothing to write: the reference BLAS's quick return. */
FFA_INTERNAL int ffa_gemm_quick_return(const struct ffa_gemm_args *g);

/*
 * Run g on the device server (FFACCEL_DEVICE, else the default socket), connecting on first use
 * and again after the server was lost. Thread-safe (one connection per process, under a lock).
 * Returns 0 with C written, or an enum ffa_error_code with C untouched and *why filled.
 */
FFA_INTERNAL int ffa_gemm_device(const struct ffa_gemm_args *g, struct ffa_error_info *why);

/* "ROUT: the ffaccel device DEV refused or failed the call: CODE PARAM: MESSAGE" into out. */
FFA_INTERNAL void ffa_gemm_describe(char *out, size_t cap, const char *rout, int code,
				    const struct ffa_error_info *why);

#endif /* FFACCEL_GEMM_H */
