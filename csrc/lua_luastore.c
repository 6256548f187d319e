/* lua_luastore.c: calls from the C core into Lua: the counted pcall the backend's hooks use, and
 * the store interface (storeif.h) over a Lua object with the store methods (an L2 written in Lua).
 * lua_backend.c calls what lua_backend.h declares of it; this file calls nothing of that one. */
#include "lua_backend.h"

/* How deep this thread is in calls from C into Lua (hooks, a Lua L2). */
static _Thread_local int inside_c;

int luabk_inside_c(void)
{
    return inside_c > 0;
}

int luabk_pcall_from_c(lua_State *L, int nargs, int nresults)
{
    inside_c++;
    int rc = lua_pcall(L, nargs, nresults, 0);
    inside_c--;
    return rc;
}

void luabk_push_part(lua_State *L, backend_ud *s, int i, const char *name)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
    if (name) lua_getfield(L, -1, name);
    else lua_rawgeti(L, -1, i);
    lua_remove(L, -2);
}

int luabk_id_arg(lua_State *L, int idx, uint8_t id[32])
{
    size_t n;
    const char *p = lua_tolstring(L, idx, &n);
    return p && n == 64 && l2_hex_decode(id, p, 32) == 0;
}

/* Keeps a refusal's message referenced until the next call and returns it. */
static const char *keep_string(backend_ud *s, int idx)
{
    lua_State *L = s->L;
    idx = lua_absindex(L, idx);
    luabk_push_part(L, s, 0, "strings");
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
    return lua_tostring(L, idx);
}

int luabk_call_failed(lua_State *L, int rc, char *err)
{
    if (rc) {
        snprintf(err, L2_ERRLEN, "error: L2 failed: %s", lua_isstring(L, -2) ? lua_tostring(L, -2) : "an error object");
        return 1;
    }
    if (lua_toboolean(L, -2)) return 0;
    if (lua_isnil(L, -1)) snprintf(err, L2_ERRLEN, "error: L2 failed");
    else if (lua_type(L, -1) == LUA_TSTRING && strncmp(lua_tostring(L, -1), "error:", 6) == 0)
        snprintf(err, L2_ERRLEN, "%s", lua_tostring(L, -1));
    else return 0;
    return 1;
}

int luabk_push_method(backend_ud *s, const char *method)
{
    lua_State *L = s->L;
    luabk_push_part(L, s, 2, NULL);
    lua_getfield(L, -1, method);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 2);
        return 0;
    }
    lua_insert(L, -2);
    return 1;
}

static void push_trusted(lua_State *L, int64_t now)
{
    lua_createtable(L, 0, 2);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "verify");
    lua_pushinteger(L, (lua_Integer)now);
    lua_setfield(L, -2, "now");
}

static void read_verdict(backend_ud *s, int idx, l2_save_result *r)
{
    lua_State *L = s->L;
    if (lua_toboolean(L, idx) && lua_type(L, idx) != LUA_TSTRING) {
        r->status = L2_SAVE_STORED;
    } else {
        r->msg = lua_type(L, idx) == LUA_TSTRING ? keep_string(s, idx) : "error: L2 gave no verdict";
        r->status = l2_save_status_of(r->msg);
    }
}

