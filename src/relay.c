/* The relay's loop: leadership, the cycle and waiting (the chores between cycles are
 * relay_chores.c's).
 *
 * One cycle is one statement (store_cycle): it marks what went out and reads every
 * row the relay has not seen, by id (relay_scan.h says how ids that commit late are
 * not missed). Per-run order holds because the database makes per-run id order equal
 * commit order (store_schema.c), events go out in id order per run, and a run whose
 * event fails is held back whole (relay_batch.c). While a backlog drains, the
 * statement runs while Redis takes the previous batch. When nothing is left, the
 * relay takes the wake-up lock, reads once more, and waits for a NOTIFY: writers
 * notify only then. Leadership is a session advisory lock: standbys wait. */
#include "relay_int.h"

#include "admin_http.h"
#include "clock.h"
#include "log.h"
#include "relay_scan.h"

#include <pthread.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define STANDBY_RETRY_MS 500
/* While a writer's transaction that did not notify is open, the relay cannot wait
 * for a NOTIFY (writers notify only while it waits): it reads again after 1 ms,
 * doubling up to 8, for BUSY_QUICK_S (the writer is most likely committing), then
 * every BUSY_POLL_MS (or the poll interval if shorter) until it can wait again: a
 * writer that keeps its transaction open, or a prepared one, would otherwise have it
 * read 125 times a second for as long as that lasts. */
#define BUSY_NAP_MAX_MS 8
#define BUSY_QUICK_S 0.25
#define BUSY_POLL_MS 100
/* While Redis answers but refuses every event (NOREPLICAS, OOM, MISCONF, BUSY, an ACL
 * denial of the script), the relay asks again at least this often, so that events go
 * out within about a second of it taking writes again. */
#define REFUSED_RETRY_MAX_MS 1000

/* ---- process: signals ------------------------------------------------------------- */

static volatile sig_atomic_t stop_requested;
static int wake_pipe[2] = {-1, -1};
static long shutdown_timeout_s = 10;

/* Sleeps up to ms, returning early when a signal arrives on the wake pipe. */
static void nap(long ms)
{
    struct pollfd p = {.fd = wake_pipe[0], .events = POLLIN};
    if (poll(&p, 1, (int)ms) < 0 && errno != EINTR)
        log_warn("poll: %s", strerror(errno));
}

static void on_stop_signal(int sig)
{
    (void)sig;
    if (stop_requested) {
        static const char msg[] = "outboxd: second signal, exiting at once\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
        }
        _exit(1);
    }
    stop_requested = 1;
    alarm((unsigned)shutdown_timeout_s);
    if (write(wake_pipe[1], "x", 1) < 0) {
        /* The pipe is non-blocking; a full pipe already wakes the loop. */
    }
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "outboxd: shutdown timeout passed, exiting\n";
    if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
    }
    _exit(1);
}

static bool install_signals(long timeout_ms)
{
    shutdown_timeout_s = (timeout_ms + 999) / 1000;
    if (pipe(wake_pipe) != 0)
        return false;
    for (int i = 0; i < 2; i++) {
        fcntl(wake_pipe[i], F_SETFL, fcntl(wake_pipe[i], F_GETFL) | O_NONBLOCK);
        fcntl(wake_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    struct sigaction sa = {0};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTERM, &sa, NULL) || sigaction(SIGINT, &sa, NULL))
        return false;
    sa.sa_handler = on_alarm;
    if (sigaction(SIGALRM, &sa, NULL))
        return false;
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL) == 0;
}

static void drain_wake_pipe(void)
{
    char tmp[64];
    while (read(wake_pipe[0], tmp, sizeof tmp) > 0) {
    }
}

/* ---- state (relay_int.h) ------------------------------------------------------------ */

static void backoff(relay_state *r)
{
    nap(clock_backoff(&r->backoff_ms));
}

