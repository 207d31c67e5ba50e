/* SSE gateway on libevent's HTTP server: routes, opening streams, /healthz and
 * /metrics, signals and the event loop. How a stream gets its events is in
 * sse_run.c (the run cache), sse_replay.c (PostgreSQL) and sse_redis.c (live). */
#include "sse.h"

#include "clock.h"
#include "sse_run.h"

#include "admin_http.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern const char sse_viewer_html[];

/* What only the HTTP side and the loop need. */
static struct {
    const config *cfg;
    struct event_base *base;
    bool stopping;
    struct evhttp *http;
    struct evhttp_bound_socket *sock;
    struct event *poll_timer, *heartbeat_timer, *stats_timer, *sig_term, *sig_int, *stop_timer;
} hs;

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

static void on_stats(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    runs_stats st;
    runs_get_stats(&st);
    log_info("stats: streams=%d runs=%d streams_opened=%llu events_sent=%llu live_messages=%llu "
             "replays=%llu from_replica=%llu replica_fallbacks=%llu gaps_filled=%llu slow_client_pauses=%llu "
             "redis=%s postgresql=%s%s",
             st.streams, st.runs, st.streams_opened, st.events_sent, st.live_msgs, st.replays, st.replica_replays,
             st.replica_fallbacks, st.gaps, st.pauses, st.redis_up ? "up" : "down", st.database_up ? "up" : "down",
             !hs.cfg->replica_url ? "" : st.replica_up ? " replica=up" : " replica=down");
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

static void add_common_headers(struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (hs.cfg->cors_origin) {
        evhttp_add_header(h, "Access-Control-Allow-Origin", hs.cfg->cors_origin);
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
    runs_stats st;
    runs_get_stats(&st);
    if (st.streams >= hs.cfg->max_clients) {
        /* Not 503: any non-200 answer stops an EventSource for good. A stream that
         * ends at once with a retry hint makes the browser come back in 5 s. */
        reply_text(req, 200, "OK", "text/event-stream; charset=utf-8",
                   "retry: 5000\n: this gateway is full; reconnect later\n\n");
        return;
    }
    client *c = stream_new(req, run_id, len, last);
    if (!c) {
        reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    add_common_headers(req);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", "text/event-stream; charset=utf-8");
    evhttp_add_header(h, "Cache-Control", "no-cache");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    evhttp_send_reply_start(req, 200, "OK");
    stream_start(c);
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
        runs_stats st;
        runs_get_stats(&st);
        char body[256];
        snprintf(body, sizeof body,
                 "{\"status\":\"ok\",\"streams\":%d,\"redis\":\"%s\",\"postgresql\":\"%s\"}\n", st.streams,
                 st.redis_up ? "up" : "down", st.database_up ? "up" : "down");
        reply_text(req, 200, "OK", "application/json", body);
    } else if (route == ROUTE_METRICS) {
        runs_stats st;
        runs_get_stats(&st);
        buf m;
        buf_init(&m, 0);
        bool ok = prom_gauge(&m, "outboxd_sse_streams", "Open event streams.", st.streams) &&
                  prom_gauge(&m, "outboxd_sse_runs", "Runs with open streams (or leaving).", st.runs) &&
                  prom_counter(&m, "outboxd_sse_streams_opened_total", "Streams opened.",
                               (double)st.streams_opened) &&
                  prom_counter(&m, "outboxd_sse_events_sent_total", "Events written to streams.",
                               (double)st.events_sent) &&
                  prom_counter(&m, "outboxd_sse_live_messages_total", "Messages received from Redis.",
                               (double)st.live_msgs) &&
                  prom_counter(&m, "outboxd_sse_replays_total", "Reads of a run's events from PostgreSQL.",
                               (double)st.replays) &&
                  prom_counter(&m, "outboxd_sse_replica_replays_total",
                               "Of those, reads served by the standby (--replica-url).", (double)st.replica_replays) &&
                  prom_counter(&m, "outboxd_sse_replica_fallbacks_total",
                               "Reads sent to the primary because the standby stayed behind.",
                               (double)st.replica_fallbacks) &&
                  prom_gauge(&m, "outboxd_sse_replica_up", "1 while a standby is connected and used for reads.",
                             st.replica_up) &&
                  prom_counter(&m, "outboxd_sse_gaps_filled_total",
                               "Gaps in the live feed filled from PostgreSQL.", (double)st.gaps) &&
                  prom_counter(&m, "outboxd_sse_slow_client_pauses_total",
                               "Times a stream passed its buffer cap and was paused.", (double)st.pauses) &&
                  prom_gauge(&m, "outboxd_sse_redis_up", "1 while the Redis subscription is healthy.",
                             st.redis_up) &&
                  prom_gauge(&m, "outboxd_sse_database_up", "1 while the PostgreSQL connection is up.",
                             st.database_up);
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
    if (hs.stopping) {
        static const char msg[] = "outboxd: second signal, exiting at once\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        }
        _exit(1);
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
    /* End every stream cleanly; what is queued still goes out before the loop ends. */
    streams_end_all();
    struct timeval flush = {0, 200000};
    event_base_loopexit(hs.base, &flush);
}

int sse_main(const config *cfg)
{
    hs.cfg = cfg;
    char host[256];
    int port;
    if (!config_parse_listen(cfg->listen, host, sizeof host, &port)) {
        fprintf(stderr, "outboxd sse: --listen: '%s' is not HOST:PORT\n", cfg->listen);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    hs.base = event_base_new();
    hs.http = hs.base ? evhttp_new(hs.base) : NULL;
    if (!hs.http) {
        log_error("cannot create the event loop");
        return 1;
    }
    evhttp_set_gencb(hs.http, on_request, NULL);
    evhttp_set_max_headers_size(hs.http, 16384);
    evhttp_set_max_body_size(hs.http, 4096);
    evhttp_set_timeout(hs.http, 60);
    evhttp_set_allowed_methods(hs.http, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_OPTIONS |
                                            EVHTTP_REQ_POST | EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    hs.sock = evhttp_bind_socket_with_handle(hs.http, host, (ev_uint16_t)port);
    if (!hs.sock) {
        log_error("cannot listen on %s: %s", cfg->listen, strerror(errno));
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
    struct timeval poll = clock_tv_ms(DEGRADED_POLL_MS), hb = clock_tv_ms(cfg->heartbeat_ms),
                   st = clock_tv_ms(cfg->stats_interval_ms);
    event_add(hs.poll_timer, &poll);
    event_add(hs.heartbeat_timer, &hb);
    if (cfg->stats_interval_ms > 0)
        event_add(hs.stats_timer, &st);
    event_add(hs.sig_term, NULL);
    event_add(hs.sig_int, NULL);

    log_info("sse gateway listening on http://%s/ (pid %d)", cfg->listen, (int)getpid());
    config_log(cfg, CMD_SSE);
    if (!runs_start(hs.base, cfg)) {
        log_error("cannot create the gateway's timers");
        return 1;
    }
    admin_sd_notify("READY=1");
    event_base_dispatch(hs.base);

    on_stats(-1, 0, NULL);
    evhttp_free(hs.http); /* closes the connections: their close callbacks free the streams */
    runs_stop();
    event_free(hs.poll_timer);
    event_free(hs.heartbeat_timer);
    event_free(hs.stats_timer);
    event_free(hs.stop_timer);
    event_free(hs.sig_term);
    event_free(hs.sig_int);
    event_base_free(hs.base);
    log_info("sse gateway stopped");
    return 0;
}
