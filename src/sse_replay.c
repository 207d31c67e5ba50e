/* The gateway's PostgreSQL reader. Every connect and statement has a deadline; a lost
 * connection is reconnected with backoff and the read in flight goes back to the
 * front of the queue. */
#include "sse_replay.h"

#include "clock.h"
#include "log.h"
#include "store_pg.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pg_state { PG_DOWN, PG_CONNECTING, PG_IDLE, PG_BUSY };
/* What the statement in flight is: a job's read, or the revocation watch's. */
enum pg_op { OP_READ, OP_LISTEN, OP_REVOCATIONS };

static struct {
    struct event_base *base;
    const config *cfg;
    replay_handlers h;
    PGconn *pg;
    enum pg_state state;
    struct event *ev;
    struct event *timer;
    replay_job *current;
    PGresult *result; /* the statement's last result while more may come */
    replay_job *q_head, *q_tail;
    long backoff_ms;
    unsigned long long reads;
    enum pg_op op;
    void (*revocations)(const auth_revocation *rows, int n);
    bool want_listen, want_revocations;
} rp;

static void pg_kick(void);
static void pg_watch(short what);
static void control_done(PGresult *res);

static void pg_fail(const char *what)
{
    log_warn("postgresql (gateway): %s: %s", what, rp.pg ? PQerrorMessage(rp.pg) : "no connection");
    replay_job *j = rp.current;
    if (j) {
        /* Read again first once the connection is back. */
        rp.current = NULL;
        j->busy = false;
        j->queued = true;
        j->next = rp.q_head;
        rp.q_head = j;
        if (!rp.q_tail)
            rp.q_tail = j;
    }
    if (rp.ev) {
        event_free(rp.ev);
        rp.ev = NULL;
    }
    PQclear(rp.result);
    rp.result = NULL;
    if (rp.pg)
        PQfinish(rp.pg);
    rp.pg = NULL;
    rp.state = PG_DOWN;
    struct timeval tv = clock_tv_ms(clock_backoff(&rp.backoff_ms));
    evtimer_add(rp.timer, &tv);
}

/* Hands a read's rows (seq, payload, window, newest) to the job's owner. */
static void deliver(replay_job *j, PGresult *res)
{
    long long newest = PQntuples(res) ? strtoll(PQgetvalue(res, 0, 3), NULL, 10) : 0;
    int n = PQntuples(res) && !PQgetisnull(res, 0, 0) ? PQntuples(res) : 0;
    long long window = n ? strtoll(PQgetvalue(res, 0, 2), NULL, 10) : 0;
    bool end = n == 0 || (n == window && n < STORE_REPLAY_ROWS);
    replay_row *rows = calloc((size_t)(n ? n : 1), sizeof *rows);
    if (!rows) {
        rp.h.failed(j);
        return;
    }
    for (int i = 0; i < n; i++) {
        rows[i].seq = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        rows[i].data = PQgetvalue(res, i, 1);
        rows[i].len = (size_t)PQgetlength(res, i, 1);
    }
    rp.h.done(j, rows, n, end, newest);
    free(rows);
}

static void on_pg_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)arg;
    if (rp.state == PG_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(rp.pg);
        if (st == PGRES_POLLING_FAILED) {
            pg_fail("connect");
            return;
        }
        if (st == PGRES_POLLING_OK) {
            if (PQsetnonblocking(rp.pg, 1) != 0) {
                pg_fail("connect");
                return;
            }
            evtimer_del(rp.timer);
            rp.state = PG_IDLE;
            rp.backoff_ms = 0;
            log_info("postgresql (gateway): connected");
            /* Notifications sent while we were away are lost: read the list again. */
            rp.want_listen = rp.want_revocations = rp.revocations != NULL;
            pg_watch(EV_READ);
            pg_kick();
            return;
        }
        pg_watch(st == PGRES_POLLING_READING ? EV_READ : EV_WRITE);
        return;
    }
    if (what & EV_WRITE) {
        int f = PQflush(rp.pg);
        if (f < 0) {
            pg_fail("send");
            return;
        }
        pg_watch(f == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
    if (!(what & EV_READ))
        return;
    if (!PQconsumeInput(rp.pg)) {
        pg_fail("read");
        return;
    }
    PGnotify *nt;
    while ((nt = PQnotifies(rp.pg)) != NULL) {
        if (rp.revocations && !strcmp(nt->relname, STORE_REVOKE_CHANNEL))
            rp.want_revocations = true;
        PQfreemem(nt);
    }
    if (rp.state != PG_BUSY) {
        pg_kick();
        return;
    }
    /* Collect results without ever blocking: PQgetResult only when not busy. */
    PGresult *res;
    for (;;) {
        if (PQisBusy(rp.pg))
            return;
        if (!(res = PQgetResult(rp.pg)))
            break;
        PQclear(rp.result);
        rp.result = res;
    }
    PGresult *last = rp.result;
    rp.result = NULL;
    evtimer_del(rp.timer);
    if (rp.op != OP_READ) {
        rp.state = PG_IDLE;
        control_done(last);
        PQclear(last);
        if (PQstatus(rp.pg) != CONNECTION_OK)
            pg_fail("connection");
        else
            pg_kick();
        return;
    }
    replay_job *j = rp.current;
    rp.current = NULL;
    rp.state = PG_IDLE;
    if (j)
        j->busy = false;
    if (!last || PQresultStatus(last) != PGRES_TUPLES_OK) {
        log_warn("postgresql (gateway): replay: %s", last ? PQresultErrorMessage(last) : "no result");
        PQclear(last);
        if (j)
            rp.h.failed(j);
        if (PQstatus(rp.pg) != CONNECTION_OK)
            pg_fail("connection");
        pg_kick();
        return;
    }
    if (j)
        deliver(j, last);
    PQclear(last);
    pg_kick();
}

static void pg_watch(short what)
{
    if (rp.ev)
        event_free(rp.ev);
    rp.ev = event_new(rp.base, PQsocket(rp.pg), what | EV_PERSIST, on_pg_io, NULL);
    if (rp.ev)
        event_add(rp.ev, NULL);
}

static void pg_connect(void)
{
    const char *keys[8], *vals[8];
    char timeout_s[24];
    store_conn_params(rp.cfg->database_url, "outboxd-sse", rp.cfg->pg_timeout_ms, keys, vals, timeout_s);
    rp.pg = PQconnectStartParams(keys, vals, 1);
    if (!rp.pg || PQstatus(rp.pg) == CONNECTION_BAD) {
        pg_fail("connect");
        return;
    }
    rp.state = PG_CONNECTING;
    struct timeval tv = clock_tv_ms(rp.cfg->pg_timeout_ms);
    evtimer_add(rp.timer, &tv);
    pg_watch(EV_WRITE);
}

/* One timer: reconnect backoff, and the deadline of a connect or a read. */
static void on_pg_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (rp.state == PG_DOWN)
        pg_connect();
    else
        pg_fail("timed out");
}

