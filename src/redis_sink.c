/* The sink on our blocking Redis connection (redis_conn.c), reaching the primary
 * through redis_endpoint.c (TLS, sentinels). */
#include "redis_sink.h"

#include "buf.h"
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
 * leader detects it by the high-water below and starts a new epoch. The origin (the
 * cluster's system identifier and the database's oid) tells a logical copy of the database, which keeps the epoch of the
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
const char redis_sink_publish_script[] =
    SHEBANG
    "local m = redis.call('GET', KEYS[1])\n"
    "local mid, mseq\n"
    "local origin = ARGV[4]\n"
    "if m then\n"
    "  local a, b, o = string.match(m, '^(%d+):(%d+):?(.*)$')\n"
    "  if a and (o == '' or origin == '' or o == origin) then mid, mseq = tonumber(a), tonumber(b) end\n"
    "end\n"
    "if origin ~= '' then origin = ':' .. origin end\n"
    "local out, err, stop, last = {}, nil, false, nil\n"
    "local need = ARGV[3] == '1'\n"
    "for i = 5, #ARGV, 3 do\n"
    "  local id, seq = tonumber(ARGV[i]), tonumber(ARGV[i + 1])\n"
    "  if mid and id <= mid and seq <= mseq then\n"
    "    out[#out + 1] = 0\n"
    "  elseif stop or (need and (not mseq or mseq ~= seq - 1)) then\n"
    "    stop = true\n"
    "    out[#out + 1] = -1\n"
    "  else\n"
    "    local r = redis.pcall('PUBLISH', ARGV[1], ARGV[i + 2])\n"
    "    if type(r) == 'table' and r.err then\n"
    "      stop, err = true, r.err\n"
    "      out[#out + 1] = -2\n"
    "    else\n"
    "      mid, mseq, last = id, seq, ARGV[i] .. ':' .. ARGV[i + 1] .. origin\n"
    "      out[#out + 1] = 1\n"
    "    end\n"
    "  end\n"
    "  need = true\n"
    "end\n"
    "local merr = false\n"
    "if last then\n"
    "  local r = redis.pcall('SET', KEYS[1], last, 'PX', ARGV[2])\n"
    "  if type(r) == 'table' and r.err then merr = r.err end\n"
    "end\n"
    "out[#out + 1] = err or false\n"
    "out[#out + 1] = merr\n"
    "return out\n";

/* The high-water of published ids, outboxd:{epoch}:hw[:origin]: raised to the highest id
 * of each batch before its events are published (and so before PostgreSQL marks
 * them), kept as long as the marks. Its own command on its own key, apart from the
 * per-run calls, so that in a cluster it goes to the node of its own slot. Ids are
 * drawn from one sequence that never goes back in normal operation, so a leader that
 * finds it above the sequence knows the numbering went back (relay.c). */
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

/* Ranges of event ids whose publish outcome was lost with a connection. */
#define UNCERTAIN_RANGES 8

struct sink {
    redis_endpoint *ep;
    long wait_replicas;
    char wait_timeout[24];
    char ttl[24];
    char epoch[64];
    char origin[48]; /* "system identifier.database oid", or "" */
    bool announce;
    rconn *c;
    redis_addr addr;      /* where c is connected */
    redis_addr last_addr; /* the primary of the previous connection ("" before the first) */
    sentinel_watch watch;
    bool legacy_script;   /* the server refused "#!lua" (Redis before 7): no flags */
    bool wait_refused_said;
    bool marks_failing;   /* the last mark written (or not) was refused */
    char sha[41];
    char hw_sha[41];
    bool hw_failing;      /* the last raise of the high-water was refused (said once) */
    char err[1024];
    struct {
        long long lo, hi;
    } uncertain[UNCERTAIN_RANGES];
    int nuncertain, next_uncertain;
    sink_counters counters;
    bool refused; /* in the current publish call: an ACL denial, or no writes taken */
    bool refusing;
    char refusal[1024];
};

