/* The gateway's authorization policy: modes, where a token is found, what a token
 * must say, public runs, revocations, and the key sources (a JWKS file reloaded on
 * SIGHUP, a JWKS URL refreshed on its max-age and on unknown kids). Fails closed:
 * no keys, an unreadable token, a backend that cannot answer, all deny. */
#include "auth.h"

#include "auth_forward.h"
#include "http_client.h"
#include "jwks.h"
#include "jwt.h"
#include "log.h"
#include "metrics.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <time.h>

#define JWKS_DEFAULT_REFRESH_S 300
#define JWKS_MIN_REFRESH_S 1
#define JWKS_MAX_REFRESH_S 86400
#define JWKS_RETRY_S 10
#define UNKNOWN_KID_INTERVAL_S 30
#define MAX_PUBLIC 64
#define MAX_CREDENTIALS 16384 /* bytes of Cookie and Authorization forwarded to --auth-url */

/* Why a stream was refused or ended, for the metrics. */
enum reason {
    R_NO_TOKEN = JWT_NSTATUS, /* the JWT statuses come first */
    R_REVOKED,
    R_NOT_COVERED,
    R_FORWARD_401,
    R_FORWARD_403,
    R_FORWARD_UNAVAILABLE,
    R_NREASONS
};

static const char *reason_name(int r)
{
    static const char *const names[] = {"no_token", "revoked", "run_not_covered", "forward_401", "forward_403",
                                        "forward_unavailable"};
    return r < JWT_NSTATUS ? jwt_status_name((jwt_status)r) : names[r - JWT_NSTATUS];
}

typedef struct revoked {
    unsigned char hash[AUTH_HASH_LEN];
    long long until;
} revoked;

static long long wall_clock(void)
{
    return (long long)time(NULL);
}
long long (*auth_clock)(void) = wall_clock;

/* The counters behind the metrics; with --workers, in memory all workers share, so
 * that whichever worker answers /metrics shows the whole gateway's. */
typedef struct auth_counters {
    unsigned long long denials[R_NREASONS];
    unsigned long long ended_expired, ended_revoked, ended_unavailable;
    unsigned long long key_reloads, key_reload_failures;
} auth_counters;
static auth_counters own_counters;
static auth_counters *ac = &own_counters;
#define COUNT(field) __atomic_fetch_add(&ac->field, 1, __ATOMIC_RELAXED)
#define COUNTED(field) __atomic_load_n(&ac->field, __ATOMIC_RELAXED)

static struct {
    const config *cfg;
    struct event_base *base;
    keyring *file_ring, *url_ring;
    jwt_policy policy;
    const char *public_runs[MAX_PUBLIC];
    size_t public_len[MAX_PUBLIC];
    int npublic;
    char *public_copy;
    revoked *revoked;
    int nrevoked;
    /* the JWKS URL */
    struct event *url_timer;
    bool url_in_flight;
    struct kid_wait *kid_waiters; /* checks held until the URL answers */
    long long url_last_kid_fetch;
    const char *last_reason;
    void (*changed)(void);
} au;

static void sha256_tagged(char tag, const char *s, size_t n, unsigned char out[AUTH_HASH_LEN])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 || EVP_DigestUpdate(ctx, &tag, 1) != 1 ||
        EVP_DigestUpdate(ctx, s, n) != 1 || EVP_DigestFinal_ex(ctx, out, &len) != 1)
        memset(out, 0, AUTH_HASH_LEN);
    EVP_MD_CTX_free(ctx);
}

/* ---- public runs ------------------------------------------------------------------ */

bool auth_run_is_public(const char *run, size_t n)
{
    for (int i = 0; i < au.npublic; i++)
        if (au.public_len[i] <= n && memcmp(run, au.public_runs[i], au.public_len[i]) == 0)
            return true;
    return false;
}

