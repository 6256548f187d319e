/* lua_backend.h: what the backend's binding (lua_backend.c) and the store interface over a Lua
 * object (lua_luastore.c) share; private to them. */
#ifndef L2_LUA_BACKEND_H
#define L2_LUA_BACKEND_H

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "backend.h"
#include "lua_layer2.h"
#include "lua_store.h"

#define BACKEND_MT "layer2.backend" /* the class: every handle's metatable */

typedef struct {
    l2_backend *b;  /* NULL once closed */
    lua_State *L;   /* the state of the call under way (hooks and a Lua L2 run in it) */
    int ref;        /* registry: {l1, l2, state = {}, hooks = {}, handlers = {}, removal_handlers = {},
                     * strings = {}} */
    int own_l2;     /* close L2 with this handle */
    int delegating; /* reads that need L2 go through the Lua side's `delegate` (backend.lua) */
    int nhandlers[2]; /* on_event (HANDLERS_EVENT) and on_removed handlers (HANDLERS_REMOVED), in the
                       * registry table's `handlers` and `removal_handlers` (false: taken off) */
    int firing;     /* handlers are being called: one taken off leaves its slot false till they end */
    l2_store_if luavt; /* the interface over an L2 written in Lua: what this one has */
    const l2_store_if *l2vt; /* L2 through its interface (NULL for none) */
    void *l2st;
    l2lua_store *l1;
    l2_event ev;
    l2lua_filters filters;
    int filters_busy; /* `filters` holds a call's filters (a Lua L2 may query this handle meanwhile) */
    l2_limits lim;
    int64_t max_limit;
    l2_buf frames, frame_json; /* query_frames' answer and one event's JSON */
    int frames_busy;           /* they hold a call's (a Lua L2 may query this handle meanwhile) */
    char dir[1024];
    char err[L2_ERRLEN];
} backend_ud;

/* ---- lua_luastore.c: calls from C into Lua (lua_backend.c calls them; they call nothing of it) ---- */

/* Whether this thread runs Lua called from the C core (a hook, a Lua L2's method): code that would
 * yield (a call into nginx's thread pool) asks, since nothing can yield across a C call under LuaJIT. */
int luabk_inside_c(void);

/* lua_pcall, counted in luabk_inside_c. */
int luabk_pcall_from_c(lua_State *L, int nargs, int nresults);

/* Pushes field `name` of the registry table (1: L1, 2: L2, or a named one). */
void luabk_push_part(lua_State *L, backend_ud *s, int i, const char *name);

/* A 64-hex id at idx into id: 1, or 0 when there is none. */
int luabk_id_arg(lua_State *L, int idx, uint8_t id[32]);

/* The call's results (a, b) at -2, -1 say the L2 failed (raised: the error at -2, or nil/false and
 * an "error:" message or none): 1 with the message in err. */
int luabk_call_failed(lua_State *L, int rc, char *err);

/* Pushes l2[method] and l2, or returns 0 (nothing pushed) when it has none. */
int luabk_push_method(backend_ud *s, const char *method);

extern const l2_store_if luabk_luastore_if;

#endif
