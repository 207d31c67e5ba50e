/* relay_scan.c: the frontier moves over what was read, ids missing below it become
 * gaps of exactly the missing ids (never a range around a row that exists), a gap is
 * read again, a bounded window at a time, until every transaction that could fill it
 * has ended (by the snapshot's xmin or by the writers of run_outbox seen in
 * pg_locks), and nothing below the frontier is ever dropped unread. */
#include "relay_scan.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
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

/* One cycle as the relay runs it: choose the window, then take in what was read. */
static void cycle(const store_seen *seen, double now)
{
    assert_true(scan_probe(&sc, 1000));
    assert_true(scan_apply(&sc, &rows, seen, now));
}

static bool in_gap(long long id)
{
    for (size_t g = 0; g < sc.ngaps; g++)
        if (sc.gap[g].lo <= id && id <= sc.gap[g].hi)
            return true;
    return false;
}

static void test_missing_ids_become_gaps(void **state)
{
    (void)state;
    const long long ids[] = {1, 2, 5, 6, 9};
    make_rows(ids, NULL, 5);
    store_seen seen = {.xmin = 100, .tag = 110};
    cycle(&seen, 10);
    assert_int_equal(sc.frontier, 9);
    assert_int_equal(sc.ngaps, 2);
    assert_int_equal(sc.gap[0].lo, 3);
    assert_int_equal(sc.gap[0].hi, 4);
    assert_int_equal(sc.gap[1].lo, 7);
    assert_int_equal(sc.gap[1].hi, 8);
    assert_int_equal(sc.gap[0].until, 110);
    assert_int_equal(scan_low(&sc), 3);
    assert_true(scan_oldest_gap_s(&sc, 12.5) == 2.5);
}

static void test_a_late_commit_fills_its_gap_and_the_rest_stays(void **state)
{
    (void)state;
    const long long ids[] = {1, 5};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 100, .tag = 110};
    cycle(&s1, 0); /* gap 2..4 */
    /* Id 3 commits; transactions below 110 are still running (xmin 105). */
    const long long late[] = {3};
    const unsigned f[] = {STORE_ROW_GAP};
    make_rows(late, f, 1);
    store_seen s2 = {.xmin = 105, .tag = 120};
    cycle(&s2, 0);
    assert_int_equal(sc.frontier, 5);
    assert_int_equal(sc.ngaps, 2);
    assert_int_equal(sc.gap[0].lo, 2);
    assert_int_equal(sc.gap[0].hi, 2);
    assert_int_equal(sc.gap[1].lo, 4);
    assert_int_equal(sc.gap[1].hi, 4);
}

static void test_gap_closes_once_every_older_transaction_ended(void **state)
{
    (void)state;
    const long long ids[] = {1, 4};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 100, .tag = 110};
    cycle(&s1, 0);
    assert_int_equal(sc.ngaps, 1);
    make_rows(ids, NULL, 0);
    /* xmin 109: transaction 109 may still commit an id of the gap. */
    store_seen s2 = {.xmin = 109, .tag = 130};
    cycle(&s2, 0);
    assert_int_equal(sc.ngaps, 1);
    /* xmin 110: all of them ended before this read, which saw nothing there. */
    store_seen s3 = {.xmin = 110, .tag = 130};
    cycle(&s3, 0);
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
    cycle(&s1, 0);
    assert_true(scan_needs_tag(&sc));
    /* However high xmin or the writers' horizon go, an untagged gap stays: its
     * writer may hold any id. */
    make_rows(ids, NULL, 0);
    store_writers w = {.horizon = 2000000};
    scan_writers(&sc, &w, 1);
    store_seen s2 = {.xmin = 1000000, .tag = 0};
    cycle(&s2, 0);
    assert_int_equal(sc.ngaps, 1);
    /* The next statement takes a transaction id, after that look (so above its
     * horizon): that tags it ... */
    store_seen s3 = {.xmin = 1000000, .tag = 2000010};
    cycle(&s3, 0);
    assert_false(scan_needs_tag(&sc));
    assert_int_equal(sc.ngaps, 1);
    /* ... and once every transaction below it has ended, it closes. */
    store_seen s4 = {.xmin = 2000010, .tag = 0};
    cycle(&s4, 0);
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
    cycle(&s, 0);
    assert_int_equal(sc.frontier, 3);
    assert_int_equal(sc.ngaps, 0);
}

