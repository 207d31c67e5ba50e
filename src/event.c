/* Event batches and the Redis wire message. */
#include "event.h"

#include <stdlib.h>
#include <string.h>

void batch_init(batch *b)
{
    b->ev = NULL;
    b->n = b->cap = 0;
    b->owner = NULL;
    b->owner_free = NULL;
}

void batch_clear(batch *b)
{
    if (b->owner && b->owner_free)
        b->owner_free(b->owner);
    b->owner = NULL;
    b->owner_free = NULL;
    b->n = 0;
}

void batch_free(batch *b)
{
    batch_clear(b);
    free(b->ev);
    batch_init(b);
}

bool batch_reserve(batch *b, size_t n)
{
    if (n <= b->cap)
        return true;
    event *p = realloc(b->ev, n * sizeof *p);
    if (!p)
        return false;
    b->ev = p;
    b->cap = n;
    return true;
}

bool event_format_message(buf *out, const event *e)
{
    return buf_printf(out, "{\"id\":%lld,\"run_id\":", e->id) &&
           buf_json_string(out, e->run_id, e->run_id_len) &&
           buf_printf(out, ",\"seq\":%lld,\"created_at\":\"%s\",\"payload\":", e->seq, e->created_at) &&
           buf_append(out, e->payload, e->payload_len) && buf_puts(out, "}");
}

/* Skips a JSON string starting at its opening quote; returns the byte after it. */
static const char *skip_json_string(const char *p, const char *end)
{
    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return NULL;
}

static const char *expect(const char *p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    return p && (size_t)(end - p) >= n && memcmp(p, lit, n) == 0 ? p + n : NULL;
}

static const char *skip_int(const char *p, const char *end, long long *out)
{
    if (!p)
        return NULL;
    long long v = 0;
    const char *start = p;
    while (p < end && *p >= '0' && *p <= '9' && p - start < 18)
        v = v * 10 + (*p++ - '0');
    if (p == start)
        return NULL;
    if (out)
        *out = v;
    return p;
}

bool event_parse_message(const char *m, size_t len, long long *seq, const char **payload,
                         size_t *payload_len)
{
    const char *end = m + len;
    const char *p = skip_int(expect(m, end, "{\"id\":"), end, NULL);
    p = expect(p, end, ",\"run_id\":");
    p = p ? skip_json_string(p, end) : NULL;
    p = skip_int(expect(p, end, ",\"seq\":"), end, seq);
    p = expect(p, end, ",\"created_at\":");
    p = p ? skip_json_string(p, end) : NULL;
    p = expect(p, end, ",\"payload\":");
    if (!p || end - p < 2 || end[-1] != '}')
        return false;
    *payload = p;
    *payload_len = (size_t)(end - 1 - p);
    return true;
}

bool event_format_sse(buf *out, long long seq, const char *payload, size_t len)
{
    if (!buf_printf(out, "id: %lld\n", seq))
        return false;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < len && payload[j] != '\n' && payload[j] != '\r')
            j++;
        if (!buf_puts(out, "data: ") || !buf_append(out, payload + i, j - i) || !buf_puts(out, "\n"))
            return false;
        if (j >= len)
            break;
        if (payload[j] == '\r' && j + 1 < len && payload[j + 1] == '\n')
            j++;
        i = j + 1;
    }
    return buf_puts(out, "\n");
}
