/* Counters and latency histograms of the relay and the gateway. The histogram is
 * log-linear (8 sub-buckets per power of two, so quantiles are within 12.5%) over
 * microseconds; recording is a few instructions and takes no memory. */
#ifndef OUTBOXD_METRICS_H
#define OUTBOXD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#define WUR_M __attribute__((warn_unused_result))

#define HIST_SUB 8
#define HIST_BUCKETS (40 * HIST_SUB)

typedef struct histogram {
    uint64_t bucket[HIST_BUCKETS];
    uint64_t count;
    double sum_us;
    double max_us;
} histogram;

void hist_reset(histogram *h);
void hist_record(histogram *h, double us);
/* The q-quantile (0..1) in microseconds: the upper edge of its bucket, capped at max. */
double hist_quantile(const histogram *h, double q);

/* A Prometheus histogram over seconds with fixed buckets (cumulative on output). */
#define PROM_BUCKETS 14
extern const double prom_bucket_le[PROM_BUCKETS];
typedef struct prom_hist {
    uint64_t bucket[PROM_BUCKETS]; /* not cumulative: bucket i counts values in (le[i-1], le[i]] */
    uint64_t count;
    double sum;
} prom_hist;
void prom_hist_record(prom_hist *h, double seconds);

struct buf;
/* Prometheus text exposition (version 0.0.4): each writes HELP, TYPE and samples. */
bool prom_counter(struct buf *b, const char *name, const char *help, double v) WUR_M;
bool prom_gauge(struct buf *b, const char *name, const char *help, double v) WUR_M;
bool prom_histogram(struct buf *b, const char *name, const char *help, const prom_hist *h) WUR_M;

typedef struct relay_stats {
    uint64_t published;     /* events delivered (or found already delivered) and marked */
    uint64_t duplicates;    /* of those, found already published by the mark in Redis */
    uint64_t failures;      /* publish attempts of an event that failed */
    uint64_t retries;       /* extra attempts made within batches */
    uint64_t batches;
    uint64_t pruned;        /* published events deleted by retention */
    uint64_t epoch_changes; /* new epochs written: the id numbering was found to have gone back */
    histogram latency;      /* created_at -> PUBLISH acknowledged, per event */
    histogram batch_time;   /* fetch -> marked, per non-empty batch */
    prom_hist latency_total;    /* the same, never reset: for /metrics */
    prom_hist batch_time_total;
} relay_stats;

#endif
