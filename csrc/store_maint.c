/* store_maint.c: maintenance: repacking a cache, the indexes an import builds at its end, upgrade,
 * copy and check. Shared with the other parts through store_int.h. */
#include "store_int.h"

/* ---- repacking (a cache) ----
 * A cache's trees churn: entries arrive in one order and leave in another, and LMDB merges a page
 * only once it is under a quarter full, so they settle about half full: bytes the cache could hold
 * events in. A tree whose leaves are less full than asked is rewritten: its entries copied out,
 * the tree emptied, the entries appended in order (which fills every page). One write transaction
 * per tree, the smaller trees first: the pages a rewrite frees come free when it commits, for the
 * next. Memory: one tree's entries. */

#define REPACK_TREE_MAX (64u << 20) /* bytes: a larger tree is left as it is */
#define NO_CHANGE (-2)              /* a tree left as it is: its transaction is aborted */

static const int repacked_trees[] = {DB_STUBS,   DB_FREESLOTS, DB_REPLACE, DB_TOMB,   DB_ATOMB,  DB_EXPIRE,
                                     DB_ANSWERS, DB_CREATED,   DB_KIND,    DB_LRU,    DB_ACCESS, DB_PUBKEY,
                                     DB_PUBKIND, DB_IDS,       DB_TAG,     DB_EVENTS, DB_BODIES};

/* Keys arrive anywhere in these trees (by pubkey, kind, tag value...): packed full, each page
 * would split at its next insert and the tree be half empty again by the next pass. They are
 * rewritten with SLACK percent of each page left free, which a pass's inserts fill; except in a
 * map of less than SLACK_MIN_MAP, whose write transactions need every page it can free. */
#define SLACK 20
#define SLACK_MIN_MAP (4u << 20)
static int has_slack(const l2_store *st, int db)
{
    return st->sh->map_size >= SLACK_MIN_MAP &&
           (db == DB_PUBKEY || db == DB_KIND || db == DB_PUBKIND || db == DB_TAG || db == DB_CREATED ||
            db == DB_REPLACE || db == DB_STUBS || db == DB_EXPIRE);
}

typedef struct {
    int db;
    unsigned min_fill;      /* percent */
    uint64_t before, after; /* bytes in the leaf and overflow pages of the trees rewritten */
    l2_buf copy;            /* entries: key length (2) | value length (4) | key | value */
    l2_buf fillers;         /* the keys that held the slack while the tree was written */
} repack_args;

/* The bytes an entry takes in a leaf of LMDB: node header, key, value (a page number when the
 * value overflows), even-aligned, and its slot in the page's index. */
static uint64_t node_bytes(size_t psize, size_t k, size_t v)
{
    size_t n = 8 + k + v;
    if (n > ((psize - 16) / 2 & ~(size_t)1) - 2) n = 8 + k + 8;
    return (n + 1) / 2 * 2 + 2;
}

