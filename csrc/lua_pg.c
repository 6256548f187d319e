/* layer2.postgres: the PostgreSQL store as a Lua userdata, with the methods of the LMDB store. */
#include <string.h>

#include "lua_layer2.h"
#include "pgstore.h"

#define PG_MT "layer2.postgres.store"

typedef struct {
    l2_pg *pg;
    l2_event ev;
    l2lua_filters filters;
    l2_buf scratch;
    l2_limits lim;
    int64_t max_limit;
    char err[L2_ERRLEN];
} lpg;

static lpg *check_pg(lua_State *L)
{
    lpg *s = luaL_checkudata(L, 1, PG_MT);
    if (!s->pg) luaL_error(L, "layer2: attempt to use a closed store");
    return s;
}

static int pg_close(lua_State *L)
{
    lpg *s = luaL_checkudata(L, 1, PG_MT);
    if (s->pg) l2_pg_close(s->pg);
    s->pg = NULL;
    l2lua_filters_free(&s->filters);
    l2_event_free(&s->ev);
    l2_buf_free(&s->scratch);
    return 0;
}

static int pg_tostring(lua_State *L)
{
    lpg *s = luaL_checkudata(L, 1, PG_MT);
    if (s->pg) lua_pushfstring(L, "layer2.postgres store (%s)", l2_pg_name(s->pg));
    else lua_pushliteral(L, "layer2.postgres store (closed)");
    return 1;
}

/* layer2.postgres.open(conninfo [, opts]) -> store | nil, err. conninfo: "host=... dbname=..." or
 * a postgres:// URI (libpq's). opts: max_limit (500), max_filters (500). */
static int pg_open(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    int64_t max_limit = l2lua_opt_int(L, 2, "max_limit", 500);
    int64_t max_filters = l2lua_opt_int(L, 2, "max_filters", 500);
    lpg *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    l2_event_init(&s->ev);
    l2_buf_init(&s->scratch);
    l2lua_filters_init(&s->filters, (size_t)max_filters);
    s->lim = l2_default_limits;
    s->max_limit = max_limit;
    luaL_setmetatable(L, PG_MT);
    if (l2_pg_open(&s->pg, conninfo, s->err)) return l2lua_refuse(L, 0, s->err);
    return 1;
}

/* Pushes stored JSON as it is, or as an event table. */
static int push_json(lua_State *L, lpg *s, const char *json, size_t n, int as_json)
{
    if (as_json) {
        lua_pushlstring(L, json, n);
        return 0;
    }
    if (l2_event_parse_json(&s->ev, json, n, L2_HAVE_ALL, &s->lim, s->err)) return -1;
    l2lua_push_event(L, &s->ev);
    return 0;
}

static int read_filters(lua_State *L, lpg *s)
{
    return l2lua_read_filters(L, 2, &s->filters, s->err) || l2lua_filters_unsupported(&s->filters, s->err);
}

