/* SPDX-License-Identifier: MIT */
/*
 * ffaccel C client: the socket path (one request, one reply: the ioctl model) and the ring
 * path (SQ/CQ in a shared memfd: the io_uring model). The wire messages are those of
 * ffaccel_uapi.h, documented in docs/spec.md ("Wire protocol").
 *
 * Every blocking call has a deadline: a reply is awaited in poll(2) against a CLOCK_MONOTONIC
 * deadline (timeout_s, plus the wait's own timeout for WAIT), sends carry SO_SNDTIMEO, and ring
 * waits sleep in poll(2) with a timeout and notice the socket closing, whatever the server trickles.
 *
 * Nothing the server sends is trusted (docs/spec.md, "Clients trust no reply"): a reply is read into
 * this client's memory once, its length capped by FFA_MAX_REPLY_PAYLOAD_BYTES from its header; each
 * fixed-size reply must have its struct's exact size and zero reserved fields; a memfd is mapped only
 * when fstat says it is a file at least as long as the reply says and its seals include
 * F_SEAL_SHRINK (so no mapping can fault); the ring's geometry is checked once at setup, without
 * overflow, and kept here, never read again from shared memory; the doorbell must be an eventfd and
 * is made non-blocking. Any breach makes the client lost: FFA_ERR_DEVICE_LOST, never a crash or a hang.
 */
#define _GNU_SOURCE
#include "ffaccel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT_S 30.0
#define DEFAULT_POLL_US 200
#define DEFAULT_ENTRIES 64

struct mapping {
	uint32_t handle;
	int fd;                 /* the buffer's memfd, kept for ffa_export */
	void *data;
	uint64_t size;
	struct mapping *next;
};

struct ffa_client {
	int sock;
	double timeout_s;
	uint64_t poll_ns;
	uint64_t extra_ns;      /* added to a reply's deadline: the server-side timeout of a WAIT */
	int lost;
	struct ffa_error_info err;
	struct mapping *maps;
	uint64_t completed[2];  /* per engine, as the last reply showed */
	/* submissions sent (SUBMIT, REPLAY, ring chains), counted before each goes out: the server
	 * numbers each engine's accepted submissions 1, 2, ..., so no fence value it hands out and no
	 * completed value it reports can exceed this; a reply past it is malformed, never trusted
	 * (an ffa_wait would return before the work ran). Ring chains use it as their user_data. */
	uint64_t sent;
	/* ring path (ring == NULL: socket path) */
	unsigned char *ring;
	size_t ring_bytes;
	uint32_t entries;
	uint64_t sq_off, cq_off; /* the ring's geometry, checked and copied once at setup */
	int wake_fd, doorbell_fd;
	uint32_t sq_tail, cq_head;
	unsigned char *rx;      /* the last reply: header, then payload at body */
	const unsigned char *body;
	size_t rx_cap;
};

static const char *const ERROR_NAMES[] = {
	"OK", "INVALID_PARAMETER", "BAD_HANDLE", "OUT_OF_BOUNDS", "OVERLAP", "UNSUPPORTED",
	"OUT_OF_MEMORY", "TIMEOUT", "DEVICE_LOST", "ABI_VERSION_MISMATCH",
};

const char *ffa_error_name(uint32_t code)
{
	return code < sizeof(ERROR_NAMES) / sizeof(ERROR_NAMES[0]) ? ERROR_NAMES[code] : "UNKNOWN";
}

static int set_error(struct ffa_error_info *e, uint32_t code, const char *param, const char *fmt, ...)
{
	va_list ap;
	if (!e)
		return (int)code;
	e->code = code;
	e->command_index = FFA_NO_INDEX;
	snprintf(e->param, sizeof(e->param), "%s", param);
	e->rule[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
	return (int)code;
}

/* The connection is unusable from here on: every later call answers DEVICE_LOST at once. */
static int lose(ffa_client *c, const char *why)
{
	c->lost = 1;
	return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device",
			 "the device server is gone or not answering: %s", why);
}

/* The server broke the protocol: lost, saying how. */
static int malformed(ffa_client *c, const char *fmt, ...)
{
	char why[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	c->lost = 1;
	return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device", "malformed reply: %s", why);
}

static int known_code(uint32_t code)
{
	return code > 0 && code < sizeof(ERROR_NAMES) / sizeof(ERROR_NAMES[0]);
}

/*
 * Why a memfd from the server cannot be mapped at size bytes without risk (NULL: it can). A mapping
 * past the file's end, or of a file the server can shrink later, faults (SIGBUS) when touched.
 */
static const char *memfd_problem(int fd, uint64_t size)
{
	struct stat st;
	int seals;
	if (fstat(fd, &st) != 0)
		return "an fd that cannot be inspected";
	if (!S_ISREG(st.st_mode))
		return "not a memfd";
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return "not a memfd (no seals)";
	if (!(seals & F_SEAL_SHRINK))
		return "a memfd without F_SEAL_SHRINK (it could shrink under the mapping)";
	if ((uint64_t)st.st_size < size)
		return "a memfd shorter than the reply says";
	return NULL;
}

/* Whether fd is an eventfd (as /proc/self/fd names it). */
static int is_eventfd(int fd)
{
	char link[64], kind[64];
	ssize_t n;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, kind, sizeof(kind) - 1);
	if (n < 0)
		return 0;
	kind[n] = '\0';
	return strcmp(kind, "anon_inode:[eventfd]") == 0;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ffa_f64_bits(double x)
{
	uint64_t u;
	memcpy(&u, &x, sizeof(u));
	return u;
}

uint64_t ffa_i64_bits(int64_t x)
{
	return (uint64_t)x;
}

struct ffa_operand ffa_matrix(uint32_t handle, uint32_t dtype, uint64_t offset_bytes, uint32_t rows, uint32_t cols,
			      uint64_t ld_elems, uint64_t batch_stride_elems)
{
	struct ffa_operand m;
	memset(&m, 0, sizeof(m));
	m.handle = handle;
	m.dtype = dtype;
	m.offset_bytes = offset_bytes;
	m.rows = rows;
	m.cols = cols;
	m.ld_elems = ld_elems;
	m.batch_stride_elems = batch_stride_elems;
	return m;
}

/* ---------------------------------------------------------------------------------------- */
/* device names and the default socket                                                        */

/* Value of "key=" in a "?a=1&b=2" query, copied into out; 0 when absent. */
static int query_value(const char *query, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	const char *p = query;
	while (p && *p) {
		if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
			const char *v = p + klen + 1;
			size_t n = strcspn(v, "&");
			if (n >= cap)
				n = cap - 1;
			memcpy(out, v, n);
			out[n] = '\0';
			return 1;
		}
		p = strchr(p, '&');
		if (p)
			p++;
	}
	return 0;
}

