/* The relay: reads new rows of run_outbox by id (woken by NOTIFY only when it waits),
 * publishes each event to run:{run_id} through the idempotent sink, marks what went
 * out, and never lets a later event of a run overtake an earlier one. */
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

/* A run whose event Redis refused (an error reply for that command), or whose Redis
 * Cluster shard has no primary now: it is held back until `until` so that it holds
 * back only itself, then caught up through its own rows (by seq, from the event that
 * failed), while the rest of the outbox flows on. Room for every run of a cluster
 * shard that is down (a third of all runs with three shards). */
#define RELAY_HELD_MAX 1024
#define RELAY_WAITING_MAX 1024
/* Distinct reasons a batch keeps for the runs Redis refused (more: the last error). */
#define RELAY_WHYS 8
typedef struct held_run {
    char *run_id;
    size_t len;
    double until;       /* monotonic seconds */
    int strikes;        /* consecutive failed batches: the hold doubles each time */
    long long from_seq; /* the run's first event not yet published ... */
    long long from_id;  /* ... and a lower bound of its id */
    bool asked;         /* the cycle in flight reads the run's rows from from_seq on */
    bool caught_up;     /* those rows were all of them: once they are out, it is free */
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
    unsigned char *why_of;       /* per batch index: whys[] entry of why its run was refused (0: none) */
    char whys[RELAY_WHYS][512];  /* [1..nwhys): the reasons Redis gave for refusing single runs */
    int nwhys;
    long long *ids;
    long long *done_ids;         /* relay_publish_batch: the ids that went out */
    size_t *order;               /* ... and order[0..nwaiting): the first waiting event of each run */
    size_t nwaiting;
    size_t nfailed;              /* failures to record: ids[0..nfailed) */
    int failed_attempts;
    char failed_error[512];      /* the last error of the batch ... */
    unsigned char failed_why[RELAY_WAITING_MAX]; /* ... or ids[j]'s own: whys[failed_why[j]] when not 0 */
    bool parked_said; /* the batches wait only on parked runs, and that was logged */
} relay_ctx;

typedef struct batch_outcome {
    size_t published;      /* done (delivered now or before): rc->done_ids[0..published) */
    size_t pending;        /* left unpublished */
    long long resume_id;   /* lowest id of an unpublished event whose run is not held (or 0):
                            * the rows from there on must be read again */
    bool redis_lost;       /* the Redis connection failed during the batch */
    bool redis_refused;    /* Redis refused everyone's events (PUB_REFUSED): an outage */
    size_t event_failures; /* runs held back because Redis refused one of their events */
} batch_outcome;

void relay_ctx_init(relay_ctx *rc, const config *cfg, store *db, sink *out, int wake_fd,
                    volatile sig_atomic_t *stop);
void relay_ctx_free(relay_ctx *rc);
/* The runs held back right now (until > now): fills ids/lens, returns how many. */
int relay_held_now(relay_ctx *rc, const char **ids, size_t *lens);
/* Forgets every held run (a new leader learns them again from the table). */
void relay_held_clear(relay_ctx *rc);

/* From the rows of a cycle (id order), the events to publish now, in out: rows
 * published already go, rows of held runs go unless they are that run's catch-up
 * (cu_limit: the most rows the cycle read per run). out shares the rows' storage. */
bool relay_take_rows(relay_ctx *rc, const batch *rows, long cu_limit, batch *out) __attribute__((warn_unused_result));
/* Publishes b with up to cfg->max_attempts attempts and backoff between them, holding
 * back runs that Redis refused. Events of a run go out strictly in order. Touches no
 * database: rc->done_ids[0..published) are the ids to mark, and the failures wait for
 * relay_record_failures. */
batch_outcome relay_publish_batch(relay_ctx *rc, const batch *b);
/* Writes the attempts and error of the last relay_publish_batch's failed events. */
void relay_record_failures(relay_ctx *rc);

#endif
