/* The relay's small HTTP endpoint (--http-listen): /metrics, /healthz, /readyz. It
 * runs in a thread of its own so that the relay's loop can stay synchronous; the
 * callbacks it is given run on that thread and must only read what the relay
 * publishes under a lock. */
#ifndef OUTBOXD_ADMIN_HTTP_H
#define OUTBOXD_ADMIN_HTTP_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct admin_handlers {
    /* Writes the Prometheus text for /metrics; false on failure (500). */
    bool (*metrics)(buf *out, void *arg);
    /* Fills body; returns true when ready (200) and false when not (503). */
    bool (*ready)(buf *body, void *arg);
    void *arg;
} admin_handlers;

typedef struct admin admin;

/* Binds listen (HOST:PORT) and starts serving. NULL with a reason in err on failure.
 * handlers is copied. Stop and free with admin_stop. */
admin *admin_start(const char *listen, const admin_handlers *handlers, char *err, size_t errlen);
void admin_stop(admin *a);

/* sd_notify(3)'s protocol, which is one datagram to $NOTIFY_SOCKET; written here
 * rather than linking libsystemd for it. Does nothing outside systemd. */
void admin_sd_notify(const char *state);

#endif
