/* The relay's frontier and gaps (see relay_scan.h). */
#include "relay_scan.h"

#include <stdlib.h>
#include <string.h>

void scan_init(scan *sc)
{
    memset(sc, 0, sizeof *sc);
}

void scan_free(scan *sc)
{
    free(sc->lo);
    free(sc->hi);
    free(sc->until);
    scan_init(sc);
}

void scan_reset(scan *sc, long long low_water)
{
    sc->frontier = low_water - 1;
    sc->ngaps = 0;
}

bool scan_needs_tag(const scan *sc)
{
    for (size_t i = 0; i < sc->ngaps; i++)
        if (sc->until[i] == SCAN_UNTAGGED)
            return true;
    return false;
}

long long scan_low(const scan *sc)
{
    return sc->ngaps && sc->lo[0] <= sc->frontier ? sc->lo[0] : sc->frontier + 1;
}

void scan_rewind(scan *sc, long long from)
{
    if (from - 1 >= sc->frontier)
        return;
    sc->frontier = from - 1;
    size_t n = 0;
    for (size_t i = 0; i < sc->ngaps && sc->lo[i] <= sc->frontier; i++, n++)
        if (sc->hi[i] > sc->frontier)
            sc->hi[i] = sc->frontier;
    sc->ngaps = n;
}

static bool reserve(long long **lo, long long **hi, unsigned long long **until, size_t *cap, size_t n)
{
    if (n <= *cap)
        return true;
    size_t c = *cap ? *cap : 16;
    while (c < n)
        c *= 2;
    long long *l = realloc(*lo, c * sizeof *l);
    if (!l)
        return false;
    *lo = l;
    long long *h = realloc(*hi, c * sizeof *h);
    if (!h)
        return false;
    *hi = h;
    unsigned long long *u = realloc(*until, c * sizeof *u);
    if (!u)
        return false;
    *until = u;
    *cap = c;
    return true;
}

/* Merges neighbours, closest first, until at most SCAN_GAPS_MAX ranges are left. */
static void merge_down(long long *lo, long long *hi, unsigned long long *until, size_t *n)
{
    while (*n > SCAN_GAPS_MAX) {
        size_t best = 0;
        for (size_t i = 1; i + 1 < *n; i++)
            if (lo[i + 1] - hi[i] < lo[best + 1] - hi[best])
                best = i;
        hi[best] = hi[best + 1];
        if (until[best + 1] > until[best])
            until[best] = until[best + 1];
        memmove(&lo[best + 1], &lo[best + 2], (*n - best - 2) * sizeof *lo);
        memmove(&hi[best + 1], &hi[best + 2], (*n - best - 2) * sizeof *hi);
        memmove(&until[best + 1], &until[best + 2], (*n - best - 2) * sizeof *until);
        (*n)--;
    }
}

bool scan_apply(scan *sc, const batch *rows, const store_seen *seen)
{
    long long front = sc->frontier;
    for (size_t i = 0; i < rows->n; i++)
        if ((rows->ev[i].flags & STORE_ROW_FRONTIER) && rows->ev[i].id > front)
            front = rows->ev[i].id;
    /* The new list: old gaps minus the ids read now (a range can split), then the
     * ids missing between the old frontier and the new one. At most one new range
     * per row read, plus the old ones. */
    long long *lo = NULL, *hi = NULL;
    unsigned long long *until = NULL;
    size_t n = 0, cap = 0;
    if (!reserve(&lo, &hi, &until, &cap, sc->ngaps + rows->n + 1)) {
        free(lo);
        free(hi);
        free(until);
        return false;
    }
    /* This statement's transaction id was taken after its snapshot, so after the
     * snapshots that found the older gaps missing too: a tag for all of them. */
    unsigned long long tag = seen->tag ? seen->tag : SCAN_UNTAGGED;
    size_t r = 0;
    for (size_t g = 0; g < sc->ngaps; g++) {
        if (sc->until[g] != SCAN_UNTAGGED && sc->until[g] <= seen->xmin)
            continue; /* every transaction that could fill it has ended: closed */
        unsigned long long gtag = sc->until[g] == SCAN_UNTAGGED ? tag : sc->until[g];
        long long from = sc->lo[g];
        while (r < rows->n && rows->ev[r].id < from)
            r++;
        for (; r < rows->n && rows->ev[r].id <= sc->hi[g]; r++) {
            if (rows->ev[r].id > from) {
                lo[n] = from;
                hi[n] = rows->ev[r].id - 1;
                until[n++] = gtag;
            }
            from = rows->ev[r].id + 1;
        }
        if (from <= sc->hi[g]) {
            lo[n] = from;
            hi[n] = sc->hi[g];
            until[n++] = gtag;
        }
    }
    long long expect = sc->frontier + 1;
    for (r = 0; r < rows->n && rows->ev[r].id <= front; r++) {
        long long id = rows->ev[r].id;
        if (id < expect)
            continue;
        if (id > expect) {
            lo[n] = expect;
            hi[n] = id - 1;
            until[n++] = tag;
        }
        expect = id + 1;
    }
    merge_down(lo, hi, until, &n);
    free(sc->lo);
    free(sc->hi);
    free(sc->until);
    sc->lo = lo;
    sc->hi = hi;
    sc->until = until;
    sc->cap = cap;
    sc->ngaps = n;
    sc->frontier = front;
    return true;
}
