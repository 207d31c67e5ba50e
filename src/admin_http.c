/* libevent HTTP server on a thread of its own, plus sd_notify. */
#include "admin_http.h"

#include "config.h"
#include "log.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/thread.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

struct admin {
    struct event_base *base;
    struct evhttp *http;
    pthread_t thread;
    admin_handlers h;
};

static void reply(struct evhttp_request *req, int code, const char *reason, const char *type, buf *body)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", type);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-cache");
    struct evbuffer *b = evbuffer_new();
    if (b && body->len)
        evbuffer_add(b, body->data, body->len);
    evhttp_send_reply(req, code, reason, b);
    if (b)
        evbuffer_free(b);
}

static void on_request(struct evhttp_request *req, void *arg)
{
    admin *a = arg;
    const char *path = evhttp_uri_get_path(evhttp_request_get_evhttp_uri(req));
    buf body;
    buf_init(&body, 0);
    if (evhttp_request_get_command(req) != EVHTTP_REQ_GET) {
        if (buf_puts(&body, "only GET\n"))
            reply(req, 405, "Method Not Allowed", "text/plain", &body);
    } else if (path && !strcmp(path, "/metrics")) {
        if (a->h.metrics(&body, a->h.arg))
            reply(req, 200, "OK", "text/plain; version=0.0.4", &body);
        else
            evhttp_send_error(req, 500, NULL);
    } else if (path && !strcmp(path, "/healthz")) {
        if (buf_puts(&body, "ok\n"))
            reply(req, 200, "OK", "text/plain", &body);
    } else if (path && !strcmp(path, "/readyz")) {
        bool ok = a->h.ready(&body, a->h.arg);
        reply(req, ok ? 200 : 503, ok ? "OK" : "Service Unavailable", "text/plain", &body);
    } else {
        if (buf_puts(&body, "not found: /metrics, /healthz, /readyz\n"))
            reply(req, 404, "Not Found", "text/plain", &body);
    }
    buf_free(&body);
}

static void *serve(void *arg)
{
    admin *a = arg;
    event_base_dispatch(a->base);
    return NULL;
}

admin *admin_start(const char *listen, const admin_handlers *handlers, char *err, size_t errlen)
{
    char host[256];
    int port;
    if (!config_parse_listen(listen, host, sizeof host, &port)) {
        snprintf(err, errlen, "--http-listen: '%s' is not HOST:PORT", listen);
        return NULL;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, (void (*)(void))evthread_use_pthreads);
    admin *a = calloc(1, sizeof *a);
    if (!a || !(a->base = event_base_new()) || !(a->http = evhttp_new(a->base)))
        goto fail;
    a->h = *handlers;
    evhttp_set_gencb(a->http, on_request, a);
    evhttp_set_timeout(a->http, 10);
    if (evhttp_bind_socket(a->http, host, (ev_uint16_t)port) != 0) {
        snprintf(err, errlen, "--http-listen: cannot listen on %s", listen);
        goto fail_quiet;
    }
    if (pthread_create(&a->thread, NULL, serve, a) != 0)
        goto fail;
    return a;
fail:
    snprintf(err, errlen, "--http-listen: out of resources");
fail_quiet:
    if (a) {
        if (a->http)
            evhttp_free(a->http);
        if (a->base)
            event_base_free(a->base);
        free(a);
    }
    return NULL;
}

void admin_stop(admin *a)
{
    if (!a)
        return;
    event_base_loopbreak(a->base);
    pthread_join(a->thread, NULL);
    evhttp_free(a->http);
    event_base_free(a->base);
    free(a);
}

void admin_sd_notify(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@'))
        return;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t n = strlen(path);
    if (n >= sizeof sa.sun_path)
        return;
    memcpy(sa.sun_path, path, n);
    if (sa.sun_path[0] == '@')
        sa.sun_path[0] = '\0'; /* abstract namespace */
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa,
               (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n)) < 0)
        log_debug("sd_notify: %s", "could not reach NOTIFY_SOCKET");
    close(fd);
}
