#include "event.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "json.h"
#include "schnorr.h"

const l2_limits l2_default_limits = {
    .max_event_bytes = 256 * 1024, /* the largest real event seen is 77 KB */
    .max_tags = 5000,              /* real events carry up to ~1,450 */
    .max_tag_elems = 1000,
    .max_tag_elem_bytes = 64 * 1024,
    .max_content_bytes = 256 * 1024,
};

int l2_invalid(char *err, const char *fmt, ...)
{
    if (!err) return -1;
    int n = snprintf(err, L2_ERRLEN, "invalid: ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, L2_ERRLEN - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

int l2_oom(char *err)
{
    if (err) snprintf(err, L2_ERRLEN, "error: out of memory");
    return -1;
}

void l2_event_init(l2_event *ev)
{
    memset(ev, 0, sizeof *ev);
    l2_buf_init(&ev->arena);
}

void l2_event_free(l2_event *ev)
{
    free(ev->tag_first);
    free(ev->elems);
    l2_buf_free(&ev->arena);
    l2_event_init(ev);
}

void l2_event_reset(l2_event *ev)
{
    ev->have = ev->bad = 0;
    ev->is_stub = 0;
    ev->ntags = ev->nelems = 0;
    ev->content.p = "";
    ev->content.n = 0;
    ev->arena.len = 0;
    if (ev->tag_first) ev->tag_first[0] = 0;
}

static const char *field_name[] = {"id", "pubkey", "sig"};

int l2_event_set_hex(l2_event *ev, enum l2_hex_field f, const char *s, size_t n, unsigned required, char *err)
{
    static const unsigned bit[] = {L2_HAVE_ID, L2_HAVE_PUBKEY, L2_HAVE_SIG};
    uint8_t *dst = f == L2_FIELD_ID ? ev->id : f == L2_FIELD_PUBKEY ? ev->pubkey : ev->sig;
    size_t bytes = f == L2_FIELD_SIG ? 64 : 32;
    ev->have |= bit[f];
    if (n == 2 * bytes && l2_hex_decode(dst, s, bytes) == 0) return 0;
    if ((required & L2_LENIENT_IDSIG) && f != L2_FIELD_PUBKEY) {
        ev->bad |= bit[f];
        return 0;
    }
    return l2_invalid(err, "%s must be %zu lowercase hex characters", field_name[f], 2 * bytes);
}

int l2_event_set_created_at(l2_event *ev, int64_t v, char *err)
{
    if (v < 0 || v > L2_MAX_CREATED_AT) return l2_invalid(err, "created_at must be a non-negative integer below 2^53");
    ev->created_at = v;
    ev->have |= L2_HAVE_CREATED_AT;
    return 0;
}

int l2_event_set_kind(l2_event *ev, int64_t v, char *err)
{
    if (v < 0 || v > L2_MAX_KIND) return l2_invalid(err, "kind must be an integer from 0 to 65535");
    ev->kind = (uint32_t)v;
    ev->have |= L2_HAVE_KIND;
    return 0;
}

int l2_event_begin_tags(l2_event *ev, char *err)
{
    if (!ev->tag_first) {
        ev->tag_first = malloc(16 * sizeof *ev->tag_first);
        if (!ev->tag_first) return l2_oom(err);
        ev->tag_cap = 15;
    }
    ev->ntags = ev->nelems = 0;
    ev->tag_first[0] = 0;
    ev->have |= L2_HAVE_TAGS;
    return 0;
}

int l2_event_open_tag(l2_event *ev, const l2_limits *lim, char *err)
{
    if (ev->ntags >= lim->max_tags) return l2_invalid(err, "too many tags (the limit is %u)", lim->max_tags);
    if (ev->ntags == ev->tag_cap) {
        uint32_t cap = ev->tag_cap * 2 + 1;
        uint32_t *p = realloc(ev->tag_first, ((size_t)cap + 1) * sizeof *p);
        if (!p) return l2_oom(err);
        ev->tag_first = p;
        ev->tag_cap = cap;
    }
    ev->ntags++;
    ev->tag_first[ev->ntags] = ev->nelems;
    return 0;
}

int l2_event_add_elem(l2_event *ev, const char *s, size_t n, int check_utf8, const l2_limits *lim, char *err)
{
    uint32_t t = ev->ntags - 1;
    if (l2_tag_len(ev, t) >= lim->max_tag_elems)
        return l2_invalid(err, "tag %u has too many elements (the limit is %u)", t, lim->max_tag_elems);
    if (n > lim->max_tag_elem_bytes)
        return l2_invalid(err, "tag %u element is %zu bytes, over the limit of %zu", t, n, lim->max_tag_elem_bytes);
    if (check_utf8 && !l2_utf8_valid(s, n)) return l2_invalid(err, "tag %u element is not valid UTF-8", t);
    if (ev->nelems == ev->elem_cap) {
        uint32_t cap = ev->elem_cap ? ev->elem_cap * 2 : 64;
        l2_str *p = realloc(ev->elems, (size_t)cap * sizeof *p);
        if (!p) return l2_oom(err);
        ev->elems = p;
        ev->elem_cap = cap;
    }
    ev->elems[ev->nelems].p = s;
    ev->elems[ev->nelems].n = n;
    ev->nelems++;
    ev->tag_first[ev->ntags] = ev->nelems;
    return 0;
}

int l2_event_set_content(l2_event *ev, const char *s, size_t n, int check_utf8, const l2_limits *lim, char *err)
{
    if (n > lim->max_content_bytes)
        return l2_invalid(err, "content is %zu bytes, over the limit of %zu", n, lim->max_content_bytes);
    if (check_utf8 && !l2_utf8_valid(s, n)) return l2_invalid(err, "content is not valid UTF-8");
    ev->content.p = s;
    ev->content.n = n;
    ev->have |= L2_HAVE_CONTENT;
    return 0;
}

int l2_event_finish(l2_event *ev, unsigned required, int check_size, const l2_limits *lim, char *err)
{
    static const struct { unsigned bit; const char *name; } fields[] = {
        {L2_HAVE_ID, "id"}, {L2_HAVE_PUBKEY, "pubkey"}, {L2_HAVE_CREATED_AT, "created_at"},
        {L2_HAVE_KIND, "kind"}, {L2_HAVE_TAGS, "tags"}, {L2_HAVE_CONTENT, "content"}, {L2_HAVE_SIG, "sig"},
    };
    unsigned missing = required & L2_HAVE_ALL & ~ev->have;
    for (size_t i = 0; missing && i < sizeof fields / sizeof *fields; i++)
        if (missing & fields[i].bit) return l2_invalid(err, "missing field '%s'", fields[i].name);
    if (check_size) {
        size_t n = l2_event_canonical_len(ev);
        if (n > lim->max_event_bytes)
            return l2_invalid(err, "event is %zu bytes, over the limit of %zu", n, lim->max_event_bytes);
    }
    return 0;
}

/* ---- JSON ---- */

static int json_hex_field(l2_json *j, l2_event *ev, enum l2_hex_field f, unsigned required)
{
    char tmp[130];
    size_t n;
    if (l2_json_peek(j) != '"') return l2_json_fail(j, "%s must be a string", field_name[f]);
    if (l2_json_string(j, tmp, sizeof tmp, &n)) return -1;
    if (n > sizeof tmp) n = sizeof tmp; /* too long: refused below by length */
    return l2_event_set_hex(ev, f, tmp, n, required, j->err);
}

/* Decodes a string into the arena; the arena was sized for the whole input, so it never moves. */
static int json_arena_string(l2_json *j, l2_event *ev, const char *what, l2_str *out)
{
    size_t n;
    if (l2_json_peek(j) != '"') return l2_json_fail(j, "%s must be a string", what);
    char *dst = ev->arena.data + ev->arena.len;
    if (l2_json_string(j, dst, ev->arena.cap - ev->arena.len, &n)) return -1;
    ev->arena.len += n;
    out->p = dst;
    out->n = n;
    return 0;
}

static int json_tags(l2_json *j, l2_event *ev, const l2_limits *lim)
{
    size_t ti = 0;
    if (l2_json_peek(j) != '[') return l2_json_fail(j, "tags must be an array of arrays of strings");
    if (l2_json_open(j, '[') || l2_event_begin_tags(ev, j->err)) return -1;
    for (int r; (r = l2_json_more(j, ']', &ti));) {
        if (r < 0) return -1;
        size_t ei = 0;
        if (l2_json_peek(j) != '[') return l2_json_fail(j, "tags[%zu] must be an array of strings", ti - 1);
        if (l2_json_open(j, '[') || l2_event_open_tag(ev, lim, j->err)) return -1;
        for (int q; (q = l2_json_more(j, ']', &ei));) {
            l2_str s = {NULL, 0};
            if (q < 0) return -1;
            if (l2_json_peek(j) != '"') return l2_json_fail(j, "tags[%zu][%zu] must be a string", ti - 1, ei - 1);
            if (json_arena_string(j, ev, "tag element", &s)) return -1;
            if (l2_event_add_elem(ev, s.p, s.n, 0, lim, j->err)) return -1;
        }
    }
    return 0;
}

int l2_event_parse_json(l2_event *ev, const char *json, size_t n, unsigned required,
                        const l2_limits *lim, char *err)
{
    l2_json j;
    size_t i = 0;
    l2_event_reset(ev);
    if (n > lim->max_event_bytes) return l2_invalid(err, "event is %zu bytes, over the limit of %zu", n, lim->max_event_bytes);
    if (l2_buf_reserve(&ev->arena, n + 1)) return l2_oom(err);
    l2_json_init(&j, json, n, 32, err, L2_ERRLEN);
    if (l2_json_peek(&j) != '{') return l2_json_fail(&j, "an event must be a JSON object");
    if (l2_json_open(&j, '{')) return -1;
    for (int r; (r = l2_json_more(&j, '}', &i));) {
        char key[16];
        size_t klen;
        int64_t v;
        if (r < 0 || l2_json_key(&j, key, sizeof key, &klen)) return -1;
        unsigned bit = 0;
        int rc = 0;
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(key, s, sizeof(s) - 1) == 0)
        if (KEY("id")) {
            bit = L2_HAVE_ID;
        } else if (KEY("pubkey")) {
            bit = L2_HAVE_PUBKEY;
        } else if (KEY("sig")) {
            bit = L2_HAVE_SIG;
        } else if (KEY("created_at")) {
            bit = L2_HAVE_CREATED_AT;
        } else if (KEY("kind")) {
            bit = L2_HAVE_KIND;
        } else if (KEY("tags")) {
            bit = L2_HAVE_TAGS;
        } else if (KEY("content")) {
            bit = L2_HAVE_CONTENT;
        }
#undef KEY
        if (!bit) {
            if (l2_json_skip(&j)) return -1;
            continue;
        }
        if (ev->have & bit) return l2_invalid(err, "duplicate field '%.*s'", (int)klen, key);
        switch (bit) {
        case L2_HAVE_ID: rc = json_hex_field(&j, ev, L2_FIELD_ID, required); break;
        case L2_HAVE_PUBKEY: rc = json_hex_field(&j, ev, L2_FIELD_PUBKEY, required); break;
        case L2_HAVE_SIG: rc = json_hex_field(&j, ev, L2_FIELD_SIG, required); break;
        case L2_HAVE_CREATED_AT:
            rc = l2_json_integer(&j, INT64_MIN, INT64_MAX, "created_at", &v) || l2_event_set_created_at(ev, v, err);
            break;
        case L2_HAVE_KIND:
            rc = l2_json_integer(&j, INT64_MIN, INT64_MAX, "kind", &v) || l2_event_set_kind(ev, v, err);
            break;
        case L2_HAVE_TAGS: rc = json_tags(&j, ev, lim); break;
        default: {
            l2_str s = {NULL, 0};
            rc = json_arena_string(&j, ev, "content", &s) || l2_event_set_content(ev, s.p, s.n, 0, lim, err);
        }
        }
        if (rc) return -1;
    }
    if (l2_json_finish(&j)) return -1;
    return l2_event_finish(ev, required, 0, lim, err);
}

/* ---- canonical form, id, signature ---- */

static inline int needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

static size_t json_string_len(const char *s, size_t n)
{
    size_t len = n + 2;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (needs_escape(c))
            len += (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') ? 1 : 5;
    }
    return len;
}

int l2_json_put_string(l2_buf *out, const char *s, size_t n)
{
    /* worst case: every byte becomes \u00XX */
    if (l2_buf_reserve(out, n * 6 + 2)) return -1;
    char *o = out->data + out->len;
    const char *end = s + n;
    *o++ = '"';
    while (s < end) {
        const char *run = s;
        while (end - s >= 8) {
            uint64_t x;
            memcpy(&x, s, 8);
            if (l2_needs_escape8(x)) break;
            s += 8;
        }
        while (s < end && !needs_escape((unsigned char)*s)) s++;
        memcpy(o, run, (size_t)(s - run));
        o += s - run;
        if (s == end) break;
        unsigned char c = (unsigned char)*s++;
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        case '\b': *o++ = 'b'; break;
        case '\f': *o++ = 'f'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = "0123456789abcdef"[c >> 4];
            *o++ = "0123456789abcdef"[c & 15];
        }
    }
    *o++ = '"';
    out->len = (size_t)(o - out->data);
    return 0;
}

