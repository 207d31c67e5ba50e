/* Counts the notifications on a PostgreSQL channel, for tests and benchmarks: how
 * often writers wake the relay.
 *   obx_listen [--channel outboxd] [--seconds S] [--ready-file F]
 * LISTENs on DATABASE_URL, counts what arrives for S seconds (or until SIGTERM) and
 * prints "notifications=N". A transaction's notifications of one channel and payload
 * arrive folded into one, so N counts notifying commits. */
#include "obx_common.h"

#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop;

static void on_term(int sig)
{
    (void)sig;
    stop = 1;
}

int main(int argc, char **argv)
{
    const char *channel = "outboxd", *ready = NULL, *url = getenv("DATABASE_URL");
    double seconds = 3600;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--channel")) channel = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--ready-file")) ready = argv[i + 1];
        else {
            fprintf(stderr, "obx_listen: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    PGconn *c = PQconnectdb(url ? url : "");
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "obx_listen: connect: %s", PQerrorMessage(c));
        return 1;
    }
    char *ident = PQescapeIdentifier(c, channel, strlen(channel));
    char sql[300];
    snprintf(sql, sizeof sql, "LISTEN %s", ident ? ident : "outboxd");
    PQfreemem(ident);
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "obx_listen: %s", PQerrorMessage(c));
        return 1;
    }
    PQclear(r);
    if (ready) {
        FILE *f = fopen(ready, "w");
        if (f)
            fclose(f);
    }
    long n = 0;
    long long end = obx_now_us() + (long long)(seconds * 1e6);
    while (!stop && obx_now_us() < end) {
        struct pollfd p = {.fd = PQsocket(c), .events = POLLIN};
        if (poll(&p, 1, 100) > 0 && !PQconsumeInput(c)) {
            fprintf(stderr, "obx_listen: %s", PQerrorMessage(c));
            break;
        }
        PGnotify *note;
        while ((note = PQnotifies(c)) != NULL) {
            n++;
            PQfreemem(note);
        }
    }
    printf("notifications=%ld\n", n);
    PQfinish(c);
    return 0;
}
