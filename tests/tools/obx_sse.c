/* Checking SSE client for tests and benchmarks: opens --per-run streams on each of
 * --runs runs (PREFIX-0 ..), parses the event streams, optionally cuts one stream
 * after --cut-after events and resumes it --cut-ms later with Last-Event-ID, and
 * with --check compares each stream with run_outbox: every event after its starting
 * point exactly once, in seq order. Latency = arrival - payload "t" (insert time).
 *   obx_sse --port P [--ports P1,P2..] [--source ADDR] [--prefix P] [--runs N]
 *           [--per-run K] [--from SEQ] [--idle-ms MS] [--max-seconds S]
 *           [--reconnect-ms MS] [--cut-after N] [--cut-ms MS] [--ready-file F] [--max-opening N]
 *           [--http10] [--token T] [--renew-token T] [--cookie C] [--check]
 * With --token each request carries Authorization: Bearer T; a stream that receives
 * event: auth-expired reconnects at once with --renew-token (and Last-Event-ID), as a
 * browser that fetched a fresh token would. In-band auth-* events are counted, not
 * checked as run events. --cookie sends a Cookie header (forward-auth).
 * SIGTERM ends the wait early (then checks). SIGUSR1 says that every event it waits for
 * has been published (the test saw the outbox drained): it then ends once every stream
 * is open and none has had an event for FINISH_QUIET_MS, instead of waiting out
 * --idle-ms (while a stream stays cut or ended, the --idle-ms wait holds). Prints one
 * summary line; exits 1 if the check fails. Loopback only.
 *
 * It speaks HTTP on plain sockets (one read into a shared buffer per wake-up, chunks
 * and lines found with memchr, nothing copied but a line cut by a read) so that a
 * benchmark measures the gateway rather than its client: thousands of streams share
 * the machine's cores with the gateway. --http10 asks as HTTP/1.0 (no chunks; the
 * stream ends when the connection closes). */
#include "obx_common.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

enum phase { P_CONNECTING, P_HEAD, P_BODY };
enum chunk_state { C_SIZE, C_DATA, C_DATA_END };

typedef struct stream {
    int idx;
    char run[128];
    long long from;                 /* last_event_id of the first request */
    long long last;                 /* last id seen */
    long long *seqs;
    size_t n, cap;
    long long no_id;                /* events without an id: line */
    int fd;
    struct event *ev;
    enum phase phase;
    bool chunked;
    enum chunk_state cs;
    size_t chunk_left;
    char csize[24];                 /* a chunk-size line cut by a read */
    size_t csizelen;
    char *pend;                     /* a line of the head or of the events cut by a read */
    size_t pendlen, pendcap;
    long long cur_id, cur_t;
    bool has_data;
    char event[64];                 /* the event: field of the event being read */
    bool opened, cut_done;
    bool first_open;                /* counted in `opening` until its head or its end */
    int reconnects;
    int expiring, expired, revoked; /* in-band auth events seen */
    int port_idx;
} stream;

static struct event_base *base;
static stream *streams;
static int nstreams, opened, ports[16] = {8080}, nports = 1;
static long reconnect_ms, reopened;
static struct sockaddr_in source_sa;
static bool has_source, http10;
static long long last_event_us, start_us;
static long idle_ms = 3000, cut_after = 0, cut_ms = 500;
static double max_seconds = 60;
static const char *ready_file;
static histogram lat;
static long bad_status, nreads;
/* Lines that are no SSE field, comment or blank; broken chunk framing; a chunked
 * answer to an HTTP/1.0 request. Any of them fails --check. */
static long bad_lines, bad_framing;
/* With --max-opening N, at most N streams wait for their first answer at a time: a
 * burst of tens of thousands of connects overflows the gateway's listen queues, and
 * the dropped SYNs come back seconds later. 0: all at once. */
static int max_opening, next_open, opening;
static char rbuf[1 << 18];
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
        if (renew_token) {
            token = renew_token;
            event_base_once(base, -1, EV_TIMEOUT, cut_now, s, NULL);
        }
    }
}

static void open_more(void)
{
    while (next_open < nstreams && (max_opening <= 0 || opening < max_opening)) {
        stream *s = &streams[next_open++];
        s->first_open = true;
        opening++;
        open_stream(s);
    }
}

/* The stream's first connection got its answer, or ended without one. */
static void first_open_done(stream *s)
{
    if (!s->first_open)
        return;
    s->first_open = false;
    opening--;
    open_more();
}

