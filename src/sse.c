/* SSE gateway on libevent's HTTP server.
 *
 * Model: each run with open streams has a `run` entry holding a small cache of the
 * run's most recent events, already formatted as SSE frames (a contiguous range of
 * seq, lo..head). Each stream only remembers the last seq it sent and pulls from that
 * cache; whatever the cache cannot serve (a resume from long ago, a stream that fell
 * behind its buffer cap, a gap in the live feed) is read from PostgreSQL with one
 * query per run at a time, shared by every stream of the run waiting at that point.
 * Live events come from one Redis connection that SUBSCRIBEs to run:{id} for each run
 * with streams (SUBSCRIBE takes the name literally: no pattern injection). A run's
 * first query starts only after its subscription is confirmed, and live messages
 * that arrive meanwhile are held and merged by seq, so nothing falls between replay
 * and live. While Redis is down or stalled, runs are polled from PostgreSQL instead.
 *
 * Memory: per stream, at most --client-buffer bytes queued (plus one frame); per run,
 * at most RUN_CACHE_FRAMES frames and about RUN_CACHE_BYTES; held live messages at
 * most RUN_PENDING_MAX per run (overflow only forces a re-read). */
#include "sse.h"

#include "admin_http.h"
#include "buf.h"
#include "event.h"
#include "log.h"
#include "metrics.h"
#include "store_pg.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RUN_CACHE_FRAMES 256
#define RUN_CACHE_BYTES (1u << 20)
#define RUN_PENDING_MAX 1024
#define RUN_BUCKETS 4096
#define DEGRADED_POLL_MS 250
#define FETCH_RETRY_MS 200
#define RECONNECT_MAX_MS 2000
#define PING_CHANNEL "outboxd:gateway:ping"

extern const char sse_viewer_html[];

/* ---- frames ---------------------------------------------------------------------- */

/* One event formatted as an SSE frame, shared by reference count. */
typedef struct frame {
    long long seq;
    int refs;
    size_t len;
    char data[];
} frame;

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

/* ---- state ----------------------------------------------------------------------- */

typedef struct client client;
typedef struct run run;

enum sub_state { SUB_NONE, SUB_PENDING, SUB_OK, SUB_LEAVING };
enum pg_state { PG_DOWN, PG_CONNECTING, PG_IDLE, PG_BUSY };
enum redis_state { REDIS_DOWN, REDIS_CONNECTING, REDIS_UP };

struct client {
    run *r;
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    long long last;  /* last seq sent */
    bool need_fetch; /* waits for a PostgreSQL read */
    bool paused;     /* over its buffer cap; resumes when the socket drains */
    bool ended;      /* evhttp_send_reply_end was called (shutdown) */
    client *prev, *next;
};

struct run {
    char *id;
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
    bool fetching, queued, want_fetch;
    long long fetch_from;
    /* Bumped by every reason to read the tail again; a read only clears tail_gap if
     * none came up while it was in flight. */
    unsigned gen, fetch_gen;
    size_t pending_bytes;
    run *qnext;
    enum sub_state sub;
    bool resubscribe; /* a client came back while UNSUBSCRIBE was in flight */
};

typedef struct gateway {
    const config *cfg;
    struct event_base *base;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    run *buckets[RUN_BUCKETS];
    int nruns;
    int nclients;
    bool stopping;

    /* PostgreSQL: one asynchronous connection, one query at a time, FIFO of runs */
    PGconn *pg;
    enum pg_state pg_state;
    struct event *pg_ev;
    struct event *pg_timer;
    run *pg_current;
    PGresult *pg_result; /* the statement's last result while more may come */
    run *q_head, *q_tail;
    long pg_backoff_ms;

    /* Redis: one subscriber connection */
    redisAsyncContext *ac;
    enum redis_state redis_state;
    struct event *redis_timer;
    bool ping_outstanding;
    double ping_sent;
    long redis_backoff_ms;

    struct event *poll_timer, *heartbeat_timer, *stats_timer, *sig_term, *sig_int, *stop_timer;

    /* counters */
    unsigned long long events_sent, replays, gaps, pauses, live_msgs, streams_total;
} gateway;

static gateway gw;

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct timeval tv_ms(long ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static void run_request_fetch(run *r);
static void client_pump(client *c);
static void pg_kick(void);
static void redis_subscribe_run(run *r);
static void redis_unsubscribe_run(run *r);

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
    if (!r || !(r->id = malloc(n + 1))) {
        free(r);
        return NULL;
    }
    memcpy(r->id, id, n);
    r->id[n] = '\0';
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
    free(r->id);
    free(r);
    gw.nruns--;
}

/* A run without streams is dropped once nothing refers to it any more: not in the
 * query queue, no query in flight, and no subscription (or its end confirmed). */
