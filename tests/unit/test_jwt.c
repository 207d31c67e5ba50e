/* The token verifier and the keyring, against a key set built here (fresh keys of
 * every algorithm, exported as a JWKS), a fixed clock, and a corpus of hostile tokens
 * made by this test's own signer: each must be refused for its own reason. */
#include "b64url_test.h"
#include "jwks.h"
#include "jwt.h"

#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define NOW 1700000000LL

static EVP_PKEY *rsa, *ec256, *ec384, *ed;
static const unsigned char hmac_key[64] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
static keyring *ring;
static const jwt_policy policy = {.audience = "outboxd", .issuer = "https://issuer.example", .leeway_s = 30};

/* ---- a signer of our own -------------------------------------------------------------- */

static char *b64s(const char *s)
{
    static char bufs[4][16384];
    static int i;
    char *out = bufs[i++ % 4];
    b64url((const unsigned char *)s, strlen(s), out);
    return out;
}

/* Signs header.payload with key (HMAC when key is NULL, with secret). der: keep an
 * ECDSA signature DER-encoded instead of JOSE's r||s. */
static char *sign_with(const char *md, EVP_PKEY *key, const unsigned char *secret, size_t secret_len, int pss,
                       int der, const char *header, const char *payload)
{
    static char tok[3][65536];
    static int ti;
    char *out = tok[ti++ % 3];
    snprintf(out, 65536, "%s.%s", b64s(header), b64s(payload));
    unsigned char sig[1024];
    size_t sig_len = sizeof sig;
    if (!key) {
        assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, md, NULL, secret, secret_len, (unsigned char *)out,
                                  strlen(out), sig, sizeof sig, &sig_len));
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        EVP_PKEY_CTX *pctx;
        assert_int_equal(EVP_DigestSignInit_ex(ctx, &pctx, md, NULL, NULL, key, NULL), 1);
        if (pss) {
            EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
            EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
        }
        assert_int_equal(EVP_DigestSign(ctx, sig, &sig_len, (unsigned char *)out, strlen(out)), 1);
        EVP_MD_CTX_free(ctx);
        if (EVP_PKEY_is_a(key, "EC") && !der) {
            const unsigned char *p = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sig_len);
            int field = (EVP_PKEY_get_bits(key) + 7) / 8;
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, field);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + field, field);
            sig_len = (size_t)(2 * field);
            ECDSA_SIG_free(es);
        }
    }
    char s64[2048];
    b64url(sig, sig_len, s64);
    strcat(out, ".");
    strcat(out, s64);
    return out;
}

static char payload[4096];
static const char *claims(const char *extra)
{
    snprintf(payload, sizeof payload,
             "{\"iss\":\"https://issuer.example\",\"aud\":[\"other\",\"outboxd\"],\"sub\":\"u-1\",\"jti\":\"j-1\","
             "\"iat\":%lld,\"exp\":%lld,\"runs\":[\"run-1\",\"tenant-7/*\"]%s}",
             NOW - 10, NOW + 300, extra);
    return payload;
}

static char *hs256(const char *payload_json)
{
    return sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"hs256\",\"typ\":\"JWT\"}",
                     payload_json);
}

static jwt_status verify(const char *tok, jwt_claims *c)
{
    const keyring *rings[] = {NULL, ring};
    char why[256];
    jwt_status st = jwt_verify(tok, strlen(tok), rings, 2, &policy, NOW, c, why, sizeof why);
    if (st != JWT_OK)
        assert_true(strlen(why) > 0);
    return st;
}

static void expect(const char *tok, jwt_status want)
{
    jwt_claims c;
    jwt_status got = verify(tok, &c);
    if (got != want)
        fail_msg("got %s, want %s", jwt_status_name(got), jwt_status_name(want));
    if (got == JWT_OK)
        jwt_claims_free(&c);
    else
        assert_null(c.payload);
}

/* ---- the key set, built from the keys above ------------------------------------------- */