/* A long transaction elsewhere holds xmin back: the gaps stay exact (every missing id
 * in one, no existing id in any), however many; each statement reads a bounded
 * window of them, and the windows take turns over all of them. */
static void test_many_gaps_stay_exact_and_are_read_in_turns(void **state)
{
    (void)state;
    size_t want = 3 * SCAN_PROBE_MAX + 10;
    event *big = calloc(want, sizeof *big);
    assert_non_null(big);
    for (size_t i = 0; i < want; i++)
        big[i] = (event){.id = 2 * (long long)i + 1, .flags = STORE_ROW_FRONTIER};
    batch b = {.ev = big, .n = want, .cap = want};
    store_seen s = {.xmin = 1, .tag = 2};
    assert_true(scan_probe(&sc, 1000));
    assert_true(scan_apply(&sc, &b, &s, 0));
    assert_int_equal(sc.ngaps, want - 1);
    for (long long id = 1; id <= big[want - 1].id; id++)
        assert_int_equal(in_gap(id), id % 2 == 0);
    /* xmin stays at 1: nothing closes; every gap is read within a few windows. */
    char *seen_gap = calloc(sc.ngaps, 1);
    assert_non_null(seen_gap);
    batch none = {.ev = big, .n = 0, .cap = want};
    for (int c = 0; c < 4; c++) {
        assert_true(scan_probe(&sc, 1000));
        assert_true(sc.probe_n <= SCAN_PROBE_MAX);
        assert_true(sc.probe_rows >= 1);
        for (size_t i = 0; i < sc.probe_n; i++) {
            assert_int_equal(sc.probe_lo[i], sc.gap[sc.probe_from + i].lo);
            seen_gap[sc.probe_from + i] = 1;
        }
        assert_true(scan_apply(&sc, &none, &s, 0));
        assert_int_equal(sc.ngaps, want - 1);
    }
    for (size_t g = 0; g < want - 1; g++)
        assert_int_equal(seen_gap[g], 1);
    free(seen_gap);
    free(big);
}

/* The writers' horizon: a long transaction that writes no outbox row holds xmin
 * back, but the look at pg_locks found no writer below the gap's tag: the gap closes
 * at the next read, not before. */
static void test_writers_horizon_closes_gaps_an_unrelated_transaction_holds(void **state)
{
    (void)state;
    const long long ids[] = {1, 4};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 50, .tag = 110}; /* transaction 50 runs for hours */
    cycle(&s1, 0);
    assert_int_equal(sc.ngaps, 1);
    assert_false(scan_check_due(&sc, 0.1)); /* younger than SCAN_CHECK_AFTER_S */
    assert_true(scan_check_due(&sc, 0.5));
    /* The look: transaction 50 holds no lock on run_outbox; one writer, 120, does
     * (it got its id after the gap's tag: it cannot have drawn those ids). */
    store_writers w = {.horizon = 120, .count = 1, .oldest = 120, .oldest_pid = 4242, .oldest_age_s = 0.1};
    scan_writers(&sc, &w, 0.5);
    assert_false(sc.blocker);
    assert_false(scan_check_due(&sc, 1.0)); /* at most once a second */
    make_rows(ids, NULL, 0);
    store_seen s2 = {.xmin = 50, .tag = 130};
    cycle(&s2, 0.6);
    assert_int_equal(sc.ngaps, 0);
    assert_int_equal(scan_low(&sc), 5);
}

/* A writer below the tag is still there: the gap stays, and that writer is named;
 * once it is gone, the gap goes at the next read. */
static void test_a_writer_below_the_tag_holds_the_gap(void **state)
{
    (void)state;
    const long long ids[] = {1, 4};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 50, .tag = 110};
    cycle(&s1, 0);
    store_writers w = {.horizon = 60, .count = 2, .oldest = 60, .oldest_pid = 0, .oldest_prepared = true,
                       .oldest_age_s = 30};
    scan_writers(&sc, &w, 1);
    assert_true(sc.blocker);
    assert_true(sc.blocker_prepared);
    assert_true(sc.blocker_age_s == 30);
    make_rows(ids, NULL, 0);
    store_seen s2 = {.xmin = 50, .tag = 130};
    cycle(&s2, 1.1);
    assert_int_equal(sc.ngaps, 1);
    /* Ids 2 and 3 may be the prepared transaction's: it commits, id 2 appears. */
    const long long late[] = {2};
    const unsigned f[] = {STORE_ROW_GAP};
    store_writers gone = {.horizon = 140};
    scan_writers(&sc, &gone, 2.1);
    assert_false(sc.blocker);
    make_rows(late, f, 1);
    store_seen s3 = {.xmin = 50, .tag = 140};
    cycle(&s3, 2.2);
    assert_int_equal(sc.ngaps, 0);
}

