/* The few Lua C API differences between Lua 5.4 and LuaJIT (Lua 5.1 ABI) that the binding uses.
 * LuaJIT 2.1 already provides luaL_setfuncs, luaL_testudata and luaL_setmetatable. */
#ifndef L2_COMPAT_H
#define L2_COMPAT_H

#include <lauxlib.h>
#include <lua.h>

#if LUA_VERSION_NUM < 502
#define lua_rawlen lua_objlen
#define lua_absindex(L, i) ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#endif

#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, size, nuv) lua_newuserdata((L), (size))
/* a userdata's one user value: its environment table under the 5.1 ABI */
#define l2lua_getuservalue(L, idx) lua_getfenv((L), (idx))
#define l2lua_setuservalue(L, idx) lua_setfenv((L), (idx))
#else
#define l2lua_getuservalue(L, idx) lua_getiuservalue((L), (idx), 1)
#define l2lua_setuservalue(L, idx) lua_setiuservalue((L), (idx), 1)
#endif

#ifndef LUA_FILEHANDLE /* LuaJIT declares it in lualib.h */
#define LUA_FILEHANDLE "FILE*"
#endif

#endif
