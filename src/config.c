/* The settings table and its parser. */
#include "config.h"

#include "log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum setting_type { T_STR, T_INT, T_BOOL, T_DURATION, T_ENUM };

typedef struct setting {
    const char *name;          /* flag without the leading -- */
    const char *env;           /* environment variable, or NULL */
    enum setting_type type;
    unsigned cmds;             /* commands that take it */
    const char *def;           /* default, parsed like user input; NULL = unset */
    long min, max;             /* bounds for T_INT and T_DURATION (ms) */
    long unit_ms;              /* T_DURATION: unit of a bare number */
    const char *const *choices; /* T_ENUM: value i is stored as int i */
    size_t off;
    const char *help;
} setting;

static const char *const level_choices[] = {"error", "warn", "info", "debug", NULL};
static const char *const format_choices[] = {"text", "json", NULL};
static const char *const auth_choices[] = {"none", "jwt", "forward", NULL};
static const char *const pubsub_choices[] = {"sharded", "global", NULL};
static const char *const seq_trigger_choices[] = {"auto", "c", "plpgsql", NULL};

#define OFF(f) offsetof(config, f)
#define DAY_MS (24L * 3600 * 1000)
/* The commands that talk to Redis. */
#define CMD_REDIS (CMD_RELAY | CMD_SSE | CMD_STATUS)

