#include "filter.h"

#include <stdio.h>
#include <stdlib.h>

#include "json.h"

const l2_filter_limits l2_default_filter_limits = {
    .max_ids = 1000,
    .max_authors = 1000,
    .max_kinds = 1000,
    .max_tag_values = 1000,
    .max_tag_value_bytes = 8192,
    .max_search_bytes = 1024,
    .max_filter_bytes = 256 * 1024,
};

const l2_filter_limits l2_unlimited_filter_limits = {UINT32_MAX, UINT32_MAX, UINT32_MAX, UINT32_MAX,
                                                     SIZE_MAX,   SIZE_MAX,   SIZE_MAX};



void l2_filter_init(l2_filter *f)
{
    memset(f, 0, sizeof *f);
    l2_buf_init(&f->arena);
}

void l2_filter_free(l2_filter *f)
{
    free(f->ids);
    free(f->authors);
    free(f->kinds);
    free(f->values);
    l2_buf_free(&f->arena);
    l2_filter_init(f);
}

void l2_filter_reset(l2_filter *f)
{
    f->have = 0;
    f->nids = f->nauthors = f->nkinds = f->ntags = f->nvalues = 0;
    f->since = f->until = f->limit = 0;
    f->search.p = "";
    f->search.n = 0;
    f->arena.len = 0;
}

static const char *field_label(unsigned field)
{
    switch (field) {
    case L2_F_IDS: return "ids";
    case L2_F_AUTHORS: return "authors";
    case L2_F_KINDS: return "kinds";
    case L2_F_SINCE: return "since";
    case L2_F_UNTIL: return "until";
    case L2_F_LIMIT: return "limit";
    default: return "search";
    }
}

int l2_filter_key(const char *key, size_t n, unsigned *field, char *letter, char *err)
{
    static const struct { const char *name; unsigned field; } keys[] = {
        {"ids", L2_F_IDS}, {"authors", L2_F_AUTHORS}, {"kinds", L2_F_KINDS}, {"since", L2_F_SINCE},
        {"until", L2_F_UNTIL}, {"limit", L2_F_LIMIT}, {"search", L2_F_SEARCH},
    };
    *letter = 0;
    if (n >= 1 && key[0] == '#') {
        unsigned char c = n == 2 ? (unsigned char)key[1] : 0;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')))
            return l2_invalid(err, "tag filter '%.*s' must be '#' and a single letter", (int)(n > 40 ? 40 : n), key);
        *field = L2_F_TAG;
        *letter = (char)c;
        return 0;
    }
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        if (strlen(keys[i].name) == n && memcmp(keys[i].name, key, n) == 0) {
            *field = keys[i].field;
            return 0;
        }
    }
    return l2_invalid(err, "unknown filter field '%.*s'", (int)(n > 40 ? 40 : n), key);
}

int l2_filter_begin(l2_filter *f, unsigned field, char letter, char *err)
{
    if (field == L2_F_TAG) {
        for (uint32_t i = 0; i < f->ntags; i++)
            if (f->tags[i].letter == letter) return l2_invalid(err, "duplicate filter field '#%c'", letter);
        l2_tag_cond *c = &f->tags[f->ntags++];
        c->letter = letter;
        c->first = f->nvalues;
        c->n = 0;
        f->have |= L2_F_TAG;
        return 0;
    }
    if (f->have & field) return l2_invalid(err, "duplicate filter field '%s'", field_label(field));
    f->have |= field;
    return 0;
}

static int grow(void **p, uint32_t *cap, uint32_t need, size_t size, char *err)
{
    if (need <= *cap) return 0;
    uint32_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, (size_t)c * size);
    if (!q) return l2_oom(err);
    *p = q;
    *cap = c;
    return 0;
}

/* Adds one id or pubkey: the 32 bytes, or (bytes NULL) the 64 hex characters at s. */
static int add_key(l2_filter *f, unsigned field, const uint8_t *bytes, const char *s, size_t n, size_t idx,
                   const l2_filter_limits *lim, char *err)
{
    int ids = field == L2_F_IDS;
    uint32_t *count = ids ? &f->nids : &f->nauthors;
    uint32_t max = ids ? lim->max_ids : lim->max_authors;
    if (*count >= max) return l2_invalid(err, "%s has more than %u entries", field_label(field), max);
    uint8_t (**arr)[32] = ids ? &f->ids : &f->authors;
    if (grow((void **)arr, ids ? &f->ids_cap : &f->authors_cap, *count + 1, 32, err)) return -1;
    if (bytes) memcpy((*arr)[*count], bytes, 32);
    else if (n != 64 || l2_hex_decode((*arr)[*count], s, 32))
        return l2_invalid(err, "%s[%zu] must be 64 lowercase hex characters (no prefixes)", field_label(field), idx);
    (*count)++;
    return 0;
}

