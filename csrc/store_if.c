/* store_if.c: the store interface (storeif.h) over an LMDB store. Shared with the other parts
 * through store_int.h. */
#include "store_int.h"

static const char *if_path(void *st)
{
    return l2_store_path(st);
}

static void if_close(void *st)
{
    l2_store_close(st);
}

static int if_save(void *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res, char *err)
{
    return l2_store_save_batch(st, evs, n, now, flags, res, err);
}

static int if_delete(void *st, const uint8_t id[32], int tombstone, int flags, int *found, char *err)
{
    return l2_store_delete(st, id, tombstone, (flags & L2_SAVE_OUTBOX) != 0, found, err);
}

static int if_query(void *vst, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                    uint8_t *incomplete, l2_row_fn row, void *ud, char *err)
{
    l2_store *st = vst;
    if (l2_store_query(st, fs, nf, max_limit, now, horizon, incomplete, &st->hits, err)) return -1;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < st->hits.n; i++) {
        const l2_hit *h = &st->hits.v[i];
        l2_row r = {0};
        r.stub = h->stub;
        memcpy(r.id, h->id, 32);
        if (!h->stub && l2_store_hit_body(st, h, &r.bin, &r.bin_len)) continue;
        rc = row(ud, &r);
    }
    l2_store_read_end(st);
    return 0;
}

static int if_count(void *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err)
{
    return l2_store_count(st, fs, nf, now, n, err);
}

static int if_export(void *vst, const uint8_t (*keys)[32], size_t nkeys, int filtered, l2_row_fn row, void *ud,
                     char *err)
{
    l2_store *st = vst;
    uint64_t serial;
    l2_row r = {0};
    if (l2_store_iter_begin(st, err)) return -1;
    int rc = 0;
    while (rc == 0 && l2_store_iter_next(st, &serial, &r.bin, &r.bin_len)) {
        if (filtered && (l2_event_decode_bin(&st->ev, r.bin, r.bin_len, NULL) ||
                         !l2_event_names_pubkey(&st->ev, keys, nkeys)))
            continue;
        rc = row(ud, &r);
    }
    l2_store_read_end(st);
    return 0;
}

static int if_changes(void *vst, uint64_t after, size_t max, l2_change_fn fn, void *ud, char *err)
{
    l2_store *st = vst;
    l2_change *ch = malloc((max ? max : 1) * sizeof *ch);
    size_t n;
    if (!ch) return store_fail(err, "error: out of memory");
    if (l2_store_changes(st, after, max, ch, &n, err)) {
        free(ch);
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        l2_row r = {0};
        int have = ch[i].op == L2_CHANGE_SAVED && l2_store_body(st, ch[i].serial, &r.bin, &r.bin_len) == 0;
        if (have) memcpy(r.id, ch[i].id, 32);
        rc = fn(ud, ch[i].seq, ch[i].op, ch[i].have_id ? ch[i].id : NULL, have ? &r : NULL);
    }
    l2_store_read_end(st);
    free(ch);
    return 0;
}

static int if_stats(void *st, l2_stat_fn field, void *ud, char *err)
{
    l2_store_stats s;
    if (l2_store_stats_get(st, &s, err)) return -1;
#define FIELD(name) field(ud, #name, s.name)
    FIELD(events);
    FIELD(stubs);
    FIELD(outbox);
    FIELD(free_bytes);
    FIELD(index_entries);
    FIELD(tombstones);
    FIELD(heads);
    FIELD(changes);
    FIELD(last_seq);
    FIELD(used_bytes);
    FIELD(map_bytes);
    FIELD(file_bytes);
    FIELD(page_size);
#undef FIELD
    return 0;
}

static int if_check(void *st, l2_problem_fn problem, void *ud, uint64_t *n, char *err)
{
    return l2_store_check(st, problem, ud, n, err);
}

static int if_sweep(void *st, int64_t now, uint64_t *removed, char *err)
{
    return l2_store_sweep(st, now, removed, err);
}

static int if_nuke(void *st, char *err)
{
    return l2_store_nuke(st, err);
}

static int if_sync(void *st, char *err)
{
    return l2_store_sync(st, err);
}

static int if_after_import(void *st, char *err)
{
    return l2_store_after_import(st, err);
}

typedef struct {
    l2_item_fn item;
    void *ud;
} items_walk;

/* An item from the binary form's head: created_at and id, the body left unread. */
static int item_of_row(void *ud, const l2_row *r)
{
    items_walk *w = ud;
    int64_t at;
    uint8_t id[32];
    if (r->stub || l2_event_bin_key(r->bin, r->bin_len, &at, id)) return 0; /* unreadable: check() says so */
    return w->item(w->ud, at, id);
}

static int if_items(void *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, l2_item_fn item,
                    void *ud, char *err)
{
    items_walk w = {item, ud};
    return if_query(st, fs, nf, max_limit, now, 0, NULL, item_of_row, &w, err);
}

static void if_last_changes(void *st, uint64_t *first, uint64_t *last)
{
    l2_store_last_changes(st, first, last);
}

typedef struct {
    l2_change_fn fn;
    void *ud;
    uint64_t last;
} feed_walk;

static int feed_change(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row)
{
    feed_walk *w = ud;
    w->last = seq;
    return w->fn(w->ud, seq, op, id, row);
}

/* Sequence numbers are taken inside the one write transaction at a time: their order is commit
 * order, and the feed is the change records as they are. */
static int if_feed(void *st, uint64_t pos, size_t max, l2_change_fn fn, void *ud, uint64_t *next, char *err)
{
    if (!max) {
        l2_store_stats s;
        if (l2_store_stats_get(st, &s, err)) return -1;
        *next = s.last_seq;
        return 0;
    }
    feed_walk w = {fn, ud, pos};
    if (if_changes(st, pos, max, feed_change, &w, err)) return -1;
    *next = w.last;
    return 0;
}

/* The removals among the changes its last write recorded (what it removes, it records). */
static int if_last_removed(void *vst, l2_change_fn fn, void *ud, char *err)
{
    l2_store *st = vst;
    uint64_t first, last;
    l2_store_last_changes(st, &first, &last);
    if (first > last) return 0;
    size_t max = (size_t)(last - first + 1), n;
    l2_change *ch = malloc(max * sizeof *ch);
    if (!ch) return store_fail(err, "error: out of memory");
    int rc = l2_store_changes(st, first - 1, max, ch, &n, err);
    l2_store_read_end(st);
    for (size_t i = 0; rc == 0 && i < n; i++)
        if (ch[i].op != L2_CHANGE_SAVED && ch[i].have_id && fn(ud, ch[i].seq, ch[i].op, ch[i].id, NULL)) break;
    free(ch);
    return rc;
}

const l2_store_if l2_lmdb_store_if = {
    "lmdb", if_path, if_close, if_save, if_delete, if_query, if_count, if_export, if_changes, if_stats, if_check,
    if_sweep, if_nuke, if_sync, if_after_import, if_items, if_last_changes, if_feed, if_last_removed,
};
