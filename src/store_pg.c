/* PostgreSQL access for every command. All SQL lives here, in store_relay.c (the
 * relay's statements) and in store_schema.c (the migrations). Statements are sent with libpq's asynchronous calls and awaited with
 * poll(2) against a deadline, because the blocking calls would wait forever on a
 * server that is stopped but keeps its socket. */
#include "store_int.h"

#include "buf.h"
#include "log.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

long long store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void store_set_err(store *s, const char *what, const char *why)
{
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s", why ? why : "unknown error");
    /* libpq messages end with a newline; keep log lines to one line. */
    for (char *p = tmp; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = (p[1] ? ' ' : '\0');
    snprintf(s->err, sizeof s->err, "%s: %s", what, tmp);
}

store *store_new(const char *url, const char *application_name, long timeout_ms)
{
    store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->url = strdup(url);
    s->appname = strdup(application_name);
    s->timeout_ms = timeout_ms;
    if (!s->url || !s->appname) {
        store_free(s);
        return NULL;
    }
    return s;
}

void store_free(store *s)
{
    if (!s)
        return;
    store_disconnect(s);
    free(s->url);
    free(s->appname);
    free(s);
}

void store_disconnect(store *s)
{
    if (s->conn)
        PQfinish(s->conn);
    s->conn = NULL;
    /* Prepared statements and session locks went with the session. */
    s->prepared = false;
    s->asleep = false;
}

bool store_connected(const store *s)
{
    return s->conn && PQstatus(s->conn) == CONNECTION_OK;
}

const char *store_errstr(const store *s)
{
    return s->err;
}

const char *store_sqlstate(const store *s)
{
    return s->sqlstate;
}

/* Waits for fd to be ready for events or the deadline. 1 ready, 0 timeout, -1 error. */
static int wait_fd(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - store_now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(left > 1000000 ? 1000000 : left));
        if (r > 0)
            return 1;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

void store_conn_params(const char *url, const char *application_name, long timeout_ms,
                       const char *keys[8], const char *vals[8], char timeout_s[24])
{
    snprintf(timeout_s, 24, "%ld", (timeout_ms + 999) / 1000);
    /* Defaults first: values that the URL carries override them. Keepalives make a
     * vanished host show up as an error rather than an endless wait. */
    static const char *const k[] = {"connect_timeout", "application_name", "keepalives", "keepalives_idle",
                                    "keepalives_interval", "keepalives_count", "dbname", NULL};
    const char *v[] = {timeout_s, application_name, "1", "10", "5", "3", url, NULL};
    for (int i = 0; i < 8; i++) {
        keys[i] = k[i];
        vals[i] = v[i];
    }
}

/* Replay for the gateway, bounded in rows and (roughly, by stored size) in bytes so
 * that a run of huge payloads cannot make one result enormous; the first row always
 * comes through. */
const char store_replay_sql[] =
    "SELECT r.seq, r.payload::text, r.n, m.newest FROM"
    " (SELECT coalesce(max(seq), 0) AS newest FROM run_outbox WHERE run_id = $1) m"
    " LEFT JOIN ("
    "  SELECT seq, payload, sum(pg_column_size(payload)) OVER (ORDER BY seq) AS upto, count(*) OVER () AS n"
    "  FROM (SELECT seq, payload FROM run_outbox WHERE run_id = $1 AND seq > $2::bigint"
    "        ORDER BY seq LIMIT 200) l) r"
    " ON r.upto - pg_column_size(r.payload) < 4194304 ORDER BY r.seq";

const char store_insert_lsn_sql[] = "SELECT pg_current_wal_insert_lsn()::text";
const char store_replay_lsn_sql[] = "SELECT pg_last_wal_replay_lsn()::text";

/* Server notices (and libpq's own, such as a terminated backend) go to our log
 * rather than straight to stderr. */
static void log_notice(void *arg, const char *message)
{
    (void)arg;
    int n = (int)strcspn(message, "\n");
    log_warn("postgresql says: %.*s", n, message);
}

bool store_connect(store *s)
{
    store_disconnect(s);
    s->sqlstate[0] = '\0';
    const char *keys[8], *vals[8];
    char timeout_s[24];
    store_conn_params(s->url, s->appname, s->timeout_ms, keys, vals, timeout_s);
    PGconn *c = PQconnectStartParams(keys, vals, 1);
    if (!c) {
        store_set_err(s, "connect", "out of memory");
        return false;
    }
    long long deadline = store_now_ms() + s->timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int r = wait_fd(PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (r <= 0) {
            store_set_err(s, "connect", r == 0 ? "timed out" : strerror(errno));
            PQfinish(c);
            return false;
        }
        st = PQconnectPoll(c);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        store_set_err(s, "connect", PQerrorMessage(c));
        PQfinish(c);
        return false;
    }
    PQsetNoticeProcessor(c, log_notice, NULL);
    if (PQsetnonblocking(c, 1) != 0) {
        store_set_err(s, "connect", PQerrorMessage(c));
        PQfinish(c);
        return false;
    }
    s->conn = c;
    return true;
}

static void collect_notifies(store *s)
{
    PGnotify *n;
    while ((n = PQnotifies(s->conn)) != NULL) {
        s->notified = true;
        if (!strcmp(n->extra, "retry"))
            s->retry_asked = true;
        PQfreemem(n);
    }
}

int store_flush_all(store *s, long long deadline)
{
    int r;
    while ((r = PQflush(s->conn)) == 1) {
        int w = wait_fd(PQsocket(s->conn), POLLOUT | POLLIN, deadline);
        if (w <= 0)
            return 0;
        if (!PQconsumeInput(s->conn))
            return -1;
    }
    return r < 0 ? -1 : 1;
}

PGresult *store_await_result(store *s, const char *what)
{
    long long deadline = store_now_ms() + s->timeout_ms;
    int f = store_flush_all(s, deadline);
    if (f == 0)
        goto timeout;
    if (f < 0)
        goto broken;
    PGresult *last = NULL;
    for (;;) {
        while (PQisBusy(s->conn)) {
            int w = wait_fd(PQsocket(s->conn), POLLIN, deadline);
            if (w <= 0) {
                PQclear(last);
                goto timeout;
            }
            if (!PQconsumeInput(s->conn)) {
                PQclear(last);
                goto broken;
            }
        }
        PGresult *res = PQgetResult(s->conn);
        if (!res)
            break;
        if (last && PQresultStatus(last) == PGRES_FATAL_ERROR) {
            PQclear(res); /* keep the first error */
            continue;
        }
        PQclear(last);
        last = res;
    }
    collect_notifies(s);
    if (!last) {
        store_set_err(s, what, "no result");
        return NULL;
    }
    ExecStatusType st = PQresultStatus(last);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *code = PQresultErrorField(last, PG_DIAG_SQLSTATE);
        snprintf(s->sqlstate, sizeof s->sqlstate, "%s", code ? code : "");
        store_set_err(s, what, PQresultErrorMessage(last));
        PQclear(last);
        if (PQstatus(s->conn) != CONNECTION_OK)
            store_disconnect(s);
        return NULL;
    }
    return last;

timeout:
    store_set_err(s, what, "timed out; closing the connection");
    store_disconnect(s);
    return NULL;
broken:
    store_set_err(s, what, PQerrorMessage(s->conn));
    store_disconnect(s);
    return NULL;
}

