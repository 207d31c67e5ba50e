/* JWS compact tokens verified with OpenSSL 3 EVP and parsed with jansson. Written by
 * hand rather than with a JWT library because Debian 12's libjwt takes the algorithm
 * from the token and checks no claims; what is here is the small, strict subset a
 * gateway needs: verify, then read exp/nbf/iat/aud/iss/sub/jti/runs. */
#include "jwt.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const status_names[JWT_NSTATUS] = {
    [JWT_OK] = "ok",
    [JWT_MALFORMED] = "malformed",
    [JWT_BAD_HEADER] = "bad_header",
    [JWT_UNKNOWN_KID] = "unknown_kid",
    [JWT_ALG_MISMATCH] = "alg_mismatch",
    [JWT_BAD_SIGNATURE] = "bad_signature",
    [JWT_BAD_CLAIMS] = "bad_claims",
    [JWT_EXPIRED] = "expired",
    [JWT_NOT_YET_VALID] = "not_yet_valid",
    [JWT_BAD_AUDIENCE] = "bad_audience",
    [JWT_BAD_ISSUER] = "bad_issuer",
};

const char *jwt_status_name(jwt_status s)
{
    return s < JWT_NSTATUS ? status_names[s] : "?";
}

static jwt_status deny(jwt_status s, char *why, size_t whylen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static jwt_status deny(jwt_status s, char *why, size_t whylen, const char *fmt, ...)
{
    if (why && whylen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
    }
    return s;
}

/* Decodes one base64url part that must hold a JSON object (duplicate keys refused). */
static json_t *decode_object(const char *s, size_t n)
{
    unsigned char buf[JWT_MAX_BYTES];
    size_t len;
    if (n == 0 || !b64url_decode(s, n, buf, &len))
        return NULL;
    json_t *v = json_loadb((const char *)buf, len, JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* ECDSA in JWS is r||s, each exactly the field's length; OpenSSL wants DER. */
static unsigned char *ecdsa_raw_to_der(const unsigned char *sig, size_t len, size_t field, size_t *der_len)
{
    if (len != 2 * field)
        return NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)field, NULL), *s = BN_bin2bn(sig + field, (int)field, NULL);
    unsigned char *der = NULL;
    if (es && r && s && ECDSA_SIG_set0(es, r, s) == 1) {
        r = s = NULL; /* owned by es now */
        int n = i2d_ECDSA_SIG(es, &der);
        *der_len = n > 0 ? (size_t)n : 0;
        if (n <= 0)
            der = NULL;
    }
    BN_free(r);
    BN_free(s);
    ECDSA_SIG_free(es);
    return der;
}

static bool verify_signature(const jwk *k, const char *input, size_t input_len, const unsigned char *sig,
                             size_t sig_len)
{
    if (jwk_alg_is_hmac(k->alg)) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        size_t mac_len = 0;
        if (!EVP_Q_mac(NULL, "HMAC", NULL, jwk_alg_digest(k->alg), NULL, k->secret, k->secret_len,
                       (const unsigned char *)input, input_len, mac, sizeof mac, &mac_len))
            return false;
        /* Constant time: how much of a forged MAC matched must not show in timing. */
        return sig_len == mac_len && CRYPTO_memcmp(mac, sig, mac_len) == 0;
    }
    unsigned char *der = NULL;
    size_t field = k->alg == JWK_ES256 ? 32 : k->alg == JWK_ES384 ? 48 : k->alg == JWK_ES512 ? 66 : 0;
    if (field) {
        size_t der_len = 0;
        if (!(der = ecdsa_raw_to_der(sig, sig_len, field, &der_len)))
            return false;
        sig = der;
        sig_len = der_len;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    bool ok = ctx && EVP_DigestVerifyInit_ex(ctx, &pctx, jwk_alg_digest(k->alg), NULL, NULL, k->pkey, NULL) == 1;
    if (ok && (k->alg == JWK_PS256 || k->alg == JWK_PS384 || k->alg == JWK_PS512))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    else if (ok && (k->alg == JWK_RS256 || k->alg == JWK_RS384 || k->alg == JWK_RS512))
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1;
    ok = ok && EVP_DigestVerify(ctx, sig, sig_len, (const unsigned char *)input, input_len) == 1;
    EVP_MD_CTX_free(ctx);
    OPENSSL_free(der);
    return ok;
}

/* A NumericDate: an integer or a finite real, in [0, 2^53]. */
static bool numeric_date(json_t *v, long long *out)
{
    double d;
    if (json_is_integer(v))
        d = (double)json_integer_value(v);
    else if (json_is_real(v))
        d = json_real_value(v);
    else
        return false;
    if (!(d >= 0 && d <= 9007199254740992.0))
        return false;
    *out = (long long)d;
    return true;
}

/* An optional string claim: absent, or a string without NUL. */
static bool string_claim(json_t *payload, const char *name, const char **s, size_t *n)
{
    json_t *v = json_object_get(payload, name);
    *s = NULL;
    *n = 0;
    if (!v)
        return true;
    if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)))
        return false;
    *s = json_string_value(v);
    *n = json_string_length(v);
    return true;
}

