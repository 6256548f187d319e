/* store_write.c: writing: saves, deletions, the change feed and the outbox, in write transactions.
 * Shared with the other parts through store_int.h. */
#include "store_int.h"

int store_meta_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out)
{
    MDB_val k = {strlen(name), (void *)name}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    if (rc == MDB_NOTFOUND) {
        *out = 1;
        return 0;
    }
    if (rc) return rc;
    *out = v.mv_size == 8 ? get_be64(v.mv_data) : 1;
    return 0;
}

int store_meta_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t val)
{
    uint8_t b[8];
    put_be64(b, val);
    MDB_val k = {strlen(name), (void *)name}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

int store_put_empty(wtx *w, int db, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key}, v = {0, ""};
    return mdb_put(w->txn, w->st->dbi[db], &k, &v, 0);
}

int store_del_key(wtx *w, int db, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key};
    int rc = mdb_del(w->txn, w->st->dbi[db], &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int store_for_each_index(size_t p, const l2_event *ev, uint64_t serial, index_fn fn, void *ud)
{
    uint8_t k[1 + MAX_VALUE_KEY + TAIL], tail[TAIL];
    int rc;
    int64_t exp;
    put_tail(tail, ev->created_at, serial);
    memcpy(k, ev->pubkey, p);
    memcpy(k + p, tail, TAIL);
    if ((rc = fn(ud, DB_PUBKEY, k, p + TAIL))) return rc;
    put_be16(k + p, ev->kind);
    memcpy(k + p + 2, tail, TAIL);
    if ((rc = fn(ud, DB_PUBKIND, k, p + 2 + TAIL))) return rc;
    put_be16(k, ev->kind);
    memcpy(k + 2, tail, TAIL);
    if ((rc = fn(ud, DB_KIND, k, 2 + TAIL))) return rc;
    if ((rc = fn(ud, DB_CREATED, tail, TAIL))) return rc;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        const l2_str *name = l2_tag_elem(ev, t, 0);
        if (l2_tag_len(ev, t) < 2 || name->n != 1) continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        k[0] = (uint8_t)name->p[0];
        size_t n = 1 + value_key(k + 1, v->p, v->n, p);
        memcpy(k + n, tail, TAIL);
        if ((rc = fn(ud, DB_TAG, k, n + TAIL))) return rc;
    }
    if (l2_expiration(ev, &exp)) {
        put_be64(k, (uint64_t)exp);
        put_be64(k + 8, serial);
        if ((rc = fn(ud, DB_EXPIRE, k, 16))) return rc;
    }
    return 0;
}

static int index_put(void *ud, int db, const uint8_t *key, size_t n)
{
    return store_put_empty(ud, db, key, n);
}

static int index_del(void *ud, int db, const uint8_t *key, size_t n)
{
    return store_del_key(ud, db, key, n);
}

/* A saved event's id is in its body; a removed one's body is gone, so its record keeps the id. */
static int add_change(wtx *w, int op, const uint8_t id[32], uint64_t serial)
{
    if (w->quiet) return 0;
    uint8_t k[8], rec[41];
    put_be64(k, w->seq++);
    rec[0] = (uint8_t)op;
    put_be64(rec + 1, serial);
    memcpy(rec + 9, id, 32);
    MDB_val kv = {8, k}, vv = {op == L2_CHANGE_SAVED ? 9 : 41, rec};
    return mdb_put(w->txn, w->st->dbi[DB_CHANGES], &kv, &vv, MDB_APPEND);
}

/* mdb_get, or in the store's read transaction MDB_SET on its cursor (which == 0: events, 1: bodies) */
static int get_value(MDB_txn *txn, l2_store *st, int which, MDB_val *kv, MDB_val *v)
{
    MDB_cursor *c = txn == st->rtxn && st->rtxn_live ? store_read_cursor(st, which) : NULL;
    return c ? mdb_cursor_get(c, kv, v, MDB_SET) : mdb_get(txn, st->dbi[which ? DB_BODIES : DB_EVENTS], kv, v);
}

static int get_cache_body(MDB_txn *txn, l2_store *st, uint32_t slot, const void **data, size_t *len)
{
    uint8_t k[4];
    put_be32(k, slot);
    MDB_val kv = {4, k}, v;
    int rc = get_value(txn, st, 1, &kv, &v);
    if (rc) return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
    *data = v.mv_data;
    *len = v.mv_size;
    return 0;
}

int store_get_record(MDB_txn *txn, l2_store *st, uint64_t serial, record *r)
{
    uint8_t k[8];
    put_be64(k, serial);
    MDB_val kv = {8, k}, v;
    int rc = get_value(txn, st, 0, &kv, &v);
    if (rc) return rc;
    r->head = v.mv_data;
    r->head_len = v.mv_size;
    r->slot = r->body_len = 0;
    r->head_is_body = 0;
    if (st->cache) {
        if (v.mv_size < 8) return MDB_CORRUPTED;
        r->slot = get_be32(v.mv_data);
        r->body_len = get_be32((uint8_t *)v.mv_data + 4);
        if (r->slot == INLINE_SLOT) {
            if (v.mv_size != CACHE_RECORD + (size_t)r->body_len) return MDB_CORRUPTED;
            r->head = (const uint8_t *)v.mv_data + CACHE_RECORD;
            r->head_len = r->body_len;
            r->head_is_body = 1;
            return 0;
        }
        if (r->slot) {
            /* one copy: the body is the head */
            const void *body;
            if (v.mv_size != CACHE_RECORD || (rc = get_cache_body(txn, st, r->slot, &body, &r->head_len)))
                return MDB_CORRUPTED;
            r->head = body;
            r->head_is_body = 1;
            return 0;
        }
        if (v.mv_size < 8 + 65 + 4) return MDB_CORRUPTED; /* slot, length, a stub's head and more */
        r->head += 8;
        r->head_len -= 8;
    }
    return 0;
}

