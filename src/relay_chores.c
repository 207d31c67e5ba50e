/* The relay's chores between cycles: the stats line, the backlog's size, retention,
 * VACUUM, and the copy of the loop's state that the admin thread serves as /metrics
 * and /readyz. */
#include "relay_int.h"

#include "clock.h"
#include "log.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the admin thread may read, copied from the loop under `mu` after each step. */
typedef struct relay_public {
    pthread_mutex_t mu;
    relay_stats stats;
    long long backlog;
    double oldest_age_s;
    bool leader, db_up;
    int held;
    size_t gaps;
    double gap_age_s, gap_blocker_age_s;
    int gap_blocker_pid;
    bool gap_blocker_prepared;
    sink_counters redis;
    bool redis_refusing;
    char redis_refusal[1024];
    const config *cfg;
    redis_endpoint *endpoint;
} relay_public;

static relay_public pub = {.mu = PTHREAD_MUTEX_INITIALIZER, .backlog = -1, .oldest_age_s = -1};

void relay_public_init(const config *cfg, redis_endpoint *ep)
{
    pub.cfg = cfg;
    pub.endpoint = ep;
}

void relay_log_stats(relay_state *r, bool final)
{
    relay_stats *st = &r->rc.stats;
    double now = clock_mono_s();
    double span = now - r->last_stats;
    long long backlog = r->leader ? r->backlog : -1;
    double oldest = r->leader ? r->oldest_age_s : -1;
    double rate = span > 0 ? (double)(st->published - r->published_at_last_stats) / span : 0;
    sink_counters sc;
    sink_get_counters(r->rc.out, &sc);
    /* gap_blocker=none, prepared or pid:N (%.0d prints nothing for 0). */
    log_info("stats%s: role=%s published=%llu rate=%.1f/s duplicates_suppressed=%llu "
             "possible_duplicates=%llu mark_failures=%llu failures=%llu "
             "retries=%llu pruned=%llu latency_ms p50=%.2f p99=%.2f max=%.2f batches=%llu batch_ms avg=%.2f max=%.2f "
             "backlog=%lld oldest_unpublished_s=%.3f gaps=%zu oldest_gap_s=%.3f gap_blocker=%s%.0d "
             "gap_blocker_s=%.3f",
             final ? " (final)" : "", r->leader ? "leader" : "standby",
             (unsigned long long)st->published, rate, (unsigned long long)st->duplicates,
             sc.possible_duplicates, sc.mark_failures,
             (unsigned long long)st->failures, (unsigned long long)st->retries,
             (unsigned long long)st->pruned, hist_quantile(&st->latency, 0.5) / 1e3, hist_quantile(&st->latency, 0.99) / 1e3,
             st->latency.max_us / 1e3, (unsigned long long)st->batches,
             st->batch_time.count ? st->batch_time.sum_us / (double)st->batch_time.count / 1e3 : 0,
             st->batch_time.max_us / 1e3, backlog, oldest, r->leader ? r->sc.ngaps : 0,
             r->leader ? scan_oldest_gap_s(&r->sc, now) : 0,
             !r->leader || !r->sc.blocker ? "none" : r->sc.blocker_prepared ? "prepared" : "pid:",
             r->leader && r->sc.blocker ? r->sc.blocker_pid : 0,
             r->leader && r->sc.blocker ? r->sc.blocker_age_s : 0);
    hist_reset(&st->latency);
    hist_reset(&st->batch_time);
    r->last_stats = now;
    r->published_at_last_stats = st->published;
}

/* The lowest id that may still need publishing or marking: what a relay that takes
 * over reads from. */
long long relay_low_water(relay_state *r)
{
    long long low = scan_low(&r->sc);
    for (size_t i = 0; i < r->cur.n; i++)
        if (r->cur.ev[i].id < low)
            low = r->cur.ev[i].id;
    for (int k = 0; k < MARK_SPLIT; k++)
        for (size_t i = 0; i < r->marks.n[k]; i++)
            if (r->marks.ids[k][i] < low)
                low = r->marks.ids[k][i];
    for (int h = 0; h < r->rc.nheld; h++)
        if (r->rc.held[h].from_id < low)
            low = r->rc.held[h].from_id;
    return low;
}

/* The leader's backlog, refreshed every 2 s for the stats line and /metrics: rows
 * from the frontier's low end on, and the held runs through their own rows. False
 * when the database connection was lost meanwhile. */
