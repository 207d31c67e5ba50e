/* A stream's way out. libevent's evhttp owns the connection, but its chunk API costs
 * more than the write itself when one event goes to thousands of streams: a buffer
 * per call, a printf for the chunk size, a callback swap and the write event armed
 * and disarmed (two epoll_ctl) per call. So while nothing waits in the connection's
 * queue, a write goes straight to the socket from the caller's memory: one sendmsg,
 * no copy, no epoll change. What the socket does not take, and whatever is written
 * while bytes wait, is appended to evhttp's queue, which libevent writes out in order
 * and whose emptying calls the stream's drain callback. */
#include "sse_out.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http_struct.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>

/* "<size in hex>\r\n" */
static size_t chunk_head(char *out, size_t len)
{
    char rev[2 * sizeof len];
    size_t n = 0;
    do {
        rev[n++] = "0123456789abcdef"[len & 15];
        len >>= 4;
    } while (len);
    for (size_t i = 0; i < n; i++)
        out[i] = rev[n - 1 - i];
    out[n] = '\r';
    out[n + 1] = '\n';
    return n + 2;
}

/* A stream keeps its request as long as it lasts, but not the headers: the reply's
 * are on the wire by now and the request's have been read, and a browser's (its
 * cookies above all) can take kilobytes per stream. Only Connection stays, which
 * evhttp reads when the reply ends. */
static void drop_headers(struct evhttp_request *req)
{
    evhttp_clear_headers(evhttp_request_get_output_headers(req));
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *h = in->tqh_first, *next; h; h = next) {
        next = h->next.tqe_next;
        if (evutil_ascii_strcasecmp(h->key, "Connection") != 0)
            evhttp_remove_header(in, h->key); /* h is the first with its name */
    }
}

void out_reply_start(struct evhttp_request *req)
{
    /* HTTP/1.0 has no chunks: a stream is the rest of its connection. A 1.0 request
     * with "Connection: keep-alive" would make evhttp answer "Content-Length: 0" (the
     * body it holds so far) and keep the connection, so that the client reads the
     * events as garbage before a next response. Such a request is answered as one
     * that asked for nothing: the connection closes after the stream. (libevent has
     * no accessor for the version; http_struct.h is its public layout.) */
    if (req->major == 1 && req->minor == 0) {
        struct evkeyvalq *in = evhttp_request_get_input_headers(req);
        while (evhttp_remove_header(in, "Connection") == 0) {
        }
        evhttp_add_header(in, "Connection", "close");
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
    }
    evhttp_send_reply_start(req, 200, "OK");
}

bool out_start(out_conn *o, struct evhttp_request *req, const char *first, size_t len, int sndbuf,
               void (*drained)(struct evhttp_connection *, void *), void *arg)
{
    o->req = req;
    o->conn = evhttp_request_get_connection(req);
    struct bufferevent *bev = o->conn ? evhttp_connection_get_bufferevent(o->conn) : NULL;
    o->fd = bev ? bufferevent_getfd(bev) : -1;
    o->queue = bev ? bufferevent_get_output(bev) : NULL;
    /* What evhttp_send_reply_start chose (HTTP/1.1 and a reply with a body). */
    o->chunked = req->chunked;
    drop_headers(req);
    if (o->fd >= 0) {
        /* Events are small writes that should leave at once, not wait for the
         * browser's delayed ACK of the previous one (Nagle). A fixed send buffer keeps
         * the kernel from growing it to megabytes for a reader that lags (Linux
         * autotunes up to tcp_wmem's maximum), so that what a stream holds is bounded
         * on both sides of the socket. */
        int one = 1;
        (void)setsockopt(o->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        (void)setsockopt(o->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    }
    /* The first bytes go through evhttp: that makes `drained` the connection's write
     * callback, which libevent calls whenever the queue empties, also for bytes that
     * out_writev appends later. */
    struct evbuffer *b = evbuffer_new();
    if (!b || evbuffer_add(b, first, len) != 0) {
        if (b)
            evbuffer_free(b);
        return false;
    }
    evhttp_send_reply_chunk_with_cb(req, b, drained, arg);
    evbuffer_free(b);
    return true;
}

size_t out_queued(const out_conn *o)
{
    return o->queue ? evbuffer_get_length(o->queue) : 0;
}

void out_writev(const out_conn *o, const struct iovec *iov, int n)
{
    if (!o->queue || n <= 0 || n > OUT_MAX_PIECES)
        return;
    struct iovec v[OUT_MAX_PIECES + 2];
    char head[2 * sizeof(size_t) + 2];
    size_t total = 0;
    int k = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (total == 0)
        return;
    if (o->chunked)
        v[k++] = (struct iovec){head, chunk_head(head, total)};
    memcpy(v + k, iov, (size_t)n * sizeof *iov);
    k += n;
    if (o->chunked)
        v[k++] = (struct iovec){(char *)"\r\n", 2};

    struct evbuffer *queue = o->queue;
    size_t sent = 0;
    if (evbuffer_get_length(queue) == 0) {
        struct msghdr m = {.msg_iov = v, .msg_iovlen = (size_t)k};
        ssize_t w = sendmsg(o->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            sent = (size_t)w;
        /* Nothing sent: the socket is full (EAGAIN) or failed. Either way the bytes
         * are queued: libevent writes them when it can, or meets the error itself
         * and evhttp closes the stream. */
    }
    for (int i = 0; i < k; i++) {
        if (sent >= v[i].iov_len) {
            sent -= v[i].iov_len;
            continue;
        }
        if (evbuffer_add(queue, (char *)v[i].iov_base + sent, v[i].iov_len - sent) != 0) {
            /* Out of memory in the middle of a chunk: the stream cannot go on.
             * Shutting the socket down makes evhttp close it; the browser comes back
             * with Last-Event-ID. */
            shutdown(o->fd, SHUT_RDWR);
            return;
        }
        sent = 0;
    }
}

void out_write(const out_conn *o, const char *data, size_t len)
{
    struct iovec v = {(char *)data, len};
    out_writev(o, &v, 1);
}
