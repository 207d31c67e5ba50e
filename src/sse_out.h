/* A stream's way out (sse_out.c): the bytes of one browser's event stream written to
 * its HTTP connection, as HTTP/1.1 chunks or, for an HTTP/1.0 client, as they are. */
#ifndef OUTBOXD_SSE_OUT_H
#define OUTBOXD_SSE_OUT_H

#include <event2/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/uio.h>

/* Most pieces one out_writev takes (the run cache holds 256 frames, a read 200 rows). */
#define OUT_MAX_PIECES 256

typedef struct out_conn {
    struct evhttp_request *req;
    struct evhttp_connection *conn;
    struct evbuffer *queue; /* the connection's output buffer (set by out_start) */
    int fd;                 /* the connection's socket */
    bool chunked;           /* HTTP/1.1: every write is one chunk */
} out_conn;

/* Starts a stream's reply: 200 with the headers the caller added. An HTTP/1.1 client
 * gets chunked encoding; an HTTP/1.0 client a body that ends when the connection
 * closes, with Connection: close even if it asked for keep-alive. */
void out_reply_start(struct evhttp_request *req);
/* Call right after out_reply_start(req): drops the request's headers
 * (all but Connection), gives the socket a send buffer of sndbuf bytes, sends the
 * stream's first bytes and registers drained(conn, arg), called each time the
 * connection's queue (bytes the socket did not take at once) has been written out.
 * False when out of memory (nothing was sent). */
bool out_start(out_conn *o, struct evhttp_request *req, const char *first, size_t len, int sndbuf,
               void (*drained)(struct evhttp_connection *, void *), void *arg)
    __attribute__((warn_unused_result));
/* Bytes waiting in the connection's queue. */
size_t out_queued(const out_conn *o);
/* Writes iov[0..n) (n <= OUT_MAX_PIECES) as one chunk. The caller's memory is only
 * read during the call. Must not be called after the reply's end. */
void out_writev(const out_conn *o, const struct iovec *iov, int n);
void out_write(const out_conn *o, const char *data, size_t len);

#endif