static int put_tags(const l2_event *ev, l2_buf *out)
{
    if (l2_buf_putc(out, '[')) return -1;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        if (t && l2_buf_putc(out, ',')) return -1;
        if (l2_buf_putc(out, '[')) return -1;
        for (uint32_t i = 0, n = l2_tag_len(ev, t); i < n; i++) {
            const l2_str *e = l2_tag_elem(ev, t, i);
            if (i && l2_buf_putc(out, ',')) return -1;
            if (l2_json_put_string(out, e->p, e->n)) return -1;
        }
        if (l2_buf_putc(out, ']')) return -1;
    }
    return l2_buf_putc(out, ']');
}

static int put_hex_string(l2_buf *out, const uint8_t *b, size_t n)
{
    return l2_buf_putc(out, '"') || l2_buf_put_hex(out, b, n) || l2_buf_putc(out, '"');
}

int l2_event_serialize(const l2_event *ev, l2_buf *out)
{
    return l2_buf_put(out, "[0,", 3) || put_hex_string(out, ev->pubkey, 32) || l2_buf_putc(out, ',') ||
           l2_buf_put_u64(out, (uint64_t)ev->created_at) || l2_buf_putc(out, ',') ||
           l2_buf_put_u64(out, ev->kind) || l2_buf_putc(out, ',') || put_tags(ev, out) ||
           l2_buf_putc(out, ',') || l2_json_put_string(out, ev->content.p, ev->content.n) ||
           l2_buf_putc(out, ']');
}

