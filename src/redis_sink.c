/* hiredis (synchronous API, with connect and command timeouts) behind the sink. */
#include "redis_sink.h"

#include "buf.h"
#include "log.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* One call per run per batch: KEYS[1] = the run's mark key; ARGV = channel, mark ttl
 * in ms, chained, then id, seq, message for each of the run's events in order.
 * The mark is "id:seq" of the last event published for the run. Ids and seqs only
 * grow within a run in commit order, so an event at or below the mark in both was
 * published already. One above it in either is new: if the database numbering went
 * back (a restore, a re-created table), that costs at most a duplicate, never a
 * silently dropped event. Every event but the first, and the first when `chained`
 * says its predecessor was in an earlier call, needs the mark to be its direct
 * predecessor (seq - 1), or a failed predecessor would be overtaken. Each PUBLISH
 * comes before the mark moves past it; a PUBLISH that fails stops the run there, and
 * the mark is set to the last event that went out. Returns one number per event (1
 * published, 0 duplicate, -1 held back behind one that did not go out, -2 failed),
 * then the error of the failed one, if any. */
const char redis_sink_publish_script[] =
    "local m = redis.call('GET', KEYS[1])\n"
    "local mid, mseq\n"
    "if m then\n"
    "  local a, b = string.match(m, '^(%d+):(%d+)$')\n"
    "  mid, mseq = tonumber(a), tonumber(b)\n"
    "end\n"
    "local out, err, stop, last = {}, nil, false, nil\n"
    "local need = ARGV[3] == '1'\n"
    "for i = 4, #ARGV, 3 do\n"
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
    "      mid, mseq, last = id, seq, ARGV[i] .. ':' .. ARGV[i + 1]\n"
    "      out[#out + 1] = 1\n"
    "    end\n"
    "  end\n"
    "  need = true\n"
    "end\n"
    "if last then redis.call('SET', KEYS[1], last, 'PX', ARGV[2]) end\n"
    "if err then out[#out + 1] = err end\n"
    "return out\n";

/* A run's events go in calls of at most this many (a continuation is chained). */
#define CALL_EVENTS 1000
/* Bytes of commands queued before replies are read, so a batch of large payloads
 * does not pile up in hiredis's output buffer. */
#define PIPELINE_BYTES (4u << 20)

struct sink {
    redis_url url;
    long timeout_ms;
    char ttl[24];
    char epoch[64];
    redisContext *ctx;
    char sha[41];
    char err[512];
};

sink *sink_new(const redis_url *url, long timeout_ms, long mark_ttl_ms, const char *epoch)
{
    sink *k = calloc(1, sizeof *k);
    if (!k)
        return NULL;
    k->url = *url;
    k->timeout_ms = timeout_ms;
    snprintf(k->ttl, sizeof k->ttl, "%ld", mark_ttl_ms);
    sink_set_epoch(k, epoch);
    return k;
}

void sink_set_epoch(sink *k, const char *epoch)
{
    snprintf(k->epoch, sizeof k->epoch, "%s", epoch ? epoch : "");
}

void sink_free(sink *k)
{
    if (!k)
        return;
    sink_disconnect(k);
    free(k);
}

void sink_disconnect(sink *k)
{
    if (k->ctx)
        redisFree(k->ctx);
    k->ctx = NULL;
}

bool sink_connected(const sink *k)
{
    return k->ctx != NULL;
}

const char *sink_errstr(const sink *k)
{
    return k->err;
}

/* Runs one command during connection set-up; false (with err set) unless the reply
 * has the wanted type. The reply is handed out through *out when out is not NULL. */
