/* store_read.c: reading: queries, counts and lookups in reused read transactions. Shared with the
 * other parts through store_int.h. */
#include "store_int.h"

void l2_hits_free(l2_hits *h)
{
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}

static int hits_push(l2_store *st, l2_hits *h, const l2_event *ev, uint64_t serial, const record *r)
{
    if (h->counting) {
        for (size_t i = 0; i < h->nearlier; i++)
            if (l2_filter_match(&h->earlier[i], ev)) return 0;
        h->n++;
        return 0;
    }
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        l2_hit *v = realloc(h->v, cap * sizeof *v);
        if (!v) return ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    l2_hit *x = &h->v[h->n++];
    x->created_at = ev->created_at;
    memcpy(x->id, ev->id, 32);
    x->serial = serial;
    x->stub = ev->is_stub;
    x->body = NULL;
    x->body_len = 0;
    x->read = st->reads;
    if (!x->stub && store_get_body(st->rtxn, st, r, &x->body, &x->body_len)) x->body = NULL; /* the record read holds it */
    return 0;
}

static int hit_order(const void *a, const void *b)
{
    const l2_hit *x = a, *y = b;
    if (x->created_at != y->created_at) return x->created_at > y->created_at ? -1 : 1;
    int c = memcmp(x->id, y->id, 32);
    if (c) return c;
    return (x->serial > y->serial) - (x->serial < y->serial);
}

/* sorts [from, n) by order and drops repeated serials (equal serials sort next to each other) */
static void sort_unique_hits(l2_hits *h, size_t from, int (*order)(const void *, const void *))
{
    size_t n = h->n - from, out = 0;
    if (n < 2) return; /* also: no qsort on an empty (NULL) array */
    l2_hit *v = h->v + from;
    qsort(v, n, sizeof *v, order);
    for (size_t i = 0; i < n; i++)
        if (out == 0 || v[out - 1].serial != v[i].serial) v[out++] = v[i];
    h->n = from + out;
}

/* One backward walk over an index range: prefix, created_at in [since, until], serial. */
typedef struct {
    MDB_cursor *cur;
    size_t plen;
    uint8_t prefix[1 + MAX_VALUE_KEY + 34];
    int64_t created_at; /* as the key says it (tail_created) */
    uint64_t serial;
} scan;

static int scan_load(scan *s, const MDB_val *k, int64_t since)
{
    const uint8_t *p = k->mv_data;
    if (k->mv_size != s->plen + TAIL || (s->plen && memcmp(p, s->prefix, s->plen) != 0)) return 0;
    s->created_at = tail_created(p + s->plen);
    s->serial = tail_serial(p + s->plen);
    return s->created_at >= since;
}

static int scan_start(scan *s, int64_t since, int64_t until)
{
    uint8_t key[sizeof s->prefix + TAIL];
    MDB_val k = {s->plen + TAIL, key}, v;
    memcpy(key, s->prefix, s->plen);
    put_tail(key + s->plen, until, MAX_SERIAL);
    int rc = mdb_cursor_get(s->cur, &k, &v, MDB_SET_RANGE);
    rc = mdb_cursor_get(s->cur, &k, &v, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
    return rc == 0 && scan_load(s, &k, since);
}

static int scan_next(scan *s, int64_t since)
{
    MDB_val k, v;
    return mdb_cursor_get(s->cur, &k, &v, MDB_PREV) == 0 && scan_load(s, &k, since);
}

static void heap_down(scan **h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l]->created_at > h[m]->created_at) m = l;
        if (r < n && h[r]->created_at > h[m]->created_at) m = r;
        if (m == i) return;
        scan *t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* A small open-addressing set of serials: one event reached through two tag values is one hit. */
typedef struct {
    uint64_t *slot;
    size_t cap, n;
} serial_set;

