/* The high-water of published ids: raised in Redis before each batch goes out, read by
 * a relay that takes the lead (docs/GUARANTEES.md, "Numbering that goes back"). */
#include "redis_sink_int.h"

#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hw_key(const sink *k, char *key, size_t len)
{
    snprintf(key, len, "outboxd:%s:hw%s%s", k->epoch, k->origin[0] ? ":" : "", k->origin);
}

/* The connection for the high-water's key: the sink's own, or in a cluster one lent
 * by the node that owns the key's slot (*node >= 0; hand it back with hw_release).
 * NULL with the reason in k->err. */
static rconn *hw_acquire(sink *k, const char *key, int *node)
{
    *node = -1;
    if (!k->cl)
        return k->c || sink_connect(k) ? k->c : NULL;
    if (!sink_cluster_fresh(k))
        return NULL;
    const cluster_map *m = cluster_get_map(k->cl);
    int v = m->owner[cluster_key_slot(key, strlen(key))];
    if (v == CLUSTER_NO_NODE) {
        snprintf(k->err, sizeof k->err, "%s: its slot has no primary now (a shard down or failing over)", key);
        k->refresh = true;
        return NULL;
    }
    rconn *c = cluster_take(k->cl, v, k->err, sizeof k->err);
    if (!c) {
        k->refresh = true;
        return NULL;
    }
    *node = v;
    return c;
}

/* Ends what hw_acquire began; broken: the connection is no use any more (lost, or
 * one that must be made again to load the scripts or find the primary). */
static void hw_release(sink *k, rconn *c, int node, bool broken)
{
    if (node < 0) {
        if (broken)
            sink_drop(k, &k->c);
    } else if (broken) {
        rconn_free(c);
        k->refresh = true;
    } else {
        cluster_put(k->cl, node, c);
    }
}

/* A reply that says the key's slot is served elsewhere now: the map is read again.
 * (A raise skipped for it is made good by the next batch's, whose ids are higher.) */
static bool hw_note_moved(sink *k, const redisReply *r)
{
    bool moved =
        k->cl && r->type == REDIS_REPLY_ERROR && (!strncmp(r->str, "MOVED", 5) || !strncmp(r->str, "ASK", 3));
    if (moved)
        k->refresh = true;
    return moved;
}

bool sink_high_water(sink *k, long long *hw)
{
    char key[160];
    hw_key(k, key, sizeof key);
    int node;
    rconn *c = hw_acquire(k, key, &node);
    if (!c)
        return false;
    redisReply *r = rconn_command(c, 2, (const char *[]){"GET", key}, NULL);
    if (!r) {
        snprintf(k->err, sizeof k->err, "GET %s: %s", key, rconn_errstr(c));
        hw_release(k, c, node, true);
        return false;
    }
    bool ok = r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING;
    *hw = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    (void)hw_note_moved(k, r);
    if (!ok) {
        char why[400];
        redis_explain_error(r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", why, sizeof why);
        snprintf(k->err, sizeof k->err, "GET %s: %s", key, why);
    }
    freeReplyObject(r);
    hw_release(k, c, node, false);
    return ok;
}

/* The high-water could not be raised for a batch that goes out all the same: what is
 * lost is the detection of numbering that went back. Said once, counted with the
 * marks' failures. */
void sink_hw_refused(sink *k, const char *why)
{
    k->counters.mark_failures++;
    if (!k->hw_failing)
        log_warn("redis: the high-water of published ids could not be raised (%s): a restored database whose "
                 "numbering went back is not detected meanwhile (docs/GUARANTEES.md)",
                 why);
    k->hw_failing = true;
}

/* The high-water's call for evs[0..n) (n > 0) in argv[0..6): its script, its key and
 * the highest id of the batch, written into key and id. */
void sink_hw_call(const sink *k, const event *const *evs, size_t n, char key[160], char id[24], const char *argv[6])
{
    long long top = 0;
    for (size_t i = 0; i < n; i++)
        top = evs[i]->id > top ? evs[i]->id : top;
    hw_key(k, key, 160);
    snprintf(id, 24, "%lld", top);
    const char *a[6] = {"EVALSHA", k->hw_sha, "1", key, id, k->ttl};
    memcpy(argv, a, sizeof a);
}

/* What the high-water script's reply r says; goes_out: the batch is published whatever
 * it says (a cluster: the raise is a call of its own, on the key's node). A refusal
 * that every write meets (NOREPLICAS, OOM, MISCONF, BUSY) is left to the publish
 * calls, which meet it too; another (an ACL user without SET) is said and counted
 * (sink_hw_refused). False, the reason in k->err, when the connection must be made
 * again (the script cache was flushed, or no longer a primary): said and counted too
 * when the batch goes out all the same. */
bool sink_hw_reply(sink *k, const redisReply *r, bool goes_out)
{
    if (r->type == REDIS_REPLY_ERROR && hw_note_moved(k, r)) {
        /* The map is read again before the next batch; this one goes out without it. */
        snprintf(k->err, sizeof k->err, "high-water: %s", r->str);
        sink_hw_refused(k, k->err);
        return true;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        bool again = sink_error_reconnect(r->str);
        if (again) {
            snprintf(k->err, sizeof k->err, "high-water: %s", r->str);
            if (goes_out)
                sink_hw_refused(k, k->err);
        } else if (!sink_error_no_writes(r->str)) {
            char why[400];
            redis_explain_error(r->str, why, sizeof why);
            sink_hw_refused(k, why);
        }
        return !again;
    }
    if (k->hw_failing) {
        k->hw_failing = false;
        log_info("redis: the high-water of published ids is raised again");
    }
    return true;
}

/* In a cluster: raises the high-water to the highest id of evs[0..n) on the node of
 * its key, before the batch is published (one more round trip per batch). The batch
 * goes out whatever happens; a raise that could not be made is said and counted
 * (sink_hw_refused). (With one Redis the raise goes ahead of the batch's calls on the
 * same connection: sink_publish.) */
void sink_raise_hw(sink *k, const event *const *evs, size_t n)
{
    if (n == 0)
        return;
    char key[160], id[24];
    const char *argv[6];
    sink_hw_call(k, evs, n, key, id, argv);
    int node;
    rconn *c = hw_acquire(k, key, &node);
    if (!c) {
        sink_hw_refused(k, k->err);
        return;
    }
    redisReply *r = rconn_command(c, 6, argv, NULL);
    if (!r) {
        snprintf(k->err, sizeof k->err, "high-water: %s", rconn_errstr(c));
        hw_release(k, c, node, true);
        /* A node that timed out is suspect for a while, as in publish_group: the
         * batches of the other shards do not wait out its timeout every time. */
        if (node >= 0)
            cluster_suspect(k->cl, node);
        sink_hw_refused(k, k->err);
        return;
    }
    bool again = !sink_hw_reply(k, r, true);
    freeReplyObject(r);
    hw_release(k, c, node, again);
}

