#include "json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void l2_json_init(l2_json *j, const char *s, size_t n, int max_depth, char *err, size_t errlen)
{
    j->start = j->p = s;
    j->end = s + n;
    j->depth = 0;
    j->max_depth = max_depth;
    j->err = err;
    j->errlen = errlen;
}

int l2_json_fail(l2_json *j, const char *fmt, ...)
{
    if (!j->err || !j->errlen) return -1;
    int n = snprintf(j->err, j->errlen, "invalid: ");
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < j->errlen) vsnprintf(j->err + n, j->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return -1;
}

static int syntax_error(l2_json *j, const char *what)
{
    if (j->p >= j->end) return l2_json_fail(j, "malformed JSON: %s at end of input", what);
    return l2_json_fail(j, "malformed JSON: %s at byte %zu", what, (size_t)(j->p - j->start));
}

int l2_json_peek(l2_json *j)
{
    const char *p = j->p, *end = j->end;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    j->p = p;
    return p < end ? (unsigned char)*p : -1;
}

int l2_json_open(l2_json *j, char open)
{
    if (l2_json_peek(j) != (unsigned char)open)
        return syntax_error(j, open == '{' ? "expected an object" : "expected an array");
    if (++j->depth > j->max_depth) return l2_json_fail(j, "JSON nested deeper than %d levels", j->max_depth);
    j->p++;
    return 0;
}

int l2_json_more(l2_json *j, char close, size_t *index)
{
    int c = l2_json_peek(j);
    if (c == (unsigned char)close) {
        j->p++;
        j->depth--;
        return 0;
    }
    if (*index > 0) {
        if (c != ',') return syntax_error(j, "expected ',' or a closing bracket");
        j->p++;
        c = l2_json_peek(j);
        if (c == (unsigned char)close) return syntax_error(j, "trailing comma");
    }
    if (c < 0) return syntax_error(j, "unterminated container");
    (*index)++;
    return 1;
}

size_t l2_utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    if (c < 0x80) return 1;
    size_t left = (size_t)(end - p);
    if (c >= 0xC2 && c <= 0xDF) return (left >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (left < 3 || (p[2] & 0xC0) != 0x80) return 0;
        unsigned lo = (c == 0xE0) ? 0xA0 : 0x80, hi = (c == 0xED) ? 0x9F : 0xBF;
        return (p[1] >= lo && p[1] <= hi) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (left < 4 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        unsigned lo = (c == 0xF0) ? 0x90 : 0x80, hi = (c == 0xF4) ? 0x8F : 0xBF;
        return (p[1] >= lo && p[1] <= hi) ? 4 : 0;
    }
    return 0;
}

int l2_utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        size_t k = l2_utf8_seq(p, end);
        if (!k) return 0;
        p += k;
    }
    return 1;
}

static int hex4(const unsigned char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else return -1;
        v = v << 4 | d;
    }
    *out = v;
    return 0;
}

/* Appends bytes to out while they fit, always counting them. */
#define EMIT(src, k)                                              \
    do {                                                          \
        if (out && n + (k) <= cap) memcpy(out + n, (src), (k)); \
        n += (k);                                                 \
    } while (0)

/* j fails at p with a syntax error. */
static int fail_at(l2_json *j, const unsigned char *p, const char *what)
{
    j->p = (const char *)p;
    return syntax_error(j, what);
}

/* The character a one-letter escape (not \u) stands for, or -1. */
static int simple_escape(unsigned char c)
{
    switch (c) {
    case '"': return '"';
    case '\\': return '\\';
    case '/': return '/';
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    default: return -1;
    }
}

/* The \uXXXX escape at *pp (a surrogate pair joined) into *cp, *pp past it; 0, or j fails. */
static int unicode_escape(l2_json *j, const unsigned char **pp, const unsigned char *end, unsigned *cp)
{
    const unsigned char *p = *pp;
    unsigned lo;
    if (end - p < 6 || hex4(p + 2, cp)) return fail_at(j, p, "bad \\u escape");
    p += 6;
    if (*cp >= 0xDC00 && *cp <= 0xDFFF) {
        j->p = (const char *)p;
        return l2_json_fail(j, "invalid UTF-8: lone low surrogate \\u%04x", *cp);
    }
    if (*cp >= 0xD800 && *cp <= 0xDBFF) {
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
            j->p = (const char *)p;
            return l2_json_fail(j, "invalid UTF-8: unpaired high surrogate \\u%04x", *cp);
        }
        p += 6;
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    *pp = p;
    return 0;
}

