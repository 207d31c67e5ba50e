/* relay_process_batch against a fake sink and store: order per run, marking only
 * what went out, retries, a failing event holding back only its run. */
#include "fakes.h"
#include "relay.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static config cfg;
static volatile sig_atomic_t no_stop;
static event evs[16];
static batch b;

/* Builds a batch in id order; runs[i] names the run of event i (id = i + 1). */
static void make_batch(const char *const *runs, size_t n)
{
    static char created[] = "2026-01-01T00:00:00.000000Z";
    for (size_t i = 0; i < n; i++) {
        long long seq = 1;
        for (size_t j = 0; j < i; j++)
            seq += strcmp(runs[j], runs[i]) == 0;
        evs[i] = (event){.id = (long long)i + 1, .seq = seq, .run_id = runs[i],
                         .run_id_len = strlen(runs[i]), .created_at = created, .payload = "{}",
                         .payload_len = 2};
    }
    b.ev = evs;
    b.n = n;
    b.cap = n;
}

static const char *held_ids[RELAY_HELD_MAX];
static size_t held_lens[RELAY_HELD_MAX];
static int nheld;

static batch_outcome process(void)
{
    relay_ctx rc;
    store *s = store_new("", "", 0);
    sink *k = sink_new(NULL, 0, 0, "");
    relay_ctx_init(&rc, &cfg, s, k, -1, &no_stop);
    batch_outcome o = relay_process_batch(&rc, &b);
    nheld = relay_held_now(&rc, held_ids, held_lens);
    if (nheld)
        held_ids[0] = strcmp(held_ids[0], "a") == 0 ? "a" : "other"; /* freed with rc */
    relay_ctx_free(&rc);
    store_free(s);
    sink_free(k);
    return o;
}

static int setup(void **state)
{
    (void)state;
    fake_reset();
    memset(&cfg, 0, sizeof cfg);
    cfg.max_attempts = 3;
    no_stop = 0;
    return 0;
}

static const char *const three_runs[] = {"a", "b", "a", "c", "b", "a"};