static bool ring_add(mark_ring *m, unsigned long cycle, const long long *ids, size_t n, bool spread)
{
    for (size_t i = 0; i < n; i++) {
        size_t k = (cycle + (spread ? (unsigned long long)ids[i] % MARK_SPLIT : 0)) % MARK_SPLIT;
        if (m->n[k] == m->cap[k]) {
            size_t cap = m->cap[k] ? m->cap[k] * 2 : 256;
            long long *p = realloc(m->ids[k], cap * sizeof *p);
            if (!p)
                return false;
            m->ids[k] = p;
            m->cap[k] = cap;
        }
        m->ids[k][m->n[k]++] = ids[i];
    }
    return true;
}

static size_t ring_count(const mark_ring *m)
{
    size_t n = 0;
    for (int k = 0; k < MARK_SPLIT; k++)
        n += m->n[k];
    return n;
}

static void ring_clear(mark_ring *m)
{
    for (int k = 0; k < MARK_SPLIT; k++)
        m->n[k] = 0;
}

static void ring_free(mark_ring *m)
{
    for (int k = 0; k < MARK_SPLIT; k++)
        free(m->ids[k]);
    free(m->spare);
    memset(m, 0, sizeof *m);
}

/* Marks everything the ring holds, in standalone statements. */
static bool ring_flush(relay_state *r)
{
    for (int k = 0; k < MARK_SPLIT; k++) {
        if (r->marks.n[k] && !store_mark_published(r->rc.db, r->marks.ids[k], r->marks.n[k]))
            return false;
        r->rc.stats.published += r->marks.n[k];
        r->churn += (long long)r->marks.n[k];
        r->marks.n[k] = 0;
    }
    return true;
}

/* The leader's state goes with its session: a relay that leads again starts from the
 * low water stored in the database, and reports its backlog afresh (at once). */
static void drop_cycle_state(relay_state *r)
{
    ring_clear(&r->marks);
    batch_clear(&r->cur);
    batch_clear(&r->rows[0]);
    batch_clear(&r->rows[1]);
    relay_held_clear(&r->rc);
    r->recheck = false;
    r->cur_full = false;
    r->backlog = 0;
    r->oldest_age_s = 0;
    r->next_backlog = 0;
}

static void lose_db(relay_state *r)
{
    log_warn("postgresql: %s", store_errstr(r->rc.db));
    store_disconnect(r->rc.db);
    r->leader = false;
    drop_cycle_state(r);
}

/* Connects, checks the schema, prepares, LISTENs. */
static bool connect_db(relay_state *r)
{
    store *db = r->rc.db;
    char epoch[64], origin[48];
    if (!store_connect(db) || !store_check_schema(db, epoch, sizeof epoch, origin, sizeof origin) || !store_prepare_relay(db) ||
        (!r->cfg->no_listen && !store_listen(db))) {
        log_warn("postgresql: %s", store_errstr(db));
        store_disconnect(db);
        return false;
    }
    bool session;
    if (!store_check_session(db, &session)) {
        log_warn("postgresql: %s", store_errstr(db));
        store_disconnect(db);
        return false;
    }
    if (!session) {
        log_error("postgresql: this connection does not own a server session (its statements reach "
                  "different backends, or another connection gets the same backend): this is a "
                  "transaction-pooling proxy (e.g. PgBouncer pool_mode=transaction). Leader election "
                  "(a session advisory lock) and LISTEN need a session: connect the relay directly or "
                  "through a session-pooled port");
        r->fatal = true;
        store_disconnect(db);
        return false;
    }
    sink_set_epoch(r->rc.out, epoch, origin);
    r->leader = false;
    r->said_standby = false;
    log_info("postgresql: connected (%s)", r->cfg->no_listen ? "poll only" : "listening");
    return true;
}

/* ---- the leader's cycle ------------------------------------------------------------- */

static void count_batch(relay_ctx *rc, double t0)
{
    rc->stats.batches++;
    hist_record(&rc->stats.batch_time, (clock_mono_s() - t0) * 1e6);
    prom_hist_record(&rc->stats.batch_time_total, clock_mono_s() - t0);
}

