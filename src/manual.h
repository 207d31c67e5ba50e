/* Generated manuals: the outboxd(1) man page and bash completion, printed from the
 * settings table (config_doc_at) and the command table main.c passes in, so that a
 * new setting or command appears in them without further work. */
#ifndef OUTBOXD_MANUAL_H
#define OUTBOXD_MANUAL_H

#include <stdbool.h>
#include <stddef.h>

typedef struct manual_command {
    const char *name;
    unsigned cmd; /* enum command bit */
    const char *usage;
    const char *summary;
    const char *about;
} manual_command;

/* The formats `outboxd settings --format` takes, NULL-terminated. */
extern const char *const manual_formats[];

/* Prints the manual named format ("markdown", "man", "bash-completion") to stdout.
 * Returns false, printing nothing, for an unknown format. */
bool manual_print(const char *format, const manual_command *cmds, size_t ncmds)
    __attribute__((warn_unused_result));

#endif
