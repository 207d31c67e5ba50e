/* Log sink: one line per message on stderr, written with a single write(2) so lines
 * from concurrent threads never interleave. */
#include "log.h"

#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int log_level_current = LOG_INFO;
static int log_format_current = LOG_TEXT;
static const char *log_component = "outboxd";
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_setup(int level, int format, const char *component)
{
    log_level_current = level;
    log_format_current = format;
    if (component)
        log_component = component;
}

void log_set_component(const char *component)
{
    log_component = component;
}

void log_write(int level, const char *fmt, ...)
{
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);

    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

    buf line;
    buf_init(&line, 16384); /* a 2 KB message escapes to at most 12 KB */
    bool ok;
    if (log_format_current == LOG_JSON) {
        ok = buf_printf(&line, "{\"ts\":\"%s\",\"level\":\"%s\",\"component\":\"%s\",\"msg\":", ts,
                        level_names[level], log_component) &&
             buf_json_string(&line, msg, strlen(msg)) && buf_puts(&line, "}\n");
    } else {
        ok = buf_printf(&line, "%s %s %s: %s\n", ts, level_names[level], log_component, msg);
    }
    if (ok && write(STDERR_FILENO, line.data, line.len) < 0) {
        /* Nowhere left to report a failing stderr. */
    }
    buf_free(&line);
}
