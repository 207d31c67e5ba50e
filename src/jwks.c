/* JSON Web Key Sets into OpenSSL 3 keys (EVP_PKEY_fromdata). Strict on purpose: a
 * key that could be read two ways, or that is too weak, or that carries its private
 * half, refuses the whole set, because a keyring that silently dropped a key would
 * turn a configuration mistake into tokens refused (or accepted) for no visible reason. */
#include "jwks.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    const char *kty;
    const char *digest;
    const char *group; /* EC: OpenSSL group name */
    size_t size;       /* HMAC: least secret bytes; EC: field bytes */
} algs[JWK_NALGS] = {
    [JWK_HS256] = {"HS256", "oct", "SHA256", NULL, 32},
    [JWK_HS384] = {"HS384", "oct", "SHA384", NULL, 48},
    [JWK_HS512] = {"HS512", "oct", "SHA512", NULL, 64},
    [JWK_RS256] = {"RS256", "RSA", "SHA256", NULL, 0},
    [JWK_RS384] = {"RS384", "RSA", "SHA384", NULL, 0},
    [JWK_RS512] = {"RS512", "RSA", "SHA512", NULL, 0},
    [JWK_PS256] = {"PS256", "RSA", "SHA256", NULL, 0},
    [JWK_PS384] = {"PS384", "RSA", "SHA384", NULL, 0},
    [JWK_PS512] = {"PS512", "RSA", "SHA512", NULL, 0},
    [JWK_ES256] = {"ES256", "EC", "SHA256", "prime256v1", 32},
    [JWK_ES384] = {"ES384", "EC", "SHA384", "secp384r1", 48},
    [JWK_ES512] = {"ES512", "EC", "SHA512", "secp521r1", 66},
    [JWK_EDDSA] = {"EdDSA", "OKP", NULL, NULL, 0},
};

static const char *const ec_curves[JWK_NALGS] = {
    [JWK_ES256] = "P-256", [JWK_ES384] = "P-384", [JWK_ES512] = "P-521"};

const char *jwk_alg_name(jwk_alg a)
{
    return a < JWK_NALGS ? algs[a].name : "?";
}

bool jwk_alg_is_hmac(jwk_alg a)
{
    return a == JWK_HS256 || a == JWK_HS384 || a == JWK_HS512;
}

const char *jwk_alg_digest(jwk_alg a)
{
    return a < JWK_NALGS ? algs[a].digest : NULL;
}

/* ---- base64url -------------------------------------------------------------------- */

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

bool b64url_decode(const char *s, size_t n, unsigned char *out, size_t *out_len)
{
    if (n % 4 == 1)
        return false;
    size_t o = 0;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* The bits left over must be zero: "QQ" and "QR" must not both mean "A". */
    if (acc != 0)
        return false;
    *out_len = o;
    return true;
}

/* Decodes a base64url JSON string member into a new buffer (caller frees). */
static unsigned char *member_b64(json_t *key, const char *name, size_t *len, const char **why)
{
    json_t *v = json_object_get(key, name);
    if (!json_is_string(v)) {
        *why = "a required member is missing or not a string";
        return NULL;
    }
    size_t n = json_string_length(v);
    unsigned char *out = malloc(n * 3 / 4 + 1);
    if (!out) {
        *why = "out of memory";
        return NULL;
    }
    if (n == 0 || !b64url_decode(json_string_value(v), n, out, len)) {
        free(out);
        *why = "a member is not strict base64url";
        return NULL;
    }
    return out;
}

/* ---- keys ------------------------------------------------------------------------- */

static EVP_PKEY *pkey_from(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    /* fromdata does not check that an EC point lies on its curve: do it here. */
    if (pkey) {
        EVP_PKEY_CTX *chk = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
        if (!chk || EVP_PKEY_public_check(chk) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(chk);
    }
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_key(json_t *key, const char **why)
{
    size_t nl, el;
    unsigned char *n = member_b64(key, "n", &nl, why);
    unsigned char *e = n ? member_b64(key, "e", &el, why) : NULL;
    EVP_PKEY *pkey = NULL;
    BIGNUM *bn = n ? BN_bin2bn(n, (int)nl, NULL) : NULL, *be = e ? BN_bin2bn(e, (int)el, NULL) : NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bn && be && bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
        OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be)) {
        pkey = pkey_from("RSA", bld);
        if (!pkey && !*why)
            *why = "not a valid RSA public key";
        if (pkey && EVP_PKEY_get_bits(pkey) < 2048) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
            *why = "RSA keys under 2048 bits are refused";
        }
    }
    OSSL_PARAM_BLD_free(bld);
    BN_free(bn);
    BN_free(be);
    free(n);
    free(e);
    return pkey;
}

