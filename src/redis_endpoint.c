/* The Redis endpoint: TLS context, sentinel discovery, the primary's connection. */
#include "redis_endpoint.h"

#include "clock.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

redis_endpoint *redis_endpoint_new(const config *cfg, char *err, size_t errlen)
{
    redis_endpoint *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->url = cfg->redis;
    e->sentinels = cfg->sentinels;
    e->nsentinels = cfg->redis_sentinel ? cfg->nsentinels : 0;
    e->master = cfg->redis_sentinel_master;
    e->cluster = cfg->redis_cluster != NULL;
    e->timeout_ms = cfg->redis_timeout_ms;
    atomic_init(&e->first_sentinel, 0);
    if (cfg->redis.tls &&
        !(e->tls = redis_tls_new(cfg->redis_tls_ca, cfg->redis_tls_cert, cfg->redis_tls_key,
                                 cfg->redis_tls_server_name, err, errlen))) {
        free(e);
        return NULL;
    }
    return e;
}

void redis_endpoint_free(redis_endpoint *e)
{
    if (!e)
        return;
    redis_tls_free(e->tls);
    free(e);
}

long redis_endpoint_sentinel_timeout(const redis_endpoint *e)
{
    return e->timeout_ms < SENTINEL_TIMEOUT_MS ? e->timeout_ms : SENTINEL_TIMEOUT_MS;
}

const char *redis_endpoint_describe(const redis_endpoint *e)
{
    if (e->nsentinels)
        return e->tls ? "TLS, via sentinel" : "plaintext, via sentinel";
    if (e->cluster)
        return e->tls ? "TLS, cluster" : "plaintext, cluster";
    return e->tls ? "TLS" : "plaintext";
}

bool redis_sentinel_parse_addr(const redisReply *r, const char *master, redis_addr *addr, char *err,
                               size_t errlen)
{
    if (r->type == REDIS_REPLY_NIL) {
        snprintf(err, errlen, "does not know a master named '%s'", master);
        return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s", r->str);
        return false;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len == 0 ||
        r->element[0]->len >= sizeof addr->host) {
        snprintf(err, errlen, "unexpected answer to SENTINEL get-master-addr-by-name");
        return false;
    }
    char *end;
    errno = 0;
    long port = strtol(r->element[1]->str, &end, 10);
    if (errno || *end || end == r->element[1]->str || port < 1 || port > 65535) {
        snprintf(err, errlen, "bad port in the sentinel's answer");
        return false;
    }
    memcpy(addr->host, r->element[0]->str, r->element[0]->len + 1);
    addr->port = (int)port;
    return true;
}

bool redis_sentinel_parse_switch(const char *msg, size_t len, const char *master, redis_addr *to)
{
    /* "<name> <old-ip> <old-port> <new-ip> <new-port>"; names have no spaces. */
    char text[1024], name[256], old_ip[256], new_ip[256];
    int old_port, new_port, used = 0;
    if (len >= sizeof text)
        return false;
    memcpy(text, msg, len);
    text[len] = '\0';
    if (sscanf(text, "%255s %255s %d %255s %d%n", name, old_ip, &old_port, new_ip, &new_port, &used) != 5 ||
        text[used] != '\0' || strcmp(name, master) != 0 || new_port < 1 || new_port > 65535)
        return false;
    snprintf(to->host, sizeof to->host, "%s", new_ip);
    to->port = new_port;
    return true;
}

/* Asks one sentinel; false with its answer in why. */
static bool ask_sentinel(redis_endpoint *e, const redis_addr *s, redis_addr *primary, char *why, size_t cap)
{
    rconn *c = rconn_connect(s->host, s->port, e->tls, redis_endpoint_sentinel_timeout(e), why, cap);
    if (!c)
        return false;
    const char *argv[] = {"SENTINEL", "get-master-addr-by-name", e->master};
    redisReply *r = rconn_command(c, 3, argv, NULL);
    bool ok = false;
    if (!r)
        snprintf(why, cap, "%s", rconn_errstr(c));
    else
        ok = redis_sentinel_parse_addr(r, e->master, primary, why, cap);
    if (r)
        freeReplyObject(r);
    rconn_free(c);
    return ok;
}

