/* PostgreSQL access for every command. All SQL lives here. Statements are sent with
 * libpq's asynchronous calls and awaited with poll(2) against a deadline, because the
 * blocking calls would wait forever on a server that is stopped but keeps its socket. */
#include "store_pg.h"

#include "buf.h"
#include "log.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Advisory lock keys (two-int form: shows in pg_locks as classid/objid). */
#define LOCK_CLASS 0x6f627864 /* "obxd" */
#define LOCK_MIGRATE 1
#define LOCK_LEADER 2

struct store {
    char *url;
    char *appname;
    long timeout_ms;
    PGconn *conn;
    bool notified;
    bool retry_asked;
    char err[512];
    char sqlstate[6];
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_err(store *s, const char *what, const char *why)
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
        long long left = deadline - now_ms();
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
        set_err(s, "connect", "out of memory");
        return false;
    }
    long long deadline = now_ms() + s->timeout_ms;
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    while (PQstatus(c) != CONNECTION_BAD && st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
        int r = wait_fd(PQsocket(c), st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
        if (r <= 0) {
            set_err(s, "connect", r == 0 ? "timed out" : strerror(errno));
            PQfinish(c);
            return false;
        }
        st = PQconnectPoll(c);
    }
    if (PQstatus(c) != CONNECTION_OK) {
        set_err(s, "connect", PQerrorMessage(c));
        PQfinish(c);
        return false;
    }
    PQsetNoticeProcessor(c, log_notice, NULL);
    if (PQsetnonblocking(c, 1) != 0) {
        set_err(s, "connect", PQerrorMessage(c));
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
    long long deadline = now_ms() + s->timeout_ms;
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
        set_err(s, what, "no result");
        return NULL;
    }
    ExecStatusType st = PQresultStatus(last);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        const char *code = PQresultErrorField(last, PG_DIAG_SQLSTATE);
        snprintf(s->sqlstate, sizeof s->sqlstate, "%s", code ? code : "");
        set_err(s, what, PQresultErrorMessage(last));
        PQclear(last);
        if (PQstatus(s->conn) != CONNECTION_OK)
            store_disconnect(s);
        return NULL;
    }
    return last;

timeout:
    set_err(s, what, "timed out; closing the connection");
    store_disconnect(s);
    return NULL;
broken:
    set_err(s, what, PQerrorMessage(s->conn));
    store_disconnect(s);
    return NULL;
}

/* Runs one parameterized statement (text parameters). NULL on failure. */
static PGresult *run(store *s, const char *what, const char *sql, int n, const char *const *params)
{
    s->sqlstate[0] = '\0';
    if (!s->conn) {
        set_err(s, what, "not connected");
        return NULL;
    }
    int ok = n ? PQsendQueryParams(s->conn, sql, n, NULL, params, NULL, NULL, 0)
               : PQsendQuery(s->conn, sql);
    if (!ok) {
        set_err(s, what, PQerrorMessage(s->conn));
        store_disconnect(s);
        return NULL;
    }
    return await_result(s, what);
}

static bool run_cmd(store *s, const char *what, const char *sql, int n, const char *const *params)
{
    PGresult *r = run(s, what, sql, n, params);
    PQclear(r);
    return r != NULL;
}

/* ---- schema ---------------------------------------------------------------------- */

/* Migration 1: the outbox, the per-run sequence and the wake-up trigger.
 * Writers of one run are serialized by the row lock on their run_outbox_seq row,
 * held from the upsert until commit, so per-run commit order is seq order. The id
 * default is drawn before BEFORE triggers run (before that lock), so the trigger
 * draws the id again after taking it: per-run id order is then commit order too. */
