/* Big-endian integers in keys and records: stored so, LMDB's byte order is numeric order and
 * cursors walk in it. Shared by the store (store_*.c) and its remembered answers (answers.c). */
#ifndef L2_BE_H
#define L2_BE_H

#include <stdint.h>

static inline void put_be16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static inline uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* n bytes (up to 8) */
static inline void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static inline uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* 6 bytes: serials and milliseconds in index keys */
static inline void put_be48(uint8_t *p, uint64_t v) { put_be(p, v, 6); }
static inline uint64_t get_be48(const uint8_t *p) { return get_be(p, 6); }
static inline void put_be64(uint8_t *p, uint64_t v) { put_be(p, v, 8); }
static inline uint64_t get_be64(const uint8_t *p) { return get_be(p, 8); }

#endif
