/* What the relay has read of run_outbox, without an index on published_at.
 *
 * Ids are drawn in the insert trigger after the writer's transaction id, but they
 * become visible in commit order: when the relay reads ids 7 and 9, id 8 may belong to
 * a transaction still running (it will appear later) or to one that rolled back (it
 * never will). The scan keeps a frontier (every id at or below it was read or is a
 * known gap) and the gaps, which every cycle reads again.
 *
 * A gap closes once no transaction that could fill it is running. The writer of a
 * missing id took its transaction id before drawing the id, and the id was drawn
 * before the snapshot that found it missing (a later id was visible there). Any
 * transaction id the relay takes after that snapshot is therefore higher than the
 * writer's: that is the gap's tag. (The snapshot's own xmax is not: it is one past
 * the latest *completed* transaction, and a writer may hold a higher id.) Once a
 * later snapshot's xmin reaches the tag, every transaction below it has ended, so
 * whatever committed is visible to that statement, which also read the gap: the gap
 * goes. A gap waits for its tag until a cycle has a transaction id (one that marks
 * has; store_cycle.need_tag asks for one otherwise). */
#ifndef OUTBOXD_RELAY_SCAN_H
#define OUTBOXD_RELAY_SCAN_H

#include "event.h"
#include "store_pg.h"

#include <stdbool.h>
#include <stddef.h>

/* Beyond this many gap ranges the closest neighbours are merged: a merged range is
 * read again whole (rows already read come back published, or are recognised as
 * duplicates by the marks in Redis), so memory stays bounded whatever happens. */
#define SCAN_GAPS_MAX 256
#define SCAN_UNTAGGED (~0ULL)

typedef struct scan {
    long long frontier;          /* every id <= frontier was read or lies in a gap */
    long long *lo, *hi;          /* gap ranges, ascending, disjoint: ngaps of them */
    unsigned long long *until;   /* per gap: its tag (SCAN_UNTAGGED until it has one); it
                                  * closes once a snapshot's xmin >= until */
    size_t ngaps, cap;
} scan;

void scan_init(scan *sc);
void scan_free(scan *sc);
/* Starts over from a low water: ids from low_water on are read again. */
void scan_reset(scan *sc, long long low_water);
/* Takes in what one cycle statement read (rows in id order, each once) and its
 * snapshot. The statement must have probed every gap the scan held when it was
 * sent. Returns false when out of memory; the scan is then unchanged. */
bool scan_apply(scan *sc, const batch *rows, const store_seen *seen) __attribute__((warn_unused_result));
/* Whether some gap waits for a tag: the next cycle should take a transaction id. */
bool scan_needs_tag(const scan *sc);
/* The lowest id that may not have been read yet. */
long long scan_low(const scan *sc);
/* Reads again from id `from` on: the frontier goes back, gaps above it go. */
void scan_rewind(scan *sc, long long from);

#endif
