/* Histogram quantiles stay within the bucket error and never exceed the maximum. */
#include "metrics.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static void test_quantiles_of_a_uniform_spread(void **state)
{
    (void)state;
    histogram h;
    hist_reset(&h);
    for (int i = 1; i <= 10000; i++)
        hist_record(&h, i); /* 1 us .. 10 ms */
    double p50 = hist_quantile(&h, 0.5), p99 = hist_quantile(&h, 0.99);
    assert_true(p50 >= 5000 && p50 <= 5000 * 1.125 + 1);
    assert_true(p99 >= 9900 && p99 <= 10000);
    assert_true(hist_quantile(&h, 1.0) == 10000);
    assert_int_equal(h.count, 10000);
}

static void test_empty_histogram_reports_zero(void **state)
{
    (void)state;
    histogram h;
    hist_reset(&h);
    assert_true(hist_quantile(&h, 0.99) == 0);
}

static void test_huge_values_land_in_the_last_bucket(void **state)
{
    (void)state;
    histogram h;
    hist_reset(&h);
    hist_record(&h, 1e15);
    assert_true(hist_quantile(&h, 0.5) == 1e15);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantiles_of_a_uniform_spread),
        cmocka_unit_test(test_empty_histogram_reports_zero),
        cmocka_unit_test(test_huge_values_land_in_the_last_bucket),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}
