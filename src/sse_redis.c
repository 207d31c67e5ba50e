/* The gateway's Redis subscriber on our own libevent connections (redis_aconn.c),
 * with a Pub/Sub dispatcher of our own (redis_pubsub.c; hiredis's async API aborts on
 * sharded Pub/Sub messages). Each node we subscribe on has its own connection and its
 * own queue of commands awaiting an answer, which is how a confirmation is told from
 * a message the server pushed; an unsubscribe the server decided (a slot that moved,
 * in a cluster) goes to handlers.unsubscribed all the same, so that the run layer
 * subscribes again. There is one node, the primary, found through the sentinels
 * when they are configured (a sentinel's +switch-master moves the subscription to
 * the new primary); or, with --redis-cluster and sharded Pub/Sub, every primary of
 * the slot map, each channel subscribed (SSUBSCRIBE) on the one owning its slot. The
 * nodes are up together or down together: a lost node, a redirection (MOVED, ASK: a
 * slot moved; but a MOVED to another node we are subscribed on moves only that
 * channel) or a map with a slot nobody serves (a failover under way) takes them all
 * down, so that the run layer reads every run from PostgreSQL until a fresh map is
 * connected, then subscribes everything again and fills the gaps from PostgreSQL. A
 * PING is the liveness check: a stalled server (SIGSTOP keeps the socket open) is
 * noticed by its timeout. */
#include "sse_redis.h"

#include "buf.h"
#include "clock.h"
#include "log.h"
#include "redis_aconn.h"
#include "redis_cluster.h"
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
    bool ready;
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
    sub_node *nodes;     /* one, or every primary of the cluster's map (same order) */
    int nnodes, nready;
    bool sharded;        /* SSUBSCRIBE */
    bool cluster;        /* --redis-cluster */
    cluster_map *map;    /* sharded cluster: the slot map of the current nodes */
    aconn *mapq;         /* the node asked for the map */
    int map_asked;       /* nodes asked so far: the known primaries, then the seeds */
    int map_known;       /* known primaries when the asking began */
    redis_addr map_from[CLUSTER_MAX_NODES + REDIS_MAX_CLUSTER_SEEDS];
    bool map_slots;      /* CLUSTER SHARDS unknown there: CLUSTER SLOTS asked */
    int seed_next;       /* global Pub/Sub in a cluster: the seed to subscribe on */
    struct event *timer; /* reconnect backoff, then the liveness ping */
    long backoff_ms;
    char last_err[700];  /* the last failure logged, so that a repeat is not */
    bool quiet;          /* the last failure was a repeat: so is the next success */
    int moved_one;       /* channels moved one by one since the last ping period */
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
    /* the deadline of the discovery request in flight (the map, or a sentinel's
     * answer): aconn bounds only the connection's set-up */
    struct event *disc_timer;
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

/* Every node's connection is dropped: one was lost (n, its connection already closed
 * or freed by its owner), and the nodes are up or down together. */
static void node_lost(sub_node *n, const char *why)
{
    bool was_up = rs.state == S_UP;
    n->c = NULL;
    for (int i = 0; i < rs.nnodes; i++) {
        aconn_close(rs.nodes[i].c);
        rs.nodes[i].c = NULL;
        rs.nodes[i].ready = false;
        rs.nodes[i].ping_outstanding = false;
        ps_queue_clear(&rs.nodes[i].q);
    }
    rs.nready = 0;
    report(why, was_up ? "; serving runs from postgresql until it is back" : "");
    if (was_up)
        rs.h.down();
    schedule_reconnect();
}

