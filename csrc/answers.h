/* Remembered answers, kept in a cache store (an L1): what L2 answered for a single filter that
 * L1 could not prove, as its ids (newest first), so the next ask of the same filter is served by
 * id instead of a filter query on L2. They live in the cache's `answers` sub-database, so every
 * process and thread on L1 shares them, and a save of an event a filter may match drops that
 * filter's answer inside the save's own write transaction (l2_answers_touch, called by store.c).
 * Only store.c includes this file; the rest of the core sees store.h's l2_store_answer_*.
 *
 * Records (integers big-endian):
 *   'A' hash(8)             -> expires(8) now(8) epoch(8) nids(4) filter_len(4) filter ids(32 * nids)
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

/* The ids of the answer kept under k into *ids (nids * 32 bytes, valid for the transaction), when
 * one is there and has not expired at t. 0, MDB_NOTFOUND, or an LMDB error. */
int l2_answers_get(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, int64_t t, MDB_val *ids);

/* Keeps ids (n, newest first) under k until `expires`. When what all answers take would pass
 * max_ids units of 32 bytes (an answer counts its record, filter and ids, and its index entries),
 * every other answer goes first. 0 or an LMDB error. */
int l2_answers_put(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k, const uint8_t (*ids)[32], size_t n,
                   int64_t expires, uint64_t max_ids);

/* Drops the answer kept under k, if any. */
int l2_answers_drop(MDB_txn *txn, MDB_dbi dbi, const l2_answer_key *k);

/* Drops every answer whose filter ev may match (its limit aside): ev was just saved. */
int l2_answers_touch(MDB_txn *txn, MDB_dbi dbi, const l2_event *ev);

/* The filter of key k, parsed (for the caller's own checks); 0, or -1 when it does not parse. */
int l2_answer_filter(const l2_answer_key *k, l2_filter *f);

#endif