static const setting settings[] = {
    {"database-url", "DATABASE_URL", T_STR, CMD_ALL, "postgresql:///outboxd", 0, 0, 0, NULL,
     OFF(database_url), "PostgreSQL connection URI or conninfo string (libpq)"},
    {"redis-url", "REDIS_URL", T_STR, CMD_REDIS, "redis://127.0.0.1:6379/0", 0, 0, 0, NULL, OFF(redis_url),
     "Redis URL: redis://[[user]:password@]host[:port][/db] (plaintext) or rediss://... (TLS); user and "
     "password percent-encoded"},
    {"redis-tls-ca", "OUTBOXD_REDIS_TLS_CA", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL, OFF(redis_tls_ca),
     "PEM file of the CA certificates the Redis server's certificate must chain to (rediss:// only; unset = "
     "the system's CA store)"},
    {"redis-tls-cert", "OUTBOXD_REDIS_TLS_CERT", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL, OFF(redis_tls_cert),
     "PEM file of a client certificate (and chain) for servers that require one; needs --redis-tls-key"},
    {"redis-tls-key", "OUTBOXD_REDIS_TLS_KEY", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL, OFF(redis_tls_key),
     "PEM file of the private key of --redis-tls-cert"},
    {"redis-tls-server-name", "OUTBOXD_REDIS_TLS_SERVER_NAME", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL,
     OFF(redis_tls_server_name),
     "name sent as SNI and required in the server's certificate (unset = the host connected to); the "
     "certificate and this name are always verified"},
    {"redis-sentinel", "OUTBOXD_REDIS_SENTINEL", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL, OFF(redis_sentinel),
     "HOST:PORT[,HOST:PORT...] of Redis Sentinels that name the primary (with --redis-sentinel-master); "
     "the URL's host and port are then unused, its user, password, db and TLS still apply"},
    {"redis-sentinel-master", "OUTBOXD_REDIS_SENTINEL_MASTER", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL,
     OFF(redis_sentinel_master), "name of the primary the sentinels monitor"},
    {"redis-cluster", "OUTBOXD_REDIS_CLUSTER", T_STR, CMD_REDIS, NULL, 0, 0, 0, NULL, OFF(redis_cluster),
     "HOST:PORT[,HOST:PORT...] of Redis Cluster nodes to read the slot map from (seeds); each run goes to the "
     "primary that owns its channel's slot. The URL's host, port and db are then unused (a cluster has db 0 "
     "only), its user, password and TLS still apply; not with --redis-sentinel"},
    {"redis-pubsub", "OUTBOXD_REDIS_PUBSUB", T_ENUM, CMD_REDIS, NULL, 0, 0, 0, pubsub_choices, OFF(redis_pubsub),
     "sharded (SPUBLISH/SSUBSCRIBE: each channel lives on the shard that owns its slot) or global "
     "(PUBLISH/SUBSCRIBE, for subscribers that cannot use sharded Pub/Sub; a cluster broadcasts each message "
     "to every node) (unset = sharded with --redis-cluster, global without)"},
    {"log-level", "OUTBOXD_LOG_LEVEL", T_ENUM, CMD_ALL, "info", 0, 0, 0, level_choices, OFF(log_level),
     "error, warn, info or debug"},
    {"log-format", "OUTBOXD_LOG_FORMAT", T_ENUM, CMD_ALL, "text", 0, 0, 0, format_choices,
     OFF(log_format), "text, or json (one object per line)"},

    {"poll-interval-ms", "OUTBOXD_POLL_INTERVAL_MS", T_INT, CMD_RELAY, "200", 1, 60000, 0, NULL,
     OFF(poll_interval_ms), "milliseconds between polls when no NOTIFY wakes the relay"},
    {"notify-coalesce-ms", "OUTBOXD_NOTIFY_COALESCE_MS", T_INT, CMD_RELAY, "2", 0, 1000, 0, NULL,
     OFF(notify_coalesce_ms),
     "after a NOTIFY or a batch smaller than the limit, wait this long so that events arriving together share a batch"},
    {"batch-size", "OUTBOXD_BATCH_SIZE", T_INT, CMD_RELAY, "100", 1, 100000, 0, NULL,
     OFF(batch_size), "events fetched per poll when the outbox is quiet"},
    {"max-batch-size", "OUTBOXD_MAX_BATCH_SIZE", T_INT, CMD_RELAY, "2000", 1, 100000, 0, NULL,
     OFF(max_batch_size), "largest batch: full batches double the size up to this"},
    {"max-attempts", "OUTBOXD_MAX_ATTEMPTS", T_INT, CMD_RELAY, "3", 1, 100, 0, NULL,
     OFF(max_attempts), "publish attempts per event within one batch, with backoff"},
    {"no-listen", "OUTBOXD_NO_LISTEN", T_BOOL, CMD_RELAY, "false", 0, 0, 0, NULL, OFF(no_listen),
     "poll only; do not LISTEN (e.g. behind a transaction-pooling proxy)"},
    {"stats-interval", "OUTBOXD_STATS_INTERVAL", T_DURATION, CMD_RELAY | CMD_SSE, "10s", 0, DAY_MS,
     1000, NULL, OFF(stats_interval_ms), "period of the stats log line (0 = never; bare number = s)"},
    {"shutdown-timeout", "OUTBOXD_SHUTDOWN_TIMEOUT", T_DURATION, CMD_RELAY | CMD_SSE, "10s", 100,
     3600000, 1000, NULL, OFF(shutdown_timeout_ms),
     "longest wait for the batch in flight after SIGTERM/SIGINT"},
    {"pg-timeout", "OUTBOXD_PG_TIMEOUT", T_DURATION, CMD_ALL, "5s", 100, 600000, 1000, NULL,
     OFF(pg_timeout_ms), "timeout of each PostgreSQL connect and statement"},
    {"redis-timeout", "OUTBOXD_REDIS_TIMEOUT", T_DURATION, CMD_REDIS, "1s",
     10, 600000, 1000, NULL, OFF(redis_timeout_ms), "timeout of each Redis connect and command"},
    {"mark-ttl", "OUTBOXD_MARK_TTL", T_DURATION, CMD_RELAY, "1d", 1000, 365 * DAY_MS, 1000, NULL,
     OFF(mark_ttl_ms), "how long Redis keeps a run's de-duplication mark after its last event"},
    {"redis-wait-replicas", "OUTBOXD_REDIS_WAIT_REPLICAS", T_INT, CMD_RELAY, "0", 0, 100, 0, NULL,
     OFF(redis_wait_replicas),
     "after each batch, WAIT until this many replicas hold its marks (and messages) before marking it "
     "published in PostgreSQL (0 = do not wait; docs/GUARANTEES.md)"},
    {"redis-wait-timeout", "OUTBOXD_REDIS_WAIT_TIMEOUT", T_DURATION, CMD_RELAY, "100ms", 1, 60000, 1, NULL,
     OFF(redis_wait_timeout_ms), "longest WAIT per batch; fewer replicas in time is counted, not retried"},

    {"listen", "OUTBOXD_LISTEN", T_STR, CMD_SSE, "127.0.0.1:8080", 0, 0, 0, NULL, OFF(listen),
     "HOST:PORT the SSE gateway listens on"},
    {"heartbeat", "OUTBOXD_HEARTBEAT", T_DURATION, CMD_SSE, "15s", 100, 3600000, 1000, NULL,
     OFF(heartbeat_ms), "comment line sent on idle streams this often"},
    {"client-buffer", "OUTBOXD_CLIENT_BUFFER", T_INT, CMD_SSE, "262144", 1024, 1L << 30, 0, NULL,
     OFF(client_buffer), "bytes one stream may queue in the gateway (and about as many in its socket's send buffer) before it is caught up from PostgreSQL"},
    {"stream-coalesce", "OUTBOXD_STREAM_COALESCE", T_DURATION, CMD_SSE, "10ms", 0, 1000, 1, NULL,
     OFF(stream_coalesce_ms),
     "a run's live events go out to its streams at most once per this period: one write per stream carries all that came meanwhile (0 = each at once)"},
    {"cors-origin", "OUTBOXD_CORS_ORIGIN", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(cors_origin),
     "origins allowed to read streams from other sites: exact origins (https://app.example), comma-separated, "
     "with credentials; * = any origin, never with credentials (unset = no CORS)"},
    {"max-clients", "OUTBOXD_MAX_CLIENTS", T_INT, CMD_SSE, "10000", 1, 1000000, 0, NULL,
     OFF(max_clients), "open streams at most (all workers together); further streams end at once with retry: 5000 (browsers come back)"},
    {"auth", "OUTBOXD_AUTH", T_ENUM, CMD_SSE, "none", 0, 0, 0, auth_choices, OFF(auth),
     "who may read a run: none (anyone who reaches the gateway: loopback only unless --allow-anonymous), "
     "jwt (a signed token whose runs claim covers it) or forward (the application at --auth-url says)"},
    {"auth-jwks", "OUTBOXD_AUTH_JWKS", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_jwks),
     "JWKS file of the keys that sign tokens (each key with kty, kid, alg); SIGHUP reloads it"},
    {"auth-jwks-url", "OUTBOXD_AUTH_JWKS_URL", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_jwks_url),
     "https:// URL of an identity provider's JWKS, refreshed on its max-age and on an unknown kid (at most every 30 s)"},
    {"auth-audience", "OUTBOXD_AUTH_AUDIENCE", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_audience),
     "when set, a token's aud must contain it"},
    {"auth-issuer", "OUTBOXD_AUTH_ISSUER", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_issuer),
     "when set, a token's iss must equal it"},
    {"auth-leeway", "OUTBOXD_AUTH_LEEWAY", T_DURATION, CMD_SSE, "30s", 0, 600000, 1000, NULL, OFF(auth_leeway_ms),
     "clock skew allowed when checking exp, nbf and iat"},
    {"auth-cookie", "OUTBOXD_AUTH_COOKIE", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_cookie),
     "name of a cookie that carries the token (tried after Authorization: Bearer)"},
    {"auth-query-token", "OUTBOXD_AUTH_QUERY_TOKEN", T_BOOL, CMD_SSE, "false", 0, 0, 0, NULL,
     OFF(auth_query_token), "also take the token from ?access_token= (tried last; never logged)"},
    {"auth-expiry-warning", "OUTBOXD_AUTH_EXPIRY_WARNING", T_DURATION, CMD_SSE, "60s", 0, 86400000, 1000, NULL,
     OFF(auth_expiry_warning_ms), "a stream gets event: auth-expiring this long before its token's exp"},
    {"auth-url", "OUTBOXD_AUTH_URL", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(auth_url),
     "forward mode: http(s) URL the gateway GETs with the browser's Cookie and Authorization; 2xx allows"},
    {"auth-timeout", "OUTBOXD_AUTH_TIMEOUT", T_DURATION, CMD_SSE, "2s", 100, 60000, 1000, NULL,
     OFF(auth_timeout_ms), "timeout of each forward-auth call and JWKS download (a timeout denies)"},
    {"auth-cache-size", "OUTBOXD_AUTH_CACHE_SIZE", T_INT, CMD_SSE, "10000", 1, 10000000, 0, NULL,
     OFF(auth_cache_size), "forward-auth answers kept (per credential and run), besides those open streams use"},
    {"allow-anonymous", "OUTBOXD_ALLOW_ANONYMOUS", T_BOOL, CMD_SSE, "false", 0, 0, 0, NULL, OFF(allow_anonymous),
     "with --auth none, allow a --listen address other than loopback (anyone who reaches it reads every run)"},
    {"public-runs", "OUTBOXD_PUBLIC_RUNS", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(public_runs),
     "comma-separated run id prefixes that anyone may read, whatever --auth says"},

    {"workers", "OUTBOXD_WORKERS", T_INT, CMD_SSE, "0", 0, 1024, 0, NULL, OFF(workers),
     "gateway processes sharing the port (SO_REUSEPORT), supervised; 0 = one per core, 1 = no supervisor"},
    {"replica-url", "OUTBOXD_REPLICA_URL", T_STR, CMD_SSE, NULL, 0, 0, 0, NULL, OFF(replica_url),
     "PostgreSQL standby (libpq URI) to read replays from; the primary stays DATABASE_URL (unset = primary only)"},
    {"replica-wait", "OUTBOXD_REPLICA_WAIT", T_DURATION, CMD_SSE, "100ms", 0, 10000, 1, NULL,
     OFF(replica_wait_ms), "how long a read waits for a lagging standby before it goes to the primary"},

    {"http-listen", "OUTBOXD_HTTP_LISTEN", T_STR, CMD_RELAY, NULL, 0, 0, 0, NULL, OFF(http_listen),
     "HOST:PORT for /metrics, /healthz and /readyz (unset = no HTTP endpoint)"},
    {"retention", "OUTBOXD_RETENTION", T_DURATION, CMD_RELAY, "7d", 0, 3650 * DAY_MS, 1000, NULL,
     OFF(retention_ms), "the leader deletes published events older than this (0 = keep forever)"},
    {"vacuum-after", "OUTBOXD_VACUUM_AFTER", T_INT, CMD_RELAY, "20000", 0, 1000000000, 0, NULL, OFF(vacuum_after),
     "the leader runs VACUUM on run_outbox (if its role owns it) once this many events were marked or deleted "
     "since the last one (0 = leave it to autovacuum)"},
    {"counter-retention", "OUTBOXD_COUNTER_RETENTION", T_DURATION, CMD_RELAY, "30d", 0, 3650 * DAY_MS, 1000,
     NULL, OFF(counter_retention_ms),
     "the leader forgets the last seq of a run with no events left and none newer than this (0 = never); "
     "such a run, if it writes again, starts over at seq 1"},
    {"older-than", NULL, T_DURATION, CMD_PRUNE, NULL, 0, 3650 * DAY_MS, 1000, NULL, OFF(older_than_ms),
     "delete published events older than this (required; e.g. 7d)"},
    {"new-epoch", NULL, T_BOOL, CMD_MIGRATE, "false", 0, 0, 0, NULL, OFF(new_epoch),
     "also write a new epoch, so that Redis marks start afresh, and restart the relays' sessions: after "
     "restoring a backup that the relay cannot recognise by itself (docs/OPERATIONS.md)"},
    {"seq-trigger", "OUTBOXD_SEQ_TRIGGER", T_ENUM, CMD_MIGRATE, "auto", 0, 0, 0, seq_trigger_choices,
     OFF(seq_trigger),
     "the trigger that gives each event its seq: c = the extension outboxd's (CREATE EXTENSION outboxd first; "
     "cheaper inserts), plpgsql = the one that needs no extension, auto = c when the extension is in the "
     "database and this role may execute its function, else plpgsql"},
    {"json", NULL, T_BOOL, CMD_STATUS, "false", 0, 0, 0, NULL, OFF(json), "print JSON"},
    {"reason", NULL, T_STR, CMD_SKIP, NULL, 0, 0, 0, NULL, OFF(reason), "why the event is skipped (logged)"},
    {"jti", NULL, T_STR, CMD_REVOKE, NULL, 0, 0, 0, NULL, OFF(jti), "revoke the token with this jti claim"},
    {"sub", NULL, T_STR, CMD_REVOKE, NULL, 0, 0, 0, NULL, OFF(sub), "revoke every token with this sub claim"},
    {"until", NULL, T_STR, CMD_REVOKE, "24h", 0, 0, 0, NULL, OFF(until),
     "refuse those tokens until this time: a duration from now (2h) or a timestamp (2026-12-01T00:00:00Z); "
     "at least the longest lifetime of the tokens you issue"},
};
#define NSETTINGS (sizeof settings / sizeof settings[0])

