/* The sink on our blocking Redis connection (redis_conn.c), reaching the primary
 * through redis_endpoint.c (TLS, sentinels), or each run's primary through
 * redis_cluster.c (a batch split by node). */
#include "redis_sink_int.h"

#include "buf.h"
#include "clock.h"
#include "log.h"
#include "redis_cluster.h"

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

/* A run's events go in calls of at most this many (a continuation is chained). */
#define CALL_EVENTS 1000
/* Bytes of commands queued before replies are read, so a batch of large payloads
 * does not pile up in hiredis's output buffer. */
#define PIPELINE_BYTES (4u << 20)


static bool cluster_conn_ready(rconn *c, const redis_addr *at, void *arg, char *err, size_t errlen);
void sink_note_ask(sink *k, pub_node *p, size_t i, const redis_addr *to);
void sink_share_free(share *g);
bool sink_hw_reply(sink *k, const redisReply *r, bool goes_out);
void sink_hw_refused(sink *k, const char *why);

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
                              cluster_conn_ready, k))) {
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

const char *sink_errstr(const sink *k)
{
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
static bool cluster_conn_ready(rconn *c, const redis_addr *at, void *arg, char *err, size_t errlen)
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

/* Commands that were sent and got no answer: the ids between lo and hi may have
 * been published (their marks lost with the connection, or with a failed-over
 * primary). */
static void note_uncertain(sink *k, const event *const *evs, size_t from, size_t to)
{
    if (from >= to)
        return;
    long long lo = evs[from]->id, hi = evs[from]->id;
    for (size_t i = from + 1; i < to; i++) {
        lo = evs[i]->id < lo ? evs[i]->id : lo;
        hi = evs[i]->id > hi ? evs[i]->id : hi;
    }
    k->uncertain[k->next_uncertain].lo = lo;
    k->uncertain[k->next_uncertain].hi = hi;
    k->next_uncertain = (k->next_uncertain + 1) % UNCERTAIN_RANGES;
    if (k->nuncertain < UNCERTAIN_RANGES)
        k->nuncertain++;
}

static bool was_uncertain(const sink *k, long long id)
{
    for (int i = 0; i < k->nuncertain; i++)
        if (id >= k->uncertain[i].lo && id <= k->uncertain[i].hi)
            return true;
    return false;
}

/* An error that refuses every run alike: an ACL denial, or a primary that takes no
 * writes now (too few replicas for min-replicas-to-write, out of memory, a failed
 * snapshot, a script running past busy-reply-threshold). */
static bool refuses_everyone(const char *reply)
{
    return redis_error_is_acl(reply) || !strncmp(reply, "NOREPLICAS", 10) || !strncmp(reply, "OOM", 3) ||
           !strncmp(reply, "MISCONF", 7) || !strncmp(reply, "BUSY", 4);
}

/* An event the script did not publish because Redis refused it: the reason goes to
 * k->err, and a refusal of everyone is noted for sink_refusing. */
static void note_refusal(sink *k, const char *reply)
{
    k->refused |= refuses_everyone(reply);
    char why[400];
    redis_explain_error(reply, why, sizeof why);
    snprintf(k->err, sizeof k->err, "publish: %s", why);
}

/* The events of a call went out but Redis refused to write the run's mark: they
 * count as published (PostgreSQL marks them, nothing is sent again), and what is
 * lost meanwhile is the de-duplication of a re-send after a crash or a lost reply.
 * Said once until marks are written again; counted every time. */
static void note_mark_refused(sink *k, const event *e, const char *reply)
{
    k->counters.mark_failures++;
    if (k->marks_failing)
        return;
    k->marks_failing = true;
    char why[400];
    redis_explain_error(reply, why, sizeof why);
    log_warn("redis: run %.*s: its events went out but its mark could not be written (%s); they are marked "
             "published and not sent again, but until marks can be written a re-send after a crash is not "
             "recognised as a duplicate (counted in outboxd_redis_mark_failures_total)",
             (int)e->run_id_len, e->run_id, why);
}

/* A call that published and raised its mark while marks were failing. */
static void note_mark_written(sink *k, const redisReply *r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r->element[i]->type == REDIS_REPLY_INTEGER && r->element[i]->integer == 1) {
            k->marks_failing = false;
            log_info("redis: run marks are written again");
            return;
        }
}

/* A shard channel's slot that is being migrated: said once per migration. */
static void note_migrating(sink *k, int slot)
{
    if (slot == k->migrating_slot)
        return;
    k->migrating_slot = slot;
    if (k->announce)
        log_info("redis: slot %d migrating: its runs wait until it has moved (sharded Pub/Sub stays on the "
                 "source until then)",
                 slot);
}

/* p's connection broke or timed out (what: the command waited for) with the events
 * p->evs[from..to) sent: whether they went out is unknown, so they count as not sent
 * and may be published twice (note_uncertain); a silent node is said to be stalled. */
static void node_lost(sink *k, pub_node *p, const char *what, size_t from, size_t to)
{
    snprintf(k->err, sizeof k->err, "%s:%d: %s: %s", p->addr.host, p->addr.port, what, rconn_errstr(p->c));
    p->stalled = rconn_timed_out(p->c);
    for (size_t i = from; i < to; i++)
        if (p->out[i] == PUB_OK || p->out[i] == PUB_DUP)
            p->out[i] = PUB_UNSENT;
    note_uncertain(k, p->evs, from, to);
    sink_drop(k, &p->c);
}

/* Reads the replies of p's calls sent since the last read (and of the WAIT after
 * them), mapping each event's number to a pub_result. False when the connection was
 * lost or must be made again (it is then dropped). */
static bool read_replies(sink *k, pub_node *p)
{
    bool reconnect = false;
    const event *const *evs = p->evs;
    call *calls = p->calls + p->read_from;
    size_t ncalls = p->ncalls - p->read_from, from = calls[0].first, to = p->next;
    char hw_err[300] = "";
    if (p->hw && p->read_from == 0) {
        redisReply *r = rconn_reply(p->c);
        if (!r) {
            node_lost(k, p, "high-water", from, to);
            return false;
        }
        if (!sink_hw_reply(k, r, false)) {
            /* The calls behind it met the same, most likely; if one ran, the batch
             * went out without the raise (said below). */
            snprintf(hw_err, sizeof hw_err, "%.290s", k->err);
            reconnect = true;
        }
        freeReplyObject(r);
    }
    p->read_from = p->ncalls;
    for (size_t c = 0; c < ncalls; c++) {
        size_t first = calls[c].first, n = calls[c].n;
        pub_result *o = p->out + first;
        redisReply *r = rconn_reply(p->c);
        if (r && p->asking) {
            /* ASKING's +OK; a refusal shows in the call's own reply (MOVED). */
            freeReplyObject(r);
            r = rconn_reply(p->c);
        }
        int slot = -1;
        redis_addr to_node;
        enum cluster_redirect redirect = REDIRECT_NONE;
        if (!r) {
            node_lost(k, p, "publish", first, to);
            return false;
        }
        const char *merr = r->type == REDIS_REPLY_ARRAY && r->elements > n + 1 &&
                                   r->element[n + 1]->type == REDIS_REPLY_STRING
                               ? r->element[n + 1]->str
                               : NULL;
        if (merr && !strncmp(merr, "READONLY", 8)) {
            /* A replica (a server without "#!lua" runs the script there): what it
             * published reached only its own subscribers. As a refused call. */
            for (size_t i = 0; i < n; i++)
                o[i] = PUB_UNSENT;
            note_uncertain(k, evs, first, first + n);
            reconnect = true;
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", p->addr.host, p->addr.port, merr);
        } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= n) {
            k->ran = true;
            const char *why = r->elements > n && r->element[n]->type == REDIS_REPLY_STRING ? r->element[n]->str
                                                                                           : "unexpected reply";
            if (merr)
                note_mark_refused(k, evs[first], merr);
            else if (k->marks_failing && r->element[0]->type == REDIS_REPLY_INTEGER)
                note_mark_written(k, r, n);
            for (size_t i = 0; i < n; i++) {
                redisReply *e = r->element[i];
                long long v = e->type == REDIS_REPLY_INTEGER ? e->integer : -3;
                o[i] = v == 1 ? PUB_OK : v == 0 ? PUB_DUP : v == -1 ? PUB_GAP : PUB_FAILED;
                if (o[i] == PUB_OK && k->nuncertain && was_uncertain(k, evs[first + i]->id))
                    k->counters.possible_duplicates++;
                if (o[i] == PUB_FAILED)
                    note_refusal(k, why);
            }
        } else if (r->type == REDIS_REPLY_ERROR &&
                   (!strncmp(r->str, "NOSCRIPT", 8) || !strncmp(r->str, "READONLY", 8) ||
                    !strncmp(r->str, "LOADING", 7) || !strncmp(r->str, "MASTERDOWN", 10))) {
            /* Not about these events: the script cache was flushed, or this is no
             * longer a usable primary (a failover). Reconnecting finds the primary
             * again and loads the script. A legacy script may have run its PUBLISHes
             * before a replica refused its SET. */
            for (size_t i = 0; i < n; i++)
                o[i] = PUB_UNSENT;
            if (k->legacy_script && !strncmp(r->str, "READONLY", 8))
                note_uncertain(k, evs, first, first + n);
            reconnect = true;
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", p->addr.host, p->addr.port, r->str);
        } else if (r->type == REDIS_REPLY_ERROR && k->cl &&
                   ((redirect = cluster_parse_redirect(r->str, &p->addr, &slot, &to_node)) != REDIRECT_NONE ||
                    cluster_error_is_retry(r->str))) {
            /* The slot is elsewhere: for good (MOVED: the map is read again and the
             * events retried), or while it migrates (ASK); TRYAGAIN, CLUSTERDOWN: the
             * relay's backoff retries them. With global Pub/Sub an ASK is retried
             * once on the target (PUBLISH reaches every node). A shard channel stays
             * on the source until the migration ends (SETSLOT ... NODE), so an
             * SPUBLISH on the target would reach no subscriber: the run is parked
             * until the source answers MOVED. */
            bool park = redirect == REDIRECT_ASK && k->sharded;
            for (size_t i = 0; i < n; i++) {
                o[i] = park ? PUB_NOROUTE : PUB_UNSENT;
                if (redirect == REDIRECT_ASK && !park && to_node.port)
                    sink_note_ask(k, p, first + i, &to_node);
            }
            if (park && slot >= 0)
                note_migrating(k, slot);
            else if (redirect != REDIRECT_ASK || !to_node.port)
                k->refresh = true;
            if (redirect == REDIRECT_MOVED && slot == k->migrating_slot)
                k->migrating_slot = -1;
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", p->addr.host, p->addr.port, r->str);
        } else {
            /* The whole call refused. When the server takes no writes, or the user may
             * not run the script, that is no fault of this run: an outage, which holds
             * back no run (sink_publish sorts out an ACL rule that let other calls run).
             * Anything else (its mark key of another type) is this run's. */
            const char *why = r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type";
            bool wide = r->type == REDIS_REPLY_ERROR && refuses_everyone(why);
            calls[c].acl = wide && redis_error_is_acl(why);
            for (size_t i = 0; i < n; i++)
                o[i] = wide ? PUB_REFUSED : PUB_FAILED;
            note_refusal(k, why);
        }
        freeReplyObject(r);
    }
    if (hw_err[0] && k->ran)
        sink_hw_refused(k, hw_err);
    if (p->wait) {
        /* The server holds WAIT's reply for up to the wait timeout, which may be longer
         * than the command timeout: only silence beyond both is a lost connection. */
        redisReply *r = rconn_reply_held(p->c, k->wait_timeout_ms);
        if (!r) {
            /* Published, but whether the marks reached a replica is unknown: sent
             * again (after reconnecting), they are either found marked or published
             * once more, never left to a primary that may be gone. WAIT covers
             * every round of this node's calls, not only the last. */
            node_lost(k, p, "WAIT", 0, to);
            return false;
        }
        if (r->type != REDIS_REPLY_INTEGER || r->integer < k->wait_replicas) {
            k->counters.wait_short++;
            if (r->type == REDIS_REPLY_ERROR && !k->wait_refused_said) {
                /* A refusal (ACL without +wait) repeats every batch: said once. */
                char why[400];
                redis_explain_error(r->str, why, sizeof why);
                log_warn("redis: WAIT refused, batches are marked without it: %s", why);
                k->wait_refused_said = true;
            } else {
                log_debug("redis: WAIT %ld: %s", k->wait_replicas,
                          r->type == REDIS_REPLY_INTEGER ? "fewer replicas acknowledged in time"
                                                         : "unexpected reply");
            }
        }
        freeReplyObject(r);
    }
    if (reconnect) {
        sink_drop(k, &p->c);
        return false;
    }
    return true;
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

/* Argument scratch for one call, grown as needed. */
typedef struct call_args {
    buf text; /* every argument, one after the other */
    const char **argv;
    size_t *len, *off, cap;
} call_args;

/* Queues one call for p->evs[first..first + n), all of one run; *queued grows by its
 * size. False with the reason in k->err. */
static bool append_call(sink *k, pub_node *p, size_t first, size_t n, call_args *a, size_t *queued)
{
    size_t argc = 8 + 3 * n;
    if (argc > a->cap) {
        const char **v = realloc(a->argv, argc * sizeof *v);
        if (v)
            a->argv = v;
        size_t *l = realloc(a->len, argc * sizeof *l);
        if (l)
            a->len = l;
        size_t *o = realloc(a->off, argc * sizeof *o);
        if (o)
            a->off = o;
        if (!v || !l || !o)
            goto oom;
        a->cap = argc;
    }
    /* Arguments are written to one buffer (which may move as it grows) and pointed at
     * once all are there. */
    buf *t = &a->text;
    buf_reset(t);
    const event *e0 = p->evs[first];
    size_t j = 0;
#define ARG(expr)                                                                                                     \
    do {                                                                                                              \
        a->off[j] = t->len;                                                                                           \
        if (!(expr))                                                                                                  \
            goto oom;                                                                                                 \
        a->len[j] = t->len - a->off[j];                                                                               \
        j++;                                                                                                          \
    } while (0)
    ARG(buf_puts(t, "EVALSHA"));
    ARG(buf_puts(t, k->sha));
    ARG(buf_puts(t, "1"));
    ARG(k->cl ? cluster_mark_key(t, k->epoch, e0->run_id, e0->run_id_len)
              : buf_printf(t, "outboxd:%s:mark:", k->epoch) && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, "run:") && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, k->ttl));
    ARG(buf_puts(t, p->chained[first] ? "1" : "0"));
    ARG(buf_puts(t, k->origin));
    for (size_t i = 0; i < n; i++) {
        const event *e = p->evs[first + i];
        ARG(buf_printf(t, "%lld", e->id));
        ARG(buf_printf(t, "%lld", e->seq));
        ARG(event_format_message(t, e));
    }
