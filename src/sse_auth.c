/* Authorizing streams: new ones through auth_check (waiting for forward-auth when it
 * must), open ones swept against their grants. */
#include "sse_auth.h"

#include "sse_replay.h"
#include "sse_reply.h"

#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void allowed(struct evhttp_request *req, const char *run_id, size_t len, long long last,
                    const auth_grant *g);

static struct {
    const config *cfg;
    sse_start_fn start;
    struct event *sweep;
    bool stopping;
} sa;

/* What a stream waiting for forward-auth needs to open once it is allowed. */
typedef struct waiting {
    struct evhttp_request *req;
    long long last;
    size_t len;
    char run_id[];
} waiting;

static void refuse(struct evhttp_request *req, auth_result r)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char body[160];
    switch (r) {
    case AUTH_UNAUTHENTICATED:
        evhttp_add_header(h, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        snprintf(body, sizeof body, "a valid token is needed to read this run (%s)\n",
                 *auth_last_reason() ? auth_last_reason() : "refused");
        sse_reply_text(req, 401, "Unauthorized", "text/plain; charset=utf-8", body);
        break;
    case AUTH_FORBIDDEN:
        evhttp_add_header(h, "WWW-Authenticate", "Bearer error=\"insufficient_scope\"");
        sse_reply_text(req, 403, "Forbidden", "text/plain; charset=utf-8", "this token does not cover this run\n");
        break;
    default:
        sse_reply_retry_later(req, "auth-unavailable", "authorization is unavailable; retry later");
        break;
    }
}

static void on_auth_done(void *arg, auth_result r, const auth_grant *g)
{
    waiting *w = arg;
    if (!evhttp_request_get_connection(w->req)) {
        /* The browser left while we asked: answering frees the request. */
        auth_grant copy = *g;
        auth_grant_release(&copy);
        evhttp_send_reply(w->req, 200, "OK", NULL);
    } else if (r == AUTH_ALLOW && !sa.stopping) {
        allowed(w->req, w->run_id, w->len, w->last, g);
    } else {
        auth_grant copy = *g;
        auth_grant_release(&copy);
        refuse(w->req, r == AUTH_ALLOW ? AUTH_UNAVAILABLE : r);
    }
    free(w);
}

/* What an open stream's grant says now: warn, end, or go on. */
static void check_stream(client *c, auth_grant *g, long long last, void *arg)
{
    long long now = *(const long long *)arg;
    char data[96];
    switch (auth_grant_check(g, now)) {
    case AUTH_KEEP: break;
    case AUTH_WARN:
        snprintf(data, sizeof data, "{\"exp\":%lld,\"last_event_id\":%lld}", g->exp, last);
        stream_notice(c, "auth-expiring", data);
        break;
    case AUTH_END_EXPIRED:
        snprintf(data, sizeof data, "{\"exp\":%lld,\"last_event_id\":%lld}", g->exp, last);
        stream_finish(c, "auth-expired", data);
        break;
    case AUTH_END_REVOKED:
        snprintf(data, sizeof data, "{\"last_event_id\":%lld}", last);
        stream_finish(c, "auth-revoked", data);
        break;
    case AUTH_END_UNAVAILABLE:
        snprintf(data, sizeof data, "{\"last_event_id\":%lld}\nretry: %d", last, SSE_RETRY_LATER_MS);
        stream_finish(c, "auth-unavailable", data);
        break;
    }
}

static void check_streams(void)
{
    long long now = auth_clock();
    streams_each(check_stream, &now);
}

static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    check_streams();
}

static void on_revocations(const auth_revocation *rows, int n)
{
    auth_set_revocations(rows, n);
    check_streams();
}

/* Starts an allowed stream, unless its token is already past exp (accepted within the
 * leeway): then it gets auth-expired and nothing of the run. */
static void allowed(struct evhttp_request *req, const char *run_id, size_t len, long long last, const auth_grant *g)
{
    if (g->exp && auth_clock() >= g->exp) {
        char body[160];
        snprintf(body, sizeof body, "event: auth-expired\ndata: {\"exp\":%lld,\"last_event_id\":%lld}\n\n",
                 g->exp, last);
        auth_grant copy = *g;
        auth_grant_release(&copy);
        sse_reply_text(req, 200, "OK", "text/event-stream; charset=utf-8", body);
        return;
    }
    sa.start(req, run_id, len, last, g);
}

void sse_auth_open(struct evhttp_request *req, const char *run_id, size_t len, long long last)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    waiting *w = malloc(sizeof *w + len + 1);
    if (!w) {
        sse_reply_text(req, 503, "Service Unavailable", "text/plain; charset=utf-8", "out of memory\n");
        return;
    }
    w->req = req;
    w->last = last;
    w->len = len;
    memcpy(w->run_id, run_id, len + 1);
    /* Everything the request points to lives as long as w and req do: a check that
     * is decided later reads it then. */
    auth_request ar = {.run = w->run_id,
                       .run_len = len,
                       .authorization = evhttp_find_header(in, "Authorization"),
                       .cookie = evhttp_find_header(in, "Cookie"),
                       .query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req)),
                       .uri = evhttp_request_get_uri(req)};
    auth_grant g;
    auth_result r = auth_check(&ar, &g, on_auth_done, w);
    if (r == AUTH_PENDING)
        return; /* on_auth_done takes over w */
    free(w);
    if (r == AUTH_ALLOW)
        allowed(req, run_id, len, last, &g);
    else
        refuse(req, r);
}

void sse_auth_opened(client *c)
{
    if (sa.cfg->auth == AUTH_NONE)
        return;
    long long now = auth_clock();
    auth_grant *g = stream_grant(c);
    check_stream(c, g, stream_last(c), &now);
}

bool sse_auth_start(struct event_base *base, const config *cfg, sse_start_fn start)
{
    memset(&sa, 0, sizeof sa);
    sa.cfg = cfg;
    sa.start = start;
    if (cfg->auth == AUTH_NONE)
        return true;
    sa.sweep = event_new(base, -1, EV_PERSIST, on_sweep, NULL);
    struct timeval tv = {0, AUTH_SWEEP_MS * 1000};
    if (!sa.sweep || event_add(sa.sweep, &tv) != 0)
        return false;
    if (cfg->auth == AUTH_JWT)
        replay_watch_revocations(on_revocations);
    auth_set_change_hook(check_streams);
    return true;
}

void sse_auth_cancel(void)
{
    sa.stopping = true;
    auth_cancel_pending();
}

void sse_auth_stop(void)
{
    if (sa.sweep)
        event_free(sa.sweep);
    memset(&sa, 0, sizeof sa);
}