static void on_event(stream *s)
{
    if (s->event[0]) {
        on_auth_event(s);
        s->event[0] = '\0';
        s->has_data = false;
        s->cur_id = -1;
        s->cur_t = -1;
        return;
    }
    if (!s->has_data)
        return;
    if (s->cur_id < 0) {
        s->no_id++;
    } else {
        if (s->n == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 256;
            s->seqs = realloc(s->seqs, s->cap * sizeof *s->seqs);
        }
        s->seqs[s->n++] = s->cur_id;
        s->last = s->cur_id;
    }
    long long now = obx_now_us();
    if (s->cur_t > 0)
        hist_record(&lat, (double)(now - s->cur_t));
    last_event_us = now;
    s->has_data = false;
    s->cur_id = -1;
    s->cur_t = -1;
}

static void on_line(stream *s, const char *l, size_t n)
{
    if (n && l[n - 1] == '\r')
        n--;
    if (n == 0) {
        on_event(s);
        return;
    }
    if (n >= 6 && !memcmp(l, "event:", 6)) {
        size_t skip = n > 6 && l[6] == ' ' ? 7 : 6, len = n - skip < sizeof s->event - 1 ? n - skip : sizeof s->event - 1;
        memcpy(s->event, l + skip, len);
        s->event[len] = '\0';
    } else if (n > 4 && !memcmp(l, "id: ", 4)) {
        s->cur_id = strtoll(l + 4, NULL, 10);
    } else if (n >= 5 && !memcmp(l, "data:", 5)) {
        /* The first "t": of the event's data is the insert time. */
        if (s->cur_t < 0) {
            const char *t = memmem(l, n, "\"t\":", 4);
            if (t)
                s->cur_t = strtoll(t + 4, NULL, 10);
        }
        s->has_data = true;
    } else if (l[0] != ':' && !(n >= 6 && !memcmp(l, "retry:", 6))) {
        bad_lines++;
    }
}

static void pend_add(stream *s, const char *p, size_t n)
{
    if (s->pendlen + n > s->pendcap) {
        s->pendcap = (s->pendlen + n) * 2;
        s->pend = realloc(s->pend, s->pendcap);
    }
    memcpy(s->pend + s->pendlen, p, n);
    s->pendlen += n;
}

/* Event-stream bytes: complete lines are handled where they lie; a cut one waits. */
static void on_body(stream *s, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        if (!nl) {
            pend_add(s, p, n);
            return;
        }
        size_t len = (size_t)(nl - p);
        if (s->pendlen) {
            pend_add(s, p, len);
            on_line(s, s->pend, s->pendlen);
            s->pendlen = 0;
        } else {
            on_line(s, p, len);
        }
        p = nl + 1;
        n -= len + 1;
    }
}

static void mark_opened(stream *s, int status)
{
    if (s->opened)
        return;
    s->opened = true;
    if (status != 200)
        bad_status++;
    if (++opened == nstreams && ready_file) {
        FILE *f = fopen(ready_file, "w");
        if (f)
            fclose(f);
    }
}

/* The response head: status line and headers up to the blank line. Returns the
 * bytes of p it used, or n when the head is still incomplete. */
static size_t on_head(stream *s, const char *p, size_t n)
{
    pend_add(s, p, n);
    const char *end = memmem(s->pend, s->pendlen, "\r\n\r\n", 4);
    if (!end)
        return n;
    size_t head = (size_t)(end - s->pend) + 4;
    int status = 0;
    if (s->pendlen > 12 && !memcmp(s->pend, "HTTP/1.", 7))
        status = atoi(s->pend + 9);
    mark_opened(s, status);
    first_open_done(s);
    s->chunked = memmem(s->pend, head, "Transfer-Encoding: chunked", 26) != NULL;
    if (s->chunked && http10)
        bad_framing++;
    s->phase = P_BODY;
    s->cs = C_SIZE;
    size_t used = n - (s->pendlen - head);
    s->pendlen = 0;
    return used;
}

