/* Redis Cluster routing: slots, the slot map, redirections, one connection per
 * primary. CRC16 is written here because hiredis 0.14 keeps its copy private (it is
 * eight lines; the cluster specification gives the polynomial and test vector). */
#include "redis_cluster.h"

#include "clock.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- slots ------------------------------------------------------------------------- */

/* CRC16-CCITT (XMODEM): polynomial 0x1021, initial 0, as the cluster specification
 * defines it ("123456789" -> 0x31C3). */
static uint16_t crc16(const char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)((unsigned char)p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (uint16_t)(crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1);
    }
    return crc;
}

int cluster_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open) {
        size_t rest = len - (size_t)(open - key) - 1;
        const char *close = memchr(open + 1, '}', rest);
        if (close && close > open + 1)
            return crc16(open + 1, (size_t)(close - open - 1)) & (CLUSTER_SLOTS - 1);
    }
    return crc16(key, len) & (CLUSTER_SLOTS - 1);
}

/* For each slot, a number whose decimal text hashes to it: a hash tag for a run id
 * that braces of its own keep from being written as {run:<id>}. Filled once. */
static uint32_t slot_tag[CLUSTER_SLOTS];
static pthread_once_t slot_tag_once = PTHREAD_ONCE_INIT;

static void slot_tag_fill(void)
{
    int left = CLUSTER_SLOTS;
    static bool have[CLUSTER_SLOTS];
    for (uint32_t n = 0; left > 0; n++) {
        char t[16];
        int len = snprintf(t, sizeof t, "%u", n);
        int s = crc16(t, (size_t)len) & (CLUSTER_SLOTS - 1);
        if (!have[s]) {
            have[s] = true;
            slot_tag[s] = n;
            left--;
        }
    }
}

bool cluster_mark_key(buf *out, const char *epoch, const char *run_id, size_t len)
{
    if (!memchr(run_id, '{', len) && !memchr(run_id, '}', len))
        return buf_printf(out, "outboxd:%s:mark:{run:", epoch) && buf_append(out, run_id, len) &&
               buf_puts(out, "}");
    /* The channel's own slot, whatever its braces make of it, as a tag of digits
     * after the prefix (so that ACL key patterns such as ~outboxd:* still match), or
     * first should the epoch hold a brace of its own (ours never does). */
    buf ch;
    buf_init(&ch, 0);
    bool ok = buf_puts(&ch, "run:") && buf_append(&ch, run_id, len);
    int slot = ok ? cluster_key_slot(ch.data, ch.len) : 0;
    buf_free(&ch);
    pthread_once(&slot_tag_once, slot_tag_fill);
    if (strpbrk(epoch, "{}"))
        return ok && buf_printf(out, "{%u}outboxd:%s:mark:run:", slot_tag[slot], epoch) &&
               buf_append(out, run_id, len);
    return ok && buf_printf(out, "outboxd:%s:mark:{%u}run:", epoch, slot_tag[slot]) && buf_append(out, run_id, len);
}

/* ---- the map ------------------------------------------------------------------------- */

void cluster_map_clear(cluster_map *m)
{
    m->nnodes = 0;
    for (int i = 0; i < CLUSTER_SLOTS; i++)
        m->owner[i] = CLUSTER_NO_NODE;
}

const redis_addr *cluster_map_node(const cluster_map *m, int slot)
{
    if (slot < 0 || slot >= CLUSTER_SLOTS || m->owner[slot] == CLUSTER_NO_NODE)
        return NULL;
    return &m->node[m->owner[slot]];
}

int cluster_map_served(const cluster_map *m)
{
    int n = 0;
    for (int s = 0; s < CLUSTER_SLOTS; s++)
        n += m->owner[s] != CLUSTER_NO_NODE;
    return n;
}

