#include "buf.h"

#include <stdlib.h>

void l2_buf_init(l2_buf *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void l2_buf_free(l2_buf *b)
{
    free(b->data);
    l2_buf_init(b);
}

int l2_buf_grow(l2_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len) return -1;
    size_t want = b->len + extra;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < want) cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int l2_buf_put_u64(l2_buf *b, uint64_t v)
{
    char tmp[20];
    size_t i = sizeof tmp;
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return l2_buf_put(b, tmp + i, sizeof tmp - i);
}

int l2_buf_put_varint(l2_buf *b, uint64_t v)
{
    if (l2_buf_reserve(b, 10)) return -1;
    uint8_t *o = (uint8_t *)b->data + b->len;
    size_t n = 0;
    while (v >= 0x80) {
        o[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    o[n++] = (uint8_t)v;
    b->len += n;
    return 0;
}

static const char hexdigits[] = "0123456789abcdef";

void l2_hex_encode(char *out, const uint8_t *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdigits[bytes[i] >> 4];
        out[2 * i + 1] = hexdigits[bytes[i] & 15];
    }
}

int l2_buf_put_hex(l2_buf *b, const uint8_t *bytes, size_t n)
{
    if (l2_buf_reserve(b, 2 * n)) return -1;
    l2_hex_encode(b->data + b->len, bytes, n);
    b->len += 2 * n;
    return 0;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

int l2_hex_decode(uint8_t *out, const char *hex, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval((unsigned char)hex[2 * i]), lo = hexval((unsigned char)hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}
