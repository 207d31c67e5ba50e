/* Fakes of the relay's neighbours (store_pg, redis_sink) for unit tests. The fake
 * sink applies the publish script's rules (mark = last published id per run, chained
 * events need their predecessor) and can be told to fail; it delivers in the order it
 * is given, which is the order of the calls the real sink makes. */
#ifndef FAKES_H
#define FAKES_H

#include "redis_sink.h"
#include "store_pg.h"

#define FAKE_MAX 256

typedef struct fake_world {
    /* sink */
    long long delivered[FAKE_MAX]; /* ids, in delivery order */
    int ndelivered;
    long long fail_id;             /* answer PUB_FAILED for this id ... */
    int fail_times;                /* ... this many times (-1 = always) */
    long long fail_id2;            /* and always for this one (0: none) */
    char run_err[2][64];           /* sink_run_errstr of the runs refused: "refused <run>" */
    int refuse_calls;              /* refuse every event (PUB_REFUSED) in this many publishes (-1 = always) */
    int cut_after;                 /* drop the connection after this many commands (-1 = never) */
    bool cut_loses_reply;          /* the command at the cut runs, but its reply is lost */
    int connects;
    int publishes; /* sink_publish calls */
    bool refuse_connect;
    const char *noroute_run;       /* answer PUB_NOROUTE for this run's events (its shard is down) */
    int noroute_offered;           /* ... and count how often they were offered */
    /* store */
    long long failed_ids[FAKE_MAX];
    char failed_errors[FAKE_MAX][64]; /* the error recorded with each */
    int nfailed;
    int failed_attempts;
} fake_world;

extern fake_world fw;
void fake_reset(void);

#endif
