/* Everything outboxd says to PostgreSQL: schema migrations, the relay's fetch and
 * mark statements, leader election, LISTEN, emit and status queries. Every call is
 * bounded by the store's timeout: a stalled server makes a call fail, never hang. */
#ifndef OUTBOXD_STORE_PG_H
#define OUTBOXD_STORE_PG_H

#include "event.h"

#include <stdbool.h>
#include <stddef.h>

#define STORE_SCHEMA_VERSION 1
#define STORE_NOTIFY_CHANNEL "outboxd"

typedef struct store store;

/* Creates an unconnected store. url is copied. Free with store_free. */
store *store_new(const char *url, const char *application_name, long timeout_ms);
void store_free(store *s);

bool store_connect(store *s) WUR;
void store_disconnect(store *s);
bool store_connected(const store *s);
/* The reason of the last failure, valid until the next call. */
const char *store_errstr(const store *s);
/* SQLSTATE of the last failed statement ("" if none or the connection failed). */
const char *store_sqlstate(const store *s);

/* Applies missing migrations (serialized by an advisory lock). *from and *to get the
 * versions before and after. Fails on a schema newer than this binary. */
bool store_migrate(store *s, int *from, int *to) WUR;
/* Checks that the schema is installed and at the version this binary speaks, and
 * reads the database's epoch (a random id made by migrate) into epoch. */
bool store_check_schema(store *s, char *epoch, size_t epoch_len) WUR;

bool store_listen(store *s) WUR;
/* Whether consecutive statements reach the same server session. A transaction-
 * pooling proxy (PgBouncer pool_mode=transaction) hands them to different backends,
 * which breaks session advisory locks and LISTEN. *session is false then. */
bool store_check_session(store *s, bool *session) WUR;
/* Waits until a notification arrives, extra_fd is readable, or timeout_ms passes.
 * Returns false if the connection failed. *notified says whether a NOTIFY came
 * (also one that arrived during an earlier statement). */
bool store_wait(store *s, int extra_fd, long timeout_ms, bool *notified) WUR;
/* Whether a NOTIFY arrived since the last store_wait or store_take_notified. */
bool store_take_notified(store *s);

/* Tries to take the relay leader lock (a session advisory lock); *leader says if held. */
bool store_try_lead(store *s, bool *leader) WUR;

/* Fetches up to limit unpublished events in id order into b (cleared first), leaving
 * out the runs named in skip[0..nskip) (lengths in skip_len). */
bool store_fetch(store *s, long limit, const char *const *skip, const size_t *skip_len, size_t nskip,
                 batch *b) WUR;
/* The overlapped form, for draining a backlog: store_fetch_begin sends (and returns
 * without waiting for the answer) one statement that marks done[0..ndone) published
 * and fetches the next `limit` unpublished events, leaving out the `skip` runs and the
 * ids in exclude[0..nexclude) (the batch being published meanwhile, and done, which
 * the statement's own snapshot still sees unpublished). store_fetch_end waits for the
 * answer and fills b. Between the two the caller publishes to Redis, so PostgreSQL and
 * Redis work at the same time. */
bool store_fetch_begin(store *s, long limit, const char *const *skip, const size_t *skip_len, size_t nskip,
                       const long long *done, size_t ndone, const long long *exclude, size_t nexclude) WUR;
bool store_fetch_end(store *s, batch *b) WUR;

/* Marks the given events published, in one statement. */
bool store_mark_published(store *s, const long long *ids, size_t n) WUR;
/* Adds attempts to the given events and records the error, in one statement. */
bool store_record_failure(store *s, const long long *ids, size_t n, int attempts, const char *error) WUR;
/* Unpublished count and the age in seconds of the oldest unpublished event. */
bool store_backlog(store *s, long long *count, double *oldest_age_s) WUR;

/* The gateway's replay statement ($1 run_id, $2 after this seq; returns seq, payload
 * text, n and newest in seq order: at most 200 rows and about 4 MB, n being how many
 * rows the 200-row window held before the byte bound cut it, newest the run's highest
 * committed seq; with no rows, one row of NULLs but newest), for its own
 * asynchronous connection; and the connection parameters every store uses. */
extern const char store_replay_sql[];
/* The primary's WAL insert position, and a standby's replay position (NULL when the
 * server is not in recovery), as pg_lsn text. */
extern const char store_insert_lsn_sql[];
extern const char store_replay_lsn_sql[];
#define STORE_REPLAY_ROWS 200
void store_conn_params(const char *url, const char *application_name, long timeout_ms,
                       const char *keys[8], const char *vals[8], char timeout_s[24]);

/* Operator commands. store_retry clears the failures of run_id's unpublished events
 * and wakes the relays with NOTIFY payload "retry" (they drop their holds at once);
 * *n gets how many rows it touched. store_skip marks the run's event seq published
 * without publishing it, only if it is the run's oldest unpublished event (else *n
 * is 0), recording why in last_error. */
bool store_retry(store *s, const char *run_id, long long *n) WUR;
bool store_skip(store *s, const char *run_id, long long seq, const char *reason, long long *n) WUR;
/* Whether a "retry" wake-up arrived since the last call. */
bool store_take_retry(store *s);

/* Deletes, among the `limit` oldest published events, those published more than
 * older_than_ms ago, in one statement; *deleted gets how many (fewer than limit:
 * nothing more is due). Unpublished events are never deleted, nor the per-run
 * counters (a run's seq must not start again at 1). */
bool store_prune(store *s, long older_than_ms, long limit, long long *deleted) WUR;

/* Inserts one event; the database assigns id and seq. */
bool store_emit(store *s, const char *run_id, const char *json, long long *id, long long *seq) WUR;
/* Writes a human-readable (or JSON) status report to stdout. */
bool store_print_status(store *s, bool json) WUR;

#endif