bool config_parse_listen(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= cap)
        return false;
    size_t n = (size_t)(colon - s);
    if (s[0] == '[' && n >= 2 && s[n - 1] == ']') {
        memcpy(host, s + 1, n - 2);
        host[n - 2] = '\0';
    } else {
        memcpy(host, s, n);
        host[n] = '\0';
    }
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p < 0 || p > 65535)
        return false;
    *port = (int)p;
    return true;
}

bool config_host_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (!strcasecmp(host, "localhost"))
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    return inet_pton(AF_INET6, host, &a6) == 1 && IN6_IS_ADDR_LOOPBACK(&a6);
}

/* Whether s is an origin as browsers send it: scheme://host[:port], nothing after. */
static bool valid_origin(const char *s, size_t n)
{
    const char *sep = memmem(s, n, "://", 3);
    if (!sep || sep == s || (size_t)(sep + 3 - s) >= n)
        return false;
    for (const char *p = sep + 3; p < s + n; p++)
        if (*p == '/' || *p == '?' || *p == '#' || *p == ' ' || *p == '*' || (unsigned char)*p < 0x21)
            return false;
    return true;
}

/* Checks a comma-separated list with check(item, len) on each item (none empty). */
static bool each_item(const char *list, bool (*check)(const char *, size_t))
{
    if (!*list)
        return false;
    for (const char *p = list;; p++) {
        size_t n = strcspn(p, ",");
        if (n == 0 || (check && !check(p, n)))
            return false;
        p += n;
        if (!*p)
            return true;
    }
}

