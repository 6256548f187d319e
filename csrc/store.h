/* The LMDB event store: bodies by serial, exact indexes, nostr rules (replace, NIP-09, NIP-40),
 * a change feed. No Lua here. One environment per path and process (a registry shares it). */
#ifndef L2_STORE_H
#define L2_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"
#include "rules.h"
#include "status.h"
#include "storeif.h"

typedef struct l2_store l2_store;

typedef struct {
    size_t map_size; /* initial map size in bytes; 0 means 1 GiB. The map grows when full */
    int fixed_map;   /* never grow: a size-limited store */
    int nosync;      /* commit without fsync; durable at l2_store_sync */
    int nometasync;  /* one fsync a commit, not two: a system crash may undo the last commit, never
                      * corrupt the store (LMDB's MDB_NOMETASYNC) */
    int cache;       /* an L1: keeps access statistics, can hold stubs */
    size_t key_prefix; /* bytes of a pubkey or hex value in index keys, 1 to 32, fixed when the store
                        * is made; 0 means 8. Small values are for tests: they make collisions */
    size_t index_memory; /* bytes the index build at the end of an import into an empty store may
                          * hold; 0 means 512 MiB. Its keys take about 250 bytes an event: all
                          * indexes are built in one pass over the events when they fit, else one
                          * index a pass */
} l2_store_opts;


int l2_store_open(l2_store **out, const char *path, const l2_store_opts *o, char *err);
void l2_store_close(l2_store *st);
const char *l2_store_path(const l2_store *st);

/* Saves n parsed, verified events in one write transaction, in order. Flags (storeif.h):
 * L2_SAVE_OUTBOX queues each stored event in the outbox in that transaction; L2_SAVE_FILL marks a
 * cache fill (events L2 already had): no change record, the change feed being news. 0, or -1. */
int l2_store_save_batch(l2_store *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                        char *err);
/* A batch saved with L2_SAVE_GIVE_WAY asks waiting(ud) every L2_GIVE_WAY_STEP events once it has
 * written L2_GIVE_WAY_MIN: when it says a light save waits for the write lock, the transaction
 * commits there and the events not reached are left L2_SAVE_UNTRIED. A batch of 500 holds LMDB's
 * write lock for tens of ms (its page writes and fsync); a lone event waiting behind it would
 * wait as long. NULL: never. */
enum { L2_GIVE_WAY_MIN = 32, L2_GIVE_WAY_STEP = 4 };
void l2_store_give_way(l2_store *st, int (*waiting)(void *ud), void *ud);
/* Deletes an event by id (and keeps a tombstone unless told not to); with `outbox` the deletion is
 * queued in the same transaction. *found says if it was there. */
int l2_store_delete(l2_store *st, const uint8_t id[32], int tombstone, int outbox, int *found, char *err);
/* Removes every event whose NIP-40 expiration is at or before now. */
int l2_store_sweep(l2_store *st, int64_t now, uint64_t *removed, char *err);
/* Ends a bulk import (batches saved with L2_SAVE_IMPORT): when it began on an empty store, its
 * indexes are built now, in one write transaction (see "indexes built at the end of an import"
 * in store_maint.c). Also after an import stopped part way. */
int l2_store_after_import(l2_store *st, char *err);
int l2_store_nuke(l2_store *st, char *err);
int l2_store_sync(l2_store *st, char *err);

typedef struct {
    int64_t created_at;
    uint8_t id[32];
    uint64_t serial;
    int stub;
    /* the stored binary form the query read (NULL for a stub), valid in the read transaction of
     * number `read` only: l2_store_hit_body gives it without reading the record again */
    const void *body;
    size_t body_len;
    uint64_t read;
} l2_hit;

typedef struct {
    l2_hit *v;
    size_t n, cap;
    /* counting (a COUNT): n counts the matches, none is kept, and a match that one of the
     * `nearlier` filters before the one run also matches is not counted (it was, under that one):
     * the union of several filters counted with no memory per event */
    int counting;
    const l2_filter *earlier;
    size_t nearlier;
} l2_hits;

void l2_hits_free(l2_hits *h);

/* Runs the filters (a REQ's union: newest first, ties by lower id, each filter's limit, max_limit
 * when a filter has none or asks for more) in a read transaction that stays open for
 * l2_store_body until l2_store_read_end. With `incomplete` (nf bytes), each filter is marked
 * when this store cannot prove its answer complete under the horizon: it holds every event with
 * created_at >= horizon, so a filter is complete when its since is at or past the horizon, when
 * its limit was reached at or past it, or when it names ids that are all known here.
 * L2_HORIZON_IN_META as the horizon reads the caller's meta value "horizon" in the query's own
 * snapshot (one read transaction for both); while there is none, nothing is proven. With
 * `incomplete`, a filter found incomplete may come back short: its scan stops at the horizon.
 * A cache counts each body read (l2_store_body) before l2_store_read_end as an access. */
