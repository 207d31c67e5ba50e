/* Frames, a run's cache of them and the frames held back during a read. A frame is
 * formatted once and then shared by every stream that is sent it (their writes point
 * into it); the cache and the held list each keep a reference of their own. */
#include "sse_cache.h"

#include "buf.h"
#include "event.h"

#include <stdlib.h>
#include <string.h>

frame *frame_new(long long seq, const char *payload, size_t len)
{
    buf b;
    buf_init(&b, 0);
    if (!event_format_sse(&b, seq, payload, len)) {
        buf_free(&b);
        return NULL;
    }
    frame *f = malloc(sizeof *f + b.len);
    if (f) {
        f->seq = seq;
        f->refs = 1;
        f->len = b.len;
        memcpy(f->data, b.data, b.len);
    }
    buf_free(&b);
    return f;
}

void frame_unref(frame *f)
{
    if (f && --f->refs == 0)
        free(f);
}

void cache_clear(cache *k)
{
    for (long long s = k->lo; k->valid && s <= k->head; s++) {
        frame_unref(k->ring[s % k->cap]);
        k->ring[s % k->cap] = NULL;
    }
    k->bytes = 0;
    k->valid = false;
    k->lo = 1;
    k->head = 0;
}

void cache_free(cache *k)
{
    cache_clear(k);
    free(k->ring);
    k->ring = NULL;
    k->cap = 0;
}

void cache_start_after(cache *k, long long seq)
{
    cache_clear(k);
    k->valid = true;
    k->lo = seq + 1;
    k->head = seq;
}

static void ring_grow(cache *k)
{
    int cap = k->cap ? k->cap * 2 : 8;
    frame **ring = calloc((size_t)cap, sizeof *ring);
    if (!ring)
        return;
    for (long long s = k->lo; k->valid && s <= k->head; s++)
        ring[s % cap] = k->ring[s % k->cap];
    free(k->ring);
    k->ring = ring;
    k->cap = cap;
}

void cache_put(cache *k, frame *f)
{
    if (k->valid && f->seq <= k->head)
        return;
    if (!k->valid || f->seq != k->head + 1)
        cache_start_after(k, f->seq - 1);
    if (k->head - k->lo + 1 >= k->cap && k->cap < CACHE_FRAMES)
        ring_grow(k); /* if it cannot, the oldest frames make room */
    if (k->cap == 0)
        return; /* not cached: streams that need it read it */
    while (k->head - k->lo + 1 >= k->cap || (k->bytes + f->len > CACHE_BYTES && k->lo <= k->head)) {
        frame *old = k->ring[k->lo % k->cap];
        k->bytes -= old->len;
        frame_unref(old);
        k->ring[k->lo % k->cap] = NULL;
        k->lo++;
    }
    f->refs++;
    k->ring[f->seq % k->cap] = f;
    k->head = f->seq;
    k->bytes += f->len;
}

bool held_add(held *h, frame *f)
{
    if (h->n == HELD_MAX || h->bytes + f->len > CACHE_BYTES)
        return false;
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 8;
        frame **p = realloc(h->f, (size_t)cap * sizeof *p);
        if (!p)
            return false;
        h->f = p;
        h->cap = cap;
    }
    f->refs++;
    h->f[h->n++] = f;
    h->bytes += f->len;
    return true;
}

void held_clear(held *h)
{
    for (int i = 0; i < h->n; i++)
        frame_unref(h->f[i]);
    free(h->f);
    *h = (held){0};
}
