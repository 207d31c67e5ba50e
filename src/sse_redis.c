/* The gateway's Redis subscriber on our own libevent connections (redis_aconn.c),
 * with a Pub/Sub dispatcher of our own (redis_pubsub.c; hiredis's async API aborts on
 * sharded Pub/Sub messages). Each node we subscribe on has its own connection and its
 * own queue of commands awaiting an answer, which is how a confirmation is told from
 * a message the server pushed; an unsubscribe the server decided (a slot that moved,
 * in a cluster) goes to handlers.unsubscribed all the same, so that the run layer
 * subscribes again. Today there is one node, the primary, found through the
 * sentinels when they are configured; a sentinel's +switch-master moves the
 * subscription to the new primary. A PING is the liveness check: a stalled server
 * (SIGSTOP keeps the socket open) is noticed by its timeout. */
#include "sse_redis.h"

#include "buf.h"
#include "clock.h"
#include "log.h"
#include "redis_aconn.h"
#include "redis_endpoint.h"
#include "redis_pubsub.h"

#include <event2/dns.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PING_PERIOD_MS 1000
#define WATCH_RETRY_MS 1000

/* One connection we subscribe on, with what it still owes us. */
typedef struct sub_node {
    aconn *c;
    redis_addr addr;
    ps_queue q;
    bool ping_outstanding;
    double ping_sent;
} sub_node;

enum sub_state { S_DOWN, S_DISCOVERING, S_CONNECTING, S_UP };

static struct {
    struct event_base *base;
    struct evdns_base *dns;
    const config *cfg;
    redis_endpoint *ep;
    sub_handlers h;
    enum sub_state state;
    sub_node node;
    struct event *timer; /* reconnect backoff, then the liveness ping */
    long backoff_ms;
    char last_err[700];  /* the last failure logged, so that a repeat is not */
    bool quiet;          /* the last failure was a repeat: so is the next success */
    redis_addr announced; /* the primary of the last connection logged */
    /* sentinel discovery: asking sentinel first + asked, the answers so far in errs */
    aconn *ask;
    int ask_first, asked;
    buf errs;
    /* the watch: +switch-master on one sentinel */
    aconn *watch;
    int watch_i;
    bool watch_addr_pending; /* its first reply is the primary's address */
    struct event *watch_timer;
} rs;

/* ---- connection life ------------------------------------------------------------- */

static void connect_start(void);
static void watch_start(void);

/* Logs a failure once: the same reason again (until the connection has stayed up a
 * while) goes to the debug log, and so does the reconnect after it. */
static void report(const char *why, const char *suffix)
{
    rs.quiet = !strcmp(why, rs.last_err);
    log_at(rs.quiet ? LOG_DEBUG : LOG_WARN, "redis (gateway): %s%s", why, suffix);
    snprintf(rs.last_err, sizeof rs.last_err, "%s", why);
}

static void schedule_reconnect(void)
{
    rs.state = S_DOWN;
    struct timeval tv = clock_tv_ms(clock_backoff(&rs.backoff_ms));
    evtimer_add(rs.timer, &tv);
}

static void arm_ping_timer(void)
{
    long ms = rs.cfg->redis_timeout_ms < PING_PERIOD_MS ? rs.cfg->redis_timeout_ms : PING_PERIOD_MS;
    struct timeval tv = clock_tv_ms(ms);
    evtimer_add(rs.timer, &tv);
}

/* The subscription connection is gone (c already closed or freed by its owner). */
static void node_lost(const char *why)
{
    bool was_up = rs.state == S_UP;
    rs.node.c = NULL;
    ps_queue_clear(&rs.node.q);
    rs.node.ping_outstanding = false;
    report(why, was_up ? "; serving runs from postgresql until it is back" : "");
    if (was_up)
        rs.h.down();
    schedule_reconnect();
}

/* Drops the subscription connection ourselves (timeout, refusal, a moved primary). */
static void node_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void node_fail(const char *fmt, ...)
{
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    aconn_close(rs.node.c);
    node_lost(why);
}