/* Publishes `cur` and files the outcome: marks into the ring (spread over the next
 * statements in a backlog), and what must be read again. */
static batch_outcome publish_cur(relay_state *r, unsigned long first_cycle, bool spread)
{
    double t0 = clock_mono_s();
    batch_outcome o = relay_publish_batch(&r->rc, &r->cur);
    count_batch(&r->rc, t0);
    if (!ring_add(&r->marks, first_cycle, r->rc.done_ids, o.published, spread)) {
        log_error("out of memory for marks: the events go out again later, as duplicates the marks in Redis stop");
        o.resume_id = r->cur.ev[0].id;
    }
    return o;
}

/* The runs to catch up in the next statement: held ones whose hold has passed and
 * that have no event in flight. */
static size_t catch_up_runs(relay_state *r, const char **runs, size_t *lens, long long *seqs)
{
    double now = clock_mono_s();
    size_t n = 0;
    for (int h = 0; h < r->rc.nheld; h++) {
        held_run *hr = &r->rc.held[h];
        bool in_flight = false;
        for (size_t i = 0; i < r->cur.n && !in_flight; i++)
            in_flight = event_run_is(&r->cur.ev[i], hr->run_id, hr->len);
        hr->asked = hr->until <= now && !in_flight;
        if (hr->asked) {
            runs[n] = hr->run_id;
            lens[n] = hr->len;
            seqs[n++] = hr->from_seq;
        }
    }
    return n;
}

/* Before a cycle: the writers' horizon when gaps wait longer than the xmin rule
 * closes them (relay_scan.h), and the window of gaps the statement reads again. */
static bool gaps_before_cycle(relay_state *r)
{
    double now = clock_mono_s();
    if (scan_check_due(&r->sc, now)) {
        store_writers w;
        if (!store_outbox_writers(r->rc.db, &w)) {
            lose_db(r);
            backoff(r);
            return false;
        }
        scan_writers(&r->sc, &w, now);
    }
    if (!scan_probe(&r->sc, r->limit))
        log_error("out of memory for the relay's gaps: this cycle reads none of them again");
    if (scan_frontier_limit(&r->sc, r->limit) < r->limit && now - r->said_gaps_full >= 10) {
        r->said_gaps_full = now;
        log_error("%zu gaps (ids missing below the frontier) wait for transactions that write run_outbox to end; "
                  "new events wait until gaps close. Oldest writer: %s %d, open %.0f s",
                  r->sc.ngaps, r->sc.blocker_prepared ? "prepared transaction" : "backend pid",
                  r->sc.blocker_pid, r->sc.blocker_age_s);
    }
    return true;
}

/* One cycle of the leader. In a backlog (the last read was full) the statement runs
 * while Redis takes `cur`; otherwise `cur` goes out first, then, after a short pause
 * that lets a trickle gather, the statement marks it and reads on. Returns how long
 * to wait for a NOTIFY before the next cycle (ms), 0 for at once, -1 when it already
 * waited. */
