/* Shared by the binding files (the only files that see Lua headers). */
#ifndef L2_LUA_LAYER2_H
#define L2_LUA_LAYER2_H

#include "compat.h"
#include "event.h"
#include "filter.h"
#include "rules.h"

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

/* store:import(source [, opts]) for any store: source at 2 (a path, an io handle or a function
 * returning lines), opts at 3 (verify, batch, threads, now, on_refused(line, msg),
 * progress(lines, bytes)); `save` stores each batch of checked events in one transaction.
 * Returns the Lua results: the counts, or nil and the message. */
typedef int (*l2lua_save_fn)(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_save_result *res,
                             char *err);
int l2lua_import(lua_State *L, l2lua_save_fn save, void *ud, const l2_limits *lim, char *err);
/* store:save_events(list [, opts]) for a store's save function: every event of the list (tables or
 * wire JSON) checked (and verified unless opts.verify == false, on opts.threads threads), those
 * that pass saved in one call of `save` (one transaction), in order. Returns the verdicts in order:
 * true, or the refusal's message; nil, err when the store failed (then nothing of it was saved). */
#define L2LUA_SAVE_EVENTS_MAX 10000
int l2lua_save_events(lua_State *L, l2lua_save_fn save, void *ud, const l2_limits *lim, char *err);

/* The pubkeys argument of export: an event matches when its pubkey or a `p` tag is listed. */
typedef struct {
    uint8_t (*keys)[32]; /* sorted; a userdata left on the stack */
    size_t n;
    int filtered; /* 0: no list given, everything matches */
} l2lua_pubkeys;
int l2lua_pubkeys_arg(lua_State *L, int idx, l2lua_pubkeys *pk, char *err);
int l2lua_pubkeys_match(const l2lua_pubkeys *pk, const l2_event *ev);

/* Where export writes lines: a path, an io handle or a function; opts.progress(n) every 10,000. */
typedef struct {
    lua_State *L;
    FILE *f, *owned;
    int fn, progress, werr;
    uint64_t count;
} l2lua_sink;
/* Pushes the sink (a userdata that closes an opened file if a callback raises); NULL with err. */
l2lua_sink *l2lua_sink_open(lua_State *L, int idx, int opts, char *err);
int l2lua_sink_write(l2lua_sink *s, const char *line, size_t n);
/* 0, or -1 with "error: export failed: ..." when a write failed. */
int l2lua_sink_close(l2lua_sink *s, char *err);

void l2lua_open_store_common(lua_State *L);
/* Push the layer2.lmdb and layer2.postgres tables (lua_lmdb.c, lua_pg.c). */
void l2lua_open_lmdb(lua_State *L);
void l2lua_open_pg(lua_State *L);

#endif