/* The index of host:port among m's nodes, added if new; -1 when full. */
static int map_node(cluster_map *m, const char *host, int port)
{
    for (int i = 0; i < m->nnodes; i++)
        if (m->node[i].port == port && !strcmp(m->node[i].host, host))
            return i;
    if (m->nnodes == CLUSTER_MAX_NODES)
        return -1;
    redis_addr *a = &m->node[m->nnodes];
    snprintf(a->host, sizeof a->host, "%s", host);
    a->port = port;
    return m->nnodes++;
}

/* Gives slots lo..hi to node; false (with err) on a range out of bounds or a slot
 * already given, which no consistent reply has. */
static bool map_assign(cluster_map *m, long long lo, long long hi, int node, char *err, size_t errlen)
{
    if (lo < 0 || hi >= CLUSTER_SLOTS || lo > hi) {
        snprintf(err, errlen, "slot range %lld-%lld is out of bounds", lo, hi);
        return false;
    }
    for (long long s = lo; s <= hi; s++) {
        if (m->owner[s] != CLUSTER_NO_NODE) {
            snprintf(err, errlen, "slot %lld is claimed twice", s);
            return false;
        }
        m->owner[s] = (uint16_t)node;
    }
    return true;
}

/* A host as a node names itself: printable, no spaces, fits. "" is the node asked;
 * "?" (or nil) means unknown. */
static bool usable_host(const redisReply *h)
{
    if (!h || h->type != REDIS_REPLY_STRING || h->len == 0 || h->len >= sizeof((redis_addr *)0)->host)
        return false;
    if (h->len == 1 && h->str[0] == '?')
        return false;
    for (size_t i = 0; i < h->len; i++)
        if ((unsigned char)h->str[i] <= ' ' || (unsigned char)h->str[i] >= 0x7f)
            return false;
    return true;
}

static bool is_port(long long p)
{
    return p >= 1 && p <= 65535;
}

/* The value of key in a reply that is a flat list of key, value pairs; NULL if absent. */
static const redisReply *field(const redisReply *r, const char *key)
{
    for (size_t i = 0; i + 1 < r->elements; i += 2)
        if (r->element[i]->type == REDIS_REPLY_STRING && !strcmp(r->element[i]->str, key))
            return r->element[i + 1];
    return NULL;
}

static bool is_pairs(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ARRAY && r->elements % 2 == 0;
}

static bool str_is(const redisReply *r, const char *s)
{
    return r && r->type == REDIS_REPLY_STRING && !strcmp(r->str, s);
}

/* The primary of one shard's node list: role master and health online. NULL when it
 * has none (failed, loading, or only replicas while a failover is under way). */
static const redisReply *shard_primary(const redisReply *nodes)
{
    for (size_t i = 0; i < nodes->elements; i++) {
        const redisReply *n = nodes->element[i];
        if (is_pairs(n) && str_is(field(n, "role"), "master") && str_is(field(n, "health"), "online"))
            return n;
    }
    return NULL;
}

/* host:port of a shard's primary; false when it gives none we can reach. */
static bool shard_node_addr(const redisReply *n, const redis_addr *asked, bool tls, char *host, size_t cap,
                            int *port)
{
    const redisReply *ep = field(n, "endpoint"), *ip = field(n, "ip");
    const redisReply *p = field(n, "port"), *tp = field(n, "tls-port");
    const redisReply *h = usable_host(ep) ? ep : usable_host(ip) ? ip : NULL;
    if (h)
        snprintf(host, cap, "%s", h->str);
    else if (ep && ep->type == REDIS_REPLY_STRING && ep->len == 0 && asked)
        snprintf(host, cap, "%s", asked->host);
    else
        return false;
    const redisReply *want = tls && tp ? tp : p ? p : tp;
    if (!want || want->type != REDIS_REPLY_INTEGER || !is_port(want->integer))
        return false;
    *port = (int)want->integer;
    return true;
}

/* The top of a CLUSTER SHARDS/SLOTS reply: an error or anything but a list is no map. */
static bool reply_is_list(const redisReply *r, const char *cmd, const char *what, char *err, size_t errlen)
{
    if (r->type == REDIS_REPLY_ERROR)
        snprintf(err, errlen, "%s: %s", cmd, r->str);
    else if (r->type != REDIS_REPLY_ARRAY)
        snprintf(err, errlen, "%s: not a list of %s", cmd, what);
    return r->type == REDIS_REPLY_ARRAY;
}

