/* The relay's main loop and batch logic.
 *
 * One cycle: fetch the oldest unpublished events (id order), publish them pipelined,
 * mark those that went out with one UPDATE. Per-run order holds because the database
 * makes per-run id order equal commit order (see store_pg.c), the fetch is in id
 * order, and the sink refuses to publish an event whose predecessor in the same
 * pipeline did not go out. Leadership is a session advisory lock: standbys wait. */
#include "relay.h"

#include "admin_http.h"
#include "log.h"

#include <pthread.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define STANDBY_RETRY_MS 500
#define RETRY_BASE_MS 50
#define RETRY_MAX_MS 1000
#define HOLD_MAX_S 60.0
#define PARK_S 0.25

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Sleeps up to ms, returning early when a signal arrives on the wake pipe. */
static void nap(int wake_fd, long ms)
{
    struct pollfd p = {.fd = wake_fd, .events = POLLIN};
    if (poll(&p, wake_fd >= 0 ? 1 : 0, (int)ms) < 0 && errno != EINTR)
        log_warn("poll: %s", strerror(errno));
}

void relay_ctx_init(relay_ctx *rc, const config *cfg, store *db, sink *out, int wake_fd,
                    volatile sig_atomic_t *stop)
{
    memset(rc, 0, sizeof *rc);
    rc->cfg = cfg;
    rc->db = db;
    rc->out = out;
    rc->wake_fd = wake_fd;
    rc->stop = stop;
}

void relay_ctx_free(relay_ctx *rc)
{
    for (int i = 0; i < rc->nheld; i++)
        free(rc->held[i].run_id);
    rc->nheld = 0;
    free(rc->last_res);
    free(rc->done_ids);
    free(rc->send);
    free(rc->send_idx);
    free(rc->chained);
    free(rc->done);
    free(rc->res);
    free(rc->ids);
    free(rc->order);
    rc->cap = 0;
}

/* Grows one scratch array to n elements of size; leaves it as it was on failure. */
static bool grow(void *arrayp, size_t n, size_t size)
{
    void **p = arrayp;
    void *q = realloc(*p, n * size);
    if (!q)
        return false;
    *p = q;
    return true;
}

static bool ctx_reserve(relay_ctx *rc, size_t n)
{
    if (n <= rc->cap)
        return true;
    bool ok = grow(&rc->send, n, sizeof *rc->send) && grow(&rc->send_idx, n, sizeof *rc->send_idx) &&
              grow(&rc->chained, n, sizeof *rc->chained) && grow(&rc->done, n, sizeof *rc->done) &&
              grow(&rc->res, n, sizeof *rc->res) && grow(&rc->last_res, n, sizeof *rc->last_res) &&
              grow(&rc->ids, n, sizeof *rc->ids) && grow(&rc->done_ids, n, sizeof *rc->done_ids) &&
              grow(&rc->order, n, sizeof *rc->order);
    if (ok)
        rc->cap = n;
    return ok;
}

/* qsort context: the events being sent (qsort_r keeps this re-entrant). */
static int cmp_by_run(const void *a, const void *b, void *arg)
{
    const event *const *send = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    const event *x = send[i], *y = send[j];
    size_t n = x->run_id_len < y->run_id_len ? x->run_id_len : y->run_id_len;
    int c = memcmp(x->run_id, y->run_id, n);
    if (c == 0 && x->run_id_len != y->run_id_len)
        c = x->run_id_len < y->run_id_len ? -1 : 1;
    if (c == 0)
        c = i < j ? -1 : i > j;
    return c;
}

/* chained[k] = an earlier entry of send[] belongs to the same run. */
static void mark_chained(relay_ctx *rc, size_t n)
{
    for (size_t k = 0; k < n; k++)
        rc->order[k] = k;
    qsort_r(rc->order, n, sizeof *rc->order, cmp_by_run, (void *)rc->send);
    for (size_t k = 0; k < n; k++) {
        size_t cur = rc->order[k];
        rc->chained[cur] = false;
        if (k > 0) {
            const event *p = rc->send[rc->order[k - 1]], *e = rc->send[cur];
            rc->chained[cur] = event_run_is(e, p->run_id, p->run_id_len);
        }
    }
}

static int held_find(const relay_ctx *rc, const event *e)
{
    for (int i = 0; i < rc->nheld; i++)
        if (event_run_is(e, rc->held[i].run_id, rc->held[i].len))
            return i;
    return -1;
}

