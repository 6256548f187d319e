/* Argument reading and result pushing (lua_args.c), for every binding file (the only files that
 * see Lua headers). */
#ifndef L2_LUA_ARGS_H
#define L2_LUA_ARGS_H

#include <stdio.h>

#include "compat.h"
#include "event.h"
#include "filter.h"
#include "rules.h"
#include "store.h"
#include "storeif.h"

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
/* Pushes a filter as a Lua table (its normalized form: sorted, deduplicated lists). */
void l2lua_push_filter(lua_State *L, const l2_filter *f);
void l2lua_push_hex(lua_State *L, const uint8_t *b, size_t n);

/* Options of an opts table at index `opts` (any non-table means none): a non-negative integer
 * (raises otherwise), a boolean, `now` (the time when absent), a function's stack index or 0. */
int64_t l2lua_opt_int(lua_State *L, int opts, const char *name, int64_t def);
int l2lua_opt_bool(lua_State *L, int opts, const char *name, int def);
int64_t l2lua_opt_now(lua_State *L, int opts);
int l2lua_opt_function(lua_State *L, int opts, const char *name);
/* For a key of the table at opts that is not among `names` (NULL-terminated): pushes
 * "<where>: unknown option 'x'" (with " (did you mean 'y'?)" when a known name is near) and
 * returns 1; else 0 (also when opts holds no table). A misspelled option is an error, never a
 * default silently kept: l2lua_check_options raises it (at the caller's line), and raises as well
 * when the argument at opts is neither nil nor a table. */
int l2lua_unknown_option(lua_State *L, int opts, const char *where, const char *const *names);
void l2lua_check_options(lua_State *L, int opts, const char *where, const char *const *names);

/* A userdata class's metatable `mt`, made once (every binding's the same way): __index a table of
 * `methods` and `extra` (NULL: none), __gc and __close `close` (which must allow a second call),
 * __tostring `tostring`. Left on the stack; returns 1 when it was made now. */
int l2lua_class(lua_State *L, const char *mt, const luaL_Reg *methods, const luaL_Reg *extra, lua_CFunction close,
                lua_CFunction tostring);

/* An optional time argument (seconds), the current time when absent; raises when malformed. */
int64_t l2lua_time_arg(lua_State *L, int idx);
/* changes_since's arguments: cursor at 2 (0), max at 3 (1000, at most 100,000), opts.json at 4. */
void l2lua_changes_args(lua_State *L, int64_t *after, int64_t *max, int *json);
/* check(): problems are collected into the table on top of the stack (the first 1,000); then
 * check_result pushes ok below it and returns 2. */
void l2lua_problem(void *ud, const char *msg);
int l2lua_check_result(lua_State *L, uint64_t nproblems);

/* A REQ's filters, reused across calls. */
typedef struct {
    l2_filter *v;
    size_t n, cap, max;
    l2_filter_limits lim;
} l2lua_filters;
void l2lua_filters_init(l2lua_filters *fs, size_t max);
void l2lua_filters_free(l2lua_filters *fs);
/* One filter (table or JSON object) or a list (array or JSON array) at idx; 0 or -1 with err. */
int l2lua_read_filters(lua_State *L, int idx, l2lua_filters *fs, char *err);
/* 1 with "unsupported: ..." in err when a filter asks for what no store here does (search). */
int l2lua_filters_unsupported(const l2lua_filters *fs, char *err);

/* Pushes eviction candidates as {{id, pubkey, kind, created_at, size, last_access, hits[, reads]}}
 * (reads(ud, id) when given). */
void l2lua_push_candidates(lua_State *L, const l2_candidate *c, size_t n, uint32_t (*reads)(void *, const uint8_t *),
                           void *ud);
/* The valid 64-hex ids of the list at idx, in a userdata pushed on the stack; *n of them. */
uint8_t (*l2lua_id_list(lua_State *L, int idx, size_t *n))[32];

#endif