static bool parse_public(const char *list)
{
    if (!list)
        return true;
    if (!(au.public_copy = strdup(list)))
        return false;
    for (char *save = NULL, *p = strtok_r(au.public_copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        size_t n = strlen(p);
        if (n && p[n - 1] == '*')
            n--; /* a trailing star says what the prefix says */
        if (au.npublic == MAX_PUBLIC || n == 0)
            return false;
        au.public_runs[au.npublic] = p;
        au.public_len[au.npublic++] = n;
    }
    return true;
}

/* ---- revocations ------------------------------------------------------------------ */

static int cmp_revoked(const void *a, const void *b)
{
    return memcmp(((const revoked *)a)->hash, ((const revoked *)b)->hash, AUTH_HASH_LEN);
}

void auth_set_revocations(const auth_revocation *r, int n)
{
    revoked *list = calloc((size_t)(n ? n : 1), sizeof *list);
    if (!list) {
        log_error("auth: out of memory reading %d revocations; keeping the previous list", n);
        return;
    }
    for (int i = 0; i < n; i++) {
        sha256_tagged(r[i].is_sub ? 's' : 'j', r[i].value, r[i].len, list[i].hash);
        list[i].until = r[i].until;
    }
    qsort(list, (size_t)n, sizeof *list, cmp_revoked);
    free(au.revoked);
    au.revoked = list;
    au.nrevoked = n;
    log_info("auth: %d revocation(s) in force", n);
}

static bool is_revoked(const unsigned char hash[AUTH_HASH_LEN], long long now)
{
    revoked key;
    memcpy(key.hash, hash, AUTH_HASH_LEN);
    const revoked *hit = au.nrevoked ? bsearch(&key, au.revoked, (size_t)au.nrevoked, sizeof key, cmp_revoked) : NULL;
    /* Several revocations of one value may exist: any still in force counts. */
    if (!hit)
        return false;
    while (hit > au.revoked && !memcmp(hit[-1].hash, hash, AUTH_HASH_LEN))
        hit--;
    for (; hit < au.revoked + au.nrevoked && !memcmp(hit->hash, hash, AUTH_HASH_LEN); hit++)
        if (hit->until > now)
            return true;
    return false;
}

static bool grant_revoked(const auth_grant *g, long long now)
{
    return (g->has_jti && is_revoked(g->jti, now)) || (g->has_sub && is_revoked(g->sub, now));
}

/* ---- keys ------------------------------------------------------------------------- */

static void schedule_url(long seconds)
{
    struct timeval tv = {seconds, 0};
    evtimer_add(au.url_timer, &tv);
}

/* A check held until the JWKS URL answers: its token names a kid we do not know yet,
 * perhaps because the provider has just rotated its keys. Refusing it at once would
 * stop an EventSource for good over our own stale keys. */
typedef struct kid_wait {
    auth_request r;
    auth_done_fn cb;
    void *arg;
    struct kid_wait *next;
} kid_wait;

static auth_result check_jwt(const auth_request *r, auth_grant *g, auth_done_fn cb, void *arg);

/* The URL answered (or failed): decide the held checks with the keys there are now. */
static void release_kid_waiters(bool cancel)
{
    kid_wait *w = au.kid_waiters;
    au.kid_waiters = NULL;
    while (w) {
        kid_wait *next = w->next;
        auth_grant g = {0};
        auth_result res = cancel ? AUTH_UNAVAILABLE : check_jwt(&w->r, &g, NULL, NULL);
        w->cb(w->arg, res, &g);
        free(w);
        w = next;
    }
}

static void on_jwks(const http_response *r, void *arg)
{
    (void)arg;
    au.url_in_flight = false;
    char err[256];
    keyring *kr = NULL;
    if (r->status == 200)
        kr = jwks_parse(r->body, r->len, err, sizeof err);
    else if (r->status)
        snprintf(err, sizeof err, "HTTP status %d", r->status);
    else
        snprintf(err, sizeof err, "%s", r->error);
    if (!kr) {
        COUNT(key_reload_failures);
        log_warn("auth: JWKS from %s: %s; keeping the %s", au.cfg->auth_jwks_url, err,
                 au.url_ring ? "last good keys" : "gateway without keys from it (tokens are refused)");
        schedule_url(JWKS_RETRY_S);
        release_kid_waiters(false);
        return;
    }
    long every = r->max_age < 0 ? JWKS_DEFAULT_REFRESH_S : r->max_age;
    every = every < JWKS_MIN_REFRESH_S ? JWKS_MIN_REFRESH_S : every > JWKS_MAX_REFRESH_S ? JWKS_MAX_REFRESH_S : every;
    log_info("auth: %zu key(s) from %s; next refresh in %ld s", kr->n, au.cfg->auth_jwks_url, every);
    jwks_free(au.url_ring);
    au.url_ring = kr;
    COUNT(key_reloads);
    schedule_url(every);
    release_kid_waiters(false);
}

static void fetch_url(void)
{
    if (!au.cfg->auth_jwks_url || au.url_in_flight)
        return;
    char err[128];
    evtimer_del(au.url_timer);
    if (!http_get(au.base, au.cfg->auth_jwks_url, NULL, au.cfg->auth_timeout_ms, JWKS_MAX_BYTES, on_jwks, NULL,
                  err, sizeof err)) {
        COUNT(key_reload_failures);
        log_warn("auth: cannot fetch %s: %s", au.cfg->auth_jwks_url, err);
        schedule_url(JWKS_RETRY_S);
        return;
    }
    au.url_in_flight = true;
}

static void on_url_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    fetch_url();
}