static EVP_PKEY *ec_key(json_t *key, jwk_alg alg, const char **why)
{
    const char *crv = json_string_value(json_object_get(key, "crv"));
    if (!crv || strcmp(crv, ec_curves[alg]) != 0) {
        *why = "crv does not match alg";
        return NULL;
    }
    size_t xl = 0, yl = 0, fl = algs[alg].size;
    unsigned char *x = member_b64(key, "x", &xl, why);
    unsigned char *y = x ? member_b64(key, "y", &yl, why) : NULL;
    EVP_PKEY *pkey = NULL;
    if (x && y && (xl != fl || yl != fl)) {
        *why = "x and y must have the curve's exact length";
    } else if (x && y) {
        unsigned char point[1 + 2 * 66];
        point[0] = 0x04; /* uncompressed */
        memcpy(point + 1, x, fl);
        memcpy(point + 1 + fl, y, fl);
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld &&
            OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, algs[alg].group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point, 1 + 2 * fl))
            pkey = pkey_from("EC", bld);
        OSSL_PARAM_BLD_free(bld);
        if (!pkey)
            *why = "not a point on the curve";
    }
    free(x);
    free(y);
    return pkey;
}

static EVP_PKEY *okp_key(json_t *key, const char **why)
{
    const char *crv = json_string_value(json_object_get(key, "crv"));
    int type;
    size_t want;
    if (crv && !strcmp(crv, "Ed25519")) {
        type = EVP_PKEY_ED25519;
        want = 32;
    } else if (crv && !strcmp(crv, "Ed448")) {
        type = EVP_PKEY_ED448;
        want = 57;
    } else {
        *why = "crv must be Ed25519 or Ed448 for EdDSA";
        return NULL;
    }
    size_t xl;
    unsigned char *x = member_b64(key, "x", &xl, why);
    EVP_PKEY *pkey = NULL;
    if (x && xl != want)
        *why = "x has the wrong length for its curve";
    else if (x && !(pkey = EVP_PKEY_new_raw_public_key(type, NULL, x, xl)))
        *why = "not a valid EdDSA public key";
    free(x);
    return pkey;
}

static bool parse_alg(const char *s, jwk_alg *out)
{
    for (int i = 0; i < JWK_NALGS; i++)
        if (!strcmp(s, algs[i].name)) {
            *out = (jwk_alg)i;
            return true;
        }
    return false;
}

/* Members that only a private key has. */
static const char *const private_members[] = {"d", "p", "q", "dp", "dq", "qi", "oth", NULL};

/* Fills k from one JWK. *skip is set for keys that are not for signatures. */
static bool parse_key(json_t *key, jwk *k, bool *skip, const char **why)
{
    *skip = false;
    if (!json_is_object(key)) {
        *why = "a key is not a JSON object";
        return false;
    }
    const char *use = json_string_value(json_object_get(key, "use"));
    if (json_object_get(key, "use") && !use) {
        *why = "use is not a string";
        return false;
    }
    if (use && strcmp(use, "sig") != 0) {
        *skip = true; /* an encryption key published beside the signing keys */
        return true;
    }
    const char *kty = json_string_value(json_object_get(key, "kty"));
    const char *kid = json_string_value(json_object_get(key, "kid"));
    const char *alg = json_string_value(json_object_get(key, "alg"));
    if (!kty || !kid || !alg) {
        *why = "every key needs kty, kid and alg (strings)";
        return false;
    }
    if (!*kid || json_string_length(json_object_get(key, "kid")) != strlen(kid)) {
        *why = "kid must be a non-empty string without NUL";
        return false;
    }
    if (!parse_alg(alg, &k->alg)) {
        *why = "alg is not one of HS256/384/512, RS256/384/512, PS256/384/512, ES256/384/512, EdDSA";
        return false;
    }
    if (strcmp(kty, algs[k->alg].kty) != 0) {
        *why = "kty does not fit alg";
        return false;
    }
    json_t *ops = json_object_get(key, "key_ops");
    if (ops) {
        bool verify = false;
        size_t i;
        json_t *op;
        if (!json_is_array(ops)) {
            *why = "key_ops is not an array";
            return false;
        }
        json_array_foreach(ops, i, op) verify |= json_is_string(op) && !strcmp(json_string_value(op), "verify");
        if (!verify) {
            *why = "key_ops does not include verify";
            return false;
        }
    }
    if (!jwk_alg_is_hmac(k->alg))
        for (int i = 0; private_members[i]; i++)
            if (json_object_get(key, private_members[i])) {
                *why = "holds a private key part: publish public keys only";
                return false;
            }
    k->kid = strdup(kid);
    if (!k->kid) {
        *why = "out of memory";
        return false;
    }
    switch (algs[k->alg].kty[0]) {
    case 'o': /* oct */
        if ((k->secret = member_b64(key, "k", &k->secret_len, why)) && k->secret_len < algs[k->alg].size) {
            *why = "HMAC secret shorter than its hash (32/48/64 bytes for HS256/384/512)";
            return false;
        }
        return k->secret != NULL;
    case 'O': return (k->pkey = okp_key(key, why)) != NULL;
    case 'R': return (k->pkey = rsa_key(key, why)) != NULL;
    case 'E': return (k->pkey = ec_key(key, k->alg, why)) != NULL;
    }
    return false;
}

