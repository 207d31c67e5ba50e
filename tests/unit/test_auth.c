/* The authorization policy (auth.c) with a key set built here, a fixed clock and no
 * network: where tokens are found, what covers a run, public runs, revocations, and
 * what an open stream's grant says as time passes. */
#include "auth.h"
#include "b64url_test.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define NOW 1800000000LL
static const unsigned char secret[32] = "k3y-for-tests-k3y-for-tests-0123";
static long long now_s = NOW;
static long long fixed_clock(void)
{
    return now_s;
}

static config cfg;
static struct event_base *base;
static char jwks_path[64];

/* An HS256 token with these claims (JSON members without braces). */
static const char *token(const char *claims)
{
    static char tok[4][4096];
    static int i;
    char *out = tok[i++ % 4];
    char json[2048], h[256], p[3072], s[128];
    b64url((const unsigned char *)"{\"alg\":\"HS256\",\"kid\":\"k\"}", 25, h);
    snprintf(json, sizeof json, "{%s}", claims);
    b64url((const unsigned char *)json, strlen(json), p);
    snprintf(out, 4096, "%s.%s", h, p);
    unsigned char mac[32];
    size_t ml;
    assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, secret, 32, (unsigned char *)out, strlen(out),
                              mac, sizeof mac, &ml));
    b64url(mac, ml, s);
    strcat(out, ".");
    strcat(out, s);
    return out;
}

