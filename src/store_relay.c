/* The relay's statements: the prepared cycle (mark, low water, read by id), the
 * wake-up lock it sleeps under, failures, the backlog and its own VACUUM. The
 * connection helpers they use are in store_pg.c. */
#include "store_int.h"

#include "buf.h"

#include <arpa/inet.h>
#include <endian.h>
#include <libpq-fe.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    "   CROSS JOIN LATERAL (SELECT " CYCLE_COLS " FROM run_outbox WHERE id BETWEEN g.lo AND g.hi"
    "    ORDER BY id LIMIT $12::int) o"
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
    r = store_await_result(s, "prepare the relay's statement");
    PQclear(r);
    s->prepared = r != NULL;
    return s->prepared;
}

bool store_id_last_value(store *s, long long *last)
{
    /* Read from the sequence itself: pg_sequence_last_value() is NULL before the first
     * nextval (a backup of a database without events yet). pg_get_serial_sequence
     * quotes the name it returns. */
    PGresult *r = store_run(s, "name the id sequence", "SELECT pg_get_serial_sequence('run_outbox', 'id')", 0, NULL);
    if (!r)
        return false;
    char sql[600];
    bool named = !PQgetisnull(r, 0, 0);
    if (named)
        /* Before its first nextval (or after setval(..., false)) last_value is the
         * next id to hand out, not the last one handed out. */
        snprintf(sql, sizeof sql, "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s",
                 PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!named) {
        store_set_err(s, "name the id sequence", "run_outbox.id has no sequence: the schema is damaged");
        return false;
    }
    r = store_run(s, "read the id sequence", sql, 0, NULL);
    if (!r)
        return false;
    *last = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return true;
}

bool store_cycle_begin(store *s, const store_cycle *c)
{
    s->sqlstate[0] = '\0';
    if (!s->conn || !s->prepared) {
        store_set_err(s, "cycle", "not connected");
        return false;
    }
    char after[24], limit[24], cu_limit[24], low[24], gap_rows[24];
    snprintf(after, sizeof after, "%lld", c->after);
    snprintf(limit, sizeof limit, "%ld", c->limit);
    snprintf(cu_limit, sizeof cu_limit, "%ld", c->cu_limit > 0 ? c->cu_limit : 1);
    snprintf(low, sizeof low, "%lld", c->low_water);
    snprintf(gap_rows, sizeof gap_rows, "%ld", c->gap_rows > 0 ? c->gap_rows : 1);
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
                                low, c->wake ? "true" : "false", c->need_tag ? "true" : "false", gap_rows};
        ok = PQsendQueryPrepared(s->conn, "outboxd_cycle", 12, params, NULL, NULL, 1) != 0;
        if (!ok)
            store_set_err(s, "cycle", PQerrorMessage(s->conn));
        else if (store_flush_all(s, store_now_ms() + s->timeout_ms) != 1) {
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
    PGresult *r = store_await_result(s, "cycle (mark and read)");
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

/* Transaction ids in pg_locks are 32 bits wide; the snapshot's xmax (a full id) tells
 * their epoch: every running transaction lies within 2^31 of it, above or below. */
#define FULL_XID(x) "(c.nx + (" x "::text::bigint - c.nx % 4294967296 + 6442450944) % 4294967296 - 2147483648)"

bool store_outbox_writers(store *s, store_writers *w)
{
    memset(w, 0, sizeof *w);
    /* A transaction's lowest id held (ExclusiveLock on its own ids) is its top-level
     * one, which a subtransaction that wrote the row got its id after. Locks of a
     * prepared transaction show without a pid. */
    PGresult *r = store_run(
        s, "look for writers of run_outbox (pg_locks)",
        "WITH c AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS nx),"
        " t AS (SELECT l.virtualtransaction AS vx, l.pid, min(" FULL_XID("l.transactionid") ") AS xid"
        "       FROM pg_locks l, c WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted"
        "       GROUP BY l.virtualtransaction, l.pid),"
        " w AS (SELECT DISTINCT t.xid, t.pid FROM pg_locks l"
        "       JOIN t ON t.vx = l.virtualtransaction AND t.pid IS NOT DISTINCT FROM l.pid"
        "       WHERE l.locktype = 'relation' AND l.relation = 'run_outbox'::regclass"
        "         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())),"
        " o AS (SELECT w.xid, w.pid, coalesce(extract(epoch FROM now() - a.xact_start),"
        "                                     extract(epoch FROM now() - p.prepared), 0)::float8 AS age"
        "       FROM w LEFT JOIN pg_stat_activity a ON a.pid = w.pid"
        "       LEFT JOIN pg_prepared_xacts p ON w.pid IS NULL AND p.transaction::text::bigint = w.xid % 4294967296"
        "       ORDER BY w.xid LIMIT 1)"
        " SELECT least(c.nx, o.xid), (SELECT count(*) FROM w), o.xid, coalesce(o.pid, 0), o.pid IS NULL, o.age"
        " FROM c LEFT JOIN o ON true",
        0, NULL);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1 && PQnfields(r) == 6;
    if (ok) {
        w->horizon = strtoull(PQgetvalue(r, 0, 0), NULL, 10);
        w->count = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        if (w->count > 0) {
            w->oldest = strtoull(PQgetvalue(r, 0, 2), NULL, 10);
            w->oldest_pid = atoi(PQgetvalue(r, 0, 3));
            w->oldest_prepared = PQgetvalue(r, 0, 4)[0] == 't';
            w->oldest_age_s = strtod(PQgetvalue(r, 0, 5), NULL);
        }
    } else {
        store_set_err(s, "look for writers of run_outbox", "unexpected result shape");
    }
    PQclear(r);
    return ok;
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
        store_flush_all(s, store_now_ms() + s->timeout_ms) != 1) {
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

/* Runs an UPDATE of the rows whose ids are ids[0..n): $1 is their array, params[1..]
 * the statement's other parameters (nparams in all). */
static bool update_ids(store *s, const char *what, const char *sql, const long long *ids, size_t n,
                       const char **params, int nparams)
{
    if (n == 0)
        return true;
    buf a;
    buf_init(&a, 0);
    bool ok = id_array(&a, ids, n);
    if (ok) {
        params[0] = a.data;
        ok = store_run_cmd(s, what, sql, nparams, params);
    } else {
        store_set_err(s, what, "out of memory");
    }
    buf_free(&a);
    return ok;
}

bool store_mark_published(store *s, const long long *ids, size_t n)
{
    const char *params[1];
    return update_ids(s, "mark published",
                      "UPDATE run_outbox SET published_at = now()"
                      " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                      ids, n, params, 1);
}

bool store_record_failure(store *s, const long long *ids, size_t n, int attempts, const char *error)
{
    char att[24];
    snprintf(att, sizeof att, "%d", attempts);
    const char *params[] = {NULL, att, error};
    return update_ids(s, "record failure",
                      "UPDATE run_outbox SET attempts = attempts + $2::int, last_error = $3"
                      " WHERE id = ANY($1::bigint[]) AND published_at IS NULL",
                      ids, n, params, 3);
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
