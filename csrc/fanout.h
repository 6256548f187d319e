/* Live fan-out: the open subscriptions of a relay worker, indexed, so that an event is checked
 * only against the filters that could match it. Each filter is compiled once, when its
 * subscription is added, and indexed under its most selective field: its ids, else its authors,
 * else the values of one tag condition, else its kinds; a filter with none of them is checked
 * against every event. An event is parsed once and looked up by its id, pubkey, kind and tag
 * values. No Lua here. */
#ifndef L2_FANOUT_H
#define L2_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include "event.h"
#include "filter.h"

typedef struct l2_fanout l2_fanout;

l2_fanout *l2_fanout_new(void);
void l2_fanout_free(l2_fanout *fo);

/* Adds a subscription under the caller's key (any number; a key added again replaces its
 * filters) with its nf filters, copied. 0, or -1 when out of memory. */
int l2_fanout_add(l2_fanout *fo, int64_t key, const l2_filter *fs, size_t nf);
/* Removes the subscription under key, if any. */
void l2_fanout_remove(l2_fanout *fo, int64_t key);
size_t l2_fanout_count(const l2_fanout *fo);

/* The keys of the subscriptions a filter of which ev matches (limits aside), each once, in no
 * particular order: valid until the next call. */
const int64_t *l2_fanout_match(l2_fanout *fo, const l2_event *ev, size_t *n);

#endif
