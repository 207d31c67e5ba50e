/* Blocking Redis connections with deadlines, built on non-blocking sockets. A plain
 * socket or a TLS session (redis_tls.h) moves the bytes, hiredis' protocol reader
 * (redisReaderFeed/GetReply) parses replies and redisFormatCommandArgv formats
 * commands, so that Debian's hiredis 0.14, which has no TLS, stays the only Redis
 * library. Used by the relay's sink, its readiness probe, `outboxd status` and
 * sentinel discovery; the gateway's libevent side (redis_aconn.c) shares the set-up
 * steps below. */
#ifndef OUTBOXD_REDIS_CONN_H
#define OUTBOXD_REDIS_CONN_H

#include "buf.h"
#include "config.h"
#include "redis_tls.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* ---- transports --------------------------------------------------------------------- */

/* The bytes of one connection. read and write return a byte count, 0 from read when
 * the peer closed the connection, or one of these codes (the reason in io->err). */
enum { RIO_ERROR = -1, RIO_WANT_READ = -2, RIO_WANT_WRITE = -3 };

typedef struct rio rio;
typedef struct rio_ops {
    ssize_t (*read)(rio *io, char *p, size_t n);
    ssize_t (*write)(rio *io, const char *p, size_t n);
    /* Blocks until the transport can move bytes in that direction, at most ms:
     * 1 ready, 0 timed out, -1 error. */
    int (*wait)(rio *io, bool for_write, long ms);
    void (*close)(rio *io); /* also frees io */
} rio_ops;

struct rio {
    const rio_ops *ops;
    int fd; /* the socket, for callers that poll several connections; -1 if none */
    char err[256];
};

/* Connects to host:port (every address it resolves to, in turn) within timeout_ms,
 * then, when tls is not NULL, completes a verified TLS handshake in the same time.
 * NULL with the reason in err. Close with io->ops->close(io). */
rio *rio_connect(const char *host, int port, const redis_tls *tls, long timeout_ms, char *err, size_t errlen);

/* ---- connections -------------------------------------------------------------------- */

typedef struct rconn rconn;

/* A connection over io (which it takes over). Every wait for the server is bounded
 * by timeout_ms without progress. tls only shapes error messages. Never NULL unless
 * out of memory (io is then closed). */
rconn *rconn_new(rio *io, bool tls, long timeout_ms);
/* rio_connect + rconn_new. NULL with the reason in err. */
rconn *rconn_connect(const char *host, int port, const redis_tls *tls, long timeout_ms, char *err, size_t errlen);
void rconn_free(rconn *c);

/* Queues a command (lens may be NULL for NUL-terminated arguments). False when out
 * of memory or the connection is broken. */
bool rconn_append(rconn *c, int argc, const char **argv, const size_t *lens) WUR;
/* Writes everything queued. False (broken, reason in errstr) on error or timeout. */
bool rconn_flush(rconn *c) WUR;
/* The next reply, waiting for it; NULL when the connection broke or timed out (the
 * reason in errstr; the connection is then unusable). The caller frees the reply
 * (freeReplyObject). Flushes queued commands first. */
redisReply *rconn_reply(rconn *c);
/* rconn_reply for a command the server may hold for up to held_ms before it answers
 * (WAIT): the wait for its reply is bounded by held_ms plus the connection's timeout. */
redisReply *rconn_reply_held(rconn *c, long held_ms);
/* The next reply if it can be had without waiting: 1 with *out set, 0 none yet,
 * -1 broken. */
int rconn_reply_nowait(rconn *c, redisReply **out);
/* rconn_append + rconn_reply. */
redisReply *rconn_command(rconn *c, int argc, const char **argv, const size_t *lens);
const char *rconn_errstr(const rconn *c);
/* Whether the connection broke because the server stayed silent past the timeout
 * (a stalled server) rather than with an error. */
bool rconn_timed_out(const rconn *c);
bool rconn_broken(const rconn *c);
/* The socket, to poll for input before rconn_reply_nowait (which reads until the
 * transport would block, so no input waits unseen inside a TLS session). */
int rconn_fd(const rconn *c);

/* ---- shared by every connection ----------------------------------------------------- */

/* No reply can be larger than Redis's own limit on a bulk string (proto-max-bulk-len,
 * 512 MB by default) plus framing: a peer that sends more is not a Redis server. */
#define REDIS_MAX_BUFFERED ((size_t)600 << 20)

/* Appends one command in the protocol's format to out; false when out of memory. */
bool redis_format(buf *out, int argc, const char **argv, const size_t *lens) WUR;

/* The steps after connecting to a data node: AUTH (user and password from the URL,
 * or the password alone), SELECT when db is not 0, then ROLE, which must say
 * "master": a replica (a stale sentinel answer, a failover under way) is refused. */
enum setup_step { SETUP_AUTH, SETUP_SELECT, SETUP_ROLE };
typedef struct redis_setup {
    int n;
    enum setup_step step[3];
} redis_setup;

/* Appends the set-up commands to out and fills s; false when out of memory. */
bool redis_setup_format(redis_setup *s, const redis_url *u, buf *out) WUR;
/* Checks the reply (NULL: none came) to step i of s. False with the reason in err,
 * e.g. "AUTH: WRONGPASS ..." or "ROLE: it is a replica of 10.0.0.5:6379". */
bool redis_setup_check(const redis_setup *s, int i, const redisReply *r, char *err, size_t errlen) WUR;
/* Runs the set-up on a fresh blocking connection. False with the reason in err. */
bool rconn_setup(rconn *c, const redis_url *u, char *err, size_t errlen) WUR;

/* Adds a hint to an error reply that means an ACL denial (the text differs between
 * commands and scripts): "NOPERM (ACL): ..." with what to look up. Writes the reply
 * text (or the hinted one) to out. */
void redis_explain_error(const char *reply, char *out, size_t cap);
/* Whether an error reply is an ACL denial. */
bool redis_error_is_acl(const char *reply);

#endif
