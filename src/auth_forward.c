/* Forward-auth cache. An entry is keyed by SHA-256 over the credentials (Cookie and
 * Authorization) and the run, holds the application's last answer with its expiry,
 * the credentials needed to ask again, the checks waiting for a call in flight, and a
 * count of the streams that depend on it. Entries that streams hold are never
 * evicted; the others are evicted least recently used past --auth-cache-size. */
#include "auth_forward.h"

#include "clock.h"
#include "http_client.h"
#include "log.h"
#include "metrics.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KEY_LEN 32
#define BUCKETS 16384
#define ALLOW_TTL_MS 30000
#define DENY_TTL_MS 5000
#define UNAVAILABLE_TTL_MS 1000 /* a reconnect storm during an outage makes one call a second */
#define MAX_TTL_MS (3600L * 1000)
#define MIN_TTL_MS 1000
#define MAX_BODY 65536
/* Open streams ask again this long before their answer expires: the gateway's sweep
 * (every 500 ms, AUTH_SWEEP_MS) comes by at least 250 ms before the expiry, so a
 * denial from a backend that answers within that ends them within the answer's TTL. */
#define RECHECK_EARLY_MS 750
#define SHARED_SLOTS 4096 /* answers and calls shared by the workers */
#define SHARED_PROBE 8
#define POLL_MS 10       /* how often a worker looks for another's answer */

typedef struct waiter {
    fwd_done_fn cb;
    void *arg;
    struct waiter *next;
} waiter;

struct fwd_entry {
    unsigned char key[KEY_LEN];
    int streams;           /* references held by streams and checks in progress */
    fwd_answer answer;     /* FWD_PENDING until the first answer */
    long long expires_ms;  /* the answer is fresh until then */
    bool in_flight;
    long long started_ms;
    waiter *waiters, **waiters_tail;
    char *cookie, *authorization, *uri, *run_enc;
    fwd_entry *hnext;
    fwd_entry *older, *newer; /* LRU list, newest at fw.newest */
    fwd_entry *poll_next;     /* in fw.polling: waiting for another worker's call */
};

static struct {
    struct event_base *base;
    fwd_settings s;
    fwd_entry *buckets[BUCKETS];
    fwd_entry *newest, *oldest;
    long count;
    fwd_entry *polling;
    struct event *poll;
} fw;

/* What the workers share (see "across workers" below); one process uses its own. */
enum { SLOT_EMPTY, SLOT_ASKING, SLOT_ANSWERED };
typedef struct shared_slot {
    unsigned char key[KEY_LEN];
    int state;
    int answer;        /* fwd_answer, when answered */
    long long until_ms; /* answered: fresh until; asking: the asker is given up then */
} shared_slot;
typedef struct shared {
    pthread_mutex_t lock;
    fwd_stats st;
    prom_hist latency;
    shared_slot slots[SHARED_SLOTS];
} shared;
static shared own = {.lock = PTHREAD_MUTEX_INITIALIZER};
static shared *sh = &own;
static bool sharing;

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void key_of(const fwd_request *r, unsigned char key[KEY_LEN])
{
    /* Presence is part of the key: no cookie and an empty cookie are not the same. */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        memset(key, 0, KEY_LEN);
        EVP_MD_CTX_free(ctx);
        return;
    }
    const char *parts[] = {r->cookie, r->authorization};
    for (int i = 0; i < 2; i++) {
        unsigned char tag[2] = {(unsigned char)('A' + i), parts[i] ? 1 : 0};
        EVP_DigestUpdate(ctx, tag, 2);
        if (parts[i]) {
            size_t len = strlen(parts[i]);
            EVP_DigestUpdate(ctx, &len, sizeof len);
            EVP_DigestUpdate(ctx, parts[i], len);
        }
    }
    EVP_DigestUpdate(ctx, r->run, r->run_len);
    EVP_DigestFinal_ex(ctx, key, &n);
    EVP_MD_CTX_free(ctx);
}

static unsigned bucket_of(const unsigned char key[KEY_LEN])
{
    return ((unsigned)key[0] << 8 | key[1]) % BUCKETS;
}

static void lru_unlink(fwd_entry *e)
{
    if (e->older)
        e->older->newer = e->newer;
    else
        fw.oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        fw.newest = e->older;
    e->older = e->newer = NULL;
}

static void lru_touch(fwd_entry *e)
{
    if (fw.newest == e)
        return;
    if (e->older || e->newer || fw.oldest == e)
        lru_unlink(e);
    e->older = fw.newest;
    if (fw.newest)
        fw.newest->newer = e;
    fw.newest = e;
    if (!fw.oldest)
        fw.oldest = e;
}