static bool public_prefix_ok(const char *s, size_t n)
{
    return !(n == 1 && s[0] == '*');
}

bool config_parse_addrs(const char *s, redis_addr *out, int max, int *n)
{
    *n = 0;
    while (*s) {
        size_t len = strcspn(s, ",");
        char item[300];
        if (len == 0 || len >= sizeof item || *n >= max)
            return false;
        memcpy(item, s, len);
        item[len] = '\0';
        redis_addr *a = &out[*n];
        if (!config_parse_listen(item, a->host, sizeof a->host, &a->port) || !a->host[0] || a->port < 1)
            return false;
        (*n)++;
        s += len;
        if (*s == ',' && !*++s)
            return false; /* a trailing comma */
    }
    return *n > 0;
}

bool config_parse_duration(const char *s, long default_unit_ms, long *out_ms)
{
    errno = 0;
    char *end;
    if (!((*s >= '0' && *s <= '9') || *s == '.'))
        return false; /* no sign, no space, no "nan" or "inf" */
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0)
        return false;
    double unit = (double)default_unit_ms;
    if (*end) {
        static const struct {
            const char *suffix;
            double ms;
        } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
        unit = -1;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strcmp(end, units[i].suffix) == 0)
                unit = units[i].ms;
        if (unit < 0)
            return false;
    }
    double ms = v * unit;
    if (ms > (double)LONG_MAX / 2)
        return false;
    *out_ms = (long)(ms + 0.5);
    return true;
}

