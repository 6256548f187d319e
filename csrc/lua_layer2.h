/* Shared by the binding files (the only files that see Lua headers). */
#ifndef L2_LUA_LAYER2_H
#define L2_LUA_LAYER2_H

#include "compat.h"
#include "event.h"
#include "filter.h"

/* Pushes nil (or false when `first`) and err; returns 2. */
int l2lua_refuse(lua_State *L, int first, const char *err);
/* Raises unless the argument is a table or a string. */
void l2lua_check_table_or_string(lua_State *L, int idx);
/* An integral number (integral floats too): 0, -1 not a number, -2 not integral. */
int l2lua_int64(lua_State *L, int idx, int64_t *out);
/* Reads an event (table or wire JSON) at idx; 0, or -1 with "invalid: ..." in err. */
int l2lua_event_arg(lua_State *L, int idx, l2_event *ev, unsigned required, const l2_limits *lim, char *err);
/* Reads one filter (table or JSON object) at idx. */
int l2lua_filter_arg(lua_State *L, int idx, l2_filter *f, const l2_filter_limits *lim, char *err);
void l2lua_push_event(lua_State *L, const l2_event *ev);
void l2lua_push_hex(lua_State *L, const uint8_t *b, size_t n);

/* Pushes the layer2.lmdb table (lua_lmdb.c). */
void l2lua_open_lmdb(lua_State *L);

#endif
