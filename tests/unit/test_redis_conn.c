/* Unit tests of the blocking Redis connection (redis_conn.c): a fake transport
 * delivers replies in pieces (split at every byte, a byte per read, several replies in
 * one read), takes writes a byte at a time, times out, closes, or answers with TLS;
 * and a real TLS session over loopback puts reply boundaries inside and across TLS
 * records; sentinels' answers are parsed strictly. This file is built with RCONN_READ_CHUNK=7, so a record is read in
 * several pieces and most of it waits inside OpenSSL, not in the socket. */
#include "redis_conn.h"
#include "redis_endpoint.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- a fake transport ------------------------------------------------------------- */

/* A script of what reads return: bytes, or one of these. */
enum step_kind { S_DATA, S_WANT_READ, S_EOF, S_ERROR };
typedef struct step {
    enum step_kind kind;
    const char *p;
    size_t n;
} step;

typedef struct fake_io {
    rio io;
    step steps[4096];
    int nsteps, at;
    size_t offset;       /* into steps[at] when it is data */
    int waits;           /* wait calls answered */
    long longest_wait;   /* the most ms a wait was allowed */
    bool wait_times_out; /* a wait with nothing scripted times out */
    char written[8192];
    size_t nwritten;
    int write_budget;    /* bytes per write call; every other call would block */
    bool write_blocked;
    bool closed;
} fake_io;

static ssize_t fake_read(rio *io, char *p, size_t n)
{
    fake_io *f = (fake_io *)io;
    if (f->at >= f->nsteps)
        return RIO_WANT_READ;
    step *s = &f->steps[f->at];
    switch (s->kind) {
    case S_WANT_READ: f->at++; return RIO_WANT_READ;
    case S_EOF: return 0;
    case S_ERROR: snprintf(io->err, sizeof io->err, "Connection reset by peer"); return RIO_ERROR;
    case S_DATA: break;
    }
    size_t left = s->n - f->offset, k = left < n ? left : n;
    memcpy(p, s->p + f->offset, k);
    f->offset += k;
    if (f->offset == s->n) {
        f->at++;
        f->offset = 0;
    }
    return (ssize_t)k;
}

static ssize_t fake_write(rio *io, const char *p, size_t n)
{
    fake_io *f = (fake_io *)io;
    if (f->write_budget) {
        f->write_blocked = !f->write_blocked;
        if (f->write_blocked)
            return RIO_WANT_WRITE;
        n = n < (size_t)f->write_budget ? n : (size_t)f->write_budget;
    }
    assert_true(f->nwritten + n <= sizeof f->written);
    memcpy(f->written + f->nwritten, p, n);
    f->nwritten += n;
    return (ssize_t)n;
}

static int fake_wait(rio *io, bool for_write, long ms)
{
    (void)for_write;
    fake_io *f = (fake_io *)io;
    f->waits++;
    if (ms > f->longest_wait)
        f->longest_wait = ms;
    return f->at >= f->nsteps && f->wait_times_out ? 0 : 1;
}

static void fake_close(rio *io)
{
    ((fake_io *)io)->closed = true;
}

static const rio_ops fake_ops = {fake_read, fake_write, fake_wait, fake_close};

static fake_io *fake_new(void)
{
    fake_io *f = calloc(1, sizeof *f);
    f->io.ops = &fake_ops;
    f->io.fd = -1;
    return f;
}

static void add(fake_io *f, enum step_kind kind, const char *p, size_t n)
{
    assert_true(f->nsteps < (int)(sizeof f->steps / sizeof f->steps[0]));
    f->steps[f->nsteps++] = (step){kind, p, n};
}

/* ---- replies in pieces ------------------------------------------------------------- */

/* A status, an error, an integer, a bulk with CRLF inside, a nil, and a nested array. */
static const char replies[] = "+OK\r\n-ERR no\r\n:-42\r\n$6\r\na\r\nb\r\n\r\n$-1\r\n"
                              "*3\r\n$7\r\nmessage\r\n*1\r\n:7\r\n$0\r\n\r\n";

