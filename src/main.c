/* outboxd entry point: parses the command and its settings, then hands over to the
 * module that does the work. Exit codes: 0 success, 1 runtime failure, 2 bad usage,
 * bad configuration or bad input. */
#include "buf.h"
#include "config.h"
#include "log.h"
#include "redis_endpoint.h"
#include "relay.h"
#include "sse.h"
#include "store_pg.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef OUTBOXD_VERSION
#define OUTBOXD_VERSION "0.1.0"
#endif

typedef struct command_def {
    const char *name;
    enum command cmd;
    const char *usage;
    const char *summary; /* one line for the command list */
    const char *about;
    int npos; /* positional arguments it takes */
    int (*run)(const config *cfg, char **pos);
} command_def;

static int fail_store(store *s, const char *what)
{
    log_error("%s: %s", what, store_errstr(s));
    store_free(s);
    return 1;
}

/* Connects for a one-shot command (application_name outboxd-WHAT). NULL, with the
 * error logged, when it cannot; the caller frees the store. */
static store *open_store(const config *cfg, const char *what)
{
    char app[64];
    snprintf(app, sizeof app, "outboxd-%s", what);
    store *s = store_new(cfg->database_url, app, cfg->pg_timeout_ms);
    if (!s) {
        log_error("%s: out of memory", what);
        return NULL;
    }
    if (!store_connect(s)) {
        fail_store(s, what);
        return NULL;
    }
    return s;
}

static int cmd_migrate(const config *cfg, char **pos)
{
    (void)pos;
    store *s = open_store(cfg, "migrate");
    if (!s)
        return 1;
    int from, to;
    if (!store_migrate(s, &from, &to))
        return fail_store(s, "migrate");
    if (from == to)
        printf("schema is up to date (version %d)\n", to);
    else
        printf("schema migrated from version %d to %d\n", from, to);
    store_free(s);
    return 0;
}

static int cmd_emit(const config *cfg, char **pos)
{
    const char *run_id = pos[0], *json = pos[1];
    if (!*run_id) {
        fprintf(stderr, "outboxd emit: RUN_ID must not be empty\n");
        return 2;
    }
    store *s = open_store(cfg, "emit");
    if (!s)
        return 1;
    long long id, seq;
    if (!store_emit(s, run_id, json, &id, &seq)) {
        const char *state = store_sqlstate(s);
        int code = 1;
        if (!strcmp(state, "22P02") || !strncmp(state, "22", 2)) {
            /* Data exceptions: invalid JSON, invalid UTF-8 in the run id. */
            fprintf(stderr, "outboxd emit: invalid input, nothing written: %s\n", store_errstr(s));
            code = 2;
        } else if (!strcmp(state, "42P01")) {
            fprintf(stderr, "outboxd emit: the outboxd schema is not installed: run 'outboxd migrate'\n");
        } else {
            fprintf(stderr, "outboxd emit: %s\n", store_errstr(s));
        }
        store_free(s);
        return code;
    }
    printf("{\"id\":%lld,\"seq\":%lld}\n", id, seq);
    store_free(s);
    return 0;
}

/* The Redis part of `outboxd status`: whether the primary takes a connection now,
 * where it is, and how it is reached; as text lines or JSON members. */
static void redis_status(const config *cfg, buf *out)
{
    char err[512], where[300] = "";
    redis_addr a;
    redis_endpoint *e = redis_endpoint_new(cfg, err, sizeof err);
    bool up = e && redis_endpoint_probe(e, &a, err, sizeof err);
    if (up)
        snprintf(where, sizeof where, "%s:%d", a.host, a.port);
    const char *how = e ? redis_endpoint_describe(e) : "";
    bool ok = cfg->json ? buf_printf(out, "\"redis\":{\"up\":%s,\"primary\":", up ? "true" : "false") &&
                              (up ? buf_json_string(out, where, strlen(where)) : buf_puts(out, "null")) &&
                              buf_puts(out, ",\"connection\":") && buf_json_string(out, how, strlen(how)) &&
                              buf_puts(out, ",\"error\":") &&
                              (up ? buf_puts(out, "null") : buf_json_string(out, err, strlen(err))) &&
                              buf_puts(out, "}")
                        : up ? buf_printf(out, "redis:                 up, primary %s (%s)\n", where, how)
                             : buf_printf(out, "redis:                 down: %s\n", err);
    if (!ok)
        buf_reset(out);
    redis_endpoint_free(e);
}

static int cmd_status(const config *cfg, char **pos)
{
    (void)pos;
    store *s = open_store(cfg, "status");
    if (!s)
        return 1;
    buf redis;
    buf_init(&redis, 0);
    redis_status(cfg, &redis);
    bool ok = store_print_status(s, cfg->json, redis.len ? redis.data : NULL);
    buf_free(&redis);
    if (!ok)
        return fail_store(s, "status");
    store_free(s);
    return 0;
}

static int cmd_retry(const config *cfg, char **pos)
{
    store *s = open_store(cfg, "retry");
    long long n;
    if (!s)
        return 1;
    if (!store_retry(s, pos[0], &n))
        return fail_store(s, "retry");
    printf("run %s: %lld event(s) with failed attempts reset; relays asked to retry now\n", pos[0], n);
    store_free(s);
    return 0;
}

