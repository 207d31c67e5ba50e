/* The relay's frontier and gaps (see relay_scan.h). */
#include "relay_scan.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

void scan_init(scan *sc)
{
    memset(sc, 0, sizeof *sc);
}

void scan_free(scan *sc)
{
    free(sc->gap);
    free(sc->spare);
    free(sc->probe_lo);
    free(sc->probe_hi);
    scan_init(sc);
}

static void forget_window(scan *sc)
{
    sc->probe_from = sc->probe_n = 0;
    sc->probe_rows = 0;
}

void scan_reset(scan *sc, long long low_water)
{
    sc->frontier = low_water - 1;
    sc->ngaps = 0;
    sc->cursor = 0;
    sc->horizon = 0;
    sc->next_check = 0;
    sc->blocker = false;
    forget_window(sc);
}

bool scan_needs_tag(const scan *sc)
{
    for (size_t i = 0; i < sc->ngaps; i++)
        if (sc->gap[i].until == SCAN_UNTAGGED)
            return true;
    return false;
}

long long scan_low(const scan *sc)
{
    return sc->ngaps && sc->gap[0].lo <= sc->frontier ? sc->gap[0].lo : sc->frontier + 1;
}

/* Gaps are found in id order as the frontier moves up, and a split keeps the time of
 * the gap it came from: the lowest gap is the oldest. */
double scan_oldest_gap_s(const scan *sc, double now)
{
    return sc->ngaps ? now - sc->gap[0].since : 0;
}

void scan_rewind(scan *sc, long long from)
{
    if (from - 1 >= sc->frontier)
        return;
    sc->frontier = from - 1;
    size_t n = 0;
    for (size_t i = 0; i < sc->ngaps && sc->gap[i].lo <= sc->frontier; i++, n++)
        if (sc->gap[i].hi > sc->frontier)
            sc->gap[i].hi = sc->frontier;
    sc->ngaps = n;
    forget_window(sc);
}

static bool reserve(scan_gap **a, size_t *cap, size_t n)
{
    if (n <= *cap)
        return true;
    size_t c = *cap ? *cap : 16;
    while (c < n)
        c *= 2;
    scan_gap *p = realloc(*a, c * sizeof *p);
    if (!p)
        return false;
    *a = p;
    *cap = c;
    return true;
}

long scan_frontier_limit(const scan *sc, long limit)
{
    size_t room = sc->ngaps < SCAN_GAPS_MAX ? SCAN_GAPS_MAX - sc->ngaps : 0;
    return (size_t)limit < room ? limit : (long)room;
}

bool scan_probe(scan *sc, long rows_max)
{
    forget_window(sc);
    if (sc->ngaps == 0)
        return true;
    size_t from = 0, n = sc->ngaps;
    if (n > SCAN_PROBE_MAX) {
        /* In turns: from the first gap that ends at or above the cursor, wrapping. */
        while (from < sc->ngaps && sc->gap[from].hi < sc->cursor)
            from++;
        if (from == sc->ngaps)
            from = 0;
        n = sc->ngaps - from < SCAN_PROBE_MAX ? sc->ngaps - from : SCAN_PROBE_MAX;
    }
    if (!sc->probe_lo || !sc->probe_hi) {
        free(sc->probe_lo);
        free(sc->probe_hi);
        sc->probe_lo = malloc(SCAN_PROBE_MAX * sizeof *sc->probe_lo);
        sc->probe_hi = malloc(SCAN_PROBE_MAX * sizeof *sc->probe_hi);
        if (!sc->probe_lo || !sc->probe_hi)
            return false;
    }
    for (size_t i = 0; i < n; i++) {
        sc->probe_lo[i] = sc->gap[from + i].lo;
        sc->probe_hi[i] = sc->gap[from + i].hi;
    }
    sc->probe_from = from;
    sc->probe_n = n;
    sc->probe_rows = rows_max / (long)n > 0 ? rows_max / (long)n : 1;
    sc->cursor = from + n < sc->ngaps ? sc->gap[from + n - 1].hi + 1 : LLONG_MIN;
    return true;
}