static void held_remove(relay_ctx *rc, int i)
{
    free(rc->held[i].run_id);
    rc->held[i] = rc->held[--rc->nheld];
}

/* The held entry of e's run, added if new; -1 when full or out of memory (the run is
 * then simply retried with the next batch). */
static int held_slot(relay_ctx *rc, const event *e)
{
    int i = held_find(rc, e);
    if (i < 0) {
        if (rc->nheld == RELAY_HELD_MAX)
            return -1;
        char *id = malloc(e->run_id_len + 1);
        if (!id)
            return -1;
        memcpy(id, e->run_id, e->run_id_len);
        id[e->run_id_len] = '\0';
        i = rc->nheld++;
        rc->held[i] = (held_run){.run_id = id, .len = e->run_id_len};
    }
    return i;
}

/* Parks e's run for a moment: no reachable primary serves its slot (a cluster shard
 * down or failing over). Not a refusal: no strike and no log line per run, but left
 * out of the fetches meanwhile, so that its backlog does not crowd out other runs. */
static void held_park(relay_ctx *rc, const event *e)
{
    int i = held_slot(rc, e);
    double until = mono_s() + PARK_S;
    if (i >= 0 && rc->held[i].until < until)
        rc->held[i].until = until;
}

/* Holds back e's run after Redis refused its event: 1 s, doubling to HOLD_MAX_S. */
static void held_add(relay_ctx *rc, const event *e, const char *why)
{
    int i = held_slot(rc, e);
    if (i < 0)
        return;
    held_run *h = &rc->held[i];
    double wait = 1.0;
    for (int k = 0; k < h->strikes && wait < HOLD_MAX_S; k++)
        wait *= 2;
    if (wait > HOLD_MAX_S)
        wait = HOLD_MAX_S;
    h->strikes++;
    h->until = mono_s() + wait;
    log_warn("run %.*s held back for %.0f s (event id %lld failed: %s); other runs go on", (int)h->len,
             h->run_id, wait, e->id, why);
}

int relay_held_now(relay_ctx *rc, const char **ids, size_t *lens)
{
    double now = mono_s();
    int n = 0;
    for (int i = 0; i < rc->nheld; i++)
        if (rc->held[i].until > now) {
            ids[n] = rc->held[i].run_id;
            lens[n++] = rc->held[i].len;
        }
    return n;
}