static int setup(void **state)
{
    (void)state;
    char k[64];
    b64url(secret, 32, k);
    snprintf(jwks_path, sizeof jwks_path, "/tmp/outboxd-test-auth-%d.json", (int)getpid());
    FILE *f = fopen(jwks_path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"k\",\"alg\":\"HS256\",\"k\":\"%s\"}]}", k);
    fclose(f);
    cfg.auth = AUTH_JWT;
    cfg.auth_jwks = jwks_path;
    cfg.auth_cookie = "obx";
    cfg.auth_query_token = true;
    cfg.auth_leeway_ms = 30000;
    cfg.auth_expiry_warning_ms = 60000;
    cfg.auth_timeout_ms = 1000;
    cfg.public_runs = "pub-,team/*";
    auth_clock = fixed_clock;
    base = event_base_new();
    char err[256];
    if (!auth_start(base, &cfg, err, sizeof err)) {
        fprintf(stderr, "auth_start: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    auth_stop();
    event_base_free(base);
    unlink(jwks_path);
    return 0;
}

static auth_result check(const char *run, const char *authz, const char *cookie, const char *query,
                         auth_grant *g)
{
    auth_request r = {run, strlen(run), authz, cookie, query, "/runs/x/events"};
    return auth_check(&r, g, NULL, NULL);
}

static void test_token_sources_in_order(void **state)
{
    (void)state;
    size_t n;
    auth_request r = {"r", 1, "Bearer  abc.def.ghi ", "obx=cookie.tok.en", "access_token=q.u.ery", NULL};
    const char *t = auth_find_token(&r, &n);
    assert_int_equal(n, 11);
    assert_memory_equal(t, "abc.def.ghi", n);
    r.authorization = "Basic dXNlcjpwYXNz"; /* not a bearer token: the cookie is next */
    t = auth_find_token(&r, &n);
    assert_memory_equal(t, "cookie.tok.en", n);
    r.cookie = "xobx=no; obx_x=no;  obx=\"quoted.tok.en\" ; other=1";
    t = auth_find_token(&r, &n);
    assert_int_equal(n, 13);
    assert_memory_equal(t, "quoted.tok.en", n);
    r.cookie = "xobx=no; obx=";
    t = auth_find_token(&r, &n);
    assert_memory_equal(t, "q.u.ery", n);
    r.query = "last_event_id=4&x_access_token=no&access_token=a.b.c&z=1";
    t = auth_find_token(&r, &n);
    assert_int_equal(n, 5);
    assert_memory_equal(t, "a.b.c", n);
    cfg.auth_query_token = false;
    assert_null(auth_find_token(&r, &n));
    cfg.auth_query_token = true;
    r.query = "access_token=";
    assert_null(auth_find_token(&r, &n));
    r.authorization = "Bearer ";
    assert_null(auth_find_token(&r, &n));
}

static void test_runs_claim_and_public_runs(void **state)
{
    (void)state;
    auth_grant g;
    char authz[4200];
    snprintf(authz, sizeof authz, "Bearer %s", token("\"exp\":1800000300,\"runs\":[\"r-1\",\"t7/*\"]"));
    assert_int_equal(check("r-1", authz, NULL, NULL, &g), AUTH_ALLOW);
    assert_int_equal(g.exp, NOW + 300);
    assert_false(g.has_jti);
    assert_int_equal(check("t7/x", authz, NULL, NULL, &g), AUTH_ALLOW);
    assert_int_equal(check("r-12", authz, NULL, NULL, &g), AUTH_FORBIDDEN);
    assert_string_equal(auth_last_reason(), "run_not_covered");
    assert_int_equal(check("r-2", NULL, NULL, NULL, &g), AUTH_UNAUTHENTICATED);
    assert_string_equal(auth_last_reason(), "no_token");
    /* Public prefixes need no token; a trailing star is the same prefix. */
    assert_int_equal(check("pub-7", NULL, NULL, NULL, &g), AUTH_ALLOW);
    assert_int_equal(g.exp, 0);
    assert_int_equal(check("team/a", NULL, NULL, NULL, &g), AUTH_ALLOW);
    assert_int_equal(check("pub", NULL, NULL, NULL, &g), AUTH_UNAUTHENTICATED);
    assert_int_equal(check("team", NULL, NULL, NULL, &g), AUTH_UNAUTHENTICATED);
    /* Expired beyond the leeway, and not yet valid. */
    snprintf(authz, sizeof authz, "Bearer %s", token("\"exp\":1799999970,\"runs\":[\"*\"]"));
    assert_int_equal(check("r-1", authz, NULL, NULL, &g), AUTH_UNAUTHENTICATED);
    assert_string_equal(auth_last_reason(), "expired");
    snprintf(authz, sizeof authz, "Bearer %s", token("\"exp\":1800000300,\"nbf\":1800000100,\"runs\":[\"*\"]"));
    assert_int_equal(check("r-1", authz, NULL, NULL, &g), AUTH_UNAUTHENTICATED);
    now_s = NOW + 100;
    assert_int_equal(check("r-1", authz, NULL, NULL, &g), AUTH_ALLOW);
    now_s = NOW;
}

static void test_grant_over_time(void **state)
{
    (void)state;
    auth_grant g;
    char authz[4200];
    snprintf(authz, sizeof authz, "Bearer %s", token("\"exp\":1800000300,\"runs\":[\"*\"],\"jti\":\"j\""));
    assert_int_equal(check("r", authz, NULL, NULL, &g), AUTH_ALLOW);
    assert_int_equal(auth_grant_check(&g, NOW), AUTH_KEEP);
    assert_int_equal(auth_grant_check(&g, NOW + 239), AUTH_KEEP);
    assert_int_equal(auth_grant_check(&g, NOW + 240), AUTH_WARN); /* 60 s before exp */
    assert_int_equal(auth_grant_check(&g, NOW + 250), AUTH_KEEP); /* once */
    assert_int_equal(auth_grant_check(&g, NOW + 299), AUTH_KEEP);
    assert_int_equal(auth_grant_check(&g, NOW + 300), AUTH_END_EXPIRED);
    /* A grant without a token (public run, mode none) never ends. */
    auth_grant none = {0};
    assert_int_equal(auth_grant_check(&none, NOW + 1000000), AUTH_KEEP);
}

static void test_revocations(void **state)
{
    (void)state;
    auth_grant a, b, c;
    char ta[4200], tb[4200], tc[4200];
    snprintf(ta, sizeof ta, "Bearer %s", token("\"exp\":1800000300,\"runs\":[\"*\"],\"jti\":\"j-a\",\"sub\":\"alice\""));
    snprintf(tb, sizeof tb, "Bearer %s", token("\"exp\":1800000300,\"runs\":[\"*\"],\"jti\":\"j-b\",\"sub\":\"bob\""));
    snprintf(tc, sizeof tc, "Bearer %s", token("\"exp\":1800000300,\"runs\":[\"*\"],\"jti\":\"alice\""));
    assert_int_equal(check("r", ta, NULL, NULL, &a), AUTH_ALLOW);
    assert_int_equal(check("r", tb, NULL, NULL, &b), AUTH_ALLOW);
    assert_int_equal(check("r", tc, NULL, NULL, &c), AUTH_ALLOW);
    const auth_revocation list[] = {
        {false, "j-a", 3, NOW + 60},
        {true, "bob", 3, NOW - 1},    /* over */
        {true, "alice", 5, NOW + 600},
        {true, "bob", 3, NOW - 100},  /* over too, a second row of the same value */
    };
    auth_set_revocations(list, 4);
    assert_int_equal(auth_grant_check(&a, NOW), AUTH_END_REVOKED);
    assert_int_equal(auth_grant_check(&b, NOW), AUTH_KEEP);
    /* A jti equal to a revoked sub is another thing. */
    assert_int_equal(auth_grant_check(&c, NOW), AUTH_KEEP);
    assert_int_equal(check("r", ta, NULL, NULL, &a), AUTH_UNAUTHENTICATED);
    assert_string_equal(auth_last_reason(), "revoked");
    assert_int_equal(check("r", tb, NULL, NULL, &b), AUTH_ALLOW);
    /* The jti's revocation ends at its time; alice's sub revocation still holds. */
    assert_int_equal(auth_grant_check(&a, NOW + 61), AUTH_END_REVOKED);
    const auth_revocation only_jti[] = {{false, "j-a", 3, NOW + 60}};
    auth_set_revocations(only_jti, 1);
    now_s = NOW + 61;
    assert_int_equal(check("r", ta, NULL, NULL, &a), AUTH_ALLOW);
    now_s = NOW;
    auth_set_revocations(NULL, 0);
    assert_int_equal(check("r", ta, NULL, NULL, &a), AUTH_ALLOW);
}

static void test_metrics_name_reasons(void **state)
{
    (void)state;
    buf m;
    buf_init(&m, 0);
    assert_true(auth_metrics(&m));
    assert_non_null(strstr(m.data, "outboxd_sse_auth_denials_total{reason=\"no_token\"}"));
    assert_non_null(strstr(m.data, "outboxd_sse_auth_denials_total{reason=\"bad_signature\"} 0"));
    assert_non_null(strstr(m.data, "outboxd_sse_auth_denials_total{reason=\"revoked\"} 1"));
    assert_non_null(strstr(m.data, "outboxd_sse_auth_forward_call_seconds_bucket"));
    buf_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_sources_in_order),
        cmocka_unit_test(test_runs_claim_and_public_runs),
        cmocka_unit_test(test_grant_over_time),
        cmocka_unit_test(test_revocations),
        cmocka_unit_test(test_metrics_name_reasons),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
