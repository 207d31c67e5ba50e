/* libevent Redis connections: TCP, then TLS on the same socket, then the set-up. */
#include "redis_aconn.h"

#include "buf.h"
#include "clock.h"
#include "redis_conn.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum phase { P_TCP, P_TLS, P_SETUP, P_READY };

struct aconn {
    struct event_base *base;
    struct bufferevent *bev;
    struct event *timer; /* bounds connect, handshake and set-up */
    const redis_tls *tls;
    SSL *ssl;            /* ours until the TLS bufferevent takes it (ssl_in_bev) */
    bool ssl_in_bev;
    redisReader *reader;
    buf scratch;
    aconn_handlers h;
    void *arg;
    enum phase phase;
    redis_setup setup;
    int setup_done;      /* replies of the set-up checked so far */
    long timeout_ms;
    bool got_bytes;
    int busy;            /* callbacks on the stack: freeing waits until they return */
    bool dead;
    bool opening;        /* inside aconn_open: failures are reported from the loop */
    char early_err[600];
    char peer[280];
};

static void free_now(aconn *c)
{
    if (c->bev)
        bufferevent_free(c->bev); /* closes the socket (and frees the SSL once it is the bev's) */
    if (c->ssl && !c->ssl_in_bev)
        SSL_free(c->ssl);
    if (c->timer)
        event_free(c->timer);
    if (c->reader)
        redisReaderFree(c->reader);
    buf_free(&c->scratch);
    free(c);
}

static void release(aconn *c)
{
    if (c->dead && c->busy == 0)
        free_now(c);
}

void aconn_close(aconn *c)
{
    if (!c || c->dead)
        return;
    c->dead = true;
    /* Nothing more may arrive: whatever libevent has queued for us is ignored. */
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    release(c);
}

const char *aconn_peer(const aconn *c)
{
    return c->peer;
}