static void bn_member(char *out, const char *name, EVP_PKEY *k, const char *param, int pad)
{
    BIGNUM *bn = NULL;
    assert_int_equal(EVP_PKEY_get_bn_param(k, param, &bn), 1);
    unsigned char bin[1024];
    int n = pad ? BN_bn2binpad(bn, bin, pad) : BN_bn2bin(bn, bin);
    char enc[2048];
    b64url(bin, (size_t)n, enc);
    sprintf(out + strlen(out), ",\"%s\":\"%s\"", name, enc);
    BN_free(bn);
}

static char jwks_json[32768];
static void build_jwks(void)
{
    char *j = jwks_json;
    char k[256], x[128];
    b64url(hmac_key, 32, k);
    sprintf(j, "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"hs256\",\"alg\":\"HS256\",\"k\":\"%s\"}", k);
    b64url(hmac_key, 48, k);
    sprintf(j + strlen(j), ",{\"kty\":\"oct\",\"kid\":\"hs384\",\"alg\":\"HS384\",\"k\":\"%s\"}", k);
    b64url(hmac_key, 64, k);
    sprintf(j + strlen(j), ",{\"kty\":\"oct\",\"kid\":\"hs512\",\"alg\":\"HS512\",\"k\":\"%s\"}", k);
    const char *rsa_algs[] = {"RS256", "PS256", "RS512"};
    for (int i = 0; i < 3; i++) {
        sprintf(j + strlen(j), ",{\"kty\":\"RSA\",\"kid\":\"%s\",\"alg\":\"%s\",\"use\":\"sig\"", rsa_algs[i],
                rsa_algs[i]);
        bn_member(j, "n", rsa, OSSL_PKEY_PARAM_RSA_N, 0);
        bn_member(j, "e", rsa, OSSL_PKEY_PARAM_RSA_E, 0);
        strcat(j, "}");
    }
    strcat(j, ",{\"kty\":\"EC\",\"kid\":\"es256\",\"alg\":\"ES256\",\"crv\":\"P-256\"");
    bn_member(j, "x", ec256, OSSL_PKEY_PARAM_EC_PUB_X, 32);
    bn_member(j, "y", ec256, OSSL_PKEY_PARAM_EC_PUB_Y, 32);
    strcat(j, "},{\"kty\":\"EC\",\"kid\":\"es384\",\"alg\":\"ES384\",\"crv\":\"P-384\"");
    bn_member(j, "x", ec384, OSSL_PKEY_PARAM_EC_PUB_X, 48);
    bn_member(j, "y", ec384, OSSL_PKEY_PARAM_EC_PUB_Y, 48);
    unsigned char raw[32];
    size_t rl = sizeof raw;
    assert_int_equal(EVP_PKEY_get_raw_public_key(ed, raw, &rl), 1);
    b64url(raw, rl, x);
    sprintf(j + strlen(j), "},{\"kty\":\"OKP\",\"kid\":\"ed\",\"alg\":\"EdDSA\",\"crv\":\"Ed25519\",\"x\":\"%s\"}", x);
    /* An encryption key beside them is skipped, not an error. */
    strcat(j, ",{\"kty\":\"RSA\",\"kid\":\"enc\",\"use\":\"enc\",\"alg\":\"RSA-OAEP\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}");
}

