/* Event batches and the Redis wire message. */
#include "event.h"

#include <stdlib.h>

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