static int hexdigit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decodes s[0..n) into out (NUL-terminated); false if malformed or too long. */
static bool percent_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return false;
            int hi = hexdigit(s[i + 1]), lo = hexdigit(s[i + 2]);
            if (hi < 0 || lo < 0)
                return false;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        if (o + 1 >= cap)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return true;
}

bool config_parse_redis_url(const char *url, redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    const char *p = url;
    if (!strncmp(p, "redis://", 8)) {
        p += 8;
    } else if (!strncmp(p, "rediss://", 9)) {
        out->tls = true;
        p += 9;
    } else {
        snprintf(err, errlen, "must start with redis:// (plaintext) or rediss:// (TLS)");
        return false;
    }
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        if (colon && !percent_decode(p, (size_t)(colon - p), out->user, sizeof out->user)) {
            snprintf(err, errlen, "bad or too long user name");
            return false;
        }
        if (!percent_decode(pw, (size_t)(at - pw), out->password, sizeof out->password)) {
            snprintf(err, errlen, "bad or too long password");
            return false;
        }
        p = at + 1;
    }
    size_t hostlen = strcspn(p, ":/");
    if (hostlen == 0 || hostlen >= sizeof out->host) {
        snprintf(err, errlen, "missing or too long host");
        return false;
    }
    memcpy(out->host, p, hostlen);
    p += hostlen;
    if (*p == ':') {
        char *end;
        errno = 0;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || port < 1 || port > 65535 || (*end && *end != '/')) {
            snprintf(err, errlen, "bad port");
            return false;
        }
        out->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        errno = 0;
        long db = strtol(p + 1, &end, 10);
        if (end == p + 1 || errno || db < 0 || db > 1000000 || *end) {
            snprintf(err, errlen, "bad database number");
            return false;
        }
        out->db = (int)db;
    } else if (*p && strcmp(p, "/") != 0) {
        snprintf(err, errlen, "unexpected text after host");
        return false;
    }
    return true;
}

static bool parse_bool(const char *v, bool *out)
{
    if (!strcasecmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = true;
    else if (!strcasecmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "no") ||
             !strcasecmp(v, "off"))
        *out = false;
    else
        return false;
    return true;
}

/* The one setter behind defaults, environment and flags. */
static bool setting_set(config *cfg, const setting *s, const char *v, const char *origin, char *err,
                        size_t errlen)
{
    char *field = (char *)cfg + s->off;
    switch (s->type) {
    case T_STR: {
        char **dst = (char **)field;
        free(*dst);
        *dst = strdup(v);
        return *dst != NULL;
    }
    case T_BOOL:
        if (parse_bool(v, (bool *)field))
            return true;
        snprintf(err, errlen, "%s --%s: '%s' is not a boolean (true/false)", origin, s->name, v);
        return false;
    case T_ENUM:
        for (int i = 0; s->choices[i]; i++)
            if (!strcmp(v, s->choices[i])) {
                *(int *)field = i;
                return true;
            }
        snprintf(err, errlen, "%s --%s: '%s' is not one of the allowed values", origin, s->name, v);
        return false;
    case T_INT: {
        char *end;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (end == v || *end || errno) {
            snprintf(err, errlen, "%s --%s: '%s' is not a whole number", origin, s->name, v);
            return false;
        }
        if (n < s->min || n > s->max) {
            snprintf(err, errlen, "%s --%s: %ld is out of range [%ld, %ld]", origin, s->name, n, s->min,
                     s->max);
            return false;
        }
        *(long *)field = n;
        return true;
    }
    case T_DURATION: {
        long ms;
        if (!config_parse_duration(v, s->unit_ms, &ms)) {
            snprintf(err, errlen, "%s --%s: '%s' is not a duration (e.g. 500ms, 10s, 5m, 7d)", origin,
                     s->name, v);
            return false;
        }
        if (ms < s->min || ms > s->max) {
            snprintf(err, errlen, "%s --%s: '%s' is out of range [%ldms, %ldms]", origin, s->name, v,
                     s->min, s->max);
            return false;
        }
        *(long *)field = ms;
        return true;
    }
    }
    return false;
}

