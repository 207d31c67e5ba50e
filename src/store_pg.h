/* Everything outboxd says to PostgreSQL: schema migrations, the relay's fetch and
 * mark statements, leader election, LISTEN, emit and status queries. Every call is
 * bounded by the store's timeout: a stalled server makes a call fail, never hang. */
#ifndef OUTBOXD_STORE_PG_H
#define OUTBOXD_STORE_PG_H

#include "event.h"

#include <stdbool.h>
#include <stddef.h>

#define STORE_SCHEMA_VERSION 3
#define STORE_NOTIFY_CHANNEL "outboxd"
/* Gateways LISTEN here; `outboxd revoke` notifies in the transaction that records it. */
#define STORE_REVOKE_CHANNEL "outboxd_revoke"

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
/* Applies the missing migrations, then installs the seq trigger `seq_trigger` asks for
 * (enum seq_trigger): *trigger names the one in place, *trigger_changed says whether
 * it was changed now. */
bool store_migrate(store *s, int seq_trigger, int *from, int *to, const char **trigger, bool *trigger_changed) WUR;
/* Checks that the schema is installed and at the version this binary speaks, and
 * reads the database's epoch (a random id made by migrate, and the timeline) into
 * epoch, and its origin ("system identifier.database oid"; "" when the role may not
 * read the identifier) into origin. */
bool store_check_schema(store *s, char *epoch, size_t epoch_len, char *origin, size_t origin_len) WUR;
/* Writes a new random epoch into outboxd_meta: Redis marks start afresh under new keys
 * (docs/GUARANTEES.md, "Numbering that goes back"). */
bool store_new_epoch(store *s) WUR;
/* Ends the database sessions of the relays connected now, so that they reconnect and
 * read the schema and epoch again; logs what it did, with `why`. False (reason in
 * the error) when some could not be ended. */
bool store_restart_relays(store *s, const char *why) WUR;
/* The last value the id sequence of run_outbox handed out (0 before the first). It
 * never goes back in normal operation: ids the relay published are at or below it
 * unless the database's numbering went back (a restore, lost commits). */
bool store_id_last_value(store *s, long long *last) WUR;

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

/* ---- the relay's cycle -------------------------------------------------------------
 * The relay finds events by id, not by an index on published_at (which would make
 * every mark a non-HOT update): one statement per cycle marks what went out and reads
 * every row the relay has not seen, in one snapshot. How the relay tells an id that
 * may still commit from one that never will is in relay_scan.h. */

/* Checks that ids are drawn as the schema needs (the sequence is not cached per
 * session) and prepares the cycle statement on this session. */
bool store_prepare_relay(store *s) WUR;

typedef struct store_cycle {
    const long long *mark; /* mark these published (rows already published are skipped) */
    size_t nmark;
    long long after;       /* read every row with id > after (published ones too) ... */
    long limit;            /* ... at most this many */
    const long long *gap_lo, *gap_hi; /* read the rows with id in gap_lo[i]..gap_hi[i] ... */
    size_t ngaps;
    long gap_rows;         /* ... the gap_rows lowest of each */
    const char *const *cu_run; /* read run cu_run[i]'s unpublished rows from seq cu_seq[i] on ... */
    const size_t *cu_len;
    const long long *cu_seq;
    size_t ncu;
    long cu_limit;         /* ... at most this many per run */
    long long low_water;   /* store it in outboxd_relay (for a relay that takes over); < 0: no */
    bool wake;             /* release the wake-up lock that store_sleep took */
    bool need_tag;         /* take a transaction id even without marks (store_seen.tag) */
} store_cycle;

/* Where a row of a cycle came from (event.flags): the parts above, or-ed when a row
 * was read by several; STORE_ROW_DONE when it is published already (no payload). */
#define STORE_ROW_FRONTIER 1
#define STORE_ROW_GAP 2
#define STORE_ROW_CATCHUP 4
#define STORE_ROW_DONE 8

typedef struct store_seen {
    unsigned long long xmin; /* the snapshot's xmin (a full transaction id) */
    unsigned long long tag;  /* the statement's own transaction id, taken after its snapshot;
                              * 0 when it had none (nothing to mark, need_tag false) */
} store_seen;

/* The transactions that hold a lock on run_outbox and have a transaction id: every
 * writer of the outbox holds one from before its trigger draws an id until it ends
 * (relay_scan.h says what the relay makes of it). One look at pg_locks. */
