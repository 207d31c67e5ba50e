/* The gateway's send path without a server: sse_out.c's writes over a socket pair
 * whose peer reads slowly (partial writes, bytes queued, the queue written out the
 * way libevent does), a peer that is gone (no SIGPIPE), and the reference counts of
 * the frames that sse_cache.c shares between a run's cache and its held list. */
#include "buf.h"
#include "sse_cache.h"
#include "sse_out.h"

#include <errno.h>
#include <event2/buffer.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

/* A connection as sse_out.c sees it: fd[0] is the gateway's end (non-blocking, a
 * small send buffer), fd[1] the reader's; queue stands for evhttp's output buffer. */
typedef struct pair {
    int fd[2];
    struct evbuffer *queue;
    out_conn o;
    buf got; /* what the reader has read */
} pair;

/* A loopback TCP connection, the gateway's real case (a Unix socket pair rarely
 * takes part of a write). */
static void pair_open(pair *p, bool chunked)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    p->fd[1] = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    /* The receive buffer is set before connecting: it decides the window. */
    assert_int_equal(setsockopt(p->fd[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof small), 0);
    assert_int_equal(connect(p->fd[1], (struct sockaddr *)&a, sizeof a), 0);
    p->fd[0] = accept(l, NULL, NULL);
    assert_true(p->fd[0] >= 0);
    close(l);
    assert_int_equal(setsockopt(p->fd[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small), 0);
    assert_int_equal(fcntl(p->fd[0], F_SETFL, O_NONBLOCK), 0);
    assert_int_equal(fcntl(p->fd[1], F_SETFL, O_NONBLOCK), 0);
    p->queue = evbuffer_new();
    assert_non_null(p->queue);
    p->o = (out_conn){.queue = p->queue, .fd = p->fd[0], .chunked = chunked};
    buf_init(&p->got, 0);
}

static void pair_close(pair *p)
{
    if (p->fd[1] >= 0)
        close(p->fd[1]);
    close(p->fd[0]);
    evbuffer_free(p->queue);
    buf_free(&p->got);
}

/* The reader takes at most `most` bytes (all it can when most is 0). */
static void reader_read(pair *p, size_t most)
{
    char b[65536];
    size_t left = most ? most : SIZE_MAX;
    while (left > 0) {
        ssize_t n = read(p->fd[1], b, left < sizeof b ? left : sizeof b);
        if (n <= 0) {
            assert_true(n == 0 || errno == EAGAIN);
            return;
        }
        assert_true(buf_append(&p->got, b, (size_t)n));
        left -= (size_t)n;
    }
}

/* What libevent does when the socket is writable: write from the queue's front. */
static void queue_write(pair *p)
{
    if (evbuffer_get_length(p->queue) > 0) {
        int n = evbuffer_write(p->queue, p->fd[0]);
        assert_true(n >= 0 || errno == EAGAIN);
    }
}

/* Writes of 1 to 3 frames of 1..2,000 bytes, each frame's bytes distinct, through a
 * socket that takes far less than is written: every write's bytes arrive whole, in
 * order, once, each chunk framed (chunked) or bare (HTTP/1.0), whatever part of a
 * write the socket took at once. */
static void check_slow_reader(bool chunked)
{
    pair p;
    pair_open(&p, chunked);
    buf want;
    buf_init(&want, 0);
    static char frames[3][2000];
    size_t queued_max = 0;
    unsigned partial = 0;
    for (int w = 0; w < 400; w++) {
        struct iovec iov[3];
        int n = 1 + w % 3;
        size_t total = 0;
        for (int i = 0; i < n; i++) {
            size_t len = 1 + (size_t)(w * 131 + i * 977) % 2000;
            memset(frames[i], 'a' + (w * 3 + i) % 26, len);
            frames[i][len - 1] = '\n';
            iov[i] = (struct iovec){frames[i], len};
            total += len;
        }
        size_t wstart = want.len;
        if (chunked) {
            char head[32];
            snprintf(head, sizeof head, "%zx\r\n", total);
            assert_true(buf_append(&want, head, strlen(head)));
        }
        for (int i = 0; i < n; i++)
            assert_true(buf_append(&want, iov[i].iov_base, iov[i].iov_len));
        if (chunked)
            assert_true(buf_append(&want, "\r\n", 2));

        size_t before = out_queued(&p.o);
        out_writev(&p.o, iov, n);
        /* The caller's memory is only read during the call. */
        for (int i = 0; i < n; i++)
            memset(frames[i], '#', sizeof frames[i]);
        size_t after = out_queued(&p.o);
        if (before == 0 && after > 0 && after < want.len - wstart)
            partial++; /* the socket took part of the write */
        if (after > queued_max)
            queued_max = after;
        /* The reader lags: it reads a little now and then, and libevent writes out
         * the queue when the socket has room. */
        reader_read(&p, 1800);
        if (w % 3 == 0)
            queue_write(&p);
    }
    while (out_queued(&p.o) > 0 || p.got.len < want.len) {
        queue_write(&p);
        reader_read(&p, 0);
    }
    assert_true(queued_max > 0); /* the queue was used */
    assert_true(partial > 0);    /* and some writes were split between socket and queue */
    assert_int_equal(p.got.len, want.len);
    assert_memory_equal(p.got.data, want.data, want.len);
    buf_free(&want);
    pair_close(&p);
}

static void test_slow_reader_chunked(void **state)
{
    (void)state;
    check_slow_reader(true);
}

static void test_slow_reader_http10(void **state)
{
    (void)state;
    check_slow_reader(false);
}

/* A reader that has gone: the write neither raises SIGPIPE (the default action, which
 * ends the process, is in force during the writes) nor fails the caller; its bytes
 * wait in the queue, where libevent meets the error and evhttp closes the stream. */
static void check_peer_gone(bool error_consumed)
{
    pair p;
    pair_open(&p, true);
    /* The reader resets the connection (SO_LINGER 0), as a closed tab's may. */
    struct linger lg = {1, 0};
    assert_int_equal(setsockopt(p.fd[1], SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    close(p.fd[1]);
    p.fd[1] = -1;
    usleep(10000);
    if (error_consumed) {
        /* The reset was already reported elsewhere (a read): the next send meets
         * EPIPE, which raises SIGPIPE unless the send says not to. */
        int err = 0;
        socklen_t elen = sizeof err;
        assert_int_equal(getsockopt(p.fd[0], SOL_SOCKET, SO_ERROR, &err, &elen), 0);
        assert_int_equal(err, ECONNRESET);
    }
    void (*old)(int) = signal(SIGPIPE, SIG_DFL);
    out_write(&p.o, "id: 1\ndata: x\n\n", 15);
    out_write(&p.o, "id: 2\ndata: y\n\n", 15);
    out_write(&p.o, "id: 3\ndata: z\n\n", 15);
    signal(SIGPIPE, old);
    /* Whatever the failed sends left is queued, whole chunks and in order, for
     * libevent to meet the error. */
    assert_true(out_queued(&p.o) > 0);
    assert_true(out_queued(&p.o) <= 3 * (3 + 15 + 2));
    assert_int_equal(out_queued(&p.o) % (3 + 15 + 2), 0);
    pair_close(&p);
}

static void test_peer_reset(void **state)
{
    (void)state;
    check_peer_gone(false);
}

static void test_peer_gone_epipe(void **state)
{
    (void)state;
    check_peer_gone(true);
}

/* An empty write sends nothing: a zero-size chunk would end an HTTP/1.1 body. */
static void test_empty_write(void **state)
{
    (void)state;
    pair p;
    pair_open(&p, true);
    struct iovec iov = {(char *)"", 0};
    out_writev(&p.o, &iov, 1);
    reader_read(&p, 0);
    assert_int_equal(p.got.len, 0);
    assert_int_equal(out_queued(&p.o), 0);
    pair_close(&p);
}

/* Frames are shared: the cache and the held list each keep a reference, the caller
 * keeps its own, and a frame is freed with its last reference (LeakSanitizer and
 * AddressSanitizer check the frees in the sanitizer build). */
static void test_frame_references(void **state)
{
    (void)state;
    cache k = {0};
    held h = {0};
    frame *keep[CACHE_FRAMES + 44];
    int n = CACHE_FRAMES + 44;
    cache_start_after(&k, 0);
    for (int i = 0; i < n; i++) {
        keep[i] = frame_new(i + 1, "{\"a\":1}", 7);
        assert_non_null(keep[i]);
        cache_put(&k, keep[i]);
        if (i % 2 == 0)
            assert_true(held_add(&h, keep[i]));
    }
    /* The oldest frames left the cache to make room; the newest are in it. */
    assert_int_equal(k.head, n);
    assert_int_equal(k.lo, n - CACHE_FRAMES + 1);
    for (int i = 0; i < n; i++) {
        int in_cache = i + 1 >= k.lo;
        assert_int_equal(keep[i]->refs, 1 + in_cache + (i % 2 == 0));
        if (in_cache)
            assert_ptr_equal(cache_at(&k, i + 1), keep[i]);
    }
    /* A frame that is not the next restarts the cache there. */
    frame *later = frame_new(n + 10, "{}", 2);
    cache_put(&k, later);
    assert_int_equal(k.lo, n + 10);
    assert_int_equal(k.head, n + 10);
    assert_int_equal(later->refs, 2);
    for (int i = 0; i < n; i++)
        assert_int_equal(keep[i]->refs, 1 + (i % 2 == 0));
    held_clear(&h);
    for (int i = 0; i < n; i++) {
        assert_int_equal(keep[i]->refs, 1);
        frame_unref(keep[i]);
    }
    frame_unref(later);
    assert_ptr_equal(cache_at(&k, n + 10), later); /* still alive: the cache's */
    assert_int_equal(later->refs, 1);
    cache_free(&k);
}

/* A held list is bounded in frames. */
static void test_held_bound(void **state)
{
    (void)state;
    held h = {0};
    frame *f = frame_new(1, "{}", 2);
    for (int i = 0; i < HELD_MAX; i++)
        assert_true(held_add(&h, f));
    assert_false(held_add(&h, f));
    assert_int_equal(f->refs, 1 + HELD_MAX);
    held_clear(&h);
    assert_int_equal(f->refs, 1);
    frame_unref(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slow_reader_chunked), cmocka_unit_test(test_slow_reader_http10),
        cmocka_unit_test(test_peer_reset),          cmocka_unit_test(test_peer_gone_epipe),
        cmocka_unit_test(test_empty_write),         cmocka_unit_test(test_frame_references),
        cmocka_unit_test(test_held_bound),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