static int setup(void **state)
{
    (void)state;
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec256 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    ec384 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-384");
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    if (!rsa || !ec256 || !ec384 || !ed)
        return -1;
    build_jwks();
    char err[256];
    ring = jwks_parse(jwks_json, strlen(jwks_json), err, sizeof err);
    if (!ring) {
        fprintf(stderr, "jwks: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    jwks_free(ring);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec256);
    EVP_PKEY_free(ec384);
    EVP_PKEY_free(ed);
    return 0;
}

/* ---- good tokens ---------------------------------------------------------------------- */

static void test_every_algorithm_verifies(void **state)
{
    (void)state;
    assert_int_equal(ring->n, 9); /* the encryption key is not among them */
    const char *p = claims("");
    expect(hs256(p), JWT_OK);
    expect(sign_with("SHA384", NULL, hmac_key, 48, 0, 0, "{\"alg\":\"HS384\",\"kid\":\"hs384\"}", p), JWT_OK);
    expect(sign_with("SHA512", NULL, hmac_key, 64, 0, 0, "{\"alg\":\"HS512\",\"kid\":\"hs512\"}", p), JWT_OK);
    expect(sign_with("SHA256", rsa, NULL, 0, 0, 0, "{\"alg\":\"RS256\",\"kid\":\"RS256\"}", p), JWT_OK);
    expect(sign_with("SHA512", rsa, NULL, 0, 0, 0, "{\"alg\":\"RS512\",\"kid\":\"RS512\"}", p), JWT_OK);
    expect(sign_with("SHA256", rsa, NULL, 0, 1, 0, "{\"alg\":\"PS256\",\"kid\":\"PS256\"}", p), JWT_OK);
    expect(sign_with("SHA256", ec256, NULL, 0, 0, 0, "{\"alg\":\"ES256\",\"kid\":\"es256\"}", p), JWT_OK);
    expect(sign_with("SHA384", ec384, NULL, 0, 0, 0, "{\"alg\":\"ES384\",\"kid\":\"es384\"}", p), JWT_OK);
    expect(sign_with(NULL, ed, NULL, 0, 0, 0, "{\"alg\":\"EdDSA\",\"kid\":\"ed\"}", p), JWT_OK);
}

static void test_claims_are_read(void **state)
{
    (void)state;
    jwt_claims c;
    assert_int_equal(verify(hs256(claims("")), &c), JWT_OK);
    assert_int_equal(c.exp, NOW + 300);
    assert_int_equal(c.sub_len, 3);
    assert_memory_equal(c.sub, "u-1", 3);
    assert_memory_equal(c.jti, "j-1", 3);
    assert_true(jwt_runs_cover(&c, "run-1", 5));
    assert_false(jwt_runs_cover(&c, "run-10", 6)); /* exact, not a prefix */
    assert_false(jwt_runs_cover(&c, "run-", 4));
    assert_true(jwt_runs_cover(&c, "tenant-7/a", 10));
    assert_true(jwt_runs_cover(&c, "tenant-7/", 9));
    assert_false(jwt_runs_cover(&c, "tenant-7", 8));
    assert_false(jwt_runs_cover(&c, "tenant-70/a", 11));
    jwt_claims_free(&c);

    char p[1024];
    snprintf(p, sizeof p, "{\"exp\":%lld,\"runs\":[\"*\"],\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}",
             NOW + 5);
    assert_int_equal(verify(hs256(p), &c), JWT_OK);
    assert_true(jwt_runs_cover(&c, "anything at all", 15));
    assert_null(c.sub);
    jwt_claims_free(&c);
    /* No runs claim: authenticated, but covers nothing. */
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}", NOW + 5);
    assert_int_equal(verify(hs256(p), &c), JWT_OK);
    assert_false(jwt_runs_cover(&c, "run-1", 5));
    jwt_claims_free(&c);
}

static void test_time_claims_and_leeway(void **state)
{
    (void)state;
    char p[512];
    const char *fmt = "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"%s}";
    snprintf(p, sizeof p, fmt, NOW - 29, "");
    expect(hs256(p), JWT_OK); /* within the 30 s leeway */
    snprintf(p, sizeof p, fmt, NOW - 30, "");
    expect(hs256(p), JWT_EXPIRED);
    snprintf(p, sizeof p, fmt, NOW - 100000, "");
    expect(hs256(p), JWT_EXPIRED);
    char extra[64];
    snprintf(extra, sizeof extra, ",\"nbf\":%lld", NOW + 31);
    snprintf(p, sizeof p, fmt, NOW + 300, extra);
    expect(hs256(p), JWT_NOT_YET_VALID);
    snprintf(extra, sizeof extra, ",\"nbf\":%lld", NOW + 30);
    snprintf(p, sizeof p, fmt, NOW + 300, extra);
    expect(hs256(p), JWT_OK);
    snprintf(extra, sizeof extra, ",\"iat\":%lld", NOW + 3600);
    snprintf(p, sizeof p, fmt, NOW + 7200, extra);
    expect(hs256(p), JWT_NOT_YET_VALID);
    snprintf(p, sizeof p, "{\"exp\":%lld.75,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}", NOW + 10);
    expect(hs256(p), JWT_OK); /* a fractional NumericDate */
}