static void run_maybe_release(run *r)
{
    if (r->nclients > 0 || r->fetching || r->queued)
        return;
    if (r->sub == SUB_OK || r->sub == SUB_PENDING) {
        redis_unsubscribe_run(r);
        return;
    }
    if (r->sub == SUB_LEAVING)
        return;
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

/* A live event for run r (f holds one reference for the caller). */
static void run_live(run *r, frame *f)
{
    gw.live_msgs++;
    if (r->fetching || !r->valid) {
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
        log_debug("run %s: gap after seq %lld (live seq %lld): reading it from postgresql", r->id,
                  r->head, f->seq);
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

/* ---- PostgreSQL reads ------------------------------------------------------------ */

/* Where run r's next read starts: the lowest point a waiting stream needs. */
static long long run_fetch_from(run *r)
{
    long long from = LLONG_MAX;
    if (r->tail_gap && r->valid)
        from = r->head;
    for (client *c = r->clients; c; c = c->next)
        if (c->need_fetch && !c->paused && !c->ended && c->last < from)
            from = c->last; /* a paused stream asks again when it drains */
    if (from == LLONG_MAX && (!r->valid || r->tail_gap) && r->nclients > 0)
        from = r->valid ? r->head : 0;
    return from;
}

static void run_request_fetch(run *r)
{
    log_debug("run %s: read wanted (valid=%d synced=%d tail_gap=%d head=%lld fetching=%d queued=%d)", r->id,
              r->valid, r->synced, r->tail_gap, r->head, r->fetching, r->queued);
    r->want_fetch = true;
    if (r->fetching || r->queued)
        return;
    if (gw.redis_state == REDIS_UP && r->sub != SUB_OK)
        return; /* started when the subscription is confirmed */
    r->queued = true;
    r->qnext = NULL;
    if (gw.q_tail)
        gw.q_tail->qnext = r;
    else
        gw.q_head = r;
    gw.q_tail = r;
    pg_kick();
}

/* Handles a finished read: rows (seq, payload) after `from`. */
static void run_fetched(run *r, long long from, PGresult *res)
{
    r->fetching = false;
    long long newest = PQntuples(res) ? strtoll(PQgetvalue(res, 0, 3), NULL, 10) : 0;
    int n = PQntuples(res) && !PQgetisnull(res, 0, 0) ? PQntuples(res) : 0;
    long long window = n ? strtoll(PQgetvalue(res, 0, 2), NULL, 10) : 0;
    bool end = n == 0 || (n == window && n < STORE_REPLAY_ROWS);
    frame **frames = calloc((size_t)(n ? n : 1), sizeof *frames);
    int nf = 0;
    for (int i = 0; frames && i < n; i++) {
        frame *f = frame_new(strtoll(PQgetvalue(res, i, 0), NULL, 10), PQgetvalue(res, i, 1),
                             (size_t)PQgetlength(res, i, 1));
        if (f)
            frames[nf++] = f;
    }
    for (int i = 0; i < nf; i++)
        if (!r->valid || frames[i]->seq > r->head)
            cache_put(r, frames[i]);
    if (end && nf == n) {
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
    r->want_fetch = false;
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
static void run_retry_later(run *r)
{
    char *id = strdup(r->id);
    struct timeval tv = tv_ms(FETCH_RETRY_MS);
    if (!id || event_base_once(gw.base, -1, EV_TIMEOUT, on_fetch_retry, id, &tv) != 0)
        free(id);
}

static void pg_schedule_reconnect(void);

static void pg_fail(const char *what)
{
    log_warn("postgresql (gateway): %s: %s", what, gw.pg ? PQerrorMessage(gw.pg) : "no connection");
    if (gw.pg_current) {
        run *r = gw.pg_current;
        gw.pg_current = NULL;
        r->fetching = false;
        r->want_fetch = true;
        /* Re-queued once the connection is back. */
        if (r->nclients > 0) {
            r->queued = true;
            r->qnext = gw.q_head;
            gw.q_head = r;
            if (!gw.q_tail)
                gw.q_tail = r;
        } else {
            run_maybe_release(r);
        }
    }
    if (gw.pg_ev) {
        event_free(gw.pg_ev);
        gw.pg_ev = NULL;
    }
    PQclear(gw.pg_result);
    gw.pg_result = NULL;
    if (gw.pg)
        PQfinish(gw.pg);
    gw.pg = NULL;
    gw.pg_state = PG_DOWN;
    pg_schedule_reconnect();
}

static void pg_watch(short what);

static void on_pg_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)arg;
    if (gw.pg_state == PG_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(gw.pg);
        if (st == PGRES_POLLING_FAILED) {
            pg_fail("connect");
            return;
        }
        if (st == PGRES_POLLING_OK) {
            if (PQsetnonblocking(gw.pg, 1) != 0) {
                pg_fail("connect");
                return;
            }
            evtimer_del(gw.pg_timer);
            gw.pg_state = PG_IDLE;
            gw.pg_backoff_ms = 0;
            log_info("postgresql (gateway): connected");
            pg_watch(EV_READ);
            pg_kick();
            return;
        }
        pg_watch(st == PGRES_POLLING_READING ? EV_READ : EV_WRITE);
        return;
    }
    if (what & EV_WRITE) {
        int f = PQflush(gw.pg);
        if (f < 0) {
            pg_fail("send");
            return;
        }
        pg_watch(f == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
    if (!(what & EV_READ))
        return;
    if (!PQconsumeInput(gw.pg)) {
        pg_fail("read");
        return;
    }
    PGnotify *nt;
    while ((nt = PQnotifies(gw.pg)) != NULL)
        PQfreemem(nt);
    if (gw.pg_state != PG_BUSY)
        return;
    /* Collect results without ever blocking: PQgetResult only when not busy. */
    PGresult *res;
    for (;;) {
        if (PQisBusy(gw.pg))
            return;
        if (!(res = PQgetResult(gw.pg)))
            break;
        PQclear(gw.pg_result);
        gw.pg_result = res;
    }
    PGresult *last = gw.pg_result;
    gw.pg_result = NULL;
    evtimer_del(gw.pg_timer);
    run *r = gw.pg_current;
    gw.pg_current = NULL;
    gw.pg_state = PG_IDLE;
    if (!last || PQresultStatus(last) != PGRES_TUPLES_OK) {
        log_warn("postgresql (gateway): replay of run %s: %s", r ? r->id : "?",
                 last ? PQresultErrorMessage(last) : "no result");
        PQclear(last);
        if (r) {
            r->fetching = false;
            if (r->nclients > 0)
                run_retry_later(r);
            run_maybe_release(r);
        }
        if (PQstatus(gw.pg) != CONNECTION_OK)
            pg_fail("connection");
        pg_kick();
        return;
    }
    if (r)
        run_fetched(r, r->fetch_from, last);
    PQclear(last);
    pg_kick();
}

static void pg_watch(short what)
{
    if (gw.pg_ev)
        event_free(gw.pg_ev);
    gw.pg_ev = event_new(gw.base, PQsocket(gw.pg), what | EV_PERSIST, on_pg_io, NULL);
    if (gw.pg_ev)
        event_add(gw.pg_ev, NULL);
}

static void pg_connect(void)
{
    const char *keys[8], *vals[8];
    char timeout_s[24];
    store_conn_params(gw.cfg->database_url, "outboxd-sse", gw.cfg->pg_timeout_ms, keys, vals, timeout_s);
    gw.pg = PQconnectStartParams(keys, vals, 1);
    if (!gw.pg || PQstatus(gw.pg) == CONNECTION_BAD) {
        pg_fail("connect");
        return;
    }
    gw.pg_state = PG_CONNECTING;
    struct timeval tv = tv_ms(gw.cfg->pg_timeout_ms);
    evtimer_add(gw.pg_timer, &tv);
    pg_watch(EV_WRITE);
}

static void on_pg_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (gw.pg_state == PG_DOWN)
        pg_connect();
    else
        pg_fail("timed out");
}

/* Arms timer for the next reconnect: 100 ms, doubling to RECONNECT_MAX_MS. */
static void schedule_reconnect(long *backoff_ms, struct event *timer)
{
    *backoff_ms = *backoff_ms ? *backoff_ms * 2 : 100;
    if (*backoff_ms > RECONNECT_MAX_MS)
        *backoff_ms = RECONNECT_MAX_MS;
    struct timeval tv = tv_ms(*backoff_ms);
    evtimer_add(timer, &tv);
}

static void pg_schedule_reconnect(void)
{
    schedule_reconnect(&gw.pg_backoff_ms, gw.pg_timer);
}

/* Starts the next queued read if the connection is idle. */
static void pg_kick(void)
{
    while (gw.pg_state == PG_IDLE && gw.q_head) {
        run *r = gw.q_head;
        gw.q_head = r->qnext;
        if (!gw.q_head)
            gw.q_tail = NULL;
        r->queued = false;
        long long from = run_fetch_from(r);
        if (from == LLONG_MAX) {
            r->want_fetch = false;
            run_maybe_release(r);
            continue;
        }
        char fs[24];
        snprintf(fs, sizeof fs, "%lld", from);
        const char *params[] = {r->id, fs};
        if (!PQsendQueryParams(gw.pg, store_replay_sql, 2, NULL, params, NULL, NULL, 0)) {
            gw.pg_current = r; /* pg_fail puts it back at the front of the queue */
            r->fetching = true;
            pg_fail("send");
            return;
        }
        r->fetching = true;
        r->fetch_from = from;
        r->fetch_gen = r->gen;
        gw.pg_current = r;
        gw.pg_state = PG_BUSY;
        gw.replays++;
        struct timeval tv = tv_ms(gw.cfg->pg_timeout_ms);
        evtimer_add(gw.pg_timer, &tv);
        int f = PQflush(gw.pg);
        if (f < 0) {
            pg_fail("send");
            return;
        }
        pg_watch(f == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
}

/* ---- Redis subscription ---------------------------------------------------------- */

static void redis_schedule_reconnect(void);

static void redis_went_down(const char *why)
{
    if (gw.redis_state == REDIS_UP)
        log_warn("redis (gateway): %s; serving runs from postgresql until it is back", why);
    gw.redis_state = REDIS_DOWN;
    gw.ac = NULL;
    gw.ping_outstanding = false;
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b], *next; r; r = next) {
            next = r->hnext;
            r->sub = SUB_NONE;
            run_invalidate(r);
            run_reread(r);
        }
    redis_schedule_reconnect();
}

static void on_sub_message(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    redisReply *rp = reply;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 3 || rp->element[0]->type != REDIS_REPLY_STRING ||
        rp->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rp->element[0]->str;
    const char *ch = rp->element[1]->str;
    size_t chlen = rp->element[1]->len;
    if (chlen == sizeof PING_CHANNEL - 1 && !memcmp(ch, PING_CHANNEL, chlen)) {
        gw.ping_outstanding = false;
        return;
    }
    if (chlen < 4 || memcmp(ch, "run:", 4) != 0)
        return;
    run *r = run_find(ch + 4, chlen - 4);
    if (!r)
        return;
    if (!strcmp(kind, "subscribe")) {
        r->sub = SUB_OK;
        /* Anything published before the subscription took effect is read now. */
        run_invalidate(r);
        run_reread(r);
    } else if (!strcmp(kind, "unsubscribe")) {
        r->sub = SUB_NONE;
        if (r->resubscribe || r->nclients > 0) {
            r->resubscribe = false;
            redis_subscribe_run(r);
        } else {
            run_maybe_release(r);
        }
    } else if (!strcmp(kind, "message") && rp->element[2]->type == REDIS_REPLY_STRING) {
        long long seq;
        const char *payload;
        size_t plen;
        if (!event_parse_message(rp->element[2]->str, rp->element[2]->len, &seq, &payload, &plen)) {
            log_warn("redis (gateway): ignoring a message on %s that is not an outboxd event", r->id);
            return;
        }
        frame *f = frame_new(seq, payload, plen);
        if (f) {
            run_live(r, f);
            frame_unref(f);
        }
    }
}

static void redis_subscribe_run(run *r)
{
    if (gw.redis_state != REDIS_UP || r->sub == SUB_OK || r->sub == SUB_PENDING)
        return;
    if (r->sub == SUB_LEAVING) {
        r->resubscribe = true;
        return;
    }
    if (redisAsyncCommand(gw.ac, on_sub_message, NULL, "SUBSCRIBE run:%b", r->id, r->id_len) == REDIS_OK)
        r->sub = SUB_PENDING;
}

static void redis_unsubscribe_run(run *r)
{
    if (gw.redis_state != REDIS_UP) {
        r->sub = SUB_NONE;
        run_maybe_release(r);
        return;
    }
    if (redisAsyncCommand(gw.ac, on_sub_message, NULL, "UNSUBSCRIBE run:%b", r->id, r->id_len) == REDIS_OK)
        r->sub = SUB_LEAVING;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    redisReply *rp = reply;
    if (rp && rp->type == REDIS_REPLY_ERROR) {
        log_warn("redis (gateway): AUTH: %s", rp->str);
        redisAsyncDisconnect(ac);
    }
}

static void on_redis_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        log_warn("redis (gateway): connect: %s", ac->errstr);
        gw.ac = NULL; /* hiredis frees the context after this callback */
        gw.redis_state = REDIS_DOWN;
        redis_schedule_reconnect();
        return;
    }
    evtimer_del(gw.redis_timer);
    gw.redis_state = REDIS_UP;
    gw.redis_backoff_ms = 0;
    log_info("redis (gateway): connected");
    if (gw.cfg->redis.password[0] && gw.cfg->redis.user[0])
        redisAsyncCommand(gw.ac, on_auth, NULL, "AUTH %s %s", gw.cfg->redis.user, gw.cfg->redis.password);
    else if (gw.cfg->redis.password[0])
        redisAsyncCommand(gw.ac, on_auth, NULL, "AUTH %s", gw.cfg->redis.password);
    redisAsyncCommand(gw.ac, on_sub_message, NULL, "SUBSCRIBE " PING_CHANNEL);
    gw.ping_outstanding = true;
    gw.ping_sent = mono_s();
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            if (r->nclients > 0)
                redis_subscribe_run(r);
    struct timeval tv = tv_ms(gw.cfg->redis_timeout_ms < 1000 ? gw.cfg->redis_timeout_ms : 1000);
    evtimer_add(gw.redis_timer, &tv);
}

static void on_redis_disconnect(const redisAsyncContext *ac, int status)
{
    redis_went_down(status == REDIS_OK ? "disconnected" : ac->errstr);
}

static void redis_connect(void)
{
    gw.ac = redisAsyncConnect(gw.cfg->redis.host, gw.cfg->redis.port);
    if (!gw.ac || gw.ac->err) {
        log_warn("redis (gateway): connect: %s", gw.ac ? gw.ac->errstr : "out of memory");
        if (gw.ac)
            redisAsyncFree(gw.ac);
        gw.ac = NULL;
        redis_schedule_reconnect();
        return;
    }
    redisLibeventAttach(gw.ac, gw.base);
    redisAsyncSetConnectCallback(gw.ac, on_redis_connect);
    redisAsyncSetDisconnectCallback(gw.ac, on_redis_disconnect);
    gw.redis_state = REDIS_CONNECTING;
    gw.ping_sent = mono_s();
    struct timeval tv = tv_ms(gw.cfg->redis_timeout_ms);
    evtimer_add(gw.redis_timer, &tv);
}

/* One timer: connect timeout, reconnect backoff, and the liveness ping (a SUBSCRIBE
 * to a private channel, which Redis confirms even when already subscribed). */
static void on_redis_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (gw.redis_state == REDIS_DOWN) {
        redis_connect();
        return;
    }
    double waited = mono_s() - gw.ping_sent;
    if ((gw.redis_state == REDIS_CONNECTING || gw.ping_outstanding) &&
        waited * 1000 >= (double)gw.cfg->redis_timeout_ms) {
        /* Stalled (e.g. SIGSTOP): the socket stays open, only a timeout notices. */
        redisAsyncContext *ac = gw.ac;
        bool was_up = gw.redis_state == REDIS_UP;
        gw.ac = NULL;
        if (was_up) {
            redisAsyncFree(ac); /* runs on_redis_disconnect */
        } else {
            redisAsyncFree(ac);
            log_warn("redis (gateway): connect timed out");
            gw.redis_state = REDIS_DOWN;
            redis_schedule_reconnect();
        }
        if (was_up && gw.redis_state == REDIS_UP)
            redis_went_down("timed out");
        return;
    }
    if (gw.redis_state == REDIS_UP && !gw.ping_outstanding) {
        redisAsyncCommand(gw.ac, on_sub_message, NULL, "SUBSCRIBE " PING_CHANNEL);
        gw.ping_outstanding = true;
        gw.ping_sent = mono_s();
    }
    struct timeval tv = tv_ms(gw.cfg->redis_timeout_ms < 1000 ? gw.cfg->redis_timeout_ms : 1000);
    evtimer_add(gw.redis_timer, &tv);
}

static void redis_schedule_reconnect(void)
{
    if (!gw.stopping)
        schedule_reconnect(&gw.redis_backoff_ms, gw.redis_timer);
}

/* ---- timers ---------------------------------------------------------------------- */

/* Redis delivers: connected, and no liveness ping waiting longer than a poll period
 * (a ping sent a moment ago is not a sign of trouble). */
static bool redis_healthy(void)
{
    return gw.redis_state == REDIS_UP &&
           !(gw.ping_outstanding && (mono_s() - gw.ping_sent) * 1000 > DEGRADED_POLL_MS);
}

/* While Redis is not delivering, every run with streams is read from PostgreSQL. */
static void on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (redis_healthy())
        return;
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b]; r; r = r->hnext)
            if (r->nclients > 0 && !r->fetching && !r->queued) {
                run_invalidate(r);
                run_request_fetch(r);
            }
}

