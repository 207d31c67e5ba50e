/* The gateway's runs: each run with open streams has a small cache of its most
 * recent events, already formatted as SSE frames (a contiguous range of seq,
 * lo..head). Each stream only remembers the last seq it sent and pulls from that
 * cache (sse_cache.c); whatever the cache cannot serve (a resume from long ago, a
 * stream that fell behind its buffer cap, a gap in the live feed) is read from
 * PostgreSQL (sse_replay.c) with one read per run at a time, shared by every stream
 * of the run waiting at that point. Live events come from the run's Redis channel
 * (sse_redis.c); a run's first read starts only after its subscription is confirmed,
 * and live messages that arrive meanwhile are held and merged by seq, so nothing
 * falls between replay and live. While Redis is down or stalled, runs are polled.
 * Writes to a stream go through sse_out.c; a busy run's live events go out together
 * once per --stream-coalesce.
 *
 * Memory: per stream, at most --client-buffer bytes queued (plus one frame) and as
 * much in its socket; per run, at most CACHE_FRAMES frames and about CACHE_BYTES;
 * held live messages at most HELD_MAX per run (overflow only forces a re-read). */
#include "sse_run.h"

#include "buf.h"
#include "clock.h"
#include "event.h"
#include "log.h"
#include "sse_cache.h"
#include "sse_out.h"
#include "sse_redis.h"
#include "sse_replay.h"

#include <event2/bufferevent.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RUN_BUCKETS 4096
#define FETCH_RETRY_MS 200
#define CHANNEL_PREFIX "run:"
#define CHANNEL_PREFIX_LEN 4

typedef struct run run;

/* A run's Redis subscription. */
enum sub_state { SUB_NONE, SUB_PENDING, SUB_OK, SUB_LEAVING };

/* One open stream: an HTTP request that gets the run's events after `last`. */
struct client {
    run *r;
    out_conn out;
    long long last;  /* last seq sent */
    bool need_fetch; /* waits for a PostgreSQL read */
    bool paused;     /* over its buffer cap; resumes when the socket drains */
    bool ended;      /* evhttp_send_reply_end was called (shutdown) */
    auth_grant grant;
    client *prev, *next;
};

struct run {
    char *channel; /* "run:" followed by the id */
    const char *id;
    size_t id_len;
    run *hnext;
    client *clients;
    int nclients;
    cache cache;   /* the newest events, lo..head */
    bool synced;   /* head is believed to be the run's newest committed event */
    bool tail_gap; /* events after head must be read from PostgreSQL */
    held held;     /* live messages held while a read is in flight or after a gap */
    replay_job job;
    /* Bumped by every reason to read the tail again; a read only clears tail_gap if
     * none came up while it was in flight. */
    unsigned gen, fetch_gen;
    enum sub_state sub;
    bool resubscribe; /* a client came back while UNSUBSCRIBE was in flight */
    /* Live fan-out (--stream-coalesce): when it last ran, what came since, and the
     * timer of the next one (created when first needed). */
    double fanout_at;
    int fanout_frames;
    size_t fanout_bytes;
    struct event *fanout_ev;
};

static struct {
    const config *cfg;
    struct event_base *base;
    bool stopping;
    run *buckets[RUN_BUCKETS];
    int nruns;
    int nclients;
    unsigned long long events_sent, stream_writes, gaps, pauses, live_msgs, streams_total;
} gw;

static void run_request_fetch(run *r);
static void client_pump(client *c);

/* ---- runs ------------------------------------------------------------------------ */

