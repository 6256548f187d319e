/* The nostr rules both stores apply; see rules.h. */
#include <string.h>

#include "buf.h"
#include "rules.h"

int l2_tag_is(const l2_event *ev, uint32_t t, const char *name, size_t n)
{
    const l2_str *e;
    if (l2_tag_len(ev, t) < 2) return 0;
    e = l2_tag_elem(ev, t, 0);
    return e->n == n && memcmp(e->p, name, n) == 0;
}

l2_str l2_d_value(const l2_event *ev)
{
    l2_str d = {"", 0};
    if (!l2_kind_addressable(ev->kind)) return d;
    for (uint32_t t = 0; t < ev->ntags; t++)
        if (l2_tag_is(ev, t, "d", 1)) return *l2_tag_elem(ev, t, 1);
    return d;
}

int l2_expiration(const l2_event *ev, int64_t *out)
{
    for (uint32_t t = 0; t < ev->ntags; t++) {
        if (!l2_tag_is(ev, t, "expiration", 10)) continue;
        const l2_str *v = l2_tag_elem(ev, t, 1);
        if (v->n == 0 || v->n > 15) return 0;
        int64_t x = 0;
        for (size_t i = 0; i < v->n; i++) {
            if (v->p[i] < '0' || v->p[i] > '9') return 0;
            x = x * 10 + (v->p[i] - '0');
        }
        *out = x;
        return 1;
    }
    return 0;
}

int l2_deletion_id(const l2_event *del, uint32_t t, uint8_t id[32])
{
    if (!l2_tag_is(del, t, "e", 1)) return 0;
    const l2_str *v = l2_tag_elem(del, t, 1);
    return v->n == 64 && l2_hex_decode(id, v->p, 32) == 0;
}

/* Tag t of a deletion request as an address ("kind:pubkey:d" of a replaceable or addressable
 * kind): 1 with its parts, 0 when it is not one. */
static int parse_address(const l2_event *del, uint32_t t, uint32_t *kind, uint8_t pk[32], l2_str *d)
{
    if (!l2_tag_is(del, t, "a", 1)) return 0;
    const l2_str *v = l2_tag_elem(del, t, 1);
    const char *s = v->p, *end = v->p + v->n, *c1 = memchr(s, ':', v->n), *c2;
    if (!c1 || !(c2 = memchr(c1 + 1, ':', (size_t)(end - c1 - 1)))) return 0;
    size_t kn = (size_t)(c1 - s);
    uint32_t k = 0;
    if (kn == 0 || kn > 5) return 0;
    for (size_t i = 0; i < kn; i++) {
        if (s[i] < '0' || s[i] > '9') return 0;
        k = k * 10 + (uint32_t)(s[i] - '0');
    }
    if (!(l2_kind_replaceable(k) || l2_kind_addressable(k))) return 0;
    if (c2 - c1 - 1 != 64 || l2_hex_decode(pk, c1 + 1, 32)) return 0;
    *kind = k;
    d->p = c2 + 1;
    d->n = l2_kind_addressable(k) ? (size_t)(end - d->p) : 0;
    return 1;
}

int l2_deletion_address(const l2_event *del, uint32_t t, uint32_t *kind, l2_str *d)
{
    uint8_t pk[32];
    return parse_address(del, t, kind, pk, d) && memcmp(pk, del->pubkey, 32) == 0;
}

const char *l2_deletion_refusal(const l2_event *del)
{
    for (uint32_t t = 0; del->kind == 5 && t < del->ntags; t++) {
        uint32_t kind;
        uint8_t pk[32];
        l2_str d;
        if (parse_address(del, t, &kind, pk, &d) && memcmp(pk, del->pubkey, 32) != 0)
            return "invalid: a deletion request may only name its author's own addresses (an a tag names another "
                   "pubkey's)";
    }
    return NULL;
}

const char *l2_save_result_message(const l2_save_result *r)
{
    return r->msg && (r->status == L2_SAVE_REFUSED || r->status == L2_SAVE_FAILED) ? r->msg : l2_save_message(r->status);
}

int l2_save_status_of(const char *msg)
{
    for (int status = L2_SAVE_DUPLICATE; status <= L2_SAVE_EXPIRED; status++)
        if (strcmp(msg, l2_save_message(status)) == 0) return status;
    return L2_SAVE_REFUSED;
}

const char *l2_save_message(int status)
{
    switch (status) {
    case L2_SAVE_DUPLICATE: return "duplicate: already have this event";
    case L2_SAVE_OLDER: return "duplicate: a newer version of this replaceable event is stored";
    case L2_SAVE_DELETED: return "blocked: this event was deleted by its author";
    case L2_SAVE_EXPIRED: return "invalid: this event has expired";
    default: return NULL;
    }
}
