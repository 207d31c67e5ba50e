/* The schema: numbered migrations, applied by `outboxd migrate` while producers keep
 * writing (every lock it takes on run_outbox is bounded and retried), and the check
 * that the relay and the one-shot commands make before they use the tables. */
#include "store_int.h"

#include "config.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define STR_(x) #x
#define STR(x) STR_(x)

/* A new epoch: random, so that no two schema instances (or two epochs of one) share
 * the keys of their Redis marks. */
#define NEW_EPOCH_SQL "substr(md5(random()::text || clock_timestamp()::text), 1, 12)"

/* Migration 1: the outbox, the per-run sequence and the wake-up trigger.
 * Writers of one run are serialized by the row lock on their run_outbox_seq row,
 * held from the upsert until commit, so per-run commit order is seq order. The id
 * default is drawn before BEFORE triggers run (before that lock), so the trigger
 * draws the id again after taking it: per-run id order is then commit order too. */
static const char migration_1[] =
    "CREATE TABLE outboxd_meta ("
    "  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
    "  epoch text NOT NULL DEFAULT " NEW_EPOCH_SQL ");"
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

/* Migration 2: cheaper for producers, cheaper marks (docs/SCHEMA.md).
 * - The trigger updates the run's counter row (inserting it for a run's first
 *   event) instead of an upsert per event, from a function with the schema written
 *   into it instead of a pinned search_path (a SET clause costs every call). The
 *   row lock queues the run's writers; when one commits, all waiters wake and the
 *   first to run goes on. (A transaction-scoped advisory lock per run was measured
 *   too: cheaper for writers of many runs, but it hands the lock to one sleeping
 *   waiter after another, which halved the throughput of 32 writers of one run on
 *   two busy cores; docs/BENCHMARKS.md.) The id is drawn once, after that lock; the
 *   column default, drawn before any BEFORE trigger, goes. The counter's update
 *   gives the transaction its id before the event's id is drawn, so that a relay
 *   that sees an id missing can tell when it can no longer appear.
 * - No partial index on published_at and a fillfactor below 100: the relay's mark
 *   becomes a HOT update, and so does the counter's. The relay finds new rows by id.
 * - NOTIFY only when a relay waits: the leading relay holds an advisory lock
 *   (LOCK_SLEEP) exactly while it waits; a writer that cannot share it notifies, a
 *   writer that can share it holds it until its commit, so the relay cannot start
 *   waiting before that commit is visible to it. This comes before the run's lock,
 *   which writers of one run queue for: its hold time is that run's throughput.
 * - run_outbox_seq.last_event_at: retention writes when a run's last events went,
 *   so that the counters of runs long gone can go too (--counter-retention). */
static const char migration_2[] =
    "CREATE TABLE outboxd_relay ("
    "  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),"
    "  low_water bigint NOT NULL,"
    "  updated_at timestamptz NOT NULL DEFAULT now()) WITH (fillfactor = 50);"
    "INSERT INTO outboxd_relay (low_water)"
    "  SELECT coalesce((SELECT min(id) FROM run_outbox WHERE published_at IS NULL),"
    "                  (SELECT max(id) + 1 FROM run_outbox), 1);"
    "DROP TRIGGER run_outbox_notify ON run_outbox;"
    "DROP FUNCTION outboxd_notify();"
    "DROP INDEX run_outbox_unpublished;"
    "ALTER TABLE run_outbox ALTER COLUMN id DROP DEFAULT, SET (fillfactor = 80);"
    "ALTER TABLE run_outbox_seq ADD COLUMN last_event_at timestamptz NOT NULL DEFAULT now(),"
    "  SET (fillfactor = 50);"
    "DO $do$ BEGIN EXECUTE format($f$"
    "CREATE OR REPLACE FUNCTION %1$I.outboxd_assign_seq() RETURNS trigger LANGUAGE plpgsql AS $body$"
    " BEGIN"
    "  IF NOT pg_catalog.pg_try_advisory_xact_lock_shared(" STR(LOCK_CLASS) ", " STR(LOCK_SLEEP) ") THEN"
    "   PERFORM pg_catalog.pg_notify('" STORE_NOTIFY_CHANNEL "', '');"
    "  END IF;"
    "  UPDATE %1$I.run_outbox_seq SET last_seq = last_seq + 1 WHERE run_id = NEW.run_id"
    "   RETURNING last_seq INTO NEW.seq;"
    "  IF NOT FOUND THEN"
    "   INSERT INTO %1$I.run_outbox_seq AS s (run_id, last_seq) VALUES (NEW.run_id, 1)"
    "    ON CONFLICT (run_id) DO UPDATE SET last_seq = s.last_seq + 1 RETURNING s.last_seq INTO NEW.seq;"
    "  END IF;"
    "  NEW.id := pg_catalog.nextval(%2$L::pg_catalog.regclass);"
    "  RETURN NEW;"
    " END $body$ $f$, current_schema(),"
    "  pg_get_serial_sequence(quote_ident(current_schema()) || '.run_outbox', 'id'));"
    " END $do$;";