/* ---- the hostile corpus ----------------------------------------------------------------- */

static void test_alg_none_refused(void **state)
{
    (void)state;
    char tok[8192];
    snprintf(tok, sizeof tok, "%s.%s.", b64s("{\"alg\":\"none\",\"kid\":\"hs256\"}"), b64s(claims("")));
    expect(tok, JWT_BAD_HEADER);
    snprintf(tok, sizeof tok, "%s.%s.%s", b64s("{\"alg\":\"none\",\"kid\":\"hs256\"}"), b64s(claims("")),
             b64s("x"));
    expect(tok, JWT_BAD_HEADER);
    snprintf(tok, sizeof tok, "%s.%s.%s", b64s("{\"alg\":\"none\"}"), b64s(claims("")), b64s("x"));
    expect(tok, JWT_BAD_HEADER);
}

static void test_hmac_with_rsa_public_key_as_secret_refused(void **state)
{
    (void)state;
    /* The classic forgery: HS256 keyed with the bytes of the RSA public key (PEM). */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(b, rsa);
    char *pem;
    long n = BIO_get_mem_data(b, &pem);
    char *tok = sign_with("SHA256", NULL, (unsigned char *)pem, (size_t)n, 0, 0,
                          "{\"alg\":\"HS256\",\"kid\":\"RS256\"}", claims(""));
    expect(tok, JWT_ALG_MISMATCH);
    BIO_free(b);
    /* The reverse: an RSA signature presented for the HMAC key's kid. */
    expect(sign_with("SHA256", rsa, NULL, 0, 0, 0, "{\"alg\":\"RS256\",\"kid\":\"hs256\"}", claims("")),
           JWT_ALG_MISMATCH);
    /* And a correct signature whose header claims the key's algorithm in another case. */
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"hs256\",\"kid\":\"hs256\"}", claims("")),
           JWT_ALG_MISMATCH);
    /* An RS256 key does not verify PS256, nor the reverse. */
    expect(sign_with("SHA256", rsa, NULL, 0, 1, 0, "{\"alg\":\"PS256\",\"kid\":\"RS256\"}", claims("")),
           JWT_ALG_MISMATCH);
    expect(sign_with("SHA256", rsa, NULL, 0, 1, 0, "{\"alg\":\"RS256\",\"kid\":\"RS256\"}", claims("")),
           JWT_BAD_SIGNATURE);
}

static void test_unknown_kid_and_header_rules(void **state)
{
    (void)state;
    const char *p = claims("");
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"nope\"}", p),
           JWT_UNKNOWN_KID);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\"}", p), JWT_BAD_HEADER);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":7}", p), JWT_BAD_HEADER);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0,
                     "{\"alg\":\"HS256\",\"kid\":\"hs256\",\"crit\":[\"exp\"],\"exp\":1}", p),
           JWT_BAD_HEADER);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"hs256\",\"crit\":[]}", p),
           JWT_BAD_HEADER);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"hs256\",\"enc\":\"A128GCM\"}",
                     p),
           JWT_BAD_HEADER);
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"hs256\",\"alg\":\"RS256\"}",
                     p),
           JWT_MALFORMED); /* duplicate header key */
    expect(sign_with("SHA256", NULL, hmac_key, 32, 0, 0, "[\"HS256\"]", p), JWT_MALFORMED);
}

