/* The gateway's supervisor: a plain poll loop (no libevent in the parent), a
 * self-pipe for signals, waitpid for workers. */
#include "sse_workers.h"

#include "admin_http.h"
#include "clock.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define RESTART_HEALTHY_S 10.0

typedef struct worker {
    pid_t pid;
    bool ready;
    double started;
    long backoff_ms;
    double restart_at; /* > 0: to be started again at this time */
} worker;

static int sig_pipe[2] = {-1, -1};
static int ready_fd = -1; /* in a worker: the write end of the readiness pipe */

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sig_pipe[1], &b, 1) < 0) {
    }
    errno = saved;
}

/* The stop signals (and SIGHUP): held from a worker's fork, or a single gateway's
 * start, until its own handlers are in place. One that arrives in between (the
 * supervisor passes SIGTERM on to a worker still starting) then waits for them
 * instead of killing the process, which the supervisor would count as an unclean
 * stop. */
static void stop_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
}

void workers_hold_signals(sigset_t *old)
{
    sigset_t set;
    stop_signals(&set);
    sigprocmask(SIG_BLOCK, &set, old);
}

void workers_release_signals(void)
{
    sigset_t set;
    stop_signals(&set);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
}

void workers_ready(void)
{
    if (ready_fd < 0)
        return;
    unsigned char b = 1;
    if (write(ready_fd, &b, 1) < 0) {
    }
    close(ready_fd);
    ready_fd = -1;
}

int workers_default_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 1024 ? 1024 : (int)n;
}

long workers_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && getrlimit(RLIMIT_NOFILE, &rl) != 0)
            return -1;
    }
    return rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
}

static void set_handlers(void (*h)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = h;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
}

/* Forks worker i. In the child this never returns. */
static bool spawn(const workers_opts *o, void *slots, worker *w, int i, int ready_w)
{
    pid_t parent = getpid();
    /* Held across the fork, so that the child never runs the parent's handler (which
     * would write to the parent's pipe); a signal for the parent meanwhile reaches its
     * handler as soon as the mask is restored. */
    sigset_t old;
    workers_hold_signals(&old);
    pid_t pid = fork();
    int fork_errno = errno;
    if (pid != 0)
        sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        log_error("sse: cannot start worker %d: %s", i, strerror(fork_errno));
        return false;
    }
    if (pid == 0) {
        /* The stop signals stay held until the worker has its handlers. */
        set_handlers(SIG_DFL);
        /* A supervisor that dies (even by SIGKILL) takes its workers along, so that
         * their browsers reconnect elsewhere instead of staying on a headless port. */
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != parent)
            _exit(1);
        close(sig_pipe[0]);
        close(sig_pipe[1]);
        ready_fd = ready_w;
        /* Readiness for systemd is the parent's to tell. */
        unsetenv("NOTIFY_SOCKET");
        static char component[48];
        snprintf(component, sizeof component, "outboxd-sse-%d", i);
        log_set_component(component);
        _exit(o->worker(i, slots, o->arg));
    }
    w->pid = pid;
    w->ready = false;
    w->started = clock_mono_s();
    w->restart_at = 0;
    return true;
}

static void signal_all(worker *ws, int n, int sig)
{
    for (int i = 0; i < n; i++)
        if (ws[i].pid > 0)
            kill(ws[i].pid, sig);
}

