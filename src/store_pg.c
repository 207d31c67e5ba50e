/* PostgreSQL access for every command. All SQL lives here and in store_schema.c (the
 * migrations). Statements are sent with libpq's asynchronous calls and awaited with
 * poll(2) against a deadline, because the blocking calls would wait forever on a
 * server that is stopped but keeps its socket. */
#include "store_int.h"

#include "buf.h"
#include "log.h"

#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdint.h>
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

/* Pushes what libpq has buffered to the server: 1 done, 0 timed out, -1 broken. */
static int flush_all(store *s, long long deadline)
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

/* Sends nothing: waits for the result of the statement already sent, within the
 * store's timeout. Returns the last result (caller frees) or NULL on failure, in
 * which case a broken or timed-out connection has been closed. */
static PGresult *await_result(store *s, const char *what)
{
    long long deadline = store_now_ms() + s->timeout_ms;
    int f = flush_all(s, deadline);
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
    return await_result(s, what);
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

/* ---- the relay's statements ------------------------------------------------------ */

#define STR_(x) #x
#define STR(x) STR_(x)

/* Builds the text form of a text[] parameter: every element quoted, with " and \
 * escaped. */
static bool text_array(buf *a, const char *const *v, const size_t *len, size_t n)
{
    if (!buf_puts(a, "{"))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (!buf_puts(a, i ? ",\"" : "\""))
            return false;
        for (size_t j = 0; j < len[i]; j++)
            if (((v[i][j] == '"' || v[i][j] == '\\') && !buf_puts(a, "\\")) || !buf_append(a, &v[i][j], 1))
                return false;
        if (!buf_puts(a, "\""))
            return false;
    }
    return buf_puts(a, "}");
}

/* Builds the text form of a bigint[] parameter. */
static bool id_array(buf *a, const long long *ids, size_t n)
{
    if (!buf_puts(a, "{"))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!buf_printf(a, i ? ",%lld" : "%lld", ids[i]))
            return false;
    return buf_puts(a, "}");
}

/* One statement per relay cycle (store_cycle): the mark of what went out, the low
 * water for a relay that takes over, and every row the relay has not seen yet, read
 * in one snapshot. It returns that snapshot's xmin and, when it has one, its own
 * transaction id, taken after the snapshot (relay_scan.h says why). Rows published
 * already come back without payload: the relay only needs to know that their ids
 * exist. Results are binary: no to_char, extract or number formatting on the server,
 * and unsorted (each part comes in id order; store_cycle_end merges them), so the
 * server neither sorts them nor keeps the mark's rows for a RETURNING.
 * Prepared once per session with a generic plan: planning it for every cycle would
 * cost more than running it when a few events trickle in. */
#define CYCLE_ROW(src)                                                                              \
    "SELECT " #src " AS src, o.id, o.run_id, o.seq, o.created_at, o.published_at, o.payload"
