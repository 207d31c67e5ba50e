/* The gateway's Redis Pub/Sub subscriber: channels subscribed and unsubscribed on
 * request, every message and confirmation handed to the handlers. It knows channels,
 * not runs. It reconnects by itself with backoff (to the primary the sentinels name,
 * when configured; over TLS for rediss://); after it comes back (handlers.up) the
 * caller subscribes again what it still wants. Sharded messages (smessage) and
 * confirmations (ssubscribe, sunsubscribe) go to the same handlers. */
#ifndef OUTBOXD_SSE_REDIS_H
#define OUTBOXD_SSE_REDIS_H

#include "config.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct sub_handlers {
    void (*message)(const char *channel, size_t chlen, const char *msg, size_t len);
    void (*subscribed)(const char *channel, size_t chlen);
    /* Confirms an unsubscribe: ours, or one the server decided (a slot that moved),
     * after which the caller subscribes again if it still wants the channel. */
    void (*unsubscribed)(const char *channel, size_t chlen);
    /* Connected: nothing is subscribed yet. */
    void (*up)(void);
    /* The connection is lost: every subscription with it. */
    void (*down)(void);
} sub_handlers;

/* Starts connecting on base with cfg's Redis settings; handlers is copied. */
bool sub_start(struct event_base *base, const config *cfg, const sub_handlers *handlers)
    __attribute__((warn_unused_result));
void sub_stop(void);
/* Sends SUBSCRIBE / UNSUBSCRIBE for the channel named literally by channel[0..n).
 * False when it cannot be sent (not connected, out of memory). */
bool sub_subscribe(const char *channel, size_t n) __attribute__((warn_unused_result));
bool sub_unsubscribe(const char *channel, size_t n) __attribute__((warn_unused_result));
/* Connected (subscriptions can be sent and confirmed). */
bool sub_up(void);
/* Connected and delivering: no liveness ping outstanding longer than stale_ms. */
bool sub_healthy(long stale_ms);

#endif
