#include "fanout.h"

#include <stdlib.h>
#include <string.h>

/* An index entry: filter `filter` of subscription `sub`, found under a key (a field's tag byte
 * and the value's bytes). */
typedef struct entry {
    uint64_t hash;
    uint32_t sub, filter;
    uint32_t len;
    struct entry *next;
    uint8_t key[]; /* len bytes */
} entry;

typedef struct {
    int64_t key;
    int live;
    size_t nfilters;
    l2_filter *filters;
    entry **entries; /* where it is indexed, to unlink */
    size_t nentries, entries_cap;
    uint32_t seen;   /* the match call that last took it */
} sub;

struct l2_fanout {
    sub *subs;
    size_t nsubs, cap, live;
    uint32_t *free_slots;
    size_t nfree, free_cap;
    entry **buckets;
    size_t nbuckets, nentries;
    uint32_t *everything; /* (sub << 8 | filter) of the filters indexed under nothing */
    size_t neverything, everything_cap;
    uint32_t generation;
    int64_t *out;
    size_t nout, out_cap;
};

enum { K_ID = 'i', K_AUTHOR = 'a', K_KIND = 'k', K_TAG = 't' };

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 32;
    return h * 0x9e3779b97f4a7c15ull;
}

l2_fanout *l2_fanout_new(void)
{
    l2_fanout *fo = calloc(1, sizeof *fo);
    if (!fo) return NULL;
    fo->nbuckets = 256;
    fo->buckets = calloc(fo->nbuckets, sizeof *fo->buckets);
    if (!fo->buckets) {
        free(fo);
        return NULL;
    }
    return fo;
}

static void sub_clear(l2_fanout *fo, sub *s);

void l2_fanout_free(l2_fanout *fo)
{
    if (!fo) return;
    for (size_t i = 0; i < fo->nsubs; i++) sub_clear(fo, &fo->subs[i]);
    free(fo->subs);
    free(fo->free_slots);
    free(fo->buckets);
    free(fo->everything);
    free(fo->out);
    free(fo);
}

static int fanout_grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap * 2 : 16;
    while (n < need) n *= 2;
    void *q = realloc(*p, n * size);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

