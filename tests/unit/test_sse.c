/* Gateway request parsing and the SSE/wire formats it relies on. */
#include "buf.h"
#include "event.h"
#include "sse.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static char id[SSE_MAX_RUN_ID + 1];
static size_t len;
static const char *bad;

static void test_routes(void **state)
{
    (void)state;
    assert_int_equal(sse_parse_path("/runs/r-1/events", id, sizeof id, &len, &bad), ROUTE_EVENTS);
    assert_null(bad);
    assert_string_equal(id, "r-1");
    assert_int_equal(sse_parse_path("/runs/r-1", id, sizeof id, &len, &bad), ROUTE_VIEWER);
    assert_int_equal(sse_parse_path("/healthz", id, sizeof id, &len, &bad), ROUTE_HEALTH);
    assert_int_equal(sse_parse_path("/runs/r-1/other", id, sizeof id, &len, &bad), ROUTE_NOT_FOUND);
    assert_int_equal(sse_parse_path("/", id, sizeof id, &len, &bad), ROUTE_NOT_FOUND);
}

static void test_run_id_is_percent_decoded_byte_exact(void **state)
{
    (void)state;
    assert_int_equal(sse_parse_path("/runs/a%20b%7B%7D%2A%3A%3F%C3%A9/events", id, sizeof id, &len, &bad),
                     ROUTE_EVENTS);
    assert_null(bad);
    assert_string_equal(id, "a b{}*:?\xc3\xa9");
    assert_int_equal(len, 10);
}

static void test_bad_run_ids(void **state)
{
    (void)state;
    sse_parse_path("/runs//events", id, sizeof id, &len, &bad);
    assert_non_null(bad);
    sse_parse_path("/runs/%ff/events", id, sizeof id, &len, &bad);
    assert_non_null(strstr(bad, "UTF-8"));
    sse_parse_path("/runs/%2/events", id, sizeof id, &len, &bad);
    assert_non_null(strstr(bad, "percent"));
    sse_parse_path("/runs/%00/events", id, sizeof id, &len, &bad);
    assert_non_null(bad);
    char longpath[SSE_MAX_RUN_ID + 32];
    strcpy(longpath, "/runs/");
    memset(longpath + 6, 'x', SSE_MAX_RUN_ID + 1);
    strcpy(longpath + 6 + SSE_MAX_RUN_ID + 1, "/events");
    sse_parse_path(longpath, id, sizeof id, &len, &bad);
    assert_non_null(strstr(bad, "too long"));
    longpath[6 + SSE_MAX_RUN_ID] = '\0';
    strcat(longpath, "/events");
    sse_parse_path(longpath, id, sizeof id, &len, &bad);
    assert_null(bad);
    assert_int_equal(len, SSE_MAX_RUN_ID);
}

static void test_utf8(void **state)
{
    (void)state;
    assert_true(sse_valid_utf8("\xe2\x80\xa8 \xf0\x9f\x98\x80", 8));
    assert_false(sse_valid_utf8("\xc0\xaf", 2));         /* overlong */
    assert_false(sse_valid_utf8("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(sse_valid_utf8("\xe2\x80", 2));         /* truncated */
    assert_false(sse_valid_utf8("\xf4\x90\x80\x80", 4)); /* above U+10FFFF */
}

static void test_last_event_id(void **state)
{
    (void)state;
    long long v;
    assert_true(sse_parse_last_id("0", &v));
    assert_int_equal(v, 0);
    assert_true(sse_parse_last_id(" 42 ", &v));
    assert_int_equal(v, 42);
    assert_false(sse_parse_last_id("-1", &v));
    assert_false(sse_parse_last_id("12abc", &v));
    assert_false(sse_parse_last_id("", &v));
    assert_false(sse_parse_last_id("99999999999999999999", &v));
}

static void test_sse_frame_splits_lines(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    assert_true(event_format_sse(&b, 7, "a\nb\r\nc\rd", 8));
    assert_string_equal(b.data, "id: 7\ndata: a\ndata: b\ndata: c\ndata: d\n\n");
    buf_reset(&b);
    assert_true(event_format_sse(&b, 8, "{\"x\":1}", 7));
    assert_string_equal(b.data, "id: 8\ndata: {\"x\":1}\n\n");
    buf_reset(&b);
    assert_true(event_format_sse(&b, 9, "", 0));
    assert_string_equal(b.data, "id: 9\ndata: \n\n");
    buf_free(&b);
}

static void test_message_round_trip(void **state)
{
    (void)state;
    event e = {.id = 5, .seq = 3, .run_id = "r\"}", .run_id_len = 3, .created_at = "2026-01-01T00:00:00Z",
               .payload = "{\"k\": \"}\"}", .payload_len = 10};
    buf b;
    buf_init(&b, 0);
    assert_true(event_format_message(&b, &e));
    long long seq;
    const char *p;
    size_t n;
    assert_true(event_parse_message(b.data, b.len, &seq, &p, &n));
    assert_int_equal(seq, 3);
    assert_int_equal(n, 10);
    assert_memory_equal(p, e.payload, 10);
    assert_false(event_parse_message("{\"id\":1}", 8, &seq, &p, &n));
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_run_id_is_percent_decoded_byte_exact),
        cmocka_unit_test(test_bad_run_ids),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_last_event_id),
        cmocka_unit_test(test_sse_frame_splits_lines),
        cmocka_unit_test(test_message_round_trip),
    };
    return cmocka_run_group_tests_name("sse", tests, NULL, NULL);
}
