/* Levelled logging to stderr, as text or one JSON object per line. The level is
 * checked before the message is built, so a disabled log_debug costs a compare. */
#ifndef OUTBOXD_LOG_H
#define OUTBOXD_LOG_H

#include <stdbool.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };
enum log_format { LOG_TEXT, LOG_JSON };

extern int log_level_current;

void log_setup(int level, int format, const char *component);
/* Names the process in later lines (component must stay valid). */
void log_set_component(const char *component);
void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_at(lvl, ...)                                                                 \
    do {                                                                                 \
        if ((lvl) <= log_level_current)                                                  \
            log_write((lvl), __VA_ARGS__);                                               \
    } while (0)
#define log_error(...) log_at(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_at(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_at(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_DEBUG, __VA_ARGS__)

#endif
