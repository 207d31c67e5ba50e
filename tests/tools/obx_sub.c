/* Checking subscriber for tests and benchmarks. PSUBSCRIBEs to run:* (reconnecting
 * and re-subscribing if Redis goes away), records every message with its arrival
 * time, and with --check compares what arrived against run_outbox:
 * lost, duplicated, out of order (per run, in arrival order), unexpected (not in the
 * table, e.g. a rolled-back event). Latency = arrival - payload "t" (insert time).
 *   obx_sub [--host H] [--port P] [--password PW] [--pattern run:*] [--prefix P]
 *           [--expect N] [--idle-ms MS] [--max-seconds S] [--ready-file F] [--check]
 * Exits 0 when the check passes (or was not asked for), 1 when it fails. */
#include "obx_common.h"
#include "metrics.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct rec {
    char *run_id;
    size_t run_len;
    long long id, seq, t, recv, arrival;
} rec;

static rec *recs;
static size_t nrec, caprec;
static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static redisContext *subscribe(const char *host, int port, const char *pw, const char *pattern)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    if (!c || c->err) {
        if (c) redisFree(c);
        return NULL;
    }
    redisReply *r;
    if (pw && *pw) {
        /* A server without a password refuses AUTH: carry on, PSUBSCRIBE tells. */
        r = redisCommand(c, "AUTH %s", pw);
        if (r) freeReplyObject(r);
        if (c->err) { redisFree(c); return NULL; }
    }
    r = redisCommand(c, "PSUBSCRIBE %s", pattern);
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r) freeReplyObject(r);
    if (!ok) { redisFree(c); return NULL; }
    return c;
}

static int cmp_id(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_run_arrival(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    size_t n = x->run_len < y->run_len ? x->run_len : y->run_len;
    int c = memcmp(x->run_id, y->run_id, n);
    if (c == 0 && x->run_len != y->run_len) c = x->run_len < y->run_len ? -1 : 1;
    if (c == 0) c = x->arrival < y->arrival ? -1 : x->arrival > y->arrival;
    return c;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *pw = NULL, *pattern = "run:*", *prefix = "", *ready = NULL;
    int port = 6379;
    long expect = 0, idle_ms = 0;
    double max_seconds = 60;
    bool check = false;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--check")) { check = true; continue; }
        i++;
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--password")) pw = v;
        else if (!strcmp(k, "--pattern")) pattern = v;
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--expect")) expect = atol(v);
        else if (!strcmp(k, "--idle-ms")) idle_ms = atol(v);
        else if (!strcmp(k, "--max-seconds")) max_seconds = atof(v);
        else if (!strcmp(k, "--ready-file")) ready = v;
        else { fprintf(stderr, "obx_sub: unknown option %s\n", k); return 2; }
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    long long start = obx_now_us(), last = 0;
    long reconnects = -1;
    redisContext *c = NULL;
    while (!stop) {
        long long now = obx_now_us();
        if (now - start > (long long)(max_seconds * 1e6)) break;
        if (expect && (long)nrec >= expect) break;
        if (idle_ms && last && now - last > idle_ms * 1000) break;
        if (!c) {
            c = subscribe(host, port, pw, pattern);
            if (!c) { usleep(20000); continue; }
            reconnects++;
            if (ready) {
                FILE *f = fopen(ready, "w");
                if (f) fclose(f);
            }
        }
        redisReply *r = NULL;
        if (redisGetReplyFromReader(c, (void **)&r) != REDIS_OK) { redisFree(c); c = NULL; continue; }
        if (!r) {
            struct pollfd p = {.fd = c->fd, .events = POLLIN};
            if (poll(&p, 1, 50) > 0 && redisBufferRead(c) != REDIS_OK) { redisFree(c); c = NULL; }
            continue;
        }
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 4 && !strcmp(r->element[0]->str, "pmessage")) {
            obx_msg m = {0};
            if (obx_parse(r->element[3]->str, &m) &&
                (m.run_id_len < strlen(prefix) || memcmp(m.run_id, prefix, strlen(prefix)))) {
                free(m.run_id); /* another test's run */
            } else if (m.run_id) {
                if (nrec == caprec) {
                    caprec = caprec ? caprec * 2 : 4096;
                    recs = realloc(recs, caprec * sizeof *recs);
                }
                last = obx_now_us();
                recs[nrec] = (rec){m.run_id, m.run_id_len, m.id, m.seq, m.t, last, (long long)nrec};
                nrec++;
            } else {
                fprintf(stderr, "obx_sub: not an outboxd message: %.80s\n", r->element[3]->str);
            }
        }
        freeReplyObject(r);
    }
    if (c) redisFree(c);

    histogram h;
    hist_reset(&h);
    for (size_t i = 0; i < nrec; i++)
        if (recs[i].t > 0) hist_record(&h, (double)(recs[i].recv - recs[i].t));

    long lost = 0, dups = 0, disorder = 0, unexpected = 0, expected = -1;
    if (check) {
        PGconn *pg = PQconnectdb(getenv("DATABASE_URL") ? getenv("DATABASE_URL") : "");
        const char *params[] = {prefix};
        /* Events an operator skipped (outboxd skip) were never meant to arrive. */
        PGresult *res = PQexecParams(pg, "SELECT id, seq FROM run_outbox WHERE starts_with(run_id, $1)"
                                         " AND coalesce(last_error, '') NOT LIKE 'skipped by operator:%' ORDER BY id",
                                     1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            fprintf(stderr, "obx_sub: check query: %s", PQerrorMessage(pg));
            return 1;
        }
        int n = PQntuples(res);
        expected = n;
        /* Order per run, in arrival order. */
        qsort(recs, nrec, sizeof *recs, cmp_run_arrival);
        for (size_t i = 1; i < nrec; i++)
            if (recs[i].run_len == recs[i - 1].run_len &&
                !memcmp(recs[i].run_id, recs[i - 1].run_id, recs[i].run_len) && recs[i].seq <= recs[i - 1].seq) {
                if (disorder < 5)
                    fprintf(stderr, "obx_sub: out of order in run %.*s: seq %lld after %lld\n",
                            (int)recs[i].run_len, recs[i].run_id, recs[i].seq, recs[i - 1].seq);
                disorder++;
            }
        /* Lost / duplicated / unexpected: merge by id. */
        qsort(recs, nrec, sizeof *recs, cmp_id);
        size_t j = 0;
        for (int i = 0; i < n; i++) {
            long long id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
            while (j < nrec && recs[j].id < id) { unexpected++; j++; }
            long seen = 0;
            while (j < nrec && recs[j].id == id) { seen++; j++; }
            if (seen == 0) {
                if (lost < 5) fprintf(stderr, "obx_sub: lost id %lld\n", id);
                lost++;
            }
            if (seen > 1) dups += seen - 1;
        }
        unexpected += (long)(nrec - j);
        PQclear(res);
        PQfinish(pg);
    }
    printf("received=%zu expected=%ld lost=%ld duplicates=%ld out_of_order=%ld unexpected=%ld "
           "reconnects=%ld latency_ms p50=%.2f p99=%.2f p999=%.2f max=%.2f\n",
           nrec, expected, lost, dups, disorder, unexpected, reconnects < 0 ? 0 : reconnects,
           hist_quantile(&h, 0.5) / 1e3, hist_quantile(&h, 0.99) / 1e3, hist_quantile(&h, 0.999) / 1e3,
           h.max_us / 1e3);
    for (size_t i = 0; i < nrec; i++) free(recs[i].run_id);
    free(recs);
    return check && (lost || dups || disorder || unexpected) ? 1 : 0;
}
