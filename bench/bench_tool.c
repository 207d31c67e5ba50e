/* Small database-side helpers for bench/run.sh (loopback benchmark use only).
 *
 *   bench_tool wait-drained --since EPOCH_S [--timeout S]
 *       Waits until no row of run_outbox is unpublished and prints
 *       "drained seconds=S" (S = now - EPOCH_S, wall clock) or exits 1 on timeout.
 *       It polls the primary key of the highest id every 5 ms (cheap: the relays
 *       work in id order and mark a batch in one statement), then confirms with a
 *       full check so a skipped row cannot end the wait early.
 *   bench_tool ceiling [--batch N] [--timeout S]
 *       The database's own ceiling: one statement claims and marks N rows at a time
 *       (CTE + UPDATE ... RETURNING the columns a relay needs), until none is left.
 *       No Redis. Prints "ceiling rows=N seconds=S rate=R/s".
 *   bench_tool sql-only [--batch N] [--timeout S]
 *       outboxd's two statements per batch, through the relay's own store_fetch and
 *       store_mark_published (linked from store_pg.o), with no Redis in between:
 *       what the relay's SQL alone costs.
 *       Prints "sql-only rows=N seconds=S rate=R/s".
 * DATABASE_URL names the database. */
#include "store_pg.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double wall(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static PGresult *q(PGconn *c, const char *sql, int n, const char *const *params, ExecStatusType want)
{
    PGresult *r = n ? PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
    if (PQresultStatus(r) != want) {
        fprintf(stderr, "bench_tool: %.60s...: %s", sql, PQerrorMessage(c));
        exit(1);
    }
    return r;
}

static int wait_drained(PGconn *c, double since, double timeout)
{
    PGresult *r = q(c, "SELECT coalesce(max(id), 0) FROM run_outbox", 0, NULL, PGRES_TUPLES_OK);
    char maxid[32];
    snprintf(maxid, sizeof maxid, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *params[] = {maxid};
    double start = wall();
    for (;;) {
        r = q(c, "SELECT published_at IS NOT NULL FROM run_outbox WHERE id = $1::bigint", 1, params,
              PGRES_TUPLES_OK);
        int last_done = PQntuples(r) == 0 || PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (last_done) {
            double t = wall();
            r = q(c, "SELECT NOT EXISTS (SELECT 1 FROM run_outbox WHERE published_at IS NULL)", 0, NULL,
                  PGRES_TUPLES_OK);
            int all = PQgetvalue(r, 0, 0)[0] == 't';
            PQclear(r);
            if (all) {
                printf("drained seconds=%.3f\n", t - since);
                return 0;
            }
        }
        if (wall() - start > timeout) {
            r = q(c, "SELECT count(*) FROM run_outbox WHERE published_at IS NULL", 0, NULL, PGRES_TUPLES_OK);
            printf("timeout seconds=%.3f left=%s\n", wall() - since, PQgetvalue(r, 0, 0));
            PQclear(r);
            return 1;
        }
        usleep(last_done ? 20000 : 5000);
    }
}

static int ceiling(PGconn *c, long batch, double timeout)
{
    char b[24];
    snprintf(b, sizeof b, "%ld", batch);
    const char *params[] = {b};
    long rows = 0;
    double t0 = wall();
    for (;;) {
        PGresult *r = q(c,
                        "WITH c AS (SELECT id FROM run_outbox WHERE published_at IS NULL ORDER BY id"
                        " LIMIT $1::int)"
                        " UPDATE run_outbox r SET published_at = now() FROM c WHERE r.id = c.id"
                        " RETURNING r.id, r.run_id, r.seq, r.payload",
                        1, params, PGRES_TUPLES_OK);
        int n = PQntuples(r);
        PQclear(r);
        rows += n;
        if (n == 0 || wall() - t0 > timeout)
            break;
    }
    double took = wall() - t0;
    printf("ceiling rows=%ld seconds=%.3f rate=%.0f/s\n", rows, took, rows / took);
    return 0;
}

static int sql_only(const char *url, long batch_size, double timeout)
{
    /* The relay's own statements: store_fetch and store_mark_published (src/store_pg.c,
     * linked in by bench/run.sh), with no Redis in between. */
    store *s = store_new(url, "bench-sql-only", 60000);
    if (!s || !store_connect(s)) {
        fprintf(stderr, "bench_tool: %s\n", s ? store_errstr(s) : "out of memory");
        store_free(s);
        return 1;
    }
    batch b;
    batch_init(&b);
    long long *ids = malloc((size_t)batch_size * sizeof *ids);
    long rows = 0;
    int rc = 0;
    double t0 = wall();
    for (;;) {
        if (!store_fetch(s, batch_size, NULL, NULL, 0, &b)) {
            fprintf(stderr, "bench_tool: %s\n", store_errstr(s));
            rc = 1;
            break;
        }
        if (b.n == 0)
            break;
        for (size_t i = 0; i < b.n; i++)
            ids[i] = b.ev[i].id;
        if (!store_mark_published(s, ids, b.n)) {
            fprintf(stderr, "bench_tool: %s\n", store_errstr(s));
            rc = 1;
            break;
        }
        rows += (long)b.n;
        if (wall() - t0 > timeout)
            break;
    }
    double took = wall() - t0;
    if (rc == 0)
        printf("sql-only rows=%ld seconds=%.3f rate=%.0f/s\n", rows, took, rows / took);
    batch_free(&b);
    free(ids);
    store_free(s);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_tool wait-drained|ceiling|sql-only [options]\n");
        return 2;
    }
    const char *cmd = argv[1];
    double since = wall(), timeout = 120;
    long batch = 1000;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--since")) since = atof(v);
        else if (!strcmp(k, "--timeout")) timeout = atof(v);
        else if (!strcmp(k, "--batch")) batch = atol(v);
        else {
            fprintf(stderr, "bench_tool: unknown option %s\n", k);
            return 2;
        }
    }
    const char *url = getenv("DATABASE_URL");
    PGconn *c = PQconnectdb(url ? url : "");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "bench_tool: connect: %s", PQerrorMessage(c));
        return 1;
    }
    int rc;
    if (!strcmp(cmd, "wait-drained")) rc = wait_drained(c, since, timeout);
    else if (!strcmp(cmd, "ceiling")) rc = ceiling(c, batch, timeout);
    else if (!strcmp(cmd, "sql-only")) rc = sql_only(url ? url : "", batch, timeout);
    else {
        fprintf(stderr, "bench_tool: unknown command %s\n", cmd);
        rc = 2;
    }
    PQfinish(c);
    return rc;
}