int store_get_body(MDB_txn *txn, l2_store *st, const record *r, const void **data, size_t *len)
{
    if (!st->cache || r->head_is_body) {
        *data = r->head;
        *len = r->head_len;
        return 0;
    }
    if (!r->slot) return MDB_NOTFOUND;
    return get_cache_body(txn, st, r->slot, data, len);
}

int store_decode_head(l2_store *st, const record *r, l2_event *ev)
{
    if (l2_event_decode_bin(ev, r->head, r->head_len, NULL)) return MDB_CORRUPTED;
    if (st->cache) ev->is_stub = r->slot == 0;
    return 0;
}

int store_load_head(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, record *r)
{
    int rc = store_get_record(txn, st, serial, r);
    return rc ? rc : store_decode_head(st, r, ev);
}

int store_load(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, int copy)
{
    record r;
    const void *data;
    size_t len;
    int rc = store_get_record(txn, st, serial, &r);
    if (rc) return rc;
    if (store_get_body(txn, st, &r, &data, &len) != 0) {
        data = r.head; /* a cache's stub */
        len = r.head_len;
    }
    if (copy) {
        st->body.len = 0;
        if (l2_buf_put(&st->body, data, len)) return ENOMEM;
        data = st->body.data;
    }
    if (l2_event_decode_bin(ev, data, len, NULL)) return MDB_CORRUPTED;
    if (st->cache) ev->is_stub = r.slot == 0;
    return 0;
}

/* Whether the event at `serial` has this id (its record in *r): 1, 0, or an LMDB error (negative
 * is never one). */
static int id_at(MDB_txn *txn, l2_store *st, const MDB_val *v, const uint8_t id[32], uint64_t *serial, record *r)
{
    if (v->mv_size != 8) return MDB_CORRUPTED;
    *serial = get_be64(v->mv_data);
    int rc = store_get_record(txn, st, *serial, r);
    if (rc == MDB_NOTFOUND) return 0; /* check() reports it */
    if (rc) return rc;
    return r->head_len >= 33 && memcmp(r->head + 1, id, 32) == 0 ? 1 : 0;
}

int store_find_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial, record *r)
{
    MDB_val k = {st->sh->key_prefix, (void *)id}, v;
    MDB_cursor *c;
    int rc = mdb_get(txn, st->dbi[DB_IDS], &k, &v);
    if (rc || (rc = id_at(txn, st, &v, id, serial, r)) == 1) return rc == 1 ? 0 : rc;
    if (rc || (rc = mdb_cursor_open(txn, st->dbi[DB_IDS], &c))) return rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT_DUP))
        if ((rc = id_at(txn, st, &v, id, serial, r)) != 0) break;
    mdb_cursor_close(c);
    return rc == 1 ? 0 : rc;
}

int store_lookup_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial)
{
    record r;
    return store_find_id(txn, st, id, serial, &r);
}

int store_get_head(MDB_txn *txn, l2_store *st, const uint8_t *key, size_t n, head_rec *h)
{
    MDB_val k = {n, (void *)key}, v;
    int rc = mdb_get(txn, st->dbi[DB_REPLACE], &k, &v);
    if (rc) return rc;
    if (v.mv_size != 48) return MDB_CORRUPTED;
    const uint8_t *p = v.mv_data;
    h->serial = get_be64(p);
    h->created_at = (int64_t)get_be64(p + 8);
    memcpy(h->id, p + 16, 32);
    return 0;
}

static int put_head(wtx *w, const uint8_t *key, size_t n, uint64_t serial, const l2_event *ev)
{
    uint8_t v[48];
    put_be64(v, serial);
    put_be64(v + 8, (uint64_t)ev->created_at);
    memcpy(v + 16, ev->id, 32);
    MDB_val kv = {n, (void *)key}, vv = {48, v};
    return mdb_put(w->txn, w->st->dbi[DB_REPLACE], &kv, &vv, 0);
}

static int put_body(wtx *w, const void *body, size_t n, uint32_t *slot)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[4];
    int fresh = 0; /* a slot past every other: appended */
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_FREESLOTS], &c);
    if (rc) return rc;
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    if (rc == 0 && k.mv_size == 4) {
        *slot = get_be32(k.mv_data);
        rc = mdb_cursor_del(c, 0);
    } else if (rc == 0) {
        rc = MDB_CORRUPTED;
    } else if (rc == MDB_NOTFOUND) {
        /* INLINE_SLOT is no slot */
        if (w->next_slot >= INLINE_SLOT) rc = MDB_MAP_FULL;
        else *slot = (uint32_t)w->next_slot++, rc = 0, fresh = 1;
    }
    mdb_cursor_close(c);
    if (rc) return rc;
    put_be32(key, *slot);
    MDB_val bk = {4, key}, bv = {n, (void *)body};
    w->body_bytes += n;
    return mdb_put(w->txn, w->st->dbi[DB_BODIES], &bk, &bv, fresh ? MDB_APPEND : 0);
}

int store_free_body(wtx *w, uint32_t slot, uint32_t len)
{
    uint8_t key[4];
    int rc;
    if (slot == INLINE_SLOT) return 0; /* it goes with its record */
    put_be32(key, slot);
    if ((rc = store_del_key(w, DB_BODIES, key, 4))) return rc;
    w->body_bytes -= w->body_bytes >= len ? len : w->body_bytes;
    return store_put_empty(w, DB_FREESLOTS, key, 4);
}

/* A cache's events record: slot | body length, then the access statistics (`last` ms, no hits)
 * with a body, else the stub form of ev */
static int put_record(wtx *w, uint64_t serial, const l2_event *ev, uint32_t slot, uint32_t body_len, uint64_t last,
                      unsigned flags)
{
    l2_store *st = w->st;
    uint8_t sk[8];
    st->key.len = 0;
    if (l2_buf_reserve(&st->key, CACHE_RECORD)) return ENOMEM;
    memset(st->key.data, 0, CACHE_RECORD);
    put_be32((uint8_t *)st->key.data, slot);
    put_be32((uint8_t *)st->key.data + 4, body_len);
    if (slot) put_be64((uint8_t *)st->key.data + 8, last);
    st->key.len = slot ? CACHE_RECORD : 8;
    if (!slot && l2_event_encode_stub(ev, &st->key)) return ENOMEM;
    put_be64(sk, serial);
    MDB_val k = {8, sk}, v = {st->key.len, st->key.data};
    return mdb_put(w->txn, st->dbi[DB_EVENTS], &k, &v, flags);
}

