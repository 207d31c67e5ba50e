/* Checking SSE client for tests and benchmarks: opens --per-run streams on each of
 * --runs runs (PREFIX-0 ..), parses the event streams, optionally cuts one stream
 * after --cut-after events and resumes it --cut-ms later with Last-Event-ID, and
 * with --check compares each stream with run_outbox: every event after its starting
 * point exactly once, in seq order. Latency = arrival - payload "t" (insert time).
 *   obx_sse --port P [--prefix P] [--runs N] [--per-run K] [--from SEQ] [--idle-ms MS]
 *           [--max-seconds S] [--cut-after N] [--cut-ms MS] [--ready-file F] [--check]
 *           [--token T] [--renew-token T] [--cookie C]
 * With --token each request carries Authorization: Bearer T; a stream that receives
 * event: auth-expired reconnects at once with --renew-token (and Last-Event-ID), as a
 * browser that fetched a fresh token would. In-band auth-* events are counted, not
 * checked as run events. --cookie sends a Cookie header (forward-auth).
 * SIGTERM ends the wait early (then checks). Prints one summary line; exits 1 if the
 * check fails. Loopback only. */
#include "obx_common.h"
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>

typedef struct stream {
    int idx;
    char run[128];
    long long from;                 /* last_event_id of the first request */
    long long last;                 /* last id seen */
    long long *seqs;
    size_t n, cap;
    long long no_id;                /* events without an id: line */
    struct evhttp_connection *conn;
    struct evhttp_request *req;
    char line[1 << 16];
    size_t linelen;
    long long cur_id;
    bool has_data;
    char event[64]; /* the event: field of the event being read */
    char data[1 << 16];
    size_t datalen;
    bool opened, cut_done;
    int reconnects;
    int expiring, expired, revoked; /* in-band auth events seen */
    long long expired_at_us;
    int port_idx;
} stream;

static struct event_base *base;
static stream *streams;
static int nstreams, opened, ports[16] = {8080}, nports = 1;
static long reconnect_ms, reopened;
static const char *source_addr;
static long long last_event_us, start_us;
static long idle_ms = 3000, cut_after = 0, cut_ms = 500;
static double max_seconds = 60;
static const char *ready_file;
static histogram lat;
static long bad_status;
static const char *token, *renew_token, *cookie;

static void open_stream(stream *s);
static void cut_now(evutil_socket_t fd, short what, void *arg);

/* An in-band authorization event: counted; auth-expired makes the stream come back
 * with the renewed token. */
static void on_auth_event(stream *s)
{
    if (!strcmp(s->event, "auth-expiring"))
        s->expiring++;
    else if (!strcmp(s->event, "auth-revoked"))
        s->revoked++;
    else if (!strcmp(s->event, "auth-expired")) {
        s->expired++;
        s->expired_at_us = obx_now_us();
        if (renew_token) {
            token = renew_token;
            event_base_once(base, -1, EV_TIMEOUT, cut_now, s, NULL);
        }
    }
}

static void on_event(stream *s)
{
    if (s->event[0]) {
        on_auth_event(s);
        s->event[0] = '\0';
        s->has_data = false;
        s->datalen = 0;
        s->cur_id = -1;
        return;
    }
    if (!s->has_data)
        return;
    if (s->cur_id < 0)
        s->no_id++;
    else {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 256;
            s->seqs = realloc(s->seqs, s->cap * sizeof *s->seqs);
        }
        s->seqs[s->n++] = s->cur_id;
        s->last = s->cur_id;
    }
    s->data[s->datalen] = '\0';
    long long now = obx_now_us();
    const char *t = strstr(s->data, "\"t\":");
    if (t) {
        long long tv = strtoll(t + 4, NULL, 10);
        if (tv > 0)
            hist_record(&lat, (double)(now - tv));
    }
    last_event_us = now;
    s->has_data = false;
    s->datalen = 0;
    s->cur_id = -1;
}

static void on_line(stream *s, char *l, size_t n)
{
    l[n] = '\0';
    if (n == 0) {
        on_event(s);
        return;
    }
    if (l[0] == ':')
        return;
    char *colon = strchr(l, ':');
    char *v = colon ? colon + 1 : l + n;
    if (colon)
        *colon = '\0';
    if (*v == ' ')
        v++;
    if (!strcmp(l, "event")) {
        snprintf(s->event, sizeof s->event, "%s", v);
    } else if (!strcmp(l, "id")) {
        s->cur_id = strtoll(v, NULL, 10);
    } else if (!strcmp(l, "data")) {
        size_t vl = strlen(v);
        if (s->has_data && s->datalen + 1 < sizeof s->data)
            s->data[s->datalen++] = '\n';
        if (s->datalen + vl < sizeof s->data) {
            memcpy(s->data + s->datalen, v, vl);
            s->datalen += vl;
        }
        s->has_data = true;
    }
}