static const char migration_1[] =
    "CREATE TABLE outboxd_meta ("
    "  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
    "  epoch text NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 12));"
    "INSERT INTO outboxd_meta DEFAULT VALUES;"
    "CREATE TABLE run_outbox_seq ("
    "  run_id text PRIMARY KEY,"
    "  last_seq bigint NOT NULL);"
    "CREATE TABLE run_outbox ("
    "  id BIGSERIAL PRIMARY KEY,"
    "  run_id TEXT NOT NULL CHECK (run_id <> ''),"
    "  seq BIGINT NOT NULL,"
    "  payload JSONB NOT NULL,"
    "  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),"
    "  published_at TIMESTAMPTZ NULL,"
    "  attempts INT NOT NULL DEFAULT 0,"
    "  last_error TEXT NULL);"
    "CREATE UNIQUE INDEX run_outbox_run_seq ON run_outbox (run_id, seq);"
    "CREATE INDEX run_outbox_unpublished ON run_outbox (id) WHERE published_at IS NULL;"
    /* Every publish leaves a dead tuple: vacuum this table early and often. */
    "ALTER TABLE run_outbox SET (autovacuum_vacuum_scale_factor = 0.01,"
    "  autovacuum_vacuum_threshold = 1000, autovacuum_analyze_scale_factor = 0.02,"
    "  autovacuum_vacuum_insert_scale_factor = 0.05);"
    "ALTER TABLE run_outbox_seq SET (autovacuum_vacuum_scale_factor = 0.01,"
    "  autovacuum_vacuum_threshold = 1000);"
    /* Pinned search_path: the trigger must find its counter table and sequence
     * whatever search_path the inserting session has. */
    "CREATE FUNCTION outboxd_assign_seq() RETURNS trigger LANGUAGE plpgsql"
    " SET search_path FROM CURRENT AS $f$"
    " BEGIN"
    "  INSERT INTO run_outbox_seq AS s (run_id, last_seq) VALUES (NEW.run_id, 1)"
    "  ON CONFLICT (run_id) DO UPDATE SET last_seq = s.last_seq + 1"
    "  RETURNING s.last_seq INTO NEW.seq;"
    "  NEW.id := nextval('run_outbox_id_seq');"
    "  RETURN NEW;"
    " END $f$;"
    "CREATE TRIGGER run_outbox_assign_seq BEFORE INSERT ON run_outbox"
    "  FOR EACH ROW EXECUTE FUNCTION outboxd_assign_seq();"
    "CREATE FUNCTION outboxd_notify() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $f$"
    " BEGIN PERFORM pg_notify('" STORE_NOTIFY_CHANNEL "', ''); RETURN NULL; END $f$;"
    "CREATE TRIGGER run_outbox_notify AFTER INSERT ON run_outbox"
    "  FOR EACH STATEMENT EXECUTE FUNCTION outboxd_notify();";

static const struct {
    int version;
    const char *name;
    const char *sql;
} migrations[] = {
    {1, "outbox table, per-run seq, notify trigger", migration_1},
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "STORE_SCHEMA_VERSION must name the last migration");

static bool schema_version(store *s, int *version)
{
    PGresult *r = run(s, "read schema version",
                      "SELECT coalesce(max(version), 0) FROM outboxd_migrations", 0, NULL);
    if (!r)
        return false;
    *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return true;
}

