/* store_cache.c: the cache (L1) side: access statistics, eviction, its place in L2's change feed,
 * remembered answers. Shared with the other parts through store_int.h. */
#include "store_int.h"

static int flush_only(wtx *w, void *ud)
{
    (void)w;
    (void)ud;
    return 0; /* store_write_txn flushes the counted reads before calling this */
}

static void fill_candidate(l2_candidate *c, uint64_t serial, const l2_event *ev, size_t size, uint64_t last,
                           uint32_t hits)
{
    c->serial = serial;
    memcpy(c->id, ev->id, 32);
    memcpy(c->pubkey, ev->pubkey, 32);
    c->kind = ev->kind;
    c->created_at = ev->created_at;
    c->size = (uint32_t)size;
    c->last_ms = last;
    c->hits = hits;
}

int l2_store_candidates(l2_store *st, int by_created, size_t max, l2_candidate *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    *n = 0;
    if (st->ntouched && store_write_txn(st, flush_only, NULL, err)) return -1;
    if (store_read_begin(st, err)) return -1;
    if ((rc = mdb_cursor_open(st->rtxn, st->dbi[by_created ? DB_CREATED : DB_LRU], &c))) goto fail;
    while (*n < max && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        if (k.mv_size != (by_created ? TAIL : LRU_KEY)) continue;
        uint64_t serial = by_created ? tail_serial(k.mv_data) : get_be48((uint8_t *)k.mv_data + 6), last = 0;
        uint32_t hits = 0;
        record r;
        if (store_load_head(st, st->rtxn, serial, &st->ev, &r) != 0 || st->ev.is_stub) continue;
        store_get_access(st->rtxn, st, serial, &last, &hits);
        fill_candidate(&out[(*n)++], serial, &st->ev, st->cache ? r.body_len : r.head_len, last, hits);
    }
    mdb_cursor_close(c);
    l2_store_read_end(st);
    return 0;
fail:
    l2_store_read_end(st);
    return store_lmdb_fail(err, "candidates", rc);
}

typedef struct {
    const uint8_t (*ids)[32];
    size_t n;
    int delete_mode;
    uint64_t evicted, freed;
    int64_t horizon; /* past the newest event deleted */
} evict_args;

/* Raises the caller's meta value "horizon" to at least h in this transaction: readers never see
 * events gone from a cache with its horizon not yet past them. */
static int raise_horizon(wtx *w, int64_t h);

/* Whether an eviction may take a slot's head: in a backed cache whose outbox is empty, the store
 * behind refuses older versions; while writes wait in the outbox, L1 decides alone. */
static int drops_heads(wtx *w)
{
    return w->st->backed && store_entries(w->txn, w->st->dbi[DB_OUTBOX]) == 0;
}

static int evict_body(wtx *w, void *ud)
{
    evict_args *a = ud;
    l2_store *st = w->st;
    int rc;
    a->evicted = a->freed = 0;
    w->drop_heads = drops_heads(w);
    for (size_t i = 0; i < a->n; i++) {
        uint64_t serial;
        record r;
        rc = store_lookup_id(w->txn, st, a->ids[i], &serial);
        if (rc == MDB_NOTFOUND) continue;
        if (rc || (rc = store_get_record(w->txn, st, serial, &r))) return rc;
        if (!r.slot) continue; /* a stub already */
        uint32_t size = r.body_len;
        if (l2_event_decode_bin(&st->old, r.head, r.head_len, NULL)) return MDB_CORRUPTED;
        if (a->delete_mode) {
            if (st->old.created_at + 1 > a->horizon) a->horizon = st->old.created_at + 1;
            if ((rc = store_remove_event(w, serial, 0))) return rc;
        } else {
            /* the body goes; the record takes the stub form (encoded before the body's page is
             * written, since st->old points into it) with slot 0 */
            uint8_t stk[16];
            put_be64(stk, (uint64_t)st->old.created_at);
            put_be64(stk + 8, serial);
            if ((rc = store_drop_access(w, serial)) || (rc = store_put_cache_record(w, serial, &st->old, 0, size)) ||
                (rc = store_free_body(w, r.slot, size)) || (rc = store_put_empty(w, DB_STUBS, stk, 16)))
                return rc;
        }
        a->freed += size;
        a->evicted++;
    }
    return a->horizon > 0 ? raise_horizon(w, a->horizon) : 0;
}