static jwt_status check_claims(json_t *p, const jwt_policy *policy, long long now, jwt_claims *out,
                               char *why, size_t whylen)
{
    long long exp, nbf, iat, leeway = policy->leeway_s;
    json_t *v;
    if (!numeric_date(json_object_get(p, "exp"), &exp))
        return deny(JWT_BAD_CLAIMS, why, whylen, "exp is missing or not a NumericDate");
    if ((v = json_object_get(p, "nbf")) && !numeric_date(v, &nbf))
        return deny(JWT_BAD_CLAIMS, why, whylen, "nbf is not a NumericDate");
    if ((v = json_object_get(p, "iat")) && !numeric_date(v, &iat))
        return deny(JWT_BAD_CLAIMS, why, whylen, "iat is not a NumericDate");
    if (!string_claim(p, "sub", &out->sub, &out->sub_len) || !string_claim(p, "jti", &out->jti, &out->jti_len))
        return deny(JWT_BAD_CLAIMS, why, whylen, "sub or jti is not a string");
    json_t *runs = json_object_get(p, "runs");
    if (runs) {
        bool ok = json_is_array(runs);
        size_t i;
        json_array_foreach(runs, i, v) ok = ok && json_is_string(v) && json_string_length(v) > 0;
        if (!ok)
            return deny(JWT_BAD_CLAIMS, why, whylen, "runs is not an array of non-empty strings");
    }
    if (now >= exp + leeway)
        return deny(JWT_EXPIRED, why, whylen, "expired %lld s ago", now - exp);
    if (json_object_get(p, "nbf") && nbf > now + leeway)
        return deny(JWT_NOT_YET_VALID, why, whylen, "not valid for another %lld s (nbf)", nbf - now);
    if (json_object_get(p, "iat") && iat > now + leeway)
        return deny(JWT_NOT_YET_VALID, why, whylen, "issued %lld s in the future (iat)", iat - now);
    if (policy->issuer) {
        json_t *iss = json_object_get(p, "iss");
        if (!json_is_string(iss) || strcmp(json_string_value(iss), policy->issuer) != 0 ||
            json_string_length(iss) != strlen(policy->issuer))
            return deny(JWT_BAD_ISSUER, why, whylen, "iss is not the configured issuer");
    }
    if (policy->audience) {
        json_t *aud = json_object_get(p, "aud");
        bool found = false;
        if (json_is_string(aud)) {
            found = !strcmp(json_string_value(aud), policy->audience) &&
                    json_string_length(aud) == strlen(policy->audience);
        } else if (json_is_array(aud)) {
            size_t i;
            json_array_foreach(aud, i, v) found |= json_is_string(v) &&
                                                   json_string_length(v) == strlen(policy->audience) &&
                                                   !strcmp(json_string_value(v), policy->audience);
        }
        if (!found)
            return deny(JWT_BAD_AUDIENCE, why, whylen, "aud does not contain the configured audience");
    }
    out->exp = exp;
    out->runs = runs;
    return JWT_OK;
}