bool store_migrate(store *s, int *from, int *to)
{
    char key[64];
    snprintf(key, sizeof key, "SELECT pg_advisory_lock(%d, %d)", LOCK_CLASS, LOCK_MIGRATE);
    if (!run_cmd(s, "take migration lock", key, 0, NULL))
        return false;
    bool ok = false;
    if (!run_cmd(s, "create migrations table",
                 "SET client_min_messages = warning;"
                 "CREATE TABLE IF NOT EXISTS outboxd_migrations ("
                 " version int PRIMARY KEY, name text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 0, NULL))
        goto done;
    int v;
    if (!schema_version(s, &v))
        goto done;
    *from = *to = v;
    if (v > STORE_SCHEMA_VERSION) {
        snprintf(s->err, sizeof s->err,
                 "database schema is at version %d, newer than this binary's %d: upgrade outboxd", v,
                 STORE_SCHEMA_VERSION);
        goto done;
    }
    for (int i = 0; i < NMIGRATIONS; i++) {
        if (migrations[i].version <= v)
            continue;
        char ver[24];
        snprintf(ver, sizeof ver, "%d", migrations[i].version);
        const char *params[] = {ver, migrations[i].name};
        if (!run_cmd(s, "begin", "BEGIN", 0, NULL))
            goto done;
        if (!run_cmd(s, "apply migration", migrations[i].sql, 0, NULL) ||
            !run_cmd(s, "record migration",
                     "INSERT INTO outboxd_migrations (version, name) VALUES ($1::int, $2)", 2, params)) {
            char keep[sizeof s->err];
            memcpy(keep, s->err, sizeof keep);
            if (store_connected(s) && !run_cmd(s, "rollback", "ROLLBACK", 0, NULL))
                log_warn("%s", s->err);
            memcpy(s->err, keep, sizeof keep);
            goto done;
        }
        if (!run_cmd(s, "commit", "COMMIT", 0, NULL))
            goto done;
        *to = migrations[i].version;
        log_info("applied migration %d (%s)", migrations[i].version, migrations[i].name);
    }
    ok = true;
done:
    if (store_connected(s)) {
        char unlock[64];
        snprintf(unlock, sizeof unlock, "SELECT pg_advisory_unlock(%d, %d)", LOCK_CLASS, LOCK_MIGRATE);
        char keep[sizeof s->err];
        memcpy(keep, s->err, sizeof keep);
        if (!run_cmd(s, "release migration lock", unlock, 0, NULL))
            log_warn("%s", s->err);
        memcpy(s->err, keep, sizeof keep);
    }
    return ok;
}

bool store_check_schema(store *s, char *epoch, size_t epoch_len)
{
    int v;
    if (!schema_version(s, &v)) {
        if (!strcmp(s->sqlstate, "42P01"))
            snprintf(s->err, sizeof s->err, "the outboxd schema is not installed: run 'outboxd migrate'");
        return false;
    }
    if (v != STORE_SCHEMA_VERSION) {
        snprintf(s->err, sizeof s->err,
                 v < STORE_SCHEMA_VERSION
                     ? "database schema is at version %d, this binary needs %d: run 'outboxd migrate'"
                     : "database schema is at version %d, newer than this binary's %d: upgrade outboxd",
                 v, STORE_SCHEMA_VERSION);
        return false;
    }
    /* The timeline joins the epoch: after a promotion or a point-in-time restore the
     * sequences may be behind marks already in Redis, so marks start afresh. */
    PGresult *r = run(s, "read epoch",
                      "SELECT epoch || '.' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
                      " FROM outboxd_meta",
                      0, NULL);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1;
    if (ok)
        snprintf(epoch, epoch_len, "%s", PQgetvalue(r, 0, 0));
    else
        snprintf(s->err, sizeof s->err, "outboxd_meta has no row: the schema is damaged");
    PQclear(r);
    return ok;
}

/* ---- wake-ups and leadership ----------------------------------------------------- */

bool store_listen(store *s)
{
    return run_cmd(s, "listen", "LISTEN " STORE_NOTIFY_CHANNEL, 0, NULL);
}

static bool backend_pid(store *s, char *pid, size_t len)
{
    PGresult *r = run(s, "check session", "SELECT pg_backend_pid()", 0, NULL);
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
        set_err(s, "wait", strerror(errno));
        return false;
    }
    if (r > 0 && (p[0].revents & (POLLIN | POLLERR | POLLHUP))) {
        if (!PQconsumeInput(s->conn)) {
            set_err(s, "wait", PQerrorMessage(s->conn));
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
    PGresult *r = run(s, "try leader lock", sql, 0, NULL);
    if (!r)
        return false;
    *leader = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
    return true;
}

/* ---- the relay's statements ------------------------------------------------------ */

static void clear_result(void *p)
{
    PQclear(p);
}

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

/* The fetch's select list, shared by both forms of the fetch; fill_batch reads it. */
#define FETCH_COLUMNS                                                                            \
    "SELECT id, run_id, seq,"                                                                    \
    " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"                \
    " payload::text, extract(epoch FROM created_at)::float8"

/* Takes r (owned by b from now on) into b's events. */
static bool fill_batch(store *s, PGresult *r, batch *b)
{
    size_t n = (size_t)PQntuples(r);
    if (!batch_reserve(b, n)) {
        PQclear(r);
        set_err(s, "fetch batch", "out of memory");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        event *e = &b->ev[i];
        e->id = strtoll(PQgetvalue(r, (int)i, 0), NULL, 10);
        e->run_id = PQgetvalue(r, (int)i, 1);
        e->run_id_len = (size_t)PQgetlength(r, (int)i, 1);
        e->seq = strtoll(PQgetvalue(r, (int)i, 2), NULL, 10);
        e->created_at = PQgetvalue(r, (int)i, 3);
        e->payload = PQgetvalue(r, (int)i, 4);
        e->payload_len = (size_t)PQgetlength(r, (int)i, 4);
        e->created_epoch = strtod(PQgetvalue(r, (int)i, 5), NULL);
    }
    b->n = n;
    b->owner = r;
    b->owner_free = clear_result;
    return true;
}

bool store_fetch(store *s, long limit, const char *const *skip, const size_t *skip_len, size_t nskip,
                 batch *b)
{
    batch_clear(b);
    char lim[24];
    snprintf(lim, sizeof lim, "%ld", limit);
    buf held;
    buf_init(&held, 0);
    if (!text_array(&held, skip, skip_len, nskip)) {
        buf_free(&held);
        set_err(s, "fetch batch", "out of memory");
        return false;
    }
    const char *params[] = {lim, held.data};
    /* Served by the partial index run_outbox_unpublished: reads only unpublished rows. */
    PGresult *r = run(s, "fetch batch",
                      FETCH_COLUMNS " FROM run_outbox WHERE published_at IS NULL AND run_id <> ALL($2::text[])"
                                    " ORDER BY id LIMIT $1::int",
                      2, params);
    buf_free(&held);
    return r && fill_batch(s, r, b);
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

bool store_fetch_begin(store *s, long limit, const char *const *skip, const size_t *skip_len, size_t nskip,
                       const long long *done, size_t ndone, const long long *exclude, size_t nexclude)
{
    s->sqlstate[0] = '\0';
    if (!s->conn) {
        set_err(s, "fetch batch", "not connected");
        return false;
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%ld", limit);
    buf held, dn, ex;
    buf_init(&held, 0);
    buf_init(&dn, 0);
    buf_init(&ex, 0);
    bool ok = text_array(&held, skip, skip_len, nskip) && id_array(&dn, done, ndone) &&
              id_array(&ex, exclude, nexclude);
    if (ok) {
        const char *params[] = {lim, held.data, dn.data, ex.data};
        /* The UPDATE and the SELECT share one snapshot: the rows just marked still
         * look unpublished to the SELECT, hence they are in $4 too. NOT IN over a
         * subquery is hashed: cheap however long the list. */
        ok = PQsendQueryParams(s->conn,
                               "WITH marked AS (UPDATE run_outbox SET published_at = now()"
                               "  WHERE id = ANY($3::bigint[]) AND published_at IS NULL) " FETCH_COLUMNS
                               " FROM run_outbox WHERE published_at IS NULL AND run_id <> ALL($2::text[])"
                               "  AND id NOT IN (SELECT unnest($4::bigint[]))"
                               " ORDER BY id LIMIT $1::int",
                               4, NULL, params, NULL, NULL, 0) != 0;
        if (!ok)
            set_err(s, "fetch batch", PQerrorMessage(s->conn));
        else if (flush_all(s, now_ms() + s->timeout_ms) != 1) {
            set_err(s, "fetch batch", "could not send the statement");
            ok = false;
        }
        if (!ok)
            store_disconnect(s);
    } else {
        set_err(s, "fetch batch", "out of memory");
    }
    buf_free(&held);
    buf_free(&dn);
    buf_free(&ex);
    return ok;
}

bool store_fetch_end(store *s, batch *b)
{
    batch_clear(b);
    if (!s->conn) {
        set_err(s, "fetch batch", "not connected");
        return false;
    }
    PGresult *r = await_result(s, "fetch batch (and mark)");
    return r && fill_batch(s, r, b);
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
        ok = run_cmd(s, "mark published",
                     "UPDATE run_outbox SET published_at = now()"
                     " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                     1, params);
    } else {
        set_err(s, "mark published", "out of memory");
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
        ok = run_cmd(s, "record failure",
                     "UPDATE run_outbox SET attempts = attempts + $2::int, last_error = $3"
                     " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                     3, params);
    } else {
        set_err(s, "record failure", "out of memory");
    }
    buf_free(&a);
    return ok;
}

bool store_backlog(store *s, long long *count, double *oldest_age_s)
{
    /* Bounded work on the leader's connection: count at most a million rows, and take
     * the oldest from the lowest unpublished id (ids follow commit time closely). */
    PGresult *r = run(s, "read backlog",
                      "SELECT (SELECT count(*) FROM (SELECT 1 FROM run_outbox WHERE published_at IS NULL"
                      "         LIMIT 1000000) c),"
                      " coalesce((SELECT extract(epoch FROM now() - created_at) FROM run_outbox"
                      "           WHERE published_at IS NULL ORDER BY id LIMIT 1), 0)::float8",
                      0, NULL);
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
    PGresult *r = run(s, what, sql, n, params);
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
           run_cmd(s, "retry: wake the relays", "SELECT pg_notify('" STORE_NOTIFY_CHANNEL "', 'retry')", 0,
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

bool store_prune(store *s, long older_than_ms, long limit, long long *deleted)
{
    char age[32], lim[24];
    snprintf(age, sizeof age, "%ld milliseconds", older_than_ms);
    snprintf(lim, sizeof lim, "%ld", limit);
    const char *params[] = {age, lim};
    /* Looks only at the `limit` oldest published rows (primary-key order, which follows
     * publish order closely) and deletes those past the window: bounded work whether
     * or not anything qualifies, short locks, and unpublished rows are never touched. */
    return count_cmd(s, "prune",
                     "DELETE FROM run_outbox WHERE id IN ("
                     " SELECT id FROM (SELECT id, published_at FROM run_outbox"
                     "                 WHERE published_at IS NOT NULL ORDER BY id LIMIT $2::int) o"
                     " WHERE published_at < now() - $1::interval)",
                     2, params, deleted);
}

/* ---- producer side and status ---------------------------------------------------- */

bool store_emit(store *s, const char *run_id, const char *json, long long *id, long long *seq)
{
    const char *params[] = {run_id, json};
    PGresult *r = run(s, "emit",
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
             "SELECT (SELECT count(*) FROM run_outbox WHERE published_at IS NULL),"
             " (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
             "   FROM run_outbox WHERE published_at IS NULL),"
             " (SELECT count(*) FROM run_outbox WHERE published_at > now() - interval '1 minute'),"
             " (SELECT coalesce(max(id), 0) FROM run_outbox WHERE published_at IS NOT NULL),"
             " pg_total_relation_size('run_outbox'), pg_indexes_size('run_outbox'),"
             " (SELECT coalesce(max(version), 0) FROM outboxd_migrations),"
             " (SELECT a.pid || ' ' || a.application_name || ' ' || coalesce(host(a.client_addr), 'local')"
             "   FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
             "   WHERE l.locktype = 'advisory' AND l.classid = %d AND l.objid = %d AND l.granted"
             "   LIMIT 1)",
             LOCK_CLASS, LOCK_LEADER);
    PGresult *r = run(s, "status", sql, 0, NULL);
    if (!r)
        return false;
    PGresult *blocked = run(s, "status: blocked runs",
                            "SELECT run_id, id, seq, attempts, coalesce(last_error, '')"
                            " FROM run_outbox WHERE published_at IS NULL AND attempts > 0"
                            " ORDER BY id LIMIT 20",
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
    int nb = PQntuples(blocked);

    buf out;
    buf_init(&out, 0);
    bool ok;
    if (json) {
        ok = buf_printf(&out,
                        "{\"backlog\":%lld,\"oldest_unpublished_age_seconds\":%.3f,"
                        "\"published_last_minute\":%lld,\"publish_rate_per_second\":%.2f,"
                        "\"last_published_id\":%s,\"table_bytes\":%s,\"index_bytes\":%s,"
                        "\"schema_version\":%s,\"leader\":",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version) &&
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
                        "relay leader:          %s\n"
                        "runs with failed attempts: %d%s\n",
                        backlog, oldest, last_minute, last_minute / 60.0, last_id, table_bytes,
                        index_bytes, version, leader ? leader : "none", nb, nb == 20 ? " (first 20)" : "");
        for (int i = 0; ok && i < nb; i++)
            ok = buf_printf(&out, "  run %s: id %s seq %s, %s attempts, last error: %s\n",
                            PQgetvalue(blocked, i, 0), PQgetvalue(blocked, i, 1),
                            PQgetvalue(blocked, i, 2), PQgetvalue(blocked, i, 3),
                            PQgetvalue(blocked, i, 4));
    }
    if (ok)
        fputs(out.data, stdout);
    else
        set_err(s, "status", "out of memory");
    buf_free(&out);
    PQclear(r);
    PQclear(blocked);
    return ok;
}
