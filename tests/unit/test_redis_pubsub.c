/* Unit tests of the Pub/Sub dispatcher (redis_pubsub.c): replies built from protocol
 * text by hiredis' reader, fed with a queue of the commands "sent". Confirmations
 * are told from pushed messages by the queue alone, a server-initiated (s)unsubscribe
 * is recognized, a refusal names its command and channel, and anything that answers
 * no command puts the connection out of step. */
#include "redis_pubsub.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

/* One reply from its protocol text. */
static redisReply *reply(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}

/* The payload of the last message dispatched (the reply itself is freed). */
static char payload[64];

/* Dispatches the reply in resp and checks its event; returns it, with the channel
 * copied to channel (when not NULL) and the payload to payload[]. */
static ps_reply dispatch(ps_queue *q, const char *resp, enum ps_event want, char *why, char *channel)
{
    redisReply *r = reply(resp);
    ps_reply d = ps_dispatch(q, r, why, 512);
    assert_int_equal(d.event, want);
    if (channel) {
        channel[0] = '\0';
        if (d.channel)
            memcpy(channel, d.channel, d.channel_len), channel[d.channel_len] = '\0';
    }
    payload[0] = '\0';
    if (d.payload)
        memcpy(payload, d.payload, d.payload_len), payload[d.payload_len] = '\0';
    d.channel = d.payload = NULL; /* they pointed into the reply */
    freeReplyObject(r);
    return d;
}

static void push(ps_queue *q, enum ps_kind k, const char *ch)
{
    assert_true(ps_queue_push(q, k, ch, ch ? strlen(ch) : 0));
}

static void test_confirmations_and_messages(void **state)
{
    (void)state;
    ps_queue q = {0};
    char why[512], ch[64];
    push(&q, PS_PING, NULL);
    push(&q, PS_SUBSCRIBE, "run:a");
    push(&q, PS_SUBSCRIBE, "run:b");
    dispatch(&q, "+PONG\r\n", PS_PONG, why, NULL); /* no subscription yet: a status */
    /* A message for a channel subscribed earlier comes before the confirmations. */
    ps_reply d = dispatch(&q, "*3\r\n$7\r\nmessage\r\n$5\r\nrun:z\r\n$2\r\n{}\r\n", PS_MESSAGE, why, ch);
    assert_string_equal(ch, "run:z");
    assert_string_equal(payload, "{}");
    assert_int_equal(d.payload_len, 2);
    assert_int_equal(q.len, 2);
    dispatch(&q, "*3\r\n$9\r\nsubscribe\r\n$5\r\nrun:a\r\n:1\r\n", PS_SUBSCRIBED, why, ch);
    assert_string_equal(ch, "run:a");
    dispatch(&q, "*3\r\n$9\r\nsubscribe\r\n$5\r\nrun:b\r\n:2\r\n", PS_SUBSCRIBED, why, ch);
    assert_string_equal(ch, "run:b");
    assert_int_equal(q.len, 0);
    push(&q, PS_PING, NULL);
    dispatch(&q, "*2\r\n$4\r\npong\r\n$0\r\n\r\n", PS_PONG, why, NULL); /* subscribed: an array */
    push(&q, PS_UNSUBSCRIBE, "run:a");
    d = dispatch(&q, "*3\r\n$11\r\nunsubscribe\r\n$5\r\nrun:a\r\n:1\r\n", PS_UNSUBSCRIBED, why, ch);
    assert_false(d.server_initiated);
    assert_string_equal(ch, "run:a");
    dispatch(&q, "*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\nx\r\n$1\r\ny\r\n", PS_IGNORED, why, NULL);
    assert_int_equal(q.len, 0);
    ps_queue_clear(&q);
}