static void test_claims_checked(void **state)
{
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"someone-else\",\"iss\":\"https://issuer.example\"}", NOW + 60);
    expect(hs256(p), JWT_BAD_AUDIENCE);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"iss\":\"https://issuer.example\"}", NOW + 60);
    expect(hs256(p), JWT_BAD_AUDIENCE);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":[\"outboxdx\",\"outbox\"],\"iss\":\"https://issuer.example\"}",
             NOW + 60);
    expect(hs256(p), JWT_BAD_AUDIENCE);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://evil.example\"}", NOW + 60);
    expect(hs256(p), JWT_BAD_ISSUER);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\"}", NOW + 60);
    expect(hs256(p), JWT_BAD_ISSUER);
    expect(hs256("{\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}"), JWT_BAD_CLAIMS); /* no exp */
    snprintf(p, sizeof p, "{\"exp\":\"%lld\",\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}", NOW + 60);
    expect(hs256(p), JWT_BAD_CLAIMS); /* exp as a string */
    expect(hs256("{\"exp\":-1,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}"), JWT_BAD_CLAIMS);
    expect(hs256("{\"exp\":1e300,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\"}"), JWT_BAD_CLAIMS);
    expect(hs256(claims(",\"runs\":\"run-1\"")), JWT_MALFORMED); /* runs twice */
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"runs\":\"r\"}",
             NOW + 60);
    expect(hs256(p), JWT_BAD_CLAIMS);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"runs\":[1]}",
             NOW + 60);
    expect(hs256(p), JWT_BAD_CLAIMS);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"runs\":[\"\"]}",
             NOW + 60);
    expect(hs256(p), JWT_BAD_CLAIMS);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"sub\":5}",
             NOW + 60);
    expect(hs256(p), JWT_BAD_CLAIMS);
}

static void test_duplicate_claims_refused(void **state)
{
    (void)state;
    char p[512];
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"exp\":%lld}",
             NOW - 1000, NOW + 1000);
    expect(hs256(p), JWT_MALFORMED);
    snprintf(p, sizeof p, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\","
                          "\"x\":{\"a\":1,\"a\":2}}", NOW + 60);
    expect(hs256(p), JWT_MALFORMED);
    expect(hs256("{\"exp\":1,\"aud\":\"outboxd\",} "), JWT_MALFORMED);
    expect(hs256("\"just a string\""), JWT_MALFORMED);
}

static void test_tampering_refused(void **state)
{
    (void)state;
    char tok[8192];
    strcpy(tok, hs256(claims("")));
    /* Payload changed after signing: the same header and signature, other claims. */
    char *dot1 = strchr(tok, '.'), *dot2 = strchr(dot1 + 1, '.');
    char forged[8192];
    snprintf(forged, sizeof forged, "%.*s.%s%s", (int)(dot1 - tok), tok, b64s(claims(",\"admin\":true")), dot2);
    expect(forged, JWT_BAD_SIGNATURE);
    /* Every single-letter change of the signature. */
    for (char *c = dot2 + 1; *c; c++) {
        char keep = *c;
        *c = keep == 'A' ? 'B' : 'A';
        jwt_claims cl;
        jwt_status st = verify(tok, &cl);
        assert_true(st == JWT_BAD_SIGNATURE || st == JWT_MALFORMED);
        *c = keep;
    }
    expect(tok, JWT_OK);
    /* Truncations at every length. */
    size_t n = strlen(tok);
    for (size_t i = 0; i < n; i++) {
        jwt_claims cl;
        const keyring *rings[] = {ring};
        assert_int_not_equal(jwt_verify(tok, i, rings, 1, &policy, NOW, &cl, NULL, 0), JWT_OK);
    }
    /* Extra parts: a JWE has five. */
    snprintf(forged, sizeof forged, "%s.%s", tok, "AAAA");
    expect(forged, JWT_MALFORMED);
    /* The signature of one key under another key's kid. */
    expect(sign_with("SHA256", ec256, NULL, 0, 0, 0, "{\"alg\":\"ES256\",\"kid\":\"es256\"}", claims("")), JWT_OK);
    EVP_PKEY *other = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    expect(sign_with("SHA256", other, NULL, 0, 0, 0, "{\"alg\":\"ES256\",\"kid\":\"es256\"}", claims("")),
           JWT_BAD_SIGNATURE);
    EVP_PKEY_free(other);
    expect(sign_with("SHA256", NULL, hmac_key + 1, 32, 0, 0, "{\"alg\":\"HS256\",\"kid\":\"hs256\"}", claims("")),
           JWT_BAD_SIGNATURE);
}