int l2_store_evict(l2_store *st, const uint8_t (*ids)[32], size_t n, int delete_mode, uint64_t *evicted,
                   uint64_t *freed, char *err)
{
    evict_args a = {ids, n, delete_mode, 0, 0, 0};
    if (store_write_txn(st, evict_body, &a, err)) return -1;
    *evicted = a.evicted;
    *freed = a.freed;
    return 0;
}

typedef struct {
    size_t max;
    uint64_t dropped;
    int64_t horizon;
} drop_args;

static int drop_body(wtx *w, void *ud)
{
    drop_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = 0;
    a->dropped = 0;
    w->drop_heads = drops_heads(w);
    while (a->dropped < a->max) {
        if ((rc = mdb_cursor_open(w->txn, w->st->dbi[DB_STUBS], &c))) return rc;
        rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
        uint8_t key[16];
        if (rc == 0 && k.mv_size == 16) memcpy(key, k.mv_data, 16);
        mdb_cursor_close(c);
        if (rc == MDB_NOTFOUND) break; /* no stub left */
        if (rc) return rc;
        int64_t created_at = (int64_t)get_be64(key);
        rc = store_remove_event(w, get_be64(key + 8), 0);
        if (rc == MDB_NOTFOUND) rc = store_del_key(w, DB_STUBS, key, 16); /* a dangling entry */
        if (rc) return rc;
        if (created_at + 1 > a->horizon) a->horizon = created_at + 1;
        a->dropped++;
    }
    return a->dropped ? raise_horizon(w, a->horizon) : 0;
}

int l2_store_drop_stubs(l2_store *st, size_t max, uint64_t *dropped, int64_t *horizon, char *err)
{
    drop_args a = {max, 0, 0};
    if (store_write_txn(st, drop_body, &a, err)) return -1;
    *dropped = a.dropped;
    *horizon = a.horizon;
    return 0;
}

typedef struct {
    l2_event *const *evs;
    size_t n;
    uint64_t revived;
} revive_args;

static int revive_body(wtx *w, void *ud)
{
    revive_args *a = ud;
    l2_store *st = w->st;
    uint64_t ms = store_now_ms();
    a->revived = 0;
    for (size_t i = 0; i < a->n; i++) {
        const l2_event *ev = a->evs[i];
        uint64_t serial;
        uint8_t stk[16];
        record r;
        int rc = store_lookup_id(w->txn, st, ev->id, &serial);
        if (rc == MDB_NOTFOUND || !st->cache) continue;
        if (rc || (rc = store_get_record(w->txn, st, serial, &r))) return rc;
        if (r.slot) continue; /* whole already */
        st->body.len = 0;
        if (l2_event_encode_bin(ev, &st->body)) return ENOMEM;
        put_be64(stk, (uint64_t)ev->created_at);
        put_be64(stk + 8, serial);
        if ((rc = store_put_cached(w, serial, ev, st->body.data, st->body.len, 0)) ||
            (rc = store_del_key(w, DB_STUBS, stk, 16)) || (rc = store_set_access(w, serial, ms, 1)))
            return rc;
        a->revived++;
    }
    return 0;
}

int l2_store_revive(l2_store *st, l2_event *const *evs, size_t n, uint64_t *revived, char *err)
{
    revive_args a = {evs, n, 0};
    int rc = store_write_txn(st, revive_body, &a, err);
    if (rc) return rc;
    *revived = a.revived;
    return 0;
}

