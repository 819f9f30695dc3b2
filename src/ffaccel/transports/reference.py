"""Generate the whole reference page (docs/spec.md): the op set and ABI, then the wire protocol.

Run ``python -m ffaccel.transports.reference > docs/spec.md``; a test checks that the committed
page equals what this prints. The op set, the ABI and its rules come from
:func:`ffaccel.abi.reference.render` (that layer cannot see the server's messages); this layer
adds the device server's wire protocol and rings from :mod:`ffaccel.transports.protocol`, the
same tables the C uAPI header (:mod:`ffaccel.transports.cheader`) is generated from.
"""

from __future__ import annotations

import sys

from ..abi import reference
from ..spec import RULES
from .cheader import member_docs
from .limits import ServerLimits, SessionLimits, limit_rows
from .protocol import (
    ALLOC_REQ,
    CQE,
    ENGINE_REQ,
    ERROR_TEXT_REQ,
    HANDLE_REQ,
    LIST_ID,
    ERROR_RECORD,
    FENCE_REPLY,
    HANDLE_REPLY,
    HELLO,
    MAX_FDS,
    MAX_PAYLOAD_BYTES,
    MAX_REPLY_PAYLOAD_BYTES,
    MSG,
    REPLAY_REQ,
    REPLY,
    RING_HEADER,
    RING_HEADER_BYTES,
    RING_SETUP,
    SQE_BYTES,
    SQE_HEADER,
    STATS,
    WAIT_REQ,
    WIRE_VERSION,
    Msg,
    RingClientFlags,
    RingServerFlags,
    SqeFlags,
)

#: The messages the C client (libffaccel, src/ffaccel/c) sends.
C_CLIENT_MESSAGES = tuple(m for m in Msg if m != Msg.USAGE)  # all but the process table (`ffaccel stats`)

_INTRO = f"""\
## Wire protocol (the device server)

`ffaccel serve` owns the device and serves client processes on a Unix stream socket (wire
version {WIRE_VERSION}). These are the bytes any client speaks, in any language: the Python
`SocketTransport`/`RingTransport` and the C client `libffaccel` (header `ffaccel_uapi.h`, generated
from these same tables by `python -m ffaccel.transports.cheader`; build it with
`ffaccel build-c --out DIR`). Same layout rules as the ABI: little-endian, fixed size, reserved
fields zero and checked.

* **Where.** The socket is `$FFACCEL_SOCKET`, else `$XDG_RUNTIME_DIR/ffaccel/server.sock`, else
  `/tmp/ffaccel-<uid>/server.sock`. The default folder is created mode 0700 by the server; both
  sides refuse it unless it is a real directory owned by the user with no group or other
  permission bits. Over any path, a client checks the server's credentials (`SO_PEERCRED`): it
  must run as the client's uid or as root, else the client refuses it (`DEVICE_LOST`).
* **Framing.** A request is one `ffa_msg` header and `payload_bytes` (at most
  {MAX_PAYLOAD_BYTES:,}) of payload. Every request gets exactly one reply, an `ffa_reply` header and
  its payload, in request order (a client may send several before reading). File descriptors (at
  most {MAX_FDS} per message) travel as `SCM_RIGHTS` in the same `sendmsg` as the message's first
  bytes. The first request of a connection is HELLO.
* **Errors.** A reply whose `status` is not 0 carries the error code from the table above and an
  `ffa_error` record: the offending command's index, then the parameter name, the spec rule id
  and the message (value seen, what is allowed) as UTF-8 strings of the given lengths. A rejected
  request changes nothing.
* **Memory.** Operands never travel on the socket: ALLOC answers with a sealed memfd of the
  buffer, which the client maps; SUBMIT carries only the ABI submission (`ffa_submit`, waits,
  commands) naming buffers by handle.
* **Clients trust no reply.** Both clients (Python and C) treat every reply, fd and shared page
  as hostile input, and any breach makes the connection lost (`DEVICE_LOST`, saying what was
  wrong), never a crash, a hang or another exception: a reply is read into the client's own
  memory once; its length is capped at {MAX_REPLY_PAYLOAD_BYTES:,} bytes from its header (before a
  byte of payload is read), and bytes past the announced length are refused; the deadline
  (`timeout_s`) holds while bytes trickle in; a fixed-size reply must have its struct's exact size
  (STATS: at least, so a newer server may append counters) and zero reserved fields; the status
  must be a code of the table and an error record's strings must fill it exactly; a reply carrying
  fds must carry exactly its number (ALLOC 1, RING_SETUP 2; fds on other replies are closed and
  ignored; more than {MAX_FDS} per read is refused). A memfd (ALLOC, IMPORT, the ring) is mapped only
  when `fstat` shows a regular file at least as long as the reply says and `F_GET_SEALS` shows
  `F_SEAL_SHRINK`, so no mapping can fault later; an ALLOC reply must give the size asked and a
  handle not held already. The ring's geometry (`entries`, `sq_offset_bytes`, `cq_offset_bytes`)
  is read once at setup, checked against the memfd's real size with comparisons that cannot
  overflow, and kept in the client: a server that rewrites the header later moves nothing. The
  doorbell must be an eventfd and is made non-blocking; a completion must carry the expected
  `user_data` and a known engine. Fence values are checked against what the client sent: the
  server numbers each engine's accepted submissions 1, 2, ..., so a new fence (SUBMIT, REPLAY,
  a CQE) must be at least 1 and, like every completed value (fence replies, the ring's
  `completed_*` words), at most the number of submissions the connection has sent; a ring word
  that goes back is not believed (the highest value seen stands). (The C client reads no
  device info from HELLO, only its status.)
  `tests/test_client_fuzz.py` runs both clients, the C one under AddressSanitizer and UBSan,
  against a fuzzing fake server (`tests/fake_server.py`).

### Messages

The C client speaks {", ".join(m.name for m in C_CLIENT_MESSAGES)} (plus the ring below).

"""