/* The default socket's folder must be ours, a real directory, and closed to group and others. */
static int check_folder(const char *path, struct ffa_error_info *err)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat st;
	char *slash;
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash)
		return FFA_ERR_OK;
	*slash = '\0';
	if (lstat(dir[0] ? dir : "/", &st) != 0)
		return set_error(err, FFA_ERR_DEVICE_LOST, "device", "no server: cannot stat the socket folder %s (%s)",
				 dir, strerror(errno));
	if (!S_ISDIR(st.st_mode) || st.st_uid != getuid() || (st.st_mode & 077))
		return set_error(err, FFA_ERR_DEVICE_LOST, "device",
				 "refusing the socket folder %s: owner uid %u, mode %03o; allowed: a directory "
				 "owned by uid %u with no group or other permissions",
				 dir, (unsigned)st.st_uid, (unsigned)(st.st_mode & 0777), (unsigned)getuid());
	return FFA_ERR_OK;
}

/* The socket in the private default folder: $XDG_RUNTIME_DIR/ffaccel/server.sock, else /tmp/ffaccel-UID/... */
static int private_socket(char *out, size_t cap)
{
	const char *run = getenv("XDG_RUNTIME_DIR");
	int n = run && *run ? snprintf(out, cap, "%s/ffaccel/server.sock", run)
			    : snprintf(out, cap, "/tmp/ffaccel-%u/server.sock", (unsigned)getuid());
	return n >= 0 && (size_t)n < cap;
}

/* $FFACCEL_SOCKET, else the private folder's socket. */
static int default_socket(char *out, size_t cap, struct ffa_error_info *err)
{
	const char *env = getenv("FFACCEL_SOCKET");
	int n = env && *env ? snprintf(out, cap, "%s", env) : (private_socket(out, cap) ? 0 : -1);
	if (n < 0 || (size_t)n >= cap)
		return set_error(err, FFA_ERR_INVALID_PARAMETER, "device", "default socket path too long; allowed: at "
				 "most %zu bytes", cap - 1);
	return FFA_ERR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* framing                                                                                    */

/* Sends block at most this long each (requests are small: a full socket buffer means a stuck server). */
static void set_send_timeout(int sock, double seconds)
{
	struct timeval tv;
	tv.tv_sec = (time_t)seconds;
	tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
	setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

/* Send a whole request; each sendmsg blocks at most SO_SNDTIMEO, and the whole send ends by deadline. */
static int send_all(ffa_client *c, const void *head, size_t head_len, const void *body, size_t body_len,
		    const int *fds, int nfds, uint64_t deadline)
{
	struct iovec iov[2];
	struct msghdr mh;
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * FFA_MAX_FDS)];
	} ctl;
	size_t total = head_len + body_len, sent = 0;
	memset(&mh, 0, sizeof(mh));
	while (sent < total) {
		ssize_t r;
		int niov = 0;
		if (sent < head_len) {
			iov[niov].iov_base = (char *)head + sent;
			iov[niov++].iov_len = head_len - sent;
		}
		if (body_len) {
			size_t skip = sent > head_len ? sent - head_len : 0;
			iov[niov].iov_base = (char *)body + skip;
			iov[niov++].iov_len = body_len - skip;
		}
		mh.msg_iov = iov;
		mh.msg_iovlen = niov;
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		if (nfds && sent == 0) { /* fds ride on the message's first bytes */
			struct cmsghdr *cm;
			memset(&ctl, 0, sizeof(ctl));
			mh.msg_control = ctl.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
			cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
			memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
		}
		r = sendmsg(c->sock, &mh, MSG_NOSIGNAL);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return lose(c, errno == EAGAIN ? "timed out sending a request" : strerror(errno));
		}
		sent += (size_t)r;
		if (sent < total && now_ns() >= deadline) /* a server reading a byte at a time is held to it too */
			return lose(c, "timed out sending a request");
	}
	return FFA_ERR_OK;
}

/*
 * Read at least min and at most cap bytes (*got: how many); fds passed along are appended to
 * fds (closed when over max_fds). Only one request is ever outstanding, so whatever arrives
 * belongs to its reply: one read usually takes all of it.
 */
static int recv_some(ffa_client *c, void *buf, size_t min, size_t cap, size_t *got_out, int *fds, int *nfds,
		     int max_fds, int spin, uint64_t deadline)
{
	size_t got = 0;
	uint64_t spin_end = spin ? now_ns() + c->poll_ns : 0;
	while (got < min) {
		struct iovec iov;
		struct msghdr mh;
		union {
			struct cmsghdr h;
			char buf[CMSG_SPACE(sizeof(int) * FFA_MAX_FDS)];
		} ctl;
		ssize_t r;
		int flags = MSG_CMSG_CLOEXEC | MSG_DONTWAIT;
		iov.iov_base = (char *)buf + got;
		iov.iov_len = cap - got;
		memset(&mh, 0, sizeof(mh));
		mh.msg_iov = &iov;
		mh.msg_iovlen = 1;
		mh.msg_control = ctl.buf;
		mh.msg_controllen = sizeof(ctl.buf);
		r = recvmsg(c->sock, &mh, flags);
		if (r < 0) {
			uint64_t t;
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return lose(c, strerror(errno));
			t = now_ns();
			if (t < spin_end) {
				/* busy-poll briefly first: a small reply comes within tens of microseconds,
				 * about what waking a sleeping process costs; yield, as in ring_submit */
				sched_yield();
				continue;
			}
			if (t >= deadline)
				return lose(c, "timed out waiting for a reply");
			{
				/* sleep until readable or the deadline (CLOCK_MONOTONIC, whatever the server trickles) */
				struct pollfd pf = {c->sock, POLLIN, 0};
				uint64_t left_ms = (deadline - t) / 1000000u + 1;
				poll(&pf, 1, left_ms > 60000 ? 60000 : (int)left_ms);
			}
			continue;
		}
		if (r == 0)
			return lose(c, "the server closed the connection");
		if (mh.msg_flags & MSG_CTRUNC) { /* more fds than any reply carries: the kernel closed the rest */
			for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
				if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
					for (size_t i = 0; i < (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int); i++) {
						int fd;
						memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(fd));
						close(fd);
					}
			return malformed(c, "more than %d file descriptors with a reply", FFA_MAX_FDS);
		}
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
				int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
				int tmp[FFA_MAX_FDS * 4];
				if (n > (int)(sizeof(tmp) / sizeof(tmp[0])))
					n = (int)(sizeof(tmp) / sizeof(tmp[0]));
				memcpy(tmp, CMSG_DATA(cm), sizeof(int) * n);
				for (int i = 0; i < n; i++) {
					if (fds && *nfds < max_fds)
						fds[(*nfds)++] = tmp[i];
					else
						close(tmp[i]);
				}
			}
		}
		got += (size_t)r;
		if (got < min && now_ns() >= deadline) /* a server trickling bytes is held to the deadline too */
			return lose(c, "timed out reading a reply");
	}
	*got_out = got;
	return FFA_ERR_OK;
}