static void test_sharded_and_server_initiated(void **state)
{
    (void)state;
    ps_queue q = {0};
    char why[512], ch[64];
    assert_null(ps_queue_oldest(&q));
    push(&q, PS_SSUBSCRIBE, "run:s");
    /* The command the next reply answers (the gateway keeps a refused channel). */
    const ps_pending *oldest = ps_queue_oldest(&q);
    assert_non_null(oldest);
    assert_int_equal(oldest->kind, PS_SSUBSCRIBE);
    assert_int_equal(oldest->len, 5);
    assert_memory_equal(oldest->channel, "run:s", 5);
    dispatch(&q, "*3\r\n$10\r\nssubscribe\r\n$5\r\nrun:s\r\n:1\r\n", PS_SUBSCRIBED, why, ch);
    assert_string_equal(ch, "run:s");
    ps_reply d = dispatch(&q, "*3\r\n$8\r\nsmessage\r\n$5\r\nrun:s\r\n$3\r\n{1}\r\n", PS_MESSAGE, why, ch);
    assert_string_equal(ch, "run:s");
    assert_string_equal(payload, "{1}");
    /* The slot moved: the server ends the subscription while a PING is owed. */
    push(&q, PS_PING, NULL);
    d = dispatch(&q, "*3\r\n$12\r\nsunsubscribe\r\n$5\r\nrun:s\r\n:0\r\n", PS_UNSUBSCRIBED, why, ch);
    assert_true(d.server_initiated);
    assert_string_equal(ch, "run:s");
    assert_int_equal(q.len, 1); /* the PING is still owed */
    dispatch(&q, "*2\r\n$4\r\npong\r\n$0\r\n\r\n", PS_PONG, why, NULL);
    /* An unsubscribe of another channel than ours in flight is the server's, too. */
    push(&q, PS_SUNSUBSCRIBE, "run:t");
    d = dispatch(&q, "*3\r\n$12\r\nsunsubscribe\r\n$5\r\nrun:u\r\n:0\r\n", PS_UNSUBSCRIBED, why, ch);
    assert_true(d.server_initiated);
    assert_int_equal(q.len, 1);
    d = dispatch(&q, "*3\r\n$12\r\nsunsubscribe\r\n$5\r\nrun:t\r\n:0\r\n", PS_UNSUBSCRIBED, why, ch);
    assert_false(d.server_initiated);
    assert_int_equal(q.len, 0);
    ps_queue_clear(&q);
}

static void test_refusals_name_the_command(void **state)
{
    (void)state;
    ps_queue q = {0};
    char why[512];
    push(&q, PS_SUBSCRIBE, "run:secret");
    push(&q, PS_SUBSCRIBE, "run:other");
    dispatch(&q, "-NOPERM this user has no permissions to access one of the channels used as arguments\r\n",
             PS_REFUSED, why, NULL);
    assert_non_null(strstr(why, "SUBSCRIBE run:secret refused: NOPERM this user"));
    assert_non_null(strstr(why, "ACL"));
    assert_int_equal(q.len, 1);
    ps_queue_clear(&q);
    dispatch(&q, "-ERR what\r\n", PS_REFUSED, why, NULL); /* nothing owed */
    assert_non_null(strstr(why, "a command refused: ERR what"));
}

static void test_out_of_step(void **state)
{
    (void)state;
    ps_queue q = {0};
    char why[512];
    push(&q, PS_SUBSCRIBE, "run:a");
    /* A confirmation of a channel we did not ask for next. */
    dispatch(&q, "*3\r\n$9\r\nsubscribe\r\n$5\r\nrun:b\r\n:1\r\n", PS_OUT_OF_STEP, why, NULL);
    assert_non_null(strstr(why, "subscribe confirmation that answers no command"));
    dispatch(&q, "+PONG\r\n", PS_OUT_OF_STEP, why, NULL); /* no PING owed */
    dispatch(&q, ":7\r\n", PS_OUT_OF_STEP, why, NULL);
    dispatch(&q, "*2\r\n$7\r\nmessage\r\n$1\r\nx\r\n", PS_OUT_OF_STEP, why, NULL);
    assert_int_equal(q.len, 1);
    ps_queue_clear(&q);
}

/* The ring keeps order through growth and wrap-around. */
static void test_queue_order(void **state)
{
    (void)state;
    ps_queue q = {0};
    char why[512], ch[64], name[32];
    int next = 0, sent = 0;
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 90; i++) {
            snprintf(name, sizeof name, "run:%d", sent++);
            push(&q, PS_SUBSCRIBE, name);
        }
        push(&q, PS_SUBSCRIBE, "never");
        ps_queue_drop_newest(&q); /* not sent after all */
        for (int i = 0; i < 60; i++) {
            char resp[128];
            snprintf(name, sizeof name, "run:%d", next++);
            snprintf(resp, sizeof resp, "*3\r\n$9\r\nsubscribe\r\n$%zu\r\n%s\r\n:1\r\n", strlen(name), name);
            dispatch(&q, resp, PS_SUBSCRIBED, why, ch);
            assert_string_equal(ch, name);
        }
    }
    assert_int_equal(q.len, (size_t)(sent - next));
    ps_queue_clear(&q);
    assert_int_equal(q.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_confirmations_and_messages),
        cmocka_unit_test(test_sharded_and_server_initiated),
        cmocka_unit_test(test_refusals_name_the_command),
        cmocka_unit_test(test_out_of_step),
        cmocka_unit_test(test_queue_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