#define CYCLE_COLS "id, run_id, seq, created_at, published_at, payload"
static const char cycle_sql[] =
    "WITH m AS (UPDATE run_outbox SET published_at = now()"
    "           WHERE id = ANY($1::bigint[]) AND published_at IS NULL),"
    "     w AS (UPDATE outboxd_relay SET low_water = $9::bigint, updated_at = now()"
    "           WHERE $9::bigint >= 0 AND low_water <> $9::bigint)"
    " SELECT s.xmin, s.tag, s.woke,"
    "  r.src | CASE WHEN r.published_at IS NULL THEN 0 ELSE " STR(STORE_ROW_DONE) " END,"
    "  r.id, r.run_id, r.seq, r.created_at, CASE WHEN r.published_at IS NULL THEN r.payload END"
    " FROM (SELECT pg_snapshot_xmin(c) AS xmin,"
    "        CASE WHEN $11::boolean OR cardinality($1::bigint[]) > 0 THEN pg_current_xact_id() END AS tag,"
    "        CASE WHEN $10::boolean THEN pg_advisory_unlock(" STR(LOCK_CLASS) ", " STR(LOCK_SLEEP) ") END AS woke"
    "       FROM pg_current_snapshot() c) s"
    " LEFT JOIN LATERAL ("
    CYCLE_ROW(1) " FROM (SELECT " CYCLE_COLS " FROM run_outbox"
    "                   WHERE id > $2::bigint ORDER BY id LIMIT $3::int) o"
    "  UNION ALL "
    CYCLE_ROW(2) " FROM unnest($4::bigint[], $5::bigint[]) g(lo, hi)"
    "   CROSS JOIN LATERAL (SELECT " CYCLE_COLS " FROM run_outbox WHERE id BETWEEN g.lo AND g.hi) o"
    "  UNION ALL "
    CYCLE_ROW(4) " FROM unnest($6::text[], $7::bigint[]) c(run, seq)"
    "   CROSS JOIN LATERAL (SELECT " CYCLE_COLS " FROM run_outbox"
    "    WHERE run_id = c.run AND seq >= c.seq AND published_at IS NULL ORDER BY seq LIMIT $8::int) o"
    " ) r ON true";
_Static_assert(STORE_ROW_FRONTIER == 1 && STORE_ROW_GAP == 2 && STORE_ROW_CATCHUP == 4,
               "cycle_sql numbers its three parts 1, 2 and 4");

bool store_prepare_relay(store *s)
{
    s->sqlstate[0] = '\0';
    if (!s->conn) {
        store_set_err(s, "prepare", "not connected");
        return false;
    }
    if (s->prepared)
        return true;
    /* A cached id sequence hands each session a block of ids: ids would then not
     * follow the order in which writers of a run take their turn. */
    PGresult *r = store_run(s, "check the id sequence",
                            "SELECT seqcache, seqcycle::text FROM pg_sequence"
                            " WHERE seqrelid = pg_get_serial_sequence('run_outbox', 'id')::regclass",
                            0, NULL);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 0), "1") && !strcmp(PQgetvalue(r, 0, 1), "false");
    if (!ok)
        snprintf(s->err, sizeof s->err,
                 "the id sequence of run_outbox must have CACHE 1 and NO CYCLE (ids must be drawn in "
                 "the order writers of a run take their turn): ALTER SEQUENCE ... CACHE 1 NO CYCLE");
    PQclear(r);
    if (!ok)
        return false;
    /* Every statement of the relay reads through an index: the cycle's plan is made
     * once, maybe while the table is nearly empty, and must not turn into a scan of
     * the table once it has grown; statistics taken while a backlog waits say that
     * published rows are rare, and retention would then read the whole table to
     * find the oldest. The costs that this inflates would make PostgreSQL compile
     * them (JIT) every time, for longer than they run, and start parallel workers. */
    if (!store_run_cmd(s, "session settings",
                       "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off;"
                       " SET max_parallel_workers_per_gather = 0",
                       0, NULL))
        return false;
    if (!PQsendPrepare(s->conn, "outboxd_cycle", cycle_sql, 0, NULL)) {
        store_set_err(s, "prepare", PQerrorMessage(s->conn));
        store_disconnect(s);
        return false;
    }
    r = await_result(s, "prepare the relay's statement");
    PQclear(r);
    s->prepared = r != NULL;
    return s->prepared;
}

