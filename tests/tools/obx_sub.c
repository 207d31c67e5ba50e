/* Checking subscriber for tests and benchmarks. PSUBSCRIBEs to run:* on one Redis, or
 * on several nodes at once (--nodes: a primary and its replicas, which all deliver
 * what the primary publishes), reconnecting and re-subscribing when a node goes away;
 * records every message with its arrival time and node, and with --check compares
 * what arrived against run_outbox: lost (on no node), duplicated (twice on one node),
 * out of order (per node and run, a first arrival below a seq that came before),
 * unexpected (not in the table, e.g. a rolled-back event). With several nodes (list
 * the primary first) it also reports "republished": events that arrived on a later
 * node more than 500 ms after an earlier node delivered them, i.e. published again
 * on a new primary after a failover (a replica's copy comes within milliseconds),
 * which a subscriber that follows the primary sees twice. Latency = first arrival - payload
 * "t" (insert time). Connections go through outboxd's own Redis layer, so TLS works.
 * --sharded N: sharded Pub/Sub (a Redis Cluster): SSUBSCRIBEs PREFIX-0 .. PREFIX-(N-1)
 * on every node of --nodes (list them all, primaries and replicas: a node answers
 * MOVED for the slots of other shards, ignored, and delivers those of its own), and
 * subscribes a channel again on every node when a node ends its subscription (its
 * slot moved, it was demoted).
 * --repeats-ok: duplicates are reported but do not fail the check; for a test that
 * compares them with the relay's own count (a Redis that lost its marks).
 *   obx_sub [--host H] [--port P] [--nodes H:P,H:P...] [--user U] [--password PW]
 *           [--tls-ca F [--tls-cert F --tls-key F] [--tls-server-name N]]
 *           [--pattern run:*] [--prefix P] [--expect N] [--idle-ms MS] [--max-seconds S]
 *           [--ready-file F] [--check] [--repeats-ok] [--sharded N]
 * SIGUSR1 tells it that everything it waits for has been published (the test saw the
 * outbox drained): it then ends at its first FINISH_QUIET_MS without a message, instead
 * of waiting out --idle-ms. SIGTERM ends it at once.
 * Exits 0 when the check passes (or was not asked for), 1 when it fails. */
#include "obx_common.h"
#include "metrics.h"
#include "redis_conn.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_NODES 8

static const char *prefix = "";
static long sharded;
#define REPUBLISHED_GAP_US 500000

typedef struct rec {
    char *run_id;
    size_t run_len;
    long long id, seq, t, recv, arrival;
    int node;
} rec;

static rec *recs;
static size_t nrec, caprec;
#define FINISH_QUIET_MS 500

static volatile sig_atomic_t stop, finish;
static void on_signal(int s) { (void)s; stop = 1; }
static void on_finish(int s) { (void)s; finish = 1; }

static rconn *subscribe(const redis_addr *a, const redis_tls *tls, const char *user, const char *pw,
                        const char *pattern)
{
    char err[512];
    rconn *c = rconn_connect(a->host, a->port, tls, 1000, err, sizeof err);
    if (!c)
        return NULL;
    redisReply *r;
    if (pw && *pw) {
        /* A server without a password refuses AUTH: carry on, PSUBSCRIBE tells. */
        const char *argv[] = {"AUTH", user ? user : "", pw};
        r = user ? rconn_command(c, 3, argv, NULL) : rconn_command(c, 2, (const char *[]){"AUTH", pw}, NULL);
        if (r) freeReplyObject(r);
        if (rconn_broken(c)) { rconn_free(c); return NULL; }
    }
    if (sharded) {
        /* Confirmations and refusals (MOVED: another shard's) come in the main loop. */
        for (long i = 0; i < sharded; i++) {
            char ch[160];
            snprintf(ch, sizeof ch, "run:%s-%ld", prefix, i);
            if (!rconn_append(c, 2, (const char *[]){"SSUBSCRIBE", ch}, NULL)) {
                rconn_free(c);
                return NULL;
            }
        }
        if (!rconn_flush(c)) {
            rconn_free(c);
            return NULL;
        }
        return c;
    }
    r = rconn_command(c, 2, (const char *[]){"PSUBSCRIBE", pattern}, NULL);
    bool ok = r && r->type == REDIS_REPLY_ARRAY;
    if (r) freeReplyObject(r);
    if (!ok) { rconn_free(c); return NULL; }
    return c;
}

