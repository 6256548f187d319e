/* backend_defer.c: the L1 writes a read asks for (its admitted events, its remembered answer),
 * kept as records instead of written when the handle defers them (l2_backend_defer_writes), and
 * applied by a handle that may wait for L1's write lock. Shared with the other parts through
 * backend_int.h.
 *
 * Records (integers big-endian):
 *   'F' revive(1) now(8) seq(8) keyed(1) [filter length(4) filter now(8) epoch(8)] rows(4), then
 *       per row: id(32) created_at(8) flags(1: 1 a body follows, 2 it is JSON) [length(4) body]
 *   'D' the same key: drop that remembered answer
 *   'R' length(4) records of l2_store_reads_take: reads L1 served */
#include "backend_int.h"

#include "be.h"

/* What a handle keeps at most: past it, a read's writes are dropped (they are a cache's fills:
 * the next read asks again). */
#define DEFERRED_MAX (16u << 20)

int l2_backend_defer_writes(l2_backend *b, int on)
{
    b->defer = on != 0;
    /* an L1 that admits nothing keeps no answer either, and without a size limit its reads are
     * dropped: such a handle never keeps anything */
    return b->o.admit != L2_ADMIT_NEVER || b->o.size_limit != 0;
}

static int put_u8(l2_buf *o, uint8_t v)
{
    return l2_buf_put(o, &v, 1);
}

static int put_u32(l2_buf *o, uint32_t v)
{
    uint8_t p[4];
    put_be32(p, v);
    return l2_buf_put(o, p, 4);
}

static int put_u64(l2_buf *o, uint64_t v)
{
    uint8_t p[8];
    put_be64(p, v);
    return l2_buf_put(o, p, 8);
}

static int put_key(l2_buf *o, const l2_answer_key *k)
{
    return put_u32(o, (uint32_t)k->len) || l2_buf_put(o, k->filter, k->len) || put_u64(o, (uint64_t)k->now) ||
           put_u64(o, k->epoch);
}

/* Ends a record written at [start, o->len): kept, or taken back when it failed or would pass
 * DEFERRED_MAX. */
static void end_record(l2_backend *b, size_t start, int failed)
{
    if (failed || b->deferred.len > DEFERRED_MAX) {
        b->deferred.len = start;
        b->deferred_dropped++;
    }
}

void backend_defer_fill(l2_backend *b, const fill_job *job)
{
    l2_buf *o = &b->deferred;
    const answer *a = job->a;
    size_t start = o->len;
    int bad = put_u8(o, 'F') || put_u8(o, (uint8_t)(job->revive != 0)) || put_u64(o, (uint64_t)job->now) ||
              put_u64(o, job->seq) || put_u8(o, job->k != NULL) || (job->k && put_key(o, job->k)) ||
              put_u32(o, (uint32_t)(a->n - job->from));
    for (size_t i = job->from; !bad && i < a->n; i++) {
        const kept_row *r = &a->v[i];
        int body = !r->stub && job->take[i - job->from];
        bad = l2_buf_put(o, r->id, 32) || put_u64(o, (uint64_t)r->created_at) ||
              put_u8(o, (uint8_t)(body | (body && r->json) << 1)) ||
              (body && (put_u32(o, (uint32_t)r->len) || l2_buf_put(o, a->arena.data + r->off, r->len)));
    }
    end_record(b, start, bad);
}

void backend_keep_answer_ids(l2_backend *b, const l2_answer_key *k, const uint8_t (*ids)[32], size_t n, int64_t now,
                             uint64_t seq)
{
    char err[L2_ERRLEN];
    if (!b->defer) {
        l2_fill f = {.now = now, .k = k, .ids = ids, .nids = n, .expires = (int64_t)time(NULL) + b->o.answers_ttl,
                     .max_ids = b->o.answers_max_ids, .seq = seq};
        if (l2_store_fills(b->l1, &f, 1, NULL, NULL, err)) backend_logf_(b, "cannot keep a remembered answer by serial: %s", err);
        return;
    }
    l2_buf *o = &b->deferred;
    size_t start = o->len;
    int bad = put_u8(o, 'F') || put_u8(o, 0) || put_u64(o, (uint64_t)now) || put_u64(o, seq) || put_u8(o, 1) ||
              put_key(o, k) || put_u32(o, (uint32_t)n);
    for (size_t i = 0; !bad && i < n; i++) bad = l2_buf_put(o, ids[i], 32) || put_u64(o, 0) || put_u8(o, 0);
    end_record(b, start, bad);
}

