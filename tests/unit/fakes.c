/* Fake store and sink: just enough behaviour for relay.c. */
#include "fakes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

fake_world fw;

struct store {
    int unused;
};
struct sink {
    bool connected;
};

typedef struct mark {
    char run[64];
    long long id, seq;
} mark;
static mark marks[FAKE_MAX];
static int nmarks;

void fake_reset(void)
{
    memset(&fw, 0, sizeof fw);
    fw.cut_after = -1;
    nmarks = 0;
}

static mark *find_mark(const event *e)
{
    for (int i = 0; i < nmarks; i++)
        if (strlen(marks[i].run) == e->run_id_len && !memcmp(marks[i].run, e->run_id, e->run_id_len))
            return &marks[i];
    return NULL;
}

/* ---- sink ---- */
sink *sink_new(redis_endpoint *e, const config *cfg, const char *epoch, bool announce)
{
    (void)e, (void)cfg, (void)epoch, (void)announce;
    return calloc(1, sizeof(sink));
}
void sink_get_counters(const sink *k, sink_counters *out)
{
    (void)k;
    memset(out, 0, sizeof *out);
}
bool sink_refusing(const sink *k, const char **why)
{
    (void)k;
    *why = "";
    return false;
}
redis_endpoint *redis_endpoint_new(const config *cfg, char *err, size_t errlen)
{
    (void)cfg, (void)err, (void)errlen;
    return calloc(1, sizeof(redis_endpoint));
}
void redis_endpoint_free(redis_endpoint *e) { free(e); }
void sink_free(sink *k) { free(k); }
void sink_set_epoch(sink *k, const char *epoch, const char *origin) { (void)k, (void)epoch, (void)origin; }
bool sink_connected(const sink *k) { return k->connected; }
void sink_disconnect(sink *k) { k->connected = false; }
const char *sink_errstr(const sink *k) { (void)k; return "fake error"; }
const char *sink_run_errstr(const sink *k, const event *e)
{
    (void)k;
    for (int i = 0; i < 2; i++) {
        const char *run = fw.run_err[i] + strlen("refused ");
        if (fw.run_err[i][0] && strlen(run) == e->run_id_len && !memcmp(run, e->run_id, e->run_id_len))
            return fw.run_err[i];
    }
    return "fake error";
}

/* A refusal of e (PUB_FAILED): its run's reason, for sink_run_errstr. */
static void refuse_run(const event *e)
{
    if (strcmp(sink_run_errstr(NULL, e), "fake error"))
        return;
    int i = fw.run_err[0][0] ? 1 : 0;
    snprintf(fw.run_err[i], sizeof fw.run_err[i], "refused %.*s", (int)e->run_id_len, e->run_id);
}
bool sink_connect(sink *k)
{
    if (fw.refuse_connect)
        return false;
    fw.connects++;
    k->connected = true;
    return true;
}

bool sink_publish(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out)
{
    for (size_t i = 0; i < n; i++)
        out[i] = PUB_UNSENT;
    fw.publishes++;
    if (fw.refuse_calls != 0) {
        if (fw.refuse_calls > 0)
            fw.refuse_calls--;
        for (size_t i = 0; i < n; i++)
            out[i] = PUB_REFUSED;
        return true;
    }
    for (size_t i = 0; i < n; i++) {
        const event *e = evs[i];
        if (fw.cut_after == 0) {
            fw.cut_after = -1;
            k->connected = false;
            return false;
        }
        if (fw.cut_after > 0)
            fw.cut_after--;
        bool lose_reply = fw.cut_after == 0 && fw.cut_loses_reply;
        pub_result r;
        mark *m = find_mark(e);
        if (fw.noroute_run && e->run_id_len == strlen(fw.noroute_run) &&
            !memcmp(e->run_id, fw.noroute_run, e->run_id_len)) {
            fw.noroute_offered++;
            r = PUB_NOROUTE;
        } else if (e->id == fw.fail_id && fw.fail_times != 0) {
            if (fw.fail_times > 0)
                fw.fail_times--;
            r = PUB_FAILED;
            refuse_run(e);
        } else if (e->id == fw.fail_id2) {
            r = PUB_FAILED;
            refuse_run(e);
        } else if (m && e->id <= m->id) {
            r = PUB_DUP;
        } else if (chained[i] && (!m || m->seq != e->seq - 1)) {
            r = PUB_GAP;
        } else {
            if (!m) {
                m = &marks[nmarks++];
                memcpy(m->run, e->run_id, e->run_id_len);
                m->run[e->run_id_len] = '\0';
            }
            m->id = e->id;
            m->seq = e->seq;
            fw.delivered[fw.ndelivered++] = e->id;
            r = PUB_OK;
        }
        if (lose_reply) {
            fw.cut_after = -1;
            k->connected = false;
            return false;
        }
        out[i] = r;
    }
    return true;
}

/* ---- store: relay_batch.c only records failures ---- */
store *store_new(const char *url, const char *app, long t) { (void)url, (void)app, (void)t; return calloc(1, sizeof(store)); }
void store_free(store *s) { free(s); }
const char *store_errstr(const store *s) { (void)s; return "fake store error"; }
bool store_record_failure(store *s, const long long *ids, size_t n, int attempts, const char *error)
{
    (void)s;
    for (size_t i = 0; i < n; i++) {
        snprintf(fw.failed_errors[fw.nfailed], sizeof fw.failed_errors[0], "%s", error);
        fw.failed_ids[fw.nfailed++] = ids[i];
    }
    fw.failed_attempts = attempts;
    return true;
}
