/* The gateway's runs: each run with open streams has a small cache of its most
 * recent events, already formatted as SSE frames (a contiguous range of seq,
 * lo..head). Each stream only remembers the last seq it sent and pulls from that
 * cache; whatever the cache cannot serve (a resume from long ago, a stream that fell
 * behind its buffer cap, a gap in the live feed) is read from PostgreSQL
 * (sse_replay.c) with one read per run at a time, shared by every stream of the run
 * waiting at that point. Live events come from the run's Redis channel
 * (sse_redis.c); a run's first read starts only after its subscription is confirmed,
 * and live messages that arrive meanwhile are held and merged by seq, so nothing
 * falls between replay and live. While Redis is down or stalled, runs are polled.
 *
 * Memory: per stream, at most --client-buffer bytes queued (plus one frame); per run,
 * at most RUN_CACHE_FRAMES frames and about RUN_CACHE_BYTES; held live messages at
 * most RUN_PENDING_MAX per run (overflow only forces a re-read). */
#include "sse_run.h"

#include "buf.h"
#include "event.h"
#include "log.h"
#include "sse_redis.h"
#include "sse_replay.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RUN_CACHE_FRAMES 256
#define RUN_CACHE_BYTES (1u << 20)
#define RUN_PENDING_MAX 1024
#define RUN_BUCKETS 4096
#define FETCH_RETRY_MS 200
#define CHANNEL_PREFIX "run:"
#define CHANNEL_PREFIX_LEN 4

/* One event formatted as an SSE frame, shared by reference count. */
typedef struct frame {
    long long seq;
    int refs;
    size_t len;
    char data[];
} frame;

typedef struct run run;

/* A run's Redis subscription. */
enum sub_state { SUB_NONE, SUB_PENDING, SUB_OK, SUB_LEAVING };

/* One open stream: an HTTP request that gets the run's events after `last`. */
struct client {
    run *r;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
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
    /* cache: frames lo..head at ring[seq % RUN_CACHE_FRAMES] */
    frame *ring[RUN_CACHE_FRAMES];
    long long lo, head;
    size_t bytes;
    bool valid;    /* lo..head describe real data */
    bool synced;   /* head is believed to be the run's newest committed event */
    bool tail_gap; /* events after head must be read from PostgreSQL */
    /* live messages held while a read is in flight or after a gap */
    frame *pending[RUN_PENDING_MAX];
    int npending;
    size_t pending_bytes;
    replay_job job;
    /* Bumped by every reason to read the tail again; a read only clears tail_gap if
     * none came up while it was in flight. */
    unsigned gen, fetch_gen;
    enum sub_state sub;
    bool resubscribe; /* a client came back while UNSUBSCRIBE was in flight */
};

static struct {
    const config *cfg;
    struct event_base *base;
    bool stopping;
    run *buckets[RUN_BUCKETS];
    int nruns;
    int nclients;
    unsigned long long events_sent, gaps, pauses, live_msgs, streams_total;
} gw;

static void run_request_fetch(run *r);
static void client_pump(client *c);

/* ---- frames ---------------------------------------------------------------------- */

static frame *frame_new(long long seq, const char *payload, size_t len)
{
    buf b;
    buf_init(&b, 0);
    if (!event_format_sse(&b, seq, payload, len)) {
        buf_free(&b);
        return NULL;
    }
    frame *f = malloc(sizeof *f + b.len);
    if (f) {
        f->seq = seq;
        f->refs = 1;
        f->len = b.len;
        memcpy(f->data, b.data, b.len);
    }
    buf_free(&b);
    return f;
}

