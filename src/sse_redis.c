/* The gateway's Redis subscriber on hiredis's asynchronous API and libevent. A
 * SUBSCRIBE to a private channel, which Redis confirms even when already subscribed,
 * is the liveness ping: a stalled server (SIGSTOP keeps the socket open) is noticed
 * by its timeout, and the connection is then dropped and made again. */
#include "sse_redis.h"

#include "clock.h"
#include "log.h"

#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <string.h>

#define PING_CHANNEL "outboxd:gateway:ping"
#define PING_PERIOD_MS 1000

enum redis_state { REDIS_DOWN, REDIS_CONNECTING, REDIS_UP };

static struct {
    struct event_base *base;
    const config *cfg;
    sub_handlers h;
    redisAsyncContext *ac;
    enum redis_state state;
    struct event *timer;
    bool ping_outstanding;
    double ping_sent;
    long backoff_ms;
} rs;

static void schedule_reconnect(void)
{
    struct timeval tv = clock_tv_ms(clock_backoff(&rs.backoff_ms));
    evtimer_add(rs.timer, &tv);
}

static void arm_ping_timer(void)
{
    long ms = rs.cfg->redis_timeout_ms < PING_PERIOD_MS ? rs.cfg->redis_timeout_ms : PING_PERIOD_MS;
    struct timeval tv = clock_tv_ms(ms);
    evtimer_add(rs.timer, &tv);
}

static void went_down(const char *why)
{
    if (rs.state == REDIS_UP)
        log_warn("redis (gateway): %s; serving runs from postgresql until it is back", why);
    rs.state = REDIS_DOWN;
    rs.ac = NULL;
    rs.ping_outstanding = false;
    rs.h.down();
    schedule_reconnect();
}

static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)ac;
    (void)priv;
    redisReply *rp = reply;
    if (!rp || rp->type != REDIS_REPLY_ARRAY || rp->elements < 3 ||
        rp->element[0]->type != REDIS_REPLY_STRING || rp->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = rp->element[0]->str;
    const char *ch = rp->element[1]->str;
    size_t chlen = rp->element[1]->len;
    if (chlen == sizeof PING_CHANNEL - 1 && !memcmp(ch, PING_CHANNEL, chlen)) {
        rs.ping_outstanding = false;
        return;
    }
    if (!strcmp(kind, "subscribe"))
        rs.h.subscribed(ch, chlen);
    else if (!strcmp(kind, "unsubscribe"))
        rs.h.unsubscribed(ch, chlen);
    else if (!strcmp(kind, "message") && rp->element[2]->type == REDIS_REPLY_STRING)
        rs.h.message(ch, chlen, rp->element[2]->str, rp->element[2]->len);
}

static bool send_ping(void)
{
    if (redisAsyncCommand(rs.ac, on_sub_reply, NULL, "SUBSCRIBE " PING_CHANNEL) != REDIS_OK)
        return false;
    rs.ping_outstanding = true;
    rs.ping_sent = clock_mono_s();
    return true;
}

bool sub_subscribe(const char *channel, size_t n)
{
    return rs.state == REDIS_UP &&
           redisAsyncCommand(rs.ac, on_sub_reply, NULL, "SUBSCRIBE %b", channel, n) == REDIS_OK;
}

bool sub_unsubscribe(const char *channel, size_t n)
{
    return rs.state == REDIS_UP &&
           redisAsyncCommand(rs.ac, on_sub_reply, NULL, "UNSUBSCRIBE %b", channel, n) == REDIS_OK;
}

