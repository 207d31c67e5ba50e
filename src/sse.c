/* SSE gateway on libevent's HTTP server: routes, opening streams, /healthz and
 * /metrics, signals and the event loop. Who may open a stream is decided in
 * sse_auth.c; how a stream gets its events is in sse_run.c (the run cache),
 * sse_replay.c (PostgreSQL) and sse_redis.c (live). */
#include "sse.h"

#include "auth.h"
#include "clock.h"
#include "sse_auth.h"
#include "sse_reply.h"
#include "sse_run.h"
#include "sse_workers.h"

#include "admin_http.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

extern const char sse_viewer_html[];

#define STATS_PUBLISH_MS 250

/* A worker's counters in shared memory, written by that worker alone under a
 * sequence count (odd while it writes), so a reader never adds up a torn copy. */
typedef struct stats_slot {
    atomic_uint seq;
    bool published;
    runs_stats st;
    atomic_int streams_now; /* open streams, updated at each open (for --max-clients) */
} stats_slot;

/* What a worker process is given. */
typedef struct worker_arg {
    const config *cfg;
    int n;
} worker_arg;

/* What only the HTTP side and the loop need. */
static struct {
    const config *cfg;
    struct event_base *base;
    bool stopping;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    struct event *poll_timer, *heartbeat_timer, *stats_timer, *publish_timer, *sig_term, *sig_int, *sig_hup,
        *stop_timer;
    stats_slot *slots; /* with --workers: every worker's slot; NULL in a single process */
    int nslots, my_slot;
} hs;


/* Streams open in the whole gateway, counting st->streams for this process. With
 * workers the others' counts are as of their last open or publish (at most
 * STATS_PUBLISH_MS old), so simultaneous opens may pass the limit by a few. */
static long gateway_streams(const runs_stats *st)
{
    long n = st->streams;
    for (int i = 0; hs.slots && i < hs.nslots; i++)
        if (i != hs.my_slot)
            n += atomic_load_explicit(&hs.slots[i].streams_now, memory_order_relaxed);
    return n;
}

static void slot_write(stats_slot *s, const runs_stats *st)
{
    unsigned v = atomic_load_explicit(&s->seq, memory_order_relaxed);
    atomic_store_explicit(&s->seq, v + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    s->st = *st;
    s->published = true;
    atomic_store_explicit(&s->streams_now, st->streams, memory_order_relaxed);
    atomic_store_explicit(&s->seq, v + 2, memory_order_release);
}

static bool slot_read(const stats_slot *s, runs_stats *out)
{
    for (int tries = 0; tries < 1000; tries++) {
        unsigned v = atomic_load_explicit(&s->seq, memory_order_acquire);
        if (v & 1)
            continue;
        bool published = s->published;
        *out = s->st;
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&s->seq, memory_order_relaxed) == v)
            return published;
    }
    return false;
}

/* Adds up the slots of every worker that has published: counters and streams add up;
 * Redis, PostgreSQL and the standby count as up only if they are up for all. */
/* Adds the counters of *from (not its gauges) to *to. */
static void stats_add_counters(runs_stats *to, const runs_stats *from)
{
    to->streams_opened += from->streams_opened;
    to->events_sent += from->events_sent;
    to->stream_writes += from->stream_writes;
    to->live_msgs += from->live_msgs;
    to->replays += from->replays;
    to->gaps += from->gaps;
    to->pauses += from->pauses;
    to->replica_replays += from->replica_replays;
    to->replica_fallbacks += from->replica_fallbacks;
}

static void stats_sum(const stats_slot *slots, int n, runs_stats *out)
{
    memset(out, 0, sizeof *out);
    out->redis_up = out->database_up = out->replica_up = true;
    for (int i = 0; i < n; i++) {
        runs_stats s;
        if (!slot_read(&slots[i], &s))
            continue; /* nothing published there (yet): the parent's slot until a worker exits */
        out->streams += s.streams;
        out->runs += s.runs;
        stats_add_counters(out, &s);
        out->redis_up = out->redis_up && s.redis_up;
        out->database_up = out->database_up && s.database_up;
        out->replica_up = out->replica_up && s.replica_up;
    }
}

/* This gateway's counters: the process's own, or every worker's added up. */
static void gateway_stats(runs_stats *out)
{
    runs_get_stats(out);
    if (!hs.slots)
        return;
    slot_write(&hs.slots[hs.my_slot], out);
    stats_sum(hs.slots, hs.nslots, out);
}

