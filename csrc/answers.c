#include "answers.h"
#include "be.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HEAD 36 /* expires(8) now(8) epoch(8) nids(4) filter_len(4) nwhole(4) */
#define RECORD 'R'           /* 'A' had whole ids only (cleared by l2_answers_upgrade) */
#define WHOLE (1ull << 63) /* an entry that is an index into the whole ids, not a serial */

/* FNV-1a over the filter, then the now, finished by a 64-bit mix */
static uint64_t key_hash(const l2_answer_key *k)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < k->len; i++) h = (h ^ (uint8_t)k->filter[i]) * 0x100000001b3ull;
    h ^= (uint64_t)k->now;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
}


int l2_answer_filter(const l2_answer_key *k, l2_filter *f)
{
    /* the stored filters are the canonical JSON of filters that passed the caller's checks */
    return l2_filter_parse_json(f, k->filter, k->len, &l2_unlimited_filter_limits, NULL) ? -1 : 0;
}

static size_t record_size(size_t filter_len, size_t n, size_t nwhole)
{
    return HEAD + filter_len + 8 * n + 32 * nwhole;
}

static int get_record(MDB_txn *txn, MDB_dbi dbi, uint64_t hash, MDB_val *v)
{
    uint8_t kb[9] = {RECORD};
    put_be64(kb + 1, hash);
    MDB_val kv = {9, kb};
    int rc = mdb_get(txn, dbi, &kv, v);
    if (rc) return rc;
    const uint8_t *p = v->mv_data;
    if (v->mv_size < HEAD || v->mv_size != record_size(get_be32(p + 28), get_be32(p + 24), get_be32(p + 32)))
        return MDB_CORRUPTED;
    return 0;
}

/* The key a record holds. */
static l2_answer_key record_key(const MDB_val *v)
{
    const uint8_t *p = v->mv_data;
    l2_answer_key k = {(const char *)p + HEAD, get_be32(p + 28), (int64_t)get_be64(p + 8), get_be64(p + 16)};
    return k;
}

int l2_answers_get(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, int64_t t, l2_answer_view *a)
{
    MDB_val v;
    int rc = get_record(txn, dbi, key_hash(k), &v);
    if (rc) return rc;
    const uint8_t *p = v.mv_data;
    l2_answer_key kept = record_key(&v);
    if (kept.len != k->len || kept.now != k->now || kept.epoch != k->epoch ||
        memcmp(kept.filter, k->filter, k->len) != 0 || (int64_t)get_be64(p) < t)
        return MDB_NOTFOUND;
    a->n = get_be32(p + 24);
    a->nwhole = get_be32(p + 32);
    a->entries = p + HEAD + kept.len;
    a->whole = a->entries + 8 * a->n;
    return 0;
}

int l2_answer_entry(const l2_answer_view *a, size_t i, uint64_t *serial, const uint8_t **id)
{
    uint64_t e = get_be64(a->entries + 8 * i);
    if (!(e & WHOLE)) {
        *serial = e;
        return 1;
    }
    if ((e & ~WHOLE) >= a->nwhole) return -1;
    *id = a->whole + 32 * (e & ~WHOLE);
    return 0;
}

typedef int (*index_fn)(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key, size_t n);

static int answers_index_put(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key}, v = {0, ""};
    return mdb_put(txn, dbi, &k, &v, 0);
}

