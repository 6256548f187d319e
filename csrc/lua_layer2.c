/* The Lua binding of the layer2 core: the only file that sees Lua headers.
 * Refusals are values (nil/false, "invalid: ..."); misuse (a wrong argument type) raises. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "killpoint.h"
#include "lua_layer2.h"
#include "schnorr.h"

#define L2_VERSION "0.1.0"
#define SCRATCH_MT "layer2.scratch"

/* Per Lua state working memory, an upvalue of every function: parses reuse it, so the hot
 * paths do not allocate, and a Lua error thrown halfway leaks nothing. */
typedef struct {
    l2_event ev;
    l2_filter flt;
    l2_buf out, tmp;
    l2_limits lim;
    l2_filter_limits flim;
    char err[L2_ERRLEN];
} scratch;

static scratch *get_scratch(lua_State *L)
{
    return (scratch *)lua_touserdata(L, lua_upvalueindex(1));
}

static int scratch_gc(lua_State *L)
{
    scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    l2_event_free(&s->ev);
    l2_filter_free(&s->flt);
    l2_buf_free(&s->out);
    l2_buf_free(&s->tmp);
    return 0;
}

int l2lua_refuse(lua_State *L, int first, const char *err)
{
    if (first) lua_pushboolean(L, 0);
    else lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
}

void l2lua_check_table_or_string(lua_State *L, int idx)
{
    int t = lua_type(L, idx);
    if (t != LUA_TTABLE && t != LUA_TSTRING)
        luaL_argerror(L, idx, lua_pushfstring(L, "table or string expected, got %s", luaL_typename(L, idx)));
}

/* An integral number, also when it arrives as a float (lua-cjson decodes numbers as floats).
 * 0 ok, -1 not a number, -2 not integral. */
int l2lua_int64(lua_State *L, int idx, int64_t *out)
{
    if (lua_type(L, idx) != LUA_TNUMBER) return -1;
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        *out = (int64_t)lua_tointeger(L, idx);
        return 0;
    }
#endif
    lua_Number d = lua_tonumber(L, idx);
    if (d != floor(d) || !(d >= -9.0e18 && d <= 9.0e18)) return -2;
    *out = (int64_t)d;
    return 0;
}

static int fmt_err(char *err, const char *fmt, const char *name)
{
    snprintf(err, L2_ERRLEN, fmt, name);
    return -1;
}

/* ---- events from Lua tables ---- */

static int table_hex(lua_State *L, int idx, l2_event *ev, enum l2_hex_field f, const char *name, unsigned required,
                     char *err)
{
    int rc = 0;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, -1, &n);
        rc = l2_event_set_hex(ev, f, p, n, required, err);
    } else if (!lua_isnil(L, -1)) {
        rc = fmt_err(err, "invalid: %s must be a string", name);
    }
    lua_pop(L, 1);
    return rc;
}

static int table_int(lua_State *L, int idx, l2_event *ev, const char *name, char *err)
{
    int64_t v = 0;
    int rc = 0;
    lua_getfield(L, idx, name);
    if (!lua_isnil(L, -1)) {
        int r = l2lua_int64(L, -1, &v);
        if (r == -1) rc = fmt_err(err, "invalid: %s must be a number", name);
        else if (r == -2) rc = fmt_err(err, "invalid: %s must be an integer", name);
        else if (name[0] == 'k') rc = l2_event_set_kind(ev, v, err);
        else rc = l2_event_set_created_at(ev, v, err);
    }
    lua_pop(L, 1);
    return rc;
}