int l2_filter_add_hex(l2_filter *f, unsigned field, const char *s, size_t n, size_t idx,
                      const l2_filter_limits *lim, char *err)
{
    return add_key(f, field, NULL, s, n, idx, lim, err);
}

int l2_filter_add_key(l2_filter *f, unsigned field, const uint8_t key[32], size_t idx, const l2_filter_limits *lim,
                      char *err)
{
    return add_key(f, field, key, NULL, 0, idx, lim, err);
}

int l2_filter_add_kind(l2_filter *f, int64_t kind, size_t idx, const l2_filter_limits *lim, char *err)
{
    if (f->nkinds >= lim->max_kinds) return l2_invalid(err, "kinds has more than %u entries", lim->max_kinds);
    if (kind < 0 || kind > L2_MAX_KIND) return l2_invalid(err, "kinds[%zu] must be an integer from 0 to 65535", idx);
    if (grow((void **)&f->kinds, &f->kinds_cap, f->nkinds + 1, sizeof *f->kinds, err)) return -1;
    f->kinds[f->nkinds++] = (uint16_t)kind;
    return 0;
}

int l2_filter_add_tag_value(l2_filter *f, const char *s, size_t n, int check_utf8, size_t idx,
                            const l2_filter_limits *lim, char *err)
{
    l2_tag_cond *c = &f->tags[f->ntags - 1];
    if (c->n >= lim->max_tag_values) return l2_invalid(err, "#%c has more than %u values", c->letter, lim->max_tag_values);
    if (n > lim->max_tag_value_bytes)
        return l2_invalid(err, "#%c[%zu] is %zu bytes, over the limit of %zu", c->letter, idx, n, lim->max_tag_value_bytes);
    if (check_utf8 && !l2_utf8_valid(s, n)) return l2_invalid(err, "#%c[%zu] is not valid UTF-8", c->letter, idx);
    if (grow((void **)&f->values, &f->values_cap, f->nvalues + 1, sizeof *f->values, err)) return -1;
    f->values[f->nvalues].p = s;
    f->values[f->nvalues].n = n;
    f->nvalues++;
    c->n++;
    return 0;
}

int l2_filter_set_number(l2_filter *f, unsigned field, int64_t v, char *err)
{
    if (v < 0 || v > L2_MAX_CREATED_AT)
        return l2_invalid(err, "%s must be a non-negative integer below 2^53", field_label(field));
    if (field == L2_F_SINCE) f->since = v;
    else if (field == L2_F_UNTIL) f->until = v;
    else f->limit = v;
    return 0;
}

int l2_filter_set_search(l2_filter *f, const char *s, size_t n, int check_utf8,
                         const l2_filter_limits *lim, char *err)
{
    if (n > lim->max_search_bytes) return l2_invalid(err, "search is %zu bytes, over the limit of %zu", n, lim->max_search_bytes);
    if (check_utf8 && !l2_utf8_valid(s, n)) return l2_invalid(err, "search is not valid UTF-8");
    f->search.p = s;
    f->search.n = n;
    return 0;
}