bool store_cycle_begin(store *s, const store_cycle *c)
{
    s->sqlstate[0] = '\0';
    if (!s->conn || !s->prepared) {
        store_set_err(s, "cycle", "not connected");
        return false;
    }
    char after[24], limit[24], cu_limit[24], low[24];
    snprintf(after, sizeof after, "%lld", c->after);
    snprintf(limit, sizeof limit, "%ld", c->limit);
    snprintf(cu_limit, sizeof cu_limit, "%ld", c->cu_limit > 0 ? c->cu_limit : 1);
    snprintf(low, sizeof low, "%lld", c->low_water);
    buf mark, glo, ghi, runs, seqs;
    buf_init(&mark, 0);
    buf_init(&glo, 0);
    buf_init(&ghi, 0);
    buf_init(&runs, 0);
    buf_init(&seqs, 0);
    bool ok = id_array(&mark, c->mark, c->nmark) && id_array(&glo, c->gap_lo, c->ngaps) &&
              id_array(&ghi, c->gap_hi, c->ngaps) && text_array(&runs, c->cu_run, c->cu_len, c->ncu) &&
              id_array(&seqs, c->cu_seq, c->ncu);
    if (!ok) {
        store_set_err(s, "cycle", "out of memory");
    } else {
        const char *params[] = {mark.data, after, limit, glo.data, ghi.data, runs.data, seqs.data, cu_limit,
                                low, c->wake ? "true" : "false", c->need_tag ? "true" : "false"};
        ok = PQsendQueryPrepared(s->conn, "outboxd_cycle", 11, params, NULL, NULL, 1) != 0;
        if (!ok)
            store_set_err(s, "cycle", PQerrorMessage(s->conn));
        else if (flush_all(s, store_now_ms() + s->timeout_ms) != 1) {
            store_set_err(s, "cycle", "could not send the statement");
            ok = false;
        }
        if (!ok)
            store_disconnect(s);
        else if (c->wake)
            s->asleep = false;
    }
    buf_free(&mark);
    buf_free(&glo);
    buf_free(&ghi);
    buf_free(&runs);
    buf_free(&seqs);
    return ok;
}