static const setting *find_setting(const char *name, size_t len, enum command cmd)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if ((settings[i].cmds & cmd) && strlen(settings[i].name) == len &&
            !strncmp(settings[i].name, name, len))
            return &settings[i];
    return NULL;
}

/* A libpq URI or conninfo string that libpq can parse, with valid port numbers. */
static bool check_pg_url(const char *what, const char *url, char *err, size_t errlen)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    if (!opts) {
        snprintf(err, errlen, "%s: %s", what, perr ? strtok(perr, "\n") : "cannot be parsed");
        PQfreemem(perr);
        return false;
    }
    /* libpq parses the port as text and only fails at connect time. */
    bool port_ok = true;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "port") || !o->val || !*o->val)
            continue;
        for (const char *p = o->val; *p && port_ok; p += strcspn(p, ",") + (p[strcspn(p, ",")] != 0)) {
            char *end;
            errno = 0;
            long port = strtol(p, &end, 10);
            port_ok = end != p && !errno && port >= 1 && port <= 65535 && (*end == ',' || !*end);
        }
    }
    PQconninfoFree(opts);
    if (!port_ok) {
        snprintf(err, errlen, "%s: bad port number", what);
        return false;
    }
    return true;
}

bool config_load(config *cfg, enum command cmd, int argc, char **argv, char **pos, int max_pos,
                 int *npos, bool *help, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    *npos = 0;
    *help = false;
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        if (!(s->cmds & cmd))
            continue;
        if (s->type == T_ENUM && !s->def)
            *(int *)((char *)cfg + s->off) = -1; /* unset */
        if (s->def && !setting_set(cfg, s, s->def, "default", err, errlen))
            return false;
        const char *ev = s->env ? getenv(s->env) : NULL;
        if (ev && *ev) {
            char origin[64];
            snprintf(origin, sizeof origin, "environment %s,", s->env);
            if (!setting_set(cfg, s, ev, origin, err, errlen))
                return false;
        }
    }
    bool only_positional = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (only_positional || a[0] != '-' || a[1] == '\0') {
            if (*npos >= max_pos) {
                snprintf(err, errlen, "unexpected argument '%s'", a);
                return false;
            }
            pos[(*npos)++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_positional = true;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = true;
            return true;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unknown option '%s' (see --help)", a);
            return false;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        const setting *s = find_setting(name, len, cmd);
        if (!s) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)len, name);
            return false;
        }
        const char *v;
        if (eq)
            v = eq + 1;
        else if (s->type == T_BOOL)
            v = "true";
        else if (i + 1 < argc)
            v = argv[++i];
        else {
            snprintf(err, errlen, "option --%s needs a value", s->name);
            return false;
        }
        if (!setting_set(cfg, s, v, "option", err, errlen))
            return false;
    }

    /* Cross-checks and URL syntax, so a bad value fails before anything connects. */
    if (!check_pg_url("--database-url (DATABASE_URL)", cfg->database_url, err, errlen) ||
        (cfg->replica_url && !check_pg_url("--replica-url (OUTBOXD_REPLICA_URL)", cfg->replica_url, err, errlen)))
        return false;
    if (cmd & CMD_REDIS) {
        char why[128];
        if (!config_parse_redis_url(cfg->redis_url, &cfg->redis, why, sizeof why)) {
            snprintf(err, errlen, "--redis-url (REDIS_URL): %s", why); /* the URL may hold a password */
            return false;
        }
        /* TLS is asked for by the URL alone: a TLS file next to a redis:// URL is a
         * mistake to report, not a reason to upgrade (or to ignore it). */
        const char *tls_flag = cfg->redis_tls_ca       ? "--redis-tls-ca"
                               : cfg->redis_tls_cert   ? "--redis-tls-cert"
                               : cfg->redis_tls_key    ? "--redis-tls-key"
                               : cfg->redis_tls_server_name ? "--redis-tls-server-name"
                                                            : NULL;
        if (tls_flag && !cfg->redis.tls) {
            snprintf(err, errlen, "%s is set but --redis-url (REDIS_URL) is redis://, plaintext: use rediss:// "
                     "for TLS", tls_flag);
            return false;
        }
        if ((cfg->redis_tls_cert != NULL) != (cfg->redis_tls_key != NULL)) {
            snprintf(err, errlen, "--redis-tls-cert and --redis-tls-key go together: give both or neither");
            return false;
        }
        if (cfg->redis_tls_server_name && !cfg->redis_tls_server_name[0]) {
            snprintf(err, errlen, "--redis-tls-server-name must not be empty");
            return false;
        }
        if ((cfg->redis_sentinel != NULL) != (cfg->redis_sentinel_master != NULL)) {
            snprintf(err, errlen, "--redis-sentinel and --redis-sentinel-master go together: give both or neither");
            return false;
        }
        if (cfg->redis_sentinel &&
            !config_parse_addrs(cfg->redis_sentinel, cfg->sentinels, REDIS_MAX_SENTINELS, &cfg->nsentinels)) {
            snprintf(err, errlen, "--redis-sentinel: '%s' is not HOST:PORT[,HOST:PORT...] (at most %d)",
                     cfg->redis_sentinel, REDIS_MAX_SENTINELS);
            return false;
        }
        if (cfg->redis_sentinel_master && !cfg->redis_sentinel_master[0]) {
            snprintf(err, errlen, "--redis-sentinel-master must not be empty");
            return false;
        }
        if (cfg->redis_cluster && cfg->redis_sentinel) {
            snprintf(err, errlen, "--redis-cluster and --redis-sentinel exclude each other: a cluster finds its "
                                  "primaries (and fails over) by itself, give one of them");
            return false;
        }
        if (cfg->redis_cluster && !config_parse_addrs(cfg->redis_cluster, cfg->cluster_seeds,
                                                      REDIS_MAX_CLUSTER_SEEDS, &cfg->ncluster_seeds)) {
            snprintf(err, errlen, "--redis-cluster: '%s' is not HOST:PORT[,HOST:PORT...] (at most %d)",
                     cfg->redis_cluster, REDIS_MAX_CLUSTER_SEEDS);
            return false;
        }
        if (cfg->redis_cluster && cfg->redis.db != 0) {
            snprintf(err, errlen, "--redis-url (REDIS_URL) names db %d, but a Redis Cluster has db 0 only",
                     cfg->redis.db);
            return false;
        }
    }
    char host[256];
    int port;
    if ((cmd & CMD_SSE) && !config_parse_listen(cfg->listen, host, sizeof host, &port)) {
        snprintf(err, errlen, "--listen: '%s' is not HOST:PORT", cfg->listen);
        return false;
    }
    if (cmd & CMD_SSE) {
        if (!config_host_is_loopback(host) && cfg->auth == AUTH_NONE && !cfg->allow_anonymous) {
            snprintf(err, errlen,
                     "--listen %s is not a loopback address, and with --auth none anyone who reaches it "
                     "reads every run: choose --auth jwt or --auth forward, or pass --allow-anonymous to "
                     "serve without authorization",
                     cfg->listen);
            return false;
        }
        if (cfg->auth == AUTH_JWT && !cfg->auth_jwks && !cfg->auth_jwks_url) {
            snprintf(err, errlen, "--auth jwt needs --auth-jwks PATH or --auth-jwks-url URL (the signing keys)");
            return false;
        }
        if (cfg->auth_jwks_url && strncmp(cfg->auth_jwks_url, "https://", 8) != 0) {
            snprintf(err, errlen, "--auth-jwks-url must be an https:// URL (keys fetched in clear could be forged)");
            return false;
        }
        if (cfg->auth == AUTH_FORWARD &&
            (!cfg->auth_url || (strncmp(cfg->auth_url, "http://", 7) && strncmp(cfg->auth_url, "https://", 8)))) {
            snprintf(err, errlen, "--auth forward needs --auth-url http(s)://HOST[:PORT]/PATH");
            return false;
        }
        if (cfg->cors_origin && strcmp(cfg->cors_origin, "*") != 0 && !each_item(cfg->cors_origin, valid_origin)) {
            snprintf(err, errlen, "--cors-origin: want exact origins such as https://app.example:8443, "
                                  "comma-separated (no path, no wildcard), or * alone");
            return false;
        }
        if (cfg->public_runs && !each_item(cfg->public_runs, public_prefix_ok)) {
            snprintf(err, errlen, "--public-runs: want non-empty run id prefixes, comma-separated "
                                  "(to make every run public use --auth none)");
            return false;
        }
    }
    if ((cmd & CMD_REVOKE) && !cfg->jti == !cfg->sub) {
        snprintf(err, errlen, "name what to revoke: --jti ID or --sub SUBJECT (one of them)");
        return false;
    }
    if ((cmd & CMD_RELAY) && cfg->http_listen && !config_parse_listen(cfg->http_listen, host, sizeof host, &port)) {
        snprintf(err, errlen, "--http-listen: '%s' is not HOST:PORT", cfg->http_listen);
        return false;
    }
    if ((cmd & CMD_PRUNE) && cfg->older_than_ms <= 0) {
        snprintf(err, errlen, "--older-than is required and must be more than 0 (e.g. 7d)");
        return false;
    }
    if ((cmd & CMD_RELAY) && cfg->max_batch_size < cfg->batch_size) {
        snprintf(err, errlen, "--max-batch-size (%ld) must be at least --batch-size (%ld)",
                 cfg->max_batch_size, cfg->batch_size);
        return false;
    }
    return true;
}