static size_t digits(uint64_t v)
{
    size_t n = 1;
    while (v >= 10) {
        v /= 10;
        n++;
    }
    return n;
}

size_t l2_event_canonical_len(const l2_event *ev)
{
    /* [0,"<64>",<created_at>,<kind>,[tags],"content"] */
    size_t n = 3 + 66 + 1 + digits((uint64_t)ev->created_at) + 1 + digits(ev->kind) + 1 + 2 + 1 + 1;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        uint32_t k = l2_tag_len(ev, t);
        n += 2 + (t ? 1 : 0) + (k ? k - 1 : 0);
        for (uint32_t i = 0; i < k; i++) n += json_string_len(l2_tag_elem(ev, t, i)->p, l2_tag_elem(ev, t, i)->n);
    }
    return n + json_string_len(ev->content.p, ev->content.n);
}

/* SHA256() looks the digest up on every call under OpenSSL 3; fetching it once is ~30 % faster */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

__attribute__((destructor)) static void sha256_release(void) /* at unload, as the context above */
{
    EVP_MD_free(sha256_md);
    sha256_md = NULL;
}

int l2_sha256(const void *data, size_t n, uint8_t out[32])
{
    pthread_once(&sha256_once, sha256_fetch);
    return (sha256_md && EVP_Digest(data, n, out, NULL, sha256_md, NULL)) ? 0 : -1;
}

