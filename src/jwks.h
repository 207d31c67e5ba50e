/* A keyring: the verification keys of a JSON Web Key Set (RFC 7517), each turned
 * into an OpenSSL key (or an HMAC secret) once, when the set is loaded. Every key
 * names its algorithm (`alg`), and a token is only ever checked with that algorithm:
 * the keyring is what makes "the algorithm comes from the key" hold. */
#ifndef OUTBOXD_JWKS_H
#define OUTBOXD_JWKS_H

#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>

#define JWKS_MAX_BYTES (1 << 20) /* a key set file or document larger than this is refused */
#define JWKS_MAX_KEYS 64

typedef enum jwk_alg {
    JWK_HS256, JWK_HS384, JWK_HS512,
    JWK_RS256, JWK_RS384, JWK_RS512,
    JWK_PS256, JWK_PS384, JWK_PS512,
    JWK_ES256, JWK_ES384, JWK_ES512,
    JWK_EDDSA,
    JWK_NALGS
} jwk_alg;

typedef struct jwk {
    char *kid;
    jwk_alg alg;
    EVP_PKEY *pkey;        /* RSA, EC and OKP keys */
    unsigned char *secret; /* oct keys */
    size_t secret_len;
} jwk;

typedef struct keyring {
    jwk *keys;
    size_t n;
} keyring;

/* The JOSE name of an algorithm ("RS256"). */
const char *jwk_alg_name(jwk_alg a);
/* Whether HS256/384/512. */
bool jwk_alg_is_hmac(jwk_alg a);
/* The digest of an algorithm ("SHA256"), NULL for EdDSA. */
const char *jwk_alg_digest(jwk_alg a);

/* Parses a JWKS document {"keys":[...]}. Each key must carry kty, kid and alg, agree
 * with itself (kty and crv fit alg; RSA at least 2048 bits; HMAC secrets at least as
 * long as the hash; an EC point on its curve) and hold no private part; kids are
 * unique. Keys marked "use":"enc" are skipped (they are not for signatures); any other
 * bad key refuses the whole set, with the reason (naming the kid) in err. Returns a
 * keyring to free with jwks_free, or NULL. */
keyring *jwks_parse(const char *json, size_t len, char *err, size_t errlen);
/* Reads and parses a JWKS file (at most JWKS_MAX_BYTES). */
keyring *jwks_load_file(const char *path, char *err, size_t errlen);
/* The key with this kid (kid_len bytes), or NULL. */
const jwk *jwks_find(const keyring *kr, const char *kid, size_t kid_len);
void jwks_free(keyring *kr);

/* Strict base64url (RFC 4648 section 5) without padding: only the 64 letters, no
 * '=', no whitespace, and the unused low bits of the last letter zero, so that every
 * byte string has exactly one accepted encoding. Decodes s[0..n) into out (room for
 * n * 3 / 4 + 1 bytes); false for anything else. */
bool b64url_decode(const char *s, size_t n, unsigned char *out, size_t *out_len);

#endif
