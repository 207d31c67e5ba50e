/* Blocking Redis connections: transports (socket, TLS), the reader-fed connection,
 * and the set-up steps every data-node connection runs. */
#include "redis_conn.h"

#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bytes read per call. Small values are for tests: a TLS record larger than this
 * stays partly inside OpenSSL, and must be read without waiting for the socket. */
#ifndef RCONN_READ_CHUNK
#define RCONN_READ_CHUNK 16384
#endif


/* ---- transports --------------------------------------------------------------------- */

typedef struct rio_sock {
    rio io;
    int fd;
    SSL *ssl; /* NULL: plaintext */
} rio_sock;

static long ms_left(double deadline)
{
    double left = (deadline - clock_mono_s()) * 1000;
    return left <= 0 ? 0 : left > LONG_MAX / 2 ? LONG_MAX / 2 : (long)left + 1;
}

static int wait_fd(int fd, bool for_write, long ms)
{
    struct pollfd p = {.fd = fd, .events = for_write ? POLLOUT : POLLIN};
    for (;;) {
        int n = poll(&p, 1, ms > INT_MAX ? INT_MAX : (int)ms);
        if (n >= 0)
            return n > 0;
        if (errno != EINTR)
            return -1;
    }
}

static int sock_wait(rio *io, bool for_write, long ms)
{
    rio_sock *s = (rio_sock *)io;
    int r = wait_fd(s->fd, for_write, ms);
    if (r < 0)
        snprintf(io->err, sizeof io->err, "poll: %s", strerror(errno));
    return r;
}

static ssize_t sock_read(rio *io, char *p, size_t n)
{
    rio_sock *s = (rio_sock *)io;
    for (;;) {
        ssize_t r = read(s->fd, p, n);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return RIO_WANT_READ;
        snprintf(io->err, sizeof io->err, "%s", strerror(errno));
        return RIO_ERROR;
    }
}

static ssize_t sock_write(rio *io, const char *p, size_t n)
{
    rio_sock *s = (rio_sock *)io;
    for (;;) {
        ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
        if (r >= 0)
            return r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return RIO_WANT_WRITE;
        snprintf(io->err, sizeof io->err, "%s", strerror(errno));
        return RIO_ERROR;
    }
}