static long leader_cycle(relay_state *r)
{
    relay_ctx *rc = &r->rc;
    store *db = rc->db;
    bool overlap = r->cur_full && r->cur.n > 0;
    batch_outcome o = {0};
    bool published = false;
    if (r->cur.n && !overlap) {
        o = publish_cur(r, r->cycle, false); /* marked by the statement below */
        published = true;
        relay_record_failures(rc);
        if (!o.resume_id && r->cfg->notify_coalesce_ms > 0 && !stop_requested)
            nap(r->cfg->notify_coalesce_ms);
    }
    if (store_take_retry(db) && rc->nheld) {
        log_info("retry asked for (outboxd retry): releasing %d held run(s)", rc->nheld);
        for (int h = 0; h < rc->nheld; h++)
            rc->held[h].until = 0;
    }

    if (!gaps_before_cycle(r))
        return -1;
    const char *cu_runs[RELAY_HELD_MAX];
    size_t cu_lens[RELAY_HELD_MAX];
    long long cu_seqs[RELAY_HELD_MAX];
    long long low = relay_low_water(r);
    bool save_low = low != r->low_saved && clock_mono_s() - r->low_saved_at >= LOW_WATER_EVERY_S;
    /* The slot this statement marks is emptied as it goes: a batch published while
     * the statement runs files ids into the coming slots, this one among them. */
    size_t slot = r->cycle % MARK_SPLIT;
    long long *marking = r->marks.ids[slot];
    size_t nmarking = r->marks.n[slot], marking_cap = r->marks.cap[slot];
    r->marks.ids[slot] = r->marks.spare;
    r->marks.cap[slot] = r->marks.spare_cap;
    r->marks.n[slot] = 0;
    r->marks.spare = marking;
    r->marks.spare_cap = marking_cap;
    store_cycle c = {
        .mark = marking,
        .nmark = nmarking,
        .after = r->sc.frontier,
        .limit = scan_frontier_limit(&r->sc, r->limit),
        .gap_lo = r->sc.probe_lo,
        .gap_hi = r->sc.probe_hi,
        .ngaps = r->sc.probe_n,
        .gap_rows = r->sc.probe_rows,
        .cu_run = cu_runs,
        .cu_len = cu_lens,
        .cu_seq = cu_seqs,
        .ncu = catch_up_runs(r, cu_runs, cu_lens, cu_seqs),
        .cu_limit = r->limit,
        .low_water = save_low ? low : -1,
        .wake = store_asleep(db) && !r->recheck,
        .need_tag = scan_needs_tag(&r->sc),
    };
    batch *rows = &r->rows[(r->cycle + 1) % 2], *prev = &r->rows[r->cycle % 2];
    store_seen seen;
    if (!store_cycle_begin(db, &c)) {
        lose_db(r);
        backoff(r);
        return -1;
    }
    if (overlap) {
        o = publish_cur(r, r->cycle + 1, true); /* the statement is sent: the next ones mark */
        published = true;
    }
    if (!store_cycle_end(db, rows, &seen)) {
        lose_db(r);
        backoff(r);
        return -1;
    }
    rc->stats.published += c.nmark;
    r->churn += (long long)c.nmark;
    if (c.low_water >= 0) {
        r->low_saved = low;
        r->low_saved_at = clock_mono_s();
    }
    if (overlap)
        relay_record_failures(rc);
    r->cycle++;
    if (!scan_apply(&r->sc, rows, &seen, clock_mono_s())) {
        log_error("out of memory for the relay's gaps: reading again from %lld", scan_low(&r->sc));
        batch_clear(rows);
        return -1;
    }
    size_t frontier_rows = 0;
    long long first_new = 0; /* the lowest id read now that is not published */
    for (size_t i = 0; i < rows->n; i++) {
        frontier_rows += (rows->ev[i].flags & STORE_ROW_FRONTIER) != 0;
        if (!(rows->ev[i].flags & STORE_ROW_DONE) && (first_new == 0 || rows->ev[i].id < first_new))
            first_new = rows->ev[i].id;
    }
    bool full = frontier_rows >= (size_t)r->limit, moved = frontier_rows > 0;

    /* `cur` went out: its storage (the rows of the cycle before) can go too. */
    batch_clear(&r->cur);
    batch_clear(prev);
    if (published && o.published)
        r->refused_ms = 0;
    if (published && o.resume_id) {
        /* Events that did not go out and whose run is not held: read them again,
         * after marking what did go out, with whatever this read found (a late
         * commit in a gap is read again only from the rewound frontier). An outage
         * (nothing went out, no run held) also backs off; Redis refusing everyone
         * for at most a second. */
        scan_rewind(&r->sc, first_new && first_new < o.resume_id ? first_new : o.resume_id);
        batch_clear(rows);
        r->cur_full = false;
        if (!ring_flush(r)) {
            lose_db(r);
            backoff(r);
            return -1;
        }
        if (o.published == 0 && o.event_failures == 0) {
            if (o.redis_lost)
                log_warn("redis: %s", sink_errstr(rc->out));
            if (!o.redis_refused) {
                backoff(r);
                return -1;
            }
            /* Its own backoff: the cycle that reads the events again does not publish,
             * and would reset the other one. */
            long ms = clock_backoff(&r->refused_ms);
            nap(ms < REFUSED_RETRY_MAX_MS ? ms : REFUSED_RETRY_MAX_MS);
            return -1;
        }
        return 0;
    }
    r->backoff_ms = 0;
    if (!relay_take_rows(rc, rows, c.cu_limit, &r->cur)) {
        log_error("out of memory for a batch: reading again");
        scan_rewind(&r->sc, low);
        batch_clear(rows);
        return -1;
    }
    r->cur_full = full;
    if (full && r->limit < r->cfg->max_batch_size)
        r->limit = r->limit * 2 > r->cfg->max_batch_size ? r->cfg->max_batch_size : r->limit * 2;
    else if (!full)
        r->limit = r->cfg->batch_size;

    bool rechecked = r->recheck;
    r->recheck = false;
    if (r->cur.n || full || moved || ring_count(&r->marks)) {
        r->busy_naps = 0;
        return 0;
    }
    if (rechecked || r->cfg->no_listen)
        return r->cfg->poll_interval_ms; /* nothing new since the lock was taken: wait */
    bool asleep;
    if (!store_sleep(db, &asleep)) {
        lose_db(r);
        backoff(r);
        return -1;
    }
    if (asleep) {
        r->recheck = true; /* read once more, now that writers notify */
        r->busy_naps = 0;
        return 0;
    }
    /* A writer that did not notify has not committed yet: read again soon. */
    double now = clock_mono_s();
    if (r->busy_naps == 0)
        r->busy_since = now;
    if (now - r->busy_since < BUSY_QUICK_S) {
        long ms = 1L << (r->busy_naps < 3 ? r->busy_naps : 3);
        r->busy_naps++;
        nap(ms < BUSY_NAP_MAX_MS ? ms : BUSY_NAP_MAX_MS);
        return -1;
    }
    if (r->busy_naps > 0 && now - r->said_busy >= 60) {
        r->said_busy = now;
        log_info("a transaction that inserted into run_outbox without notifying is still open (writers do not "
                 "notify until it ends; a prepared one holds on until COMMIT PREPARED): reading every %ld ms "
                 "meanwhile",
                 r->cfg->poll_interval_ms < BUSY_POLL_MS ? r->cfg->poll_interval_ms : BUSY_POLL_MS);
    }
    r->busy_naps = -1; /* the slow phase: busy_since stays until the relay reads rows or waits */
    return r->cfg->poll_interval_ms < BUSY_POLL_MS ? r->cfg->poll_interval_ms : BUSY_POLL_MS;
}

