/* NIP-01 filters: strict parse (JSON or a builder), normalized (sorted, deduplicated) for
 * binary search, and exact matching against an event. No prefixes, no hashes. */
#ifndef L2_FILTER_H
#define L2_FILTER_H

#include <stdint.h>

#include "buf.h"
#include "event.h"

typedef struct {
    uint32_t max_ids, max_authors, max_kinds, max_tag_values;
    size_t max_tag_value_bytes, max_search_bytes, max_filter_bytes;
} l2_filter_limits;

extern const l2_filter_limits l2_default_filter_limits;
/* No limit: for filters already checked once (remembered answers, live subscriptions) and those
 * the core builds itself. */
extern const l2_filter_limits l2_unlimited_filter_limits;

enum {
    L2_F_IDS = 1, L2_F_AUTHORS = 2, L2_F_KINDS = 4, L2_F_SINCE = 8, L2_F_UNTIL = 16,
    L2_F_LIMIT = 32, L2_F_SEARCH = 64, L2_F_TAG = 128,
};

typedef struct {
    char letter;
    uint32_t first, n; /* values[first .. first+n), sorted */
} l2_tag_cond;

typedef struct {
    unsigned have; /* L2_F_* bits of the fields present (an empty list is present) */
    uint32_t nids, nauthors, nkinds, ntags, nvalues;
    uint8_t (*ids)[32];
    uint8_t (*authors)[32];
    uint16_t *kinds;
    l2_tag_cond tags[52]; /* one per letter at most */
    l2_str *values;
    int64_t since, until, limit;
    l2_str search;
    uint32_t ids_cap, authors_cap, kinds_cap, values_cap;
    l2_buf arena; /* strings decoded by the JSON parse */
} l2_filter;

void l2_filter_init(l2_filter *f);
void l2_filter_free(l2_filter *f);
void l2_filter_reset(l2_filter *f);

/* Builder. Every call returns 0, or -1 with "invalid: ..." in err (L2_ERRLEN bytes).
 * A key is classified first: *field gets one L2_F_* bit and *letter the tag letter. */
int l2_filter_key(const char *key, size_t n, unsigned *field, char *letter, char *err);
/* Marks a field present (an empty list still counts); refuses it twice. */
int l2_filter_begin(l2_filter *f, unsigned field, char letter, char *err);
/* Adds one element to the list field begun last; idx is its position, for messages. */
int l2_filter_add_hex(l2_filter *f, unsigned field, const char *s, size_t n, size_t idx,
                      const l2_filter_limits *lim, char *err);
/* The same with the 32 bytes themselves. */
int l2_filter_add_key(l2_filter *f, unsigned field, const uint8_t key[32], size_t idx, const l2_filter_limits *lim,
                      char *err);
int l2_filter_add_kind(l2_filter *f, int64_t kind, size_t idx, const l2_filter_limits *lim, char *err);
int l2_filter_add_tag_value(l2_filter *f, const char *s, size_t n, int check_utf8, size_t idx,
                            const l2_filter_limits *lim, char *err);
int l2_filter_set_number(l2_filter *f, unsigned field, int64_t v, char *err);
int l2_filter_set_search(l2_filter *f, const char *s, size_t n, int check_utf8,
                         const l2_filter_limits *lim, char *err);
/* Sorts and deduplicates the lists. */
int l2_filter_finish(l2_filter *f, char *err);

int l2_filter_parse_json(l2_filter *f, const char *json, size_t n, const l2_filter_limits *lim, char *err);

/* The filter as canonical JSON (lists sorted and deduplicated as the filter keeps them, fields in
 * a fixed order, tag conditions by letter) with `limit` as its limit: equal filters give equal
 * text, and l2_filter_parse_json reads it back. 0, or -1 when out of memory. */
int l2_filter_encode_json(const l2_filter *f, int64_t limit, l2_buf *out);

/* 1 when ev matches every condition of f (limit and search are not conditions here). */
int l2_filter_match(const l2_filter *f, const l2_event *ev);
/* 1 when f can match nothing at all (an empty list, since > until, limit 0). */
int l2_filter_is_empty(const l2_filter *f);

int l2_filter_has_id(const l2_filter *f, const uint8_t id[32]);
int l2_filter_has_author(const l2_filter *f, const uint8_t pk[32]);
int l2_filter_has_kind(const l2_filter *f, uint32_t kind);
int l2_filter_has_tag_value(const l2_filter *f, const l2_tag_cond *c, const char *s, size_t n);

#endif