bool scan_check_due(const scan *sc, double now)
{
    return sc->ngaps > 0 && now >= sc->next_check && scan_oldest_gap_s(sc, now) >= SCAN_CHECK_AFTER_S;
}

void scan_writers(scan *sc, const store_writers *w, double now)
{
    if (w->horizon > sc->horizon)
        sc->horizon = w->horizon;
    sc->next_check = now + SCAN_CHECK_EVERY_S;
    /* The oldest writer holds gaps open if some gap's tag lies above it. */
    sc->blocker = false;
    for (size_t i = 0; i < sc->ngaps && w->count > 0 && !sc->blocker; i++)
        sc->blocker = sc->gap[i].until != SCAN_UNTAGGED && sc->gap[i].until > w->oldest;
    sc->blocker_pid = sc->blocker ? w->oldest_pid : 0;
    sc->blocker_prepared = sc->blocker && w->oldest_prepared;
    sc->blocker_age_s = sc->blocker ? w->oldest_age_s : 0;
}

bool scan_apply(scan *sc, const batch *rows, const store_seen *seen, double now)
{
    long long front = sc->frontier;
    for (size_t i = 0; i < rows->n; i++)
        if ((rows->ev[i].flags & STORE_ROW_FRONTIER) && rows->ev[i].id > front)
            front = rows->ev[i].id;
    /* The new list: old gaps minus the ids read now (a range can split), then the
     * ids missing between the old frontier and the new one. At most one new range
     * per row read, plus the old ones. */
    if (!reserve(&sc->spare, &sc->spare_cap, sc->ngaps + rows->n + 1))
        return false;
    scan_gap *out = sc->spare;
    size_t n = 0;
    /* This statement's transaction id was taken after its snapshot, so after the
     * snapshots that found the older gaps missing too: a tag for all of them. */
    unsigned long long tag = seen->tag ? seen->tag : SCAN_UNTAGGED;
    unsigned long long horizon = seen->xmin > sc->horizon ? seen->xmin : sc->horizon;
    size_t wend = sc->probe_from + sc->probe_n;
    size_t r = 0;
    for (size_t g = 0; g < sc->ngaps; g++) {
        const scan_gap *old = &sc->gap[g];
        unsigned long long gtag = old->until == SCAN_UNTAGGED ? tag : old->until;
        while (r < rows->n && rows->ev[r].id < old->lo)
            r++;
        /* What of it this statement read again: nothing outside the window; inside,
         * all of it, unless it gave its row limit (then up to its last row). */
        long long probed = old->lo - 1;
        if (g >= sc->probe_from && g < wend) {
            probed = old->hi;
            long got = 0;
            for (size_t k = r; k < rows->n && rows->ev[k].id <= old->hi; k++)
                if ((rows->ev[k].flags & STORE_ROW_GAP) && ++got == sc->probe_rows)
                    probed = rows->ev[k].id;
        }
        /* Once no transaction that could fill it is left, what was read again of it
         * and found empty goes. */
        bool closing = gtag != SCAN_UNTAGGED && gtag <= horizon;
        long long from = old->lo;
        for (;; r++) {
            long long to = r < rows->n && rows->ev[r].id <= old->hi ? rows->ev[r].id - 1 : old->hi;
            if (from <= to && !(closing && to <= probed))
                out[n++] = (scan_gap){.lo = from, .hi = to, .until = gtag, .since = old->since};
            if (!(r < rows->n && rows->ev[r].id <= old->hi))
                break;
            from = rows->ev[r].id + 1;
        }
    }
    long long expect = sc->frontier + 1;
    for (r = 0; r < rows->n && rows->ev[r].id <= front; r++) {
        long long id = rows->ev[r].id;
        if (id < expect)
            continue;
        if (id > expect)
            out[n++] = (scan_gap){.lo = expect, .hi = id - 1, .until = tag, .since = now};
        expect = id + 1;
    }
    scan_gap *was = sc->gap;
    size_t was_cap = sc->cap;
    sc->gap = out;
    sc->cap = sc->spare_cap;
    sc->spare = was;
    sc->spare_cap = was_cap;
    sc->ngaps = n;
    sc->frontier = front;
    if (n == 0)
        sc->blocker = false;
    forget_window(sc);
    return true;
}