static void check_replies(rconn *c)
{
    redisReply *r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    assert_string_equal(r->str, "OK");
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ERROR);
    assert_string_equal(r->str, "ERR no");
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, -42);
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_int_equal(r->len, 6);
    assert_memory_equal(r->str, "a\r\nb\r\n", 6);
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_NIL);
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 3);
    assert_string_equal(r->element[0]->str, "message");
    assert_int_equal(r->element[1]->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->element[1]->element[0]->integer, 7);
    assert_int_equal(r->element[2]->len, 0);
    freeReplyObject(r);
}

static void test_reply_split_at_every_byte(void **state)
{
    (void)state;
    size_t n = sizeof replies - 1;
    for (size_t cut = 1; cut < n; cut++) {
        fake_io *f = fake_new();
        add(f, S_DATA, replies, cut);
        add(f, S_WANT_READ, NULL, 0);
        add(f, S_DATA, replies + cut, n - cut);
        rconn *c = rconn_new(&f->io, false, 1000);
        check_replies(c);
        assert_false(rconn_broken(c));
        rconn_free(c);
        assert_true(f->closed);
        free(f);
    }
}

static void test_one_byte_per_read(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    for (size_t i = 0; i < sizeof replies - 1; i++) {
        add(f, S_DATA, replies + i, 1);
        add(f, S_WANT_READ, NULL, 0);
    }
    rconn *c = rconn_new(&f->io, false, 1000);
    check_replies(c);
    /* Each byte came after a wait: nothing was read past what the socket had. */
    assert_int_equal(f->waits, (int)(sizeof replies - 1) - 1);
    rconn_free(c);
    free(f);
}

static void test_all_replies_in_one_read_need_no_wait(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_DATA, replies, sizeof replies - 1);
    f->wait_times_out = true;
    rconn *c = rconn_new(&f->io, false, 1000);
    check_replies(c);
    assert_int_equal(f->waits, 0);
    redisReply *r;
    assert_int_equal(rconn_reply_nowait(c, &r), 0);
    rconn_free(c);
    free(f);
}

static void test_nowait_takes_what_is_there(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_DATA, "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n", 28);
    add(f, S_WANT_READ, NULL, 0);
    add(f, S_DATA, "hi\r\n+PONG\r\n", 11);
    rconn *c = rconn_new(&f->io, false, 1000);
    redisReply *r;
    assert_int_equal(rconn_reply_nowait(c, &r), 0); /* half a message */
    assert_int_equal(rconn_reply_nowait(c, &r), 1);
    assert_string_equal(r->element[2]->str, "hi");
    freeReplyObject(r);
    assert_int_equal(rconn_reply_nowait(c, &r), 1);
    assert_string_equal(r->str, "PONG");
    freeReplyObject(r);
    assert_int_equal(f->waits, 0);
    rconn_free(c);
    free(f);
}

static void test_partial_writes(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    f->write_budget = 3;
    add(f, S_DATA, ":1\r\n:2\r\n", 8);
    rconn *c = rconn_new(&f->io, false, 1000);
    const char *a[] = {"EVALSHA", "x y", "1"};
    assert_true(rconn_append(c, 3, a, NULL));
    assert_true(rconn_append(c, 1, (const char *[]){"PING"}, NULL));
    redisReply *r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->integer, 1);
    freeReplyObject(r);
    const char want[] = "*3\r\n$7\r\nEVALSHA\r\n$3\r\nx y\r\n$1\r\n1\r\n*1\r\n$4\r\nPING\r\n";
    assert_int_equal(f->nwritten, sizeof want - 1);
    assert_memory_equal(f->written, want, sizeof want - 1);
    r = rconn_reply(c);
    assert_int_equal(r->integer, 2);
    freeReplyObject(r);
    rconn_free(c);
    free(f);
}

static void test_timeout_breaks_the_connection(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_DATA, "+PA", 3);
    f->wait_times_out = true;
    rconn *c = rconn_new(&f->io, false, 250);
    assert_null(rconn_reply(c));
    assert_true(rconn_broken(c));
    assert_non_null(strstr(rconn_errstr(c), "timed out after 250 ms"));
    /* Broken stays broken: nothing more is sent or read. */
    assert_false(rconn_append(c, 1, (const char *[]){"PING"}, NULL));
    assert_null(rconn_reply(c));
    rconn_free(c);
    free(f);
}

