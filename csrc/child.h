/* A child process spoken to in lines: a command run by /bin/sh whose standard input and output
 * are one end of a socket pair, a request written as a line and its answer read as a line, each
 * with a deadline. For a relay's write-policy plugin in strfry's protocol (JSON lines), which
 * strfry runs the same way. No Lua here. Blocking: a caller in an event loop runs it elsewhere
 * (nginx: a thread of its pool). */
#ifndef L2_CHILD_H
#define L2_CHILD_H

#include <stddef.h>

#include "status.h"

typedef struct l2_child l2_child;

/* The longest answer line; a longer one is an error (strfry's reader takes 8192 bytes). */
#define L2_CHILD_MAX_LINE (64 * 1024)

/* Starts `/bin/sh -c cmd` with its stdin and stdout on a socket pair (stderr is the caller's). A cmd
 * with a slash and no space is a file's path: it must exist, and its modification time is kept
 * (l2_child_stale; strfry's rule, less a bare name, which is a command found on PATH). 0, or
 * L2_FAILED with err. */
int l2_child_start(l2_child **out, const char *cmd, char *err);

/* Writes line (without its newline: one is added) and reads the next line the child writes, both
 * within timeout_ms in all. *reply (without its newline) is valid until the next call. 0, or
 * L2_FAILED with err: a timeout, the child's end (its output closed), a line too long. After a
 * failure the child is of no further use (what it answers next cannot be matched): stop it. */
int l2_child_ask(l2_child *c, const char *line, size_t len, int timeout_ms, const char **reply, size_t *rlen,
                 char *err);

/* Reads the child's next line (one it wrote after the last answer: an answer's unreadable lines
 * are skipped by the caller) within timeout_ms; as l2_child_ask. */
int l2_child_read(l2_child *c, int timeout_ms, const char **reply, size_t *rlen, char *err);

/* 1 when the command names a file whose modification time is no longer the one it had when the
 * child started (it was edited: a new child should read it), or which is gone; else 0. */
int l2_child_stale(const l2_child *c);

/* The child's process id. */
int l2_child_pid(const l2_child *c);

/* Closes its input and reaps it (SIGTERM if it has not ended a second later, then SIGKILL), then
 * frees c (NULL is allowed). */
void l2_child_stop(l2_child *c);

#endif
