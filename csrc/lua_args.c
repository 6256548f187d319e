/* Argument reading and result pushing shared by every binding file: events and filters from Lua
 * tables or JSON, option tables, refusals. It calls no other binding file. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "lua_args.h"

/* ---- arguments and results ---- */

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

int64_t l2lua_opt_int(lua_State *L, int opts, const char *name, int64_t def)
{
    int64_t v = def;
    if (lua_type(L, opts) != LUA_TTABLE) return def;
    lua_getfield(L, opts, name);
    if (!lua_isnil(L, -1) && (l2lua_int64(L, -1, &v) || v < 0))
        luaL_error(L, "layer2: option '%s' must be a non-negative integer", name);
    lua_pop(L, 1);
    return v;
}

int l2lua_opt_bool(lua_State *L, int opts, const char *name, int def)
{
    if (lua_type(L, opts) != LUA_TTABLE) return def;
    lua_getfield(L, opts, name);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

int64_t l2lua_opt_now(lua_State *L, int opts)
{
    return l2lua_opt_int(L, opts, "now", (int64_t)time(NULL));
}

int l2lua_opt_function(lua_State *L, int opts, const char *name)
{
    if (lua_type(L, opts) != LUA_TTABLE) return 0;
    lua_getfield(L, opts, name);
    if (lua_isfunction(L, -1)) return lua_gettop(L);
    lua_pop(L, 1);
    return 0;
}

/* The edit distance of a and b (both short: names of options); a large number past 32 bytes. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b), row[33];
    if (na > 32 || nb > 32) return SIZE_MAX;
    for (size_t j = 0; j <= nb; j++) row[j] = j;
    for (size_t i = 1; i <= na; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= nb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

int l2lua_unknown_option(lua_State *L, int opts, const char *where, const char *const *names)
{
    if (lua_type(L, opts) != LUA_TTABLE) return 0;
    opts = lua_absindex(L, opts);
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pushfstring(L, "%s: an option's name is a string, not a %s", where, luaL_typename(L, -1));
            lua_remove(L, -2);
            return 1;
        }
        const char *key = lua_tostring(L, -1), *near = NULL;
        size_t best = SIZE_MAX, i = 0;
        for (; names[i] && strcmp(names[i], key) != 0; i++) {
            size_t d = edit_distance(key, names[i]);
            if (d < best) {
                best = d;
                near = names[i];
            }
        }
        if (names[i]) continue;
        if (near && best <= 1 + strlen(near) / 4)
            lua_pushfstring(L, "%s: unknown option '%s' (did you mean '%s'?)", where, key, near);
        else
            lua_pushfstring(L, "%s: unknown option '%s'", where, key);
        lua_remove(L, -2);
        return 1;
    }
    return 0;
}

void l2lua_check_options(lua_State *L, int opts, const char *where, const char *const *names)
{
    if (!lua_isnoneornil(L, opts)) luaL_checktype(L, opts, LUA_TTABLE);
    if (l2lua_unknown_option(L, opts, where, names)) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
        lua_error(L);
    }
}

int l2lua_class(lua_State *L, const char *mt, const luaL_Reg *methods, const luaL_Reg *extra, lua_CFunction close,
                lua_CFunction tostring)
{
    if (!luaL_newmetatable(L, mt)) return 0;
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    if (extra) luaL_setfuncs(L, extra, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
    return 1;
}

int64_t l2lua_time_arg(lua_State *L, int idx)
{
    int64_t t = (int64_t)time(NULL);
    if (!lua_isnoneornil(L, idx) && (l2lua_int64(L, idx, &t) || t < 0)) luaL_argerror(L, idx, "a time (seconds) expected");
    return t;
}

void l2lua_changes_args(lua_State *L, int64_t *after, int64_t *max, int *json)
{
    *after = 0;
    *max = 1000;
    if (!lua_isnoneornil(L, 2) && (l2lua_int64(L, 2, after) || *after < 0))
        luaL_argerror(L, 2, "a non-negative integer cursor expected");
    if (!lua_isnoneornil(L, 3) && (l2lua_int64(L, 3, max) || *max < 1)) luaL_argerror(L, 3, "a positive integer expected");
    if (*max > 100000) *max = 100000;
    *json = l2lua_opt_bool(L, 4, "json", 0);
}

void l2lua_problem(void *ud, const char *msg)
{
    lua_State *L = ud;
    size_t n = lua_rawlen(L, -1);
    if (n >= 1000) return; /* enough to act on */
    lua_pushstring(L, msg);
    lua_rawseti(L, -2, (int)n + 1);
}

int l2lua_check_result(lua_State *L, uint64_t nproblems)
{
    lua_pushboolean(L, nproblems == 0);
    lua_insert(L, -2);
    return 2;
}

/* ---- events ---- */

static int fmt_err(char *err, const char *fmt, const char *name)
{
    snprintf(err, L2_ERRLEN, fmt, name);
    return -1;
}

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

/* ---- filters: one (table or JSON object) or a REQ's list (array, or JSON array) ---- */

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