int workers_run(const workers_opts *o)
{
    int rc = 1;
    int ready_pipe[2] = {-1, -1};
    worker *ws = calloc((size_t)o->n, sizeof *ws);
    size_t nslots = (size_t)(o->n + o->extra_slots);
    void *slots =
        mmap(NULL, o->slot_size * nslots, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (!ws || slots == MAP_FAILED) {
        log_error("sse: cannot set up %d workers: %s", o->n, strerror(errno));
        slots = NULL;
        goto out;
    }
    if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0 || pipe2(ready_pipe, O_CLOEXEC) != 0) {
        log_error("sse: pipe: %s", strerror(errno));
        goto out;
    }
    set_handlers(on_signal);
    for (int i = 0; i < o->n; i++)
        if (!spawn(o, slots, &ws[i], i, ready_pipe[1]))
            goto stop_all;
    close(ready_pipe[1]);
    ready_pipe[1] = -1;

    bool stopping = false, all_ready = false, clean = true;
    int nready = 0, alive = o->n;
    double stop_deadline = 0, next_tick = o->tick_ms > 0 ? clock_mono_s() + o->tick_ms / 1000.0 : 0;
    while (alive > 0) {
        double now = clock_mono_s();
        double wake = now + 1.0;
        if (next_tick > 0 && next_tick < wake)
            wake = next_tick;
        for (int i = 0; i < o->n; i++)
            if (ws[i].restart_at > 0 && ws[i].restart_at < wake)
                wake = ws[i].restart_at;
        if (stopping && stop_deadline < wake)
            wake = stop_deadline;
        struct pollfd p[2] = {{.fd = sig_pipe[0], .events = POLLIN}, {.fd = ready_pipe[0], .events = POLLIN}};
        int timeout = wake > now ? (int)((wake - now) * 1000) + 1 : 0;
        if (poll(p, ready_pipe[0] >= 0 ? 2 : 1, timeout) < 0 && errno != EINTR) {
            log_error("sse: poll: %s", strerror(errno));
            break;
        }
        if (ready_pipe[0] >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
            unsigned char b;
            ssize_t got = read(ready_pipe[0], &b, 1);
            if (got == 1 && ++nready == o->n && !all_ready) {
                all_ready = true;
                log_info("sse: %d workers listening", o->n);
                admin_sd_notify("READY=1");
            }
            /* Every worker has closed its end: poll would report that EOF at once, for
             * ever, and the loop would spin. */
            if (got <= 0) {
                close(ready_pipe[0]);
                ready_pipe[0] = -1;
            }
        }
        unsigned char sigs[16];
        ssize_t ns = read(sig_pipe[0], sigs, sizeof sigs);
        for (ssize_t k = 0; k < ns; k++) {
            int sig = sigs[k];
            if (sig == SIGHUP) {
                signal_all(ws, o->n, SIGHUP);
            } else if (sig == SIGTERM || sig == SIGINT) {
                if (stopping) {
                    log_warn("sse: second signal: stopping the workers at once");
                    signal_all(ws, o->n, SIGKILL);
                    clean = false;
                    continue;
                }
                log_info("signal %d: stopping %d workers", sig, alive);
                admin_sd_notify("STOPPING=1");
                stopping = true;
                stop_deadline = clock_mono_s() + (o->shutdown_timeout_ms + 1000) / 1000.0;
                signal_all(ws, o->n, SIGTERM);
                for (int i = 0; i < o->n; i++)
                    ws[i].restart_at = 0;
            }
        }
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            int i = 0;
            while (i < o->n && ws[i].pid != pid)
                i++;
            if (i == o->n)
                continue;
            ws[i].pid = 0;
            if (o->on_exit)
                o->on_exit(slots, i, o->arg);
            memset((char *)slots + o->slot_size * (size_t)i, 0, o->slot_size);
            alive--;
            bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
            if (stopping) {
                clean = clean && ok;
                continue;
            }
            char how[64];
            if (WIFSIGNALED(status))
                snprintf(how, sizeof how, "killed by signal %d", WTERMSIG(status));
            else
                snprintf(how, sizeof how, "exited with code %d", WEXITSTATUS(status));
            if (!all_ready) {
                /* A worker that cannot start (the port is taken, a bad setting) will
                 * not do better the next time: give up. */
                log_error("sse: worker %d %s before it was ready; stopping", i, how);
                goto stop_all;
            }
            double lived = clock_mono_s() - ws[i].started;
            if (lived >= RESTART_HEALTHY_S)
                ws[i].backoff_ms = 0;
            long delay = clock_backoff(&ws[i].backoff_ms);
            log_warn("sse: worker %d (pid %d) %s after %.1f s; restarting it in %ld ms", i, (int)pid, how,
                     lived, delay);
            ws[i].restart_at = clock_mono_s() + delay / 1000.0;
        }
        now = clock_mono_s();
        for (int i = 0; i < o->n && !stopping; i++)
            if (ws[i].restart_at > 0 && ws[i].restart_at <= now) {
                /* The restarted worker tells no one it is ready: the service already is. */
                if (spawn(o, slots, &ws[i], i, -1))
                    alive++;
                else
                    ws[i].restart_at = now + 1;
            }
        if (stopping && now >= stop_deadline && alive > 0) {
            log_warn("sse: workers still running %ld ms after SIGTERM; killing them", o->shutdown_timeout_ms);
            signal_all(ws, o->n, SIGKILL);
            clean = false;
            stop_deadline = now + 5;
        }
        if (next_tick > 0 && now >= next_tick) {
            o->on_tick(slots, (int)nslots, o->arg);
            next_tick = now + o->tick_ms / 1000.0;
        }
    }
    if (o->on_tick)
        o->on_tick(slots, (int)nslots, o->arg);
    rc = clean ? 0 : 1;
    goto out;

stop_all:
    signal_all(ws, o->n, SIGTERM);
    for (int i = 0; i < o->n; i++)
        if (ws[i].pid > 0)
            waitpid(ws[i].pid, NULL, 0);
    rc = 1;
out:
    for (int k = 0; k < 2; k++) {
        if (sig_pipe[k] >= 0)
            close(sig_pipe[k]);
        if (ready_pipe[k] >= 0)
            close(ready_pipe[k]);
        sig_pipe[k] = -1;
    }
    if (slots)
        munmap(slots, o->slot_size * nslots);
    free(ws);
    return rc;
}
