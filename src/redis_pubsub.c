/* The Pub/Sub dispatcher: a queue of commands owed an answer, and what replies mean. */
#include "redis_pubsub.h"

#include "redis_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[] = {"SUBSCRIBE", "UNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE", "PING"};

const char *ps_kind_name(enum ps_kind k)
{
    return kind_names[k];
}

bool ps_queue_push(ps_queue *q, enum ps_kind kind, const char *channel, size_t len)
{
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        ps_pending *n = malloc(cap * sizeof *n);
        if (!n)
            return false;
        for (size_t i = 0; i < q->len; i++)
            n[i] = q->q[(q->head + i) % q->cap];
        free(q->q);
        q->q = n;
        q->cap = cap;
        q->head = 0;
    }
    char *copy = NULL;
    if (channel && !(copy = malloc(len ? len : 1)))
        return false;
    if (channel)
        memcpy(copy, channel, len);
    q->q[(q->head + q->len++) % q->cap] = (ps_pending){kind, copy, len};
    return true;
}

void ps_queue_drop_newest(ps_queue *q)
{
    if (!q->len)
        return;
    q->len--;
    free(q->q[(q->head + q->len) % q->cap].channel);
}

static void pop(ps_queue *q)
{
    free(q->q[q->head].channel);
    q->head = (q->head + 1) % q->cap;
    q->len--;
}

void ps_queue_clear(ps_queue *q)
{
    while (q->len)
        pop(q);
    free(q->q);
    *q = (ps_queue){0};
}

const ps_pending *ps_queue_oldest(const ps_queue *q)
{
    return q->len ? &q->q[q->head] : NULL;
}

/* Whether the oldest command is kind (for ch, when it names a channel). */
static bool head_is(const ps_queue *q, enum ps_kind kind, const redisReply *ch)
{
    if (!q->len)
        return false;
    const ps_pending *p = &q->q[q->head];
    return p->kind == kind && (!p->channel || (ch && ch->type == REDIS_REPLY_STRING && p->len == ch->len &&
                                              !memcmp(p->channel, ch->str, ch->len)));
}

static bool is(const redisReply *e, const char *s)
{
    return e->type == REDIS_REPLY_STRING && !strcmp(e->str, s);
}

ps_reply ps_dispatch(ps_queue *q, const redisReply *r, char *why, size_t whylen)
{
    ps_reply out = {.event = PS_OUT_OF_STEP};
    if (r->type == REDIS_REPLY_ERROR) {
        char text[500];
        redis_explain_error(r->str, text, sizeof text);
        const ps_pending *p = q->len ? &q->q[q->head] : NULL;
        int shown = p && p->channel ? (int)(p->len > 100 ? 100 : p->len) : 0;
        snprintf(why, whylen, "%s%s%.*s refused: %s", p ? kind_names[p->kind] : "a command", shown ? " " : "",
                 shown, shown ? p->channel : "", text);
        if (p)
            pop(q);
        out.event = PS_REFUSED;
        return out;
    }
    if (r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "PONG") && head_is(q, PS_PING, NULL)) {
        pop(q);
        out.event = PS_PONG;
        return out;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || r->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(why, whylen, "an unexpected reply on the subscription");
        return out;
    }
    const redisReply *kind = r->element[0], *ch = r->element[1];
    if (is(kind, "pong") && head_is(q, PS_PING, NULL)) {
        pop(q);
        out.event = PS_PONG;
    } else if ((is(kind, "message") || is(kind, "smessage")) && r->elements == 3 && ch->type == REDIS_REPLY_STRING &&
               r->element[2]->type == REDIS_REPLY_STRING) {
        out = (ps_reply){PS_MESSAGE, ch->str, ch->len, r->element[2]->str, r->element[2]->len, false};
    } else if (is(kind, "subscribe") || is(kind, "ssubscribe")) {
        if (!head_is(q, is(kind, "subscribe") ? PS_SUBSCRIBE : PS_SSUBSCRIBE, ch)) {
            snprintf(why, whylen, "a %s confirmation that answers no command", kind->str);
            return out;
        }
        pop(q);
        out = (ps_reply){PS_SUBSCRIBED, ch->str, ch->len, NULL, 0, false};
    } else if ((is(kind, "unsubscribe") || is(kind, "sunsubscribe")) && ch->type == REDIS_REPLY_STRING) {
        bool ours = head_is(q, is(kind, "unsubscribe") ? PS_UNSUBSCRIBE : PS_SUNSUBSCRIBE, ch);
        if (ours)
            pop(q);
        out = (ps_reply){PS_UNSUBSCRIBED, ch->str, ch->len, NULL, 0, !ours};
    } else if (is(kind, "pmessage") || is(kind, "psubscribe") || is(kind, "punsubscribe")) {
        out.event = PS_IGNORED;
    } else {
        snprintf(why, whylen, "an unexpected %s on the subscription", kind->str);
    }
    return out;
}
