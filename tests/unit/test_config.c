/* The settings table: defaults, environment, flags, and one-line errors for bad values. */
#include "config.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static config cfg;
static char err[512];
static char *pos[4];
static int npos;
static bool help;

static bool load(enum command cmd, int argc, char **argv)
{
    config_free(&cfg);
    err[0] = '\0';
    return config_load(&cfg, cmd, argc, argv, pos, 2, &npos, &help, err, sizeof err);
}

static int setup(void **state)
{
    (void)state;
    unsetenv("DATABASE_URL");
    unsetenv("REDIS_URL");
    unsetenv("OUTBOXD_BATCH_SIZE");
    memset(&cfg, 0, sizeof cfg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    config_free(&cfg);
    return 0;
}

static void test_defaults(void **state)
{
    (void)state;
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_int_equal(cfg.poll_interval_ms, 200);
    assert_int_equal(cfg.batch_size, 100);
    assert_int_equal(cfg.max_attempts, 3);
    assert_int_equal(cfg.stats_interval_ms, 10000);
    assert_false(cfg.no_listen);
    assert_string_equal(cfg.redis.host, "127.0.0.1");
    assert_int_equal(cfg.redis.port, 6379);
}

static void test_flag_overrides_environment(void **state)
{
    (void)state;
    setenv("OUTBOXD_BATCH_SIZE", "50", 1);
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_int_equal(cfg.batch_size, 50);
    char *argv[] = {"--batch-size", "70", "--no-listen", "--stats-interval=2s"};
    assert_true(load(CMD_RELAY, 4, argv));
    assert_int_equal(cfg.batch_size, 70);
    assert_true(cfg.no_listen);
    assert_int_equal(cfg.stats_interval_ms, 2000);
}

static void test_bad_values_name_the_setting(void **state)
{
    (void)state;
    char *zero[] = {"--batch-size", "0"};
    assert_false(load(CMD_RELAY, 2, zero));
    assert_non_null(strstr(err, "--batch-size"));
    char *junk[] = {"--batch-size", "12x"};
    assert_false(load(CMD_RELAY, 2, junk));
    assert_non_null(strstr(err, "--batch-size"));
    char *neg[] = {"--poll-interval-ms", "-5"};
    assert_false(load(CMD_RELAY, 2, neg));
    assert_non_null(strstr(err, "--poll-interval-ms"));
    char *dur[] = {"--stats-interval", "-1s"};
    assert_false(load(CMD_RELAY, 2, dur));
    assert_non_null(strstr(err, "--stats-interval"));
    char *unknown[] = {"--bogus"};
    assert_false(load(CMD_RELAY, 1, unknown));
    assert_non_null(strstr(err, "--bogus"));
    char *wrongcmd[] = {"--listen", "x:1"};
    assert_false(load(CMD_RELAY, 2, wrongcmd));
    char *missing[] = {"--batch-size"};
    assert_false(load(CMD_RELAY, 1, missing));
}

static void test_urls_are_checked_before_connecting(void **state)
{
    (void)state;
    setenv("REDIS_URL", "http://x", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    assert_non_null(strstr(err, "REDIS_URL"));
    setenv("REDIS_URL", "redis://:pw@h:7000/3", 1);
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_string_equal(cfg.redis.host, "h");
    assert_int_equal(cfg.redis.port, 7000);
    assert_int_equal(cfg.redis.db, 3);
    assert_string_equal(cfg.redis.password, "pw");
    setenv("REDIS_URL", "redis://app:s3%2Fcr%40t@h/1", 1);
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_string_equal(cfg.redis.user, "app");
    assert_string_equal(cfg.redis.password, "s3/cr@t");
    assert_int_equal(cfg.redis.db, 1);
    setenv("REDIS_URL", "redis://:s3cret@/0", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    assert_null(strstr(err, "s3cret")); /* errors never repeat the password */
    setenv("REDIS_URL", "redis://h:99999", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    unsetenv("REDIS_URL");
    setenv("DATABASE_URL", "postgresql://host:notaport:/x?bad", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    assert_non_null(strstr(err, "DATABASE_URL"));
}

/* Secure by default: without authorization the gateway stays on loopback. */
static void test_gateway_auth_settings(void **state)
{
    (void)state;
    char *open_any[] = {"--listen", "0.0.0.0:8080"};
    assert_false(load(CMD_SSE, 2, open_any));
    assert_non_null(strstr(err, "--allow-anonymous"));
    char *open6[] = {"--listen", "[::]:8080"};
    assert_false(load(CMD_SSE, 2, open6));
    char *host[] = {"--listen", "gateway.example:8080"};
    assert_false(load(CMD_SSE, 2, host));
    const char *loop[] = {"127.0.0.1:1", "127.8.9.10:1", "[::1]:1", "localhost:1", "LOCALHOST:1"};
    for (size_t i = 0; i < sizeof loop / sizeof loop[0]; i++) {
        char *argv[] = {"--listen", (char *)loop[i]};
        assert_true(load(CMD_SSE, 2, argv));
    }
    char *anon[] = {"--listen", "0.0.0.0:8080", "--allow-anonymous"};
    assert_true(load(CMD_SSE, 3, anon));
    char *jwt[] = {"--listen", "0.0.0.0:8080", "--auth", "jwt", "--auth-jwks", "/etc/keys.json"};
    assert_true(load(CMD_SSE, 6, jwt));
    assert_int_equal(cfg.auth, AUTH_JWT);
    assert_int_equal(cfg.auth_leeway_ms, 30000);
    assert_int_equal(cfg.auth_expiry_warning_ms, 60000);
    char *nokeys[] = {"--auth", "jwt"};
    assert_false(load(CMD_SSE, 2, nokeys));
    char *http_jwks[] = {"--auth", "jwt", "--auth-jwks-url", "http://idp.example/jwks"};
    assert_false(load(CMD_SSE, 4, http_jwks));
    assert_non_null(strstr(err, "https"));
    char *fwd[] = {"--auth", "forward"};
    assert_false(load(CMD_SSE, 2, fwd));
    char *cors_ok[] = {"--cors-origin", "https://a.example,http://b.example:8080"};
    assert_true(load(CMD_SSE, 2, cors_ok));
    const char *bad_cors[] = {"https://a.example/", "https://*.example", "a.example", "https://a.example,,x://y", ""};
    for (size_t i = 0; i < sizeof bad_cors / sizeof bad_cors[0]; i++) {
        char *argv[] = {"--cors-origin", (char *)bad_cors[i]};
        assert_false(load(CMD_SSE, 2, argv));
    }
    char *pub[] = {"--public-runs", "*"};
    assert_false(load(CMD_SSE, 2, pub));
    char *revoke_none[] = {"--until", "1h"};
    assert_false(load(CMD_REVOKE, 2, revoke_none));
    char *revoke_jti[] = {"--jti", "abc"};
    assert_true(load(CMD_REVOKE, 2, revoke_jti));
    assert_string_equal(cfg.until, "24h");
}

/* rediss:// is TLS, redis:// is plaintext; TLS files never upgrade a redis:// URL. */
static void test_redis_tls_and_sentinel_settings(void **state)
{
    (void)state;
    setenv("REDIS_URL", "rediss://relay:pw@cache.example:6380/2", 1);
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_true(cfg.redis.tls);
    assert_string_equal(cfg.redis.host, "cache.example");
    assert_int_equal(cfg.redis.port, 6380);
    assert_string_equal(cfg.redis.user, "relay");
    char *tls[] = {"--redis-tls-ca", "/ca.pem", "--redis-tls-cert", "/c.pem", "--redis-tls-key", "/k.pem",
                   "--redis-tls-server-name", "redis.internal"};
    assert_true(load(CMD_SSE, 8, tls));
    assert_string_equal(cfg.redis_tls_server_name, "redis.internal");
    assert_true(load(CMD_STATUS, 2, tls)); /* every command that talks to Redis takes them */
    assert_false(load(CMD_RELAY, 4, tls));
    assert_non_null(strstr(err, "--redis-tls-cert and --redis-tls-key go together"));
    setenv("REDIS_URL", "redis://cache.example:6380/2", 1);
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_false(cfg.redis.tls);
    assert_false(load(CMD_RELAY, 2, tls));
    assert_non_null(strstr(err, "--redis-tls-ca is set but"));
    assert_non_null(strstr(err, "use rediss://"));
    setenv("REDIS_URL", "redis+tls://h", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    setenv("REDIS_URL", "rediss://", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    unsetenv("REDIS_URL");

    char *sen[] = {"--redis-sentinel", "10.0.0.1:26379,[::1]:26380,s3:1", "--redis-sentinel-master", "main"};
    assert_true(load(CMD_RELAY, 4, sen));
    assert_int_equal(cfg.nsentinels, 3);
    assert_string_equal(cfg.sentinels[1].host, "::1");
    assert_int_equal(cfg.sentinels[1].port, 26380);
    assert_string_equal(cfg.sentinels[2].host, "s3");
    assert_false(load(CMD_RELAY, 2, sen));
    assert_non_null(strstr(err, "go together"));
    static const char *const bad[] = {"", "h", "h:", ":1", "h:0", "h:1,", "h:1,,g:2", "h:1 ,g:2", "h:70000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"--redis-sentinel", (char *)bad[i], "--redis-sentinel-master", "main"};
        assert_false(load(CMD_SSE, 4, argv));
        assert_non_null(strstr(err, "--redis-sentinel"));
    }
    char *wait[] = {"--redis-wait-replicas", "1", "--redis-wait-timeout", "50ms"};
    assert_true(load(CMD_RELAY, 4, wait));
    assert_int_equal(cfg.redis_wait_replicas, 1);
    assert_int_equal(cfg.redis_wait_timeout_ms, 50);
    assert_false(load(CMD_SSE, 2, wait)); /* the gateway publishes nothing */
}

/* A cluster: seeds parsed, db 0 only, never with sentinels; sharded Pub/Sub by
 * default there and global without, either one when asked for. */
static void test_redis_cluster_settings(void **state)
{
    (void)state;
    assert_true(load(CMD_RELAY, 0, NULL));
    assert_int_equal(cfg.redis_pubsub, -1);
    assert_false(config_redis_sharded(&cfg));
    char *cl[] = {"--redis-cluster", "10.0.0.1:7000,[::1]:7001"};
    assert_true(load(CMD_SSE, 2, cl));
    assert_int_equal(cfg.ncluster_seeds, 2);
    assert_string_equal(cfg.cluster_seeds[1].host, "::1");
    assert_int_equal(cfg.cluster_seeds[1].port, 7001);
    assert_true(config_redis_sharded(&cfg));
    assert_true(load(CMD_STATUS, 2, cl));
    char *global[] = {"--redis-cluster", "h:7000", "--redis-pubsub", "global"};
    assert_true(load(CMD_RELAY, 4, global));
    assert_false(config_redis_sharded(&cfg));
    char *sharded[] = {"--redis-pubsub", "sharded"};
    assert_true(load(CMD_RELAY, 2, sharded));
    assert_true(config_redis_sharded(&cfg)); /* a single Redis 7 takes SPUBLISH too */
    char *bogus[] = {"--redis-pubsub", "both"};
    assert_false(load(CMD_RELAY, 2, bogus));
    assert_non_null(strstr(err, "--redis-pubsub"));
    setenv("OUTBOXD_REDIS_CLUSTER", "h:7000", 1);
    char *sen[] = {"--redis-sentinel", "s:26379", "--redis-sentinel-master", "main"};
    assert_false(load(CMD_RELAY, 4, sen));
    assert_non_null(strstr(err, "--redis-cluster and --redis-sentinel exclude each other"));
    setenv("REDIS_URL", "redis://h:7000/3", 1);
    assert_false(load(CMD_RELAY, 0, NULL));
    assert_non_null(strstr(err, "db 0 only"));
    unsetenv("REDIS_URL");
    unsetenv("OUTBOXD_REDIS_CLUSTER");
    static const char *const bad[] = {"", "h", "h:", ":1", "h:0", "h:1,", "h:1,,g:2", "h:70000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *argv[] = {"--redis-cluster", (char *)bad[i]};
        assert_false(load(CMD_RELAY, 2, argv));
        assert_non_null(strstr(err, "--redis-cluster"));
    }
}

static void test_durations(void **state)
{
    (void)state;
    long ms;
    assert_true(config_parse_duration("250ms", 1000, &ms));
    assert_int_equal(ms, 250);
    assert_true(config_parse_duration("7d", 1000, &ms));
    assert_int_equal(ms, 7L * 86400 * 1000);
    assert_true(config_parse_duration("3", 1000, &ms));
    assert_int_equal(ms, 3000);
    assert_false(config_parse_duration("3 weeks", 1000, &ms));
    assert_false(config_parse_duration("", 1000, &ms));
    assert_false(config_parse_duration("nan", 1000, &ms));
    assert_false(config_parse_duration("inf", 1000, &ms));
    assert_false(config_parse_duration(" 5", 1000, &ms));
}

static void test_positionals_and_help(void **state)
{
    (void)state;
    char *argv[] = {"run-1", "--", "-{}"};
    assert_true(load(CMD_EMIT, 3, argv));
    assert_int_equal(npos, 2);
    assert_string_equal(pos[1], "-{}");
    char *h[] = {"--help"};
    assert_true(load(CMD_EMIT, 1, h));
    assert_true(help);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flag_overrides_environment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values_name_the_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_urls_are_checked_before_connecting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gateway_auth_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_tls_and_sentinel_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_cluster_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durations, setup, teardown),
        cmocka_unit_test_setup_teardown(test_positionals_and_help, setup, teardown),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}