static int table_tags(lua_State *L, int idx, l2_event *ev, const l2_limits *lim, char *err)
{
    lua_getfield(L, idx, "tags");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        return fmt_err(err, "invalid: %s must be an array of arrays of strings", "tags");
    }
    int tags = lua_gettop(L);
    size_t nt = lua_rawlen(L, tags);
    if (l2_event_begin_tags(ev, err)) goto fail;
    for (size_t t = 1; t <= nt; t++) {
        lua_rawgeti(L, tags, (int)t);
        if (lua_type(L, -1) != LUA_TTABLE) {
            snprintf(err, L2_ERRLEN, "invalid: tags[%zu] must be an array of strings", t - 1);
            goto fail;
        }
        int tag = lua_gettop(L);
        size_t ne = lua_rawlen(L, tag);
        if (l2_event_open_tag(ev, lim, err)) goto fail;
        for (size_t e = 1; e <= ne; e++) {
            lua_rawgeti(L, tag, (int)e);
            if (lua_type(L, -1) != LUA_TSTRING) {
                snprintf(err, L2_ERRLEN, "invalid: tags[%zu][%zu] must be a string", t - 1, e - 1);
                goto fail;
            }
            size_t n;
            const char *p = lua_tolstring(L, -1, &n);
            /* the string stays alive: the table that holds it is on the stack */
            lua_pop(L, 1);
            if (l2_event_add_elem(ev, p, n, 1, lim, err)) goto fail;
        }
        lua_pop(L, 1);
    }
    lua_settop(L, tags - 1);
    return 0;
fail:
    lua_settop(L, tags - 1);
    return -1;
}

static int table_event(lua_State *L, int idx, l2_event *ev, unsigned required, const l2_limits *lim, char *err)
{
    l2_event_reset(ev);
    if (table_hex(L, idx, ev, L2_FIELD_ID, "id", required, err) ||
        table_hex(L, idx, ev, L2_FIELD_PUBKEY, "pubkey", required, err) ||
        table_hex(L, idx, ev, L2_FIELD_SIG, "sig", required, err) || table_int(L, idx, ev, "created_at", err) ||
        table_int(L, idx, ev, "kind", err) || table_tags(L, idx, ev, lim, err))
        return -1;
    lua_getfield(L, idx, "content");
    int t = lua_type(L, -1), rc = 0;
    if (t == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, -1, &n);
        rc = l2_event_set_content(ev, p, n, 1, lim, err);
    } else if (t != LUA_TNIL) {
        rc = fmt_err(err, "invalid: %s must be a string", "content");
    }
    lua_pop(L, 1);
    return rc ? rc : l2_event_finish(ev, required, 1, lim, err);
}

int l2lua_event_arg(lua_State *L, int idx, l2_event *ev, unsigned required, const l2_limits *lim, char *err)
{
    l2lua_check_table_or_string(L, idx);
    if (lua_type(L, idx) == LUA_TTABLE) return table_event(L, idx, ev, required, lim, err);
    size_t n;
    const char *p = lua_tolstring(L, idx, &n);
    return l2_event_parse_json(ev, p, n, required, lim, err);
}

/* Reads the event argument at idx (a table or a wire JSON string) into the scratch event. */
static int arg_event(lua_State *L, int idx, scratch *s, unsigned required)
{
    return l2lua_event_arg(L, idx, &s->ev, required, &s->lim, s->err);
}

void l2lua_push_hex(lua_State *L, const uint8_t *b, size_t n)
{
    char hex[128];
    l2_hex_encode(hex, b, n);
    lua_pushlstring(L, hex, 2 * n);
}

void l2lua_push_event(lua_State *L, const l2_event *ev)
{
    lua_createtable(L, 0, 7);
    l2lua_push_hex(L, ev->id, 32);
    lua_setfield(L, -2, "id");
    l2lua_push_hex(L, ev->pubkey, 32);
    lua_setfield(L, -2, "pubkey");
    lua_pushinteger(L, (lua_Integer)ev->created_at);
    lua_setfield(L, -2, "created_at");
    lua_pushinteger(L, (lua_Integer)ev->kind);
    lua_setfield(L, -2, "kind");
    lua_createtable(L, (int)ev->ntags, 0);
    for (uint32_t t = 0; t < ev->ntags; t++) {
        uint32_t k = l2_tag_len(ev, t);
        lua_createtable(L, (int)k, 0);
        for (uint32_t i = 0; i < k; i++) {
            const l2_str *e = l2_tag_elem(ev, t, i);
            lua_pushlstring(L, e->p, e->n);
            lua_rawseti(L, -2, (int)i + 1);
        }
        lua_rawseti(L, -2, (int)t + 1);
    }
    lua_setfield(L, -2, "tags");
    lua_pushlstring(L, ev->content.p, ev->content.n);
    lua_setfield(L, -2, "content");
    l2lua_push_hex(L, ev->sig, 64);
    lua_setfield(L, -2, "sig");
}