static void test_bad_base64url_refused(void **state)
{
    (void)state;
    char tok[8192], bad[8192];
    strcpy(tok, hs256(claims("")));
    char *dot2 = strrchr(tok, '.');
    /* Standard base64 letters, padding, whitespace, and a non-canonical last letter. */
    const char *subs[] = {"+", "/", "=", " ", "\n", "%", "."};
    for (size_t i = 0; i < sizeof subs / sizeof subs[0]; i++) {
        snprintf(bad, sizeof bad, "%.*s%s%s", (int)(dot2 + 1 - tok), tok, subs[i], dot2 + 2);
        jwt_claims c;
        assert_int_not_equal(verify(bad, &c), JWT_OK);
    }
    strcpy(bad, tok);
    strcat(bad, "=");
    expect(bad, JWT_MALFORMED);
    /* A 256-bit MAC is 43 letters whose last carries 2 unused bits: set one. */
    size_t n = strlen(tok);
    strcpy(bad, tok);
    char last = bad[n - 1];
    const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    bad[n - 1] = alphabet[(strchr(alphabet, last) - alphabet) ^ 1];
    expect(bad, JWT_MALFORMED);
    unsigned char out[8];
    size_t ol;
    assert_true(b64url_decode("QQ", 2, out, &ol));
    assert_int_equal(ol, 1);
    assert_false(b64url_decode("QR", 2, out, &ol));
    assert_false(b64url_decode("QUJDR", 5, out, &ol));
    assert_false(b64url_decode("QQ==", 4, out, &ol));
}

static void test_oversized_token_refused(void **state)
{
    (void)state;
    char *big = malloc(100 * 1024 + 1);
    assert_non_null(big);
    char pad[200];
    memset(pad, 0, sizeof pad);
    /* A validly signed token of 100 KB. */
    size_t plen = 75 * 1024;
    char *p = malloc(plen + 200);
    snprintf(p, plen + 200, "{\"exp\":%lld,\"aud\":\"outboxd\",\"iss\":\"https://issuer.example\",\"x\":\"", NOW + 60);
    size_t o = strlen(p);
    memset(p + o, 'x', plen - o);
    strcpy(p + plen, "\"}");
    char hdr[128], *hb = b64s("{\"alg\":\"HS256\",\"kid\":\"hs256\"}");
    strcpy(hdr, hb);
    char *pb = malloc(plen * 2);
    b64url((unsigned char *)p, strlen(p), pb);
    snprintf(big, 100 * 1024 + 1, "%s.%s.AAAA", hdr, pb);
    jwt_claims c;
    const keyring *rings[] = {ring};
    assert_int_equal(jwt_verify(big, strlen(big), rings, 1, &policy, NOW, &c, NULL, 0), JWT_MALFORMED);
    free(big);
    free(p);
    free(pb);
}

static void test_es256_der_signature_refused(void **state)
{
    (void)state;
    expect(sign_with("SHA256", ec256, NULL, 0, 0, 1, "{\"alg\":\"ES256\",\"kid\":\"es256\"}", claims("")),
           JWT_BAD_SIGNATURE);
    /* An ES384 signature (96 bytes) under the ES256 key. */
    expect(sign_with("SHA384", ec384, NULL, 0, 0, 0, "{\"alg\":\"ES256\",\"kid\":\"es256\"}", claims("")),
           JWT_BAD_SIGNATURE);
}

/* ---- the keyring ------------------------------------------------------------------------- */

static void expect_refused(const char *json, const char *why)
{
    char err[256] = "";
    keyring *kr = jwks_parse(json, strlen(json), err, sizeof err);
    if (kr)
        fail_msg("accepted: %s", json);
    if (!strstr(err, why))
        fail_msg("reason '%s' does not say '%s'", err, why);
}