#undef ARG
    for (size_t i = 0; i < j; i++)
        a->argv[i] = t->data + a->off[i];
    if ((p->asking && !rconn_append(p->c, 1, (const char *[]){"ASKING"}, NULL)) ||
        !rconn_append(p->c, (int)j, a->argv, a->len)) {
        snprintf(k->err, sizeof k->err, "publish: %s", rconn_errstr(p->c));
        return false;
    }
    *queued += t->len;
    return true;
oom:
    snprintf(k->err, sizeof k->err, "publish: out of memory");
    return false;
}

/* Queues p's next calls, one per run, until PIPELINE_BYTES wait in the output buffer
 * or all are queued (then a WAIT), and writes them to the server. False when the
 * connection was lost or out of memory (it is then dropped). */
static bool send_calls(sink *k, pub_node *p, call_args *a)
{
    size_t queued = 0, from = p->next;
    /* Ahead of the batch on the same connection, so Redis raises it first. */
    if (p->hw && p->next == 0 && !rconn_append(p->c, 6, p->hw, NULL)) {
        snprintf(k->err, sizeof k->err, "high-water: %s", rconn_errstr(p->c));
        goto fail;
    }
    while (p->next < p->n && queued < PIPELINE_BYTES) {
        /* A call: this event and the chained ones after it, up to CALL_EVENTS. */
        size_t i = p->next, len = 1;
        while (i + len < p->n && p->chained[i + len] && len < CALL_EVENTS)
            len++;
        if (!append_call(k, p, i, len, a, &queued))
            goto fail;
        p->calls[p->ncalls++] = (call){i, len, false};
        p->next = i + len;
    }
    /* WAIT once per node per publish call, after its last command: the marks (and
     * messages) of the whole batch reach the replicas before it is marked published. */
    p->wait = p->next == p->n && k->wait_replicas > 0;
    if (p->wait && !rconn_append(p->c, 3, (const char *[]){"WAIT", k->wait_n, k->wait_timeout}, NULL)) {
        snprintf(k->err, sizeof k->err, "publish: %s", rconn_errstr(p->c));
        goto fail;
    }
    if (!rconn_flush(p->c)) {
        node_lost(k, p, "publish", from, p->next);
        return false;
    }
    return true;
fail:
    /* Nothing of this round was written: the connection is out of step all the same. */
    sink_drop(k, &p->c);
    return false;
}