batch_outcome relay_publish_batch(relay_ctx *rc, const batch *b)
{
    batch_outcome o = {0};
    if (!ctx_reserve(rc, b->n)) {
        log_error("out of memory for a batch of %zu events", b->n);
        o.pending = b->n;
        rc->nwaiting = RELAY_WAITING_MAX;
        return o;
    }
    for (size_t i = 0; i < b->n; i++) {
        rc->done[i] = false;
        rc->last_res[i] = PUB_UNSENT;
    }

    char last_error[512] = "";
    int attempt;
    size_t left = b->n;
    for (attempt = 1; left > 0 && attempt <= rc->cfg->max_attempts; attempt++) {
        if (attempt > 1) {
            if (*rc->stop)
                break; /* shutting down: no retries, the rows stay for the next start */
            rc->stats.retries++;
            long wait = RETRY_BASE_MS << (attempt - 2 < 5 ? attempt - 2 : 5);
            nap(rc->wake_fd, wait < RETRY_MAX_MS ? wait : RETRY_MAX_MS);
        }
        if (!sink_connected(rc->out) && !sink_connect(rc->out)) {
            snprintf(last_error, sizeof last_error, "%s", sink_errstr(rc->out));
            o.redis_lost = true;
            continue;
        }
        size_t n = 0;
        for (size_t i = 0; i < b->n; i++)
            if (!rc->done[i] && rc->last_res[i] != PUB_NOROUTE) {
                rc->send[n] = &b->ev[i];
                rc->send_idx[n++] = i;
            }
        mark_chained(rc, n);
        if (!sink_publish(rc->out, rc->send, rc->chained, n, rc->res))
            o.redis_lost = true;
        double acked = now_s();
        for (size_t k = 0; k < n; k++) {
            rc->last_res[rc->send_idx[k]] = rc->res[k];
            switch (rc->res[k]) {
            case PUB_OK:
                hist_record(&rc->stats.latency, (acked - rc->send[k]->created_epoch) * 1e6);
                prom_hist_record(&rc->stats.latency_total, acked - rc->send[k]->created_epoch);
                /* fall through */
            case PUB_DUP:
                if (rc->res[k] == PUB_DUP)
                    rc->stats.duplicates++;
                rc->done[rc->send_idx[k]] = true;
                left--;
                break;
            case PUB_FAILED:
            case PUB_UNSENT:
                rc->stats.failures++;
                snprintf(last_error, sizeof last_error, "%s", sink_errstr(rc->out));
                break;
            case PUB_NOROUTE:
                /* Its shard has no primary to take it now: it waits for a later
                 * batch, and does not hold this one's retries (nor other runs). */
                rc->stats.failures++;
                snprintf(last_error, sizeof last_error, "%s", sink_errstr(rc->out));
                left--;
                break;
            case PUB_GAP:
                break;
            }
        }
    }

    /* Test-only failpoint: die between PUBLISH and the marking UPDATE, the window in
     * which a crash would repeat events without the marks in Redis. */
    if (rc->crash_before_mark && left < b->n && ++rc->batches_until_crash >= 3)
        raise(SIGKILL);

    size_t nd = 0, nf = 0;
    for (size_t i = 0; i < b->n; i++)
        if (rc->done[i])
            rc->done_ids[nd++] = b->ev[i].id;
    o.published = nd;
    o.pending = b->n - nd;
    for (size_t i = 0; rc->nheld && i < b->n; i++) {
        int h;
        if (rc->done[i] && (h = held_find(rc, &b->ev[i])) >= 0)
            held_remove(rc, h);
    }

    /* Record the failure on the first unpublished event of each run: the later ones
     * only wait behind it. */
    if (o.pending) {
        for (size_t i = 0; i < b->n; i++) {
            if (rc->done[i])
                continue;
            bool first = true;
            for (size_t j = 0; j < nf && first; j++) {
                const event *p = &b->ev[rc->order[j]];
                first = !event_run_is(&b->ev[i], p->run_id, p->run_id_len);
            }
            if (first)
                rc->order[nf++] = i;
            if (nf >= RELAY_WAITING_MAX)
                break; /* bounded: the rest are recorded when they are retried */
        }
        rc->nwaiting = nf;
        for (size_t j = 0; j < nf; j++) {
            rc->ids[j] = b->ev[rc->order[j]].id;
            /* An error reply is about this event: hold its run back, let the others go. */
            if (rc->last_res[rc->order[j]] == PUB_FAILED) {
                o.event_failures++;
                held_add(rc, &b->ev[rc->order[j]], last_error);
            } else if (rc->last_res[rc->order[j]] == PUB_NOROUTE) {
                held_park(rc, &b->ev[rc->order[j]]);
            }
        }
        log_warn("%zu of %zu events not published after %d attempts (%zu runs wait): %s", o.pending, b->n,
                 attempt - 1, nf, last_error[0] ? last_error : "unknown");
        /* Written by relay_record_failures, once the connection is free (in the
         * overlapped drain a statement is in flight while we publish). */
        rc->nfailed = nf;
        rc->failed_attempts = attempt - 1;
        snprintf(rc->failed_error, sizeof rc->failed_error, "%s", last_error);
    } else {
        rc->nwaiting = 0;
        rc->nfailed = 0;
    }
    return o;
}

void relay_record_failures(relay_ctx *rc)
{
    if (rc->nfailed && !store_record_failure(rc->db, rc->ids, rc->nfailed, rc->failed_attempts, rc->failed_error))
        log_warn("%s", store_errstr(rc->db));
    rc->nfailed = 0;
}

batch_outcome relay_process_batch(relay_ctx *rc, const batch *b)
{
    batch_outcome o = relay_publish_batch(rc, b);
    relay_record_failures(rc);
    if (o.published && !store_mark_published(rc->db, rc->done_ids, o.published)) {
        /* Published but not marked: the next fetch returns them and the sink's marks
         * turn them into duplicates that are not delivered again. */
        log_warn("%s (%zu published events will be re-checked)", store_errstr(rc->db), o.published);
        o.db_lost = true;
        o.pending = b->n;
        o.published = 0;
        return o;
    }
    rc->stats.published += o.published;
    return o;
}

/* Removes from `next` the events of runs that still wait in `cur` (the batch just
 * published): they were fetched before cur's outcome was known, and must not
 * overtake the event that failed. They come back with a later fetch. */
