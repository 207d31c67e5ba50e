/* A run's recent events as Server-Sent Events frames (sse_cache.c): frames shared by
 * reference count, the cache of a contiguous range of seq that streams pull from,
 * and the live frames held back while a read of the run is in flight. Neither knows
 * about runs or streams. */
#ifndef OUTBOXD_SSE_CACHE_H
#define OUTBOXD_SSE_CACHE_H

#include <stdbool.h>
#include <stddef.h>

/* Most frames, and about the most bytes, a cache keeps. */
#define CACHE_FRAMES 256
#define CACHE_BYTES (1u << 20)
/* Most frames held back. */
#define HELD_MAX 1024

/* One event formatted as an SSE frame, shared by reference count. */
typedef struct frame {
    long long seq;
    int refs;
    size_t len;
    char data[];
} frame;

/* The frame of event seq with this payload (one reference, the caller's); NULL when
 * out of memory. */
frame *frame_new(long long seq, const char *payload, size_t len);
void frame_unref(frame *f);

/* Frames lo..head at ring[seq % cap]. The ring doubles as needed up to CACHE_FRAMES,
 * so that a quiet run costs little. Zeroed, it is empty and not valid. */
typedef struct cache {
    frame **ring;
    int cap;
    long long lo, head;
    size_t bytes;
    bool valid; /* lo..head describe real data (an empty range: nothing after head yet) */
} cache;

/* Drops every frame; the cache is no longer valid. */
void cache_clear(cache *k);
/* Frees the ring too. */
void cache_free(cache *k);
/* A valid empty cache after seq (the run's newest event, or nothing yet at 0). */
void cache_start_after(cache *k, long long seq);
/* Adds f (taking a reference of its own) unless f->seq <= head. If f->seq is not
 * head + 1, the cache restarts at f (events before it were deleted, or a stream asked
 * for a point past the cached range). The oldest frames go to make room. */
void cache_put(cache *k, frame *f);
/* The frame of seq, which must lie in lo..head. */
static inline frame *cache_at(const cache *k, long long seq)
{
    return k->ring[seq % k->cap];
}

/* Live frames held in arrival order, at most HELD_MAX and about CACHE_BYTES. */
typedef struct held {
    frame **f;
    int n, cap;
    size_t bytes;
} held;

/* Holds f (taking a reference of its own). False when full or out of memory. */
bool held_add(held *h, frame *f);
/* Drops every reference and the array. */
void held_clear(held *h);

#endif
