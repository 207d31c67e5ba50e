/* What the relay's source files (relay.c: the loop and the leader's cycle, above
 * relay_chores.c: the chores between cycles and what the admin thread reads) share and
 * nobody else sees: the loop's state and the chores' entry points. */
#ifndef OUTBOXD_RELAY_INT_H
#define OUTBOXD_RELAY_INT_H

#include "relay.h"
#include "relay_scan.h"

/* In a backlog, the marks of one batch are spread over this many cycle statements
 * (by id modulo MARK_SPLIT): each statement then updates a quarter of a page's rows,
 * which fits the page's free space (fillfactor 80) and keeps every mark a HOT update.
 * docs/BENCHMARKS.md measures it. */
#define MARK_SPLIT 4
#define LOW_WATER_EVERY_S 1.0
#define FORGET_WINDOW 1000

/* Ids published and not yet marked: slot k goes with the cycle statement k (mod
 * MARK_SPLIT). */
typedef struct mark_ring {
    long long *ids[MARK_SPLIT];
    size_t n[MARK_SPLIT], cap[MARK_SPLIT];
    long long *spare; /* the array of the slot last sent, reused for the next one */
    size_t spare_cap;
} mark_ring;

typedef struct relay_state {
    relay_ctx rc;
    const config *cfg;
    bool fatal; /* a condition no retry can mend: stop with exit code 1 */
    bool leader;
    bool numbering_checked; /* since taking the lead: the Redis high-water against the id sequence */
    bool said_standby;
    long backoff_ms;
    long refused_ms; /* the backoff while Redis refuses everyone (reset once events go out) */
    double next_stats, last_stats, next_backlog, next_prune;
    long long backlog;
    double oldest_age_s;
    uint64_t published_at_last_stats;
    /* the leader's cycle */
    scan sc;
    batch rows[2];       /* what the last two cycles read; `cur` points into one of them */
    unsigned long cycle;
    batch cur;           /* read, to be published by the next step */
    bool cur_full;       /* the read that gave `cur` was full: a backlog */
    long limit;
    mark_ring marks;
    bool recheck;        /* the wake-up lock is taken: the next read decides whether to wait */
    int busy_naps;
    double busy_since;   /* when the relay last found it could not wait */
    double said_busy, said_gaps_full; /* when those were last logged */
    double low_saved_at;
    long long low_saved;
    char forget_cursor[512];
    /* VACUUM of run_outbox on a connection of its own (--vacuum-after) */
    store *vac;
    int vac_may;         /* -1 not known yet, 0 this role does not own the table, 1 it does */
    bool vac_running;
    double vac_started, next_vacuum;
    long long churn;     /* events marked or deleted since the last VACUUM started */
} relay_state;

/* relay_chores.c */
/* What /metrics and /readyz describe besides the loop's state. */
void relay_public_init(const config *cfg, redis_endpoint *ep);
/* The chores between cycles: stats, backlog, retention, VACUUM, what the admin thread
 * reads. False when the database connection was lost. */
bool relay_periodic(relay_state *r);
/* The stats line (final: at exit). */
void relay_log_stats(relay_state *r, bool final);
/* Where a relay that takes over starts reading: below it every event is published. */
long long relay_low_water(relay_state *r);
bool relay_render_metrics(buf *b, void *arg);
bool relay_check_ready(buf *body, void *arg);

#endif
