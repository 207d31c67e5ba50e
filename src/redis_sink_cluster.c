/* The sink's Redis Cluster publishing: a batch split by the primary that owns each
 * run's channel slot, the primaries side by side, ASK redirections retried. */
#include "redis_sink_int.h"

#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool share_reserve(share *g, size_t n)
{
    if (n <= g->cap)
        return true;
    /* After a failure the arrays grown so far stay so, the others as they were. */
    void *t;
#define GROW(f) ((t = realloc(g->f, n * sizeof *g->f)) && (g->f = t))
    if (!(GROW(evs) && GROW(chained) && GROW(out) && GROW(idx) && GROW(ask)))
        return false;
#undef GROW
    g->cap = n;
    return true;
}

void sink_share_free(share *g)
{
    free(g->evs);
    free(g->chained);
    free(g->out);
    free(g->idx);
    free(g->ask);
}

/* Gives each node p[0..np) its events: those i of evs[0..n) with part[i] its index
 * (-1: none), in order, as consecutive slices of g (reserved for n), not sent yet and
 * not redirected. */
static void share_out(pub_node *p, int np, const int *part, const event *const *evs, const bool *chained, size_t n,
                      share *g)
{
    for (size_t i = 0; i < n; i++)
        if (part[i] >= 0)
            p[part[i]].n++;
    size_t at = 0;
    for (int j = 0; j < np; j++) {
        p[j].evs = g->evs + at;
        p[j].chained = g->chained + at;
        p[j].out = g->out + at;
        p[j].idx = g->idx + at;
        p[j].ask = g->ask + at;
        at += p[j].n;
        p[j].n = 0;
    }
    for (size_t i = 0; i < n; i++) {
        if (part[i] < 0)
            continue;
        pub_node *q = &p[part[i]];
        size_t w = (size_t)(q->out - g->out) + q->n++;
        g->evs[w] = evs[i];
        g->chained[w] = chained[i];
        g->out[w] = PUB_UNSENT;
        g->idx[w] = i;
        g->ask[w] = -1;
    }
}

/* Retries once, with ASKING on the node named, the calls of p[0..np) that a migrating
 * slot sent elsewhere (sink_note_ask), the targets side by side. The events sent to one
 * target keep their batch order: a run's events all went there, or the earlier ones
 * published on the source (their mark moved along). */
static void retry_asks(sink *k, pub_node *p, int np)
{
    if (!k->nask_to || np == 0)
        return;
    /* The nodes' events are consecutive in k->s, from p[0]'s on. */
    size_t from = (size_t)(p[0].out - k->s.out), n = 0;
    for (int j = 0; j < np; j++)
        n += p[j].n;
    pub_node a[ASK_TARGETS] = {0};
    share g = {0};
    if (share_reserve(&g, n)) {
        share_out(a, k->nask_to, k->s.ask + from, k->s.evs + from, k->s.chained + from, n, &g);
        for (int t = 0; t < k->nask_to; t++) {
            a[t].addr = k->ask_to[t];
            a[t].node = -1;
            a[t].asking = true;
            a[t].c = cluster_connect_at(k->cl, &a[t].addr, k->err, sizeof k->err);
        }
        (void)sink_publish_nodes(k, a, k->nask_to);
        for (int t = 0; t < k->nask_to; t++) {
            rconn_free(a[t].c);
            for (size_t i = 0; i < a[t].n; i++)
                k->s.out[from + a[t].idx[i]] = a[t].out[i];
        }
    }
    sink_share_free(&g);
    k->nask_to = 0;
}

/* Publishes on the cluster's nodes p[0..np) side by side (sink_publish_nodes), over the
 * connections the cluster lends, then retries their ASK redirections. False when a
 * node could not be reached or its connection was lost. */
static bool publish_group(sink *k, pub_node *p, int np)
{
    if (np == 0)
        return true;
    bool ok = true;
    for (int j = 0; j < np; j++) {
        p[j].c = cluster_take(k->cl, p[j].node, k->err, sizeof k->err);
        if (!p[j].c) {
            for (size_t i = 0; i < p[j].n; i++)
                p[j].out[i] = PUB_NOROUTE;
            k->refresh = true;
            ok = false;
        }
    }
    if (!sink_publish_nodes(k, p, np))
        ok = false;
    for (int j = 0; j < np; j++) {
        if (p[j].c)
            cluster_put(k->cl, p[j].node, p[j].c);
        p[j].c = NULL;
        /* A node that timed out (stalled, e.g. SIGSTOP) is suspect for a while: its
         * runs are parked at once instead of every batch waiting out its timeout
         * again. */
        if (p[j].stalled)
            cluster_suspect(k->cl, p[j].node);
    }
    retry_asks(k, p, np);
    return ok;
}

