/* JSON Web Token verification (RFC 7519, JWS compact form) against keyrings, with the
 * clock passed in. The key is chosen by the token's kid and the algorithm is the
 * key's: a token whose alg header differs is refused, never verified another way.
 * Everything a token says is checked before it is believed: size, strict base64url,
 * JSON without duplicate keys, no crit extensions, the signature, then the claims. */
#ifndef OUTBOXD_JWT_H
#define OUTBOXD_JWT_H

#include "jwks.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define JWT_MAX_BYTES 8192

typedef enum jwt_status {
    JWT_OK,
    JWT_MALFORMED,       /* not three strict base64url parts of JSON objects, or too long */
    JWT_BAD_HEADER,      /* no kid or alg, alg none, crit, an encrypted token */
    JWT_UNKNOWN_KID,     /* no key with this kid */
    JWT_ALG_MISMATCH,    /* the header's alg is not the key's */
    JWT_BAD_SIGNATURE,
    JWT_BAD_CLAIMS,      /* exp missing, a claim of the wrong type */
    JWT_EXPIRED,
    JWT_NOT_YET_VALID,   /* nbf, or iat, in the future */
    JWT_BAD_AUDIENCE,
    JWT_BAD_ISSUER,
    JWT_NSTATUS
} jwt_status;

/* A short lowercase name of a status, for metrics labels and log lines ("expired"). */
const char *jwt_status_name(jwt_status s);

typedef struct jwt_policy {
    const char *audience; /* when set, aud must contain it */
    const char *issuer;   /* when set, iss must equal it */
    long leeway_s;        /* allowed clock skew for exp, nbf and iat */
} jwt_policy;

typedef struct jwt_claims {
    json_t *payload;     /* the claims object; owned, freed by jwt_claims_free */
    long long exp;       /* Unix seconds (a fractional NumericDate is rounded down) */
    const char *sub;     /* into payload, or NULL */
    size_t sub_len;
    const char *jti;
    size_t jti_len;
    json_t *runs;        /* the runs claim (an array of strings), or NULL */
} jwt_claims;

/* Verifies token[0..len) at time now (Unix seconds), looking its kid up in rings[0],
 * then rings[1]... (a ring may be NULL). On JWT_OK fills *out (free it with
 * jwt_claims_free); otherwise *out is empty and why (if not NULL) says what was wrong,
 * never quoting the token. */
jwt_status jwt_verify(const char *token, size_t len, const keyring *const *rings, size_t nrings,
                      const jwt_policy *policy, long long now, jwt_claims *out, char *why, size_t whylen);
void jwt_claims_free(jwt_claims *c);

/* Whether the runs claim covers run[0..n): an entry equal to it, an entry "P*" with
 * P a prefix of it, or "*". */
bool jwt_runs_cover(const jwt_claims *c, const char *run, size_t n);

#endif
