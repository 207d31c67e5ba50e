/* Small database-side helpers for bench/run.sh (loopback benchmark use only).
 *
 *   bench_tool wait-drained --since EPOCH_S [--timeout S]
 *       Waits until no row of run_outbox is unpublished and prints
 *       "drained seconds=S" (S = now - EPOCH_S, wall clock) or exits 1 on timeout.
 *       It polls the primary key of the highest id every 5 ms (cheap: the relays
 *       work in id order and mark a batch in one statement), then confirms with a
 *       full check so a skipped row cannot end the wait early.
 * DATABASE_URL names the database. It works on every schema version (it reads only
 * id and published_at). */
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

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_tool wait-drained [options]\n");
        return 2;
    }
    const char *cmd = argv[1];
    double since = wall(), timeout = 120;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--since")) since = atof(v);
        else if (!strcmp(k, "--timeout")) timeout = atof(v);
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
    else {
        fprintf(stderr, "bench_tool: unknown command %s\n", cmd);
        rc = 2;
    }
    PQfinish(c);
    return rc;
}