/* Ends a parse of a slot map: the placeholder owner of ranges whose primary is not
 * known becomes "no node"; a map that failed to parse is left empty. */
static bool map_done(cluster_map *m, bool ok)
{
    if (!ok) {
        cluster_map_clear(m);
        return false;
    }
    for (int s = 0; s < CLUSTER_SLOTS; s++)
        if (m->owner[s] == CLUSTER_NO_NODE - 1)
            m->owner[s] = CLUSTER_NO_NODE;
    return true;
}

bool cluster_parse_shards(const redisReply *r, const redis_addr *asked, bool tls, cluster_map *m, char *err,
                          size_t errlen)
{
    cluster_map_clear(m);
    if (!reply_is_list(r, "CLUSTER SHARDS", "shards", err, errlen))
        return false;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *sh = r->element[i];
        const redisReply *slots = is_pairs(sh) ? field(sh, "slots") : NULL;
        const redisReply *nodes = is_pairs(sh) ? field(sh, "nodes") : NULL;
        if (!slots || slots->type != REDIS_REPLY_ARRAY || slots->elements % 2 || !nodes ||
            nodes->type != REDIS_REPLY_ARRAY) {
            snprintf(err, errlen, "CLUSTER SHARDS: shard %zu has no slots or nodes list", i);
            goto fail;
        }
        for (size_t k = 0; k < slots->elements; k++)
            if (slots->element[k]->type != REDIS_REPLY_INTEGER) {
                snprintf(err, errlen, "CLUSTER SHARDS: shard %zu: a slot that is not a number", i);
                goto fail;
            }
        /* A shard without slots (a new node, a replica not yet attached, which
         * Redis lists as a shard of its own) serves nothing: not a node to keep. */
        if (slots->elements == 0)
            continue;
        const redisReply *pn = shard_primary(nodes);
        char host[256];
        int port, node = -1;
        if (pn && shard_node_addr(pn, asked, tls, host, sizeof host, &port) && (node = map_node(m, host, port)) < 0) {
            snprintf(err, errlen, "CLUSTER SHARDS: more than %d primaries", CLUSTER_MAX_NODES);
            goto fail;
        }
        /* Slots of a shard without a reachable primary stay without a node: its runs
         * wait, the others go on. The ranges are still checked. */
        for (size_t k = 0; k < slots->elements; k += 2) {
            long long lo = slots->element[k]->integer, hi = slots->element[k + 1]->integer;
            if (!map_assign(m, lo, hi, node < 0 ? CLUSTER_NO_NODE - 1 : node, err, errlen))
                goto fail;
        }
    }
    return map_done(m, true);
fail:
    return map_done(m, false);
}

bool cluster_parse_slots(const redisReply *r, const redis_addr *asked, cluster_map *m, char *err, size_t errlen)
{
    cluster_map_clear(m);
    if (!reply_is_list(r, "CLUSTER SLOTS", "slot ranges", err, errlen))
        return false;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 || e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER || e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2) {
            snprintf(err, errlen, "CLUSTER SLOTS: entry %zu is not [start, end, [host, port, ...], ...]", i);
            goto fail;
        }
        /* The primary comes first. "" is the node asked; "?" or nil: unknown, so the
         * range stays without a node. */
        const redisReply *h = e->element[2]->element[0], *p = e->element[2]->element[1];
        int node = -1;
        if (p->type != REDIS_REPLY_INTEGER || (p->integer != 0 && !is_port(p->integer))) {
            snprintf(err, errlen, "CLUSTER SLOTS: entry %zu: bad port", i);
            goto fail;
        }
        const char *host = usable_host(h) ? h->str
                           : h->type == REDIS_REPLY_STRING && h->len == 0 && asked ? asked->host
                                                                                    : NULL;
        if (host && is_port(p->integer) && (node = map_node(m, host, (int)p->integer)) < 0) {
            snprintf(err, errlen, "CLUSTER SLOTS: more than %d primaries", CLUSTER_MAX_NODES);
            goto fail;
        }
        if (!map_assign(m, e->element[0]->integer, e->element[1]->integer, node < 0 ? CLUSTER_NO_NODE - 1 : node,
                        err, errlen))
            goto fail;
    }
    return map_done(m, true);