static uint64_t be64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* Writes a timestamp (microseconds since 2000-01-01 UTC, PostgreSQL's binary form) as
 * 2026-11-27T10:00:00.123456Z, what to_char(... 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') gave. */
static void format_timestamp(char out[STORE_TIME_LEN], int64_t us)
{
    if (us == INT64_MAX || us == INT64_MIN) {
        snprintf(out, STORE_TIME_LEN, "%s", us > 0 ? "infinity" : "-infinity");
        return;
    }
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    /* Civil date from days since 1970-01-01 (H. Hinnant's algorithm). */
    int64_t z = days + 10957 + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097, yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9, y = yoe + era * 400 + (m <= 2);
    if (y < 0 || y > 9999) {
        /* PostgreSQL's range: 4713 BC to 294276 AD. */
        snprintf(out, STORE_TIME_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", (int)(y % 1000000),
                 (int)m % 100, (int)d % 100, (int)(sod / 3600) % 100, (int)(sod / 60 % 60), (int)(sod % 60),
                 (int)frac % 1000000);
        return;
    }
    char *p = out;
#define DIGITS(v, n)                                                                               \
    for (int k_ = (n)-1; k_ >= 0; k_--) {                                                          \
        p[k_] = (char)('0' + (v) % 10);                                                            \
        (v) /= 10;                                                                                 \
    }                                                                                              \
    p += (n)
    int64_t hh = sod / 3600, mi = sod / 60 % 60, ss = sod % 60;
    DIGITS(y, 4);
    *p++ = '-';
    DIGITS(m, 2);
    *p++ = '-';
    DIGITS(d, 2);
    *p++ = 'T';
    DIGITS(hh, 2);
    *p++ = ':';
    DIGITS(mi, 2);
    *p++ = ':';
    DIGITS(ss, 2);
    *p++ = '.';
    DIGITS(frac, 6);
#undef DIGITS
    *p++ = 'Z';
    *p = '\0';
}

/* qsort_r: rows of a cycle's result by id. */
static int cmp_row_id(const void *a, const void *b, void *arg)
{
    const PGresult *r = arg;
    uint64_t x = be64(PQgetvalue(r, *(const int *)a, 4)), y = be64(PQgetvalue(r, *(const int *)b, 4));
    return x < y ? -1 : x > y;
}

/* The storage behind a cycle's events: the result and the formatted timestamps. */
typedef struct cycle_rows {
    PGresult *res;
    char times[][STORE_TIME_LEN];
} cycle_rows;

static void free_cycle_rows(void *p)
{
    cycle_rows *cr = p;
    PQclear(cr->res);
    free(cr);
}

bool store_cycle_end(store *s, batch *b, store_seen *seen)
{
    batch_clear(b);
    memset(seen, 0, sizeof *seen);
    if (!s->conn) {
        store_set_err(s, "cycle", "not connected");
        return false;
    }
    PGresult *r = await_result(s, "cycle (mark and read)");
    if (!r)
        return false;
    int n = PQntuples(r);
    if (n < 1 || PQnfields(r) != 9 || PQgetlength(r, 0, 0) != 8) {
        PQclear(r);
        store_set_err(s, "cycle", "unexpected result shape");
        return false;
    }
    seen->xmin = be64(PQgetvalue(r, 0, 0));
    seen->tag = PQgetisnull(r, 0, 1) ? 0 : be64(PQgetvalue(r, 0, 1));
    bool empty = PQgetisnull(r, 0, 4);
    cycle_rows *cr = empty ? NULL : malloc(sizeof *cr + (size_t)n * STORE_TIME_LEN);
    if (empty || !cr || !batch_reserve(b, (size_t)n)) {
        PQclear(r);
        free(cr);
        if (empty)
            return true;
        store_set_err(s, "cycle", "out of memory");
        return false;
    }
    cr->res = r;
    /* Each part of the statement comes in id order; the parts are merged here, and
     * a row read by two parts is kept once. */
    int *rowix = malloc((size_t)n * sizeof *rowix);
    if (!rowix) {
        free_cycle_rows(cr);
        store_set_err(s, "cycle", "out of memory");
        return false;
    }
    bool sorted = true;
    for (int i = 0; i < n; i++) {
        rowix[i] = i;
        sorted = sorted && (i == 0 || be64(PQgetvalue(r, i - 1, 4)) <= be64(PQgetvalue(r, i, 4)));
    }
    if (!sorted)
        qsort_r(rowix, (size_t)n, sizeof *rowix, cmp_row_id, r);
    size_t k = 0;
    for (int j = 0; j < n; j++) {
        int i = rowix[j];
        long long id = (long long)be64(PQgetvalue(r, i, 4));
        unsigned flags = (unsigned)ntohl(*(const uint32_t *)(const void *)PQgetvalue(r, i, 3));
        if (k > 0 && b->ev[k - 1].id == id) {
            b->ev[k - 1].flags |= flags;
            continue;
        }
        event *e = &b->ev[k++];
        e->id = id;
        e->flags = flags;
        e->run_id = PQgetvalue(r, i, 5);
        e->run_id_len = (size_t)PQgetlength(r, i, 5);
        e->seq = (long long)be64(PQgetvalue(r, i, 6));
        int64_t us = (int64_t)be64(PQgetvalue(r, i, 7));
        format_timestamp(cr->times[i], us);
        e->created_at = cr->times[i];
        e->created_epoch = (double)us / 1e6 + 946684800.0;
        if (PQgetisnull(r, i, 8)) {
            e->payload = "";
            e->payload_len = 0;
        } else {
            /* jsonb's binary form is a version byte, then the text. */
            e->payload = PQgetvalue(r, i, 8) + 1;
            e->payload_len = (size_t)PQgetlength(r, i, 8) - 1;
        }
    }
    free(rowix);
    b->n = k;
    b->owner = cr;
    b->owner_free = free_cycle_rows;
    return true;
}

bool store_sleep(store *s, bool *asleep)
{
    *asleep = false;
    PGresult *r = store_run(s, "take the wake-up lock",
                            "SELECT pg_try_advisory_lock(" STR(LOCK_CLASS) ", " STR(LOCK_SLEEP) ")", 0, NULL);
    if (!r)
        return false;
    s->asleep = *asleep = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return true;
}

bool store_asleep(const store *s)
{
    return s->asleep;
}

bool store_low_water(store *s, long long *low)
{
    PGresult *r = store_run(s, "read the low water", "SELECT low_water FROM outboxd_relay", 0, NULL);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1;
    if (ok)
        *low = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    else
        store_set_err(s, "read the low water", "outboxd_relay has no row: the schema is damaged");
    PQclear(r);
    return ok;
}

bool store_may_vacuum(store *s, bool *may)
{
    PGresult *r = store_run(s, "may vacuum",
                            "SELECT pg_has_role(relowner, 'USAGE') FROM pg_class"
                            " WHERE oid = to_regclass('run_outbox')",
                            0, NULL);
    if (!r)
        return false;
    *may = PQntuples(r) == 1 && PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return true;
}

bool store_vacuum_begin(store *s)
{
    s->sqlstate[0] = '\0';
    if (!s->conn) {
        store_set_err(s, "vacuum", "not connected");
        return false;
    }
    if (!PQsendQuery(s->conn, "VACUUM (SKIP_LOCKED) run_outbox") ||
        flush_all(s, store_now_ms() + s->timeout_ms) != 1) {
        store_set_err(s, "vacuum", PQerrorMessage(s->conn));
        store_disconnect(s);
        return false;
    }
    return true;
}

bool store_vacuum_poll(store *s, bool *done)
{
    *done = false;
    if (!s->conn) {
        store_set_err(s, "vacuum", "not connected");
        return false;
    }
    if (!PQconsumeInput(s->conn)) {
        store_set_err(s, "vacuum", PQerrorMessage(s->conn));
        store_disconnect(s);
        return false;
    }
    bool ok = true;
    while (!PQisBusy(s->conn)) {
        PGresult *r = PQgetResult(s->conn);
        if (!r) {
            *done = true;
            break;
        }
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            store_set_err(s, "vacuum", PQresultErrorMessage(r));
            ok = false;
        }
        PQclear(r);
    }
    if (!ok)
        store_disconnect(s);
    return ok;
}

bool store_mark_published(store *s, const long long *ids, size_t n)
{
    if (n == 0)
        return true;
    buf a;
    buf_init(&a, 0);
    bool ok = id_array(&a, ids, n);
    if (ok) {
        const char *params[] = {a.data};
        ok = store_run_cmd(s, "mark published",
                           "UPDATE run_outbox SET published_at = now()"
                           " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                           1, params);
    } else {
        store_set_err(s, "mark published", "out of memory");
    }
    buf_free(&a);
    return ok;
}

bool store_record_failure(store *s, const long long *ids, size_t n, int attempts, const char *error)
{
    if (n == 0)
        return true;
    buf a;
    buf_init(&a, 0);
    bool ok = id_array(&a, ids, n);
    if (ok) {
        char att[24];
        snprintf(att, sizeof att, "%d", attempts);
        const char *params[] = {a.data, att, error};
        ok = store_run_cmd(s, "record failure",
                           "UPDATE run_outbox SET attempts = attempts + $2::int, last_error = $3"
                           " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                           3, params);
    } else {
        store_set_err(s, "record failure", "out of memory");
    }
    buf_free(&a);
    return ok;
}

bool store_backlog(store *s, long long from_id, long long frontier, const char *const *held,
                   const size_t *held_len, size_t nheld, const long long *held_seq, long long *count,
                   double *oldest_age_s)
{
    char from[24], front[24];
    snprintf(from, sizeof from, "%lld", from_id);
    snprintf(front, sizeof front, "%lld", frontier);
    buf runs, seqs;
    buf_init(&runs, 0);
    buf_init(&seqs, 0);
    if (!text_array(&runs, held, held_len, nheld) || !id_array(&seqs, held_seq, nheld)) {
        buf_free(&runs);
        buf_free(&seqs);
        store_set_err(s, "read backlog", "out of memory");
        return false;
    }
    const char *params[] = {from, front, runs.data, seqs.data};
    /* Bounded work, whatever the backlog: above the frontier the rows are all unread,
     * so the highest id tells how many (ids of rolled-back inserts count too, until
     * a committed row passes them); below it, the few unpublished rows from the low
     * water on (held runs through their own rows) are counted. */
    PGresult *r = store_run(s, "read backlog",
                            "WITH below AS ((SELECT created_at FROM run_outbox"
                            "                WHERE id >= $1::bigint AND id <= $2::bigint AND published_at IS NULL"
                            "                  AND run_id <> ALL($3::text[]) ORDER BY id LIMIT 100000)"
                            "               UNION ALL"
                            "               (SELECT o.created_at FROM unnest($3::text[], $4::bigint[]) h(run, seq)"
                            "                CROSS JOIN LATERAL (SELECT created_at FROM run_outbox"
                            "                 WHERE run_id = h.run AND seq >= h.seq AND published_at IS NULL) o"
                            "                LIMIT 100000)),"
                            "     above AS (SELECT created_at FROM run_outbox WHERE id > $2::bigint ORDER BY id LIMIT 1)"
                            " SELECT greatest((SELECT max(id) FROM run_outbox) - $2::bigint, 0) + (SELECT count(*) FROM below),"
                            "  coalesce(extract(epoch FROM now() - least((SELECT min(created_at) FROM below),"
                            "                                          (SELECT created_at FROM above))), 0)::float8",
                            4, params);
    buf_free(&runs);
    buf_free(&seqs);
    if (!r)
        return false;
    *count = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    *oldest_age_s = strtod(PQgetvalue(r, 0, 1), NULL);
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
     * The idle ones are locked first (a writer of the run then waits, and writers
     * busy now are skipped), and only then is it checked, in a snapshot taken after
     * those locks, that the run has no rows: a writer that committed before sees its
     * row counted, one after finds the counter gone and starts the run over. */
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

bool store_print_status(store *s, bool json)
{
    char sql[1024];
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
             " (SELECT count(*) FROM run_outbox_seq)",
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
    int nb = PQntuples(blocked);

    buf out;
    buf_init(&out, 0);
    bool ok;
    if (json) {
        ok = buf_printf(&out,
                        "{\"backlog\":%lld,\"oldest_unpublished_age_seconds\":%.3f,"
                        "\"published_last_minute\":%lld,\"publish_rate_per_second\":%.2f,"
                        "\"last_published_id\":%s,\"table_bytes\":%s,\"index_bytes\":%s,"
                        "\"schema_version\":%s,\"run_counters\":%s,\"leader\":",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version, counters) &&
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
        ok = ok && buf_puts(&out, "]}\n");
    } else {
        ok = buf_printf(&out,
                        "backlog:               %lld unpublished\n"
                        "oldest unpublished:    %.3f s\n"
                        "published last minute: %lld (%.2f/s)\n"
                        "last published id:     %s\n"
                        "table size:            %s bytes (indexes %s bytes)\n"
                        "schema version:        %s\n"
                        "run counters:          %s (runs whose events retention deleted)\n"
                        "relay leader:          %s\n"
                        "runs with failed attempts: %d%s\n",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version, counters, leader ? leader : "none", nb, nb == 20 ? " (first 20)" : "");
        for (int i = 0; ok && i < nb; i++)
            ok = buf_printf(&out, "  run %s: id %s seq %s, %s attempts, last error: %s\n",
                            PQgetvalue(blocked, i, 0), PQgetvalue(blocked, i, 1),
                            PQgetvalue(blocked, i, 2), PQgetvalue(blocked, i, 3),
                            PQgetvalue(blocked, i, 4));
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