void l2lua_filters_init(l2lua_filters *fs, size_t max)
{
    memset(fs, 0, sizeof *fs);
    fs->max = max;
    fs->lim = l2_default_filter_limits;
}

void l2lua_filters_free(l2lua_filters *fs)
{
    for (size_t i = 0; i < fs->cap; i++) l2_filter_free(&fs->v[i]);
    free(fs->v);
    fs->v = NULL;
    fs->cap = fs->n = 0;
}

static l2_filter *next_filter(lua_State *L, l2lua_filters *fs)
{
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 4;
        l2_filter *f = realloc(fs->v, cap * sizeof *f);
        if (!f) luaL_error(L, "layer2: out of memory");
        for (size_t i = fs->cap; i < cap; i++) l2_filter_init(&f[i]);
        fs->v = f;
        fs->cap = cap;
    }
    return &fs->v[fs->n++];
}

static int too_many_filters(l2lua_filters *fs, char *err)
{
    snprintf(err, L2_ERRLEN, "invalid: more than %zu filters", fs->max);
    return -1;
}

int l2lua_read_filters(lua_State *L, int idx, l2lua_filters *fs, char *err)
{
    fs->n = 0;
    l2lua_check_table_or_string(L, idx);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *p = lua_tolstring(L, idx, &n);
        l2_json j;
        l2_json_init(&j, p, n, 8, err, L2_ERRLEN);
        if (l2_json_peek(&j) != '[') return l2_filter_parse_json(next_filter(L, fs), p, n, &fs->lim, err);
        size_t i = 0;
        if (l2_json_open(&j, '[')) return -1;
        for (int r; (r = l2_json_more(&j, ']', &i));) {
            if (r < 0) return -1;
            l2_json_peek(&j);
            const char *start = j.p;
            if (l2_json_skip(&j)) return -1;
            if (fs->n >= fs->max) return too_many_filters(fs, err);
            if (l2_filter_parse_json(next_filter(L, fs), start, (size_t)(j.p - start), &fs->lim, err)) return -1;
        }
        return l2_json_finish(&j);
    }
    lua_rawgeti(L, idx, 1);
    int list = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!list) return l2lua_filter_arg(L, idx, next_filter(L, fs), &fs->lim, err);
    size_t n = lua_rawlen(L, idx);
    if (n > fs->max) return too_many_filters(fs, err);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        int t = lua_type(L, -1);
        if (t != LUA_TTABLE && t != LUA_TSTRING) {
            lua_pop(L, 1);
            snprintf(err, L2_ERRLEN, "invalid: filter %zu must be a table or a JSON object", i);
            return -1;
        }
        /* the filter's strings stay referenced by the argument table */
        int rc = l2lua_filter_arg(L, lua_gettop(L), next_filter(L, fs), &fs->lim, err);
        lua_pop(L, 1);
        if (rc) return -1;
    }
    return 0;
}

int l2lua_filters_unsupported(const l2lua_filters *fs, char *err)
{
    for (size_t i = 0; i < fs->n; i++) {
        if (fs->v[i].have & L2_F_SEARCH) {
            snprintf(err, L2_ERRLEN, "unsupported: search (NIP-50) is not supported by this store");
            return 1;
        }
    }
    return 0;
}

/* ---- eviction candidates and id lists (the cache's binding and the backend's) ---- */

void l2lua_push_candidates(lua_State *L, const l2_candidate *c, size_t n, uint32_t (*reads)(void *, const uint8_t *),
                           void *ud)
{
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 8);
        l2lua_push_hex(L, c[i].id, 32);
        lua_setfield(L, -2, "id");
        l2lua_push_hex(L, c[i].pubkey, 32);
        lua_setfield(L, -2, "pubkey");
        lua_pushinteger(L, (lua_Integer)c[i].kind);
        lua_setfield(L, -2, "kind");
        lua_pushinteger(L, (lua_Integer)c[i].created_at);
        lua_setfield(L, -2, "created_at");
        lua_pushinteger(L, (lua_Integer)c[i].size);
        lua_setfield(L, -2, "size");
        lua_pushinteger(L, (lua_Integer)c[i].last_ms);
        lua_setfield(L, -2, "last_access");
        lua_pushinteger(L, (lua_Integer)c[i].hits);
        lua_setfield(L, -2, "hits");
        if (reads) {
            lua_pushinteger(L, (lua_Integer)reads(ud, c[i].id));
            lua_setfield(L, -2, "reads");
        }
        lua_rawseti(L, -2, (int)i + 1);
    }
}

uint8_t (*l2lua_id_list(lua_State *L, int idx, size_t *n))[32]
{
    size_t len_list = lua_rawlen(L, idx), k = 0;
    idx = lua_absindex(L, idx);
    uint8_t (*ids)[32] = lua_newuserdatauv(L, len_list * 32 + 1, 0);
    for (size_t i = 1; i <= len_list; i++) {
        lua_rawgeti(L, idx, (int)i);
        size_t len;
        const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (p && len == 64 && l2_hex_decode(ids[k], p, 32) == 0) k++;
        lua_pop(L, 1);
    }
    *n = k;
    return ids;
}
