#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "event.h"

extern char **environ;

struct l2_child {
    pid_t pid;
    int fd;          /* our end of the socket pair: requests out, answers in */
    char *path;      /* the command when it is a file's path (no space): its mtime is watched */
    struct timespec mtime;
    char *buf;       /* what was read: the answer line, then what followed it */
    size_t len, cap; /* bytes in buf; its size */
    size_t taken;    /* bytes of buf the last answer took (line and newline): dropped on the next ask */
};

static int file_mtime(const char *path, struct timespec *out)
{
    struct stat st;
    if (stat(path, &st)) return -1;
    *out = st.st_mtim;
    return 0;
}

int l2_child_start(l2_child **out, const char *cmd, char *err)
{
    *out = NULL;
    l2_child *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, L2_ERRLEN, "error: out of memory");
        return L2_FAILED;
    }
    c->pid = -1;
    c->fd = -1;
    if (!strchr(cmd, ' ') && strchr(cmd, '/')) {
        if (!(c->path = strdup(cmd)) || file_mtime(cmd, &c->mtime)) {
            snprintf(err, L2_ERRLEN, "error: cannot run '%.100s': %s", cmd, c->path ? strerror(errno) : "out of memory");
            l2_child_stop(c);
            return L2_FAILED;
        }
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
        snprintf(err, L2_ERRLEN, "error: socketpair: %s", strerror(errno));
        l2_child_stop(c);
        return L2_FAILED;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = posix_spawn_file_actions_init(&fa);
    if (!rc && (rc = posix_spawnattr_init(&attr))) posix_spawn_file_actions_destroy(&fa);
    if (!rc) {
        /* a process group of its own: stopping it stops what the shell started too */
        if (!(rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP))) rc = posix_spawnattr_setpgroup(&attr, 0);
        /* dup2 clears close-on-exec on the copies: the child keeps only its stdin and stdout */
        if (!rc && !(rc = posix_spawn_file_actions_adddup2(&fa, sv[1], 0)))
            rc = posix_spawn_file_actions_adddup2(&fa, sv[1], 1);
        char *const argv[] = {"sh", "-c", (char *)cmd, NULL};
        if (!rc) rc = posix_spawn(&c->pid, "/bin/sh", &fa, &attr, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
    close(sv[1]);
    c->fd = sv[0];
    if (rc) {
        c->pid = -1;
        snprintf(err, L2_ERRLEN, "error: cannot start '%.100s': %s", cmd, strerror(rc));
        l2_child_stop(c);
        return L2_FAILED;
    }
    *out = c;
    return 0;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is ready for `events` or the deadline passes: 0, or L2_FAILED with err. */
static int wait_ready(int fd, short events, long long deadline, const char *doing, char *err)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0) {
            snprintf(err, L2_ERRLEN, "error: the plugin did not %s in time", doing);
            return L2_FAILED;
        }
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, (int)left);
        if (n > 0) return 0;
        if (n < 0 && errno != EINTR) {
            snprintf(err, L2_ERRLEN, "error: poll: %s", strerror(errno));
            return L2_FAILED;
        }
    }
}

static int write_all(l2_child *c, const char *data, size_t len, long long deadline, char *err)
{
    while (len) {
        /* MSG_NOSIGNAL: a child that has ended is an error here, not a SIGPIPE for the caller */
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            data += w;
            len -= (size_t)w;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_ready(c->fd, POLLOUT, deadline, "read its request", err)) return L2_FAILED;
        } else if (w < 0 && errno != EINTR) {
            snprintf(err, L2_ERRLEN, "error: the plugin has ended (%s)", strerror(errno));
            return L2_FAILED;
        }
    }
    return 0;
}

