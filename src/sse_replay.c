/* The gateway's PostgreSQL reader. Every connect and statement has a deadline; a lost
 * connection is reconnected with backoff and the read in flight goes back to the
 * front of the queue.
 *
 * With --replica-url, runs are read from a streaming standby, which may lag. A read
 * there must see every event that was committed before the read was asked for
 * (Redis may have delivered a later one already, or a stream may be waiting for it).
 * So before reading, the reader takes the primary's WAL insert position L (one cheap
 * query, shared by every read queued before it was sent) and reads from the standby
 * only once its replay position has reached L, checked before the read takes its
 * snapshot. A standby that stays behind for --replica-wait is skipped: the read goes
 * to the primary. The primary stays the source of truth; without it no read starts.
 *
 * The primary connection also carries the revocation watch (replay_watch_revocations):
 * LISTEN, and the list of revocations in force, sent between reads. */
#include "sse_replay.h"

#include "clock.h"
#include "log.h"
#include "store_pg.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RECHECK_MS 10

enum pg_state { PG_DOWN, PG_CONNECTING, PG_IDLE, PG_BUSY };

/* One connection: its own reconnect backoff and statement deadline. */
typedef struct pgc {
    const char *role; /* "primary" or "replica", for logs */
    const char *url;
    PGconn *pg;
    enum pg_state state;
    struct event *ev;
    struct event *timer;
    PGresult *result; /* the statement's last result while more may come */
    long backoff_ms;
} pgc;

/* What the job in flight waits for. */
enum phase {
    PH_NONE,
    PH_LSN,     /* the primary's WAL insert position */
    PH_CHECK,   /* the standby's replay position */
    PH_RECHECK, /* a short pause before asking the standby again */
    PH_ROWS,    /* the rows, from the primary or the standby */
};

static struct {
    struct event_base *base;
    const config *cfg;
    replay_handlers h;
    pgc primary, replica;
    bool replica_usable; /* connected, and a standby as far as we know */
    replay_job *q_head, *q_tail;
    /* the read in flight */
    replay_job *current;
    enum phase phase;
    pgc *reading; /* the connection its rows come from */
    double waited_since;
    bool replica_behind; /* a read gave up waiting for it, and it has not caught up since */
    struct event *recheck;
    /* Positions: lsn_sent counts the primary position queries sent; lsn_have is the
     * number of the last one answered, and lsn its answer. A job queued when
     * lsn_sent was k needs an answer numbered above k. replica_lsn is the standby's
     * replay position when last asked (it only grows while connected). */
    uint64_t lsn_sent, lsn_have;
    uint64_t lsn, replica_lsn;
    unsigned long long reads, replica_reads, fallbacks;
    /* the revocation watch */
    void (*revocations)(const auth_revocation *rows, int n);
    bool want_listen, want_revocations;
    enum { CTL_NONE, CTL_LISTEN, CTL_REVOCATIONS } control; /* in flight on the primary */
} rp;

static void kick(void);
static void watch(pgc *c, short what);
static void control_done(PGresult *res);

/* "X/Y" (pg_lsn as text) -> 64-bit position; false for NULL or junk. */
static bool parse_lsn(const PGresult *res, uint64_t *out)
{
    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
        return false;
    unsigned hi, lo;
    char tail;
    if (sscanf(PQgetvalue(res, 0, 0), "%X/%X%c", &hi, &lo, &tail) != 2)
        return false;
    *out = ((uint64_t)hi << 32) | lo;
    return true;
}

static void requeue_front(replay_job *j)
{
    j->busy = false;
    j->queued = true;
    j->next = rp.q_head;
    rp.q_head = j;
    if (!rp.q_tail)
        rp.q_tail = j;
}

/* The job in flight goes back to the front of the queue (a connection was lost). */
static void abandon_current(void)
{
    replay_job *j = rp.current;
    rp.current = NULL;
    rp.phase = PH_NONE;
    rp.reading = NULL;
    evtimer_del(rp.recheck);
    if (j)
        requeue_front(j);
}

static void fail(pgc *c, const char *what)
{
    log_warn("postgresql (gateway, %s): %s: %s", c->role, what,
             c->pg ? PQerrorMessage(c->pg) : "no connection");
    bool in_use = c->state == PG_BUSY || (c == &rp.replica && rp.phase == PH_RECHECK);
    if (in_use && rp.current)
        abandon_current();
    if (c->ev) {
        event_free(c->ev);
        c->ev = NULL;
    }
    PQclear(c->result);
    c->result = NULL;
    if (c->pg)
        PQfinish(c->pg);
    c->pg = NULL;
    c->state = PG_DOWN;
    if (c == &rp.replica)
        rp.replica_lsn = 0;
    else
        rp.control = CTL_NONE; /* the watch starts again when the primary is back */
    struct timeval tv = clock_tv_ms(clock_backoff(&c->backoff_ms));
    evtimer_add(c->timer, &tv);
    kick(); /* without the standby, reads go to the primary */
}