void auth_reload(void)
{
    if (au.cfg->auth_jwks) {
        char err[256];
        keyring *kr = jwks_load_file(au.cfg->auth_jwks, err, sizeof err);
        if (kr) {
            jwks_free(au.file_ring);
            au.file_ring = kr;
            COUNT(key_reloads);
            log_info("auth: reloaded %zu key(s) from %s", kr->n, au.cfg->auth_jwks);
        } else {
            COUNT(key_reload_failures);
            log_error("auth: reloading %s failed, keeping the %zu key(s) loaded before: %s", au.cfg->auth_jwks,
                      au.file_ring ? au.file_ring->n : 0, err);
        }
    }
    fetch_url();
}

/* ---- requests --------------------------------------------------------------------- */

/* The value of cookie `name` in a Cookie header, or NULL. */
static const char *cookie_value(const char *header, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (const char *p = header; p && *p;) {
        p += strspn(p, " \t;");
        size_t n = strcspn(p, ";");
        if (n > nl && p[nl] == '=' && !strncmp(p, name, nl)) {
            const char *v = p + nl + 1;
            size_t vl = n - nl - 1;
            while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            if (vl >= 2 && v[0] == '"' && v[vl - 1] == '"') {
                v++;
                vl -= 2;
            }
            *len = vl;
            return vl ? v : NULL;
        }
        p += n;
    }
    return NULL;
}

const char *auth_find_token(const auth_request *r, size_t *len)
{
    if (r->authorization && !strncasecmp(r->authorization, "Bearer ", 7)) {
        const char *t = r->authorization + 7;
        t += strspn(t, " ");
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            n--;
        if (n) {
            *len = n;
            return t;
        }
    }
    const char *v;
    if (au.cfg->auth_cookie && r->cookie && (v = cookie_value(r->cookie, au.cfg->auth_cookie, len)))
        return v;
    if (au.cfg->auth_query_token && r->query) {
        /* access_token=... among the parameters; the value as sent (tokens need no
         * decoding: base64url and dots only, and anything else fails verification). */
        for (const char *p = r->query; *p;) {
            size_t n = strcspn(p, "&");
            if (n > 13 && !strncmp(p, "access_token=", 13)) {
                *len = n - 13;
                return p + 13;
            }
            p += n;
            if (*p)
                p++;
        }
    }
    return NULL;
}

const char *auth_last_reason(void)
{
    return au.last_reason ? au.last_reason : "";
}

static auth_result deny(int reason, auth_result r)
{
    COUNT(denials[reason]);
    au.last_reason = reason_name(reason);
    return r;
}

/* Verifies the request's token. With cb set, a token whose kid is unknown while the
 * JWKS URL is (or may now be) asked again is held: AUTH_PENDING, and cb decides later. */
