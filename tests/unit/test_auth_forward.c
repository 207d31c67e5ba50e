/* The forward-auth cache (auth_forward.c) with a fake HTTP client (the test answers
 * each call itself) and a fixed clock: one call per key however many wait, answers
 * kept for their max-age, open streams asked again before expiry, denials reported,
 * outages cached briefly, the bound on unused entries. */
#include "auth_forward.h"
#include "http_client.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- the fake HTTP client ----------------------------------------------------------- */

#define MAX_CALLS 64
static struct {
    http_done_fn cb;
    void *arg;
    char run[64], cookie[64], uri[128];
} calls[MAX_CALLS];
static int ncalls;

static const char *header(const char *const *h, const char *name)
{
    for (int i = 0; h && h[i]; i += 2)
        if (!strcmp(h[i], name))
            return h[i + 1];
    return NULL;
}

bool http_get(struct event_base *base, const char *url, const char *const *headers, long timeout_ms,
              size_t max_body, http_done_fn cb, void *arg, char *err, size_t errlen)
{
    (void)base, (void)url, (void)timeout_ms, (void)max_body, (void)err, (void)errlen;
    assert_true(ncalls < MAX_CALLS);
    calls[ncalls].cb = cb;
    calls[ncalls].arg = arg;
    const char *c = header(headers, "Cookie"), *u = header(headers, "X-Original-URI");
    const char *run = header(headers, "X-Outboxd-Run-Id");
    assert_non_null(run);
    snprintf(calls[ncalls].run, sizeof calls[ncalls].run, "%s", run ? run : "");
    snprintf(calls[ncalls].cookie, sizeof calls[ncalls].cookie, "%s", c ? c : "(none)");
    snprintf(calls[ncalls].uri, sizeof calls[ncalls].uri, "%s", u ? u : "");
    ncalls++;
    return true;
}

bool http_url_ok(const char *url)
{
    (void)url;
    return true;
}

void http_client_stop(void)
{
}

/* Answers call i with an HTTP status (0: no answer) and a max-age (-1: none). */
static void answer(int i, int status, long max_age)
{
    http_response r = {.status = status, .max_age = max_age, .error = status ? NULL : "refused", .body = ""};
    calls[i].cb(&r, calls[i].arg);
}

/* ---- a fixed clock and a recorder of answers ------------------------------------------ */

static long long now_ms = 1000000;
static long long clock_ms(void)
{
    return now_ms;
}
static int changed;
static void on_changed(void)
{
    changed++;
}

typedef struct got {
    int n;
    fwd_answer last;
    fwd_entry *e;
} got;
static void done(void *arg, fwd_answer a, fwd_entry *e)
{
    got *g = arg;
    g->n++;
    g->last = a;
    if (e) {
        if (g->e)
            fwd_unref(e); /* keep one reference per recorder */
        else
            g->e = e;
    }
}

static fwd_answer check(const char *run, const char *cookie, got *g, fwd_entry **e)
{
    fwd_request r = {run, strlen(run), cookie, NULL, "/runs/x/events?last_event_id=1"};
    fwd_entry *tmp;
    return fwd_check(&r, e ? e : &tmp, done, g);
}

static int setup(void **state)
{
    (void)state;
    ncalls = 0;
    changed = 0;
    now_ms = 1000000;
    fwd_settings s = {"http://auth.test/check", 1000, 100, on_changed, clock_ms};
    return fwd_start(NULL, &s) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    fwd_stop();
    return 0;
}

static void test_one_call_for_many_waiters(void **state)
{
    (void)state;
    got g = {0};
    for (int i = 0; i < 500; i++)
        assert_int_equal(check("run-1", "session=a", &g, NULL), FWD_PENDING);
    assert_int_equal(ncalls, 1);
    assert_string_equal(calls[0].run, "run-1");
    assert_string_equal(calls[0].cookie, "session=a");
    answer(0, 200, 30);
    assert_int_equal(g.n, 500);
    assert_int_equal(g.last, FWD_ALLOW);
    /* Fresh: answered from the cache, no call. */
    fwd_entry *e;
    assert_int_equal(check("run-1", "session=a", &g, &e), FWD_ALLOW);
    assert_int_equal(ncalls, 1);
    fwd_unref(e);
    /* Another run, another cookie, no cookie: other keys. */
    assert_int_equal(check("run-2", "session=a", &g, NULL), FWD_PENDING);
    assert_int_equal(check("run-1", "session=b", &g, NULL), FWD_PENDING);
    assert_int_equal(check("run-1", NULL, &g, NULL), FWD_PENDING);
    assert_int_equal(ncalls, 4);
    assert_string_equal(calls[3].cookie, "(none)");
    answer(1, 200, -1);
    answer(2, 403, -1);
    answer(3, 401, -1);
    assert_int_equal(check("run-1", "session=b", &g, NULL), FWD_DENY_403);
    assert_int_equal(check("run-1", NULL, &g, NULL), FWD_DENY_401);
    fwd_stats st;
    fwd_get_stats(&st);
    assert_int_equal(st.calls, 4);
    assert_int_equal(st.cache_hits, 3);
    fwd_unref(g.e);
}