/* A chunked body: the chunks' data go to on_body. Returns false at the last chunk. */
static bool on_chunked(stream *s, const char *p, size_t n)
{
    while (n > 0) {
        if (s->cs == C_DATA) {
            size_t k = n < s->chunk_left ? n : s->chunk_left;
            on_body(s, p, k);
            p += k;
            n -= k;
            if ((s->chunk_left -= k) == 0)
                s->cs = C_DATA_END;
            continue;
        }
        /* A size line, or the CRLF that ends a chunk's data. */
        const char *nl = memchr(p, '\n', n);
        size_t len = nl ? (size_t)(nl - p) : n;
        size_t keep = len < sizeof s->csize - 1 - s->csizelen ? len : sizeof s->csize - 1 - s->csizelen;
        memcpy(s->csize + s->csizelen, p, keep);
        s->csizelen += keep;
        if (!nl)
            return true;
        p = nl + 1;
        n -= len + 1;
        s->csize[s->csizelen] = '\0';
        size_t len_line = s->csizelen;
        s->csizelen = 0;
        if (len_line && s->csize[len_line - 1] == '\r')
            s->csize[--len_line] = '\0';
        if (s->cs == C_DATA_END) {
            if (len_line != 0)
                bad_framing++; /* a chunk's data must end with CRLF */
            s->cs = C_SIZE;
        } else {
            char *end;
            s->chunk_left = strtoul(s->csize, &end, 16);
            if (end == s->csize || (*end && *end != ';'))
                bad_framing++;
            if (s->chunk_left == 0)
                return false;
            s->cs = C_DATA;
        }
    }
    return true;
}

static void reopen(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    stream *s = arg;
    if (s->fd < 0) /* a cut and a server's end may both ask */
        open_stream(s);
}

static void close_stream(stream *s)
{
    if (s->ev) {
        event_free(s->ev);
        s->ev = NULL;
    }
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    s->pendlen = 0;
    s->csizelen = 0;
    s->has_data = false;
    s->cur_id = -1;
    s->cur_t = -1;
    s->event[0] = '\0';
}

static void cut_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    stream *s = arg;
    close_stream(s);
    struct timeval tv = {cut_ms / 1000, (cut_ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, reopen, s, &tv);
}

/* The server ended the stream (or could not be reached): like EventSource, come back
 * after reconnect_ms with Last-Event-ID, here at the next gateway. */