static bool scratch_reserve(sink *k, size_t n)
{
    if (n <= k->s.cap)
        return true;
    int *part = realloc(k->part, n * sizeof *part);
    if (!part)
        return false;
    k->part = part;
    return share_reserve(&k->s, n);
}

/* Splits a batch by the primary that owns each run's channel slot and publishes each
 * part on its node, the nodes side by side. Each run lives on one node, so its order
 * and the chained rule hold within its part; a node that is down or failing over
 * leaves only its runs unsent. */
bool sink_publish_cluster(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    if (!sink_cluster_fresh(k))
        return false;
    if (!scratch_reserve(k, n)) {
        snprintf(k->err, sizeof k->err, "publish: out of memory");
        return false;
    }
    const cluster_map *m = cluster_get_map(k->cl);
    buf ch;
    buf_init(&ch, 0);
    for (size_t i = 0; i < n; i++) {
        buf_reset(&ch);
        if (!buf_puts(&ch, "run:") || !buf_append(&ch, evs[i]->run_id, evs[i]->run_id_len)) {
            buf_free(&ch);
            snprintf(k->err, sizeof k->err, "publish: out of memory");
            return false;
        }
        uint16_t v = m->owner[cluster_key_slot(ch.data, ch.len)];
        k->part[i] = v == CLUSTER_NO_NODE ? -1 : v;
    }
    buf_free(&ch);
    bool ok = true;
    char unowned[200] = "";
    for (size_t i = 0; i < n; i++)
        if (k->part[i] < 0) {
            out[i] = PUB_NOROUTE;
            if (!unowned[0])
                snprintf(unowned, sizeof unowned, "run %.*s: its slot has no primary now (a shard down or failing over)",
                         (int)(evs[i]->run_id_len > 64 ? 64 : evs[i]->run_id_len), evs[i]->run_id);
            k->refresh = true;
        }
    /* The nodes this batch touches, in two groups: those with a connection at hand
     * that did not fail lately, then the others (failed lately, or to be connected
     * first: a new primary, one dropped to reload the script), which are sent to
     * only once the first group has answered, so that trying one again or
     * connecting to it (it may be stalled: a timeout, or a connection attempt that
     * waits out one) holds up none of the first group's runs. A run lives on one
     * node: the order between nodes is free. */
    pub_node *p = calloc((size_t)(m->nnodes ? m->nnodes : 1), sizeof *p);
    if (!p) {
        snprintf(k->err, sizeof k->err, "publish: out of memory");
        return false;
    }
    int pos[CLUSTER_MAX_NODES], np = 0, nhealthy = 0; /* pos: node -> its index in p */
    for (int v = 0; v < m->nnodes; v++)
        pos[v] = -1;
    for (size_t i = 0; i < n; i++)
        if (k->part[i] >= 0)
            pos[k->part[i]] = -2; /* touched */
    for (int late = 0; late < 2; late++)
        for (int v = 0; v < m->nnodes; v++)
            if (pos[v] == -2 &&
                (cluster_failed_lately(k->cl, v) || !cluster_has_conn(k->cl, v)) == (late == 1)) {
                p[np].node = v;
                p[np].addr = m->node[v];
                pos[v] = np++;
                nhealthy += !late;
            }
    for (size_t i = 0; i < n; i++)
        if (k->part[i] >= 0)
            k->part[i] = pos[k->part[i]];
    share_out(p, np, k->part, evs, chained, n, &k->s);
    k->nask_to = 0;
    bool healthy = publish_group(k, p, nhealthy);
    if (!publish_group(k, p + nhealthy, np - nhealthy) || !healthy)
        ok = false;
    for (int j = 0; j < np; j++)
        for (size_t i = 0; i < p[j].n; i++)
            out[p[j].idx[i]] = p[j].out[i];
    free(p);
    if (unowned[0]) {
        snprintf(k->err, sizeof k->err, "%s", unowned);
        ok = false;
    }
    return ok;
}

