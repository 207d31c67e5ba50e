/* hiredis (synchronous API, with connect and command timeouts) behind the sink. */
#include "redis_sink.h"

#include "buf.h"
#include "log.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* KEYS[1] = the run's mark key. ARGV = channel, id, seq, message, ttl ms, chained.
 * The mark is "id:seq" of the last event published for the run. Ids and seqs only
 * grow within a run in commit order, so an event at or below the mark in both was
 * published already. One above it in either is new: if the database numbering went
 * back (a restore, a re-created table), that costs at most a duplicate, never a
 * silently dropped event. A chained event
 * needs the mark to be its direct predecessor (seq - 1), or a failed predecessor in
 * the same pipeline would be overtaken. Returns 1 published, 0 duplicate, -1 gap. */
const char redis_sink_publish_script[] =
    "local m = redis.call('GET', KEYS[1])\n"
    "local id = tonumber(ARGV[2])\n"
    "if m then\n"
    "  local mid, mseq = string.match(m, '^(%d+):(%d+)$')\n"
    "  if mid and id <= tonumber(mid) and tonumber(ARGV[3]) <= tonumber(mseq) then return 0 end\n"
    "  if ARGV[6] == '1' and (not mseq or tonumber(mseq) ~= tonumber(ARGV[3]) - 1) then return -1 end\n"
    "elseif ARGV[6] == '1' then\n"
    "  return -1\n"
    "end\n"
    "redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[5])\n"
    "redis.call('PUBLISH', ARGV[1], ARGV[4])\n"
    "return 1\n";

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

/* Reads the replies of out[from..to), mapping each to a pub_result. */
static bool read_replies(sink *k, size_t from, size_t to, pub_result *out)
{
    bool reload = false;
    for (size_t i = from; i < to; i++) {
        redisReply *r = NULL;
        if (redisGetReply(k->ctx, (void **)&r) != REDIS_OK || !r) {
            snprintf(k->err, sizeof k->err, "publish: %s",
                     k->ctx->errstr[0] ? k->ctx->errstr : "connection lost");
            for (size_t j = i; j < to; j++)
                out[j] = PUB_UNSENT;
            sink_disconnect(k);
            return false;
        }
        if (r->type == REDIS_REPLY_INTEGER) {
            out[i] = r->integer == 1 ? PUB_OK : r->integer == 0 ? PUB_DUP : PUB_GAP;
        } else if (r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
            /* The script cache was flushed: reconnecting loads it again. */
            out[i] = PUB_UNSENT;
            reload = true;
            snprintf(k->err, sizeof k->err, "publish: %s", r->str);
        } else {
            out[i] = PUB_FAILED;
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

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    if (!k->ctx) {
        snprintf(k->err, sizeof k->err, "publish: not connected");
        return false;
    }
    buf key, channel, msg;
    buf_init(&key, 0);
    buf_init(&channel, 0);
    buf_init(&msg, 0);
    bool ok = true;
    size_t sent_from = 0, queued = 0;
    for (size_t i = 0; i < n && ok; i++) {
        const event *e = evs[i];
        char id[24], seq[24];
        snprintf(id, sizeof id, "%lld", e->id);
        snprintf(seq, sizeof seq, "%lld", e->seq);
        buf_reset(&key);
        buf_reset(&channel);
        buf_reset(&msg);
        if (!buf_printf(&key, "outboxd:%s:mark:", k->epoch) ||
            !buf_append(&key, e->run_id, e->run_id_len) || !buf_puts(&channel, "run:") ||
            !buf_append(&channel, e->run_id, e->run_id_len) || !event_format_message(&msg, e)) {
            snprintf(k->err, sizeof k->err, "publish: out of memory");
            ok = false;
            break;
        }
        const char *argv[] = {"EVALSHA", k->sha, "1", key.data, channel.data, id, seq,
                              msg.data, k->ttl, chained[i] ? "1" : "0"};
        size_t lens[] = {7, strlen(k->sha), 1, key.len, channel.len, strlen(id), strlen(seq),
                         msg.len, strlen(k->ttl), 1};
        if (redisAppendCommandArgv(k->ctx, 10, argv, lens) != REDIS_OK) {
            snprintf(k->err, sizeof k->err, "publish: out of memory");
            ok = false;
            break;
        }
        queued += msg.len + key.len + channel.len;
        if (queued >= PIPELINE_BYTES || i + 1 == n) {
            ok = read_replies(k, sent_from, i + 1, out);
            sent_from = i + 1;
            queued = 0;
        }
    }
    if (!ok && k->ctx) {
        /* Commands may be queued without replies read: the context is out of step. */
        sink_disconnect(k);
    }
    buf_free(&key);
    buf_free(&channel);
    buf_free(&msg);
    return ok;
}