fail:
    return map_done(m, false);
}

enum cluster_redirect cluster_parse_redirect(const char *err, const redis_addr *from, int *slot, redis_addr *to)
{
    enum cluster_redirect kind;
    const char *p;
    if (!strncmp(err, "MOVED ", 6)) {
        kind = REDIRECT_MOVED;
        p = err + 6;
    } else if (!strncmp(err, "ASK ", 4)) {
        kind = REDIRECT_ASK;
        p = err + 4;
    } else {
        return REDIRECT_NONE;
    }
    /* Whatever follows, the map is stale: a redirection whose slot or node cannot be
     * read still is one (the caller reads the map again instead of following it). */
    *slot = -1;
    to->host[0] = '\0';
    to->port = 0;
    char *end;
    errno = 0;
    long s = strtol(p, &end, 10);
    if (errno || end == p || *end != ' ' || s < 0 || s >= CLUSTER_SLOTS)
        return kind;
    *slot = (int)s;
    /* "host:port", the host maybe an IPv6 address (the last colon splits) or empty
     * (cluster-preferred-endpoint-type unknown-endpoint: the node that answered). */
    redis_addr a;
    const char *t = end + 1;
    if (*t == ':' && !strchr(t + 1, ':')) {
        char *pend;
        errno = 0;
        long port = strtol(t + 1, &pend, 10);
        if (errno || pend == t + 1 || *pend || !is_port(port))
            return kind;
        a.host[0] = '\0';
        a.port = (int)port;
    } else if (!config_parse_listen(t, a.host, sizeof a.host, &a.port) || !is_port(a.port)) {
        return kind;
    }
    for (const char *h = a.host; *h; h++)
        if ((unsigned char)*h <= ' ' || (unsigned char)*h >= 0x7f)
            return kind;
    if (!a.host[0]) {
        if (!from || !from->host[0])
            return kind;
        snprintf(a.host, sizeof a.host, "%s", from->host);
    }
    *to = a;
    return kind;
}

bool cluster_error_is_retry(const char *err)
{
    return !strncmp(err, "TRYAGAIN", 8) || !strncmp(err, "CLUSTERDOWN", 11);
}

/* ---- connections ------------------------------------------------------------------------ */

/* A known primary's connection, kept across map refreshes while it stays a primary. */
typedef struct cl_conn {
    redis_addr addr;
    rconn *c;
    double retry_at; /* suspect: not tried (nor asked for the map) before this (monotonic s) */
    double backoff;  /* the last suspect period (s): doubles while failures go on */
} cl_conn;

/* A node that failed (a connect or set-up that failed or timed out, a command that
 * got no answer) is suspect for a while, counted from the failure: its runs are
 * parked at once instead of each batch waiting out its timeout again. */
#define SUSPECT_MIN_S 1.0
#define SUSPECT_MAX_S 4.0

static void suspect(cl_conn *n)
{
    n->backoff = n->backoff <= 0 ? SUSPECT_MIN_S : n->backoff * 2 > SUSPECT_MAX_S ? SUSPECT_MAX_S : n->backoff * 2;
    n->retry_at = clock_mono_s() + n->backoff;
}

/* Whether a is a known node that is suspect now. */
static bool is_suspect(const cluster *cl, const redis_addr *a, double now);

struct cluster {
    redis_addr *seeds;
    int nseeds;
    redis_url url;
    redis_tls *tls;
    long timeout_ms;
    cluster_conn_init init;
    void *arg;
    bool have_map;
    cluster_map map;
    cl_conn *conn; /* parallel to map.node */
};

