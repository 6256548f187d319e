/* layer2.child(cmd): a child process spoken to in lines (child.h) as a Lua userdata, for a relay's
 * write-policy plugin in strfry's protocol (lua/layer2/strfry_plugin.lua). Its calls block: under
 * OpenResty they run in a thread of nginx's pool. */
#include <string.h>

#include "child.h"
#include "lua_args.h"
#include "lua_layer2.h"

#define CHILD_MT "layer2.child"

typedef struct {
    l2_child *c; /* NULL once closed */
} child_ud;

static child_ud *check_child(lua_State *L)
{
    child_ud *u = luaL_checkudata(L, 1, CHILD_MT);
    if (!u->c) luaL_error(L, "layer2: attempt to use a closed child process");
    return u;
}

/* the optional timeout at idx, in ms (10 s, strfry's, by default) */
static int opt_timeout(lua_State *L, int idx)
{
    lua_Number timeout = luaL_optnumber(L, idx, 10);
    luaL_argcheck(L, timeout > 0 && timeout <= 86400, idx, "seconds, more than 0 and at most 86400");
    return (int)(timeout * 1000);
}

/* child:ask(line[, timeout_seconds]) -> the line it answers | nil, err. The line goes with a
 * newline; the answer comes without. Default timeout: 10 s (strfry's). After a failure the child
 * is of no further use: close it. */
static int ch_ask(lua_State *L)
{
    child_ud *u = check_child(L);
    size_t len;
    const char *line = luaL_checklstring(L, 2, &len);
    int timeout = opt_timeout(L, 3);
    if (memchr(line, '\n', len)) return luaL_argerror(L, 2, "a line has no newline of its own");
    const char *reply;
    size_t rlen;
    char err[L2_ERRLEN];
    if (l2_child_ask(u->c, line, len, timeout, &reply, &rlen, err)) return l2lua_refuse(L, 0, err);
    lua_pushlstring(L, reply, rlen);
    return 1;
}

/* child:read_line([timeout_seconds]) -> the next line it writes | nil, err: one after an answer
 * (a line that was not the answer) */
static int ch_read_line(lua_State *L)
{
    child_ud *u = check_child(L);
    int timeout = opt_timeout(L, 2);
    const char *reply;
    size_t rlen;
    char err[L2_ERRLEN];
    if (l2_child_read(u->c, timeout, &reply, &rlen, err)) return l2lua_refuse(L, 0, err);
    lua_pushlstring(L, reply, rlen);
    return 1;
}

/* child:stale() -> whether its command is a file edited (or removed) since it started */
static int ch_stale(lua_State *L)
{
    lua_pushboolean(L, l2_child_stale(check_child(L)->c));
    return 1;
}

/* child:pid() */
static int ch_pid(lua_State *L)
{
    lua_pushinteger(L, l2_child_pid(check_child(L)->c));
    return 1;
}

/* child:close(): its input closed, reaped (SIGTERM a second later, SIGKILL after another). Again:
 * nothing. */
static int ch_close(lua_State *L)
{
    child_ud *u = luaL_checkudata(L, 1, CHILD_MT);
    l2_child_stop(u->c);
    u->c = NULL;
    return 0;
}

static int ch_is_closed(lua_State *L)
{
    lua_pushboolean(L, !((child_ud *)luaL_checkudata(L, 1, CHILD_MT))->c);
    return 1;
}

static int ch_tostring(lua_State *L)
{
    child_ud *u = luaL_checkudata(L, 1, CHILD_MT);
    if (u->c) lua_pushfstring(L, "layer2 child process %d", l2_child_pid(u->c));
    else lua_pushliteral(L, "layer2 child process (closed)");
    return 1;
}

static const luaL_Reg child_methods[] = {
    {"ask", ch_ask}, {"read_line", ch_read_line}, {"stale", ch_stale}, {"pid", ch_pid}, {"close", ch_close}, {"is_closed", ch_is_closed},
    {NULL, NULL},
};

/* layer2.child(cmd) -> a child | nil, err: `/bin/sh -c cmd`, its stdin and stdout ours */
static int ch_new(lua_State *L)
{
    const char *cmd = luaL_checkstring(L, 1);
    luaL_argcheck(L, *cmd, 1, "a command");
    child_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->c = NULL;
    luaL_setmetatable(L, CHILD_MT);
    char err[L2_ERRLEN];
    if (l2_child_start(&u->c, cmd, err)) return l2lua_refuse(L, 0, err);
    return 1;
}

void l2lua_open_child(lua_State *L)
{
    l2lua_class(L, CHILD_MT, child_methods, NULL, ch_close, ch_tostring);
    lua_pop(L, 1);
    lua_pushcfunction(L, ch_new);
}