int l2_event_hash(const l2_event *ev, l2_buf *scratch, uint8_t out[32])
{
    scratch->len = 0;
    if (l2_event_serialize(ev, scratch)) return -1;
    return l2_sha256(scratch->data, scratch->len, out);
}

int l2_event_verify(const l2_event *ev, l2_buf *scratch, char *err)
{
    uint8_t id[32];
    if (ev->bad & L2_HAVE_ID) return l2_invalid(err, "bad event id: not 64 lowercase hex characters");
    if (l2_event_hash(ev, scratch, id)) return l2_oom(err);
    if (memcmp(id, ev->id, 32) != 0) {
        char hex[65];
        l2_hex_encode(hex, id, 32);
        hex[64] = 0;
        return l2_invalid(err, "bad event id: the canonical form hashes to %s", hex);
    }
    if (ev->bad & L2_HAVE_SIG) return l2_invalid(err, "bad signature: not 128 lowercase hex characters");
    if (!l2_schnorr_verify(ev->sig, ev->id, 32, ev->pubkey)) return l2_invalid(err, "bad signature");
    return 0;
}

int l2_event_sign(l2_event *ev, const uint8_t seckey[32], const uint8_t *aux, l2_buf *scratch, char *err)
{
    if (!l2_schnorr_pubkey(ev->pubkey, seckey)) return l2_invalid(err, "secret key is not valid");
    ev->have |= L2_HAVE_PUBKEY;
    if (l2_event_hash(ev, scratch, ev->id)) return l2_oom(err);
    if (!l2_schnorr_sign(ev->sig, ev->id, 32, seckey, aux)) return l2_invalid(err, "secret key is not valid");
    ev->have |= L2_HAVE_ID | L2_HAVE_SIG;
    return 0;
}

