/* Authorizing the gateway's streams, between the HTTP side (sse.c) and the policy
 * (auth.c): a new stream is decided before anything of its run is sent (refused with
 * 401/403, told to come back later, or started by the caller's start function), and
 * open streams are checked against their grants every AUTH_SWEEP_MS, at once when a
 * revocation arrives or a forward-auth answer turns: auth-expiring, auth-expired,
 * auth-revoked. */
#ifndef OUTBOXD_SSE_AUTH_H
#define OUTBOXD_SSE_AUTH_H

#include "auth.h"
#include "config.h"
#include "sse_run.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stddef.h>

/* How often open streams are looked at. */
#define AUTH_SWEEP_MS 500

/* Starts a stream the policy allowed (the grant is the stream's to keep or release). */
typedef void (*sse_start_fn)(struct evhttp_request *req, const char *run_id, size_t len, long long last,
                             const auth_grant *g);

/* Starts the checks of open streams and the revocation watch; start opens allowed streams. */
bool sse_auth_start(struct event_base *base, const config *cfg, sse_start_fn start)
    __attribute__((warn_unused_result));
void sse_auth_stop(void);
/* Shutdown: streams still waiting for forward-auth are told to come back later. */
void sse_auth_cancel(void);
/* Decides whether req may read run_id[0..len) after seq last, now or later. */
void sse_auth_open(struct evhttp_request *req, const char *run_id, size_t len, long long last);
/* A stream just started: what its grant says at once (auth-expiring for a token
 * that ends within the warning). */
void sse_auth_opened(client *c);

#endif
