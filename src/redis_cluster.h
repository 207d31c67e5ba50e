/* Redis Cluster routing: the slot of a key or channel (CRC16 of its hash tag), the
 * slot map read from CLUSTER SHARDS (or CLUSTER SLOTS on servers without it), the
 * redirections a node answers with (MOVED, ASK), and, for the relay, one blocking
 * connection per primary made through the connection layer (redis_conn.c: TLS, AUTH,
 * ROLE = master). The parsers take replies built anywhere, so unit tests drive them
 * with replies written in the test. */
#ifndef OUTBOXD_REDIS_CLUSTER_H
#define OUTBOXD_REDIS_CLUSTER_H

#include "buf.h"
#include "config.h"
#include "redis_conn.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLUSTER_SLOTS 16384
/* More primaries than Redis's own advice (1,000 nodes) is not a reply to trust. */
#define CLUSTER_MAX_NODES 1000
#define CLUSTER_NO_NODE 0xFFFF

/* The slot of a key or a channel: CRC16 (XMODEM) of the text between the first '{'
 * and the first '}' after it when that is not empty, else of the whole name. */
int cluster_key_slot(const char *key, size_t len);

/* Appends the de-duplication mark key of a run in cluster mode: in the slot of the
 * run's channel run:<id>, so that the publish script touches only keys of the node
 * that owns the channel. outboxd:<epoch>:mark:{run:<id>} for a run id without braces;
 * a run id with braces gets a hash tag of digits chosen for the channel's slot:
 * outboxd:<epoch>:mark:{<digits>}run:<id>.
 * False when out of memory. */
bool cluster_mark_key(buf *out, const char *epoch, const char *run_id, size_t len) WUR;

/* Which primary serves each slot. Nodes are primaries only, without repeats. */
typedef struct cluster_map {
    int nnodes;
    redis_addr node[CLUSTER_MAX_NODES];
    uint16_t owner[CLUSTER_SLOTS]; /* index into node, or CLUSTER_NO_NODE */
} cluster_map;

void cluster_map_clear(cluster_map *m);
/* The primary that serves slot, or NULL when none does (a shard down or failing). */
const redis_addr *cluster_map_node(const cluster_map *m, int slot);

/* How many slots have a primary in m. */
int cluster_map_served(const cluster_map *m);

/* The reply of CLUSTER SHARDS (Redis 7) -> m. asked is the node that answered (for
 * an endpoint it leaves empty); tls picks each node's tls-port. A shard whose primary
 * is not "online" (failed, loading: a node shutting down or failing over) leaves its
 * slots without a node. False with the reason in err on a reply that is not a shard
 * list (m is then cleared). */
bool cluster_parse_shards(const redisReply *r, const redis_addr *asked, bool tls, cluster_map *m, char *err,
                          size_t errlen) WUR;
/* The same from CLUSTER SLOTS (before Redis 7). */
bool cluster_parse_slots(const redisReply *r, const redis_addr *asked, cluster_map *m, char *err,
                         size_t errlen) WUR;

/* An error reply that redirects: any reply starting "MOVED " or "ASK " ("MOVED <slot>
 * <host>:<port>"). from is the node that answered (NULL if unknown): an empty host
 * means it. *slot is -1 when the slot cannot be read, and to->port 0 when the node
 * cannot (then the redirection is not to be followed; the map is stale all the same). */
enum cluster_redirect { REDIRECT_NONE, REDIRECT_MOVED, REDIRECT_ASK };
enum cluster_redirect cluster_parse_redirect(const char *err, const redis_addr *from, int *slot, redis_addr *to);
/* Whether an error reply says to try again later: TRYAGAIN or CLUSTERDOWN. */
bool cluster_error_is_retry(const char *err);

/* ---- the relay's connections: one per primary ------------------------------------- */

typedef struct cluster cluster;

/* Called on every new connection before it is used (e.g. to load a script). False
 * drops the connection, with the reason in err. */
typedef bool (*cluster_conn_init)(rconn *c, const redis_addr *at, void *arg, char *err, size_t errlen);

/* Seeds (copied) and the URL's user, password and TLS (tls not owned; NULL for
 * plaintext). Connects nothing yet. NULL when out of memory. */
cluster *cluster_new(const redis_addr *seeds, int nseeds, const redis_url *url, redis_tls *tls, long timeout_ms,
                     cluster_conn_init init, void *arg);
void cluster_free(cluster *cl);
/* Reads the slot map from the first node that answers (the primaries already known,
 * then the seeds). False with every node's answer summarized in err. */
bool cluster_refresh(cluster *cl, char *err, size_t errlen) WUR;
bool cluster_has_map(const cluster *cl);
const cluster_map *cluster_get_map(const cluster *cl);
/* Forgets the map and closes every connection. */
void cluster_reset(cluster *cl);

/* The connection to node i of the map, connecting (and running init) if needed; a
 * node that failed (cluster_suspect, a failed connect) waits out its backoff. The caller owns the
 * connection until it hands it back with cluster_put (or frees it when broken). NULL
 * with the reason in err. */
rconn *cluster_take(cluster *cl, int node, char *err, size_t errlen);
void cluster_put(cluster *cl, int node, rconn *c);
/* Node i lost its connection (no answer in time): it is suspect for a backoff from
 * now (1 s, doubling to 4 s while it keeps failing), during which cluster_take
 * refuses it at once and cluster_refresh does not ask it. */
void cluster_suspect(cluster *cl, int node);
/* Whether node i's last connection attempt or command failed and none succeeded since
 * (it was suspect, or is). */
bool cluster_failed_lately(const cluster *cl, int node);
/* Whether node i has a connection to lend (cluster_take returns it without connecting). */
bool cluster_has_conn(const cluster *cl, int node);
/* A connection to addr (an ASK target, maybe not in the map), owned by the caller. */
rconn *cluster_connect_at(cluster *cl, const redis_addr *addr, char *err, size_t errlen);

#endif