static int cmd_skip(const config *cfg, char **pos)
{
    char *end;
    errno = 0;
    long long seq = strtoll(pos[1], &end, 10);
    if (errno || end == pos[1] || *end || seq < 1) {
        fprintf(stderr, "outboxd skip: SEQ must be a positive whole number, not '%s'\n", pos[1]);
        return 2;
    }
    const char *reason = cfg->reason ? cfg->reason : "no reason given";
    store *s = open_store(cfg, "skip");
    long long n;
    if (!s)
        return 1;
    if (!store_skip(s, pos[0], seq, reason, &n))
        return fail_store(s, "skip");
    store_free(s);
    if (n == 0) {
        fprintf(stderr, "outboxd skip: run %s has no unpublished event %lld that is its oldest; nothing skipped\n",
                pos[0], seq);
        return 1;
    }
    log_warn("skipped event seq %lld of run %s: marked published without publishing it (reason: %s)", seq,
             pos[0], reason);
    return 0;
}

static int cmd_prune(const config *cfg, char **pos)
{
    (void)pos;
    store *s = open_store(cfg, "prune");
    if (!s)
        return 1;
    long long total = 0, n;
    do {
        if (!store_prune(s, cfg->older_than_ms, 5000, &n))
            return fail_store(s, "prune");
        total += n;
    } while (n > 0);
    printf("deleted %lld published events older than %ld ms\n", total, cfg->older_than_ms);
    store_free(s);
    return 0;
}

static int cmd_relay(const config *cfg, char **pos)
{
    (void)pos;
    return relay_main(cfg);
}

static int cmd_sse(const config *cfg, char **pos)
{
    (void)pos;
    return sse_main(cfg);
}

static const command_def commands[] = {
    {"migrate", CMD_MIGRATE, "outboxd migrate [options]",
     "create or upgrade the schema (idempotent)",
     "Creates or upgrades the outboxd schema (run_outbox and its triggers). Idempotent.", 0,
     cmd_migrate},
    {"relay", CMD_RELAY, "outboxd relay [options]",
     "publish run_outbox to Redis run:{run_id}, in order, once",
     "Publishes every committed run_outbox event to Redis channel run:{run_id}, in order per run,\n"
     "once, then marks it published. Several relays may run: one leads, the others stand by.\n"
     "SIGTERM/SIGINT finish the batch in flight and exit 0; a second signal exits at once.",
     0, cmd_relay},
    {"sse", CMD_SSE, "outboxd sse [options]",
     "stream runs to browsers as Server-Sent Events (and a viewer page)",
     "Serves each run's events as Server-Sent Events at GET /runs/{run_id}/events (resume with\n"
     "the Last-Event-ID header or ?last_event_id=N), a viewer page at GET /runs/{run_id}, and\n"
     "GET /healthz. Live from Redis, replayed from PostgreSQL: every event once, in order.",
     0, cmd_sse},
    {"emit", CMD_EMIT, "outboxd emit [options] RUN_ID JSON",
     "write one event (for scripts and tests)",
     "Writes one event to run_outbox; the database assigns its seq. Prints {\"id\":N,\"seq\":N}.", 2,
     cmd_emit},
    {"retry", CMD_RETRY, "outboxd retry [options] RUN_ID",
     "retry a held-back run now",
     "Resets the failed attempts of a run's unpublished events and makes running relays retry\n"
     "held-back runs at once (after fixing what made Redis refuse them).",
     1, cmd_retry},
    {"skip", CMD_SKIP, "outboxd skip [options] RUN_ID SEQ",
     "give up on a run's oldest unpublished event",
     "Gives up on one event: marks the run's oldest unpublished event (which must be SEQ)\n"
     "published without publishing it, so that the events after it can flow. Logged, and\n"
     "recorded in its last_error. SSE replays from the table still include it.",
     2, cmd_skip},
    {"prune", CMD_PRUNE, "outboxd prune --older-than DURATION [options]",
     "delete old published events now",
     "Deletes published events older than DURATION now, in batches of 5,000 (the relay's\n"
     "--retention does the same continuously). Unpublished events are never deleted.",
     0, cmd_prune},
    {"status", CMD_STATUS, "outboxd status [options]",
     "backlog, rate, leader, blocked runs, table size, Redis",
     "Shows backlog, oldest unpublished age, publish rate, leader, runs with failed attempts,\n"
     "table size, and whether the Redis primary takes a connection (and where it is).",
     0, cmd_status},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void usage(FILE *f)
{
    fprintf(f, "usage: outboxd COMMAND [options]\n\n"
               "Relays a transactional outbox (PostgreSQL table run_outbox) to Redis Pub/Sub.\n\n"
               "commands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-9s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'outboxd COMMAND --help' lists a command's options; 'outboxd settings' prints all of\n"
               "them as Markdown; 'outboxd --version' prints the version.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "settings")) {
        config_print_markdown();
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("outboxd %s\n", OUTBOXD_VERSION);
        return 0;
    }
    const command_def *c = NULL;
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[1], commands[i].name))
            c = &commands[i];
    if (!c) {
        fprintf(stderr, "outboxd: unknown command '%s' (see outboxd --help)\n", argv[1]);
        return 2;
    }
    config cfg;
    char *pos[4] = {0};
    int npos;
    bool help;
    char err[512];
    if (!config_load(&cfg, c->cmd, argc - 2, argv + 2, pos, c->npos, &npos, &help, err, sizeof err)) {
        fprintf(stderr, "outboxd %s: %s\n", c->name, err);
        config_free(&cfg);
        return 2;
    }
    if (help) {
        config_print_help(c->cmd, c->usage, c->about);
        config_free(&cfg);
        return 0;
    }
    if (npos != c->npos) {
        fprintf(stderr, "outboxd %s: expected %d argument%s (usage: %s)\n", c->name, c->npos,
                c->npos == 1 ? "" : "s", c->usage);
        config_free(&cfg);
        return 2;
    }
    char component[32];
    snprintf(component, sizeof component, "outboxd-%s", c->name);
    log_setup(cfg.log_level, cfg.log_format, component);
    int rc = c->run(&cfg, pos);
    config_free(&cfg);
    return rc;
}