static bool pgc_send(pgc *c, const char *sql, int nparams, const char *const *params)
{
    if (!PQsendQueryParams(c->pg, sql, nparams, NULL, params, NULL, NULL, 0)) {
        fail(c, "send");
        return false;
    }
    c->state = PG_BUSY;
    struct timeval tv = clock_tv_ms(rp.cfg->pg_timeout_ms);
    evtimer_add(c->timer, &tv);
    int f = PQflush(c->pg);
    if (f < 0) {
        fail(c, "send");
        return false;
    }
    watch(c, f == 1 ? EV_READ | EV_WRITE : EV_READ);
    return true;
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

static void read_rows(pgc *c)
{
    char fs[24];
    snprintf(fs, sizeof fs, "%lld", rp.current->from);
    const char *params[] = {rp.current->run_id, fs};
    rp.phase = PH_ROWS;
    rp.reading = c;
    pgc_send(c, store_replay_sql, 2, params);
}

/* The standby is at replica_lsn: read there if that covers what the job needs, ask
 * again shortly if it does not (up to --replica-wait), else read from the primary. */
static void replica_decide(void)
{
    if (rp.replica.state != PG_IDLE) {
        read_rows(&rp.primary);
        return;
    }
    if (rp.replica_lsn >= rp.lsn) {
        if (rp.replica_behind)
            log_info("postgresql (gateway, replica): caught up; reading from it again");
        rp.replica_behind = false;
        rp.replica_reads++;
        read_rows(&rp.replica);
        return;
    }
    /* Once a read has waited in vain, the next ones do not wait until the standby is
     * seen caught up again: a paused or far-behind standby costs no latency. */
    if (rp.replica_behind || (clock_mono_s() - rp.waited_since) * 1000 >= (double)rp.cfg->replica_wait_ms) {
        if (!rp.replica_behind)
            log_info("postgresql (gateway, replica): behind the primary for %ld ms; reading from the primary "
                     "until it catches up",
                     rp.cfg->replica_wait_ms);
        rp.replica_behind = true;
        rp.fallbacks++;
        log_debug("replica is behind the primary: reading run %s from the primary", rp.current->run_id);
        read_rows(&rp.primary);
        return;
    }
    rp.phase = PH_RECHECK;
    struct timeval tv = clock_tv_ms(RECHECK_MS);
    evtimer_add(rp.recheck, &tv);
}

static void ask_replica(void)
{
    if (rp.replica.state != PG_IDLE) {
        read_rows(&rp.primary);
        return;
    }
    rp.phase = PH_CHECK;
    pgc_send(&rp.replica, store_replay_lsn_sql, 0, NULL);
}

static void on_recheck(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (rp.phase == PH_RECHECK)
        ask_replica();
}

/* A statement on c finished with res (NULL when there was none). */
static void on_result(pgc *c, PGresult *res)
{
    replay_job *j = rp.current;
    enum phase ph = rp.phase;
    bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!j) {
        PQclear(res);
        return;
    }
    if (ph == PH_LSN) {
        if (ok && parse_lsn(res, &rp.lsn)) {
            rp.lsn_have = rp.lsn_sent;
            rp.waited_since = clock_mono_s();
            PQclear(res);
            if (rp.replica_lsn >= rp.lsn)
                replica_decide();
            else
                ask_replica();
            return;
        }
        log_warn("postgresql (gateway, primary): WAL position: %s",
                 res ? PQresultErrorMessage(res) : "no result");
        PQclear(res);
        read_rows(&rp.primary);
        return;
    }
    if (ph == PH_CHECK) {
        uint64_t at;
        if (ok && parse_lsn(res, &at)) {
            rp.replica_lsn = at;
            PQclear(res);
            replica_decide();
            return;
        }
        /* NULL: not (or no longer) a standby; its data cannot be ordered against the
         * primary's, so it is not read from. */
        log_warn("postgresql (gateway, replica): %s: reading from the primary",
                 ok ? "not in recovery (pg_last_wal_replay_lsn() is NULL)"
                    : (res ? PQresultErrorMessage(res) : "no result"));
        PQclear(res);
        if (ok)
            rp.replica_usable = false; /* until it connects again */
        read_rows(&rp.primary);
        return;
    }
    /* PH_ROWS */
    rp.current = NULL;
    rp.phase = PH_NONE;
    rp.reading = NULL;
    j->busy = false;
    if (!ok) {
        log_warn("postgresql (gateway, %s): replay of run %s: %s", c->role, j->run_id,
                 res ? PQresultErrorMessage(res) : "no result");
        PQclear(res);
        rp.h.failed(j);
        return;
    }
    rp.reads++;
    deliver(j, res);
    PQclear(res);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    pgc *c = arg;
    if (c->state == PG_CONNECTING) {
        PostgresPollingStatusType st = PQconnectPoll(c->pg);
        if (st == PGRES_POLLING_FAILED) {
            fail(c, "connect");
            return;
        }
        if (st == PGRES_POLLING_OK) {
            if (PQsetnonblocking(c->pg, 1) != 0) {
                fail(c, "connect");
                return;
            }
            evtimer_del(c->timer);
            c->state = PG_IDLE;
            c->backoff_ms = 0;
            log_info("postgresql (gateway, %s): connected", c->role);
            if (c == &rp.replica)
                rp.replica_usable = true;
            /* Notifications sent while we were away are lost: read the list again. */
            if (c == &rp.primary && rp.revocations)
                rp.want_listen = rp.want_revocations = true;
            watch(c, EV_READ);
            kick();
            return;
        }
        watch(c, st == PGRES_POLLING_READING ? EV_READ : EV_WRITE);
        return;
    }
    if (what & EV_WRITE) {
        int f = PQflush(c->pg);
        if (f < 0) {
            fail(c, "send");
            return;
        }
        watch(c, f == 1 ? EV_READ | EV_WRITE : EV_READ);
    }
    if (!(what & EV_READ))
        return;
    if (!PQconsumeInput(c->pg)) {
        fail(c, "read");
        return;
    }
    PGnotify *nt;
    while ((nt = PQnotifies(c->pg)) != NULL) {
        if (rp.revocations && c == &rp.primary && !strcmp(nt->relname, STORE_REVOKE_CHANNEL))
            rp.want_revocations = true;
        PQfreemem(nt);
    }
    if (c->state != PG_BUSY) {
        kick();
        return;
    }
    /* Collect results without ever blocking: PQgetResult only when not busy. */
    PGresult *res;
    for (;;) {
        if (PQisBusy(c->pg))
            return;
        if (!(res = PQgetResult(c->pg)))
            break;
        PQclear(c->result);
        c->result = res;
    }
    PGresult *last = c->result;
    c->result = NULL;
    evtimer_del(c->timer);
    c->state = PG_IDLE;
    bool lost = PQstatus(c->pg) != CONNECTION_OK;
    if (c == &rp.primary && rp.control != CTL_NONE)
        control_done(last);
    else
        on_result(c, last);
    if (lost && c->state == PG_IDLE)
        fail(c, "connection");
    kick();
}