static int luastore_save(void *st, l2_event *const *evs, size_t n, int64_t now, int flags, l2_save_result *res,
                         char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    (void)flags;
    luaL_checkstack(L, 8, "layer2");
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref);
    lua_newtable(L);
    lua_setfield(L, -2, "strings"); /* the last call's messages are not needed any more */
    lua_pop(L, 1);
    if (luabk_push_method(s, "save_events")) {
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0; i < n; i++) {
            l2lua_push_event(L, evs[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        push_trusted(L, now);
        int rc = luabk_pcall_from_c(L, 3, 2);
        if (rc) lua_pushnil(L);
        if (luabk_call_failed(L, rc, err)) {
            lua_pop(L, 2);
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, -2, (int)i + 1);
            read_verdict(s, -1, &res[i]);
            lua_pop(L, 1);
        }
        lua_pop(L, 2);
        return 0;
    }
    /* one by one: once L2 fails, the rest are not tried (they go to the outbox, in order) */
    int down = 0;
    for (size_t i = 0; i < n; i++) {
        if (down || !luabk_push_method(s, "save_event")) {
            res[i].status = L2_SAVE_FAILED;
            continue;
        }
        l2lua_push_event(L, evs[i]);
        push_trusted(L, now);
        int rc = luabk_pcall_from_c(L, 3, 2);
        if (rc) lua_pushnil(L);
        if (luabk_call_failed(L, rc, err)) {
            down = 1;
            res[i].status = L2_SAVE_FAILED;
            lua_pushstring(L, err);
            res[i].msg = keep_string(s, -1);
            lua_pop(L, 1);
        } else if (lua_toboolean(L, -2)) {
            res[i].status = L2_SAVE_STORED;
        } else {
            read_verdict(s, -1, &res[i]);
        }
        lua_pop(L, 2);
    }
    return 0;
}

static int luastore_delete(void *st, const uint8_t id[32], int tombstone, int flags, int *found, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    (void)flags;
    if (!luabk_push_method(s, "delete_event")) {
        snprintf(err, L2_ERRLEN, "error: L2 has no delete_event");
        return -1;
    }
    l2lua_push_hex(L, id, 32);
    lua_pushboolean(L, !tombstone);
    int rc = luabk_pcall_from_c(L, 3, 2);
    if (rc) lua_pushnil(L);
    int failed = luabk_call_failed(L, rc, err);
    *found = lua_toboolean(L, -2);
    lua_pop(L, 2);
    return failed ? -1 : 0;
}

static void push_filters(lua_State *L, const l2_filter *fs, size_t nf)
{
    lua_createtable(L, (int)nf, 0);
    for (size_t i = 0; i < nf; i++) {
        l2lua_push_filter(L, &fs[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

/* Calls the L2 method pushed by luabk_push_method with its nargs arguments: 0 with its two results on
 * the stack, or -1 with err (nothing left) when it failed (see luabk_call_failed). */
static int call_l2(backend_ud *s, int nargs, char *err)
{
    lua_State *L = s->L;
    int rc = luabk_pcall_from_c(L, nargs + 1, 2);
    if (rc) lua_pushnil(L);
    if (luabk_call_failed(L, rc, err)) {
        lua_pop(L, 2);
        return -1;
    }
    return 0;
}

static int luastore_query(void *st, const l2_filter *fs, size_t nf, int64_t max_limit, int64_t now, int64_t horizon,
                          uint8_t *incomplete, l2_row_fn row, void *ud, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    (void)horizon;
    if (incomplete) memset(incomplete, 0, nf);
    luaL_checkstack(L, 8, "layer2");
    if (!luabk_push_method(s, "query_events")) {
        snprintf(err, L2_ERRLEN, "error: L2 has no query_events");
        return -1;
    }
    push_filters(L, fs, nf);
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)max_limit);
    lua_setfield(L, -2, "max_limit");
    lua_pushinteger(L, (lua_Integer)now);
    lua_setfield(L, -2, "now");
    if (call_l2(s, 2, err)) return -1;
    if (lua_type(L, -2) != LUA_TTABLE) {
        /* nil and a refusal: the answer */
        snprintf(err, L2_ERRLEN, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "invalid: refused");
        lua_pop(L, 2);
        return L2_REFUSED;
    }
    size_t n = lua_rawlen(L, -2);
    l2_buf bin;
    l2_buf_init(&bin);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, (int)i);
        l2_row r = {0};
        int bad = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            r.json = lua_tolstring(L, -1, &r.json_len);
        } else {
            bin.len = 0;
            bad = l2lua_event_arg(L, lua_gettop(L), &s->ev, L2_HAVE_ALL, &s->lim, err) || l2_event_encode_bin(&s->ev, &bin);
            r.bin = bin.data;
            r.bin_len = bin.len;
        }
        int stop = bad ? 0 : row(ud, &r);
        lua_pop(L, 1);
        if (stop) break;
    }
    l2_buf_free(&bin);
    lua_pop(L, 2);
    return 0;
}