static void on_auth(redisAsyncContext *ac, void *reply, void *priv)
{
    (void)priv;
    redisReply *rp = reply;
    if (rp && rp->type == REDIS_REPLY_ERROR) {
        log_warn("redis (gateway): AUTH: %s", rp->str);
        redisAsyncDisconnect(ac);
    }
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    if (status != REDIS_OK) {
        log_warn("redis (gateway): connect: %s", ac->errstr);
        rs.ac = NULL; /* hiredis frees the context after this callback */
        rs.state = REDIS_DOWN;
        schedule_reconnect();
        return;
    }
    evtimer_del(rs.timer);
    rs.state = REDIS_UP;
    rs.backoff_ms = 0;
    log_info("redis (gateway): connected");
    const redis_url *u = &rs.cfg->redis;
    if (u->password[0] && u->user[0])
        redisAsyncCommand(rs.ac, on_auth, NULL, "AUTH %s %s", u->user, u->password);
    else if (u->password[0])
        redisAsyncCommand(rs.ac, on_auth, NULL, "AUTH %s", u->password);
    send_ping();
    rs.h.up();
    arm_ping_timer();
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    went_down(status == REDIS_OK ? "disconnected" : ac->errstr);
}

static void connect_now(void)
{
    rs.ac = redisAsyncConnect(rs.cfg->redis.host, rs.cfg->redis.port);
    if (!rs.ac || rs.ac->err) {
        log_warn("redis (gateway): connect: %s", rs.ac ? rs.ac->errstr : "out of memory");
        if (rs.ac)
            redisAsyncFree(rs.ac);
        rs.ac = NULL;
        schedule_reconnect();
        return;
    }
    redisLibeventAttach(rs.ac, rs.base);
    redisAsyncSetConnectCallback(rs.ac, on_connect);
    redisAsyncSetDisconnectCallback(rs.ac, on_disconnect);
    rs.state = REDIS_CONNECTING;
    rs.ping_sent = clock_mono_s();
    struct timeval tv = clock_tv_ms(rs.cfg->redis_timeout_ms);
    evtimer_add(rs.timer, &tv);
}

/* One timer: connect timeout, reconnect backoff, and the liveness ping. */
static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (rs.state == REDIS_DOWN) {
        connect_now();
        return;
    }
    double waited = clock_mono_s() - rs.ping_sent;
    if ((rs.state == REDIS_CONNECTING || rs.ping_outstanding) &&
        waited * 1000 >= (double)rs.cfg->redis_timeout_ms) {
        /* Stalled (e.g. SIGSTOP): the socket stays open, only a timeout notices. */
        redisAsyncContext *ac = rs.ac;
        bool was_up = rs.state == REDIS_UP;
        rs.ac = NULL;
        redisAsyncFree(ac); /* runs on_disconnect if it was connected */
        if (!was_up) {
            log_warn("redis (gateway): connect timed out");
            rs.state = REDIS_DOWN;
            schedule_reconnect();
        } else if (rs.state == REDIS_UP) {
            went_down("timed out");
        }
        return;
    }
    if (rs.state == REDIS_UP && !rs.ping_outstanding)
        send_ping();
    arm_ping_timer();
}

bool sub_up(void)
{
    return rs.state == REDIS_UP;
}

bool sub_healthy(long stale_ms)
{
    return rs.state == REDIS_UP &&
           !(rs.ping_outstanding && (clock_mono_s() - rs.ping_sent) * 1000 > (double)stale_ms);
}

bool sub_start(struct event_base *base, const config *cfg, const sub_handlers *handlers)
{
    memset(&rs, 0, sizeof rs);
    rs.base = base;
    rs.cfg = cfg;
    rs.h = *handlers;
    rs.timer = evtimer_new(base, on_timer, NULL);
    if (!rs.timer)
        return false;
    connect_now();
    return true;
}

void sub_stop(void)
{
    if (rs.ac) {
        redisAsyncContext *ac = rs.ac;
        rs.ac = NULL;
        rs.state = REDIS_DOWN;
        redisAsyncSetDisconnectCallback(ac, NULL);
        redisAsyncFree(ac);
    }
    if (rs.timer)
        event_free(rs.timer);
    memset(&rs, 0, sizeof rs);
}