bool redis_sentinel_discover(redis_endpoint *e, redis_addr *primary, char *err, size_t errlen)
{
    buf all;
    buf_init(&all, 0);
    int first = atomic_load(&e->first_sentinel);
    for (int k = 0; k < e->nsentinels; k++) {
        int i = (first + k) % e->nsentinels;
        char why[512];
        if (ask_sentinel(e, &e->sentinels[i], primary, why, sizeof why)) {
            atomic_store(&e->first_sentinel, i);
            buf_free(&all);
            return true;
        }
        if (!buf_printf(&all, "%ssentinel %s:%d: %s", k ? "; " : "", e->sentinels[i].host,
                        e->sentinels[i].port, why))
            break;
    }
    snprintf(err, errlen, "no sentinel named the primary '%s': %s", e->master, all.data ? all.data : "");
    buf_free(&all);
    return false;
}

rconn *redis_endpoint_connect(redis_endpoint *e, redis_addr *addr, char *err, size_t errlen)
{
    redis_addr where;
    if (e->nsentinels) {
        if (!redis_sentinel_discover(e, &where, err, errlen))
            return NULL;
    } else {
        snprintf(where.host, sizeof where.host, "%s", e->url.host);
        where.port = e->url.port;
    }
    if (addr)
        *addr = where;
    char why[512];
    rconn *c = rconn_connect(where.host, where.port, e->tls, e->timeout_ms, why, sizeof why);
    if (!c) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    if (!rconn_setup(c, &e->url, why, sizeof why)) {
        snprintf(err, errlen, "%s:%d: %s", where.host, where.port, why);
        rconn_free(c);
        return NULL;
    }
    return c;
}

bool redis_endpoint_probe(redis_endpoint *e, redis_addr *addr, char *err, size_t errlen)
{
    rconn *c = redis_endpoint_connect(e, addr, err, errlen);
    rconn_free(c);
    return c != NULL;
}

/* ---- the relay's watch ---------------------------------------------------------------- */

void sentinel_watch_init(sentinel_watch *w, redis_endpoint *e)
{
    memset(w, 0, sizeof *w);
    w->e = e;
}

void sentinel_watch_close(sentinel_watch *w)
{
    rconn_free(w->c);
    w->c = NULL;
}

/* Subscribes on the first sentinel that takes it. A switch announced while no
 * sentinel was watched would go unseen: the sentinel is asked for the primary in the
 * same round trip, and a primary other than current counts as a switch. */
static bool watch_connect(sentinel_watch *w, const redis_addr *current, redis_addr *to)
{
    redis_endpoint *e = w->e;
    bool switched = false;
    int first = atomic_load(&e->first_sentinel);
    for (int k = 0; k < e->nsentinels && !w->c; k++) {
        const redis_addr *s = &e->sentinels[(first + k) % e->nsentinels];
        char why[512];
        rconn *c = rconn_connect(s->host, s->port, e->tls, redis_endpoint_sentinel_timeout(e), why, sizeof why);
        if (!c)
            continue;
        const char *ask[] = {"SENTINEL", "get-master-addr-by-name", e->master};
        const char *sub[] = {"SUBSCRIBE", SENTINEL_SWITCH_CHANNEL};
        redisReply *a = NULL, *r = NULL;
        if (rconn_append(c, 3, ask, NULL) && rconn_append(c, 2, sub, NULL) && (a = rconn_reply(c)) &&
            (r = rconn_reply(c)) && r->type == REDIS_REPLY_ARRAY) {
            w->c = c;
            redis_addr now;
            if (redis_sentinel_parse_addr(a, e->master, &now, why, sizeof why) &&
                (strcmp(now.host, current->host) || now.port != current->port)) {
                *to = now;
                switched = true;
            }
        } else {
            rconn_free(c);
        }
        if (a)
            freeReplyObject(a);
        if (r)
            freeReplyObject(r);
    }
    if (!w->c)
        w->retry_at = clock_mono_s() + 1;
    return switched;
}

bool sentinel_watch_switched(sentinel_watch *w, const redis_addr *current, redis_addr *to)
{
    if (!w->e->nsentinels)
        return false;
    bool switched = false;
    if (!w->c) {
        if (clock_mono_s() < w->retry_at)
            return false;
        switched = watch_connect(w, current, to);
        if (!w->c)
            return false;
    }
    redisReply *r;
    int got;
    while ((got = rconn_reply_nowait(w->c, &r)) > 0) {
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING &&
            !strcmp(r->element[0]->str, "message") && r->element[2]->type == REDIS_REPLY_STRING &&
            redis_sentinel_parse_switch(r->element[2]->str, r->element[2]->len, w->e->master, to))
            switched = true;
        freeReplyObject(r);
    }
    if (got < 0) {
        /* The sentinel went away: another one is watched from the next call on. */
        sentinel_watch_close(w);
        w->retry_at = clock_mono_s() + 1;
    }
    return switched;
}