static int luastore_changes(void *st, uint64_t after, size_t max, l2_change_fn fn, void *ud, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    luaL_checkstack(L, 8, "layer2");
    if (!luabk_push_method(s, "changes_since")) {
        snprintf(err, L2_ERRLEN, "error: L2 has no changes_since");
        return -1;
    }
    lua_pushinteger(L, (lua_Integer)after);
    lua_pushinteger(L, (lua_Integer)max);
    lua_createtable(L, 0, 1);
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, "json");
    if (call_l2(s, 3, err)) return -1;
    if (lua_type(L, -2) != LUA_TTABLE) {
        snprintf(err, L2_ERRLEN, "error: L2 gave no list of changes");
        lua_pop(L, 2);
        return -1;
    }
    static const char *ops[] = {"saved", "replaced", "deleted"};
    l2_buf bin;
    l2_buf_init(&bin);
    size_t n = lua_rawlen(L, -2);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, (int)i);
        int ch = lua_gettop(L);
        lua_getfield(L, ch, "seq");
        lua_getfield(L, ch, "op");
        lua_getfield(L, ch, "id");
        lua_getfield(L, ch, "event");
        int64_t seq = 0;
        int op = 0;
        for (int k = 0; k < 3; k++)
            if (lua_type(L, ch + 2) == LUA_TSTRING && strcmp(lua_tostring(L, ch + 2), ops[k]) == 0) op = k + 1;
        uint8_t id[32];
        int have_id = luabk_id_arg(L, ch + 3, id);
        l2_row r = {0}, *row = NULL;
        if (lua_type(L, ch + 4) == LUA_TSTRING) {
            r.json = lua_tolstring(L, ch + 4, &r.json_len);
            row = &r;
        } else if (lua_type(L, ch + 4) == LUA_TTABLE) {
            bin.len = 0;
            if (l2lua_event_arg(L, ch + 4, &s->ev, L2_HAVE_ALL, &s->lim, err) == 0 &&
                l2_event_encode_bin(&s->ev, &bin) == 0)
                r.bin = bin.data, r.bin_len = bin.len, row = &r;
        }
        int stop = l2lua_int64(L, ch + 1, &seq) || !op ? 0 : fn(ud, (uint64_t)seq, op, have_id ? id : NULL, row);
        lua_settop(L, ch - 1);
        if (stop) break;
    }
    l2_buf_free(&bin);
    lua_pop(L, 2);
    return 0;
}

static int luastore_count(void *st, const l2_filter *fs, size_t nf, int64_t now, uint64_t *n, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    luaL_checkstack(L, 8, "layer2");
    if (!luabk_push_method(s, "count_events")) {
        snprintf(err, L2_ERRLEN, "error: L2 has no count_events");
        return -1;
    }
    push_filters(L, fs, nf);
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, (lua_Integer)now);
    lua_setfield(L, -2, "now");
    if (call_l2(s, 2, err)) return -1;
    int64_t v;
    int rc = l2lua_int64(L, -2, &v) || v < 0 ? L2_FAILED : 0;
    /* no count and a message: a refusal (a failure's "error:" message was call_l2's) */
    if (rc && lua_isstring(L, -1)) rc = L2_REFUSED;
    if (rc) snprintf(err, L2_ERRLEN, "%s", rc == L2_REFUSED ? lua_tostring(L, -1) : "error: L2 gave no count");
    *n = rc ? 0 : (uint64_t)v;
    lua_pop(L, 2);
    return rc;
}

