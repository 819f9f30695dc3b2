/*
 * The C client on its own: a batched GEMM with an epilogue built from ffaccel_uapi.h's structs,
 * then one submission per error class. Prints every input and output for the test to check
 * against NumPy, and each error as "err NAME CODE PARAM COMMAND_INDEX".
 * The device is $FFACCEL_DEVICE (unix:PATH[?transport=...]).
 */
#include <ffaccel.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

enum { BATCH = 3, M = 4, N = 5, K = 6, LDD = N + 2 };

static void dump(const char *name, const float *x, size_t n)
{
	printf("%s", name);
	for (size_t i = 0; i < n; i++)
		printf(" %.9g", x[i]);
	printf("\n");
}

static void report(const char *name, ffa_client *c, int rc)
{
	const struct ffa_error_info *e = ffa_last_error(c);
	printf("err %s %s %d %s %d\n", name, ffa_error_name((uint32_t)rc), rc, e->param,
	       e->command_index == FFA_NO_INDEX ? -1 : (int)e->command_index);
}

int main(void)
{
	ffa_client *c;
	struct ffa_error_info oe;
	uint32_t h;
	void *mem;
	float *a, *b, *bias, *d, *d2;
	uint64_t fence, fence2;
	union ffa_command cmd[2];
	struct ffa_gemm *g = &cmd[0].gemm;
	const size_t a_off = 0, b_off = a_off + sizeof(float) * BATCH * M * K, bias_off = b_off + sizeof(float) * K * N,
		     d_off = bias_off + sizeof(float) * N, d2_off = d_off + sizeof(float) * BATCH * M * LDD,
		     total = d2_off + sizeof(float) * M * N;
	int rc;

	if ((rc = ffa_open(NULL, &c, &oe)) != 0) {
		printf("open %s %s %s\n", ffa_error_name(oe.code), oe.param, oe.message);
		return 1;
	}
	printf("transport %s\n", ffa_transport(c));
	if ((rc = ffa_alloc(c, total, &h, &mem)) != 0) {
		report("alloc", c, rc);
		return 1;
	}
	a = (float *)((char *)mem + a_off);
	b = (float *)((char *)mem + b_off);
	bias = (float *)((char *)mem + bias_off);
	d = (float *)((char *)mem + d_off);
	d2 = (float *)((char *)mem + d2_off);
	for (int i = 0; i < BATCH * M * K; i++)
		a[i] = sinf(0.37f * (float)i);
	for (int i = 0; i < K * N; i++)
		b[i] = cosf(0.11f * (float)i);
	for (int j = 0; j < N; j++)
		bias[j] = 0.1f * (float)j - 0.2f;
	for (int i = 0; i < BATCH * M * LDD; i++)
		d[i] = 777.0f;
	memset(d2, 0, sizeof(float) * M * N);

	/* D[b] = relu(1.5 * A[b] @ B + bias): A batched, B broadcast (batch stride 0), D padded */
	memset(cmd, 0, sizeof(cmd));
	g->opcode = FFA_OPCODE_GEMM;
	g->size_bytes = FFA_COMMAND_BYTES;
	g->m = M;
	g->n = N;
	g->k = K;
	g->batch = BATCH;
	g->acc_dtype = FFA_DTYPE_F32;
	g->alpha_bits = ffa_f64_bits(1.5);
	g->beta_bits = ffa_f64_bits(0.0);
	g->a = ffa_matrix(h, FFA_DTYPE_F32, a_off, M, K, K, M * K);
	g->b = ffa_matrix(h, FFA_DTYPE_F32, b_off, K, N, N, 0);
	g->d = ffa_matrix(h, FFA_DTYPE_F32, d_off, M, N, LDD, M * LDD);
	g->epilogue_count = 2;
	g->epilogue[0].kind = FFA_POST_OP_BIAS_N;
	g->epilogue[0].operand = ffa_matrix(h, FFA_DTYPE_F32, bias_off, 1, N, N, 0);
	g->epilogue[1].kind = FFA_POST_OP_RELU;
	g->user_data = 42;
	if ((rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, cmd, 1, &fence)) != 0 ||
	    (rc = ffa_wait(c, FFA_ENGINE_COMPUTE, fence, 10ull * 1000000000ull)) != 0) {
		report("gemm", c, rc);
		return 1;
	}
	printf("fence %llu\n", (unsigned long long)fence);
	dump("A", a, BATCH * M * K);
	dump("B", b, K * N);
	dump("bias", bias, N);
	dump("D", d, BATCH * M * LDD);

	/* a submission whose second command is bad runs nothing: the first one's D2 stays zero */
	cmd[1] = cmd[0];
	cmd[0].gemm.batch = 1;
	cmd[0].gemm.epilogue_count = 0;
	memset(cmd[0].gemm.epilogue, 0, sizeof(cmd[0].gemm.epilogue));
	cmd[0].gemm.d = ffa_matrix(h, FFA_DTYPE_F32, d2_off, M, N, N, 0);
	cmd[1].gemm.a.ld_elems = K - 1;
	rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, cmd, 2, &fence2);
	report("lda", c, rc);
	dump("D2", d2, M * N);

	cmd[0].gemm.a.handle = 999;
	rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, cmd, 1, &fence2);
	report("handle", c, rc);
	cmd[0].gemm.a.handle = h;

	cmd[0].gemm.reserved0 = 1;
	rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, cmd, 1, &fence2);
	report("reserved", c, rc);
	cmd[0].gemm.reserved0 = 0;

	rc = ffa_wait(c, FFA_ENGINE_COMPUTE, fence + 1000, 1000000);
	report("wait", c, rc);

	if ((rc = ffa_free(c, h)) != 0) {
		report("free", c, rc);
		return 1;
	}
	rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, cmd, 1, &fence2);
	report("freed", c, rc);
	rc = ffa_free(c, h);
	report("double_free", c, rc);
	ffa_close(c);
	return 0;
}