static int filter_cmp32(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

static int cmp_kind(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

static int cmp_str(const void *a, const void *b)
{
    const l2_str *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int r = n ? memcmp(x->p, y->p, n) : 0;
    return r ? r : (x->n > y->n) - (x->n < y->n);
}

/* sorts and removes duplicates in place; returns the new count */
static uint32_t sort_unique(void *base, uint32_t n, size_t size, int (*cmp)(const void *, const void *))
{
    if (n < 2) return n;
    qsort(base, n, size, cmp);
    char *a = base;
    uint32_t out = 1;
    for (uint32_t i = 1; i < n; i++) {
        if (cmp(a + (size_t)(out - 1) * size, a + (size_t)i * size) != 0) {
            if (out != i) memcpy(a + (size_t)out * size, a + (size_t)i * size, size);
            out++;
        }
    }
    return out;
}

int l2_filter_finish(l2_filter *f, char *err)
{
    (void)err;
    f->nids = sort_unique(f->ids, f->nids, 32, filter_cmp32);
    f->nauthors = sort_unique(f->authors, f->nauthors, 32, filter_cmp32);
    f->nkinds = sort_unique(f->kinds, f->nkinds, sizeof *f->kinds, cmp_kind);
    for (uint32_t i = 0; i < f->ntags; i++) {
        l2_tag_cond *c = &f->tags[i];
        c->n = sort_unique(f->values + c->first, c->n, sizeof *f->values, cmp_str);
    }
    return 0;
}

/* ---- JSON ---- */

static int json_list(l2_json *j, l2_filter *f, unsigned field, const l2_filter_limits *lim)
{
    size_t i = 0;
    const char *name = field == L2_F_TAG ? "tag filter" : field_label(field);
    if (l2_json_peek(j) != '[') return l2_json_fail(j, "%s must be an array", name);
    if (l2_json_open(j, '[')) return -1;
    for (int r; (r = l2_json_more(j, ']', &i));) {
        if (r < 0) return -1;
        size_t idx = i - 1, n;
        if (field == L2_F_KINDS) {
            int64_t v;
            char what[32];
            snprintf(what, sizeof what, "kinds[%zu]", idx);
            if (l2_json_integer(j, INT64_MIN, INT64_MAX, what, &v) || l2_filter_add_kind(f, v, idx, lim, j->err))
                return -1;
            continue;
        }
        if (l2_json_peek(j) != '"') return l2_json_fail(j, "%s[%zu] must be a string", name, idx);
        if (field == L2_F_TAG) {
            char *dst = f->arena.data + f->arena.len;
            if (l2_json_string(j, dst, f->arena.cap - f->arena.len, &n)) return -1;
            f->arena.len += n;
            if (l2_filter_add_tag_value(f, dst, n, 0, idx, lim, j->err)) return -1;
        } else {
            char tmp[66];
            if (l2_json_string(j, tmp, sizeof tmp, &n)) return -1;
            if (l2_filter_add_hex(f, field, tmp, n > sizeof tmp ? sizeof tmp : n, idx, lim, j->err)) return -1;
        }
    }
    return 0;
}

int l2_filter_parse_json(l2_filter *f, const char *json, size_t n, const l2_filter_limits *lim, char *err)
{
    l2_json j;
    size_t i = 0;
    l2_filter_reset(f);
    if (n > lim->max_filter_bytes) return l2_invalid(err, "filter is %zu bytes, over the limit of %zu", n, lim->max_filter_bytes);
    if (l2_buf_reserve(&f->arena, n + 1)) return l2_oom(err);
    l2_json_init(&j, json, n, 8, err, L2_ERRLEN);
    if (l2_json_peek(&j) != '{') return l2_json_fail(&j, "a filter must be a JSON object");
    if (l2_json_open(&j, '{')) return -1;
    for (int r; (r = l2_json_more(&j, '}', &i));) {
        char key[48];
        size_t klen;
        unsigned field;
        char letter;
        int64_t v;
        if (r < 0 || l2_json_key(&j, key, sizeof key, &klen)) return -1;
        if (l2_filter_key(key, klen > sizeof key ? sizeof key : klen, &field, &letter, err)) return -1;
        if (l2_filter_begin(f, field, letter, err)) return -1;
        switch (field) {
        case L2_F_IDS:
        case L2_F_AUTHORS:
        case L2_F_KINDS:
        case L2_F_TAG:
            if (json_list(&j, f, field, lim)) return -1;
            break;
        case L2_F_SEARCH: {
            size_t sn;
            char *dst = f->arena.data + f->arena.len;
            if (l2_json_peek(&j) != '"') return l2_json_fail(&j, "search must be a string");
            if (l2_json_string(&j, dst, f->arena.cap - f->arena.len, &sn)) return -1;
            f->arena.len += sn;
            if (l2_filter_set_search(f, dst, sn, 0, lim, err)) return -1;
            break;
        }
        default:
            if (l2_json_integer(&j, INT64_MIN, INT64_MAX, field_label(field), &v) ||
                l2_filter_set_number(f, field, v, err))
                return -1;
        }
    }
    if (l2_json_finish(&j)) return -1;
    return l2_filter_finish(f, err);
}

/* ---- canonical JSON ---- */

static int put_i64(l2_buf *out, int64_t v)
{
    if (v < 0 && l2_buf_putc(out, '-')) return -1;
    return l2_buf_put_u64(out, v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v);
}

static int put_hex_list(l2_buf *out, const char *name, const uint8_t (*v)[32], uint32_t n)
{
    if (l2_buf_put(out, name, strlen(name)) || l2_buf_putc(out, '[')) return -1;
    for (uint32_t i = 0; i < n; i++)
        if ((i && l2_buf_putc(out, ',')) || l2_buf_putc(out, '"') || l2_buf_put_hex(out, v[i], 32) ||
            l2_buf_putc(out, '"'))
            return -1;
    return l2_buf_put(out, "],", 2);
}

int l2_filter_encode_json(const l2_filter *f, int64_t limit, l2_buf *out)
{
    if (l2_buf_putc(out, '{')) return -1;
    if ((f->have & L2_F_IDS) && put_hex_list(out, "\"ids\":", (const uint8_t(*)[32])f->ids, f->nids)) return -1;
    if ((f->have & L2_F_AUTHORS) && put_hex_list(out, "\"authors\":", (const uint8_t(*)[32])f->authors, f->nauthors))
        return -1;
    if (f->have & L2_F_KINDS) {
        if (l2_buf_put(out, "\"kinds\":[", 9)) return -1;
        for (uint32_t i = 0; i < f->nkinds; i++)
            if ((i && l2_buf_putc(out, ',')) || l2_buf_put_u64(out, f->kinds[i])) return -1;
        if (l2_buf_put(out, "],", 2)) return -1;
    }
    /* tag conditions by letter, whatever order the filter named them in */
    for (int c = 0; c < 256; c++) {
        for (uint32_t t = 0; t < f->ntags; t++) {
            const l2_tag_cond *tc = &f->tags[t];
            if ((unsigned char)tc->letter != c) continue;
            char name[5] = {'"', '#', tc->letter, '"', ':'};
            if (l2_buf_put(out, name, 5) || l2_buf_putc(out, '[')) return -1;
            for (uint32_t i = 0; i < tc->n; i++) {
                const l2_str *v = &f->values[tc->first + i];
                if ((i && l2_buf_putc(out, ',')) || l2_json_put_string(out, v->p, v->n)) return -1;
            }
            if (l2_buf_put(out, "],", 2)) return -1;
        }
    }
    if ((f->have & L2_F_SINCE) && (l2_buf_put(out, "\"since\":", 8) || put_i64(out, f->since) || l2_buf_putc(out, ',')))
        return -1;
    if ((f->have & L2_F_UNTIL) && (l2_buf_put(out, "\"until\":", 8) || put_i64(out, f->until) || l2_buf_putc(out, ',')))
        return -1;
    if ((f->have & L2_F_SEARCH) &&
        (l2_buf_put(out, "\"search\":", 9) || l2_json_put_string(out, f->search.p, f->search.n) ||
         l2_buf_putc(out, ',')))
        return -1;
    return l2_buf_put(out, "\"limit\":", 8) || put_i64(out, limit) || l2_buf_putc(out, '}');
}

/* ---- matching ---- */

int l2_filter_has_id(const l2_filter *f, const uint8_t id[32])
{
    return bsearch(id, f->ids, f->nids, 32, filter_cmp32) != NULL;
}

int l2_filter_has_author(const l2_filter *f, const uint8_t pk[32])
{
    return bsearch(pk, f->authors, f->nauthors, 32, filter_cmp32) != NULL;
}

int l2_filter_has_kind(const l2_filter *f, uint32_t kind)
{
    uint16_t k = (uint16_t)kind;
    return kind <= L2_MAX_KIND && bsearch(&k, f->kinds, f->nkinds, sizeof k, cmp_kind) != NULL;
}

int l2_filter_has_tag_value(const l2_filter *f, const l2_tag_cond *c, const char *s, size_t n)
{
    l2_str key = {s, n};
    return bsearch(&key, f->values + c->first, c->n, sizeof key, cmp_str) != NULL;
}

static int tag_matches(const l2_filter *f, const l2_tag_cond *c, const l2_event *ev)
{
    for (uint32_t t = 0; t < ev->ntags; t++) {
        if (l2_tag_len(ev, t) < 2) continue;
        const l2_str *name = l2_tag_elem(ev, t, 0);
        if (name->n != 1 || name->p[0] != c->letter) continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        if (l2_filter_has_tag_value(f, c, v->p, v->n)) return 1;
    }
    return 0;
}

int l2_filter_match(const l2_filter *f, const l2_event *ev)
{
    if ((f->have & L2_F_IDS) && !l2_filter_has_id(f, ev->id)) return 0;
    if ((f->have & L2_F_AUTHORS) && !l2_filter_has_author(f, ev->pubkey)) return 0;
    if ((f->have & L2_F_KINDS) && !l2_filter_has_kind(f, ev->kind)) return 0;
    if ((f->have & L2_F_SINCE) && ev->created_at < f->since) return 0;
    if ((f->have & L2_F_UNTIL) && ev->created_at > f->until) return 0;
    for (uint32_t i = 0; i < f->ntags; i++)
        if (!tag_matches(f, &f->tags[i], ev)) return 0;
    return 1;
}

int l2_filter_is_empty(const l2_filter *f)
{
    if ((f->have & L2_F_IDS) && !f->nids) return 1;
    if ((f->have & L2_F_AUTHORS) && !f->nauthors) return 1;
    if ((f->have & L2_F_KINDS) && !f->nkinds) return 1;
    if ((f->have & L2_F_LIMIT) && f->limit == 0) return 1;
    if ((f->have & (L2_F_SINCE | L2_F_UNTIL)) == (L2_F_SINCE | L2_F_UNTIL) && f->since > f->until) return 1;
    for (uint32_t i = 0; i < f->ntags; i++)
        if (!f->tags[i].n) return 1;
    return 0;
}