static void reopen(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    stream *s = arg;
    if (!s->conn) /* a cut and a server's end may both ask */
        open_stream(s);
}

static void cut_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    stream *s = arg;
    if (s->conn) {
        evhttp_connection_free(s->conn); /* cancels the request too */
        s->conn = NULL;
        s->req = NULL;
    }
    struct timeval tv = {cut_ms / 1000, (cut_ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, reopen, s, &tv);
}

static void on_chunk(struct evhttp_request *req, void *arg)
{
    stream *s = arg;
    if (!s->opened) {
        s->opened = true;
        if (evhttp_request_get_response_code(req) != 200)
            bad_status++;
        if (++opened == nstreams && ready_file) {
            FILE *f = fopen(ready_file, "w");
            if (f)
                fclose(f);
        }
    }
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len;
    while ((len = evbuffer_get_length(in)) > 0) {
        char tmp[4096];
        int got = evbuffer_remove(in, tmp, sizeof tmp < len ? sizeof tmp : len);
        for (int i = 0; i < got; i++) {
            char c = tmp[i];
            if (c == '\n') {
                size_t n = s->linelen;
                if (n && s->line[n - 1] == '\r')
                    n--;
                on_line(s, s->line, n);
                s->linelen = 0;
            } else if (s->linelen + 1 < sizeof s->line) {
                s->line[s->linelen++] = c;
            }
        }
    }
    if (cut_after && s->idx == 0 && !s->cut_done && (long)s->n >= cut_after) {
        s->cut_done = true;
        event_base_once(base, -1, EV_TIMEOUT, cut_now, s, NULL);
    }
}

/* The server ended the stream (or could not be reached): like EventSource, come back
 * after reconnect_ms with Last-Event-ID, here at the next gateway. The connection is
 * freed outside its own callback. */
static void drop_and_reopen(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    stream *s = arg;
    if (s->req)
        return; /* reopened meanwhile */
    if (s->conn) {
        evhttp_connection_free(s->conn);
        s->conn = NULL;
    }
    s->port_idx++;
    reopened++;
    struct timeval tv = {reconnect_ms / 1000, (reconnect_ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, reopen, s, &tv);
}

static void on_done(struct evhttp_request *req, void *arg)
{
    (void)req;
    stream *s = arg;
    s->req = NULL;
    if (reconnect_ms > 0)
        event_base_once(base, -1, EV_TIMEOUT, drop_and_reopen, s, NULL);
}

static void open_stream(stream *s)
{
    s->conn = evhttp_connection_base_new(base, NULL, "127.0.0.1", (unsigned short)ports[s->port_idx % nports]);
    if (source_addr)
        evhttp_connection_set_local_address(s->conn, source_addr);
    s->req = evhttp_request_new(on_done, s);
    evhttp_request_set_chunked_cb(s->req, on_chunk);
    struct evkeyvalq *h = evhttp_request_get_output_headers(s->req);
    evhttp_add_header(h, "Host", "127.0.0.1");
    evhttp_add_header(h, "Accept", "text/event-stream");
    if (token) {
        char auth[16384];
        snprintf(auth, sizeof auth, "Bearer %s", token);
        evhttp_add_header(h, "Authorization", auth);
    }
    if (cookie)
        evhttp_add_header(h, "Cookie", cookie);
    char path[512];
    if (s->reconnects++ == 0) {
        snprintf(path, sizeof path, "/runs/%s/events?last_event_id=%lld", s->run, s->from);
    } else {
        char id[32];
        snprintf(id, sizeof id, "%lld", s->last);
        evhttp_add_header(h, "Last-Event-ID", id);
        snprintf(path, sizeof path, "/runs/%s/events?last_event_id=%lld", s->run, s->from);
        s->linelen = 0;
        s->has_data = false;
        s->datalen = 0;
        s->cur_id = -1;
        s->event[0] = '\0';
    }
    evhttp_make_request(s->conn, s->req, EVHTTP_REQ_GET, path);
}

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    long long now = obx_now_us();
    if (stop || now - start_us > (long long)(max_seconds * 1e6) ||
        (last_event_us && now - last_event_us > idle_ms * 1000))
        event_base_loopbreak(base);
}