static void entry_free(fwd_entry *e)
{
    fwd_entry **pp = &fw.buckets[bucket_of(e->key)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    fw.count--;
    free(e->cookie);
    free(e->authorization);
    free(e->uri);
    free(e->run_enc);
    free(e);
}

/* Evicts unused entries, oldest first, until the cache is within its bound. */
static void evict(void)
{
    for (fwd_entry *e = fw.oldest, *next; e && fw.count > fw.s.cache_size; e = next) {
        next = e->newer;
        if (e->streams == 0 && !e->in_flight && !e->waiters)
            entry_free(e);
    }
}

static fwd_entry *entry_find(const unsigned char key[KEY_LEN])
{
    for (fwd_entry *e = fw.buckets[bucket_of(key)]; e; e = e->hnext)
        if (!memcmp(e->key, key, KEY_LEN))
            return e;
    return NULL;
}

/* The run id as it may travel in a header: unreserved bytes as they are, the rest %XX. */
static char *percent_encode(const char *s, size_t n)
{
    char *out = malloc(n * 3 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr("-._~", c))
            *o++ = (char)c;
        else
            o += sprintf(o, "%%%02X", c);
    }
    *o = '\0';
    return out;
}

static long ttl_ms(const http_response *r, long dflt)
{
    if (r->no_store)
        return MIN_TTL_MS;
    if (r->max_age < 0)
        return dflt;
    long ms = r->max_age > MAX_TTL_MS / 1000 ? MAX_TTL_MS : r->max_age * 1000;
    return ms < MIN_TTL_MS ? MIN_TTL_MS : ms;
}

/* Calls back every waiter of e with its answer. A waiter's callback may start a new
 * check (even of this key), so the list is detached first. */
static void answer_waiters(fwd_entry *e)
{
    waiter *w = e->waiters;
    e->waiters = NULL;
    e->waiters_tail = &e->waiters;
    e->streams++; /* keep e alive while callbacks run */
    while (w) {
        waiter *next = w->next;
        if (e->answer == FWD_ALLOW)
            e->streams++; /* the waiter's reference */
        w->cb(w->arg, e->answer, e->answer == FWD_ALLOW ? e : NULL);
        free(w);
        w = next;
    }
    e->streams--; /* no eviction here: callers may be walking the table */
}

/* ---- across workers ------------------------------------------------------------------ */

/* With --workers the gateway is several processes, each with its own cache. They
 * share a small table (shared memory, a robust process-shared mutex) of the answers
 * of the last calls and of the calls on their way, so that one call serves every
 * worker: a worker that finds a call of another on its way waits for its answer
 * (polling every POLL_MS) instead of calling too. A worker that dies mid-call leaves
 * its slot to expire after the call's timeout, and another takes over. */
static shared_slot *slot_for(const unsigned char key[KEY_LEN], bool claim)
{
    unsigned h = ((unsigned)key[2] << 24 | (unsigned)key[3] << 16 | (unsigned)key[4] << 8 | key[5]) % SHARED_SLOTS;
    shared_slot *victim = NULL;
    for (int i = 0; i < SHARED_PROBE; i++) {
        shared_slot *s = &sh->slots[(h + (unsigned)i) % SHARED_SLOTS];
        if (s->state != SLOT_EMPTY && !memcmp(s->key, key, KEY_LEN))
            return s;
        if (!victim || s->state == SLOT_EMPTY || (victim->state != SLOT_EMPTY && s->until_ms < victim->until_ms))
            victim = s;
    }
    if (!claim)
        return NULL;
    memcpy(victim->key, key, KEY_LEN);
    victim->state = SLOT_EMPTY;
    return victim;
}

static void sh_lock(void)
{
    if (pthread_mutex_lock(&sh->lock) == EOWNERDEAD)
        pthread_mutex_consistent(&sh->lock); /* a worker died holding it: the slots are still whole */
}

static void sh_unlock(void)
{
    pthread_mutex_unlock(&sh->lock);
}

bool fwd_share_init(void)
{
    shared *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return false;
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    bool ok = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0 &&
              pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0 && pthread_mutex_init(&m->lock, &a) == 0;
    pthread_mutexattr_destroy(&a);
    if (!ok) {
        munmap(m, sizeof *m);
        return false;
    }
    sh = m;
    sharing = true;
    return true;
}

/* ---- answers ------------------------------------------------------------------------- */

/* e has its answer (ours or another worker's): tell who waits. */
static void settle(fwd_entry *e, fwd_answer a, long long expires_ms)
{
    e->in_flight = false;
    e->answer = a;
    e->expires_ms = expires_ms;
    bool ends_streams = e->streams > 0 && a != FWD_ALLOW;
    answer_waiters(e);
    evict(); /* e may be gone from here on */
    if (ends_streams && fw.s.changed)
        fw.s.changed();
}