static void log_stats(const runs_stats *st, const config *cfg)
{
    log_info("stats: streams=%d runs=%d streams_opened=%llu events_sent=%llu stream_writes=%llu live_messages=%llu "
             "replays=%llu from_replica=%llu replica_fallbacks=%llu gaps_filled=%llu slow_client_pauses=%llu "
             "redis=%s postgresql=%s%s",
             st->streams, st->runs, st->streams_opened, st->events_sent, st->stream_writes, st->live_msgs, st->replays,
             st->replica_replays, st->replica_fallbacks, st->gaps, st->pauses, st->redis_up ? "up" : "down",
             st->database_up ? "up" : "down",
             !cfg->replica_url ? ""
             : st->replica_up  ? " replica=up"
                               : " replica=down");
}

static void on_poll_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    runs_poll_tick();
}

static void on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    runs_heartbeat_tick();
}

/* The stats line: a single process logs its own; workers publish to their slot and
 * the supervisor logs the sum (workers_on_tick). */
static void on_stats(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    runs_stats st;
    gateway_stats(&st);
    if (!hs.slots)
        log_stats(&st, hs.cfg);
}

/* A worker stopped: what it counted moves to the parent's slot (the last one), so
 * that the gateway's counters never go back when a worker is replaced, nor count
 * twice while its slot waits for the replacement (or after the last stats line). */
static void workers_on_exit(void *slots, int i, void *arg)
{
    const worker_arg *w = arg;
    stats_slot *all = slots, *kept = &all[w->n];
    runs_stats gone, sum;
    if (!slot_read(&all[i], &gone))
        return;
    slot_read(&kept[0], &sum);
    stats_add_counters(&sum, &gone);
    sum.streams = sum.runs = 0;
    sum.redis_up = sum.database_up = sum.replica_up = true;
    slot_write(kept, &sum);
    runs_stats cleared = {.redis_up = gone.redis_up, .database_up = gone.database_up, .replica_up = gone.replica_up};
    slot_write(&all[i], &cleared);
}