static void test_keyring_refuses_bad_keys(void **state)
{
    (void)state;
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\",\"k\":\"c2hvcnQ\"}]}", "shorter");
    /* 32 bytes are enough for HS256 but not for HS512. */
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS512\","
                   "\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "shorter");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "kty, kid and alg");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"alg\":\"HS256\",\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "kty, kid and alg");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"none\",\"k\":\"AAAA\"}]}", "alg is not one");
    expect_refused("{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"a\",\"alg\":\"HS256\",\"k\":\"AAAA\"}]}", "kty does not fit");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"RS256\",\"n\":\"AAAA\",\"e\":\"AQAB\"}]}",
                   "kty does not fit");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\","
                   "\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"},"
                   "{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\","
                   "\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "twice");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"kid\":\"b\",\"alg\":\"HS256\","
                   "\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "not JSON");
    expect_refused("{\"keys\":[]}", "keys");
    expect_refused("[]", "keys");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\",\"use\":\"enc\",\"k\":\"AAAA\"}]}",
                   "no signature keys");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\",\"key_ops\":[\"sign\"],"
                   "\"k\":\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY\"}]}",
                   "verify");
    /* An EC key whose point is not on the curve, and one with a short coordinate. */
    char j[2048];
    snprintf(j, sizeof j,
             "{\"keys\":[{\"kty\":\"EC\",\"kid\":\"e\",\"alg\":\"ES256\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}",
             "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    expect_refused(j, "curve");
    expect_refused("{\"keys\":[{\"kty\":\"EC\",\"kid\":\"e\",\"alg\":\"ES256\",\"crv\":\"P-384\",\"x\":\"AA\",\"y\":\"AA\"}]}",
                   "crv");
    expect_refused("{\"keys\":[{\"kty\":\"EC\",\"kid\":\"e\",\"alg\":\"ES256\",\"crv\":\"P-256\",\"x\":\"AAAA\",\"y\":\"AAAA\"}]}",
                   "exact length");
    /* A 1024-bit RSA key, and an RSA key with its private exponent. */
    EVP_PKEY *weak = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    strcpy(j, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"w\",\"alg\":\"RS256\"");
    bn_member(j, "n", weak, OSSL_PKEY_PARAM_RSA_N, 0);
    bn_member(j, "e", weak, OSSL_PKEY_PARAM_RSA_E, 0);
    strcat(j, "}]}");
    expect_refused(j, "2048");
    EVP_PKEY_free(weak);
    char *priv = malloc(8192);
    strcpy(priv, "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"p\",\"alg\":\"RS256\"");
    bn_member(priv, "n", rsa, OSSL_PKEY_PARAM_RSA_N, 0);
    bn_member(priv, "e", rsa, OSSL_PKEY_PARAM_RSA_E, 0);
    bn_member(priv, "d", rsa, OSSL_PKEY_PARAM_RSA_D, 0);
    strcat(priv, "}]}");
    expect_refused(priv, "private");
    free(priv);
    expect_refused("{\"keys\":[{\"kty\":\"OKP\",\"kid\":\"o\",\"alg\":\"EdDSA\",\"crv\":\"X25519\",\"x\":\"AAAA\"}]}",
                   "Ed25519");
    expect_refused("{\"keys\":[{\"kty\":\"oct\",\"kid\":\"a\",\"alg\":\"HS256\",\"k\":\"MDEy+zQ1\"}]}", "base64url");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_algorithm_verifies),
        cmocka_unit_test(test_claims_are_read),
        cmocka_unit_test(test_time_claims_and_leeway),
        cmocka_unit_test(test_alg_none_refused),
        cmocka_unit_test(test_hmac_with_rsa_public_key_as_secret_refused),
        cmocka_unit_test(test_unknown_kid_and_header_rules),
        cmocka_unit_test(test_claims_checked),
        cmocka_unit_test(test_duplicate_claims_refused),
        cmocka_unit_test(test_tampering_refused),
        cmocka_unit_test(test_bad_base64url_refused),
        cmocka_unit_test(test_oversized_token_refused),
        cmocka_unit_test(test_es256_der_signature_refused),
        cmocka_unit_test(test_keyring_refuses_bad_keys),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
