#include "learned.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "event.h"

#define MAGIC 0x6c326c726e643034ull /* "l2lrnd04": a header naming its own layout */
#define ROWS 4
#define WIDTH_BITS_MAX 16 /* 65,536 counters a row */
#define WIDTH_BITS_MIN 10
#define MISSING_MAX 16384
#define MISSING_MIN 256
#define PROBES 8
#define COUNT_MAX 0xffff
#define WRITE_SLOTS 64

typedef struct {
    uint32_t seq; /* odd while the slot is written */
    uint32_t until;
    uint8_t id[32];
} missing_slot;

typedef struct {
    int32_t pid;    /* 0: free */
    uint32_t waits; /* a light save waiting for a level's write lock: 1 L1's, 2 L2's, 0 none */
    int64_t newest;
} write_slot;

/* The file: this header, then counts[ROWS][1 << width_bits] (uint16_t), then
 * missing[missing_slots]. The layout is the header's, whoever made the file: processes opened
 * with other sizes share it as it is. */
typedef struct {
    uint64_t magic; /* written last: a file without it was never finished */
    uint64_t bytes; /* the whole file */
    uint32_t width_bits;
    uint32_t missing_slots;
    uint64_t reads; /* reads counted since the last halving */
    uint32_t admit_bar;
    uint32_t halving; /* 1 while a process halves the counters */
    int64_t horizon_floor;
    uint64_t answers_epoch;
    write_slot writes[WRITE_SLOTS];
} header;

struct l2_learned {
    header *h;
    uint16_t *counts; /* row r, column c: counts[(r << width_bits) + c] */
    missing_slot *missing;
    uint32_t width_bits, missing_slots;
    size_t bytes;
};

static size_t layout_bytes(uint32_t width_bits, uint32_t missing_slots)
{
    return sizeof(header) + (size_t)ROWS * ((size_t)1 << width_bits) * sizeof(uint16_t) +
           (size_t)missing_slots * sizeof(missing_slot);
}

/* The largest layout within a thirty-second of L1's size limit (all of it when there is none):
 * a 2 MiB L1 gets a 37 KB file, 40 MiB and more the whole 1.2 MB. */
static void layout_for(uint64_t size_limit, uint32_t *width_bits, uint32_t *missing_slots)
{
    uint32_t w = WIDTH_BITS_MAX, m = MISSING_MAX;
    while (size_limit && layout_bytes(w, m) > size_limit / 32 && w > WIDTH_BITS_MIN) {
        w--;
        if (m > MISSING_MIN) m /= 2;
    }
    *width_bits = w;
    *missing_slots = m;
}

static int learned_fail(char *err, const char *what, const char *path, int e)
{
    snprintf(err, L2_ERRLEN, "error: %s '%.120s': %s", what, path, strerror(e));
    return -1;
}

/* Whether an existing file may be used, or why not: layer2 runs as root beside unprivileged
 * workers (the CLI), so what it maps and writes must be what it made or the directory's owner
 * did, not a link to something else. */
static int learned_check_file(int fd, int dfd, const char *path, char *err)
{
    struct stat sb, db;
    if (fstat(fd, &sb) || fstat(dfd, &db)) return learned_fail(err, "cannot stat", path, errno);
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, L2_ERRLEN, "error: '%.120s' is not a regular file: remove it", path);
        return -1;
    }
    if (sb.st_nlink != 1) {
        snprintf(err, L2_ERRLEN, "error: '%.120s' has %lu hard links, so it may be another file's: remove it", path,
                 (unsigned long)sb.st_nlink);
        return -1;
    }
    if (sb.st_uid != geteuid() && sb.st_uid != db.st_uid) {
        snprintf(err, L2_ERRLEN, "error: '%.80s' belongs to uid %lu, neither this process's (%lu) nor its directory's (%lu)",
                 path, (unsigned long)sb.st_uid, (unsigned long)geteuid(), (unsigned long)db.st_uid);
        return -1;
    }
    if (sb.st_mode & S_IWOTH) {
        snprintf(err, L2_ERRLEN, "error: '%.120s' is writable by anyone (mode %03o): remove it or chmod o-w", path,
                 (unsigned)(sb.st_mode & 0777));
        return -1;
    }
    return 0;
}

