/* store_int.h: what the parts of the LMDB store (store_*.c) share; private to them. The public
 * API is store.h. Each store_*.c includes this header first. */
#ifndef L2_STORE_INT_H
#define L2_STORE_INT_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* qsort_r */
#endif
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "answers.h"
#include "be.h"
#include "rules.h"

/* ---- layout ----
 * Format 4. P, the key prefix: the first P bytes (8; fixed when the store is made) of an id, a
 * pubkey or a 64-hex tag value stand for it in an index key. Such keys may collide (two pubkeys
 * sharing P bytes); every candidate is checked against the whole filter (an id lookup against the
 * event's own id) before it is returned, so a collision costs a read, never a wrong answer.
 * T, the tail of the scanned indexes' keys: created(4) serial(6), 10 bytes (format 3 had 8 + 8).
 * created is created_at, or 2^32 - 1 for every later one (from the year 2106): the events past
 * it share that key value, and a scan takes them all as ties of one another, ordered by their own
 * created_at (run_filter), so the key only costs them reads. Serials stay under 2^48.
 * `layer2 upgrade` rebuilds the indexes of an older store (l2_store_upgrade): format 1 had whole
 * 32-byte values everywhere, format 2 whole ids (and a cache's stub beside each body), format 3
 * 16-byte tails.
 * events   serial(8)                              -> binary event
 * ids      id(P)                                  -> serial(8), sorted duplicates (an id prefix
 *                                                    several events share holds each serial)
 * pubkey   pubkey(P) T                            -> ""
 * kind     kind(2) T                              -> ""
 * pubkind  pubkey(P) kind(2) T                    -> ""
 * tag      letter(1) value(V) T                   -> ""   (single-letter tags with a value)
 * created  T                                      -> ""
 * expire   l2_expiration(8) serial(8)                -> ""
 * replace  pubkey(32) kind(2) d(V)                -> serial(8) created_at(8) id(32)  (a slot's head: the
 *          record that refuses older versions; it outlives the event itself when a cache evicts it)
 * tomb     id(32) author(32)                      -> ""          (NIP-09 `e` deletions)
 * atomb    pubkey(32) kind(2) d(V)                -> created_at(8) (NIP-09 `a` deletions)
 * changes  seq(8)                                 -> op(1) serial(8) [id(32) for replaced/deleted]
 * meta     name                                   -> value ("u:" + name for the caller's own;
 *          "indexing": the pid of an import into an empty store whose indexes wait for its end)
 * A cache (the L1) stores its records differently, so that eviction frees space:
 * events   serial(8)      -> slot(4) body length(4) then, with a body, last access ms(8) hits(4)
 *                           (CACHE_RECORD bytes; the body is its own head: one copy of each
 *                           event), else the stub form (slot 0: a stub). Format 2 wrote the stub
 *                           form beside the body too, format 3 the access statistics apart.
 *                           Slot INLINE_SLOT: the body follows, in the record itself (written by
 *                           a cache without a size limit, l2_store_never_evicts; any cache reads
 *                           and evicts it)
 * bodies   slot(4)        -> binary event    (slots are reused, lowest first, so new bodies fill the
 *                                              room old ones left inside pages: B-tree pages only
 *                                              come free when nearly empty)
 * freeslots slot(4)       -> ""
 * A cache also keeps:
 * lru      last access ms(6) serial(6)            -> ""          (coldest first; 8 + 8 in format 3)
 * stubs    created_at(8) serial(8)                -> ""          (stubs that may go, oldest first)
 * outbox   seq(8)                                 -> 'S' binary event | 'D' id(32) tombstone(1)
 * answers  remembered answers: see answers.h
 * access   format 3's access statistics (serial -> ms(8) hits(4)): the upgrade empties it
 * Integers are big-endian so cursors walk in order. V, a value key: 64-char lowercase hex as
 * 0xFE + its first P bytes (32 in replace and atomb, which are looked up, not scanned), up to 64
 * bytes as length + bytes, longer as 0xFF + 47 bytes + 16 bytes of its sha256. */