static bool refresh_backlog(relay_state *r)
{
    if (!r->leader || !store_connected(r->rc.db) || clock_mono_s() < r->next_backlog)
        return true;
    r->next_backlog = clock_mono_s() + 2;
    const char *runs[RELAY_HELD_MAX];
    size_t lens[RELAY_HELD_MAX];
    /* From the frontier (and the batch in flight) on: gaps hold no rows that were read,
     * and one kept open for long would make this read every row above it. */
    long long seqs[RELAY_HELD_MAX], from = r->sc.frontier + 1;
    for (int h = 0; h < r->rc.nheld; h++) {
        runs[h] = r->rc.held[h].run_id;
        lens[h] = r->rc.held[h].len;
        seqs[h] = r->rc.held[h].from_seq;
    }
    for (size_t i = 0; i < r->cur.n; i++)
        if (r->cur.ev[i].id < from)
            from = r->cur.ev[i].id;
    return store_backlog(r->rc.db, from, r->sc.frontier, runs, lens, (size_t)r->rc.nheld, seqs, &r->backlog,
                         &r->oldest_age_s);
}

/* Retention: once a second the leader deletes published rows past the window, a
 * thousand per statement, for at most 250 ms, so that publishing never waits long;
 * then it looks at a window of the counters of runs without rows. */
static void prune_old(relay_state *r)
{
    long keep = r->cfg->retention_ms;
    if (!r->leader || !store_connected(r->rc.db) || clock_mono_s() < r->next_prune)
        return;
    double start = clock_mono_s();
    r->next_prune = start + 1;
    long long total = 0, n = 0;
    if (keep > 0) {
        do {
            if (!store_prune(r->rc.db, keep, 1000, &n)) {
                log_warn("retention: %s", store_errstr(r->rc.db));
                return;
            }
            total += n;
        } while (n >= 1000 && clock_mono_s() - start < 0.25);
        if (total)
            log_debug("retention: deleted %lld published events older than %ld ms", total, keep);
        r->rc.stats.pruned += (uint64_t)total;
        r->churn += total;
    }
    if (r->cfg->counter_retention_ms > 0) {
        long long gone;
        if (!store_forget_runs(r->rc.db, r->cfg->counter_retention_ms, FORGET_WINDOW, r->forget_cursor,
                               sizeof r->forget_cursor, &gone))
            log_warn("retention: %s", store_errstr(r->rc.db));
        else if (gone)
            log_debug("retention: forgot %lld runs without events for %ld ms", gone, r->cfg->counter_retention_ms);
    }
}

static void publish_state(relay_state *r)
{
    pthread_mutex_lock(&pub.mu);
    pub.stats = r->rc.stats;
    pub.backlog = r->leader ? r->backlog : -1;
    pub.oldest_age_s = r->leader ? r->oldest_age_s : -1;
    pub.leader = r->leader;
    pub.db_up = store_connected(r->rc.db);
    pub.held = r->rc.nheld;
    pub.gaps = r->leader ? r->sc.ngaps : 0;
    pub.gap_age_s = r->leader ? scan_oldest_gap_s(&r->sc, clock_mono_s()) : 0;
    pub.gap_blocker_pid = r->leader && r->sc.blocker ? r->sc.blocker_pid : 0;
    pub.gap_blocker_age_s = r->leader && r->sc.blocker ? r->sc.blocker_age_s : 0;
    pub.gap_blocker_prepared = r->leader && r->sc.blocker && r->sc.blocker_prepared;
    const char *why;
    sink_get_counters(r->rc.out, &pub.redis);
    pub.redis_refusing = sink_refusing(r->rc.out, &why);
    snprintf(pub.redis_refusal, sizeof pub.redis_refusal, "%s", why);
    pthread_mutex_unlock(&pub.mu);
}