/* Whether fd holds a finished file of this format; its layout then. */
static int usable(int fd, uint32_t *width_bits, uint32_t *missing_slots, size_t *bytes)
{
    header h;
    struct stat sb;
    if (fstat(fd, &sb) || pread(fd, &h, sizeof h, 0) != (ssize_t)sizeof h || h.magic != MAGIC) return 0;
    if (h.width_bits < WIDTH_BITS_MIN || h.width_bits > WIDTH_BITS_MAX || h.missing_slots < 1 ||
        h.missing_slots > MISSING_MAX)
        return 0;
    size_t n = layout_bytes(h.width_bits, h.missing_slots);
    if (h.bytes != n || (uint64_t)sb.st_size != n) return 0;
    *width_bits = h.width_bits;
    *missing_slots = h.missing_slots;
    *bytes = n;
    return 1;
}

/* A new file of our layout, its blocks reserved (so a full disk is an error here, not a SIGBUS
 * when a page of the mapping is first written), put in place by rename: a file of another
 * layout is replaced, never truncated, so a process that still maps it keeps its pages. */
static int create(int dfd, const char *dir, const char *path, uint64_t size_limit, char *err)
{
    char tmp[64], tmp_path[4096];
    snprintf(tmp, sizeof tmp, "learned.new.%ld", (long)getpid());
    snprintf(tmp_path, sizeof tmp_path, "%s/%s", dir, tmp);
    unlinkat(dfd, tmp, 0);
    int fd = openat(dfd, tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return learned_fail(err, "cannot create", tmp_path, errno);
    uint32_t w, m;
    layout_for(size_limit, &w, &m);
    size_t n = layout_bytes(w, m);
    int rc = posix_fallocate(fd, 0, (off_t)n);
    if (rc) {
        snprintf(err, L2_ERRLEN, "error: cannot reserve %zu bytes for '%.120s': %s", n, path, strerror(rc));
        goto out;
    }
    /* root making it for unprivileged workers: it is the directory's owner's, as the rest is */
    struct stat db;
    if (geteuid() == 0 && fstat(dfd, &db) == 0 && fchown(fd, db.st_uid, db.st_gid)) {
        rc = learned_fail(err, "cannot hand over", tmp_path, errno);
        goto out;
    }
    header h;
    memset(&h, 0, sizeof h);
    h.bytes = n;
    h.width_bits = w;
    h.missing_slots = m;
    h.admit_bar = 2;
    if (pwrite(fd, &h, sizeof h, 0) != (ssize_t)sizeof h) {
        rc = learned_fail(err, "cannot write", tmp_path, errno);
        goto out;
    }
    h.magic = MAGIC;
    if (pwrite(fd, &h.magic, sizeof h.magic, 0) != (ssize_t)sizeof h.magic || renameat(dfd, tmp, dfd, "learned")) {
        rc = learned_fail(err, "cannot put in place", path, errno);
        goto out;
    }
out:
    if (rc) unlinkat(dfd, tmp, 0);
    close(fd);
    return rc ? -1 : 0;
}

int l2_learned_open(l2_learned **out, const char *dir, uint64_t size_limit, char *err)
{
    char path[4096];
    *out = NULL;
    snprintf(path, sizeof path, "%s/learned", dir);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return learned_fail(err, "cannot open", dir, errno);
    /* one process at a time checks, makes or replaces the file: the directory is the lock,
     * since the file itself may be replaced */
    int fd = -1, rc = -1;
    uint32_t w = 0, m = 0;
    size_t n = 0;
    if (flock(dfd, LOCK_EX)) {
        learned_fail(err, "cannot lock", dir, errno);
        goto out;
    }
    for (int tries = 0; tries < 2 && fd < 0; tries++) {
        fd = openat(dfd, "learned", O_RDWR | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ELOOP) {
            snprintf(err, L2_ERRLEN, "error: '%.120s' is a symbolic link, which layer2 does not follow: remove it", path);
            goto out;
        }
        if (fd < 0 && errno != ENOENT) {
            learned_fail(err, "cannot open", path, errno);
            goto out;
        }
        if (fd >= 0 && learned_check_file(fd, dfd, path, err)) goto out;
        if (fd >= 0 && usable(fd, &w, &m, &n)) break;
        if (fd >= 0) close(fd), fd = -1;
        if (tries == 0 && create(dfd, dir, path, size_limit, err)) goto out;
    }
    if (fd < 0) {
        snprintf(err, L2_ERRLEN, "error: '%.120s' is not usable after it was made again", path);
        goto out;
    }
    void *map = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        learned_fail(err, "cannot map", path, errno);
        goto out;
    }
    l2_learned *l = malloc(sizeof *l);
    if (!l) {
        munmap(map, n);
        snprintf(err, L2_ERRLEN, "error: out of memory");
        goto out;
    }
    l->h = map;
    l->counts = (uint16_t *)((char *)map + sizeof(header));
    l->missing = (missing_slot *)(l->counts + ((size_t)ROWS << w));
    l->width_bits = w;
    l->missing_slots = m;
    l->bytes = n;
    *out = l;
    rc = 0;
out:
    if (fd >= 0) close(fd);
    flock(dfd, LOCK_UN);
    close(dfd);
    return rc;
}