static int answers_index_del(MDB_txn *txn, MDB_dbi dbi, const uint8_t *key, size_t n)
{
    MDB_val k = {n, (void *)key};
    int rc = mdb_del(txn, dbi, &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* Calls fn for each index key of the answer with this filter and hash. */
static int for_each_index(MDB_txn *txn, MDB_dbi dbi, const l2_filter *f, uint64_t hash, index_fn fn)
{
    uint8_t k[41];
    int rc = 0;
    if (f->have & L2_F_AUTHORS) {
        k[0] = 'a';
        put_be64(k + 33, hash);
        for (uint32_t i = 0; rc == 0 && i < f->nauthors; i++) {
            memcpy(k + 1, f->authors[i], 32);
            rc = fn(txn, dbi, k, 41);
        }
    } else if (f->have & L2_F_KINDS) {
        k[0] = 'k';
        put_be64(k + 3, hash);
        for (uint32_t i = 0; rc == 0 && i < f->nkinds; i++) {
            k[1] = (uint8_t)(f->kinds[i] >> 8), k[2] = (uint8_t)f->kinds[i];
            rc = fn(txn, dbi, k, 11);
        }
    } else {
        k[0] = 'u';
        put_be64(k + 1, hash);
        rc = fn(txn, dbi, k, 9);
    }
    return rc;
}

/* What an answer takes in L1, in 32-byte units (the size of an id): its record (filter, entries
 * and whole ids) and its index entries, each with LMDB's node header and page slot. Counted so,
 * not by its ids, the bound holds in bytes. */
static uint64_t answer_units(const l2_filter *f, size_t filter_len, size_t n, size_t nwhole)
{
    uint64_t bytes = 9 + (uint64_t)record_size(filter_len, n, nwhole) + 10;
    if (f->have & L2_F_AUTHORS) bytes += (uint64_t)f->nauthors * (41 + 10);
    else if (f->have & L2_F_KINDS) bytes += (uint64_t)f->nkinds * (11 + 10);
    else bytes += 9 + 10;
    return (bytes + 31) / 32;
}

static int count_get(MDB_txn *txn, MDB_dbi dbi, uint64_t *n)
{
    MDB_val k = {1, "N"}, v;
    int rc = mdb_get(txn, dbi, &k, &v);
    *n = rc == 0 && v.mv_size == 8 ? get_be64(v.mv_data) : 0;
    return rc == MDB_NOTFOUND ? 0 : rc;
}

static int count_put(MDB_txn *txn, MDB_dbi dbi, uint64_t n)
{
    uint8_t b[8];
    put_be64(b, n);
    MDB_val k = {1, "N"}, v = {8, b};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Drops the record under hash with its index entries. */
static int drop_hash(MDB_txn *txn, MDB_dbi dbi, uint64_t hash)
{
    MDB_val v;
    int rc = get_record(txn, dbi, hash, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    uint64_t n = get_be32((uint8_t *)v.mv_data + 24), nwhole = get_be32((uint8_t *)v.mv_data + 32), total, units;
    l2_answer_key kept = record_key(&v);
    l2_filter f;
    l2_filter_init(&f);
    /* a record whose filter no longer parses cannot be unindexed entry by entry: all go */
    if (l2_answer_filter(&kept, &f)) rc = mdb_drop(txn, dbi, 0);
    else if ((rc = for_each_index(txn, dbi, &f, hash, answers_index_del)) == 0) {
        uint8_t kb[9] = {RECORD};
        put_be64(kb + 1, hash);
        MDB_val kv = {9, kb};
        units = answer_units(&f, kept.len, n, nwhole);
        if ((rc = mdb_del(txn, dbi, &kv, NULL)) == 0 && (rc = count_get(txn, dbi, &total)) == 0)
            rc = count_put(txn, dbi, total > units ? total - units : 0);
    }
    l2_filter_free(&f);
    return rc;
}

int l2_answers_drop(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k)
{
    return drop_hash(txn, dbi, key_hash(k));
}

int l2_answers_put(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, const uint64_t *serials,
                   const uint8_t (*ids)[32], size_t n, int64_t expires, uint64_t max_ids)
{
    uint64_t hash = key_hash(k), total, units = 0;
    size_t nwhole = 0;
    for (size_t i = 0; i < n; i++) nwhole += !serials[i];
    l2_filter f;
    l2_filter_init(&f);
    int rc = drop_hash(txn, dbi, hash);
    if (rc == 0 && l2_answer_filter(k, &f)) rc = MDB_INCOMPATIBLE; /* not a key this file made */
    if (rc == 0) units = answer_units(&f, k->len, n, nwhole);
    if (rc == 0) rc = count_get(txn, dbi, &total);
    if (rc == 0 && total + units > max_ids) {
        rc = mdb_drop(txn, dbi, 0);
        total = 0;
    }
    if (rc == 0) {
        uint8_t kb[9] = {RECORD};
        put_be64(kb + 1, hash);
        MDB_val kv = {9, kb}, v = {record_size(k->len, n, nwhole), NULL};
        if ((rc = mdb_put(txn, dbi, &kv, &v, MDB_RESERVE)) == 0) {
            uint8_t *p = v.mv_data;
            put_be64(p, (uint64_t)expires);
            put_be64(p + 8, (uint64_t)k->now);
            put_be64(p + 16, k->epoch);
            put_be32(p + 24, (uint32_t)n);
            put_be32(p + 28, (uint32_t)k->len);
            put_be32(p + 32, (uint32_t)nwhole);
            memcpy(p + HEAD, k->filter, k->len);
            uint8_t *entry = p + HEAD + k->len, *whole = entry + 8 * n;
            for (size_t i = 0, j = 0; i < n; i++, entry += 8) {
                if (serials[i]) {
                    put_be64(entry, serials[i]);
                    continue;
                }
                put_be64(entry, WHOLE | j);
                memcpy(whole + 32 * j++, ids[i], 32);
            }
            rc = for_each_index(txn, dbi, &f, hash, answers_index_put);
        }
    }
    if (rc == 0) rc = count_put(txn, dbi, total + units);
    l2_filter_free(&f);
    return rc;
}

/* Does the answer under hash have a filter ev may match? */
static int touches(MDB_txn *txn, MDB_dbi dbi, uint64_t hash, const l2_event *ev, int *hit)
{
    MDB_val v;
    *hit = 0;
    int rc = get_record(txn, dbi, hash, &v);
    if (rc) return rc == MDB_NOTFOUND ? 0 : rc;
    l2_answer_key kept = record_key(&v);
    l2_filter f;
    l2_filter_init(&f);
    *hit = l2_answer_filter(&kept, &f) || l2_filter_match(&f, ev);
    l2_filter_free(&f);
    return 0;
}

int l2_answers_touch(MDB_txn *txn, MDB_dbi dbi, const l2_event *ev)
{
    uint8_t prefixes[3][33];
    size_t lens[3] = {33, 3, 1};
    prefixes[0][0] = 'a';
    memcpy(prefixes[0] + 1, ev->pubkey, 32);
    prefixes[1][0] = 'k', prefixes[1][1] = (uint8_t)(ev->kind >> 8), prefixes[1][2] = (uint8_t)ev->kind;
    prefixes[2][0] = 'u';
    MDB_cursor *c;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc) return rc;
    /* the answers to drop are gathered first: dropping moves the cursor's ground */
    uint64_t small[16], *drop = small;
    size_t ndrop = 0, cap = 16;
    for (int p = 0; rc == 0 && p < 3; p++) {
        MDB_val k = {lens[p], prefixes[p]}, v;
        int crc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
        for (; crc == 0 && k.mv_size == lens[p] + 8 && memcmp(k.mv_data, prefixes[p], lens[p]) == 0;
             crc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
            uint64_t hash = get_be64((uint8_t *)k.mv_data + lens[p]);
            int hit;
            if ((rc = touches(txn, dbi, hash, ev, &hit))) break;
            if (!hit) continue;
            if (ndrop == cap) {
                uint64_t *grown = malloc(2 * cap * sizeof *grown);
                if (!grown) {
                    rc = ENOMEM;
                    break;
                }
                memcpy(grown, drop, ndrop * sizeof *drop);
                if (drop != small) free(drop);
                drop = grown, cap *= 2;
            }
            drop[ndrop++] = hash;
        }
        if (crc && crc != MDB_NOTFOUND && !rc) rc = crc;
    }
    mdb_cursor_close(c);
    for (size_t i = 0; rc == 0 && i < ndrop; i++) rc = drop_hash(txn, dbi, drop[i]);
    if (drop != small) free(drop);
    return rc;
}

int l2_answers_upgrade(MDB_txn *txn, MDB_dbi dbi)
{
    MDB_cursor *c;
    MDB_val k = {1, "A"}, v;
    int rc = mdb_cursor_open(txn, dbi, &c);
    if (rc) return rc;
    rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
    int old = rc == 0 && ((const uint8_t *)k.mv_data)[0] == 'A';
    mdb_cursor_close(c);
    if (rc && rc != MDB_NOTFOUND) return rc;
    return old ? mdb_drop(txn, dbi, 0) : 0;
}
