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

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 32
#define BUCKETS 16384
#define ALLOW_TTL_MS 30000
#define DENY_TTL_MS 5000
#define UNAVAILABLE_TTL_MS 1000 /* a reconnect storm during an outage makes one call a second */
#define MAX_TTL_MS (3600L * 1000)
#define MIN_TTL_MS 1000
#define MAX_BODY 65536
/* Open streams ask again this long before their answer expires (the sweep's period),
 * so that a denial ends them within the answer's TTL. */
#define RECHECK_EARLY_MS 500

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
};

static struct {
    struct event_base *base;
    fwd_settings s;
    fwd_entry *buckets[BUCKETS];
    fwd_entry *newest, *oldest;
    long count;
    fwd_stats st;
    prom_hist latency;
} fw;

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

static void on_answer(const http_response *r, void *arg)
{
    fwd_entry *e = arg;
    long long now = fw.s.clock_ms();
    e->in_flight = false;
    double s = (double)(now - e->started_ms) / 1000.0;
    prom_hist_record(&fw.latency, s);
    fw.st.latency_sum_s += s;
    if (r->status >= 200 && r->status < 300) {
        e->answer = FWD_ALLOW;
        e->expires_ms = now + ttl_ms(r, ALLOW_TTL_MS);
        fw.st.allowed++;
    } else if (r->status == 401 || r->status == 403 || (r->status >= 300 && r->status < 500)) {
        /* A redirect (to a login page) or another client error denies too. */
        e->answer = r->status == 403 ? FWD_DENY_403 : r->status == 401 ? FWD_DENY_401 : FWD_DENY_403;
        e->expires_ms = now + ttl_ms(r, DENY_TTL_MS);
        fw.st.denied++;
    } else {
        log_warn("forward-auth: %s %s: %s%s", fw.s.url, r->status ? "answered" : "no answer",
                 r->status ? "a server error" : r->error,
                 r->status ? "" : " (streams are refused with a retry hint meanwhile)");
        e->answer = FWD_UNAVAILABLE;
        e->expires_ms = now + UNAVAILABLE_TTL_MS;
        fw.st.failed++;
    }
    bool ends_streams = e->streams > 0 && e->answer != FWD_ALLOW;
    answer_waiters(e);
    evict(); /* e may be gone from here on */
    if (ends_streams && fw.s.changed)
        fw.s.changed();
}

static bool ask(fwd_entry *e, long long now)
{
    const char *headers[] = {"Cookie", e->cookie, "Authorization", e->authorization,
                             "X-Outboxd-Run-Id", e->run_enc, "X-Original-URI", e->uri,
                             "X-Original-Method", "GET", NULL};
    char err[128];
    if (!http_get(fw.base, fw.s.url, headers, fw.s.timeout_ms, MAX_BODY, on_answer, e, err, sizeof err)) {
        log_warn("forward-auth: cannot call %s: %s", fw.s.url, err);
        return false;
    }
    e->in_flight = true;
    e->started_ms = now;
    fw.st.calls++;
    return true;
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
            fw.st.cache_hits++;
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
    bool ok;
    if (!e->in_flight && !ask(e, now_ms)) {
        evict();
        return FWD_UNAVAILABLE;
    }
    add_waiter(e, cb, arg, &ok);
    if (!ok)
        return FWD_UNAVAILABLE;
    fw.st.waits++;
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
    if (now_ms >= early && !e->in_flight && !ask(e, now_ms)) {
        e->answer = FWD_UNAVAILABLE;
        e->expires_ms = now_ms + UNAVAILABLE_TTL_MS;
    }
    return e->answer == FWD_PENDING ? FWD_ALLOW : e->answer;
}

void fwd_get_stats(fwd_stats *out)
{
    *out = fw.st;
}

const struct prom_hist *fwd_latency(void)
{
    return &fw.latency;
}

bool fwd_start(struct event_base *base, const fwd_settings *s)
{
    memset(&fw, 0, sizeof fw);
    fw.base = base;
    fw.s = *s;
    if (!fw.s.clock_ms)
        fw.s.clock_ms = clock_mono_ms;
    return true;
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
}
