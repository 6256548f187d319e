/* layer2.lmdb: the LMDB store as a Lua userdata (the store methods are lua_store.c's), and what
 * only it has: the cache (L1) side a two-level backend uses, copy and pruning. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_layer2.h"
#include "lua_store.h"
#include "store.h"

#define STORE_MT "layer2.lmdb.store"

/* The open LMDB store at 1 (its own methods take no other store). */
static l2_store *check_lmdb(lua_State *L, l2lua_store **out)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    if (s->vt != &l2_lmdb_store_if) luaL_argerror(L, 1, "a layer2.lmdb store expected");
    if (out) *out = s;
    return s->st;
}

/* layer2.lmdb.open(path [, opts]) -> store | nil, err. opts: map_size, fixed_map, nosync, nometasync, cache,
 * max_limit, max_filters, key_prefix (store.h: for tests), index_memory. */
static int lmdb_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    l2_store_opts o = {0};
    static const char *const names[] = {"map_size", "fixed_map", "nosync", "nometasync", "cache", "key_prefix",
                                        "index_memory", "max_limit", "max_filters", NULL};
    l2lua_check_options(L, 2, "layer2.lmdb.open", names);
    o.map_size = (size_t)l2lua_opt_int(L, 2, "map_size", 0);
    o.fixed_map = l2lua_opt_bool(L, 2, "fixed_map", 0);
    o.nosync = l2lua_opt_bool(L, 2, "nosync", 0);
    o.nometasync = l2lua_opt_bool(L, 2, "nometasync", 0);
    o.cache = l2lua_opt_bool(L, 2, "cache", 0);
    int64_t prefix = l2lua_opt_int(L, 2, "key_prefix", 0);
    if (prefix < 0 || prefix > 32) return luaL_error(L, "layer2.lmdb.open: key_prefix is 1 to 32 bytes");
    o.key_prefix = (size_t)prefix;
    o.index_memory = (size_t)l2lua_opt_int(L, 2, "index_memory", 0);
    l2lua_store *s = l2lua_store_new(L, STORE_MT, &l2_lmdb_store_if, 2);
    l2_store *st;
    if (l2_store_open(&st, path, &o, s->err)) return l2lua_refuse(L, 0, s->err);
    s->st = st;
    return 1;
}

/* store:prune_changes(keep) -> pruned */
static int store_prune_changes(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t keep;
    uint64_t pruned;
    if (l2lua_int64(L, 2, &keep) || keep < 0) return luaL_argerror(L, 2, "a count expected");
    if (l2_store_prune_changes(st, (uint64_t)keep, &pruned, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)pruned);
    return 1;
}

/* store:repack([min_fill]) -> bytes given back: rewrites the trees whose pages are less than
 * min_fill percent (70) full (store.h: l2_store_repack; a cache's gc runs it) */
static int store_repack(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t min_fill = 70;
    if (!lua_isnoneornil(L, 2) && (l2lua_int64(L, 2, &min_fill) || min_fill < 1 || min_fill > 100))
        return luaL_argerror(L, 2, "a percent (1 to 100) expected");
    uint64_t freed;
    int whole;
    if (l2_store_repack(st, (unsigned)min_fill, &freed, &whole, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)freed);
    return 1;
}

static void copy_progress(void *ud, uint64_t bytes)
{
    lua_State *L = ud;
    lua_pushvalue(L, -1); /* the progress function, kept on top */
    lua_pushinteger(L, (lua_Integer)bytes);
    lua_call(L, 1, 0);
}

