/* The relay: polls run_outbox (woken early by NOTIFY), publishes each event to
 * run:{run_id} in id order through the idempotent sink, marks what went out, and
 * never lets a later event of a run overtake an earlier one. */
#ifndef OUTBOXD_RELAY_H
#define OUTBOXD_RELAY_H

#include "config.h"
#include "event.h"
#include "metrics.h"
#include "redis_sink.h"
#include "store_pg.h"

#include <signal.h>
#include <stdbool.h>

/* Runs until SIGTERM or SIGINT; returns the process exit code. */
int relay_main(const config *cfg);

/* The state one batch needs; exposed so that unit tests can drive it with fakes. */
typedef struct relay_ctx {
    const config *cfg;
    store *db;
    sink *out;
    relay_stats stats;
    int wake_fd;                 /* readable when a signal arrived; -1 for none */
    volatile sig_atomic_t *stop; /* set when shutdown was asked for */
    bool crash_before_mark;      /* test-only failpoint (OUTBOXD_FAILPOINT) */
    int batches_until_crash;
    /* scratch, sized to the largest batch seen */
    size_t cap;
    const event **send;
    size_t *send_idx;
    bool *chained;
    bool *done;
    pub_result *res;
    long long *ids;
    size_t *order;
} relay_ctx;

typedef struct batch_outcome {
    size_t published;   /* done (delivered now or before) and marked */
    size_t pending;     /* left unpublished for a later batch */
    bool redis_lost;    /* the Redis connection failed during the batch */
    bool db_lost;       /* marking failed: the rows will be fetched (and de-duplicated) again */
} batch_outcome;

void relay_ctx_init(relay_ctx *rc, const config *cfg, store *db, sink *out, int wake_fd,
                    volatile sig_atomic_t *stop);
void relay_ctx_free(relay_ctx *rc);

/* Publishes b with up to cfg->max_attempts attempts and backoff between them, marks
 * the events that went out (one statement), records attempts and the error on the
 * events that did not. Events of a run go out strictly in order. */
batch_outcome relay_process_batch(relay_ctx *rc, const batch *b);

#endif