void relay_drop_waiting_runs(relay_ctx *rc, const batch *cur, batch *next)
{
    if (cur->n == 0 || rc->nwaiting == 0)
        return;
    if (rc->nwaiting >= RELAY_WAITING_MAX) {
        batch_clear(next); /* too many to tell apart: fetch again */
        return;
    }
    size_t kept = 0;
    for (size_t i = 0; i < next->n; i++) {
        const event *e = &next->ev[i];
        bool waits = false;
        for (size_t j = 0; j < rc->nwaiting && !waits; j++) {
            const event *w = &cur->ev[rc->order[j]];
            waits = event_run_is(e, w->run_id, w->run_id_len);
        }
        if (!waits)
            next->ev[kept++] = *e;
    }
    next->n = kept;
}

/* ---- process: signals, connections, loop ----------------------------------------- */

static volatile sig_atomic_t stop_requested;
static int wake_pipe[2] = {-1, -1};
static long shutdown_timeout_s = 10;

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

/* What the admin thread may read, copied from the loop under `mu` after each step. */
typedef struct relay_public {
    pthread_mutex_t mu;
    relay_stats stats;
    long long backlog;
    double oldest_age_s;
    bool leader, db_up;
    int held;
    sink_counters redis;
    bool redis_refusing;
    char redis_refusal[1024];
    const config *cfg;
    redis_endpoint *endpoint;
} relay_public;

static relay_public pub = {.mu = PTHREAD_MUTEX_INITIALIZER, .backlog = -1};

typedef struct relay_state {
    relay_ctx rc;
    const config *cfg;
    bool fatal; /* a condition no retry can mend: stop with exit code 1 */
    bool leader;
    bool said_standby;
    long backoff_ms;
    double next_stats;
    double last_stats;
    double next_backlog;
    double next_prune;
    batch spare; /* the batch being fetched while another is published */
    long long backlog;
    double oldest_age_s;
    uint64_t published_at_last_stats;
} relay_state;

static void backoff(relay_state *r)
{
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (r->backoff_ms > BACKOFF_MAX_MS)
        r->backoff_ms = BACKOFF_MAX_MS;
    nap(wake_pipe[0], r->backoff_ms);
}

static void drain_wake_pipe(void)
{
    char tmp[64];
    while (read(wake_pipe[0], tmp, sizeof tmp) > 0) {
    }
}