cluster *cluster_new(const redis_addr *seeds, int nseeds, const redis_url *url, redis_tls *tls, long timeout_ms,
                     cluster_conn_init init, void *arg)
{
    cluster *cl = calloc(1, sizeof *cl);
    if (!cl || !(cl->seeds = calloc((size_t)nseeds, sizeof *seeds)) ||
        !(cl->conn = calloc(CLUSTER_MAX_NODES, sizeof *cl->conn))) {
        cluster_free(cl);
        return NULL;
    }
    memcpy(cl->seeds, seeds, (size_t)nseeds * sizeof *seeds);
    cl->nseeds = nseeds;
    cl->url = *url;
    cl->tls = tls;
    cl->timeout_ms = timeout_ms;
    cl->init = init;
    cl->arg = arg;
    cluster_map_clear(&cl->map);
    return cl;
}

void cluster_reset(cluster *cl)
{
    for (int i = 0; i < cl->map.nnodes; i++) {
        rconn_free(cl->conn[i].c);
        cl->conn[i] = (cl_conn){0};
    }
    cluster_map_clear(&cl->map);
    cl->have_map = false;
}

void cluster_free(cluster *cl)
{
    if (!cl)
        return;
    if (cl->conn)
        cluster_reset(cl);
    free(cl->conn);
    free(cl->seeds);
    free(cl);
}

bool cluster_has_map(const cluster *cl)
{
    return cl->have_map;
}

const cluster_map *cluster_get_map(const cluster *cl)
{
    return &cl->map;
}

rconn *cluster_connect_at(cluster *cl, const redis_addr *addr, char *err, size_t errlen)
{
    char why[512];
    redis_url url = cl->url;
    url.db = 0; /* a cluster has only db 0: SELECT is refused */
    rconn *c = rconn_connect(addr->host, addr->port, cl->tls, cl->timeout_ms, why, sizeof why);
    if (c && !rconn_setup(c, &url, why, sizeof why)) {
        rconn_free(c);
        c = NULL;
    }
    if (c && cl->init && !cl->init(c, addr, cl->arg, why, sizeof why)) {
        rconn_free(c);
        c = NULL;
    }
    if (!c)
        snprintf(err, errlen, "%s:%d: %s", addr->host, addr->port, why);
    return c;
}

/* Asks one node for the map: CLUSTER SHARDS, or CLUSTER SLOTS when the server does
 * not know that subcommand (before Redis 7). The node needs no set-up beyond AUTH. */
static bool ask_map(cluster *cl, const redis_addr *a, cluster_map *m, char *why, size_t cap)
{
    rconn *c = rconn_connect(a->host, a->port, cl->tls, cl->timeout_ms, why, cap);
    if (!c)
        return false;
    bool ok = false;
    redisReply *r = NULL;
    redis_url url = cl->url;
    url.db = 0;          /* a cluster has only db 0: SELECT is refused */
    url.any_role = true; /* a replica knows the map as well (seeds demoted by a failover) */
    if (!rconn_setup(c, &url, why, cap))
        goto done;
    r = rconn_command(c, 2, (const char *[]){"CLUSTER", "SHARDS"}, NULL);
    if (r && r->type == REDIS_REPLY_ERROR && strstr(r->str, "nknown subcommand")) {
        freeReplyObject(r);
        r = rconn_command(c, 2, (const char *[]){"CLUSTER", "SLOTS"}, NULL);
        if (r)
            ok = cluster_parse_slots(r, a, m, why, cap);
    } else if (r) {
        ok = cluster_parse_shards(r, a, cl->tls != NULL, m, why, cap);
    }
    if (!r)
        snprintf(why, cap, "%s", rconn_errstr(c));
    /* A node that is not yet part of the cluster (or was reset) knows only itself,
     * without slots: its map would park every run while the next seed knows better. */
    if (ok && cluster_map_served(m) == 0) {
        snprintf(why, cap, "its slot map serves no slot (a node not joined to the cluster?)");
        ok = false;
    }
done:
    if (r)
        freeReplyObject(r);
    rconn_free(c);
    return ok;
}