static uint32_t hash_id(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static run *run_find(const char *id, size_t n)
{
    for (run *r = gw.buckets[hash_id(id, n) % RUN_BUCKETS]; r; r = r->hnext)
        if (r->id_len == n && memcmp(r->id, id, n) == 0)
            return r;
    return NULL;
}

/* The run a channel name belongs to, if it is one of ours. */
static run *run_of_channel(const char *ch, size_t n)
{
    if (n < CHANNEL_PREFIX_LEN || memcmp(ch, CHANNEL_PREFIX, CHANNEL_PREFIX_LEN) != 0)
        return NULL;
    return run_find(ch + CHANNEL_PREFIX_LEN, n - CHANNEL_PREFIX_LEN);
}

static run *run_get(const char *id, size_t n)
{
    run *r = run_find(id, n);
    if (r)
        return r;
    r = calloc(1, sizeof *r);
    if (!r || !(r->channel = malloc(CHANNEL_PREFIX_LEN + n + 1))) {
        free(r);
        return NULL;
    }
    memcpy(r->channel, CHANNEL_PREFIX, CHANNEL_PREFIX_LEN);
    memcpy(r->channel + CHANNEL_PREFIX_LEN, id, n);
    r->channel[CHANNEL_PREFIX_LEN + n] = '\0';
    r->id = r->channel + CHANNEL_PREFIX_LEN;
    r->id_len = n;
    uint32_t b = hash_id(id, n) % RUN_BUCKETS;
    r->hnext = gw.buckets[b];
    gw.buckets[b] = r;
    gw.nruns++;
    return r;
}

static void run_free(run *r)
{
    run **pp = &gw.buckets[hash_id(r->id, r->id_len) % RUN_BUCKETS];
    while (*pp != r)
        pp = &(*pp)->hnext;
    *pp = r->hnext;
    cache_free(&r->cache);
    held_clear(&r->held);
    if (r->fanout_ev)
        event_free(r->fanout_ev);
    free(r->channel);
    free(r);
    gw.nruns--;
}

static void run_subscribe(run *r)
{
    if (r->sub == SUB_OK || r->sub == SUB_PENDING)
        return;
    if (r->sub == SUB_LEAVING) {
        r->resubscribe = true;
        return;
    }
    if (sub_subscribe(r->channel, CHANNEL_PREFIX_LEN + r->id_len))
        r->sub = SUB_PENDING;
}

/* A run without streams is dropped once nothing refers to it any more: not in the
 * read queue, no read in flight, and no subscription (or its end confirmed). */
static void run_maybe_release(run *r)
{
    if (r->nclients > 0 || r->job.busy || r->job.queued || r->sub == SUB_LEAVING)
        return;
    if (r->sub == SUB_OK || r->sub == SUB_PENDING) {
        if (sub_unsubscribe(r->channel, CHANNEL_PREFIX_LEN + r->id_len)) {
            r->sub = SUB_LEAVING;
            return;
        }
        r->sub = SUB_NONE; /* the connection is gone, and the subscription with it */
    }
    run_free(r);
}

/* Something may be missing after the cache's head: read the tail again. */
static void run_invalidate(run *r)
{
    r->tail_gap = true;
    r->synced = false;
    r->gen++;
}

/* After an invalidation: read the run again if it still has streams, else let it go. */
static void run_reread(run *r)
{
    if (r->nclients > 0)
        run_request_fetch(r);
    else
        run_maybe_release(r);
}

static void pending_add(run *r, frame *f)
{
    if (!held_add(&r->held, f))
        run_invalidate(r); /* too much held: drop it; the read that follows covers it */
}

static void pump_all(run *r)
{
    for (client *c = r->clients, *next; c; c = next) {
        next = c->next;
        client_pump(c);
    }
}

/* The period counts from the end of a fan-out: a run with so many streams that a
 * fan-out outlasts the period still leaves the loop that long for other work, and
 * each fan-out then carries more events. */
static void fanout_now(run *r)
{
    r->fanout_frames = 0;
    r->fanout_bytes = 0;
    pump_all(r);
    r->fanout_at = clock_mono_s();
}

static void on_fanout_due(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fanout_now(arg);
}

/* A live event went into the cache. Writing each event to each stream costs a system
 * call per stream and event, so a run's live events go out at most once per
 * --stream-coalesce: an event that comes sooner after the last fan-out waits for the
 * rest of the period, and one write per stream then carries every event that came
 * meanwhile. A quiet run's event goes out at once. The wait ends early before the
 * cache could drop a frame that its streams have not been given yet. */
static void run_fanout(run *r, const frame *f)
{
    r->fanout_frames++;
    r->fanout_bytes += f->len;
    if (r->fanout_ev && evtimer_pending(r->fanout_ev, NULL)) {
        if (r->fanout_frames < CACHE_FRAMES / 2 && r->fanout_bytes < CACHE_BYTES / 2)
            return;
        evtimer_del(r->fanout_ev);
        fanout_now(r);
        return;
    }
    double wait_ms = (r->fanout_at - clock_mono_s()) * 1000 + (double)gw.cfg->stream_coalesce_ms;
    if (wait_ms < 1 || (!r->fanout_ev && !(r->fanout_ev = evtimer_new(gw.base, on_fanout_due, r)))) {
        fanout_now(r);
        return;
    }
    long us = (long)(wait_ms * 1000);
    struct timeval tv = {.tv_sec = us / 1000000, .tv_usec = us % 1000000};
    if (evtimer_add(r->fanout_ev, &tv) != 0)
        fanout_now(r);
}

/* A live event for run r (f keeps the caller's reference). */
static void run_live(run *r, frame *f)
{
    gw.live_msgs++;
    if (r->job.busy || !r->cache.valid) {
        pending_add(r, f);
        if (!r->cache.valid)
            run_request_fetch(r);
        return;
    }
    if (f->seq <= r->cache.head)
        return;
    if (f->seq == r->cache.head + 1) {
        cache_put(&r->cache, f);
        run_fanout(r, f);
        return;
    }
    /* A message went missing (Redis dropped it, or we resubscribed): read the gap. */
    gw.gaps++;
    log_debug("run %s: gap after seq %lld (live seq %lld): reading it from postgresql", r->id, r->cache.head,
              f->seq);
    run_invalidate(r);
    pending_add(r, f);
    run_request_fetch(r);
    pump_all(r);
}

/* ---- streams --------------------------------------------------------------------- */

/* The frames that one write to a stream carries (pieces of frames in the cache or of
 * a read's rows), with what its connection had queued when the write began. */
static struct {
    struct iovec iov[OUT_MAX_PIECES];
    int n;
    size_t bytes, queued;
} pk;

static void pack_begin(const client *c)
{
    pk.n = 0;
    pk.bytes = 0;
    pk.queued = out_queued(&c->out);
}

static void pack_flush(const client *c)
{
    if (pk.n > 0 && !c->ended) { /* nothing may follow the end of a reply */
        out_writev(&c->out, pk.iov, pk.n);
        gw.stream_writes++;
    }
    pack_begin(c);
}

static void on_client_drained(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    client *c = arg;
    if (c->paused) {
        c->paused = false;
        client_pump(c);
    }
}

/* Adds frame f to the stream's write if it is the stream's next and the stream is
 * under its cap. Returns false when the stream must stop for now: over its cap, with
 * bytes queued, whose writing out resumes it (on_client_drained). */
static bool client_offer(client *c, const frame *f)
{
    if (f->seq <= c->last)
        return true;
    /* The cap bounds what waits in our queue; what the socket takes is not ours. */
    if (pk.n == OUT_MAX_PIECES || pk.queued + pk.bytes >= (size_t)gw.cfg->client_buffer)
        pack_flush(c);
    if (pk.queued >= (size_t)gw.cfg->client_buffer) {
        if (!c->paused)
            gw.pauses++;
        c->paused = true;
        return false;
    }
    pk.iov[pk.n++] = (struct iovec){(char *)f->data, f->len};
    pk.bytes += f->len;
    c->last = f->seq;
    gw.events_sent++;
    return true;
}

/* Sends what the cache can give this stream; asks PostgreSQL for the rest. */
static void client_pump(client *c)
{
    run *r = c->r;
    if (c->paused || c->ended || gw.stopping)
        return;
    c->need_fetch = false; /* recomputed below */
    pack_begin(c);
    for (;;) {
        if (r->cache.valid && c->last >= r->cache.head && r->synced && !r->tail_gap)
            break; /* caught up: live events will come */
        if (r->cache.valid && c->last + 1 >= r->cache.lo && c->last + 1 <= r->cache.head) {
            if (!client_offer(c, cache_at(&r->cache, c->last + 1)))
                break;
            continue;
        }
        c->need_fetch = true;
        run_request_fetch(r);
        break;
    }
    pack_flush(c);
}

static void client_close(client *c)
{
    run *r = c->r;
    if (c->prev)
        c->prev->next = c->next;
    else
        r->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    r->nclients--;
    gw.nclients--;
    auth_grant_release(&c->grant);
    free(c);
    run_maybe_release(r);
}

static void on_client_closed(struct evhttp_connection *conn, void *arg)
{
    (void)conn;
    client *c = arg;
    /* When the peer hangs up mid-stream, libevent detaches the request it was still
     * sending from the failed connection and leaves freeing it to us: ending the
     * reply of a request without a connection frees it. */
    if (!c->ended && evhttp_request_get_connection(c->out.req) == NULL)
        evhttp_send_reply_end(c->out.req);
    client_close(c);
}

client *stream_new(struct evhttp_request *req, const char *id, size_t n, long long last,
                   const auth_grant *grant)
{
    run *r = run_get(id, n);
    client *c = r ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        if (r)
            run_maybe_release(r);
        return NULL;
    }
    c->r = r;
    c->out.req = req;
    c->out.conn = evhttp_request_get_connection(req);
    c->last = last;
    c->grant = *grant;
    c->next = r->clients;
    if (r->clients)
        r->clients->prev = c;
    r->clients = c;
    r->nclients++;
    gw.nclients++;
    gw.streams_total++;
    return c;
}

