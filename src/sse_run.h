/* The gateway's runs and their streams (sse_run.c), as the HTTP side (sse.c) sees
 * them. A stream is opened by stream_new, the caller adds its reply's
 * headers, then stream_start starts the reply and sends what the stream is owed; it is
 * freed when its connection closes. */
#ifndef OUTBOXD_SSE_RUN_H
#define OUTBOXD_SSE_RUN_H

#include "auth.h"
#include "config.h"

#include <event2/event.h>
#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>

/* How often runs are read from PostgreSQL while Redis does not deliver. */
#define DEGRADED_POLL_MS 250

typedef struct client client;

typedef struct runs_stats {
    int streams, runs;
    unsigned long long streams_opened, events_sent, stream_writes, live_msgs, replays, gaps, pauses;
    unsigned long long replica_replays, replica_fallbacks;
    bool redis_up, database_up, replica_up;
} runs_stats;

/* Starts the PostgreSQL reader and the Redis subscriber on base. */
bool runs_start(struct event_base *base, const config *cfg) __attribute__((warn_unused_result));
/* Frees everything; call after the HTTP server (and with it every stream) is gone. */
void runs_stop(void);

/* A stream of run id[0..n) after seq `last`, authorized by *grant (which the stream
 * takes over: it releases it when it ends); NULL when out of memory. */
client *stream_new(struct evhttp_request *req, const char *id, size_t n, long long last, const auth_grant *grant);
void stream_start(client *c);

/* Calls fn for every open stream with its grant and the last seq it was sent. fn may
 * call stream_notice and stream_finish on that stream (and only that one). */
void streams_each(void (*fn)(client *c, auth_grant *g, long long last, void *arg), void *arg);
/* The stream's grant (its authorization state), and the last seq it was sent. */
auth_grant *stream_grant(client *c);
long long stream_last(const client *c);
/* Sends an in-band event without an id (event: NAME, data: DATA) on the stream. */
void stream_notice(client *c, const char *name, const char *data);
/* Sends a last event, ends the stream's reply and frees the stream. */
void stream_finish(client *c, const char *name, const char *data);
/* Ends every stream's reply (shutdown); no more events are sent. */
void streams_end_all(void);

/* Timers: read runs from PostgreSQL while Redis does not deliver; heartbeats. */
void runs_poll_tick(void);
void runs_heartbeat_tick(void);
void runs_get_stats(runs_stats *out);

#endif