static void sock_close(rio *io)
{
    rio_sock *s = (rio_sock *)io;
    if (s->ssl) {
        /* A close_notify if it can go at once; the socket closes either way. */
        SSL_shutdown(s->ssl);
        SSL_free(s->ssl);
        ERR_clear_error();
    }
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

static const rio_ops tls_ops;

/* Maps the result of SSL_read/SSL_write/SSL_connect (r) to a RIO code. */
static ssize_t tls_result(rio_sock *s, int r)
{
    int e = SSL_get_error(s->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ: return RIO_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return RIO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return 0;
    case SSL_ERROR_SYSCALL:
        if (!ERR_peek_error()) {
            if (errno == 0 || r == 0)
                return 0; /* closed without close_notify */
            snprintf(s->io.err, sizeof s->io.err, "%s%s", strerror(errno), redis_tls_hint(s->ssl));
            ERR_clear_error();
            return RIO_ERROR;
        }
        /* fall through */
    default: {
        unsigned long code = ERR_peek_error();
        if (ERR_GET_LIB(code) == ERR_LIB_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            return 0; /* the peer closed the socket without close_notify */
        }
        redis_tls_explain(s->ssl, code, s->io.err, sizeof s->io.err);
        return RIO_ERROR;
    }
    }
}

static ssize_t tls_read(rio *io, char *p, size_t n)
{
    rio_sock *s = (rio_sock *)io;
    ERR_clear_error();
    errno = 0;
    int r = SSL_read(s->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    return r > 0 ? r : tls_result(s, r);
}

static ssize_t tls_write(rio *io, const char *p, size_t n)
{
    rio_sock *s = (rio_sock *)io;
    ERR_clear_error();
    errno = 0;
    int r = SSL_write(s->ssl, p, n > INT_MAX ? INT_MAX : (int)n);
    if (r > 0)
        return r;
    ssize_t code = tls_result(s, r);
    if (code == 0) {
        snprintf(io->err, sizeof io->err, "connection closed by the server%s", redis_tls_hint(s->ssl));
        return RIO_ERROR;
    }
    return code;
}

static const char *tls_hint(rio *io)
{
    return io->ops == &tls_ops ? redis_tls_hint(((rio_sock *)io)->ssl) : "";
}

static const rio_ops sock_ops = {sock_read, sock_write, sock_wait, sock_close};
static const rio_ops tls_ops = {tls_read, tls_write, sock_wait, sock_close};

/* Non-blocking connect to one address, bounded by deadline; the fd or -1. */
static int connect_addr(const struct addrinfo *ai, double deadline, char *why, size_t cap)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        snprintf(why, cap, "socket: %s", strerror(errno));
        return -1;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS) {
            snprintf(why, cap, "%s", strerror(errno));
            goto fail;
        }
        int r = wait_fd(fd, true, ms_left(deadline));
        if (r <= 0) {
            snprintf(why, cap, "%s", r == 0 ? "connect timed out" : strerror(errno));
            goto fail;
        }
        int soerr = 0;
        socklen_t len = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr) {
            snprintf(why, cap, "%s", strerror(soerr ? soerr : errno));
            goto fail;
        }
    }
    /* Commands go out at once; a peer that vanishes without a word is noticed by
     * keepalive probes between batches, and by the deadlines meanwhile. */
    int one = 1, idle = 15, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    return fd;
fail:
    close(fd);
    return -1;
}

static bool tls_handshake(rio_sock *s, double deadline, long timeout_ms, char *err, size_t errlen)
{
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_connect(s->ssl);
        if (r == 1)
            return true;
        ssize_t code = tls_result(s, r);
        if (code == RIO_WANT_READ || code == RIO_WANT_WRITE) {
            int w = wait_fd(s->fd, code == RIO_WANT_WRITE, ms_left(deadline));
            if (w > 0)
                continue;
            if (w == 0)
                snprintf(err, errlen,
                         "TLS handshake timed out after %ld ms (does the server speak TLS? a plaintext "
                         "Redis cannot serve rediss://)",
                         timeout_ms);
            else
                snprintf(err, errlen, "TLS handshake: poll: %s", strerror(errno));
            return false;
        }
        if (code == 0)
            redis_tls_explain(s->ssl, 0, err, errlen);
        else
            snprintf(err, errlen, "%s", s->io.err);
        return false;
    }
}

rio *rio_connect(const char *host, int port, const redis_tls *tls, long timeout_ms, char *err, size_t errlen)
{
    double deadline = clock_mono_s() + timeout_ms / 1e3;
    char service[16], why[256] = "no address";
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, service, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "connect %s:%d: %s", host, port, gai_strerror(gai));
        return NULL;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next)
        fd = connect_addr(ai, deadline, why, sizeof why);
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "connect %s:%d: %s", host, port, why);
        return NULL;
    }
    rio_sock *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        snprintf(err, errlen, "connect %s:%d: out of memory", host, port);
        return NULL;
    }
    s->fd = fd;
    s->io.fd = fd;
    s->io.ops = &sock_ops;
    if (tls) {
        s->io.ops = &tls_ops;
        s->ssl = redis_tls_session(tls, host, why, sizeof why);
        if (!s->ssl || SSL_set_fd(s->ssl, fd) != 1 || !tls_handshake(s, deadline, timeout_ms, why, sizeof why)) {
            snprintf(err, errlen, "%s:%d: %s", host, port, s->ssl ? why : "cannot start TLS");
            sock_close(&s->io);
            return NULL;
        }
    }
    return &s->io;
}