/* Before a new leader publishes: has the database's numbering gone back under the
 * same epoch (a restored base backup keeps the epoch, the timeline and the origin;
 * a crash can lose commits made with synchronous_commit off)? The Redis marks would
 * then pass new events off as published. Every published id was drawn from the id
 * sequence, which never goes back otherwise, and the high-water in Redis is raised
 * before a batch goes out: one above the sequence's last value proves it. (After a
 * crash between PUBLISH and the marking UPDATE the same ids come back: they are at
 * or below the sequence, and the marks suppress them as they should.) The epoch is
 * read again here too, so that a standby that takes over after an epoch change
 * uses the new one. */
static bool check_numbering(relay_state *r)
{
    relay_ctx *rc = &r->rc;
    char epoch[64], old[64], origin[48];
    long long hw, last;
    if (!store_check_schema(rc->db, epoch, sizeof epoch, origin, sizeof origin)) {
        lose_db(r);
        backoff(r);
        return false;
    }
    sink_set_epoch(rc->out, epoch, origin);
    if (!sink_high_water(rc->out, &hw)) {
        log_warn("redis: %s (nothing is published until the high-water of published ids can be read)",
                 sink_errstr(rc->out));
        backoff(r);
        return false;
    }
    if (!store_id_last_value(rc->db, &last)) {
        if (!store_connected(rc->db) || strcmp(store_sqlstate(rc->db), "42501")) {
            lose_db(r);
            backoff(r);
            return false;
        }
        /* A role that may not read the sequence: stopping every delivery for it would
         * be worse than the restore the check looks for. Said at every lead. */
        log_error("postgresql: %s: this relay cannot tell whether the id numbering went back (a restored "
                  "backup); GRANT SELECT ON SEQUENCE of run_outbox.id to the relay's role "
                  "(docs/OPERATIONS.md, \"Restoring a backup\")",
                  store_errstr(rc->db));
        last = hw;
    }
    if (hw > last) {
        memcpy(old, epoch, sizeof old);
        if (!store_new_epoch(rc->db) || !store_check_schema(rc->db, epoch, sizeof epoch, origin, sizeof origin)) {
            lose_db(r);
            backoff(r);
            return false;
        }
        sink_set_epoch(rc->out, epoch, origin);
        rc->stats.epoch_changes++;
        log_error("the id numbering of run_outbox went back: ids up to %lld were published under epoch %s, but the "
                  "id sequence stands at %lld (a restored backup, or commits lost in a crash). New epoch %s: the "
                  "Redis marks of the old numbering no longer pass new events off as published; events written "
                  "after the restore point are published again to Redis subscribers (browsers are protected by "
                  "the gateway's seq check). Counted in outboxd_epoch_changes_total",
                  hw, old, last, epoch);
    }
    r->numbering_checked = true;
    return true;
}