static void key_clear(jwk *k)
{
    free(k->kid);
    EVP_PKEY_free(k->pkey);
    if (k->secret)
        OPENSSL_clear_free(k->secret, k->secret_len);
    memset(k, 0, sizeof *k);
}

void jwks_free(keyring *kr)
{
    if (!kr)
        return;
    for (size_t i = 0; i < kr->n; i++)
        key_clear(&kr->keys[i]);
    free(kr->keys);
    free(kr);
}

keyring *jwks_parse(const char *text, size_t len, char *err, size_t errlen)
{
    if (len > JWKS_MAX_BYTES) {
        snprintf(err, errlen, "key set larger than %d bytes", JWKS_MAX_BYTES);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, errlen, "not JSON (line %d: %s)", je.line, je.text);
        return NULL;
    }
    keyring *kr = calloc(1, sizeof *kr);
    json_t *keys = json_object_get(root, "keys");
    size_t nkeys = json_array_size(keys);
    if (!kr || !json_is_object(root) || !json_is_array(keys) || nkeys == 0 || nkeys > JWKS_MAX_KEYS ||
        !(kr->keys = calloc(nkeys, sizeof *kr->keys))) {
        snprintf(err, errlen, "want {\"keys\":[...]} with 1 to %d keys", JWKS_MAX_KEYS);
        goto fail;
    }
    for (size_t i = 0; i < nkeys; i++) {
        jwk *k = &kr->keys[kr->n];
        const char *why = NULL;
        bool skip;
        json_t *key = json_array_get(keys, i);
        if (!parse_key(key, k, &skip, &why)) {
            const char *kid = json_string_value(json_object_get(key, "kid"));
            snprintf(err, errlen, "key %zu%s%.64s%s: %s", i + 1, kid ? " (kid " : "", kid ? kid : "",
                     kid ? ")" : "", why ? why : "not usable");
            key_clear(k);
            goto fail;
        }
        if (skip)
            continue;
        if (jwks_find(kr, k->kid, strlen(k->kid))) {
            snprintf(err, errlen, "kid %.64s appears twice", k->kid);
            key_clear(k);
            goto fail;
        }
        kr->n++;
    }
    if (kr->n == 0) {
        snprintf(err, errlen, "no signature keys in the set");
        goto fail;
    }
    json_decref(root);
    return kr;
fail:
    json_decref(root);
    jwks_free(kr);
    return NULL;
}

keyring *jwks_load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *data = malloc(JWKS_MAX_BYTES + 1);
    size_t n = data ? fread(data, 1, JWKS_MAX_BYTES + 1, f) : 0;
    bool bad = ferror(f) || !data;
    fclose(f);
    keyring *kr = NULL;
    if (bad)
        snprintf(err, errlen, "%s: cannot read it", path);
    else if (n > JWKS_MAX_BYTES)
        snprintf(err, errlen, "%s: larger than %d bytes", path, JWKS_MAX_BYTES);
    else
        kr = jwks_parse(data, n, err, errlen);
    free(data);
    return kr;
}

const jwk *jwks_find(const keyring *kr, const char *kid, size_t kid_len)
{
    for (size_t i = 0; kr && i < kr->n; i++)
        if (strlen(kr->keys[i].kid) == kid_len && memcmp(kr->keys[i].kid, kid, kid_len) == 0)
            return &kr->keys[i];
    return NULL;
}