static void on_answer(const http_response *r, void *arg)
{
    fwd_entry *e = arg;
    long long now = fw.s.clock_ms(), expires;
    fwd_answer a;
    if (r->status >= 200 && r->status < 300) {
        a = FWD_ALLOW;
        expires = now + ttl_ms(r, ALLOW_TTL_MS);
    } else if (r->status == 401 || r->status == 403 || (r->status >= 300 && r->status < 500)) {
        /* A redirect (to a login page) or another client error denies too. */
        a = r->status == 401 ? FWD_DENY_401 : FWD_DENY_403;
        expires = now + ttl_ms(r, DENY_TTL_MS);
    } else {
        log_warn("forward-auth: %s %s: %s%s", fw.s.url, r->status ? "answered" : "no answer",
                 r->status ? "a server error" : r->error,
                 r->status ? "" : " (streams are refused with a retry hint meanwhile)");
        a = FWD_UNAVAILABLE;
        expires = now + UNAVAILABLE_TTL_MS;
    }
    sh_lock();
    double secs = (double)(now - e->started_ms) / 1000.0;
    prom_hist_record(&sh->latency, secs);
    sh->st.latency_sum_s += secs;
    if (a == FWD_ALLOW)
        sh->st.allowed++;
    else if (a == FWD_UNAVAILABLE)
        sh->st.failed++;
    else
        sh->st.denied++;
    if (sharing) {
        shared_slot *slot = slot_for(e->key, true);
        slot->state = SLOT_ANSWERED;
        slot->answer = a;
        slot->until_ms = expires;
    }
    sh_unlock();
    settle(e, a, expires);
}

static void poll_shared(evutil_socket_t fd, short what, void *arg);

/* Gets e an answer: another worker's, when one is fresh past `after` or on its way,
 * else ours from a call. An open stream's early recheck passes its own answer's
 * expiry: the shared slot holds that same answer until then (this worker's, or the
 * one it took), and taking it would leave the recheck to the first sweep past the
 * TTL. OBTAIN_ANSWERED: e has it now (no callbacks were run). */
enum obtain { OBTAIN_FAILED, OBTAIN_PENDING, OBTAIN_ANSWERED };
static enum obtain obtain(fwd_entry *e, long long now, long long after)
{
    if (sharing) {
        sh_lock();
        shared_slot *slot = slot_for(e->key, true);
        if (slot->state == SLOT_ANSWERED && after < slot->until_ms) {
            e->answer = slot->answer;
            e->expires_ms = slot->until_ms;
            sh->st.cache_hits++;
            sh_unlock();
            return OBTAIN_ANSWERED;
        }
        if (slot->state == SLOT_ASKING && now < slot->until_ms) {
            sh_unlock();
            e->in_flight = true;
            e->poll_next = fw.polling;
            fw.polling = e;
            if (!evtimer_pending(fw.poll, NULL)) {
                struct timeval tv = {0, POLL_MS * 1000};
                evtimer_add(fw.poll, &tv);
            }
            return OBTAIN_PENDING;
        }
        slot->state = SLOT_ASKING;
        slot->until_ms = now + fw.s.timeout_ms + 1000;
        sh_unlock();
    }
    const char *headers[] = {"Cookie", e->cookie, "Authorization", e->authorization,
                             "X-Outboxd-Run-Id", e->run_enc, "X-Original-URI", e->uri,
                             "X-Original-Method", "GET", NULL};
    char err[128];
    if (!http_get(fw.base, fw.s.url, headers, fw.s.timeout_ms, MAX_BODY, on_answer, e, err, sizeof err)) {
        log_warn("forward-auth: cannot call %s: %s", fw.s.url, err);
        return OBTAIN_FAILED;
    }
    e->in_flight = true;
    e->started_ms = now;
    sh_lock();
    sh->st.calls++;
    sh_unlock();
    return OBTAIN_PENDING;
}

/* Entries waiting for another worker's call: take its answer when it is there. */
static void poll_shared(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    fwd_entry *list = fw.polling;
    fw.polling = NULL;
    long long now = fw.s.clock_ms();
    while (list) {
        fwd_entry *e = list;
        list = e->poll_next;
        e->poll_next = NULL;
        sh_lock();
        shared_slot *slot = slot_for(e->key, false);
        bool answered = slot && slot->state == SLOT_ANSWERED;
        bool waiting = slot && slot->state == SLOT_ASKING && now < slot->until_ms;
        fwd_answer a = answered ? (fwd_answer)slot->answer : FWD_UNAVAILABLE;
        long long until = answered ? slot->until_ms : 0;
        sh_unlock();
        if (answered) {
            settle(e, a, until);
        } else if (waiting) {
            e->poll_next = fw.polling;
            fw.polling = e;
        } else {
            /* The asker died or its slot was taken: ask ourselves. */
            e->in_flight = false;
            if (obtain(e, now, now) == OBTAIN_FAILED)
                settle(e, FWD_UNAVAILABLE, now + UNAVAILABLE_TTL_MS);
        }
    }
    if (fw.polling && !evtimer_pending(fw.poll, NULL)) {
        struct timeval tv = {0, POLL_MS * 1000};
        evtimer_add(fw.poll, &tv);
    }
}

