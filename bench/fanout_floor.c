/* The floor under the gateway's fan-out, for bench/scale.sh: a server that does
 * nothing but what the kernel must do for a hot run. It accepts --streams event-stream
 * connections (any request gets a chunked 200), then makes --rate events a second
 * for --seconds, each a frame of the size obx_load's events have
 *   id: N / data: {"k": N, "t": <now in µs>, "pad": ""}
 * and every --coalesce-ms (0: at each event) writes what came since to every stream
 * as one chunk, with one send per stream. No Redis, no PostgreSQL, no HTTP library,
 * no per-stream state but the socket: its CPU per write is what the loopback TCP
 * path costs here, which no gateway can go below. --workers N forks N such servers
 * on one port (SO_REUSEPORT), each making the same events.
 *   fanout_floor --port P --streams N [--workers W] [--rate R] [--seconds S]
 *                [--coalesce-ms MS] [--go-file F]
 * With --go-file the events start once that file exists (after the clients are in).
 * Prints "writes=N frames=N short_writes=N cpu_us=N" per worker on stderr (CPU from
 * the first event to the end). */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long long cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_until(long long t)
{
    long long d = t - now_us();
    if (d > 0) {
        struct timespec ts = {d / 1000000, (d % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
}

static int serve(int lfd, int nstreams, double rate, double seconds, long coalesce_ms, const char *go)
{
    int *fds = calloc((size_t)nstreams, sizeof *fds);
    int n = 0;
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Transfer-Encoding: chunked\r\n\r\n";
    char req[4096];
    while (n < nstreams) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        /* The request fits in one read on loopback; its content does not matter. */
        if (read(fd, req, sizeof req) <= 0 || write(fd, head, sizeof head - 1) != (ssize_t)(sizeof head - 1)) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[n++] = fd;
    }
    while (go && access(go, F_OK) != 0)
        usleep(10000);
    long long start = now_us(), cpu0 = cpu_us(), next_flush = start, writes = 0, frames = 0, short_writes = 0;
    long events = (long)(rate * seconds);
    char batch[1 << 16];
    size_t blen = 0;
    int bframes = 0;
    for (long k = 0; k <= events; k++) {
        long long due = start + (long long)((double)k * 1e6 / rate);
        bool last = k == events;
        if (!last) {
            sleep_until(due);
            if (blen + 128 < sizeof batch) {
                blen += (size_t)snprintf(batch + blen, sizeof batch - blen,
                                         "id: %ld\ndata: {\"k\": %ld, \"t\": %lld, \"pad\": \"\"}\n\n", k + 1, k,
                                         now_us());
                bframes++;
            }
        }
        if (now_us() < next_flush && !last)
            continue;
        if (blen > 0) {
            char chunk[32];
            int hl = snprintf(chunk, sizeof chunk, "%zx\r\n", blen);
            struct iovec v[3] = {{chunk, (size_t)hl}, {batch, blen}, {(char *)"\r\n", 2}};
            struct msghdr m = {.msg_iov = v, .msg_iovlen = 3};
            for (int i = 0; i < n; i++) {
                ssize_t w = sendmsg(fds[i], &m, MSG_NOSIGNAL | MSG_DONTWAIT);
                short_writes += w != (ssize_t)(hl + blen + 2);
            }
            writes += n;
            frames += (long long)bframes * n;
        }
        blen = 0;
        bframes = 0;
        next_flush = now_us() + coalesce_ms * 1000;
    }
    for (int i = 0; i < n; i++) {
        if (write(fds[i], "0\r\n\r\n", 5) != 5) {
        }
        close(fds[i]);
    }
    fprintf(stderr, "writes=%lld frames=%lld short_writes=%lld cpu_us=%lld\n", writes, frames, short_writes,
            cpu_us() - cpu0);
    free(fds);
    return 0;
}

int main(int argc, char **argv)
{
    int port = 0, streams = 0, workers = 1;
    double rate = 100, seconds = 10;
    long coalesce_ms = 0;
    const char *go = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--port")) port = atoi(v);
        else if (!strcmp(k, "--streams")) streams = atoi(v);
        else if (!strcmp(k, "--workers")) workers = atoi(v);
        else if (!strcmp(k, "--rate")) rate = atof(v);
        else if (!strcmp(k, "--seconds")) seconds = atof(v);
        else if (!strcmp(k, "--coalesce-ms")) coalesce_ms = atol(v);
        else if (!strcmp(k, "--go-file")) go = v;
        else { fprintf(stderr, "fanout_floor: unknown option %s\n", k); return 2; }
    }
    if (port <= 0 || streams <= 0 || workers <= 0 || rate <= 0) {
        fprintf(stderr, "usage: fanout_floor --port P --streams N [--workers W] [--rate R] [--seconds S] "
                        "[--coalesce-ms MS] [--go-file F]\n");
        return 2;
    }
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 4096) != 0) {
        perror("fanout_floor: listen");
        return 1;
    }
    /* One listening socket shared by the forked workers: each accepts its share. */
    int per = streams / workers;
    for (int w = 0; w < workers; w++) {
        pid_t p = fork();
        if (p == 0)
            return serve(lfd, w == workers - 1 ? streams - per * (workers - 1) : per, rate, seconds, coalesce_ms,
                         go);
    }
    int status, rc = 0;
    while (wait(&status) > 0)
        rc |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    return rc;
}