/* Rewrites the tree a->db when its leaves are less than a->min_fill full: NO_CHANGE when not. */
static int repack_tree(wtx *w, repack_args *a)
{
    MDB_dbi dbi = w->st->dbi[a->db];
    MDB_stat s, after;
    MDB_cursor *c;
    MDB_val k, v;
    uint64_t held = 0;
    int rc = mdb_stat(w->txn, dbi, &s);
    if (rc) return rc;
    uint64_t bytes = (uint64_t)(s.ms_leaf_pages + s.ms_overflow_pages) * s.ms_psize;
    if (s.ms_leaf_pages < 8) return NO_CHANGE;
    if (bytes > 2 * (uint64_t)REPACK_TREE_MAX) return E2BIG;
    /* first how full the leaves are, then (when worth it) the copy */
    if ((rc = mdb_cursor_open(w->txn, dbi, &c))) return rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
        held += node_bytes(s.ms_psize, k.mv_size, v.mv_size);
    if (rc == MDB_NOTFOUND && held * 100 >= (uint64_t)s.ms_leaf_pages * (s.ms_psize - 16) * a->min_fill)
        rc = NO_CHANGE;
    a->copy.len = 0;
    for (rc = rc == MDB_NOTFOUND ? mdb_cursor_get(c, &k, &v, MDB_FIRST) : rc; rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t len[6];
        put_be16(len, (uint32_t)k.mv_size);
        put_be32(len + 2, (uint32_t)v.mv_size);
        if (a->copy.len + 6 + k.mv_size + v.mv_size > REPACK_TREE_MAX) rc = E2BIG;
        else if (l2_buf_put(&a->copy, len, 6) || l2_buf_put(&a->copy, k.mv_data, k.mv_size) ||
                 l2_buf_put(&a->copy, v.mv_data, v.mv_size))
            rc = ENOMEM;
        if (rc) break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc;
    if ((rc = mdb_drop(w->txn, dbi, 0)) || (rc = mdb_cursor_open(w->txn, dbi, &c))) return rc;
    /* appended in order, LMDB fills a page until the next entry does not fit, then starts the
     * next: `used` follows that, and where a page of a tree with slack has taken its share, a
     * filler entry (the previous key and a 0 byte: between it and the next) takes the rest */
    size_t room = s.ms_psize - 16, share = has_slack(w->st, a->db) ? room * (100 - SLACK) / 100 : room, used = 0;
    MDB_val prev = {0, NULL};
    a->fillers.len = 0;
    for (const uint8_t *p = (const uint8_t *)a->copy.data, *end = p + a->copy.len; rc == 0 && p < end;) {
        k.mv_size = (size_t)p[0] << 8 | p[1];
        v.mv_size = get_be32(p + 2);
        k.mv_data = (void *)(p + 6);
        v.mv_data = (void *)(p + 6 + k.mv_size);
        p += 6 + k.mv_size + v.mv_size;
        size_t node = node_bytes(s.ms_psize, k.mv_size, v.mv_size);
        if (used && used + node > share && share < room) {
            /* a node of 8 + key + value bytes, even, and 2 for its slot: the page's last bytes */
            size_t fk = prev.mv_size + 1, fv = room - used >= 8 + fk + 2 + 1 ? (room - used - 2 - 8 - fk) & ~(size_t)1 : 0;
            uint8_t key[MAX_ADDR_KEY + 1 + 16];
            if (fv && fk <= sizeof key && 8 + fk + fv <= room / 2 - 2) {
                memcpy(key, prev.mv_data, prev.mv_size);
                key[prev.mv_size] = 0;
                MDB_val fkey = {fk, key}, fval = {fv - (fk & 1), NULL};
                if ((rc = mdb_cursor_put(c, &fkey, &fval, MDB_APPEND | MDB_RESERVE))) break;
                memset(fval.mv_data, 0, fval.mv_size);
                uint8_t len = (uint8_t)fk;
                if (l2_buf_put(&a->fillers, &len, 1) || l2_buf_put(&a->fillers, key, fk)) {
                    rc = ENOMEM;
                    break;
                }
                used = 0;
            }
        }
        used = used + node > room ? node : used + node;
        /* a key's further values (ids sharing a prefix) follow it as sorted duplicates */
        int again = prev.mv_data && prev.mv_size == k.mv_size && memcmp(prev.mv_data, k.mv_data, k.mv_size) == 0;
        rc = mdb_cursor_put(c, &k, &v, again ? MDB_APPENDDUP : MDB_APPEND);
        prev = k;
    }
    mdb_cursor_close(c);
    for (const uint8_t *p = (const uint8_t *)a->fillers.data, *end = p + a->fillers.len; rc == 0 && p < end; p += 1 + p[0]) {
        MDB_val fkey = {p[0], (void *)(p + 1)};
        rc = mdb_del(w->txn, dbi, &fkey, NULL);
    }
    if (rc || (rc = mdb_stat(w->txn, dbi, &after))) return rc;
    a->before += bytes;
    a->after += (uint64_t)(after.ms_leaf_pages + after.ms_overflow_pages) * s.ms_psize;
    return 0;
}

int l2_store_repack(l2_store *st, unsigned min_fill, uint64_t *freed, int *whole, char *err)
{
    repack_args a = {.min_fill = min_fill};
    int rc = 0;
    *whole = 1;
    l2_buf_init(&a.copy);
    l2_buf_init(&a.fillers);
    for (size_t i = 0; rc == 0 && i < sizeof repacked_trees / sizeof repacked_trees[0]; i++) {
        wtx w;
        a.db = repacked_trees[i];
        if ((rc = store_write_begin(st, &w))) break;
        rc = repack_tree(&w, &a);
        if (rc == 0) rc = store_write_commit(&w);
        else mdb_txn_abort(w.txn);
        /* a tree too large, or that finds no room for its copy, stays as it is (a later pass may
         * find room) */
        if (rc == E2BIG || rc == MDB_MAP_FULL) *whole = 0;
        if (rc == NO_CHANGE || rc == E2BIG || rc == MDB_MAP_FULL) rc = 0;
    }
    l2_buf_free(&a.copy);
    l2_buf_free(&a.fillers);
    *freed = a.before > a.after ? a.before - a.after : 0;
    if (rc == ENOMEM) return store_fail(err, "error: out of memory");
    return rc ? store_lmdb_fail(err, "repacking", rc) : 0;
}

/* ---- indexes built at the end of an import ----
 * An import into an empty store writes events, ids and heads batch by batch, and the indexes
 * once at its end: each index's keys sorted, then appended (MDB_APPEND fills every page; keys
 * put in random order leave B-tree pages about half full, and each batch would copy most of them
 * again, pages the file keeps as free space). One pass over the events decodes each once and
 * collects the keys of all six indexes (about 250 bytes an event in memory); when they would not
 * fit in the store's index_memory, one pass per index holds one index's keys at a time. The meta
 * record "indexing" names the importing process: while it runs, other processes save with their
 * indexes as usual (the build includes them); if it dies, the next process to open the store or
 * to import builds them. */

typedef struct {
    int db;
    l2_buf keys; /* length (1 byte) and key, one after another */
    size_t *at, n, cap;
} key_list;

/* The indexes one pass over the events collects: all of them, or one at a time for a store so
 * large that all its keys would not fit in memory together. */
enum { NINDEX = 6 };
typedef struct {
    key_list l[NINDEX];
    size_t n;
    /* lists 1..n-1 are sorted on a thread while the writer appends the ones before */
    pthread_mutex_t lock;
    pthread_cond_t sorted_one;
    size_t sorted; /* lists sorted so far */
} key_lists;
#define KEYS_PER_EVENT 250 /* bytes of index keys an event, about */

static int collect_key(void *ud, int db, const uint8_t *key, size_t n)
{
    key_lists *ls = ud;
    key_list *l = NULL;
    for (size_t i = 0; i < ls->n && !l; i++)
        if (ls->l[i].db == db) l = &ls->l[i];
    if (!l) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4096;
        size_t *at = realloc(l->at, cap * sizeof *at);
        if (!at) return ENOMEM;
        l->at = at;
        l->cap = cap;
    }
    l->at[l->n++] = l->keys.len;
    return l2_buf_putc(&l->keys, (char)n) || l2_buf_put(&l->keys, key, n) ? ENOMEM : 0;
}

