/* Where the Redis primary is and how to reach it: the URL's address, or the one the
 * sentinels name; TLS or not; the user, password and db. One endpoint per process,
 * shared by the relay's sink and its readiness probe (from another thread), built
 * once from the settings so that certificate files are read once.
 *
 * Sentinel discovery asks each sentinel in turn (a short timeout each, starting with
 * the last one that answered) for the primary's address, then the data connection's
 * set-up checks with ROLE that it is one. The same helpers parse the sentinels'
 * answers and +switch-master announcements for the gateway's libevent side. */
#ifndef OUTBOXD_REDIS_ENDPOINT_H
#define OUTBOXD_REDIS_ENDPOINT_H

#include "config.h"
#include "redis_conn.h"
#include "redis_tls.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/* A sentinel gets this long (at most --redis-timeout) to connect and answer. */
#define SENTINEL_TIMEOUT_MS 500L
/* The sentinels' channel that announces a new primary. */
#define SENTINEL_SWITCH_CHANNEL "+switch-master"

typedef struct redis_endpoint {
    redis_url url;
    redis_tls *tls;  /* NULL: plaintext */
    const redis_addr *sentinels;
    int nsentinels;  /* 0: the URL's host and port are the primary */
    const char *master;
    bool cluster;    /* --redis-cluster: the primaries come from the slot map (redis_cluster.h) */
    long timeout_ms;
    atomic_int first_sentinel; /* the one to ask first: the last that answered */
} redis_endpoint;

/* From cfg (which must outlive the endpoint): loads the TLS files when the URL is
 * rediss://. NULL with the reason in err. Free with redis_endpoint_free. */
redis_endpoint *redis_endpoint_new(const config *cfg, char *err, size_t errlen);
void redis_endpoint_free(redis_endpoint *e);
/* The sentinel connections' time limit. */
long redis_endpoint_sentinel_timeout(const redis_endpoint *e);
/* "TLS" or "plaintext" plus ", via sentinel" or ", cluster", for log lines. */
const char *redis_endpoint_describe(const redis_endpoint *e);

/* Asks the sentinels for the primary's address (blocking, each within the sentinel
 * timeout). False with every sentinel's answer summarized in err. */
bool redis_sentinel_discover(redis_endpoint *e, redis_addr *primary, char *err, size_t errlen) WUR;
/* Connects to the primary (found through the sentinels when configured) and runs the
 * set-up: AUTH, SELECT, ROLE = master. addr (may be NULL) gets where it connected.
 * NULL with the reason in err. */
rconn *redis_endpoint_connect(redis_endpoint *e, redis_addr *addr, char *err, size_t errlen);

/* Whether the primary takes a connection now (discovery, TLS, AUTH, SELECT, ROLE);
 * addr gets where it is. False with the reason in err. For `outboxd status`. */
bool redis_endpoint_probe(redis_endpoint *e, redis_addr *addr, char *err, size_t errlen) WUR;

/* The reply to SENTINEL get-master-addr-by-name -> addr. False with a reason (e.g.
 * the sentinel does not know the name). */
bool redis_sentinel_parse_addr(const redisReply *r, const char *master, redis_addr *addr, char *err,
                               size_t errlen) WUR;
/* A +switch-master message "<name> <old-ip> <old-port> <new-ip> <new-port>": true
 * (with the new address) when it is about master. */
bool redis_sentinel_parse_switch(const char *msg, size_t len, const char *master, redis_addr *to) WUR;

/* The relay's watch on the sentinels: a subscription to +switch-master on one of
 * them, read without waiting. Connects lazily (within the sentinel timeout, at most
 * once a second while the sentinels are unreachable). */
typedef struct sentinel_watch {
    redis_endpoint *e;
    rconn *c;
    double retry_at;
} sentinel_watch;

void sentinel_watch_init(sentinel_watch *w, redis_endpoint *e);
void sentinel_watch_close(sentinel_watch *w);
/* True when a sentinel announced a new primary for our master since the last call,
 * or, on (re)subscribing, names a primary other than current (to is then the new
 * address). Never waits longer than the sentinel timeout. */
bool sentinel_watch_switched(sentinel_watch *w, const redis_addr *current, redis_addr *to);

#endif