typedef struct store_writers {
    unsigned long long horizon; /* min(the lowest such transaction id, the look's snapshot xmax) */
    long long count;            /* how many such transactions */
    unsigned long long oldest;  /* the lowest of them (0 when none) ... */
    int oldest_pid;             /* ... its backend (0 for a prepared transaction) */
    bool oldest_prepared;
    double oldest_age_s;        /* how long it has been open (or prepared); 0 when not visible */
} store_writers;
bool store_outbox_writers(store *s, store_writers *w) WUR;

/* Sends one cycle statement and returns without waiting: the caller publishes to
 * Redis meanwhile. store_cycle_end waits for it and fills b with its rows in id
 * order, each once (the batch owns their storage). */
bool store_cycle_begin(store *s, const store_cycle *c) WUR;
bool store_cycle_end(store *s, batch *b, store_seen *seen) WUR;
/* Length of the created_at text of the events a cycle returns, with its NUL. */
#define STORE_TIME_LEN 48

/* Takes the wake-up lock without waiting. While the relay holds it, writers notify;
 * a writer that did not notify holds a share of it until it commits, so *asleep is
 * false (and nothing taken) while such a commit may still be invisible: read again. */
bool store_sleep(store *s, bool *asleep) WUR;
/* Whether this session holds the wake-up lock (a cycle with wake releases it). */
bool store_asleep(const store *s);
/* The low water a previous leader stored: every event below it is published. */
bool store_low_water(store *s, long long *low) WUR;

/* VACUUM of run_outbox on a connection of its own, without waiting: marks and
 * retention leave dead row versions that only VACUUM makes room of for new rows,
 * and autovacuum looks at a table once a minute at best. store_may_vacuum says
 * whether this session's role owns the table (only an owner may vacuum it). */
bool store_may_vacuum(store *s, bool *may) WUR;
bool store_vacuum_begin(store *s) WUR;
/* *done once the VACUUM started last has finished. Never waits; false (the
 * connection is then closed) if it failed. */
bool store_vacuum_poll(store *s, bool *done) WUR;

/* Marks the given events published, in one statement. */
bool store_mark_published(store *s, const long long *ids, size_t n) WUR;
/* Adds attempts to the given events and records the error, in one statement. */
bool store_record_failure(store *s, const long long *ids, size_t n, int attempts, const char *error) WUR;
/* The relay's backlog: the rows above its frontier (counted by id), the unpublished
 * rows from from_id to the frontier and those of the held runs held[i] from seq
 * held_seq[i] on (up to 100,000 each); and the age in seconds of the oldest. */
bool store_backlog(store *s, long long from_id, long long frontier, const char *const *held,
                   const size_t *held_len, size_t nheld, const long long *held_seq, long long *count,
                   double *oldest_age_s) WUR;

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

/* Records a revocation: the token with jti `value` (or every token with sub `value`
 * when is_sub) is refused until `until`, a duration from now ("2h", parsed by the
 * caller into until_ms > 0) or else a timestamp PostgreSQL reads (until_ms = 0).
 * Notifies every gateway in the same transaction. until_out gets the time as text.
 * Also deletes revocations that ended more than a day ago. */
bool store_revoke(store *s, bool is_sub, const char *value, long until_ms, const char *until_text,
                  char *until_out, size_t until_len) WUR;
/* The gateway's revocation list ($none; returns is_sub, value, until as Unix seconds). */
extern const char store_revocations_sql[];

/* Deletes, among the `limit` oldest published events, those published more than
 * older_than_ms ago (with the earlier published events of their runs), in one
 * statement; *deleted gets how many (fewer than limit: nothing more is due).
 * Unpublished events are never deleted. A run left without rows keeps its counter
 * (its seq goes on from there), stamped with the time of its last event. */
bool store_prune(store *s, long older_than_ms, long limit, long long *deleted) WUR;
/* Deletes the counters of runs that have no rows and whose last event is older than
 * idle_ms, looking at `limit` counters after `cursor` (run_id order; "" = from the
 * start), which it advances (back to "" at the end). Such a run, if it writes again,
 * starts over at seq 1. */
bool store_forget_runs(store *s, long idle_ms, long limit, char *cursor, size_t cursor_len,
                       long long *forgotten) WUR;

/* Inserts one event; the database assigns id and seq. */
bool store_emit(store *s, const char *run_id, const char *json, long long *id, long long *seq) WUR;
/* Writes a human-readable (or JSON) status report to stdout. extra (may be NULL) is
 * written last: lines of text, or JSON members (`"name":value,...`) of the object. */
bool store_print_status(store *s, bool json, const char *extra) WUR;

#endif