size_t store_meta_key(char *out, size_t cap, const char *key)
{
    int n = snprintf(out, cap, "u:%s", key);
    return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

int l2_store_meta_get(l2_store *st, const char *key, l2_buf *out, int *found, char *err)
{
    char k[256];
    MDB_val kv = {store_meta_key(k, sizeof k, key), k}, v;
    if (store_read_begin(st, err)) return -1;
    int rc = mdb_get(st->rtxn, st->dbi[DB_META], &kv, &v);
    *found = rc == 0;
    out->len = 0;
    if (rc == 0 && l2_buf_put(out, v.mv_data, v.mv_size)) rc = ENOMEM;
    l2_store_read_end(st);
    if (rc && rc != MDB_NOTFOUND) return store_lmdb_fail(err, "meta", rc);
    return 0;
}

int l2_store_meta_get_int(l2_store *st, const char *key, int64_t *value, int *found, char *err)
{
    l2_buf v;
    l2_buf_init(&v);
    int rc = l2_store_meta_get(st, key, &v, found, err);
    if (rc == 0 && *found && store_parse_int(v.data, v.len, value)) *found = 0;
    l2_buf_free(&v);
    return rc;
}

typedef struct {
    const char *key;
    const void *val;
    size_t n;
} meta_args;

static int meta_body(wtx *w, void *ud)
{
    meta_args *a = ud;
    char k[256];
    MDB_val kv = {store_meta_key(k, sizeof k, a->key), k}, v = {a->n, (void *)a->val};
    return mdb_put(w->txn, w->st->dbi[DB_META], &kv, &v, 0);
}

int l2_store_meta_set(l2_store *st, const char *key, const void *val, size_t n, char *err)
{
    meta_args a = {key, val, n};
    return store_write_txn(st, meta_body, &a, err);
}

int l2_store_meta_set_int(l2_store *st, const char *key, int64_t value, char *err)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%lld", (long long)value);
    return l2_store_meta_set(st, key, num, (size_t)n, err);
}

typedef struct {
    const char *key;
    int64_t value;
} meta_raise_args;

/* Reads the value and writes the larger of it and the new one, in one write transaction: LMDB
 * has one writer at a time, so processes raising a value together never lower it. */
static int meta_raise_body(wtx *w, void *ud)
{
    meta_raise_args *a = ud;
    char k[256], text[32];
    MDB_val kv = {store_meta_key(k, sizeof k, a->key), k}, v;
    int64_t stored;
    if (mdb_get(w->txn, w->st->dbi[DB_META], &kv, &v) == 0 && store_parse_int(v.mv_data, v.mv_size, &stored) == 0 &&
        stored >= a->value) {
        a->value = stored;
        return 0;
    }
    int n = snprintf(text, sizeof text, "%lld", (long long)a->value);
    v.mv_size = (size_t)n;
    v.mv_data = text;
    return mdb_put(w->txn, w->st->dbi[DB_META], &kv, &v, 0);
}

static int raise_horizon(wtx *w, int64_t h)
{
    meta_raise_args a = {"horizon", h};
    return meta_raise_body(w, &a);
}

int l2_store_meta_raise(l2_store *st, const char *key, int64_t value, int64_t *now_value, char *err)
{
    meta_raise_args a = {key, value};
    if (store_write_txn(st, meta_raise_body, &a, err)) return -1;
    *now_value = a.value;
    return 0;
}

/* ---- a cache's place in its L2's change feed ---- */

/* The record under FEED_KEY: pos(8), then up to AHEAD_MAX ranges first(8) last(8) past pos that
 * were applied out of order, ascending; a range's last has NONCOMMUTING set when its changes may
 * not commute with others (see l2_store_mirror_next). */
#define AHEAD_MAX 64
#define NONCOMMUTING (UINT64_C(1) << 63)