sink *sink_new(redis_endpoint *e, const config *cfg, const char *epoch, bool announce)
{
    sink *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->ep = e;
    k->announce = announce;
    k->wait_replicas = cfg->redis_wait_replicas;
    snprintf(k->wait_timeout, sizeof k->wait_timeout, "%ld", cfg->redis_wait_timeout_ms);
    snprintf(k->ttl, sizeof k->ttl, "%ld", cfg->mark_ttl_ms);
    sentinel_watch_init(&k->watch, e);
    sink_set_epoch(k, epoch, "");
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
    free(k);
}

void sink_disconnect(sink *k)
{
    rconn_free(k->c);
    k->c = NULL;
}

bool sink_connected(const sink *k)
{
    return k->c != NULL;
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

/* Loads a script into sha; a server before Redis 7 gets it without "#!lua". */
static bool load_script(sink *k, const char *script, char sha[41])
{
    for (;;) {
        const char *src = script + (k->legacy_script ? sizeof SHEBANG - 1 : 0);
        const char *argv[] = {"SCRIPT", "LOAD", src};
        redisReply *r = rconn_command(k->c, 3, argv, NULL);
        if (!r) {
            snprintf(k->err, sizeof k->err, "SCRIPT LOAD: %s", rconn_errstr(k->c));
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
            snprintf(k->err, sizeof k->err, "%s:%d: SCRIPT LOAD: %s", k->addr.host, k->addr.port, why);
        }
        freeReplyObject(r);
        return ok;
    }
}

bool sink_connect(sink *k)
{
    sink_disconnect(k);
    k->c = redis_endpoint_connect(k->ep, &k->addr, k->err, sizeof k->err);
    if (!k->c || !load_script(k, redis_sink_publish_script, k->sha) ||
        !load_script(k, redis_sink_hw_script, k->hw_sha)) {
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

/* One queued call: the events evs[first..first + n) of one run. */
typedef struct call {
    size_t first, n;
} call;

/* An event the script did not publish because Redis refused it: the reason goes to
 * k->err. An ACL denial, or a primary that takes no writes now (too few replicas for
 * min-replicas-to-write, out of memory, a failed snapshot), refuses every run alike:
 * noted for sink_refusing. */
static void note_refusal(sink *k, const char *reply)
{
    k->refused |= redis_error_is_acl(reply) || !strncmp(reply, "NOREPLICAS", 10) || !strncmp(reply, "OOM", 3) ||
                  !strncmp(reply, "MISCONF", 7);
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

/* Reads the replies of calls[0..ncalls) (and of the WAIT after them when wait),
 * mapping each event's number to a pub_result. */
static bool read_replies(sink *k, const event *const *evs, const call *calls, size_t ncalls, bool wait,
                         pub_result *out)
{
    bool reconnect = false;
    size_t from = calls[0].first, to = calls[ncalls - 1].first + calls[ncalls - 1].n;
    for (size_t c = 0; c < ncalls; c++) {
        size_t first = calls[c].first, n = calls[c].n;
        pub_result *o = out + first;
        redisReply *r = rconn_reply(k->c);
        if (!r) {
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", k->addr.host, k->addr.port, rconn_errstr(k->c));
            for (size_t j = first; j < to; j++)
                out[j] = PUB_UNSENT;
            note_uncertain(k, evs, first, to);
            sink_disconnect(k);
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
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", k->addr.host, k->addr.port, merr);
        } else if (r->type == REDIS_REPLY_ARRAY && r->elements >= n) {
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
            snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", k->addr.host, k->addr.port, r->str);
        } else {
            for (size_t i = 0; i < n; i++)
                o[i] = PUB_FAILED;
            note_refusal(k, r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
        }
        freeReplyObject(r);
    }
    if (wait) {
        redisReply *r = rconn_reply(k->c);
        if (!r) {
            /* Published, but whether the marks reached a replica is unknown: sent
             * again (after reconnecting), they are either found marked or published
             * once more, never left to a primary that may be gone. */
            snprintf(k->err, sizeof k->err, "%s:%d: WAIT: %s", k->addr.host, k->addr.port, rconn_errstr(k->c));
            for (size_t i = from; i < to; i++)
                if (out[i] == PUB_OK || out[i] == PUB_DUP)
                    out[i] = PUB_UNSENT;
            note_uncertain(k, evs, from, to);
            sink_disconnect(k);
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
        sink_disconnect(k);
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
    if (went)
        k->refusing = false;
    else if (k->refused) {
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

/* Queues one call for evs[first..first + n), all of one run; *queued grows by its
 * size. False with the reason in k->err. */
static bool append_call(sink *k, const event *const *evs, size_t first, size_t n, bool chained, call_args *a,
                        size_t *queued)
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
    const event *e0 = evs[first];
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
    ARG(buf_printf(t, "outboxd:%s:mark:", k->epoch) && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, "run:") && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, k->ttl));
    ARG(buf_puts(t, chained ? "1" : "0"));
    ARG(buf_puts(t, k->origin));
    for (size_t i = 0; i < n; i++) {
        const event *e = evs[first + i];
        ARG(buf_printf(t, "%lld", e->id));
        ARG(buf_printf(t, "%lld", e->seq));
        ARG(event_format_message(t, e));
    }
#undef ARG
    for (size_t i = 0; i < j; i++)
        a->argv[i] = t->data + a->off[i];
    if (!rconn_append(k->c, (int)j, a->argv, a->len)) {
        snprintf(k->err, sizeof k->err, "publish: %s", rconn_errstr(k->c));
        return false;
    }
    *queued += t->len;
    return true;
oom:
    snprintf(k->err, sizeof k->err, "publish: out of memory");
    return false;
}

static void hw_key(const sink *k, char *key, size_t len)
{
    snprintf(key, len, "outboxd:%s:hw%s%s", k->epoch, k->origin[0] ? ":" : "", k->origin);
}

bool sink_high_water(sink *k, long long *hw)
{
    if (!k->c && !sink_connect(k))
        return false;
    char key[160];
    hw_key(k, key, sizeof key);
    redisReply *r = rconn_command(k->c, 2, (const char *[]){"GET", key}, NULL);
    if (!r) {
        snprintf(k->err, sizeof k->err, "%s:%d: GET %s: %s", k->addr.host, k->addr.port, key, rconn_errstr(k->c));
        sink_disconnect(k);
        return false;
    }
    bool ok = r->type == REDIS_REPLY_NIL || r->type == REDIS_REPLY_STRING;
    *hw = r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    if (!ok) {
        char why[400];
        redis_explain_error(r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", why, sizeof why);
        snprintf(k->err, sizeof k->err, "%s:%d: GET %s: %s", k->addr.host, k->addr.port, key, why);
    }
    freeReplyObject(r);
    return ok;
}

/* Queues the raise of the high-water to the highest id of evs[0..n). */
static bool append_hw(sink *k, const event *const *evs, size_t n)
{
    long long top = 0;
    for (size_t i = 0; i < n; i++)
        top = evs[i]->id > top ? evs[i]->id : top;
    char key[160], id[24];
    hw_key(k, key, sizeof key);
    snprintf(id, sizeof id, "%lld", top);
    if (!rconn_append(k->c, 6, (const char *[]){"EVALSHA", k->hw_sha, "1", key, id, k->ttl}, NULL)) {
        snprintf(k->err, sizeof k->err, "publish: %s", rconn_errstr(k->c));
        return false;
    }
    return true;
}

/* The reply to append_hw, read before the calls' replies. No reply: the connection is
 * lost, nothing of the batch counts as sent. A refusal (an ACL user without SET, a
 * primary taking no writes) costs only the detection of numbering that went back:
 * said once, counted with the marks' failures. Errors the calls meet as well
 * (NOSCRIPT, READONLY, LOADING, MASTERDOWN, and the refusals of every write that
 * refuse the declared-writing publish script before it runs) are handled with
 * theirs. */
static bool read_hw(sink *k, const event *const *evs, size_t n)
{
    redisReply *r = rconn_reply(k->c);
    if (!r) {
        snprintf(k->err, sizeof k->err, "%s:%d: publish: %s", k->addr.host, k->addr.port, rconn_errstr(k->c));
        note_uncertain(k, evs, 0, n);
        sink_disconnect(k);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        bool theirs = !strncmp(r->str, "NOSCRIPT", 8) || !strncmp(r->str, "READONLY", 8) ||
                      !strncmp(r->str, "LOADING", 7) || !strncmp(r->str, "MASTERDOWN", 10) ||
                      !strncmp(r->str, "NOREPLICAS", 10) || !strncmp(r->str, "OOM", 3) ||
                      !strncmp(r->str, "MISCONF", 7) || !strncmp(r->str, "BUSY", 4);
        if (!theirs) {
            k->counters.mark_failures++;
            if (!k->hw_failing) {
                char why[400];
                redis_explain_error(r->str, why, sizeof why);
                log_warn("redis: the high-water of published ids could not be raised (%s): a restored database "
                         "whose numbering went back is not detected meanwhile (docs/GUARANTEES.md)",
                         why);
            }
            k->hw_failing = true;
        }
    } else if (k->hw_failing) {
        k->hw_failing = false;
        log_info("redis: the high-water of published ids is raised again");
    }
    freeReplyObject(r);
    return true;
}

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    k->refused = false;
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
    call_args args = {0};
    buf_init(&args.text, 0);
    size_t queued = 0, ncalls = 0, read_from = 0;
    call *calls = malloc((n ? n : 1) * sizeof *calls);
    bool ok = calls != NULL;
    if (!ok)
        snprintf(k->err, sizeof k->err, "publish: out of memory");
    char wait_n[24];
    snprintf(wait_n, sizeof wait_n, "%ld", k->wait_replicas);
    bool hw_queued = ok && n > 0 && append_hw(k, evs, n);
    ok = ok && (n == 0 || hw_queued);
    for (size_t i = 0; i < n && ok;) {
        /* A call: this event and the chained ones after it, up to CALL_EVENTS. */
        size_t len = 1;
        while (i + len < n && chained[i + len] && len < CALL_EVENTS)
            len++;
        if (!append_call(k, evs, i, len, chained[i], &args, &queued)) {
            ok = false;
            break;
        }
        calls[ncalls++] = (call){i, len};
        i += len;
        /* Bound what waits in the output buffer: read the replies so far. */
        if (queued >= PIPELINE_BYTES || i == n) {
            /* WAIT once per call of sink_publish, after its last command: the marks
             * (and messages) of the whole batch reach the replicas before it is
             * marked published. */
            bool wait = i == n && k->wait_replicas > 0;
            if (wait && !rconn_append(k->c, 3, (const char *[]){"WAIT", wait_n, k->wait_timeout}, NULL)) {
                snprintf(k->err, sizeof k->err, "publish: %s", rconn_errstr(k->c));
                ok = false;
                break;
            }
            if (hw_queued) {
                hw_queued = false;
                if (!read_hw(k, evs, n)) {
                    ok = false;
                    break;
                }
            }
            ok = read_replies(k, evs, calls + read_from, ncalls - read_from, wait, out);
            read_from = ncalls;
            queued = 0;
        }
    }
    if (!ok && k->c) {
        /* Commands may be queued without replies read: the connection is out of step. */
        sink_disconnect(k);
    }
    note_outcome(k, out, n);
    free(calls);
    free(args.argv);
    free(args.len);
    free(args.off);
    buf_free(&args.text);
    return ok;
}
