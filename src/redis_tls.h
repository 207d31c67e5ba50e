/* TLS for Redis connections (OpenSSL 3): one client context per process, built from
 * the --redis-tls-* settings, and one session per connection. The server's
 * certificate chain and its name are always verified; nothing falls back to
 * plaintext. Used by the blocking connections (redis_conn.c) and the gateway's
 * libevent connections (redis_aconn.c) alike. */
#ifndef OUTBOXD_REDIS_TLS_H
#define OUTBOXD_REDIS_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct redis_tls redis_tls;

/* A client context: CA file (NULL: the system store), client certificate and key
 * (both or neither), server name (NULL: the host connected to). TLS 1.2 at least.
 * NULL with a reason naming the file in err. Free with redis_tls_free. */
redis_tls *redis_tls_new(const char *ca, const char *cert, const char *key, const char *server_name,
                         char *err, size_t errlen);
void redis_tls_free(redis_tls *t);

/* A client session for a connection to host: SNI (unless host is an IP address) and
 * the name the certificate must carry are the configured server name or host. The
 * caller owns the SSL (SSL_free). NULL with a reason in err. */
SSL *redis_tls_session(const redis_tls *t, const char *host, char *err, size_t errlen);

/* Why a handshake or TLS read/write failed, in one line: the certificate check that
 * failed (with the name expected), else OpenSSL's error, else a hint that the peer
 * does not speak TLS. ssl_error is the OpenSSL error code taken from the queue (0 if
 * none). Empties the thread's error queue. */
void redis_tls_explain(SSL *ssl, unsigned long ssl_error, char *err, size_t errlen);

/* A hint to add to a connection that failed after the handshake: "" unless the
 * server asked for a client certificate that is not configured. */
const char *redis_tls_hint(SSL *ssl);

/* Whether the first bytes a peer sent look like a TLS record (a TLS server answering
 * a plaintext client), so that the error can say so. */
bool redis_tls_looks_like_tls(const unsigned char *p, size_t n);

#endif
