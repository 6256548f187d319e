/* A strict, allocation-free JSON reader (RFC 8259) for the shapes nostr uses.
 * Strings are unescaped into caller memory and checked to be valid UTF-8; nesting is bounded. */
#ifndef L2_JSON_H
#define L2_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *start, *p, *end;
    int depth, max_depth;
    char *err;
    size_t errlen;
} l2_json;

void l2_json_init(l2_json *j, const char *s, size_t n, int max_depth, char *err, size_t errlen);

/* Skips white space; the next byte, or -1 at the end of input. */
int l2_json_peek(l2_json *j);
/* Consumes `open` ('{' or '['), counting depth; 0 ok, -1 error. */
int l2_json_open(l2_json *j, char open);
/* Inside a container opened with l2_json_open: 1 when a member/element follows (its comma
 * consumed), 0 when `close` was consumed, -1 error. `*index` counts members, starting at 0. */
int l2_json_more(l2_json *j, char close, size_t *index);
/* An object key and its ':'; decoded into key (at most cap bytes; *len is the full length). */
int l2_json_key(l2_json *j, char *key, size_t cap, size_t *len);
/* A string value: unescaped into out, which must hold cap bytes; the raw token length always
 * suffices. *len receives the decoded length (may exceed cap: then nothing past cap is written). */
int l2_json_string(l2_json *j, char *out, size_t cap, size_t *len);
/* A number that must be an exact integer in [min, max] (fraction/exponent forms accepted when
 * integral); `what` names the field in the error message. */
int l2_json_integer(l2_json *j, int64_t min, int64_t max, const char *what, int64_t *out);
/* Skips any value (bounded depth). */
int l2_json_skip(l2_json *j);
/* Only white space may follow. */
int l2_json_finish(l2_json *j);
/* Formats "invalid: <msg>" into j->err and returns -1. */
int l2_json_fail(l2_json *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Word-at-a-time scanning: does any of the 8 bytes in x need attention? */
#define L2_ONES 0x0101010101010101ULL
#define L2_HIGHS 0x8080808080808080ULL
static inline uint64_t l2_has_zero_byte(uint64_t v)
{
    return (v - L2_ONES) & ~v & L2_HIGHS;
}
/* a byte below 0x20, a '"' or a '\\' (the bytes a JSON string writer must escape) */
static inline uint64_t l2_needs_escape8(uint64_t x)
{
    return ((x - L2_ONES * 0x20) & ~x & L2_HIGHS) | l2_has_zero_byte(x ^ (L2_ONES * '"')) |
           l2_has_zero_byte(x ^ (L2_ONES * '\\'));
}

/* Length of the valid UTF-8 sequence at p (1-4), or 0 when it is not valid UTF-8. */
size_t l2_utf8_seq(const unsigned char *p, const unsigned char *end);
/* 1 when the whole string is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF). */
int l2_utf8_valid(const char *s, size_t n);

#endif