static bool send_ping(void)
{
    if (!ps_queue_push(&rs.node.q, PS_PING, NULL, 0))
        return false;
    if (!aconn_send(rs.node.c, 1, (const char *[]){"PING"}, NULL)) {
        ps_queue_drop_newest(&rs.node.q);
        return false;
    }
    rs.node.ping_outstanding = true;
    rs.node.ping_sent = clock_mono_s();
    return true;
}

static void node_ready(aconn *c, void *arg)
{
    (void)c;
    (void)arg;
    rs.state = S_UP;
    /* After a failure logged as a repeat, the reconnect is not news either, unless it
     * reached another primary. */
    bool moved = strcmp(rs.announced.host, rs.node.addr.host) || rs.announced.port != rs.node.addr.port;
    log_at(rs.quiet && !moved ? LOG_DEBUG : LOG_INFO, "redis (gateway): subscribing on the primary at %s (%s)",
           aconn_peer(rs.node.c), redis_endpoint_describe(rs.ep));
    rs.announced = rs.node.addr;
    if (!send_ping()) {
        node_fail("%s: out of memory", aconn_peer(rs.node.c));
        return;
    }
    rs.h.up();
    if (rs.state == S_UP)
        arm_ping_timer();
    if (rs.ep->nsentinels && !rs.watch && !evtimer_pending(rs.watch_timer, NULL))
        watch_start();
}

static void node_closed(aconn *c, const char *why, void *arg)
{
    (void)c;
    (void)arg;
    node_lost(why);
}

/* ---- the dispatcher -------------------------------------------------------------- */

static void node_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)c;
    (void)arg;
    sub_node *n = &rs.node;
    char why[600];
    ps_reply d = ps_dispatch(&n->q, r, why, sizeof why);
    switch (d.event) {
    case PS_MESSAGE: rs.h.message(d.channel, d.channel_len, d.payload, d.payload_len); break;
    case PS_SUBSCRIBED: rs.h.subscribed(d.channel, d.channel_len); break;
    case PS_UNSUBSCRIBED:
        if (d.server_initiated)
            log_debug("redis (gateway): the server ended the subscription to %.*s", (int)d.channel_len, d.channel);
        rs.h.unsubscribed(d.channel, d.channel_len);
        break;
    case PS_PONG: n->ping_outstanding = false; break;
    case PS_IGNORED: break;
    case PS_REFUSED:
        /* A refusal (an ACL without the channel, or without +ping): the connection
         * cannot carry what the runs need. It is made again after a backoff, and
         * meanwhile the runs are read from PostgreSQL. */
        node_fail("%s", why);
        break;
    case PS_OUT_OF_STEP: node_fail("out of step: %s", why); break;
    }
}

static bool send_sub(enum ps_kind kind, const char *channel, size_t n)
{
    if (rs.state != S_UP || !ps_queue_push(&rs.node.q, kind, channel, n))
        return false;
    const char *argv[] = {ps_kind_name(kind), channel};
    size_t lens[] = {strlen(argv[0]), n};
    if (!aconn_send(rs.node.c, 2, argv, lens)) {
        ps_queue_drop_newest(&rs.node.q); /* nothing went out */
        return false;
    }
    return true;
}

bool sub_subscribe(const char *channel, size_t n)
{
    return send_sub(PS_SUBSCRIBE, channel, n);
}

bool sub_unsubscribe(const char *channel, size_t n)
{
    return send_sub(PS_UNSUBSCRIBE, channel, n);
}

/* ---- finding the primary ------------------------------------------------------------ */

static void connect_node(const redis_addr *a)
{
    rs.state = S_CONNECTING;
    rs.node.addr = *a;
    static const aconn_handlers h = {node_ready, node_reply, node_closed};
    rs.node.c = aconn_open(rs.base, rs.dns, a->host, a->port, rs.ep->tls, &rs.ep->url, rs.cfg->redis_timeout_ms,
                           &h, NULL);
    if (!rs.node.c) {
        report("out of memory", "");
        schedule_reconnect();
    }
}

static void ask_next(void);

static void ask_ready(aconn *c, void *arg)
{
    (void)arg;
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", rs.ep->master};
    if (!aconn_send(c, 3, argv, NULL)) {
        aconn_close(c);
        rs.ask = NULL;
        rs.asked++;
        ask_next();
    }
}