static int rehash(l2_fanout *fo)
{
    size_t n = fo->nbuckets * 2;
    entry **b = calloc(n, sizeof *b);
    if (!b) return -1;
    for (size_t i = 0; i < fo->nbuckets; i++) {
        for (entry *e = fo->buckets[i], *next; e; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(fo->buckets);
    fo->buckets = b;
    fo->nbuckets = n;
    return 0;
}

/* A key: the field's type, a tag's letter (0 for other fields) and the value's bytes. */
static size_t make_key(uint8_t *k, char type, char letter, const void *bytes, size_t n)
{
    size_t len = 0;
    k[len++] = (uint8_t)type;
    if (letter) k[len++] = (uint8_t)letter;
    memcpy(k + len, bytes, n);
    return len + n;
}

/* Indexes filter f of subscription si under the key type|letter|bytes. */
static int fanout_index_put(l2_fanout *fo, uint32_t si, uint32_t f, char type, char letter, const void *bytes, size_t n)
{
    sub *s = &fo->subs[si];
    if (fanout_grow((void **)&s->entries, &s->entries_cap, s->nentries + 1, sizeof *s->entries)) return -1;
    if (fo->nentries >= fo->nbuckets && rehash(fo)) return -1;
    entry *e = malloc(sizeof *e + n + 2);
    if (!e) return -1;
    e->len = (uint32_t)make_key(e->key, type, letter, bytes, n);
    e->hash = hash_bytes(e->key, e->len);
    e->sub = si;
    e->filter = f;
    e->next = fo->buckets[e->hash & (fo->nbuckets - 1)];
    fo->buckets[e->hash & (fo->nbuckets - 1)] = e;
    fo->nentries++;
    s->entries[s->nentries++] = e;
    return 0;
}

static void index_unlink(l2_fanout *fo, entry *e)
{
    entry **p = &fo->buckets[e->hash & (fo->nbuckets - 1)];
    while (*p && *p != e) p = &(*p)->next;
    if (*p) *p = e->next;
    fo->nentries--;
    free(e);
}

static void sub_clear(l2_fanout *fo, sub *s)
{
    for (size_t i = 0; i < s->nentries; i++) index_unlink(fo, s->entries[i]);
    for (size_t i = 0; i < s->nfilters; i++) l2_filter_free(&s->filters[i]);
    free(s->filters);
    free(s->entries);
    s->filters = NULL;
    s->entries = NULL;
    s->nfilters = s->nentries = s->entries_cap = 0;
}

/* Copies filter src into dst (its own memory), without its limit: a limit bounds the stored
 * events a REQ is sent first, never the live ones (`limit: 0` asks for live events only). */
static int copy_filter(l2_filter *dst, const l2_filter *src)
{
    char err[L2_ERRLEN];
    l2_buf json;
    l2_buf_init(&json);
    int rc = l2_filter_encode_json(src, src->limit, &json) ||
             l2_filter_parse_json(dst, json.data, json.len, &l2_unlimited_filter_limits, err);
    dst->have = src->have & ~(unsigned)L2_F_LIMIT;
    l2_buf_free(&json);
    return rc ? -1 : 0;
}

/* Indexes filter fi of subscription si under its most selective field. */
static int index_filter(l2_fanout *fo, uint32_t si, uint32_t fi)
{
    const l2_filter *f = &fo->subs[si].filters[fi];
    if (l2_filter_is_empty(f)) return 0; /* matches nothing: not indexed at all */
    if (f->have & L2_F_IDS) {
        for (uint32_t i = 0; i < f->nids; i++)
            if (fanout_index_put(fo, si, fi, K_ID, 0, f->ids[i], 32)) return -1;
        return 0;
    }
    if (f->have & L2_F_AUTHORS) {
        for (uint32_t i = 0; i < f->nauthors; i++)
            if (fanout_index_put(fo, si, fi, K_AUTHOR, 0, f->authors[i], 32)) return -1;
        return 0;
    }
    if (f->ntags) {
        const l2_tag_cond *c = &f->tags[0];
        for (uint32_t i = 0; i < c->n; i++) {
            const l2_str *v = &f->values[c->first + i];
            if (fanout_index_put(fo, si, fi, K_TAG, c->letter, v->p, v->n)) return -1;
        }
        return 0;
    }
    if (f->have & L2_F_KINDS) {
        for (uint32_t i = 0; i < f->nkinds; i++) {
            uint8_t k[2] = {(uint8_t)(f->kinds[i] >> 8), (uint8_t)f->kinds[i]};
            if (fanout_index_put(fo, si, fi, K_KIND, 0, k, 2)) return -1;
        }
        return 0;
    }
    if (fanout_grow((void **)&fo->everything, &fo->everything_cap, fo->neverything + 1, sizeof *fo->everything)) return -1;
    fo->everything[fo->neverything++] = si << 8 | fi;
    return 0;
}

static sub *fanout_find(l2_fanout *fo, int64_t key, uint32_t *si)
{
    for (size_t i = 0; i < fo->nsubs; i++) {
        if (fo->subs[i].live && fo->subs[i].key == key) {
            *si = (uint32_t)i;
            return &fo->subs[i];
        }
    }
    return NULL;
}

static void drop_everything(l2_fanout *fo, uint32_t si)
{
    size_t k = 0;
    for (size_t i = 0; i < fo->neverything; i++)
        if (fo->everything[i] >> 8 != si) fo->everything[k++] = fo->everything[i];
    fo->neverything = k;
}

void l2_fanout_remove(l2_fanout *fo, int64_t key)
{
    uint32_t si;
    sub *s = fanout_find(fo, key, &si);
    if (!s) return;
    sub_clear(fo, s);
    drop_everything(fo, si);
    s->live = 0;
    fo->live--;
    if (fanout_grow((void **)&fo->free_slots, &fo->free_cap, fo->nfree + 1, sizeof *fo->free_slots) == 0)
        fo->free_slots[fo->nfree++] = si;
}

int l2_fanout_add(l2_fanout *fo, int64_t key, const l2_filter *fs, size_t nf)
{
    if (nf > 255) return -1;
    l2_fanout_remove(fo, key);
    uint32_t si;
    if (fo->nfree) {
        si = fo->free_slots[--fo->nfree];
    } else {
        if (fanout_grow((void **)&fo->subs, &fo->cap, fo->nsubs + 1, sizeof *fo->subs)) return -1;
        si = (uint32_t)fo->nsubs++;
    }
    sub *s = &fo->subs[si];
    memset(s, 0, sizeof *s);
    s->key = key;
    s->live = 1;
    fo->live++;
    s->filters = calloc(nf ? nf : 1, sizeof *s->filters);
    int rc = s->filters ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < nf; i++) {
        l2_filter_init(&s->filters[i]);
        s->nfilters = i + 1;
        rc = copy_filter(&s->filters[i], &fs[i]);
    }
    for (size_t i = 0; rc == 0 && i < nf; i++) rc = index_filter(fo, si, (uint32_t)i);
    if (rc) l2_fanout_remove(fo, key);
    return rc;
}

size_t l2_fanout_count(const l2_fanout *fo)
{
    return fo->live;
}

/* Takes subscription si when its filter f matches ev and it was not taken by this call yet. */
static void fanout_consider(l2_fanout *fo, uint32_t si, uint32_t f, const l2_event *ev)
{
    sub *s = &fo->subs[si];
    if (!s->live || s->seen == fo->generation || !l2_filter_match(&s->filters[f], ev)) return;
    if (fanout_grow((void **)&fo->out, &fo->out_cap, fo->nout + 1, sizeof *fo->out)) return;
    s->seen = fo->generation;
    fo->out[fo->nout++] = s->key;
}

static void lookup(l2_fanout *fo, char type, char letter, const void *bytes, size_t n, const l2_event *ev)
{
    uint8_t small[80], *k = n + 2 <= sizeof small ? small : malloc(n + 2);
    if (!k) return;
    size_t len = make_key(k, type, letter, bytes, n);
    uint64_t h = hash_bytes(k, len);
    for (entry *e = fo->buckets[h & (fo->nbuckets - 1)]; e; e = e->next)
        if (e->hash == h && e->len == len && memcmp(e->key, k, len) == 0) fanout_consider(fo, e->sub, e->filter, ev);
    if (k != small) free(k);
}

const int64_t *l2_fanout_match(l2_fanout *fo, const l2_event *ev, size_t *n)
{
    fo->nout = 0;
    if (++fo->generation == 0) {
        /* the counter wrapped: no subscription may look taken already */
        for (size_t i = 0; i < fo->nsubs; i++) fo->subs[i].seen = 0;
        fo->generation = 1;
    }
    for (size_t i = 0; i < fo->neverything; i++) fanout_consider(fo, fo->everything[i] >> 8, fo->everything[i] & 0xff, ev);
    if (fo->nentries) {
        uint8_t kind[2] = {(uint8_t)(ev->kind >> 8), (uint8_t)ev->kind};
        lookup(fo, K_ID, 0, ev->id, 32, ev);
        lookup(fo, K_AUTHOR, 0, ev->pubkey, 32, ev);
        lookup(fo, K_KIND, 0, kind, 2, ev);
        for (uint32_t t = 0; t < ev->ntags; t++) {
            if (l2_tag_len(ev, t) < 2) continue;
            const l2_str *name = l2_tag_elem(ev, t, 0), *value = l2_tag_elem(ev, t, 1);
            if (name->n == 1 && name->p[0]) lookup(fo, K_TAG, name->p[0], value->p, value->n, ev);
        }
    }
    *n = fo->nout;
    return fo->out;
}