/* Migration 3: revoked tokens, by jti or by sub, each until a time. Gateways read the
 * rows in force at every (re)connect and on every NOTIFY outboxd_revoke, so a
 * revocation made while a gateway was away still reaches it; rows past their time
 * are deleted by the next `outboxd revoke`. */
static const char migration_3[] =
    "CREATE TABLE outboxd_revocations ("
    "  id BIGSERIAL PRIMARY KEY,"
    "  kind TEXT NOT NULL CHECK (kind IN ('jti', 'sub')),"
    "  value TEXT NOT NULL CHECK (value <> '' AND length(value) <= 4096),"
    "  until TIMESTAMPTZ NOT NULL,"
    "  created_at TIMESTAMPTZ NOT NULL DEFAULT now());"
    "CREATE INDEX outboxd_revocations_until ON outboxd_revocations (until);";

static const struct migration {
    int version;
    const char *name;
    const char *sql;
    bool locks_outbox;    /* takes run_outbox ACCESS EXCLUSIVE first: a bounded wait, retried */
    bool stops_relays;    /* relays of earlier versions cannot run on it: end their sessions */
} migrations[] = {
    {1, "outbox table, per-run seq, notify trigger", migration_1, false, false},
    {2, "lighter insert trigger, HOT marks, notify only a waiting relay", migration_2, true, true},
    {3, "revoked tokens", migration_3, false, false},
};
#define NMIGRATIONS ((int)(sizeof migrations / sizeof migrations[0]))
_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "STORE_SCHEMA_VERSION must name the last migration");

/* Producers queue behind a pending ACCESS EXCLUSIVE request: asking for it at most
 * this long keeps every insert's wait well under a second. A long transaction on the
 * table makes the attempt fail; it is retried after a pause that lets the queued
 * inserts through. */
#define MIGRATE_LOCK_TIMEOUT "200ms"
#define MIGRATE_LOCK_PAUSE_MS 300
#define MIGRATE_LOCK_ATTEMPTS 100

/* *complete: the highest version up to which every migration is recorded; *newest:
 * the highest recorded. They differ when a database was migrated by a build that
 * had a later migration but not an earlier one (3 before 2). */
static bool schema_version(store *s, int *complete, int *newest)
{
    PGresult *r = store_run(s, "read schema version",
                            "SELECT version FROM outboxd_migrations ORDER BY version", 0, NULL);
    if (!r)
        return false;
    *complete = *newest = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        int v = atoi(PQgetvalue(r, i, 0));
        if (v == *complete + 1)
            *complete = v;
        *newest = v;
    }
    PQclear(r);
    return true;
}

static bool recorded(store *s, int version, bool *yes)
{
    char ver[24];
    snprintf(ver, sizeof ver, "%d", version);
    const char *params[] = {ver};
    PGresult *r = store_run(s, "read schema version",
                            "SELECT count(*) FROM outboxd_migrations WHERE version = $1::int", 1, params);
    if (!r)
        return false;
    *yes = atoi(PQgetvalue(r, 0, 0)) > 0;
    PQclear(r);
    return true;
}

static void pause_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Runs `sql` in one transaction, after taking run_outbox's lock in `lock_mode` when
 * it is set, and records migration `version` in it when version > 0. Producers queue
 * behind a pending lock request, so it is asked for at most MIGRATE_LOCK_TIMEOUT and
 * retried after a pause. `what` names the step in errors. Returns false with s->err
 * set when it failed; nothing was changed then. */
