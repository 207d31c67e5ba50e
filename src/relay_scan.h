/* What the relay has read of run_outbox, without an index on published_at.
 *
 * Ids are drawn in the insert trigger after the writer's transaction id, but they
 * become visible in commit order: when the relay reads ids 7 and 9, id 8 may belong to
 * a transaction still running (it will appear later) or to one that rolled back (it
 * never will). The scan keeps a frontier (every id at or below it was read or is a
 * known gap) and the gaps: ranges of ids that were all missing when last read, never
 * a range around a row that exists (reading one again would send its row again).
 * Statements read the gaps again, a bounded window of them at a time.
 *
 * A gap closes once no transaction that could fill it is running. The writer of a
 * missing id took its transaction id before drawing the id, and the id was drawn
 * before the snapshot that found it missing (a later id was visible there). Any
 * transaction id the relay takes after that snapshot is therefore higher than the
 * writer's: that is the gap's tag. (The snapshot's own xmax is not: it is one past
 * the latest *completed* transaction, and a writer may hold a higher id.) The gap
 * goes when a statement reads it (finding nothing) once either
 *  - that statement's snapshot xmin reaches the tag: every transaction below the tag
 *    has ended, so whatever committed is visible to it; or
 *  - a look at pg_locks made before that statement (the writers' horizon,
 *    store_outbox_writers) found no transaction below the tag that holds a lock on
 *    run_outbox. A writer takes that lock before its trigger draws an id and keeps it
 *    until it ends (a prepared transaction until COMMIT/ROLLBACK PREPARED), and a
 *    commit is visible before its locks are released. The horizon is also capped at
 *    that look's xmax, so that a writer that got its id after the look is never
 *    taken for gone.
 * The first rule costs nothing; the second is what lets a long transaction that does
 * not write the outbox (another database, a batch job, a forgotten PREPARE) hold the
 * xmin back without holding the gaps open. A gap waits for its tag until a cycle has
 * a transaction id (one that marks has; store_cycle.need_tag asks for one otherwise). */
#ifndef OUTBOXD_RELAY_SCAN_H
#define OUTBOXD_RELAY_SCAN_H

#include "event.h"
#include "store_pg.h"

#include <stdbool.h>
#include <stddef.h>

/* Gap ranges kept (32 bytes each, twice: scan_apply builds the next list beside the
 * last): gaps pile up only while a transaction that writes
 * the outbox stays open and other inserts roll back. At the cap the frontier stops
 * (new rows wait; nothing is lost or sent twice) until gaps close. */
#define SCAN_GAPS_MAX (1 << 20)
/* Gap ranges one statement reads again; more are read in turns. */
#define SCAN_PROBE_MAX 1024
/* The writers' horizon is looked up at most this often, and only for gaps older than
 * SCAN_CHECK_AFTER_S (younger ones normally close by the xmin rule). */
#define SCAN_CHECK_EVERY_S 1.0
#define SCAN_CHECK_AFTER_S 0.2
#define SCAN_UNTAGGED (~0ULL)

typedef struct scan_gap {
    long long lo, hi;         /* ids lo..hi were all missing when last read */
    unsigned long long until; /* its tag (SCAN_UNTAGGED until it has one) */
    double since;             /* when it was found (monotonic seconds) */
} scan_gap;

typedef struct scan {
    long long frontier;       /* every id <= frontier was read or lies in a gap */
    scan_gap *gap;            /* ascending, disjoint: ngaps of them */
    size_t ngaps, cap;
    scan_gap *spare;          /* scan_apply builds the new list here */
    size_t spare_cap;
    /* The window the statement in flight reads again (scan_probe): gaps
     * probe_from..probe_from+probe_n-1, at most probe_rows rows from each, their
     * bounds in probe_lo/probe_hi for the statement. */
    size_t probe_from, probe_n;
    long probe_rows;
    long long *probe_lo, *probe_hi;
    long long cursor;         /* the next window starts at the first gap ending at or above it */
    unsigned long long horizon; /* the writers' horizon: gaps tagged at or below it can close */
    double next_check;
    /* The oldest transaction writing run_outbox that holds gaps open (last look). */
    int blocker_pid;          /* 0 when none or prepared */
    bool blocker;             /* there is one */
    bool blocker_prepared;
    double blocker_age_s;
} scan;

void scan_init(scan *sc);
void scan_free(scan *sc);
/* Starts over from a low water: ids from low_water on are read again. */
void scan_reset(scan *sc, long long low_water);
/* Chooses the gaps the next statement reads again (the window in sc->probe_*), and
 * how many rows it may read from each: rows_max over the window, at least one.
 * False when out of memory. */
bool scan_probe(scan *sc, long rows_max) __attribute__((warn_unused_result));
/* How many rows the next statement may read above the frontier: `limit`, less near
 * SCAN_GAPS_MAX (each row read there may add a gap); 0 at the cap. */
long scan_frontier_limit(const scan *sc, long limit);
/* Takes in what one cycle statement read (rows in id order, each once) and its
 * snapshot. The statement must have read the window of the last scan_probe. now:
 * monotonic seconds. Returns false when out of memory; the scan is then unchanged. */
bool scan_apply(scan *sc, const batch *rows, const store_seen *seen, double now)
    __attribute__((warn_unused_result));
/* Whether some gap waits for a tag: the next cycle should take a transaction id. */
bool scan_needs_tag(const scan *sc);
/* Whether the writers' horizon should be looked up before the next statement. */
bool scan_check_due(const scan *sc, double now);
/* Takes in what that look found (made after every statement scan_apply has seen). */
void scan_writers(scan *sc, const store_writers *w, double now);
/* The age of the oldest gap in seconds (0 without gaps). */
double scan_oldest_gap_s(const scan *sc, double now);
/* The lowest id that may not have been read yet. */
long long scan_low(const scan *sc);
/* Reads again from id `from` on: the frontier goes back, gaps above it go. */
void scan_rewind(scan *sc, long long from);

#endif