static void push_buf(lua_State *L, const l2_buf *b)
{
    lua_pushlstring(L, b->data ? b->data : "", b->len);
}

static int oom_error(lua_State *L)
{
    return luaL_error(L, "layer2: out of memory");
}

/* ---- layer2.event ---- */

static int event_parse(lua_State *L)
{
    scratch *s = get_scratch(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    if (l2_event_parse_json(&s->ev, p, n, L2_HAVE_ALL, &s->lim, s->err)) return l2lua_refuse(L, 0, s->err);
    l2lua_push_event(L, &s->ev);
    return 1;
}

static int event_verify(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL | L2_LENIENT_IDSIG) || l2_event_verify(&s->ev, &s->tmp, s->err))
        return l2lua_refuse(L, 1, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static int event_check_lines(lua_State *L)
{
    return l2lua_check_lines(L, &get_scratch(L)->lim);
}

static int event_serialize(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_UNSIGNED)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_serialize(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

static int event_id(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t id[32];
    if (arg_event(L, 1, s, L2_HAVE_UNSIGNED)) return l2lua_refuse(L, 0, s->err);
    if (l2_event_hash(&s->ev, &s->tmp, id)) return oom_error(L);
    l2lua_push_hex(L, id, 32);
    return 1;
}

static int event_encode(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_encode_json(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

/* Reads an optional or required hex argument of exactly `bytes` bytes. */
static int arg_hex(lua_State *L, int idx, uint8_t *out, size_t bytes, int optional, const char *what)
{
    if (optional && lua_isnoneornil(L, idx)) return 0;
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    if (n != 2 * bytes || l2_hex_decode(out, p, bytes))
        return luaL_argerror(L, idx, lua_pushfstring(L, "%s must be %d lowercase hex characters", what, (int)(2 * bytes)));
    return 1;
}

static int event_sign(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t sec[32], aux[32];
    arg_hex(L, 2, sec, 32, 0, "secret key");
    int have_aux = arg_hex(L, 3, aux, 32, 1, "aux");
    l2lua_check_table_or_string(L, 1);
    /* id, pubkey and sig are outputs: the fields that must be there are those hashed */
    unsigned required = L2_HAVE_CREATED_AT | L2_HAVE_KIND | L2_HAVE_TAGS | L2_HAVE_CONTENT;
    int rc = arg_event(L, 1, s, required) || l2_event_sign(&s->ev, sec, have_aux ? aux : NULL, &s->tmp, s->err);
    memset(sec, 0, sizeof sec);
    if (rc) return l2lua_refuse(L, 0, s->err);
    l2lua_push_event(L, &s->ev);
    return 1;
}

static int event_pack(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_encode_bin(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

static int event_unpack(lua_State *L)
{
    scratch *s = get_scratch(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    if (l2_event_decode_bin(&s->ev, p, n, s->err)) return l2lua_refuse(L, 0, s->err);
    if (s->ev.is_stub) return l2lua_refuse(L, 0, "error: a stub (an evicted event's index entry), not a whole event");
    l2lua_push_event(L, &s->ev);
    return 1;
}

/* ---- limits: get, or set from a table then get ---- */

typedef struct {
    const char *name;
    size_t offset;
    int is_u32;
} limit_field;

static const limit_field event_limit_fields[] = {
    {"max_event_bytes", offsetof(l2_limits, max_event_bytes), 0},
    {"max_tags", offsetof(l2_limits, max_tags), 1},
    {"max_tag_elems", offsetof(l2_limits, max_tag_elems), 1},
    {"max_tag_elem_bytes", offsetof(l2_limits, max_tag_elem_bytes), 0},
    {"max_content_bytes", offsetof(l2_limits, max_content_bytes), 0},
    {NULL, 0, 0},
};

static const limit_field filter_limit_fields[] = {
    {"max_ids", offsetof(l2_filter_limits, max_ids), 1},
    {"max_authors", offsetof(l2_filter_limits, max_authors), 1},
    {"max_kinds", offsetof(l2_filter_limits, max_kinds), 1},
    {"max_tag_values", offsetof(l2_filter_limits, max_tag_values), 1},
    {"max_tag_value_bytes", offsetof(l2_filter_limits, max_tag_value_bytes), 0},
    {"max_search_bytes", offsetof(l2_filter_limits, max_search_bytes), 0},
    {"max_filter_bytes", offsetof(l2_filter_limits, max_filter_bytes), 0},
    {NULL, 0, 0},
};

static int limits_call(lua_State *L, void *base, const limit_field *fields)
{
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            const limit_field *f = fields;
            const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            while (f->name && strcmp(f->name, key) != 0) f++;
            if (!f->name) return luaL_error(L, "layer2: unknown limit '%s'", key);
            int64_t v;
            if (l2lua_int64(L, -1, &v) || v < 1 || (f->is_u32 && v > UINT32_MAX))
                return luaL_error(L, "layer2: limit '%s' must be a positive integer", key);
            if (f->is_u32) *(uint32_t *)((char *)base + f->offset) = (uint32_t)v;
            else *(size_t *)((char *)base + f->offset) = (size_t)v;
            lua_pop(L, 1);
        }
    }
    lua_newtable(L);
    for (const limit_field *f = fields; f->name; f++) {
        const char *p = (const char *)base + f->offset;
        lua_pushinteger(L, f->is_u32 ? (lua_Integer) * (const uint32_t *)p : (lua_Integer) * (const size_t *)p);
        lua_setfield(L, -2, f->name);
    }
    return 1;
}

static int event_limits(lua_State *L)
{
    return limits_call(L, &get_scratch(L)->lim, event_limit_fields);
}

static int filter_limits(lua_State *L)
{
    return limits_call(L, &get_scratch(L)->flim, filter_limit_fields);
}

/* ---- layer2.filter ---- */

static int table_filter_list(lua_State *L, int idx, l2_filter *f, unsigned field, const char *key,
                             const l2_filter_limits *lim, char *err)
{
    if (lua_type(L, idx) != LUA_TTABLE) {
        snprintf(err, L2_ERRLEN, "invalid: %s must be an array", key);
        return -1;
    }
    size_t n = lua_rawlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        int rc;
        lua_rawgeti(L, idx, (int)i);
        if (field == L2_F_KINDS) {
            int64_t v;
            rc = l2lua_int64(L, -1, &v) ? fmt_err(err, "invalid: %s entries must be integers", key)
                                     : l2_filter_add_kind(f, v, i - 1, lim, err);
        } else if (lua_type(L, -1) != LUA_TSTRING) {
            snprintf(err, L2_ERRLEN, "invalid: %s[%zu] must be a string", key, i - 1);
            rc = -1;
        } else {
            size_t len;
            const char *p = lua_tolstring(L, -1, &len);
            rc = field == L2_F_TAG ? l2_filter_add_tag_value(f, p, len, 1, i - 1, lim, err)
                                   : l2_filter_add_hex(f, field, p, len, i - 1, lim, err);
        }
        lua_pop(L, 1);
        if (rc) return -1;
    }
    return 0;
}

static int table_filter(lua_State *L, int idx, l2_filter *f, const l2_filter_limits *flim, char *err)
{
    l2_filter_reset(f);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        unsigned field;
        char letter;
        size_t klen;
        int rc;
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return fmt_err(err, "invalid: %s", "filter keys must be strings");
        }
        const char *key = lua_tolstring(L, -2, &klen);
        if (l2_filter_key(key, klen, &field, &letter, err) || l2_filter_begin(f, field, letter, err)) {
            lua_pop(L, 2);
            return -1;
        }
        int vi = lua_gettop(L);
        if (field & (L2_F_IDS | L2_F_AUTHORS | L2_F_KINDS | L2_F_TAG)) {
            rc = table_filter_list(L, vi, f, field, key, flim, err);
        } else if (field == L2_F_SEARCH) {
            size_t n = 0;
            const char *p = lua_type(L, vi) == LUA_TSTRING ? lua_tolstring(L, vi, &n) : NULL;
            rc = p ? l2_filter_set_search(f, p, n, 1, flim, err)
                   : fmt_err(err, "invalid: %s must be a string", key);
        } else {
            int64_t v;
            int r = l2lua_int64(L, vi, &v);
            rc = r == -1 ? fmt_err(err, "invalid: %s must be a number", key)
               : r == -2 ? fmt_err(err, "invalid: %s must be an integer", key)
                         : l2_filter_set_number(f, field, v, err);
        }
        lua_pop(L, 1);
        if (rc) {
            lua_pop(L, 1);
            return -1;
        }
    }
    return l2_filter_finish(f, err);
}

int l2lua_filter_arg(lua_State *L, int idx, l2_filter *f, const l2_filter_limits *lim, char *err)
{
    l2lua_check_table_or_string(L, idx);
    if (lua_type(L, idx) == LUA_TTABLE) return table_filter(L, idx, f, lim, err);
    size_t n;
    const char *p = lua_tolstring(L, idx, &n);
    return l2_filter_parse_json(f, p, n, lim, err);
}

static int arg_filter(lua_State *L, int idx, scratch *s)
{
    return l2lua_filter_arg(L, idx, &s->flt, &s->flim, s->err);
}

static void push_hex_list(lua_State *L, uint8_t (*items)[32], uint32_t n, const char *name)
{
    lua_createtable(L, (int)n, 0);
    for (uint32_t i = 0; i < n; i++) {
        l2lua_push_hex(L, items[i], 32);
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, name);
}

void l2lua_push_filter(lua_State *L, const l2_filter *f)
{
    lua_newtable(L);
    if (f->have & L2_F_IDS) push_hex_list(L, f->ids, f->nids, "ids");
    if (f->have & L2_F_AUTHORS) push_hex_list(L, f->authors, f->nauthors, "authors");
    if (f->have & L2_F_KINDS) {
        lua_createtable(L, (int)f->nkinds, 0);
        for (uint32_t i = 0; i < f->nkinds; i++) {
            lua_pushinteger(L, f->kinds[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        lua_setfield(L, -2, "kinds");
    }
    for (uint32_t t = 0; t < f->ntags; t++) {
        const l2_tag_cond *c = &f->tags[t];
        char key[3] = {'#', c->letter, 0};
        lua_createtable(L, (int)c->n, 0);
        for (uint32_t i = 0; i < c->n; i++) {
            const l2_str *v = &f->values[c->first + i];
            lua_pushlstring(L, v->p, v->n);
            lua_rawseti(L, -2, (int)i + 1);
        }
        lua_setfield(L, -2, key);
    }
    static const struct { unsigned bit; const char *name; size_t off; } nums[] = {
        {L2_F_SINCE, "since", offsetof(l2_filter, since)},
        {L2_F_UNTIL, "until", offsetof(l2_filter, until)},
        {L2_F_LIMIT, "limit", offsetof(l2_filter, limit)},
    };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) {
        if (!(f->have & nums[i].bit)) continue;
        lua_pushinteger(L, (lua_Integer) * (const int64_t *)((const char *)f + nums[i].off));
        lua_setfield(L, -2, nums[i].name);
    }
    if (f->have & L2_F_SEARCH) {
        lua_pushlstring(L, f->search.p, f->search.n);
        lua_setfield(L, -2, "search");
    }
}

static int filter_parse(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_filter(L, 1, s)) return l2lua_refuse(L, 0, s->err);
    l2lua_push_filter(L, &s->flt);
    return 1;
}

static int filter_match(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_filter(L, 1, s)) return l2lua_refuse(L, 0, s->err);
    if (arg_event(L, 2, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, l2_filter_match(&s->flt, &s->ev));
    return 1;
}

/* ---- layer2.schnorr: raw BIP-340, for tools and the official test vectors ---- */

static const uint8_t *arg_bytes(lua_State *L, int idx, size_t *n, l2_buf *buf)
{
    size_t hn;
    const char *hex = luaL_checklstring(L, idx, &hn);
    buf->len = 0;
    if (hn % 2 || l2_buf_reserve(buf, hn / 2 + 1) || l2_hex_decode((uint8_t *)buf->data, hex, hn / 2))
        luaL_argerror(L, idx, "lowercase hex expected");
    *n = hn / 2;
    return (const uint8_t *)buf->data;
}

static int schnorr_verify(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t pub[32], sig[64];
    size_t n;
    arg_hex(L, 1, pub, 32, 0, "public key");
    arg_hex(L, 3, sig, 64, 0, "signature");
    const uint8_t *msg = arg_bytes(L, 2, &n, &s->tmp);
    lua_pushboolean(L, l2_schnorr_verify(sig, msg, n, pub));
    return 1;
}

static int schnorr_sign(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t sec[32], aux[32], sig[64];
    size_t n;
    arg_hex(L, 1, sec, 32, 0, "secret key");
    int have_aux = arg_hex(L, 3, aux, 32, 1, "aux");
    const uint8_t *msg = arg_bytes(L, 2, &n, &s->tmp);
    int ok = l2_schnorr_sign(sig, msg, n, sec, have_aux ? aux : NULL);
    memset(sec, 0, sizeof sec);
    if (!ok) return l2lua_refuse(L, 0, "invalid: secret key is not valid");
    l2lua_push_hex(L, sig, 64);
    return 1;
}

static int schnorr_pubkey(lua_State *L)
{
    uint8_t sec[32], pub[32];
    arg_hex(L, 1, sec, 32, 0, "secret key");
    int ok = l2_schnorr_pubkey(pub, sec);
    memset(sec, 0, sizeof sec);
    if (!ok) return l2lua_refuse(L, 0, "invalid: secret key is not valid");
    l2lua_push_hex(L, pub, 32);
    return 1;
}

/* layer2.core.monotonic() -> seconds (a float) on a clock that never jumps: for rates and timers */
static int core_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* layer2.core.sleep(seconds): blocks the process (a plain-Lua host's poll loop; never in nginx) */
static int core_sleep(lua_State *L)
{
    lua_Number secs = luaL_checknumber(L, 1);
    if (secs <= 0) return 0;
    struct timespec ts = {(time_t)secs, (long)((secs - (lua_Number)(time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

/* layer2.core.websocket.utf8(s) -> true | nil, position: a websocket text frame's check (RFC
 * 6455 8.1: UTF-8, no surrogates), for the command line tool's websocket client (lua-http does it
 * a code point at a time in Lua; see layer2/cli.lua) */
static int ws_utf8(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n), *p = s, *end = s + n;
    while (p < end) {
        size_t k = *p < 0x80 ? 1 : l2_utf8_seq(p, end);
        if (!k) {
            lua_pushnil(L);
            lua_pushinteger(L, (lua_Integer)(p - s) + 1);
            return 2;
        }
        p += k;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* layer2.core.websocket.mask(data, key) -> data XORed with key, a list of 4 bytes (RFC 6455 5.3),
 * for the same client */
static int ws_mask(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TTABLE);
    uint8_t key[4];
    for (int i = 0; i < 4; i++) {
        lua_rawgeti(L, 2, i + 1);
        lua_Integer b = lua_tointeger(L, -1);
        if (!lua_isnumber(L, -1) || b < 0 || b > 255) return luaL_argerror(L, 2, "a list of 4 bytes expected");
        key[i] = (uint8_t)b;
        lua_pop(L, 1);
    }
    char *out = lua_newuserdatauv(L, n ? n : 1, 0); /* scratch the collector takes back */
    for (size_t i = 0; i < n; i++) out[i] = (char)((uint8_t)s[i] ^ key[i & 3]);
    lua_pushlstring(L, out, n);
    return 1;
}

static const luaL_Reg websocket_funcs[] = {{"utf8", ws_utf8}, {"mask", ws_mask}, {NULL, NULL}};

static const luaL_Reg event_funcs[] = {
    {"parse", event_parse}, {"verify", event_verify}, {"serialize", event_serialize},
    {"id", event_id}, {"encode", event_encode}, {"sign", event_sign},
    {"pack", event_pack}, {"unpack", event_unpack}, {"limits", event_limits},
    {"check_lines", event_check_lines}, {NULL, NULL},
};

static const luaL_Reg filter_funcs[] = {
    {"parse", filter_parse}, {"match", filter_match}, {"limits", filter_limits}, {NULL, NULL},
};

static const luaL_Reg schnorr_funcs[] = {
    {"verify", schnorr_verify}, {"sign", schnorr_sign}, {"pubkey", schnorr_pubkey}, {NULL, NULL},
};

static void add_lib(lua_State *L, const char *name, const luaL_Reg *funcs)
{
    lua_newtable(L);
    lua_pushvalue(L, -3); /* the scratch */
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, name);
}

/* testing.kill_at(step [, nth]): the process kills itself at the nth pass of a named step of the
 * write paths (killpoint.h), for the crash specs; kill_at() disarms. */
static int testing_kill_at(lua_State *L)
{
    const char *step = luaL_optstring(L, 1, NULL);
    lua_Integer nth = luaL_optinteger(L, 2, 1);
    luaL_argcheck(L, nth >= 1, 2, "a count from 1");
    l2_killpoint_arm(step, (long)nth);
    return 0;
}

static const luaL_Reg testing_funcs[] = {{"kill_at", testing_kill_at}, {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_layer2_core(lua_State *L)
{
    lua_newtable(L);
    scratch *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    l2_event_init(&s->ev);
    l2_filter_init(&s->flt);
    l2_buf_init(&s->out);
    l2_buf_init(&s->tmp);
    s->lim = l2_default_limits;
    s->flim = l2_default_filter_limits;
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_insert(L, -2); /* scratch below the module table */
    add_lib(L, "event", event_funcs);
    add_lib(L, "filter", filter_funcs);
    add_lib(L, "schnorr", schnorr_funcs);
    add_lib(L, "websocket", websocket_funcs);
    l2lua_open_store_common(L);
    l2lua_open_lmdb(L);
    lua_setfield(L, -2, "lmdb");
    l2lua_open_pg(L);
    lua_setfield(L, -2, "postgres");
    l2lua_open_backend(L);
    lua_setfield(L, -2, "backend_private");
    l2lua_open_fanout(L);
    lua_setfield(L, -2, "fanout");
    l2lua_open_negentropy(L);
    lua_setfield(L, -2, "negentropy");
    lua_pushliteral(L, L2_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushcfunction(L, core_monotonic);
    lua_setfield(L, -2, "monotonic");
    lua_pushcfunction(L, core_sleep);
    lua_setfield(L, -2, "sleep");
    add_lib(L, "testing", testing_funcs);
    lua_remove(L, -2);
    return 1;
}
