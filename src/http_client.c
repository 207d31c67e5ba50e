/* Outgoing HTTP(S) GETs on libevent's HTTP client, with libevent_openssl for TLS and
 * evdns so that resolving a name never blocks the loop. One connection per call
 * (calls are rare: answers are cached by their callers). A call's connection is freed
 * from a later turn of the loop, never inside its own callback. */
#include "http_client.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct http_call http_call;
struct http_call {
    struct evhttp_connection *conn;
    struct event *deadline;
    struct event *reap; /* frees the call on the loop's next turn */
    http_done_fn cb;
    void *arg;
    bool done;
    http_call *prev, *next;
};

static struct {
    SSL_CTX *tls;
    struct evdns_base *dns;
    struct event_base *dns_base;
    http_call *calls;
} hc;

static void call_unlink_free(http_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        hc.calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->deadline)
        event_free(c->deadline);
    if (c->reap)
        event_free(c->reap);
    if (c->conn)
        evhttp_connection_free(c->conn); /* drops its request without calling back */
    free(c);
}

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    call_unlink_free(arg);
}

/* Hands r to the owner once, then frees the call on the next turn of the loop. */
static void finish(http_call *c, const http_response *r)
{
    if (c->done)
        return;
    c->done = true;
    evtimer_del(c->deadline);
    c->cb(r, c->arg);
    event_active(c->reap, EV_TIMEOUT, 0);
}

static void parse_cache_control(const char *v, http_response *r)
{
    for (const char *p = v; p && *p;) {
        p += strspn(p, " \t,");
        if (!strncasecmp(p, "max-age=", 8)) {
            char *end;
            long n = strtol(p + 8, &end, 10);
            if (end != p + 8 && n >= 0)
                r->max_age = n;
        } else if (!strncasecmp(p, "no-store", 8) || !strncasecmp(p, "no-cache", 8)) {
            r->no_store = true;
        }
        p = strchr(p, ',');
    }
}

static void on_response(struct evhttp_request *req, void *arg)
{
    http_call *c = arg;
    http_response r = {.max_age = -1};
    if (!req || evhttp_request_get_response_code(req) == 0) {
        r.error = "no answer (connection refused or reset, TLS verification failed, or body too large)";
        finish(c, &r); /* which frees the connection later, not inside its own callback */
        return;
    }
    r.status = evhttp_request_get_response_code(req);
    const char *cc = evhttp_find_header(evhttp_request_get_input_headers(req), "Cache-Control");
    if (cc)
        parse_cache_control(cc, &r);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    r.len = evbuffer_get_length(in);
    r.body = (const char *)evbuffer_pullup(in, -1);
    if (!r.body)
        r.body = "";
    finish(c, &r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_call *c = arg;
    http_response r = {.max_age = -1, .error = "timed out"};
    finish(c, &r);
}

bool http_url_ok(const char *url)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    bool ok = u && evhttp_uri_get_scheme(u) && evhttp_uri_get_host(u) && *evhttp_uri_get_host(u) &&
              (!strcmp(evhttp_uri_get_scheme(u), "http") || !strcmp(evhttp_uri_get_scheme(u), "https"));
    if (u)
        evhttp_uri_free(u);
    return ok;
}

static SSL *new_tls(const char *host, char *err, size_t errlen)
{
    if (!hc.tls) {
        hc.tls = SSL_CTX_new(TLS_client_method());
        if (!hc.tls || SSL_CTX_set_default_verify_paths(hc.tls) != 1 ||
            SSL_CTX_set_min_proto_version(hc.tls, TLS1_2_VERSION) != 1) {
            snprintf(err, errlen, "cannot set up TLS");
            SSL_CTX_free(hc.tls);
            hc.tls = NULL;
            return NULL;
        }
        SSL_CTX_set_verify(hc.tls, SSL_VERIFY_PEER, NULL);
    }
    SSL *ssl = SSL_new(hc.tls);
    if (!ssl) {
        snprintf(err, errlen, "cannot set up TLS");
        return NULL;
    }
    /* The certificate must name the host we asked for: an IP address by its IP SAN,
     * a name by its DNS SAN (and the name goes out as SNI). */
    X509_VERIFY_PARAM *vp = SSL_get0_param(ssl);
    bool ok;
    if (X509_VERIFY_PARAM_set1_ip_asc(vp, host) == 1)
        ok = true;
    else
        ok = SSL_set1_host(ssl, host) == 1 && SSL_set_tlsext_host_name(ssl, host) == 1;
    if (!ok) {
        snprintf(err, errlen, "cannot set up TLS for host %s", host);
        SSL_free(ssl);
        return NULL;
    }
    return ssl;
}