/* LMDB's default order: bytes, then the shorter first */
static int key_order(const void *a, const void *b, void *ud)
{
    const uint8_t *base = ud, *x = base + *(const size_t *)a, *y = base + *(const size_t *)b;
    size_t nx = x[0], ny = y[0];
    int c = memcmp(x + 1, y + 1, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

static void sort_list(key_list *l)
{
    if (l->n) qsort_r(l->at, l->n, sizeof *l->at, key_order, l->keys.data); /* an index without keys has no list */
}

/* Sorts the lists after the first, in order, saying when each is done. */
static void *sort_lists(void *arg)
{
    key_lists *ls = arg;
    for (size_t i = 1; i < ls->n; i++) {
        sort_list(&ls->l[i]);
        pthread_mutex_lock(&ls->lock);
        ls->sorted = i + 1;
        pthread_cond_signal(&ls->sorted_one);
        pthread_mutex_unlock(&ls->lock);
    }
    return NULL;
}

/* Appends the sorted keys of one index to its emptied tree. */
static int write_index(wtx *w, key_list *l)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    if ((rc = mdb_drop(w->txn, w->st->dbi[l->db], 0)) || (rc = mdb_cursor_open(w->txn, w->st->dbi[l->db], &c)))
        return rc;
    const uint8_t *prev = NULL;
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        const uint8_t *key = (const uint8_t *)l->keys.data + l->at[i];
        if (prev && prev[0] == key[0] && memcmp(prev + 1, key + 1, key[0]) == 0) continue; /* a tag twice */
        prev = key;
        k.mv_size = key[0];
        k.mv_data = (void *)(key + 1);
        v.mv_size = 0;
        v.mv_data = "";
        rc = mdb_cursor_put(c, &k, &v, MDB_APPEND);
    }
    mdb_cursor_close(c);
    return rc;
}