static bool locked_tx(store *s, const char *what, const char *lock_mode, const char *sql, int version,
                      const char *name)
{
    char ver[24], lock[128];
    snprintf(ver, sizeof ver, "%d", version);
    snprintf(lock, sizeof lock,
             "SET LOCAL lock_timeout = '" MIGRATE_LOCK_TIMEOUT "'; LOCK TABLE run_outbox IN %s MODE",
             lock_mode ? lock_mode : "");
    const char *params[] = {ver, name};
    for (int attempt = 1;; attempt++) {
        if (!store_run_cmd(s, "begin", "BEGIN", 0, NULL))
            return false;
        bool ok = (!lock_mode || store_run_cmd(s, "lock run_outbox", lock, 0, NULL)) &&
                  store_run_cmd(s, what, sql, 0, NULL) &&
                  (version <= 0 ||
                   store_run_cmd(s, "record migration",
                                 "INSERT INTO outboxd_migrations (version, name) VALUES ($1::int, $2)", 2, params)) &&
                  store_run_cmd(s, "commit", "COMMIT", 0, NULL);
        if (ok)
            return true;
        bool busy = !strcmp(s->sqlstate, "55P03"); /* lock_not_available */
        store_rollback(s);
        if (!busy || !store_connected(s))
            return false;
        if (attempt == MIGRATE_LOCK_ATTEMPTS) {
            snprintf(s->err, sizeof s->err,
                     "%s: run_outbox stayed locked by other transactions through %d attempts "
                     "(see pg_stat_activity for long transactions on it); nothing was changed",
                     what, attempt);
            return false;
        }
        if (attempt == 1 || attempt % 10 == 0)
            log_info("%s: run_outbox is busy (a transaction holds it longer than %s); retrying (attempt %d)", what,
                     MIGRATE_LOCK_TIMEOUT, attempt);
        pause_ms(MIGRATE_LOCK_PAUSE_MS);
    }
}

/* Applies one migration in one transaction. Returns 1 applied, 0 failed. */
static int apply(store *s, const struct migration *m)
{
    char what[48];
    snprintf(what, sizeof what, "migration %d", m->version);
    return locked_tx(s, what, m->locks_outbox ? "ACCESS EXCLUSIVE" : NULL, m->sql, m->version, m->name);
}

/* The seq trigger (docs/SCHEMA.md, "The seq trigger"): migration 2's PL/pgSQL function,
 * or the C function of the extension outboxd (pgext/), which gives each event its seq
 * from the run's newest row instead of a counter row updated per event. Both serialize
 * a run's writers until commit and both read the counter as a floor once retention has
 * emptied a run; only the PL/pgSQL one keeps the counter up to date, so a switch to it
 * first raises every counter to its run's newest seq.
 *
 * The state, in one row: the C function (a C-language trigger function of that name in
 * any schema, the extension's own first: only a superuser can make a C function, so a
 * look-alike in PL/pgSQL on the search_path is never taken), the statement that installs
 * it with the arguments this build passes, whether the trigger in place is exactly that,
 * the kind of trigger in place, and whether the outbox and its counter have one owner
 * (the C trigger reads the counter only then). */
#define C_TRIGGER_ARGS                                                                             \
    "'run_outbox_run_seq', 'run_outbox_seq_pkey', 'last_seq', seq.relname, '" STORE_NOTIFY_CHANNEL \
    "', '" STR(LOCK_CLASS) "', '" STR(LOCK_SLEEP) "'"
