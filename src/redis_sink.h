/* Publishing to Redis. Each event goes through a Lua script that publishes it only if
 * its id is above the run's mark (the last published id, kept in Redis) and raises
 * the mark in the same atomic step. That makes publishing idempotent (a crash between
 * PUBLISH and the database's UPDATE, or a timed-out PUBLISH that did run, cannot
 * deliver an event twice) and fences stale relays: a mark only moves forward. */
#ifndef OUTBOXD_REDIS_SINK_H
#define OUTBOXD_REDIS_SINK_H

#include "config.h"
#include "event.h"
#include "redis_endpoint.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum pub_result {
    PUB_OK,      /* published now */
    PUB_DUP,     /* published before (mark at or above this id): count as done */
    PUB_GAP,     /* not published: the event before it in the run was not published */
    PUB_FAILED,  /* Redis answered with an error for this event */
    PUB_UNSENT,  /* no answer: connection lost or timed out; the context is gone */
    PUB_REFUSED, /* Redis refused the whole call for a reason that is not about this
                  * event: it takes no writes now (NOREPLICAS, OOM, MISCONF, BUSY) or
                  * the user may not run the script (ACL). Not published; an outage */
    PUB_NOROUTE, /* not sent: no reachable primary serves its slot now (a cluster shard
                  * down or failing over); pointless to retry within the batch */
} pub_result;

/* The Lua source of the publish script (see redis_sink_conn.c); exported for benchmarks. */
extern const char redis_sink_publish_script[];
/* The script that raises the high-water of published ids (see redis_sink_conn.c). */
extern const char redis_sink_hw_script[];

typedef struct sink sink;

/* Counters kept by the sink (never reset). */
typedef struct sink_counters {
    /* Events published again (a mark-less PUB_OK) after an attempt whose reply was
     * lost with the connection: each may have reached subscribers twice, if the
     * first attempt ran and its mark was lost in a failover. Counted by this sink
     * only (this relay process), from its last few lost replies: an indication. */
    unsigned long long possible_duplicates;
    /* Batches whose WAIT saw fewer replicas than --redis-wait-replicas in time. */
    unsigned long long wait_short;
    /* Connections made to a primary other than the previous one (failovers). */
    unsigned long long primary_changes;
    /* Script calls whose events were published but whose run mark Redis refused to
     * write (an ACL user without SET, a server without "#!lua" refusing writes):
     * those events count as published. */
    unsigned long long mark_failures;
} sink_counters;

/* Publishes through the endpoint e (not owned; it must outlive the sink), with the
 * mark TTL and WAIT settings of cfg. epoch (copied) keeps marks of different
 * databases apart. announce: log each new primary connected to (the relay's own
 * sink, not its readiness probes). Free with sink_free. */
sink *sink_new(redis_endpoint *e, const config *cfg, const char *epoch, bool announce);
void sink_free(sink *k);
/* epoch names the marks' keys; origin (copied; "" = unknown) is written into each
 * mark, and a mark of another origin is passed over as no mark (redis_sink_conn.c). */
void sink_set_epoch(sink *k, const char *epoch, const char *origin);
void sink_get_counters(const sink *k, sink_counters *out);
/* True while Redis refuses every event, for the user's ACL or because it takes no
 * writes now (NOREPLICAS, OOM, MISCONF, BUSY): the last publish call had such
 * refusals and no success. *why then names the refusal (owned by the sink). */
bool sink_refusing(const sink *k, const char **why);

/* The high-water of published ids of the current epoch (and origin): the highest
 * id of any batch sent under it, 0 when none (or expired with the marks). Connects
 * first when needed. False with the reason in sink_errstr. */
bool sink_high_water(sink *k, long long *hw) WUR;

bool sink_connect(sink *k) WUR;
bool sink_connected(const sink *k);
void sink_disconnect(sink *k);
const char *sink_errstr(const sink *k);
/* Why Redis refused the run of e in the last sink_publish (its call's error, whichever
 * node it went to), or sink_errstr when that call recorded none. */
const char *sink_run_errstr(const sink *k, const event *e);

/* Publishes evs[0..n) in order, pipelined. chained[i] says that evs[i]'s predecessor
 * in its run is an earlier entry of this call, so it may go out only if that one did.
 * Fills out[i]. Returns false if the connection was lost (it is then closed). With
 * sentinels, first moves to a primary they have announced meanwhile. */
bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out) WUR;

#endif