void backend_drop_answer(l2_backend *b, const l2_answer_key *k)
{
    char err[L2_ERRLEN];
    if (!b->defer) {
        if (l2_store_answer_drop(b->l1, k, err)) backend_logf_(b, "cannot drop a remembered answer: %s", err);
        return;
    }
    size_t start = b->deferred.len;
    end_record(b, start, put_u8(&b->deferred, 'D') || put_key(&b->deferred, k));
}

int l2_backend_take_deferred(l2_backend *b, l2_buf *out, int with_reads, uint64_t *dropped)
{
    /* the reads this handle's L1 counted go first: a handle that never writes never writes them */
    l2_buf reads;
    l2_buf_init(&reads);
    int rc = with_reads ? l2_store_reads_take(b->l1, &reads) : 0;
    /* an L1 without a size limit evicts nothing: its reads decide nothing */
    if (rc == 0 && reads.len && b->o.size_limit &&
        (put_u8(out, 'R') || put_u32(out, (uint32_t)reads.len) || l2_buf_put(out, reads.data, reads.len)))
        rc = -1;
    l2_buf_free(&reads);
    if (rc == 0 && l2_buf_put(out, b->deferred.data, b->deferred.len)) rc = -1;
    if (rc) return -1;
    b->deferred.len = 0;
    *dropped = b->deferred_dropped;
    b->deferred_dropped = 0;
    return 0;
}

/* ---- applying ---- */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} reader;

static const uint8_t *take_bytes(reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *at = r->p;
    r->p += n;
    return at;
}

static uint8_t get_u8(reader *r)
{
    const uint8_t *p = take_bytes(r, 1);
    return p ? *p : 0;
}

static uint32_t get_u32(reader *r)
{
    const uint8_t *p = take_bytes(r, 4);
    return p ? get_be32(p) : 0;
}

static uint64_t get_u64(reader *r)
{
    const uint8_t *p = take_bytes(r, 8);
    return p ? get_be64(p) : 0;
}

static void get_key(reader *r, l2_answer_key *k)
{
    k->len = get_u32(r);
    k->filter = (const char *)take_bytes(r, k->len);
    k->now = (int64_t)get_u64(r);
    k->epoch = get_u64(r);
}

/* The 'F' records read so far, written together (one write transaction) before anything that
 * must come after them. */
typedef struct {
    fill_job *jobs;
    answer *answers;
    l2_answer_key *keys;
    uint8_t **takes;
    size_t n, cap;
} pending_fills;

/* Writes them (unless `drop`) and forgets them. */
static void write_pending(l2_backend *b, pending_fills *p, int drop)
{
    /* pointers into the arrays, fixed now that no record is added to them */
    for (size_t i = 0; i < p->n; i++) {
        p->jobs[i].a = &p->answers[i];
        if (p->jobs[i].k) p->jobs[i].k = &p->keys[i];
    }
    if (p->n && !drop) backend_write_fills(b, p->jobs, p->n);
    for (size_t i = 0; i < p->n; i++) {
        backend_answer_free(&p->answers[i]);
        free(p->takes[i]);
    }
    p->n = 0;
}

static void free_pending(pending_fills *p)
{
    free(p->jobs);
    free(p->answers);
    free(p->keys);
    free(p->takes);
}