/* Drops the subscription connections ourselves (timeout, refusal, a moved primary). */
static void node_fail(sub_node *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void node_fail(sub_node *n, const char *fmt, ...)
{
    char why[700];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    aconn_close(n->c);
    node_lost(n, why);
}

static bool send_ping(sub_node *n)
{
    if (!ps_queue_push(&n->q, PS_PING, NULL, 0))
        return false;
    if (!aconn_send(n->c, 1, (const char *[]){"PING"}, NULL)) {
        ps_queue_drop_newest(&n->q);
        return false;
    }
    n->ping_outstanding = true;
    n->ping_sent = clock_mono_s();
    return true;
}

static void node_ready(aconn *c, void *arg)
{
    (void)c;
    sub_node *n = arg;
    n->ready = true;
    if (++rs.nready < rs.nnodes)
        return; /* up when every node is */
    rs.state = S_UP;
    /* After a failure logged as a repeat, the reconnect is not news either, unless it
     * reached another primary. */
    sub_node *first = &rs.nodes[0];
    bool moved = strcmp(rs.announced.host, first->addr.host) || rs.announced.port != first->addr.port;
    if (rs.map)
        log_at(rs.quiet && !moved ? LOG_DEBUG : LOG_INFO,
               "redis (gateway): subscribing on the %d primaries of the cluster (%s, sharded Pub/Sub)", rs.nnodes,
               redis_endpoint_describe(rs.ep));
    else
        log_at(rs.quiet && !moved ? LOG_DEBUG : LOG_INFO, "redis (gateway): subscribing on the primary at %s (%s)",
               aconn_peer(first->c), redis_endpoint_describe(rs.ep));
    rs.announced = first->addr;
    for (int i = 0; i < rs.nnodes; i++)
        if (!send_ping(&rs.nodes[i])) {
            node_fail(&rs.nodes[i], "%s: out of memory", aconn_peer(rs.nodes[i].c));
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
    node_lost(arg, why);
}

/* ---- the dispatcher -------------------------------------------------------------- */

/* Limits the channels moved one by one (moved_one) between two ping periods: a map
 * that sends a channel back and forth falls back to reading the whole map, with
 * backoff. */
#define MOVED_ONE_MAX 10000

/* A sharded subscription refused with MOVED to another node we are connected to (a
 * slot moved, as after a reshard, where the source ends the subscriptions and the
 * channel is subscribed again on our stale map): that slot is updated and the run
 * layer subscribes the channel again, now on its new node, filling the gap from
 * PostgreSQL as after any subscription, while every other run stays subscribed.
 * False when it cannot be handled so (an unknown node: the map is read again). */
static bool moved_one(const sub_node *n, const char *channel, size_t len, const redisReply *r)
{
    int slot;
    redis_addr to;
    if (!rs.sharded || !rs.map || !channel || ++rs.moved_one > MOVED_ONE_MAX ||
        cluster_parse_redirect(r->str, &n->addr, &slot, &to) != REDIRECT_MOVED || slot < 0 || !to.port ||
        cluster_key_slot(channel, len) != slot)
        return false;
    for (int i = 0; i < rs.nnodes; i++)
        if (&rs.nodes[i] != n && rs.nodes[i].ready && rs.nodes[i].addr.port == to.port &&
            !strcmp(rs.nodes[i].addr.host, to.host)) {
            rs.map->owner[slot] = (uint16_t)i;
            log_debug("redis (gateway): slot %d moved to %s:%d: %.*s subscribed there", slot, to.host, to.port,
                      (int)len, channel);
            rs.h.unsubscribed(channel, len);
            return true;
        }
    return false;
}

static void node_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)c;
    sub_node *n = arg;
    char why[600];
    /* The channel a refusal is about (the dispatcher forgets the command). */
    char *refused = NULL;
    size_t refused_len = 0;
    const ps_pending *oldest = ps_queue_oldest(&n->q);
    if (r->type == REDIS_REPLY_ERROR && oldest && oldest->kind == PS_SSUBSCRIBE && oldest->channel &&
        (refused = malloc(oldest->len ? oldest->len : 1))) {
        memcpy(refused, oldest->channel, oldest->len);
        refused_len = oldest->len;
    }
    ps_reply d = ps_dispatch(&n->q, r, why, sizeof why);
    int slot;
    redis_addr to;
    switch (d.event) {
    case PS_MESSAGE: rs.h.message(d.channel, d.channel_len, d.payload, d.payload_len); break;
    case PS_SUBSCRIBED: rs.h.subscribed(d.channel, d.channel_len); break;
    case PS_UNSUBSCRIBED:
        /* The server's own (a slot that moved, a primary demoted): the run layer
         * subscribes again, on the node the map names, or after a MOVED on a fresh
         * map. */
        if (d.server_initiated)
            log_debug("redis (gateway): the server ended the subscription to %.*s", (int)d.channel_len, d.channel);
        rs.h.unsubscribed(d.channel, d.channel_len);
        break;
    case PS_PONG: n->ping_outstanding = false; break;
    case PS_IGNORED: break;
    case PS_REFUSED:
        if (rs.state == S_UP && moved_one(n, refused, refused_len, r))
            break;
        if (rs.cluster && (cluster_parse_redirect(r->str, &n->addr, &slot, &to) != REDIRECT_NONE ||
                           cluster_error_is_retry(r->str))) {
            /* The map is stale (a slot moved, a failover): read it again, at once
             * after a steady spell; redirections that keep coming (a map that does
             * not settle, TRYAGAIN, CLUSTERDOWN) keep the backoff growing instead
             * of a tight loop. */
            bool steady = rs.backoff_ms == 0;
            if (steady)
                rs.last_err[0] = '\0'; /* news: logged; a repeat goes to the debug log */
            node_fail(n, "%s: %s; reading the slot map again", aconn_peer(n->c), why);
            if (steady) {
                evtimer_del(rs.timer);
                struct timeval now = {0, 0};
                evtimer_add(rs.timer, &now);
            }
            break;
        }
        /* A refusal (an ACL without the channel, or without +ping): the connection
         * cannot carry what the runs need. It is made again after a backoff, and
         * meanwhile the runs are read from PostgreSQL. */
        node_fail(n, "%s", why);
        break;
    case PS_OUT_OF_STEP: node_fail(n, "out of step: %s", why); break;
    }
    free(refused);
}