/* Builds the indexes in ls: one decode of each event, then each index written. */
static int build_some(wtx *w, key_lists *ls)
{
    l2_store *st = w->st;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_cursor_open(w->txn, st->dbi[DB_EVENTS], &c);
    for (size_t i = 0; i < ls->n; i++) ls->l[i].n = ls->l[i].keys.len = 0;
    for (rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8 || l2_event_decode_bin(&st->ev, v.mv_data, v.mv_size, NULL)) continue; /* check() says */
        if ((rc = store_for_each_index(st->sh->key_prefix, &st->ev, get_be64(k.mv_data), collect_key, ls))) break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc;
    /* the writer sorts the first list and appends each in turn; a thread sorts the others
     * meanwhile (all of them itself when the thread cannot start) */
    pthread_t tid;
    ls->sorted = 1;
    int threaded = ls->n > 1 && pthread_create(&tid, NULL, sort_lists, ls) == 0;
    if (!threaded) sort_lists(ls);
    sort_list(&ls->l[0]);
    rc = 0;
    for (size_t i = 0; rc == 0 && i < ls->n; i++) {
        pthread_mutex_lock(&ls->lock);
        while (ls->sorted <= i) pthread_cond_wait(&ls->sorted_one, &ls->lock);
        pthread_mutex_unlock(&ls->lock);
        rc = write_index(w, &ls->l[i]);
    }
    if (threaded) pthread_join(tid, NULL);
    return rc;
}

