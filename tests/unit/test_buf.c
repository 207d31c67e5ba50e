/* buf: JSON string escaping, the size limit, and the wire message format. */
#include "buf.h"
#include "event.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_json_string_escapes_quotes_backslashes_and_controls(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    const char in[] = "a\"b\\c\nd\x01\xe2\x80\xa8";
    assert_true(buf_json_string(&b, in, sizeof in - 1));
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\nd\\u0001\xe2\x80\xa8\"");
    buf_free(&b);
}

static void test_limit_refuses_growth_past_it(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 10);
    assert_true(buf_puts(&b, "0123456789"));
    assert_false(buf_puts(&b, "x"));
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "0123456789");
    buf_free(&b);
}

static void test_printf_grows_past_the_stack_buffer(void **state)
{
    (void)state;
    buf b;
    buf_init(&b, 0);
    char big[1000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_true(buf_printf(&b, "<%s>", big));
    assert_int_equal(b.len, 1001);
    buf_free(&b);
}

static void test_message_has_the_contract_fields_and_verbatim_payload(void **state)
{
    (void)state;
    event e = {.id = 42, .seq = 7, .run_id = "r\"1", .run_id_len = 3,
               .created_at = "2026-11-27T01:02:03.000004Z", .payload = "{\"k\": [1, \"\\n\"]}",
               .payload_len = 16};
    buf b;
    buf_init(&b, 0);
    assert_true(event_format_message(&b, &e));
    assert_string_equal(b.data, "{\"id\":42,\"run_id\":\"r\\\"1\",\"seq\":7,"
                                "\"created_at\":\"2026-11-27T01:02:03.000004Z\","
                                "\"payload\":{\"k\": [1, \"\\n\"]}}");
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_string_escapes_quotes_backslashes_and_controls),
        cmocka_unit_test(test_limit_refuses_growth_past_it),
        cmocka_unit_test(test_printf_grows_past_the_stack_buffer),
        cmocka_unit_test(test_message_has_the_contract_fields_and_verbatim_payload),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