/* The node a channel is subscribed on: the one owning its slot in a sharded cluster. */
static sub_node *node_of(const char *channel, size_t len)
{
    if (!rs.map)
        return rs.nnodes ? &rs.nodes[0] : NULL;
    int owner = rs.map->owner[cluster_key_slot(channel, len)];
    return owner == CLUSTER_NO_NODE || owner >= rs.nnodes ? NULL : &rs.nodes[owner];
}

static bool send_sub(enum ps_kind kind, const char *channel, size_t len)
{
    sub_node *n = node_of(channel, len);
    if (rs.state != S_UP || !n || !ps_queue_push(&n->q, kind, channel, len))
        return false;
    const char *argv[] = {ps_kind_name(kind), channel};
    size_t lens[] = {strlen(argv[0]), len};
    if (!aconn_send(n->c, 2, argv, lens)) {
        ps_queue_drop_newest(&n->q); /* nothing went out */
        return false;
    }
    return true;
}

bool sub_subscribe(const char *channel, size_t n)
{
    return send_sub(rs.sharded ? PS_SSUBSCRIBE : PS_SUBSCRIBE, channel, n);
}

bool sub_unsubscribe(const char *channel, size_t n)
{
    return send_sub(rs.sharded ? PS_SUNSUBSCRIBE : PS_UNSUBSCRIBE, channel, n);
}

/* ---- finding the primary ------------------------------------------------------------ */

/* Connects node i to a (the nodes are counted ready as they come up). False when out
 * of memory (then every node is down again). */
static bool connect_node(int i, const redis_addr *a)
{
    rs.state = S_CONNECTING;
    sub_node *n = &rs.nodes[i];
    n->addr = *a;
    n->ready = false;
    static const aconn_handlers h = {node_ready, node_reply, node_closed};
    /* Global Pub/Sub in a cluster: PUBLISH reaches replicas too, so a seed that a
     * failover demoted still serves. */
    redis_url url = rs.ep->url;
    url.any_role = rs.cluster && !rs.sharded;
    n->c = aconn_open(rs.base, rs.dns, a->host, a->port, rs.ep->tls, &url, rs.cfg->redis_timeout_ms, &h, n);
    if (!n->c) {
        node_lost(n, "out of memory");
        return false;
    }
    return true;
}