void l2_learned_close(l2_learned *l)
{
    if (!l) return;
    munmap(l->h, l->bytes);
    free(l);
}

size_t l2_learned_bytes(const l2_learned *l)
{
    return l->bytes;
}

/* The id's 256 bits folded and mixed (splitmix64's finalizer) per row: ids are hashes, but the
 * ones a test or a client picks need not be. */
static uint64_t mix(const uint8_t id[32], uint64_t salt)
{
    uint64_t x = salt;
    for (int i = 0; i < 32; i += 8) {
        uint64_t w;
        memcpy(&w, id + i, 8);
        x = (x ^ w) * 0xbf58476d1ce4e5b9ull;
        x ^= x >> 31;
    }
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 29);
}

/* id's counter in row r */
static uint16_t *counter(l2_learned *l, const uint8_t id[32], int row)
{
    uint64_t c = mix(id, 0x9e3779b97f4a7c15ull * (uint64_t)(row + 1)) >> (64 - l->width_bits);
    return &l->counts[((size_t)row << l->width_bits) + c];
}

static void halve(l2_learned *l)
{
    uint32_t idle = 0;
    if (!__atomic_compare_exchange_n(&l->h->halving, &idle, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    for (size_t i = 0, n = (size_t)ROWS << l->width_bits; i < n; i++) {
        uint16_t v = __atomic_load_n(&l->counts[i], __ATOMIC_RELAXED);
        /* a count of one goes: read once, long ago, is not hot */
        while (v && !__atomic_compare_exchange_n(&l->counts[i], &v, (uint16_t)(v >> 1), 1, __ATOMIC_RELAXED,
                                                 __ATOMIC_RELAXED)) {
        }
    }
    __atomic_store_n(&l->h->halving, 0, __ATOMIC_RELEASE);
}

uint32_t l2_learned_count_read(l2_learned *l, const uint8_t id[32], uint64_t period)
{
    uint32_t min = COUNT_MAX;
    for (int r = 0; r < ROWS; r++) {
        uint16_t *c = counter(l, id, r);
        uint16_t v = __atomic_load_n(c, __ATOMIC_RELAXED);
        while (v < COUNT_MAX && !__atomic_compare_exchange_n(c, &v, (uint16_t)(v + 1), 1, __ATOMIC_RELAXED,
                                                             __ATOMIC_RELAXED)) {
        }
        uint32_t now = v < COUNT_MAX ? (uint32_t)v + 1 : COUNT_MAX;
        if (now < min) min = now;
    }
    if (period && __atomic_add_fetch(&l->h->reads, 1, __ATOMIC_RELAXED) >= period) {
        __atomic_store_n(&l->h->reads, period / 2, __ATOMIC_RELAXED);
        halve(l);
    }
    return min;
}

uint32_t l2_learned_reads(l2_learned *l, const uint8_t id[32])
{
    uint32_t min = COUNT_MAX;
    for (int r = 0; r < ROWS; r++) {
        uint32_t v = __atomic_load_n(counter(l, id, r), __ATOMIC_RELAXED);
        if (v < min) min = v;
    }
    return min;
}

uint32_t l2_learned_admit_bar(l2_learned *l)
{
    return __atomic_load_n(&l->h->admit_bar, __ATOMIC_RELAXED);
}

void l2_learned_set_admit_bar(l2_learned *l, uint32_t bar)
{
    __atomic_store_n(&l->h->admit_bar, bar, __ATOMIC_RELAXED);
}

/* ---- known-missing ids ---- */

static uint32_t slot_of(l2_learned *l, const uint8_t id[32])
{
    return (uint32_t)(mix(id, 0x2545f4914f6cdd1dull) % l->missing_slots);
}

/* Reads slot s consistently: 1 and its until when it holds id. */
static int slot_holds(missing_slot *s, const uint8_t id[32], uint32_t *until)
{
    for (int tries = 0; tries < 64; tries++) {
        uint32_t a = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (a & 1) continue;
        uint8_t copy[32];
        memcpy(copy, s->id, 32);
        uint32_t u = __atomic_load_n(&s->until, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != a) continue;
        *until = u;
        return memcmp(copy, id, 32) == 0;
    }
    return 0; /* a writer is stuck mid-write (killed): not known */
}

static int slot_lock(missing_slot *s, uint32_t *seq)
{
    uint32_t v = __atomic_load_n(&s->seq, __ATOMIC_RELAXED);
    if (v & 1) return 0;
    if (!__atomic_compare_exchange_n(&s->seq, &v, v + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return 0;
    *seq = v + 1;
    return 1;
}

static void slot_unlock(missing_slot *s, uint32_t seq)
{
    __atomic_store_n(&s->seq, seq + 1, __ATOMIC_RELEASE);
}

static void slot_write(missing_slot *s, const uint8_t id[32], uint32_t until)
{
    uint32_t seq;
    if (!slot_lock(s, &seq)) return; /* another writer has it: this fact is dropped */
    memcpy(s->id, id, 32);
    __atomic_store_n(&s->until, until, __ATOMIC_RELAXED);
    slot_unlock(s, seq);
}

void l2_learned_missing_add(l2_learned *l, const uint8_t id[32], int64_t until)
{
    if (until <= 0) return;
    uint32_t start = slot_of(l, id), u, oldest = UINT32_MAX;
    missing_slot *victim = NULL;
    for (uint32_t p = 0; p < PROBES; p++) {
        missing_slot *s = &l->missing[(start + p) % l->missing_slots];
        int mine = slot_holds(s, id, &u);
        if (mine) {
            victim = s;
            break;
        }
        if (u < oldest) oldest = u, victim = s;
    }
    if (victim) slot_write(victim, id, (uint32_t)until);
}

static missing_slot *learned_find(l2_learned *l, const uint8_t id[32], uint32_t *until)
{
    uint32_t start = slot_of(l, id);
    for (uint32_t p = 0; p < PROBES; p++) {
        missing_slot *s = &l->missing[(start + p) % l->missing_slots];
        if (slot_holds(s, id, until)) return s;
    }
    return NULL;
}

int l2_learned_missing(l2_learned *l, const uint8_t id[32], int64_t now)
{
    uint32_t until;
    return learned_find(l, id, &until) && (int64_t)until > now;
}

void l2_learned_missing_forget(l2_learned *l, const uint8_t id[32])
{
    uint32_t until;
    missing_slot *s = learned_find(l, id, &until);
    if (s && until) slot_write(s, id, 0);
}

void l2_learned_clear(l2_learned *l)
{
    static const uint8_t none[32];
    for (size_t i = 0; i < l->missing_slots; i++) slot_write(&l->missing[i], none, 0);
    for (size_t i = 0, n = (size_t)ROWS << l->width_bits; i < n; i++) __atomic_store_n(&l->counts[i], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&l->h->reads, 0, __ATOMIC_RELAXED);
}

const int64_t *l2_learned_horizon_floor(l2_learned *l)
{
    return &l->h->horizon_floor;
}

void l2_learned_raise_horizon_floor(l2_learned *l, int64_t h)
{
    int64_t cur = __atomic_load_n(&l->h->horizon_floor, __ATOMIC_ACQUIRE);
    while (cur < h && !__atomic_compare_exchange_n(&l->h->horizon_floor, &cur, h, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

void l2_learned_set_horizon_floor(l2_learned *l, int64_t h)
{
    __atomic_store_n(&l->h->horizon_floor, h, __ATOMIC_RELEASE);
}

uint64_t l2_learned_answers_epoch(l2_learned *l)
{
    return __atomic_load_n(&l->h->answers_epoch, __ATOMIC_ACQUIRE);
}

void l2_learned_end_answers(l2_learned *l)
{
    __atomic_add_fetch(&l->h->answers_epoch, 1, __ATOMIC_ACQ_REL);
}

/* ---- writes in flight to both levels ---- */

int l2_learned_begin_write(l2_learned *l, int64_t newest)
{
    int32_t me = (int32_t)getpid();
    for (int i = 0; i < WRITE_SLOTS; i++) {
        write_slot *w = &l->h->writes[i];
        int32_t free_ = 0;
        if (!__atomic_compare_exchange_n(&w->pid, &free_, me, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
        __atomic_store_n(&w->waits, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&w->newest, newest, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

void l2_learned_end_write(l2_learned *l, int slot)
{
    if (slot < 0 || slot >= WRITE_SLOTS) return;
    __atomic_store_n(&l->h->writes[slot].waits, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&l->h->writes[slot].pid, 0, __ATOMIC_RELEASE);
}

void l2_learned_light_wait(l2_learned *l, int slot, int level)
{
    if (slot >= 0 && slot < WRITE_SLOTS) __atomic_store_n(&l->h->writes[slot].waits, (uint32_t)level, __ATOMIC_RELEASE);
}

int l2_learned_light_waiting(l2_learned *l, int level)
{
    for (int i = 0; i < WRITE_SLOTS; i++) {
        write_slot *w = &l->h->writes[i];
        if (__atomic_load_n(&w->waits, __ATOMIC_ACQUIRE) == (uint32_t)level && __atomic_load_n(&w->pid, __ATOMIC_ACQUIRE))
            return 1;
    }
    return 0;
}

int64_t l2_learned_abandoned_writes(l2_learned *l)
{
    int64_t newest = INT64_MIN;
    for (int i = 0; i < WRITE_SLOTS; i++) {
        write_slot *w = &l->h->writes[i];
        int32_t pid = __atomic_load_n(&w->pid, __ATOMIC_ACQUIRE);
        if (!pid || kill(pid, 0) == 0 || errno != ESRCH) continue;
        /* read before the slot is freed: a live process may take it the moment it is */
        int64_t n = __atomic_load_n(&w->newest, __ATOMIC_ACQUIRE);
        if (!__atomic_compare_exchange_n(&w->pid, &pid, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
        if (n > newest) newest = n;
    }
    return newest;
}
