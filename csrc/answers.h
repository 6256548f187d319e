/* Remembered answers, kept in a cache store (an L1): what L2 answered for a single filter that
 * L1 could not prove, as its ids (newest first), so the next ask of the same filter is served by
 * id instead of a filter query on L2. They live in the cache's `answers` sub-database, so every
 * process and thread on L1 shares them, and a save of an event a filter may match drops that
 * filter's answer inside the save's own write transaction (l2_answers_touch, called by store_write.c).
 * Only the LMDB store (store_*.c) includes this file; the rest of the core sees store.h's l2_store_answer_*.
 *
 * Records (integers big-endian):
 *   'R' hash(8)             -> expires(8) now(8) epoch(8) nids(4) filter_len(4) nwhole(4) filter
 *                              entries(8 * nids) ids(32 * nwhole)
 *       an entry is the serial of an event L1 held when the answer was kept (8 bytes where its
 *       id takes 32), or WHOLE | j for the j-th id kept whole (an event L1 did not hold)
 *   'a' pubkey(32) hash(8)  -> ""    answers of filters naming authors
 *   'k' kind(2) hash(8)     -> ""    of filters naming kinds but no authors
 *   'u' hash(8)             -> ""    of the others
 *   'N'                     -> what all answers take, in 32-byte units (8): record and index entries
 * `hash` is a 64-bit hash of the key; the record keeps the whole key, so two keys with one hash
 * never answer for each other (the later one takes the slot). */
#ifndef L2_ANSWERS_H
#define L2_ANSWERS_H

#include <lmdb.h>

#include "store.h"

/* A kept answer as read (valid for the transaction). */
typedef struct {
    const uint8_t *entries; /* n entries of 8 bytes, newest first */
    const uint8_t *whole;   /* the ids kept whole, 32 bytes each */
    size_t n, nwhole;
} l2_answer_view;

/* The answer kept under k into *a, when one is there and has not expired at t. 0, MDB_NOTFOUND,
 * or an LMDB error. */
int l2_answers_get(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, int64_t t, l2_answer_view *a);

/* Entry i of a: 1 with *serial (the event L1 held; gone since if no record has it), or 0 with *id,
 * the id kept whole; -1 for an entry that points past the ids (a damaged record). */
int l2_answer_entry(const l2_answer_view *a, size_t i, uint64_t *serial, const uint8_t **id);

/* Keeps an answer of n events (newest first) under k until `expires`: event i is serials[i] in
 * L1, or, where that is 0, ids[i] kept whole. When what all answers take would pass max_ids units
 * of 32 bytes (an answer counts its record, filter and entries, and its index entries), every
 * other answer goes first. 0 or an LMDB error. */
int l2_answers_put(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, const uint64_t *serials,
                   const uint8_t (*ids)[32], size_t n, int64_t expires, uint64_t max_ids);

/* Clears answers a layer2 before this one kept (records of another form): 0 or an LMDB error. */
int l2_answers_upgrade(MDB_txn *txn, MDB_dbi dbi);

/* Drops the answer kept under k, if any. */
int l2_answers_drop(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k);

/* Drops every answer whose filter ev may match (its limit aside): ev was just saved. */
int l2_answers_touch(MDB_txn *txn, MDB_dbi dbi, const l2_event *ev);

/* The filter of key k, parsed (for the caller's own checks); 0, or -1 when it does not parse. */
int l2_answer_filter(const l2_answer_key *k, l2_filter *f);

#endif