static void test_ttls(void **state)
{
    (void)state;
    got g = {0};
    check("r", "session=a", &g, NULL);
    answer(0, 204, -1); /* no max-age: 30 s */
    now_ms += 29999;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_ALLOW);
    now_ms += 1;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_PENDING);
    assert_int_equal(ncalls, 2);
    answer(1, 401, -1); /* denials: 5 s */
    now_ms += 4999;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_DENY_401);
    now_ms += 1;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_PENDING);
    answer(2, 0, -1); /* no answer: unavailable for 1 s */
    assert_int_equal(g.last, FWD_UNAVAILABLE);
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_UNAVAILABLE);
    assert_int_equal(ncalls, 3);
    now_ms += 1000;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_PENDING);
    answer(3, 503, 3600); /* a 5xx is an outage whatever it says about caching */
    assert_int_equal(g.last, FWD_UNAVAILABLE);
    now_ms += 1000;
    assert_int_equal(check("r", "session=a", &g, NULL), FWD_PENDING);
    answer(4, 302, -1); /* a redirect to a login page denies */
    assert_int_equal(g.last, FWD_DENY_403);
    fwd_unref(g.e);
}

static void test_open_streams_rechecked_before_expiry(void **state)
{
    (void)state;
    got g = {0};
    check("r", "session=a", &g, NULL);
    answer(0, 200, 10);
    fwd_entry *e = g.e; /* the stream's reference */
    now_ms += 9249;
    assert_int_equal(fwd_verdict(e), FWD_ALLOW);
    assert_int_equal(ncalls, 1);
    now_ms += 1; /* 750 ms before expiry: ask again, keep going meanwhile */
    assert_int_equal(fwd_verdict(e), FWD_ALLOW);
    assert_int_equal(ncalls, 2);
    assert_int_equal(fwd_verdict(e), FWD_ALLOW);
    assert_int_equal(ncalls, 2); /* one call in flight */
    /* A new stream of the same key waits for that call. */
    got g2 = {0};
    assert_int_equal(check("r", "session=a", &g2, NULL), FWD_PENDING);
    answer(1, 401, -1);
    assert_int_equal(changed, 1); /* open streams are told at once */
    assert_int_equal(fwd_verdict(e), FWD_DENY_401);
    assert_int_equal(g2.last, FWD_DENY_401);
    fwd_unref(e);
}

/* With --workers the answers are shared (fwd_share_init): the shared slot holds the
 * stream's own answer until it expires, and the early recheck must still call, not
 * take that answer again (which left a revoked cookie's stream open up to a sweep
 * past its TTL). Last: sharing stays on for the process. */
static void test_shared_streams_rechecked_before_expiry(void **state)
{
    assert_true(fwd_share_init());
    test_open_streams_rechecked_before_expiry(state);
}

static void test_unused_entries_bounded(void **state)
{
    (void)state;
    fwd_stop();
    fwd_settings s = {"http://auth.test/check", 1000, 2, on_changed, clock_ms};
    assert_true(fwd_start(NULL, &s));
    got g = {0};
    const char *cookies[] = {"session=1", "session=2", "session=3", "session=4"};
    for (int i = 0; i < 4; i++) {
        check("r", cookies[i], &g, NULL);
        answer(i, 403, 60);
    }
    /* Cache size 2: the two oldest answers are gone, so they are asked again. */
    assert_int_equal(check("r", cookies[3], &g, NULL), FWD_DENY_403);
    assert_int_equal(check("r", cookies[2], &g, NULL), FWD_DENY_403);
    assert_int_equal(ncalls, 4);
    assert_int_equal(check("r", cookies[0], &g, NULL), FWD_PENDING);
    assert_int_equal(ncalls, 5);
    answer(4, 403, 60);
    /* An entry a stream holds is never evicted. */
    check("held", "session=h", &g, NULL);
    answer(5, 200, 60);
    fwd_entry *held = g.e;
    for (int i = 0; i < 3; i++) { /* three new keys push every unused answer out */
        char c[32];
        snprintf(c, sizeof c, "session=x%d", i);
        check("r", c, &g, NULL);
        answer(ncalls - 1, 403, 60);
    }
    int before = ncalls;
    fwd_entry *e;
    assert_int_equal(check("held", "session=h", &g, &e), FWD_ALLOW);
    assert_int_equal(ncalls, before);
    fwd_unref(e);
    fwd_unref(held);
}

static void test_waiters_told_at_shutdown(void **state)
{
    (void)state;
    got g = {0};
    check("r", "session=a", &g, NULL);
    check("r", "session=a", &g, NULL);
    fwd_cancel_waiters();
    assert_int_equal(g.n, 2);
    assert_int_equal(g.last, FWD_UNAVAILABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_call_for_many_waiters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ttls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_streams_rechecked_before_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unused_entries_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_waiters_told_at_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_streams_rechecked_before_expiry, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