/* A command the server holds (WAIT 1 2000) gets its own time on top of the timeout:
 * its reply is awaited for 2000 + 250 ms, and only silence beyond that breaks the
 * connection. The next reply has the plain timeout again. */
static void test_held_reply_waits_longer(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    f->wait_times_out = true;
    rconn *c = rconn_new(&f->io, false, 250);
    assert_null(rconn_reply_held(c, 2000));
    assert_true(f->longest_wait > 2000 && f->longest_wait <= 2250);
    if (!strstr(rconn_errstr(c), "timed out after 2250 ms"))
        fail_msg("'%s' does not say 2250 ms", rconn_errstr(c));
    rconn_free(c);
    free(f);

    f = fake_new();
    add(f, S_WANT_READ, NULL, 0);
    add(f, S_DATA, ":0\r\n", 4);
    f->wait_times_out = true;
    c = rconn_new(&f->io, false, 250);
    redisReply *r = rconn_reply_held(c, 2000);
    assert_non_null(r);
    assert_int_equal(r->integer, 0);
    freeReplyObject(r);
    f->longest_wait = 0;
    assert_null(rconn_reply(c));
    assert_true(f->longest_wait > 0 && f->longest_wait <= 250);
    rconn_free(c);
    free(f);
}

/* The first reply fails, and the reason says want. */
static void first_reply_fails(fake_io *f, bool tls, const char *want)
{
    rconn *c = rconn_new(&f->io, tls, 1000);
    assert_null(rconn_reply(c));
    assert_true(rconn_broken(c));
    if (!strstr(rconn_errstr(c), want))
        fail_msg("'%s' does not say '%s'", rconn_errstr(c), want);
    rconn_free(c);
    free(f);
}

static void test_closed_before_any_reply_hints_at_tls(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_ERROR, NULL, 0);
    first_reply_fails(f, false, "Connection reset by peer (is it a TLS port?");

    /* After a reply has come, a close is just a close. */
    f = fake_new();
    add(f, S_DATA, "+OK\r\n", 5);
    add(f, S_EOF, NULL, 0);
    rconn *c = rconn_new(&f->io, false, 1000);
    redisReply *r = rconn_reply(c);
    freeReplyObject(r);
    assert_null(rconn_reply(c));
    assert_string_equal(rconn_errstr(c), "connection closed by the server");
    rconn_free(c);
    free(f);
}

static void test_tls_answer_on_plaintext(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_DATA, "\x15\x03\x03\x00\x02\x02\x46", 7); /* an alert record */
    first_reply_fails(f, false, "answered with TLS: use rediss://");
}

static void test_garbage_is_a_protocol_error(void **state)
{
    (void)state;
    fake_io *f = fake_new();
    add(f, S_DATA, "HTTP/1.1 400 Bad Request\r\n", 26);
    first_reply_fails(f, false, "protocol error");
    /* Over TLS the same bytes are not taken for a TLS answer, and no hint is given. */
    f = fake_new();
    add(f, S_ERROR, NULL, 0);
    first_reply_fails(f, true, "read: Connection reset by peer");
}

/* ---- set-up ------------------------------------------------------------------------ */

static void test_setup_commands(void **state)
{
    (void)state;
    redis_url u = {.port = 6379, .db = 3};
    snprintf(u.user, sizeof u.user, "relay");
    snprintf(u.password, sizeof u.password, "p w");
    redis_setup s;
    buf out;
    buf_init(&out, 0);
    assert_true(redis_setup_format(&s, &u, &out));
    assert_int_equal(s.n, 3);
    const char want[] = "*3\r\n$4\r\nAUTH\r\n$5\r\nrelay\r\n$3\r\np w\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
                        "*1\r\n$4\r\nROLE\r\n";
    assert_int_equal(out.len, sizeof want - 1);
    assert_memory_equal(out.data, want, sizeof want - 1);
    buf_reset(&out);
    memset(&u, 0, sizeof u);
    assert_true(redis_setup_format(&s, &u, &out));
    assert_int_equal(s.n, 1);
    assert_int_equal(s.step[0], SETUP_ROLE);
    buf_free(&out);
}