static int pending_room(pending_fills *p)
{
    if (p->n < p->cap) return 0;
    size_t cap = p->cap ? p->cap * 2 : 16;
    fill_job *jobs = realloc(p->jobs, cap * sizeof *jobs);
    if (jobs) p->jobs = jobs;
    answer *answers = realloc(p->answers, cap * sizeof *answers);
    if (answers) p->answers = answers;
    l2_answer_key *keys = realloc(p->keys, cap * sizeof *keys);
    if (keys) p->keys = keys;
    uint8_t **takes = realloc(p->takes, cap * sizeof *takes);
    if (takes) p->takes = takes;
    if (!jobs || !answers || !keys || !takes) return -1;
    p->cap = cap;
    return 0;
}

/* An 'F' record: its rows as an answer, the taken ones with their bodies, added to p (unless
 * only read through: p NULL). */
static void read_fill(reader *r, pending_fills *p)
{
    int revive = get_u8(r);
    int64_t now = (int64_t)get_u64(r);
    uint64_t seq = get_u64(r);
    l2_answer_key k = {0};
    int keyed = get_u8(r);
    if (keyed) get_key(r, &k);
    uint32_t n = get_u32(r);
    if (r->bad || n > (size_t)(r->end - r->p) / 41) { /* 41: a row's least bytes */
        r->bad = 1;
        return;
    }
    answer a;
    backend_answer_init(&a);
    uint8_t *take = malloc(n + 1);
    for (uint32_t i = 0; take && i < n && !r->bad && !a.failed; i++) {
        l2_row row = {0};
        const uint8_t *id = take_bytes(r, 32);
        int64_t created_at = (int64_t)get_u64(r);
        uint8_t flags = get_u8(r);
        if (flags & 1) {
            uint32_t len = get_u32(r);
            const void *body = take_bytes(r, len);
            if (!len) r->bad = 1; /* a body is never empty */
            if (flags & 2) row.json = body, row.json_len = len;
            else row.bin = body, row.bin_len = len;
        }
        if (r->bad) break;
        memcpy(row.id, id, 32);
        row.stub = !(flags & 1);
        take[i] = flags & 1;
        backend_keep_known_row(&a, &row, id, created_at);
    }
    if (p && take && !r->bad && !a.failed && pending_room(p) == 0) {
        size_t i = p->n++;
        p->answers[i] = a;
        p->takes[i] = take;
        p->keys[i] = k;
        p->jobs[i] = (fill_job){NULL, 0, take, revive, now, keyed ? &p->keys[i] : NULL, seq}; /* see write_pending */
        return;
    }
    free(take);
    backend_answer_free(&a);
}

/* Reads the records through, writing them unless `dry`: 0, or -1 with err naming the first
 * malformed one. */
static int apply_records(l2_backend *b, const void *data, size_t len, int dry, char *err)
{
    reader r = {data, (const uint8_t *)data + len, 0};
    pending_fills p = {0};
    size_t at = 0;
    int rc = 0;
    while (r.p < r.end && !r.bad && rc == 0) {
        at = (size_t)(r.p - (const uint8_t *)data);
        uint8_t kind = get_u8(&r);
        if (kind == 'F') {
            read_fill(&r, dry ? NULL : &p);
        } else if (kind == 'D') {
            l2_answer_key k;
            get_key(&r, &k);
            if (!r.bad && !dry) {
                write_pending(b, &p, 0);
                backend_drop_answer(b, &k);
            }
        } else if (kind == 'R') {
            uint32_t n = get_u32(&r);
            const uint8_t *reads = take_bytes(&r, n);
            if (reads && n % 20) r.bad = 1;
            if (reads && !r.bad && !dry && l2_store_reads_add(b->l1, reads, n, err)) rc = -1;
        } else {
            r.bad = 1;
        }
    }
    write_pending(b, &p, rc || r.bad);
    free_pending(&p);
    if (r.bad) {
        snprintf(err, L2_ERRLEN, "deferred writes: the record at byte %zu of %zu is malformed", at + 1, len);
        return -1;
    }
    return rc;
}

int l2_backend_apply_deferred(l2_backend *b, const void *data, size_t len, char *err)
{
    /* read through first: malformed records write nothing */
    return apply_records(b, data, len, 1, err) || apply_records(b, data, len, 0, err) ? -1 : 0;
}