static const char seq_trigger_state[] =
    "WITH f AS (SELECT p.oid, format('%I.%I', n.nspname, p.proname) AS name FROM pg_catalog.pg_proc p"
    "   JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace JOIN pg_catalog.pg_language l ON l.oid = p.prolang"
    "   WHERE p.proname = 'outboxd_assign_seq_c' AND p.pronargs = 0 AND l.lanname = 'c'"
    "     AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype"
    "   ORDER BY EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid"
    "     WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.objid = p.oid AND d.deptype = 'e'"
    "       AND e.extname = 'outboxd') DESC, p.oid LIMIT 1),"
    " seq AS (SELECT relname FROM pg_catalog.pg_class WHERE oid = pg_catalog.pg_get_serial_sequence("
    "   pg_catalog.quote_ident(current_schema()) || '.run_outbox', 'id')::pg_catalog.regclass),"
    " t AS (SELECT tgfoid, pg_catalog.encode(tgargs, 'escape') AS args FROM pg_catalog.pg_trigger"
    "   WHERE tgrelid = 'run_outbox'::pg_catalog.regclass AND tgname = 'run_outbox_assign_seq'"
    "     AND tgenabled = 'O' AND tgtype = 7 AND tgqual IS NULL)" /* BEFORE INSERT FOR EACH ROW, enabled */
    " SELECT f.name,"
    "  format('CREATE OR REPLACE TRIGGER run_outbox_assign_seq BEFORE INSERT ON run_outbox FOR EACH ROW"
    " EXECUTE FUNCTION %s(%L, %L, %L, %L, %L, %L, %L)', f.name, " C_TRIGGER_ARGS "),"
    "  coalesce((SELECT t.tgfoid = f.oid AND t.args = concat_ws(E'\\\\000', " C_TRIGGER_ARGS ", '') FROM t), false),"
    "  " SEQ_TRIGGER_KIND_SQL ","
    "  (SELECT a.relowner = b.relowner FROM pg_catalog.pg_class a, pg_catalog.pg_class b"
    "   WHERE a.oid = 'run_outbox'::pg_catalog.regclass AND b.oid = 'run_outbox_seq'::pg_catalog.regclass),"
    "  pg_catalog.has_function_privilege(f.oid, 'EXECUTE'), seq.relname IS NOT NULL"
    " FROM (SELECT) one LEFT JOIN seq ON true LEFT JOIN f ON true";

/* Raises the counters to their runs' newest seqs: for `where`'s rows of run_outbox. */
#define RAISE_COUNTERS(where)                                                                      \
    "INSERT INTO run_outbox_seq AS f (run_id, last_seq)"                                           \
    "  SELECT run_id, max(seq) FROM run_outbox " where " GROUP BY run_id ORDER BY run_id"         \
    "  ON CONFLICT (run_id) DO UPDATE SET last_seq = greatest(f.last_seq, excluded.last_seq)"

/* Back to PL/pgSQL. The counters are raised once without a lock on the table, while
 * producers write on, then again under the lock that holds them off, for the rows from
 * the relay's low water on only: every id below it was published, so committed, before
 * the first pass began. Inserts wait for the backlog's scan, not the table's. */
static bool use_plpgsql(store *s)
{
    PGresult *r = store_run(s, "read the low water", "SELECT low_water FROM outboxd_relay", 0, NULL);
    if (!r)
        return false;
    long long low = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    char sql[1024];
    snprintf(sql, sizeof sql,
             RAISE_COUNTERS("WHERE id >= %lld") "; CREATE OR REPLACE TRIGGER run_outbox_assign_seq BEFORE INSERT"
                                                " ON run_outbox FOR EACH ROW EXECUTE FUNCTION outboxd_assign_seq()",
             low);
    return store_run_cmd(s, "raise the run counters", RAISE_COUNTERS(""), 0, NULL) &&
           locked_tx(s, "install the PL/pgSQL seq trigger", "SHARE ROW EXCLUSIVE", sql, 0, NULL);
}

