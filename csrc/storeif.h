/* The store interface: what every event store does, as a table of functions over an opaque
 * handle. The LMDB store (store_if.c) and the PostgreSQL store (pgstore.c) implement it; the Lua
 * binding (lua_store.c) serves every store through it, and the two-level store is written
 * against it. No Lua here. Every function returns 0, or a status (status.h: L2_FAILED, L2_REFUSED, L2_FULL)
 * with a message in err (L2_ERRLEN). */
#ifndef L2_STOREIF_H
#define L2_STOREIF_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"
#include "rules.h"
#include "status.h"

/* One event of an answer, as the store holds it: the binary form (LMDB) or the JSON as received
 * (PostgreSQL); the caller converts to what it needs. A stub (an evicted event whose indexes a
 * cache keeps) has only its id. Valid during the callback only. */
typedef struct {
    const void *bin;
    size_t bin_len;
    const char *json;
    size_t json_len;
    int stub;
    uint8_t id[32];
} l2_row;

/* Called for each row; non-zero stops the walk (the callback keeps its own error). */
typedef int (*l2_row_fn)(void *ud, const l2_row *row);

enum l2_change_op { L2_CHANGE_SAVED = 1, L2_CHANGE_REPLACED = 2, L2_CHANGE_DELETED = 3 };

/* One record of a change feed: `id` is NULL for a save whose event is gone since (a later change
 * names it); `row` is the event while it is still stored, else NULL. */
typedef int (*l2_change_fn)(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *row);

/* One NIP-77 item of items(); non-zero stops the walk. */
typedef int (*l2_item_fn)(void *ud, int64_t created_at, const uint8_t id[32]);

/* One figure of stats(), by name. */
typedef void (*l2_stat_fn)(void *ud, const char *name, uint64_t value);

/* One problem found by check(). */
typedef void (*l2_problem_fn)(void *ud, const char *msg);

/* Flags of save and delete: queue in a cache's outbox in the same transaction (L2 was down); a
 * cache fill (events L2 already had: no change record, the change feed being news); a batch of a
 * bulk import (a store may build its indexes once at the end, in after_import); a save whose
 * removals the caller will ask for (last_removed: a store that must read them does); a large
 * batch that gives way to a light save waiting for the store's write lock (l2_store_give_way:
 * it commits what it has written so far and leaves the rest L2_SAVE_UNTRIED, for the caller to
 * save next; a store without one write lock saves everything). */
enum { L2_SAVE_OUTBOX = 1, L2_SAVE_FILL = 2, L2_SAVE_IMPORT = 4, L2_SAVE_REMOVALS = 8, L2_SAVE_GIVE_WAY = 16 };

typedef struct l2_store_if {
    const char *kind; /* "lmdb", "postgres": for messages and tostring */
    /* Where it is: a directory, or the server without the password. */
    const char *(*path)(void *st);
    void (*close)(void *st);
    /* Saves n parsed, verified events in one transaction, in order, each result in res[i]. */
    int (*save_batch)(void *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                      char *err);
    /* Deletes by id, keeping a tombstone unless told not to; *found says if it was there. */
    int (*delete_event)(void *st, const uint8_t id[32], int tombstone, int flags, int *found, char *err);
    /* A REQ's union of filters: newest first, ties by lower id, each filter's limit, max_limit when
     * a filter has none or asks for more. A cache marks in `incomplete` (nf bytes, may be NULL)
     * the filters it cannot prove complete under `horizon` (see store.h), and hands its stubs as
     * rows; a store that holds everything leaves `incomplete` zeroed and has no stubs. */
    int (*query)(void *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                 uint8_t *incomplete, l2_row_fn row, void *ud, char *err);
    int (*count)(void *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err);
    /* Every stored event, in storage order; with `filtered`, only those whose pubkey or a `p` tag
     * is one of keys[0..nkeys) (sorted). */
    int (*export_rows)(void *st, const uint8_t (*keys)[32], size_t nkeys, int filtered, l2_row_fn row, void *ud,
                       char *err);
    /* Up to max changes after `after`, oldest first. */
    int (*changes)(void *st, uint64_t after, size_t max, l2_change_fn fn, void *ud, char *err);
    int (*stats)(void *st, l2_stat_fn field, void *ud, char *err);
    int (*check)(void *st, l2_problem_fn problem, void *ud, uint64_t *nproblems, char *err);
    /* Removes every event whose NIP-40 expiration is at or before now. */
    int (*sweep)(void *st, int64_t now, uint64_t *removed, char *err);
    int (*nuke)(void *st, char *err);
    /* Makes every commit durable (a store that syncs each commit has nothing to do). */
    int (*sync)(void *st, char *err);
    /* After a bulk import, whole or stopped part way (indexes built, fresh planner statistics);
     * NULL when there is nothing to do. */
    int (*after_import)(void *st, char *err);
    /* The (created_at, id) of each event a REQ's filters match, as query() limits them, in any
     * order and without reading whole events: what a NIP-77 reconciliation needs. A cache's
     * stubs are not items. NULL for a store only Lua calls (an L2 written in Lua). */
    int (*items)(void *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, l2_item_fn item, void *ud,
                 char *err);
    /* The changes [*first, *last] of its feed that this handle's last committed write recorded
     * (*first > *last: none). Only for a feed in commit order, where a cache in front can place
     * itself exactly (docs/DESIGN.md §3); NULL otherwise (PostgreSQL: a transaction can take a
     * sequence number and commit after a later one) and without a feed. */
    void (*last_changes)(void *st, uint64_t *first, uint64_t *last);
    /* The change feed as a cache replays it: the changes past position `pos`, oldest first (about
     * max; PostgreSQL never splits a transaction's), and in *next the position past them; no change
     * can appear at or before *next later. max 0 reads none: *next is the present position.
     * LMDB: positions are sequence numbers. PostgreSQL: transaction ids, and only the changes of
     * transactions that have ended are read. NULL without such a feed (an L2 written in Lua). */
    int (*feed)(void *st, uint64_t pos, size_t max, l2_change_fn fn, void *ud, uint64_t *next, char *err);
    /* The events its last save_batch (given L2_SAVE_REMOVALS) removed: older versions it replaced
     * (L2_CHANGE_REPLACED) and NIP-09 targets (L2_CHANGE_DELETED), in order, each as fn(ud, seq (0
     * when unknown), op, id, NULL). NULL for a store that cannot tell (an L2 written in Lua). */
    int (*last_removed)(void *st, l2_change_fn fn, void *ud, char *err);
} l2_store_if;

extern const l2_store_if l2_lmdb_store_if;
extern const l2_store_if l2_pg_store_if;

#endif