/* One node: the primary (the URL's, a sentinel's answer or, for global Pub/Sub in a
 * cluster, a seed: PUBLISH reaches every node). */
static void connect_one(const redis_addr *a)
{
    rs.nnodes = 1;
    rs.nready = 0;
    (void)connect_node(0, a);
}

/* ---- the cluster's slot map ---------------------------------------------------------- */

static void map_next(void);

static void disc_arm(long ms)
{
    struct timeval tv = clock_tv_ms(ms);
    evtimer_add(rs.disc_timer, &tv);
}

static void map_ready(aconn *c, void *arg)
{
    (void)arg;
    const char *argv[] = {"CLUSTER", rs.map_slots ? "SLOTS" : "SHARDS"};
    if (!aconn_send(c, 2, argv, NULL)) {
        aconn_close(c);
        rs.mapq = NULL;
        rs.map_asked++;
        map_next();
        return;
    }
    disc_arm(rs.cfg->redis_timeout_ms);
}

/* The map is usable when every slot has a primary: otherwise a failover is under way
 * and the runs of that shard could not be subscribed. */
static bool map_complete(const cluster_map *m, char *why, size_t cap)
{
    for (int s = 0; s < CLUSTER_SLOTS; s++)
        if (m->owner[s] == CLUSTER_NO_NODE) {
            snprintf(why, cap, "slot %d has no primary (a failover under way?)", s);
            return false;
        }
    return true;
}

static void map_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)arg;
    const redis_addr *asked = &rs.map_from[rs.map_asked];
    evtimer_del(rs.disc_timer);
    if (r->type == REDIS_REPLY_ERROR && !rs.map_slots && strstr(r->str, "nknown subcommand")) {
        rs.map_slots = true; /* before Redis 7 */
        map_ready(c, NULL);
        return;
    }
    cluster_map *m = malloc(sizeof *m);
    char why[300] = "out of memory";
    bool ok = m &&
              (rs.map_slots ? cluster_parse_slots(r, asked, m, why, sizeof why)
                            : cluster_parse_shards(r, asked, rs.ep->tls != NULL, m, why, sizeof why)) &&
              map_complete(m, why, sizeof why);
    aconn_close(c);
    rs.mapq = NULL;
    if (!ok) {
        free(m);
        if (!buf_printf(&rs.errs, "%s%s:%d: %s", rs.errs.len ? "; " : "", asked->host, asked->port, why))
            buf_reset(&rs.errs);
        rs.map_asked++;
        map_next();
        return;
    }
    free(rs.map);
    rs.map = m;
    sub_node *nodes = realloc(rs.nodes, (size_t)m->nnodes * sizeof *nodes);
    if (!nodes) {
        report("out of memory", "");
        schedule_reconnect();
        return;
    }
    rs.nodes = nodes;
    memset(rs.nodes, 0, (size_t)m->nnodes * sizeof *nodes);
    rs.nnodes = m->nnodes;
    rs.nready = 0;
    for (int i = 0; i < m->nnodes; i++)
        if (!connect_node(i, &m->node[i]))
            return;
}

static void map_closed(aconn *c, const char *why, void *arg)
{
    (void)c;
    (void)arg;
    evtimer_del(rs.disc_timer);
    rs.mapq = NULL;
    if (!buf_printf(&rs.errs, "%s%s", rs.errs.len ? "; " : "", why))
        buf_reset(&rs.errs);
    rs.map_asked++;
    map_next();
}

