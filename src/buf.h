/* A growable byte buffer with an explicit ceiling. Used to build Redis messages,
 * log lines and SSE frames; every buffer fed by a peer must pass a limit. */
#ifndef OUTBOXD_BUF_H
#define OUTBOXD_BUF_H

#include <stdbool.h>
#include <stddef.h>

#define WUR __attribute__((warn_unused_result))

typedef struct buf {
    char *data;   /* NUL-terminated while len < cap; owned by the buffer */
    size_t len;
    size_t cap;
    size_t limit; /* appends that would pass this fail; 0 = no limit */
} buf;

/* Starts an empty buffer; nothing is allocated until the first append. */
void buf_init(buf *b, size_t limit);
/* Releases the memory; the buffer may be used again after buf_init. */
void buf_free(buf *b);
void buf_reset(buf *b);

bool buf_append(buf *b, const void *p, size_t n) WUR;
bool buf_puts(buf *b, const char *s) WUR;
bool buf_printf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3))) WUR;
/* Appends s (n bytes) as a JSON string literal, quotes included. Control bytes are
 * escaped; other bytes (UTF-8 included) pass through unchanged. */
bool buf_json_string(buf *b, const char *s, size_t n) WUR;

#endif
