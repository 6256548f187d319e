/* layer2.fanout(): the live fan-out index (fanout.h) as a Lua userdata, for a relay worker's
 * subscriptions. */
#include <string.h>

#include "fanout.h"
#include "lua_args.h"
#include "lua_layer2.h"

#define FANOUT_MT "layer2.fanout"

typedef struct {
    l2_fanout *fo; /* NULL once closed */
    l2lua_filters filters;
    l2_event ev;
    char err[L2_ERRLEN];
} fanout_ud;

static fanout_ud *check_fanout(lua_State *L)
{
    fanout_ud *u = luaL_checkudata(L, 1, FANOUT_MT);
    if (!u->fo) luaL_error(L, "layer2: attempt to use a closed fanout");
    return u;
}

/* fanout:add(key, filters) -> true | nil, err: the subscription under the integer key (replacing
 * what it had) with its filters (one filter or a list, tables or JSON), checked and compiled once. */
static int fo_add(lua_State *L)
{
    fanout_ud *u = check_fanout(L);
    lua_Integer key = luaL_checkinteger(L, 2);
    lua_settop(L, 3);
    lua_insert(L, 2); /* l2lua_read_filters reads at 2 */
    if (l2lua_read_filters(L, 2, &u->filters, u->err) || l2lua_filters_unsupported(&u->filters, u->err))
        return l2lua_refuse(L, 0, u->err);
    if (l2_fanout_add(u->fo, (int64_t)key, u->filters.v, u->filters.n)) return luaL_error(L, "layer2: out of memory");
    lua_pushboolean(L, 1);
    return 1;
}

/* fanout:remove(key) */
static int fo_remove(lua_State *L)
{
    fanout_ud *u = check_fanout(L);
    l2_fanout_remove(u->fo, (int64_t)luaL_checkinteger(L, 2));
    return 0;
}

/* fanout:count() -> subscriptions held */
static int fo_count(lua_State *L)
{
    fanout_ud *u = check_fanout(L);
    lua_pushinteger(L, (lua_Integer)l2_fanout_count(u->fo));
    return 1;
}

/* fanout:match(event) -> {keys} | nil, err: the keys of the subscriptions a filter of which the
 * event (wire JSON or a table; not verified: it is one the store took) matches, each once. */
static int fo_match(lua_State *L)
{
    fanout_ud *u = check_fanout(L);
    if (l2lua_event_arg(L, 2, &u->ev, L2_HAVE_ALL, &l2_default_limits, u->err)) return l2lua_refuse(L, 0, u->err);
    size_t n;
    const int64_t *keys = l2_fanout_match(u->fo, &u->ev, &n);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        lua_pushinteger(L, (lua_Integer)keys[i]);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

static int fo_close(lua_State *L)
{
    fanout_ud *u = luaL_checkudata(L, 1, FANOUT_MT);
    if (!u->fo) return 0;
    l2_fanout_free(u->fo);
    u->fo = NULL;
    l2lua_filters_free(&u->filters);
    l2_event_free(&u->ev);
    return 0;
}

static int fo_tostring(lua_State *L)
{
    fanout_ud *u = luaL_checkudata(L, 1, FANOUT_MT);
    if (u->fo) lua_pushfstring(L, "layer2 fanout (%d subscriptions)", (int)l2_fanout_count(u->fo));
    else lua_pushliteral(L, "layer2 fanout (closed)");
    return 1;
}

static const luaL_Reg fanout_methods[] = {
    {"add", fo_add}, {"remove", fo_remove}, {"count", fo_count}, {"match", fo_match}, {"close", fo_close},
    {NULL, NULL},
};

/* layer2.fanout() -> a new, empty index */
static int fo_new(lua_State *L)
{
    fanout_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    l2lua_filters_init(&u->filters, 1000);
    l2_event_init(&u->ev);
    luaL_setmetatable(L, FANOUT_MT);
    if (!(u->fo = l2_fanout_new())) return luaL_error(L, "layer2: out of memory");
    return 1;
}

void l2lua_open_fanout(lua_State *L)
{
    l2lua_class(L, FANOUT_MT, fanout_methods, NULL, fo_close, fo_tostring);
    lua_pop(L, 1);
    lua_pushcfunction(L, fo_new);
}