/* Asks the primaries of the last map, then the seeds, in turn. */
static void map_next(void)
{
    if (rs.map_asked == rs.map_known) {
        char why[700];
        snprintf(why, sizeof why, "no cluster node gave a usable slot map: %s", rs.errs.data ? rs.errs.data : "");
        report(why, "");
        schedule_reconnect();
        return;
    }
    const redis_addr *a = &rs.map_from[rs.map_asked];
    rs.map_slots = false;
    static const aconn_handlers h = {map_ready, map_reply, map_closed};
    /* Any node knows the map, a replica too (seeds that a failover demoted). */
    redis_url url = rs.ep->url;
    url.any_role = true;
    rs.mapq = aconn_open(rs.base, rs.dns, a->host, a->port, rs.ep->tls, &url, rs.cfg->redis_timeout_ms, &h, NULL);
    if (!rs.mapq) {
        report("out of memory", "");
        schedule_reconnect();
    }
}

static void map_start(void)
{
    rs.state = S_DISCOVERING;
    rs.map_known = 0;
    for (int i = 0; rs.map && i < rs.map->nnodes; i++)
        rs.map_from[rs.map_known++] = rs.map->node[i];
    for (int i = 0; i < rs.cfg->ncluster_seeds; i++)
        rs.map_from[rs.map_known++] = rs.cfg->cluster_seeds[i];
    rs.map_asked = 0;
    buf_reset(&rs.errs);
    map_next();
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
        return;
    }
    disc_arm(redis_endpoint_sentinel_timeout(rs.ep));
}

static void ask_reply(aconn *c, const redisReply *r, void *arg)
{
    (void)arg;
    redis_addr a;
    char why[300];
    evtimer_del(rs.disc_timer);
    bool ok = redis_sentinel_parse_addr(r, rs.ep->master, &a, why, sizeof why);
    if (!ok && !buf_printf(&rs.errs, "%ssentinel %s: %s", rs.errs.len ? "; " : "", aconn_peer(c), why))
        buf_reset(&rs.errs);
    aconn_close(c);
    rs.ask = NULL;
    if (ok) {
        atomic_store(&rs.ep->first_sentinel, (rs.ask_first + rs.asked) % rs.ep->nsentinels);
        connect_one(&a);
    } else {
        rs.asked++;
        ask_next();
    }
}

static void ask_closed(aconn *c, const char *why, void *arg)
{
    (void)c;
    (void)arg;
    evtimer_del(rs.disc_timer);
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

/* A discovery request went unanswered (a node that accepts and sets up a
 * connection but never answers CLUSTER SHARDS, a stalled sentinel): the next node. */
static void on_disc_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (rs.mapq) {
        const redis_addr *a = &rs.map_from[rs.map_asked];
        if (!buf_printf(&rs.errs, "%s%s:%d: CLUSTER %s: no answer within %ld ms", rs.errs.len ? "; " : "", a->host,
                        a->port, rs.map_slots ? "SLOTS" : "SHARDS", rs.cfg->redis_timeout_ms))
            buf_reset(&rs.errs);
        aconn_close(rs.mapq);
        rs.mapq = NULL;
        rs.map_asked++;
        map_next();
    } else if (rs.ask) {
        if (!buf_printf(&rs.errs, "%ssentinel %s: no answer within %ld ms", rs.errs.len ? "; " : "",
                        aconn_peer(rs.ask), redis_endpoint_sentinel_timeout(rs.ep)))
            buf_reset(&rs.errs);
        aconn_close(rs.ask);
        rs.ask = NULL;
        rs.asked++;
        ask_next();
    }
}

static void connect_start(void)
{
    if (rs.cluster && rs.sharded) {
        map_start();
    } else if (rs.cluster) {
        /* Global Pub/Sub: any primary sees every message; the seeds in turn. */
        connect_one(&rs.cfg->cluster_seeds[rs.seed_next++ % rs.cfg->ncluster_seeds]);
    } else if (rs.ep->nsentinels) {
        rs.state = S_DISCOVERING;
        rs.ask_first = atomic_load(&rs.ep->first_sentinel);
        rs.asked = 0;
        buf_reset(&rs.errs);
        ask_next();
    } else {
        redis_addr a;
        snprintf(a.host, sizeof a.host, "%s", rs.ep->url.host);
        a.port = rs.ep->url.port;
        connect_one(&a);
    }
}

