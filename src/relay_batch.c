/* One batch of the relay: which rows of a cycle go out, publishing them (retries,
 * per-run order, runs that Redis refuses held back alone), and what to record. No
 * database calls but relay_record_failures: the loop (relay.c) owns the statements. */
#include "relay.h"

#include "clock.h"
#include "log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RETRY_BASE_MS 50
#define RETRY_MAX_MS 1000
#define HOLD_MAX_S 60.0
#define PARK_S 0.25

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
    relay_held_clear(rc);
    free(rc->last_res);
    free(rc->why_of);
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
              grow(&rc->why_of, n, sizeof *rc->why_of) &&
              grow(&rc->ids, n, sizeof *rc->ids) && grow(&rc->done_ids, n, sizeof *rc->done_ids) &&
              grow(&rc->order, n, sizeof *rc->order);
    if (ok)
        rc->cap = n;
    return ok;
}

/* qsort context: the batch (qsort_r keeps this re-entrant). Orders by run, then by
 * position in the batch, which is id order. */
static int cmp_by_run(const void *a, const void *b, void *arg)
{
    const batch *bt = arg;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    const event *x = &bt->ev[i], *y = &bt->ev[j];
    size_t n = x->run_id_len < y->run_id_len ? x->run_id_len : y->run_id_len;
    int c = memcmp(x->run_id, y->run_id, n);
    if (c == 0 && x->run_id_len != y->run_id_len)
        c = x->run_id_len < y->run_id_len ? -1 : 1;
    if (c == 0)
        c = i < j ? -1 : i > j;
    return c;
}

/* Lines up the events not done yet for the sink: grouped by run (one script call per
 * run), in id order within it; chained[k] = the entry before belongs to the same run.
 * Returns how many. */