/* store:copy(dir [, {compact = true, progress = function(bytes)}]) -> bytes | nil, err */
static int store_copy(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    const char *dir = luaL_checkstring(L, 2);
    static const char *const names[] = {"compact", "progress", NULL};
    l2lua_check_options(L, 3, "layer2: copy", names);
    int compact = l2lua_opt_bool(L, 3, "compact", 1), with_progress = 0;
    if (lua_type(L, 3) == LUA_TTABLE) {
        lua_getfield(L, 3, "progress");
        with_progress = lua_isfunction(L, -1);
        if (!with_progress) lua_pop(L, 1);
    }
    if (l2_store_copy(st, dir, compact, with_progress ? copy_progress : NULL, L, s->err))
        return l2lua_refuse(L, 0, s->err);
    char file[4096];
    snprintf(file, sizeof file, "%s/data.mdb", dir);
    FILE *f = fopen(file, "rb");
    long size = 0;
    if (f && fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (f) fclose(f);
    lua_pushinteger(L, (lua_Integer)size);
    return 1;
}

/* ---- the cache (L1) side, used by the two-level backend ---- */

/* store:candidates(max [, "access" | "created_at"]) -> {{id, pubkey, kind, created_at, size,
 * last_access (ms), hits}, ...}, coldest first */
static int store_candidates(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t max = 0;
    if (l2lua_int64(L, 2, &max) || max < 1) return luaL_argerror(L, 2, "a positive count expected");
    const char *order = luaL_optstring(L, 3, "access");
    int by_created = strcmp(order, "created_at") == 0;
    if (!by_created && strcmp(order, "access") != 0) return luaL_argerror(L, 3, "\"access\" or \"created_at\" expected");
    if (max > 100000) max = 100000;
    l2_candidate *c = malloc((size_t)max * sizeof *c);
    size_t n;
    if (!c) return luaL_error(L, "layer2: out of memory");
    if (l2_store_candidates(st, by_created, (size_t)max, c, &n, s->err)) {
        free(c);
        return l2lua_refuse(L, 0, s->err);
    }
    l2lua_push_candidates(L, c, n, NULL, NULL);
    free(c);
    return 1;
}

/* store:evict(ids [, "stub" | "delete"]) -> evicted, bytes freed */
static int store_evict(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *mode = luaL_optstring(L, 3, "stub");
    int delete_mode = strcmp(mode, "delete") == 0;
    if (!delete_mode && strcmp(mode, "stub") != 0) return luaL_argerror(L, 3, "\"stub\" or \"delete\" expected");
    size_t k;
    uint8_t (*ids)[32] = l2lua_id_list(L, 2, &k);
    uint64_t evicted, freed;
    if (l2_store_evict(st, (const uint8_t (*)[32])ids, k, delete_mode, &evicted, &freed, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)evicted);
    lua_pushinteger(L, (lua_Integer)freed);
    return 2;
}

/* store:drop_stubs(max) -> dropped, horizon (the created_at past the newest dropped; 0 if none) */
static int store_drop_stubs(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t max = 0, horizon;
    uint64_t dropped;
    if (l2lua_int64(L, 2, &max) || max < 0) return luaL_argerror(L, 2, "a count expected");
    if (l2_store_drop_stubs(st, (size_t)max, &dropped, &horizon, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)dropped);
    lua_pushinteger(L, (lua_Integer)horizon);
    return 2;
}

/* store:revive(events) -> n: full bodies (tables or JSON, trusted) back in place of stubs */
static int store_revive(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = lua_rawlen(L, 2), total = 0;
    for (size_t i = 1; i <= n; i++) {
        l2_event *evp = &s->ev;
        uint64_t revived;
        lua_rawgeti(L, 2, (int)i);
        int rc = l2lua_event_arg(L, lua_gettop(L), &s->ev, L2_HAVE_ALL, &s->lim, s->err);
        if (rc == 0 && l2_store_revive(st, &evp, 1, &revived, s->err)) return l2lua_refuse(L, 0, s->err);
        lua_pop(L, 1);
        if (rc == 0) total += revived;
    }
    lua_pushinteger(L, (lua_Integer)total);
    return 1;
}

/* store:meta(key) -> value | nil; store:meta(key, value) -> true */
static int store_meta(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    const char *key = luaL_checkstring(L, 2);
    if (lua_gettop(L) >= 3) {
        size_t n;
        const char *v = luaL_checklstring(L, 3, &n);
        if (l2_store_meta_set(st, key, v, n, s->err)) return l2lua_refuse(L, 0, s->err);
        lua_pushboolean(L, 1);
        return 1;
    }
    int found;
    if (l2_store_meta_get(st, key, &s->out, &found, s->err)) return l2lua_refuse(L, 0, s->err);
    if (found) lua_pushlstring(L, s->out.data ? s->out.data : "", s->out.len);
    else lua_pushnil(L);
    return 1;
}

/* store:meta_raise(key, n) -> the value now stored: at least n, never lowered (see store.h) */
static int store_meta_raise(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    const char *key = luaL_checkstring(L, 2);
    int64_t v, now;
    if (l2lua_int64(L, 3, &v)) return luaL_argerror(L, 3, "an integer expected");
    if (l2_store_meta_raise(st, key, v, &now, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)now);
    return 1;
}

/* store:outbox([max [, opts]]) -> {{seq, op = "save", event} | {seq, op = "delete", id, tombstone}} */
static int store_outbox(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t max = 1000;
    if (!lua_isnoneornil(L, 2) && (l2lua_int64(L, 2, &max) || max < 1)) return luaL_argerror(L, 2, "a count expected");
    static const char *const names[] = {"json", NULL};
    l2lua_check_options(L, 3, "layer2: outbox", names);
    int json = l2lua_opt_bool(L, 3, "json", 0);
    if (max > 100000) max = 100000;
    l2_outbox_item *items = malloc((size_t)max * sizeof *items);
    size_t n;
    if (!items) return luaL_error(L, "layer2: out of memory");
    if (l2_store_outbox_list(st, (size_t)max, items, &n, s->err)) {
        free(items);
        return l2lua_refuse(L, 0, s->err);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = items[i].data;
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)items[i].seq);
        lua_setfield(L, -2, "seq");
        l2_row r = {p + 1, items[i].len - 1, NULL, 0, 0, {0}};
        if (items[i].len > 1 && p[0] == 'S' && l2lua_push_row(L, s, &r, json) == 0) {
            lua_setfield(L, -2, "event");
            lua_pushliteral(L, "save");
        } else if (items[i].len == 34 && p[0] == 'D') {
            l2lua_push_hex(L, p + 1, 32);
            lua_setfield(L, -2, "id");
            lua_pushboolean(L, p[33]);
            lua_setfield(L, -2, "tombstone");
            lua_pushliteral(L, "delete");
        } else {
            lua_pushliteral(L, "corrupt");
        }
        lua_setfield(L, -2, "op");
        lua_rawseti(L, -2, (int)i + 1);
    }
    l2_store_read_end(st);
    free(items);
    return 1;
}