static void watch(pgc *c, short what)
{
    if (c->ev)
        event_free(c->ev);
    c->ev = event_new(rp.base, PQsocket(c->pg), what | EV_PERSIST, on_io, c);
    if (c->ev)
        event_add(c->ev, NULL);
}

static void pg_connect(pgc *c)
{
    const char *keys[8], *vals[8];
    char timeout_s[24];
    store_conn_params(c->url, "outboxd-sse", rp.cfg->pg_timeout_ms, keys, vals, timeout_s);
    c->pg = PQconnectStartParams(keys, vals, 1);
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        fail(c, "connect");
        return;
    }
    c->state = PG_CONNECTING;
    struct timeval tv = clock_tv_ms(rp.cfg->pg_timeout_ms);
    evtimer_add(c->timer, &tv);
    watch(c, EV_WRITE);
}

/* One timer per connection: reconnect backoff, and the deadline of a connect or a
 * statement. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pgc *c = arg;
    if (c->state == PG_DOWN)
        pg_connect(c);
    else
        fail(c, "timed out");
}

/* The revocation watch's statement finished with res. */
static void control_done(PGresult *res)
{
    int op = rp.control;
    rp.control = CTL_NONE;
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        /* No table (a schema older than this binary) or another error: say so; the
         * list is read again after the next reconnect or notification. */
        log_error("postgresql (gateway, primary): %s: %s", op == CTL_LISTEN ? "listen for revocations" : "read revocations",
                  res ? PQresultErrorMessage(res) : "no result");
        PQclear(res);
        return;
    }
    int n = op == CTL_REVOCATIONS ? PQntuples(res) : 0;
    auth_revocation *rows = op == CTL_REVOCATIONS ? calloc((size_t)(n ? n : 1), sizeof *rows) : NULL;
    if (op == CTL_REVOCATIONS && !rows) {
        log_error("postgresql (gateway, primary): out of memory reading %d revocations", n);
        rp.want_revocations = true;
    } else if (rows) {
        for (int i = 0; i < n; i++) {
            rows[i].is_sub = PQgetvalue(res, i, 0)[0] == 't';
            rows[i].value = PQgetvalue(res, i, 1);
            rows[i].len = (size_t)PQgetlength(res, i, 1);
            rows[i].until = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        }
        rp.revocations(rows, n);
    }
    free(rows);
    PQclear(res);
}