int l2_event_encode_json(const l2_event *ev, l2_buf *out)
{
    return l2_buf_put(out, "{\"id\":", 6) || put_hex_string(out, ev->id, 32) ||
           l2_buf_put(out, ",\"pubkey\":", 10) || put_hex_string(out, ev->pubkey, 32) ||
           l2_buf_put(out, ",\"created_at\":", 14) || l2_buf_put_u64(out, (uint64_t)ev->created_at) ||
           l2_buf_put(out, ",\"kind\":", 8) || l2_buf_put_u64(out, ev->kind) ||
           l2_buf_put(out, ",\"tags\":", 8) || put_tags(ev, out) ||
           l2_buf_put(out, ",\"content\":", 11) || l2_json_put_string(out, ev->content.p, ev->content.n) ||
           l2_buf_put(out, ",\"sig\":", 7) || put_hex_string(out, ev->sig, 64) || l2_buf_putc(out, '}');
}

/* ---- binary form ----
 * u8 version (1) | id 32 | pubkey 32 | sig 64 | varint created_at | varint kind | varint ntags |
 *   per tag: varint nelems, per element: varint (len << 1 | packed), then 32 raw bytes when packed
 *   (a 64-char lowercase hex string: ids and pubkeys in e/p/a tags) or len bytes |
 * varint content length | content.
 * The fixed 129-byte head lets a store read id, pubkey and sig without decoding the rest.
 * A stub (u8 3) has no sig: a 65-byte head, and no content. Stubs written before (u8 2) kept the
 * sig and are still read. */

#define L2_BIN_VERSION 1
#define L2_BIN_STUB_SIGNED 2
#define L2_BIN_STUB 3

/* The head's length of a binary form: 0 for a version this code does not know. */
static size_t head_len(uint8_t version)
{
    return version == L2_BIN_VERSION || version == L2_BIN_STUB_SIGNED ? 129 : version == L2_BIN_STUB ? 65 : 0;
}

