/* Any store (storeif.h) as a Lua userdata (lua_store.c): the class every store binding builds on,
 * save_events' list of events, and import's source and callbacks (the driver is import.h). */
#ifndef L2_LUA_STORE_H
#define L2_LUA_STORE_H

#include "lua_args.h"

/* A query's default limit: the largest `limit` a filter gets (max_limit), every store's and the
 * two-level store's. */
#define L2LUA_MAX_LIMIT 500

/* A store as a Lua userdata: any store, through its interface (storeif.h). */
typedef struct {
    const l2_store_if *vt;
    void *st; /* NULL once closed */
    l2_event ev;
    l2lua_filters filters;
    l2_buf out;
    l2_limits lim;
    int64_t max_limit;
    int save_flags; /* of the save_events call under way */
    char err[L2_ERRLEN];
} l2lua_store;

/* The store methods (lua_store.c): save_event, save_events (at most this many events),
 * query_events, count_events, delete_event, import, export, changes_since, stats, check, sweep,
 * nuke, sync, path, close, is_closed; `__gc`, `__close` and `__tostring`. */
#define L2LUA_SAVE_EVENTS_MAX 10000

/* Saves n checked events, each verdict in out[i]; -1 with err when nothing of them was saved. */
typedef int (*l2lua_saver)(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out, char *err);
/* store:save_events's work for any saver: the list at list_idx (at most L2LUA_SAVE_EVENTS_MAX
 * events: tables or wire JSON), opts at opts_idx (verify, threads, now); pushes the verdicts. */
int l2lua_save_list(lua_State *L, int list_idx, int opts_idx, const l2_limits *lim, l2lua_saver save, void *ud,
                    char *err);
/* store:import's work for any store: the source at 2 (a path, an io handle or a function returning
 * lines), opts at 3 (verify, batch, threads, now, on_refused(line, msg), progress(lines, bytes));
 * l2_import_run saves each batch of checked events in one call of vt->save_batch (flag
 * L2_SAVE_IMPORT), then vt->after_import runs, also when a callback raised. Pushes the counts, or nil and the message,
 * and returns their number; or returns -1 with the callback's error on the stack, for the caller
 * to raise once it has done its part. *newest gets the newest created_at stored (-1 for none). */
int l2lua_import(lua_State *L, const l2_store_if *vt, void *st, const l2_limits *lim, int flags, int64_t *newest,
                 char *err);
/* layer2.event.check_lines(source [, opts]): import's reading and checking of the lines (on the
 * threads, batch by batch, the same options but `now`) with no store: a dry run. Pushes the counts
 * {lines, valid, invalid}, or nil and the message when the file cannot be opened; raises what a
 * source function or a callback raised. */
int l2lua_check_lines(lua_State *L, const l2_limits *lim);
/* Makes the class `mt`: the store methods and `extra` (what only this kind of store has). */
void l2lua_store_class(lua_State *L, const char *mt, const luaL_Reg *extra);
/* Pushes a new store userdata of class mt, not open yet (st NULL): the caller opens the store
 * into s->st. opts (a stack index, may hold nothing): max_limit (L2LUA_MAX_LIMIT), max_filters (500). */
l2lua_store *l2lua_store_new(lua_State *L, const char *mt, const l2_store_if *vt, int opts);
/* The open store at idx, of any class; raises for another value or a closed store. */
l2lua_store *l2lua_check_store(lua_State *L, int idx);
/* Pushes a row as an event table, or as wire JSON; -1 with s->err when it cannot be read. */
int l2lua_push_row(lua_State *L, l2lua_store *s, const l2_row *r, int json);
/* Appends a row's wire JSON to out; -1 with s->err when it cannot be read. */
int l2lua_row_json(l2lua_store *s, const l2_row *r, l2_buf *out);

#endif
