/* The gateway's reads from PostgreSQL (the source of truth): one asynchronous
 * connection to the primary and, with --replica-url, one to a standby that takes the
 * reads it is not too far behind for; one read at a time, jobs waiting in a FIFO queue. A job is what the
 * caller embeds in the thing it wants read (a run); the handlers say where a read
 * starts when its turn comes and take the rows. */
#ifndef OUTBOXD_SSE_REPLAY_H
#define OUTBOXD_SSE_REPLAY_H

#include "auth.h"
#include "config.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>

/* Embedded by the caller; the reader owns the fields. */
typedef struct replay_job {
    struct replay_job *next;
    bool queued; /* waiting in the queue */
    bool busy;   /* its read is in flight */
    long long from;
    const char *run_id;
    unsigned long long lsn_after; /* needs the primary's position asked after this */
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
/* The primary is connected (reads can start). */
bool replay_up(void);

typedef struct replay_counts {
    unsigned long long reads;             /* reads done, from either */
    unsigned long long replica_reads;     /* of those, from the standby */
    unsigned long long replica_fallbacks; /* reads sent to the primary because the standby was behind */
    bool replica_up;                      /* a standby is connected and used */
} replay_counts;
void replay_get_counts(replay_counts *out);
/* Keeps cb told of the revocations in force: the primary connection LISTENs for
 * revocations and reads the whole list after every (re)connect and every
 * notification, between reads. */
void replay_watch_revocations(void (*cb)(const auth_revocation *rows, int n));

#endif