typedef struct {
    uint64_t pos;
    size_t n;
    uint64_t ahead[AHEAD_MAX][2];
} feed_pos;

static int feed_get(MDB_txn *txn, l2_store *st, feed_pos *f, int *known)
{
    MDB_val k = {strlen(FEED_KEY), (void *)FEED_KEY}, v;
    int rc = mdb_get(txn, st->dbi[DB_META], &k, &v);
    memset(f, 0, sizeof *f);
    *known = rc == 0;
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    const uint8_t *p = v.mv_data;
    if (v.mv_size < 8 || (v.mv_size - 8) % 16 || (v.mv_size - 8) / 16 > AHEAD_MAX) return MDB_CORRUPTED;
    f->pos = get_be64(p);
    f->n = (v.mv_size - 8) / 16;
    for (size_t i = 0; i < f->n; i++) {
        f->ahead[i][0] = get_be64(p + 8 + 16 * i);
        f->ahead[i][1] = get_be64(p + 16 + 16 * i);
    }
    return 0;
}

static int feed_put(wtx *w, const feed_pos *f)
{
    uint8_t b[8 + 16 * AHEAD_MAX];
    put_be64(b, f->pos);
    for (size_t i = 0; i < f->n; i++) {
        put_be64(b + 8 + 16 * i, f->ahead[i][0]);
        put_be64(b + 16 + 16 * i, f->ahead[i][1]);
    }
    MDB_val k = {strlen(FEED_KEY), (void *)FEED_KEY}, v = {8 + 16 * f->n, b};
    return mdb_put(w->txn, w->st->dbi[DB_META], &k, &v, 0);
}

int store_mirror_apply(wtx *w, int *result)
{
    l2_store *st = w->st;
    uint64_t first = st->mirror_first, last = st->mirror_last;
    feed_pos f;
    int known, rc = feed_get(w->txn, st, &f, &known);
    if (rc) return rc;
    if (!known) {
        *result = L2_MIRROR_REPLAY; /* no position yet: the backend's catch-up sets one */
        return 0;
    }
    if (first > last || last <= f.pos) {
        *result = L2_MIRROR_AT;
        return 0;
    }
    if (first <= f.pos + 1) {
        int commute = st->mirror_commutes;
        f.pos = last;
        size_t kept = 0;
        for (size_t i = 0; i < f.n; i++) {
            uint64_t a_first = f.ahead[i][0], a_last = f.ahead[i][1] & ~NONCOMMUTING;
            int a_commutes = !(f.ahead[i][1] & NONCOMMUTING);
            if (a_last <= f.pos) continue;
            if (commute && a_commutes && a_first <= f.pos + 1) {
                f.pos = a_last; /* ascending: the next may follow this one */
                continue;
            }
            if (!a_commutes) commute = 0;
            memcpy(f.ahead[kept++], f.ahead[i], sizeof f.ahead[i]);
        }
        f.n = kept;
        *result = f.n && !commute ? L2_MIRROR_REPLAY : f.n ? L2_MIRROR_AHEAD : L2_MIRROR_AT;
    } else if (f.n == AHEAD_MAX) {
        *result = L2_MIRROR_REPLAY; /* no room to keep it: a replay from the position covers it */
        return 0;
    } else {
        size_t at = f.n;
        while (at > 0 && f.ahead[at - 1][0] > first) at--;
        memmove(f.ahead[at + 1], f.ahead[at], (f.n - at) * sizeof f.ahead[0]);
        f.ahead[at][0] = first;
        f.ahead[at][1] = last | (st->mirror_commutes ? 0 : NONCOMMUTING);
        f.n++;
        *result = L2_MIRROR_AHEAD;
    }
    return feed_put(w, &f);
}

void l2_store_mirror_next(l2_store *st, uint64_t first, uint64_t last, int commutes)
{
    st->mirror_first = first;
    st->mirror_last = last;
    st->mirror_commutes = commutes;
    st->mirror_set = 1;
    st->mirror_result = L2_MIRROR_NONE;
}