/* Runs the set-up of u against scripted replies; returns its verdict, reason in err. */
static bool setup_against(const redis_url *u, const char *answers, char *err, size_t cap)
{
    fake_io *f = fake_new();
    add(f, S_DATA, answers, strlen(answers));
    rconn *c = rconn_new(&f->io, false, 1000);
    bool ok = rconn_setup(c, u, err, cap);
    rconn_free(c);
    free(f);
    return ok;
}

static void test_setup_checks(void **state)
{
    (void)state;
    redis_url u = {.port = 6379};
    snprintf(u.password, sizeof u.password, "pw");
    char err[512] = "";
    assert_true(setup_against(&u, "+OK\r\n*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n", err, sizeof err));
    assert_false(setup_against(&u, "-WRONGPASS invalid username-password pair\r\n-NOAUTH x\r\n", err, sizeof err));
    assert_string_equal(err, "AUTH: WRONGPASS invalid username-password pair");
    assert_false(setup_against(&u, "+OK\r\n*5\r\n$5\r\nslave\r\n$8\r\n10.0.0.5\r\n:6379\r\n$9\r\nconnected\r\n:1\r\n",
                               err, sizeof err));
    assert_string_equal(err, "ROLE: the server is a replica (of 10.0.0.5:6379), not the primary");
    assert_false(setup_against(&u, "+OK\r\n-NOPERM this user has no permissions to run the 'role' command\r\n",
                               err, sizeof err));
    assert_non_null(strstr(err, "ROLE: NOPERM this user has no permissions to run the 'role' command"));
    assert_non_null(strstr(err, "ACL"));
    assert_false(setup_against(&u, "+OK\r\n*1\r\n$8\r\nsentinel\r\n", err, sizeof err));
    assert_non_null(strstr(err, "ROLE: "));
    /* A connection that needs no primary (a cluster's slot map, global Pub/Sub):
     * AUTH only, so a replica serves. */
    u.any_role = true;
    redis_setup s;
    buf out;
    buf_init(&out, 0);
    assert_true(redis_setup_format(&s, &u, &out));
    assert_int_equal(s.n, 1);
    assert_int_equal(s.step[0], SETUP_AUTH);
    buf_free(&out);
    assert_true(setup_against(&u, "+OK\r\n", err, sizeof err));
    u.password[0] = '\0';
    buf_init(&out, 0);
    assert_true(redis_setup_format(&s, &u, &out));
    assert_int_equal(s.n, 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static void test_acl_errors_are_named(void **state)
{
    (void)state;
    char out[512];
    redis_explain_error("ERR The user executing the script can't run this command or subcommand script: x", out,
                        sizeof out);
    assert_true(!strncmp(out, "NOPERM (ACL): ERR The user executing", 36));
    assert_true(redis_error_is_acl("NOPERM this user has no permissions to access one of the channels"));
    assert_false(redis_error_is_acl("WRONGTYPE Operation against a key holding the wrong kind of value"));
    redis_explain_error("WRONGTYPE x", out, sizeof out);
    assert_string_equal(out, "WRONGTYPE x");
}

/* ---- TLS record boundaries --------------------------------------------------------- */

typedef struct tls_server {
    SSL_CTX *ctx;
    int listen_fd, port;
    char ca_file[64];
} tls_server;

/* A self-signed certificate for redis.test and 127.0.0.1, written to ca_file. */
static void make_server(tls_server *s)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    assert_non_null(key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"redis.test", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_set_pubkey(x, key);
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    X509_EXTENSION *san = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, "DNS:redis.test,IP:127.0.0.1");
    X509_add_ext(x, san, -1);
    X509_EXTENSION_free(san);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);

    snprintf(s->ca_file, sizeof s->ca_file, "/tmp/test_redis_conn.%d.pem", (int)getpid());
    FILE *f = fopen(s->ca_file, "w");
    assert_non_null(f);
    PEM_write_X509(f, x);
    fclose(f);
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(s->ctx, x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(s->ctx, key), 1);
    X509_free(x);
    EVP_PKEY_free(key);

    s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(s->listen_fd, 4), 0);
    socklen_t len = sizeof a;
    getsockname(s->listen_fd, (struct sockaddr *)&a, &len);
    s->port = ntohs(a.sin_port);
}