int store_put_cache_record(wtx *w, uint64_t serial, const l2_event *ev, uint32_t slot, uint32_t body_len)
{
    return put_record(w, serial, ev, slot, body_len, 0, 0);
}

int store_put_cached(wtx *w, uint64_t serial, const l2_event *ev, const void *body, size_t n, uint64_t saved_ms)
{
    uint32_t slot;
    int rc;
    /* a save's serial is the last: appended, a page fills whole (a put at the end splits it in half) */
    unsigned append = saved_ms ? MDB_APPEND : 0;
    if (n > UINT32_MAX) return EOVERFLOW;
    if (!w->st->never_evicts) {
        if ((rc = put_body(w, body, n, &slot)) || (rc = put_record(w, serial, ev, slot, (uint32_t)n, saved_ms, append)))
            return rc;
    } else {
        uint8_t sk[8];
        put_be64(sk, serial);
        MDB_val k = {8, sk}, v = {CACHE_RECORD + n, NULL};
        if ((rc = mdb_put(w->txn, w->st->dbi[DB_EVENTS], &k, &v, MDB_RESERVE | append))) return rc;
        memset(v.mv_data, 0, CACHE_RECORD);
        put_be32(v.mv_data, INLINE_SLOT);
        put_be32((uint8_t *)v.mv_data + 4, (uint32_t)n);
        put_be64((uint8_t *)v.mv_data + 8, saved_ms);
        memcpy((uint8_t *)v.mv_data + CACHE_RECORD, body, n);
        /* body_bytes counts what the bodies' tree holds (l2_store_stats: its holes) */
    }
    if (!saved_ms) return 0;
    /* stamped with its save, as store_set_access would, without reading back what was just written */
    uint8_t lk[LRU_KEY];
    lru_key(lk, saved_ms, serial);
    return store_put_empty(w, DB_LRU, lk, LRU_KEY);
}

/* A cache keeps, for a while, the body of an event a save replaced or a deletion removed: its
 * save may still be news to a tail of the change feed (live subscribers get every accepted event,
 * even one replaced a moment later), which reads bodies by serial. Tails read within milliseconds,
 * so only an event saved (or read) within GHOST_MS leaves a ghost, a ghost lives GHOST_MS (it
 * goes with the next write after that), and there are at most ghost_max (the oldest go first):
 * a size-limited L1 cannot fill with what eviction does not see. A cache fill is not news, and an
 * eviction not a removal: neither leaves a ghost. Value: removal time in ms (8) | body. */
#define GHOST_MS 2000
#define GHOST_MAX 512

/* At most GHOST_MAX ghosts, and about a sixty-fourth of the map at 1 KiB each: a ghost takes a
 * body's bytes, and at a busy relay's pace the cap, not GHOST_MS, bounds how many there are. */
static uint64_t ghost_max(const l2_store *st)
{
    uint64_t n = st->sh->map_size / 64 / 1024;
    return n < 64 ? 64 : n > GHOST_MAX ? GHOST_MAX : n;
}