static int build_indexes(wtx *w)
{
    static const int dbs[NINDEX] = {DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE};
    key_lists ls;
    memset(&ls, 0, sizeof ls);
    pthread_mutex_init(&ls.lock, NULL);
    pthread_cond_init(&ls.sorted_one, NULL);
    for (size_t i = 0; i < NINDEX; i++) {
        ls.l[i].db = dbs[i];
        l2_buf_init(&ls.l[i].keys);
    }
    int rc = 0;
    if (store_entries(w->txn, w->st->dbi[DB_EVENTS]) <= w->st->index_memory / KEYS_PER_EVENT) {
        ls.n = NINDEX;
        rc = build_some(w, &ls);
    } else {
        /* one index a pass, in the first list's memory */
        ls.n = 1;
        for (size_t i = 0; rc == 0 && i < NINDEX; i++) {
            ls.l[0].db = dbs[i];
            rc = build_some(w, &ls);
        }
    }
    for (size_t i = 0; i < NINDEX; i++) {
        l2_buf_free(&ls.l[i].keys);
        free(ls.l[i].at);
    }
    pthread_mutex_destroy(&ls.lock);
    pthread_cond_destroy(&ls.sorted_one);
    if (rc) return rc;
    MDB_val k = {8, "indexing"};
    rc = mdb_del(w->txn, w->st->dbi[DB_META], &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int process_gone(uint64_t pid)
{
    return pid > 0 && pid < INT32_MAX && kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

int store_deferring(wtx *w, int *defer)
{
    uint64_t pid;
    int rc = store_meta_get_opt(w->txn, w->st->dbi[DB_META], "indexing", &pid);
    *defer = 0;
    if (rc) return rc;
    if (pid == (uint64_t)getpid()) {
        *defer = 1;
        return 0;
    }
    if (process_gone(pid)) {
        if ((rc = build_indexes(w))) return rc;
        pid = 0;
    }
    if (pid || store_entries(w->txn, w->st->dbi[DB_EVENTS]) > 0) return 0;
    *defer = 1;
    return store_meta_put_u64(w->txn, w->st->dbi[DB_META], "indexing", (uint64_t)getpid());
}

typedef struct {
    int dead_only; /* only for an importer that died: on open */
} finish_args;

static int finish_body(wtx *w, void *ud)
{
    finish_args *a = ud;
    uint64_t pid;
    int rc = store_meta_get_opt(w->txn, w->st->dbi[DB_META], "indexing", &pid);
    if (rc || !pid) return rc;
    if (a->dead_only ? !process_gone(pid) : pid != (uint64_t)getpid()) return 0;
    return build_indexes(w);
}

int store_finish_indexing(l2_store *st, int dead_only, char *err)
{
    MDB_txn *txn;
    uint64_t pid = 0;
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, &txn);
    if (rc == 0) {
        rc = store_meta_get_opt(txn, st->dbi[DB_META], "indexing", &pid);
        mdb_txn_abort(txn);
    }
    if (rc) return store_lmdb_fail(err, "reading the store", rc);
    if (!pid) return 0;
    finish_args a = {dead_only};
    return store_write_txn(st, finish_body, &a, err);
}

int l2_store_after_import(l2_store *st, char *err)
{
    return store_finish_indexing(st, 0, err);
}

/* ---- upgrade ---- */

typedef struct {
    MDB_txn *txn;
    MDB_dbi *dbi;
} reindex;

/* The indexes every older format keyed otherwise (all but expire) get the key. */
static int reindex_put(void *ud, int db, const uint8_t *key, size_t n)
{
    reindex *r = ud;
    if (db == DB_EXPIRE) return 0;
    MDB_val k = {n, (void *)key}, v = {0, ""};
    return mdb_put(r->txn, r->dbi[db], &k, &v, 0);
}

/* Orders items of *(size_t *)n bytes. */
static int same_size_order(const void *a, const void *b, void *n)
{
    return memcmp(a, b, *(const size_t *)n);
}

/* An upgrade under way: its environment and write transaction, and what the passes share. */
typedef struct {
    shared_env sh;
    MDB_txn *txn;
    l2_event ev;
    l2_buf ids; /* id prefix | serial, for the ids tree rebuilt in order */
    uint64_t cache, total, *events;
    size_t prefix, item;
    void (*progress)(void *ud, uint64_t done, uint64_t total);
    void *ud;
} upgrade;

/* One event's record (key k, value v, at cursor c) of an older format: its indexes, its id, and a
 * cached body's access statistics taken into its record. */
static int upgrade_record(upgrade *u, MDB_cursor *c, MDB_val *k, MDB_val *v, reindex *r)
{
    int rc = 0;
    /* the head: after a cache's slot and length, or (format 3) its body when that is all */
    MDB_val head = {v->mv_size - (u->cache ? 8 : 0), (uint8_t *)v->mv_data + (u->cache ? 8 : 0)};
    if (u->cache && v->mv_size == 8) {
        MDB_val slot = {4, v->mv_data};
        if ((rc = mdb_get(u->txn, u->sh.dbi[DB_BODIES], &slot, &head))) return MDB_CORRUPTED;
    }
    if (k->mv_size != 8 || v->mv_size < 8 || head.mv_size < 33 ||
        l2_event_decode_bin(&u->ev, head.mv_data, head.mv_size, NULL))
        return MDB_CORRUPTED;
    if ((rc = store_for_each_index(u->prefix, &u->ev, get_be64(k->mv_data), reindex_put, r))) return rc;
    if (l2_buf_put(&u->ids, (const uint8_t *)head.mv_data + 1, u->prefix) || l2_buf_put(&u->ids, k->mv_data, 8))
        return ENOMEM;
    /* a cached body's record takes in its access statistics, which format 3 kept apart */
    if (u->cache && get_be32(v->mv_data)) {
        uint8_t sk[8], rec[CACHE_RECORD] = {0};
        memcpy(sk, k->mv_data, 8);
        memcpy(rec, v->mv_data, 8);
        MDB_val key = {8, sk}, acc, rv = {CACHE_RECORD, rec};
        if ((rc = mdb_get(u->txn, u->sh.dbi[DB_ACCESS], &key, &acc)) == 0 && acc.mv_size == 12)
            memcpy(rec + 8, acc.mv_data, 12);
        if (rc && rc != MDB_NOTFOUND) return rc;
        return mdb_cursor_put(c, &key, &rv, MDB_CURRENT);
    }
    return 0;
}

/* The scanned indexes (their tails) and the ids are rebuilt from every event. */
static int upgrade_events(upgrade *u)
{
    MDB_cursor *c;
    MDB_val k, v;
    MDB_dbi *dbi = u->sh.dbi;
    int rc;
    if ((rc = mdb_drop(u->txn, dbi[DB_PUBKEY], 0)) || (rc = mdb_drop(u->txn, dbi[DB_PUBKIND], 0)) ||
        (rc = mdb_drop(u->txn, dbi[DB_KIND], 0)) || (rc = mdb_drop(u->txn, dbi[DB_CREATED], 0)) ||
        (rc = mdb_drop(u->txn, dbi[DB_TAG], 0)) || (rc = mdb_drop(u->txn, dbi[DB_IDS], 1)) ||
        (rc = mdb_dbi_open(u->txn, store_db_names[DB_IDS], MDB_CREATE | IDS_FLAGS, &dbi[DB_IDS])) ||
        (rc = mdb_cursor_open(u->txn, dbi[DB_EVENTS], &c)))
        return rc;
    reindex r = {u->txn, dbi};
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        if ((rc = upgrade_record(u, c, &k, &v, &r))) break;
        if (++*u->events % 4096 == 0 && u->progress) u->progress(u->ud, *u->events, u->total);
    }
    mdb_cursor_close(c);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* A cache's lru keys, from its access records (which then go). */
static int upgrade_lru(upgrade *u)
{
    MDB_cursor *c;
    MDB_val k, v;
    int rc;
    if (!u->cache) return 0;
    if ((rc = mdb_drop(u->txn, u->sh.dbi[DB_LRU], 0)) || (rc = mdb_cursor_open(u->txn, u->sh.dbi[DB_ACCESS], &c)))
        return rc;
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
        uint8_t lk[LRU_KEY];
        if (k.mv_size != 8 || v.mv_size != 12) {
            rc = MDB_CORRUPTED;
            break;
        }
        lru_key(lk, get_be64(v.mv_data), get_be64(k.mv_data));
        MDB_val lkv = {LRU_KEY, lk}, empty = {0, ""};
        if ((rc = mdb_put(u->txn, u->sh.dbi[DB_LRU], &lkv, &empty, 0))) break;
    }
    mdb_cursor_close(c);
    if (rc != MDB_NOTFOUND) return rc;
    return mdb_drop(u->txn, u->sh.dbi[DB_ACCESS], 0);
}

/* The ids, sorted and appended: full pages. */
static int upgrade_ids(upgrade *u)
{
    MDB_cursor *c;
    size_t item = u->item;
    int rc;
    if (u->ids.len) qsort_r(u->ids.data, u->ids.len / item, item, same_size_order, &item);
    if ((rc = mdb_cursor_open(u->txn, u->sh.dbi[DB_IDS], &c))) return rc;
    for (size_t i = 0; i < u->ids.len && rc == 0; i += item) {
        MDB_val ik = {u->prefix, u->ids.data + i}, iv = {8, u->ids.data + i + u->prefix};
        int again = i && memcmp(u->ids.data + i - item, u->ids.data + i, u->prefix) == 0;
        rc = mdb_cursor_put(c, &ik, &iv, again ? MDB_APPENDDUP : MDB_APPEND);
    }
    mdb_cursor_close(c);
    return rc;
}

/* The whole upgrade in one write transaction: killed at any point, the store is the store it was. */
static int upgrade_in_txn(upgrade *u)
{
    int rc = mdb_txn_begin(u->sh.env, NULL, 0, &u->txn);
    if (rc) return rc;
    u->total = store_entries(u->txn, u->sh.dbi[DB_EVENTS]);
    /* a cache's records start with slot and length (see the layout); only a cache counts slots */
    if ((rc = store_meta_get_opt(u->txn, u->sh.dbi[DB_META], "next_slot", &u->cache)) || (rc = upgrade_events(u)) ||
        (rc = upgrade_lru(u)) || (rc = upgrade_ids(u)) ||
        (rc = store_meta_put_u64(u->txn, u->sh.dbi[DB_META], "version", SCHEMA_VERSION)) ||
        (rc = store_meta_put_u64(u->txn, u->sh.dbi[DB_META], "key_prefix", u->prefix))) {
        mdb_txn_abort(u->txn);
        return rc;
    }
    return mdb_txn_commit(u->txn);
}

/* Opens the store at path for an upgrade (no other handle of this process may have it). */
static int upgrade_open(const char *path, shared_env *sh, char *err)
{
    char file[4096];
    struct stat sb;
    snprintf(file, sizeof file, "%s/data.mdb", path);
    if (stat(file, &sb) != 0) return store_fail(err, "error: no store at '%s'", path);
    if (stat(path, &sb) != 0) return store_fail(err, "error: cannot read '%s': %s", path, strerror(errno));
    pthread_mutex_lock(&store_registry_lock);
    shared_env *open_here = store_registry;
    while (open_here && !(open_here->dev == sb.st_dev && open_here->ino == sb.st_ino)) open_here = open_here->next;
    pthread_mutex_unlock(&store_registry_lock);
    if (open_here) return store_fail(err, "error: the store at '%s' is open in this process: close it first", path);
    memset(sh, 0, sizeof *sh);
    static const l2_store_opts defaults = {0};
    return store_env_open(sh, path, &defaults, 1, err);
}

int l2_store_upgrade(const char *path, void (*progress)(void *ud, uint64_t done, uint64_t total), void *ud,
                     uint64_t *events, int *already, char *err)
{
    upgrade u = {.events = events, .progress = progress, .ud = ud};
    *events = 0;
    *already = 0;
    if (upgrade_open(path, &u.sh, err)) return -1;
    if (u.sh.version == SCHEMA_VERSION) {
        *already = 1;
        mdb_env_close(u.sh.env);
        return 0;
    }
    l2_event_init(&u.ev);
    l2_buf_init(&u.ids);
    u.prefix = u.sh.version == 1 ? KEY_PREFIX : u.sh.key_prefix;
    u.item = u.prefix + 8;
    int rc = upgrade_in_txn(&u);
    if (rc == 0 && progress) progress(ud, *events, u.total);
    l2_event_free(&u.ev);
    l2_buf_free(&u.ids);
    mdb_env_close(u.sh.env);
    if (rc == 0) return 0;
    *events = 0;
    if (rc == ENOMEM) return store_fail(err, "error: out of memory");
    return store_lmdb_fail(err, "upgrading the store", rc);
}

/* ---- copy ---- */

typedef struct {
    MDB_env *env;
    int fd, compact, rc;
} copy_job;

static void *copy_thread(void *arg)
{
    copy_job *j = arg;
    j->rc = mdb_env_copyfd2(j->env, j->fd, j->compact ? MDB_CP_COMPACT : 0);
    close(j->fd); /* the reader sees the end */
    return NULL;
}

int l2_store_copy(l2_store *st, const char *dir, int compact, void (*progress)(void *ud, uint64_t bytes), void *ud,
                  char *err)
{
    char file[4096];
    int fds[2];
    if (store_make_dirs(dir) != 0) return store_fail(err, "error: cannot create '%s': %s", dir, strerror(errno));
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    if (access(file, F_OK) == 0) return store_fail(err, "error: '%s' already holds a store", dir);
    int out = open(file, O_WRONLY | O_CREAT | O_EXCL, 0664);
    if (out < 0) return store_fail(err, "error: cannot write '%s': %s", file, strerror(errno));
    if (pipe(fds) != 0) {
        close(out);
        return store_fail(err, "error: pipe: %s", strerror(errno));
    }
    /* LMDB writes the copy into a pipe from its own thread; this one writes the file and can
     * report progress to its caller (a Lua callback must run on the Lua thread) */
    copy_job job = {st->env, fds[1], compact, 0};
    pthread_t tid;
    if (pthread_create(&tid, NULL, copy_thread, &job) != 0) {
        close(fds[0]);
        close(fds[1]);
        close(out);
        return store_fail(err, "error: cannot start the copy");
    }
    char buf[1 << 16];
    uint64_t total = 0, reported = 0;
    int werr = 0;
    for (;;) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t off = 0; off < n && !werr;) {
            ssize_t w = write(out, buf + off, (size_t)(n - off));
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) werr = errno;
            else off += w;
        }
        total += (uint64_t)n;
        if (progress && total - reported >= (1u << 20)) {
            progress(ud, total);
            reported = total;
        }
        if (werr) break;
    }
    close(fds[0]); /* a write error stops LMDB with EPIPE */
    pthread_join(tid, NULL);
    if (fsync(out) != 0 && !werr) werr = errno;
    close(out);
    if (werr) return store_fail(err, "error: writing the copy: %s", strerror(werr));
    if (job.rc) return store_lmdb_fail(err, "copying the store", job.rc);
    if (progress) progress(ud, total);
    return 0;
}