static void free_server(tls_server *s)
{
    close(s->listen_fd);
    SSL_CTX_free(s->ctx);
    unlink(s->ca_file);
}

/* The server's side: one connection; after the client's first command, replies go
 * out as separate records cut at awkward places, then two replies in one record, then
 * a 40,000-byte bulk (three records); it then waits for the client's QUIT, sending
 * nothing more, so that a client waiting on the socket for bytes OpenSSL already holds
 * would hang. */
static void *serve(void *arg)
{
    tls_server *s = arg;
    int fd = accept(s->listen_fd, NULL, NULL);
    if (fd < 0)
        return NULL;
    SSL *ssl = SSL_new(s->ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
        char in[256];
        SSL_read(ssl, in, sizeof in);
        static const char *const records[] = {"+O", "K\r", "\n:1", "23\r\n$", "3\r\nab", "c\r", "\n",
                                              "+A\r\n+B\r\n"};
        for (size_t i = 0; i < sizeof records / sizeof records[0]; i++)
            SSL_write(ssl, records[i], (int)strlen(records[i]));
        static char big[40000 + 32];
        int n = snprintf(big, sizeof big, "$40000\r\n");
        memset(big + n, 'x', 40000);
        memcpy(big + n + 40000, "\r\n", 2);
        SSL_write(ssl, big, n + 40002);
        SSL_read(ssl, in, sizeof in); /* QUIT */
        SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    close(fd);
    return NULL;
}

static void test_tls_record_boundaries(void **state)
{
    (void)state;
    tls_server s;
    make_server(&s);
    pthread_t th;
    pthread_create(&th, NULL, serve, &s);
    char err[512];
    redis_tls *t = redis_tls_new(s.ca_file, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(t);
    rconn *c = rconn_connect("127.0.0.1", s.port, t, 2000, err, sizeof err);
    if (!c)
        fail_msg("connect: %s", err);
    redisReply *r = rconn_command(c, 1, (const char *[]){"PING"}, NULL);
    assert_non_null(r);
    assert_string_equal(r->str, "OK");
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_int_equal(r->integer, 123);
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_string_equal(r->str, "abc");
    freeReplyObject(r);
    r = rconn_reply(c);
    assert_non_null(r);
    assert_string_equal(r->str, "A");
    freeReplyObject(r);
    r = rconn_reply(c);
    if (!r)
        fail_msg("the second reply of one record: %s", rconn_errstr(c));
    assert_string_equal(r->str, "B");
    freeReplyObject(r);
    r = rconn_reply(c);
    if (!r)
        fail_msg("a bulk over three records: %s", rconn_errstr(c));
    assert_int_equal(r->len, 40000);
    assert_int_equal(r->str[39999], 'x');
    freeReplyObject(r);
    assert_true(rconn_append(c, 1, (const char *[]){"QUIT"}, NULL));
    assert_true(rconn_flush(c));
    rconn_free(c);
    pthread_join(th, NULL);
    redis_tls_free(t);
    free_server(&s);
}

/* The certificate is for redis.test and 127.0.0.1: another name is refused, with a
 * reason that says so; a CA that did not sign it is refused too. */
static void test_tls_refuses_wrong_name_and_ca(void **state)
{
    (void)state;
    tls_server s;
    make_server(&s);
    pthread_t th;
    pthread_create(&th, NULL, serve, &s);
    char err[512];
    redis_tls *t = redis_tls_new(s.ca_file, NULL, NULL, "other.test", err, sizeof err);
    assert_non_null(t);
    rconn *c = rconn_connect("127.0.0.1", s.port, t, 2000, err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "the server's certificate is not for 'other.test'"));
    pthread_join(th, NULL);
    redis_tls_free(t);

    pthread_create(&th, NULL, serve, &s);
    /* The system store does not hold our throw-away certificate. */
    t = redis_tls_new(NULL, NULL, NULL, NULL, err, sizeof err);
    assert_non_null(t);
    c = rconn_connect("127.0.0.1", s.port, t, 2000, err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "certificate does not verify"));
    pthread_join(th, NULL);
    redis_tls_free(t);
    free_server(&s);
}

/* ---- sentinel answers ---------------------------------------------------------------- */

