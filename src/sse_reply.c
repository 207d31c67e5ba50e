/* The gateway's plain answers: CORS, text replies, the retry-later stream. */
#include "sse_reply.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <string.h>

static const config *rcfg;

void sse_reply_init(const config *cfg)
{
    rcfg = cfg;
}

/* Whether origin is one of --cors-origin's exact origins. */
static bool origin_listed(const char *origin)
{
    size_t n = strlen(origin);
    for (const char *p = rcfg->cors_origin; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && !memcmp(p, origin, n))
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* CORS: a listed origin is echoed back with credentials allowed; "*" allows any
 * origin without credentials; any other origin gets nothing. With one origin listed
 * and no Origin header (not a browser's cross-site request) that origin is named. */
void sse_reply_cors(struct evhttp_request *req)
{
    const char *allowed = rcfg->cors_origin;
    if (!allowed)
        return;
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *origin = evhttp_find_header(evhttp_request_get_input_headers(req), "Origin");
    bool any = !strcmp(allowed, "*");
    if (!any)
        evhttp_add_header(h, "Vary", "Origin");
    if (any) {
        evhttp_add_header(h, "Access-Control-Allow-Origin", "*");
    } else if (origin && origin_listed(origin)) {
        evhttp_add_header(h, "Access-Control-Allow-Origin", origin);
        evhttp_add_header(h, "Access-Control-Allow-Credentials", "true");
    } else if (!origin && !strchr(allowed, ',')) {
        evhttp_add_header(h, "Access-Control-Allow-Origin", allowed);
    } else {
        return;
    }
    evhttp_add_header(h, "Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control");
    evhttp_add_header(h, "Access-Control-Allow-Methods", "GET, OPTIONS");
    evhttp_add_header(h, "Access-Control-Max-Age", "600");
}

void sse_reply_text(struct evhttp_request *req, int code, const char *reason, const char *content_type,
                    const char *body)
{
    sse_reply_cors(req);
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

/* A 200 stream that carries no event of the run and ends at once, with a reconnect
 * delay: what a browser gets when it should come back later (any other status would
 * stop an EventSource for good). */
void sse_reply_retry_later(struct evhttp_request *req, const char *event, const char *comment)
{
    char body[256];
    snprintf(body, sizeof body, "retry: %d\n%s%s%s: %s\n\n", SSE_RETRY_LATER_MS, event ? "event: " : "",
             event ? event : "", event ? "\ndata: {}\n" : "", comment);
    sse_reply_text(req, 200, "OK", "text/event-stream; charset=utf-8", body);
}

