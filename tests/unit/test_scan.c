/* relay_scan.c: the frontier moves over what was read, ids missing below it become
 * gaps, a gap is read until every transaction that could fill it has ended, and
 * nothing below the frontier is ever dropped unread. */
#include "relay_scan.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static event ev[64];
static batch rows;
static scan sc;

/* Every test starts from an empty scan at low water 1. */
static int setup(void **state)
{
    (void)state;
    scan_init(&sc);
    scan_reset(&sc, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    scan_free(&sc);
    return 0;
}

/* rows: ids[0..n) with flags */
static void make_rows(const long long *ids, const unsigned *flags, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ev[i] = (event){.id = ids[i], .flags = flags ? flags[i] : STORE_ROW_FRONTIER, .run_id = "r", .run_id_len = 1};
    rows.ev = ev;
    rows.n = n;
    rows.cap = n;
}

static void test_missing_ids_become_gaps(void **state)
{
    (void)state;
    const long long ids[] = {1, 2, 5, 6, 9};
    make_rows(ids, NULL, 5);
    store_seen seen = {.xmin = 100, .tag = 110};
    assert_true(scan_apply(&sc, &rows, &seen));
    assert_int_equal(sc.frontier, 9);
    assert_int_equal(sc.ngaps, 2);
    assert_int_equal(sc.lo[0], 3);
    assert_int_equal(sc.hi[0], 4);
    assert_int_equal(sc.lo[1], 7);
    assert_int_equal(sc.hi[1], 8);
    assert_int_equal(sc.until[0], 110);
    assert_int_equal(scan_low(&sc), 3);
}

static void test_a_late_commit_fills_its_gap_and_the_rest_stays(void **state)
{
    (void)state;
    const long long ids[] = {1, 5};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 100, .tag = 110};
    assert_true(scan_apply(&sc, &rows, &s1)); /* gap 2..4 */
    /* Id 3 commits; transactions below 110 are still running (xmin 105). */
    const long long late[] = {3};
    const unsigned f[] = {STORE_ROW_GAP};
    make_rows(late, f, 1);
    store_seen s2 = {.xmin = 105, .tag = 120};
    assert_true(scan_apply(&sc, &rows, &s2));
    assert_int_equal(sc.frontier, 5);
    assert_int_equal(sc.ngaps, 2);
    assert_int_equal(sc.lo[0], 2);
    assert_int_equal(sc.hi[0], 2);
    assert_int_equal(sc.lo[1], 4);
    assert_int_equal(sc.hi[1], 4);
}

static void test_gap_closes_once_every_older_transaction_ended(void **state)
{
    (void)state;
    const long long ids[] = {1, 4};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 100, .tag = 110};
    assert_true(scan_apply(&sc, &rows, &s1));
    assert_int_equal(sc.ngaps, 1);
    make_rows(ids, NULL, 0);
    /* xmin 109: transaction 109 may still commit an id of the gap. */
    store_seen s2 = {.xmin = 109, .tag = 130};
    assert_true(scan_apply(&sc, &rows, &s2));
    assert_int_equal(sc.ngaps, 1);
    /* xmin 110: all of them ended before this read, which saw nothing there. */
    store_seen s3 = {.xmin = 110, .tag = 130};
    assert_true(scan_apply(&sc, &rows, &s3));
    assert_int_equal(sc.ngaps, 0);
    assert_int_equal(scan_low(&sc), 5);
}

static void test_untagged_gap_stays_until_a_later_transaction_tags_it(void **state)
{
    (void)state;
    /* A read without a transaction id of its own (nothing to mark). */
    const long long ids[] = {1, 4};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 100, .tag = 0};
    assert_true(scan_apply(&sc, &rows, &s1));
    assert_true(scan_needs_tag(&sc));
    /* However high xmin goes, an untagged gap stays: its writer may hold any id. */
    make_rows(ids, NULL, 0);
    store_seen s2 = {.xmin = 1000000, .tag = 0};
    assert_true(scan_apply(&sc, &rows, &s2));
    assert_int_equal(sc.ngaps, 1);
    /* The next statement takes id 1000010: that tags it... */
    store_seen s3 = {.xmin = 1000000, .tag = 1000010};
    assert_true(scan_apply(&sc, &rows, &s3));
    assert_false(scan_needs_tag(&sc));
    assert_int_equal(sc.ngaps, 1);
    /* ... and once every transaction below it has ended, it closes. */
    store_seen s4 = {.xmin = 1000010, .tag = 0};
    assert_true(scan_apply(&sc, &rows, &s4));
    assert_int_equal(sc.ngaps, 0);
}

static void test_rows_beyond_the_frontier_read_do_not_move_it(void **state)
{
    (void)state;
    /* The frontier part read 1..3 (its limit); a run's catch-up read id 9. */
    const long long ids[] = {1, 2, 3, 9};
    const unsigned f[] = {STORE_ROW_FRONTIER, STORE_ROW_FRONTIER, STORE_ROW_FRONTIER, STORE_ROW_CATCHUP};
    make_rows(ids, f, 4);
    store_seen s = {.xmin = 1, .tag = 2};
    assert_true(scan_apply(&sc, &rows, &s));
    assert_int_equal(sc.frontier, 3);
    assert_int_equal(sc.ngaps, 0);
}

static void test_many_gaps_are_merged_never_dropped(void **state)
{
    (void)state;
    /* Every other id missing, far more gaps than kept. */
    static event big[2 * SCAN_GAPS_MAX + 10];
    size_t n = 0;
    for (long long id = 1; n < sizeof big / sizeof big[0]; id += 2)
        big[n++] = (event){.id = id, .flags = STORE_ROW_FRONTIER};
    batch b = {.ev = big, .n = n, .cap = n};
    store_seen s = {.xmin = 1, .tag = 2};
    assert_true(scan_apply(&sc, &b, &s));
    assert_true(sc.ngaps <= SCAN_GAPS_MAX);
    /* Every missing id is still inside some gap. */
    for (long long id = 2; id < big[n - 1].id; id += 2) {
        bool in = false;
        for (size_t g = 0; g < sc.ngaps && !in; g++)
            in = sc.lo[g] <= id && id <= sc.hi[g];
        assert_true(in);
    }
}

static void test_rewind_reads_again(void **state)
{
    (void)state;
    const long long ids[] = {1, 3, 10, 12};
    make_rows(ids, NULL, 4);
    store_seen s = {.xmin = 1, .tag = 2};
    assert_true(scan_apply(&sc, &rows, &s)); /* gaps 2, 4..9, 11 */
    scan_rewind(&sc, 5);
    assert_int_equal(sc.frontier, 4);
    assert_int_equal(sc.ngaps, 2); /* 2 and 4 */
    assert_int_equal(sc.hi[1], 4);
    assert_int_equal(scan_low(&sc), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_missing_ids_become_gaps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_late_commit_fills_its_gap_and_the_rest_stays, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gap_closes_once_every_older_transaction_ended, setup, teardown),
        cmocka_unit_test_setup_teardown(test_untagged_gap_stays_until_a_later_transaction_tags_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_beyond_the_frontier_read_do_not_move_it, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_gaps_are_merged_never_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewind_reads_again, setup, teardown),
    };
    return cmocka_run_group_tests_name("scan", tests, NULL, NULL);
}