static int cmp_id(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    if (x->node != y->node) return x->node < y->node ? -1 : 1;
    return x->arrival < y->arrival ? -1 : x->arrival > y->arrival;
}

static int cmp_run_arrival(const void *a, const void *b)
{
    const rec *x = a, *y = b;
    if (x->node != y->node) return x->node < y->node ? -1 : 1;
    size_t n = x->run_len < y->run_len ? x->run_len : y->run_len;
    int c = memcmp(x->run_id, y->run_id, n);
    if (c == 0 && x->run_len != y->run_len) c = x->run_len < y->run_len ? -1 : 1;
    if (c == 0) c = x->arrival < y->arrival ? -1 : x->arrival > y->arrival;
    return c;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *user = NULL, *pw = NULL, *pattern = "run:*", *ready = NULL;
    const char *nodes_arg = NULL, *ca = NULL, *cert = NULL, *key = NULL, *server_name = NULL;
    int port = 6379;
    long expect = 0, idle_ms = 0;
    double max_seconds = 60;
    bool check = false, tls_on = false, repeats_ok = false;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(k, "--check")) { check = true; continue; }
        if (!strcmp(k, "--tls")) { tls_on = true; continue; }
        if (!strcmp(k, "--repeats-ok")) { repeats_ok = true; continue; }
        i++;
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--nodes")) nodes_arg = v;
        else if (!strcmp(k, "--user")) user = v;
        else if (!strcmp(k, "--password")) pw = v;
        else if (!strcmp(k, "--tls-ca")) { ca = v; tls_on = true; }
        else if (!strcmp(k, "--tls-cert")) cert = v;
        else if (!strcmp(k, "--tls-key")) key = v;
        else if (!strcmp(k, "--tls-server-name")) server_name = v;
        else if (!strcmp(k, "--pattern")) pattern = v;
        else if (!strcmp(k, "--prefix")) prefix = v;
        else if (!strcmp(k, "--expect")) expect = atol(v);
        else if (!strcmp(k, "--idle-ms")) idle_ms = atol(v);
        else if (!strcmp(k, "--max-seconds")) max_seconds = atof(v);
        else if (!strcmp(k, "--ready-file")) ready = v;
        else if (!strcmp(k, "--sharded")) sharded = atol(v);
        else { fprintf(stderr, "obx_sub: unknown option %s\n", k); return 2; }
    }
    redis_addr nodes[MAX_NODES];
    int nnodes = 1;
    if (nodes_arg) {
        if (!config_parse_addrs(nodes_arg, nodes, MAX_NODES, &nnodes)) {
            fprintf(stderr, "obx_sub: bad --nodes %s\n", nodes_arg);
            return 2;
        }
    } else {
        snprintf(nodes[0].host, sizeof nodes[0].host, "%s", host);
        nodes[0].port = port;
    }
    redis_tls *tls = NULL;
    if (tls_on) {
        char err[512];
        if (!(tls = redis_tls_new(ca, cert, key, server_name, err, sizeof err))) {
            fprintf(stderr, "obx_sub: %s\n", err);
            return 2;
        }
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGUSR1, on_finish);
    signal(SIGPIPE, SIG_IGN);
    long long start = obx_now_us(), last = 0, finish_at = 0;
    long reconnects = -1;
    rconn *c[MAX_NODES] = {0};
    bool ever[MAX_NODES] = {0}, said_ready = false;
    long long retry_at[MAX_NODES] = {0};
    while (!stop) {
        long long now = obx_now_us();
        if (now - start > (long long)(max_seconds * 1e6)) break;
        if (expect && (long)nrec >= expect) break;
        if (idle_ms && last && now - last > idle_ms * 1000) break;
        if (finish && !finish_at) finish_at = now;
        if (finish_at && now - (last > finish_at ? last : finish_at) > FINISH_QUIET_MS * 1000) break;
        struct pollfd p[MAX_NODES];
        int np = 0, idx[MAX_NODES];
        bool all = true;
        for (int n = 0; n < nnodes; n++) {
            if (!c[n] && now >= retry_at[n]) {
                c[n] = subscribe(&nodes[n], tls, user, pw, pattern);
                if (c[n]) {
                    reconnects++;
                    ever[n] = true;
                } else {
                    retry_at[n] = now + 20000;
                }
            }
            all &= ever[n];
            if (!c[n])
                continue;
            for (;;) {
                redisReply *r = NULL;
                int got = rconn_reply_nowait(c[n], &r);
                if (got < 0) { rconn_free(c[n]); c[n] = NULL; break; }
                if (got == 0) break;
                bool smsg = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                            r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "smessage");
                if (sharded && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
                    r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "sunsubscribe") &&
                    r->element[1]->type == REDIS_REPLY_STRING) {
                    /* The node ended it (never asked here): subscribe on every node again. */
                    for (int o = 0; o < nnodes; o++)
                        if (c[o] && (!rconn_append(c[o], 2, (const char *[]){"SSUBSCRIBE", r->element[1]->str}, NULL) ||
                                     !rconn_flush(c[o]))) {
                            rconn_free(c[o]);
                            c[o] = NULL;
                        }
                    freeReplyObject(r);
                    if (!c[n])
                        break;
                    continue;
                }
                if (smsg || (r->type == REDIS_REPLY_ARRAY && r->elements == 4 && !strcmp(r->element[0]->str, "pmessage"))) {
                    obx_msg m = {0};
                    if (obx_parse(r->element[smsg ? 2 : 3]->str, &m) &&
                        (m.run_id_len < strlen(prefix) || memcmp(m.run_id, prefix, strlen(prefix)))) {
                        free(m.run_id); /* another test's run */
                    } else if (m.run_id) {
                        if (nrec == caprec) {
                            caprec = caprec ? caprec * 2 : 4096;
                            recs = realloc(recs, caprec * sizeof *recs);
                        }
                        last = obx_now_us();
                        recs[nrec] = (rec){m.run_id, m.run_id_len, m.id, m.seq, m.t, last, (long long)nrec, n};
                        nrec++;
                    } else {
                        fprintf(stderr, "obx_sub: not an outboxd message: %.80s\n", r->element[smsg ? 2 : 3]->str);
                    }
                }
                freeReplyObject(r);
            }
            if (c[n]) {
                p[np] = (struct pollfd){.fd = rconn_fd(c[n]), .events = POLLIN};
                idx[np++] = n;
            }
        }
        (void)idx;
        if (all && ready && !said_ready) {
            FILE *f = fopen(ready, "w");
            if (f) fclose(f);
            said_ready = true;
        }
        if (np == 0 || np < nnodes)
            poll(p, (nfds_t)np, 20);
        else
            poll(p, (nfds_t)np, 50);
    }
    for (int n = 0; n < nnodes; n++)
        rconn_free(c[n]);
    redis_tls_free(tls);

    long lost = 0, dups = 0, disorder = 0, unexpected = 0, expected = -1, republished = 0;
    histogram h;
    hist_reset(&h);
    long node_recv[MAX_NODES] = {0};
    for (size_t i = 0; i < nrec; i++)
        node_recv[recs[i].node]++;
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
        /* Order per node and run, in arrival order: a first arrival below the highest
         * seq seen before it (a repeat is a duplicate, counted below). */
        qsort(recs, nrec, sizeof *recs, cmp_run_arrival);
        long long top = 0;
        for (size_t i = 0; i < nrec; i++) {
            bool same = i > 0 && recs[i].node == recs[i - 1].node && recs[i].run_len == recs[i - 1].run_len &&
                        !memcmp(recs[i].run_id, recs[i - 1].run_id, recs[i].run_len);
            if (!same)
                top = 0;
            if (recs[i].seq < top) {
                bool repeat = false;
                for (size_t j = i; j-- > 0 && recs[j].node == recs[i].node && recs[j].run_len == recs[i].run_len &&
                                   !memcmp(recs[j].run_id, recs[i].run_id, recs[i].run_len) && !repeat;)
                    repeat = recs[j].seq == recs[i].seq;
                if (!repeat) {
                    if (disorder < 5)
                        fprintf(stderr, "obx_sub: out of order on node %d in run %.*s: seq %lld after %lld\n",
                                recs[i].node, (int)recs[i].run_len, recs[i].run_id, recs[i].seq, top);
                    disorder++;
                }
            }
            if (recs[i].seq > top)
                top = recs[i].seq;
        }
        /* Lost / duplicated / unexpected: merge by id (then node, then arrival). */
        qsort(recs, nrec, sizeof *recs, cmp_id);
        size_t j = 0;
        for (int i = 0; i < n; i++) {
            long long id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
            while (j < nrec && recs[j].id < id) { unexpected++; j++; }
            size_t first = j;
            long long lo = 0, early[MAX_NODES] = {0}; /* first arrival on each node (0: none) */
            while (j < nrec && recs[j].id == id) {
                if (j > first && recs[j].node == recs[j - 1].node) {
                    if (dups < 5)
                        fprintf(stderr, "obx_sub: id %lld twice on node %d\n", id, recs[j].node);
                    dups++;
                } else {
                    early[recs[j].node] = recs[j].recv;
                }
                lo = j == first || recs[j].recv < lo ? recs[j].recv : lo;
                j++;
            }
            if (j == first) {
                if (lost < 5) fprintf(stderr, "obx_sub: lost id %lld\n", id);
                lost++;
            } else {
                /* Published again on a later node (a new primary) well after an earlier
                 * node (the old one) delivered it: not a replica's copy. */
                bool again = false;
                for (int a = 0; a < nnodes && !again; a++)
                    for (int b = a + 1; b < nnodes && !again; b++)
                        again = early[a] && early[b] && early[b] - early[a] > REPUBLISHED_GAP_US;
                republished += again;
                if (recs[first].t > 0)
                    hist_record(&h, (double)(lo - recs[first].t));
            }
        }
        unexpected += (long)(nrec - j);
        PQclear(res);
        PQfinish(pg);
    } else {
        for (size_t i = 0; i < nrec; i++)
            if (recs[i].t > 0) hist_record(&h, (double)(recs[i].recv - recs[i].t));
    }
    printf("received=%zu expected=%ld lost=%ld duplicates=%ld out_of_order=%ld unexpected=%ld "
           "reconnects=%ld latency_ms p50=%.2f p99=%.2f p999=%.2f max=%.2f",
           nrec, expected, lost, dups, disorder, unexpected, reconnects < 0 ? 0 : reconnects,
           hist_quantile(&h, 0.5) / 1e3, hist_quantile(&h, 0.99) / 1e3, hist_quantile(&h, 0.999) / 1e3,
           h.max_us / 1e3);
    if (nnodes > 1) {
        printf(" republished=%ld", republished);
        for (int n = 0; n < nnodes; n++)
            printf(" node%d=%ld", n, node_recv[n]);
    }
    printf("\n");
    for (size_t i = 0; i < nrec; i++) free(recs[i].run_id);
    free(recs);
    return check && (lost || (dups && !repeats_ok) || disorder || unexpected) ? 1 : 0;
}
