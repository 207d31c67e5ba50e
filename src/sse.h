/* The SSE gateway: streams each run's events to browsers as Server-Sent Events, live
 * from Redis and replayed from PostgreSQL (the source of truth), so that a browser
 * that comes back with Last-Event-ID sees every event of the run once, in order. */
#ifndef OUTBOXD_SSE_H
#define OUTBOXD_SSE_H

#include "config.h"

#include <stdbool.h>
#include <stddef.h>

/* Longest run id accepted in a URL, in bytes. */
#define SSE_MAX_RUN_ID 4096

/* Serves until SIGTERM or SIGINT; returns the process exit code. */
int sse_main(const config *cfg);

/* Request parsing, exposed for unit tests. */
typedef enum sse_route { ROUTE_NOT_FOUND, ROUTE_EVENTS, ROUTE_VIEWER, ROUTE_HEALTH, ROUTE_METRICS } sse_route;
/* Decodes the path: /runs/{run_id}/events, /runs/{run_id}, /healthz, /metrics. The run id is
 * percent-decoded into run_id (NUL-terminated; *len its length). Returns
 * ROUTE_NOT_FOUND for other paths; sets *bad (with a reason) for a run id that is
 * empty, too long, or not valid UTF-8. */
sse_route sse_parse_path(const char *path, char *run_id, size_t cap, size_t *len, const char **bad);
/* Parses a Last-Event-ID value: a decimal seq >= 0. */
bool sse_parse_last_id(const char *s, long long *out);
/* Whether s[0..n) is valid UTF-8 (no overlongs, no surrogates, no NUL). */
bool sse_valid_utf8(const char *s, size_t n);

#endif