/* The revocation watch's statements: LISTEN, then the list of revocations in force. */
static void control_done(PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        /* No table (the schema is older than this binary) or another error: say so;
         * the list is read again after the next reconnect or notification. */
        log_error("postgresql (gateway): %s: %s", rp.op == OP_LISTEN ? "listen for revocations" : "read revocations",
                  res ? PQresultErrorMessage(res) : "no result");
        return;
    }
    if (rp.op != OP_REVOCATIONS)
        return;
    int n = PQntuples(res);
    auth_revocation *rows = calloc((size_t)(n ? n : 1), sizeof *rows);
    if (!rows) {
        log_error("postgresql (gateway): out of memory reading %d revocations", n);
        rp.want_revocations = true;
        return;
    }
    for (int i = 0; i < n; i++) {
        rows[i].is_sub = PQgetvalue(res, i, 0)[0] == 't';
        rows[i].value = PQgetvalue(res, i, 1);
        rows[i].len = (size_t)PQgetlength(res, i, 1);
        rows[i].until = strtoll(PQgetvalue(res, i, 2), NULL, 10);
    }
    rp.revocations(rows, n);
    free(rows);
}

/* Sends one statement on the idle connection; false if the connection failed. */
static bool pg_send(enum pg_op op, const char *sql, int n, const char *const *params)
{
    rp.op = op;
    if (!PQsendQueryParams(rp.pg, sql, n, NULL, params, NULL, NULL, 0)) {
        pg_fail("send"); /* puts a job in flight back at the front of the queue */
        return false;
    }
    rp.state = PG_BUSY;
    struct timeval tv = clock_tv_ms(rp.cfg->pg_timeout_ms);
    evtimer_add(rp.timer, &tv);
    int f = PQflush(rp.pg);
    if (f < 0) {
        pg_fail("send");
        return false;
    }
    pg_watch(f == 1 ? EV_READ | EV_WRITE : EV_READ);
    return true;
}

/* Starts the next statement if the connection is idle: the revocation watch's
 * first, then the queued reads. */
static void pg_kick(void)
{
    if (rp.state == PG_IDLE && rp.want_listen) {
        rp.want_listen = false;
        if (!pg_send(OP_LISTEN, "LISTEN " STORE_REVOKE_CHANNEL, 0, NULL))
            return;
    }
    if (rp.state == PG_IDLE && rp.want_revocations) {
        rp.want_revocations = false;
        if (!pg_send(OP_REVOCATIONS, store_revocations_sql, 0, NULL))
            return;
    }
    while (rp.state == PG_IDLE && rp.q_head) {
        replay_job *j = rp.q_head;
        rp.q_head = j->next;
        if (!rp.q_head)
            rp.q_tail = NULL;
        j->queued = false;
        const char *run_id;
        long long from;
        if (!rp.h.start(j, &run_id, &from))
            continue; /* j may be gone */
        char fs[24];
        snprintf(fs, sizeof fs, "%lld", from);
        const char *params[] = {run_id, fs};
        j->busy = true;
        j->from = from;
        rp.current = j;
        if (!pg_send(OP_READ, store_replay_sql, 2, params))
            return;
        rp.reads++;
    }
}

void replay_queue(replay_job *j)
{
    if (j->queued || j->busy)
        return;
    j->queued = true;
    j->next = NULL;
    if (rp.q_tail)
        rp.q_tail->next = j;
    else
        rp.q_head = j;
    rp.q_tail = j;
    pg_kick();
}

bool replay_up(void)
{
    return rp.state == PG_IDLE || rp.state == PG_BUSY;
}

unsigned long long replay_count(void)
{
    return rp.reads;
}

void replay_watch_revocations(void (*cb)(const auth_revocation *rows, int n))
{
    rp.revocations = cb;
    rp.want_listen = rp.want_revocations = true;
    pg_kick();
}

bool replay_start(struct event_base *base, const config *cfg, const replay_handlers *handlers)
{
    memset(&rp, 0, sizeof rp);
    rp.base = base;
    rp.cfg = cfg;
    rp.h = *handlers;
    rp.timer = evtimer_new(base, on_pg_timer, NULL);
    if (!rp.timer)
        return false;
    pg_connect();
    return true;
}

void replay_stop(void)
{
    if (rp.ev)
        event_free(rp.ev);
    PQclear(rp.result);
    if (rp.pg)
        PQfinish(rp.pg);
    if (rp.timer)
        event_free(rp.timer);
    memset(&rp, 0, sizeof rp);
}