static bool setup_cmd(sink *k, int want, redisReply **out, const char *what, int argc,
                      const char **argv)
{
    redisReply *r = redisCommandArgv(k->ctx, argc, argv, NULL);
    if (!r) {
        snprintf(k->err, sizeof k->err, "%s: %s", what, k->ctx->errstr[0] ? k->ctx->errstr : "no reply");
        return false;
    }
    if ((int)r->type != want) {
        snprintf(k->err, sizeof k->err, "%s: %s", what,
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
        freeReplyObject(r);
        return false;
    }
    if (out)
        *out = r;
    else
        freeReplyObject(r);
    return true;
}

bool sink_connect(sink *k)
{
    sink_disconnect(k);
    struct timeval tv = {.tv_sec = k->timeout_ms / 1000, .tv_usec = (k->timeout_ms % 1000) * 1000};
    k->ctx = redisConnectWithTimeout(k->url.host, k->url.port, tv);
    if (!k->ctx || k->ctx->err) {
        snprintf(k->err, sizeof k->err, "connect %s:%d: %s", k->url.host, k->url.port,
                 k->ctx ? k->ctx->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(k->ctx, tv) != REDIS_OK || redisEnableKeepAlive(k->ctx) != REDIS_OK) {
        snprintf(k->err, sizeof k->err, "set timeout: %s", k->ctx->errstr);
        goto fail;
    }
    if (k->url.password[0]) {
        const char *argv[] = {"AUTH", k->url.user, k->url.password};
        bool with_user = k->url.user[0] != '\0';
        if (!setup_cmd(k, REDIS_REPLY_STATUS, NULL, "AUTH", with_user ? 3 : 2,
                       with_user ? argv : (const char *[]){"AUTH", k->url.password}))
            goto fail;
    }
    if (k->url.db) {
        char db[16];
        snprintf(db, sizeof db, "%d", k->url.db);
        const char *argv[] = {"SELECT", db};
        if (!setup_cmd(k, REDIS_REPLY_STATUS, NULL, "SELECT", 2, argv))
            goto fail;
    }
    redisReply *r;
    const char *argv[] = {"SCRIPT", "LOAD", redis_sink_publish_script};
    if (!setup_cmd(k, REDIS_REPLY_STRING, &r, "SCRIPT LOAD", 3, argv))
        goto fail;
    snprintf(k->sha, sizeof k->sha, "%s", r->str);
    freeReplyObject(r);
    return true;
fail:
    sink_disconnect(k);
    return false;
}

/* One queued call: the events evs[first..first + n) of one run. */
typedef struct call {
    size_t first, n;
} call;

/* Reads the replies of calls[0..ncalls), mapping each event's number to a pub_result. */
static bool read_replies(sink *k, const call *calls, size_t ncalls, pub_result *out)
{
    bool reload = false;
    for (size_t c = 0; c < ncalls; c++) {
        pub_result *o = out + calls[c].first;
        size_t n = calls[c].n;
        redisReply *r = NULL;
        if (redisGetReply(k->ctx, (void **)&r) != REDIS_OK || !r) {
            snprintf(k->err, sizeof k->err, "publish: %s",
                     k->ctx->errstr[0] ? k->ctx->errstr : "connection lost");
            for (size_t j = calls[c].first; j < calls[ncalls - 1].first + calls[ncalls - 1].n; j++)
                out[j] = PUB_UNSENT;
            sink_disconnect(k);
            return false;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements >= n) {
            for (size_t i = 0; i < n; i++) {
                redisReply *e = r->element[i];
                long long v = e->type == REDIS_REPLY_INTEGER ? e->integer : -3;
                o[i] = v == 1 ? PUB_OK : v == 0 ? PUB_DUP : v == -1 ? PUB_GAP : PUB_FAILED;
                if (v == -2 || v == -3)
                    snprintf(k->err, sizeof k->err, "publish: %s",
                             r->elements > n && r->element[n]->type == REDIS_REPLY_STRING ? r->element[n]->str
                                                                                           : "unexpected reply");
            }
        } else if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
            /* The script cache was flushed: reconnecting loads it again. */
            for (size_t i = 0; i < n; i++)
                o[i] = PUB_UNSENT;
            reload = true;
            snprintf(k->err, sizeof k->err, "publish: %s", r->str);
        } else {
            for (size_t i = 0; i < n; i++)
                o[i] = PUB_FAILED;
            snprintf(k->err, sizeof k->err, "publish: %s",
                     r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply type");
        }
        freeReplyObject(r);
    }
    if (reload) {
        sink_disconnect(k);
        return false;
    }
    return true;
}

/* Argument scratch for one call, grown as needed. */
typedef struct call_args {
    buf text;          /* every argument, one after the other */
    const char **argv;
    size_t *len, *off, cap;
} call_args;

/* Queues one call for evs[first..first + n), all of one run; *queued grows by its
 * size. */
static bool append_call(sink *k, const event *const *evs, size_t first, size_t n, bool chained, call_args *a,
                        size_t *queued)
{
    size_t argc = 7 + 3 * n;
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
            return false;
        a->cap = argc;
    }
    /* Arguments are written to one buffer (which may move as it grows) and pointed at
     * once all are there. */
    buf *t = &a->text;
    buf_reset(t);
    const event *e0 = evs[first];
    size_t j = 0;
#define ARG(expr)                                                                                      do {                                                                                                   a->off[j] = t->len;                                                                                if (!(expr))                                                                                           return false;                                                                                  a->len[j] = t->len - a->off[j];                                                                    j++;                                                                                           } while (0)
    ARG(buf_puts(t, "EVALSHA"));
    ARG(buf_puts(t, k->sha));
    ARG(buf_puts(t, "1"));
    ARG(buf_printf(t, "outboxd:%s:mark:", k->epoch) && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, "run:") && buf_append(t, e0->run_id, e0->run_id_len));
    ARG(buf_puts(t, k->ttl));
    ARG(buf_puts(t, chained ? "1" : "0"));
    for (size_t i = 0; i < n; i++) {
        const event *e = evs[first + i];
        ARG(buf_printf(t, "%lld", e->id));
        ARG(buf_printf(t, "%lld", e->seq));
        ARG(event_format_message(t, e));
    }
#undef ARG
    for (size_t i = 0; i < j; i++)
        a->argv[i] = t->data + a->off[i];
    if (redisAppendCommandArgv(k->ctx, (int)j, a->argv, a->len) != REDIS_OK)
        return false;
    *queued += t->len;
    return true;
}

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    if (!k->ctx) {
        snprintf(k->err, sizeof k->err, "publish: not connected");
        return false;
    }
    call_args args = {0};
    buf_init(&args.text, 0);
    size_t queued = 0, ncalls = 0;
    call *calls = malloc((n ? n : 1) * sizeof *calls);
    bool ok = calls != NULL;
    size_t read_from = 0;
    for (size_t i = 0; i < n && ok;) {
        /* A call: this event and the chained ones after it, up to CALL_EVENTS. */
        size_t len = 1;
        while (i + len < n && chained[i + len] && len < CALL_EVENTS)
            len++;
        if (!append_call(k, evs, i, len, chained[i], &args, &queued)) {
            snprintf(k->err, sizeof k->err, "publish: out of memory");
            ok = false;
            break;
        }
        calls[ncalls++] = (call){i, len};
        i += len;
        /* Bound what waits in hiredis's output buffer: read the replies so far. */
        if (queued >= PIPELINE_BYTES || i == n) {
            ok = read_replies(k, calls + read_from, ncalls - read_from, out);
            read_from = ncalls;
            queued = 0;
        }
    }
    if (!ok && k->ctx) {
        /* Commands may be queued without replies read: the context is out of step. */
        sink_disconnect(k);
    }
    free(calls);
    free(args.argv);
    free(args.len);
    free(args.off);
    buf_free(&args.text);
    return ok;
}