/* A comment line keeps proxies from closing idle streams. The same tick re-reads
 * each run's tail once, so that a lost last message cannot stay unnoticed. */
static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
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
            if (r->nclients > 0 && r->valid && !r->fetching) {
                r->tail_gap = true;
                r->gen++;
                run_request_fetch(r);
            }
        }
}

static void on_stats(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_info("stats: streams=%d runs=%d streams_opened=%llu events_sent=%llu live_messages=%llu "
             "replays=%llu gaps_filled=%llu slow_client_pauses=%llu redis=%s postgresql=%s",
             gw.nclients, gw.nruns, gw.streams_total, gw.events_sent, gw.live_msgs, gw.replays, gw.gaps,
             gw.pauses, redis_healthy() ? "up" : "down",
             gw.pg_state == PG_IDLE || gw.pg_state == PG_BUSY ? "up" : "down");
}

/* ---- HTTP ------------------------------------------------------------------------ */

bool sse_valid_utf8(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        unsigned c = *p;
        if (c == 0)
            return false;
        if (c < 0x80) {
            p++;
            continue;
        }
        int len;
        unsigned cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (end - p < len)
            return false;
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        p += len;
    }
    return true;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

sse_route sse_parse_path(const char *path, char *run_id, size_t cap, size_t *len, const char **bad)
{
    *bad = NULL;
    *len = 0;
    if (!strcmp(path, "/healthz"))
        return ROUTE_HEALTH;
    if (!strcmp(path, "/metrics"))
        return ROUTE_METRICS;
    if (strncmp(path, "/runs/", 6) != 0)
        return ROUTE_NOT_FOUND;
    const char *p = path + 6;
    const char *slash = strchr(p, '/');
    sse_route route;
    size_t n;
    if (!slash) {
        route = ROUTE_VIEWER;
        n = strlen(p);
    } else if (!strcmp(slash, "/events")) {
        route = ROUTE_EVENTS;
        n = (size_t)(slash - p);
    } else {
        return ROUTE_NOT_FOUND;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '%') {
            int hi = i + 2 < n ? hexval(p[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(p[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
                *bad = "malformed percent-encoding in the run id";
                return route;
            }
            ch = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= cap) {
            *bad = "run id too long";
            return route;
        }
        run_id[o++] = ch;
    }
    run_id[o] = '\0';
    *len = o;
    if (o == 0)
        *bad = "empty run id";
    else if (!sse_valid_utf8(run_id, o))
        *bad = "run id is not valid UTF-8";
    return route;
}

bool sse_parse_last_id(const char *s, long long *out)
{
    while (*s == ' ')
        s++;
    if (*s < '0' || *s > '9')
        return false;
    long long v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (LLONG_MAX - 9) / 10)
            return false;
        v = v * 10 + (*s - '0');
    }
    while (*s == ' ')
        s++;
    if (*s)
        return false;
    *out = v;
    return true;
}