static int is_hex64(const l2_str *s)
{
    if (s->n != 64) return 0;
    for (size_t i = 0; i < 64; i++) {
        unsigned char c = (unsigned char)s->p[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

/* the tags a stub keeps: those a filter or an index can use */
static int indexed_tag(const l2_event *ev, uint32_t t)
{
    if (l2_tag_len(ev, t) < 2) return 0;
    const l2_str *name = l2_tag_elem(ev, t, 0);
    return name->n == 1 || (name->n == 10 && memcmp(name->p, "expiration", 10) == 0);
}

static int encode_bin(const l2_event *ev, l2_buf *out, int stub)
{
    uint32_t ntags = 0;
    for (uint32_t t = 0; t < ev->ntags; t++) ntags += !stub || indexed_tag(ev, t);
    if (l2_buf_reserve(out, 129 + 30) || l2_buf_putc(out, stub ? L2_BIN_STUB : L2_BIN_VERSION) ||
        l2_buf_put(out, ev->id, 32) || l2_buf_put(out, ev->pubkey, 32) || (!stub && l2_buf_put(out, ev->sig, 64)) ||
        l2_buf_put_varint(out, (uint64_t)ev->created_at) || l2_buf_put_varint(out, ev->kind) ||
        l2_buf_put_varint(out, ntags))
        return -1;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        if (stub && !indexed_tag(ev, t)) continue;
        uint32_t k = stub ? 2 : l2_tag_len(ev, t);
        if (l2_buf_put_varint(out, k)) return -1;
        for (uint32_t i = 0; i < k; i++) {
            const l2_str *e = l2_tag_elem(ev, t, i);
            if (is_hex64(e)) {
                uint8_t raw[32];
                l2_hex_decode(raw, e->p, 32);
                if (l2_buf_put_varint(out, 64 << 1 | 1) || l2_buf_put(out, raw, 32)) return -1;
            } else if (l2_buf_put_varint(out, (uint64_t)e->n << 1) || l2_buf_put(out, e->p, e->n)) {
                return -1;
            }
        }
    }
    if (stub) return l2_buf_put_varint(out, 0);
    return l2_buf_put_varint(out, ev->content.n) || l2_buf_put(out, ev->content.p, ev->content.n);
}

int l2_event_encode_bin(const l2_event *ev, l2_buf *out)
{
    return encode_bin(ev, out, 0);
}

int l2_event_encode_stub(const l2_event *ev, l2_buf *out)
{
    return encode_bin(ev, out, 1);
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    uint64_t r = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t b = *(*p)++;
        r |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *v = r;
            return 0;
        }
    }
    return -1;
}

int l2_event_bin_key(const void *bin, size_t n, int64_t *created_at, uint8_t id[32])
{
    const uint8_t *p = bin, *end = p + n;
    uint64_t v;
    size_t head = n ? head_len(p[0]) : 0;
    if (!head || n < head + 4) return -1;
    memcpy(id, p + 1, 32);
    p += head;
    if (get_varint(&p, end, &v) || v > (uint64_t)L2_MAX_CREATED_AT) return -1;
    *created_at = (int64_t)v;
    return 0;
}

int l2_event_decode_bin(l2_event *ev, const void *bin, size_t n, char *err)
{
    const uint8_t *p = bin, *end = p + n;
    uint64_t v, ntags, k, hdr;
    l2_event_reset(ev);
    size_t head = n ? head_len(p[0]) : 0;
    if (!head || n < head + 4) goto corrupt;
    ev->is_stub = p[0] != L2_BIN_VERSION;
    memcpy(ev->id, p + 1, 32);
    memcpy(ev->pubkey, p + 33, 32);
    if (head == 129) memcpy(ev->sig, p + 65, 64);
    else memset(ev->sig, 0, 64); /* a stub's: a stub is never sent, its body comes from L2 */
    p += head;
    if (get_varint(&p, end, &v) || v > (uint64_t)L2_MAX_CREATED_AT) goto corrupt;
    ev->created_at = (int64_t)v;
    if (get_varint(&p, end, &v) || v > L2_MAX_KIND) goto corrupt;
    ev->kind = (uint32_t)v;
    /* every packed element expands 33 bytes into 64: twice the input always suffices */
    if (l2_buf_reserve(&ev->arena, 2 * n) || l2_event_begin_tags(ev, err)) return l2_oom(err);
    if (get_varint(&p, end, &ntags) || ntags > n) goto corrupt;
    static const l2_limits unlimited = {SIZE_MAX, UINT32_MAX, UINT32_MAX, SIZE_MAX, SIZE_MAX};
    for (uint64_t t = 0; t < ntags; t++) {
        if (get_varint(&p, end, &k) || k > (uint64_t)(end - p)) goto corrupt;
        if (l2_event_open_tag(ev, &unlimited, err)) return -1;
        for (uint64_t i = 0; i < k; i++) {
            if (get_varint(&p, end, &hdr)) goto corrupt;
            const char *s;
            size_t len = hdr >> 1;
            if (hdr & 1) {
                if (len != 64 || end - p < 32) goto corrupt;
                char *dst = ev->arena.data + ev->arena.len;
                l2_hex_encode(dst, p, 32);
                ev->arena.len += 64;
                s = dst;
                p += 32;
            } else {
                if (len > (size_t)(end - p)) goto corrupt;
                s = (const char *)p;
                p += len;
            }
            if (l2_event_add_elem(ev, s, len, 0, &unlimited, err)) return -1;
        }
    }
    if (get_varint(&p, end, &v) || v != (uint64_t)(end - p)) goto corrupt;
    ev->content.p = (const char *)p;
    ev->content.n = (size_t)v;
    ev->have = L2_HAVE_ALL;
    return 0;
corrupt:
    if (err) snprintf(err, L2_ERRLEN, "error: corrupt stored event");
    return -1;
}