/* A gap outside the statement's window was not read again: it cannot close in that
 * cycle, whatever the horizon says. */
static void test_only_gaps_read_again_close(void **state)
{
    (void)state;
    size_t want = SCAN_PROBE_MAX + 2;
    event *big = calloc(want, sizeof *big);
    assert_non_null(big);
    for (size_t i = 0; i < want; i++)
        big[i] = (event){.id = 2 * (long long)i + 1, .flags = STORE_ROW_FRONTIER};
    batch b = {.ev = big, .n = want, .cap = want};
    store_seen s = {.xmin = 1, .tag = 2};
    assert_true(scan_probe(&sc, 1000));
    assert_true(scan_apply(&sc, &b, &s, 0));
    size_t before = sc.ngaps;
    assert_true(before > SCAN_PROBE_MAX);
    store_writers w = {.horizon = 1000};
    scan_writers(&sc, &w, 1);
    batch none = {.ev = big, .n = 0, .cap = want};
    assert_true(scan_probe(&sc, 1000));
    size_t probed = sc.probe_n;
    assert_true(scan_apply(&sc, &none, &s, 1));
    assert_int_equal(sc.ngaps, before - probed);
    assert_true(scan_probe(&sc, 1000));
    assert_true(scan_apply(&sc, &none, &s, 1));
    assert_int_equal(sc.ngaps, 0);
    free(big);
}

/* A gap that gave its row limit was read only up to its last row: the rest of it
 * stays, even when it could close. */
static void test_row_limit_per_gap_keeps_the_unread_rest(void **state)
{
    (void)state;
    const long long ids[] = {1, 100};
    make_rows(ids, NULL, 2);
    store_seen s1 = {.xmin = 1, .tag = 10};
    cycle(&s1, 0); /* gap 2..99 */
    /* A slow writer committed ids 2..99; the statement may read 3 of them. */
    assert_true(scan_probe(&sc, 3));
    assert_int_equal(sc.probe_rows, 3);
    const long long late[] = {2, 3, 4};
    const unsigned f[] = {STORE_ROW_GAP, STORE_ROW_GAP, STORE_ROW_GAP};
    make_rows(late, f, 3);
    store_seen s2 = {.xmin = 20, .tag = 30}; /* every writer below 10 ended */
    assert_true(scan_apply(&sc, &rows, &s2, 1));
    assert_int_equal(sc.ngaps, 1);
    assert_int_equal(sc.gap[0].lo, 5);
    assert_int_equal(sc.gap[0].hi, 99);
    /* The next statement reads the rest (here: nothing more) and it closes. */
    make_rows(late, f, 0);
    cycle(&s2, 2);
    assert_int_equal(sc.ngaps, 0);
}

static void test_frontier_stops_at_the_gap_cap(void **state)
{
    (void)state;
    assert_int_equal(scan_frontier_limit(&sc, 1000), 1000);
    sc.ngaps = SCAN_GAPS_MAX - 10; /* counted only: no gap is read here */
    assert_int_equal(scan_frontier_limit(&sc, 1000), 10);
    sc.ngaps = SCAN_GAPS_MAX;
    assert_int_equal(scan_frontier_limit(&sc, 1000), 0);
    sc.ngaps = 0;
}

static void test_rewind_reads_again(void **state)
{
    (void)state;
    const long long ids[] = {1, 3, 10, 12};
    make_rows(ids, NULL, 4);
    store_seen s = {.xmin = 1, .tag = 2};
    cycle(&s, 0); /* gaps 2, 4..9, 11 */
    scan_rewind(&sc, 5);
    assert_int_equal(sc.frontier, 4);
    assert_int_equal(sc.ngaps, 2); /* 2 and 4 */
    assert_int_equal(sc.gap[1].hi, 4);
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
        cmocka_unit_test_setup_teardown(test_many_gaps_stay_exact_and_are_read_in_turns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writers_horizon_closes_gaps_an_unrelated_transaction_holds, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_writer_below_the_tag_holds_the_gap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_only_gaps_read_again_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_row_limit_per_gap_keeps_the_unread_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_frontier_stops_at_the_gap_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rewind_reads_again, setup, teardown),
    };
    return cmocka_run_group_tests_name("scan", tests, NULL, NULL);
}
