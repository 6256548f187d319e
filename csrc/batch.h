/* Parsing and verifying a batch of wire events on several threads (import). No Lua here. */
#ifndef L2_BATCH_H
#define L2_BATCH_H

#include "event.h"

/* Where an item stands before the check: its JSON to parse, an event already parsed (only verified),
 * or refused already (err says why). */
enum { L2_BATCH_JSON, L2_BATCH_PARSED, L2_BATCH_REFUSED };

typedef struct {
    int from;         /* L2_BATCH_JSON (0) unless set */
    const char *json; /* with L2_BATCH_JSON */
    size_t len;
    uint64_t line; /* its line number in the source, for messages */
    l2_event ev;   /* reused from batch to batch */
    int ok;
    char err[L2_ERRLEN];
} l2_batch_item;

/* Parses (and verifies when `verify`) items[0..n) on up to `threads` threads; sets ok and err. */
void l2_batch_check(l2_batch_item *items, size_t n, int threads, int verify, const l2_limits *lim);

#endif