/* Runs one parameterized statement (text parameters). NULL on failure. */
PGresult *store_run(store *s, const char *what, const char *sql, int n, const char *const *params)
{
    s->sqlstate[0] = '\0';
    if (!s->conn) {
        store_set_err(s, what, "not connected");
        return NULL;
    }
    int ok = n ? PQsendQueryParams(s->conn, sql, n, NULL, params, NULL, NULL, 0)
               : PQsendQuery(s->conn, sql);
    if (!ok) {
        store_set_err(s, what, PQerrorMessage(s->conn));
        store_disconnect(s);
        return NULL;
    }
    return store_await_result(s, what);
}

bool store_run_cmd(store *s, const char *what, const char *sql, int n, const char *const *params)
{
    PGresult *r = store_run(s, what, sql, n, params);
    PQclear(r);
    return r != NULL;
}

void store_rollback(store *s)
{
    char keep[sizeof s->err], state[sizeof s->sqlstate];
    memcpy(keep, s->err, sizeof keep);
    memcpy(state, s->sqlstate, sizeof state);
    if (store_connected(s) && !store_run_cmd(s, "rollback", "ROLLBACK", 0, NULL))
        log_warn("%s", s->err);
    memcpy(s->err, keep, sizeof keep);
    memcpy(s->sqlstate, state, sizeof state);
}

/* ---- wake-ups and leadership ----------------------------------------------------- */

