#include "negentropy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

#define FINGERPRINT 16
#define BUCKETS 16
#define MAX_TS UINT64_MAX
enum { MODE_SKIP = 0, MODE_FINGERPRINT = 1, MODE_IDLIST = 2 };

typedef struct {
    uint64_t ts;
    uint8_t id[32];
} item;

/* An upper bound: items below it have a smaller timestamp, or the same and an id below its prefix. */
typedef struct {
    uint64_t ts;
    uint8_t id[32];
    size_t len;
} bound;

struct l2_neg {
    item *items;
    size_t n, cap, frame_limit;
    int sealed, initiator;
    uint64_t last_in, last_out; /* timestamps are deltas within a message */
};

static int neg_fail(char *err, const char *msg)
{
    snprintf(err, L2_ERRLEN, "%s", msg);
    return -1;
}

int l2_neg_new(l2_neg **out, size_t frame_limit, char *err)
{
    *out = NULL;
    if (frame_limit && frame_limit < 4096) return neg_fail(err, "error: a negentropy frame limit is at least 4096 bytes");
    l2_neg *n = calloc(1, sizeof *n);
    if (!n) return neg_fail(err, "error: out of memory");
    n->frame_limit = frame_limit;
    *out = n;
    return 0;
}

void l2_neg_free(l2_neg *n)
{
    if (!n) return;
    free(n->items);
    free(n);
}

int l2_neg_add(l2_neg *n, uint64_t created_at, const uint8_t id[32], char *err)
{
    if (n->sealed) return neg_fail(err, "error: the negentropy session is sealed: no item can be added");
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 1024;
        item *v = realloc(n->items, cap * sizeof *v);
        if (!v) return neg_fail(err, "error: out of memory");
        n->items = v;
        n->cap = cap;
    }
    n->items[n->n].ts = created_at;
    memcpy(n->items[n->n].id, id, 32);
    n->n++;
    return 0;
}

static int item_cmp(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->ts != y->ts) return x->ts < y->ts ? -1 : 1;
    return memcmp(x->id, y->id, 32);
}

int l2_neg_seal(l2_neg *n, char *err)
{
    if (n->sealed) return neg_fail(err, "error: the negentropy session is sealed already");
    if (n->n > 1) qsort(n->items, n->n, sizeof *n->items, item_cmp);
    for (size_t i = 1; i < n->n; i++)
        if (item_cmp(&n->items[i - 1], &n->items[i]) == 0) return neg_fail(err, "error: an item was added twice");
    n->sealed = 1;
    return 0;
}

size_t l2_neg_size(const l2_neg *n)
{
    return n->n;
}

/* ---- encoding ---- */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} reader;

static uint64_t neg_get_varint(reader *r)
{
    uint64_t v = 0;
    for (int i = 0; i < 10; i++) {
        if (r->p >= r->end) break;
        uint8_t b = *r->p++;
        v = v << 7 | (b & 127);
        if (!(b & 128)) return v;
    }
    r->bad = 1;
    return 0;
}

static const uint8_t *get_bytes(reader *r, uint64_t n)
{
    if ((uint64_t)(r->end - r->p) < n) {
        r->bad = 1;
        return NULL;
    }
    const uint8_t *s = r->p;
    r->p += n;
    return s;
}

/* Base 128, most significant group first, every byte but the last with its high bit set. */
static int put_varint(l2_buf *o, uint64_t v)
{
    uint8_t groups[10], out[10];
    int k = 0;
    do {
        groups[k++] = (uint8_t)(v & 127);
        v >>= 7;
    } while (v);
    for (int i = 0; i < k; i++) out[i] = (uint8_t)(groups[k - 1 - i] | (i < k - 1 ? 128 : 0));
    return l2_buf_put(o, out, (size_t)k);
}

static int put_bound(l2_neg *n, l2_buf *o, const bound *b)
{
    uint64_t delta = 0;
    if (b->ts == MAX_TS) {
        n->last_out = MAX_TS;
    } else {
        delta = b->ts - n->last_out + 1;
        n->last_out = b->ts;
    }
    return put_varint(o, delta) || put_varint(o, b->len) || l2_buf_put(o, b->id, b->len);
}