/* store:query_events(filters [, {json, max_limit, now}]) -> events | nil, err */
static int pg_query(lua_State *L)
{
    lpg *s = check_pg(L);
    int json = l2lua_opt_bool(L, 3, "json", 0);
    int64_t max_limit = l2lua_opt_int(L, 3, "max_limit", s->max_limit), now = l2lua_opt_now(L, 3);
    size_t rows;
    if (read_filters(L, s)) return l2lua_refuse(L, 0, s->err);
    if (l2_pg_query(s->pg, s->filters.v, s->filters.n, max_limit, now, &rows, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_createtable(L, (int)rows, 0);
    for (size_t i = 0; i < rows; i++) {
        size_t n;
        const char *p = l2_pg_value(s->pg, i, 0, &n);
        if (!p || push_json(L, s, p, n, json)) return l2lua_refuse(L, 0, "error: PostgreSQL: a stored event is unreadable");
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

static int pg_count(lua_State *L)
{
    lpg *s = check_pg(L);
    uint64_t n;
    if (read_filters(L, s)) return l2lua_refuse(L, 0, s->err);
    if (l2_pg_count(s->pg, s->filters.v, s->filters.n, l2lua_opt_now(L, 3), &n, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* store:save_event(ev [, {verify = true, now}]) -> true | false, msg */
static int pg_save(lua_State *L)
{
    lpg *s = check_pg(L);
    int verify = l2lua_opt_bool(L, 3, "verify", 1);
    l2_save_result res;
    l2_event *evp = &s->ev;
    if (l2lua_event_arg(L, 2, &s->ev, L2_HAVE_ALL | (verify ? L2_LENIENT_IDSIG : 0), &s->lim, s->err))
        return l2lua_refuse(L, 1, s->err);
    s->scratch.len = 0;
    if (verify && l2_event_verify(&s->ev, &s->scratch, s->err)) return l2lua_refuse(L, 1, s->err);
    if (l2_pg_save_batch(s->pg, &evp, 1, l2lua_opt_now(L, 3), &res, s->err)) return l2lua_refuse(L, 1, s->err);
    const char *msg = l2_save_message(res.status);
    if (msg) return l2lua_refuse(L, 1, msg);
    lua_pushboolean(L, 1);
    return 1;
}

/* store:delete_event(id [, no_tombstone]) -> true | false, msg */
static int pg_delete(lua_State *L)
{
    lpg *s = check_pg(L);
    uint8_t id[32];
    size_t n;
    int found;
    const char *p = luaL_checklstring(L, 2, &n);
    if (n != 64 || l2_hex_decode(id, p, 32)) return l2lua_refuse(L, 1, "invalid: id must be 64 lowercase hex characters");
    if (l2_pg_delete(s->pg, id, !lua_toboolean(L, 3), &found, s->err)) return l2lua_refuse(L, 1, s->err);
    if (!found) return l2lua_refuse(L, 1, "not found: no stored event has this id");
    lua_pushboolean(L, 1);
    return 1;
}

static int save_batch(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_save_result *res, char *err)
{
    return l2_pg_save_batch(ud, evs, n, now, res, err);
}

/* store:save_events(list [, opts]) -> verdicts | nil, err (see l2lua_save_events): one transaction. */
static int pg_save_events(lua_State *L)
{
    lpg *s = check_pg(L);
    return l2lua_save_events(L, save_batch, s->pg, &s->lim, s->err);
}

/* store:import(source [, opts]) -> counts | nil, err: each batch through COPY, one transaction;
 * then fresh planner statistics, without which PostgreSQL picks poor plans for what came in. */
static int pg_import(lua_State *L)
{
    lpg *s = check_pg(L);
    int n = l2lua_import(L, save_batch, s->pg, &s->lim, s->err);
    if (lua_type(L, -1) == LUA_TTABLE && l2_pg_analyze(s->pg, s->err)) return l2lua_refuse(L, 0, s->err);
    return n;
}

/* store:export(sink [, pubkeys [, opts]]) -> n | nil, err: in insertion order, through a cursor. */
static int pg_export(lua_State *L)
{
    lpg *s = check_pg(L);
    l2lua_pubkeys pk;
    l2lua_sink *sink;
    size_t rows;
    if (l2lua_pubkeys_arg(L, 3, &pk, s->err) || !(sink = l2lua_sink_open(L, 2, 4, s->err)))
        return l2lua_refuse(L, 0, s->err);
    if (l2_pg_export_begin(s->pg, (const uint8_t (*)[32])pk.keys, pk.n, pk.filtered, s->err)) {
        l2lua_sink_close(sink, s->err);
        return l2lua_refuse(L, 0, s->err);
    }
    int rc = 0; /* -1: PostgreSQL failed (s->err) or a write did (the sink knows) */
    while (rc == 0 && (rc = l2_pg_export_next(s->pg, &rows, s->err)) == 0 && rows) {
        for (size_t i = 0; rc == 0 && i < rows; i++) {
            size_t n;
            const char *p = l2_pg_value(s->pg, i, 0, &n);
            if (p) rc = l2lua_sink_write(sink, p, n);
        }
    }
    l2_pg_export_end(s->pg);
    if (l2lua_sink_close(sink, s->err) || rc) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)sink->count);
    return 1;
}

/* store:changes_since(cursor [, max [, {json}]]) -> {{seq, op, id, event}...}, cursor */
static int pg_changes(lua_State *L)
{
    lpg *s = check_pg(L);
    int64_t after, max;
    int json;
    size_t rows;
    l2lua_changes_args(L, &after, &max, &json);
    if (l2_pg_changes(s->pg, (uint64_t)after, (size_t)max, &rows, s->err)) return l2lua_refuse(L, 0, s->err);
    static const char *ops[] = {"?", "saved", "replaced", "deleted"};
    int64_t cursor = after;
    lua_createtable(L, (int)rows, 0);
    for (size_t i = 0; i < rows; i++) {
        size_t n;
        int64_t op = l2_pg_int(s->pg, i, 1);
        cursor = l2_pg_int(s->pg, i, 0);
        lua_createtable(L, 0, 4);
        lua_pushinteger(L, (lua_Integer)cursor);
        lua_setfield(L, -2, "seq");
        lua_pushstring(L, ops[op >= 1 && op <= 3 ? op : 0]);
        lua_setfield(L, -2, "op");
        const char *id = l2_pg_value(s->pg, i, 2, &n);
        if (id && n == 32) {
            l2lua_push_hex(L, (const uint8_t *)id, 32);
            lua_setfield(L, -2, "id");
        }
        const char *p = l2_pg_value(s->pg, i, 3, &n);
        if (p && push_json(L, s, p, n, json) == 0) lua_setfield(L, -2, "event");
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_pushinteger(L, (lua_Integer)cursor);
    return 2;
}

static int pg_stats(lua_State *L)
{
    lpg *s = check_pg(L);
    l2_pg_stats st;
    if (l2_pg_stats_get(s->pg, &st, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_createtable(L, 0, 8);
#define FIELD(name)                                    \
    lua_pushinteger(L, (lua_Integer)st.name);          \
    lua_setfield(L, -2, #name)
    FIELD(events);
    FIELD(tombstones);
    FIELD(changes);
    FIELD(last_seq);
    FIELD(disk_bytes);
    FIELD(reconnects);
    FIELD(backend_pid);
#undef FIELD
    return 1;
}

static int pg_check(lua_State *L)
{
    lpg *s = check_pg(L);
    uint64_t n;
    lua_newtable(L);
    if (l2_pg_check(s->pg, l2lua_problem, L, &n, s->err)) return l2lua_refuse(L, 0, s->err);
    return l2lua_check_result(L, n);
}

static int pg_sweep(lua_State *L)
{
    lpg *s = check_pg(L);
    uint64_t removed;
    if (l2_pg_sweep(s->pg, l2lua_time_arg(L, 2), &removed, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)removed);
    return 1;
}

static int pg_nuke(lua_State *L)
{
    lpg *s = check_pg(L);
    if (l2_pg_nuke(s->pg, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* Every save is its own committed transaction: there is nothing left to flush. */
static int pg_sync(lua_State *L)
{
    check_pg(L);
    lua_pushboolean(L, 1);
    return 1;
}

static int pg_path(lua_State *L)
{
    lua_pushstring(L, l2_pg_name(check_pg(L)->pg));
    return 1;
}

static int pg_is_closed(lua_State *L)
{
    lua_pushboolean(L, ((lpg *)luaL_checkudata(L, 1, PG_MT))->pg == NULL);
    return 1;
}

/* store:listen() -> true: from now on store:wait() can see the change signal (NOTIFY). */
static int pg_listen(lua_State *L)
{
    lpg *s = check_pg(L);
    if (l2_pg_listen(s->pg, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* store:wait([seconds]) -> notified: blocks up to seconds (0 by default) for the change signal. */
static int pg_wait(lua_State *L)
{
    lpg *s = check_pg(L);
    lua_Number secs = luaL_optnumber(L, 2, 0);
    int notified;
    if (secs < 0) secs = 0;
    if (secs > 3600) secs = 3600;
    if (l2_pg_wait(s->pg, (int)(secs * 1000 + 0.5), &notified, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, notified);
    return 1;
}

static const luaL_Reg pg_methods[] = {
    {"save_event", pg_save}, {"save_events", pg_save_events}, {"query_events", pg_query}, {"count_events", pg_count},
    {"delete_event", pg_delete}, {"import", pg_import}, {"export", pg_export},
    {"changes_since", pg_changes}, {"stats", pg_stats}, {"check", pg_check}, {"sweep", pg_sweep},
    {"nuke", pg_nuke}, {"sync", pg_sync}, {"path", pg_path}, {"close", pg_close}, {"is_closed", pg_is_closed},
    {"listen", pg_listen}, {"wait", pg_wait},
    {NULL, NULL},
};

void l2lua_open_pg(lua_State *L)
{
    if (luaL_newmetatable(L, PG_MT)) {
        lua_newtable(L);
        luaL_setfuncs(L, pg_methods, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, pg_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, pg_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, pg_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, pg_open);
    lua_setfield(L, -2, "open");
}