/* Reads until buf holds a newline; its offset in *nl. */
static int read_line(l2_child *c, long long deadline, size_t *nl, char *err)
{
    size_t scanned = 0;
    for (;;) {
        char *p = c->len > scanned ? memchr(c->buf + scanned, '\n', c->len - scanned) : NULL;
        if (p && (size_t)(p - c->buf) <= L2_CHILD_MAX_LINE) {
            *nl = (size_t)(p - c->buf);
            return 0;
        }
        scanned = c->len;
        if (p || c->len > L2_CHILD_MAX_LINE) {
            snprintf(err, L2_ERRLEN, "error: the plugin wrote a line of more than %d bytes", L2_CHILD_MAX_LINE);
            return L2_FAILED;
        }
        if (c->cap - c->len < 4096) {
            size_t cap = c->cap ? c->cap * 2 : 8192;
            char *b = realloc(c->buf, cap);
            if (!b) {
                snprintf(err, L2_ERRLEN, "error: out of memory");
                return L2_FAILED;
            }
            c->buf = b;
            c->cap = cap;
        }
        ssize_t r = recv(c->fd, c->buf + c->len, c->cap - c->len, MSG_DONTWAIT);
        if (r > 0) {
            c->len += (size_t)r;
        } else if (r == 0) {
            snprintf(err, L2_ERRLEN, "error: the plugin has ended (its output is closed)");
            return L2_FAILED;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_ready(c->fd, POLLIN, deadline, "answer", err)) return L2_FAILED;
        } else if (errno != EINTR) {
            snprintf(err, L2_ERRLEN, "error: reading the plugin: %s", strerror(errno));
            return L2_FAILED;
        }
    }
}

int l2_child_read(l2_child *c, int timeout_ms, const char **reply, size_t *rlen, char *err)
{
    /* the last answer's line goes; what the child wrote after it stays */
    if (c->taken) {
        memmove(c->buf, c->buf + c->taken, c->len - c->taken);
        c->len -= c->taken;
        c->taken = 0;
    }
    size_t nl;
    if (read_line(c, now_ms() + (timeout_ms > 0 ? timeout_ms : 0), &nl, err)) return L2_FAILED;
    c->taken = nl + 1;
    *reply = c->buf;
    *rlen = nl;
    return 0;
}

int l2_child_ask(l2_child *c, const char *line, size_t len, int timeout_ms, const char **reply, size_t *rlen,
                 char *err)
{
    long long deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    if (write_all(c, line, len, deadline, err) || write_all(c, "\n", 1, deadline, err)) return L2_FAILED;
    return l2_child_read(c, (int)(deadline - now_ms()), reply, rlen, err);
}

int l2_child_stale(const l2_child *c)
{
    struct timespec now;
    if (!c->path) return 0;
    if (file_mtime(c->path, &now)) return 1;
    return now.tv_sec != c->mtime.tv_sec || now.tv_nsec != c->mtime.tv_nsec;
}

int l2_child_pid(const l2_child *c) { return (int)c->pid; }

/* Waits up to `ms` for the child to end: 1 once it has (or another reaped it: nginx's SIGCHLD
 * handler does, so ECHILD counts), else 0. */
static int reaped_within(pid_t pid, int ms)
{
    for (int waited = 0;; waited += 10) {
        pid_t r = waitpid(pid, NULL, WNOHANG);
        if (r > 0 || (r < 0 && errno != EINTR)) return 1;
        if (waited >= ms) return 0;
        struct timespec tick = {0, 10 * 1000 * 1000};
        nanosleep(&tick, NULL);
    }
}

void l2_child_stop(l2_child *c)
{
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    /* its input closed, a plugin ends by itself (a signal would be an alert in nginx's log); one
     * still there a second later gets SIGTERM, and SIGKILL a second after that, its whole group */
    if (c->pid > 0 && !reaped_within(c->pid, 1000)) {
        kill(-c->pid, SIGTERM);
        if (!reaped_within(c->pid, 1000)) {
            kill(-c->pid, SIGKILL);
            while (waitpid(c->pid, NULL, 0) < 0 && errno == EINTR) {}
        }
    }
    free(c->path);
    free(c->buf);
    free(c);
}