/* An error reply's record into c->err; the code the call returns (DEVICE_LOST for a malformed record). */
static int decode_error(ffa_client *c, uint32_t status, const unsigned char *p, uint64_t len)
{
	struct ffa_error rec;
	struct ffa_error_info *e = &c->err;
	memset(e, 0, sizeof(*e));
	e->code = status;
	e->command_index = FFA_NO_INDEX;
	if (len >= sizeof(rec))
		memcpy(&rec, p, sizeof(rec));
	if (len < sizeof(rec) || (uint64_t)rec.param_bytes + rec.rule_bytes + rec.message_bytes != len - sizeof(rec)) {
		/* as the Python client does: the error cannot be told, so the device is what failed */
		e->code = FFA_ERR_DEVICE_LOST;
		snprintf(e->param, sizeof(e->param), "device");
		snprintf(e->message, sizeof(e->message), "the server sent a malformed error reply (%u)", status);
		return FFA_ERR_DEVICE_LOST;
	}
	e->command_index = rec.command_index;
	p += sizeof(rec);
	snprintf(e->param, sizeof(e->param), "%.*s", (int)rec.param_bytes, (const char *)p);
	p += rec.param_bytes;
	snprintf(e->rule, sizeof(e->rule), "%.*s", (int)rec.rule_bytes, (const char *)p);
	p += rec.rule_bytes;
	snprintf(e->message, sizeof(e->message), "%.*s", (int)rec.message_bytes, (const char *)p);
	return (int)status;
}

/*
 * One request and its reply. The reply's payload is left at c->body (*body_len bytes);
 * want_fds file descriptors are expected with it (any other number: the device is lost).
 */
static int call(ffa_client *c, uint32_t type, const void *payload, size_t len, const int *fds, int nfds,
		uint64_t *body_len, int *got_fds, int want_fds)
{
	struct ffa_msg msg;
	struct ffa_reply rep;
	size_t got, total;
	uint64_t deadline;
	int nfd = 0, rc, all_fds[FFA_MAX_FDS * 4]; /* every fd that came, to count them (at most 2 per read) */
	const int max_fds = (int)(sizeof(all_fds) / sizeof(all_fds[0]));
	if (c->lost)
		return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device", "%s", c->err.message);
	memset(&msg, 0, sizeof(msg));
	msg.msg_type = type;
	msg.payload_bytes = len;
	deadline = now_ns() + (uint64_t)(c->timeout_s * 1e9) + c->extra_ns;
	rc = send_all(c, &msg, sizeof(msg), payload, len, fds, nfds, deadline);
	if (rc)
		return rc;
	rc = recv_some(c, c->rx, sizeof(rep), c->rx_cap, &got, all_fds, &nfd, max_fds, 1, deadline);
	if (rc)
		goto fail;
	memcpy(&rep, c->rx, sizeof(rep));
	if (rep.payload_bytes > FFA_MAX_REPLY_PAYLOAD_BYTES || got > sizeof(rep) + rep.payload_bytes) {
		rc = malformed(c, "a reply of %llu bytes (%zu read); allowed: at most %u, and no more than announced",
			       (unsigned long long)rep.payload_bytes, got, FFA_MAX_REPLY_PAYLOAD_BYTES);
		goto fail;
	}
	total = sizeof(rep) + (size_t)rep.payload_bytes;
	if (total > c->rx_cap) {
		unsigned char *nb = realloc(c->rx, total);
		if (!nb) {
			rc = lose(c, "no memory for a reply");
			goto fail;
		}
		c->rx = nb;
		c->rx_cap = total;
	}
	if (got < total) {
		size_t more;
		rc = recv_some(c, c->rx + got, total - got, total - got, &more, all_fds, &nfd, max_fds, 0, deadline);
		if (rc)
			goto fail;
	}
	c->body = c->rx + sizeof(rep);
	if (rep.status) {
		if (!known_code(rep.status)) {
			rc = malformed(c, "status %u is no error code", rep.status);
			goto fail;
		}
		rc = decode_error(c, rep.status, c->body, rep.payload_bytes);
		goto fail;
	}
	if (want_fds && nfd != want_fds) {
		rc = malformed(c, "%d file descriptors; allowed: %d", nfd, want_fds);
		goto fail;
	}
	if (!want_fds) /* fds sent with a reply that carries none are closed and ignored, as the kernel does for a recv() */
		for (int i = 0; i < nfd; i++)
			close(all_fds[i]);
	else
		memcpy(got_fds, all_fds, sizeof(int) * (size_t)nfd);
	if (body_len)
		*body_len = rep.payload_bytes;
	return FFA_ERR_OK;
fail:
	for (int i = 0; i < nfd; i++)
		close(all_fds[i]);
	return rc;
}

/* A fence reply: its completed values noted, its value in *value; accepted: the reply to a SUBMIT
 * or REPLAY, whose value is the new fence (at least 1, at most the submissions sent). */
