/* relay_batch.c against a fake sink and store: order per run, done only what went
 * out, retries, a failing event holding back only its run, and which rows of a
 * cycle go out (published ones and held runs stay). */
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
static relay_ctx rc;
static store *fs;
static sink *fk;

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

static int setup(void **state)
{
    (void)state;
    fake_reset();
    memset(&cfg, 0, sizeof cfg);
    cfg.max_attempts = 3;
    no_stop = 0;
    fs = store_new("", "", 0);
    fk = sink_new(NULL, &cfg, "", false);
    relay_ctx_init(&rc, &cfg, fs, fk, -1, &no_stop);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    relay_ctx_free(&rc);
    store_free(fs);
    sink_free(fk);
    return 0;
}

static const char *const three_runs[] = {"a", "b", "a", "c", "b", "a"};

/* Where id was delivered (-1 if not). */
static int delivered_at(long long id)
{
    for (int i = 0; i < fw.ndelivered; i++)
        if (fw.delivered[i] == id)
            return i;
    return -1;
}

static bool is_done(const batch_outcome *o, long long id)
{
    for (size_t i = 0; i < o->published; i++)
        if (rc.done_ids[i] == id)
            return true;
    return false;
}

static void test_publishes_all_in_order_per_run(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 6);
    assert_int_equal(o.pending, 0);
    assert_int_equal(o.resume_id, 0);
    assert_int_equal(fw.ndelivered, 6);
    /* a: ids 1, 3, 6; b: 2, 5. */
    assert_true(delivered_at(1) < delivered_at(3));
    assert_true(delivered_at(3) < delivered_at(6));
    assert_true(delivered_at(2) < delivered_at(5));
    for (long long id = 1; id <= 6; id++)
        assert_true(is_done(&o, id));
    assert_int_equal(fw.nfailed, 0);
}

static void test_events_of_a_run_go_out_together(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    assert_int_equal(relay_publish_batch(&rc, &b).published, 6);
    /* One call per run: a run's events are consecutive in what the sink was given. */
    int a = delivered_at(1);
    assert_int_equal(delivered_at(3), a + 1);
    assert_int_equal(delivered_at(6), a + 2);
    assert_int_equal(delivered_at(5), delivered_at(2) + 1);
}

static void test_transient_failure_is_retried_in_order(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3; /* run a, seq 2 */
    fw.fail_times = 1;
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 6);
    assert_int_equal(fw.ndelivered, 6);
    assert_true(delivered_at(1) < delivered_at(3));
    assert_true(delivered_at(3) < delivered_at(6));
}

/* Two runs refused in one batch, each for its own reason: each failure is recorded
 * (and its run held) with its own run's reason, not with the batch's last error. */
static void test_each_run_keeps_its_own_reason(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3; /* a2 */
    fw.fail_times = -1;
    fw.fail_id2 = 2; /* b1 */
    batch_outcome o = relay_publish_batch(&rc, &b);
    relay_record_failures(&rc);
    assert_int_equal(o.event_failures, 2);
    assert_int_equal(fw.nfailed, 2);
    for (int i = 0; i < 2; i++)
        assert_string_equal(fw.failed_errors[i], fw.failed_ids[i] == 3 ? "refused a" : "refused b");
    assert_true(fw.failed_ids[0] + fw.failed_ids[1] == 5);
}

static void test_persistent_failure_holds_back_only_its_run(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3;
    fw.fail_times = -1;
    batch_outcome o = relay_publish_batch(&rc, &b);
    relay_record_failures(&rc);
    assert_int_equal(o.published, 4); /* a1, b1, c1, b2 */
    assert_int_equal(o.pending, 2);   /* a2 failed, a3 waits behind it */
    assert_int_equal(delivered_at(3), -1);
    assert_int_equal(delivered_at(6), -1);
    assert_false(is_done(&o, 3));
    assert_false(is_done(&o, 6));
    /* The failure is recorded on the event that failed, not on the one waiting behind it. */
    assert_int_equal(fw.nfailed, 1);
    assert_int_equal(fw.failed_ids[0], 3);
    assert_int_equal(fw.failed_attempts, 3);
    /* Its run is held back, from the event that failed; nothing needs reading again. */
    assert_int_equal(o.event_failures, 1);
    assert_int_equal(o.resume_id, 0);
    assert_int_equal(rc.nheld, 1);
    assert_string_equal(rc.held[0].run_id, "a");
    assert_int_equal(rc.held[0].from_seq, 2);
    assert_int_equal(rc.held[0].from_id, 3);
}