#define L2_HORIZON_IN_META INT64_MIN
int l2_store_query(l2_store *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                   uint8_t *incomplete, l2_hits *out, char *err);
/* A horizon kept outside the store, in memory the caller shares (NULL: none): a query under
 * L2_HORIZON_IN_META takes the larger of it and the meta value. */
void l2_store_share_horizon(l2_store *st, const int64_t *floor);
/* A cache with an authoritative store behind it (an L1 with its L2): the heads of replaceable
 * slots (the records that refuse older versions) go with the events evicted or dropped, since the
 * store behind refuses those versions; unless writes wait in the outbox (L1 decides alone then).
 * Not backed (the default), a cache keeps every head, which nothing evicts. */
void l2_store_set_backed(l2_store *st, int backed);
/* A cache that never evicts (an L1 without a size limit):
 * - keeps each new body in its events record: an event a query returns is then one lookup, not two
 *   (its record, then its body's slot). Slots exist so that new bodies fill the room evicted ones
 *   left; without eviction there is none. A cache reads and evicts both kinds of record whatever
 *   this says.
 * - counts no reads: they order eviction, and counting them cost a worker serving REQs 4 % of its
 *   time (a hash probe an event). Saves still stamp their time (ghosts, and the order should the
 *   cache be opened with a limit later).
 * Off by default. */
void l2_store_never_evicts(l2_store *st, int on);
int l2_store_count(l2_store *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err);
/* The stored binary form of serial, valid until l2_store_read_end; 0, or -1 when absent. */
int l2_store_body(l2_store *st, uint64_t serial, const void **data, size_t *len);
/* The same for a hit of the query whose read is still open: what the query read, when it can (no
 * second lookup); a cache counts it as an access as l2_store_body does. */
int l2_store_hit_body(l2_store *st, const l2_hit *h, const void **data, size_t *len);
void l2_store_read_end(l2_store *st);

/* Walks every stored event in serial order inside a read transaction (ended by read_end). */
int l2_store_iter_begin(l2_store *st, char *err);
int l2_store_iter_next(l2_store *st, uint64_t *serial, const void **data, size_t *len);

typedef struct {
    uint64_t seq, serial;
    int op;
    int have_id; /* 0 for a save whose event has been removed since (a later change says so) */
    uint8_t id[32];
} l2_change;

/* Keeps only the newest `keep` changes (a cache's feed serves live tailing, not history). */
int l2_store_prune_changes(l2_store *st, uint64_t keep, uint64_t *pruned, char *err);
/* Up to max changes after `after`, in a read transaction left open for l2_store_body. */
int l2_store_changes(l2_store *st, uint64_t after, size_t max, l2_change *out, size_t *n, char *err);

typedef struct {
    uint64_t events, stubs, index_entries, tombstones, changes, last_seq, outbox;
    uint64_t heads; /* replaceable slots' head records */
    uint64_t used_bytes, free_bytes, map_bytes, file_bytes, page_size;
} l2_store_stats;

/* ---- the cache (L1) side ---- */

typedef struct {
    uint64_t serial, last_ms;
    uint32_t hits, size;
    uint32_t kind;
    int64_t created_at;
    uint8_t id[32], pubkey[32];
} l2_candidate;

/* Up to max eviction candidates, coldest first: by last access, or by created_at. */
int l2_store_candidates(l2_store *st, int by_created, size_t max, l2_candidate *out, size_t *n, char *err);
/* Evicts these events: to stubs, or deleted (`delete_mode`): then the meta value "horizon" (see
 * l2_store_query) is raised past the newest of them in the same transaction. A deleted event's
 * head record stays unless the cache is backed (l2_store_set_backed). */
int l2_store_evict(l2_store *st, const uint8_t (*ids)[32], size_t n, int delete_mode, uint64_t *evicted,
                   uint64_t *freed, char *err);
/* Removes up to max stubs, oldest created_at first (their heads as l2_store_evict says); *horizon
 * gets the created_at past the last, and the meta value "horizon" is raised to it in the same
 * transaction. */