int l2_store_mirror_result(l2_store *st)
{
    int r = st->mirror_result;
    st->mirror_result = L2_MIRROR_NONE;
    return r;
}

int l2_store_feed_pos(l2_store *st, uint64_t *pos, int *known, size_t *ahead, char *err)
{
    feed_pos f;
    if (store_read_begin(st, err)) return -1;
    int rc = feed_get(st->rtxn, st, &f, known);
    l2_store_read_end(st);
    if (rc) return store_lmdb_fail(err, "feed position", rc);
    *pos = f.pos;
    *ahead = f.n;
    return 0;
}

static int feed_reset_body(wtx *w, void *ud)
{
    feed_pos f = {*(const uint64_t *)ud, 0, {{0}}};
    return feed_put(w, &f);
}

int l2_store_feed_reset(l2_store *st, uint64_t pos, char *err)
{
    return store_write_txn(st, feed_reset_body, &pos, err);
}

static int nothing_body(wtx *w, void *ud)
{
    (void)w;
    (void)ud;
    return 0;
}

int l2_store_feed_advance(l2_store *st, uint64_t first, uint64_t last, int *result, char *err)
{
    l2_store_mirror_next(st, first, last, 0); /* a replay's changes: anything */
    if (store_write_txn(st, nothing_body, NULL, err)) return -1;
    *result = l2_store_mirror_result(st);
    return 0;
}

void l2_store_last_changes(const l2_store *st, uint64_t *first, uint64_t *last)
{
    *first = st->last_first;
    *last = st->last_last;
}

/* ---- remembered answers ---- */

/* An answer's events by id: an event kept by serial gives its record's id; one no longer in L1
 * (dropped, deleted) leaves no id to give, and the answer does not stand (MDB_NOTFOUND). */
static int answer_ids(l2_store *st, const l2_answer_view *a, l2_buf *ids)
{
    size_t start = ids->len;
    for (size_t i = 0; i < a->n; i++) {
        uint64_t serial;
        const uint8_t *id;
        record r;
        int whole = l2_answer_entry(a, i, &serial, &id), rc;
        if (whole < 0) return MDB_CORRUPTED;
        if (whole == 1) {
            if ((rc = store_get_record(st->rtxn, st, serial, &r))) {
                ids->len = start;
                return rc;
            }
            if (r.head_len < 33) return MDB_CORRUPTED;
            id = r.head + 1;
        }
        if (l2_buf_put(ids, id, 32)) return ENOMEM;
    }
    return 0;
}

int l2_store_answer_get(l2_store *st, const l2_answer_key *k, int64_t t, l2_buf *ids, int *found, uint64_t *seq,
                        char *err)
{
    l2_answer_view a;
    *found = 0;
    if (store_read_begin(st, err)) return -1;
    int rc = store_meta_get_u64(st->rtxn, st->dbi[DB_META], "seq", seq);
    if (rc == 0) rc = l2_answers_get(st->rtxn, st->dbi[DB_ANSWERS], k, t, &a);
    if (rc == 0) rc = answer_ids(st, &a, ids);
    *found = rc == 0;
    l2_store_read_end(st);
    if (rc == ENOMEM) return store_fail(err, "error: out of memory");
    if (rc && rc != MDB_NOTFOUND) return store_lmdb_fail(err, "reading a remembered answer", rc);
    return 0;
}

