/* Shared by the binding files (the only files that see Lua headers). */
#ifndef L2_LUA_LAYER2_H
#define L2_LUA_LAYER2_H

#include "compat.h"
#include "event.h"
#include "filter.h"
#include "rules.h"
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

/* ---- shared by the store bindings (lua_store.c) ---- */

#include <stdio.h>

/* Options of an opts table at index `opts` (any non-table means none): a non-negative integer
 * (raises otherwise), a boolean, `now` (the time when absent), a function's stack index or 0. */
int64_t l2lua_opt_int(lua_State *L, int opts, const char *name, int64_t def);
int l2lua_opt_bool(lua_State *L, int opts, const char *name, int def);
int64_t l2lua_opt_now(lua_State *L, int opts);
int l2lua_opt_function(lua_State *L, int opts, const char *name);

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
 * each batch of checked events is saved in one call of vt->save_batch (flag L2_SAVE_IMPORT), then
 * vt->after_import runs, also when a callback raised. Pushes the counts, or nil and the message,
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
 * into s->st. opts (a stack index, may hold nothing): max_limit (500), max_filters (500). */
l2lua_store *l2lua_store_new(lua_State *L, const char *mt, const l2_store_if *vt, int opts);
/* The open store at idx, of any class; raises for another value or a closed store. */
l2lua_store *l2lua_check_store(lua_State *L, int idx);
/* Pushes a row as an event table, or as wire JSON; -1 with s->err when it cannot be read. */
int l2lua_push_row(lua_State *L, l2lua_store *s, const l2_row *r, int json);

void l2lua_open_store_common(lua_State *L);
/* ---- shared by the cache's binding (lua_lmdb.c) and the two-level store's (lua_backend.c) ---- */
#include "store.h"
/* Pushes eviction candidates as {{id, pubkey, kind, created_at, size, last_access, hits[, reads]}}
 * (reads(ud, id) when given). */
void l2lua_push_candidates(lua_State *L, const l2_candidate *c, size_t n, uint32_t (*reads)(void *, const uint8_t *),
                           void *ud);
/* The valid 64-hex ids of the list at idx, in a userdata pushed on the stack; *n of them. */
uint8_t (*l2lua_id_list(lua_State *L, int idx, size_t *n))[32];
/* Push the layer2.lmdb and layer2.postgres tables (lua_lmdb.c, lua_pg.c). */
void l2lua_open_lmdb(lua_State *L);
void l2lua_open_pg(lua_State *L);
/* Pushes layer2.core.backend_private (lua_backend.c): the two-level store's class and helpers. */
void l2lua_open_backend(lua_State *L);
/* Pushes layer2.fanout, the constructor of the live fan-out index (lua_fanout.c). */
void l2lua_open_fanout(lua_State *L);
/* Pushes layer2.negentropy, the constructor of a NIP-77 session (lua_negentropy.c). */
void l2lua_open_negentropy(lua_State *L);

#endif