static bound get_bound(l2_neg *n, reader *r)
{
    bound b = {0, {0}, 0};
    uint64_t t = neg_get_varint(r);
    t = t == 0 ? MAX_TS : t - 1;
    uint64_t ts = t + n->last_in;
    if (ts < n->last_in) ts = MAX_TS; /* saturates */
    n->last_in = ts;
    b.ts = ts;
    uint64_t len = neg_get_varint(r);
    if (len > 32) {
        r->bad = 1;
        return b;
    }
    const uint8_t *id = get_bytes(r, len);
    if (id) memcpy(b.id, id, len);
    b.len = (size_t)len;
    return b;
}

/* ---- the items ---- */

static int below(const item *it, const bound *b)
{
    if (it->ts != b->ts) return it->ts < b->ts;
    return memcmp(it->id, b->id, b->len) < 0;
}

/* The first index in [lo, hi) whose item is not below b (hi when none). */
static size_t lower_bound(const l2_neg *n, size_t lo, size_t hi, const bound *b)
{
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (below(&n->items[mid], b)) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* The ids of [lo, hi) summed as 256-bit little-endian integers (mod 2^256), the count appended
 * as a varint, SHA-256'd: the first 16 bytes. */
static int fingerprint(const l2_neg *n, size_t lo, size_t hi, uint8_t out[FINGERPRINT])
{
    uint32_t acc[8] = {0};
    for (size_t i = lo; i < hi; i++) {
        const uint8_t *id = n->items[i].id;
        uint64_t carry = 0;
        for (int w = 0; w < 8; w++) {
            uint32_t limb = (uint32_t)id[4 * w] | (uint32_t)id[4 * w + 1] << 8 | (uint32_t)id[4 * w + 2] << 16 |
                            (uint32_t)id[4 * w + 3] << 24;
            uint64_t s = (uint64_t)acc[w] + limb + carry;
            acc[w] = (uint32_t)s;
            carry = s >> 32;
        }
    }
    uint8_t sum[32], hash[32];
    for (int w = 0; w < 8; w++)
        for (int b = 0; b < 4; b++) sum[4 * w + b] = (uint8_t)(acc[w] >> (8 * b));
    l2_buf in;
    l2_buf_init(&in);
    int rc = l2_buf_put(&in, sum, 32) || put_varint(&in, hi - lo) || l2_sha256(in.data, in.len, hash);
    l2_buf_free(&in);
    if (rc) return -1;
    memcpy(out, hash, FINGERPRINT);
    return 0;
}

/* The shortest bound that separates prev from curr (curr the first item at or above it). */
static bound minimal_bound(const item *prev, const item *curr)
{
    bound b = {curr->ts, {0}, 0};
    if (prev->ts != curr->ts) return b;
    size_t shared = 0;
    while (shared < 32 && prev->id[shared] == curr->id[shared]) shared++;
    b.len = shared + 1 > 32 ? 32 : shared + 1;
    memcpy(b.id, curr->id, b.len);
    return b;
}

/* [lo, hi) up to `upper`: its ids when it has fewer than 32, else 16 fingerprinted buckets. */
static int split_range(l2_neg *n, size_t lo, size_t hi, const bound *upper, l2_buf *o)
{
    size_t count = hi - lo;
    if (count < 2 * BUCKETS) {
        if (put_bound(n, o, upper) || put_varint(o, MODE_IDLIST) || put_varint(o, count)) return -1;
        for (size_t i = lo; i < hi; i++)
            if (l2_buf_put(o, n->items[i].id, 32)) return -1;
        return 0;
    }
    size_t per = count / BUCKETS, extra = count % BUCKETS, curr = lo;
    for (size_t k = 0; k < BUCKETS; k++) {
        size_t size = per + (k < extra ? 1 : 0);
        uint8_t fp[FINGERPRINT];
        if (fingerprint(n, curr, curr + size, fp)) return -1;
        curr += size;
        bound next = curr == hi ? *upper : minimal_bound(&n->items[curr - 1], &n->items[curr]);
        if (put_bound(n, o, &next) || put_varint(o, MODE_FINGERPRINT) || l2_buf_put(o, fp, FINGERPRINT)) return -1;
    }
    return 0;
}

static int exceeded(const l2_neg *n, size_t bytes)
{
    return n->frame_limit && bytes > n->frame_limit - 200;
}

int l2_neg_initiate(l2_neg *n, l2_buf *out, char *err)
{
    if (!n->sealed) return neg_fail(err, "error: seal the negentropy session first");
    n->initiator = 1;
    n->last_out = 0;
    out->len = 0;
    bound all = {MAX_TS, {0}, 0};
    uint8_t version = L2_NEG_VERSION;
    if (l2_buf_put(out, &version, 1) || split_range(n, 0, n->n, &all, out)) return neg_fail(err, "error: out of memory");
    return 0;
}

static int by_id(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

/* The initiator's view of an id list: ours in [lo, hi) against theirs (count ids at p). */
static int compare_ids(const l2_neg *n, size_t lo, size_t hi, const uint8_t *p, uint64_t count, l2_buf *have,
                       l2_buf *need)
{
    size_t ours = hi - lo;
    uint8_t *a = malloc((ours ? ours : 1) * 32), *b = malloc((count ? count : 1) * 32);
    int rc = !a || !b;
    if (!rc) {
        for (size_t i = 0; i < ours; i++) memcpy(a + 32 * i, n->items[lo + i].id, 32);
        memcpy(b, p, (size_t)count * 32);
        qsort(a, ours, 32, by_id);
        qsort(b, (size_t)count, 32, by_id);
        size_t i = 0, j = 0;
        while (!rc && (i < ours || j < count)) {
            int c = i == ours ? 1 : j == count ? -1 : memcmp(a + 32 * i, b + 32 * j, 32);
            if (c < 0) {
                rc = have && l2_buf_put(have, a + 32 * i, 32); /* only here */
                i++;
            } else if (c > 0) {
                rc = need && l2_buf_put(need, b + 32 * j, 32); /* only there */
                j++;
            } else {
                i++;
                j++;
            }
        }
    }
    free(a);
    free(b);
    return rc ? -1 : 0;
}

/* A message being answered: the reader of its ranges, the previous range's end, a skip not yet
 * written, the range's output (o) and the whole answer (out). */
typedef struct {
    l2_neg *n;
    reader r;
    bound prev;
    int skip, truncated;
    l2_buf o, *out, *have, *need;
} reconcile;

#define UNPARSED "invalid: a negentropy message that does not parse"

/* A pending skip goes out before anything a range writes. */
static int flush_skip(reconcile *c)
{
    int rc = c->skip && (put_bound(c->n, &c->o, &c->prev) || put_varint(&c->o, MODE_SKIP)) ? -1 : 0;
    c->skip = 0;
    return rc;
}

/* Their fingerprint of [lo, hi): the same as ours, skipped; else the range is split. */
static int on_fingerprint(reconcile *c, size_t lo, size_t hi, const bound *cur, const char **why)
{
    const uint8_t *theirs = get_bytes(&c->r, FINGERPRINT);
    uint8_t ours[FINGERPRINT];
    if (!theirs) {
        *why = UNPARSED;
        return 0;
    }
    if (fingerprint(c->n, lo, hi, ours)) return -1;
    if (memcmp(theirs, ours, FINGERPRINT) == 0) {
        c->skip = 1;
        return 0;
    }
    if (flush_skip(c)) return -1;
    return split_range(c->n, lo, hi, cur, &c->o);
}

/* Their ids of [lo, *hi): the initiator learns what each side has; the other side answers with its
 * own ids, as many as the frame holds (*hi moves back to the last one sent, and the rest is
 * fingerprinted by the caller). */
static int on_idlist(reconcile *c, size_t lo, size_t *hi, const bound *cur, const char **why)
{
    l2_neg *n = c->n;
    uint64_t count = neg_get_varint(&c->r);
    const uint8_t *ids =
        c->r.bad || count > (uint64_t)(c->r.end - c->r.p) / 32 ? NULL : get_bytes(&c->r, count * 32);
    if (!ids) {
        *why = UNPARSED;
        return 0;
    }
    if (n->initiator) {
        c->skip = 1;
        return compare_ids(n, lo, *hi, ids, count, c->have, c->need);
    }
    if (flush_skip(c)) return -1;
    bound end = *cur;
    size_t k = lo;
    while (k < *hi && !exceeded(n, c->out->len + c->o.len + 32 * (k - lo) + 40)) k++;
    if (k < *hi) {
        end.ts = n->items[k].ts;
        memcpy(end.id, n->items[k].id, 32);
        end.len = 32;
        *hi = k;
        c->truncated = 1;
    }
    if (put_bound(n, &c->o, &end) || put_varint(&c->o, MODE_IDLIST) || put_varint(&c->o, *hi - lo)) return -1;
    for (size_t i = lo; i < *hi; i++)
        if (l2_buf_put(&c->o, n->items[i].id, 32)) return -1;
    if (l2_buf_put(c->out, c->o.data, c->o.len)) return -1;
    c->o.len = 0;
    return 0;
}

/* The frame is full: one fingerprint for everything from `from` on. */
static int fingerprint_rest(reconcile *c, size_t from)
{
    uint8_t fp[FINGERPRINT];
    bound all = {MAX_TS, {0}, 0};
    return fingerprint(c->n, from, c->n->n, fp) || put_bound(c->n, c->out, &all) ||
                   put_varint(c->out, MODE_FINGERPRINT) || l2_buf_put(c->out, fp, FINGERPRINT)
               ? -1
               : 0;
}

/* Answers each range of the message; -1 (out of memory) or *why (a bad message) stop it. */
static int reconcile_ranges(reconcile *c, const char **why)
{
    size_t prev_index = 0;
    while (c->r.p < c->r.end) {
        c->o.len = 0;
        bound cur = get_bound(c->n, &c->r);
        uint64_t mode = neg_get_varint(&c->r);
        if (c->r.bad) {
            *why = UNPARSED;
            return 0;
        }
        size_t lo = prev_index, hi = lower_bound(c->n, prev_index, c->n->n, &cur);
        int rc;
        if (mode == MODE_SKIP) {
            c->skip = 1;
            rc = 0;
        } else if (mode == MODE_FINGERPRINT) {
            rc = on_fingerprint(c, lo, hi, &cur, why);
        } else if (mode == MODE_IDLIST) {
            rc = on_idlist(c, lo, &hi, &cur, why);
        } else {
            *why = "invalid: a negentropy message with an unknown mode";
            return 0;
        }
        if (rc || *why) return rc;
        if (c->truncated || exceeded(c->n, c->out->len + c->o.len)) return fingerprint_rest(c, hi);
        if (l2_buf_put(c->out, c->o.data, c->o.len)) return -1;
        prev_index = hi;
        c->prev = cur;
    }
    return 0;
}

int l2_neg_reconcile(l2_neg *n, const uint8_t *q, size_t qlen, l2_buf *out, l2_buf *have, l2_buf *need, char *err)
{
    if (!n->sealed) return neg_fail(err, "error: seal the negentropy session first");
    n->last_in = n->last_out = 0;
    out->len = 0;
    uint8_t version = L2_NEG_VERSION;
    if (l2_buf_put(out, &version, 1)) return neg_fail(err, "error: out of memory");
    if (qlen == 0) return neg_fail(err, "invalid: an empty negentropy message");
    if (q[0] < 0x60 || q[0] > 0x6F) return neg_fail(err, "invalid: not a negentropy message (its version byte)");
    if (q[0] != L2_NEG_VERSION) {
        if (n->initiator) return neg_fail(err, "invalid: the peer speaks another negentropy protocol version");
        return 0; /* our version alone: the peer learns which one we speak */
    }
    reconcile c = {.n = n, .r = {q + 1, q + qlen, 0}, .out = out, .have = have, .need = need};
    l2_buf_init(&c.o);
    const char *why = NULL;
    int rc = reconcile_ranges(&c, &why);
    l2_buf_free(&c.o);
    if (why || rc) return neg_fail(err, why ? why : "error: out of memory");
    if (n->initiator && out->len == 1) out->len = 0; /* nothing left to ask: done */
    return 0;
}
