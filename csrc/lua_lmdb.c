/* layer2.lmdb: the LMDB store as a Lua userdata. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua_layer2.h"
#include "store.h"

#define STORE_MT "layer2.lmdb.store"

typedef struct {
    l2_store *st;
    l2_event ev;
    l2lua_filters filters;
    l2_hits hits;
    l2_buf out;
    l2_limits lim;
    int64_t max_limit;
    char err[L2_ERRLEN];
} lstore;

static lstore *check_store(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);
    if (!s->st) luaL_error(L, "layer2: attempt to use a closed store");
    return s;
}

static void store_release(lstore *s)
{
    if (s->st) l2_store_close(s->st);
    s->st = NULL;
    l2lua_filters_free(&s->filters);
    l2_event_free(&s->ev);
    l2_hits_free(&s->hits);
    l2_buf_free(&s->out);
}

static int store_close(lua_State *L)
{
    store_release(luaL_checkudata(L, 1, STORE_MT));
    return 0;
}

static int store_tostring(lua_State *L)
{
    lstore *s = luaL_checkudata(L, 1, STORE_MT);
    if (s->st) lua_pushfstring(L, "layer2.lmdb store (%s)", l2_store_path(s->st));
    else lua_pushliteral(L, "layer2.lmdb store (closed)");
    return 1;
}

/* layer2.lmdb.open(path [, opts]) -> store | nil, err */
static int lmdb_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    l2_store_opts o = {0, 0, 0, 0};
    o.map_size = (size_t)l2lua_opt_int(L, 2, "map_size", 0);
    o.fixed_map = l2lua_opt_bool(L, 2, "fixed_map", 0);
    o.nosync = l2lua_opt_bool(L, 2, "nosync", 0);
    o.cache = l2lua_opt_bool(L, 2, "cache", 0);
    int64_t max_limit = l2lua_opt_int(L, 2, "max_limit", 500);
    int64_t max_filters = l2lua_opt_int(L, 2, "max_filters", 500);
    lstore *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    l2_event_init(&s->ev);
    s->lim = l2_default_limits;
    l2lua_filters_init(&s->filters, (size_t)max_filters);
    s->max_limit = max_limit;
    luaL_setmetatable(L, STORE_MT);
    if (l2_store_open(&s->st, path, &o, s->err)) return l2lua_refuse(L, 0, s->err);
    return 1;
}

/* Pushes the event in a stored body, as a table or as wire JSON. */
static int push_body(lua_State *L, lstore *s, const void *data, size_t len, int json)
{
    if (l2_event_decode_bin(&s->ev, data, len, s->err)) return -1;
    if (!json) {
        l2lua_push_event(L, &s->ev);
        return 0;
    }
    s->out.len = 0;
    if (l2_event_encode_json(&s->ev, &s->out)) return luaL_error(L, "layer2: out of memory");
    lua_pushlstring(L, s->out.data, s->out.len);
    return 0;
}

/* store:query_events(filters [, opts]) -> events | nil, err.
 * opts.info (for a two-level backend): a second result {incomplete = {filter indexes}, stubs =
 * {positions}}; a stub's position holds its id, its body being elsewhere. Without it stubs are left
 * out: a store never returns what is not a whole event. opts.horizon: see l2_store_query. */
