/* Redis connections on libevent for the gateway: a bufferevent (a plain socket, or
 * libevent_openssl over it once TCP is up) feeding hiredis' reader, the set-up of a
 * data node (AUTH, SELECT, ROLE = master, shared with redis_conn.c), and one callback
 * per reply. It knows nothing of Pub/Sub: the subscriber (sse_redis.c) dispatches the
 * replies. Connect, TLS handshake and set-up are bounded by one timeout; after that
 * the owner watches liveness (e.g. with PING). */
#ifndef OUTBOXD_REDIS_ACONN_H
#define OUTBOXD_REDIS_ACONN_H

#include "config.h"
#include "redis_tls.h"

#include <event2/dns.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct aconn aconn;

typedef struct aconn_handlers {
    /* Connected and set up: commands may be sent. */
    void (*ready)(aconn *c, void *arg);
    /* A reply (or a pushed message) after set-up; freed when the callback returns. */
    void (*reply)(aconn *c, const redisReply *r, void *arg);
    /* The connection failed or was lost, why says how. c is freed after this returns
     * and must not be used again. Not called after aconn_close. */
    void (*closed)(aconn *c, const char *why, void *arg);
} aconn_handlers;

/* Starts connecting to host:port (TLS when tls is not NULL; dns may be NULL for the
 * blocking resolver). When setup_url is not NULL the connection runs the data-node
 * set-up before it is ready. Failures, the timeout included, come through
 * handlers->closed, never from this call; NULL only when out of memory. */
aconn *aconn_open(struct event_base *base, struct evdns_base *dns, const char *host, int port,
                  const redis_tls *tls, const redis_url *setup_url, long timeout_ms,
                  const aconn_handlers *handlers, void *arg);
/* Sends a command (lens may be NULL for NUL-terminated arguments); false when out
 * of memory or not ready. */
bool aconn_send(aconn *c, int argc, const char **argv, const size_t *lens) __attribute__((warn_unused_result));
/* Closes without calling back; safe inside the connection's own callbacks. */
void aconn_close(aconn *c);
/* "host:port" of the connection (owned by it). */
const char *aconn_peer(const aconn *c);

#endif