bool http_get(struct event_base *base, const char *url, const char *const *headers, long timeout_ms,
              size_t max_body, http_done_fn cb, void *arg, char *err, size_t errlen)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    bool tls = scheme && !strcmp(scheme, "https");
    if (!u || !scheme || !host || !*host || (!tls && strcmp(scheme, "http") != 0)) {
        snprintf(err, errlen, "not an http(s) URL");
        if (u)
            evhttp_uri_free(u);
        return false;
    }
    int port = evhttp_uri_get_port(u);
    if (port < 0)
        port = tls ? 443 : 80;
    const char *path = evhttp_uri_get_path(u), *query = evhttp_uri_get_query(u);
    char target[4096];
    snprintf(target, sizeof target, "%s%s%s", path && *path ? path : "/", query ? "?" : "", query ? query : "");

    if (!hc.dns) {
        hc.dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
        hc.dns_base = base;
    }
    http_call *c = calloc(1, sizeof *c);
    SSL *ssl = NULL;
    struct bufferevent *bev = NULL;
    if (!c)
        goto fail;
    if (tls && !(ssl = new_tls(host, err, errlen)))
        goto fail_quiet;
    bev = tls ? bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
                                               BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS)
              : bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!bev)
        goto fail;
    ssl = NULL; /* the bufferevent owns it */
    if (tls)
        bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
    c->conn = evhttp_connection_base_bufferevent_new(base, hc.dns, bev, host, (unsigned short)port);
    if (!c->conn) {
        bufferevent_free(bev);
        goto fail;
    }
    c->cb = cb;
    c->arg = arg;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    evhttp_connection_set_timeout_tv(c->conn, &tv);
    evhttp_connection_set_max_body_size(c->conn, (ev_ssize_t)max_body);
    evhttp_connection_set_max_headers_size(c->conn, 16384);
    struct evhttp_request *req = evhttp_request_new(on_response, c);
    c->deadline = evtimer_new(base, on_deadline, c);
    c->reap = evtimer_new(base, on_reap, c);
    if (!req || !c->deadline || !c->reap) {
        if (req)
            evhttp_request_free(req);
        goto fail;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "Connection", "close");
    evhttp_add_header(h, "User-Agent", "outboxd");
    for (int i = 0; headers && headers[i]; i += 2)
        if (headers[i + 1])
            evhttp_add_header(h, headers[i], headers[i + 1]);
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_GET, target) != 0) /* frees req on failure */
        goto fail;
    evtimer_add(c->deadline, &tv);
    c->next = hc.calls;
    if (hc.calls)
        hc.calls->prev = c;
    hc.calls = c;
    evhttp_uri_free(u);
    return true;
fail:
    snprintf(err, errlen, "out of memory");
fail_quiet:
    SSL_free(ssl);
    if (c) {
        if (c->deadline)
            event_free(c->deadline);
        if (c->reap)
            event_free(c->reap);
        if (c->conn)
            evhttp_connection_free(c->conn);
        free(c);
    }
    evhttp_uri_free(u);
    return false;
}

void http_client_stop(void)
{
    while (hc.calls)
        call_unlink_free(hc.calls);
    if (hc.dns)
        evdns_base_free(hc.dns, 0);
    SSL_CTX_free(hc.tls);
    memset(&hc, 0, sizeof hc);
}
