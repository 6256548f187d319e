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

#define MAGIC 0x6c326c726e643033ull /* "l2lrnd03" */
#define ROWS 4
#define WIDTH 65536
#define MISSING_SLOTS 16384
#define PROBES 8
#define COUNT_MAX 0xffff
#define WRITE_SLOTS 64

typedef struct {
    uint32_t seq; /* odd while the slot is written */
    uint32_t until;
    uint8_t id[32];
} missing_slot;

typedef struct {
    int32_t pid; /* 0: free */
    uint32_t pad;
    int64_t newest;
} write_slot;

typedef struct {
    uint64_t magic;
    uint64_t reads; /* reads counted since the last halving */
    uint32_t admit_bar;
    uint32_t halving; /* 1 while a process halves the counters */
    int64_t horizon_floor;
    uint64_t answers_epoch;
    uint16_t counts[ROWS][WIDTH];
    missing_slot missing[MISSING_SLOTS];
    write_slot writes[WRITE_SLOTS];
} shared_file;

struct l2_learned {
    shared_file *f;
};

int l2_learned_open(l2_learned **out, const char *dir, char *err)
{
    char path[4096];
    *out = NULL;
    snprintf(path, sizeof path, "%s/learned", dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, L2_ERRLEN, "error: cannot open '%.120s': %s", path, strerror(errno));
        return -1;
    }
    /* the first process sizes and stamps it; the others wait for that under the lock */
    struct stat sb;
    int rc = flock(fd, LOCK_EX) || fstat(fd, &sb);
    if (!rc && (size_t)sb.st_size != sizeof(shared_file)) rc = ftruncate(fd, 0) || ftruncate(fd, sizeof(shared_file));
    shared_file *f = rc ? MAP_FAILED : mmap(NULL, sizeof(shared_file), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (f == MAP_FAILED) {
        snprintf(err, L2_ERRLEN, "error: cannot map '%.120s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (__atomic_load_n(&f->magic, __ATOMIC_ACQUIRE) != MAGIC) {
        memset(f, 0, sizeof *f);
        f->admit_bar = 2;
        __atomic_store_n(&f->magic, MAGIC, __ATOMIC_RELEASE);
    }
    flock(fd, LOCK_UN);
    close(fd);
    l2_learned *l = malloc(sizeof *l);
    if (!l) {
        munmap(f, sizeof *f);
        snprintf(err, L2_ERRLEN, "error: out of memory");
        return -1;
    }
    l->f = f;
    *out = l;
    return 0;
}

void l2_learned_close(l2_learned *l)
{
    if (!l) return;
    munmap(l->f, sizeof *l->f);
    free(l);
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

static uint32_t column(const uint8_t id[32], int row)
{
    return (uint32_t)(mix(id, 0x9e3779b97f4a7c15ull * (uint64_t)(row + 1)) >> 48);
}

static void halve(shared_file *f)
{
    uint32_t idle = 0;
    if (!__atomic_compare_exchange_n(&f->halving, &idle, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < WIDTH; c++) {
            uint16_t v = __atomic_load_n(&f->counts[r][c], __ATOMIC_RELAXED);
            /* a count of one goes: read once, long ago, is not hot */
            while (v && !__atomic_compare_exchange_n(&f->counts[r][c], &v, (uint16_t)(v >> 1), 1, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
            }
        }
    __atomic_store_n(&f->halving, 0, __ATOMIC_RELEASE);
}

uint32_t l2_learned_count_read(l2_learned *l, const uint8_t id[32], uint64_t period)
{
    shared_file *f = l->f;
    uint32_t min = COUNT_MAX;
    for (int r = 0; r < ROWS; r++) {
        uint16_t *c = &f->counts[r][column(id, r)];
        uint16_t v = __atomic_load_n(c, __ATOMIC_RELAXED);
        while (v < COUNT_MAX && !__atomic_compare_exchange_n(c, &v, (uint16_t)(v + 1), 1, __ATOMIC_RELAXED,
                                                             __ATOMIC_RELAXED)) {
        }
        uint32_t now = v < COUNT_MAX ? (uint32_t)v + 1 : COUNT_MAX;
        if (now < min) min = now;
    }
    if (period && __atomic_add_fetch(&f->reads, 1, __ATOMIC_RELAXED) >= period) {
        __atomic_store_n(&f->reads, period / 2, __ATOMIC_RELAXED);
        halve(f);
    }
    return min;
}

uint32_t l2_learned_reads(l2_learned *l, const uint8_t id[32])
{
    uint32_t min = COUNT_MAX;
    for (int r = 0; r < ROWS; r++) {
        uint32_t v = __atomic_load_n(&l->f->counts[r][column(id, r)], __ATOMIC_RELAXED);
        if (v < min) min = v;
    }
    return min;
}

uint32_t l2_learned_admit_bar(l2_learned *l)
{
    return __atomic_load_n(&l->f->admit_bar, __ATOMIC_RELAXED);
}

void l2_learned_set_admit_bar(l2_learned *l, uint32_t bar)
{
    __atomic_store_n(&l->f->admit_bar, bar, __ATOMIC_RELAXED);
}

/* ---- known-missing ids ---- */

static uint32_t slot_of(const uint8_t id[32])
{
    return (uint32_t)(mix(id, 0x2545f4914f6cdd1dull) % MISSING_SLOTS);
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
    uint32_t start = slot_of(id), u, oldest = UINT32_MAX;
    missing_slot *victim = NULL;
    for (uint32_t p = 0; p < PROBES; p++) {
        missing_slot *s = &l->f->missing[(start + p) % MISSING_SLOTS];
        int mine = slot_holds(s, id, &u);
        if (mine) {
            victim = s;
            break;
        }
        if (u < oldest) oldest = u, victim = s;
    }
    if (victim) slot_write(victim, id, (uint32_t)until);
}

static missing_slot *find(l2_learned *l, const uint8_t id[32], uint32_t *until)
{
    uint32_t start = slot_of(id);
    for (uint32_t p = 0; p < PROBES; p++) {
        missing_slot *s = &l->f->missing[(start + p) % MISSING_SLOTS];
        if (slot_holds(s, id, until)) return s;
    }
    return NULL;
}

int l2_learned_missing(l2_learned *l, const uint8_t id[32], int64_t now)
{
    uint32_t until;
    return find(l, id, &until) && (int64_t)until > now;
}

void l2_learned_missing_forget(l2_learned *l, const uint8_t id[32])
{
    uint32_t until;
    missing_slot *s = find(l, id, &until);
    if (s && until) slot_write(s, id, 0);
}

void l2_learned_clear(l2_learned *l)
{
    static const uint8_t none[32];
    for (size_t i = 0; i < MISSING_SLOTS; i++) slot_write(&l->f->missing[i], none, 0);
    for (int r = 0; r < ROWS; r++)
        for (int c = 0; c < WIDTH; c++) __atomic_store_n(&l->f->counts[r][c], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&l->f->reads, 0, __ATOMIC_RELAXED);
}

const int64_t *l2_learned_horizon_floor(l2_learned *l)
{
    return &l->f->horizon_floor;
}

void l2_learned_raise_horizon_floor(l2_learned *l, int64_t h)
{
    int64_t cur = __atomic_load_n(&l->f->horizon_floor, __ATOMIC_ACQUIRE);
    while (cur < h && !__atomic_compare_exchange_n(&l->f->horizon_floor, &cur, h, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    }
}

void l2_learned_set_horizon_floor(l2_learned *l, int64_t h)
{
    __atomic_store_n(&l->f->horizon_floor, h, __ATOMIC_RELEASE);
}

uint64_t l2_learned_answers_epoch(l2_learned *l)
{
    return __atomic_load_n(&l->f->answers_epoch, __ATOMIC_ACQUIRE);
}

void l2_learned_end_answers(l2_learned *l)
{
    __atomic_add_fetch(&l->f->answers_epoch, 1, __ATOMIC_ACQ_REL);
}

/* ---- writes in flight to both levels ---- */

int l2_learned_begin_write(l2_learned *l, int64_t newest)
{
    int32_t me = (int32_t)getpid();
    for (int i = 0; i < WRITE_SLOTS; i++) {
        write_slot *w = &l->f->writes[i];
        int32_t free_ = 0;
        if (!__atomic_compare_exchange_n(&w->pid, &free_, me, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
        __atomic_store_n(&w->newest, newest, __ATOMIC_RELEASE);
        return i;
    }
    return -1;
}

void l2_learned_end_write(l2_learned *l, int slot)
{
    if (slot >= 0 && slot < WRITE_SLOTS) __atomic_store_n(&l->f->writes[slot].pid, 0, __ATOMIC_RELEASE);
}

int64_t l2_learned_abandoned_writes(l2_learned *l)
{
    int64_t newest = INT64_MIN;
    for (int i = 0; i < WRITE_SLOTS; i++) {
        write_slot *w = &l->f->writes[i];
        int32_t pid = __atomic_load_n(&w->pid, __ATOMIC_ACQUIRE);
        if (!pid || kill(pid, 0) == 0 || errno != ESRCH) continue;
        /* read before the slot is freed: a live process may take it the moment it is */
        int64_t n = __atomic_load_n(&w->newest, __ATOMIC_ACQUIRE);
        if (!__atomic_compare_exchange_n(&w->pid, &pid, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) continue;
        if (n > newest) newest = n;
    }
    return newest;
}