/* Connects, checks the schema, LISTENs. A full poll follows, as after any re-LISTEN. */
static bool connect_db(relay_state *r)
{
    store *db = r->rc.db;
    char epoch[64];
    if (!store_connect(db) || !store_check_schema(db, epoch, sizeof epoch) ||
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
    sink_set_epoch(r->rc.out, epoch);
    r->leader = false;
    r->said_standby = false;
    log_info("postgresql: connected (%s)", r->cfg->no_listen ? "poll only" : "listening");
    return true;
}

static void log_stats(relay_state *r, bool final)
{
    relay_stats *st = &r->rc.stats;
    double now = mono_s();
    double span = now - r->last_stats;
    long long backlog = r->leader ? r->backlog : -1;
    double oldest = r->leader ? r->oldest_age_s : 0;
    double rate = span > 0 ? (double)(st->published - r->published_at_last_stats) / span : 0;
    sink_counters sc;
    sink_get_counters(r->rc.out, &sc);
    log_info("stats%s: role=%s published=%llu rate=%.1f/s duplicates_suppressed=%llu "
             "possible_duplicates=%llu failures=%llu "
             "retries=%llu pruned=%llu latency_ms p50=%.2f p99=%.2f max=%.2f batches=%llu batch_ms avg=%.2f max=%.2f "
             "backlog=%lld oldest_unpublished_s=%.3f",
             final ? " (final)" : "", r->leader ? "leader" : "standby",
             (unsigned long long)st->published, rate, (unsigned long long)st->duplicates,
             sc.possible_duplicates,
             (unsigned long long)st->failures, (unsigned long long)st->retries,
             (unsigned long long)st->pruned, hist_quantile(&st->latency, 0.5) / 1e3, hist_quantile(&st->latency, 0.99) / 1e3,
             st->latency.max_us / 1e3, (unsigned long long)st->batches,
             st->batch_time.count ? st->batch_time.sum_us / (double)st->batch_time.count / 1e3 : 0,
             st->batch_time.max_us / 1e3, backlog, oldest);
    hist_reset(&st->latency);
    hist_reset(&st->batch_time);
    r->last_stats = now;
    r->published_at_last_stats = st->published;
}

/* The leader's backlog, refreshed every 2 s for the stats line and /metrics. */
static void refresh_backlog(relay_state *r)
{
    if (!r->leader || !store_connected(r->rc.db) || mono_s() < r->next_backlog)
        return;
    r->next_backlog = mono_s() + 2;
    if (!store_backlog(r->rc.db, &r->backlog, &r->oldest_age_s))
        log_warn("postgresql: %s", store_errstr(r->rc.db));
}

/* Retention: once a second the leader deletes published rows past the window, a
 * thousand per statement, for at most 250 ms, so that publishing never waits long. */
static void prune_old(relay_state *r)
{
    long keep = r->cfg->retention_ms;
    if (keep <= 0 || !r->leader || !store_connected(r->rc.db) || mono_s() < r->next_prune)
        return;
    double start = mono_s();
    r->next_prune = start + 1;
    long long total = 0, n = 0;
    do {
        if (!store_prune(r->rc.db, keep, 1000, &n)) {
            log_warn("retention: %s", store_errstr(r->rc.db));
            return;
        }
        total += n;
    } while (n == 1000 && mono_s() - start < 0.25);
    if (total)
        log_debug("retention: deleted %lld published events older than %ld ms", total, keep);
    r->rc.stats.pruned += (uint64_t)total;
}

static void publish_state(relay_state *r)
{
    pthread_mutex_lock(&pub.mu);
    pub.stats = r->rc.stats;
    pub.backlog = r->leader ? r->backlog : -1;
    pub.oldest_age_s = r->oldest_age_s;
    pub.leader = r->leader;
    pub.db_up = store_connected(r->rc.db);
    pub.held = r->rc.nheld;
    const char *why;
    sink_get_counters(r->rc.out, &pub.redis);
    pub.redis_refusing = sink_refusing(r->rc.out, &why);
    snprintf(pub.redis_refusal, sizeof pub.redis_refusal, "%s", why);
    pthread_mutex_unlock(&pub.mu);
}

static bool render_metrics(buf *b, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pub.mu);
    relay_public p = pub;
    pthread_mutex_unlock(&pub.mu);
    relay_stats *st = &p.stats;
    return prom_counter(b, "outboxd_events_published_total",
                        "Events delivered to Redis (or found delivered already) and marked published.",
                        (double)st->published) &&
           prom_counter(b, "outboxd_duplicates_suppressed_total",
                        "Events the Redis marks recognised as published already (after a crash or timeout).",
                        (double)st->duplicates) &&
           prom_counter(b, "outboxd_publish_failures_total", "Publish attempts of an event that failed.",
                        (double)st->failures) &&
           prom_counter(b, "outboxd_publish_retries_total", "Extra publish attempts made within batches.",
                        (double)st->retries) &&
           prom_counter(b, "outboxd_redis_possible_duplicates_total",
                        "Events published again after an attempt whose reply was lost, found without a mark: "
                        "each may have reached Redis subscribers twice (marks lost in a failover); browsers "
                        "never see a repeat.",
                        (double)p.redis.possible_duplicates) &&
           prom_counter(b, "outboxd_redis_primary_changes_total",
                        "Connections made to a Redis primary other than the previous one (failovers).",
                        (double)p.redis.primary_changes) &&
           prom_counter(b, "outboxd_redis_wait_short_total",
                        "Batches whose WAIT saw fewer replicas than --redis-wait-replicas in time.",
                        (double)p.redis.wait_short) &&
           prom_counter(b, "outboxd_batches_total", "Non-empty batches processed.", (double)st->batches) &&
           prom_counter(b, "outboxd_events_pruned_total", "Published events deleted by --retention.",
                        (double)st->pruned) &&
           prom_gauge(b, "outboxd_backlog_events",
                      "Unpublished events (counted up to 1e6; -1 when not the leader).", (double)p.backlog) &&
           prom_gauge(b, "outboxd_oldest_unpublished_age_seconds",
                      "Age of the oldest unpublished event (0 when none).", p.oldest_age_s) &&
           prom_gauge(b, "outboxd_leader", "1 when this relay holds the leader lock and publishes.",
                      p.leader ? 1 : 0) &&
           prom_gauge(b, "outboxd_held_runs", "Runs held back because Redis refused one of their events.",
                      p.held) &&
           prom_gauge(b, "outboxd_database_up", "1 while the relay's PostgreSQL connection is up.",
                      p.db_up ? 1 : 0) &&
           prom_histogram(b, "outboxd_publish_latency_seconds",
                          "From created_at to Redis acknowledging the publish.", &st->latency_total) &&
           prom_histogram(b, "outboxd_batch_duration_seconds", "From fetch to marked, per non-empty batch.",
                          &st->batch_time_total);
}

