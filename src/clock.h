/* Small time helpers shared by the event-loop modules: a monotonic clock, libevent
 * timeouts, and the one reconnect backoff (100 ms doubling to 2 s). */
#ifndef OUTBOXD_CLOCK_H
#define OUTBOXD_CLOCK_H

#include <sys/time.h>
#include <time.h>

#define BACKOFF_FIRST_MS 100
#define BACKOFF_MAX_MS 2000

/* Seconds since 1970 (what created_at is compared with). */
static inline double clock_real_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Seconds on the monotonic clock. */
static inline double clock_mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Milliseconds on the monotonic clock. */
static inline long long clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline struct timeval clock_tv_ms(long ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* The next reconnect delay after *backoff_ms (0 = connected until now); stores it. */
static inline long clock_backoff(long *backoff_ms)
{
    *backoff_ms = *backoff_ms ? *backoff_ms * 2 : BACKOFF_FIRST_MS;
    if (*backoff_ms > BACKOFF_MAX_MS)
        *backoff_ms = BACKOFF_MAX_MS;
    return *backoff_ms;
}

#endif
