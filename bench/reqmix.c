/* bench/reqmix: bench/relay's REQ mix asked by a client that costs next to nothing, so that the
 * time measured is the relay's and the round trips', not a client's JSON and websocket work (node's
 * client took as much CPU as the whole mix took time: it set the pace for both relays).
 * Each line of REQS is a REQ message whose subscription id is "m" and the line's number from 0. In
 * turn: the REQ is sent, the EVENT frames that come back are counted by their head (not parsed),
 * its EOSE or CLOSED ends it, then its CLOSE is sent. One line per REQ to stdout: "events ms
 * closed" (closed: 1 for a CLOSED, whose frame follows), then "total MS" (from the first REQ sent
 * to the last answer's end: no start-up, no handshake) and "cpu MS" (this process's).
 *
 *   cc -O2 -o build/reqmix bench/reqmix.c && build/reqmix 127.0.0.1 PORT REQS
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int fd;
static unsigned char *in;
static size_t in_cap, in_len, in_at;

static void die(const char *what)
{
    fprintf(stderr, "reqmix: %s\n", what);
    exit(1);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void send_all(const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, 0);
        if (w <= 0) die("send failed");
        c += w;
        n -= (size_t)w;
    }
}

/* at least n unread bytes in `in` */
static void want(size_t n)
{
    if (in_len - in_at >= n) return;
    memmove(in, in + in_at, in_len - in_at);
    in_len -= in_at;
    in_at = 0;
    if (n > in_cap) {
        while (in_cap < n) in_cap *= 2;
        if (!(in = realloc(in, in_cap))) die("out of memory");
    }
    while (in_len < n) {
        ssize_t r = recv(fd, in + in_len, in_cap - in_len, 0);
        if (r <= 0) die(r ? "the relay sent nothing for 30 s" : "the relay closed the connection");
        in_len += (size_t)r;
    }
}

/* a frame from the client (masked, as the protocol asks): opcode 1 text, 10 pong */
static void send_frame(int opcode, const char *s, size_t n)
{
    unsigned char h[14], mask[4] = {0x12, 0x34, 0x56, 0x78};
    size_t hn = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = 0x80 | (unsigned char)n;
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (unsigned char)(n >> 8), h[3] = (unsigned char)n;
        hn = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hn = 10;
    }
    memcpy(h + hn, mask, 4);
    hn += 4;
    unsigned char *buf = malloc(hn + n);
    if (!buf) die("out of memory");
    memcpy(buf, h, hn);
    for (size_t i = 0; i < n; i++) buf[hn + i] = (unsigned char)s[i] ^ mask[i & 3];
    send_all(buf, hn + n);
    free(buf);
}

/* the next frame from the relay: its opcode, its payload at *p (valid until the next call) */
static int next_frame(const unsigned char **p, size_t *n)
{
    want(2);
    int op = in[in_at] & 0x0f;
    size_t len = in[in_at + 1] & 0x7f, hn = 2;
    if (len == 126) {
        want(4);
        len = ((size_t)in[in_at + 2] << 8) | in[in_at + 3];
        hn = 4;
    } else if (len == 127) {
        want(10);
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | in[in_at + 2 + i];
        hn = 10;
    }
    want(hn + len);
    *p = in + in_at + hn;
    *n = len;
    in_at += hn + len;
    return op;
}

int main(int argc, char **argv)
{
    if (argc != 4) die("usage: reqmix HOST PORT REQS");
    FILE *reqs = fopen(argv[3], "r");
    if (!reqs) die("cannot open the REQ file");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1) die("HOST is an IPv4 address");
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) die("cannot connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval stall = {30, 0}; /* a relay that stops answering fails the mix, not hangs it */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof stall);
    in_cap = 1 << 20;
    if (!(in = malloc(in_cap))) die("out of memory");

    char hs[512];
    int hn = snprintf(hs, sizeof hs,
                      "GET / HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                      argv[1], argv[2]);
    send_all(hs, (size_t)hn);
    for (;;) { /* the answer's head, up to its blank line */
        want(in_len - in_at + 1);
        unsigned char *end = memmem(in + in_at, in_len - in_at, "\r\n\r\n", 4);
        if (end) {
            if (memcmp(in + in_at, "HTTP/1.1 101", 12)) die("the relay refused the websocket upgrade");
            in_at = (size_t)(end + 4 - in);
            break;
        }
    }

    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    double start = now_ms();
    for (long i = 0; (len = getline(&line, &cap, reqs)) > 0; i++) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        char eose[64], closed[64], close_msg[64];
        int eose_n = snprintf(eose, sizeof eose, "[\"EOSE\",\"m%ld\"", i);
        int closed_n = snprintf(closed, sizeof closed, "[\"CLOSED\",\"m%ld\"", i);
        int close_n = snprintf(close_msg, sizeof close_msg, "[\"CLOSE\",\"m%ld\"]", i);
        long events = 0;
        double t0 = now_ms();
        send_frame(1, line, (size_t)len);
        for (;;) {
            const unsigned char *p;
            size_t n;
            int op = next_frame(&p, &n);
            if (op == 8) die("the relay closed the websocket");
            if (op == 9) { /* a ping: a pong with its data */
                send_frame(10, (const char *)p, n);
                continue;
            }
            if (op != 1) continue;
            if (n >= 9 && !memcmp(p, "[\"EVENT\",", 9)) {
                events++;
            } else if (n >= (size_t)eose_n && !memcmp(p, eose, (size_t)eose_n)) {
                printf("%ld %.4f 0\n", events, now_ms() - t0);
                break;
            } else if (n >= (size_t)closed_n && !memcmp(p, closed, (size_t)closed_n)) {
                printf("%ld %.4f 1 %.*s\n", events, now_ms() - t0, (int)n, (const char *)p);
                break;
            }
        }
        send_frame(1, close_msg, (size_t)close_n);
    }
    printf("total %.4f\n", now_ms() - start);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("cpu %.3f\n", ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3 + ru.ru_stime.tv_sec * 1e3 +
                             ru.ru_stime.tv_usec / 1e3);
    free(line);
    free(in);
    fclose(reqs);
    close(fd);
    return 0;
}