bool cluster_refresh(cluster *cl, char *err, size_t errlen)
{
    cluster_map *m = malloc(sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return false;
    }
    buf all;
    buf_init(&all, 0);
    bool ok = false;
    int known = cl->map.nnodes;
    double now = clock_mono_s();
    for (int k = 0; k < known + cl->nseeds && !ok; k++) {
        /* A suspect node (a seed too, when it is one) is not asked: it may cost a
         * timeout. */
        const redis_addr *a = k < known ? &cl->map.node[k] : &cl->seeds[k - known];
        if (is_suspect(cl, a, now)) {
            if (!buf_printf(&all, "%s%s:%d: failed a moment ago, not asked", all.len ? "; " : "", a->host, a->port))
                buf_reset(&all);
            continue;
        }
        char why[512];
        ok = ask_map(cl, a, m, why, sizeof why);
        if (!ok && k < known)
            suspect(&cl->conn[k]);
        if (!ok && !buf_printf(&all, "%s%s:%d: %s", all.len ? "; " : "", a->host, a->port, why))
            buf_reset(&all);
    }
    if (!ok) {
        snprintf(err, errlen, "no cluster node gave the slot map: %s", all.data ? all.data : "");
        buf_free(&all);
        free(m);
        return false;
    }
    buf_free(&all);
    /* Keep the connections of nodes that are still primaries. */
    cl_conn *next = calloc(CLUSTER_MAX_NODES, sizeof *next);
    if (!next) {
        snprintf(err, errlen, "out of memory");
        free(m);
        return false;
    }
    for (int j = 0; j < m->nnodes; j++) {
        next[j].addr = m->node[j];
        for (int i = 0; i < cl->map.nnodes; i++)
            if (cl->conn[i].addr.port == m->node[j].port && !strcmp(cl->conn[i].addr.host, m->node[j].host)) {
                next[j] = cl->conn[i];
                cl->conn[i].c = NULL;
            }
    }
    for (int i = 0; i < cl->map.nnodes; i++)
        rconn_free(cl->conn[i].c);
    free(cl->conn);
    cl->conn = next;
    memcpy(&cl->map, m, sizeof *m);
    free(m);
    cl->have_map = true;
    return true;
}

rconn *cluster_take(cluster *cl, int node, char *err, size_t errlen)
{
    if (node < 0 || node >= cl->map.nnodes) {
        snprintf(err, errlen, "no such node");
        return NULL;
    }
    cl_conn *n = &cl->conn[node];
    if (n->c) {
        rconn *c = n->c;
        n->c = NULL;
        return c;
    }
    double now = clock_mono_s();
    if (now < n->retry_at) {
        snprintf(err, errlen, "%s:%d: failed a moment ago (tried again in %.1f s)", n->addr.host, n->addr.port,
                 n->retry_at - now);
        return NULL;
    }
    rconn *c = cluster_connect_at(cl, &n->addr, err, errlen);
    if (!c)
        suspect(n);
    else
        n->backoff = 0;
    return c;
}

static bool is_suspect(const cluster *cl, const redis_addr *a, double now)
{
    for (int i = 0; i < cl->map.nnodes; i++)
        if (now < cl->conn[i].retry_at && cl->conn[i].addr.port == a->port && !strcmp(cl->conn[i].addr.host, a->host))
            return true;
    return false;
}

bool cluster_failed_lately(const cluster *cl, int node)
{
    return node >= 0 && node < cl->map.nnodes && cl->conn[node].backoff > 0;
}

bool cluster_has_conn(const cluster *cl, int node)
{
    return node >= 0 && node < cl->map.nnodes && cl->conn[node].c != NULL;
}

void cluster_suspect(cluster *cl, int node)
{
    if (node >= 0 && node < cl->map.nnodes)
        suspect(&cl->conn[node]);
}

void cluster_put(cluster *cl, int node, rconn *c)
{
    if (node < 0 || node >= cl->map.nnodes || cl->conn[node].c) {
        rconn_free(c);
        return;
    }
    cl->conn[node].c = c;
}