bool relay_render_metrics(buf *b, void *arg)
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
           prom_counter(b, "outboxd_redis_mark_failures_total",
                        "Script calls whose events were published but whose run mark Redis refused to write "
                        "(an ACL user without SET): they count as published; a re-send after a crash is not "
                        "recognised as a duplicate meanwhile.",
                        (double)p.redis.mark_failures) &&
           prom_counter(b, "outboxd_epoch_changes_total",
                        "New epochs written because the id numbering of run_outbox went back (a restored backup, "
                        "lost commits): the Redis marks start afresh.",
                        (double)st->epoch_changes) &&
           prom_counter(b, "outboxd_batches_total", "Non-empty batches processed.", (double)st->batches) &&
           prom_counter(b, "outboxd_events_pruned_total", "Published events deleted by --retention.",
                        (double)st->pruned) &&
           prom_gauge(b, "outboxd_backlog_events",
                      "Unpublished events: ids above what the leader read, and unpublished rows below (-1 when "
                      "not the leader).",
                      (double)p.backlog) &&
           prom_gauge(b, "outboxd_oldest_unpublished_age_seconds",
                      "Age of the oldest unpublished event (0 when none, -1 when not the leader).",
                      p.oldest_age_s) &&
           prom_gauge(b, "outboxd_leader", "1 when this relay holds the leader lock and publishes.",
                      p.leader ? 1 : 0) &&
           prom_gauge(b, "outboxd_held_runs", "Runs held back because Redis refused one of their events.",
                      p.held) &&
           prom_gauge(b, "outboxd_database_up", "1 while the relay's PostgreSQL connection is up.",
                      p.db_up ? 1 : 0) &&
           prom_gauge(b, "outboxd_gaps", "Ranges of missing ids below the leader's frontier that it reads again.",
                      (double)p.gaps) &&
           prom_gauge(b, "outboxd_gap_oldest_age_seconds", "Age of the oldest of those gaps (0 when none).",
                      p.gap_age_s) &&
           prom_gauge(b, "outboxd_gap_blocker_pid",
                      "Backend of the oldest transaction writing run_outbox that holds gaps open (0 when none, "
                      "or when it is a prepared transaction).",
                      p.gap_blocker_pid) &&
           prom_gauge(b, "outboxd_gap_blocker_age_seconds",
                      "How long that transaction has been open or prepared (0 when none).", p.gap_blocker_age_s) &&
           prom_gauge(b, "outboxd_gap_blocker_prepared", "1 when that transaction is a prepared (two-phase) one.",
                      p.gap_blocker_prepared ? 1 : 0) &&
           prom_histogram(b, "outboxd_publish_latency_seconds",
                          "From created_at to Redis acknowledging the publish.", &st->latency_total) &&
           prom_histogram(b, "outboxd_batch_duration_seconds", "From read to published, per non-empty batch.",
                          &st->batch_time_total);
}

/* Ready = the database connection is up, the Redis primary takes a connection now
 * (TLS, AUTH, ROLE, the script), and Redis has not refused every event lately (an
 * ACL denial, or writes refused: NOREPLICAS, OOM, MISCONF, BUSY). */
bool relay_check_ready(buf *body, void *arg)
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

/* Marks and retention leave dead row versions, and only VACUUM makes their room
 * usable for new rows: without it the table grows by everything written between two
 * visits of autovacuum (a minute at best). Once --vacuum-after events were marked or
 * deleted, the leader starts a VACUUM on a connection of its own and goes on
 * publishing; it only looks whether that one is done before it starts another.
 * VACUUM reads only the pages changed since the last one. */
static void vacuum_chore(relay_state *r)
{
    double now = clock_mono_s();
    if (r->vac_running) {
        bool done;
        if (!store_vacuum_poll(r->vac, &done)) {
            log_warn("vacuum: %s", store_errstr(r->vac));
            r->vac_running = false;
            r->next_vacuum = now + 10;
        } else if (done) {
            r->vac_running = false;
            log_debug("vacuum of run_outbox took %.0f ms", (now - r->vac_started) * 1e3);
        }
        return;
    }
    if (r->cfg->vacuum_after <= 0 || !r->leader || r->vac_may == 0 || r->churn < r->cfg->vacuum_after ||
        now < r->next_vacuum)
        return;
    r->next_vacuum = now + 2;
    if (!store_connected(r->vac) && !store_connect(r->vac)) {
        log_warn("vacuum: %s", store_errstr(r->vac));
        r->next_vacuum = now + 10;
        return;
    }
    if (r->vac_may < 0) {
        bool may;
        if (!store_may_vacuum(r->vac, &may)) {
            log_warn("vacuum: %s", store_errstr(r->vac));
            return;
        }
        r->vac_may = may;
        if (!may) {
            log_info("vacuum: this role does not own run_outbox; autovacuum alone cleans it");
            store_disconnect(r->vac);
            return;
        }
    }
    if (!store_vacuum_begin(r->vac)) {
        log_warn("vacuum: %s", store_errstr(r->vac));
        return;
    }
    r->vac_running = true;
    r->vac_started = now;
    r->churn = 0;
}

/* Time-driven chores between cycles: backlog, retention, vacuum, /metrics, the stats
 * line. False when the database connection was lost (the rest waits for the next
 * step). */
bool relay_periodic(relay_state *r)
{
    if (!refresh_backlog(r))
        return false;
    prune_old(r);
    vacuum_chore(r);
    publish_state(r);
    if (r->cfg->stats_interval_ms > 0 && clock_mono_s() >= r->next_stats) {
        relay_log_stats(r, false);
        r->next_stats = clock_mono_s() + r->cfg->stats_interval_ms / 1e3;
    }
    return true;
}
