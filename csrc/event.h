/* A nostr event in C: strict parse (JSON or a builder), canonical NIP-01 form, id, BIP-340
 * checks, signing, wire JSON and a compact binary form for storage. No Lua here. */
#ifndef L2_EVENT_H
#define L2_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define L2_ERRLEN 200
#define L2_MAX_CREATED_AT 9007199254740991LL /* 2^53-1: exact in every Lua number type */
#define L2_MAX_KIND 65535

typedef struct {
    size_t max_event_bytes;    /* the JSON text received, or the canonical form of a table */
    uint32_t max_tags;
    uint32_t max_tag_elems;    /* strings in one tag */
    size_t max_tag_elem_bytes; /* bytes in one tag string */
    size_t max_content_bytes;
} l2_limits;

extern const l2_limits l2_default_limits;

/* Formats "invalid: <message>" into err (L2_ERRLEN bytes, may be NULL); returns -1. */
int l2_invalid(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "error: out of memory"; returns -1. */
int l2_oom(char *err);

enum {
    L2_HAVE_ID = 1, L2_HAVE_PUBKEY = 2, L2_HAVE_SIG = 4, L2_HAVE_CREATED_AT = 8,
    L2_HAVE_KIND = 16, L2_HAVE_TAGS = 32, L2_HAVE_CONTENT = 64,
    L2_HAVE_UNSIGNED = L2_HAVE_PUBKEY | L2_HAVE_CREATED_AT | L2_HAVE_KIND | L2_HAVE_TAGS | L2_HAVE_CONTENT,
    L2_HAVE_ALL = L2_HAVE_UNSIGNED | L2_HAVE_ID | L2_HAVE_SIG,
    /* With L2_HAVE_ALL: a malformed id or sig is recorded in `bad` instead of refused, so that
     * l2_event_verify reports problems in a fixed order: shape, then id, then signature. */
    L2_LENIENT_IDSIG = 256,
};

typedef struct {
    uint8_t id[32], pubkey[32], sig[64];
    int64_t created_at;
    uint32_t kind;
    unsigned have;       /* L2_HAVE_* bits of the fields set so far */
    unsigned bad;        /* L2_HAVE_ID / L2_HAVE_SIG: present but malformed (lenient parse) */
    int is_stub;         /* decoded from a stub: content and unindexed tags were dropped */
    uint32_t ntags;
    uint32_t *tag_first; /* tag i is elems[tag_first[i] .. tag_first[i+1]) */
    uint32_t nelems;
    l2_str *elems;
    l2_str content;
    uint32_t tag_cap, elem_cap;
    l2_buf arena; /* strings decoded by a JSON or binary parse; stable until the next reset */
} l2_event;

void l2_event_init(l2_event *ev);
void l2_event_free(l2_event *ev);
void l2_event_reset(l2_event *ev);

/* Builder: each returns 0, or -1 with "invalid: ..." in err (L2_ERRLEN bytes).
 * Strings are referenced, not copied: they must outlive the event's use. */
enum l2_hex_field { L2_FIELD_ID, L2_FIELD_PUBKEY, L2_FIELD_SIG };
int l2_event_set_hex(l2_event *ev, enum l2_hex_field f, const char *s, size_t n, unsigned required, char *err);
int l2_event_set_created_at(l2_event *ev, int64_t v, char *err);
int l2_event_set_kind(l2_event *ev, int64_t v, char *err);
int l2_event_begin_tags(l2_event *ev, char *err);
int l2_event_open_tag(l2_event *ev, const l2_limits *lim, char *err);
int l2_event_add_elem(l2_event *ev, const char *s, size_t n, int check_utf8, const l2_limits *lim, char *err);
int l2_event_set_content(l2_event *ev, const char *s, size_t n, int check_utf8, const l2_limits *lim, char *err);
/* All of `required` (L2_HAVE_ALL or L2_HAVE_UNSIGNED) present, and at most max_event_bytes of
 * canonical form when check_size is set. */
int l2_event_finish(l2_event *ev, unsigned required, int check_size, const l2_limits *lim, char *err);

/* Strict parse of the wire JSON; `required` as for l2_event_finish. */
int l2_event_parse_json(l2_event *ev, const char *json, size_t n, unsigned required,
                        const l2_limits *lim, char *err);

static inline uint32_t l2_tag_len(const l2_event *ev, uint32_t t)
{
    return ev->tag_first[t + 1] - ev->tag_first[t];
}
static inline const l2_str *l2_tag_elem(const l2_event *ev, uint32_t t, uint32_t i)
{
    return &ev->elems[ev->tag_first[t] + i];
}

/* The canonical form [0,pubkey,created_at,kind,tags,content], appended to out. */
int l2_event_serialize(const l2_event *ev, l2_buf *out);
size_t l2_event_canonical_len(const l2_event *ev);
/* SHA-256 (libcrypto); 0 ok, -1 on failure. */
int l2_sha256(const void *data, size_t n, uint8_t out[32]);
/* sha256 of the canonical form; scratch is reused memory. 0 ok, -1 out of memory. */
int l2_event_hash(const l2_event *ev, l2_buf *scratch, uint8_t out[32]);
/* The id matches the content and the signature verifies: 0, or -1 with the reason. */
int l2_event_verify(const l2_event *ev, l2_buf *scratch, char *err);
/* Sets pubkey, id and sig from a secret key; aux NULL means fresh randomness. */
int l2_event_sign(l2_event *ev, const uint8_t seckey[32], const uint8_t *aux, l2_buf *scratch, char *err);

/* Wire JSON {"id":..,"pubkey":..,"created_at":..,"kind":..,"tags":..,"content":..,"sig":..}. */
int l2_event_encode_json(const l2_event *ev, l2_buf *out);
/* JSON string with the NIP-01 escapes (shared by every JSON writer of the core). */
int l2_json_put_string(l2_buf *out, const char *s, size_t n);

/* The stored binary form (see event.c); decode references `bin`, which must outlive ev. */
int l2_event_encode_bin(const l2_event *ev, l2_buf *out);
/* A stub: the head without the sig, the tags a store indexes (single-letter names: their first
 * value; and `expiration`), no content. It decodes with is_stub set (and a zero sig), matches
 * filters as the event does, and yields the same index keys. */
int l2_event_encode_stub(const l2_event *ev, l2_buf *out);
int l2_event_decode_bin(l2_event *ev, const void *bin, size_t n, char *err);
/* The wire JSON of a binary event (not a stub), appended to out: what l2_event_encode_json writes
 * for the decoded event, byte for byte, without decoding it (a read's hot path). 0, or -1 with
 * err (corrupt, a stub, out of memory). */
int l2_event_bin_to_json(const void *bin, size_t n, l2_buf *out, char *err);
/* Only the id and created_at of a binary event (a set reconciliation's item): 0, or -1. */
int l2_event_bin_key(const void *bin, size_t n, int64_t *created_at, uint8_t id[32]);

/* Whether an event belongs to one of n sorted pubkeys: its author's, or a `p` tag's value. */
int l2_event_names_pubkey(const l2_event *ev, const uint8_t (*keys)[32], size_t n);

#endif
