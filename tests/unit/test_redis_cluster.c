/* Unit tests of cluster routing (redis_cluster.c): slots against the specification's
 * test vector and hash-tag rules, mark keys that share their channel's slot whatever
 * braces a run id holds, slot maps from CLUSTER SHARDS and CLUSTER SLOTS replies built
 * in the test (healthy, a primary failing or loading, TLS ports, unknown endpoints)
 * and hostile ones (overlaps, out-of-range slots, wrong types), and redirections. */
#include "redis_cluster.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- replies written in the protocol ---------------------------------------------- */

static char resp[65536];
static size_t resp_len;

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(resp + resp_len, sizeof resp - resp_len, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof resp - resp_len);
    resp_len += (size_t)n;
}

static void arr(int n) { out("*%d\r\n", n); }
static void str(const char *s) { out("$%zu\r\n%s\r\n", strlen(s), s); }
static void num(long long n) { out(":%lld\r\n", n); }
static void nil(void) { out("$-1\r\n"); }

/* The reply written so far (reset for the next one). */
static redisReply *take(void)
{
    redisReader *rd = redisReaderCreate();
    assert_int_equal(redisReaderFeed(rd, resp, resp_len), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    resp_len = 0;
    return r;
}

/* One node of a CLUSTER SHARDS shard, as Redis 7 writes it. tls_port 0: absent. */
static void shard_node(const char *endpoint, int port, int tls_port, const char *role, const char *health)
{
    arr(tls_port ? 16 : 14);
    str("id"), str("e5a4b2bd1a55c1e0aa7a7a4e1a55c1e0aa7a7a4e");
    str("port"), num(port);
    if (tls_port)
        str("tls-port"), num(tls_port);
    str("ip"), str("10.0.0.1");
    str("endpoint"), str(endpoint);
    str("role"), str(role);
    str("replication-offset"), num(72156);
    str("health"), str(health);
}

static const redis_addr asked = {"seed.example", 7000};

static void assert_owner(const cluster_map *m, int slot, const char *host, int port)
{
    const redis_addr *a = cluster_map_node(m, slot);
    if (!host) {
        assert_null(a);
        return;
    }
    assert_non_null(a);
    assert_string_equal(a->host, host);
    assert_int_equal(a->port, port);
}

/* ---- slots ------------------------------------------------------------------------ */

static int slot_of(const char *k)
{
    return cluster_key_slot(k, strlen(k));
}

static void test_key_slot(void **state)
{
    (void)state;
    /* The specification's CRC16 test vector: "123456789" -> 0x31C3. */
    assert_int_equal(slot_of("123456789"), 0x31C3);
    assert_int_equal(slot_of("foo"), 12182);
    assert_int_equal(slot_of("bar"), 5061);
    assert_int_equal(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    assert_int_equal(slot_of("{user1000}.following"), slot_of("user1000"));
    /* An empty tag does not count: the whole name is hashed. */
    assert_int_equal(slot_of("foo{}{bar}"), cluster_key_slot("foo{}{bar}", 10));
    assert_int_not_equal(slot_of("foo{}{bar}"), slot_of("bar"));
    /* The first '{' and the first '}' after it. */
    assert_int_equal(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    assert_int_equal(slot_of("foo{bar}{zap}"), slot_of("bar"));
    assert_int_equal(slot_of("}{x}"), slot_of("x"));
    assert_int_equal(slot_of("{"), cluster_key_slot("{", 1));
    assert_int_equal(cluster_key_slot("", 0), 0);
    /* Bytes, not C strings. */
    assert_int_not_equal(cluster_key_slot("a\0b", 3), cluster_key_slot("a\0c", 3));
}

static void check_mark(const char *run_id, size_t len, const char *want)
{
    buf k, ch;
    buf_init(&k, 0);
    buf_init(&ch, 0);
    assert_true(cluster_mark_key(&k, "3f2a.00000001", run_id, len));
    assert_true(buf_puts(&ch, "run:") && buf_append(&ch, run_id, len));
    assert_int_equal(cluster_key_slot(k.data, k.len), cluster_key_slot(ch.data, ch.len));
    /* The run id is in the key whole, so that no two runs share a mark. */
    assert_non_null(memmem(k.data, k.len, run_id, len));
    if (want)
        assert_string_equal(k.data, want);
    buf_free(&k);
    buf_free(&ch);
}

static void test_mark_key_in_channel_slot(void **state)
{
    (void)state;
    check_mark("r42", 3, "outboxd:3f2a.00000001:mark:{run:r42}");
    check_mark("", 0, "outboxd:3f2a.00000001:mark:{run:}");
    static const char *const hostile[] = {"a}b", "{x}", "a{}b", "{", "}", "a{b}c{d}", "}{", "{{}}", "x{y", "{run:r42}",
                                          "a}b{c}", "{}"};
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++)
        check_mark(hostile[i], strlen(hostile[i]), NULL);
    check_mark("a{\0}b", 5, NULL);
    /* Hostile ids keep the key prefix, so that ACL key patterns (~outboxd:*) match. */
    buf h;
    buf_init(&h, 0);
    assert_true(cluster_mark_key(&h, "3f2a.00000001", "a}b", 3));
    assert_int_equal(strncmp(h.data, "outboxd:3f2a.00000001:mark:{", 28), 0);
    buf_reset(&h);
    /* An epoch with a brace of its own cannot hold the tag after it. */
    assert_true(cluster_mark_key(&h, "e{1}", "a}b", 3));
    assert_int_equal(cluster_key_slot(h.data, h.len), cluster_key_slot("run:a}b", 7));
    buf_free(&h);
    /* Two ids whose channels share a tag still get two marks. */
    buf a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    assert_true(cluster_mark_key(&a, "e", "{t}1", 4) && cluster_mark_key(&b, "e", "{t}2", 4));
    assert_string_not_equal(a.data, b.data);
    buf_free(&a);
    buf_free(&b);
}

/* ---- CLUSTER SHARDS ----------------------------------------------------------------- */

static void test_shards_healthy_and_failing(void **state)
{
    (void)state;
    cluster_map *m = malloc(sizeof *m);
    char err[256];
    arr(5);
    /* a shard without slots: no node */
    arr(4), str("slots"), arr(0), str("nodes"), arr(1), shard_node("10.0.0.9", 7009, 0, "master", "online");
    /* a: two ranges, a primary and a replica */
    arr(4), str("slots"), arr(4), num(0), num(4999), num(15000), num(16383);
    str("nodes"), arr(2), shard_node("10.0.0.1", 7001, 0, "replica", "online"),
        shard_node("10.0.0.2", 7002, 0, "master", "online");
    /* b: its primary failed, the replica not yet promoted: a failover under way */
    arr(4), str("slots"), arr(2), num(5000), num(9999);
    str("nodes"), arr(2), shard_node("10.0.0.3", 7003, 0, "master", "failed"),
        shard_node("10.0.0.4", 7004, 0, "replica", "online");
    /* c: an endpoint that is "": the ip field names it */
    arr(4), str("slots"), arr(2), num(10000), num(12999);
    str("nodes"), arr(1), shard_node("", 7005, 0, "master", "online");
    /* d: loading after a restart */
    arr(4), str("slots"), arr(2), num(13000), num(14999);
    str("nodes"), arr(1), shard_node("10.0.0.6", 7006, 0, "master", "loading");
    redisReply *r = take();
    assert_true(cluster_parse_shards(r, &asked, false, m, err, sizeof err));
    assert_int_equal(m->nnodes, 2);
    assert_owner(m, 0, "10.0.0.2", 7002);
    assert_owner(m, 4999, "10.0.0.2", 7002);
    assert_owner(m, 16383, "10.0.0.2", 7002);
    assert_owner(m, 5000, NULL, 0);
    assert_owner(m, 9999, NULL, 0);
    assert_owner(m, 10000, "10.0.0.1", 7005);
    assert_owner(m, 13000, NULL, 0);
    assert_int_equal(cluster_map_served(m), 5000 + 1384 + 3000);
    freeReplyObject(r);
    free(m);
}

/* A node not joined to any cluster (or reset) lists only itself, without slots: its
 * map serves nothing, which cluster_refresh takes as no answer (the next seed is
 * asked). */
static void test_shards_empty_node(void **state)
{
    (void)state;
    cluster_map *m = malloc(sizeof *m);
    char err[256];
    arr(1);
    arr(4), str("slots"), arr(0), str("nodes"), arr(1), shard_node("10.0.0.9", 7009, 0, "master", "online");
    redisReply *r = take();
    assert_true(cluster_parse_shards(r, &asked, false, m, err, sizeof err));
    assert_int_equal(m->nnodes, 0);
    assert_int_equal(cluster_map_served(m), 0);
    freeReplyObject(r);
    /* CLUSTER SLOTS of such a node: an empty list. */
    arr(0);
    r = take();
    assert_true(cluster_parse_slots(r, &asked, m, err, sizeof err));
    assert_int_equal(cluster_map_served(m), 0);
    freeReplyObject(r);
    free(m);
}

static void test_shards_tls_and_unknown_endpoint(void **state)
{
    (void)state;
    cluster_map *m = malloc(sizeof *m);
    char err[256];
    arr(2);
    arr(4), str("slots"), arr(2), num(0), num(8191);
    str("nodes"), arr(1), shard_node("node-a.example", 7001, 17001, "master", "online");
    /* "?" as the endpoint: the ip field is used */
    arr(4), str("slots"), arr(2), num(8192), num(16383);
    str("nodes"), arr(1), shard_node("?", 7002, 17002, "master", "online");
    redisReply *r = take();
    assert_true(cluster_parse_shards(r, &asked, true, m, err, sizeof err));
    assert_owner(m, 0, "node-a.example", 17001);
    assert_owner(m, 16383, "10.0.0.1", 17002);
    assert_true(cluster_parse_shards(r, &asked, false, m, err, sizeof err));
    assert_owner(m, 0, "node-a.example", 7001);
    freeReplyObject(r);
    free(m);
}

static void expect_shards_refused(const char *what)
{
    cluster_map *m = malloc(sizeof *m);
    char err[256] = "";
    redisReply *r = take();
    assert_false(cluster_parse_shards(r, &asked, false, m, err, sizeof err));
    if (!strstr(err, what))
        fail_msg("error '%s' does not name '%s'", err, what);
    /* Nothing of a refused reply is kept. */
    assert_int_equal(m->nnodes, 0);
    for (int s = 0; s < CLUSTER_SLOTS; s++)
        assert_int_equal(m->owner[s], CLUSTER_NO_NODE);
    freeReplyObject(r);
    free(m);
}

static void test_shards_hostile(void **state)
{
    (void)state;
    out("-ERR This instance has cluster support disabled\r\n");
    expect_shards_refused("cluster support disabled");
    num(3);
    expect_shards_refused("not a list");
    /* overlapping shards */
    arr(2);
    arr(4), str("slots"), arr(2), num(0), num(100), str("nodes"), arr(1), shard_node("a", 1, 0, "master", "online");
    arr(4), str("slots"), arr(2), num(100), num(200), str("nodes"), arr(1), shard_node("b", 2, 0, "master", "online");
    expect_shards_refused("claimed twice");
    /* a slot past the last */
    arr(1), arr(4), str("slots"), arr(2), num(0), num(16384), str("nodes"), arr(1),
        shard_node("a", 1, 0, "master", "online");
    expect_shards_refused("out of bounds");
    /* negative, reversed */
    arr(1), arr(4), str("slots"), arr(2), num(-1), num(3), str("nodes"), arr(0);
    expect_shards_refused("out of bounds");
    arr(1), arr(4), str("slots"), arr(2), num(9), num(3), str("nodes"), arr(0);
    expect_shards_refused("out of bounds");
    /* an odd slot list, a slot as text, no nodes, a shard that is not a map */
    arr(1), arr(4), str("slots"), arr(1), num(0), str("nodes"), arr(0);
    expect_shards_refused("no slots or nodes");
    arr(1), arr(4), str("slots"), arr(2), str("0"), num(5), str("nodes"), arr(0);
    expect_shards_refused("not a number");
    arr(1), arr(2), str("slots"), arr(2), num(0), num(5);
    expect_shards_refused("no slots or nodes");
    arr(1), num(7);
    expect_shards_refused("no slots or nodes");
    arr(1), arr(4), str("slots"), arr(2), num(0), num(5), str("nodes"), str("a:1");
    expect_shards_refused("no slots or nodes");
}

static void test_shards_hostile_nodes_ignored(void **state)
{
    (void)state;
    /* Nodes that cannot be reached as written leave their slots without a node (and
     * never crash the parser): a bad port, a host with a space or too long, a node
     * that is not a map, a role that is a number. */
    cluster_map *m = malloc(sizeof *m);
    char err[256];
    char longhost[400];
    memset(longhost, 'h', sizeof longhost - 1);
    longhost[sizeof longhost - 1] = '\0';
    arr(5);
    arr(4), str("slots"), arr(2), num(0), num(9), str("nodes"), arr(1), shard_node("a", 0, 0, "master", "online");
    arr(4), str("slots"), arr(2), num(10), num(19), str("nodes"), arr(1), shard_node("a", 70000, 0, "master", "online");
    arr(4), str("slots"), arr(2), num(20), num(29), str("nodes"), arr(2), num(1), shard_node("a b", 1, 0, "master", "online");
    arr(4), str("slots"), arr(2), num(30), num(39), str("nodes"), arr(1), shard_node(longhost, 1, 0, "master", "online");
    arr(4), str("slots"), arr(2), num(40), num(49), str("nodes"), arr(1);
    arr(4), str("role"), num(1), str("health"), str("online");
    redisReply *r = take();
    assert_true(cluster_parse_shards(r, &asked, false, m, err, sizeof err));
    /* "a b" and the long name are unusable, so the ip field (10.0.0.1) names the node. */
    assert_owner(m, 25, "10.0.0.1", 1);
    assert_owner(m, 35, "10.0.0.1", 1);
    for (int s = 0; s < 50; s++)
        if (s < 20 || s >= 40) {
            if (cluster_map_node(m, s))
                fail_msg("slot %d has node %s:%d", s, cluster_map_node(m, s)->host, cluster_map_node(m, s)->port);
        }
    freeReplyObject(r);
    free(m);
}

/* ---- CLUSTER SLOTS ---------------------------------------------------------------- */

static void test_slots(void **state)
{
    (void)state;
    cluster_map *m = malloc(sizeof *m);
    char err[256];
    arr(4);
    arr(4), num(0), num(5460), arr(3), str("127.0.0.1"), num(30001), str("id1"), arr(3), str("127.0.0.1"), num(30004),
        str("id4");
    arr(3), num(5461), num(10922), arr(2), str(""), num(30002);
    /* A node shutting down has no known endpoint: nil or "?" */
    arr(3), num(10923), num(13000), arr(2), nil(), num(30003);
    arr(3), num(13001), num(16383), arr(4), str("?"), num(30003), str("id3"), arr(0);
    redisReply *r = take();
    assert_true(cluster_parse_slots(r, &asked, m, err, sizeof err));
    assert_owner(m, 0, "127.0.0.1", 30001);
    assert_owner(m, 5460, "127.0.0.1", 30001);
    assert_owner(m, 5461, "seed.example", 30002);
    assert_owner(m, 10923, NULL, 0);
    assert_owner(m, 16383, NULL, 0);
    assert_int_equal(m->nnodes, 2);
    freeReplyObject(r);

    arr(2);
    arr(3), num(0), num(10), arr(2), str("a"), num(1);
    arr(3), num(10), num(20), arr(2), str("b"), num(2);
    r = take();
    assert_false(cluster_parse_slots(r, &asked, m, err, sizeof err));
    assert_non_null(strstr(err, "claimed twice"));
    freeReplyObject(r);
    arr(1), arr(2), num(0), num(1);
    r = take();
    assert_false(cluster_parse_slots(r, &asked, m, err, sizeof err));
    freeReplyObject(r);
    arr(1), arr(3), num(0), num(1), arr(2), str("a"), num(70000);
    r = take();
    assert_false(cluster_parse_slots(r, &asked, m, err, sizeof err));
    assert_non_null(strstr(err, "bad port"));
    freeReplyObject(r);
    arr(1), arr(3), num(0), num(1), arr(2), str("a"), str("1");
    r = take();
    assert_false(cluster_parse_slots(r, &asked, m, err, sizeof err));
    freeReplyObject(r);
    arr(1), arr(3), str("0"), num(1), arr(2), str("a"), num(1);
    r = take();
    assert_false(cluster_parse_slots(r, &asked, m, err, sizeof err));
    freeReplyObject(r);
    free(m);
}

static void test_redirects(void **state)
{
    (void)state;
    int slot = -1;
    redis_addr to;
    const redis_addr from = {.host = "10.0.0.9", .port = 7005};
    assert_int_equal(cluster_parse_redirect("MOVED 3999 127.0.0.1:6381", &from, &slot, &to), REDIRECT_MOVED);
    assert_int_equal(slot, 3999);
    assert_string_equal(to.host, "127.0.0.1");
    assert_int_equal(to.port, 6381);
    assert_int_equal(cluster_parse_redirect("ASK 16383 node-b.example:7002", &from, &slot, &to), REDIRECT_ASK);
    assert_int_equal(slot, 16383);
    assert_string_equal(to.host, "node-b.example");
    assert_int_equal(cluster_parse_redirect("MOVED 12 ::1:7000", &from, &slot, &to), REDIRECT_MOVED);
    assert_string_equal(to.host, "::1");
    assert_int_equal(to.port, 7000);
    /* An empty host (cluster-preferred-endpoint-type unknown-endpoint): the node that
     * answered, on the port given. */
    assert_int_equal(cluster_parse_redirect("MOVED 4476 :23613", &from, &slot, &to), REDIRECT_MOVED);
    assert_int_equal(slot, 4476);
    assert_string_equal(to.host, "10.0.0.9");
    assert_int_equal(to.port, 23613);
    assert_int_equal(cluster_parse_redirect("ASK 1 :6379", &from, &slot, &to), REDIRECT_ASK);
    assert_string_equal(to.host, "10.0.0.9");
    assert_int_equal(to.port, 6379);
    /* ... but not when the node that answered is unknown. */
    assert_int_equal(cluster_parse_redirect("MOVED 1 :6379", NULL, &slot, &to), REDIRECT_MOVED);
    assert_int_equal(to.port, 0);
    /* Any "MOVED "/"ASK " is a redirection (the map is stale); one whose slot or node
     * cannot be read gives no node to follow. */
    static const struct {
        const char *reply;
        enum cluster_redirect kind;
        int slot;
    } odd[] = {{"MOVED x h:1", REDIRECT_MOVED, -1},     {"MOVED 16384 h:1", REDIRECT_MOVED, -1},
               {"MOVED -1 h:1", REDIRECT_MOVED, -1},    {"MOVED 1 h:0", REDIRECT_MOVED, 1},
               {"MOVED 1 h:99999", REDIRECT_MOVED, 1},  {"MOVED 1 h", REDIRECT_MOVED, 1},
               {"MOVED 1  h:1", REDIRECT_MOVED, 1},     {"MOVED 1 h:1x", REDIRECT_MOVED, 1},
               {"ASK 7 bad\x01host:1", REDIRECT_ASK, 7}, {"ASK ", REDIRECT_ASK, -1},
               {"MOVED ", REDIRECT_MOVED, -1}};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        to = (redis_addr){.host = "stale", .port = 1};
        slot = 99;
        if (cluster_parse_redirect(odd[i].reply, &from, &slot, &to) != odd[i].kind)
            fail_msg("'%s' not taken as a redirection", odd[i].reply);
        if (slot != odd[i].slot || to.port != 0 || to.host[0])
            fail_msg("'%s': slot %d (want %d), node '%s':%d (want none)", odd[i].reply, slot, odd[i].slot, to.host,
                     to.port);
    }
    static const char *const bad[] = {"MOVED", "ASKING 1 h:1", "NOSCRIPT No matching script", "ERR MOVED 1 h:1",
                                      "ASK", "moved 1 h:1", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (cluster_parse_redirect(bad[i], &from, &slot, &to) != REDIRECT_NONE)
            fail_msg("'%s' taken as a redirection", bad[i]);
    assert_true(cluster_error_is_retry("TRYAGAIN Multiple keys request during rehashing of slot"));
    assert_true(cluster_error_is_retry("CLUSTERDOWN The cluster is down"));
    assert_false(cluster_error_is_retry("ERR CLUSTERDOWN"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_slot),
        cmocka_unit_test(test_mark_key_in_channel_slot),
        cmocka_unit_test(test_shards_healthy_and_failing),
        cmocka_unit_test(test_shards_empty_node),
        cmocka_unit_test(test_shards_tls_and_unknown_endpoint),
        cmocka_unit_test(test_shards_hostile),
        cmocka_unit_test(test_shards_hostile_nodes_ignored),
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_redirects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