static auth_result check_jwt(const auth_request *r, auth_grant *g, auth_done_fn cb, void *arg)
{
    size_t len = 0;
    const char *tok = auth_find_token(r, &len);
    if (!tok)
        return deny(R_NO_TOKEN, AUTH_UNAUTHENTICATED);
    const keyring *rings[] = {au.file_ring, au.url_ring};
    jwt_claims c;
    char why[160];
    long long now = auth_clock();
    jwt_status st = jwt_verify(tok, len, rings, 2, &au.policy, now, &c, why, sizeof why);
    if (st == JWT_UNKNOWN_KID && au.cfg->auth_jwks_url && cb) {
        /* Perhaps the provider rotated its keys: look again (at most every 30 s), and
         * hold the check while a look is on its way. */
        if (!au.url_in_flight && now - au.url_last_kid_fetch >= UNKNOWN_KID_INTERVAL_S) {
            au.url_last_kid_fetch = now;
            fetch_url();
        }
        kid_wait *w = au.url_in_flight ? malloc(sizeof *w) : NULL;
        if (w) {
            *w = (kid_wait){*r, cb, arg, au.kid_waiters};
            au.kid_waiters = w;
            return AUTH_PENDING;
        }
    }
    if (st != JWT_OK) {
        log_debug("auth: token refused: %s", why); /* the reason, never the token */
        return deny((int)st, AUTH_UNAUTHENTICATED);
    }
    memset(g, 0, sizeof *g);
    g->exp = c.exp;
    if ((g->has_jti = c.jti != NULL))
        sha256_tagged('j', c.jti, c.jti_len, g->jti);
    if ((g->has_sub = c.sub != NULL))
        sha256_tagged('s', c.sub, c.sub_len, g->sub);
    bool covered = jwt_runs_cover(&c, r->run, r->run_len);
    jwt_claims_free(&c);
    if (grant_revoked(g, now))
        return deny(R_REVOKED, AUTH_UNAUTHENTICATED);
    if (!covered)
        return deny(R_NOT_COVERED, AUTH_FORBIDDEN);
    return AUTH_ALLOW;
}

typedef struct pending {
    auth_done_fn cb;
    void *arg;
} pending;

static auth_result from_forward(fwd_answer a)
{
    switch (a) {
    case FWD_ALLOW: return AUTH_ALLOW;
    case FWD_DENY_401: return deny(R_FORWARD_401, AUTH_UNAUTHENTICATED);
    case FWD_DENY_403: return deny(R_FORWARD_403, AUTH_FORBIDDEN);
    case FWD_PENDING: return AUTH_PENDING;
    case FWD_UNAVAILABLE: break;
    }
    return deny(R_FORWARD_UNAVAILABLE, AUTH_UNAVAILABLE);
}

static void on_forward(void *arg, fwd_answer a, fwd_entry *e)
{
    pending *p = arg;
    auth_grant g = {.fwd = e};
    p->cb(p->arg, from_forward(a), &g);
    free(p);
}

/* The request URI without its access_token parameter, for the application's logs. */
static char *uri_without_token(const char *uri)
{
    char *out = strdup(uri ? uri : "");
    char *q = out ? strchr(out, '?') : NULL;
    if (!q)
        return out;
    char *w = q + 1;
    for (const char *p = q + 1; *p;) {
        size_t n = strcspn(p, "&");
        if (strncmp(p, "access_token=", 13) != 0) {
            if (w != q + 1)
                *w++ = '&';
            memmove(w, p, n);
            w += n;
        }
        p += n + (p[n] == '&');
    }
    *w = '\0';
    if (w == q + 1)
        *q = '\0';
    return out;
}

auth_result auth_check(const auth_request *r, auth_grant *g, auth_done_fn cb, void *arg)
{
    memset(g, 0, sizeof *g);
    au.last_reason = NULL;
    if (au.cfg->auth == AUTH_NONE || auth_run_is_public(r->run, r->run_len))
        return AUTH_ALLOW;
    if (au.cfg->auth == AUTH_JWT)
        return check_jwt(r, g, cb, arg);
    /* Credentials are copied into the cache (to ask again later): bound them, or
     * distinct huge cookies could fill memory. */
    if ((r->cookie ? strlen(r->cookie) : 0) + (r->authorization ? strlen(r->authorization) : 0) > MAX_CREDENTIALS)
        return deny(JWT_MALFORMED, AUTH_UNAUTHENTICATED);
    pending *p = malloc(sizeof *p);
    char *uri = uri_without_token(r->uri);
    if (!p || !uri) {
        free(p);
        free(uri);
        return deny(R_FORWARD_UNAVAILABLE, AUTH_UNAVAILABLE);
    }
    p->cb = cb;
    p->arg = arg;
    fwd_request fr = {r->run, r->run_len, r->cookie, r->authorization, uri};
    fwd_entry *e;
    fwd_answer a = fwd_check(&fr, &e, on_forward, p);
    free(uri);
    if (a != FWD_PENDING)
        free(p);
    g->fwd = e;
    return from_forward(a);
}