/* ---- check ---- */

typedef struct {
    l2_store *st;
    void (*problem)(void *ud, const char *msg);
    void *ud;
    uint64_t count;
} check_ctx;

typedef struct {
    int db;
    const void *key;
    size_t n;
    int found;
} key_match;

static int key_equal(void *ud, int db, const uint8_t *key, size_t n)
{
    key_match *m = ud;
    if (db == m->db && n == m->n && memcmp(key, m->key, n) == 0) m->found = 1;
    return m->found; /* stop at the first match */
}

static void report(check_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void report(check_ctx *c, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->count++;
    if (c->problem) c->problem(c->ud, msg);
}

static int index_present(void *ud, int db, const uint8_t *key, size_t n)
{
    check_ctx *c = ud;
    MDB_val k = {n, (void *)key}, v;
    if (mdb_get(c->st->rtxn, c->st->dbi[db], &k, &v) != 0) {
        char hex[65];
        l2_hex_encode(hex, c->st->ev.id, 32);
        hex[64] = 0;
        report(c, "event %s is missing from the %s index", hex, store_db_names[db]);
    }
    return 0;
}

/* Every event: decodes, is in ids, and has all its index keys (unless an import running now
 * builds them at its end); a cache's bodies are there, whole. *nevents counted. */
static int check_events(check_ctx *c, MDB_txn *t, int importing, uint64_t *nevents)
{
    l2_store *st = c->st;
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t nbodies = 0;
    int rc = mdb_cursor_open(t, st->dbi[DB_EVENTS], &cur);
    if (rc) return rc;
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        uint64_t serial = get_be64(k.mv_data), s2;
        record r;
        ++*nevents;
        if (store_load_head(st, t, serial, &st->ev, &r) != 0) {
            report(c, "event at serial %llu does not decode", (unsigned long long)serial);
            continue;
        }
        if (store_lookup_id(t, st, st->ev.id, &s2) != 0 || s2 != serial)
            report(c, "event at serial %llu is missing from the ids index", (unsigned long long)serial);
        if (!importing) store_for_each_index(st->sh->key_prefix, &st->ev, serial, index_present, c);
        if (st->cache && r.slot) {
            /* a cache's body: there, whole, and the same event as its record */
            const void *body;
            size_t len;
            if (r.slot != INLINE_SLOT) nbodies++;
            if (store_get_body(t, st, &r, &body, &len) != 0 || len != r.body_len || len < 33 ||
                memcmp((const uint8_t *)body + 1, st->ev.id, 32) != 0)
                report(c, "event at serial %llu has a missing or wrong body", (unsigned long long)serial);
        }
    }
    mdb_cursor_close(cur);
    if (st->cache && store_entries(t, st->dbi[DB_BODIES]) != nbodies)
        report(c, "the cache holds %llu bodies for %llu whole events",
               (unsigned long long)store_entries(t, st->dbi[DB_BODIES]), (unsigned long long)nbodies);
    return 0;
}