static int set_add(serial_set *s, uint64_t x) /* 1 added, 0 present, -1 no memory */
{
    if (2 * (s->n + 1) > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        uint64_t *slot = calloc(cap, sizeof *slot);
        if (!slot) return -1;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slot[i]) continue;
            size_t j = (s->slot[i] * 0x9E3779B97F4A7C15ull) & (cap - 1);
            while (slot[j]) j = (j + 1) & (cap - 1);
            slot[j] = s->slot[i];
        }
        free(s->slot);
        s->slot = slot;
        s->cap = cap;
    }
    size_t j = (x * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
    while (s->slot[j]) {
        if (s->slot[j] == x) return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slot[j] = x; /* serials start at 1, so 0 marks an empty slot */
    s->n++;
    return 1;
}

/* Appends serial (its record in r) to out when it matches f and has not expired. */
static int consider_record(l2_store *st, const l2_filter *f, uint64_t serial, const record *r, int64_t now,
                           l2_hits *out, int *matched)
{
    int64_t exp;
    int rc = store_decode_head(st, r, &st->ev);
    *matched = 0;
    if (rc || !l2_filter_match(f, &st->ev)) return rc;
    if (l2_expiration(&st->ev, &exp) && exp <= now) return 0;
    *matched = 1;
    return hits_push(st, out, &st->ev, serial, r);
}

/* Loads serial and appends it to out when it matches f and has not expired. */
static int consider(l2_store *st, const l2_filter *f, uint64_t serial, int64_t now, l2_hits *out, int *matched)
{
    record r;
    int rc = store_get_record(st->rtxn, st, serial, &r);
    *matched = 0;
    if (rc == MDB_NOTFOUND) return 0; /* a dangling index entry: never returned */
    return rc ? rc : consider_record(st, f, serial, &r, now, out, matched);
}

static int by_prefix(const void *a, const void *b)
{
    const scan *x = a, *y = b;
    if (x->plen != y->plen) return x->plen < y->plen ? -1 : 1;
    return memcmp(x->prefix, y->prefix, x->plen);
}

/* Picks the index for a filter (ids, then the tag with fewest values, pubkey+kind, pubkey, kind,
 * created_at) and fills one scan per prefix. Two values may share a prefix (see P in the layout):
 * their scans would walk the same keys twice, so each prefix is scanned once. */
static int plan(l2_store *st, const l2_filter *f, scan **scans, size_t *nscans, int *db)
{
    size_t n = 0, p = st->sh->key_prefix;
    scan *s = NULL;
    if (f->ntags) {
        const l2_tag_cond *best = &f->tags[0];
        for (uint32_t i = 1; i < f->ntags; i++)
            if (f->tags[i].n < best->n) best = &f->tags[i];
        *db = DB_TAG;
        if (!(s = calloc(best->n, sizeof *s))) return ENOMEM;
        for (uint32_t i = 0; i < best->n; i++, n++) {
            const l2_str *v = &f->values[best->first + i];
            s[n].prefix[0] = (uint8_t)best->letter;
            s[n].plen = 1 + value_key(s[n].prefix + 1, v->p, v->n, p);
        }
    } else if ((f->have & L2_F_AUTHORS) && (f->have & L2_F_KINDS) && (uint64_t)f->nauthors * f->nkinds <= 4096) {
        *db = DB_PUBKIND;
        if (!(s = calloc((size_t)f->nauthors * f->nkinds, sizeof *s))) return ENOMEM;
        for (uint32_t a = 0; a < f->nauthors; a++)
            for (uint32_t k = 0; k < f->nkinds; k++, n++) {
                memcpy(s[n].prefix, f->authors[a], p);
                put_be16(s[n].prefix + p, f->kinds[k]);
                s[n].plen = p + 2;
            }
    } else if (f->have & L2_F_AUTHORS) {
        *db = DB_PUBKEY;
        if (!(s = calloc(f->nauthors, sizeof *s))) return ENOMEM;
        for (uint32_t a = 0; a < f->nauthors; a++, n++) {
            memcpy(s[n].prefix, f->authors[a], p);
            s[n].plen = p;
        }
    } else if (f->have & L2_F_KINDS) {
        *db = DB_KIND;
        if (!(s = calloc(f->nkinds, sizeof *s))) return ENOMEM;
        for (uint32_t k = 0; k < f->nkinds; k++, n++) {
            put_be16(s[n].prefix, f->kinds[k]);
            s[n].plen = 2;
        }
    } else {
        *db = DB_CREATED;
        if (!(s = calloc(1, sizeof *s))) return ENOMEM;
        n = 1;
    }
    if (n > 1) {
        qsort(s, n, sizeof *s, by_prefix);
        size_t u = 1;
        for (size_t i = 1; i < n; i++)
            if (by_prefix(&s[u - 1], &s[i])) s[u++] = s[i];
        n = u;
    }
    *scans = s;
    *nscans = n;
    return 0;
}

/* Runs one filter; a scan stops where the limit is certain, or below `horizon` (when it is not
 * INT64_MIN) while the limit is not reached: such an answer cannot be proven complete, and the
 * caller asks elsewhere. */
static int run_filter(l2_store *st, const l2_filter *f, int64_t limit, int64_t now, int64_t horizon, l2_hits *out)
{
    int rc = 0, matched;
    size_t base = out->n;
    if (l2_filter_is_empty(f) || limit <= 0) return 0;
    if (f->have & L2_F_IDS) {
        for (uint32_t i = 0; i < f->nids && rc == 0; i++) {
            uint64_t serial;
            record r;
            rc = store_find_id(st->rtxn, st, f->ids[i], &serial, &r);
            if (rc == MDB_NOTFOUND) rc = 0;
            else if (rc == 0) rc = consider_record(st, f, serial, &r, now, out, &matched);
        }
    } else {
        scan *scans;
        size_t nscans, live = 0;
        int db;
        int64_t since = (f->have & L2_F_SINCE) ? f->since : 0;
        int64_t until = (f->have & L2_F_UNTIL) ? f->until : L2_MAX_CREATED_AT;
        if ((rc = plan(st, f, &scans, &nscans, &db))) return rc;
        scan **heap = malloc(nscans * sizeof *heap);
        serial_set seen = {NULL, 0, 0};
        if (!heap) rc = ENOMEM;
        for (size_t i = 0; i < nscans && rc == 0; i++) {
            if ((rc = mdb_cursor_open(st->rtxn, st->dbi[db], &scans[i].cur))) break;
            if (scan_start(&scans[i], since, until)) heap[live++] = &scans[i];
        }
        for (size_t i = live / 2; i-- > 0;) heap_down(heap, live, i);
        int64_t count = 0, stop_at = -1;
        while (rc == 0 && live) {
            scan *s = heap[0];
            /* `limit` found: keep only the ties of the last one (they are ordered by id below) */
            if (count >= limit && s->created_at < stop_at) break;
            if (count < limit && s->created_at < horizon) break;
            /* an event is under one key of a scan: only several scans of a tag's values meet */
            int fresh = f->ntags && nscans > 1 ? set_add(&seen, s->serial) : 1;
            if (fresh < 0) rc = ENOMEM;
            else if (fresh && (rc = consider(st, f, s->serial, now, out, &matched)) == 0 && matched &&
                     ++count == limit)
                stop_at = s->created_at;
            if (!scan_next(s, since)) heap[0] = heap[--live];
            heap_down(heap, live, 0);
        }
        for (size_t i = 0; i < nscans; i++)
            if (scans[i].cur) mdb_cursor_close(scans[i].cur);
        free(seen.slot);
        free(heap);
        free(scans);
    }
    if (rc) return rc;
    if (!out->counting) sort_unique_hits(out, base, hit_order);
    if ((int64_t)(out->n - base) > limit) out->n = base + (size_t)limit;
    return 0;
}

/* Can this store prove the answer to f complete (see l2_store_query)? */
static int complete(l2_store *st, const l2_filter *f, int64_t limit, int64_t horizon, const l2_hits *h, size_t base)
{
    if (horizon <= 0 || l2_filter_is_empty(f)) return 1;
    if (f->have & L2_F_IDS) {
        for (uint32_t i = 0; i < f->nids; i++) {
            uint64_t serial;
            if (store_lookup_id(st->rtxn, st, f->ids[i], &serial) != 0) return 0;
        }
        return 1;
    }
    if ((f->have & L2_F_SINCE) && f->since >= horizon) return 1;
    size_t n = h->n - base;
    return (int64_t)n >= limit && h->v[base + n - 1].created_at >= horizon;
}

int l2_store_query(l2_store *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                   uint8_t *incomplete, l2_hits *out, char *err)
{
    out->n = 0;
    if (store_read_begin(st, err)) return -1;
    if (horizon == L2_HORIZON_IN_META) {
        /* the caller's own horizon, read in this snapshot (one read for the two) */
        static const char key[] = "u:horizon"; /* store_meta_key("horizon") */
        MDB_val kv = {sizeof key - 1, (void *)key}, v;
        if (mdb_get(st->rtxn, st->dbi[DB_META], &kv, &v) || store_parse_int(v.mv_data, v.mv_size, &horizon))
            horizon = L2_MAX_CREATED_AT + 1; /* none yet: nothing is proven */
        int64_t floor = st->horizon_floor ? __atomic_load_n(st->horizon_floor, __ATOMIC_ACQUIRE) : 0;
        if (floor > horizon) horizon = floor;
    }
    for (size_t i = 0; i < nf; i++) {
        const l2_filter *f = &fs[i];
        int64_t limit = (f->have & L2_F_LIMIT) && f->limit < max_limit ? f->limit : max_limit;
        size_t base = out->n;
        int rc = run_filter(st, f, limit, now, incomplete && horizon > 0 ? horizon : INT64_MIN, out);
        if (rc) {
            l2_store_read_end(st);
            return rc == ENOMEM ? store_fail(err, "error: out of memory") : store_lmdb_fail(err, "query", rc);
        }
        if (incomplete) incomplete[i] = !complete(st, f, limit, horizon, out, base);
    }
    if (nf > 1) sort_unique_hits(out, 0, hit_order);
    /* a cache counts the bodies read from this answer as accesses (l2_store_body) */
    st->query_ms = st->cache && !st->never_evicts ? store_now_ms() : 0;
    return 0;
}

void l2_store_share_horizon(l2_store *st, const int64_t *floor)
{
    st->horizon_floor = floor;
}

void l2_store_set_backed(l2_store *st, int backed)
{
    st->backed = backed;
}

void l2_store_never_evicts(l2_store *st, int on)
{
    st->never_evicts = on;
}

int l2_store_count(l2_store *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err)
{
    /* counted as they are found, each filter's matches less those an earlier filter matched:
     * no memory per event, whatever the count */
    l2_hits hits = {.counting = 1, .earlier = fs};
    int rc = 0;
    if (store_read_begin(st, err)) return -1;
    for (size_t i = 0; i < nf && rc == 0; i++) {
        hits.nearlier = i;
        rc = run_filter(st, &fs[i], INT64_MAX, now, INT64_MIN, &hits);
    }
    l2_store_read_end(st);
    *count = hits.n;
    if (rc) return rc == ENOMEM ? store_fail(err, "error: out of memory") : store_lmdb_fail(err, "count", rc);
    return 0;
}

int l2_store_hit_body(l2_store *st, const l2_hit *h, const void **data, size_t *len)
{
    if (!h->body || !st->rtxn_live || h->read != st->reads) return l2_store_body(st, h->serial, data, len);
    *data = h->body;
    *len = h->body_len;
    if (st->query_ms) store_touch(st, h->serial, st->query_ms, 1);
    return 0;
}

int l2_store_body(l2_store *st, uint64_t serial, const void **data, size_t *len)
{
    record r;
    if (!st->rtxn_live) return -1;
    if (store_get_record(st->rtxn, st, serial, &r)) return st->cache && store_get_ghost(st->rtxn, st, serial, data, len) == 0 ? 0 : -1;
    if (store_get_body(st->rtxn, st, &r, data, len)) return -1;
    if (st->query_ms) store_touch(st, serial, st->query_ms, 1);
    return 0;
}

int l2_store_iter_begin(l2_store *st, char *err)
{
    if (store_read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_EVENTS], &st->iter);
    if (rc) {
        l2_store_read_end(st);
        return store_lmdb_fail(err, "export", rc);
    }
    return 0;
}