static bool choose_seq_trigger(store *s, int want, const char **now, bool *changed)
{
    *changed = false;
    PGresult *r = store_run(s, "read the seq trigger", seq_trigger_state, 0, NULL);
    if (!r)
        return false;
    bool have_c = !PQgetisnull(r, 0, 0), in_place = PQgetvalue(r, 0, 2)[0] == 't';
    const char *kind = PQgetvalue(r, 0, 3);
    bool one_owner = PQgetvalue(r, 0, 4)[0] == 't', may_use = PQgetvalue(r, 0, 5)[0] == 't';
    bool id_seq = PQgetvalue(r, 0, 6)[0] == 't';
    if (want == SEQ_TRIGGER_AUTO && have_c && !may_use && !in_place)
        log_warn("the C seq trigger is in the database, but this role may not use it (GRANT EXECUTE ON FUNCTION "
                 "%s() TO it): installing the PL/pgSQL one",
                 PQgetvalue(r, 0, 0));
    bool c = want == SEQ_TRIGGER_C || (want == SEQ_TRIGGER_AUTO && have_c && (may_use || in_place));
    bool ok = true;
    *now = c ? "c (the extension outboxd)" : "plpgsql";
    if (c && !id_seq) {
        snprintf(s->err, sizeof s->err,
                 "the C seq trigger draws ids from the sequence run_outbox.id owns, and it owns none: "
                 "ALTER SEQUENCE run_outbox_id_seq OWNED BY run_outbox.id, or use --seq-trigger plpgsql");
        ok = false;
    } else if (c && !have_c) {
        snprintf(s->err, sizeof s->err,
                 "--seq-trigger c: the database has no C function outboxd_assign_seq_c(): install the "
                 "extension's package and run CREATE EXTENSION outboxd as a superuser (docs/SCHEMA.md); "
                 "the trigger was left as it was");
        ok = false;
    } else if (c && !one_owner) {
        snprintf(s->err, sizeof s->err,
                 "run_outbox and run_outbox_seq have different owners, and the C seq trigger reads the counters "
                 "only from a table of the outbox's owner: give both one owner (ALTER TABLE ... OWNER TO), or use "
                 "--seq-trigger plpgsql; the trigger was left as it was");
        ok = false;
    } else if (c && !in_place && !may_use) {
        snprintf(s->err, sizeof s->err,
                 "--seq-trigger c: this role may not use %s() (the extension takes EXECUTE from PUBLIC): GRANT "
                 "EXECUTE ON FUNCTION %s() TO it as a superuser; the trigger was left as it was",
                 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 0));
        ok = false;
    } else if (c && !in_place) {
        *changed = true;
        ok = locked_tx(s, "install the C seq trigger", "SHARE ROW EXCLUSIVE", PQgetvalue(r, 0, 1), 0, NULL);
    } else if (!c && strcmp(kind, "plpgsql")) {
        *changed = true;
        ok = use_plpgsql(s);
    }
    PQclear(r);
    return ok;
}

/* Ends the sessions of the relays connected now (application_name outboxd-relay-PID,
 * as every version sets it), so that each reconnects and reads the schema and the
 * epoch again: a relay of an earlier version then finds the schema newer than it
 * knows, says so and publishes nothing more; a current one competes for the lead
 * again. `why` completes the log line. Returns false only when sessions were seen
 * that could not be ended (s->err says why). */
static bool end_relay_sessions(store *s, const char *why)
{
    PGresult *r = store_run(s, "end relay sessions",
                            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)), count(*)"
                            " FROM pg_stat_activity WHERE datname = current_database()"
                            "  AND application_name LIKE 'outboxd-relay-%' AND pid <> pg_backend_pid()",
                            0, NULL);
    if (!r)
        return false;
    long ended = atol(PQgetvalue(r, 0, 0)), seen = atol(PQgetvalue(r, 0, 1));
    PQclear(r);
    if (seen)
        log_info("ended the database sessions of %ld of %ld connected relay(s): %s", ended, seen, why);
    if (ended < seen) {
        snprintf(s->err, sizeof s->err,
                 "%ld relay session(s) could not be ended (the role may signal only its own sessions "
                 "unless it is a member of pg_signal_backend)",
                 seen - ended);
        return false;
    }
    return true;
}

