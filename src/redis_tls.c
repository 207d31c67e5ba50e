/* The TLS client context and sessions behind rediss://. */
#include "redis_tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct redis_tls {
    SSL_CTX *ctx;
    char *server_name; /* NULL: the host connected to */
};

/* Where a session records that the server asked for a client certificate we do not
 * have: TLS 1.3 servers refuse the missing certificate after the client thinks the
 * handshake is over, and the refusal may arrive as a reset connection instead. */
static int asked_index = -1;

static int on_certificate_asked(SSL *ssl, X509 **x509, EVP_PKEY **pkey)
{
    (void)x509;
    (void)pkey;
    SSL_set_ex_data(ssl, asked_index, (void *)1);
    return 0; /* go on without one: the server may accept that (tls-auth-clients optional) */
}

/* Whether path can be opened for reading; false with the reason in err. */
static bool readable(const char *flag, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s %s: %s", flag, path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

/* The oldest queued OpenSSL error as text ("unknown" when the queue is empty). */
static const char *openssl_reason(char *out, size_t cap)
{
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown";
    const char *r = ERR_reason_error_string(e);
    snprintf(out, cap, "%s", r ? r : "unknown");
    ERR_clear_error();
    return out;
}

redis_tls *redis_tls_new(const char *ca, const char *cert, const char *key, const char *server_name,
                         char *err, size_t errlen)
{
    char why[256];
    redis_tls *t = calloc(1, sizeof *t);
    if (!t || (server_name && !(t->server_name = strdup(server_name)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    ERR_clear_error();
    t->ctx = SSL_CTX_new(TLS_client_method());
    if (!t->ctx) {
        snprintf(err, errlen, "cannot create a TLS context: %s", openssl_reason(why, sizeof why));
        goto fail;
    }
    SSL_CTX_set_min_proto_version(t->ctx, TLS1_2_VERSION);
    if (asked_index < 0)
        asked_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    if (!cert)
        SSL_CTX_set_client_cert_cb(t->ctx, on_certificate_asked);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    /* Writes may stop after any record (the sockets are non-blocking); a retried
     * write may pass the same bytes from a buffer that has moved. */
    SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (ca) {
        if (!readable("--redis-tls-ca", ca, err, errlen))
            goto fail;
        if (SSL_CTX_load_verify_file(t->ctx, ca) != 1) {
            snprintf(err, errlen, "--redis-tls-ca %s: cannot load CA certificates: %s", ca,
                     openssl_reason(why, sizeof why));
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(t->ctx) != 1) {
        snprintf(err, errlen, "cannot load the system's CA certificates: %s", openssl_reason(why, sizeof why));
        goto fail;
    }
    if ((cert != NULL) != (key != NULL)) {
        snprintf(err, errlen, "--redis-tls-cert and --redis-tls-key go together: give both or neither");
        goto fail;
    }
    if (cert) {
        if (!readable("--redis-tls-cert", cert, err, errlen) || !readable("--redis-tls-key", key, err, errlen))
            goto fail;
        if (SSL_CTX_use_certificate_chain_file(t->ctx, cert) != 1) {
            snprintf(err, errlen, "--redis-tls-cert %s: %s", cert, openssl_reason(why, sizeof why));
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(t->ctx, key, SSL_FILETYPE_PEM) != 1) {
            snprintf(err, errlen, "--redis-tls-key %s: %s", key, openssl_reason(why, sizeof why));
            goto fail;
        }
        if (SSL_CTX_check_private_key(t->ctx) != 1) {
            snprintf(err, errlen, "--redis-tls-key %s does not belong to --redis-tls-cert %s", key, cert);
            goto fail;
        }
    }
    return t;
fail:
    ERR_clear_error();
    redis_tls_free(t);
    return NULL;
}

void redis_tls_free(redis_tls *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->server_name);
    free(t);
}

static bool is_ip_literal(const char *s)
{
    unsigned char a[16];
    return inet_pton(AF_INET, s, a) == 1 || inet_pton(AF_INET6, s, a) == 1;
}

SSL *redis_tls_session(const redis_tls *t, const char *host, char *err, size_t errlen)
{
    const char *name = t->server_name ? t->server_name : host;
    SSL *ssl = SSL_new(t->ctx);
    if (!ssl) {
        snprintf(err, errlen, "cannot create a TLS session: out of memory");
        return NULL;
    }
    /* SSL_set1_host takes an IP address literal as an address to match against the
     * certificate's IP entries. SNI must not carry an address (RFC 6066). */
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(ssl, name) != 1 ||
        (!is_ip_literal(name) && SSL_set_tlsext_host_name(ssl, name) != 1)) {
        snprintf(err, errlen, "TLS: cannot use '%s' as the server name", name);
        SSL_free(ssl);
        ERR_clear_error();
        return NULL;
    }
    return ssl;
}

const char *redis_tls_hint(SSL *ssl)
{
    return ssl && asked_index >= 0 && SSL_get_ex_data(ssl, asked_index)
               ? " (the server asked for a client certificate and none is configured: --redis-tls-cert, "
                 "--redis-tls-key)"
               : "";
}

bool redis_tls_looks_like_tls(const unsigned char *p, size_t n)
{
    /* A record: content type handshake (22) or alert (21), then version 3.x. */
    return n >= 2 && (p[0] == 22 || p[0] == 21) && p[1] == 3;
}

void redis_tls_explain(SSL *ssl, unsigned long ssl_error, char *err, size_t errlen)
{
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (!ssl_error)
        ssl_error = ERR_peek_error();
    if (vr != X509_V_OK) {
        const X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        const char *host = X509_VERIFY_PARAM_get0_host((X509_VERIFY_PARAM *)param, 0);
        char *ip = X509_VERIFY_PARAM_get1_ip_asc((X509_VERIFY_PARAM *)param);
        if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
            snprintf(err, errlen,
                     "TLS: the server's certificate is not for '%s' (certificate verify failed: %s; "
                     "--redis-tls-server-name names the host the certificate is for)",
                     host ? host : ip ? ip : "?", X509_verify_cert_error_string(vr));
        else
            snprintf(err, errlen, "TLS: the server's certificate does not verify: %s (check --redis-tls-ca)",
                     X509_verify_cert_error_string(vr));
        OPENSSL_free(ip);
    } else if (ssl_error) {
        const char *reason = ERR_reason_error_string(ssl_error);
        const char *hint = "";
        if (ERR_GET_LIB(ssl_error) == ERR_LIB_SSL) {
            switch (ERR_GET_REASON(ssl_error)) {
            case SSL_R_WRONG_VERSION_NUMBER:
            case SSL_R_PACKET_LENGTH_TOO_LONG:
            case SSL_R_UNEXPECTED_EOF_WHILE_READING:
                hint = " (does the server speak TLS? a plaintext Redis cannot serve rediss://)";
                break;
            case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
            case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
                hint = " (the server may require a client certificate: --redis-tls-cert, --redis-tls-key)";
                break;
            case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
            case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
            case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
                hint = " (the server refused our client certificate)";
                break;
            default:
                break;
            }
        }
        snprintf(err, errlen, "TLS: %s%s", reason ? reason : "handshake failed", hint);
    } else {
        snprintf(err, errlen, "TLS: the connection was closed during the handshake "
                              "(does the server speak TLS? a plaintext Redis cannot serve rediss://)");
    }
    ERR_clear_error();
}