/* Ready = the database connection is up, the Redis primary takes a connection now
 * (TLS, AUTH, ROLE, the script), and Redis has not refused every event lately (an
 * ACL denial). */
static bool check_ready(buf *body, void *arg)
{
    (void)arg;
    pthread_mutex_lock(&pub.mu);
    bool db = pub.db_up, leader = pub.leader, refusing = pub.redis_refusing;
    char refusal[sizeof pub.redis_refusal];
    memcpy(refusal, pub.redis_refusal, sizeof refusal);
    const config *cfg = pub.cfg;
    redis_endpoint *ep = pub.endpoint;
    pthread_mutex_unlock(&pub.mu);
    sink *probe = sink_new(ep, cfg, "", false);
    bool redis = probe && sink_connect(probe);
    const char *why = !probe ? "out of memory" : !redis ? sink_errstr(probe) : refusing ? refusal : "";
    bool ok = db && redis && !refusing;
    if (!buf_printf(body, "%s role=%s database=%s redis=%s%s%s\n", ok ? "ready" : "not ready",
                    leader ? "leader" : "standby", db ? "up" : "down",
                    !redis ? "down" : refusing ? "refusing" : "up", why[0] ? ": " : "", why))
        ok = false;
    sink_free(probe);
    return ok;
}

/* Time-driven chores between batches: backlog, retention, /metrics, the stats line. */
static void periodic(relay_state *r)
{
    refresh_backlog(r);
    prune_old(r);
    publish_state(r);
    if (r->cfg->stats_interval_ms > 0 && mono_s() >= r->next_stats) {
        log_stats(r, false);
        r->next_stats = mono_s() + r->cfg->stats_interval_ms / 1e3;
    }
}

static void lose_db(relay_state *r)
{
    log_warn("postgresql: %s", store_errstr(r->rc.db));
    store_disconnect(r->rc.db);
    r->leader = false;
}

static void count_batch(relay_ctx *rc, double t0)
{
    rc->stats.batches++;
    hist_record(&rc->stats.batch_time, (mono_s() - t0) * 1e6);
    prom_hist_record(&rc->stats.batch_time_total, mono_s() - t0);
}

/* Drains a backlog with PostgreSQL and Redis working at the same time: while Redis
 * takes batch k, PostgreSQL marks batch k-1 and fetches batch k+1 in one statement
 * (store_fetch_begin). cur holds a full batch, fetched and not yet published; spare is
 * an empty batch to fetch into. Marks lag one batch: a crash re-sends at most two
 * batches, which the marks in Redis turn into suppressed duplicates. Returns what
 * relay_step returns. */