/* ---- open streams ----------------------------------------------------------------- */

void auth_set_change_hook(void (*fn)(void))
{
    au.changed = fn;
}

static void on_forward_changed(void)
{
    if (au.changed)
        au.changed();
}

long long auth_warning_s(void)
{
    return au.cfg->auth_expiry_warning_ms / 1000;
}

auth_verdict auth_grant_check(auth_grant *g, long long now)
{
    if (grant_revoked(g, now)) {
        COUNT(ended_revoked);
        return AUTH_END_REVOKED;
    }
    if (g->fwd) {
        fwd_answer a = fwd_verdict(g->fwd);
        if (a == FWD_DENY_401 || a == FWD_DENY_403) {
            COUNT(ended_revoked);
            return AUTH_END_REVOKED;
        }
        if (a == FWD_UNAVAILABLE) {
            COUNT(ended_unavailable);
            return AUTH_END_UNAVAILABLE;
        }
    }
    if (g->exp && now >= g->exp) {
        COUNT(ended_expired);
        return AUTH_END_EXPIRED;
    }
    if (g->exp && !g->warned && now >= g->exp - auth_warning_s()) {
        g->warned = true;
        return AUTH_WARN;
    }
    return AUTH_KEEP;
}

void auth_grant_release(auth_grant *g)
{
    if (g->fwd)
        fwd_unref(g->fwd);
    g->fwd = NULL;
}

/* ---- life and metrics ------------------------------------------------------------- */

bool auth_check_config(const config *cfg, char *err, size_t errlen)
{
    int n = 0;
    for (const char *p = cfg->public_runs; p && *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ','))
        n++;
    if (n > MAX_PUBLIC) {
        snprintf(err, errlen, "--public-runs: at most %d prefixes", MAX_PUBLIC);
        return false;
    }
    if (cfg->auth == AUTH_JWT && cfg->auth_jwks) {
        keyring *kr = jwks_load_file(cfg->auth_jwks, err, errlen);
        if (!kr)
            return false;
        jwks_free(kr);
    }
    if (cfg->auth == AUTH_JWT && cfg->auth_jwks_url && !http_url_ok(cfg->auth_jwks_url)) {
        snprintf(err, errlen, "--auth-jwks-url: not a URL");
        return false;
    }
    if (cfg->auth == AUTH_FORWARD && !http_url_ok(cfg->auth_url)) {
        snprintf(err, errlen, "--auth-url: not an http(s) URL");
        return false;
    }
    return true;
}