static void test_run_without_route_waits_without_retries(void **state)
{
    (void)state;
    /* Run a's Redis Cluster shard has no primary: its events wait for a later batch,
     * offered once each (no retries that would hold the batch up), not counted as
     * refused; the run is parked from its first event and the other runs go out. */
    make_batch(three_runs, 6);
    fw.noroute_run = "a";
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 3); /* b1, c1, b2 */
    assert_int_equal(o.pending, 3);
    assert_int_equal(fw.noroute_offered, 3);
    assert_int_equal(o.event_failures, 0);
    assert_int_equal(delivered_at(1), -1);
    assert_int_equal(delivered_at(3), -1);
    assert_int_equal(delivered_at(6), -1);
    assert_int_equal(o.resume_id, 0);
    assert_int_equal(rc.nheld, 1);
    assert_string_equal(rc.held[0].run_id, "a");
    assert_int_equal(rc.held[0].from_seq, 1);
    assert_int_equal(rc.held[0].from_id, 1);
}

static void test_lost_reply_is_not_delivered_twice(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.cut_after = 3;         /* the third command runs, then the connection drops */
    fw.cut_loses_reply = true;
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 6);
    assert_int_equal(fw.ndelivered, 6);
    assert_int_equal(fw.connects, 2);
}

static void test_redis_down_reads_again_and_holds_no_run(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.refuse_connect = true;
    batch_outcome o = relay_publish_batch(&rc, &b);
    relay_record_failures(&rc);
    assert_int_equal(o.published, 0);
    assert_int_equal(o.pending, 6);
    assert_true(o.redis_lost);
    /* Everything is read again from the first id. */
    assert_int_equal(o.resume_id, 1);
    /* One failure record per run: its first event. An outage holds back no run. */
    assert_int_equal(fw.nfailed, 3);
    assert_int_equal(o.event_failures, 0);
    assert_int_equal(rc.nheld, 0);
}

/* Redis refusing everyone (NOREPLICAS, OOM, ...: PUB_REFUSED) is an outage: no run is
 * held back, everything is read again from the first id, and once Redis takes events
 * again they all go out at once, in order. */
static void test_refused_by_everyone_holds_no_run(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.refuse_calls = -1;
    batch_outcome o = relay_publish_batch(&rc, &b);
    relay_record_failures(&rc);
    assert_int_equal(fw.publishes, 3); /* retried like an outage */
    assert_int_equal(o.published, 0);
    assert_int_equal(o.pending, 6);
    assert_int_equal(fw.ndelivered, 0);
    assert_true(o.redis_refused);
    assert_false(o.redis_lost);
    assert_int_equal(o.resume_id, 1);
    assert_int_equal(o.event_failures, 0);
    assert_int_equal(rc.nheld, 0);
    assert_int_equal(fw.nfailed, 3); /* recorded on each run's first event */

    fw.refuse_calls = 0;
    o = relay_publish_batch(&rc, &b);
    assert_int_equal(o.published, 6);
    assert_false(o.redis_refused);
    assert_int_equal(rc.nheld, 0);
    assert_int_equal(fw.ndelivered, 6);
    assert_true(delivered_at(1) < delivered_at(3) && delivered_at(3) < delivered_at(6));
    assert_true(delivered_at(2) < delivered_at(5));
}

/* Refused in the first attempt only: the retry within the batch delivers it all. */
static void test_refusal_ending_within_a_batch(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.refuse_calls = 1;
    batch_outcome o = relay_publish_batch(&rc, &b);
    assert_int_equal(fw.publishes, 2);
    assert_int_equal(o.published, 6);
    assert_int_equal(o.pending, 0);
    assert_int_equal(rc.nheld, 0);
}

/* Rows as a cycle returns them: ids and flags given, runs from three_runs. */
static batch rows_of(const unsigned *flags, size_t n)
{
    make_batch(three_runs, n);
    for (size_t i = 0; i < n; i++)
        evs[i].flags = flags[i];
    return b;
}