static int fence_reply(ffa_client *c, uint64_t len, uint64_t *value, int accepted)
{
	struct ffa_fence_reply f;
	if (len != sizeof(f))
		return malformed(c, "a fence reply of %llu bytes; allowed: %zu", (unsigned long long)len, sizeof(f));
	memcpy(&f, c->body, sizeof(f));
	if (f.engine > FFA_ENGINE_COPY || f.reserved)
		return malformed(c, "a fence reply with engine %u, reserved %u", f.engine, f.reserved);
	if (f.completed_compute > c->sent || f.completed_copy > c->sent || (accepted && (!f.value || f.value > c->sent)))
		return malformed(c, "a fence reply with value %llu, completed %llu (compute) and %llu (copy); allowed: "
				 "at most the %llu submissions sent%s", (unsigned long long)f.value,
				 (unsigned long long)f.completed_compute, (unsigned long long)f.completed_copy,
				 (unsigned long long)c->sent, accepted ? ", a new fence at least 1" : "");
	if (f.completed_compute > c->completed[0])
		c->completed[0] = f.completed_compute;
	if (f.completed_copy > c->completed[1])
		c->completed[1] = f.completed_copy;
	if (value)
		*value = f.value;
	return FFA_ERR_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* connection                                                                                 */

static int ring_setup(ffa_client *c, uint32_t entries);

int ffa_open(const char *name, ffa_client **out, struct ffa_error_info *err)
{
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char val[64];
	const char *query = NULL;
	struct sockaddr_un sa;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct ffa_hello hello;
	ffa_client *c;
	int ring = 0, rc;
	uint32_t entries = DEFAULT_ENTRIES;
	double timeout_s = DEFAULT_TIMEOUT_S;
	long poll_us = DEFAULT_POLL_US;

	*out = NULL;
	if (!name || !*name)
		name = getenv("FFACCEL_DEVICE");
	if (!name || !*name) {
		rc = default_socket(path, sizeof(path), err);
		if (rc)
			return rc;
	} else {
		size_t plen;
		if (strncmp(name, "unix:", 5) != 0)
			return set_error(err, FFA_ERR_INVALID_PARAMETER, "device",
					 "device name %s: the C client reaches a device through its server: "
					 "unix:PATH[?transport=socket|ring&timeout_s=S&entries=N&poll_us=N]",
					 name);
		name += 5;
		query = strchr(name, '?');
		plen = query ? (size_t)(query - name) : strlen(name);
		if (plen == 0 || plen >= sizeof(path))
			return set_error(err, FFA_ERR_INVALID_PARAMETER, "device",
					 "socket path of %zu bytes; allowed: 1 to %zu", plen, sizeof(path) - 1);
		memcpy(path, name, plen);
		path[plen] = '\0';
		if (query)
			query++;
	}
	if (query) {
		if (query_value(query, "transport", val, sizeof(val))) {
			if (strcmp(val, "ring") == 0)
				ring = 1;
			else if (strcmp(val, "socket") != 0)
				return set_error(err, FFA_ERR_INVALID_PARAMETER, "device", "transport=%s; allowed: socket, ring",
						 val);
		}
		if (query_value(query, "timeout_s", val, sizeof(val))) {
			char *end;
			timeout_s = strtod(val, &end);
			if (*end || !(timeout_s > 0 && timeout_s <= 86400))
				return set_error(err, FFA_ERR_INVALID_PARAMETER, "device",
						 "timeout_s=%s; allowed: a number of seconds in (0, 86400]", val);
		}
		if (query_value(query, "entries", val, sizeof(val))) {
			char *end;
			unsigned long e = strtoul(val, &end, 10);
			if (*end || e < 2 || e > 4096 || (e & (e - 1)))
				return set_error(err, FFA_ERR_INVALID_PARAMETER, "device",
						 "entries=%s; allowed: a power of two in [2, 4096]", val);
			entries = (uint32_t)e;
		}
		if (query_value(query, "poll_us", val, sizeof(val))) {
			char *end;
			poll_us = strtol(val, &end, 10);
			if (*end || poll_us < 0 || poll_us > 1000000)
				return set_error(err, FFA_ERR_INVALID_PARAMETER, "device",
						 "poll_us=%s; allowed: an integer in [0, 1000000]", val);
		}
	}

	{
		/* the private folder is checked whichever way its socket was named (as the Python client does) */
		char priv[sizeof(path)];
		if (private_socket(priv, sizeof(priv)) && strcmp(priv, path) == 0 && (rc = check_folder(path, err)) != 0)
			return rc;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return set_error(err, FFA_ERR_OUT_OF_MEMORY, "device", "no memory for a client");
	c->wake_fd = c->doorbell_fd = -1;
	c->rx_cap = 4096; /* every fixed-size reply and a typical error record in one read */
	c->rx = malloc(c->rx_cap);
	if (!c->rx) {
		free(c);
		return set_error(err, FFA_ERR_OUT_OF_MEMORY, "device", "no memory for a client");
	}
	c->timeout_s = timeout_s;
	c->poll_ns = (uint64_t)poll_us * 1000u;
	c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->sock < 0) {
		rc = set_error(err, FFA_ERR_DEVICE_LOST, "device", "socket(): %s", strerror(errno));
		free(c);
		return rc;
	}
	set_send_timeout(c->sock, timeout_s);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	if (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		rc = set_error(err, FFA_ERR_DEVICE_LOST, "device", "no server answers at %s (%s)", path,
			       strerror(errno));
		goto fail;
	}
	/* the server must be us or root: anyone else could be impersonating the device */
	if (getsockopt(c->sock, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 ||
	    (cred.uid != getuid() && cred.uid != 0)) {
		rc = set_error(err, FFA_ERR_DEVICE_LOST, "device",
			       "refusing the server at %s: it runs as uid %u; allowed: uid %u or 0", path,
			       (unsigned)cred.uid, (unsigned)getuid());
		goto fail;
	}
	hello.wire_version = FFA_WIRE_VERSION;
	hello.abi_version = FFA_ABI_VERSION;
	/* the reply's payload (the driver's description) is not needed here: only its status */
	rc = call(c, FFA_MSG_HELLO, &hello, sizeof(hello), NULL, 0, NULL, NULL, 0);
	if (!rc && ring)
		rc = ring_setup(c, entries);
	if (rc) {
		if (err)
			*err = c->err;
		goto fail;
	}
	*out = c;
	return FFA_ERR_OK;
fail:
	ffa_close(c);
	return rc;
}

void ffa_close(ffa_client *c)
{
	struct mapping *m, *next;
	if (!c)
		return;
	if (c->sock >= 0)
		close(c->sock);
	for (m = c->maps; m; m = next) {
		next = m->next;
		munmap(m->data, m->size);
		close(m->fd);
		free(m);
	}
	if (c->ring)
		munmap(c->ring, c->ring_bytes);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	if (c->doorbell_fd >= 0)
		close(c->doorbell_fd);
	free(c->rx);
	free(c);
}

const char *ffa_transport(const ffa_client *c)
{
	return c->ring ? "ring" : "socket";
}

const struct ffa_error_info *ffa_last_error(const ffa_client *c)
{
	return &c->err;
}

/* ---------------------------------------------------------------------------------------- */
/* memory                                                                                     */

static struct mapping *find_mapping(ffa_client *c, uint32_t handle)
{
	for (struct mapping *m = c->maps; m; m = m->next)
		if (m->handle == handle)
			return m;
	return NULL;
}

/*
 * Map the buffer a handle reply names (ALLOC: want_size is the size asked; IMPORT: 0, any size the
 * fd holds). fd is ours: kept with the mapping, or closed here on failure.
 */
static int map_reply(ffa_client *c, uint64_t len, int fd, uint64_t want_size, uint32_t *handle, void **data,
		     uint64_t *size)
{
	struct ffa_handle_reply hr;
	struct mapping *m;
	const char *why;
	void *p;
	if (len != sizeof(hr)) {
		close(fd);
		return malformed(c, "a handle reply of %llu bytes; allowed: %zu", (unsigned long long)len, sizeof(hr));
	}
	memcpy(&hr, c->body, sizeof(hr));
	why = hr.reserved ? "a nonzero reserved field"
	      : want_size && hr.size_bytes != want_size ? "another size than asked"
	      : !hr.size_bytes || hr.size_bytes > SIZE_MAX ? "a size that cannot be mapped"
	      : find_mapping(c, hr.handle) ? "a handle this client holds already"
	      : memfd_problem(fd, hr.size_bytes);
	if (why) {
		close(fd);
		return malformed(c, "buffer %u of %llu bytes: %s", hr.handle, (unsigned long long)hr.size_bytes, why);
	}
	m = malloc(sizeof(*m));
	p = m ? mmap(NULL, (size_t)hr.size_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
	if (p == MAP_FAILED) {
		uint32_t fr[2] = {hr.handle, 0};
		int e = m ? errno : ENOMEM;
		free(m);
		close(fd);
		call(c, FFA_MSG_FREE, fr, sizeof(fr), NULL, 0, NULL, NULL, 0);
		return set_error(&c->err, FFA_ERR_OUT_OF_MEMORY, "size_bytes", "cannot map %llu bytes (%s)",
				 (unsigned long long)hr.size_bytes, strerror(e));
	}
	m->handle = hr.handle;
	m->fd = fd;
	m->data = p;
	m->size = hr.size_bytes;
	m->next = c->maps;
	c->maps = m;
	*handle = hr.handle;
	*data = p;
	if (size)
		*size = hr.size_bytes;
	return FFA_ERR_OK;
}

int ffa_alloc(ffa_client *c, uint64_t size_bytes, uint32_t *handle, void **data)
{
	uint64_t len;
	int fd, rc;
	rc = call(c, FFA_MSG_ALLOC, &size_bytes, sizeof(size_bytes), NULL, 0, &len, &fd, 1);
	if (rc)
		return rc;
	return map_reply(c, len, fd, size_bytes ? size_bytes : 1, handle, data, NULL);
}

static int empty_reply(ffa_client *c, uint64_t len, const char *what)
{
	return len ? malformed(c, "%llu bytes in the reply to %s; allowed: none", (unsigned long long)len, what)
		   : FFA_ERR_OK;
}

int ffa_free(ffa_client *c, uint32_t handle)
{
	uint32_t fr[2] = {handle, 0};
	struct mapping **pm;
	uint64_t len;
	int rc = call(c, FFA_MSG_FREE, fr, sizeof(fr), NULL, 0, &len, NULL, 0);
	if (!rc)
		rc = empty_reply(c, len, "FREE");
	if (rc)
		return rc;
	for (pm = &c->maps; *pm; pm = &(*pm)->next) {
		if ((*pm)->handle == handle) {
			struct mapping *m = *pm;
			*pm = m->next;
			munmap(m->data, m->size);
			close(m->fd);
			free(m);
			break;
		}
	}
	return FFA_ERR_OK;
}

int ffa_export(ffa_client *c, uint32_t handle, int *fd)
{
	struct mapping *m = find_mapping(c, handle);
	if (!m)
		return set_error(&c->err, FFA_ERR_BAD_HANDLE, "handle",
				 "handle %u; allowed: a buffer this client allocated or imported", handle);
	*fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 0);
	if (*fd < 0)
		return set_error(&c->err, FFA_ERR_OUT_OF_MEMORY, "fd", "cannot duplicate the buffer's fd (%s)",
				 strerror(errno));
	return FFA_ERR_OK;
}

int ffa_import(ffa_client *c, int fd, uint32_t *handle, void **data, uint64_t *size_bytes)
{
	uint64_t len;
	int own, rc;
	if (fd < 0 || fcntl(fd, F_GETFD) < 0)
		return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, "fd", "fd %d; allowed: an open file descriptor "
				 "(a buffer exported by a client of the same server)", fd);
	rc = call(c, FFA_MSG_IMPORT, NULL, 0, &fd, 1, &len, NULL, 0);
	if (rc)
		return rc;
	own = fcntl(fd, F_DUPFD_CLOEXEC, 0); /* ours, whatever the caller does with fd later */
	if (own < 0)
		return set_error(&c->err, FFA_ERR_OUT_OF_MEMORY, "fd", "cannot duplicate fd %d (%s)", fd, strerror(errno));
	return map_reply(c, len, own, 0, handle, data, size_bytes);
}

/* ---------------------------------------------------------------------------------------- */
/* the ring path                                                                              */

static struct ffa_ring_header *ring_header(ffa_client *c)
{
	return (struct ffa_ring_header *)c->ring;
}

static int ring_setup(ffa_client *c, uint32_t entries)
{
	struct ffa_ring_setup rs = {entries, 0};
	struct ffa_ring_header *h;
	struct stat st;
	int fds[2], rc;
	c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (c->wake_fd < 0)
		return set_error(&c->err, FFA_ERR_OUT_OF_MEMORY, "device", "eventfd(): %s", strerror(errno));
	struct ffa_ring_header hc;
	const char *why;
	uint64_t len, sq_bytes = (uint64_t)entries * FFA_SQE_BYTES, cq_bytes = (uint64_t)entries * sizeof(struct ffa_cqe);
	rc = call(c, FFA_MSG_RING_SETUP, &rs, sizeof(rs), &c->wake_fd, 1, &len, fds, 2);
	if (rc)
		return rc;
	c->doorbell_fd = fds[1]; /* closed by ffa_close, whatever happens next */
	if ((rc = empty_reply(c, len, "RING_SETUP")) != 0) {
		close(fds[0]);
		return rc;
	}
	why = !is_eventfd(fds[1]) ? "the doorbell is no eventfd"
	      : fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) != 0 ? "the doorbell cannot be non-blocking"
	      : memfd_problem(fds[0], FFA_RING_HEADER_BYTES);
	if (why || fstat(fds[0], &st) != 0 || (uint64_t)st.st_size > SIZE_MAX) {
		close(fds[0]);
		return malformed(c, "the ring: %s", why ? why : "an fd that cannot be inspected");
	}
	c->ring_bytes = (size_t)st.st_size;
	c->ring = mmap(NULL, c->ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	close(fds[0]);
	if (c->ring == MAP_FAILED) {
		c->ring = NULL;
		return malformed(c, "the ring cannot be mapped (%s)", strerror(errno));
	}
	h = ring_header(c);
	/*
	 * The geometry comes from the server: one copy of it, checked here with comparisons that cannot
	 * overflow (each end is compared against what is left of the memfd), then kept in the client.
	 */
	memcpy(&hc, h, sizeof(hc));
	if (hc.entries != entries || hc.sq_offset_bytes < FFA_RING_HEADER_BYTES || hc.sq_offset_bytes > c->ring_bytes ||
	    sq_bytes > c->ring_bytes - hc.sq_offset_bytes || hc.cq_offset_bytes < hc.sq_offset_bytes + sq_bytes ||
	    hc.cq_offset_bytes > c->ring_bytes || cq_bytes > c->ring_bytes - hc.cq_offset_bytes)
		return malformed(c, "ring geometry entries=%u sq_offset_bytes=%llu cq_offset_bytes=%llu in %zu bytes; "
				 "allowed: %u entries, the header, SQ and CQ in order inside the memfd",
				 hc.entries, (unsigned long long)hc.sq_offset_bytes,
				 (unsigned long long)hc.cq_offset_bytes, c->ring_bytes, entries);
	c->sq_off = hc.sq_offset_bytes;
	c->cq_off = hc.cq_offset_bytes;
	c->entries = entries;
	c->sq_tail = __atomic_load_n(&h->sq_tail, __ATOMIC_ACQUIRE);
	c->cq_head = __atomic_load_n(&h->cq_head, __ATOMIC_ACQUIRE);
	return FFA_ERR_OK;
}

/* The full text of a refused ring submission or a broken ring comes once, over the socket. */
static int ring_error(ffa_client *c, uint32_t status, uint64_t error_id)
{
	uint64_t len;
	int rc;
	if (!known_code(status))
		return malformed(c, "a ring status %u that is no error code", status);
	rc = call(c, FFA_MSG_ERROR_TEXT, &error_id, sizeof(error_id), NULL, 0, &len, NULL, 0);
	if (rc)
		return rc;
	return decode_error(c, status, c->body, len);
}

static int ring_check(ffa_client *c)
{
	struct ffa_ring_header *h = ring_header(c);
	if (__atomic_load_n(&h->server_flags, __ATOMIC_ACQUIRE) & FFA_RING_SERVER_BROKEN) {
		uint32_t code = __atomic_load_n(&h->error, __ATOMIC_ACQUIRE);
		int rc;
		if (!known_code(code))
			return malformed(c, "a broken ring with error %u, which is no error code", code);
		rc = ring_error(c, code, __atomic_load_n(&h->error_id, __ATOMIC_ACQUIRE));
		c->lost = 1;
		return rc;
	}
	return FFA_ERR_OK;
}

/* Sleep in FUTEX_WAIT on cq_tail while it holds `unless`, at most 50 ms; the server wakes the
 * futex from the thread that published the completion (no eventfd, no waker thread). An empty nap
 * looks whether the server closed the socket. */
static int ring_sleep_futex(ffa_client *c, const uint32_t *word, uint32_t unless, uint64_t deadline)
{
	struct ffa_ring_header *h = ring_header(c);
	uint64_t left = deadline > now_ns() ? deadline - now_ns() : 0;
	struct timespec ts;
	long r;
	if (left > 50000000u)
		left = 50000000u;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)left;
	__atomic_or_fetch(&h->client_flags, FFA_RING_CLIENT_FUTEX_WAITING, __ATOMIC_SEQ_CST);
	r = syscall(SYS_futex, word, FUTEX_WAIT, unless, &ts, NULL, 0);
	__atomic_and_fetch(&h->client_flags, ~(uint32_t)FFA_RING_CLIENT_FUTEX_WAITING, __ATOMIC_SEQ_CST);
	if (r < 0 && errno == ETIMEDOUT) {
		struct pollfd pf = {c->sock, POLLIN, 0};
		if (poll(&pf, 1, 0) > 0)
			return lose(c, "the server closed the connection");
	}
	return FFA_ERR_OK;
}