_RING = f"""\
### Rings (the io_uring model)

RING_SETUP sends `ffa_ring_setup` and the client's wake eventfd; the reply carries the ring's
memfd and the server's doorbell eventfd. The memfd holds `ffa_ring_header` at offset 0, the
submission queue at `sq_offset_bytes` (`entries` slots of {SQE_BYTES} bytes: `ffa_sqe`, then one
command; the SQ starts at byte {RING_HEADER_BYTES}) and the completion queue at `cq_offset_bytes`
(`entries` x `ffa_cqe`). Indices are free-running u32 counters; a slot is `index & (entries - 1)`.

* **Submit.** Write the entries, then store `sq_tail` (a release store); if `server_flags` has
  SLEEPING, write 1 to the doorbell. A submission of several commands is a chain: every entry but
  the last has LINK; the chain is validated and run as one, and answered with one completion
  carrying the last entry's `user_data`. A submission without commands is one EMPTY entry.
  Waits: at most one per engine (`wait_compute_value`, `wait_copy_value`; 0 = none).
* **Complete.** Read completions from `cq_head` to `cq_tail`, then store `cq_head`. A nonzero
  `status` means nothing ran; its full text comes from ERROR_TEXT with `error_id`, over the socket.
  `completed_compute`/`completed_copy` in the header are the client's fence progress.
* **Sleep.** Set WAITING in `client_flags`, look at the queue once more, then sleep on the wake
  eventfd (and the socket, which turns readable when the server dies), with a deadline. Or, to
  wait for a completion: set FUTEX_WAITING and sleep in `FUTEX_WAIT` on `cq_tail` (the value last
  reaped; the kernel compares it first), a bounded nap at a time, looking at the socket after an
  empty nap. The server wakes FUTEX_WAITING clients with `FUTEX_WAKE` from the thread that
  published the completion (no system call on a client's fd, so nothing can block it there), and
  WAITING clients through its waker thread.
* **Broken.** The server copies each entry out of shared memory once and validates the copy. A
  client that breaks a ring rule finds BROKEN in `server_flags`, the code in `error` and its text
  behind `error_id`; the ring is no longer served, and only that client is affected.
"""