static void test_take_rows_skips_published_and_held(void **state)
{
    (void)state;
    /* Hold run a: its event 3 failed. */
    make_batch(three_runs, 6);
    fw.fail_id = 3;
    fw.fail_times = -1;
    relay_publish_batch(&rc, &b);
    assert_int_equal(rc.nheld, 1);
    const unsigned f[] = {STORE_ROW_FRONTIER | STORE_ROW_DONE, STORE_ROW_FRONTIER, STORE_ROW_FRONTIER,
                          STORE_ROW_GAP, STORE_ROW_FRONTIER, STORE_ROW_FRONTIER};
    batch rows = rows_of(f, 6), out;
    batch_init(&out);
    assert_true(relay_take_rows(&rc, &rows, 100, &out));
    /* Left: 2 (b), 4 (c), 5 (b). Gone: 1 (published), 3 and 6 (run a is held). */
    assert_int_equal(out.n, 3);
    assert_int_equal(out.ev[0].id, 2);
    assert_int_equal(out.ev[1].id, 4);
    assert_int_equal(out.ev[2].id, 5);
    batch_free(&out);
}

static void test_held_run_catches_up_by_its_own_rows(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3;
    fw.fail_times = 1; /* fails through one batch only */
    cfg.max_attempts = 1;
    relay_publish_batch(&rc, &b);
    assert_int_equal(rc.nheld, 1);
    /* The next cycle asks for run a's rows from seq 2 (ids 3 and 6): fewer than the
     * limit, so they are all of them; the frontier read 6 as well. */
    rc.held[0].asked = true;
    const unsigned f[] = {STORE_ROW_DONE, 0, STORE_ROW_CATCHUP, 0, 0, STORE_ROW_CATCHUP | STORE_ROW_FRONTIER};
    batch rows = rows_of(f, 6), out;
    batch_init(&out);
    assert_true(relay_take_rows(&rc, &rows, 100, &out));
    assert_int_equal(out.n, 5);
    fw.ndelivered = 0;
    batch_outcome o = relay_publish_batch(&rc, &out);
    assert_int_equal(o.published, 5);
    assert_int_equal(fw.ndelivered, 2); /* the others went out with the first batch */
    assert_true(delivered_at(3) < delivered_at(6));
    /* It went out whole: the run is free again. */
    assert_int_equal(rc.nheld, 0);
    batch_free(&out);
}

static void test_held_run_with_more_rows_stays_caught_up_partly(void **state)
{
    (void)state;
    make_batch(three_runs, 6);
    fw.fail_id = 3;
    fw.fail_times = 1;
    cfg.max_attempts = 1;
    relay_publish_batch(&rc, &b);
    rc.held[0].asked = true;
    /* A limit of 1 row per run: run a's catch-up brought 3 only, so 6 (read by the
     * frontier) must wait for the next catch-up. */
    const unsigned f[] = {STORE_ROW_DONE, 0, STORE_ROW_CATCHUP, 0, 0, STORE_ROW_FRONTIER};
    batch rows = rows_of(f, 6), out;
    batch_init(&out);
    assert_true(relay_take_rows(&rc, &rows, 1, &out));
    for (size_t i = 0; i < out.n; i++)
        assert_int_not_equal(out.ev[i].id, 6);
    batch_outcome o = relay_publish_batch(&rc, &out);
    assert_true(is_done(&o, 3));
    assert_int_equal(rc.nheld, 1);
    assert_int_equal(rc.held[0].from_seq, 3); /* next: seq 3 of run a */
    batch_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publishes_all_in_order_per_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_events_of_a_run_go_out_together, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transient_failure_is_retried_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistent_failure_holds_back_only_its_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_each_run_keeps_its_own_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_reply_is_not_delivered_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_reads_again_and_holds_no_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_by_everyone_holds_no_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusal_ending_within_a_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_take_rows_skips_published_and_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_run_catches_up_by_its_own_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_run_with_more_rows_stays_caught_up_partly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_run_without_route_waits_without_retries, setup, teardown),
    };
    return cmocka_run_group_tests_name("relay", tests, NULL, NULL);
}
