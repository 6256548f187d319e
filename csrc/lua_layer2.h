/* The binding files' entry points, called once by luaopen_layer2_core (lua_layer2.c): each pushes
 * its library or class. The only calls between binding files go this way; the helpers they share
 * are lua_args.h and lua_store.h. */
#ifndef L2_LUA_LAYER2_H
#define L2_LUA_LAYER2_H

#include "compat.h"

/* Registers the store methods' class (lua_store.c). */
void l2lua_open_store_common(lua_State *L);
/* Push the layer2.lmdb and layer2.postgres tables (lua_lmdb.c, lua_pg.c). */
void l2lua_open_lmdb(lua_State *L);
void l2lua_open_pg(lua_State *L);
/* Pushes layer2.core.backend_private (lua_backend.c): the two-level store's class and helpers. */
void l2lua_open_backend(lua_State *L);
/* Pushes layer2.core.testing.backend (lua_backend.c): internals only the specs read. */
void l2lua_open_backend_testing(lua_State *L);
/* Pushes layer2.fanout, the constructor of the live fan-out index (lua_fanout.c). */
void l2lua_open_fanout(lua_State *L);
/* Pushes layer2.negentropy, the constructor of a NIP-77 session (lua_negentropy.c). */
void l2lua_open_negentropy(lua_State *L);
/* Pushes layer2.child, which starts a child process spoken to in lines (lua_child.c). */
void l2lua_open_child(lua_State *L);

#endif
