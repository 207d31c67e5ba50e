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

/* A run whose event Redis refused (an error reply for that command), or whose cluster
 * shard has no primary now: its events are left out of fetches until `until`, so that
 * it holds back only itself. Room for every run of a shard that is down. */
#define RELAY_HELD_MAX 1024
/* Runs whose first unpublished event is told apart after a batch (beyond it the next
 * batch is fetched again whole). A Redis Cluster shard that is down leaves every run
 * of its slots waiting, a third of all with three shards: enough for those, so that
 * the other runs' events of the next batch still go out. */
#define RELAY_WAITING_MAX 1024
typedef struct held_run {
    char *run_id;
    size_t len;
    double until;   /* monotonic seconds */
    int strikes;    /* consecutive failed batches: the hold doubles each time */
} held_run;

/* The state one batch needs; exposed so that unit tests can drive it with fakes. */
typedef struct relay_ctx {
    const config *cfg;
    store *db;
    sink *out;
    relay_stats stats;
    int wake_fd;                 /* readable when a signal arrived; -1 for none */
    volatile sig_atomic_t *stop; /* set when shutdown was asked for */
    held_run held[RELAY_HELD_MAX];
    int nheld;
    bool crash_before_mark;      /* test-only failpoint (OUTBOXD_FAILPOINT) */
    int batches_until_crash;
    /* scratch, sized to the largest batch seen */
    size_t cap;
    const event **send;
    size_t *send_idx;
    bool *chained;
    bool *done;
    pub_result *res;
    pub_result *last_res;        /* per batch index: the result of its last attempt */
    long long *ids;
    long long *done_ids;         /* relay_publish_batch: the ids that went out */
    size_t *order;               /* ... and order[0..nwaiting): the first waiting event of each run */
    size_t nwaiting;
    size_t nfailed;              /* failures to record: ids[0..nfailed) */
    int failed_attempts;
    char failed_error[512];
} relay_ctx;

typedef struct batch_outcome {
    size_t published;   /* done (delivered now or before) and marked */
    size_t pending;     /* left unpublished for a later batch */
    bool redis_lost;    /* the Redis connection failed during the batch */
    bool db_lost;       /* marking failed: the rows will be fetched (and de-duplicated) again */
    size_t event_failures; /* runs held back because Redis refused one of their events */
} batch_outcome;

void relay_ctx_init(relay_ctx *rc, const config *cfg, store *db, sink *out, int wake_fd,
                    volatile sig_atomic_t *stop);
void relay_ctx_free(relay_ctx *rc);
/* The runs held back right now (until > now): fills ids/lens, returns how many. */
int relay_held_now(relay_ctx *rc, const char **ids, size_t *lens);

/* Publishes b with up to cfg->max_attempts attempts and backoff between them, holding
 * back runs that Redis refused. Events of a run go out strictly in order. Touches no
 * database: rc->done_ids[0..published) are the ids to mark, and the failures wait for
 * relay_record_failures. */
batch_outcome relay_publish_batch(relay_ctx *rc, const batch *b);
/* After relay_publish_batch(rc, cur): removes from next (fetched before cur's outcome
 * was known) the events of runs that still wait in cur, so none overtakes the event
 * that did not go out. */
void relay_drop_waiting_runs(relay_ctx *rc, const batch *cur, batch *next);
/* Writes the attempts and error of the last relay_publish_batch's failed events. */
void relay_record_failures(relay_ctx *rc);
/* relay_publish_batch, then records failures and marks what went out. */
batch_outcome relay_process_batch(relay_ctx *rc, const batch *b);

#endif