/* One pass of the loop; returns how long to wait for a NOTIFY before the next (ms),
 * 0 for "at once", or -1 when it already waited (backoff, standby). */
static long relay_step(relay_state *r)
{
    relay_ctx *rc = &r->rc;
    if (!store_connected(rc->db) && !connect_db(r)) {
        if (!r->fatal)
            backoff(r);
        return -1;
    }
    if (!r->leader) {
        if (!store_try_lead(rc->db, &r->leader)) {
            lose_db(r);
            backoff(r);
            return -1;
        }
        if (!r->leader) {
            if (!r->said_standby)
                log_info("standby: another relay holds the leader lock; retrying every %d ms",
                         STANDBY_RETRY_MS);
            r->said_standby = true;
            nap(STANDBY_RETRY_MS);
            return -1;
        }
        long long low;
        if (!store_low_water(rc->db, &low)) {
            lose_db(r);
            backoff(r);
            return -1;
        }
        drop_cycle_state(r);
        r->numbering_checked = false;
        scan_reset(&r->sc, low);
        r->low_saved = low;
        r->limit = r->cfg->batch_size;
        log_info("leader: this relay publishes");
        log_debug("reading from id %lld, the low water the last leader stored", low);
        /* Connect now, so that a Redis that cannot be used is reported before there
         * is anything to publish. */
        if (!sink_connected(rc->out) && !sink_connect(rc->out))
            log_warn("redis: %s", sink_errstr(rc->out));
    }
    if (!r->numbering_checked && !check_numbering(r))
        return -1;
    return leader_cycle(r);
}