static long drain_overlapped(relay_state *r, batch *cur, batch *spare, long *limit)
{
    relay_ctx *rc = &r->rc;
    size_t cap = (size_t)r->cfg->max_batch_size;
    long long *done = malloc(cap * sizeof *done), *exclude = malloc(2 * cap * sizeof *exclude);
    batch *next = spare;
    size_t ndone = 0;
    long wait = -1;
    if (!done || !exclude) {
        log_error("out of memory: publishing the batch without overlap");
        relay_process_batch(rc, cur);
        batch_clear(cur);
        goto out;
    }
    for (;;) {
        double t0 = mono_s();
        size_t nex = 0;
        for (size_t i = 0; i < cur->n; i++)
            exclude[nex++] = cur->ev[i].id;
        for (size_t i = 0; i < ndone; i++)
            exclude[nex++] = done[i];
        const char *held_ids[RELAY_HELD_MAX];
        size_t held_lens[RELAY_HELD_MAX];
        int nheld = relay_held_now(rc, held_ids, held_lens);
        if (!store_fetch_begin(rc->db, *limit, held_ids, held_lens, (size_t)nheld, done, ndone, exclude, nex)) {
            lose_db(r); /* done's marks are lost: re-checked (and suppressed) later */
            ndone = 0;
            batch_clear(cur);
            backoff(r);
            goto out;
        }
        size_t marking = ndone;
        batch_outcome o = relay_publish_batch(rc, cur);
        ndone = o.published;
        memcpy(done, rc->done_ids, ndone * sizeof *done);
        bool fetched = store_fetch_end(rc->db, next);
        count_batch(rc, t0);
        if (!fetched) {
            rc->nfailed = 0; /* recorded when the events fail again */
            lose_db(r);
            ndone = 0;
            batch_clear(cur);
            backoff(r);
            goto out;
        }
        rc->stats.published += marking;
        relay_record_failures(rc);
        bool full = next->n == (size_t)*limit;
        relay_drop_waiting_runs(rc, cur, next);
        batch_clear(cur);
        if (o.pending && o.published == 0 && o.event_failures == 0) {
            if (o.redis_lost)
                log_warn("redis: %s", sink_errstr(rc->out));
            batch_clear(next);
            backoff(r);
            goto out;
        }
        r->backoff_ms = 0;
        batch *t = cur;
        cur = next;
        next = t;
        if (stop_requested || !full) {
            /* The backlog is drained (or we are stopping): mark, then publish the last
             * batch the plain way (a stopping relay leaves it for the next start). */
            if (ndone && !store_mark_published(rc->db, done, ndone)) {
                lose_db(r);
                batch_clear(cur);
                ndone = 0;
                goto out;
            }
            rc->stats.published += ndone;
            ndone = 0;
            if (cur->n && !stop_requested) {
                t0 = mono_s();
                batch_outcome last = relay_process_batch(rc, cur);
                count_batch(rc, t0);
                if (last.db_lost)
                    lose_db(r);
            }
            batch_clear(cur);
            *limit = r->cfg->batch_size;
            wait = r->cfg->poll_interval_ms;
            goto out;
        }
        if (*limit < r->cfg->max_batch_size)
            *limit = *limit * 2 > r->cfg->max_batch_size ? r->cfg->max_batch_size : *limit * 2;
        periodic(r);
    }
out:
    if (ndone && store_connected(rc->db)) {
        if (store_mark_published(rc->db, done, ndone))
            rc->stats.published += ndone;
        else
            lose_db(r);
    }
    batch_clear(cur);
    batch_clear(next);
    free(done);
    free(exclude);
    return wait;
}

/* One pass of the loop; returns how long to wait for a NOTIFY before the next (ms),
 * 0 for "at once", or -1 when it already waited (backoff, standby). */
static long relay_step(relay_state *r, batch *b, long *limit)
{
    relay_ctx *rc = &r->rc;
    if (!store_connected(rc->db) && !connect_db(r)) {
        if (!r->fatal)
            backoff(r);
        return -1;
    }
    if (!r->leader) {
        if (!store_try_lead(rc->db, &r->leader)) {
            log_warn("postgresql: %s", store_errstr(rc->db));
            store_disconnect(rc->db);
            backoff(r);
            return -1;
        }
        if (!r->leader) {
            if (!r->said_standby)
                log_info("standby: another relay holds the leader lock; retrying every %d ms",
                         STANDBY_RETRY_MS);
            r->said_standby = true;
            nap(wake_pipe[0], STANDBY_RETRY_MS);
            return -1;
        }
        log_info("leader: this relay publishes");
        /* Connect now, so that a Redis that cannot be used is reported before there
         * is anything to publish. */
        if (!sink_connected(rc->out) && !sink_connect(rc->out))
            log_warn("redis: %s", sink_errstr(rc->out));
    }
    /* Redis being down is no reason to skip the fetch: the batch's attempts (each
     * one a reconnect) are recorded on its rows, where `outboxd status` shows them. */
    if (store_take_retry(rc->db) && rc->nheld) {
        log_info("retry asked for (outboxd retry): releasing %d held run(s)", rc->nheld);
        while (rc->nheld)
            held_remove(rc, 0);
    }
    double t0 = mono_s();
    const char *held_ids[RELAY_HELD_MAX];
    size_t held_lens[RELAY_HELD_MAX];
    int nheld = relay_held_now(rc, held_ids, held_lens);
    if (!store_fetch(rc->db, *limit, held_ids, held_lens, (size_t)nheld, b)) {
        log_warn("postgresql: %s", store_errstr(rc->db));
        store_disconnect(rc->db);
        r->leader = false;
        backoff(r);
        return -1;
    }
    if (b->n == 0) {
        r->backoff_ms = 0;
        *limit = r->cfg->batch_size;
        return r->cfg->poll_interval_ms;
    }
    if (b->n == (size_t)*limit && r->cfg->max_batch_size > 1) {
        /* A full batch means a backlog: drain it with the database and Redis busy at
         * the same time. */
        if (*limit < r->cfg->max_batch_size)
            *limit = *limit * 2 > r->cfg->max_batch_size ? r->cfg->max_batch_size : *limit * 2;
        return drain_overlapped(r, b, &r->spare, limit);
    }
    batch_outcome o = relay_process_batch(rc, b);
    count_batch(rc, t0);
    bool full = b->n == (size_t)*limit;
    batch_clear(b);
    if (o.db_lost) {
        store_disconnect(rc->db);
        r->leader = false;
    }
    if (o.db_lost || (o.pending && o.published == 0 && o.event_failures == 0)) {
        /* An outage (nothing went out, no event-specific error): back off. Runs held
         * back for their own errors do not slow the others down. */
        if (o.redis_lost)
            log_warn("redis: %s", sink_errstr(rc->out));
        backoff(r);
        return -1;
    }
    r->backoff_ms = 0;
    if (full) {
        /* A backlog: bigger batches amortize the round trips. */
        *limit = *limit * 2 > r->cfg->max_batch_size ? r->cfg->max_batch_size : *limit * 2;
        return 0;
    }
    *limit = r->cfg->batch_size;
    return r->cfg->poll_interval_ms;
}