int l2_store_drop_stubs(l2_store *st, size_t max, uint64_t *dropped, int64_t *horizon, char *err);
/* Rewrites each tree whose pages are less than min_fill percent full (a cache's churn leaves its
 * trees about half full) with full pages, in one write transaction per tree. A tree of more than
 * 64 MiB, or one the map has no room to copy, is left as it is: *whole is 0 then. *freed gets
 * the bytes given back. */
int l2_store_repack(l2_store *st, unsigned min_fill, uint64_t *freed, int *whole, char *err);
/* Frees the reader slots of processes that died inside a read transaction (SIGKILL): until then
 * each pins the pages freed since its snapshot, and a fixed-size L1 fills. The number freed.
 * A write that finds a fixed map full does it once by itself; a long-lived process should also
 * call it now and then (the backend's gc does, every step). */
int l2_store_reader_check(l2_store *st);
/* A cache's reads counted in memory (written with the handle's next write transaction), taken
 * out of this handle as records of 20 bytes (serial, last access in ms, hits; big-endian) and
 * appended to *out: for a handle that never writes (an nginx worker whose writes run in the
 * thread pool) to hand to one that does. 0, or -1 when out of memory (nothing taken). */
int l2_store_reads_take(l2_store *st, l2_buf *out);
/* Counts records of l2_store_reads_take as this handle's own reads, and writes them in a write
 * transaction of their own. 0, or -1 with err (bad records, or the write failed). */
int l2_store_reads_add(l2_store *st, const void *data, size_t len, char *err);
/* Puts full bodies back in place of stubs. */
int l2_store_revive(l2_store *st, l2_event *const *evs, size_t n, uint64_t *revived, char *err);

/* The caller's own small values (a horizon, a cursor), kept in the store. */
int l2_store_meta_get(l2_store *st, const char *key, l2_buf *out, int *found, char *err);
int l2_store_meta_set(l2_store *st, const char *key, const void *val, size_t n, char *err);
/* The same for decimal values (what a horizon or a cursor is). */
int l2_store_meta_get_int(l2_store *st, const char *key, int64_t *value, int *found, char *err);
int l2_store_meta_set_int(l2_store *st, const char *key, int64_t value, char *err);
/* Raises a decimal value to at least `value` (it never goes down, whoever raises it at the same
 * time); *now_value gets what is stored after. */
int l2_store_meta_raise(l2_store *st, const char *key, int64_t value, int64_t *now_value, char *err);

typedef struct {
    uint64_t seq;
    const void *data;
    size_t len;
} l2_outbox_item;
/* Up to max queued records, oldest first, valid until l2_store_read_end. */
int l2_store_outbox_list(l2_store *st, size_t max, l2_outbox_item *out, size_t *n, char *err);
int l2_store_outbox_ack(l2_store *st, uint64_t seq, char *err);

int l2_store_stats_get(l2_store *st, l2_store_stats *s, char *err);

/* ---- a cache's place in its L2's change feed (docs/DESIGN.md §3) ----
 * L1 at position P holds every change of L2's feed up to P. Changes past P that L1 applied before
 * those that come first (two writers, each between its L2 commit and its L1 commit) are kept as
 * ranges ahead of it, at most 64. An emptied cache has no position (l2_store_nuke). */
enum { L2_MIRROR_NONE, L2_MIRROR_AT, L2_MIRROR_AHEAD, L2_MIRROR_REPLAY };
/* The next write transaction of st (a save, a deletion, l2_store_feed_advance) mirrors L2's
 * changes [first, last] and moves the position in the same transaction: past them when they
 * follow it, else they are kept ahead of the gap. `commutes`: the changes give the same L1
 * whatever order they and other commuting ones are applied in, as the nostr rules make saves,
 * replacements and deletions that leave a tombstone; a deletion without one (then a save of the
 * same event) does not. Ranges ahead of the position are taken into it when every one commutes,
 * else replayed in order. */
void l2_store_mirror_next(l2_store *st, uint64_t first, uint64_t last, int commutes);
/* What that write did: L2_MIRROR_NONE when it did not commit, L2_MIRROR_AT (the position is past
 * them and nothing is ahead), L2_MIRROR_AHEAD (kept ahead of a gap, or ranges ahead remain past a
 * gap), L2_MIRROR_REPLAY (L1 has no position, or applied changes that may not commute out of
 * order: the caller replays L2's feed from the position). Read once. */
int l2_store_mirror_result(l2_store *st);
/* Where L1 stands (*known 0 while it has no position) and how many ranges are ahead of it. */
int l2_store_feed_pos(l2_store *st, uint64_t *pos, int *known, size_t *ahead, char *err);
/* Sets the position (a new or emptied L1: L2's last change), nothing ahead. */
int l2_store_feed_reset(l2_store *st, uint64_t pos, char *err);
/* A write transaction that only records [first, last] as l2_store_mirror_next says (what a
 * replay applied); *result as l2_store_mirror_result. */