int relay_main(const config *cfg)
{
    if (!install_signals(cfg->shutdown_timeout_ms)) {
        log_error("cannot install signal handlers: %s", strerror(errno));
        return 1;
    }
    relay_state r = {.cfg = cfg, .limit = cfg->batch_size, .vac_may = -1};
    scan_init(&r.sc);
    batch_init(&r.rows[0]);
    batch_init(&r.rows[1]);
    batch_init(&r.cur);
    /* The pid in application_name tells `outboxd status` (and pg_stat_activity)
     * which relay process holds the leader lock. */
    char appname[64];
    snprintf(appname, sizeof appname, "outboxd-relay-%d", (int)getpid());
    char err[512];
    redis_endpoint *ep = redis_endpoint_new(cfg, err, sizeof err);
    if (!ep) {
        log_error("redis: %s", err);
        return 2;
    }
    store *db = store_new(cfg->database_url, appname, cfg->pg_timeout_ms);
    snprintf(appname, sizeof appname, "outboxd-vacuum-%d", (int)getpid());
    r.vac = store_new(cfg->database_url, appname, cfg->pg_timeout_ms);
    sink *out = sink_new(ep, cfg, "", true);
    if (!db || !out || !r.vac) {
        log_error("out of memory");
        store_free(db);
        store_free(r.vac);
        sink_free(out);
        redis_endpoint_free(ep);
        return 1;
    }
    relay_ctx_init(&r.rc, cfg, db, out, wake_pipe[0], &stop_requested);
    const char *fp = getenv("OUTBOXD_FAILPOINT");
    r.rc.crash_before_mark = fp && !strcmp(fp, "crash-before-mark");
    r.last_stats = clock_mono_s();
    r.next_stats = r.last_stats + cfg->stats_interval_ms / 1e3;
    log_info("relay starting (pid %d)", (int)getpid());
    config_log(cfg, CMD_RELAY);
    relay_public_init(cfg, ep);
    admin *http = NULL;
    int rc = 1;
    if (cfg->http_listen) {
        admin_handlers h = {.metrics = relay_render_metrics, .ready = relay_check_ready};
        if (!(http = admin_start(cfg->http_listen, &h, err, sizeof err))) {
            log_error("%s", err);
            goto out;
        }
        log_info("serving /metrics, /healthz, /readyz on http://%s/", cfg->http_listen);
    }
    bool said_ready = false;

    while (!stop_requested && !r.fatal) {
        long wait_ms = relay_step(&r);
        if (!said_ready && store_connected(db)) {
            admin_sd_notify("READY=1");
            said_ready = true;
        }
        if (!relay_periodic(&r))
            lose_db(&r);
        if (wait_ms > 0 && !stop_requested) {
            bool notified;
            if (!store_wait(db, wake_pipe[0], wait_ms, &notified)) {
                lose_db(&r);
            } else if (!notified) {
                /* The poll interval passed: read again, still holding the wake-up lock. */
                r.recheck = store_asleep(db);
            } else if (cfg->notify_coalesce_ms > 0) {
                /* Under a steady trickle every commit would be a batch of one: a short
                 * wait lets the commits arriving together share one (less CPU, a
                 * millisecond or two more latency). */
                nap(cfg->notify_coalesce_ms);
            }
            drain_wake_pipe();
        }
    }
    admin_sd_notify("STOPPING=1");
    if (!r.fatal)
        log_info("shutting down: what went out is marked; what was read and not sent stays for the next start");
    /* Every event this relay published is marked before it goes. */
    if (r.leader && store_connected(db) && !ring_flush(&r))
        log_warn("postgresql: %s (the events will be re-checked, and stopped as duplicates)", store_errstr(db));
    relay_log_stats(&r, true);
    rc = r.fatal ? 1 : 0;
out:
    admin_stop(http);
    batch_free(&r.cur);
    batch_free(&r.rows[0]);
    batch_free(&r.rows[1]);
    scan_free(&r.sc);
    ring_free(&r.marks);
    relay_ctx_free(&r.rc);
    store_free(db);
    store_free(r.vac); /* a VACUUM under way finishes on its own */
    sink_free(out);
    redis_endpoint_free(ep);
    close(wake_pipe[0]);
    close(wake_pipe[1]);
    if (rc == 0 || r.fatal)
        log_info("relay stopped");
    return rc;
}