bool store_listen(store *s)
{
    return store_run_cmd(s, "listen", "LISTEN " STORE_NOTIFY_CHANNEL, 0, NULL);
}

static bool backend_pid(store *s, char *pid, size_t len)
{
    PGresult *r = store_run(s, "check session", "SELECT pg_backend_pid()", 0, NULL);
    if (!r)
        return false;
    snprintf(pid, len, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    return true;
}

bool store_check_session(store *s, bool *session)
{
    /* Two tells of transaction pooling: our own statements reach different backends,
     * or a second client connection is handed the very backend we just used (a
     * direct or session-pooled connection always has a backend of its own). */
    char first[32], pid[32];
    *session = true;
    if (!backend_pid(s, first, sizeof first))
        return false;
    for (int i = 0; i < 2; i++) {
        if (!backend_pid(s, pid, sizeof pid))
            return false;
        if (strcmp(first, pid) != 0)
            *session = false;
    }
    store *probe = store_new(s->url, s->appname, s->timeout_ms);
    if (probe && store_connect(probe) && backend_pid(probe, pid, sizeof pid) && !strcmp(first, pid))
        *session = false;
    store_free(probe);
    return true;
}

bool store_take_notified(store *s)
{
    if (s->conn)
        collect_notifies(s);
    bool n = s->notified;
    s->notified = false;
    return n;
}

bool store_wait(store *s, int extra_fd, long timeout_ms, bool *notified)
{
    *notified = store_take_notified(s);
    if (*notified)
        return true;
    struct pollfd p[2] = {{.fd = s->conn ? PQsocket(s->conn) : -1, .events = POLLIN},
                          {.fd = extra_fd, .events = POLLIN}};
    int r = poll(p, 2, (int)timeout_ms);
    if (r < 0 && errno != EINTR) {
        store_set_err(s, "wait", strerror(errno));
        return false;
    }
    if (r > 0 && (p[0].revents & (POLLIN | POLLERR | POLLHUP))) {
        if (!PQconsumeInput(s->conn)) {
            store_set_err(s, "wait", PQerrorMessage(s->conn));
            store_disconnect(s);
            return false;
        }
    }
    *notified = store_take_notified(s);
    return true;
}

bool store_try_lead(store *s, bool *leader)
{
    char sql[80];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%d, %d)", LOCK_CLASS, LOCK_LEADER);
    PGresult *r = store_run(s, "try leader lock", sql, 0, NULL);
    if (!r)
        return false;
    *leader = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return true;
}

/* ---- operator commands ------------------------------------------------------------ */

bool store_take_retry(store *s)
{
    bool r = s->retry_asked;
    s->retry_asked = false;
    return r;
}

