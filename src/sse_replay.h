/* The gateway's reads from PostgreSQL (the source of truth): one asynchronous
 * connection, one read at a time, jobs waiting in a FIFO queue. A job is what the
 * caller embeds in the thing it wants read (a run); the handlers say where a read
 * starts when its turn comes and take the rows. */
#ifndef OUTBOXD_SSE_REPLAY_H
#define OUTBOXD_SSE_REPLAY_H

#include "auth.h"
#include "config.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct replay_job {
    struct replay_job *next;
    bool queued; /* waiting in the queue */
    bool busy;   /* its read is in flight */
    long long from;
} replay_job;

typedef struct replay_row {
    long long seq;
    const char *data; /* the SSE payload, valid during the call */
    size_t len;
} replay_row;

typedef struct replay_handlers {
    /* The job's turn: its run id and the seq after which to read. False when no
     * read is needed any more; the job is then out of the queue and the handler
     * may free it. */
    bool (*start)(replay_job *j, const char **run_id, long long *from);
    /* The events after j->from, in seq order. complete: nothing after them was
     * committed, and newest is the run's newest seq. */
    void (*done)(replay_job *j, const replay_row *rows, int n, bool complete, long long newest);
    /* The read failed with an error (not a lost connection, after which the job
     * is read again first once the connection is back). The job is out of the queue. */
    void (*failed)(replay_job *j);
} replay_handlers;

bool replay_start(struct event_base *base, const config *cfg, const replay_handlers *handlers)
    __attribute__((warn_unused_result));
void replay_stop(void);
/* Puts j at the end of the queue (unless it is queued or busy already). */
void replay_queue(replay_job *j);
bool replay_up(void);
/* Reads started since replay_start. */
unsigned long long replay_count(void);
/* Keeps cb told of the revocations in force: the connection LISTENs for revocations
 * and reads the whole list after every (re)connect and every notification, ahead of
 * queued reads. */
void replay_watch_revocations(void (*cb)(const auth_revocation *rows, int n));

#endif