/* Sleep on our eventfd (or the socket: it turns readable when the server dies) until woken or 50 ms pass;
 * waiting for a completion from a server that wakes futexes, on the futex of cq_tail instead. */
static int ring_sleep(ffa_client *c, const uint32_t *word, uint32_t unless, uint64_t deadline)
{
	struct ffa_ring_header *h = ring_header(c);
	struct pollfd pf[2] = {{c->wake_fd, POLLIN, 0}, {c->sock, POLLIN, 0}};
	uint64_t left, n;
	int ms;
	if (word == &h->cq_tail && (__atomic_load_n(&h->server_flags, __ATOMIC_ACQUIRE) & FFA_RING_SERVER_FUTEX_WAKES))
		return ring_sleep_futex(c, word, unless, deadline);
	__atomic_or_fetch(&h->client_flags, FFA_RING_CLIENT_WAITING, __ATOMIC_SEQ_CST);
	/* look once more after WAITING is set: the server signals only clients it sees waiting */
	if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != unless)
		goto out;
	left = deadline > now_ns() ? deadline - now_ns() : 0;
	ms = left > 50000000u ? 50 : (int)(left / 1000000u) + 1;
	if (poll(pf, 2, ms) > 0) {
		if (pf[1].revents) {
			__atomic_and_fetch(&h->client_flags, ~(uint32_t)FFA_RING_CLIENT_WAITING, __ATOMIC_SEQ_CST);
			return lose(c, "the server closed the connection");
		}
		if (read(c->wake_fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
			return lose(c, "reading the wake eventfd failed");
	}
out:
	__atomic_and_fetch(&h->client_flags, ~(uint32_t)FFA_RING_CLIENT_WAITING, __ATOMIC_SEQ_CST);
	return FFA_ERR_OK;
}

/* One chain of count commands (count 0: an empty submission), or a replay of list_id (count ignored). */
static int ring_submit(ffa_client *c, uint32_t engine, uint64_t wc, uint64_t wp, const union ffa_command *cmds,
		       uint32_t count, uint32_t list_id, uint64_t *fence)
{
	struct ffa_ring_header *h = ring_header(c);
	uint32_t slots = count && !list_id ? count : 1, mask = c->entries - 1;
	uint64_t start = now_ns(), deadline = start + (uint64_t)(c->timeout_s * 1e9), seq = ++c->sent;
	unsigned char *sq = c->ring + c->sq_off;
	int rc = ring_check(c);
	if (rc)
		return rc;
	/* room for the whole chain: the server consumes while its CQ has room, and we reap everything */
	while (c->sq_tail - __atomic_load_n(&h->sq_head, __ATOMIC_ACQUIRE) + slots > c->entries) {
		if (now_ns() > deadline)
			return lose(c, "the ring's submission queue stayed full");
		rc = ring_check(c);
		if (!rc)
			rc = ring_sleep(c, &h->sq_head, __atomic_load_n(&h->sq_head, __ATOMIC_ACQUIRE), deadline);
		if (rc)
			return rc;
	}
	for (uint32_t i = 0; i < slots; i++) {
		unsigned char *slot = sq + (size_t)((c->sq_tail + i) & mask) * FFA_SQE_BYTES;
		struct ffa_sqe e;
		memset(&e, 0, sizeof(e));
		e.user_data = i == slots - 1 ? seq : 0; /* the chain's completion carries its last entry's */
		e.engine = engine;
		e.flags = list_id ? FFA_SQE_REPLAY : count == 0 ? FFA_SQE_EMPTY : (i + 1 < slots ? FFA_SQE_LINK : 0);
		e.wait_compute_value = wc;
		e.wait_copy_value = wp;
		e.list_id = list_id;
		memcpy(slot, &e, sizeof(e));
		if (count && !list_id)
			memcpy(slot + sizeof(e), &cmds[i], FFA_COMMAND_BYTES);
		else
			memset(slot + sizeof(e), 0, FFA_COMMAND_BYTES);
	}
	c->sq_tail += slots;
	__atomic_store_n(&h->sq_tail, c->sq_tail, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&h->server_flags, __ATOMIC_SEQ_CST) & FFA_RING_SERVER_SLEEPING) {
		uint64_t one = 1;
		if (write(c->doorbell_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
			return lose(c, "ringing the doorbell failed");
	}
	/* reap: busy-poll poll_us per entry (the server answers a chain once), then sleep */
	for (;;) {
		if (__atomic_load_n(&h->cq_tail, __ATOMIC_ACQUIRE) != c->cq_head) {
			struct ffa_cqe q;
			memcpy(&q, c->ring + c->cq_off + (size_t)(c->cq_head & mask) * sizeof(q), sizeof(q));
			c->cq_head++;
			__atomic_store_n(&h->cq_head, c->cq_head, __ATOMIC_RELEASE);
			if (q.user_data != seq)
				return malformed(c, "a completion for submission %llu; expected %llu",
						 (unsigned long long)q.user_data, (unsigned long long)seq);
			if (q.engine > FFA_ENGINE_COPY)
				return malformed(c, "a completion on engine %u", q.engine);
			if (q.status) {
				rc = ring_error(c, q.status, q.error_id);
				return rc;
			}
			if (!q.value || q.value > c->sent)
				return malformed(c, "a completion with fence value %llu; allowed: 1 to the %llu submissions sent",
						 (unsigned long long)q.value, (unsigned long long)c->sent);
			*fence = q.value;
			return FFA_ERR_OK;
		}
		uint64_t t = now_ns();
		if (t - start < c->poll_ns * slots) {
			/* poll, but cede the core whenever someone else (the server, on a busy machine)
			 * wants it: spinning against the server only delays the completion we wait for */
			sched_yield();
			continue;
		}
		rc = ring_check(c);
		if (rc)
			return rc;
		if (t > deadline)
			return lose(c, "no completion in time");
		rc = ring_sleep(c, &h->cq_tail, c->cq_head, deadline);
		if (rc)
			return rc;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* work                                                                                       */

/* An ABI submission (header, waits, commands) sent as type (SUBMIT, RECORD); *blen: the reply's length. */
static int send_submission(ffa_client *c, uint32_t type, uint32_t engine, const struct ffa_wait *waits,
			   uint32_t wait_count, const union ffa_command *commands, uint32_t command_count, uint64_t *blen)
{
	struct ffa_submit head;
	unsigned char stack[sizeof(head) + 4 * sizeof(struct ffa_wait) + 2 * FFA_COMMAND_BYTES];
	unsigned char *buf = stack;
	size_t len;
	int rc;
	if ((wait_count && !waits) || (command_count && !commands))
		return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, wait_count && !waits ? "waits" : "commands",
				 "NULL with a nonzero count; allowed: an array of the count given");
	if (wait_count > FFA_MAX_PAYLOAD_BYTES || command_count > FFA_MAX_PAYLOAD_BYTES)
		return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, "command_count",
				 "%u commands and %u waits; allowed: at most %u bytes per submission", command_count,
				 wait_count, FFA_MAX_PAYLOAD_BYTES);
	memset(&head, 0, sizeof(head));
	head.abi_version = FFA_ABI_VERSION;
	head.engine = engine;
	head.command_count = command_count;
	head.wait_count = wait_count;
	len = sizeof(head) + (size_t)wait_count * sizeof(struct ffa_wait) + (size_t)command_count * FFA_COMMAND_BYTES;
	if (len > FFA_MAX_PAYLOAD_BYTES)
		return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, "command_count",
				 "%u commands and %u waits (%zu bytes); allowed: at most %u bytes per submission",
				 command_count, wait_count, len, FFA_MAX_PAYLOAD_BYTES);
	if (len > sizeof(stack) && !(buf = malloc(len)))
		return set_error(&c->err, FFA_ERR_OUT_OF_MEMORY, "command_count", "no memory for %zu bytes", len);
	memcpy(buf, &head, sizeof(head));
	if (wait_count)
		memcpy(buf + sizeof(head), waits, (size_t)wait_count * sizeof(struct ffa_wait));
	if (command_count)
		memcpy(buf + sizeof(head) + (size_t)wait_count * sizeof(struct ffa_wait), commands,
		       (size_t)command_count * FFA_COMMAND_BYTES);
	rc = call(c, type, buf, len, NULL, 0, blen, NULL, 0);
	if (buf != stack)
		free(buf);
	return rc;
}

int ffa_submit(ffa_client *c, uint32_t engine, const struct ffa_wait *waits, uint32_t wait_count,
	       const union ffa_command *commands, uint32_t command_count, uint64_t *fence)
{
	uint64_t blen;
	int rc;
	if (c->lost)
		return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device", "%s", c->err.message);
	if (c->ring && command_count < c->entries && (!wait_count || waits) && (!command_count || commands)) {
		/* the ring carries one wait per engine; anything else goes by socket, where the
		 * server's validator gives it its exact verdict */
		uint64_t w[2] = {0, 0};
		int ok = wait_count <= 2;
		for (uint32_t i = 0; ok && i < wait_count; i++)
			ok = waits[i].engine < 2 && !waits[i].reserved && waits[i].value && !w[waits[i].engine] &&
			     (w[waits[i].engine] = waits[i].value) != 0;
		if (ok)
			return ring_submit(c, engine, w[0], w[1], commands, command_count, 0, fence);
	}
	c->sent++;
	rc = send_submission(c, FFA_MSG_SUBMIT, engine, waits, wait_count, commands, command_count, &blen);
	return rc ? rc : fence_reply(c, blen, fence, 1);
}

int ffa_wait(ffa_client *c, uint32_t engine, uint64_t value, uint64_t timeout_ns)
{
	struct ffa_wait_req w;
	uint64_t blen;
	int rc;
	if (engine < 2 && c->completed[engine] >= value && !c->lost)
		return FFA_ERR_OK; /* an earlier reply already showed it */
	if (c->ring && engine < 2 && !c->lost) {
		struct ffa_ring_header *h = ring_header(c);
		const uint64_t *word = engine ? &h->completed_copy : &h->completed_compute;
		uint64_t end = now_ns() + (timeout_ns < c->poll_ns ? timeout_ns : c->poll_ns);
		do {
			uint64_t done = __atomic_load_n(word, __ATOMIC_ACQUIRE);
			if (done > c->sent)
				return malformed(c, "the ring's completed value %llu; allowed: at most the %llu submissions sent",
						 (unsigned long long)done, (unsigned long long)c->sent);
			if (done >= value)
				return FFA_ERR_OK;
			sched_yield();
		} while (now_ns() < end);
	}
	memset(&w, 0, sizeof(w));
	w.engine = engine;
	w.value = value;
	w.timeout_ns = timeout_ns;
	/* the server keeps the wait's deadline; ours adds timeout_s to catch a dead server */
	c->extra_ns = timeout_ns > UINT64_MAX / 2 ? UINT64_MAX / 4 : timeout_ns;
	rc = call(c, FFA_MSG_WAIT, &w, sizeof(w), NULL, 0, &blen, NULL, 0);
	c->extra_ns = 0;
	return rc ? rc : fence_reply(c, blen, NULL, 0);
}

int ffa_completed(ffa_client *c, uint32_t engine, uint64_t *value)
{
	uint32_t req[2] = {engine, 0};
	uint64_t blen;
	int rc;
	if (c->lost)
		return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device", "%s", c->err.message);
	if (c->ring && engine <= FFA_ENGINE_COPY) {
		/* the ring's header carries this client's progress: no system call */
		struct ffa_ring_header *h = ring_header(c);
		uint64_t v = __atomic_load_n(engine ? &h->completed_copy : &h->completed_compute, __ATOMIC_ACQUIRE);
		if (v > c->sent)
			return malformed(c, "the ring's completed value %llu; allowed: at most the %llu submissions sent",
					 (unsigned long long)v, (unsigned long long)c->sent);
		if (v > c->completed[engine]) /* a word that went back is not believed: the highest seen stands */
			c->completed[engine] = v;
		*value = c->completed[engine];
		return FFA_ERR_OK;
	}
	rc = call(c, FFA_MSG_COMPLETED, req, sizeof(req), NULL, 0, &blen, NULL, 0);
	return rc ? rc : fence_reply(c, blen, value, 0); /* the reply's value: the engine's completed value */
}

int ffa_stats(ffa_client *c, struct ffa_stats *out)
{
	uint64_t blen;
	int rc = call(c, FFA_MSG_STATS, NULL, 0, NULL, 0, &blen, NULL, 0);
	if (rc)
		return rc;
	/* a newer server may append counters (extension only at the end): the known ones are read */
	if (blen < sizeof(*out))
		return malformed(c, "a stats reply of %llu bytes; allowed: at least %zu", (unsigned long long)blen,
				 sizeof(*out));
	memcpy(out, c->body, sizeof(*out));
	return FFA_ERR_OK;
}

int ffa_record(ffa_client *c, uint32_t engine, const union ffa_command *commands, uint32_t command_count,
	       uint32_t *list_id)
{
	struct ffa_list_id r;
	uint64_t blen;
	int rc = send_submission(c, FFA_MSG_RECORD, engine, NULL, 0, commands, command_count, &blen);
	if (rc)
		return rc;
	if (blen != sizeof(r))
		return malformed(c, "a list id reply of %llu bytes; allowed: %zu", (unsigned long long)blen, sizeof(r));
	memcpy(&r, c->body, sizeof(r));
	if (r.reserved || !r.list_id)
		return malformed(c, "a list id reply with list_id %u, reserved %u", r.list_id, r.reserved);
	*list_id = r.list_id;
	return FFA_ERR_OK;
}

int ffa_replay(ffa_client *c, uint32_t list_id, uint32_t engine, const struct ffa_wait *waits, uint32_t wait_count,
	       uint64_t *fence)
{
	struct ffa_replay r;
	uint64_t w[2] = {0, 0}, blen;
	int rc;
	if (c->lost)
		return set_error(&c->err, FFA_ERR_DEVICE_LOST, "device", "%s", c->err.message);
	if (wait_count && !waits)
		return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, "waits",
				 "NULL with wait_count %u; allowed: an array of wait_count waits", wait_count);
	for (uint32_t i = 0; i < wait_count; i++) { /* a replay waits for at most one value per engine: the latest */
		if (waits[i].engine > FFA_ENGINE_COPY || waits[i].reserved)
			return set_error(&c->err, FFA_ERR_INVALID_PARAMETER, "waits.engine",
					 "waits[%u] on engine %u, reserved %u; allowed: engine 0 or 1, reserved 0", i,
					 waits[i].engine, waits[i].reserved);
		if (waits[i].value > w[waits[i].engine])
			w[waits[i].engine] = waits[i].value;
	}
	if (c->ring && list_id)
		return ring_submit(c, engine, w[0], w[1], NULL, 0, list_id, fence);
	memset(&r, 0, sizeof(r));
	r.list_id = list_id;
	r.engine = engine;
	r.wait_compute_value = w[0];
	r.wait_copy_value = w[1];
	c->sent++;
	rc = call(c, FFA_MSG_REPLAY, &r, sizeof(r), NULL, 0, &blen, NULL, 0);
	return rc ? rc : fence_reply(c, blen, fence, 1);
}

int ffa_free_list(ffa_client *c, uint32_t list_id)
{
	uint32_t req[2] = {list_id, 0};
	uint64_t blen;
	int rc = call(c, FFA_MSG_FREE_LIST, req, sizeof(req), NULL, 0, &blen, NULL, 0);
	return rc ? rc : empty_reply(c, blen, "FREE_LIST");
}
