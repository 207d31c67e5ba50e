/* The sink's connections: to the primary (redis_endpoint.c) or to the cluster's
 * nodes (redis_cluster.c), each loaded with the publish and high-water scripts. */
#include "redis_sink_int.h"

#include "buf.h"
#include "clock.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One call per run per batch: KEYS[1] = the run's mark key; ARGV = channel, mark ttl
 * in ms, chained, origin, then id, seq, message for each of the run's events in order.
 * The mark is "id:seq:origin" of the last event published for the run. Ids and seqs
 * only grow within a run in commit order, so an event at or below the mark in both was
 * published already. One above it in either is new. Numbering that went back under
 * the same key (a restored base backup) would pass new events off as published: the
 * leader detects it by the high-water below and starts a new epoch. The origin (the cluster's system identifier and the
 * database's oid) tells a logical copy of the database, which keeps the epoch of the
 * key, from the original: a mark of another origin is no mark. A mark without one
 * (written by v0.1.0, or by a relay that may not read the identifier) still counts,
 * so that an upgrade keeps the marks set just before it. Every event but the first, and the first when `chained`
 * says its predecessor was in an earlier call, needs the mark to be its direct
 * predecessor (seq - 1), or a failed predecessor would be overtaken. Returns one
 * number per event (1 published, 0 duplicate, -1 held back behind one that did not
 * go out, -2 failed), then the error of the failed PUBLISH and the error of the SET
 * of the mark (each false when there was none).
 *
 * PUBLISH comes before the mark moves past it: Redis does not undo a script's earlier
 * writes when a later command fails, so a refused PUBLISH (an ACL rule, a cluster
 * slot) must not leave a mark that would pass the event off as published. A PUBLISH
 * that fails stops the run there, and the mark is set to the last event that went
 * out. The "#!lua" line (Redis 7) declares the script as writing, so a primary that
 * may not take writes now (a read-only replica, out of memory, too few replicas for
 * min-replicas-to-write, a failed snapshot with stop-writes-on-bgsave-error) refuses
 * it before it runs rather than after its PUBLISHes. What that cannot see, a user
 * whose ACL lets it PUBLISH but not SET (or a server without "#!lua"), makes the SET
 * fail after the events went out: it is a pcall, and its error comes back beside the
 * events, which count as published, so that they are not sent again and again. */
#define SHEBANG "#!lua\n"
/* The same script with SPUBLISH for sharded Pub/Sub: in a cluster the mark key lives
 * in the channel's slot (cluster_mark_key), so that the script stays on one node. */
#define PUBLISH_SCRIPT(PUBLISH_CMD) \
    SHEBANG \
    "local m = redis.call('GET', KEYS[1])\n" \
    "local mid, mseq\n" \
    "local origin = ARGV[4]\n" \
    "if m then\n" \
    "  local a, b, o = string.match(m, '^(%d+):(%d+):?(.*)$')\n" \
    "  if a and (o == '' or origin == '' or o == origin) then mid, mseq = tonumber(a), tonumber(b) end\n" \
    "end\n" \
    "if origin ~= '' then origin = ':' .. origin end\n" \
    "local out, err, stop, last = {}, nil, false, nil\n" \
    "local need = ARGV[3] == '1'\n" \
    "for i = 5, #ARGV, 3 do\n" \
    "  local id, seq = tonumber(ARGV[i]), tonumber(ARGV[i + 1])\n" \
    "  if mid and id <= mid and seq <= mseq then\n" \
    "    out[#out + 1] = 0\n" \
    "  elseif stop or (need and (not mseq or mseq ~= seq - 1)) then\n" \
    "    stop = true\n" \
    "    out[#out + 1] = -1\n" \
    "  else\n" \
    "    local r = redis.pcall('" PUBLISH_CMD "', ARGV[1], ARGV[i + 2])\n" \
    "    if type(r) == 'table' and r.err then\n" \
    "      stop, err = true, r.err\n" \
    "      out[#out + 1] = -2\n" \
    "    else\n" \
    "      mid, mseq, last = id, seq, ARGV[i] .. ':' .. ARGV[i + 1] .. origin\n" \
    "      out[#out + 1] = 1\n" \
    "    end\n" \
    "  end\n" \
    "  need = true\n" \
    "end\n" \
    "local merr = false\n" \
    "if last then\n" \
    "  local r = redis.pcall('SET', KEYS[1], last, 'PX', ARGV[2])\n" \
    "  if type(r) == 'table' and r.err then merr = r.err end\n" \
    "end\n" \
    "out[#out + 1] = err or false\n" \
    "out[#out + 1] = merr\n" \
    "return out\n"
const char redis_sink_publish_script[] = PUBLISH_SCRIPT("PUBLISH");
static const char publish_script_sharded[] = PUBLISH_SCRIPT("SPUBLISH");

/* The high-water of published ids, outboxd:{epoch}:hw[:origin]: raised to the highest id
 * of each batch before its events are published (and so before PostgreSQL marks
 * them), kept as long as the marks. Its own command on its own key, apart from the
 * per-run calls: in a cluster it goes to the node of its own slot. Ids are drawn
 * from one sequence that never goes back in normal operation, so a leader that finds
 * it above the sequence knows the numbering went back (relay.c). */
const char redis_sink_hw_script[] =
    SHEBANG
    "local v = tonumber(redis.call('GET', KEYS[1]))\n"
    "local n = tonumber(ARGV[1])\n"
    "if v and v > n then n = v end\n"
    "redis.call('SET', KEYS[1], n, 'PX', ARGV[2])\n"
    "return n\n";

/* Drops a connection after an error; with a cluster, only that node's, and the map
 * is read again before the next publish (a failover, a moved slot). */
void sink_drop(sink *k, rconn **c)
{
    rconn_free(*c);
    *c = NULL;
    k->refresh = k->cl != NULL;
}

void sink_disconnect(sink *k)
{
    sink_drop(k, &k->c);
    if (k->cl)
        cluster_reset(k->cl);
}

bool sink_connected(const sink *k)
{
    return k->cl ? cluster_has_map(k->cl) : k->c != NULL;
}

/* Loads a script on c (at addr) into sha; a server before Redis 7 gets it without
 * "#!lua". */
static bool load_one(sink *k, rconn *c, const redis_addr *addr, const char *script, char sha[41])
{
    for (;;) {
        const char *src = script + (k->legacy_script ? sizeof SHEBANG - 1 : 0);
        const char *argv[] = {"SCRIPT", "LOAD", src};
        redisReply *r = rconn_command(c, 3, argv, NULL);
        if (!r) {
            snprintf(k->err, sizeof k->err, "SCRIPT LOAD: %s", rconn_errstr(c));
            return false;
        }
        bool ok = r->type == REDIS_REPLY_STRING && r->len == 40;
        if (ok) {
            memcpy(sha, r->str, 41);
        } else if (r->type == REDIS_REPLY_ERROR && !k->legacy_script && strstr(r->str, "compiling")) {
            k->legacy_script = true;
            freeReplyObject(r);
            continue;
        } else {
            char why[400];
            redis_explain_error(r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", why, sizeof why);
            snprintf(k->err, sizeof k->err, "%s:%d: SCRIPT LOAD: %s", addr->host, addr->port, why);
        }
        freeReplyObject(r);
        return ok;
    }
}

/* The publish script and the high-water's. */
static bool load_script(sink *k, rconn *c, const redis_addr *addr)
{
    return load_one(k, c, addr, k->sharded ? publish_script_sharded : redis_sink_publish_script, k->sha) &&
           load_one(k, c, addr, redis_sink_hw_script, k->hw_sha);
}

/* Every new connection to a cluster node loads the script there (NOSCRIPT after a
 * failover or a flush drops the connection, so the next one loads it again). */
bool sink_cluster_conn_ready(rconn *c, const redis_addr *at, void *arg, char *err, size_t errlen)
{
    sink *k = arg;
    if (load_script(k, c, at))
        return true;
    snprintf(err, errlen, "%s", k->err);
    return false;
}

/* Reads the slot map (connections are made as batches need them; those of nodes
 * still primaries are kept). A changed set of primaries is logged and counted. */
bool sink_cluster_connect(sink *k)
{
    const cluster_map *m = cluster_get_map(k->cl);
    redis_addr before[8];
    int nbefore = m->nnodes < 8 ? m->nnodes : 8;
    memcpy(before, m->node, (size_t)nbefore * sizeof *before);
    k->refreshed_at = clock_mono_s();
    if (!cluster_refresh(k->cl, k->err, sizeof k->err))
        return false;
    k->refresh = false;
    /* The same primaries in another order (nodes list them as they like) is no change. */
    bool changed = m->nnodes != nbefore;
    for (int i = 0; i < nbefore && !changed; i++) {
        bool found = false;
        for (int j = 0; j < m->nnodes && !found; j++)
            found = !strcmp(before[i].host, m->node[j].host) && before[i].port == m->node[j].port;
        changed = !found;
    }
    if (changed && k->said_map)
        k->counters.primary_changes++;
    if (k->announce && (changed || !k->said_map)) {
        char list[512] = "";
        for (int i = 0; i < m->nnodes; i++) {
            size_t used = strlen(list);
            snprintf(list + used, sizeof list - used, "%s%s:%d", i ? ", " : "", m->node[i].host, m->node[i].port);
        }
        log_info("redis: cluster slot map %s: %d primaries %s (%s, %s Pub/Sub)", k->said_map ? "changed" : "read",
                 m->nnodes, list, redis_endpoint_describe(k->ep), k->sharded ? "sharded" : "global");
    }
    k->said_map = true;
    return true;
}

bool sink_cluster_fresh(sink *k)
{
    bool stale = (k->refresh && clock_mono_s() - k->refreshed_at >= 0.1) || !cluster_has_map(k->cl);
    return !stale || sink_cluster_connect(k);
}

bool sink_connect(sink *k)
{
    if (k->cl)
        return sink_cluster_connect(k);
    sink_disconnect(k);
    k->c = redis_endpoint_connect(k->ep, &k->addr, k->err, sizeof k->err);
    if (!k->c || !load_script(k, k->c, &k->addr)) {
        sink_disconnect(k);
        return false;
    }
    bool moved = k->last_addr.port && (strcmp(k->last_addr.host, k->addr.host) || k->last_addr.port != k->addr.port);
    if (moved)
        k->counters.primary_changes++;
    if (k->announce && (moved || !k->last_addr.port))
        log_info("redis: connected to the primary at %s:%d (%s)", k->addr.host, k->addr.port,
                 redis_endpoint_describe(k->ep));
    k->last_addr = k->addr;
    return true;
}