/* Drops the ghosts past their time, and the oldest while there are more than `keep`. */
static int prune_ghosts(wtx *w, uint64_t keep)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t n = store_entries(w->txn, w->st->dbi[DB_GHOSTS]), now = store_now_ms();
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_GHOSTS], &c);
    if (rc) return rc;
    while (n && (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0 &&
           (n > keep || v.mv_size < 8 || get_be64(v.mv_data) + GHOST_MS < now)) {
        if ((rc = mdb_cursor_del(c, 0))) break;
        n--;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int keep_ghost(wtx *w, uint64_t serial, const record *r)
{
    l2_store *st = w->st;
    const void *data;
    size_t len;
    uint64_t last;
    uint32_t hits;
    int rc = store_get_access(w->txn, st, serial, &last, &hits);
    if (rc == MDB_NOTFOUND || (rc == 0 && last + GHOST_MS < store_now_ms())) return 0; /* its save is old news */
    if (rc || (rc = prune_ghosts(w, ghost_max(st) - 1)) || (rc = store_get_body(w->txn, st, r, &data, &len))) return rc;
    /* the body's page may move once the ghosts' tree is written */
    uint8_t *ghost = malloc(8 + len);
    if (!ghost) return ENOMEM;
    put_be64(ghost, store_now_ms());
    memcpy(ghost + 8, data, len);
    uint8_t sk[8];
    put_be64(sk, serial);
    MDB_val gk = {8, sk}, gv = {8 + len, ghost};
    rc = mdb_put(w->txn, st->dbi[DB_GHOSTS], &gk, &gv, 0);
    free(ghost);
    return rc;
}

int store_get_ghost(MDB_txn *txn, l2_store *st, uint64_t serial, const void **data, size_t *len)
{
    uint8_t sk[8];
    put_be64(sk, serial);
    MDB_val k = {8, sk}, v;
    int rc = mdb_get(txn, st->dbi[DB_GHOSTS], &k, &v);
    if (rc) return rc;
    if (v.mv_size < 8) return MDB_CORRUPTED;
    *data = (const uint8_t *)v.mv_data + 8;
    *len = v.mv_size - 8;
    return 0;
}

int store_remove_event(wtx *w, uint64_t serial, int op)
{
    l2_store *st = w->st;
    l2_event *ev = &st->old;
    uint8_t k[MAX_ADDR_KEY], sk[8];
    record r;
    int rc = store_get_record(w->txn, st, serial, &r);
    if (rc || (rc = store_load(st, w->txn, serial, ev, 1))) return rc;
    if (op && !w->quiet && r.slot && (rc = keep_ghost(w, serial, &r))) return rc;
    if (r.slot && (rc = store_free_body(w, r.slot, r.body_len))) return rc;
    if ((rc = store_for_each_index(st->sh->key_prefix, ev, serial, index_del, w))) return rc;
    put_be64(sk, serial);
    MDB_val ik = {st->sh->key_prefix, ev->id}, iv = {8, sk};
    if ((rc = mdb_del(w->txn, st->dbi[DB_IDS], &ik, &iv)) && rc != MDB_NOTFOUND) return rc;
    if ((op || w->drop_heads) && (l2_kind_replaceable(ev->kind) || l2_kind_addressable(ev->kind))) {
        /* a cache eviction (op 0) keeps the head record where L1 alone refuses older versions */
        l2_str d = l2_d_value(ev);
        size_t n = addr_key(k, ev->pubkey, ev->kind, d.p, d.n);
        head_rec h;
        if (store_get_head(w->txn, st, k, n, &h) == 0 && h.serial == serial && (rc = store_del_key(w, DB_REPLACE, k, n)))
            return rc;
    }
    if (st->cache) {
        uint8_t stk[16];
        put_be64(stk, (uint64_t)ev->created_at);
        put_be64(stk + 8, serial);
        if ((rc = store_drop_access(w, serial)) || (rc = store_del_key(w, DB_STUBS, stk, 16))) return rc;
    }
    if ((rc = store_del_key(w, DB_EVENTS, sk, 8))) return rc;
    return op ? add_change(w, op, ev->id, serial) : 0;
}

uint64_t store_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The events record of a cached event with its body (its access statistics in it); MDB_NOTFOUND
 * for a stub, an absent event, or a store that is not a cache. */
static int get_cached(MDB_txn *txn, l2_store *st, uint64_t serial, MDB_val *v)
{
    uint8_t k[8];
    put_be64(k, serial);
    MDB_val kv = {8, k};
    int rc = st->cache ? mdb_get(txn, st->dbi[DB_EVENTS], &kv, v) : MDB_NOTFOUND;
    if (rc) return rc;
    if (v->mv_size < 8) return MDB_CORRUPTED;
    uint32_t slot = get_be32(v->mv_data);
    if (!slot) return MDB_NOTFOUND;
    if (slot == INLINE_SLOT)
        return v->mv_size == CACHE_RECORD + (size_t)get_be32((uint8_t *)v->mv_data + 4) ? 0 : MDB_CORRUPTED;
    return v->mv_size == CACHE_RECORD ? 0 : MDB_CORRUPTED;
}

int store_get_access(MDB_txn *txn, l2_store *st, uint64_t serial, uint64_t *last, uint32_t *hits)
{
    MDB_val v;
    int rc = get_cached(txn, st, serial, &v);
    if (rc) return rc;
    *last = get_be64((const uint8_t *)v.mv_data + 8);
    *hits = get_be32((const uint8_t *)v.mv_data + 16);
    return 0;
}

int store_drop_access(wtx *w, uint64_t serial)
{
    uint64_t last;
    uint32_t hits;
    uint8_t k[LRU_KEY];
    int rc = store_get_access(w->txn, w->st, serial, &last, &hits);
    if (rc == MDB_NOTFOUND) return 0;
    if (rc) return rc;
    lru_key(k, last, serial);
    return store_del_key(w, DB_LRU, k, LRU_KEY);
}

int store_set_access(wtx *w, uint64_t serial, uint64_t last, uint32_t hits)
{
    uint8_t k[LRU_KEY], sk[8];
    MDB_val v;
    int rc = get_cached(w->txn, w->st, serial, &v);
    if (rc) return rc;
    lru_key(k, get_be64((const uint8_t *)v.mv_data + 8), serial);
    if ((rc = store_del_key(w, DB_LRU, k, LRU_KEY))) return rc;
    /* the record again, its statistics new (a body kept inline with them: the whole record) */
    size_t n = v.mv_size;
    uint8_t *rec = malloc(n);
    if (!rec) return ENOMEM;
    memcpy(rec, v.mv_data, n);
    put_be64(rec + 8, last);
    put_be32(rec + 16, hits);
    put_be64(sk, serial);
    MDB_val kv = {8, sk}, vv = {n, rec};
    rc = mdb_put(w->txn, w->st->dbi[DB_EVENTS], &kv, &vv, 0);
    free(rec);
    if (rc) return rc;
    lru_key(k, last, serial);
    return store_put_empty(w, DB_LRU, k, LRU_KEY);
}

/* Writes the reads counted in memory (events removed since are skipped). */
static int flush_access(wtx *w)
{
    l2_store *st = w->st;
    for (size_t i = 0; i < st->ntouched; i++) {
        const struct store_touch *t = &st->touched[i];
        uint64_t last;
        uint32_t hits;
        int rc = store_get_access(w->txn, st, t->serial, &last, &hits);
        if (rc == MDB_NOTFOUND) continue;
        if (rc) return rc;
        if ((rc = store_set_access(w, t->serial, t->last_ms > last ? t->last_ms : last, hits + t->hits))) return rc;
    }
    return 0;
}

#define TOUCHED_MAX 65536

static size_t touch_home(const l2_store *st, uint64_t serial)
{
    return (size_t)((serial * 0x9E3779B97F4A7C15ull) >> 32) & (2 * st->touched_cap - 1);
}

/* The slot of serial's count, or of the free slot where it would go. */
static uint64_t *touch_slot(l2_store *st, uint64_t serial)
{
    size_t mask = 2 * st->touched_cap - 1;
    for (size_t h = touch_home(st, serial);; h = (h + 1) & mask) {
        uint64_t *s = &st->touch_slots[h];
        if ((uint32_t)(*s >> 32) != st->touch_gen || st->touched[(uint32_t)*s - 1].serial == serial) return s;
    }
}

void store_touched_reset(l2_store *st)
{
    st->ntouched = 0;
    if (++st->touch_gen == 0) {
        /* the generations went round: every slot is emptied once */
        if (st->touch_slots) memset(st->touch_slots, 0, 2 * st->touched_cap * sizeof *st->touch_slots);
        st->touch_gen = 1;
    }
}

/* Twice the room; the counts kept are placed again. */
static int touched_grow(l2_store *st)
{
    size_t cap = st->touched_cap ? st->touched_cap * 2 : 256;
    struct store_touch *t = realloc(st->touched, cap * sizeof *t);
    if (!t) return -1;
    st->touched = t;
    uint64_t *slots = calloc(2 * cap, sizeof *slots);
    if (!slots) return -1;
    free(st->touch_slots);
    st->touch_slots = slots;
    st->touched_cap = cap;
    if (!st->touch_gen) st->touch_gen = 1;
    for (size_t i = 0; i < st->ntouched; i++)
        *touch_slot(st, st->touched[i].serial) = (uint64_t)st->touch_gen << 32 | (uint32_t)(i + 1);
    return 0;
}

void store_touch(l2_store *st, uint64_t serial, uint64_t ms, uint32_t hits)
{
    /* counted once per event between two writes, however often it is read; past TOUCHED_MAX
     * events the new ones are not counted (they are statistics) */
    uint64_t *s = st->touch_slots ? touch_slot(st, serial) : NULL;
    if (s && (uint32_t)(*s >> 32) == st->touch_gen) {
        struct store_touch *t = &st->touched[(uint32_t)*s - 1];
        if (ms > t->last_ms) t->last_ms = ms;
        t->hits += hits;
        return;
    }
    if (st->ntouched == st->touched_cap) {
        if (st->touched_cap >= TOUCHED_MAX || touched_grow(st)) return;
        s = touch_slot(st, serial);
    }
    st->touched[st->ntouched++] = (struct store_touch){serial, ms, hits};
    *s = (uint64_t)st->touch_gen << 32 | (uint32_t)st->ntouched;
}

int l2_store_reads_take(l2_store *st, l2_buf *out)
{
    if (l2_buf_reserve(out, st->ntouched * 20)) return -1;
    for (size_t i = 0; i < st->ntouched; i++) {
        uint8_t rec[20];
        put_be64(rec, st->touched[i].serial);
        put_be64(rec + 8, st->touched[i].last_ms);
        put_be32(rec + 16, st->touched[i].hits);
        l2_buf_put(out, rec, 20);
    }
    store_touched_reset(st);
    return 0;
}

static int no_body(wtx *w, void *ud)
{
    (void)w, (void)ud;
    return 0;
}

int l2_store_reads_add(l2_store *st, const void *data, size_t len, char *err)
{
    if (len % 20) {
        snprintf(err, L2_ERRLEN, "reads: %zu bytes are not records of 20", len);
        return -1;
    }
    const uint8_t *p = data;
    for (size_t i = 0; i < len; i += 20) {
        uint64_t serial = get_be64(p + i), ms = get_be64(p + i + 8);
        uint32_t hits = get_be32(p + i + 16);
        store_touch(st, serial, ms, hits);
    }
    /* the write transaction's start writes what is counted (flush_access) */
    return st->ntouched ? store_write_txn(st, no_body, NULL, err) : 0;
}

static int put_tombstone(wtx *w, const uint8_t id[32], const uint8_t author[32])
{
    uint8_t k[64];
    w->may_tomb = 1;
    memcpy(k, id, 32);
    memcpy(k + 32, author, 32);
    return store_put_empty(w, DB_TOMB, k, 64);
}

/* NIP-09: what a kind-5 event deletes. Only the author's own events; never another deletion. */
static int apply_deletion(wtx *w, const l2_event *del, l2_save_result *r)
{
    l2_store *st = w->st;
    int rc;
    for (uint32_t t = 0; t < del->ntags; t++) {
        uint8_t id[32];
        uint32_t kind;
        l2_str d;
        if (l2_deletion_id(del, t, id)) {
            uint64_t serial;
            rc = store_lookup_id(w->txn, st, id, &serial);
            if (rc == 0) {
                if ((rc = store_load(st, w->txn, serial, &st->old, 0))) return rc;
                if (memcmp(st->old.pubkey, del->pubkey, 32) == 0 && st->old.kind != 5) {
                    if ((rc = store_remove_event(w, serial, L2_CHANGE_DELETED))) return rc;
                    r->deleted++;
                }
            } else if (rc != MDB_NOTFOUND) {
                return rc;
            }
            if ((rc = put_tombstone(w, id, del->pubkey))) return rc;
        } else if (l2_deletion_address(del, t, &kind, &d)) {
            uint8_t k[MAX_ADDR_KEY], when[8];
            size_t n = addr_key(k, del->pubkey, kind, d.p, d.n);
            MDB_val kv = {n, k}, vv;
            rc = mdb_get(w->txn, st->dbi[DB_ATOMB], &kv, &vv);
            if (rc && rc != MDB_NOTFOUND) return rc;
            if (rc == MDB_NOTFOUND || (vv.mv_size == 8 && get_be64(vv.mv_data) < (uint64_t)del->created_at)) {
                put_be64(when, (uint64_t)del->created_at);
                w->may_atomb = 1;
                vv.mv_size = 8;
                vv.mv_data = when;
                if ((rc = mdb_put(w->txn, st->dbi[DB_ATOMB], &kv, &vv, 0))) return rc;
            }
            head_rec h;
            rc = store_get_head(w->txn, st, k, n, &h);
            if (rc == 0 && h.created_at <= del->created_at) {
                rc = store_remove_event(w, h.serial, L2_CHANGE_DELETED);
                if (rc == MDB_NOTFOUND) rc = store_del_key(w, DB_REPLACE, k, n); /* evicted from a cache */
                else if (rc == 0) r->deleted++;
                if (rc) return rc;
            } else if (rc && rc != MDB_NOTFOUND) {
                return rc;
            }
        }
    }
    return 0;
}

/* *only: every `e` tag of the deletion request `del` names a stored event of another author, and
 * it has at least one (see l2_deletion_refusal). */
static int deletes_only_others(wtx *w, const l2_event *del, int *only)
{
    l2_store *st = w->st;
    uint32_t named = 0;
    *only = 0;
    for (uint32_t t = 0; t < del->ntags; t++) {
        uint8_t id[32];
        uint64_t serial;
        record r;
        if (!l2_deletion_id(del, t, id)) continue;
        named++;
        int rc = store_lookup_id(w->txn, st, id, &serial);
        if (rc == MDB_NOTFOUND) return 0; /* unknown: a tombstone of its own */
        if (rc || (rc = store_load_head(st, w->txn, serial, &st->old, &r))) return rc;
        if (memcmp(st->old.pubkey, del->pubkey, 32) == 0) return 0;
    }
    *only = named > 0;
    return 0;
}

/* The verdicts that need no write: ephemeral, a refused deletion, expired, a duplicate, an id its
 * author deleted. *decided when one of them is the verdict. */
static int verdict_before_write(wtx *w, const l2_event *ev, int64_t now, l2_save_result *r, int *decided)
{
    uint64_t serial;
    int64_t exp;
    *decided = 1;
    if (l2_kind_ephemeral(ev->kind)) {
        r->status = L2_SAVE_EPHEMERAL;
        return 0;
    }
    if ((r->msg = l2_deletion_refusal(ev))) {
        r->status = L2_SAVE_REFUSED;
        return 0;
    }
    if (l2_expiration(ev, &exp) && exp <= now) {
        r->status = L2_SAVE_EXPIRED;
        return 0;
    }
    int rc = store_lookup_id(w->txn, w->st, ev->id, &serial);
    if (rc == 0) {
        r->status = L2_SAVE_DUPLICATE;
        return 0;
    }
    if (rc != MDB_NOTFOUND) return rc;
    if (ev->kind != 5 && w->may_tomb) {
        uint8_t tk[64];
        memcpy(tk, ev->id, 32);
        memcpy(tk + 32, ev->pubkey, 32);
        MDB_val k = {64, tk}, v;
        rc = mdb_get(w->txn, w->st->dbi[DB_TOMB], &k, &v);
        if (rc == 0) {
            r->status = L2_SAVE_DELETED;
            return 0;
        }
        if (rc != MDB_NOTFOUND) return rc;
    }
    *decided = 0;
    return 0;
}

/* A replaceable or addressable event against its slot (key ak, *an bytes; 0 for another kind):
 * refused when its address was deleted past it or a newer version holds the slot (*decided);
 * otherwise the version it replaces is removed. */
static int take_slot(wtx *w, const l2_event *ev, uint8_t *ak, size_t *an, l2_save_result *r, int *decided)
{
    *decided = 0;
    *an = 0;
    if (!l2_kind_replaceable(ev->kind) && !l2_kind_addressable(ev->kind)) return 0;
    l2_str d = l2_d_value(ev);
    *an = addr_key(ak, ev->pubkey, ev->kind, d.p, d.n);
    MDB_val k = {*an, ak}, v;
    int rc = w->may_atomb ? mdb_get(w->txn, w->st->dbi[DB_ATOMB], &k, &v) : MDB_NOTFOUND;
    if (rc == 0 && v.mv_size == 8 && (uint64_t)ev->created_at <= get_be64(v.mv_data)) {
        r->status = L2_SAVE_DELETED;
        *decided = 1;
        return 0;
    }
    if (rc && rc != MDB_NOTFOUND) return rc;
    head_rec h;
    rc = store_get_head(w->txn, w->st, ak, *an, &h);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    /* newer created_at wins; a tie goes to the lower id */
    if (h.created_at > ev->created_at || (h.created_at == ev->created_at && memcmp(h.id, ev->id, 32) < 0)) {
        r->status = L2_SAVE_OLDER;
        *decided = 1;
        return 0;
    }
    rc = store_remove_event(w, h.serial, L2_CHANGE_REPLACED);
    if (rc == 0) r->replaced++;
    return rc == MDB_NOTFOUND ? 0 : rc; /* NOTFOUND: a cache had evicted it */
}

/* Writes ev as a new event: its body, id, indexes, slot head (ak, an), change, the remembered
 * answers it touches and, in a cache, its access statistics. */
static int write_event(wtx *w, const l2_event *ev, const uint8_t *ak, size_t an)
{
    l2_store *st = w->st;
    int rc;
    if (w->serial > MAX_SERIAL) return EOVERFLOW; /* 2^48 saves: index keys hold 6 bytes of a serial */
    uint64_t serial = w->serial++;
    uint8_t sk[8];
    put_be64(sk, serial);
    st->body.len = 0;
    if (l2_event_encode_bin(ev, &st->body)) return ENOMEM;
    if (st->cache) {
        if ((rc = store_put_cached(w, serial, ev, st->body.data, st->body.len, store_now_ms()))) return rc;
    } else {
        MDB_val k = {8, sk}, v = {st->body.len, st->body.data};
        if ((rc = mdb_put(w->txn, st->dbi[DB_EVENTS], &k, &v, MDB_APPEND))) return rc;
    }
    MDB_val ik = {st->sh->key_prefix, (void *)ev->id}, iv = {8, sk};
    if ((rc = mdb_put(w->txn, st->dbi[DB_IDS], &ik, &iv, 0))) return rc;
    if (!w->defer_index && (rc = store_for_each_index(st->sh->key_prefix, ev, serial, index_put, w))) return rc;
    if (an && (rc = put_head(w, ak, an, serial, ev))) return rc;
    if ((rc = add_change(w, L2_CHANGE_SAVED, ev->id, serial))) return rc;
    if (w->may_answer && !w->quiet && (rc = l2_answers_touch(w->txn, st->dbi[DB_ANSWERS], ev))) return rc;
    return 0;
}

static int save_one(wtx *w, const l2_event *ev, int64_t now, l2_save_result *r)
{
    int rc, decided;
    r->replaced = r->deleted = 0;
    r->msg = NULL;
    if ((rc = verdict_before_write(w, ev, now, r, &decided)) || decided) return rc;
    uint8_t ak[MAX_ADDR_KEY];
    size_t an;
    if ((rc = take_slot(w, ev, ak, &an, r, &decided)) || decided) return rc;
    if (ev->kind == 5) {
        int only;
        if ((rc = deletes_only_others(w, ev, &only))) return rc;
        if (only) {
            r->status = L2_SAVE_REFUSED;
            r->msg = L2_DELETION_OF_OTHERS;
            return 0;
        }
    }
    if ((rc = write_event(w, ev, ak, an))) return rc;
    r->status = L2_SAVE_STORED;
    return ev->kind == 5 ? apply_deletion(w, ev, r) : 0;
}

int store_write_begin(l2_store *st, wtx *w)
{
    int rc;
    l2_store_read_end(st);
    w->st = st;
    w->quiet = 0;
    w->defer_index = 0;
    w->drop_heads = 0;
    w->gave_way = 0;
    rc = mdb_txn_begin(st->env, NULL, 0, &w->txn);
    if (rc == MDB_MAP_RESIZED) {
        store_adopt_map(st);
        rc = mdb_txn_begin(st->env, NULL, 0, &w->txn);
    }
    if (rc) return rc;
    if ((rc = store_meta_get_u64(w->txn, st->dbi[DB_META], "serial", &w->serial)) ||
        (rc = store_meta_get_u64(w->txn, st->dbi[DB_META], "seq", &w->seq))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    if (st->cache && ((rc = store_meta_get_u64(w->txn, st->dbi[DB_META], "next_slot", &w->next_slot)) ||
                      (rc = store_meta_get_u64(w->txn, st->dbi[DB_META], "body_bytes", &w->body_bytes)))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    if (st->cache) w->body_bytes--; /* store_meta_get_u64 counts from 1 */
    w->may_tomb = store_entries(w->txn, st->dbi[DB_TOMB]) > 0;
    w->may_atomb = store_entries(w->txn, st->dbi[DB_ATOMB]) > 0;
    w->may_answer = st->cache && store_entries(w->txn, st->dbi[DB_ANSWERS]) > 0;
    return 0;
}

int store_write_commit(wtx *w)
{
    int rc;
    if ((rc = store_meta_put_u64(w->txn, w->st->dbi[DB_META], "serial", w->serial)) ||
        (rc = store_meta_put_u64(w->txn, w->st->dbi[DB_META], "seq", w->seq)) ||
        (w->st->cache && ((rc = store_meta_put_u64(w->txn, w->st->dbi[DB_META], "next_slot", w->next_slot)) ||
                          (rc = store_meta_put_u64(w->txn, w->st->dbi[DB_META], "body_bytes", w->body_bytes + 1))))) {
        mdb_txn_abort(w->txn);
        return rc;
    }
    return mdb_txn_commit(w->txn);
}

/* The map is full: double it (an unlimited store) and have the caller redo its transaction; L2_FULL
 * for a fixed map. */
static int grow_map(l2_store *st, char *err)
{
    if (st->fixed_map) {
        store_fail(err, "error: the store is full (its map size is %zu bytes)", st->sh->map_size);
        return L2_FULL;
    }
    MDB_envinfo info;
    mdb_env_info(st->env, &info);
    size_t size = (info.me_mapsize > st->sh->map_size ? info.me_mapsize : st->sh->map_size) * 2;
    int rc = mdb_env_set_mapsize(st->env, size);
    if (rc) return store_lmdb_fail(err, "growing the map", rc);
    st->sh->map_size = size;
    return 0;
}

int l2_store_reader_check(l2_store *st)
{
    int dead = 0;
    return mdb_reader_check(st->env, &dead) == 0 ? dead : 0;
}

/* LMDB reuses the pages a transaction freed only once a later one has committed: one small
 * transaction (the meta counters rewritten) makes the last one's free pages usable. */
static int age_free_pages(l2_store *st)
{
    wtx w;
    int rc = store_write_begin(st, &w);
    return rc ? rc : store_write_commit(&w);
}

int store_write_txn(l2_store *st, int (*body)(wtx *w, void *ud), void *ud, char *err)
{
    int aged = 0, cleared = 0;
    for (;;) {
        wtx w;
        int rc = store_write_begin(st, &w);
        if (rc) {
            st->mirror_set = 0;
            return store_lmdb_fail(err, "write transaction", rc);
        }
        uint64_t seq0 = w.seq;
        rc = st->ntouched ? flush_access(&w) : 0;
        /* a cache's ghosts past their time go with any write (a fill, a save, an eviction) */
        if (rc == 0 && st->cache) rc = prune_ghosts(&w, ghost_max(st));
        if (rc == 0) rc = body(&w, ud);
        int result = L2_MIRROR_NONE;
        /* a save that gave way has not applied all it mirrors: the caller arms it again */
        if (rc == 0 && st->mirror_set && !w.gave_way) rc = store_mirror_apply(&w, &result);
        if (rc == 0) rc = store_write_commit(&w);
        else mdb_txn_abort(w.txn);
        if (rc == 0) {
            store_touched_reset(st);
            st->mirror_set = 0;
            st->mirror_result = result;
            st->last_first = seq0;
            st->last_last = w.seq - 1;
            return 0;
        }
        if (rc == MDB_MAP_FULL) {
            /* the reads counted since the last write are statistics: a full cache drops them
             * rather than fail the write (an eviction above all) that would make room */
            if (st->fixed_map && st->ntouched) {
                store_touched_reset(st);
                continue;
            }
            /* a reader a killed process left pins the pages freed since its snapshot */
            if (st->fixed_map && !cleared++ && l2_store_reader_check(st) > 0) continue;
            if (st->fixed_map && !aged++ && age_free_pages(st) == 0) continue;
            int grown = grow_map(st, err);
            if (grown) {
                st->mirror_set = 0;
                return grown;
            }
            continue;
        }
        st->mirror_set = 0;
        if (rc == ENOMEM) return store_fail(err, "error: out of memory");
        return store_lmdb_fail(err, "writing", rc);
    }
}

/* appends one record to the outbox */
static int outbox_put(wtx *w, char type, const void *data, size_t n)
{
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t key[8];
    uint64_t seq = 1;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_OUTBOX], &c);
    if (rc) return rc;
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) seq = get_be64(k.mv_data) + 1;
    put_be64(key, seq);
    k.mv_size = 8;
    k.mv_data = key;
    v.mv_size = n + 1;
    if ((rc = mdb_cursor_put(c, &k, &v, MDB_APPEND | MDB_RESERVE)) == 0) {
        ((char *)v.mv_data)[0] = type;
        memcpy((char *)v.mv_data + 1, data, n);
    }
    mdb_cursor_close(c);
    return rc;
}

int store_save_body(wtx *w, void *ud)
{
    save_args *a = ud;
    int rc;
    w->quiet = (a->flags & L2_SAVE_FILL) != 0;
    if ((a->flags & L2_SAVE_IMPORT) && !w->st->cache && (rc = store_deferring(w, &w->defer_index))) return rc;
    int give_way = (a->flags & L2_SAVE_GIVE_WAY) && w->st->light_waiting;
    for (size_t i = 0; i < a->n; i++) {
        if (give_way && i >= L2_GIVE_WAY_MIN && i % L2_GIVE_WAY_STEP == 0 && w->st->light_waiting(w->st->light_ud)) {
            /* the rest waits for the next transaction: the light save takes the lock first */
            w->gave_way = 1;
            for (size_t j = i; j < a->n; j++) a->res[j] = (l2_save_result){.status = L2_SAVE_UNTRIED};
            break;
        }
        rc = save_one(w, a->evs[i], a->now, &a->res[i]);
        if (rc) return rc;
        if ((a->flags & L2_SAVE_OUTBOX) && a->res[i].status == L2_SAVE_STORED) {
            w->st->body.len = 0;
            if (l2_event_encode_bin(a->evs[i], &w->st->body)) return ENOMEM;
            if ((rc = outbox_put(w, 'S', w->st->body.data, w->st->body.len))) return rc;
        }
    }
    return 0;
}

void l2_store_give_way(l2_store *st, int (*waiting)(void *ud), void *ud)
{
    st->light_waiting = waiting;
    st->light_ud = ud;
}

int l2_store_save_batch(l2_store *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                        char *err)
{
    save_args a = {evs, n, now, flags, res};
    return store_write_txn(st, store_save_body, &a, err);
}

typedef struct {
    const uint8_t *id;
    int tombstone, outbox, found;
} delete_args;

static int delete_body(wtx *w, void *ud)
{
    delete_args *a = ud;
    uint64_t serial;
    uint8_t rec[33];
    int rc = store_lookup_id(w->txn, w->st, a->id, &serial);
    a->found = rc == 0;
    if (a->outbox) {
        memcpy(rec, a->id, 32);
        rec[32] = (uint8_t)a->tombstone;
        if ((rc = outbox_put(w, 'D', rec, 33))) return rc;
    }
    if (!a->found) return rc == MDB_NOTFOUND ? 0 : rc;
    if ((rc = store_remove_event(w, serial, L2_CHANGE_DELETED))) return rc;
    return a->tombstone ? put_tombstone(w, a->id, w->st->old.pubkey) : 0;
}

int l2_store_delete(l2_store *st, const uint8_t id[32], int tombstone, int outbox, int *found, char *err)
{
    delete_args a = {id, tombstone, outbox, 0};
    if (store_write_txn(st, delete_body, &a, err)) return -1;
    *found = a.found;
    return 0;
}

typedef struct {
    int64_t now;
    uint64_t removed;
} sweep_args;

static int sweep_body(wtx *w, void *ud)
{
    sweep_args *a = ud;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_EXPIRE], &c);
    a->removed = 0;
    if (rc) return rc;
    /* removing an event deletes its expire key, so always restart from the first one */
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_FIRST)) == 0) {
        if (k.mv_size != 16 || (int64_t)get_be64(k.mv_data) > a->now) break;
        uint64_t serial = get_be64((uint8_t *)k.mv_data + 8);
        rc = store_remove_event(w, serial, L2_CHANGE_DELETED);
        if (rc == MDB_NOTFOUND) rc = mdb_cursor_del(c, 0); /* a dangling key: drop it */
        else a->removed++;
        if (rc) break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int l2_store_sweep(l2_store *st, int64_t now, uint64_t *removed, char *err)
{
    sweep_args a = {now, 0};
    if (store_write_txn(st, sweep_body, &a, err)) return -1;
    *removed = a.removed;
    return 0;
}

/* Deletes the caller's meta values (store_meta_key's "u:" ones) and the feed position. */
static int forget_callers_meta(wtx *w)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, w->st->dbi[DB_META], &c);
    if (rc) return rc;
    while ((rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) == 0) {
        int callers = k.mv_size >= 2 && memcmp(k.mv_data, "u:", 2) == 0;
        int feed = k.mv_size == strlen(FEED_KEY) && memcmp(k.mv_data, FEED_KEY, k.mv_size) == 0;
        if ((callers || feed) && (rc = mdb_cursor_del(c, 0))) break;
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int nuke_body(wtx *w, void *ud)
{
    (void)ud;
    for (int i = 0; i < DB_COUNT; i++) {
        int rc;
        if (i == DB_META) continue;
        if ((rc = mdb_drop(w->txn, w->st->dbi[i], 0))) return rc;
    }
    /* serial and seq keep counting up, so change cursors held by readers stay meaningful; a
     * cache's horizon and place in L2's feed described what it held: an emptied L1 proves nothing
     * until its backend sets them again */
    return w->st->cache ? forget_callers_meta(w) : 0;
}

int l2_store_nuke(l2_store *st, char *err)
{
    return store_write_txn(st, nuke_body, NULL, err);
}

int l2_store_sync(l2_store *st, char *err)
{
    int rc = mdb_env_sync(st->env, 1);
    return rc ? store_lmdb_fail(err, "sync", rc) : 0;
}