static void workers_on_tick(const void *slots, int n, void *arg)
{
    const worker_arg *w = arg;
    runs_stats st;
    stats_sum(slots, n, &st);
    log_stats(&st, w->cfg);
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
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
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

static void start_stream(struct evhttp_request *req, const char *run_id, size_t len, long long last,
                         const auth_grant *g)
{
    auth_grant grant = *g;
    runs_stats st;
    runs_get_stats(&st);
    if (gateway_streams(&st) >= hs.cfg->max_clients) {
        /* Not 503: any non-200 answer stops an EventSource for good. A stream that
         * ends at once with a retry hint makes the browser come back in 5 s. */
        auth_grant_release(&grant);
        sse_reply_retry_later(req, NULL, "this gateway is full; reconnect later");
        return;
    }
    client *c = stream_new(req, run_id, len, last, &grant);
    if (!c) {
        auth_grant_release(&grant);
        sse_reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    if (hs.slots)
        atomic_store_explicit(&hs.slots[hs.my_slot].streams_now, st.streams + 1, memory_order_relaxed);
    sse_reply_cors(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    stream_start(c);
    sse_auth_opened(c); /* auth-expiring at once for a short-lived token */
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
            sse_reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8",
                       "Last-Event-ID must be a non-negative integer (the seq of the last event seen)\n");
            return;
        }
    } else {
        const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
        struct evkeyvalq params = {0}; /* parse_query_str initializes it; zeroed is an empty list */
        if (query && evhttp_parse_query_str(query, &params) != 0) {
            sse_reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", "malformed query string\n");
            return;
        }
        const char *q = evhttp_find_header(&params, "last_event_id");
        bool ok = !q || !*q || sse_parse_last_id(q, &last);
        evhttp_clear_headers(&params);
        if (!ok) {
            sse_reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8",
                       "last_event_id must be a non-negative integer (the seq of the last event seen)\n");
            return;
        }
    }
    /* Authorization before anything of the run: not one event byte goes out first. */
    sse_auth_open(req, run_id, len, last);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    enum evhttp_cmd_type method = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path) {
        sse_reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", "malformed request URI\n");
        return;
    }
    char *run_id = malloc(SSE_MAX_RUN_ID + 1);
    if (!run_id) {
        sse_reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    size_t len;
    const char *bad;
    sse_route route = sse_parse_path(path, run_id, SSE_MAX_RUN_ID + 1, &len, &bad);
    if (route == ROUTE_NOT_FOUND) {
        sse_reply_text(req, 404, "Not Found", "text/plain; charset=utf-8",
                   "not found: the streams are at /runs/{run_id}/events\n");
    } else if (method == EVHTTP_REQ_OPTIONS) {
        sse_reply_cors(req);
        evhttp_send_reply(req, 204, "No Content", NULL);
    } else if (method != EVHTTP_REQ_GET && method != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, OPTIONS");
        sse_reply_text(req, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET is served here\n");
    } else if (route == ROUTE_HEALTH) {
        runs_stats st;
        gateway_stats(&st);
        char body[256];
        snprintf(body, sizeof body,
                 "{\"status\":\"ok\",\"streams\":%d,\"redis\":\"%s\",\"postgresql\":\"%s\"}\n", st.streams,
                 st.redis_up ? "up" : "down", st.database_up ? "up" : "down");
        sse_reply_text(req, 200, "OK", "application/json", body);
    } else if (route == ROUTE_METRICS) {
        runs_stats st;
        gateway_stats(&st);
        buf m;
        buf_init(&m, 0);
        bool ok = prom_gauge(&m, "outboxd_sse_streams", "Open event streams.", st.streams) &&
                  prom_gauge(&m, "outboxd_sse_runs", "Runs with open streams (or leaving).", st.runs) &&
                  prom_counter(&m, "outboxd_sse_streams_opened_total", "Streams opened.",
                               (double)st.streams_opened) &&
                  prom_counter(&m, "outboxd_sse_events_sent_total", "Events written to streams.",
                               (double)st.events_sent) &&
                  prom_counter(&m, "outboxd_sse_stream_writes_total",
                               "Writes to streams (one carries several events when they come faster than --stream-coalesce).",
                               (double)st.stream_writes) &&
                  prom_counter(&m, "outboxd_sse_live_messages_total", "Messages received from Redis.",
                               (double)st.live_msgs) &&
                  prom_counter(&m, "outboxd_sse_replays_total", "Reads of a run's events from PostgreSQL.",
                               (double)st.replays) &&
                  prom_counter(&m, "outboxd_sse_replica_replays_total",
                               "Of those, reads served by the standby (--replica-url).",
                               (double)st.replica_replays) &&
                  prom_counter(&m, "outboxd_sse_replica_fallbacks_total",
                               "Reads sent to the primary because the standby stayed behind.",
                               (double)st.replica_fallbacks) &&
                  prom_gauge(&m, "outboxd_sse_replica_up",
                             "1 while a standby is connected and used for reads.", st.replica_up) &&
                  prom_counter(&m, "outboxd_sse_gaps_filled_total",
                               "Gaps in the live feed filled from PostgreSQL.", (double)st.gaps) &&
                  prom_counter(&m, "outboxd_sse_slow_client_pauses_total",
                               "Times a stream passed its buffer cap and was paused.", (double)st.pauses) &&
                  prom_gauge(&m, "outboxd_sse_redis_up", "1 while the Redis subscription is healthy.",
                             st.redis_up) &&
                  prom_gauge(&m, "outboxd_sse_database_up", "1 while the PostgreSQL connection is up.",
                             st.database_up) &&
                  auth_metrics(&m);
        if (ok)
            sse_reply_text(req, 200, "OK", "text/plain; version=0.0.4", m.data);
        else
            sse_reply_text(req, 500, "Internal Server Error", "text/plain", "out of memory\n");
        buf_free(&m);
    } else if (bad) {
        char body[128];
        snprintf(body, sizeof body, "bad run id: %s (at most %d bytes of UTF-8)\n", bad, SSE_MAX_RUN_ID);
        sse_reply_text(req, 400, "Bad Request", "text/plain; charset=utf-8", body);
    } else if (route == ROUTE_VIEWER) {
        sse_reply_text(req, 200, "OK", "text/html; charset=utf-8", sse_viewer_html);
    } else if (method == EVHTTP_REQ_HEAD) {
        sse_reply_text(req, 200, "OK", "text/event-stream; charset=utf-8", "");
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
    if (hs.stopping && sig != SIGHUP) {
        /* A worker gets a stop signal twice when it was sent to the whole group
         * (systemd's default KillMode, Ctrl-C in a terminal) and passed on by the
         * supervisor: it keeps draining. The supervisor stops the workers at once on
         * a second signal of its own. */
        if (hs.slots)
            return;
        static const char msg[] = "outboxd: second signal, exiting at once\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        }
        _exit(1);
    }
    if (sig == SIGHUP) {
        log_info("SIGHUP: reloading the authorization keys");
        auth_reload();
        return;
    }
    log_info("signal %d: closing streams (browsers resume with Last-Event-ID elsewhere)", (int)sig);
    admin_sd_notify("STOPPING=1");
    hs.stopping = true;
    struct timeval tv = clock_tv_ms(hs.cfg->shutdown_timeout_ms);
    evtimer_add(hs.stop_timer, &tv);
    if (hs.sock) {
        evhttp_del_accept_socket(hs.http, hs.sock);
        hs.sock = NULL;
    }
    /* End every stream cleanly; what is queued still goes out before the loop ends.
     * Streams still waiting for forward-auth are told to come back. */
    sse_auth_cancel();
    streams_end_all();
    struct timeval flush = {0, 200000};
    event_base_loopexit(hs.base, &flush);
}

/* Listens on host:port; with SO_REUSEPORT when several workers share the port. */
static struct evhttp_bound_socket *listen_on(const char *host, int port, bool shared)
{
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC,
                                    .ai_socktype = SOCK_STREAM,
                                    .ai_flags = AI_PASSIVE},
                           *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = evutil_getaddrinfo(host, ps, &hints, &ai);
    if (gai != 0) {
        log_error("cannot listen on %s: %s", hs.cfg->listen, evutil_gai_strerror(gai));
        return NULL;
    }
    unsigned flags = LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC |
                     (shared ? LEV_OPT_REUSEABLE_PORT : 0);
    struct evconnlistener *l =
        evconnlistener_new_bind(hs.base, NULL, NULL, flags, 1024, ai->ai_addr, (int)ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (!l) {
        log_error("cannot listen on %s: %s", hs.cfg->listen, strerror(errno));
        return NULL;
    }
    struct evhttp_bound_socket *b = evhttp_bind_listener(hs.http, l);
    if (!b)
        evconnlistener_free(l);
    return b;
}

/* One gateway process: the whole gateway, or worker my_slot of nworkers. slots (one
 * per worker and the supervisor's) is NULL in a single process. */
static int serve(const config *cfg, stats_slot *slots, int nworkers, int my_slot)
{
    memset(&hs, 0, sizeof hs);
    hs.cfg = cfg;
    hs.slots = slots;
    hs.nslots = slots ? nworkers + 1 : 0;
    hs.my_slot = my_slot;
    char host[256];
    int port;
    if (!config_parse_listen(cfg->listen, host, sizeof host, &port)) {
        fprintf(stderr, "outboxd sse: --listen: '%s' is not HOST:PORT\n", cfg->listen);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    workers_hold_signals(NULL); /* a worker's are held already */
    hs.base = event_base_new();
    hs.http = hs.base ? evhttp_new(hs.base) : NULL;
    if (!hs.http) {
        log_error("cannot create the event loop");
        return 1;
    }
    char err[512];
    if (!auth_start(hs.base, cfg, err, sizeof err)) {
        log_error("authorization: %s", err);
        auth_stop();
        evhttp_free(hs.http);
        event_base_free(hs.base);
        return 2;
    }
    sse_reply_init(cfg);
    evhttp_set_gencb(hs.http, on_request, NULL);
    /* Room for a hostile 100 KB token to reach the verifier and get its 401 (a
     * request's headers are read whole before we see them: this bounds that). */
    evhttp_set_max_headers_size(hs.http, 256 * 1024);
    evhttp_set_max_body_size(hs.http, 4096);
    evhttp_set_timeout(hs.http, 60);
    evhttp_set_allowed_methods(hs.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    hs.sock = listen_on(host, port, slots != NULL);
    if (!hs.sock) {
        auth_stop();
        evhttp_free(hs.http);
        event_base_free(hs.base);
        return 1;
    }
    hs.poll_timer = event_new(hs.base, -1, EV_PERSIST, on_poll_timer, NULL);
    hs.heartbeat_timer = event_new(hs.base, -1, EV_PERSIST, on_heartbeat, NULL);
    hs.stats_timer = event_new(hs.base, -1, EV_PERSIST, on_stats, NULL);
    hs.stop_timer = evtimer_new(hs.base, on_stop_timeout, NULL);
    hs.sig_term = evsignal_new(hs.base, SIGTERM, on_signal, NULL);
    hs.sig_int = evsignal_new(hs.base, SIGINT, on_signal, NULL);
    hs.sig_hup = evsignal_new(hs.base, SIGHUP, on_signal, NULL);
    struct timeval poll = clock_tv_ms(DEGRADED_POLL_MS), hb = clock_tv_ms(cfg->heartbeat_ms),
                   st = clock_tv_ms(slots ? STATS_PUBLISH_MS : cfg->stats_interval_ms);
    event_add(hs.poll_timer, &poll);
    event_add(hs.heartbeat_timer, &hb);
    if (slots || cfg->stats_interval_ms > 0)
        event_add(hs.stats_timer, &st);
    event_add(hs.sig_term, NULL);
    event_add(hs.sig_int, NULL);
    event_add(hs.sig_hup, NULL);
    workers_release_signals();

    if (!slots) {
        log_info("sse gateway listening on http://%s/ (pid %d)", cfg->listen, (int)getpid());
        config_log(cfg, CMD_SSE);
    }
    if (!runs_start(hs.base, cfg)) {
        log_error("cannot create the gateway's timers");
        return 1;
    }
    if (!sse_auth_start(hs.base, cfg, start_stream)) {
        log_error("cannot create the gateway's timers");
        return 1;
    }
    if (slots)
        workers_ready();
    else
        admin_sd_notify("READY=1");
    event_base_dispatch(hs.base);

    on_stats(-1, 0, NULL);
    sse_auth_cancel();
    evhttp_free(hs.http); /* closes the connections: their close callbacks free the streams */
    runs_stop();
    sse_auth_stop();
    auth_stop();
    event_free(hs.poll_timer);
    event_free(hs.heartbeat_timer);
    event_free(hs.stats_timer);
    event_free(hs.stop_timer);
    event_free(hs.sig_term);
    event_free(hs.sig_int);
    event_free(hs.sig_hup);
    event_base_free(hs.base);
    if (!slots)
        log_info("sse gateway stopped");
    return 0;
}

static int worker_main(int index, void *slots, void *arg)
{
    const worker_arg *w = arg;
    return serve(w->cfg, slots, w->n, index);
}

/* Whether nothing listens on host:port yet: the workers bind with SO_REUSEPORT, which
 * would otherwise share the port with another gateway started by mistake. */
static bool port_available(const config *cfg)
{
    char host[256];
    int port;
    if (!config_parse_listen(cfg->listen, host, sizeof host, &port))
        return false;
    struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC,
                                    .ai_socktype = SOCK_STREAM,
                                    .ai_flags = AI_PASSIVE},
                           *ai = NULL;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    int gai = evutil_getaddrinfo(host, ps, &hints, &ai);
    if (gai != 0) {
        log_error("cannot listen on %s: %s", cfg->listen, evutil_gai_strerror(gai));
        return false;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    bool ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
              bind(fd, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0;
    if (!ok)
        log_error("cannot listen on %s: %s", cfg->listen, strerror(errno));
    if (fd >= 0)
        close(fd);
    evutil_freeaddrinfo(ai);
    return ok;
}

int sse_main(const config *cfg)
{
    char err[512];
    if (!auth_check_config(cfg, err, sizeof err)) {
        fprintf(stderr, "outboxd sse: authorization: %s\n", err);
        return 2;
    }
    long nofile = workers_raise_nofile();
    int n = cfg->workers > 0 ? (int)cfg->workers : workers_default_count();
    if (n > 1 && cfg->auth != AUTH_NONE && !auth_share_init()) {
        log_error("cannot share authorization state between workers: %s", strerror(errno));
        return 1;
    }
    if (n == 1)
        return serve(cfg, NULL, 1, 0);
    if (!port_available(cfg))
        return 1;
    log_info("sse gateway listening on http://%s/ with %d workers (pid %d; open files per process: %ld)",
             cfg->listen, n, (int)getpid(), nofile);
    config_log(cfg, CMD_SSE);
    worker_arg wa = {cfg, n};
    workers_opts o = {
        .n = n,
        .extra_slots = 1,
        .slot_size = sizeof(stats_slot),
        .shutdown_timeout_ms = cfg->shutdown_timeout_ms,
        .tick_ms = cfg->stats_interval_ms,
        .on_tick = workers_on_tick,
        .on_exit = workers_on_exit,
        .worker = worker_main,
        .arg = &wa,
    };
    int rc = workers_run(&o);
    log_info("sse gateway stopped");
    return rc;
}