static void fail(aconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(aconn *c, const char *fmt, ...)
{
    if (c->dead)
        return;
    char why[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (c->opening) {
        /* The caller does not hold c yet: report from the loop, at once. */
        snprintf(c->early_err, sizeof c->early_err, "%s", why);
        struct timeval now = {0, 0};
        evtimer_add(c->timer, &now);
        return;
    }
    c->dead = true;
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    c->busy++;
    c->h.closed(c, why, c->arg);
    c->busy--;
    release(c);
}

static const char *plaintext_hint(const aconn *c)
{
    return !c->tls && !c->got_bytes ? " (is it a TLS port? redis:// is plaintext, rediss:// is TLS)" : "";
}

static void become_ready(aconn *c)
{
    c->phase = P_READY;
    evtimer_del(c->timer);
    c->busy++;
    c->h.ready(c, c->arg);
    c->busy--;
}

/* Feeds what arrived to the reader and hands out every complete reply. */
static void on_read(struct bufferevent *bev, void *arg)
{
    aconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n;
    while (!c->dead && (n = evbuffer_get_contiguous_space(in)) > 0) {
        const unsigned char *p = evbuffer_pullup(in, (ev_ssize_t)n);
        if (!c->tls && !c->got_bytes && redis_tls_looks_like_tls(p, n)) {
            fail(c, "%s: the server answered with TLS: use rediss:// (redis:// is plaintext)", c->peer);
            return;
        }
        c->got_bytes = true;
        if (c->reader->len - c->reader->pos + n > REDIS_MAX_BUFFERED) {
            fail(c, "%s: a reply larger than %zu MB: not a Redis server?", c->peer, REDIS_MAX_BUFFERED >> 20);
            return;
        }
        if (redisReaderFeed(c->reader, (const char *)p, n) != REDIS_OK) {
            fail(c, "%s: out of memory", c->peer);
            return;
        }
        evbuffer_drain(in, n);
    }
    c->busy++;
    while (!c->dead) {
        void *rp = NULL;
        if (redisReaderGetReply(c->reader, &rp) != REDIS_OK) {
            fail(c, "%s: protocol error: %s%s", c->peer, c->reader->errstr, plaintext_hint(c));
            break;
        }
        if (!rp)
            break;
        redisReply *r = rp;
        if (c->phase == P_SETUP) {
            char why[512];
            if (!redis_setup_check(&c->setup, c->setup_done, r, why, sizeof why))
                fail(c, "%s: %s", c->peer, why);
            else if (++c->setup_done == c->setup.n)
                become_ready(c);
        } else {
            c->h.reply(c, r, c->arg);
        }
        freeReplyObject(r);
    }
    c->busy--;
    release(c);
}

/* Why the TLS bufferevent failed, from OpenSSL's errors or the socket's. */
static void tls_failure(aconn *c, short what)
{
    unsigned long code = bufferevent_get_openssl_error(c->bev), more;
    while ((more = bufferevent_get_openssl_error(c->bev)) != 0) {
    }
    int e = EVUTIL_SOCKET_ERROR();
    char why[400];
    if (code || c->phase == P_TLS)
        redis_tls_explain(c->ssl, code, why, sizeof why);
    else if (what & BEV_EVENT_EOF)
        snprintf(why, sizeof why, "connection closed by the server%s", redis_tls_hint(c->ssl));
    else
        snprintf(why, sizeof why, "%s%s", e ? evutil_socket_error_to_string(e) : "connection lost",
                 redis_tls_hint(c->ssl));
    fail(c, "%s: %s", c->peer, why);
}

static void on_event(struct bufferevent *bev, short what, void *arg);

/* TCP is up: TLS goes on the same socket, so that reading stays one copy. The plain
 * bufferevent lets go of the socket first (it would close it when freed). */
static void start_tls(aconn *c)
{
    evutil_socket_t fd = bufferevent_getfd(c->bev);
    bufferevent_setfd(c->bev, -1);
    bufferevent_free(c->bev);
    c->phase = P_TLS;
    c->bev = bufferevent_openssl_socket_new(c->base, fd, c->ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        evutil_closesocket(fd);
        fail(c, "%s: cannot start TLS: out of memory", c->peer);
        return;
    }
    c->ssl_in_bev = true;
    /* A server that closes without close_notify (killed, failed over) is a close. */
    bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    /* The set-up commands wait in the new output buffer until the handshake is done. */
    if (c->scratch.len && bufferevent_write(c->bev, c->scratch.data, c->scratch.len) != 0)
        fail(c, "%s: out of memory", c->peer);
    buf_reset(&c->scratch);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    aconn *c = arg;
    if (c->dead)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        if (c->phase == P_TCP && c->tls) {
            start_tls(c);
        } else {
            c->phase = c->setup.n ? P_SETUP : P_READY;
            if (c->phase == P_READY)
                become_ready(c);
        }
        return;
    }
    if (c->tls && c->phase != P_TCP) {
        tls_failure(c, what);
        return;
    }
    int dns = bufferevent_socket_get_dns_error(c->bev);
    int e = EVUTIL_SOCKET_ERROR();
    if (dns)
        fail(c, "%s: %s", c->peer, evutil_gai_strerror(dns));
    else if (what & BEV_EVENT_EOF)
        fail(c, "%s: connection closed by the server%s", c->peer, plaintext_hint(c));
    else
        fail(c, "%s: %s%s", c->peer, e ? evutil_socket_error_to_string(e) : "connection lost",
             c->phase == P_TCP ? "" : plaintext_hint(c));
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    aconn *c = arg;
    if (c->early_err[0])
        fail(c, "%s", c->early_err);
    else if (c->phase == P_TLS)
        fail(c, "%s: TLS handshake timed out after %ld ms (does the server speak TLS? a plaintext Redis "
                "cannot serve rediss://)",
             c->peer, c->timeout_ms);
    else
        fail(c, "%s: %s timed out after %ld ms", c->peer, c->phase == P_TCP ? "connect" : "set-up",
             c->timeout_ms);
}

aconn *aconn_open(struct event_base *base, struct evdns_base *dns, const char *host, int port,
                  const redis_tls *tls, const redis_url *setup_url, long timeout_ms,
                  const aconn_handlers *handlers, void *arg)
{
    aconn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base = base;
    c->tls = tls;
    c->h = *handlers;
    c->arg = arg;
    c->timeout_ms = timeout_ms;
    snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
    buf_init(&c->scratch, 0);
    char err[256];
    if (!(c->reader = redisReaderCreate()) || !(c->timer = evtimer_new(base, on_timeout, c)) ||
        (tls && !(c->ssl = redis_tls_session(tls, host, err, sizeof err))) ||
        !(c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)) ||
        (setup_url && !redis_setup_format(&c->setup, setup_url, &c->scratch))) {
        free_now(c);
        return NULL;
    }
    bufferevent_setcb(c->bev, on_read, NULL, on_event, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    /* Plaintext: the set-up goes out as soon as TCP is up. TLS: start_tls moves it. */
    if (!tls && c->scratch.len) {
        if (bufferevent_write(c->bev, c->scratch.data, c->scratch.len) != 0) {
            free_now(c);
            return NULL;
        }
        buf_reset(&c->scratch);
    }
    struct timeval tv = clock_tv_ms(timeout_ms);
    evtimer_add(c->timer, &tv);
    c->opening = true;
    if (bufferevent_socket_connect_hostname(c->bev, dns, AF_UNSPEC, host, port) != 0) {
        int e = bufferevent_socket_get_dns_error(c->bev);
        fail(c, "%s: %s", c->peer, e ? evutil_gai_strerror(e) : "cannot connect");
    }
    c->opening = false;
    return c;
}

bool aconn_send(aconn *c, int argc, const char **argv, const size_t *lens)
{
    if (c->dead || c->phase != P_READY)
        return false;
    buf_reset(&c->scratch);
    return redis_format(&c->scratch, argc, argv, lens) &&
           bufferevent_write(c->bev, c->scratch.data, c->scratch.len) == 0;
}
