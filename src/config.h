/* Settings of every command: one table (config.c) gives each setting its name, type,
 * default, bounds, environment variable and help text. Flags and environment
 * variables go through the same setter; --help and the start-up log print from it. */
#ifndef OUTBOXD_CONFIG_H
#define OUTBOXD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define WUR __attribute__((warn_unused_result))

enum command {
    CMD_MIGRATE = 1 << 0,
    CMD_RELAY = 1 << 1,
    CMD_SSE = 1 << 2,
    CMD_EMIT = 1 << 3,
    CMD_STATUS = 1 << 4,
    CMD_RETRY = 1 << 5,
    CMD_SKIP = 1 << 6,
    CMD_PRUNE = 1 << 7,
    CMD_REVOKE = 1 << 8,
};
#define CMD_ALL                                                                                              \
    (CMD_MIGRATE | CMD_RELAY | CMD_SSE | CMD_EMIT | CMD_STATUS | CMD_RETRY | CMD_SKIP | CMD_PRUNE | CMD_REVOKE)

/* The gateway's authorization modes (--auth). */
enum auth_mode { AUTH_NONE, AUTH_JWT, AUTH_FORWARD };

typedef struct redis_url {
    char host[256];
    int port;
    int db;
    bool tls;           /* rediss:// */
    char user[128];     /* empty: AUTH with the password alone */
    char password[256];
    /* Not from the URL: set on a copy by a caller whose connection needs no primary
     * (reading a cluster's slot map, global Pub/Sub subscriptions): the set-up then
     * does not check ROLE. */
    bool any_role;
} redis_url;

/* A HOST:PORT, e.g. one of --redis-sentinel's. */
typedef struct redis_addr {
    char host[256];
    int port;
} redis_addr;
#define REDIS_MAX_SENTINELS 16
#define REDIS_MAX_CLUSTER_SEEDS 16

/* --redis-pubsub: SPUBLISH/SSUBSCRIBE or PUBLISH/SUBSCRIBE (unset: -1). */
enum redis_pubsub { REDIS_PUBSUB_SHARDED, REDIS_PUBSUB_GLOBAL };
enum seq_trigger { SEQ_TRIGGER_AUTO, SEQ_TRIGGER_C, SEQ_TRIGGER_PLPGSQL };

typedef struct config {
    char *database_url;
    char *redis_url;
    int log_level;
    int log_format;

    long poll_interval_ms;
    long notify_coalesce_ms;
    long batch_size;
    long max_batch_size;
    long max_attempts;
    bool no_listen;
    long stats_interval_ms;
    long shutdown_timeout_ms;
    long pg_timeout_ms;
    long redis_timeout_ms;
    long mark_ttl_ms;
    char *redis_tls_ca;
    char *redis_tls_cert;
    char *redis_tls_key;
    char *redis_tls_server_name;
    char *redis_sentinel;
    char *redis_sentinel_master;
    long redis_wait_replicas;
    long redis_wait_timeout_ms;
    char *redis_cluster;
    int redis_pubsub;    /* enum redis_pubsub, or -1 when unset */

    char *listen;
    long heartbeat_ms;
    long client_buffer;
    long stream_coalesce_ms;
    char *cors_origin;
    long max_clients;
    char *replica_url;
    long workers;
    long replica_wait_ms;

    int auth;            /* enum auth_mode */
    char *auth_jwks;
    char *auth_jwks_url;
    char *auth_audience;
    char *auth_issuer;
    long auth_leeway_ms;
    char *auth_cookie;
    bool auth_query_token;
    long auth_expiry_warning_ms;
    char *auth_url;
    long auth_timeout_ms;
    long auth_cache_size;
    bool allow_anonymous;
    char *public_runs;

    char *jti;
    char *sub;
    char *until;

    bool json;
    bool new_epoch; /* migrate: write a new epoch (after restoring a backup) */
    int seq_trigger; /* migrate: enum seq_trigger */
    char *reason;
    char *http_listen;
    long retention_ms;
    long counter_retention_ms;
    long vacuum_after;
    long older_than_ms;

    redis_url redis; /* parsed from redis_url by config_load */
    redis_addr sentinels[REDIS_MAX_SENTINELS]; /* parsed from redis_sentinel */
    int nsentinels;
    redis_addr cluster_seeds[REDIS_MAX_CLUSTER_SEEDS]; /* parsed from redis_cluster */
    int ncluster_seeds;
} config;

/* Whether messages go out with SPUBLISH and are read with SSUBSCRIBE: --redis-pubsub
 * sharded, or unset with --redis-cluster. */
bool config_redis_sharded(const config *cfg);

/* Fills cfg from defaults, then the environment, then argv (flags of command cmd).
 * Positional arguments are stored in pos (up to max_pos; *npos gets the count).
 * On a usage or validation error writes one line naming the setting to err and
 * returns false. Sets *help when --help was given. Strings in cfg are owned by cfg:
 * release them with config_free. */
bool config_load(config *cfg, enum command cmd, int argc, char **argv, char **pos, int max_pos,
                 int *npos, bool *help, char *err, size_t errlen) WUR;
void config_free(config *cfg);

/* Prints the options of cmd with defaults and environment variables. */
void config_print_help(enum command cmd, const char *usage, const char *about);
/* Prints every setting as Markdown (docs/CONFIGURATION.md is this output). */
void config_print_markdown(void);

/* One setting as the generated manuals (man page, shell completion) describe it. */
typedef struct config_doc {
    const char *name;            /* flag without the leading -- */
    const char *env;             /* environment variable, or NULL */
    const char *def;             /* default as a user would write it, or NULL (unset) */
    const char *help;
    unsigned cmds;               /* commands that take it (enum command bits) */
    const char *value;           /* placeholder of its value; NULL: a flag without one */
    const char *const *choices;  /* the allowed values (NULL-terminated), or NULL */
    const char *bare_unit;       /* a duration's unit of a bare number ("s", "ms"), or NULL */
    bool ranged;                 /* min..max bound it (durations in ms) */
    long min, max;
} config_doc;
/* Fills *out with the i-th setting of the table; false past the last. The strings
 * are static. */
bool config_doc_at(size_t i, config_doc *out);
/* Logs the effective settings of cmd at info level, hiding passwords. */
void config_log(const config *cfg, enum command cmd);

/* redis://[[user]:password@]host[:port][/db] (or rediss://, TLS) -> out (user and
 * password percent-decoded). Returns false with a reason that never repeats the
 * password. */
bool config_parse_redis_url(const char *url, redis_url *out, char *err, size_t errlen) WUR;
/* Splits HOST:PORT (or [IPv6]:PORT) into host and port. */
bool config_parse_listen(const char *s, char *host, size_t cap, int *port) WUR;
/* Whether a --listen host (as config_parse_listen gives it) is a loopback address:
 * localhost, 127.0.0.0/8 or ::1. Names other than localhost are not resolved. */
bool config_host_is_loopback(const char *host);
/* HOST:PORT[,HOST:PORT...] -> out[0..*n) (at most max); false on a bad or empty item
 * or too many. */
bool config_parse_addrs(const char *s, redis_addr *out, int max, int *n) WUR;
/* Parses "250ms", "10s", "5m", "2h", "7d" or a bare number of default_unit_ms each. */
bool config_parse_duration(const char *s, long default_unit_ms, long *out_ms) WUR;

#endif