void stream_start(client *c)
{
    out_reply_start(c->out.req);
    evhttp_connection_set_closecb(c->out.conn, on_client_closed, c);
    /* A stream's client has nothing more to say: stop reading once 4 KB pile up
     * (nothing consumes them). Only a write timeout, above the heartbeat, applies: a
     * reader that stops draining is dropped. (Writes that go straight to the socket
     * do not pass through evhttp, which would re-arm a read timeout at each one.) */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->out.conn);
    if (bev) {
        struct timeval tv = {gw.cfg->heartbeat_ms / 1000 * 2 + 30, 0};
        bufferevent_setwatermark(bev, EV_READ, 0, 4096);
        bufferevent_set_timeouts(bev, NULL, &tv);
    }
    char first[96];
    int n = snprintf(first, sizeof first, "retry: 1000\n: stream of run events after seq %lld\n\n", c->last);
    if (!out_start(&c->out, c->out.req, first, (size_t)n, (int)gw.cfg->client_buffer, on_client_drained, c)) {
        /* Out of memory: the browser comes back (the connection close frees c). */
        c->ended = true;
        evhttp_send_reply_end(c->out.req);
        return;
    }
    run_subscribe(c->r);
    client_pump(c);
}

void streams_each(void (*fn)(client *c, auth_grant *g, long long last, void *arg), void *arg)
{
    /* fn may end its stream, which frees it and perhaps its run: walk a snapshot. */
    client **all = malloc(((size_t)gw.nclients + 1) * sizeof *all);
    int n = 0;
    for (int b = 0; all && b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            for (client *c = r->clients; c; c = c->next)
                if (!c->ended)
                    all[n++] = c;
    for (int i = 0; i < n; i++)
        fn(all[i], &all[i]->grant, all[i]->last, arg);
    free(all);
}

auth_grant *stream_grant(client *c)
{
    return &c->grant;
}

long long stream_last(const client *c)
{
    return c->last;
}

void stream_notice(client *c, const char *name, const char *data)
{
    buf m;
    buf_init(&m, 0);
    if (!c->ended && buf_printf(&m, "event: %s\ndata: %s\n\n", name, data))
        out_write(&c->out, m.data, m.len);
    buf_free(&m);
}

void stream_finish(client *c, const char *name, const char *data)
{
    stream_notice(c, name, data);
    struct evhttp_request *req = c->out.req;
    /* The stream goes now rather than when its connection closes: a browser may send
     * its next request on the same connection. */
    evhttp_connection_set_closecb(c->out.conn, NULL, NULL);
    c->ended = true;
    client_close(c);
    evhttp_send_reply_end(req);
}

void streams_end_all(void)
{
    /* Live events that wait for their run's next fan-out (--stream-coalesce) are
     * already ours: they go out before the streams end. */
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            if (r->fanout_ev && evtimer_pending(r->fanout_ev, NULL)) {
                evtimer_del(r->fanout_ev);
                fanout_now(r);
            }
    gw.stopping = true;
    /* Ending a reply can close its connection at once (HTTP/1.0), which frees the
     * client and maybe its run: collect the requests before ending any. */
    struct evhttp_request **reqs = calloc((size_t)gw.nclients + 1, sizeof *reqs);
    int nreq = 0;
    for (int b = 0; reqs && b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            for (client *c = r->clients; c; c = c->next) {
                c->ended = true;
                reqs[nreq++] = c->out.req;
            }
    for (int i = 0; i < nreq; i++)
        evhttp_send_reply_end(reqs[i]);
    free(reqs);
}

/* ---- reads ----------------------------------------------------------------------- */

static void run_request_fetch(run *r)
{
    log_debug("run %s: read wanted (valid=%d synced=%d tail_gap=%d head=%lld busy=%d queued=%d)", r->id,
              r->cache.valid, r->synced, r->tail_gap, r->cache.head, r->job.busy, r->job.queued);
    if (sub_up() && r->sub != SUB_OK)
        return; /* started when the subscription is confirmed */
    replay_queue(&r->job);
}

static run *run_of_job(replay_job *j)
{
    return (run *)((char *)j - offsetof(run, job));
}

/* A read's turn: it starts at the lowest point a waiting stream needs. */
static bool on_read_start(replay_job *j, const char **run_id, long long *from)
{
    run *r = run_of_job(j);
    long long f = LLONG_MAX;
    if (r->tail_gap && r->cache.valid)
        f = r->cache.head;
    for (client *c = r->clients; c; c = c->next)
        if (c->need_fetch && !c->paused && !c->ended && c->last < f)
            f = c->last; /* a paused stream asks again when it drains */
    if (f == LLONG_MAX && (!r->cache.valid || r->tail_gap) && r->nclients > 0)
        f = r->cache.valid ? r->cache.head : 0;
    if (f == LLONG_MAX) {
        run_maybe_release(r);
        return false;
    }
    *run_id = r->id;
    *from = f;
    r->fetch_gen = r->gen;
    return true;
}

static void on_read_done(replay_job *j, const replay_row *rows, int n, bool complete, long long newest)
{
    run *r = run_of_job(j);
    long long from = j->from;
    frame **frames = calloc((size_t)(n ? n : 1), sizeof *frames);
    int nf = 0;
    /* Rows become frames up to the first that cannot (out of memory): a stream must
     * never be given the rows after it, which would skip an event. */
    for (int i = 0; frames && i < n; i++) {
        frame *f = frame_new(rows[i].seq, rows[i].data, rows[i].len);
        if (!f)
            break;
        frames[nf++] = f;
    }
    for (int i = 0; i < nf; i++)
        if (!r->cache.valid || frames[i]->seq > r->cache.head)
            cache_put(&r->cache, frames[i]);
    /* A row that could not become a frame must be read again. */
    if (complete && nf == n) {
        /* Nothing after these rows was committed: `newest` is the run's head. An
         * empty cache is placed there (a run without events, or a stream that asked
         * for a point past the end), and the cache is in sync only if it reaches it. */
        if (!r->cache.valid)
            cache_start_after(&r->cache, newest);
        if (r->gen == r->fetch_gen) {
            r->synced = r->cache.head >= newest;
            r->tail_gap = !r->synced;
        } else {
            r->tail_gap = true; /* invalidated while the read ran: read again */
        }
    }
    /* Streams waiting at or after `from` take the rows directly (a resume from long
     * ago never goes through the cache). */
    for (client *c = r->clients, *next; c; c = next) {
        next = c->next;
        if (!c->need_fetch || c->last < from || c->paused || c->ended)
            continue;
        c->need_fetch = false;
        pack_begin(c);
        for (int i = 0; i < nf && client_offer(c, frames[i]); i++) {
        }
        pack_flush(c);
    }
    for (int i = 0; i < nf; i++)
        frame_unref(frames[i]);
    free(frames);

    /* Live messages held during the read, in seq order. */
    for (int i = 0; i < r->held.n; i++) {
        frame *f = r->held.f[i];
        if (r->cache.valid && f->seq == r->cache.head + 1)
            cache_put(&r->cache, f);
        else if (r->cache.valid && f->seq > r->cache.head + 1)
            run_invalidate(r);
    }
    held_clear(&r->held);
    pump_all(r);
    if (r->tail_gap && r->nclients > 0)
        run_request_fetch(r);
    run_maybe_release(r);
}

static void on_fetch_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    char *id = arg;
    run *r = run_find(id, strlen(id));
    if (r && r->nclients > 0) {
        run_invalidate(r);
        run_request_fetch(r);
    }
    free(id);
}

/* A read that failed (an error, not a lost connection) is tried again shortly. The
 * run is named by id: it may be gone by then. */
static void on_read_failed(replay_job *j)
{
    run *r = run_of_job(j);
    if (r->nclients > 0) {
        char *id = strdup(r->id);
        struct timeval tv = {.tv_sec = 0, .tv_usec = FETCH_RETRY_MS * 1000};
        if (!id || event_base_once(gw.base, -1, EV_TIMEOUT, on_fetch_retry, id, &tv) != 0)
            free(id);
    }
    run_maybe_release(r);
}

/* ---- the subscription ------------------------------------------------------------ */

static void on_sub_message(const char *ch, size_t chlen, const char *msg, size_t len)
{
    run *r = run_of_channel(ch, chlen);
    if (!r)
        return;
    long long seq;
    const char *payload;
    size_t plen;
    if (!event_parse_message(msg, len, &seq, &payload, &plen)) {
        log_warn("redis (gateway): ignoring a message on %s that is not an outboxd event", r->id);
        return;
    }
    frame *f = frame_new(seq, payload, plen);
    if (f) {
        run_live(r, f);
        frame_unref(f);
    }
}

static void on_subscribed(const char *ch, size_t chlen)
{
    run *r = run_of_channel(ch, chlen);
    if (!r)
        return;
    r->sub = SUB_OK;
    /* Anything published before the subscription took effect is read now. */
    run_invalidate(r);
    run_reread(r);
}

static void on_unsubscribed(const char *ch, size_t chlen)
{
    run *r = run_of_channel(ch, chlen);
    if (!r)
        return;
    r->sub = SUB_NONE;
    if (r->resubscribe || r->nclients > 0) {
        r->resubscribe = false;
        run_subscribe(r);
    } else {
        run_maybe_release(r);
    }
}

static void on_sub_up(void)
{
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            if (r->nclients > 0)
                run_subscribe(r);
}

/* Every subscription is gone: the runs are read from PostgreSQL (and let go if unused). */
static void on_sub_down(void)
{
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b], *next; r; r = next) {
            next = r->hnext; /* run_reread may free r */
            r->sub = SUB_NONE;
            r->resubscribe = false;
            run_invalidate(r);
            run_reread(r);
        }
}