/* cp as UTF-8 into u; its length. */
static size_t utf8_encode(unsigned cp, unsigned char *u)
{
    if (cp < 0x80) {
        u[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (unsigned char)(0xC0 | cp >> 6);
        u[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (unsigned char)(0xE0 | cp >> 12);
        u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (unsigned char)(0xF0 | cp >> 18);
    u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    u[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int l2_json_string(l2_json *j, char *out, size_t cap, size_t *len)
{
    if (l2_json_peek(j) != '"') return syntax_error(j, "expected a string");
    const unsigned char *p = (const unsigned char *)j->p + 1, *end = (const unsigned char *)j->end;
    size_t n = 0;
    for (;;) {
        const unsigned char *run = p;
        /* plain ASCII runs go 8 bytes at a time; anything else is handled below */
        while (end - p >= 8) {
            uint64_t x;
            memcpy(&x, p, 8);
            if (l2_needs_escape8(x) | (x & L2_HIGHS)) break;
            p += 8;
        }
        while (p < end && *p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\') p++;
        EMIT(run, (size_t)(p - run));
        if (p >= end) return fail_at(j, p, "unterminated string");
        unsigned c = *p;
        if (c == '"') {
            p++;
            break;
        }
        if (c < 0x20) return fail_at(j, p, "raw control character in string");
        if (c >= 0x80) {
            size_t k = l2_utf8_seq(p, end);
            if (!k) {
                j->p = (const char *)p;
                return l2_json_fail(j, "invalid UTF-8 in string at byte %zu", (size_t)(p - (const unsigned char *)j->start));
            }
            EMIT(p, k);
            p += k;
            continue;
        }
        /* backslash escape */
        if (end - p < 2) return fail_at(j, p, "unterminated escape");
        if (p[1] != 'u') {
            int e = simple_escape(p[1]);
            if (e < 0) return fail_at(j, p, "bad escape in string");
            char ch = (char)e;
            EMIT(&ch, 1);
            p += 2;
            continue;
        }
        unsigned cp;
        if (unicode_escape(j, &p, end, &cp)) return -1;
        unsigned char u[4];
        size_t k = utf8_encode(cp, u);
        EMIT(u, k);
    }
    j->p = (const char *)p;
    *len = n;
    return 0;
}
#undef EMIT

int l2_json_key(l2_json *j, char *key, size_t cap, size_t *len)
{
    if (l2_json_string(j, key, cap, len)) return -1;
    if (l2_json_peek(j) != ':') return syntax_error(j, "expected ':'");
    j->p++;
    return 0;
}

/* Checks JSON number syntax and advances past it; *plain is 1 for a bare integer literal. */
static int scan_number(l2_json *j, const char *what, int *plain)
{
    l2_json_peek(j);
    const char *p = j->p, *end = j->end;
    *plain = 1;
    if (p < end && *p == '-') p++;
    if (p >= end || *p < '0' || *p > '9') {
        if (p < end && (*p == '"' || *p == '[' || *p == '{' || *p == 't' || *p == 'f' || *p == 'n'))
            return l2_json_fail(j, "%s must be a number", what);
        return syntax_error(j, "expected a number");
    }
    if (*p == '0' && p + 1 < end && p[1] >= '0' && p[1] <= '9') return syntax_error(j, "leading zero in number");
    while (p < end && *p >= '0' && *p <= '9') p++;
    if (p < end && *p == '.') {
        *plain = 0;
        p++;
        if (p >= end || *p < '0' || *p > '9') return syntax_error(j, "bad number");
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        *plain = 0;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return syntax_error(j, "bad number");
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return 0;
}

int l2_json_integer(l2_json *j, int64_t min, int64_t max, const char *what, int64_t *out)
{
    int plain;
    l2_json_peek(j);
    const char *s = j->p;
    if (scan_number(j, what, &plain)) return -1;
    const char *p = j->p;
    int neg = (*s == '-');
    int64_t v = 0;
    if (plain) {
        /* exact integer arithmetic; past 18 digits is out of every range used here */
        if (p - s - neg > 18) return l2_json_fail(j, "%s out of range", what);
        for (const char *d = s + neg; d < p; d++) v = v * 10 + (*d - '0');
        if (neg) v = -v;
    } else {
        char tmp[64];
        size_t n = (size_t)(p - s);
        if (n >= sizeof tmp) return l2_json_fail(j, "%s must be an integer", what);
        memcpy(tmp, s, n);
        tmp[n] = 0;
        double d = strtod(tmp, NULL);
        if (d != floor(d)) return l2_json_fail(j, "%s must be an integer", what);
        if (!(d >= -9.0e18 && d <= 9.0e18)) return l2_json_fail(j, "%s out of range", what);
        v = (int64_t)d;
    }
    if (v < min || v > max) return l2_json_fail(j, "%s out of range", what);
    *out = v;
    return 0;
}

static int skip_literal(l2_json *j, const char *lit, size_t n)
{
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0) return syntax_error(j, "unexpected character");
    j->p += n;
    return 0;
}

int l2_json_skip(l2_json *j)
{
    int c = l2_json_peek(j);
    size_t i = 0, len;
    switch (c) {
    case '{':
        if (l2_json_open(j, '{')) return -1;
        for (int r; (r = l2_json_more(j, '}', &i));) {
            if (r < 0 || l2_json_key(j, NULL, 0, &len) || l2_json_skip(j)) return -1;
        }
        return 0;
    case '[':
        if (l2_json_open(j, '[')) return -1;
        for (int r; (r = l2_json_more(j, ']', &i));) {
            if (r < 0 || l2_json_skip(j)) return -1;
        }
        return 0;
    case '"': return l2_json_string(j, NULL, 0, &len);
    case 't': return skip_literal(j, "true", 4);
    case 'f': return skip_literal(j, "false", 5);
    case 'n': return skip_literal(j, "null", 4);
    default: {
        int plain;
        if (c == '-' || (c >= '0' && c <= '9')) return scan_number(j, "value", &plain);
        return syntax_error(j, "expected a value");
    }
    }
}

int l2_json_finish(l2_json *j)
{
    if (l2_json_peek(j) != -1) return syntax_error(j, "trailing characters after the value");
    return 0;
}
