/* The LMDB event store: bodies by serial, exact indexes, nostr rules (replace, NIP-09, NIP-40),
 * a change feed. No Lua here. One environment per path and process (a registry shares it). */
#ifndef L2_STORE_H
#define L2_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"

typedef struct l2_store l2_store;

typedef struct {
    size_t map_size; /* initial map size in bytes; 0 means 1 GiB. The map grows when full */
    int fixed_map;   /* never grow: a size-limited store */
    int nosync;      /* commit without fsync; durable at l2_store_sync */
} l2_store_opts;

enum l2_save_status {
    L2_SAVE_STORED,
    L2_SAVE_EPHEMERAL, /* accepted, never stored */
    L2_SAVE_DUPLICATE,
    L2_SAVE_OLDER,     /* a newer version of this replaceable event is stored */
    L2_SAVE_DELETED,   /* a deletion request of its author blocks it */
    L2_SAVE_EXPIRED,
};

typedef struct {
    int status;
    unsigned replaced; /* older versions this save removed */
    unsigned deleted;  /* events its NIP-09 tags removed */
} l2_save_result;

/* The NIP-01 OK message for a refusal ("duplicate: ...", "blocked: ..."), NULL when stored. */
const char *l2_save_message(int status);

int l2_store_open(l2_store **out, const char *path, const l2_store_opts *o, char *err);
void l2_store_close(l2_store *st);
const char *l2_store_path(const l2_store *st);

/* Saves n parsed, verified events in one write transaction, in order. 0, or -1 with err. */
int l2_store_save_batch(l2_store *st, l2_event *const *evs, size_t n, int64_t now, l2_save_result *res, char *err);
/* Deletes an event by id (and keeps a tombstone unless told not to). *found says if it was there. */
int l2_store_delete(l2_store *st, const uint8_t id[32], int tombstone, int *found, char *err);
/* Removes every event whose NIP-40 expiration is at or before now. */
int l2_store_sweep(l2_store *st, int64_t now, uint64_t *removed, char *err);
int l2_store_nuke(l2_store *st, char *err);
int l2_store_sync(l2_store *st, char *err);

typedef struct {
    int64_t created_at;
    uint8_t id[32];
    uint64_t serial;
} l2_hit;

typedef struct {
    l2_hit *v;
    size_t n, cap;
} l2_hits;

void l2_hits_free(l2_hits *h);

/* Runs the filters (a REQ's union: newest first, ties by lower id, each filter's limit, max_limit
 * when a filter has none or asks for more) in a read transaction that stays open for
 * l2_store_body until l2_store_read_end. */
int l2_store_query(l2_store *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, l2_hits *out,
                   char *err);
int l2_store_count(l2_store *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err);
/* The stored binary form of serial, valid until l2_store_read_end; 0, or -1 when absent. */
int l2_store_body(l2_store *st, uint64_t serial, const void **data, size_t *len);
void l2_store_read_end(l2_store *st);

/* Walks every stored event in serial order inside a read transaction (ended by read_end). */
int l2_store_iter_begin(l2_store *st, char *err);
int l2_store_iter_next(l2_store *st, uint64_t *serial, const void **data, size_t *len);

enum l2_change_op { L2_CHANGE_SAVED = 1, L2_CHANGE_REPLACED = 2, L2_CHANGE_DELETED = 3 };

typedef struct {
    uint64_t seq, serial;
    int op;
    int have_id; /* 0 for a save whose event has been removed since (a later change says so) */
    uint8_t id[32];
} l2_change;

/* Up to max changes after `after`, in a read transaction left open for l2_store_body. */
int l2_store_changes(l2_store *st, uint64_t after, size_t max, l2_change *out, size_t *n, char *err);

typedef struct {
    uint64_t events, index_entries, tombstones, changes, last_seq;
    uint64_t used_bytes, map_bytes, file_bytes, page_size;
} l2_store_stats;

int l2_store_stats_get(l2_store *st, l2_store_stats *s, char *err);

/* Verifies that every index entry points at a live event that it describes, and that every
 * event is fully indexed; each problem is reported through `problem`. */
int l2_store_check(l2_store *st, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems,
                   char *err);

#endif