int main(int argc, char **argv)
{
    const char *prefix = "sse";
    int runs = 1, per_run = 1;
    long long from = 0;
    bool check = false;
    signal(SIGTERM, on_signal);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--check")) { check = true; continue; }
        i++;
        if (!strcmp(k, "--port")) ports[0] = atoi(v);
        else if (!strcmp(k, "--ports")) {
            nports = 0;
            for (char *p = argv[i]; *p && nports < 16; p += strcspn(p, ",") + (p[strcspn(p, ",")] != 0))
                ports[nports++] = atoi(p);
        }
        else if (!strcmp(k, "--reconnect-ms")) reconnect_ms = atol(v);
        else if (!strcmp(k, "--source")) source_addr = v;
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--runs")) runs = atoi(v);
        else if (!strcmp(k, "--per-run")) per_run = atoi(v);
        else if (!strcmp(k, "--from")) from = atoll(v);
        else if (!strcmp(k, "--idle-ms")) idle_ms = atol(v);
        else if (!strcmp(k, "--max-seconds")) max_seconds = atof(v);
        else if (!strcmp(k, "--cut-after")) cut_after = atol(v);
        else if (!strcmp(k, "--cut-ms")) cut_ms = atol(v);
        else if (!strcmp(k, "--ready-file")) ready_file = v;
        else if (!strcmp(k, "--token")) token = v;
        else if (!strcmp(k, "--renew-token")) renew_token = v;
        else if (!strcmp(k, "--cookie")) cookie = v;
        else { fprintf(stderr, "obx_sse: unknown option %s\n", k); return 2; }
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    base = event_base_new();
    nstreams = runs * per_run;
    streams = calloc((size_t)nstreams, sizeof *streams);
    hist_reset(&lat);
    start_us = obx_now_us();
    for (int i = 0; i < nstreams; i++) {
        stream *s = &streams[i];
        s->idx = i;
        snprintf(s->run, sizeof s->run, "%s-%d", prefix, i / per_run);
        s->from = s->last = from;
        s->cur_id = -1;
        s->port_idx = i;
        open_stream(s);
    }
    struct event *t = event_new(base, -1, EV_PERSIST, tick, NULL);
    struct timeval tv = {0, 100000};
    event_add(t, &tv);
    event_base_dispatch(base);

    long lost = 0, dups = 0, disorder = 0, unexpected = 0, received = 0, noid = 0, short_streams = 0;
    long expiring = 0, expired = 0, revoked = 0, expired_streams = 0;
    for (int i = 0; i < nstreams; i++) {
        expiring += streams[i].expiring;
        expired += streams[i].expired;
        revoked += streams[i].revoked;
        expired_streams += streams[i].expired > 0;
    }
    PGconn *pg = check ? PQconnectdb(getenv("DATABASE_URL") ? getenv("DATABASE_URL") : "") : NULL;
    for (int i = 0; i < nstreams; i++) {
        stream *s = &streams[i];
        received += (long)s->n;
        noid += s->no_id;
        for (size_t j = 1; j < s->n; j++) {
            if (s->seqs[j] == s->seqs[j - 1])
                dups++;
            else if (s->seqs[j] < s->seqs[j - 1])
                disorder++;
        }
        if (!check)
            continue;
        const char *params[] = {s->run};
        char fromstr[32];
        snprintf(fromstr, sizeof fromstr, "%lld", s->from);
        const char *params2[] = {s->run, fromstr};
        (void)params;
        PGresult *r = PQexecParams(pg, "SELECT coalesce(max(seq), 0), count(*) FILTER (WHERE seq > $2::bigint)"
                                       " FROM run_outbox WHERE run_id = $1",
                                   2, NULL, params2, NULL, NULL, 0);
        long long max = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        long long want = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        PQclear(r);
        long long uniq = 0, prev = -1;
        for (size_t j = 0; j < s->n; j++) {
            if (s->seqs[j] <= s->from || s->seqs[j] > max)
                unexpected++;
            else if (s->seqs[j] != prev)
                uniq++;
            prev = s->seqs[j];
        }
        if (uniq < want) {
            if (short_streams++ < 3)
                fprintf(stderr, "obx_sse: stream %d (%s) got %lld of %lld events (last %lld)\n", i, s->run, uniq,
                        want, s->last);
            lost += want - uniq;
        }
    }
    if (pg)
        PQfinish(pg);
    printf("streams=%d opened=%d bad_status=%ld received=%ld lost=%ld duplicates=%ld out_of_order=%ld "
           "unexpected=%ld without_id=%ld reopened=%ld auth_expiring=%ld auth_expired=%ld expired_streams=%ld "
           "auth_revoked=%ld latency_ms p50=%.2f p99=%.2f p999=%.2f max=%.2f\n",
           nstreams, opened, bad_status, received, lost, dups, disorder, unexpected, noid, reopened, expiring, expired,
           expired_streams, revoked,
           hist_quantile(&lat, 0.5) / 1e3, hist_quantile(&lat, 0.99) / 1e3, hist_quantile(&lat, 0.999) / 1e3,
           lat.max_us / 1e3);
    for (int i = 0; i < nstreams; i++) {
        if (streams[i].conn)
            evhttp_connection_free(streams[i].conn);
        free(streams[i].seqs);
    }
    free(streams);
    event_free(t);
    event_base_free(base);
    bool fail = check && (lost || dups || disorder || unexpected || noid || bad_status || opened < nstreams);
    return fail ? 1 : 0;
}