static size_t line_up(relay_ctx *rc, const batch *b)
{
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        if (!rc->done[i] && rc->last_res[i] != PUB_NOROUTE)
            rc->send_idx[n++] = i;
    qsort_r(rc->send_idx, n, sizeof *rc->send_idx, cmp_by_run, (void *)b);
    for (size_t k = 0; k < n; k++) {
        rc->send[k] = &b->ev[rc->send_idx[k]];
        rc->chained[k] = k > 0 && event_run_is(rc->send[k], rc->send[k - 1]->run_id, rc->send[k - 1]->run_id_len);
    }
    return n;
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

void relay_held_clear(relay_ctx *rc)
{
    while (rc->nheld)
        held_remove(rc, 0);
}

/* The held entry of e's run, added if new; -1 when the list is full or out of memory
 * (the caller reads the rows again instead). */
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

/* Parks e's run for a moment: no reachable primary serves its slot (a Redis Cluster
 * shard down or failing over). Not a refusal: no strike and no log line per run, but
 * held like one (caught up through its own rows afterwards), so that its backlog does
 * not crowd out the other runs. False when the list is full. */
static bool held_park(relay_ctx *rc, const event *e)
{
    int i = held_slot(rc, e);
    if (i < 0)
        return false;
    held_run *h = &rc->held[i];
    h->until = clock_mono_s() + PARK_S;
    h->from_seq = e->seq;
    h->from_id = e->id;
    h->caught_up = false;
    return true;
}

/* Holds back e's run after Redis refused its event: 1 s, doubling to HOLD_MAX_S.
 * False when the list is full (the caller reads the rows again instead). */
static bool held_add(relay_ctx *rc, const event *e, const char *why)
{
    int i = held_slot(rc, e);
    if (i < 0)
        return false;
    held_run *h = &rc->held[i];
    double wait = 1.0;
    for (int k = 0; k < h->strikes && wait < HOLD_MAX_S; k++)
        wait *= 2;
    if (wait > HOLD_MAX_S)
        wait = HOLD_MAX_S;
    h->strikes++;
    h->until = clock_mono_s() + wait;
    h->from_seq = e->seq;
    h->from_id = e->id;
    h->caught_up = false;
    log_warn("run %.*s held back for %.0f s (event id %lld failed: %s); other runs go on", (int)h->len,
             h->run_id, wait, e->id, why);
    return true;
}

/* The whys[] entry holding why (added when new; 0, the batch's last error, when
 * they are all taken). */
static unsigned char why_slot(relay_ctx *rc, const char *why)
{
    for (int w = 1; w < rc->nwhys; w++)
        if (!strcmp(rc->whys[w], why))
            return (unsigned char)w;
    if (rc->nwhys == RELAY_WHYS)
        return 0;
    snprintf(rc->whys[rc->nwhys], sizeof rc->whys[0], "%s", why);
    return (unsigned char)rc->nwhys++;
}

int relay_held_now(relay_ctx *rc, const char **ids, size_t *lens)
{
    double now = clock_mono_s();
    int n = 0;
    for (int i = 0; i < rc->nheld; i++)
        if (rc->held[i].until > now) {
            ids[n] = rc->held[i].run_id;
            lens[n++] = rc->held[i].len;
        }
    return n;
}

bool relay_take_rows(relay_ctx *rc, const batch *rows, long cu_limit, batch *out)
{
    batch_clear(out);
    if (!batch_reserve(out, rows->n))
        return false;
    /* A held run asked for in this cycle got its rows by seq, at most cu_limit: fewer
     * means they were all of them, so it is free once they are out. */
    long counts[RELAY_HELD_MAX] = {0};
    for (size_t i = 0; rc->nheld && i < rows->n; i++) {
        int h;
        if ((rows->ev[i].flags & STORE_ROW_CATCHUP) && !(rows->ev[i].flags & STORE_ROW_DONE) &&
            (h = held_find(rc, &rows->ev[i])) >= 0)
            counts[h]++;
    }
    for (int h = 0; h < rc->nheld; h++)
        if (rc->held[h].asked)
            rc->held[h].caught_up = counts[h] < cu_limit;
    size_t n = 0;
    for (size_t i = 0; i < rows->n; i++) {
        const event *e = &rows->ev[i];
        if (e->flags & STORE_ROW_DONE)
            continue;
        int h = rc->nheld ? held_find(rc, e) : -1;
        /* Rows of a held run go out only through its own catch-up, which reads them
         * in seq order from the event that failed. */
        if (h >= 0 && !(rc->held[h].asked && (e->flags & STORE_ROW_CATCHUP)))
            continue;
        out->ev[n++] = *e;
    }
    for (int h = 0; h < rc->nheld; h++)
        rc->held[h].asked = false;
    out->n = n;
    return true;
}

batch_outcome relay_publish_batch(relay_ctx *rc, const batch *b)
{
    batch_outcome o = {0};
    if (!ctx_reserve(rc, b->n)) {
        log_error("out of memory for a batch of %zu events", b->n);
        o.pending = b->n;
        o.resume_id = b->n ? b->ev[0].id : 0;
        rc->nwaiting = RELAY_WAITING_MAX;
        return o;
    }
    rc->nwhys = 1;
    for (size_t i = 0; i < b->n; i++) {
        rc->done[i] = false;
        rc->why_of[i] = 0;
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
        size_t n = line_up(rc, b);
        if (!sink_publish(rc->out, rc->send, rc->chained, n, rc->res))
            o.redis_lost = true;
        double acked = clock_real_s();
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
            case PUB_REFUSED:
                o.redis_refused = true;
                /* fall through */
            case PUB_FAILED:
            case PUB_UNSENT:
                rc->stats.failures++;
                snprintf(last_error, sizeof last_error, "%s", sink_errstr(rc->out));
                if (rc->res[k] == PUB_FAILED)
                    rc->why_of[rc->send_idx[k]] = why_slot(rc, sink_run_errstr(rc->out, rc->send[k]));
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
    /* A run catching up moves on past what went out. */
    for (size_t i = 0; rc->nheld && i < b->n; i++) {
        int h;
        if (rc->done[i] && (h = held_find(rc, &b->ev[i])) >= 0 && b->ev[i].seq >= rc->held[h].from_seq) {
            rc->held[h].from_seq = b->ev[i].seq + 1;
            rc->held[h].from_id = b->ev[i].id + 1;
        }
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
            const event *e = &b->ev[rc->order[j]];
            rc->ids[j] = e->id;
            /* An error reply about this event: hold its run back, let the others go.
             * A refusal of everyone (PUB_REFUSED) holds back no run: an outage. */
            rc->failed_why[j] = rc->last_res[rc->order[j]] == PUB_FAILED ? rc->why_of[rc->order[j]] : 0;
            const char *why = rc->failed_why[j] ? rc->whys[rc->failed_why[j]] : last_error;
            if (rc->last_res[rc->order[j]] == PUB_FAILED && held_add(rc, e, why))
                o.event_failures++;
            else if (rc->last_res[rc->order[j]] == PUB_NOROUTE)
                (void)held_park(rc, e);
        }
        /* Whatever waits and is not held (an outage, Redis refusing everyone, a full
         * list of held runs) is read again from its first id. */
        for (size_t i = 0; i < b->n; i++)
            if (!rc->done[i] && held_find(rc, &b->ev[i]) < 0 && (o.resume_id == 0 || b->ev[i].id < o.resume_id))
                o.resume_id = b->ev[i].id;
        /* Runs parked because no primary takes their slot now (a shard down, a slot
         * migrating) wait batch after batch: said once (until something else fails,
         * or no run is held any more), then at debug level. */
        bool parked_only = true;
        for (size_t i = 0; i < b->n && parked_only; i++)
            parked_only = rc->done[i] || rc->last_res[i] == PUB_NOROUTE;
        log_at(parked_only && rc->parked_said ? LOG_DEBUG : LOG_WARN,
               "%zu of %zu events not published after %d attempts (%zu runs wait): %s", o.pending, b->n, attempt - 1,
               nf, last_error[0] ? last_error : "unknown");
        rc->parked_said = parked_only;
        /* Written by relay_record_failures, once the connection is free (a cycle
         * statement may be in flight while we publish). */
        rc->nfailed = nf;
        rc->failed_attempts = attempt - 1;
        snprintf(rc->failed_error, sizeof rc->failed_error, "%s", last_error);
    } else {
        rc->nwaiting = 0;
        rc->nfailed = 0;
        /* Parked runs are held out of the batches meanwhile: the waiting is over
         * only once no run is held. */
        if (rc->nheld == 0)
            rc->parked_said = false;
    }
    /* A run that caught up and whose rows all went out is free again. */
    for (int h = 0; h < rc->nheld; h++) {
        if (!rc->held[h].caught_up)
            continue;
        bool waits = false;
        for (size_t i = 0; i < b->n && !waits; i++)
            waits = !rc->done[i] && event_run_is(&b->ev[i], rc->held[h].run_id, rc->held[h].len);
        if (!waits) {
            log_info("run %.*s caught up: it flows with the others again", (int)rc->held[h].len, rc->held[h].run_id);
            held_remove(rc, h--);
        }
    }
    return o;
}

void relay_record_failures(relay_ctx *rc)
{
    /* One statement per reason: each run's failure is recorded with its own. */
    long long ids[RELAY_WAITING_MAX];
    for (int w = 0; rc->nfailed && w < rc->nwhys; w++) {
        size_t n = 0;
        for (size_t j = 0; j < rc->nfailed; j++)
            if (rc->failed_why[j] == w)
                ids[n++] = rc->ids[j];
        if (n && !store_record_failure(rc->db, ids, n, rc->failed_attempts, w ? rc->whys[w] : rc->failed_error))
            log_warn("%s", store_errstr(rc->db));
    }
    rc->nfailed = 0;
}