bool store_migrate(store *s, int seq_trigger, int *from, int *to, const char **trigger, bool *trigger_changed)
{
    char key[64];
    snprintf(key, sizeof key, "SELECT pg_advisory_lock(%d, %d)", LOCK_CLASS, LOCK_MIGRATE);
    if (!store_run_cmd(s, "take migration lock", key, 0, NULL))
        return false;
    bool ok = false, stop_relays = false;
    if (!store_run_cmd(s, "create migrations table",
                       "SET client_min_messages = warning;"
                       "CREATE TABLE IF NOT EXISTS outboxd_migrations ("
                       " version int PRIMARY KEY, name text NOT NULL,"
                       " applied_at timestamptz NOT NULL DEFAULT now())",
                       0, NULL))
        goto done;
    int v, newest;
    if (!schema_version(s, &v, &newest))
        goto done;
    *from = *to = v;
    if (newest > STORE_SCHEMA_VERSION) {
        snprintf(s->err, sizeof s->err,
                 "database schema is at version %d, newer than this binary's %d: upgrade outboxd", newest,
                 STORE_SCHEMA_VERSION);
        goto done;
    }
    for (int i = 0; i < NMIGRATIONS; i++) {
        bool done_already = migrations[i].version <= v;
        if (!done_already && !recorded(s, migrations[i].version, &done_already))
            goto done;
        if (done_already)
            continue;
        if (!apply(s, &migrations[i]))
            goto done;
        *to = STORE_SCHEMA_VERSION;
        /* A fresh install has no older relays to stop. */
        stop_relays = stop_relays || (migrations[i].stops_relays && v > 0);
        log_info("applied migration %d (%s)", migrations[i].version, migrations[i].name);
    }
    if (stop_relays && !end_relay_sessions(s, "relays of earlier versions reconnect, find the schema newer "
                                                 "than they know and stop publishing; current ones lead again")) {
        /* The schema is committed, but an old relay could still lead (and lower the
         * marks it cannot read): say so as a failure, not in passing. */
        char why[sizeof s->err];
        memcpy(why, s->err, sizeof why);
        snprintf(s->err, sizeof s->err,
                 "the schema is migrated, but %.300s: stop every relay of an earlier version now, they must not "
                 "run on this schema",
                 why);
        goto done;
    }
    if (!choose_seq_trigger(s, seq_trigger, trigger, trigger_changed))
        goto done;
    ok = true;
done:
    if (store_connected(s)) {
        char unlock[64];
        snprintf(unlock, sizeof unlock, "SELECT pg_advisory_unlock(%d, %d)", LOCK_CLASS, LOCK_MIGRATE);
        char keep[sizeof s->err];
        memcpy(keep, s->err, sizeof keep);
        if (!store_run_cmd(s, "release migration lock", unlock, 0, NULL))
            log_warn("%s", s->err);
        memcpy(s->err, keep, sizeof keep);
    }
    return ok;
}

bool store_new_epoch(store *s)
{
    if (!store_run_cmd(s, "write a new epoch", "UPDATE outboxd_meta SET epoch = " NEW_EPOCH_SQL, 0, NULL))
        return false;
    return true;
}

bool store_restart_relays(store *s, const char *why)
{
    return end_relay_sessions(s, why);
}

bool store_check_schema(store *s, char *epoch, size_t epoch_len, char *origin, size_t origin_len)
{
    int v, newest;
    if (!schema_version(s, &v, &newest)) {
        if (!strcmp(s->sqlstate, "42P01"))
            snprintf(s->err, sizeof s->err, "the outboxd schema is not installed: run 'outboxd migrate'");
        return false;
    }
    if (newest > STORE_SCHEMA_VERSION) {
        snprintf(s->err, sizeof s->err,
                 "database schema is at version %d, newer than this binary's %d: upgrade outboxd", newest,
                 STORE_SCHEMA_VERSION);
        return false;
    }
    if (v != STORE_SCHEMA_VERSION) {
        snprintf(s->err, sizeof s->err,
                 "database schema is at version %d, this binary needs %d: run 'outboxd migrate'", v,
                 STORE_SCHEMA_VERSION);
        return false;
    }
    /* The timeline joins the epoch: after a promotion or a point-in-time restore the
     * sequences may be behind marks already in Redis, so marks start afresh. A logical
     * copy (pg_dump, CREATE DATABASE ... TEMPLATE) keeps both; its origin differs. The
     * origin stays out of the key, which must remain the one v0.1.0 wrote. */
    PGresult *r = store_run(s, "read epoch",
                            "SELECT epoch || '.' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),"
                            " CASE WHEN has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE')"
                            "  THEN (SELECT system_identifier::text FROM pg_catalog.pg_control_system()) || '.' ||"
                            "   (SELECT oid::text FROM pg_catalog.pg_database WHERE datname = current_database())"
                            "  ELSE '' END"
                            " FROM outboxd_meta",
                            0, NULL);
    if (!r)
        return false;
    bool ok = PQntuples(r) == 1;
    if (ok) {
        snprintf(epoch, epoch_len, "%s", PQgetvalue(r, 0, 0));
        snprintf(origin, origin_len, "%s", PQgetvalue(r, 0, 1));
    }
    else
        snprintf(s->err, sizeof s->err, "outboxd_meta has no row: the schema is damaged");
    PQclear(r);
    return ok;
}