jwt_status jwt_verify(const char *token, size_t len, const keyring *const *rings, size_t nrings,
                      const jwt_policy *policy, long long now, jwt_claims *out, char *why, size_t whylen)
{
    memset(out, 0, sizeof *out);
    if (why && whylen)
        why[0] = '\0';
    if (len > JWT_MAX_BYTES)
        return deny(JWT_MALFORMED, why, whylen, "token longer than %d bytes", JWT_MAX_BYTES);
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (!dot2 || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)))
        return deny(JWT_MALFORMED, why, whylen, "not three dot-separated parts (an encrypted token?)");
    size_t hlen = (size_t)(dot1 - token), plen = (size_t)(dot2 - dot1 - 1), slen = len - (size_t)(dot2 + 1 - token);

    json_t *header = decode_object(token, hlen);
    if (!header)
        return deny(JWT_MALFORMED, why, whylen, "header is not strict base64url of a JSON object");
    jwt_status st;
    json_t *alg = json_object_get(header, "alg"), *kid = json_object_get(header, "kid");
    const jwk *key = NULL;
    if (!json_is_string(alg) || !json_is_string(kid)) {
        st = deny(JWT_BAD_HEADER, why, whylen, "header needs alg and kid strings");
        goto done;
    }
    if (!strcmp(json_string_value(alg), "none")) {
        st = deny(JWT_BAD_HEADER, why, whylen, "alg none is never accepted");
        goto done;
    }
    /* We understand no critical extension, and a token with "enc" is encrypted (JWE). */
    if (json_object_get(header, "crit") || json_object_get(header, "enc")) {
        st = deny(JWT_BAD_HEADER, why, whylen, "header has crit or enc, which this verifier refuses");
        goto done;
    }
    for (size_t i = 0; !key && i < nrings; i++)
        key = jwks_find(rings[i], json_string_value(kid), json_string_length(kid));
    if (!key) {
        st = deny(JWT_UNKNOWN_KID, why, whylen, "no key with this kid");
        goto done;
    }
    if (strcmp(json_string_value(alg), jwk_alg_name(key->alg)) != 0 ||
        json_string_length(alg) != strlen(jwk_alg_name(key->alg))) {
        st = deny(JWT_ALG_MISMATCH, why, whylen, "alg is not the key's %s", jwk_alg_name(key->alg));
        goto done;
    }
    unsigned char sig[JWT_MAX_BYTES];
    size_t sig_len;
    if (slen == 0 || !b64url_decode(dot2 + 1, slen, sig, &sig_len)) {
        st = deny(JWT_MALFORMED, why, whylen, "signature is not strict base64url");
        goto done;
    }
    if (!verify_signature(key, token, (size_t)(dot2 - token), sig, sig_len)) {
        st = deny(JWT_BAD_SIGNATURE, why, whylen, "signature does not verify with key %.64s (%s)", key->kid,
                  jwk_alg_name(key->alg));
        goto done;
    }
    json_t *payload = decode_object(dot1 + 1, plen);
    if (!payload) {
        st = deny(JWT_MALFORMED, why, whylen, "payload is not a JSON object without duplicate keys");
        goto done;
    }
    st = check_claims(payload, policy, now, out, why, whylen);
    if (st == JWT_OK) {
        out->payload = payload;
    } else {
        json_decref(payload);
        memset(out, 0, sizeof *out);
    }
done:
    json_decref(header);
    return st;
}

void jwt_claims_free(jwt_claims *c)
{
    json_decref(c->payload);
    memset(c, 0, sizeof *c);
}

bool jwt_runs_cover(const jwt_claims *c, const char *run, size_t n)
{
    size_t i;
    json_t *v;
    json_array_foreach(c->runs, i, v)
    {
        const char *e = json_string_value(v);
        size_t el = json_string_length(v);
        if (el == n && memcmp(e, run, n) == 0)
            return true;
        if (el >= 1 && e[el - 1] == '*' && el - 1 <= n && memcmp(e, run, el - 1) == 0)
            return true;
    }
    return false;
}