/* Starts the next queued read when nothing is in flight and the primary is up; the
 * revocation watch's statements go first, between reads. */
static void kick(void)
{
    if (!rp.current && rp.control == CTL_NONE && rp.primary.state == PG_IDLE &&
        (rp.want_listen || rp.want_revocations)) {
        bool listen = rp.want_listen;
        rp.control = listen ? CTL_LISTEN : CTL_REVOCATIONS;
        if (listen)
            rp.want_listen = false;
        else
            rp.want_revocations = false;
        pgc_send(&rp.primary, listen ? "LISTEN " STORE_REVOKE_CHANNEL : store_revocations_sql, 0, NULL);
        return;
    }
    while (!rp.current && rp.control == CTL_NONE && rp.primary.state == PG_IDLE && rp.q_head) {
        replay_job *j = rp.q_head;
        rp.q_head = j->next;
        if (!rp.q_head)
            rp.q_tail = NULL;
        j->queued = false;
        const char *run_id;
        long long from;
        if (!rp.h.start(j, &run_id, &from))
            continue; /* j may be gone */
        j->busy = true;
        j->from = from;
        j->run_id = run_id;
        rp.current = j;
        bool standby = rp.replica_usable && rp.replica.state == PG_IDLE;
        if (!standby) {
            read_rows(&rp.primary);
        } else if (rp.lsn_have > j->lsn_after) {
            rp.waited_since = clock_mono_s();
            replica_decide();
        } else {
            rp.phase = PH_LSN;
            rp.lsn_sent++;
            pgc_send(&rp.primary, store_insert_lsn_sql, 0, NULL);
        }
    }
}

void replay_queue(replay_job *j)
{
    if (j->queued || j->busy)
        return;
    j->queued = true;
    j->next = NULL;
    j->lsn_after = rp.lsn_sent;
    if (rp.q_tail)
        rp.q_tail->next = j;
    else
        rp.q_head = j;
    rp.q_tail = j;
    kick();
}

bool replay_up(void)
{
    return rp.primary.state == PG_IDLE || rp.primary.state == PG_BUSY;
}

void replay_get_counts(replay_counts *out)
{
    out->reads = rp.reads;
    out->replica_reads = rp.replica_reads;
    out->replica_fallbacks = rp.fallbacks;
    out->replica_up = rp.replica_usable && (rp.replica.state == PG_IDLE || rp.replica.state == PG_BUSY);
}

static bool pgc_init(pgc *c, const char *role, const char *url)
{
    c->role = role;
    c->url = url;
    c->timer = evtimer_new(rp.base, on_timer, c);
    if (!c->timer)
        return false;
    pg_connect(c);
    return true;
}

static void pgc_free(pgc *c)
{
    if (c->ev)
        event_free(c->ev);
    PQclear(c->result);
    if (c->pg)
        PQfinish(c->pg);
    if (c->timer)
        event_free(c->timer);
}

bool replay_start(struct event_base *base, const config *cfg, const replay_handlers *handlers)
{
    memset(&rp, 0, sizeof rp);
    rp.base = base;
    rp.cfg = cfg;
    rp.h = *handlers;
    rp.recheck = evtimer_new(base, on_recheck, NULL);
    if (!rp.recheck || !pgc_init(&rp.primary, "primary", cfg->database_url))
        return false;
    return !cfg->replica_url || pgc_init(&rp.replica, "replica", cfg->replica_url);
}

void replay_watch_revocations(void (*cb)(const auth_revocation *rows, int n))
{
    rp.revocations = cb;
    rp.want_listen = rp.want_revocations = true;
    kick();
}

void replay_stop(void)
{
    pgc_free(&rp.primary);
    pgc_free(&rp.replica);
    if (rp.recheck)
        event_free(rp.recheck);
    memset(&rp, 0, sizeof rp);
}
