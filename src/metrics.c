/* Log-linear latency histogram. */
#include "metrics.h"

#include <math.h>
#include <string.h>

void hist_reset(histogram *h)
{
    memset(h, 0, sizeof *h);
}

static int bucket_of(double us)
{
    if (us < 1)
        return 0;
    int e;
    double m = frexp(us, &e); /* us = m * 2^e, m in [0.5, 1) */
    int i = (e - 1) * HIST_SUB + (int)((m * 2 - 1) * HIST_SUB);
    return i >= HIST_BUCKETS ? HIST_BUCKETS - 1 : i;
}

static double bucket_upper(int i)
{
    int e = i / HIST_SUB, sub = i % HIST_SUB;
    return ldexp(1.0 + (double)(sub + 1) / HIST_SUB, e);
}

void hist_record(histogram *h, double us)
{
    if (us < 0)
        us = 0;
    h->bucket[bucket_of(us)]++;
    h->count++;
    h->sum_us += us;
    if (us > h->max_us)
        h->max_us = us;
}

double hist_quantile(const histogram *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)ceil(q * (double)h->count);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->bucket[i];
        if (seen >= rank) {
            /* The last bucket also holds everything beyond it: its edge means nothing. */
            double up = i == HIST_BUCKETS - 1 ? h->max_us : bucket_upper(i);
            return up < h->max_us ? up : h->max_us;
        }
    }
    return h->max_us;
}