#define SCHEMA_VERSION 4
#define IDS_FLAGS (MDB_DUPSORT | MDB_DUPFIXED) /* ids since format 3: a key prefix may hold several ids */
#define TAIL 10                                 /* T: see the layout */
#define LATER 0xFFFFFFFFu                      /* T's created for created_at 2^32 - 1 and later */
#define MAX_BE48 ((1ull << 48) - 1)
#define MAX_SERIAL MAX_BE48
#define CACHE_RECORD 20 /* a cache's events record of an event with its body */
#define INLINE_SLOT 0xFFFFFFFFu /* the slot of a body kept in its events record (l2_store_never_evicts) */
#define KEY_PREFIX 8 /* P: see the layout */
#define DEFAULT_MAP (1ull << 30)
#define INDEX_MEMORY (512u << 20)
#define MAX_VALUE_KEY 65
#define MAX_ADDR_KEY (32 + 2 + MAX_VALUE_KEY)
#define FULL 32 /* a whole 32-byte value in a key */

enum { DB_EVENTS, DB_IDS, DB_PUBKEY, DB_KIND, DB_PUBKIND, DB_TAG, DB_CREATED, DB_EXPIRE, DB_REPLACE,
       DB_TOMB, DB_ATOMB, DB_CHANGES, DB_META, DB_ACCESS, DB_LRU, DB_STUBS, DB_OUTBOX, DB_BODIES,
       DB_FREESLOTS, DB_ANSWERS, DB_GHOSTS, DB_COUNT };

/* One LMDB environment per directory and process: LMDB forbids opening it twice. */
typedef struct shared_env {
    dev_t dev;
    ino_t ino;
    pid_t pid;
    int refs;
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    size_t map_size;
    size_t key_prefix; /* P */
    int version;       /* the store's format (older only while l2_store_upgrade has it open) */
    struct shared_env *next;
} shared_env;

struct l2_store {
    shared_env *sh;
    MDB_env *env;
    MDB_dbi *dbi;
    char *path;
    int fixed_map;
    size_t index_memory; /* l2_store_opts */
    MDB_txn *rtxn;     /* reused read transaction: reset between uses, renewed when needed */
    int rtxn_live;
    uint64_t reads; /* the number of its read transaction (an l2_hit's body is valid in its own only) */
    MDB_cursor *iter;
    /* the read transaction's cursors on events and bodies (store_get_record): an event a query
     * reads next is often on the page of the one before, which a cursor's MDB_SET finds without a
     * search from the root (mdb_get searches from it every time); renewed with the transaction */
    MDB_cursor *rcur[2];
    int rcur_live[2];
    l2_event ev, old;  /* decoded bodies */
    l2_buf body, key;  /* copies and key building */
    int cache;         /* keeps access statistics and stubs (an L1) */
    int never_evicts;  /* a cache without a size limit (l2_store_never_evicts) */
    uint64_t query_ms; /* a cache's query under way: when its bodies are read (an access) */
    const int64_t *horizon_floor; /* l2_store_share_horizon */
    int backed;                   /* l2_store_set_backed */
    /* reads counted in memory, written in the next write transaction: never a write per read;
     * found by serial through touch_slots (open addressing, twice touched_cap; a slot is in use
     * when its high half is touch_gen, so emptying the table is a step of touch_gen) */
    struct store_touch { uint64_t serial, last_ms; uint32_t hits; } *touched;
    size_t ntouched, touched_cap;
    uint64_t *touch_slots;
    uint32_t touch_gen;
    l2_hits hits; /* a query's answer, for the store interface */
    /* a cache's next write mirrors L2's changes [mirror_first, mirror_last] (l2_store_mirror_next),
     * and what recording them did to its feed position */
    uint64_t mirror_first, mirror_last;
    int mirror_set, mirror_result, mirror_commutes;
    uint64_t last_first, last_last; /* the changes the last write recorded (l2_store_last_changes) */
    int (*light_waiting)(void *ud);  /* l2_store_give_way */
    void *light_ud;
};

/* Forgets the reads counted in memory (written, or dropped). */
void store_touched_reset(l2_store *st);

/* A cache's lru key (the layout); milliseconds fit 48 bits until the year 10889 */
#define LRU_KEY 12

typedef struct {
    l2_store *st;
    MDB_txn *txn;
    uint64_t serial, seq; /* the next free ones */
    int may_tomb, may_atomb; /* tombstones exist: lookups are worth doing */
    int may_answer;          /* remembered answers exist: a save must look for those it touches */
    uint64_t next_slot, body_bytes; /* a cache's body slots and the bytes its bodies hold */
    int quiet; /* a cache fill: what it stores is not news, so the change feed does not hear of it */
    int defer_index; /* an import into an empty store: the indexes are built at its end */
    int drop_heads;  /* an eviction takes the slot's head too (see l2_store_set_backed) */
    int gave_way;    /* a save stopped part way for a light one (L2_SAVE_GIVE_WAY) */
} wtx;

