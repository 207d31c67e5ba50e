/* The gateway's plain answers: the CORS headers every answer carries, text replies,
 * and the 200 stream that tells a browser to come back later. */
#ifndef OUTBOXD_SSE_REPLY_H
#define OUTBOXD_SSE_REPLY_H

#include "config.h"

#include <event2/http.h>

/* What a browser is told to wait before it comes back, in ms. */
#define SSE_RETRY_LATER_MS 5000

/* Remembers cfg (--cors-origin). */
void sse_reply_init(const config *cfg);
/* Adds the CORS headers the request's Origin gets (see docs/SECURITY.md). */
void sse_reply_cors(struct evhttp_request *req);
/* Sends a whole reply: status, content type, body, CORS and Cache-Control: no-cache. */
void sse_reply_text(struct evhttp_request *req, int code, const char *reason, const char *content_type,
                    const char *body);
/* A 200 event stream that carries no event of the run and ends at once with retry:
 * SSE_RETRY_LATER_MS (and `event: NAME` when event is set): how a browser is told to
 * come back later, since any other status would stop an EventSource for good. */
void sse_reply_retry_later(struct evhttp_request *req, const char *event, const char *comment);

#endif
