/* SPDX-License-Identifier: MIT */
/*
 * ffaccel C client: speaks the device server's wire protocol (`ffaccel serve`).
 *
 * Buffers are memfds the server creates and passes over the socket; both sides map them,
 * so a buffer's bytes are the very memory the device computes in. Work is a submission of
 * command blocks built with the structs of ffaccel_uapi.h; every submission returns a fence
 * (engine, timeline value) to wait on. Every function returns an enum ffa_error_code
 * (FFA_ERR_OK = 0); the full error (offending parameter, spec rule, value seen and what is
 * allowed) is in ffa_last_error(). A server that dies or stops answering gives
 * FFA_ERR_DEVICE_LOST, never a hang; so does one whose reply, fd or shared page breaks the protocol
 * (the client checks every one of them and never crashes on what a server sends). A client is not thread-safe: use one per thread, or a lock.
 */
#ifndef FFACCEL_H
#define FFACCEL_H

#include "ffaccel_uapi.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ffa_client ffa_client;

/* The last error of a client (or of ffa_open, which has no client yet). */
struct ffa_error_info {
	uint32_t code;          /* enum ffa_error_code */
	uint32_t command_index; /* offending command of a submission; FFA_NO_INDEX = none */
	char param[64];         /* offending parameter (descriptor field or argument) */
	char rule[64];          /* spec rule id ("" when none) */
	char message[512];      /* value seen and what is allowed */
};

/*
 * Connect to a server. name: "unix:PATH[?transport=socket|ring][&timeout_s=S][&entries=N][&poll_us=N]",
 * or NULL for $FFACCEL_DEVICE, else the default socket ($FFACCEL_SOCKET, else
 * $XDG_RUNTIME_DIR/ffaccel/server.sock, else /tmp/ffaccel-UID/server.sock; the default socket's
 * folder must be ours with no group/other permissions). The server must run as our uid or root
 * (SO_PEERCRED). err (may be NULL) receives the reason when this fails.
 */
int ffa_open(const char *name, ffa_client **out, struct ffa_error_info *err);
void ffa_close(ffa_client *client);

/* "socket" or "ring": the path submissions take. */
const char *ffa_transport(const ffa_client *client);
const struct ffa_error_info *ffa_last_error(const ffa_client *client);
/* "INVALID_PARAMETER", ... ("UNKNOWN" for a number outside the table). */
const char *ffa_error_name(uint32_t code);

/* A new buffer of size_bytes, mapped at *data (zero-filled); the handle names it in commands. */
int ffa_alloc(ffa_client *client, uint64_t size_bytes, uint32_t *handle, void **data);
int ffa_free(ffa_client *client, uint32_t handle);

/*
 * Submit command_count commands (GEMM or COPY blocks) to engine after waits; *fence receives
 * the timeline value the submission signals. A rejected submission runs nothing.
 */
int ffa_submit(ffa_client *client, uint32_t engine, const struct ffa_wait *waits, uint32_t wait_count,
	       const union ffa_command *commands, uint32_t command_count, uint64_t *fence);
/* Wait until engine's timeline reaches value; FFA_ERR_TIMEOUT after timeout_ns. */
int ffa_wait(ffa_client *client, uint32_t engine, uint64_t value, uint64_t timeout_ns);

/* The engine's completed timeline value, as far as the server has shown it (ring: no system call). */
int ffa_completed(ffa_client *client, uint32_t engine, uint64_t *value);

/*
 * Sharing a buffer across processes (dma-buf style): ffa_export gives a new fd (the buffer's memfd;
 * close it when done) to pass to another process, e.g. over a Unix socket with SCM_RIGHTS; there a
 * client of the same server adds it to its own table with ffa_import (*data: the same memory, mapped;
 * *size_bytes: its size). The caller keeps its fd: the client holds its own duplicate.
 */
int ffa_export(ffa_client *client, uint32_t handle, int *fd);
int ffa_import(ffa_client *client, int fd, uint32_t *handle, void **data, uint64_t *size_bytes);

/* Server-wide counters (connected clients, live buffers, bytes charged, submissions accepted). */
int ffa_stats(ffa_client *client, struct ffa_stats *stats);

/*
 * Command lists (record once, replay many times): ffa_record validates command_count commands once
 * for engine and keeps them as *list_id; ffa_replay runs the list on engine after waits (the
 * latest value per engine counts) and gives the replay's fence; ffa_free_list drops the list.
 */
int ffa_record(ffa_client *client, uint32_t engine, const union ffa_command *commands, uint32_t command_count,
	       uint32_t *list_id);
int ffa_replay(ffa_client *client, uint32_t list_id, uint32_t engine, const struct ffa_wait *waits,
	       uint32_t wait_count, uint64_t *fence);
int ffa_free_list(ffa_client *client, uint32_t list_id);

/* Scalar encodings of the ABI: alpha, beta and post-op parameters travel as f64 or i64 bits. */
uint64_t ffa_f64_bits(double x);
uint64_t ffa_i64_bits(int64_t x);

/* An operand over a buffer: rows x cols, ld_elems between rows, batch_stride_elems between entries. */
struct ffa_operand ffa_matrix(uint32_t handle, uint32_t dtype, uint64_t offset_bytes, uint32_t rows, uint32_t cols,
			      uint64_t ld_elems, uint64_t batch_stride_elems);

#ifdef __cplusplus
}
#endif

#endif /* FFACCEL_H */