int relay_main(const config *cfg)
{
    if (!install_signals(cfg->shutdown_timeout_ms)) {
        log_error("cannot install signal handlers: %s", strerror(errno));
        return 1;
    }
    relay_state r = {.cfg = cfg};
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
    sink *out = sink_new(ep, cfg, "", true);
    if (!db || !out) {
        log_error("out of memory");
        store_free(db);
        sink_free(out);
        redis_endpoint_free(ep);
        return 1;
    }
    relay_ctx_init(&r.rc, cfg, db, out, wake_pipe[0], &stop_requested);
    const char *fp = getenv("OUTBOXD_FAILPOINT");
    r.rc.crash_before_mark = fp && !strcmp(fp, "crash-before-mark");
    batch b;
    batch_init(&b);
    batch_init(&r.spare);
    long limit = cfg->batch_size;
    r.last_stats = mono_s();
    r.next_stats = r.last_stats + cfg->stats_interval_ms / 1e3;
    log_info("relay starting (pid %d)", (int)getpid());
    config_log(cfg, CMD_RELAY);
    pub.cfg = cfg;
    pub.endpoint = ep;
    admin *http = NULL;
    if (cfg->http_listen) {
        admin_handlers h = {.metrics = render_metrics, .ready = check_ready};
        if (!(http = admin_start(cfg->http_listen, &h, err, sizeof err))) {
            log_error("%s", err);
            batch_free(&b);
            relay_ctx_free(&r.rc);
            store_free(db);
            sink_free(out);
            redis_endpoint_free(ep);
            return 1;
        }
        log_info("serving /metrics, /healthz, /readyz on http://%s/", cfg->http_listen);
    }
    bool said_ready = false;

    while (!stop_requested && !r.fatal) {
        long wait_ms = relay_step(&r, &b, &limit);
        if (!said_ready && store_connected(db)) {
            admin_sd_notify("READY=1");
            said_ready = true;
        }
        periodic(&r);
        if (wait_ms > 0 && !stop_requested) {
            bool notified;
            if (!store_wait(db, wake_pipe[0], wait_ms, &notified)) {
                log_warn("postgresql: %s", store_errstr(db));
                store_disconnect(db);
                r.leader = false;
            } else if (notified && cfg->notify_coalesce_ms > 0) {
                /* Under a steady trickle every commit would be a batch of one: a short
                 * wait lets the commits arriving together share one (less CPU, a
                 * millisecond or two more latency). */
                nap(wake_pipe[0], cfg->notify_coalesce_ms);
            }
            drain_wake_pipe();
        }
    }
    admin_sd_notify("STOPPING=1");
    if (!r.fatal)
        log_info("shutting down: the batch in flight is finished");
    log_stats(&r, true);
    admin_stop(http);
    batch_free(&b);
    batch_free(&r.spare);
    relay_ctx_free(&r.rc);
    store_free(db);
    sink_free(out);
    redis_endpoint_free(ep);
    close(wake_pipe[0]);
    close(wake_pipe[1]);
    log_info("relay stopped");
    return r.fatal ? 1 : 0;
}