/* nuke and sync: an L2 without the method has nothing to do */
static int luastore_done(backend_ud *s, const char *method, char *err)
{
    if (!luabk_push_method(s, method)) return 0;
    if (call_l2(s, 0, err)) return -1;
    lua_pop(s->L, 2);
    return 0;
}

/* sweep: an L2 without the method keeps nothing that expires */
static int luastore_sweep(void *st, int64_t now, uint64_t *removed, char *err)
{
    backend_ud *s = st;
    *removed = 0;
    if (!luabk_push_method(s, "sweep")) return 0;
    lua_pushinteger(s->L, (lua_Integer)now);
    if (call_l2(s, 1, err)) return -1;
    int64_t v;
    if (l2lua_int64(s->L, -2, &v) == 0 && v > 0) *removed = (uint64_t)v;
    lua_pop(s->L, 2);
    return 0;
}

static int luastore_nuke(void *st, char *err)
{
    return luastore_done(st, "nuke", err);
}

static int luastore_sync(void *st, char *err)
{
    return luastore_done(st, "sync", err);
}

static int luastore_stats(void *st, l2_stat_fn field, void *ud, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    luaL_checkstack(L, 8, "layer2");
    if (!luabk_push_method(s, "stats")) return 0;
    if (call_l2(s, 0, err)) return -1;
    /* the figures are gathered first: `field` may use this Lua stack */
    l2_buf figures;
    l2_buf_init(&figures);
    int rc = 0;
    if (lua_type(L, -2) == LUA_TTABLE) {
        for (lua_pushnil(L); rc == 0 && lua_next(L, -3); lua_pop(L, 1)) {
            int64_t v;
            size_t n;
            if (lua_type(L, -2) != LUA_TSTRING || l2lua_int64(L, -1, &v) || v < 0) continue;
            const char *name = lua_tolstring(L, -2, &n);
            rc = l2_buf_put(&figures, &v, sizeof v) || l2_buf_put(&figures, name, n + 1);
        }
    }
    lua_settop(L, lua_gettop(L) - (rc ? 3 : 2)); /* the key lua_next left, when stopped */
    for (size_t at = 0; rc == 0 && at < figures.len;) {
        int64_t v;
        memcpy(&v, figures.data + at, sizeof v);
        const char *name = figures.data + at + sizeof v;
        field(ud, name, (uint64_t)v);
        at += sizeof v + strlen(name) + 1;
    }
    l2_buf_free(&figures);
    if (rc) snprintf(err, L2_ERRLEN, "error: out of memory");
    return rc ? -1 : 0;
}

static int luastore_check(void *st, l2_problem_fn problem, void *ud, uint64_t *nproblems, char *err)
{
    backend_ud *s = st;
    lua_State *L = s->L;
    luaL_checkstack(L, 8, "layer2");
    *nproblems = 0;
    if (!luabk_push_method(s, "check")) return 0;
    if (luabk_pcall_from_c(L, 1, 2)) {
        snprintf(err, L2_ERRLEN, "error: L2 failed: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "an error object");
        lua_pop(L, 1);
        return -1;
    }
    size_t n = lua_type(L, -1) == LUA_TTABLE ? lua_rawlen(L, -1) : 0;
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        problem(ud, lua_isstring(L, -1) ? lua_tostring(L, -1) : "a problem with no message");
        lua_pop(L, 1);
    }
    *nproblems = n ? n : !lua_toboolean(L, -2);
    if (!n && *nproblems) problem(ud, "check failed");
    lua_pop(L, 2);
    return 0;
}

/* What the C core asks of an L2 written in Lua. */
const l2_store_if luabk_luastore_if = {
    .kind = "lua",
    .save_batch = luastore_save,
    .delete_event = luastore_delete,
    .query = luastore_query,
    .count = luastore_count,
    .changes = luastore_changes,
    .stats = luastore_stats,
    .check = luastore_check,
    .sweep = luastore_sweep,
    .nuke = luastore_nuke,
    .sync = luastore_sync,
};
