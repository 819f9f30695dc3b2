/*
 * The C client's whole API against a server that may answer anything (tests/fake_server.py):
 * argv[1] connections, one after the other, to the device argv[2]; each runs open, alloc (and
 * writes every byte it mapped), stats, submit, wait, completed, record, replay, free_list, export,
 * import (writing every imported byte too), free. Prints "ITERATION STEP CODE_NAME" per step; it
 * must never crash (the test builds it under AddressSanitizer and UBSan) nor hang.
 */
#include <ffaccel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BUFFER_BYTES 65536 /* many pages: a memfd half as long faults when touched */

static void say(int it, const char *step, int rc)
{
	printf("%d %s %s\n", it, step, ffa_error_name((uint32_t)rc));
}

int main(int argc, char **argv)
{
	int n = argc > 2 ? atoi(argv[1]) : 0;
	for (int it = 0; it < n; it++) {
		ffa_client *c;
		struct ffa_error_info oe;
		struct ffa_stats st;
		uint32_t h = 0, h2 = 0, list = 0;
		void *mem = NULL, *mem2 = NULL;
		uint64_t fence = 1, done = 0, size2 = 0;
		int rc, fd = -1, have = 0;
		struct ffa_wait w = {FFA_ENGINE_COMPUTE, 0, 1};
		rc = ffa_open(argv[2], &c, &oe);
		say(it, "open", rc);
		if (rc)
			continue;
		rc = ffa_alloc(c, BUFFER_BYTES, &h, &mem);
		say(it, "alloc", rc);
		if (!rc) {
			memset(mem, 0x5a, BUFFER_BYTES); /* every byte mapped: a short memfd would fault here */
			have = 1;
		}
		say(it, "stats", ffa_stats(c, &st));
		rc = ffa_submit(c, FFA_ENGINE_COMPUTE, NULL, 0, NULL, 0, &fence);
		say(it, "submit", rc);
		say(it, "wait", ffa_wait(c, FFA_ENGINE_COMPUTE, rc ? 1 : fence, 100000000ull));
		say(it, "completed", ffa_completed(c, FFA_ENGINE_COMPUTE, &done));
		rc = ffa_record(c, FFA_ENGINE_COMPUTE, NULL, 0, &list);
		say(it, "record", rc);
		say(it, "replay", ffa_replay(c, rc ? 1 : list, FFA_ENGINE_COMPUTE, &w, 1, &fence));
		say(it, "free_list", ffa_free_list(c, rc ? 1 : list));
		if (have) {
			rc = ffa_export(c, h, &fd);
			say(it, "export", rc);
			if (!rc) {
				rc = ffa_import(c, fd, &h2, &mem2, &size2);
				say(it, "import", rc);
				close(fd);
				if (!rc) {
					memset(mem2, 0xa5, (size_t)size2);
					say(it, "free_import", ffa_free(c, h2));
				}
			}
			memset(mem, 0x3c, BUFFER_BYTES); /* again, after later requests: a memfd shrunk meanwhile would fault */
			say(it, "free", ffa_free(c, h));
		}
		ffa_close(c);
		fflush(stdout);
	}
	return 0;
}