int l2_store_answer_serve(l2_store *st, const l2_answer_key *k, int64_t t, l2_row_fn row, void *ud, int *found,
                          uint64_t *rows, uint64_t *seq, char *err)
{
    l2_answer_view a;
    *found = 0;
    *rows = 0;
    if (store_read_begin(st, err)) return -1;
    int rc = store_meta_get_u64(st->rtxn, st->dbi[DB_META], "seq", seq);
    if (rc == 0) rc = l2_answers_get(st->rtxn, st->dbi[DB_ANSWERS], k, t, &a);
    *found = rc == 0;
    /* every entry an event L1 held, every one's body still here (read once: the read stays open
     * while they are given); else the caller serves it by id */
    typedef struct {
        uint64_t serial;
        l2_row row;
    } held;
    held *v = rc == 0 ? calloc(a.n ? a.n : 1, sizeof *v) : NULL;
    if (rc == 0 && !v) rc = ENOMEM;
    int whole = rc == 0;
    for (size_t i = 0; whole && i < a.n; i++) {
        const uint8_t *id;
        record r;
        whole = l2_answer_entry(&a, i, &v[i].serial, &id) == 1 && store_get_record(st->rtxn, st, v[i].serial, &r) == 0 &&
                r.head_len >= 33 && store_get_body(st->rtxn, st, &r, &v[i].row.bin, &v[i].row.bin_len) == 0;
        if (whole) memcpy(v[i].row.id, r.head + 1, 32);
    }
    uint64_t ms = whole && st->cache && !st->never_evicts ? store_now_ms() : 0;
    for (size_t i = 0; whole && i < a.n; i++) {
        if (ms) store_touch(st, v[i].serial, ms, 1);
        ++*rows;
        if (row(ud, &v[i].row)) break;
    }
    free(v);
    l2_store_read_end(st);
    if (rc == ENOMEM) return store_fail(err, "error: out of memory");
    if (rc && rc != MDB_NOTFOUND) return store_lmdb_fail(err, "reading a remembered answer", rc);
    return whole ? 1 : 0;
}

typedef struct {
    save_args save;
    const l2_answer_key *k;
    const uint8_t (*ids)[32];
    size_t n;
    int64_t expires;
    uint64_t max_ids, seq;
    int kept;
} fill_args;

/* Did a change from seq on save an event the filter may match (or one no longer there to say)? */
static int touched_since(wtx *w, const l2_filter *f, uint64_t seq, int *touched)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t start[8];
    uint64_t seen = 0;
    *touched = 0;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_CHANGES], &c);
    if (rc) return rc;
    put_be64(start, seq);
    k.mv_size = 8;
    k.mv_data = start;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0 && !*touched;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        seen++;
        if (v.mv_size < 9 || ((const uint8_t *)v.mv_data)[0] != L2_CHANGE_SAVED) continue;
        record r;
        int lrc = store_load_head(w->st, w->txn, get_be64((const uint8_t *)v.mv_data + 1), &w->st->old, &r);
        if (lrc && lrc != MDB_NOTFOUND) {
            rc = lrc;
            break;
        }
        *touched = lrc == MDB_NOTFOUND || l2_filter_match(f, &w->st->old);
    }
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return rc;
    /* changes pruned since seq cannot be read: the answer may have missed them */
    if (!*touched && seen != w->seq - seq) *touched = 1;
    return 0;
}

static int fill_body(wtx *w, void *ud)
{
    fill_args *a = ud;
    int rc = a->save.n ? store_save_body(w, &a->save) : 0;
    a->kept = 0;
    if (rc || !a->k) return rc;
    l2_filter f;
    l2_filter_init(&f);
    int touched = 1;
    rc = l2_answer_filter(a->k, &f) ? MDB_INCOMPATIBLE : touched_since(w, &f, a->seq, &touched);
    l2_filter_free(&f);
    a->kept = rc == 0 && !touched;
    if (!a->kept) return rc;
    /* the events L1 holds (this fill's among them) are kept by serial */
    uint64_t small[64], *serials = a->n <= 64 ? small : malloc(a->n * sizeof *serials);
    if (!serials) return ENOMEM;
    for (size_t i = 0; rc == 0 && i < a->n; i++) {
        rc = store_lookup_id(w->txn, w->st, a->ids[i], &serials[i]);
        if (rc == MDB_NOTFOUND) serials[i] = 0, rc = 0;
    }
    if (rc == 0) rc = l2_answers_put(w->txn, w->st->dbi[DB_ANSWERS], a->k, serials, a->ids, a->n, a->expires, a->max_ids);
    if (serials != small) free(serials);
    return rc;
}

