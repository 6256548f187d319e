/* The PostgreSQL event store (libpq): the shared L2 of a cluster, or a standalone store. The
 * nostr rules run server side in PL/pgSQL functions created with the schema, one round trip per
 * save, serialized per author by advisory locks, so every node and every level agrees. No Lua. */
#ifndef L2_PGSTORE_H
#define L2_PGSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"
#include "rules.h"
#include "storeif.h"

#define L2_PG_SCHEMA_VERSION 3

typedef struct l2_pg l2_pg;

/* Connects (a conninfo string or a postgres:// URI) and creates or checks the schema. */
int l2_pg_open(l2_pg **out, const char *conninfo, char *err);
void l2_pg_close(l2_pg *pg);
/* postgresql://user@host:port/dbname, without a password. */
const char *l2_pg_name(const l2_pg *pg);

/* Every call below returns 0, or -1 with "error: PostgreSQL: ..." in err. A connection found
 * lost is reconnected at the start of the next call; a call that fails is not retried. */

/* Saves n parsed, verified events: one call for one, COPY and one transaction for a batch. With
 * `removals`, what the save removed (older versions, NIP-09 targets) is read in its transaction,
 * for l2_pg_last_removed. */
int l2_pg_save_batch(l2_pg *pg, l2_event *const *evs, size_t n, int64_t now, int removals, l2_save_result *res,
                     char *err);
/* The events the last save given `removals` removed, in order: fn(ud, 0, op, id, NULL) each. */
int l2_pg_last_removed(l2_pg *pg, l2_change_fn fn, void *ud);
int l2_pg_delete(l2_pg *pg, const uint8_t id[32], int tombstone, int *found, char *err);
int l2_pg_sweep(l2_pg *pg, int64_t now, uint64_t *removed, char *err);
/* Refreshes the planner's statistics: after a bulk import they are what picks the right index. */
int l2_pg_analyze(l2_pg *pg, char *err);
/* Empties layer2's own tables; sequences keep counting so change cursors stay meaningful. */
int l2_pg_nuke(l2_pg *pg, char *err);

/* The union of the filters, newest first (ties by lower id), each filter's limit (max_limit when
 * it has none or asks for more). Rows: the stored JSON, read with l2_pg_value(pg, row, 0). */
int l2_pg_query(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, size_t *rows, char *err);
int l2_pg_count(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t now, uint64_t *count, char *err);
/* The same union's (created_at, id) only, in no order: NIP-77 items, the JSON left on the server.
 * Rows: created_at (int8) and id (32 bytes) in columns 0 and 1. */
int l2_pg_items(l2_pg *pg, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, size_t *rows, char *err);

/* Streams every event (or those whose pubkey or `p` tag is one of keys, when filtered) in
 * insertion order through a cursor: begin, then next until it gives 0 rows, then end. */
int l2_pg_export_begin(l2_pg *pg, const uint8_t (*keys)[32], size_t nkeys, int filtered, char *err);
int l2_pg_export_next(l2_pg *pg, size_t *rows, char *err);
void l2_pg_export_end(l2_pg *pg);

/* Up to max changes after seq `after`; rows: seq (int), op (int: 1 saved, 2 replaced, 3
 * deleted), id (32 bytes), the event's JSON for a save still stored (else NULL). */
int l2_pg_changes(l2_pg *pg, uint64_t after, size_t max, size_t *rows, char *err);
/* The feed a cache replays (storeif.h's feed): the changes of transactions that have ended, from
 * transaction id `pos` on, about max (a transaction's are never split; 0: none, just the present
 * position); *next gets the position past them. Rows: *next, then the columns of l2_pg_changes. */
int l2_pg_feed(l2_pg *pg, uint64_t pos, size_t max, size_t *rows, uint64_t *next, char *err);

/* A value of the last result: its bytes (NULL for SQL NULL), or a big-endian integer column. */
const char *l2_pg_value(l2_pg *pg, size_t row, int col, size_t *len);
int64_t l2_pg_int(l2_pg *pg, size_t row, int col);

typedef struct {
    uint64_t events, tombstones, changes, last_seq, disk_bytes, reconnects;
    int backend_pid;
} l2_pg_stats;
int l2_pg_stats_get(l2_pg *pg, l2_pg_stats *s, char *err);
int l2_pg_check(l2_pg *pg, void (*problem)(void *ud, const char *msg), void *ud, uint64_t *nproblems, char *err);

/* LISTEN for the change signal every commit that changes the store sends, and for the
 * ephemeral events other nodes publish; wait blocks up to timeout_ms (0: just look) and says
 * whether a change signal came since the last wait. The ephemeral events that came are handed to
 * each(ud, payload, len) (each may be NULL: they are dropped). */
int l2_pg_listen(l2_pg *pg, char *err);
int l2_pg_wait(l2_pg *pg, int timeout_ms, int *notified, void (*each)(void *ud, const char *payload, size_t len),
               void *ud, char *err);

/* The largest payload l2_pg_publish takes (PostgreSQL's NOTIFY takes less than 8000 bytes). */
#define L2_PG_PUBLISH_MAX 7999
/* Sends payload (an ephemeral event's JSON, with what the caller adds) to every node listening:
 * NOTIFY, which no transaction keeps. */
int l2_pg_publish(l2_pg *pg, const char *payload, size_t len, char *err);

#endif