static bool count_cmd(store *s, const char *what, const char *sql, int n, const char *const *params,
                      long long *count)
{
    PGresult *r = store_run(s, what, sql, n, params);
    if (!r)
        return false;
    *count = strtoll(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return true;
}

bool store_retry(store *s, const char *run_id, long long *n)
{
    const char *params[] = {run_id};
    return count_cmd(s, "retry",
                     "UPDATE run_outbox SET attempts = 0, last_error = NULL"
                     " WHERE run_id = $1 AND published_at IS NULL AND attempts > 0",
                     1, params, n) &&
           store_run_cmd(s, "retry: wake the relays", "SELECT pg_notify('" STORE_NOTIFY_CHANNEL "', 'retry')", 0,
                   NULL);
}

bool store_skip(store *s, const char *run_id, long long seq, const char *reason, long long *n)
{
    char seqs[24];
    snprintf(seqs, sizeof seqs, "%lld", seq);
    const char *params[] = {run_id, seqs, reason};
    /* Only the oldest unpublished event of the run: skipping one in the middle would
     * leave the operator guessing what went out around it. */
    return count_cmd(s, "skip",
                     "UPDATE run_outbox SET published_at = now(),"
                     "  last_error = 'skipped by operator: ' || $3"
                     " WHERE run_id = $1 AND seq = $2::bigint AND published_at IS NULL"
                     "   AND seq = (SELECT min(seq) FROM run_outbox WHERE run_id = $1 AND published_at IS NULL)",
                     3, params, n);
}

const char store_revocations_sql[] =
    "SELECT kind = 'sub', value, ceil(extract(epoch FROM until))::bigint FROM outboxd_revocations"
    " WHERE until > now() ORDER BY id LIMIT 1000000";

bool store_revoke(store *s, bool is_sub, const char *value, long until_ms, const char *until_text,
                  char *until_out, size_t until_len)
{
    char ms[32];
    snprintf(ms, sizeof ms, "%ld milliseconds", until_ms);
    const char *params[] = {is_sub ? "sub" : "jti", value, until_ms > 0 ? ms : until_text};
    /* One statement, so one transaction: the row and the notification go together. */
    PGresult *r = store_run(s, "revoke",
                      until_ms > 0
                          ? "WITH r AS (INSERT INTO outboxd_revocations (kind, value, until)"
                            "  SELECT $1, $2, now() + $3::interval RETURNING until),"
                            " gone AS (DELETE FROM outboxd_revocations WHERE until < now() - interval '1 day')"
                            " SELECT to_char(until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
                            "  pg_notify('" STORE_REVOKE_CHANNEL "', '') FROM r"
                          : "WITH r AS (INSERT INTO outboxd_revocations (kind, value, until)"
                            "  SELECT $1, $2, $3::timestamptz WHERE $3::timestamptz > now() RETURNING until),"
                            " gone AS (DELETE FROM outboxd_revocations WHERE until < now() - interval '1 day')"
                            " SELECT to_char(until AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
                            "  pg_notify('" STORE_REVOKE_CHANNEL "', '') FROM r",
                      3, params);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1;
    if (ok)
        snprintf(until_out, until_len, "%s", PQgetvalue(r, 0, 0));
    else
        store_set_err(s, "revoke", "--until is not in the future");
    PQclear(r);
    return ok;
}

bool store_prune(store *s, long older_than_ms, long limit, long long *deleted)
{
    /* Through the primary key, whatever the statistics say (store_prepare_relay). */
    if (!store_run_cmd(s, "prune",
                       "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL jit = off;"
                       " SET LOCAL max_parallel_workers_per_gather = 0",
                       0, NULL))
        return false;
    char age[32], lim[24];
    snprintf(age, sizeof age, "%ld milliseconds", older_than_ms);
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[] = {age, lim};
    /* Looks only at the `limit` oldest published rows (primary-key order, which follows
     * publish order closely), so the work is bounded whether or not anything is due.
     * For each run among those past the window it deletes the published rows up to
     * the newest of them: always a prefix of the run. A run left with no rows gets
     * the time of its last event in run_outbox_seq (and its last seq, should its
     * counter be missing), for --counter-retention. Unpublished rows are never
     * touched. */
    PGresult *r = store_run(s, "prune",
                            "WITH due AS (SELECT run_id, max(seq) AS upto FROM"
                            "              (SELECT run_id, seq, published_at FROM run_outbox"
                            "               WHERE published_at IS NOT NULL ORDER BY id LIMIT $2::int) o"
                            "             WHERE published_at < now() - $1::interval GROUP BY run_id),"
                            "     del AS (DELETE FROM run_outbox r USING due"
                            "             WHERE r.run_id = due.run_id AND r.seq <= due.upto AND r.published_at IS NOT NULL"
                            "             RETURNING r.run_id, r.seq, r.created_at),"
                            "     last AS (SELECT run_id, max(seq) AS seq, max(created_at) AS at FROM del GROUP BY run_id),"
                            "     kept AS (INSERT INTO run_outbox_seq AS f (run_id, last_seq, last_event_at)"
                            "              SELECT l.run_id, l.seq, l.at FROM last l WHERE NOT EXISTS"
                            "               (SELECT 1 FROM run_outbox o WHERE o.run_id = l.run_id AND o.seq > l.seq)"
                            "              ORDER BY l.run_id" /* as migrate raises counters: no deadlock */
                            "              ON CONFLICT (run_id) DO UPDATE"
                            "              SET last_seq = greatest(f.last_seq, excluded.last_seq),"
                            "                  last_event_at = greatest(f.last_event_at, excluded.last_event_at))"
                            " SELECT count(*) FROM del",
                            2, params);
    if (!r || !store_run_cmd(s, "prune", "COMMIT", 0, NULL)) {
        PQclear(r);
        store_rollback(s);
        return false;
    }
    *deleted = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return true;
}

bool store_forget_runs(store *s, long idle_ms, long limit, char *cursor, size_t cursor_len, long long *forgotten)
{
    char age[32], lim[24];
    snprintf(age, sizeof age, "%ld milliseconds", idle_ms);
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[] = {cursor, lim, age};
    *forgotten = 0;
    /* A window of `limit` counters in run_id order after the cursor: a full round
     * over all counters takes (counters / limit) sweeps and needs no index of its own.
     * The idle ones are locked first (a writer of the run with the PL/pgSQL trigger
     * then waits, and writers busy now are skipped), and only then is it checked, in a
     * snapshot taken after those locks, that the run has no rows: a writer that
     * committed before sees its row counted, one after finds the counter gone and
     * starts the run over. The C trigger never locks the counter: a writer of the run
     * meanwhile reads the counter being deleted as still there (as its floor), and its
     * row, newer than the floor, carries the run on. */
    if (!store_run_cmd(s, "forget idle runs", "BEGIN", 0, NULL))
        return false;
    PGresult *r = store_run(s, "forget idle runs",
                            "WITH w AS (SELECT run_id FROM run_outbox_seq WHERE run_id > $1"
                            "           ORDER BY run_id LIMIT $2::int),"
                            "     idle AS (SELECT f.run_id FROM run_outbox_seq f JOIN w USING (run_id)"
                            "              WHERE f.last_event_at < now() - $3::interval FOR UPDATE OF f SKIP LOCKED)"
                            " SELECT (SELECT count(*) FROM w), (SELECT max(run_id) FROM w),"
                            "  coalesce((SELECT array_agg(run_id) FROM idle), '{}')",
                            3, params);
    PGresult *d = NULL;
    if (r) {
        const char *dparams[] = {PQgetvalue(r, 0, 2), age};
        d = store_run(s, "forget idle runs",
                      "DELETE FROM run_outbox_seq f WHERE f.run_id = ANY($1::text[])"
                      " AND f.last_event_at < now() - $2::interval"
                      " AND NOT EXISTS (SELECT 1 FROM run_outbox o WHERE o.run_id = f.run_id)",
                      2, dparams);
    }
    if (!r || !d || !store_run_cmd(s, "forget idle runs", "COMMIT", 0, NULL)) {
        store_rollback(s);
        PQclear(r);
        PQclear(d);
        return false;
    }
    long long window = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    *forgotten = strtoll(PQcmdTuples(d), NULL, 10);
    /* A short window reached the end: the next sweep starts over. A run id longer
     * than the cursor's room cannot be a cursor; start over too (never skip). */
    if (window < limit || (size_t)PQgetlength(r, 0, 1) >= cursor_len)
        cursor[0] = '\0';
    else
        memcpy(cursor, PQgetvalue(r, 0, 1), (size_t)PQgetlength(r, 0, 1) + 1);
    PQclear(r);
    PQclear(d);
    return true;
}

/* ---- producer side and status ---------------------------------------------------- */

bool store_emit(store *s, const char *run_id, const char *json, long long *id, long long *seq)
{
    const char *params[] = {run_id, json};
    PGresult *r = store_run(s, "emit",
                      "INSERT INTO run_outbox (run_id, payload) VALUES ($1, $2::jsonb) RETURNING id, seq",
                      2, params);
    if (!r)
        return false;
    *id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    *seq = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    PQclear(r);
    return true;
}

bool store_print_status(store *s, bool json, const char *extra)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             /* Unpublished rows lie at or above the relay's low water. */
             "SELECT (SELECT count(*) FROM run_outbox WHERE id >= (SELECT low_water FROM outboxd_relay)"
             "   AND published_at IS NULL),"
             " (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
             "   FROM run_outbox WHERE id >= (SELECT low_water FROM outboxd_relay) AND published_at IS NULL),"
             " (SELECT count(*) FROM run_outbox WHERE published_at > now() - interval '1 minute'),"
             " (SELECT coalesce(max(id), 0) FROM run_outbox WHERE published_at IS NOT NULL),"
             " pg_total_relation_size('run_outbox'), pg_indexes_size('run_outbox'),"
             " (SELECT coalesce(max(version), 0) FROM outboxd_migrations),"
             " (SELECT a.pid || ' ' || a.application_name || ' ' || coalesce(host(a.client_addr), 'local')"
             "   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
             "   WHERE l.locktype = 'advisory' AND l.classid = %d AND l.objid = %d AND l.granted"
             "   LIMIT 1),"
             " (SELECT count(*) FROM run_outbox_seq), " SEQ_TRIGGER_KIND_SQL,
             LOCK_CLASS, LOCK_LEADER);
    PGresult *r = store_run(s, "status", sql, 0, NULL);
    if (!r) {
        if (!strcmp(s->sqlstate, "42P01"))
            snprintf(s->err, sizeof s->err, "the outboxd schema is missing or older than this binary: "
                                            "run 'outboxd migrate'");
        return false;
    }
    PGresult *blocked = store_run(s, "status: blocked runs",
                            "SELECT run_id, id, seq, attempts, coalesce(last_error, '')"
                            " FROM run_outbox WHERE id >= (SELECT low_water FROM outboxd_relay)"
                            "  AND published_at IS NULL AND attempts > 0 ORDER BY id LIMIT 20",
                            0, NULL);
    if (!blocked) {
        PQclear(r);
        return false;
    }
    long long backlog = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    double oldest = strtod(PQgetvalue(r, 0, 1), NULL);
    long long last_minute = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    const char *last_id = PQgetvalue(r, 0, 3);
    const char *table_bytes = PQgetvalue(r, 0, 4);
    const char *index_bytes = PQgetvalue(r, 0, 5);
    const char *version = PQgetvalue(r, 0, 6);
    const char *leader = PQgetisnull(r, 0, 7) ? NULL : PQgetvalue(r, 0, 7);
    const char *counters = PQgetvalue(r, 0, 8);
    const char *trigger = PQgetvalue(r, 0, 9);
    int nb = PQntuples(blocked);

    buf out;
    buf_init(&out, 0);
    bool ok;
    if (json) {
        ok = buf_printf(&out,
                        "{\"backlog\":%lld,\"oldest_unpublished_age_seconds\":%.3f,"
                        "\"published_last_minute\":%lld,\"publish_rate_per_second\":%.2f,"
                        "\"last_published_id\":%s,\"table_bytes\":%s,\"index_bytes\":%s,"
                        "\"schema_version\":%s,\"run_counters\":%s,\"seq_trigger\":\"%s\",\"leader\":",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version, counters, trigger) &&
             (leader ? buf_json_string(&out, leader, strlen(leader)) : buf_puts(&out, "null")) &&
             buf_puts(&out, ",\"blocked\":[");
        for (int i = 0; ok && i < nb; i++)
            ok = buf_puts(&out, i ? ",{\"run_id\":" : "{\"run_id\":") &&
                 buf_json_string(&out, PQgetvalue(blocked, i, 0),
                                 (size_t)PQgetlength(blocked, i, 0)) &&
                 buf_printf(&out, ",\"id\":%s,\"seq\":%s,\"attempts\":%s,\"last_error\":",
                            PQgetvalue(blocked, i, 1), PQgetvalue(blocked, i, 2),
                            PQgetvalue(blocked, i, 3)) &&
                 buf_json_string(&out, PQgetvalue(blocked, i, 4), (size_t)PQgetlength(blocked, i, 4)) &&
                 buf_puts(&out, "}");
        ok = ok && buf_puts(&out, "]") && (!extra || (buf_puts(&out, ",") && buf_puts(&out, extra))) &&
             buf_puts(&out, "}\n");
    } else {
        ok = buf_printf(&out,
                        "backlog:               %lld unpublished\n"
                        "oldest unpublished:    %.3f s\n"
                        "published last minute: %lld (%.2f/s)\n"
                        "last published id:     %s\n"
                        "table size:            %s bytes (indexes %s bytes)\n"
                        "schema version:        %s\n"
                        "run counters:          %s\n"
                        "seq trigger:           %s\n"
                        "relay leader:          %s\n"
                        "runs with failed attempts: %d%s\n",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version, counters, trigger, leader ? leader : "none", nb,
                        nb == 20 ? " (first 20)" : "");
        for (int i = 0; ok && i < nb; i++)
            ok = buf_printf(&out, "  run %s: id %s seq %s, %s attempts, last error: %s\n",
                            PQgetvalue(blocked, i, 0), PQgetvalue(blocked, i, 1),
                            PQgetvalue(blocked, i, 2), PQgetvalue(blocked, i, 3),
                            PQgetvalue(blocked, i, 4));
        ok = ok && (!extra || buf_puts(&out, extra));
    }
    if (ok)
        fputs(out.data, stdout);
    else
        store_set_err(s, "status", "out of memory");
    buf_free(&out);
    PQclear(r);
    PQclear(blocked);
    return ok;
}