typedef struct {
    l2_fill *v;
    size_t n;
    void (*first)(void *ud);
    void *ud;
} fills_args;

static int fills_body(wtx *w, void *ud)
{
    fills_args *a = ud;
    int rc = 0;
    if (a->first) a->first(a->ud);
    for (size_t i = 0; rc == 0 && i < a->n; i++) {
        l2_fill *f = &a->v[i];
        if (f->revive) {
            revive_args r = {f->evs, f->n, 0};
            rc = revive_body(w, &r);
            continue;
        }
        fill_args fa = {{f->evs, f->n, f->now, L2_SAVE_FILL, f->res}, f->k, f->ids, f->nids, f->expires, f->max_ids,
                        f->seq, 0};
        rc = fill_body(w, &fa);
        f->kept = fa.kept;
    }
    return rc;
}

int l2_store_fills(l2_store *st, l2_fill *fills, size_t n, void (*first)(void *ud), void *ud, char *err)
{
    fills_args a = {fills, n, first, ud};
    return store_write_txn(st, fills_body, &a, err);
}

static int answer_drop_body(wtx *w, void *ud)
{
    return l2_answers_drop(w->txn, w->st->dbi[DB_ANSWERS], ud);
}

int l2_store_answer_drop(l2_store *st, const l2_answer_key *k, char *err)
{
    return store_write_txn(st, answer_drop_body, (void *)k, err);
}

static int answers_clear_body(wtx *w, void *ud)
{
    (void)ud;
    return mdb_drop(w->txn, w->st->dbi[DB_ANSWERS], 0);
}

int l2_store_answers_clear(l2_store *st, char *err)
{
    return store_write_txn(st, answers_clear_body, NULL, err);
}

int l2_store_outbox_list(l2_store *st, size_t max, l2_outbox_item *out, size_t *n, char *err)
{
    MDB_cursor *c;
    MDB_val k, v;
    *n = 0;
    if (store_read_begin(st, err)) return -1;
    int rc = mdb_cursor_open(st->rtxn, st->dbi[DB_OUTBOX], &c);
    if (rc) {
        l2_store_read_end(st);
        return store_lmdb_fail(err, "outbox", rc);
    }
    while (*n < max && mdb_cursor_get(c, &k, &v, MDB_NEXT) == 0) {
        if (k.mv_size != 8) continue;
        out[*n].seq = get_be64(k.mv_data);
        out[*n].data = v.mv_data;
        out[*n].len = v.mv_size;
        (*n)++;
    }
    mdb_cursor_close(c);
    return 0;
}

static int ack_body(wtx *w, void *ud)
{
    uint8_t k[8];
    put_be64(k, *(uint64_t *)ud);
    return store_del_key(w, DB_OUTBOX, k, 8);
}

int l2_store_outbox_ack(l2_store *st, uint64_t seq, char *err)
{
    return store_write_txn(st, ack_body, &seq, err);
}

typedef struct {
    uint64_t keep, pruned;
} prune_args;

static int prune_body(wtx *w, void *ud)
{
    prune_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t n = store_entries(w->txn, w->st->dbi[DB_CHANGES]);
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_CHANGES], &c);
    a->pruned = 0;
    if (rc) return rc;
    while (n > a->keep && (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        n--;
        a->pruned++;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int l2_store_prune_changes(l2_store *st, uint64_t keep, uint64_t *pruned, char *err)
{
    prune_args a = {keep, 0};
    if (store_write_txn(st, prune_body, &a, err)) return -1;
    *pruned = a.pruned;
    return 0;
}