static void ask_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)arg;
    redis_addr a;
    char why[300];
    bool ok = redis_sentinel_parse_addr(r, rs.ep->master, &a, why, sizeof why);
    if (!ok && !buf_printf(&rs.errs, "%ssentinel %s: %s", rs.errs.len ? "; " : "", aconn_peer(c), why))
        buf_reset(&rs.errs);
    aconn_close(c);
    rs.ask = NULL;
    if (ok) {
        atomic_store(&rs.ep->first_sentinel, (rs.ask_first + rs.asked) % rs.ep->nsentinels);
        connect_node(&a);
    } else {
        rs.asked++;
        ask_next();
    }
}

static void ask_closed(aconn *c, const char *why, void *arg)
{
    (void)c;
    (void)arg;
    rs.ask = NULL;
    if (!buf_printf(&rs.errs, "%ssentinel %s", rs.errs.len ? "; " : "", why))
        buf_reset(&rs.errs);
    rs.asked++;
    ask_next();
}

/* Asks the sentinels in turn, starting with the one that answered last time. */
static void ask_next(void)
{
    if (rs.asked == rs.ep->nsentinels) {
        char why[700];
        snprintf(why, sizeof why, "no sentinel named the primary '%s': %s", rs.ep->master,
                 rs.errs.data ? rs.errs.data : "");
        report(why, "");
        schedule_reconnect();
        return;
    }
    const redis_addr *s = &rs.ep->sentinels[(rs.ask_first + rs.asked) % rs.ep->nsentinels];
    static const aconn_handlers h = {ask_ready, ask_reply, ask_closed};
    rs.ask = aconn_open(rs.base, rs.dns, s->host, s->port, rs.ep->tls, NULL,
                        redis_endpoint_sentinel_timeout(rs.ep), &h, NULL);
    if (!rs.ask) {
        report("out of memory", "");
        schedule_reconnect();
    }
}

static void connect_start(void)
{
    if (rs.ep->nsentinels) {
        rs.state = S_DISCOVERING;
        rs.ask_first = atomic_load(&rs.ep->first_sentinel);
        rs.asked = 0;
        buf_reset(&rs.errs);
        ask_next();
    } else {
        redis_addr a;
        snprintf(a.host, sizeof a.host, "%s", rs.ep->url.host);
        a.port = rs.ep->url.port;
        connect_node(&a);
    }
}

/* ---- the watch on the sentinels ------------------------------------------------------ */

/* The primary is elsewhere now: move the subscription there. */
static void primary_moved(const redis_addr *to)
{
    if (rs.state == S_DOWN || rs.state == S_DISCOVERING ||
        (!strcmp(to->host, rs.node.addr.host) && to->port == rs.node.addr.port))
        return; /* the next discovery asks the sentinels, who know */
    if (rs.state == S_CONNECTING) {
        /* Still connecting to the old primary (it may answer, and say master, until
         * the sentinels demote it): go to the new one instead. */
        aconn_close(rs.node.c);
        rs.node.c = NULL;
        connect_node(to);
        return;
    }
    char where[300];
    snprintf(where, sizeof where, "%s:%d", to->host, to->port);
    log_info("redis (gateway): the sentinels name a new primary at %s", where);
    rs.last_err[0] = '\0';
    node_fail("the primary moved to %s", where);
    /* No backoff: the new primary is known to be up. */
    evtimer_del(rs.timer);
    rs.backoff_ms = 0;
    struct timeval now = {0, 0};
    evtimer_add(rs.timer, &now);
}

static void watch_ready(aconn *c, void *arg)
{
    (void)arg;
    const char *ask[] = {"SENTINEL", "get-master-addr-by-name", rs.ep->master};
    const char *sub[] = {"SUBSCRIBE", SENTINEL_SWITCH_CHANNEL};
    rs.watch_addr_pending = true;
    if (!aconn_send(c, 3, ask, NULL) || !aconn_send(c, 2, sub, NULL)) {
        aconn_close(c);
        rs.watch = NULL;
        struct timeval tv = clock_tv_ms(WATCH_RETRY_MS);
        evtimer_add(rs.watch_timer, &tv);
    }
}

