/* NIP-77 negentropy, protocol version 1: range-based set reconciliation over (created_at, id)
 * items, as the NIP and its reference implementation (hoytech/negentropy) define it: ranges with
 * upper bounds (timestamp deltas, shortest distinguishing id prefixes), fingerprints (the ids
 * summed as 256-bit little-endian integers, then the count as a varint, SHA-256'd, 16 bytes), id
 * lists below 32 items, 16 buckets above, and a frame size limit. Both roles: the initiator (a
 * client: `layer2 sync`) and the relay answering it. Messages here are binary (the wire carries
 * them in hex). No Lua here.
 *
 * Memory: 40 bytes an item, held sorted for the session; a caller bounds the items (a relay
 * refuses a filter that matches more than its limit, as strfry does). */
#ifndef L2_NEGENTROPY_H
#define L2_NEGENTROPY_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h" /* L2_ERRLEN */

#define L2_NEG_VERSION 0x61

typedef struct l2_neg l2_neg;

/* A session; frame_limit bounds each message this side writes (0: none; else at least 4,096). */
int l2_neg_new(l2_neg **out, size_t frame_limit, char *err);
void l2_neg_free(l2_neg *n);

/* Adds an item (before l2_neg_seal). 0, or -1 with err. */
int l2_neg_add(l2_neg *n, uint64_t created_at, const uint8_t id[32], char *err);
/* Sorts the items; a duplicate is an error. 0, or -1 with err. */
int l2_neg_seal(l2_neg *n, char *err);
size_t l2_neg_size(const l2_neg *n);

/* The initiator's first message into out (cleared first). */
int l2_neg_initiate(l2_neg *n, l2_buf *out, char *err);

/* Answers message q. The relay's side: out gets the reply (never empty: a reply of the version byte
 * alone means reconciliation is done, or that the peer's version is not ours). The initiator's:
 * the ids only this side has go to have, those only the peer has to need (32 bytes each,
 * appended), and out is left empty when reconciliation is complete. -1 with err ("invalid: ...")
 * for a message that does not parse. */
int l2_neg_reconcile(l2_neg *n, const uint8_t *q, size_t qlen, l2_buf *out, l2_buf *have, l2_buf *need, char *err);

#endif