int l2_store_feed_advance(l2_store *st, uint64_t first, uint64_t last, int *result, char *err);
/* The changes [*first, *last] of its own feed that st's last committed write recorded. */
void l2_store_last_changes(const l2_store *st, uint64_t *first, uint64_t *last);

/* ---- remembered answers (a cache's: answers.h says how they are kept and dropped) ---- */

#define L2_ANSWER_ANY_NOW INT64_MIN
/* What an answer is kept under: a filter's canonical JSON (l2_filter_encode_json, with its
 * effective limit), the `now` it was asked with (L2_ANSWER_ANY_NOW: the clock's) and the
 * generation of answers it belongs to (the caller's: an answer of another one does not stand). */
typedef struct {
    const char *filter;
    size_t len;
    int64_t now;
    uint64_t epoch;
} l2_answer_key;

/* The ids kept under k (newest first, 32 bytes each) appended to *ids when an answer is there and
 * has not expired at t (*found says). *seq gets the change feed's position, for a later put. */
int l2_store_answer_get(l2_store *st, const l2_answer_key *k, int64_t t, l2_buf *ids, int *found, uint64_t *seq,
                        char *err);
/* Serves the answer kept under k (as l2_store_answer_get finds it) straight from L1 when every
 * event of it is one L1 held and still holds whole: row(ud, r) for each, in the answer's order
 * (newest first), each counted as an access; returns 1 then (*rows given). 0 when there is none
 * (*found 0) or it has an event kept by id, stubbed or gone (the caller serves it by id, or drops
 * it); -1 with err. *seq as l2_store_answer_get's. */
int l2_store_answer_serve(l2_store *st, const l2_answer_key *k, int64_t t, l2_row_fn row, void *ud, int *found,
                          uint64_t *rows, uint64_t *seq, char *err);
/* One fill of l2_store_fills: what L2 answered to a read. */
typedef struct {
    l2_event *const *evs; /* its events (n, possibly 0) */
    size_t n;
    int revive;             /* bodies put back in place of stubs (l2_store_revive), not a cache fill */
    int64_t now;
    l2_save_result *res;    /* a cache fill's result per event */
    const l2_answer_key *k; /* the answer to keep under k, or NULL */
    const uint8_t (*ids)[32];
    size_t nids;
    int64_t expires;
    uint64_t max_ids, seq;
    int kept; /* set: the answer was kept */
} l2_fill;
/* Keeps what L2 answered to reads, in one write transaction, in order: each fill's events as a
 * cache fill (l2_store_save_batch with L2_SAVE_FILL, each result in res[i]) or as revived bodies,
 * and, when k is given, the answer's ids under k until `expires`, unless a change after `seq` (the
 * feed's position before L2 was asked) may have touched it: then the answer is not kept (`kept`
 * says). Past max_ids ids over all answers the others go. first(ud), when given, runs inside the
 * transaction before anything is written, holding st's write lock: it may take events out of the
 * fills (a cache checks there that its authority still holds them). */
int l2_store_fills(l2_store *st, l2_fill *fills, size_t n, void (*first)(void *ud), void *ud, char *err);
int l2_store_answer_drop(l2_store *st, const l2_answer_key *k, char *err);
int l2_store_answers_clear(l2_store *st, char *err);

/* Rebuilds the format-1 store at `path` (index keys with whole 32-byte values) into this format,
 * in one write transaction: killed at any point, it is the format-1 store it was, and upgrading
 * again starts over. progress(ud, done, total) every 4,096 events and at the end. 0 with *events
 * re-indexed, or with *already set when it was in this format already; -1 with err. Nothing may
 * have the store open meanwhile, this process included. */
int l2_store_upgrade(const char *path, void (*progress)(void *ud, uint64_t done, uint64_t total), void *ud,
                     uint64_t *events, int *already, char *err);
/* Writes a copy of the store into dir (created; it must not hold a store), compacted when asked:
 * a consistent snapshot taken while others keep working. progress gets the bytes written so far. */
int l2_store_copy(l2_store *st, const char *dir, int compact, void (*progress)(void *ud, uint64_t bytes), void *ud,
                  char *err);

/* Verifies that every index entry points at a live event that it describes, and that every
 * event is fully indexed; each problem is reported through `problem`. */
int l2_store_check(l2_store *st, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems,
                   char *err);

#endif