/* ---- timers and life ------------------------------------------------------------- */

void runs_poll_tick(void)
{
    if (sub_healthy(DEGRADED_POLL_MS))
        return;
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            if (r->nclients > 0 && !r->job.busy && !r->job.queued) {
                run_invalidate(r);
                run_request_fetch(r);
            }
}

/* A comment line keeps proxies from closing idle streams. The same tick re-reads
 * each run's tail once, so that a lost last message cannot stay unnoticed. */
void runs_heartbeat_tick(void)
{
    static const char hb[] = ": heartbeat\n\n";
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext) {
            for (client *c = r->clients; c; c = c->next) {
                if (!c->paused && !c->ended)
                    out_write(&c->out, hb, sizeof hb - 1);
            }
            if (r->nclients > 0 && r->cache.valid && !r->job.busy) {
                r->tail_gap = true;
                r->gen++;
                run_request_fetch(r);
            }
        }
}

void runs_get_stats(runs_stats *out)
{
    replay_counts rc;
    replay_get_counts(&rc);
    *out = (runs_stats){
        .streams = gw.nclients,
        .runs = gw.nruns,
        .streams_opened = gw.streams_total,
        .events_sent = gw.events_sent,
        .stream_writes = gw.stream_writes,
        .live_msgs = gw.live_msgs,
        .replays = rc.reads,
        .replica_replays = rc.replica_reads,
        .replica_fallbacks = rc.replica_fallbacks,
        .replica_up = rc.replica_up,
        .gaps = gw.gaps,
        .pauses = gw.pauses,
        .redis_up = sub_healthy(DEGRADED_POLL_MS),
        .database_up = replay_up(),
    };
}

bool runs_start(struct event_base *base, const config *cfg)
{
    memset(&gw, 0, sizeof gw);
    gw.cfg = cfg;
    gw.base = base;
    static const replay_handlers rh = {on_read_start, on_read_done, on_read_failed};
    static const sub_handlers sh = {on_sub_message, on_subscribed, on_unsubscribed, on_sub_up, on_sub_down};
    return replay_start(base, cfg, &rh) && sub_start(base, cfg, &sh);
}

void runs_stop(void)
{
    sub_stop();
    replay_stop();
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b], *next; r; r = next) {
            next = r->hnext;
            run_free(r);
        }
}