static void watch_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)c;
    (void)arg;
    redis_addr to;
    if (rs.watch_addr_pending) {
        /* A switch made while nobody watched shows here. */
        char why[300];
        rs.watch_addr_pending = false;
        if (redis_sentinel_parse_addr(r, rs.ep->master, &to, why, sizeof why))
            primary_moved(&to);
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING &&
        !strcmp(r->element[0]->str, "message") && r->element[2]->type == REDIS_REPLY_STRING &&
        redis_sentinel_parse_switch(r->element[2]->str, r->element[2]->len, rs.ep->master, &to))
        primary_moved(&to);
}

static void watch_closed(aconn *c, const char *why, void *arg)
{
    (void)c;
    (void)arg;
    log_debug("redis (gateway): sentinel watch: %s", why);
    rs.watch = NULL;
    rs.watch_i++;
    struct timeval tv = clock_tv_ms(WATCH_RETRY_MS);
    evtimer_add(rs.watch_timer, &tv);
}

static void watch_start(void)
{
    const redis_addr *s = &rs.ep->sentinels[rs.watch_i % rs.ep->nsentinels];
    static const aconn_handlers h = {watch_ready, watch_reply, watch_closed};
    rs.watch = aconn_open(rs.base, rs.dns, s->host, s->port, rs.ep->tls, NULL,
                          redis_endpoint_sentinel_timeout(rs.ep), &h, NULL);
    if (!rs.watch) {
        struct timeval tv = clock_tv_ms(WATCH_RETRY_MS);
        evtimer_add(rs.watch_timer, &tv);
    }
}

static void on_watch_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!rs.watch)
        watch_start();
}

/* ---- timers and life ----------------------------------------------------------------- */

/* One timer: the reconnect backoff while down, the liveness ping while up. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (rs.state == S_DOWN) {
        connect_start();
        return;
    }
    if (rs.state != S_UP)
        return; /* connecting: the connection's own timeout bounds it */
    double waited = clock_mono_s() - rs.node.ping_sent;
    if (rs.node.ping_outstanding && waited * 1000 >= (double)rs.cfg->redis_timeout_ms) {
        /* Stalled (e.g. SIGSTOP): the socket stays open, only a timeout notices. */
        node_fail("%s: timed out", aconn_peer(rs.node.c));
        return;
    }
    if (!rs.node.ping_outstanding) {
        /* Up and answering for a ping period: a failure from now on is news, and
         * the reconnect after it starts from the shortest backoff. */
        rs.backoff_ms = 0;
        rs.last_err[0] = '\0';
        if (!send_ping()) {
            node_fail("%s: out of memory", aconn_peer(rs.node.c));
            return;
        }
    }
    arm_ping_timer();
}

bool sub_up(void)
{
    return rs.state == S_UP;
}

bool sub_healthy(long stale_ms)
{
    return rs.state == S_UP &&
           !(rs.node.ping_outstanding && (clock_mono_s() - rs.node.ping_sent) * 1000 > (double)stale_ms);
}

bool sub_start(struct event_base *base, const config *cfg, const sub_handlers *handlers)
{
    memset(&rs, 0, sizeof rs);
    rs.base = base;
    rs.cfg = cfg;
    rs.h = *handlers;
    buf_init(&rs.errs, 4096);
    char err[512];
    if (!(rs.ep = redis_endpoint_new(cfg, err, sizeof err))) {
        log_error("redis: %s", err);
        return false;
    }
    /* Names are resolved without blocking the loop; without a resolver configuration
     * libevent falls back to the system's (blocking) one. */
    rs.dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    rs.timer = evtimer_new(base, on_timer, NULL);
    rs.watch_timer = evtimer_new(base, on_watch_timer, NULL);
    if (!rs.timer || !rs.watch_timer)
        return false;
    connect_start();
    return true;
}

void sub_stop(void)
{
    aconn_close(rs.node.c);
    aconn_close(rs.ask);
    aconn_close(rs.watch);
    ps_queue_clear(&rs.node.q);
    if (rs.timer)
        event_free(rs.timer);
    if (rs.watch_timer)
        event_free(rs.watch_timer);
    if (rs.dns)
        evdns_base_free(rs.dns, 0);
    redis_endpoint_free(rs.ep);
    buf_free(&rs.errs);
    memset(&rs, 0, sizeof rs);
}