/* Calls fn for every index key of ev (all but ids and replace): the one definition used by
 * insert, delete and check, so they can never disagree. */
typedef int (*index_fn)(void *ud, int db, const uint8_t *key, size_t n);

/* An events record: for a plain store the body itself; for a cache slot | length, then the stub
 * form when there is no body (format 2 kept it beside the body too: such records still read). */
typedef struct {
    const uint8_t *head; /* what filters and indexes read: the body, or the stub form */
    size_t head_len;
    uint32_t slot, body_len; /* a cache's body: slot 0 when only the stub is left */
    int head_is_body;        /* a cache's head read from its body (valid until the next write) */
} record;

typedef struct {
    uint64_t serial;
    int64_t created_at;
    uint8_t id[32];
} head_rec;

typedef struct {
    l2_event *const *evs;
    size_t n;
    int64_t now;
    int flags;
    l2_save_result *res;
} save_args;

#define FEED_KEY "l2_feed"

/* T of the layout */
static inline void put_tail(uint8_t *p, int64_t created_at, uint64_t serial)
{
    put_be32(p, created_at < 0 ? 0 : created_at >= LATER ? LATER : (uint32_t)created_at);
    put_be48(p + 4, serial);
}

/* T's created as a scan orders by it: the shared value of the latest is later than any other */
static inline int64_t tail_created(const uint8_t *p)
{
    uint32_t c = get_be32(p);
    return c == LATER ? INT64_MAX : c;
}

static inline uint64_t tail_serial(const uint8_t *p)
{
    return get_be48(p + 4);
}

static inline void lru_key(uint8_t *k, uint64_t ms, uint64_t serial)
{
    put_be48(k, ms > MAX_BE48 ? MAX_BE48 : ms);
    put_be48(k + 6, serial);
}

/* The key of a tag value (V in the layout); a 64-hex value keeps its first `hex` bytes. */
static inline size_t value_key(uint8_t *out, const char *s, size_t n, size_t hex)
{
    uint8_t b[32];
    if (n == 64 && l2_hex_decode(b, s, 32) == 0) {
        out[0] = 0xFE;
        memcpy(out + 1, b, hex);
        return 1 + hex;
    }
    if (n <= 64) {
        out[0] = (uint8_t)n;
        if (n) memcpy(out + 1, s, n);
        return 1 + n;
    }
    uint8_t h[32];
    l2_sha256(s, n, h);
    out[0] = 0xFF;
    memcpy(out + 1, s, 47);
    memcpy(out + 48, h, 16);
    return 64;
}

static inline size_t addr_key(uint8_t *out, const uint8_t pubkey[32], uint32_t kind, const char *d, size_t dn)
{
    memcpy(out, pubkey, 32);
    put_be16(out + 32, kind);
    return 34 + value_key(out + 34, d, dn, FULL);
}

/* ---- store_env.c ---- */

extern const char *store_db_names[DB_COUNT];

extern pthread_mutex_t store_registry_lock;

extern shared_env *store_registry;

int store_fail(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A meta value written as decimal text: 0, or -1 when it is not one. */
int store_parse_int(const void *p, size_t n, int64_t *out);

int store_lmdb_fail(char *err, const char *what, int rc);

/* A meta value written by store_meta_put_u64, or 0 when there is none. */
int store_meta_get_opt(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out);

int store_env_open(shared_env *sh, const char *path, const l2_store_opts *o, int upgrading, char *err);

/* mkdir -p */
int store_make_dirs(const char *path);

/* Another process grew the map: adopt its size (no transaction of ours may be live). */
int store_adopt_map(l2_store *st);

int store_read_begin(l2_store *st, char *err);

/* ---- store_write.c ---- */

int store_meta_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t *out);

int store_meta_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *name, uint64_t val);

int store_put_empty(wtx *w, int db, const uint8_t *key, size_t n);

int store_del_key(wtx *w, int db, const uint8_t *key, size_t n);

int store_for_each_index(size_t p, const l2_event *ev, uint64_t serial, index_fn fn, void *ud);

int store_get_record(MDB_txn *txn, l2_store *st, uint64_t serial, record *r);
/* The read transaction's cursor on events (which 0) or bodies (1), renewed for it on first use;
 * NULL when LMDB cannot give one (the caller then uses mdb_get). Closed by
 * store_read_cursors_close, with the store or before its read transaction is aborted. */
MDB_cursor *store_read_cursor(l2_store *st, int which);
void store_read_cursors_close(l2_store *st);