static int store_outbox_ack(lua_State *L)
{
    l2lua_store *s;
    l2_store *st = check_lmdb(L, &s);
    int64_t seq;
    if (l2lua_int64(L, 2, &seq) || seq < 1) return luaL_argerror(L, 2, "an outbox seq expected");
    if (l2_store_outbox_ack(st, (uint64_t)seq, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static void upgrade_progress(void *ud, uint64_t done, uint64_t total)
{
    lua_State *L = ud;
    lua_pushvalue(L, -1); /* the progress function, kept on top */
    lua_pushinteger(L, (lua_Integer)done);
    lua_pushinteger(L, (lua_Integer)total);
    /* protected: an error must not leave the upgrade's transaction behind */
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
}

/* layer2.lmdb.upgrade(path [, {progress = function(done, total)}]) -> events re-indexed, already in
 * this format | nil, err (store.h: l2_store_upgrade) */
static int lmdb_upgrade(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int with_progress = 0;
    static const char *const names[] = {"progress", NULL};
    l2lua_check_options(L, 2, "layer2.lmdb.upgrade", names);
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "progress");
        with_progress = lua_isfunction(L, -1);
        if (!with_progress) lua_pop(L, 1);
    }
    char err[L2_ERRLEN];
    uint64_t events;
    int already;
    if (l2_store_upgrade(path, with_progress ? upgrade_progress : NULL, L, &events, &already, err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, (lua_Integer)events);
    lua_pushboolean(L, already);
    return 2;
}

static const luaL_Reg lmdb_methods[] = {
    {"candidates", store_candidates}, {"evict", store_evict}, {"drop_stubs", store_drop_stubs},
    {"revive", store_revive}, {"meta", store_meta}, {"meta_raise", store_meta_raise}, {"outbox", store_outbox},
    {"outbox_ack", store_outbox_ack},
    {"prune_changes", store_prune_changes}, {"copy", store_copy}, {"repack", store_repack}, {NULL, NULL},
};

void l2lua_open_lmdb(lua_State *L)
{
    l2lua_store_class(L, STORE_MT, lmdb_methods);
    lua_newtable(L);
    lua_pushcfunction(L, lmdb_open);
    lua_setfield(L, -2, "open");
    lua_pushcfunction(L, lmdb_upgrade);
    lua_setfield(L, -2, "upgrade");
}