_LIMITS = """\
### Limits and the server's rules for hostile clients

Every byte and fd a client sends is treated as an attacker's. What that means, rule by rule:

* **HELLO** is answered with the device's info as UTF-8 JSON (`name`, `version`, `description`,
  `memory_bytes`, `kernels` (combination, kernel library) pairs, `caps` with `combos`, `copies`, `post_ops`, `engines` as the spec's integer codes and
  `limits`); nothing on the wire is pickled, in either direction.
* **Wake fd.** RING_SETUP takes only an eventfd (`ring.wake`); the server makes it non-blocking, writes
  it only from its waker thread with no lock held, and takes "counter full" as "already woken". A client
  that makes it blocking again loses its ring. No fd is written or read after its close: a ring's fds and
  mappings are released when its client is gone *and* no thread still uses them; completions for a
  departed client are dropped.
* **Accounting.** Every mapping a client holds (ALLOC and IMPORT alike) and every recorded command list
  is charged to it; each buffer costs the server one fd. A full CQ, or a client's queue at
  `max_queued_submissions`, parks its ring (not polled) until the client reaps or work drains.
* **Scheduling.** Each engine serves clients round-robin; a command above `slice_units` runs in bands of
  D's rows sized to `slice_target_ms`, so another client's small GEMM waits about one slice; the ring
  poller runs one ring's published chains for one slice (and the chain under way when it ends) before it
  reads the other rings, and never waits for a client's own thread (a ring whose client is in the middle
  of another request is read on a later pass). A client
  that hangs up (noticed within 50 ms, even while it waits on a fence or for room in its queue) has its
  queued work dropped and its running work stopped at the next slice.
* **Connections.** Requests are read as their bytes arrive (nothing is allocated ahead of them); a peer
  silent mid-message for `message_stall_s` is dropped, and so is one that does not read its replies for
  as long. An `accept()` failure (EMFILE, say) is logged and the server goes on. `ffaccel serve` replaces
  only a stale socket at its path; anything else there is refused, never deleted.
* **Polling** is adaptive (`transports/spin.py`, docs/polling.md): every spinner, client or server,
  spins its whole budget unless a spin lost its CPU for over a third of its time (gaps between two
  polls) or its answer came right after it gave up; then it sleeps at once and probes again after a
  pause that starts at 2 ms and doubles up to 50 ms while the probes fare no better.

`ffaccel serve --limit NAME=VALUE` (repeatable) sets any of these; `--max-client-memory` is
`max_memory_bytes`. Every value is checked against its allowed range (the tables' "allowed" column;
floats must be finite) when the tables are built, so a value out of range, `inf` or `nan` is refused
at start-up with one line naming the limit and exit status 2, before anything is served (the server
hands `message_stall_s` to `SO_SNDTIMEO` and poll(2), and sizes its memos by `max_memo_entries`).

"""


def _limit_table(cls: type) -> str:
    return reference._table(["limit", "default", "allowed", "refused with", "meaning"],
                            [[f"`{n}`", d, allowed, "-" if r == "-" else f"`{r}` ({RULES[r].code.name})", doc]
                             for n, d, allowed, r, doc in limit_rows(cls)])


def _flag_table(title: str, cls: type) -> str:
    notes = member_docs(cls)
    return f"{title}\n\n" + reference._table(["flag", "value", "meaning"],
                                            [[f"`{m.name}`", int(m), notes.get(m.name, "")] for m in cls])


def wire_section() -> str:
    """The wire protocol's part of the reference page, as Markdown."""
    notes = member_docs(Msg)
    from .server.handlers import HANDLERS  # the server's own table: what it checks is what is printed

    def size(m: Msg) -> str:
        h = HANDLERS[m]
        what = "an ABI submission" if h.layout is None else f"`{h.layout.name}` ({h.layout.size_bytes})"
        return f"{what}; {h.fds}"

    parts = [_INTRO + reference._table(
        ["msg_type", "value", "request payload; reply", "payload (bytes); fds", "C client"],
        [[f"`{m.name}`", int(m), notes.get(m.name, ""), size(m), "yes" if m in C_CLIENT_MESSAGES else "-"]
         for m in Msg])]
    for lay in (MSG, REPLY, ERROR_RECORD, HELLO, ALLOC_REQ, HANDLE_REQ, ENGINE_REQ, ERROR_TEXT_REQ, LIST_ID,
                HANDLE_REPLY, FENCE_REPLY, WAIT_REQ, REPLAY_REQ, STATS, RING_SETUP):
        parts.append(reference._layout_table(lay))
    parts.append(_RING.rstrip())
    for lay in (RING_HEADER, SQE_HEADER, CQE):
        parts.append(reference._layout_table(lay))
    parts.append(_flag_table("`server_flags` (RingServerFlags)", RingServerFlags))
    parts.append(_flag_table("`client_flags` (RingClientFlags)", RingClientFlags))
    parts.append(_flag_table("`ffa_sqe.flags` (SqeFlags)", SqeFlags))
    parts.append(_LIMITS + "#### Per client (`SessionLimits`)\n\n" + _limit_table(SessionLimits)
                 + "\n\n#### Server-wide (`ServerLimits`)\n\n" + _limit_table(ServerLimits))
    return "\n\n".join(p.rstrip() for p in parts) + "\n"


def render() -> str:
    """The whole reference page: :func:`ffaccel.abi.reference.render`, then :func:`wire_section`."""
    return reference.render().rstrip() + "\n\n" + wire_section()


__all__ = ["C_CLIENT_MESSAGES", "render", "wire_section"]

if __name__ == "__main__":
    sys.stdout.write(render())
