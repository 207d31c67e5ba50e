/* Who may read a run: the gateway's authorization policy, as the HTTP side sees it.
 * auth_check decides for a new stream (at once for tokens, later for forward-auth);
 * the grant it fills travels with the stream, and auth_grant_check says, each time
 * the gateway looks, whether the stream may go on (its token's exp, revocations,
 * forward-auth answers that changed). Modes: none, jwt (jwt.c, keys from jwks.c,
 * a file reloaded on SIGHUP and/or a URL), forward (auth_forward.c). */
#ifndef OUTBOXD_AUTH_H
#define OUTBOXD_AUTH_H

#include "buf.h"
#include "config.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

#define AUTH_HASH_LEN 32

struct fwd_entry;

/* Per-stream authorization state. Zeroed = no token (a public run, or mode none). */
typedef struct auth_grant {
    long long exp; /* Unix seconds at which the stream ends with auth-expired; 0 = never */
    bool warned;   /* auth-expiring was sent */
    bool has_jti, has_sub;
    unsigned char jti[AUTH_HASH_LEN], sub[AUTH_HASH_LEN]; /* SHA-256 of the claims, for revocation */
    struct fwd_entry *fwd; /* forward mode: the cached answer the stream depends on (a reference) */
} auth_grant;

/* What of a request authorization looks at (header values may be NULL). */
typedef struct auth_request {
    const char *run;
    size_t run_len;
    const char *authorization; /* Authorization header */
    const char *cookie;        /* Cookie header */
    const char *query;         /* the raw query string */
    const char *uri;           /* the request URI, for forward-auth (its access_token is removed) */
} auth_request;

typedef enum auth_result {
    AUTH_ALLOW,           /* the grant is filled */
    AUTH_UNAUTHENTICATED, /* 401: no token, or one that is not good */
    AUTH_FORBIDDEN,       /* 403: a good token that does not cover the run */
    AUTH_UNAVAILABLE,     /* the application cannot answer now: come back later */
    AUTH_PENDING,         /* forward-auth asked: the callback will say */
} auth_result;

/* Later answer of a check that returned AUTH_PENDING; g is valid during the call and
 * is the caller's to keep (copy it) when r is AUTH_ALLOW. */
typedef void (*auth_done_fn)(void *arg, auth_result r, const auth_grant *g);

/* Checks what can be checked before serving (the --auth-jwks file loads, the URLs
 * parse), with the reason in err: for the gateway to refuse to start. */
bool auth_check_config(const config *cfg, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Puts the counters and the forward-auth answers in memory shared with the processes
 * forked after this (the gateway's workers). */
bool auth_share_init(void) __attribute__((warn_unused_result));

/* Loads keys (a bad --auth-jwks file fails here, with the reason in err), starts the
 * JWKS URL refresh and forward-auth. */
bool auth_start(struct event_base *base, const config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Answers every check still waiting for forward-auth with AUTH_UNAVAILABLE (shutdown). */
void auth_cancel_pending(void);
/* Frees everything (after auth_cancel_pending and after every grant is released). */
void auth_stop(void);
/* SIGHUP: reads the JWKS file into a new keyring and swaps it in; a bad file keeps the
 * old keyring (and says why). Also refreshes the JWKS URL. */
void auth_reload(void);

/* fn is called when open streams may have to end at once (a forward-auth answer
 * turned into a denial); the caller then checks them with auth_grant_check. */
void auth_set_change_hook(void (*fn)(void));

/* Decides whether the request may read its run. On AUTH_ALLOW fills *g (release it
 * with auth_grant_release). On AUTH_PENDING (forward-auth asking; a token whose kid
 * is unknown while the JWKS URL is fetched again) cb(arg, ...) is called once, later,
 * and r's strings must stay valid until then. */
auth_result auth_check(const auth_request *r, auth_grant *g, auth_done_fn cb, void *arg);
/* Whether a 401 should say why in its body (never the token itself). */
const char *auth_last_reason(void);

typedef enum auth_verdict {
    AUTH_KEEP,
    AUTH_WARN,            /* send auth-expiring now (once) */
    AUTH_END_EXPIRED,     /* send auth-expired and end */
    AUTH_END_REVOKED,     /* send auth-revoked and end */
    AUTH_END_UNAVAILABLE, /* forward-auth could not confirm: end, retry later */
} auth_verdict;
/* What an open stream with grant g should do at time now (Unix seconds). */
auth_verdict auth_grant_check(auth_grant *g, long long now);
void auth_grant_release(auth_grant *g);
/* Seconds before exp at which auth-expiring goes out. */
long long auth_warning_s(void);

/* Revocations as read from PostgreSQL: a jti or a sub refused until `until`. */
typedef struct auth_revocation {
    bool is_sub;
    const char *value;
    size_t len;
    long long until;
} auth_revocation;
/* Replaces the revocation list (the whole list: it is read again on every change). */
void auth_set_revocations(const auth_revocation *r, int n);

/* The wall clock in Unix seconds; tests may replace it. */
extern long long (*auth_clock)(void);
/* Whether the run is public (--public-runs). */
bool auth_run_is_public(const char *run, size_t n);
/* Appends the authorization metrics (Prometheus text). */
bool auth_metrics(buf *m) __attribute__((warn_unused_result));
/* The token of a request (Bearer, then cookie, then query when allowed), or NULL;
 * *len gets its length. Exposed for unit tests. */
const char *auth_find_token(const auth_request *r, size_t *len);

#endif
