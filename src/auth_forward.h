/* Forward-auth: the gateway asks the application whether a browser may read a run
 * (GET --auth-url with the browser's Cookie and Authorization, the run id and the
 * original URI). Answers are cached per (credential hash, run) in a bounded cache for
 * the reply's Cache-Control max-age (allow 30 s, deny 5 s by default), and there is
 * one call in flight per key however many browsers (and gateway workers) wait for it. */
#ifndef OUTBOXD_AUTH_FORWARD_H
#define OUTBOXD_AUTH_FORWARD_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fwd_entry fwd_entry;

typedef enum fwd_answer { FWD_ALLOW, FWD_DENY_401, FWD_DENY_403, FWD_UNAVAILABLE, FWD_PENDING } fwd_answer;

typedef struct fwd_request {
    const char *run;
    size_t run_len;
    const char *cookie;        /* header values, or NULL */
    const char *authorization;
    const char *uri;           /* the original request URI, access_token removed */
} fwd_request;

typedef struct fwd_settings {
    const char *url;
    long timeout_ms;
    long cache_size;
    /* Called when an answer that open streams depend on turned into a denial (or
     * could not be had), so that they end now rather than at the next look. */
    void (*changed)(void);
    /* A monotonic clock in milliseconds (tests pass a fixed one). */
    long long (*clock_ms)(void);
} fwd_settings;

typedef struct fwd_stats {
    uint64_t calls, cache_hits, waits, allowed, denied, failed;
    double latency_sum_s;
} fwd_stats;

/* Called once per FWD_PENDING check; on FWD_ALLOW e is a new reference for the caller. */
typedef void (*fwd_done_fn)(void *arg, fwd_answer a, fwd_entry *e);

/* Makes the answers and the calls in flight, and the counters, shared by the
 * processes forked after this (the gateway's workers): one call serves them all. */
bool fwd_share_init(void) __attribute__((warn_unused_result));
bool fwd_start(struct event_base *base, const fwd_settings *s) __attribute__((warn_unused_result));
/* Answers every waiting check with FWD_UNAVAILABLE (shutdown). */
void fwd_cancel_waiters(void);
/* Frees the cache; every reference must have been dropped. */
void fwd_stop(void);

/* The cached answer for r, or FWD_PENDING (cb(arg, ...) follows). On FWD_ALLOW *e is a
 * new reference (drop it with fwd_unref). */
fwd_answer fwd_check(const fwd_request *r, fwd_entry **e, fwd_done_fn cb, void *arg);
void fwd_unref(fwd_entry *e);
/* For an open stream that holds e: FWD_ALLOW while the application still allows it
 * (an answer about to go stale is asked again, one call for all its streams, in time
 * for the new answer to arrive when the old one expires),
 * FWD_DENY_401/403 once it denies, FWD_UNAVAILABLE when it could not answer. */
fwd_answer fwd_verdict(fwd_entry *e);
void fwd_get_stats(fwd_stats *out);
/* Prometheus histogram of call latency (the caller writes it). */
struct prom_hist;
const struct prom_hist *fwd_latency(void);

#endif
