/* The nostr rules both stores apply (NIP-01 kind classes, the `d` of an address, NIP-40
 * expiration, NIP-09 `a` tags), in one place so that every level agrees. No storage here. */
#ifndef L2_RULES_H
#define L2_RULES_H

#include <stdint.h>

#include "event.h"

static inline int l2_kind_replaceable(uint32_t k)
{
    return k == 0 || k == 3 || (k >= 10000 && k < 20000);
}
static inline int l2_kind_ephemeral(uint32_t k)
{
    return k >= 20000 && k < 30000;
}
static inline int l2_kind_addressable(uint32_t k)
{
    return k >= 30000 && k < 40000;
}

/* What a save did; both stores answer with these. */
enum l2_save_status {
    L2_SAVE_STORED,
    L2_SAVE_EPHEMERAL, /* accepted, never stored */
    L2_SAVE_DUPLICATE,
    L2_SAVE_OLDER,     /* a newer version of this replaceable event is stored */
    L2_SAVE_DELETED,   /* a deletion request of its author blocks it */
    L2_SAVE_EXPIRED,
    L2_SAVE_REFUSED, /* refused for the reason in msg (a store written in Lua says why itself) */
    L2_SAVE_FAILED,  /* did not reach the store, which failed part way through a batch (msg: why) */
    L2_SAVE_UNTRIED, /* not reached: the batch gave way to a light save (L2_SAVE_GIVE_WAY) */
};

typedef struct {
    int status;
    unsigned replaced; /* older versions this save removed */
    unsigned deleted;  /* events its NIP-09 tags removed */
    const char *msg;   /* why, for REFUSED and FAILED; owned by the store until its next call */
} l2_save_result;

/* One event's verdict as a caller gets it: ok, or the message of its refusal (NIP-01 prefixes). */
typedef struct {
    int ok;
    char msg[L2_ERRLEN];
} l2_verdict;

/* The NIP-01 OK message for a refusal ("duplicate: ...", "blocked: ..."), NULL when stored. */
const char *l2_save_message(int status);
/* The status whose message msg is (a store written in Lua answers with messages only);
 * L2_SAVE_REFUSED for any other. */
int l2_save_status_of(const char *msg);

/* 1 when tag t has a value and is named `name`. */
int l2_tag_is(const l2_event *ev, uint32_t t, const char *name, size_t n);
/* The `d` value of an addressable event ("" when absent or for a replaceable kind). */
l2_str l2_d_value(const l2_event *ev);
/* NIP-40: 1 and the expiration timestamp when the event has a well-formed one. */
int l2_expiration(const l2_event *ev, int64_t *out);
/* NIP-09: 1 when tag t of the deletion request `del` is an `a` tag naming a replaceable or
 * addressable slot of its own author ("kind:pubkey:d", where d may itself hold ':'); its kind
 * and d ("" for a replaceable kind) go to *kind and *d. */
int l2_deletion_address(const l2_event *del, uint32_t t, uint32_t *kind, l2_str *d);
/* NIP-09: 1 when tag t of `del` is an `e` tag naming an event id (decoded into id). */
int l2_deletion_id(const l2_event *del, uint32_t t, uint8_t id[32]);
/* NIP-09, as strict as the strictest relays: the refusal of a deletion request with an `a` tag
 * naming another pubkey's address, or NULL. A deletion whose `e` tags name only stored events of
 * other authors is refused too (with L2_DELETION_OF_OTHERS): that needs the store, so each store
 * checks it; `e` tags naming unknown events keep their tombstones, bound to the request's author. */
const char *l2_deletion_refusal(const l2_event *del);
#define L2_DELETION_OF_OTHERS                                                                                  \
    "invalid: a deletion request may only delete its author's own events (its e tags name only other "         \
    "authors' events)"

/* The message of a save's refusal: its own (REFUSED, FAILED) or its status's; NULL when stored. */
const char *l2_save_result_message(const l2_save_result *r);

#endif
