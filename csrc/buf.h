/* Growable byte buffer: the one place the core grows memory for output. */
#ifndef L2_BUF_H
#define L2_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    size_t len, cap;
} l2_buf;

/* A length-counted string; never NUL-terminated by contract. */
typedef struct {
    const char *p;
    size_t n;
} l2_str;

void l2_buf_init(l2_buf *b);
void l2_buf_free(l2_buf *b);
/* Make room for `extra` more bytes; 0 on success, -1 when out of memory. */
int l2_buf_grow(l2_buf *b, size_t extra);

static inline int l2_buf_reserve(l2_buf *b, size_t extra)
{
    return (b->cap - b->len >= extra) ? 0 : l2_buf_grow(b, extra);
}

static inline int l2_buf_put(l2_buf *b, const void *p, size_t n)
{
    if (l2_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static inline int l2_buf_putc(l2_buf *b, char c)
{
    if (l2_buf_reserve(b, 1)) return -1;
    b->data[b->len++] = c;
    return 0;
}

/* Unsigned decimal. */
int l2_buf_put_u64(l2_buf *b, uint64_t v);
/* LEB128-style varint. */
int l2_buf_put_varint(l2_buf *b, uint64_t v);
/* 2*n lowercase hex digits. */
int l2_buf_put_hex(l2_buf *b, const uint8_t *bytes, size_t n);

/* Lowercase hex decode of exactly 2*n chars; 0 ok, -1 when any char is not [0-9a-f]. */
int l2_hex_decode(uint8_t *out, const char *hex, size_t n);
void l2_hex_encode(char *out, const uint8_t *bytes, size_t n);

#endif