static int store_query(lua_State *L)
{
    lstore *s = check_store(L);
    int json = l2lua_opt_bool(L, 3, "json", 0), info = l2lua_opt_bool(L, 3, "info", 0);
    int64_t max_limit = l2lua_opt_int(L, 3, "max_limit", s->max_limit);
    int64_t now = l2lua_opt_now(L, 3), horizon = l2lua_opt_int(L, 3, "horizon", 0);
    if (l2lua_read_filters(L, 2, &s->filters, s->err) || l2lua_filters_unsupported(&s->filters, s->err))
        return l2lua_refuse(L, 0, s->err);
    uint8_t *incomplete = info ? lua_newuserdatauv(L, s->filters.n + 1, 0) : NULL; /* collected with the call */
    if (l2_store_query(s->st, s->filters.v, s->filters.n, max_limit, now, horizon, incomplete, &s->hits, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_createtable(L, (int)s->hits.n, 0);
    int results = lua_gettop(L), out = 0, nstubs = 0;
    if (info) lua_newtable(L); /* stub positions */
    for (size_t i = 0; i < s->hits.n; i++) {
        const void *data;
        size_t len;
        const l2_hit *h = &s->hits.v[i];
        if (h->stub) {
            if (!info) continue;
            l2lua_push_hex(L, h->id, 32);
            lua_rawseti(L, results, ++out);
            lua_pushinteger(L, out);
            lua_rawseti(L, results + 1, ++nstubs);
            continue;
        }
        if (l2_store_body(s->st, h->serial, &data, &len)) continue;
        if (push_body(L, s, data, len, json)) {
            l2_store_read_end(s->st);
            return l2lua_refuse(L, 0, s->err);
        }
        lua_rawseti(L, results, ++out);
    }
    l2_store_read_end(s->st);
    if (!info) return 1;
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "stubs");
    lua_newtable(L);
    for (size_t i = 0, k = 0; i < s->filters.n; i++) {
        if (!incomplete[i]) continue;
        lua_pushinteger(L, (lua_Integer)i + 1);
        lua_rawseti(L, -2, (int)++k);
    }
    lua_setfield(L, -2, "incomplete");
    return 2;
}

/* store:count_events(filters [, opts]) -> n | nil, err */
static int store_count(lua_State *L)
{
    lstore *s = check_store(L);
    uint64_t n;
    int64_t now = l2lua_opt_now(L, 3);
    if (l2lua_read_filters(L, 2, &s->filters, s->err) || l2lua_filters_unsupported(&s->filters, s->err))
        return l2lua_refuse(L, 0, s->err);
    if (l2_store_count(s->st, s->filters.v, s->filters.n, now, &n, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* store:save_event(ev [, opts]) -> true | false, msg. opts: verify (true), now, outbox (queue the
 * stored event in the outbox in the same transaction). */
static int store_save(lua_State *L)
{
    lstore *s = check_store(L);
    int verify = l2lua_opt_bool(L, 3, "verify", 1), outbox = l2lua_opt_bool(L, 3, "outbox", 0);
    int64_t now = l2lua_opt_now(L, 3);
    l2_save_result res;
    l2_event *evp = &s->ev;
    if (l2lua_event_arg(L, 2, &s->ev, L2_HAVE_ALL | (verify ? L2_LENIENT_IDSIG : 0), &s->lim, s->err))
        return l2lua_refuse(L, 1, s->err);
    s->out.len = 0;
    if (verify && l2_event_verify(&s->ev, &s->out, s->err)) return l2lua_refuse(L, 1, s->err);
    if (l2_store_save_batch(s->st, &evp, 1, now, outbox ? L2_SAVE_OUTBOX : 0, &res, s->err))
        return l2lua_refuse(L, 1, s->err);
    const char *msg = l2_save_message(res.status);
    if (msg) return l2lua_refuse(L, 1, msg);
    lua_pushboolean(L, 1);
    return 1;
}

static int arg_id(lua_State *L, int idx, uint8_t id[32])
{
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    return n == 64 && l2_hex_decode(id, p, 32) == 0;
}

/* store:delete_event(id [, no_tombstone [, opts]]) -> true | false, msg. opts.outbox queues the
 * deletion in the same transaction. */
static int store_delete(lua_State *L)
{
    lstore *s = check_store(L);
    uint8_t id[32];
    int found;
    int outbox = l2lua_opt_bool(L, 4, "outbox", 0);
    if (!arg_id(L, 2, id)) return l2lua_refuse(L, 1, "invalid: id must be 64 lowercase hex characters");
    if (l2_store_delete(s->st, id, !lua_toboolean(L, 3), outbox, &found, s->err)) return l2lua_refuse(L, 1, s->err);
    if (!found) return l2lua_refuse(L, 1, "not found: no stored event has this id");
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct {
    l2_store *st;
    int flags;
} import_target;

static int save_batch(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_save_result *res, char *err)
{
    import_target *t = ud;
    return l2_store_save_batch(t->st, evs, n, now, t->flags, res, err);
}

/* store:save_events(list [, opts]) -> verdicts | nil, err (see l2lua_save_events): one write
 * transaction for the batch. opts.outbox queues each stored event in the outbox in it. */
static int store_save_events(lua_State *L)
{
    lstore *s = check_store(L);
    import_target t = {s->st, l2lua_opt_bool(L, 3, "outbox", 0) ? L2_SAVE_OUTBOX : 0};
    return l2lua_save_events(L, save_batch, &t, &s->lim, s->err);
}

/* store:import(source [, opts]) -> counts | nil, err (see l2lua_import): one write transaction
 * per batch. opts.fill: a cache fill, which the change feed does not report (not news). */
static int store_import(lua_State *L)
{
    lstore *s = check_store(L);
    import_target t = {s->st, l2lua_opt_bool(L, 3, "fill", 0) ? L2_SAVE_FILL : 0};
    return l2lua_import(L, save_batch, &t, &s->lim, s->err);
}

/* store:export(sink [, pubkeys [, opts]]) -> n | nil, err: every event, or those whose pubkey or
 * a `p` tag names one of pubkeys, as JSON lines, streamed in storage order. opts.progress(n) is
 * called every 10,000 events. */
static int store_export(lua_State *L)
{
    lstore *s = check_store(L);
    l2lua_pubkeys pk;
    l2lua_sink *sink;
    uint64_t serial;
    const void *data;
    size_t len;
    if (l2lua_pubkeys_arg(L, 3, &pk, s->err) || !(sink = l2lua_sink_open(L, 2, 4, s->err)))
        return l2lua_refuse(L, 0, s->err);
    if (l2_store_iter_begin(s->st, s->err)) {
        l2lua_sink_close(sink, s->err);
        return l2lua_refuse(L, 0, s->err);
    }
    int rc = 0;
    while (rc == 0 && l2_store_iter_next(s->st, &serial, &data, &len)) {
        if (l2_event_decode_bin(&s->ev, data, len, s->err) || !l2lua_pubkeys_match(&pk, &s->ev)) continue;
        s->out.len = 0;
        if (l2_event_encode_json(&s->ev, &s->out)) {
            l2_store_read_end(s->st);
            return luaL_error(L, "layer2: out of memory");
        }
        rc = l2lua_sink_write(sink, s->out.data, s->out.len);
    }
    l2_store_read_end(s->st);
    if (l2lua_sink_close(sink, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)sink->count);
    return 1;
}

/* store:changes_since(cursor [, max [, opts]]) -> changes, cursor */
static int store_changes(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t after, max;
    int json;
    l2lua_changes_args(L, &after, &max, &json);
    l2_change *ch = malloc((size_t)max * sizeof *ch);
    size_t n;
    if (!ch) return luaL_error(L, "layer2: out of memory");
    if (l2_store_changes(s->st, (uint64_t)after, (size_t)max, ch, &n, s->err)) {
        free(ch);
        return l2lua_refuse(L, 0, s->err);
    }
    static const char *ops[] = {"?", "saved", "replaced", "deleted"};
    lua_createtable(L, (int)n, 0);
    uint64_t cursor = (uint64_t)after;
    for (size_t i = 0; i < n; i++) {
        const void *data;
        size_t len;
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)ch[i].seq);
        lua_setfield(L, -2, "seq");
        lua_pushstring(L, ops[ch[i].op <= 3 ? ch[i].op : 0]);
        lua_setfield(L, -2, "op");
        if (ch[i].have_id) {
            l2lua_push_hex(L, ch[i].id, 32);
            lua_setfield(L, -2, "id");
        }
        if (ch[i].op == L2_CHANGE_SAVED && l2_store_body(s->st, ch[i].serial, &data, &len) == 0 &&
            push_body(L, s, data, len, json) == 0)
            lua_setfield(L, -2, "event");
        lua_rawseti(L, -2, (int)i + 1);
        cursor = ch[i].seq;
    }
    l2_store_read_end(s->st);
    free(ch);
    lua_pushinteger(L, (lua_Integer)cursor);
    return 2;
}

/* store:prune_changes(keep) -> pruned */
static int store_prune_changes(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t keep;
    uint64_t pruned;
    if (l2lua_int64(L, 2, &keep) || keep < 0) return luaL_argerror(L, 2, "a count expected");
    if (l2_store_prune_changes(s->st, (uint64_t)keep, &pruned, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)pruned);
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
    lstore *s = check_store(L);
    const char *dir = luaL_checkstring(L, 2);
    int compact = l2lua_opt_bool(L, 3, "compact", 1), with_progress = 0;
    if (lua_type(L, 3) == LUA_TTABLE) {
        lua_getfield(L, 3, "progress");
        with_progress = lua_isfunction(L, -1);
        if (!with_progress) lua_pop(L, 1);
    }
    l2_store_stats st;
    if (l2_store_stats_get(s->st, &st, s->err)) return l2lua_refuse(L, 0, s->err);
    if (l2_store_copy(s->st, dir, compact, with_progress ? copy_progress : NULL, L, s->err))
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

static int store_stats(lua_State *L)
{
    lstore *s = check_store(L);
    l2_store_stats st;
    if (l2_store_stats_get(s->st, &st, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_createtable(L, 0, 9);
#define FIELD(name)                                    \
    lua_pushinteger(L, (lua_Integer)st.name);          \
    lua_setfield(L, -2, #name)
    FIELD(events);
    FIELD(stubs);
    FIELD(outbox);
    FIELD(free_bytes);
    FIELD(index_entries);
    FIELD(tombstones);
    FIELD(changes);
    FIELD(last_seq);
    FIELD(used_bytes);
    FIELD(map_bytes);
    FIELD(file_bytes);
    FIELD(page_size);
#undef FIELD
    return 1;
}

/* store:check() -> ok, problems */
static int store_check(lua_State *L)
{
    lstore *s = check_store(L);
    uint64_t n;
    lua_newtable(L);
    if (l2_store_check(s->st, l2lua_problem, L, &n, s->err)) return l2lua_refuse(L, 0, s->err);
    return l2lua_check_result(L, n);
}

static int store_sweep(lua_State *L)
{
    lstore *s = check_store(L);
    uint64_t removed;
    if (l2_store_sweep(s->st, l2lua_time_arg(L, 2), &removed, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)removed);
    return 1;
}

static int store_nuke(lua_State *L)
{
    lstore *s = check_store(L);
    if (l2_store_nuke(s->st, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static int store_sync(lua_State *L)
{
    lstore *s = check_store(L);
    if (l2_store_sync(s->st, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static int store_path(lua_State *L)
{
    lua_pushstring(L, l2_store_path(check_store(L)->st));
    return 1;
}

static int store_is_closed(lua_State *L)
{
    lua_pushboolean(L, ((lstore *)luaL_checkudata(L, 1, STORE_MT))->st == NULL);
    return 1;
}

/* ---- the cache (L1) side, used by the two-level backend ---- */

/* store:candidates(max [, "access" | "created_at"]) -> {{id, pubkey, kind, created_at, size,
 * last_access (ms), hits}, ...}, coldest first */
static int store_candidates(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t max = 0;
    if (l2lua_int64(L, 2, &max) || max < 1) return luaL_argerror(L, 2, "a positive count expected");
    const char *order = luaL_optstring(L, 3, "access");
    int by_created = strcmp(order, "created_at") == 0;
    if (!by_created && strcmp(order, "access") != 0) return luaL_argerror(L, 3, "\"access\" or \"created_at\" expected");
    if (max > 100000) max = 100000;
    l2_candidate *c = malloc((size_t)max * sizeof *c);
    size_t n;
    if (!c) return luaL_error(L, "layer2: out of memory");
    if (l2_store_candidates(s->st, by_created, (size_t)max, c, &n, s->err)) {
        free(c);
        return l2lua_refuse(L, 0, s->err);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 7);
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
        lua_rawseti(L, -2, (int)i + 1);
    }
    free(c);
    return 1;
}

/* store:evict(ids [, "stub" | "delete"]) -> evicted, bytes freed */
static int store_evict(lua_State *L)
{
    lstore *s = check_store(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    const char *mode = luaL_optstring(L, 3, "stub");
    int delete_mode = strcmp(mode, "delete") == 0;
    if (!delete_mode && strcmp(mode, "stub") != 0) return luaL_argerror(L, 3, "\"stub\" or \"delete\" expected");
    size_t n = lua_rawlen(L, 2), k = 0;
    uint8_t (*ids)[32] = lua_newuserdatauv(L, n * 32 + 1, 0);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, (int)i);
        size_t len;
        const char *p = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
        if (p && len == 64 && l2_hex_decode(ids[k], p, 32) == 0) k++;
        lua_pop(L, 1);
    }
    uint64_t evicted, freed;
    if (l2_store_evict(s->st, (const uint8_t (*)[32])ids, k, delete_mode, &evicted, &freed, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)evicted);
    lua_pushinteger(L, (lua_Integer)freed);
    return 2;
}

/* store:drop_stubs(max) -> dropped, horizon (the created_at past the newest dropped; 0 if none) */
static int store_drop_stubs(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t max = 0, horizon;
    uint64_t dropped;
    if (l2lua_int64(L, 2, &max) || max < 0) return luaL_argerror(L, 2, "a count expected");
    if (l2_store_drop_stubs(s->st, (size_t)max, &dropped, &horizon, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)dropped);
    lua_pushinteger(L, (lua_Integer)horizon);
    return 2;
}

/* store:revive(events) -> n: full bodies (tables or JSON, trusted) back in place of stubs */
static int store_revive(lua_State *L)
{
    lstore *s = check_store(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t n = lua_rawlen(L, 2), total = 0;
    for (size_t i = 1; i <= n; i++) {
        l2_event *evp = &s->ev;
        uint64_t revived;
        lua_rawgeti(L, 2, (int)i);
        int rc = l2lua_event_arg(L, lua_gettop(L), &s->ev, L2_HAVE_ALL, &s->lim, s->err);
        if (rc == 0 && l2_store_revive(s->st, &evp, 1, &revived, s->err)) return l2lua_refuse(L, 0, s->err);
        lua_pop(L, 1);
        if (rc == 0) total += revived;
    }
    lua_pushinteger(L, (lua_Integer)total);
    return 1;
}

/* store:meta(key) -> value | nil; store:meta(key, value) -> true */
static int store_meta(lua_State *L)
{
    lstore *s = check_store(L);
    const char *key = luaL_checkstring(L, 2);
    if (lua_gettop(L) >= 3) {
        size_t n;
        const char *v = luaL_checklstring(L, 3, &n);
        if (l2_store_meta_set(s->st, key, v, n, s->err)) return l2lua_refuse(L, 0, s->err);
        lua_pushboolean(L, 1);
        return 1;
    }
    int found;
    if (l2_store_meta_get(s->st, key, &s->out, &found, s->err)) return l2lua_refuse(L, 0, s->err);
    if (found) lua_pushlstring(L, s->out.data ? s->out.data : "", s->out.len);
    else lua_pushnil(L);
    return 1;
}

/* store:outbox([max [, opts]]) -> {{seq, op = "save", event} | {seq, op = "delete", id, tombstone}} */
static int store_outbox(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t max = 1000;
    if (!lua_isnoneornil(L, 2) && (l2lua_int64(L, 2, &max) || max < 1)) return luaL_argerror(L, 2, "a count expected");
    int json = l2lua_opt_bool(L, 3, "json", 0);
    if (max > 100000) max = 100000;
    l2_outbox_item *items = malloc((size_t)max * sizeof *items);
    size_t n;
    if (!items) return luaL_error(L, "layer2: out of memory");
    if (l2_store_outbox_list(s->st, (size_t)max, items, &n, s->err)) {
        free(items);
        return l2lua_refuse(L, 0, s->err);
    }
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = items[i].data;
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)items[i].seq);
        lua_setfield(L, -2, "seq");
        if (items[i].len > 1 && p[0] == 'S' && push_body(L, s, p + 1, items[i].len - 1, json) == 0) {
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
    l2_store_read_end(s->st);
    free(items);
    return 1;
}

static int store_outbox_ack(lua_State *L)
{
    lstore *s = check_store(L);
    int64_t seq;
    if (l2lua_int64(L, 2, &seq) || seq < 1) return luaL_argerror(L, 2, "an outbox seq expected");
    if (l2_store_outbox_ack(s->st, (uint64_t)seq, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg store_methods[] = {
    {"save_event", store_save}, {"save_events", store_save_events}, {"query_events", store_query}, {"count_events", store_count},
    {"delete_event", store_delete}, {"import", store_import}, {"export", store_export},
    {"changes_since", store_changes}, {"stats", store_stats}, {"check", store_check},
    {"sweep", store_sweep}, {"nuke", store_nuke}, {"sync", store_sync}, {"path", store_path},
    {"close", store_close}, {"is_closed", store_is_closed}, {"candidates", store_candidates},
    {"evict", store_evict}, {"drop_stubs", store_drop_stubs}, {"revive", store_revive}, {"meta", store_meta},
    {"outbox", store_outbox}, {"outbox_ack", store_outbox_ack}, {"prune_changes", store_prune_changes},
    {"copy", store_copy},
    {NULL, NULL},
};

void l2lua_open_lmdb(lua_State *L)
{
    if (luaL_newmetatable(L, STORE_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, store_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, store_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, store_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, store_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, lmdb_open);
    lua_setfield(L, -2, "open");
}