bool auth_share_init(void)
{
    auth_counters *m = mmap(NULL, sizeof *m, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return false;
    memset(m, 0, sizeof *m);
    ac = m;
    return fwd_share_init();
}

bool auth_start(struct event_base *base, const config *cfg, char *err, size_t errlen)
{
    memset(&au, 0, sizeof au);
    au.cfg = cfg;
    au.base = base;
    au.policy = (jwt_policy){cfg->auth_audience, cfg->auth_issuer, cfg->auth_leeway_ms / 1000};
    if (!parse_public(cfg->public_runs)) {
        snprintf(err, errlen, "--public-runs: at most %d non-empty prefixes", MAX_PUBLIC);
        return false;
    }
    if (cfg->auth == AUTH_JWT) {
        if (cfg->auth_jwks && !(au.file_ring = jwks_load_file(cfg->auth_jwks, err, errlen)))
            return false;
        if (cfg->auth_jwks_url) {
            if (!http_url_ok(cfg->auth_jwks_url)) {
                snprintf(err, errlen, "--auth-jwks-url: not a URL");
                return false;
            }
            au.url_timer = evtimer_new(base, on_url_timer, NULL);
            if (!au.url_timer) {
                snprintf(err, errlen, "out of memory");
                return false;
            }
            fetch_url();
        }
        if (!cfg->auth_audience)
            log_warn("auth: no --auth-audience: tokens minted for other services are accepted too if "
                     "signed by these keys");
    }
    if (cfg->auth == AUTH_FORWARD) {
        fwd_settings fs = {cfg->auth_url, cfg->auth_timeout_ms, cfg->auth_cache_size, on_forward_changed, NULL};
        if (!http_url_ok(cfg->auth_url)) {
            snprintf(err, errlen, "--auth-url: not an http(s) URL");
            return false;
        }
        if (!fwd_start(base, &fs)) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
    }
    log_info("auth: mode %s%s%s", cfg->auth == AUTH_JWT ? "jwt" : cfg->auth == AUTH_FORWARD ? "forward" : "none",
             au.file_ring ? ", keys from " : "", au.file_ring ? cfg->auth_jwks : "");
    return true;
}

void auth_cancel_pending(void)
{
    if (au.cfg && au.cfg->auth == AUTH_FORWARD)
        fwd_cancel_waiters();
    release_kid_waiters(true);
}

void auth_stop(void)
{
    if (!au.cfg)
        return;
    if (au.cfg->auth == AUTH_FORWARD)
        fwd_stop();
    release_kid_waiters(true);
    http_client_stop();
    if (au.url_timer)
        event_free(au.url_timer);
    jwks_free(au.file_ring);
    jwks_free(au.url_ring);
    free(au.revoked);
    free(au.public_copy);
    memset(&au, 0, sizeof au);
}

bool auth_metrics(buf *m)
{
    bool ok = buf_puts(m, "# HELP outboxd_sse_auth_denials_total Streams refused, by reason.\n"
                          "# TYPE outboxd_sse_auth_denials_total counter\n");
    for (int r = 1; ok && r < R_NREASONS; r++)
        ok = buf_printf(m, "outboxd_sse_auth_denials_total{reason=\"%s\"} %llu\n", reason_name(r), COUNTED(denials[r]));
    ok = ok && buf_printf(m,
                          "# HELP outboxd_sse_auth_streams_ended_total Open streams ended by authorization.\n"
                          "# TYPE outboxd_sse_auth_streams_ended_total counter\n"
                          "outboxd_sse_auth_streams_ended_total{reason=\"expired\"} %llu\n"
                          "outboxd_sse_auth_streams_ended_total{reason=\"revoked\"} %llu\n"
                          "outboxd_sse_auth_streams_ended_total{reason=\"unavailable\"} %llu\n",
                          COUNTED(ended_expired), COUNTED(ended_revoked), COUNTED(ended_unavailable));
    fwd_stats fs;
    fwd_get_stats(&fs);
    ok = ok &&
         prom_counter(m, "outboxd_sse_auth_key_reloads_total", "Key sets loaded (file reloads, URL refreshes).",
                      (double)COUNTED(key_reloads)) &&
         prom_counter(m, "outboxd_sse_auth_key_reload_failures_total",
                      "Key set loads that failed (the previous keys stayed).", (double)COUNTED(key_reload_failures)) &&
         prom_gauge(m, "outboxd_sse_auth_revocations", "Revocations known (in force or not yet pruned).",
                    au.nrevoked) &&
         prom_counter(m, "outboxd_sse_auth_forward_calls_total", "Calls made to --auth-url.", (double)fs.calls) &&
         prom_counter(m, "outboxd_sse_auth_forward_cache_hits_total",
                      "Forward-auth checks answered from the cache.", (double)fs.cache_hits) &&
         prom_counter(m, "outboxd_sse_auth_forward_waits_total",
                      "Forward-auth checks that waited for a call (one call per key).", (double)fs.waits) &&
         prom_counter(m, "outboxd_sse_auth_forward_failures_total",
                      "Forward-auth calls without a usable answer (down, slow, 5xx).", (double)fs.failed) &&
         prom_histogram(m, "outboxd_sse_auth_forward_call_seconds", "Forward-auth call latency.", fwd_latency());
    return ok;
}
