/* Log-linear latency histogram. */
#include "metrics.h"

#include "buf.h"

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

const double prom_bucket_le[PROM_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                             0.1,    0.25,  0.5,    1,     2.5,  5,    10};

void prom_hist_record(prom_hist *h, double seconds)
{
    int i = 0;
    while (i < PROM_BUCKETS && seconds > prom_bucket_le[i])
        i++;
    if (i < PROM_BUCKETS)
        h->bucket[i]++;
    h->count++;
    h->sum += seconds;
}

static bool prom_head(struct buf *b, const char *name, const char *help, const char *type)
{
    return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

bool prom_counter(struct buf *b, const char *name, const char *help, double v)
{
    return prom_head(b, name, help, "counter") && buf_printf(b, "%s %.17g\n", name, v);
}

bool prom_gauge(struct buf *b, const char *name, const char *help, double v)
{
    return prom_head(b, name, help, "gauge") && buf_printf(b, "%s %.17g\n", name, v);
}

bool prom_histogram(struct buf *b, const char *name, const char *help, const prom_hist *h)
{
    if (!prom_head(b, name, help, "histogram"))
        return false;
    uint64_t cum = 0;
    for (int i = 0; i < PROM_BUCKETS; i++) {
        cum += h->bucket[i];
        if (!buf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, prom_bucket_le[i], (unsigned long long)cum))
            return false;
    }
    return buf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9f\n%s_count %llu\n", name,
                      (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}