int l2_event_bin_to_json(const void *bin, size_t n, l2_buf *out, char *err)
{
    const uint8_t *p = bin, *end = p + n;
    uint64_t created_at, kind, ntags, k, hdr, v;
    if (n < 133 || p[0] != L2_BIN_VERSION) goto corrupt;
    const uint8_t *id = p + 1, *pubkey = p + 33, *sig = p + 65;
    p += 129;
    if (get_varint(&p, end, &created_at) || created_at > (uint64_t)L2_MAX_CREATED_AT ||
        get_varint(&p, end, &kind) || kind > L2_MAX_KIND || get_varint(&p, end, &ntags) || ntags > n)
        goto corrupt;
    if (l2_buf_put(out, "{\"id\":", 6) || put_hex_string(out, id, 32) || l2_buf_put(out, ",\"pubkey\":", 10) ||
        put_hex_string(out, pubkey, 32) || l2_buf_put(out, ",\"created_at\":", 14) ||
        l2_buf_put_u64(out, created_at) || l2_buf_put(out, ",\"kind\":", 8) || l2_buf_put_u64(out, kind) ||
        l2_buf_put(out, ",\"tags\":[", 9))
        return l2_oom(err);
    for (uint64_t t = 0; t < ntags; t++) {
        if (get_varint(&p, end, &k) || k > (uint64_t)(end - p)) goto corrupt;
        if ((t && l2_buf_putc(out, ',')) || l2_buf_putc(out, '[')) return l2_oom(err);
        for (uint64_t i = 0; i < k; i++) {
            if (get_varint(&p, end, &hdr)) goto corrupt;
            size_t len = hdr >> 1;
            if (i && l2_buf_putc(out, ',')) return l2_oom(err);
            if (hdr & 1) {
                /* a packed hex string: its 64 digits need no escape */
                if (len != 64 || end - p < 32) goto corrupt;
                if (put_hex_string(out, p, 32)) return l2_oom(err);
                p += 32;
            } else {
                if (len > (size_t)(end - p)) goto corrupt;
                if (l2_json_put_string(out, (const char *)p, len)) return l2_oom(err);
                p += len;
            }
        }
        if (l2_buf_putc(out, ']')) return l2_oom(err);
    }
    if (get_varint(&p, end, &v) || v != (uint64_t)(end - p)) goto corrupt;
    if (l2_buf_put(out, "],\"content\":", 12) || l2_json_put_string(out, (const char *)p, (size_t)v) ||
        l2_buf_put(out, ",\"sig\":", 7) || put_hex_string(out, sig, 64) || l2_buf_putc(out, '}'))
        return l2_oom(err);
    return 0;
corrupt:
    if (err) snprintf(err, L2_ERRLEN, "error: corrupt stored event");
    return -1;
}

static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

int l2_event_names_pubkey(const l2_event *ev, const uint8_t (*keys)[32], size_t n)
{
    if (!n) return 0;
    if (bsearch(ev->pubkey, keys, n, 32, cmp_key)) return 1;
    for (uint32_t t = 0; t < ev->ntags; t++) {
        const l2_str *name = l2_tag_elem(ev, t, 0);
        uint8_t key[32];
        if (l2_tag_len(ev, t) < 2 || name->n != 1 || name->p[0] != 'p') continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        if (v->n == 64 && l2_hex_decode(key, v->p, 32) == 0 && bsearch(key, keys, n, 32, cmp_key)) return 1;
    }
    return 0;
}