static void add_common_headers(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (gw.cfg->cors_origin) {
        evhttp_add_header(h, "Access-Control-Allow-Origin", gw.cfg->cors_origin);
        evhttp_add_header(h, "Access-Control-Allow-Headers", "Last-Event-ID, Cache-Control");
        evhttp_add_header(h, "Access-Control-Allow-Methods", "GET, OPTIONS");
    }
}

static void reply_text(struct evhttp_request *req, int code, const char *reason, const char *content_type,
                       const char *body)
{
    add_common_headers(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-cache");
    struct evbuffer *b = evbuffer_new();
    if (b)
        evbuffer_add(b, body, strlen(body));
    evhttp_send_reply(req, code, reason, b);
    if (b)
        evbuffer_free(b);
}

static void open_stream(struct evhttp_request *req, const char *run_id, size_t len)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    long long last = 0;
    /* The header wins: a browser's reconnect carries it while its URL keeps the
     * query parameter of the first request. */
    const char *hdr = evhttp_find_header(in, "Last-Event-ID");
    if (hdr && *hdr) {
        if (!sse_parse_last_id(hdr, &last)) {
            reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8",
                       "Last-Event-ID must be a non-negative integer (the seq of the last event seen)\n");
            return;
        }
    } else {
        const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        struct evkeyvalq params = {0}; /* parse_query_str initializes it; zeroed is an empty list */
        if (query && evhttp_parse_query_str(query, &params) != 0) {
            reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", "malformed query string\n");
            return;
        }
        const char *q = evhttp_find_header(&params, "last_event_id");
        bool ok = !q || !*q || sse_parse_last_id(q, &last);
        evhttp_clear_headers(&params);
        if (!ok) {
            reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8",
                       "last_event_id must be a non-negative integer (the seq of the last event seen)\n");
            return;
        }
    }
    if (gw.nclients >= gw.cfg->max_clients) {
        /* Not 503: any non-200 answer stops an EventSource for good. A stream that
         * ends at once with a retry hint makes the browser come back in 5 s. */
        reply_text(req, 200, "OK", "text/event-stream; charset=utf-8",
                   "retry: 5000\n: this gateway is full; reconnect later\n\n");
        return;
    }
    run *r = run_get(run_id, len);
    client *c = r ? calloc(1, sizeof *c) : NULL;
    if (!c) {
        if (r)
            run_maybe_release(r);
        reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    c->r = r;
    c->req = req;
    c->conn = evhttp_request_get_connection(req);
    c->last = last;
    c->next = r->clients;
    if (r->clients)
        r->clients->prev = c;
    r->clients = c;
    r->nclients++;
    gw.nclients++;
    gw.streams_total++;

    add_common_headers(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(req, 200, "OK");
    evhttp_connection_set_closecb(c->conn, on_client_closed, c);
    /* A stream's client has nothing more to say: stop reading once 4 KB pile up
     * (nothing consumes them), and let the idle timeout outlast the heartbeat. */
    struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
    if (bev)
        bufferevent_setwatermark(bev, EV_READ, 0, 4096);
    evhttp_connection_set_timeout(c->conn, (int)(gw.cfg->heartbeat_ms / 1000) * 2 + 30);
    struct evbuffer *out = evbuffer_new();
    if (out) {
        evbuffer_add_printf(out, "retry: 1000\n: stream of run events after seq %lld\n\n", last);
        client_send(c, out);
        evbuffer_free(out);
    }
    if (r->sub == SUB_NONE || r->sub == SUB_LEAVING)
        redis_subscribe_run(r);
    client_pump(c);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) {
        reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", "malformed request URI\n");
        return;
    }
    char *run_id = malloc(SSE_MAX_RUN_ID + 1);
    if (!run_id) {
        reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    size_t len;
    const char *bad;
    sse_route route = sse_parse_path(path, run_id, SSE_MAX_RUN_ID + 1, &len, &bad);
    if (route == ROUTE_NOT_FOUND) {
        reply_text(req, 404, "Not Found", "text/plain; charset=utf-8",
                   "not found: the streams are at /runs/{run_id}/events\n");
    } else if (method == EVHTTP_REQ_OPTIONS) {
        add_common_headers(req);
        evhttp_send_reply(req, 204, "No Content", NULL);
    } else if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, OPTIONS");
        reply_text(req, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET is served here\n");
    } else if (route == ROUTE_HEALTH) {
        char body[256];
        snprintf(body, sizeof body, "{\"status\":\"ok\",\"streams\":%d,\"redis\":\"%s\",\"postgresql\":\"%s\"}\n",
                 gw.nclients, redis_healthy() ? "up" : "down",
                 gw.pg_state == PG_IDLE || gw.pg_state == PG_BUSY ? "up" : "down");
        reply_text(req, 200, "OK", "application/json", body);
    } else if (route == ROUTE_METRICS) {
        buf m;
        buf_init(&m, 0);
        bool ok = prom_gauge(&m, "outboxd_sse_streams", "Open event streams.", gw.nclients) &&
                  prom_gauge(&m, "outboxd_sse_runs", "Runs with open streams (or leaving).", gw.nruns) &&
                  prom_counter(&m, "outboxd_sse_streams_opened_total", "Streams opened.", (double)gw.streams_total) &&
                  prom_counter(&m, "outboxd_sse_events_sent_total", "Events written to streams.",
                               (double)gw.events_sent) &&
                  prom_counter(&m, "outboxd_sse_live_messages_total", "Messages received from Redis.",
                               (double)gw.live_msgs) &&
                  prom_counter(&m, "outboxd_sse_replays_total", "Reads of a run's events from PostgreSQL.",
                               (double)gw.replays) &&
                  prom_counter(&m, "outboxd_sse_gaps_filled_total",
                               "Gaps in the live feed filled from PostgreSQL.", (double)gw.gaps) &&
                  prom_counter(&m, "outboxd_sse_slow_client_pauses_total",
                               "Times a stream passed its buffer cap and was paused.", (double)gw.pauses) &&
                  prom_gauge(&m, "outboxd_sse_redis_up", "1 while the Redis subscription is healthy.",
                             redis_healthy()) &&
                  prom_gauge(&m, "outboxd_sse_database_up", "1 while the PostgreSQL connection is up.",
                             gw.pg_state == PG_IDLE || gw.pg_state == PG_BUSY);
        if (ok)
            reply_text(req, 200, "OK", "text/plain; version=0.0.4", m.data);
        else
            reply_text(req, 500, "Internal Server Error", "text/plain", "out of memory\n");
        buf_free(&m);
    } else if (bad) {
        char body[128];
        snprintf(body, sizeof body, "bad run id: %s (at most %d bytes of UTF-8)\n", bad, SSE_MAX_RUN_ID);
        reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", body);
    } else if (route == ROUTE_VIEWER) {
        reply_text(req, 200, "OK", "text/html; charset=utf-8", sse_viewer_html);
    } else if (method == EVHTTP_REQ_HEAD) {
        reply_text(req, 200, "OK", "text/event-stream; charset=utf-8", "");
    } else {
        open_stream(req, run_id, len);
    }
    free(run_id);
}

/* ---- lifecycle ------------------------------------------------------------------- */

static void on_stop_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    log_warn("shutdown timeout passed, exiting");
    _exit(1);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    (void)arg;
    if (gw.stopping) {
        static const char msg[] = "outboxd: second signal, exiting at once\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        }
        _exit(1);
    }
    log_info("signal %d: closing streams (browsers resume with Last-Event-ID elsewhere)", (int)sig);
    admin_sd_notify("STOPPING=1");
    gw.stopping = true;
    struct timeval tv = tv_ms(gw.cfg->shutdown_timeout_ms);
    evtimer_add(gw.stop_timer, &tv);
    if (gw.sock) {
        evhttp_del_accept_socket(gw.http, gw.sock);
        gw.sock = NULL;
    }
    /* End every stream cleanly; what is queued still goes out before the loop ends.
     * Ending a reply can close its connection at once (HTTP/1.0), which frees the
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
    struct timeval flush = {0, 200000};
    event_base_loopexit(gw.base, &flush);
}

int sse_main(const config *cfg)
{
    memset(&gw, 0, sizeof gw);
    gw.cfg = cfg;
    char host[256];
    int port;
    if (!config_parse_listen(cfg->listen, host, sizeof host, &port)) {
        fprintf(stderr, "outboxd sse: --listen: '%s' is not HOST:PORT\n", cfg->listen);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    gw.base = event_base_new();
    gw.http = gw.base ? evhttp_new(gw.base) : NULL;
    if (!gw.http) {
        log_error("cannot create the event loop");
        return 1;
    }
    evhttp_set_gencb(gw.http, on_request, NULL);
    evhttp_set_max_headers_size(gw.http, 16384);
    evhttp_set_max_body_size(gw.http, 4096);
    evhttp_set_timeout(gw.http, 60);
    evhttp_set_allowed_methods(gw.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    gw.sock = evhttp_bind_socket_with_handle(gw.http, host, (ev_uint16_t)port);
    if (!gw.sock) {
        log_error("cannot listen on %s: %s", cfg->listen, strerror(errno));
        evhttp_free(gw.http);
        event_base_free(gw.base);
        return 1;
    }
    gw.pg_timer = evtimer_new(gw.base, on_pg_timer, NULL);
    gw.redis_timer = evtimer_new(gw.base, on_redis_timer, NULL);
    gw.poll_timer = event_new(gw.base, -1, EV_PERSIST, on_poll_timer, NULL);
    gw.heartbeat_timer = event_new(gw.base, -1, EV_PERSIST, on_heartbeat, NULL);
    gw.stats_timer = event_new(gw.base, -1, EV_PERSIST, on_stats, NULL);
    gw.stop_timer = evtimer_new(gw.base, on_stop_timeout, NULL);
    gw.sig_term = evsignal_new(gw.base, SIGTERM, on_signal, NULL);
    gw.sig_int = evsignal_new(gw.base, SIGINT, on_signal, NULL);
    struct timeval poll = tv_ms(DEGRADED_POLL_MS), hb = tv_ms(cfg->heartbeat_ms),
                   st = tv_ms(cfg->stats_interval_ms);
    event_add(gw.poll_timer, &poll);
    event_add(gw.heartbeat_timer, &hb);
    if (cfg->stats_interval_ms > 0)
        event_add(gw.stats_timer, &st);
    event_add(gw.sig_term, NULL);
    event_add(gw.sig_int, NULL);

    log_info("sse gateway listening on http://%s/ (pid %d)", cfg->listen, (int)getpid());
    config_log(cfg, CMD_SSE);
    pg_connect();
    redis_connect();
    admin_sd_notify("READY=1");
    event_base_dispatch(gw.base);

    on_stats(-1, 0, NULL);
    if (gw.ac) {
        redisAsyncContext *ac = gw.ac;
        gw.ac = NULL;
        gw.redis_state = REDIS_DOWN;
        redisAsyncSetDisconnectCallback(ac, NULL);
        redisAsyncFree(ac);
    }
    evhttp_free(gw.http); /* closes the connections: their close callbacks free the streams */
    if (gw.pg_ev)
        event_free(gw.pg_ev);
    if (gw.pg)
        PQfinish(gw.pg);
    for (int b = 0; b < RUN_BUCKETS; b++)
        for (run *r = gw.buckets[b], *next; r; r = next) {
            next = r->hnext;
            run_free(r);
        }
    event_free(gw.pg_timer);
    event_free(gw.redis_timer);
    event_free(gw.poll_timer);
    event_free(gw.heartbeat_timer);
    event_free(gw.stats_timer);
    event_free(gw.stop_timer);
    event_free(gw.sig_term);
    event_free(gw.sig_int);
    event_base_free(gw.base);
    log_info("sse gateway stopped");
    return 0;
}
