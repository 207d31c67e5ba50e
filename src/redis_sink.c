/* The sink: publishes batches of events to Redis, one script call per run, and says
 * how they went (pub_result). Over one primary (found through redis_endpoint.c: TLS,
 * sentinels) or a Redis Cluster's primaries (redis_sink_cluster.c); the connections
 * are redis_sink_conn.c's, the pipeline redis_sink_pipe.c's, the high-water of
 * published ids redis_sink_hw.c's. */
#include "redis_sink_int.h"

#include "buf.h"
#include "clock.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sink *sink_new(redis_endpoint *e, const config *cfg, const char *epoch, bool announce)
{
    sink *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->ep = e;
    k->announce = announce;
    k->wait_replicas = cfg->redis_wait_replicas;
    k->wait_timeout_ms = cfg->redis_wait_timeout_ms;
    snprintf(k->wait_n, sizeof k->wait_n, "%ld", cfg->redis_wait_replicas);
    snprintf(k->wait_timeout, sizeof k->wait_timeout, "%ld", cfg->redis_wait_timeout_ms);
    snprintf(k->ttl, sizeof k->ttl, "%ld", cfg->mark_ttl_ms);
    sentinel_watch_init(&k->watch, e);
    sink_set_epoch(k, epoch, "");
    k->sharded = config_redis_sharded(cfg);
    k->migrating_slot = -1;
    if (cfg->redis_cluster &&
        !(k->cl = cluster_new(cfg->cluster_seeds, cfg->ncluster_seeds, &e->url, e->tls, e->timeout_ms,
                              sink_cluster_conn_ready, k))) {
        free(k);
        return NULL;
    }
    return k;
}

void sink_set_epoch(sink *k, const char *epoch, const char *origin)
{
    snprintf(k->epoch, sizeof k->epoch, "%s", epoch ? epoch : "");
    snprintf(k->origin, sizeof k->origin, "%s", origin ? origin : "");
}

void sink_free(sink *k)
{
    if (!k)
        return;
    sink_disconnect(k);
    sentinel_watch_close(&k->watch);
    cluster_free(k->cl);
    sink_share_free(&k->s);
    free(k->part);
    free(k);
}

const char *sink_errstr(const sink *k)
{
    return k->err;
}

const char *sink_run_errstr(const sink *k, const event *e)
{
    for (int i = 0; i < k->nrun_err; i++)
        if (event_run_is(e, k->run_err[i].run, k->run_err[i].len))
            return k->run_err[i].why;
    return k->err;
}

void sink_get_counters(const sink *k, sink_counters *out)
{
    *out = k->counters;
}

bool sink_refusing(const sink *k, const char **why)
{
    *why = k->refusal;
    return k->refusing;
}

/* After a publish call: refusing while Redis refused events for every run (the
 * user's ACL, or writes refused) and nothing went out. (One event Redis cannot take, e.g. its mark key holding something else, holds
 * back its run but says nothing about the others.) */
static void note_outcome(sink *k, const pub_result *out, size_t n)
{
    bool went = false;
    for (size_t i = 0; i < n; i++)
        went |= out[i] == PUB_OK || out[i] == PUB_DUP;
    if (went) {
        if (k->refusing && k->announce)
            log_info("redis: events are taken again");
        k->refusing = false;
    } else if (k->refused) {
        if (!k->refusing && k->announce)
            log_warn("redis: every event refused (%s): not ready until one goes out", k->err);
        k->refusing = true;
        snprintf(k->refusal, sizeof k->refusal, "%s", k->err);
    }
}

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    k->refused = false;
    k->nrun_err = 0;
    if (k->cl) {
        sink_raise_hw(k, evs, n);
        bool ok = sink_publish_cluster(k, evs, chained, n, out);
        note_outcome(k, out, n);
        return ok;
    }
    redis_addr to;
    if (k->c && sentinel_watch_switched(&k->watch, &k->addr, &to) &&
        (strcmp(to.host, k->addr.host) || to.port != k->addr.port)) {
        log_info("redis: the sentinels announce a new primary at %s:%d: leaving %s:%d", to.host, to.port,
                 k->addr.host, k->addr.port);
        if (!sink_connect(k))
            return false;
    }
    if (!k->c) {
        snprintf(k->err, sizeof k->err, "publish: not connected");
        return false;
    }
    /* The connection is the node's while it publishes (NULL after when it was lost).
     * The high-water goes ahead of the calls: no round trip of its own. */
    char key[160], id[24];
    const char *hw[6];
    if (n)
        sink_hw_call(k, evs, n, key, id, hw);
    pub_node p = {.c = k->c, .addr = k->addr, .node = -1, .evs = evs, .chained = chained, .out = out, .n = n,
                  .hw = n ? hw : NULL};
    k->c = NULL;
    bool ok = sink_publish_nodes(k, &p, 1);
    k->c = p.c;
    note_outcome(k, out, n);
    return ok;
}