/* ---- connections -------------------------------------------------------------------- */

struct rconn {
    rio *io;
    redisReader *reader;
    buf out;
    size_t sent; /* out.data[sent..len) is still to be written */
    long timeout_ms;
    bool tls;
    bool got_bytes;
    bool broken;
    bool timed_out; /* broken by silence, not by an error */
    char err[512];
};

static void fail(rconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(rconn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    c->broken = true;
}

rconn *rconn_new(rio *io, bool tls, long timeout_ms)
{
    rconn *c = calloc(1, sizeof *c);
    if (!c || !(c->reader = redisReaderCreate())) {
        free(c);
        io->ops->close(io);
        return NULL;
    }
    c->io = io;
    c->tls = tls;
    c->timeout_ms = timeout_ms;
    buf_init(&c->out, 0);
    return c;
}

rconn *rconn_connect(const char *host, int port, const redis_tls *tls, long timeout_ms, char *err, size_t errlen)
{
    rio *io = rio_connect(host, port, tls, timeout_ms, err, errlen);
    if (!io)
        return NULL;
    rconn *c = rconn_new(io, tls != NULL, timeout_ms);
    if (!c)
        snprintf(err, errlen, "connect %s:%d: out of memory", host, port);
    return c;
}

void rconn_free(rconn *c)
{
    if (!c)
        return;
    c->io->ops->close(c->io);
    redisReaderFree(c->reader);
    buf_free(&c->out);
    free(c);
}

const char *rconn_errstr(const rconn *c)
{
    return c->err;
}

bool rconn_timed_out(const rconn *c)
{
    return c->timed_out;
}

bool rconn_broken(const rconn *c)
{
    return c->broken;
}

int rconn_fd(const rconn *c)
{
    return c->io->fd;
}

bool redis_format(buf *out, int argc, const char **argv, const size_t *lens)
{
    /* hiredis' sds formatter: redisFormatCommandArgv spends a sprintf on every
     * argument's length, which costs the relay a tenth more CPU per event. */
    sds cmd = NULL;
    long long n = redisFormatSdsCommandArgv(&cmd, argc, argv, lens);
    if (n < 0)
        return false;
    bool ok = buf_append(out, cmd, (size_t)n);
    redisFreeSdsCommand(cmd);
    return ok;
}

bool rconn_append(rconn *c, int argc, const char **argv, const size_t *lens)
{
    if (c->broken)
        return false;
    if (c->sent == c->out.len) {
        buf_reset(&c->out);
        c->sent = 0;
    }
    if (!redis_format(&c->out, argc, argv, lens)) {
        fail(c, "out of memory");
        return false;
    }
    return true;
}

/* What a failure means for a plaintext connection that got nothing back yet. */
static const char *plaintext_hint(const rconn *c)
{
    return !c->tls && !c->got_bytes ? " (is it a TLS port? redis:// is plaintext, rediss:// is TLS)" : "";
}

/* The deadline of a wait: timeout_ms after the last progress. The clock is read only
 * when a wait begins (*since is 0 after progress), not for every reply. */
static long wait_budget(long timeout_ms, double *since)
{
    if (*since == 0)
        *since = clock_mono_s();
    return ms_left(*since + timeout_ms / 1e3);
}

bool rconn_flush(rconn *c)
{
    double since = 0;
    while (!c->broken && c->sent < c->out.len) {
        ssize_t n = c->io->ops->write(c->io, c->out.data + c->sent, c->out.len - c->sent);
        if (n > 0) {
            c->sent += (size_t)n;
            since = 0;
            continue;
        }
        if (n == RIO_ERROR) {
            fail(c, "write: %s%s", c->io->err, plaintext_hint(c));
            break;
        }
        long left = wait_budget(c->timeout_ms, &since);
        int w = left > 0 ? c->io->ops->wait(c->io, n == RIO_WANT_WRITE, left) : 0;
        if (w == 0) {
            c->timed_out = true;
            fail(c, "timed out after %ld ms writing to the server", c->timeout_ms);
        }
        else if (w < 0)
            fail(c, "%s", c->io->err);
    }
    if (c->broken)
        return false;
    buf_reset(&c->out);
    c->sent = 0;
    return true;
}

/* One read into the reader: 1 bytes arrived, 0 the transport must wait (*want_write
 * says for what), -1 broken. */
static int fill(rconn *c, bool *want_write)
{
    char chunk[RCONN_READ_CHUNK];
    ssize_t n = c->io->ops->read(c->io, chunk, sizeof chunk);
    if (n > 0) {
        if (!c->tls && !c->got_bytes && redis_tls_looks_like_tls((const unsigned char *)chunk, (size_t)n)) {
            fail(c, "the server answered with TLS: use rediss:// (redis:// is plaintext)");
            return -1;
        }
        c->got_bytes = true;
        if (c->reader->len - c->reader->pos + (size_t)n > REDIS_MAX_BUFFERED) {
            fail(c, "a reply larger than %zu MB: not a Redis server?", REDIS_MAX_BUFFERED >> 20);
            return -1;
        }
        if (redisReaderFeed(c->reader, chunk, (size_t)n) != REDIS_OK) {
            fail(c, "out of memory");
            return -1;
        }
        return 1;
    }
    if (n == 0) {
        fail(c, "connection closed by the server%s%s", plaintext_hint(c), tls_hint(c->io));
        return -1;
    }
    if (n == RIO_ERROR) {
        fail(c, "read: %s%s", c->io->err, plaintext_hint(c));
        return -1;
    }
    *want_write = n == RIO_WANT_WRITE;
    return 0;
}

static int take_reply(rconn *c, redisReply **out)
{
    void *r = NULL;
    if (redisReaderGetReply(c->reader, &r) != REDIS_OK) {
        fail(c, "protocol error: %s%s", c->reader->errstr, plaintext_hint(c));
        return -1;
    }
    *out = r;
    return r != NULL;
}

int rconn_reply_nowait(rconn *c, redisReply **out)
{
    *out = NULL;
    if (c->broken)
        return -1;
    for (;;) {
        int got = take_reply(c, out);
        if (got != 0)
            return got;
        bool want_write;
        int f = fill(c, &want_write);
        if (f <= 0)
            return f;
    }
}

redisReply *rconn_reply(rconn *c)
{
    return rconn_reply_held(c, 0);
}

redisReply *rconn_reply_held(rconn *c, long held_ms)
{
    if (c->broken || !rconn_flush(c))
        return NULL;
    long timeout_ms = c->timeout_ms + held_ms;
    double since = 0;
    for (;;) {
        redisReply *r;
        int got = take_reply(c, &r);
        if (got < 0)
            return NULL;
        if (got > 0)
            return r;
        /* Read until the transport would block before waiting on the socket: a TLS
         * record may hold more than one read takes, and the rest waits inside
         * OpenSSL, not in the socket. */
        bool want_write = false;
        int f = fill(c, &want_write);
        if (f < 0)
            return NULL;
        if (f > 0) {
            since = 0;
            continue;
        }
        long left = wait_budget(timeout_ms, &since);
        int w = left > 0 ? c->io->ops->wait(c->io, want_write, left) : 0;
        if (w == 0) {
            c->timed_out = true;
            fail(c, "timed out after %ld ms waiting for the server", timeout_ms);
            return NULL;
        }
        if (w < 0) {
            fail(c, "%s", c->io->err);
            return NULL;
        }
    }
}

redisReply *rconn_command(rconn *c, int argc, const char **argv, const size_t *lens)
{
    return rconn_append(c, argc, argv, lens) ? rconn_reply(c) : NULL;
}

/* ---- set-up ------------------------------------------------------------------------- */

bool redis_setup_format(redis_setup *s, const redis_url *u, buf *out)
{
    s->n = 0;
    if (u->password[0]) {
        const char *argv[] = {"AUTH", u->user, u->password};
        bool with_user = u->user[0] != '\0';
        if (!(with_user ? redis_format(out, 3, argv, NULL)
                        : redis_format(out, 2, (const char *[]){"AUTH", u->password}, NULL)))
            return false;
        s->step[s->n++] = SETUP_AUTH;
    }
    if (u->db) {
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        if (!redis_format(out, 2, (const char *[]){"SELECT", db}, NULL))
            return false;
        s->step[s->n++] = SETUP_SELECT;
    }
    if (u->any_role)
        return true;
    if (!redis_format(out, 1, (const char *[]){"ROLE"}, NULL))
        return false;
    s->step[s->n++] = SETUP_ROLE;
    return true;
}

bool redis_error_is_acl(const char *reply)
{
    /* A command refused by ACL answers NOPERM; inside a script, Redis 7.0 words the
     * same refusal "The user executing the script can't ...". */
    return !strncmp(reply, "NOPERM", 6) || strstr(reply, "The user executing the script can't") ||
           strstr(reply, "no permissions to");
}

void redis_explain_error(const char *reply, char *out, size_t cap)
{
    bool acl = redis_error_is_acl(reply);
    if (acl && strncmp(reply, "NOPERM", 6))
        snprintf(out, cap, "NOPERM (ACL): %s (docs/OPERATIONS.md lists the rules each command needs)", reply);
    else if (acl)
        snprintf(out, cap, "%s (ACL: docs/OPERATIONS.md lists the rules each command needs)", reply);
    else
        snprintf(out, cap, "%s", reply);
}

bool redis_setup_check(const redis_setup *s, int i, const redisReply *r, char *err, size_t errlen)
{
    static const char *const names[] = {"AUTH", "SELECT", "ROLE"};
    const char *what = names[s->step[i]];
    if (!r) {
        snprintf(err, errlen, "%s: no reply", what);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        char why[400];
        redis_explain_error(r->str, why, sizeof why);
        snprintf(err, errlen, "%s: %s", what, why);
        return false;
    }
    switch (s->step[i]) {
    case SETUP_AUTH:
    case SETUP_SELECT:
        if (r->type == REDIS_REPLY_STATUS)
            return true;
        break;
    case SETUP_ROLE:
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 || r->element[0]->type != REDIS_REPLY_STRING)
            break;
        if (!strcmp(r->element[0]->str, "master"))
            return true;
        if (!strcmp(r->element[0]->str, "slave") && r->elements >= 3 &&
            r->element[1]->type == REDIS_REPLY_STRING && r->element[2]->type == REDIS_REPLY_INTEGER)
            snprintf(err, errlen, "ROLE: the server is a replica (of %s:%lld), not the primary",
                     r->element[1]->str, r->element[2]->integer);
        else
            snprintf(err, errlen, "ROLE: the server is a %s, not a primary", r->element[0]->str);
        return false;
    }
    snprintf(err, errlen, "%s: unexpected reply", what);
    return false;
}

bool rconn_setup(rconn *c, const redis_url *u, char *err, size_t errlen)
{
    redis_setup s;
    if (c->sent == c->out.len) {
        buf_reset(&c->out);
        c->sent = 0;
    }
    if (!redis_setup_format(&s, u, &c->out)) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    bool ok = true;
    /* Every reply is read, so that the first refusal is the one reported. */
    for (int i = 0; i < s.n; i++) {
        redisReply *r = rconn_reply(c);
        if (!r) {
            snprintf(err, errlen, "%s", c->err);
            return false;
        }
        if (ok && !redis_setup_check(&s, i, r, err, errlen))
            ok = false;
        freeReplyObject(r);
    }
    return ok;
}
