/*
 * The rest of the C client's API against a real server: command lists (record, replay with a wait,
 * free), COMPLETED, STATS, and sharing a buffer between two clients (export as a memfd fd, import).
 * Prints inputs, outputs and each error as "err NAME CODE PARAM" for the test to judge.
 * The device is $FFACCEL_DEVICE (unix:PATH[?transport=...]).
 */
#include <ffaccel.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum { M = 4, N = 3, K = 5 };

static void dump(const char *name, const float *x, size_t n)
{
	printf("%s", name);
	for (size_t i = 0; i < n; i++)
		printf(" %.9g", x[i]);
	printf("\n");
}

static void report(const char *name, ffa_client *c, int rc)
{
	printf("err %s %s %s\n", name, ffa_error_name((uint32_t)rc), ffa_last_error(c)->param);
}

static union ffa_command gemm(uint32_t h, double alpha, uint64_t a_off, uint64_t b_off, uint64_t d_off)
{
	union ffa_command cmd;
	struct ffa_gemm *g = &cmd.gemm;
	memset(&cmd, 0, sizeof(cmd));
	g->opcode = FFA_OPCODE_GEMM;
	g->size_bytes = FFA_COMMAND_BYTES;
	g->m = M;
	g->n = N;
	g->k = K;
	g->batch = 1;
	g->acc_dtype = FFA_DTYPE_F32;
	g->alpha_bits = ffa_f64_bits(alpha);
	g->beta_bits = ffa_f64_bits(0.0);
	g->a = ffa_matrix(h, FFA_DTYPE_F32, a_off, M, K, K, 0);
	g->b = ffa_matrix(h, FFA_DTYPE_F32, b_off, K, N, N, 0);
	g->d = ffa_matrix(h, FFA_DTYPE_F32, d_off, M, N, N, 0);
	return cmd;
}

#define CHECK(name, c, expr)                                                                                   \
	do {                                                                                                   \
		int rc_ = (expr);                                                                              \
		if (rc_) {                                                                                     \
			report(name, c, rc_);                                                                  \
			return 1;                                                                              \
		}                                                                                              \
	} while (0)

int main(void)
{
	ffa_client *c, *c2;
	struct ffa_error_info oe;
	struct ffa_stats st;
	uint32_t h, h2, list, bad_list;
	void *mem, *mem2;
	uint64_t size2, fence, fence2, fence3, done;
	const uint64_t a_off = 0, b_off = sizeof(float) * M * K, d_off = b_off + sizeof(float) * K * N,
		       d2_off = d_off + sizeof(float) * M * N, total = d2_off + sizeof(float) * M * N;
	float *a, *b, *d, *d2;
	union ffa_command cmd;
	struct ffa_wait w;
	int fd, rc;

	if (ffa_open(NULL, &c, &oe) != 0 || ffa_open(NULL, &c2, &oe) != 0) {
		printf("open %s %s %s\n", ffa_error_name(oe.code), oe.param, oe.message);
		return 1;
	}
	printf("transport %s %s\n", ffa_transport(c), ffa_transport(c2));
	CHECK("alloc", c, ffa_alloc(c, total, &h, &mem));
	a = (float *)((char *)mem + a_off);
	b = (float *)((char *)mem + b_off);
	d = (float *)((char *)mem + d_off);
	d2 = (float *)((char *)mem + d2_off);
	for (int i = 0; i < M * K; i++)
		a[i] = (float)(i % 7) - 3.0f;
	for (int i = 0; i < K * N; i++)
		b[i] = 0.5f * (float)(i % 5) - 1.0f;
	memset(d, 0, sizeof(float) * M * N * 2);

	/* a command list: recorded once, replayed twice (the second after the first, by a wait) */
	cmd = gemm(h, 1.0, a_off, b_off, d_off);
	CHECK("record", c, ffa_record(c, FFA_ENGINE_COMPUTE, &cmd, 1, &list));
	CHECK("replay", c, ffa_replay(c, list, FFA_ENGINE_COMPUTE, NULL, 0, &fence));
	w.engine = FFA_ENGINE_COMPUTE;
	w.reserved = 0;
	w.value = fence;
	CHECK("replay2", c, ffa_replay(c, list, FFA_ENGINE_COMPUTE, &w, 1, &fence2));
	CHECK("wait", c, ffa_wait(c, FFA_ENGINE_COMPUTE, fence2, 10ull * 1000000000ull));
	CHECK("completed", c, ffa_completed(c, FFA_ENGINE_COMPUTE, &done));
	printf("fences %llu %llu completed %llu\n", (unsigned long long)fence, (unsigned long long)fence2,
	       (unsigned long long)done);
	dump("A", a, M * K);
	dump("B", b, K * N);
	dump("D", d, M * N);

	/* the buffer shared with a second client: it computes into the same memory */
	CHECK("export", c, ffa_export(c, h, &fd));
	CHECK("import", c2, ffa_import(c2, fd, &h2, &mem2, &size2));
	close(fd);
	printf("import size %llu same_bytes %d\n", (unsigned long long)size2, memcmp(mem, mem2, (size_t)total) == 0);
	cmd = gemm(h2, 2.0, a_off, b_off, d2_off);
	CHECK("submit2", c2, ffa_submit(c2, FFA_ENGINE_COMPUTE, NULL, 0, &cmd, 1, &fence3));
	CHECK("wait2", c2, ffa_wait(c2, FFA_ENGINE_COMPUTE, fence3, 10ull * 1000000000ull));
	dump("D2", d2, M * N); /* read through the first client's mapping */

	CHECK("stats", c, ffa_stats(c, &st));
	printf("stats clients %u buffers %u bytes_charged %llu submissions %llu\n", st.clients, st.buffers,
	       (unsigned long long)st.bytes_charged, (unsigned long long)st.submissions);

	/* errors: the spec's codes, nothing lost */
	CHECK("free_list", c, ffa_free_list(c, list));
	report("replay_freed", c, ffa_replay(c, list, FFA_ENGINE_COMPUTE, NULL, 0, &fence));
	report("free_list_twice", c, ffa_free_list(c, list));
	cmd = gemm(h, 1.0, a_off, b_off, d_off);
	cmd.gemm.a.ld_elems = K - 1;
	report("record_lda", c, ffa_record(c, FFA_ENGINE_COMPUTE, &cmd, 1, &bad_list));
	report("export_unknown", c, ffa_export(c, 999, &fd));
	report("import_closed", c, ffa_import(c, -1, &h2, &mem2, &size2));
	rc = ffa_free(c2, h2);
	report("free_import", c2, rc);
	CHECK("free", c, ffa_free(c, h));
	ffa_close(c2);
	ffa_close(c);
	printf("done\n");
	return 0;
}
