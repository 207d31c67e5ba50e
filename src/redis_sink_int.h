/* What the sink's source files share and nobody else sees: the sink's layout and
 * their helpers. From the top down: redis_sink.c (the sink's interface),
 * redis_sink_cluster.c (a batch split by primary), redis_sink_pipe.c (the publish
 * pipeline), redis_sink_hw.c (the high-water of published ids), redis_sink_conn.c
 * (connections and scripts). */
#ifndef OUTBOXD_REDIS_SINK_INT_H
#define OUTBOXD_REDIS_SINK_INT_H

#include "redis_cluster.h"
#include "redis_sink.h"

/* Ranges of event ids whose publish outcome was lost with a connection. */
#define UNCERTAIN_RANGES 8
/* ASK targets retried at once in one batch (more wait for the next attempt). */
#define ASK_TARGETS 8
/* Runs whose refusal one publish call keeps apart (the others get k->err). */
#define RUN_ERRORS 16

/* One queued call: the events evs[first..first + n) of one run. acl: Redis refused
 * the whole call for the user's ACL. */
typedef struct call {
    size_t first, n;
    bool acl;
} call;

/* Events split into parts (share_out): each part's events are a slice of these
 * arrays, in the order they came. */
typedef struct share {
    size_t cap;
    const event **evs;
    bool *chained;
    pub_result *out;
    size_t *idx; /* entry j is entry idx[j] of what was split */
    int *ask;    /* index into ask_to of an ASK redirection, or -1 */
} share;

/* What one node does for a publish call: its connection, its events (a run's all go
 * to one node, in batch order) and the calls that carry them. The single Redis is one
 * node, the sink's own connection; a cluster batch has one per primary it touches and
 * one per ASK target. The nodes of a batch work side by side (sink_publish_nodes). */
typedef struct pub_node {
    rconn *c;         /* NULL when there is none or it was lost */
    redis_addr addr;  /* where c is connected */
    int node;         /* node of the cluster map, or -1 */
    bool asking;      /* send ASKING before each call (an ASK redirection) */
    bool stalled;     /* c timed out: the node stayed silent */
    bool wait;        /* a WAIT follows the calls sent and not read yet */
    const event *const *evs;
    const bool *chained;
    pub_result *out;
    size_t *idx;      /* with a share: where evs[i] came from */
    int *ask;         /* with a share: evs[i]'s ASK target */
    size_t n, next;   /* evs[0..n); evs[next] is the first not sent yet */
    call *calls;      /* calls[0..ncalls) sent, their replies read up to read_from */
    size_t ncalls, read_from;
    const char **hw;  /* the high-water's call, sent ahead of the first call (one Redis), or NULL */
    bool ran;         /* a script call of this node's ran (its ACL lets the script run) */
} pub_node;

struct sink {
    redis_endpoint *ep;
    long wait_replicas;
    long wait_timeout_ms;
    char wait_n[24];
    char wait_timeout[24];
    char ttl[24];
    char epoch[64];
    char origin[48]; /* "system identifier.database oid", or "" */
    bool announce;
    rconn *c;             /* the connection to the primary (none with a cluster) */
    redis_addr addr;      /* where c is connected */
    cluster *cl;          /* --redis-cluster, else NULL */
    bool sharded;         /* SPUBLISH */
    bool refresh;         /* re-read the slot map before the next publish */
    bool said_map;
    double refreshed_at;  /* when the map was last read (monotonic s) */
    share s;              /* a cluster batch split by node, sized to the largest batch */
    int *part;            /* scratch of the split: each event's node, as s */
    redis_addr ask_to[ASK_TARGETS];
    int nask_to;
    int migrating_slot;   /* the slot last said to be migrating (sharded), or -1 */
    redis_addr last_addr; /* the primary of the previous connection ("" before the first) */
    sentinel_watch watch;
    bool legacy_script;   /* the server refused "#!lua" (Redis before 7): no flags */
    bool wait_refused_said;
    bool marks_failing;   /* the last mark written (or not) was refused */
    char sha[41];
    char hw_sha[41];
    bool hw_failing;      /* the last raise of the high-water was refused (said once) */
    char err[1024];
    /* The runs Redis refused in the current publish call, each with its call's error:
     * a batch goes to several nodes, and k->err is only the last thing that failed. */
    struct {
        const char *run;
        size_t len;
        char why[420];
    } run_err[RUN_ERRORS];
    int nrun_err;
    struct {
        long long lo, hi;
    } uncertain[UNCERTAIN_RANGES];
    int nuncertain, next_uncertain;
    sink_counters counters;
    bool refused; /* in the current publish call: an ACL denial, or no writes taken */
    bool refusing;
    char refusal[1024];
};

/* redis_sink_conn.c */
/* Drops a connection after an error; with a cluster, only that node's, and the map
 * is read again before the next publish. */
void sink_drop(sink *k, rconn **c);
/* Reads the cluster's slot map again (said when it changed). */
bool sink_cluster_connect(sink *k);
/* Reads the slot map again when there is none, or when it is known stale and was read
 * over 0.1 s ago: while a node is down every batch asks, ten times a second at most,
 * which is plenty to notice its replica taking over. False when it could not be read. */
bool sink_cluster_fresh(sink *k);
/* Readies a new connection to a cluster node (loads the scripts): cluster_new's hook. */
bool sink_cluster_conn_ready(rconn *c, const redis_addr *at, void *arg, char *err, size_t errlen);

/* redis_sink_pipe.c */
/* An error reply of a primary that takes no writes now, from anyone (too few replicas
 * for min-replicas-to-write, out of memory, a failed snapshot, a script running past
 * busy-reply-threshold). */
bool sink_error_no_writes(const char *reply);
/* An error reply that is about the connection, not the command: the script cache was
 * flushed, or the server is no longer a usable primary (a failover, still loading).
 * Connecting again finds the primary and loads the scripts. */
bool sink_error_reconnect(const char *reply);
/* Publishes each node's events on its connection p[i].c, the nodes side by side. */
bool sink_publish_nodes(sink *k, pub_node *p, int np);
/* Notes an ASK redirection of p's event i to to, retried there (redis_sink_cluster.c). */
void sink_note_ask(sink *k, pub_node *p, size_t i, const redis_addr *to);

/* redis_sink_cluster.c */
void sink_share_free(share *g);
bool sink_publish_cluster(sink *k, const event *const *evs, const bool *chained, size_t n, pub_result *out);

/* redis_sink_hw.c */
void sink_hw_refused(sink *k, const char *why);
void sink_hw_call(const sink *k, const event *const *evs, size_t n, char key[160], char id[24], const char *argv[6]);
bool sink_hw_reply(sink *k, const redisReply *r, bool goes_out);
void sink_raise_hw(sink *k, const event *const *evs, size_t n);

#endif
