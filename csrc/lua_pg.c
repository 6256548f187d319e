/* layer2.postgres: the PostgreSQL store as a Lua userdata (the store methods are lua_store.c's), and
 * what only it has: the change signal and ephemeral events across nodes (listen, wait, publish). */
#include <string.h>

#include "lua_layer2.h"
#include "lua_store.h"
#include "pgstore.h"

#define PG_MT "layer2.postgres.store"

/* The open PostgreSQL store at 1 (its own methods take no other store). */
static l2_pg *check_pg(lua_State *L, l2lua_store **out)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    if (s->vt != &l2_pg_store_if) luaL_argerror(L, 1, "a layer2.postgres store expected");
    *out = s;
    return s->st;
}

/* layer2.postgres.open(conninfo [, opts]) -> store | nil, err. conninfo: "host=... dbname=..." or
 * a postgres:// URI (libpq's). opts: max_limit (500), max_filters (500). */
static int pg_open(lua_State *L)
{
    const char *conninfo = luaL_checkstring(L, 1);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    static const char *const names[] = {"max_limit", "max_filters", NULL};
    l2lua_check_options(L, 2, "layer2.postgres.open", names);
    l2lua_store *s = l2lua_store_new(L, PG_MT, &l2_pg_store_if, 2);
    l2_pg *pg;
    if (l2_pg_open(&pg, conninfo, s->err)) return l2lua_refuse(L, 0, s->err);
    s->st = pg;
    return 1;
}

/* store:listen() -> true: from now on store:wait() can see the change signal (NOTIFY). */
static int pg_listen(lua_State *L)
{
    l2lua_store *s;
    l2_pg *pg = check_pg(L, &s);
    if (l2_pg_listen(pg, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static void push_payload(void *ud, const char *payload, size_t len)
{
    lua_State *L = ud;
    lua_pushlstring(L, payload, len);
    lua_rawseti(L, -2, (int)lua_rawlen(L, -2) + 1);
}

/* store:wait([seconds]) -> notified, ephemeral: blocks up to seconds (0 by default) for the change
 * signal; ephemeral lists the payloads other nodes published meanwhile (store:publish). */
static int pg_wait(lua_State *L)
{
    l2lua_store *s;
    l2_pg *pg = check_pg(L, &s);
    lua_Number secs = luaL_optnumber(L, 2, 0);
    int notified;
    if (secs < 0) secs = 0;
    if (secs > 3600) secs = 3600;
    lua_settop(L, 2);
    lua_newtable(L);
    if (l2_pg_wait(pg, (int)(secs * 1000 + 0.5), &notified, push_payload, L, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, notified);
    lua_insert(L, -2);
    return 2;
}

/* store:publish(payload) -> true | nil, err: to every node listening (an ephemeral event: NOTIFY,
 * under L2_PG_PUBLISH_MAX bytes) */
static int pg_publish(lua_State *L)
{
    l2lua_store *s;
    l2_pg *pg = check_pg(L, &s);
    size_t len;
    const char *payload = luaL_checklstring(L, 2, &len);
    if (l2_pg_publish(pg, payload, len, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static const luaL_Reg pg_methods[] = {
    {"listen", pg_listen}, {"wait", pg_wait}, {"publish", pg_publish}, {NULL, NULL},
};

void l2lua_open_pg(lua_State *L)
{
    l2lua_store_class(L, PG_MT, pg_methods);
    lua_newtable(L);
    lua_pushcfunction(L, pg_open);
    lua_setfield(L, -2, "open");
}