static void stream_ended(stream *s)
{
    close_stream(s);
    first_open_done(s);
    if (reconnect_ms <= 0)
        return;
    s->port_idx++;
    reopened++;
    struct timeval tv = {reconnect_ms / 1000, (reconnect_ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, reopen, s, &tv);
}

static void send_request(stream *s)
{
    static char req[40000];
    char last[64] = "";
    if (s->reconnects++ > 0)
        snprintf(last, sizeof last, "Last-Event-ID: %lld\r\n", s->last);
    int n = snprintf(req, sizeof req,
                     "GET /runs/%s/events?last_event_id=%lld HTTP/1.%d\r\nHost: 127.0.0.1\r\n"
                     "Accept: text/event-stream\r\n%s%s%s%s%s%s%s\r\n",
                     s->run, s->from, http10 ? 0 : 1, last, token ? "Authorization: Bearer " : "",
                     token ? token : "", token ? "\r\n" : "", cookie ? "Cookie: " : "", cookie ? cookie : "",
                     cookie ? "\r\n" : "");
    /* A fresh socket's buffer takes the request at once (it is far below its size). */
    if (n < 0 || n >= (int)sizeof req || write(s->fd, req, (size_t)n) != n) {
        stream_ended(s);
        return;
    }
    s->phase = P_HEAD;
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    stream *s = arg;
    if (s->phase == P_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            stream_ended(s);
            return;
        }
        event_del(s->ev);
        event_assign(s->ev, base, fd, EV_READ | EV_PERSIST, on_io, s);
        event_add(s->ev, NULL);
        send_request(s);
        return;
    }
    ssize_t got = read(fd, rbuf, sizeof rbuf);
    if (got < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (got <= 0) {
        stream_ended(s);
        return;
    }
    nreads++;
    const char *p = rbuf;
    size_t n = (size_t)got;
    if (s->phase == P_HEAD) {
        size_t used = on_head(s, p, n);
        p += used;
        n -= used;
    }
    if (s->phase == P_BODY && n > 0) {
        if (!s->chunked)
            on_body(s, p, n);
        else if (!on_chunked(s, p, n)) {
            stream_ended(s);
            return;
        }
    }
    if (cut_after && s->idx == 0 && !s->cut_done && (long)s->n >= cut_after) {
        s->cut_done = true;
        event_base_once(base, -1, EV_TIMEOUT, cut_now, s, NULL);
    }
}

static void open_stream(stream *s)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)ports[s->port_idx % nports])};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        perror("obx_sse: socket");
        exit(2);
    }
    /* With a source address, the port is picked at connect() (IP_BIND_ADDRESS_NO_PORT):
     * bind() alone would search the whole port range for one free for every
     * destination, which gets slow, and fails, at tens of thousands of streams. */
    int one = 1;
    if (has_source)
        (void)setsockopt(s->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (has_source && bind(s->fd, (struct sockaddr *)&source_sa, sizeof source_sa) != 0) {
        perror("obx_sse: bind");
        exit(2);
    }
    s->phase = P_CONNECTING;
    s->pendlen = 0;
    s->csizelen = 0;
    s->has_data = false;
    s->cur_id = -1;
    s->cur_t = -1;
    if (connect(s->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        stream_ended(s);
        return;
    }
    s->ev = event_new(base, s->fd, EV_WRITE, on_io, s);
    event_add(s->ev, NULL);
}

#define FINISH_QUIET_MS 1000

static volatile sig_atomic_t stop, finish;
static void on_signal(int sig) { (void)sig; stop = 1; }
static void on_finish(int sig) { (void)sig; finish = 1; }

/* Every stream is open and reading events: none is cut, reconnecting or ended. */
static bool all_streaming(void)
{
    for (int i = 0; i < nstreams; i++)
        if (streams[i].fd < 0 || streams[i].phase != P_BODY)
            return false;
    return true;
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    static long long finish_at;
    long long now = obx_now_us();
    if (finish && !finish_at)
        finish_at = now;
    long long quiet_since = last_event_us > finish_at ? last_event_us : finish_at;
    if (stop || now - start_us > (long long)(max_seconds * 1e6) ||
        (last_event_us && now - last_event_us > idle_ms * 1000) ||
        (finish_at && now - quiet_since > FINISH_QUIET_MS * 1000 && all_streaming()))
        event_base_loopbreak(base);
}

int main(int argc, char **argv)
{
    const char *prefix = "sse";
    int runs = 1, per_run = 1;
    long long from = 0;
    bool check = false;
    signal(SIGTERM, on_signal);
    signal(SIGUSR1, on_finish);
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--check")) { check = true; continue; }
        if (!strcmp(k, "--http10")) { http10 = true; continue; }
        i++;
        if (!strcmp(k, "--port")) ports[0] = atoi(v);
        else if (!strcmp(k, "--ports")) {
            nports = 0;
            for (char *p = argv[i]; *p && nports < 16; p += strcspn(p, ",") + (p[strcspn(p, ",")] != 0))
                ports[nports++] = atoi(p);
        }
        else if (!strcmp(k, "--reconnect-ms")) reconnect_ms = atol(v);
        else if (!strcmp(k, "--source")) {
            source_sa.sin_family = AF_INET;
            if (inet_pton(AF_INET, v, &source_sa.sin_addr) != 1) {
                fprintf(stderr, "obx_sse: --source %s is not an IPv4 address\n", v);
                return 2;
            }
            has_source = true;
        }
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
        else if (!strcmp(k, "--max-opening")) max_opening = atoi(v);
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
        s->port_idx = i;
        s->fd = -1;
    }
    open_more();
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
        char fromstr[32];
        snprintf(fromstr, sizeof fromstr, "%lld", s->from);
        const char *params[] = {s->run, fromstr};
        PGresult *r = PQexecParams(pg, "SELECT coalesce(max(seq), 0), count(*) FILTER (WHERE seq > $2::bigint)"
                                       " FROM run_outbox WHERE run_id = $1",
                                   2, NULL, params, NULL, NULL, 0);
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
           "unexpected=%ld without_id=%ld bad_lines=%ld bad_framing=%ld reopened=%ld reads=%ld auth_expiring=%ld auth_expired=%ld expired_streams=%ld "
           "auth_revoked=%ld latency_ms p50=%.2f p99=%.2f p999=%.2f max=%.2f\n",
           nstreams, opened, bad_status, received, lost, dups, disorder, unexpected, noid, bad_lines, bad_framing, reopened,
           nreads, expiring,
           expired, expired_streams, revoked,
           hist_quantile(&lat, 0.5) / 1e3, hist_quantile(&lat, 0.99) / 1e3, hist_quantile(&lat, 0.999) / 1e3,
           lat.max_us / 1e3);
    for (int i = 0; i < nstreams; i++) {
        close_stream(&streams[i]);
        free(streams[i].seqs);
        free(streams[i].pend);
    }
    free(streams);
    event_free(t);
    event_base_free(base);
    bool fail = check && (lost || dups || disorder || unexpected || noid || bad_lines || bad_framing || bad_status ||
                          opened < nstreams);
    return fail ? 1 : 0;
}