static void test_publishes_all_in_id_order_and_marks_them(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    batch_outcome o = process();
    assert_int_equal(o.published, 6);
    assert_int_equal(o.pending, 0);
    assert_int_equal(fw.ndelivered, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(fw.delivered[i], i + 1);
    assert_int_equal(fw.nmarked, 6);
    assert_int_equal(fw.nfailed, 0);
}

static void test_transient_failure_is_retried_in_order(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3; /* run a, seq 2 */
    fw.fail_times = 1;
    batch_outcome o = process();
    assert_int_equal(o.published, 6);
    assert_int_equal(fw.ndelivered, 6);
    /* Run a must come out as ids 1, 3, 6 in that order. */
    int pos1 = -1, pos3 = -1, pos6 = -1;
    for (int i = 0; i < fw.ndelivered; i++) {
        if (fw.delivered[i] == 1) pos1 = i;
        if (fw.delivered[i] == 3) pos3 = i;
        if (fw.delivered[i] == 6) pos6 = i;
    }
    assert_true(pos1 < pos3);
    assert_true(pos3 < pos6);
    assert_int_equal(fw.nmarked, 6);
}

static void test_persistent_failure_holds_back_only_its_run(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3;
    fw.fail_times = -1;
    batch_outcome o = process();
    assert_int_equal(o.published, 4); /* a1, b1, c1, b2 */
    assert_int_equal(o.pending, 2);   /* a2 failed, a3 waits behind it */
    /* a1, b1, c1, b2 delivered; a2 (id 3) and a3 (id 6) not. */
    for (int i = 0; i < fw.ndelivered; i++) {
        assert_int_not_equal(fw.delivered[i], 3);
        assert_int_not_equal(fw.delivered[i], 6);
    }
    for (int i = 0; i < fw.nmarked; i++) {
        assert_int_not_equal(fw.marked[i], 3);
        assert_int_not_equal(fw.marked[i], 6);
    }
    /* The failure is recorded on the event that failed, not on the one waiting behind it. */
    assert_int_equal(fw.nfailed, 1);
    assert_int_equal(fw.failed_ids[0], 3);
    assert_int_equal(fw.failed_attempts, 3);
    /* Its run is held back from the next fetches; no other run is. */
    assert_int_equal(o.event_failures, 1);
    assert_int_equal(nheld, 1);
    assert_string_equal(held_ids[0], "a");
}

static void test_run_without_route_waits_without_retries(void **state)
{
    (void)state;
    /* Run a's shard has no primary: its events wait for a later batch, offered once
     * each (no retries that would hold the batch up), not counted as refused; the
     * other runs go out. */
    make_batch(three_runs, 6);
    fw.noroute_run = "a";
    batch_outcome o = process();
    assert_int_equal(o.published, 3); /* b1, c1, b2 */
    assert_int_equal(o.pending, 3);
    assert_int_equal(fw.noroute_offered, 3);
    assert_int_equal(o.event_failures, 0);
    /* Parked: left out of the next fetches for a moment, alone. */
    assert_int_equal(nheld, 1);
    assert_string_equal(held_ids[0], "a");
    for (int i = 0; i < fw.nmarked; i++)
        assert_true(fw.marked[i] == 2 || fw.marked[i] == 4 || fw.marked[i] == 5);
}

static void test_lost_reply_is_not_delivered_twice(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.cut_after = 3;         /* the third command runs, then the connection drops */
    fw.cut_loses_reply = true;
    batch_outcome o = process();
    assert_int_equal(o.published, 6);
    assert_int_equal(fw.ndelivered, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(fw.delivered[i], i + 1);
    assert_int_equal(fw.connects, 2);
    assert_int_equal(fw.nmarked, 6);
}

static void test_redis_down_marks_nothing_and_records_attempts(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.refuse_connect = true;
    batch_outcome o = process();
    assert_int_equal(o.published, 0);
    assert_int_equal(o.pending, 6);
    assert_true(o.redis_lost);
    assert_int_equal(fw.nmarked, 0);
    /* One failure record per run: its first event. An outage holds back no run. */
    assert_int_equal(fw.nfailed, 3);
    assert_int_equal(o.event_failures, 0);
    assert_int_equal(nheld, 0);
}

static void test_failed_mark_reports_db_lost_and_redelivery_is_suppressed(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_mark = true;
    batch_outcome o = process();
    assert_true(o.db_lost);
    assert_int_equal(o.published, 0);
    /* The rows come back in the next fetch; the marks turn them into duplicates. */
    fw.fail_mark = false;
    o = process();
    assert_int_equal(o.published, 6);
    assert_int_equal(fw.ndelivered, 6);
    assert_int_equal(fw.nmarked, 6);
}

static void test_next_batch_drops_runs_waiting_in_the_current_one(void **state)
{
    (void)state;
    make_batch(three_runs, 6); /* a b a c b a */
    fw.fail_id = 3;            /* a2 fails: a waits */
    fw.fail_times = -1;
    relay_ctx rc;
    store *s = store_new("", "", 0);
    sink *k = sink_new(NULL, 0, 0, "");
    relay_ctx_init(&rc, &cfg, s, k, -1, &no_stop);
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 4);
    /* The batch fetched meanwhile holds later events of a, b and c. */
    static event later[4];
    static const char *const runs[] = {"c", "a", "b", "a"};
    for (int i = 0; i < 4; i++)
        later[i] = (event){.id = 10 + i, .seq = 9, .run_id = runs[i], .run_id_len = 1, .payload = "{}", .payload_len = 2};
    batch next = {.ev = later, .n = 4, .cap = 4};
    relay_drop_waiting_runs(&rc, &b, &next);
    assert_int_equal(next.n, 2);
    assert_string_equal(next.ev[0].run_id, "c");
    assert_string_equal(next.ev[1].run_id, "b");
    relay_ctx_free(&rc);
    store_free(s);
    sink_free(k);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_publishes_all_in_id_order_and_marks_them, setup),
        cmocka_unit_test_setup(test_transient_failure_is_retried_in_order, setup),
        cmocka_unit_test_setup(test_persistent_failure_holds_back_only_its_run, setup),
        cmocka_unit_test_setup(test_lost_reply_is_not_delivered_twice, setup),
        cmocka_unit_test_setup(test_redis_down_marks_nothing_and_records_attempts, setup),
        cmocka_unit_test_setup(test_failed_mark_reports_db_lost_and_redelivery_is_suppressed, setup),
        cmocka_unit_test_setup(test_next_batch_drops_runs_waiting_in_the_current_one, setup),
        cmocka_unit_test_setup(test_run_without_route_waits_without_retries, setup),
    };
    return cmocka_run_group_tests_name("relay", tests, NULL, NULL);
}