static void add_waiter(fwd_entry *e, fwd_done_fn cb, void *arg, bool *ok)
{
    waiter *w = malloc(sizeof *w);
    *ok = w != NULL;
    if (!w)
        return;
    w->cb = cb;
    w->arg = arg;
    w->next = NULL;
    *e->waiters_tail = w;
    e->waiters_tail = &w->next;
}

fwd_answer fwd_check(const fwd_request *r, fwd_entry **out, fwd_done_fn cb, void *arg)
{
    long long now_ms = fw.s.clock_ms();
    unsigned char key[KEY_LEN];
    key_of(r, key);
    *out = NULL;
    fwd_entry *e = entry_find(key);
    if (e) {
        lru_touch(e);
        if (!e->in_flight && e->answer != FWD_PENDING && now_ms < e->expires_ms) {
            sh_lock();
            sh->st.cache_hits++;
            sh_unlock();
            if (e->answer == FWD_ALLOW) {
                e->streams++;
                *out = e;
            }
            return e->answer;
        }
    } else {
        e = calloc(1, sizeof *e);
        if (!e)
            return FWD_UNAVAILABLE;
        memcpy(e->key, key, KEY_LEN);
        e->answer = FWD_PENDING;
        e->waiters_tail = &e->waiters;
        e->cookie = dup_or_null(r->cookie);
        e->authorization = dup_or_null(r->authorization);
        e->uri = dup_or_null(r->uri);
        e->run_enc = percent_encode(r->run, r->run_len);
        unsigned b = bucket_of(key);
        e->hnext = fw.buckets[b];
        fw.buckets[b] = e;
        fw.count++;
        lru_touch(e);
        if ((r->cookie && !e->cookie) || (r->authorization && !e->authorization) || (r->uri && !e->uri) ||
            !e->run_enc) {
            entry_free(e);
            return FWD_UNAVAILABLE;
        }
    }
    if (!e->in_flight) {
        enum obtain o = obtain(e, now_ms, now_ms);
        if (o == OBTAIN_FAILED) {
            evict();
            return FWD_UNAVAILABLE;
        }
        if (o == OBTAIN_ANSWERED) {
            if (e->answer == FWD_ALLOW) {
                e->streams++;
                *out = e;
            }
            return e->answer;
        }
    }
    bool ok;
    add_waiter(e, cb, arg, &ok);
    if (!ok)
        return FWD_UNAVAILABLE;
    sh_lock();
    sh->st.waits++;
    sh_unlock();
    return FWD_PENDING;
}

void fwd_unref(fwd_entry *e)
{
    if (e && --e->streams == 0 && fw.count > fw.s.cache_size)
        evict();
}

fwd_answer fwd_verdict(fwd_entry *e)
{
    long long now_ms = fw.s.clock_ms();
    if (e->answer != FWD_ALLOW)
        return e->answer;
    long long early = e->expires_ms - RECHECK_EARLY_MS;
    if (now_ms >= early && !e->in_flight && obtain(e, now_ms, e->expires_ms) == OBTAIN_FAILED) {
        e->answer = FWD_UNAVAILABLE;
        e->expires_ms = now_ms + UNAVAILABLE_TTL_MS;
    }
    return e->answer == FWD_PENDING ? FWD_ALLOW : e->answer;
}

void fwd_get_stats(fwd_stats *out)
{
    sh_lock();
    *out = sh->st;
    sh_unlock();
}

const struct prom_hist *fwd_latency(void)
{
    return &sh->latency;
}

bool fwd_start(struct event_base *base, const fwd_settings *s)
{
    memset(&fw, 0, sizeof fw);
    fw.base = base;
    fw.s = *s;
    if (!fw.s.clock_ms)
        fw.s.clock_ms = clock_mono_ms;
    fw.poll = base ? evtimer_new(base, poll_shared, NULL) : NULL;
    return !base || fw.poll;
}

void fwd_cancel_waiters(void)
{
    for (int b = 0; b < BUCKETS; b++)
        for (fwd_entry *e = fw.buckets[b]; e; e = e->hnext) {
            fwd_answer keep = e->answer;
            e->answer = FWD_UNAVAILABLE;
            answer_waiters(e);
            e->answer = keep;
        }
}

void fwd_stop(void)
{
    fwd_cancel_waiters();
    while (fw.oldest)
        entry_free(fw.oldest);
    if (fw.poll)
        event_free(fw.poll);
    fw.poll = NULL;
}
