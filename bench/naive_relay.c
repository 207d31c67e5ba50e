/* Baseline for the benchmark: the naive "seed" relay loop, as the issue describes it.
 *
 *   loop:
 *     SELECT id, run_id, seq, created_at, payload FROM run_outbox
 *       WHERE published_at IS NULL ORDER BY id LIMIT 100
 *     for each row: PUBLISH run:{run_id} <message>
 *                   UPDATE run_outbox SET published_at = now() WHERE id = $1   (autocommit)
 *     sleep --sleep-ms (200 in the seed; 0 for the "no sleep" baseline)
 *
 * No de-duplication script, no pipelining, no batching of the UPDATE: one Redis round
 * trip and one committed transaction per event. It stops when a poll returns no row
 * or when --max-seconds have passed, and prints
 *   naive published=N seconds=S rate=R/s
 * Usage: naive_relay --db URL --redis-host H --redis-port P [--sleep-ms MS] [--max-seconds S]
 * Loopback benchmark tool only: it trusts its input and exits on the first error. */
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die_pg(PGconn *c, const char *what)
{
    fprintf(stderr, "naive_relay: %s: %s", what, PQerrorMessage(c));
    exit(1);
}

/* Appends s as a JSON string body (the run ids used here are plain, but be correct). */
static size_t json_str(char *o, const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            o[n++] = '\\';
            o[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)sprintf(o + n, "\\u%04x", ch);
        } else {
            o[n++] = (char)ch;
        }
    }
    return n;
}

int main(int argc, char **argv)
{
    const char *db = getenv("DATABASE_URL"), *host = "127.0.0.1";
    int port = 6379;
    long sleep_ms = 200;
    double max_seconds = 60;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--db")) db = v;
        else if (!strcmp(k, "--redis-host")) host = v;
        else if (!strcmp(k, "--redis-port")) port = atoi(v);
        else if (!strcmp(k, "--sleep-ms")) sleep_ms = atol(v);
        else if (!strcmp(k, "--max-seconds")) max_seconds = atof(v);
        else {
            fprintf(stderr, "naive_relay: unknown option %s\n", k);
            return 2;
        }
    }
    if (!db) {
        fprintf(stderr, "naive_relay: need --db or DATABASE_URL\n");
        return 2;
    }
    PGconn *pg = PQconnectdb(db);
    if (PQstatus(pg) != CONNECTION_OK)
        die_pg(pg, "connect");
    redisContext *rd = redisConnect(host, port);
    if (!rd || rd->err) {
        fprintf(stderr, "naive_relay: redis connect: %s\n", rd ? rd->errstr : "oom");
        return 1;
    }
    size_t cap = 1 << 16;
    char *msg = malloc(cap);
    long published = 0;
    double t0 = mono();
    for (;;) {
        if (mono() - t0 >= max_seconds)
            break;
        PGresult *r = PQexec(pg, "SELECT id, run_id, seq, created_at, payload FROM run_outbox"
                                 " WHERE published_at IS NULL ORDER BY id LIMIT 100");
        if (PQresultStatus(r) != PGRES_TUPLES_OK)
            die_pg(pg, "select");
        int n = PQntuples(r);
        if (n == 0) {
            PQclear(r);
            break;
        }
        for (int i = 0; i < n && mono() - t0 < max_seconds; i++) {
            const char *id = PQgetvalue(r, i, 0), *run = PQgetvalue(r, i, 1), *seq = PQgetvalue(r, i, 2),
                       *created = PQgetvalue(r, i, 3), *payload = PQgetvalue(r, i, 4);
            size_t need = 2 * strlen(run) * 6 + strlen(payload) + strlen(created) + 128;
            if (need > cap) {
                cap = need;
                msg = realloc(msg, cap);
            }
            size_t m = (size_t)sprintf(msg, "{\"id\":%s,\"run_id\":\"", id);
            m += json_str(msg + m, run);
            m += (size_t)sprintf(msg + m, "\",\"seq\":%s,\"created_at\":\"%s\",\"payload\":%s}", seq, created,
                                 payload);
            redisReply *rep = redisCommand(rd, "PUBLISH run:%s %b", run, msg, m);
            if (!rep) {
                fprintf(stderr, "naive_relay: publish: %s\n", rd->errstr);
                return 1;
            }
            freeReplyObject(rep);
            const char *params[] = {id};
            PGresult *u = PQexecParams(pg, "UPDATE run_outbox SET published_at = now() WHERE id = $1", 1,
                                       NULL, params, NULL, NULL, 0);
            if (PQresultStatus(u) != PGRES_COMMAND_OK)
                die_pg(pg, "update");
            PQclear(u);
            published++;
        }
        PQclear(r);
        if (sleep_ms > 0)
            usleep((useconds_t)sleep_ms * 1000);
    }
    double took = mono() - t0;
    printf("naive published=%ld seconds=%.3f rate=%.0f/s\n", published, took, published / took);
    free(msg);
    redisFree(rd);
    PQfinish(pg);
    return 0;
}