static void frame_unref(frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

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

static void cache_clear(run *r)
{
    for (long long s = r->lo; r->valid && s <= r->head; s++) {
        frame_unref(r->ring[s % RUN_CACHE_FRAMES]);
        r->ring[s % RUN_CACHE_FRAMES] = NULL;
    }
    r->bytes = 0;
    r->valid = false;
    r->lo = 1;
    r->head = 0;
}

/* Adds f (a new reference) to the cache. f->seq must be above head; if it is not
 * head + 1 the cache restarts at f (events before it were deleted, or a stream asked
 * for a point past the cached range). */
static void cache_put(run *r, frame *f)
{
    if (r->valid && f->seq <= r->head)
        return;
    if (!r->valid || f->seq != r->head + 1) {
        cache_clear(r);
        r->lo = f->seq;
        r->head = f->seq - 1;
        r->valid = true;
    }
    while (r->head - r->lo + 1 >= RUN_CACHE_FRAMES ||
           (r->bytes + f->len > RUN_CACHE_BYTES && r->lo <= r->head)) {
        frame *old = r->ring[r->lo % RUN_CACHE_FRAMES];
        r->bytes -= old->len;
        frame_unref(old);
        r->ring[r->lo % RUN_CACHE_FRAMES] = NULL;
        r->lo++;
    }
    f->refs++;
    r->ring[f->seq % RUN_CACHE_FRAMES] = f;
    r->head = f->seq;
    r->bytes += f->len;
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
    r->lo = 1;
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
    cache_clear(r);
    for (int i = 0; i < r->npending; i++)
        frame_unref(r->pending[i]);
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
    if (r->npending == RUN_PENDING_MAX || r->pending_bytes + f->len > RUN_CACHE_BYTES) {
        /* Too much held: drop it; the read that follows covers it. */
        run_invalidate(r);
        return;
    }
    f->refs++;
    r->pending[r->npending++] = f;
    r->pending_bytes += f->len;
}

static void pump_all(run *r)
{
    for (client *c = r->clients, *next; c; c = next) {
        next = c->next;
        client_pump(c);
    }
}

/* A live event for run r (f keeps the caller's reference). */
static void run_live(run *r, frame *f)
{
    gw.live_msgs++;
    if (r->job.busy || !r->valid) {
        pending_add(r, f);
        if (!r->valid)
            run_request_fetch(r);
        return;
    }
    if (f->seq <= r->head)
        return;
    if (f->seq == r->head + 1) {
        cache_put(r, f);
    } else {
        /* A message went missing (Redis dropped it, or we resubscribed): read the gap. */
        gw.gaps++;
        log_debug("run %s: gap after seq %lld (live seq %lld): reading it from postgresql", r->id, r->head,
                  f->seq);
        run_invalidate(r);
        pending_add(r, f);
        run_request_fetch(r);
    }
    pump_all(r);
}

/* ---- streams --------------------------------------------------------------------- */

static size_t client_queued(const client *c)
{
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
    return bev ? evbuffer_get_length(bufferevent_get_output(bev)) : 0;
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

static void client_send(client *c, struct evbuffer *out)
{
    if (c->ended || evbuffer_get_length(out) == 0)
        return; /* nothing may follow the end of a reply */
    evhttp_send_reply_chunk_with_cb(c->req, out, on_client_drained, c);
}

/* Writes frame f if it is the stream's next and the buffer has room. Returns false
 * when the stream must stop for now (over its cap). */
static bool client_offer(client *c, struct evbuffer *out, const frame *f)
{
    if (f->seq <= c->last)
        return true;
    if (client_queued(c) + evbuffer_get_length(out) >= (size_t)gw.cfg->client_buffer) {
        if (!c->paused)
            gw.pauses++;
        c->paused = true;
        return false;
    }
    evbuffer_add(out, f->data, f->len);
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
    struct evbuffer *out = evbuffer_new();
    if (!out)
        return;
    for (;;) {
        if (r->valid && c->last >= r->head && r->synced && !r->tail_gap)
            break; /* caught up: live events will come */
        if (r->valid && c->last + 1 >= r->lo && c->last + 1 <= r->head) {
            if (!client_offer(c, out, r->ring[(c->last + 1) % RUN_CACHE_FRAMES]))
                break;
            continue;
        }
        c->need_fetch = true;
        run_request_fetch(r);
        break;
    }
    client_send(c, out);
    evbuffer_free(out);
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
    if (!c->ended && evhttp_request_get_connection(c->req) == NULL)
        evhttp_send_reply_end(c->req);
    client_close(c);
}

client *stream_new(struct evhttp_request *req, const char *id, size_t n, long long last, const auth_grant *grant)
{
    run *r = run_get(id, n);
    client *c = r ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        if (r)
            run_maybe_release(r);
        return NULL;
    }
    c->r = r;
    c->req = req;
    c->conn = evhttp_request_get_connection(req);
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
    evhttp_connection_set_closecb(c->conn, on_client_closed, c);
    /* A stream's client has nothing more to say: stop reading once 4 KB pile up
     * (nothing consumes them), and let the idle timeout outlast the heartbeat. */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
    if (bev)
        bufferevent_setwatermark(bev, EV_READ, 0, 4096);
    evhttp_connection_set_timeout(c->conn, (int)(gw.cfg->heartbeat_ms / 1000) * 2 + 30);
    struct evbuffer *out = evbuffer_new();
    if (out) {
        evbuffer_add_printf(out, "retry: 1000\n: stream of run events after seq %lld\n\n", c->last);
        client_send(c, out);
        evbuffer_free(out);
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
    struct evbuffer *out = evbuffer_new();
    if (out) {
        evbuffer_add_printf(out, "event: %s\ndata: %s\n\n", name, data);
        client_send(c, out);
        evbuffer_free(out);
    }
}

void stream_finish(client *c, const char *name, const char *data)
{
    stream_notice(c, name, data);
    struct evhttp_request *req = c->req;
    /* The stream goes now rather than when its connection closes: a browser may send
     * its next request on the same connection. */
    evhttp_connection_set_closecb(c->conn, NULL, NULL);
    c->ended = true;
    client_close(c);
    evhttp_send_reply_end(req);
}

void streams_end_all(void)
{
    gw.stopping = true;
    /* Ending a reply can close its connection at once (HTTP/1.0), which frees the
     * client and maybe its run: collect the requests before ending any. */
    struct evhttp_request **reqs = calloc((size_t)gw.nclients + 1, sizeof *reqs);
    int nreq = 0;
    for (int b = 0; reqs && b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            for (client *c = r->clients; c; c = c->next) {
                c->ended = true;
                reqs[nreq++] = c->req;
            }
    for (int i = 0; i < nreq; i++)
        evhttp_send_reply_end(reqs[i]);
    free(reqs);
}

/* ---- reads ----------------------------------------------------------------------- */

static void run_request_fetch(run *r)
{
    log_debug("run %s: read wanted (valid=%d synced=%d tail_gap=%d head=%lld busy=%d queued=%d)", r->id,
              r->valid, r->synced, r->tail_gap, r->head, r->job.busy, r->job.queued);
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
    if (r->tail_gap && r->valid)
        f = r->head;
    for (client *c = r->clients; c; c = c->next)
        if (c->need_fetch && !c->paused && !c->ended && c->last < f)
            f = c->last; /* a paused stream asks again when it drains */
    if (f == LLONG_MAX && (!r->valid || r->tail_gap) && r->nclients > 0)
        f = r->valid ? r->head : 0;
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
    for (int i = 0; frames && i < n; i++) {
        frame *f = frame_new(rows[i].seq, rows[i].data, rows[i].len);
        if (f)
            frames[nf++] = f;
    }
    for (int i = 0; i < nf; i++)
        if (!r->valid || frames[i]->seq > r->head)
            cache_put(r, frames[i]);
    /* A row that could not become a frame must be read again. */
    if (complete && nf == n) {
        /* Nothing after these rows was committed: `newest` is the run's head. An
         * empty cache is placed there (a run without events, or a stream that asked
         * for a point past the end), and the cache is in sync only if it reaches it. */
        if (!r->valid) {
            r->valid = true;
            r->lo = newest + 1;
            r->head = newest;
        }
        if (r->gen == r->fetch_gen) {
            r->synced = r->head >= newest;
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
        struct evbuffer *out = evbuffer_new();
        if (!out)
            continue;
        for (int i = 0; i < nf && client_offer(c, out, frames[i]); i++) {
        }
        client_send(c, out);
        evbuffer_free(out);
    }
    for (int i = 0; i < nf; i++)
        frame_unref(frames[i]);
    free(frames);

    /* Live messages held during the read, in seq order. */
    int np = r->npending;
    r->npending = 0;
    for (int i = 0; i < np; i++) {
        frame *f = r->pending[i];
        if (r->valid && f->seq == r->head + 1)
            cache_put(r, f);
        else if (r->valid && f->seq > r->head + 1)
            run_invalidate(r);
        frame_unref(f);
    }
    r->pending_bytes = 0;
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
                if (c->paused || c->ended)
                    continue;
                struct evbuffer *out = evbuffer_new();
                if (out) {
                    evbuffer_add(out, hb, sizeof hb - 1);
                    client_send(c, out);
                    evbuffer_free(out);
                }
            }
            if (r->nclients > 0 && r->valid && !r->job.busy) {
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
