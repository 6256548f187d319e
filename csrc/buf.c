#include "buf.h"

#include <stdlib.h>
#include <string.h>

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

/* the two digits of every byte: one load a byte, where a digit a nibble took two (a query's
 * JSON is mostly hex: ids, pubkeys, signatures, p and e tags) */
static const char hexpairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

void l2_hex_encode(char *out, const uint8_t *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++) memcpy(out + 2 * i, hexpairs + 2 * bytes[i], 2);
}

int l2_buf_put_hex(l2_buf *b, const uint8_t *bytes, size_t n)
{
    if (l2_buf_reserve(b, 2 * n)) return -1;
    l2_hex_encode(b->data + b->len, bytes, n);
    b->len += 2 * n;
    return 0;
}

/* 1 + the value of a lowercase hex digit; 0 for anything else (so value - 1 wraps to 0xFF) */
static const uint8_t hexval1[256] = {
    ['0'] = 1, ['1'] = 2, ['2'] = 3, ['3'] = 4, ['4'] = 5, ['5'] = 6, ['6'] = 7, ['7'] = 8,
    ['8'] = 9, ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
};

int l2_hex_decode(uint8_t *out, const char *hex, size_t n)
{
    const unsigned char *h = (const unsigned char *)hex;
    uint8_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t hi = (uint8_t)(hexval1[h[2 * i]] - 1), lo = (uint8_t)(hexval1[h[2 * i + 1]] - 1);
        bad |= hi | lo; /* 0xFF marks a non-digit; digits never set bit 4 */
        out[i] = (uint8_t)(hi << 4 | (lo & 15));
    }
    return (bad & 0x10) ? -1 : 0;
}