/* The whole binary event of a record: MDB_NOTFOUND for a cache's stub. */
int store_get_body(MDB_txn *txn, l2_store *st, const record *r, const void **data, size_t *len);

/* Decodes what filters and indexes need of `serial` (a cache's stub form holds all of it);
 * ev->is_stub tells whether the body is gone. */
int store_decode_head(l2_store *st, const record *r, l2_event *ev);

int store_load_head(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, record *r);

/* Decodes the stored event `serial` into ev, whole when its body is there (a private copy when
 * `copy`); MDB_NOTFOUND if absent. */
int store_load(l2_store *st, MDB_txn *txn, uint64_t serial, l2_event *ev, int copy);

/* The serial of the event with this id, and its record (valid until the next write): ids keys
 * hold P bytes of it, each candidate's own id decides (the first candidate in one lookup; a
 * cursor only when P bytes are shared). */
int store_find_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial, record *r);

int store_lookup_id(MDB_txn *txn, l2_store *st, const uint8_t id[32], uint64_t *serial);

int store_get_head(MDB_txn *txn, l2_store *st, const uint8_t *key, size_t n, head_rec *h);

/* A cache's event with its body: the body in the lowest free slot, so it fills room an evicted
 * body left, then its events record (store_put_cache_record); or, for a cache that keeps bodies
 * inline, both in the record. `saved_ms`: a save's time (its serial past every other), which
 * stamps its access (store_set_access); 0 for a revived stub (its caller stamps it). */
int store_put_cached(wtx *w, uint64_t serial, const l2_event *ev, const void *body, size_t n, uint64_t saved_ms);

int store_free_body(wtx *w, uint32_t slot, uint32_t len);

/* Writes a cache's events record: slot | body length, then no access yet (store_set_access writes it)
 * when there is a body, the only copy of the head, else the stub form of ev (slot 0). */
int store_put_cache_record(wtx *w, uint64_t serial, const l2_event *ev, uint32_t slot, uint32_t body_len);

int store_get_ghost(MDB_txn *txn, l2_store *st, uint64_t serial, const void **data, size_t *len);

/* Removes a stored event and everything that points at it; op 0 records no change (a cache
 * eviction is not a nostr deletion). */
int store_remove_event(wtx *w, uint64_t serial, int op);

uint64_t store_now_ms(void);

/* Reads serial's access statistics: MDB_NOTFOUND when it has none (a stub, or not a cache). */
int store_get_access(MDB_txn *txn, l2_store *st, uint64_t serial, uint64_t *last, uint32_t *hits);

/* Takes serial off the lru order (before its record loses its body or goes). */
int store_drop_access(wtx *w, uint64_t serial);

/* Writes serial's access statistics into its record (same size: in place) and the lru order. */
int store_set_access(wtx *w, uint64_t serial, uint64_t last, uint32_t hits);

/* Counts `hits` reads of serial, the last at ms (in memory: written with the next write). */
void store_touch(l2_store *st, uint64_t serial, uint64_t ms, uint32_t hits);

int store_write_begin(l2_store *st, wtx *w);

int store_write_commit(wtx *w);

/* Runs body(w, ud) in one write transaction, growing the map and retrying when it fills; a
 * fixed map first gets the pages the last transaction freed (a full cache evicts in steps, each
 * freeing what the next needs). */
int store_write_txn(l2_store *st, int (*body)(wtx *w, void *ud), void *ud, char *err);

int store_save_body(wtx *w, void *ud);

/* ---- store_read.c ---- */

uint64_t store_entries(MDB_txn *txn, MDB_dbi dbi);

/* ---- store_cache.c ---- */

size_t store_meta_key(char *out, size_t cap, const char *key);

/* Records, in the write under way, that it mirrors L2's changes [first, last]: the position
 * moves past them when they follow it, and past the ranges ahead that then follow, when all of
 * them commute (then the order they were applied in does not matter); otherwise L1 must replay
 * them in order. Changes that do not follow the position are kept ahead of the gap (a writer
 * between its two commits, or one that died there). */
int store_mirror_apply(wtx *w, int *result);

/* ---- store_maint.c ---- */

/* Whether this batch of an import leaves the indexes to its end: this process's import into a
 * store that was empty. An importer that died left them to be built: done here first. */
int store_deferring(wtx *w, int *defer);

/* The indexes an import left to its end, built: this process's (after_import), or, on open, a
 * dead importer's. A read first, so an open has no write to do in the usual case. */
int store_finish_indexing(l2_store *st, int dead_only, char *err);

#endif
