/* What the store's source files (store_pg.c, store_relay.c, store_schema.c) share
 * and nobody else sees: the handle's layout, the advisory lock keys, and the helpers
 * that send one statement and await its result within the store's timeout. */
#ifndef OUTBOXD_STORE_INT_H
#define OUTBOXD_STORE_INT_H

#include "store_pg.h"

#include <libpq-fe.h>

/* Advisory lock keys (two-int form: they show in pg_locks as classid/objid). */
#define LOCK_CLASS 1868724324 /* 0x6f627864, "obxd" (decimal: it goes into SQL text) */
#define LOCK_MIGRATE 1
#define LOCK_LEADER 2
#define LOCK_SLEEP 3          /* held by the leading relay while it waits for a NOTIFY */

/* SQL: the language of the seq trigger's function on run_outbox, 'c' (the extension
 * outboxd) or 'plpgsql', or 'missing' (DROP EXTENSION ... CASCADE takes the trigger). */
#define SEQ_TRIGGER_KIND_SQL                                                                       \
    "coalesce((SELECT CASE l.lanname WHEN 'c' THEN 'c' ELSE 'plpgsql' END"                         \
    " FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid"                  \
    " JOIN pg_catalog.pg_language l ON l.oid = p.prolang"                                          \
    " WHERE t.tgrelid = 'run_outbox'::regclass AND t.tgname = 'run_outbox_assign_seq'), 'missing')"

struct store {
    char *url;
    char *appname;
    long timeout_ms;
    PGconn *conn;
    bool notified;
    bool retry_asked;
    bool prepared;   /* the relay's statements are prepared on this connection */
    bool asleep;     /* this session holds LOCK_SLEEP */
    char err[512];
    char sqlstate[6];
};

long long store_now_ms(void);
/* Sets s->err to "what: why" on one line. */
void store_set_err(store *s, const char *what, const char *why);
/* Runs one statement with text parameters; returns its result (caller frees) or NULL
 * with s->err and s->sqlstate set. A broken or timed-out connection is closed. */
PGresult *store_run(store *s, const char *what, const char *sql, int n, const char *const *params);
bool store_run_cmd(store *s, const char *what, const char *sql, int n, const char *const *params);
/* Pushes what libpq has buffered to the server: 1 done, 0 timed out, -1 broken. */
int store_flush_all(store *s, long long deadline);
/* Sends nothing: waits for the result of the statement already sent, within the
 * store's timeout. Returns the last result (caller frees) or NULL on failure, in
 * which case a broken or timed-out connection has been closed. */
PGresult *store_await_result(store *s, const char *what);
/* Rolls back the transaction in progress, keeping the error that made us do it. */
void store_rollback(store *s);

#endif
