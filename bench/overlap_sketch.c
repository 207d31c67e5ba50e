/* Benchmark experiment, not a relay: how fast outboxd's drain could go if the
 * PostgreSQL work of neighbouring batches ran while Redis works on the current one.
 * Same fetch SQL (plus an exclusion of the batch in flight), same mark SQL, same Lua
 * script (copied from src/redis_sink.c) and message as outboxd, fixed batches of
 * --batch events; no failure handling, no leader lock, no held runs: it exits on the
 * first unexpected reply. bench/run.sh runs it on a pre-filled outbox.
 *   loop: send to PostgreSQL in one pipeline (libpq pipeline mode, two syncs):
 *           UPDATE ... published_at of batch k-1;
 *           SELECT batch k+1, excluding batch k's ids (hashed NOT IN);
 *         publish batch k to Redis (pipelined EVALSHA), read the replies;
 *         read the two PostgreSQL results.
 * Usage: overlap_sketch --redis-port P [--batch N]   (DATABASE_URL names the database)
 * Prints "overlap published=N seconds=S rate=R/s". */
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* outboxd's own publish script (src/redis_sink.c, linked in by bench/run.sh). */
extern const char redis_sink_publish_script[];
#define script redis_sink_publish_script

#define FETCH                                                                                  \
    "SELECT id, run_id, seq,"                                                                  \
    " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"            \
    " payload::text, extract(epoch FROM created_at)::float8"                                   \
    " FROM run_outbox WHERE published_at IS NULL AND id NOT IN (SELECT unnest($2::bigint[]))" \
    " ORDER BY id LIMIT $1::int"
#define MARK "UPDATE run_outbox SET published_at = now() WHERE id = ANY($1::bigint[]) AND published_at IS NULL"

static double wall(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec + tv.tv_usec / 1e6;
}

static void ids_of(PGresult *r, char **arr, size_t *cap)
{
    int n = r ? PQntuples(r) : 0;
    size_t len = 0;
    if (*cap < (size_t)n * 24 + 8) {
        *cap = (size_t)n * 24 + 8;
        *arr = realloc(*arr, *cap);
    }
    (*arr)[len++] = '{';
    for (int i = 0; i < n; i++)
        len += (size_t)sprintf(*arr + len, i ? ",%s" : "%s", PQgetvalue(r, i, 0));
    (*arr)[len++] = '}';
    (*arr)[len] = 0;
}

static PGresult *take(PGconn *c, ExecStatusType want)
{
    PGresult *r = PQgetResult(c), *x;
    if (PQresultStatus(r) != want) {
        fprintf(stderr, "overlap: %s", PQerrorMessage(c));
        exit(1);
    }
    while ((x = PQgetResult(c)) != NULL) /* end of this query */
        PQclear(x);
    x = PQgetResult(c); /* the sync */
    if (PQresultStatus(x) != PGRES_PIPELINE_SYNC) {
        fprintf(stderr, "overlap: expected sync, got %s\n", PQresStatus(PQresultStatus(x)));
        exit(1);
    }
    PQclear(x);
    return r;
}

int main(int argc, char **argv)
{
    int port = 6379;
    const char *batch = "2000";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--redis-port")) port = atoi(argv[i + 1]);
        if (!strcmp(argv[i], "--batch")) batch = argv[i + 1];
    }
    PGconn *pg = PQconnectdb(getenv("DATABASE_URL"));
    if (PQstatus(pg) != CONNECTION_OK) return 1;
    redisContext *rd = redisConnect("127.0.0.1", port);
    redisReply *rep = redisCommand(rd, "SCRIPT LOAD %s", script);
    char sha[41];
    snprintf(sha, sizeof sha, "%s", rep->str);
    freeReplyObject(rep);
    PQenterPipelineMode(pg);
    char *prev = NULL, *cur = NULL;
    size_t pcap = 0, ccap = 0;
    ids_of(NULL, &prev, &pcap);
    ids_of(NULL, &cur, &ccap);
    double t0 = wall();
    const char *fp[] = {batch, cur};
    PQsendQueryParams(pg, FETCH, 2, NULL, fp, NULL, NULL, 0);
    PQpipelineSync(pg);
    PGresult *b = take(pg, PGRES_TUPLES_OK);
    long total = 0;
    char *msg = malloc(1 << 20);
    const char **seen = calloc(8192, sizeof *seen);
    while (PQntuples(b) > 0) {
        int n = PQntuples(b);
        ids_of(b, &cur, &ccap);
        /* PG: mark k-1, fetch k+1 (without k's ids). */
        int have_prev = strcmp(prev, "{}") != 0;
        if (have_prev) {
            const char *mp[] = {prev};
            PQsendQueryParams(pg, MARK, 1, NULL, mp, NULL, NULL, 0);
            PQpipelineSync(pg);
        }
        const char *np[] = {batch, cur};
        PQsendQueryParams(pg, FETCH, 2, NULL, np, NULL, NULL, 0);
        PQpipelineSync(pg);
        PQflush(pg);
        /* Redis: publish k. */
        memset(seen, 0, 8192 * sizeof *seen);
        for (int i = 0; i < n; i++) {
            const char *run = PQgetvalue(b, i, 1);
            unsigned h = 5381;
            for (const char *p = run; *p; p++) h = h * 33 + (unsigned char)*p;
            int chained = 0;
            for (unsigned k = h & 8191;; k = (k + 1) & 8191) {
                if (!seen[k]) { seen[k] = run; break; }
                if (!strcmp(seen[k], run)) { chained = 1; break; }
            }
            size_t m = (size_t)sprintf(msg, "{\"id\":%s,\"run_id\":\"%s\",\"seq\":%s,\"created_at\":\"%s\",\"payload\":%s}",
                                       PQgetvalue(b, i, 0), run, PQgetvalue(b, i, 2), PQgetvalue(b, i, 3),
                                       PQgetvalue(b, i, 4));
            char key[300], chan[300];
            snprintf(key, sizeof key, "outboxd:bench:mark:%s", run);
            snprintf(chan, sizeof chan, "run:%s", run);
            const char *av[] = {"EVALSHA", sha, "1", key, chan, PQgetvalue(b, i, 0), PQgetvalue(b, i, 2), msg,
                                "86400000", chained ? "1" : "0"};
            size_t al[] = {7, 40, 1, strlen(key), strlen(chan), strlen(av[5]), strlen(av[6]), m, 8, 1};
            redisAppendCommandArgv(rd, 10, av, al);
        }
        for (int i = 0; i < n; i++) {
            redisReply *r;
            if (redisGetReply(rd, (void **)&r) != REDIS_OK || r->type != REDIS_REPLY_INTEGER || r->integer != 1) {
                fprintf(stderr, "overlap: publish reply not 1\n");
                return 1;
            }
            freeReplyObject(r);
        }
        total += n;
        /* PG results. */
        if (have_prev) PQclear(take(pg, PGRES_COMMAND_OK));
        PGresult *next = take(pg, PGRES_TUPLES_OK);
        PQclear(b);
        b = next;
        char *t = prev; prev = cur; cur = t;
        size_t tc = pcap; pcap = ccap; ccap = tc;
    }
    if (strcmp(prev, "{}")) {
        const char *mp[] = {prev};
        PQsendQueryParams(pg, MARK, 1, NULL, mp, NULL, NULL, 0);
        PQpipelineSync(pg);
        PQclear(take(pg, PGRES_COMMAND_OK));
    }
    double took = wall() - t0;
    printf("overlap published=%ld seconds=%.3f rate=%.0f/s\n", total, took, total / took);
    return 0;
}
