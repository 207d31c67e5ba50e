/* An outbox event as the relay and the gateway see it, a batch of them, and the one
 * function that turns an event into the Redis message of the wire contract. */
#ifndef OUTBOXD_EVENT_H
#define OUTBOXD_EVENT_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

typedef struct event {
    long long id;
    long long seq;
    const char *run_id;     /* points into the batch's storage */
    size_t run_id_len;
    const char *created_at; /* ISO 8601, UTC */
    const char *payload;    /* stored JSON text, verbatim */
    size_t payload_len;
    double created_epoch;   /* seconds since 1970, for latency */
    unsigned flags;         /* how the relay's cycle read it (store_pg.h STORE_ROW_*) */
} event;

typedef struct batch {
    event *ev;
    size_t n;
    size_t cap;
    void *owner;            /* storage behind the strings (a PGresult); freed by batch_clear */
    void (*owner_free)(void *);
} batch;

void batch_init(batch *b);
/* Drops the events and the storage behind them; the array is kept for reuse. */
void batch_clear(batch *b);
void batch_free(batch *b);
/* Makes room for n events; returns false when out of memory. */
bool batch_reserve(batch *b, size_t n) WUR;

/* Whether e belongs to the run named id[0..len) (run ids are bytes, not C strings). */
static inline bool event_run_is(const event *e, const char *id, size_t len)
{
    return e->run_id_len == len && memcmp(e->run_id, id, len) == 0;
}

/* Appends the wire message
 *   {"id":N,"run_id":"...","seq":N,"created_at":"...","payload":<stored JSON>}  */
bool event_format_message(buf *out, const event *e) WUR;

/* Reads back a wire message made by event_format_message: *seq and the payload
 * (pointing into m). Returns false for anything else. */
bool event_parse_message(const char *m, size_t len, long long *seq, const char **payload,
                         size_t *payload_len) WUR;

/* Appends the Server-Sent Events frame "id: SEQ\ndata: LINE\n...\n" for a payload,
 * one data: line per line of it (CR, LF and CRLF all end a line in SSE). */
bool event_format_sse(buf *out, long long seq, const char *payload, size_t len) WUR;

#endif