bool config_redis_sharded(const config *cfg)
{
    return cfg->redis_pubsub == REDIS_PUBSUB_SHARDED || (cfg->redis_pubsub < 0 && cfg->redis_cluster);
}

void config_free(config *cfg)
{
    for (size_t i = 0; i < NSETTINGS; i++)
        if (settings[i].type == T_STR) {
            char **p = (char **)((char *)cfg + settings[i].off);
            free(*p);
            *p = NULL;
        }
}

void config_print_help(enum command cmd, const char *usage, const char *about)
{
    printf("usage: %s\n\n%s\n\noptions (flags override environment variables):\n", usage, about);
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        if (!(s->cmds & cmd))
            continue;
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s", s->name, s->type == T_BOOL ? "" : " VALUE");
        printf("  %-28s %s\n", flag, s->help);
        printf("  %-28s default: %s%s%s\n", "", s->def ? s->def : "(unset)", s->env ? "; env " : "",
               s->env ? s->env : "");
    }
    printf("  %-28s this help\n", "--help");
}

void config_log(const config *cfg, enum command cmd)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        /* PostgreSQL URLs may carry a password: not logged. */
        if (!(s->cmds & cmd) || !strcmp(s->name, "database-url") || !strcmp(s->name, "replica-url"))
            continue;
        const char *field = (const char *)cfg + s->off;
        switch (s->type) {
        case T_STR:
            if (!strcmp(s->name, "redis-url"))
                log_info("setting %s = %s://%s%s%s:%d/%d%s", s->name, cfg->redis.tls ? "rediss" : "redis",
                         cfg->redis.user, cfg->redis.user[0] ? "@" : "", cfg->redis.host, cfg->redis.port,
                         cfg->redis.db, cfg->redis.password[0] ? " (with password)" : "");
            else
                log_info("setting %s = %s", s->name,
                         *(char *const *)field ? *(char *const *)field : "(unset)");
            break;
        case T_BOOL: log_info("setting %s = %s", s->name, *(const bool *)field ? "true" : "false"); break;
        case T_ENUM:
            log_info("setting %s = %s", s->name, *(const int *)field < 0 ? "(unset)" : s->choices[*(const int *)field]);
            break;
        case T_INT: log_info("setting %s = %ld", s->name, *(const long *)field); break;
        case T_DURATION: log_info("setting %s = %ldms", s->name, *(const long *)field); break;
        }
    }
}