/* Every index entry points at a live event whose own keys include it. */
static int check_indexes(check_ctx *c, MDB_txn *t)
{
    static const int dbs[] = {DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE};
    l2_store *st = c->st;
    MDB_cursor *cur;
    MDB_val k, v;
    for (size_t i = 0; i < sizeof dbs / sizeof *dbs; i++) {
        int rc = mdb_cursor_open(t, st->dbi[dbs[i]], &cur);
        if (rc) return rc;
        while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
            uint64_t serial = dbs[i] == DB_EXPIRE ? (k.mv_size == 16 ? get_be64((uint8_t *)k.mv_data + 8) : 0)
                              : k.mv_size >= TAIL ? tail_serial((uint8_t *)k.mv_data + k.mv_size - TAIL) : 0;
            key_match m = {dbs[i], k.mv_data, k.mv_size, 0};
            if (store_load(st, t, serial, &st->ev, 0) != 0)
                report(c, "a %s index entry points at no event (serial %llu)", store_db_names[dbs[i]],
                       (unsigned long long)serial);
            else if (store_for_each_index(st->sh->key_prefix, &st->ev, serial, key_equal, &m), !m.found)
                report(c, "a %s index entry does not describe the event it points at (serial %llu)",
                       store_db_names[dbs[i]], (unsigned long long)serial);
        }
        mdb_cursor_close(cur);
    }
    return 0;
}