int l2_store_iter_next(l2_store *st, uint64_t *serial, const void **data, size_t *len)
{
    MDB_val k, v;
    while (st->iter && mdb_cursor_get(st->iter, &k, &v, MDB_NEXT) == 0) {
        record r;
        *serial = get_be64(k.mv_data);
        /* a cache's stubs are not whole events: skipped */
        if (store_get_record(st->rtxn, st, *serial, &r) == 0 && store_get_body(st->rtxn, st, &r, data, len) == 0) return 1;
    }
    return 0;
}

int l2_store_changes(l2_store *st, uint64_t after, size_t max, l2_change *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    *n = 0;
    if (store_read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_CHANGES], &c);
    if (rc) {
        l2_store_read_end(st);
        return store_lmdb_fail(err, "changes", rc);
    }
    put_be64(start, after + 1);
    k.mv_size = 8;
    k.mv_data = start;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && *n < max; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        const uint8_t *rec = v.mv_data;
        if (k.mv_size != 8 || (v.mv_size != 9 && v.mv_size != 41)) continue;
        l2_change *ch = &out[*n];
        ch->seq = get_be64(k.mv_data);
        ch->op = rec[0];
        ch->serial = get_be64(rec + 1);
        ch->have_id = 1;
        if (v.mv_size == 41) {
            memcpy(ch->id, rec + 9, 32);
        } else {
            record r;
            const void *ghost;
            size_t glen;
            /* the record holds the id; an event removed since then is reported by its later change
             * (and a cache may still hold its body) */
            if (store_get_record(st->rtxn, st, ch->serial, &r) == 0 && r.head_len >= 33) memcpy(ch->id, r.head + 1, 32);
            else if (st->cache && store_get_ghost(st->rtxn, st, ch->serial, &ghost, &glen) == 0 && glen >= 33)
                memcpy(ch->id, (const uint8_t *)ghost + 1, 32);
            else ch->have_id = 0;
        }
        (*n)++;
    }
    mdb_cursor_close(c);
    return 0;
}

