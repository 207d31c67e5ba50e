/* Load generator for tests and benchmarks: C connections insert events into
 * run_outbox at a total rate R over N runs, each insert its own transaction (or
 * rolled back, for --rollback-pct). Every connection writes every run, so writers of
 * one run race. The payload carries the insert time in microseconds ("t").
 *   obx_load --rate R --runs N --conns C --seconds S [--prefix P] [--pad BYTES]
 *            [--rollback-pct P] [--max-delay-ms D] [--count TOTAL]
 * Prints "inserted=N rolled_back=M errors=E seconds=S rate=R/s max_ms=L", L being
 * the longest an insert (with its commit) took. Loopback servers only. */
#include "obx_common.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *url, *prefix = "load";
static double rate = 1000, seconds = 5;
static long runs = 50, conns = 4, pad = 0, rollback_pct = 0, max_delay_ms = 0, count = 0;
static atomic_long next_k, inserted, rolled_back, errors, max_us;
static long long start_us;

static bool exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "obx_load: %s: %s", sql, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

static void *writer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 7919u + 17;
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "obx_load: connect: %s", PQerrorMessage(c));
        PQfinish(c);
        atomic_fetch_add(&errors, 1);
        return NULL;
    }
    char *padding = calloc(1, (size_t)pad + 1);
    memset(padding, 'x', (size_t)pad);
    char *payload = malloc((size_t)pad + 128);
    for (;;) {
        long k = atomic_fetch_add(&next_k, 1);
        if (count && k >= count)
            break;
        long long due = start_us + (long long)((double)k * 1e6 / rate);
        long long now = obx_now_us();
        if (!count && now - start_us >= (long long)(seconds * 1e6))
            break;
        if (due > now)
            usleep((useconds_t)(due - now));
        char run[256];
        snprintf(run, sizeof run, "%s-%ld", prefix, k % runs);
        bool rollback = rollback_pct && (long)(rand_r(&seed) % 100) < rollback_pct;
        bool tx = rollback || max_delay_ms;
        long long t0 = obx_now_us();
        if (tx && !exec_ok(c, "BEGIN")) {
            atomic_fetch_add(&errors, 1);
            continue;
        }
        snprintf(payload, (size_t)pad + 128, "{\"t\":%lld,\"k\":%ld,\"pad\":\"%s\"}", obx_now_us(), k,
                 padding);
        const char *params[] = {run, payload};
        PGresult *r = PQexecParams(c, "INSERT INTO run_outbox (run_id, payload) VALUES ($1, $2::jsonb)",
                                   2, NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok)
            fprintf(stderr, "obx_load: insert: %s", PQerrorMessage(c));
        PQclear(r);
        useconds_t delay_us = max_delay_ms ? (useconds_t)(rand_r(&seed) % (unsigned)(max_delay_ms * 1000)) : 0;
        if (delay_us)
            usleep(delay_us);
        if (tx && !exec_ok(c, ok && !rollback ? "COMMIT" : "ROLLBACK"))
            ok = false;
        /* How long the writer waited, without the delay it chose itself. */
        long took = (long)(obx_now_us() - t0) - (long)delay_us;
        for (long m = atomic_load(&max_us); took > m && !atomic_compare_exchange_weak(&max_us, &m, took);) {
        }
        if (!ok)
            atomic_fetch_add(&errors, 1);
        else if (rollback)
            atomic_fetch_add(&rolled_back, 1);
        else
            atomic_fetch_add(&inserted, 1);
        if (PQstatus(c) != CONNECTION_OK)
            break;
    }
    free(padding);
    free(payload);
    PQfinish(c);
    return NULL;
}

int main(int argc, char **argv)
{
    url = getenv("DATABASE_URL");
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--runs")) runs = atol(v);
        else if (!strcmp(k, "--conns")) conns = atol(v);
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--pad")) pad = atol(v);
        else if (!strcmp(k, "--rollback-pct")) rollback_pct = atol(v);
        else if (!strcmp(k, "--max-delay-ms")) max_delay_ms = atol(v);
        else if (!strcmp(k, "--count")) count = atol(v);
        else if (!strcmp(k, "--url")) url = v;
        else {
            fprintf(stderr, "obx_load: unknown option %s\n", k);
            return 2;
        }
    }
    if (!url || rate <= 0 || runs < 1 || conns < 1 || conns > 256) {
        fprintf(stderr, "obx_load: need DATABASE_URL and sane --rate/--runs/--conns\n");
        return 2;
    }
    start_us = obx_now_us();
    pthread_t th[256];
    for (long i = 0; i < conns; i++)
        pthread_create(&th[i], NULL, writer, (void *)(uintptr_t)i);
    for (long i = 0; i < conns; i++)
        pthread_join(th[i], NULL);
    double took = (double)(obx_now_us() - start_us) / 1e6;
    printf("inserted=%ld rolled_back=%ld errors=%ld seconds=%.2f rate=%.0f/s max_ms=%.1f\n", atomic_load(&inserted),
           atomic_load(&rolled_back), atomic_load(&errors), took, (double)atomic_load(&inserted) / took,
           (double)atomic_load(&max_us) / 1e3);
    return atomic_load(&errors) ? 1 : 0;
}