/* Every replace head describes an event of that slot (which a cache may have evicted). */
static int check_heads(check_ctx *c, MDB_txn *t)
{
    l2_store *st = c->st;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc = mdb_cursor_open(t, st->dbi[DB_REPLACE], &cur);
    if (rc) return rc;
    while (mdb_cursor_get(cur, &k, &v, MDB_NEXT) == 0) {
        head_rec h;
        if (store_get_head(t, st, k.mv_data, k.mv_size, &h) != 0) {
            report(c, "a replaceable head record is malformed");
            continue;
        }
        if (store_load(st, t, h.serial, &st->ev, 0) != 0) {
            if (!st->cache) report(c, "a replaceable head points at no event (serial %llu)", (unsigned long long)h.serial);
            continue;
        }
        uint8_t ak[MAX_ADDR_KEY];
        l2_str d = l2_d_value(&st->ev);
        size_t n = addr_key(ak, st->ev.pubkey, st->ev.kind, d.p, d.n);
        if (n != k.mv_size || memcmp(ak, k.mv_data, n) != 0 || h.created_at != st->ev.created_at ||
            memcmp(h.id, st->ev.id, 32) != 0)
            report(c, "a replaceable head does not describe the event it points at (serial %llu)",
                   (unsigned long long)h.serial);
    }
    mdb_cursor_close(cur);
    return 0;
}

int l2_store_check(l2_store *st, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems, char *err)
{
    check_ctx c = {st, problem, ud, 0};
    if (store_read_begin(st, err)) return -1;
    MDB_txn *t = st->rtxn;
    uint64_t importer, nevents = 0;
    int rc = store_meta_get_opt(t, st->dbi[DB_META], "indexing", &importer);
    if (rc == 0 && importer)
        report(&c, "an import (process %llu) is under way: its events get their index keys when it ends",
               (unsigned long long)importer);
    if (rc == 0) rc = check_events(&c, t, importer != 0, &nevents);
    if (rc == 0) rc = check_indexes(&c, t);
    if (rc == 0 && store_entries(t, st->dbi[DB_IDS]) != nevents)
        report(&c, "the ids index holds %llu entries for %llu events", (unsigned long long)store_entries(t, st->dbi[DB_IDS]),
               (unsigned long long)nevents);
    if (rc == 0) rc = check_heads(&c, t);
    l2_store_read_end(st);
    if (rc) return store_lmdb_fail(err, "check", rc);
    *nproblems = c.count;
    return 0;
}
