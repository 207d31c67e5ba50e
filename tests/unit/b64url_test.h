/* base64url encoding for tests that build tokens and key sets themselves (the
 * gateway only ever decodes). */
#ifndef OUTBOXD_TEST_B64URL_H
#define OUTBOXD_TEST_B64URL_H

#include <openssl/evp.h>
#include <stddef.h>

/* Encodes in[0..n) without padding into out (room for 4 * n / 3 + 4 bytes). */
static inline void b64url(const unsigned char *in, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    out[len] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
}

#endif
