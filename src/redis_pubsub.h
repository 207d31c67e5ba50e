/* The Pub/Sub dispatcher of one subscriber connection (one per node): the commands
 * sent on it that still owe an answer, in order, and what each reply means. In RESP2 a
 * confirmation and a pushed message look alike; only the queue tells them apart: a
 * subscribe or unsubscribe that matches the oldest command answers it, an unsubscribe
 * that matches nothing is the server's own decision (a slot that moved in a cluster),
 * and an error answers (refuses) the oldest command. Sharded Pub/Sub (smessage,
 * ssubscribe, sunsubscribe) is handled like the rest. Pure logic: unit-tested with
 * replies built in the test. */
#ifndef OUTBOXD_REDIS_PUBSUB_H
#define OUTBOXD_REDIS_PUBSUB_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>

enum ps_kind { PS_SUBSCRIBE, PS_UNSUBSCRIBE, PS_SSUBSCRIBE, PS_SUNSUBSCRIBE, PS_PING };

/* The command name of a kind ("SUBSCRIBE", ...). */
const char *ps_kind_name(enum ps_kind k);

typedef struct ps_pending {
    enum ps_kind kind;
    char *channel; /* NULL for PING */
    size_t len;
} ps_pending;

/* Commands awaiting an answer: a ring that grows as needed (bounded by what the
 * owner sends, not by the peer). Zeroed is empty. */
typedef struct ps_queue {
    ps_pending *q;
    size_t cap, head, len;
} ps_queue;

bool ps_queue_push(ps_queue *q, enum ps_kind kind, const char *channel, size_t len) __attribute__((warn_unused_result));
/* Forgets the newest entry (a command that could not be sent after all). */
void ps_queue_drop_newest(ps_queue *q);
void ps_queue_clear(ps_queue *q);
/* The oldest command awaiting an answer (the one the next reply answers); NULL when
 * none. Valid until the queue changes. */
const ps_pending *ps_queue_oldest(const ps_queue *q);

/* What a reply was. For the channel kinds, channel/len point into the reply. */
enum ps_event {
    PS_MESSAGE,        /* message or smessage: channel, payload */
    PS_SUBSCRIBED,     /* our subscribe or ssubscribe is confirmed */
    PS_UNSUBSCRIBED,   /* our unsubscribe is confirmed, or the server ended one */
    PS_PONG,           /* our PING answered */
    PS_REFUSED,        /* an error answering the oldest command: *why says what and why */
    PS_IGNORED,        /* pmessage, psubscribe: nothing we ask for */
    PS_OUT_OF_STEP,    /* not what any command could be owed: the connection is unusable */
};

typedef struct ps_reply {
    enum ps_event event;
    const char *channel;
    size_t channel_len;
    const char *payload;
    size_t payload_len;
    bool server_initiated; /* PS_UNSUBSCRIBED that answers no command of ours */
} ps_reply;

/* Classifies r and pops the command it answers. why (for PS_REFUSED and
 * PS_OUT_OF_STEP) names the command, the channel and the server's words. */
ps_reply ps_dispatch(ps_queue *q, const redisReply *r, char *why, size_t whylen);

#endif
