/* Worker processes of the SSE gateway (--workers N): one libevent loop uses one core
 * and a process here may open only so many files, so the gateway runs N copies of
 * itself that share the listening port (SO_REUSEPORT: the kernel spreads new
 * connections). The parent only supervises: it starts the workers, restarts one that
 * dies, passes SIGTERM/SIGINT/SIGHUP on, and exits when all have stopped. Workers
 * share nothing but a small shared-memory array of slots, one per worker, where each
 * publishes its counters for the others (and the parent) to add up. */
#ifndef OUTBOXD_SSE_WORKERS_H
#define OUTBOXD_SSE_WORKERS_H

#include <stdbool.h>
#include <signal.h>
#include <stddef.h>

typedef struct workers_opts {
    int n;                    /* workers (>= 2) */
    int extra_slots;          /* slots after the workers' for the parent's own use */
    size_t slot_size;         /* bytes of shared memory per slot */
    long shutdown_timeout_ms; /* after SIGTERM, how long the workers get before SIGKILL */
    long tick_ms;             /* period of on_tick in the parent (0 = never) */
    /* Runs in the parent every tick_ms and once after the last worker stopped. */
    void (*on_tick)(const void *slots, int n, void *arg);
    /* Runs in the parent when worker i has exited for good or is about to be
     * replaced, before its slot is cleared (to keep what it counted). */
    void (*on_exit)(void *slots, int i, void *arg);
    /* Runs in a worker process: index 0..n-1, the slots (its own is index). It
     * calls workers_ready once it listens; its return value is its exit code. */
    int (*worker)(int index, void *slots, void *arg);
    void *arg;
} workers_opts;

/* Supervises o->n workers (on_tick sees all n + extra_slots slots) until they have all stopped after a
 * signal. Returns the exit code: 0 when every worker stopped cleanly, 1 when one failed to start (the others
 * are stopped then) or did not stop cleanly. */
int workers_run(const workers_opts *o);

/* Called by a worker when it is ready to take connections. */
void workers_ready(void);

/* SIGTERM, SIGINT and SIGHUP held (blocked; old: the mask before, or NULL) until
 * workers_release_signals: a gateway process holds them until its handlers are in
 * place, so that one arriving meanwhile waits for them instead of killing it. A
 * worker starts with them held. */
void workers_hold_signals(sigset_t *old);
void workers_release_signals(void);

/* The number of online cores (at least 1): the default worker count. */
int workers_default_count(void);

/* Raises the soft open-file limit to the hard limit; returns the new soft limit. */
long workers_raise_nofile(void);

#endif