uint64_t store_entries(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_stat s;
    return mdb_stat(txn, dbi, &s) ? 0 : s.ms_entries;
}

int l2_store_stats_get(l2_store *st, l2_store_stats *s, char *err)
{
    MDB_envinfo info;
    MDB_stat es;
    char file[4096];
    struct stat sb;
    memset(s, 0, sizeof *s);
    if (store_read_begin(st, err)) return -1;
    MDB_txn *t = st->rtxn;
    s->events = store_entries(t, st->dbi[DB_EVENTS]);
    s->index_entries = store_entries(t, st->dbi[DB_PUBKEY]) + store_entries(t, st->dbi[DB_KIND]) +
                       store_entries(t, st->dbi[DB_PUBKIND]) + store_entries(t, st->dbi[DB_TAG]) +
                       store_entries(t, st->dbi[DB_CREATED]) + store_entries(t, st->dbi[DB_EXPIRE]) + store_entries(t, st->dbi[DB_IDS]);
    s->tombstones = store_entries(t, st->dbi[DB_TOMB]) + store_entries(t, st->dbi[DB_ATOMB]);
    s->heads = store_entries(t, st->dbi[DB_REPLACE]);
    s->changes = store_entries(t, st->dbi[DB_CHANGES]);
    s->stubs = store_entries(t, st->dbi[DB_STUBS]);
    uint64_t holes = 0;
    if (st->cache) {
        /* a cache's bodies go into the lowest free slots, so the room evicted bodies left inside
         * the bodies' pages is reused by the next ones: it counts as free */
        MDB_stat bs;
        uint64_t body_bytes = 1;
        if (mdb_stat(t, st->dbi[DB_BODIES], &bs) == 0 && store_meta_get_u64(t, st->dbi[DB_META], "body_bytes", &body_bytes) == 0) {
            uint64_t room = (uint64_t)(bs.ms_leaf_pages + bs.ms_overflow_pages) * bs.ms_psize;
            uint64_t held = body_bytes - 1 + bs.ms_entries * 16; /* node headers and keys */
            holes = room > held ? room - held : 0;
        }
    }
    s->outbox = store_entries(t, st->dbi[DB_OUTBOX]);
    store_meta_get_u64(t, st->dbi[DB_META], "seq", &s->last_seq);
    s->last_seq--;
    /* pages on the freelist are reusable: "used" is what the data really occupies */
    uint64_t free_pages = 0;
    MDB_cursor *fc;
    MDB_val fk, fv;
    if (mdb_cursor_open(t, 0, &fc) == 0) {
        while (mdb_cursor_get(fc, &fk, &fv, MDB_NEXT) == 0)
            if (fv.mv_size >= sizeof(size_t)) free_pages += *(const size_t *)fv.mv_data;
        mdb_cursor_close(fc);
    }
    l2_store_read_end(st);
    mdb_env_info(st->env, &info);
    mdb_env_stat(st->env, &es);
    s->page_size = es.ms_psize;
    uint64_t pages = (uint64_t)info.me_last_pgno + 1;
    s->free_bytes = (free_pages < pages ? free_pages : pages) * es.ms_psize;
    s->used_bytes = pages * es.ms_psize - s->free_bytes;
    s->used_bytes -= holes < s->used_bytes ? holes : s->used_bytes;
    s->free_bytes += holes;
    s->map_bytes = info.me_mapsize;
    snprintf(file, sizeof file, "%s/data.mdb", st->path);
    if (stat(file, &sb) == 0) s->file_bytes = (uint64_t)sb.st_size;
    return 0;
}