void config_print_markdown(void)
{
    static const struct {
        unsigned cmd;
        const char *name;
    } cmds[] = {{CMD_RELAY, "relay"}, {CMD_SSE, "sse"},     {CMD_MIGRATE, "migrate"}, {CMD_EMIT, "emit"},
                {CMD_STATUS, "status"}, {CMD_RETRY, "retry"}, {CMD_SKIP, "skip"},       {CMD_PRUNE, "prune"},
                {CMD_REVOKE, "revoke"}};
    printf("# Configuration\n\n"
           "Generated by `outboxd settings` from the settings table in `src/config.c`; a test\n"
           "fails when this file and the binary disagree (regenerate with `make docs`).\n\n"
           "Every setting is a flag (`--name VALUE` or `--name=VALUE`; booleans take no value)\n"
           "and most also an environment variable. Flags win over the environment, the\n"
           "environment over defaults. Durations take a unit (`500ms`, `10s`, `5m`, `2h`, `7d`);\n"
           "a bare number is in the unit the table names. A bad value stops the command with a\n"
           "one-line error naming the setting and exit code 2, before anything connects.\n\n"
           "| flag | environment | default | commands | meaning |\n|---|---|---|---|---|\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const setting *s = &settings[i];
        char used[128] = "";
        for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++)
            if (s->cmds & cmds[c].cmd) {
                if (used[0])
                    strncat(used, ", ", sizeof used - strlen(used) - 1);
                strncat(used, cmds[c].name, sizeof used - strlen(used) - 1);
            }
        const char *unit = s->type != T_DURATION ? "" : s->unit_ms == 1000 ? " (bare number: s)" : " (bare number: ms)";
        printf("| `--%s` | %s | %s | %s | %s%s |\n", s->name, s->env ? s->env : "", s->def ? s->def : "(unset)",
               used, s->help, unit);
    }
}

bool config_doc_at(size_t i, config_doc *out)
{
    static const char *const bool_choices[] = {"true", "false", NULL};
    if (i >= NSETTINGS)
        return false;
    const setting *s = &settings[i];
    static const char *const value_of[] = {
        [T_STR] = "VALUE", [T_INT] = "N", [T_BOOL] = NULL, [T_DURATION] = "DURATION", [T_ENUM] = "VALUE"};
    *out = (config_doc){
        .name = s->name,
        .env = s->env,
        .def = s->def,
        .help = s->help,
        .cmds = s->cmds,
        .value = value_of[s->type],
        .choices = s->type == T_ENUM ? s->choices : s->type == T_BOOL ? bool_choices : NULL,
        .bare_unit = s->type != T_DURATION ? NULL : s->unit_ms == 1000 ? "s" : "ms",
        .ranged = s->type == T_INT || s->type == T_DURATION,
        .min = s->min,
        .max = s->max,
    };
    return true;
}
