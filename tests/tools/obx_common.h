/* Helpers shared by the test and benchmark tools: clocks and a reader for the wire
 * message {"id":N,"run_id":"...","seq":N,"created_at":"...","payload":{..."t":N...}}. */
#ifndef OBX_COMMON_H
#define OBX_COMMON_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline long long obx_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct obx_msg {
    long long id, seq, t; /* t: the producer's clock in the payload, or -1 */
    char *run_id;         /* unescaped, malloc'd */
    size_t run_id_len;
} obx_msg;

static inline int obx_hex(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Decodes the JSON string at *p (after its opening quote) into a malloc'd buffer. */
static inline char *obx_json_string(const char **p, size_t *len)
{
    const char *s = *p;
    char *out = malloc(strlen(s) + 1), *o = out;
    while (*s && *s != '"') {
        if (*s != '\\') {
            *o++ = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'u': {
            unsigned v = 0;
            for (int i = 1; i <= 4; i++)
                v = v * 16 + (unsigned)obx_hex(s[i]);
            s += 4;
            if (v < 0x80) {
                *o++ = (char)v;
            } else if (v < 0x800) {
                *o++ = (char)(0xc0 | (v >> 6));
                *o++ = (char)(0x80 | (v & 0x3f));
            } else {
                *o++ = (char)(0xe0 | (v >> 12));
                *o++ = (char)(0x80 | ((v >> 6) & 0x3f));
                *o++ = (char)(0x80 | (v & 0x3f));
            }
            break;
        }
        default: *o++ = *s; break;
        }
        s++;
    }
    *len = (size_t)(o - out);
    *o = '\0';
    *p = *s ? s + 1 : s;
    return out;
}

/* Parses the fixed leading fields of a message; false if it is not one of ours. */
static inline bool obx_parse(const char *m, obx_msg *out)
{
    const char *p = m;
    if (strncmp(p, "{\"id\":", 6))
        return false;
    out->id = strtoll(p + 6, (char **)&p, 10);
    if (strncmp(p, ",\"run_id\":\"", 11))
        return false;
    p += 11;
    out->run_id = obx_json_string(&p, &out->run_id_len);
    if (strncmp(p, ",\"seq\":", 7)) {
        free(out->run_id);
        out->run_id = NULL;
        return false;
    }
    out->seq = strtoll(p + 7, NULL, 10);
    out->t = -1;
    const char *pl = strstr(p, "\"payload\":");
    const char *t = pl ? strstr(pl, "\"t\":") : NULL;
    if (t)
        out->t = strtoll(t + 4, NULL, 10);
    return true;
}

#endif