static redisReply *parse(const char *resp)
{
    redisReader *rd = redisReaderCreate();
    assert_int_equal(redisReaderFeed(rd, resp, strlen(resp)), REDIS_OK);
    void *r = NULL;
    assert_int_equal(redisReaderGetReply(rd, &r), REDIS_OK);
    assert_non_null(r);
    redisReaderFree(rd);
    return r;
}

static void test_sentinel_answers(void **state)
{
    (void)state;
    redis_addr a;
    char err[256];
    redisReply *r = parse("*2\r\n$8\r\n10.0.0.7\r\n$4\r\n6380\r\n");
    assert_true(redis_sentinel_parse_addr(r, "main", &a, err, sizeof err));
    assert_string_equal(a.host, "10.0.0.7");
    assert_int_equal(a.port, 6380);
    freeReplyObject(r);
    r = parse("*-1\r\n");
    assert_false(redis_sentinel_parse_addr(r, "main", &a, err, sizeof err));
    assert_string_equal(err, "does not know a master named 'main'");
    freeReplyObject(r);
    static const char *const bad[] = {"*2\r\n$1\r\nh\r\n$5\r\n70000\r\n", "*2\r\n$1\r\nh\r\n$2\r\n1x\r\n",
                                      "*1\r\n$1\r\nh\r\n", "*2\r\n$0\r\n\r\n$1\r\n1\r\n", ":1\r\n",
                                      "-NOAUTH Authentication required.\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = parse(bad[i]);
        assert_false(redis_sentinel_parse_addr(r, "main", &a, err, sizeof err));
        freeReplyObject(r);
    }
    const char sw[] = "main 10.0.0.7 6380 10.0.0.8 6381";
    assert_true(redis_sentinel_parse_switch(sw, sizeof sw - 1, "main", &a));
    assert_string_equal(a.host, "10.0.0.8");
    assert_int_equal(a.port, 6381);
    assert_false(redis_sentinel_parse_switch(sw, sizeof sw - 1, "mai", &a)); /* another master */
    const char other[] = "main2 10.0.0.7 6380 10.0.0.8 6381";
    assert_false(redis_sentinel_parse_switch(other, sizeof other - 1, "main", &a));
    const char junk[] = "main 10.0.0.7 6380 10.0.0.8 6381 extra";
    assert_false(redis_sentinel_parse_switch(junk, sizeof junk - 1, "main", &a));
    const char badport[] = "main 10.0.0.7 6380 10.0.0.8 0";
    assert_false(redis_sentinel_parse_switch(badport, sizeof badport - 1, "main", &a));
}

static void test_tls_files_are_checked(void **state)
{
    (void)state;
    char err[512];
    assert_null(redis_tls_new("/nonexistent/ca.pem", NULL, NULL, NULL, err, sizeof err));
    assert_string_equal(err, "--redis-tls-ca /nonexistent/ca.pem: No such file or directory");
    assert_null(redis_tls_new("/etc/hostname", NULL, NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "cannot load CA certificates"));
    assert_null(redis_tls_new(NULL, "/etc/hostname", NULL, NULL, err, sizeof err));
    assert_non_null(strstr(err, "go together"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reply_split_at_every_byte),
        cmocka_unit_test(test_one_byte_per_read),
        cmocka_unit_test(test_all_replies_in_one_read_need_no_wait),
        cmocka_unit_test(test_nowait_takes_what_is_there),
        cmocka_unit_test(test_partial_writes),
        cmocka_unit_test(test_timeout_breaks_the_connection),
        cmocka_unit_test(test_held_reply_waits_longer),
        cmocka_unit_test(test_closed_before_any_reply_hints_at_tls),
        cmocka_unit_test(test_tls_answer_on_plaintext),
        cmocka_unit_test(test_garbage_is_a_protocol_error),
        cmocka_unit_test(test_setup_commands),
        cmocka_unit_test(test_setup_checks),
        cmocka_unit_test(test_acl_errors_are_named),
        cmocka_unit_test(test_tls_record_boundaries),
        cmocka_unit_test(test_tls_refuses_wrong_name_and_ca),
        cmocka_unit_test(test_sentinel_answers),
        cmocka_unit_test(test_tls_files_are_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