/* Publishes each node's events on its connection p[i].c (the nodes without one are
 * left out), the nodes side by side: every node's calls are written before any reply
 * is read, so that a batch costs one round trip however many nodes it spans (and
 * one more per PIPELINE_BYTES a node gets). Replies are read in the order of p: a
 * node that stays silent holds up the reading of the ones after it, not their
 * publishing, which they did meanwhile. False when a connection was lost (it is
 * dropped: p[i].c is NULL) or out of memory. */
bool sink_publish_nodes(sink *k, pub_node *p, int np)
{
    size_t total = 0;
    for (int j = 0; j < np; j++)
        total += p[j].n;
    call *calls = malloc((total ? total : 1) * sizeof *calls);
    if (!calls) {
        snprintf(k->err, sizeof k->err, "publish: out of memory");
        for (int j = 0; j < np; j++)
            sink_drop(k, &p[j].c);
        return false;
    }
    call_args args = {0};
    buf_init(&args.text, 0);
    size_t at = 0;
    for (int j = 0; j < np; at += p[j++].n)
        p[j].calls = calls + at;
    bool ok = true, more = true;
    while (more) {
        for (int j = 0; j < np; j++)
            if (p[j].c && p[j].next < p[j].n && !send_calls(k, &p[j], &args))
                ok = false;
        more = false;
        for (int j = 0; j < np; j++) {
            if (p[j].c && p[j].read_from < p[j].ncalls && !read_replies(k, &p[j]))
                ok = false;
            more |= p[j].c && p[j].next < p[j].n;
        }
    }
    /* An ACL denial of a whole call while other calls ran is about that run (a key
     * rule that leaves out its mark): its run is held back, like a refused PUBLISH. */
    for (int j = 0; k->ran && j < np; j++)
        for (size_t c = 0; c < p[j].ncalls; c++)
            for (size_t i = 0; p[j].calls[c].acl && i < p[j].calls[c].n; i++)
                p[j].out[p[j].calls[c].first + i] = PUB_FAILED;
    free(calls);
    free(args.argv);
    free(args.len);
    free(args.off);
    buf_free(&args.text);
    return ok;
}

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    k->refused = k->ran = false;
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
