/* A small asynchronous HTTP(S) GET for the gateway's own calls out: forward-auth
 * checks and JWKS downloads. Every call has a deadline and a bound on the body; https
 * verifies the server's certificate and name against the system's trust store
 * (OpenSSL's default paths, so SSL_CERT_FILE can name another bundle). */
#ifndef OUTBOXD_HTTP_CLIENT_H
#define OUTBOXD_HTTP_CLIENT_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct http_response {
    int status;         /* 0: no answer (refused, timed out, TLS failure, body too large) */
    const char *error;  /* why status is 0 */
    const char *body;   /* valid during the callback */
    size_t len;
    long max_age;       /* Cache-Control max-age in seconds, -1 when absent */
    bool no_store;      /* Cache-Control no-store or no-cache */
} http_response;

typedef void (*http_done_fn)(const http_response *r, void *arg);

/* Starts GET url with extra headers (name, value pairs; NULL name ends them). cb runs
 * once, later, from the loop (never from inside http_get). False with the reason in
 * err when the call cannot start (a bad URL). */
bool http_get(struct event_base *base, const char *url, const char *const *headers, long timeout_ms,
              size_t max_body, http_done_fn cb, void *arg, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Whether url is an http:// or https:// URL this client can call. */
bool http_url_ok(const char *url);
/* Drops every call in flight without calling back, and frees what the client holds. */
void http_client_stop(void);

#endif
