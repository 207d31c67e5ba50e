/* The sink's publish pipeline: one script call per run, queued on a node's
 * connection, written, and the replies mapped to each event's pub_result; the nodes
 * of a batch side by side. */
#include "redis_sink_int.h"

#include "buf.h"
#include "clock.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A run's events go in calls of at most this many (a continuation is chained). */
#define CALL_EVENTS 1000
/* Bytes of commands queued before replies are read, so a batch of large payloads
 * does not pile up in hiredis's output buffer. */
#define PIPELINE_BYTES (4u << 20)
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

bool sink_error_no_writes(const char *reply)
{
    return !strncmp(reply, "NOREPLICAS", 10) || !strncmp(reply, "OOM", 3) || !strncmp(reply, "MISCONF", 7) ||
           !strncmp(reply, "BUSY", 4);
}

bool sink_error_reconnect(const char *reply)
{
    return !strncmp(reply, "NOSCRIPT", 8) || !strncmp(reply, "READONLY", 8) || !strncmp(reply, "LOADING", 7) ||
           !strncmp(reply, "MASTERDOWN", 10);
}

/* An error that refuses every run alike: an ACL denial, or a primary that takes no
 * writes now. */
static bool refuses_everyone(const char *reply)
{
    return redis_error_is_acl(reply) || sink_error_no_writes(reply);
}

/* Events of e's run that Redis refused (the script did not publish them, or the whole
 * call was refused): the reason goes to k->err, and a refusal of everyone is noted for
 * sink_refusing. One that may be this run's own (own: it may end as PUB_FAILED, not as
 * an outage) is kept for the run (sink_run_errstr). */
static void note_refusal(sink *k, const event *e, const char *reply, bool own)
{
    k->refused |= refuses_everyone(reply);
    char why[400];
    redis_explain_error(reply, why, sizeof why);
    snprintf(k->err, sizeof k->err, "publish: %s", why);
    if (!own)
        return;
    int i = 0;
    while (i < k->nrun_err && !event_run_is(e, k->run_err[i].run, k->run_err[i].len))
        i++;
    if (i == RUN_ERRORS)
        return;
    if (i == k->nrun_err) {
        k->nrun_err++;
        k->run_err[i].run = e->run_id;
        k->run_err[i].len = e->run_id_len;
    }
    snprintf(k->run_err[i].why, sizeof k->run_err[i].why, "publish: %s", why);
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
            p->ran = true;
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
                    note_refusal(k, evs[first + i], why, true);
            }
        } else if (r->type == REDIS_REPLY_ERROR && sink_error_reconnect(r->str)) {
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
            note_refusal(k, evs[first], why, !wide || calls[c].acl);
        }
        freeReplyObject(r);
    }
    if (hw_err[0] && p->ran)
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

/* An ASK redirection of the event at index i of node p: retried on to (retry_asks). */
void sink_note_ask(sink *k, pub_node *p, size_t i, const redis_addr *to)
{
    if (p->asking)
        return; /* retried once only: the next attempt reads the map again */
    int t;
    for (t = 0; t < k->nask_to; t++)
        if (k->ask_to[t].port == to->port && !strcmp(k->ask_to[t].host, to->host))
            break;
    if (t == k->nask_to) {
        if (t == ASK_TARGETS)
            return; /* too many targets at once: retried with the next attempt */
        k->ask_to[k->nask_to++] = *to;
    }
    p->ask[i] = t;
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
    /* An ACL denial of a whole call while other calls on the same node ran is about
     * that run (a key rule that leaves out its mark): its run is held back, like a
     * refused PUBLISH. A node that refused every call refuses everyone: an outage. */
    for (int j = 0; j < np; j++)
        for (size_t c = 0; p[j].ran && c < p[j].ncalls; c++)
            for (size_t i = 0; p[j].calls[c].acl && i < p[j].calls[c].n; i++)
                p[j].out[p[j].calls[c].first + i] = PUB_FAILED;
    free(calls);
    free(args.argv);
    free(args.len);
    free(args.off);
    buf_free(&args.text);
    return ok;
}