/* ---- the watch on the sentinels ------------------------------------------------------ */

/* The primary is elsewhere now: move the subscription there. */
static void primary_moved(const redis_addr *to)
{
    sub_node *n = &rs.nodes[0];
    if (rs.state == S_DOWN || rs.state == S_DISCOVERING || (!strcmp(to->host, n->addr.host) && to->port == n->addr.port))
        return; /* the next discovery asks the sentinels, who know */
    if (rs.state == S_CONNECTING) {
        /* Still connecting to the old primary (it may answer, and say master, until
         * the sentinels demote it): go to the new one instead. */
        aconn_close(n->c);
        n->c = NULL;
        connect_one(to);
        return;
    }
    char where[300];
    snprintf(where, sizeof where, "%s:%d", to->host, to->port);
    log_info("redis (gateway): the sentinels name a new primary at %s", where);
    rs.last_err[0] = '\0';
    node_fail(n, "the primary moved to %s", where);
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
    bool all_answered = true;
    for (int i = 0; i < rs.nnodes; i++) {
        sub_node *n = &rs.nodes[i];
        double waited = clock_mono_s() - n->ping_sent;
        if (n->ping_outstanding && waited * 1000 >= (double)rs.cfg->redis_timeout_ms) {
            /* Stalled (e.g. SIGSTOP): the socket stays open, only a timeout notices. */
            node_fail(n, "%s: timed out", aconn_peer(n->c));
            return;
        }
        all_answered &= !n->ping_outstanding;
    }
    if (all_answered) {
        /* Up and answering for a ping period: a failure from now on is news, and
         * the reconnect after it starts from the shortest backoff. */
        rs.backoff_ms = 0;
        rs.last_err[0] = '\0';
        rs.moved_one = 0;
    }
    for (int i = 0; i < rs.nnodes; i++)
        if (!rs.nodes[i].ping_outstanding && !send_ping(&rs.nodes[i])) {
            node_fail(&rs.nodes[i], "%s: out of memory", aconn_peer(rs.nodes[i].c));
            return;
        }
    arm_ping_timer();
}

bool sub_up(void)
{
    return rs.state == S_UP;
}

bool sub_healthy(long stale_ms)
{
    if (rs.state != S_UP)
        return false;
    for (int i = 0; i < rs.nnodes; i++)
        if (rs.nodes[i].ping_outstanding && (clock_mono_s() - rs.nodes[i].ping_sent) * 1000 > (double)stale_ms)
            return false;
    return true;
}

bool sub_start(struct event_base *base, const config *cfg, const sub_handlers *handlers)
{
    memset(&rs, 0, sizeof rs);
    rs.base = base;
    rs.cfg = cfg;
    rs.h = *handlers;
    buf_init(&rs.errs, 4096);
    rs.cluster = cfg->redis_cluster != NULL;
    rs.sharded = config_redis_sharded(cfg);
    if (!(rs.nodes = calloc(1, sizeof *rs.nodes)))
        return false;
    rs.nnodes = 1;
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
    rs.disc_timer = evtimer_new(base, on_disc_timer, NULL);
    if (!rs.timer || !rs.watch_timer || !rs.disc_timer)
        return false;
    connect_start();
    return true;
}

void sub_stop(void)
{
    for (int i = 0; i < rs.nnodes; i++) {
        aconn_close(rs.nodes[i].c);
        ps_queue_clear(&rs.nodes[i].q);
    }
    free(rs.nodes);
    free(rs.map);
    aconn_close(rs.mapq);
    aconn_close(rs.ask);
    aconn_close(rs.watch);
    if (rs.timer)
        event_free(rs.timer);
    if (rs.watch_timer)
        event_free(rs.watch_timer);
    if (rs.disc_timer)
        event_free(rs.disc_timer);
    if (rs.dns)
        evdns_base_free(rs.dns, 0);
    redis_endpoint_free(rs.ep);
    buf_free(&rs.errs);
    memset(&rs, 0, sizeof rs);
}
