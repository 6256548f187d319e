/* The binding of the store interface (storeif.h): one userdata layout and one set of methods for
 * every store (lua_lmdb.c and lua_pg.c open theirs and add what only they have), the import
 * driver (sources, batches, threaded verification, counts, callbacks) and export sinks. Options
 * and a REQ's filters are read by lua_args.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "json.h"
#include "killpoint.h"
#include "lua_layer2.h"
#include "lua_store.h"

#define IMPORT_MT "layer2.import"
#define SINK_MT "layer2.sink"

/* ---- import ---- */

typedef struct {
    l2_batch_item *items;
    size_t cap;
    l2_event **evs;
    l2_save_result *res;
    l2_verdict *verdicts;
    l2_buf lines;
    /* import checks the next batch (its items and lines) while it saves this one */
    l2_batch_item *next_items;
    l2_buf next_lines;
    l2_batch_job job;
    int err_idx, source_failed; /* where a failed source's error waits, and whether it did */
    char *line;
    size_t line_cap;
    FILE *owned;
} import_state;

static int import_gc(lua_State *L)
{
    import_state *im = luaL_checkudata(L, 1, IMPORT_MT);
    l2_batch_wait(&im->job); /* its threads write into the items */
    for (size_t i = 0; i < im->cap; i++) {
        l2_event_free(&im->items[i].ev);
        if (im->next_items) l2_event_free(&im->next_items[i].ev);
    }
    free(im->items);
    free(im->next_items);
    im->next_items = NULL;
    free(im->evs);
    free(im->res);
    free(im->verdicts);
    im->verdicts = NULL;
    im->items = NULL;
    im->evs = NULL;
    im->res = NULL;
    im->cap = 0;
    l2_buf_free(&im->lines);
    l2_buf_free(&im->next_lines);
    free(im->line);
    im->line = NULL;
    if (im->owned) fclose(im->owned);
    im->owned = NULL;
    return 0;
}

/* The FILE* of an io library handle (5.4's luaL_Stream and LuaJIT's both start with it). */
static FILE *check_file(lua_State *L, int idx)
{
    FILE **fp = luaL_checkudata(L, idx, LUA_FILEHANDLE);
    if (!*fp) luaL_argerror(L, idx, "attempt to use a closed file");
    return *fp;
}

/* A source function that raised or returned a wrong value ends the reading; its error (on top)
 * waits at im->err_idx until what was read before is saved. */
static int source_failed(lua_State *L, import_state *im)
{
    lua_replace(L, im->err_idx);
    im->source_failed = 1;
    return 0;
}

/* Next line of the source into im->lines (offset in *off, length in *len); 0 at the end (or when
 * the source failed). */
static int next_line(lua_State *L, import_state *im, FILE *f, int fn_idx, size_t *off, size_t *len)
{
    const char *p;
    size_t n;
    if (f) {
        ssize_t r = getline(&im->line, &im->line_cap, f);
        if (r < 0) return 0;
        p = im->line;
        n = (size_t)r;
    } else {
        lua_pushvalue(L, fn_idx);
        if (lua_pcall(L, 0, 1, 0) != LUA_OK) return source_failed(L, im);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            return 0;
        }
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pushfstring(L, "layer2: the import source returned a %s, not a line", luaL_typename(L, -1));
            lua_remove(L, -2);
            return source_failed(L, im);
        }
        p = lua_tolstring(L, -1, &n);
    }
    while (n && (p[n - 1] == '\n' || p[n - 1] == '\r')) n--;
    *off = im->lines.len;
    *len = n;
    if (l2_buf_put(&im->lines, p, n)) return luaL_error(L, "layer2: out of memory");
    if (!f) lua_pop(L, 1);
    return 1;
}

static void call_refused(lua_State *L, int fn, uint64_t line, const char *msg)
{
    if (!fn) return;
    lua_pushvalue(L, fn);
    lua_pushinteger(L, (lua_Integer)line);
    lua_pushstring(L, msg);
    lua_call(L, 2, 0);
}

static int is_blank(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != ' ' && p[i] != '\t') return 0;
    return 1;
}

typedef struct {
    const l2_store_if *vt;
    void *st;
    const l2_limits *lim;
    int flags;
    int64_t *newest;
    char *err;
} import_ctx;

/* Reads up to `batch` lines (blank ones skipped) into im->items and im->lines; sets *done at the
 * end of the source. Returns the number of items. */
static size_t read_batch(lua_State *L, import_state *im, FILE *f, int fn_idx, size_t batch, uint64_t *lineno,
                         uint64_t *bytes, int *done)
{
    size_t n = 0;
    im->lines.len = 0;
    while (n < batch) {
        size_t off = 0, len = 0;
        if (!next_line(L, im, f, fn_idx, &off, &len)) {
            *done = 1;
            break;
        }
        ++*lineno;
        *bytes += len + 1;
        if (is_blank(im->lines.data + off, len)) continue;
        im->items[n].json = (const char *)(uintptr_t)off; /* an offset until the buffer stops moving */
        im->items[n].len = len;
        im->items[n].line = *lineno;
        n++;
    }
    for (size_t i = 0; i < n; i++) im->items[i].json = im->lines.data + (uintptr_t)im->items[i].json;
    return n;
}

/* Makes the next batch the current one. */
static void swap_batches(import_state *im)
{
    l2_batch_item *items = im->items;
    l2_buf lines = im->lines;
    im->items = im->next_items;
    im->lines = im->next_lines;
    im->next_items = items;
    im->next_lines = lines;
}

/* The batches of an import (l2lua_import's work): its arguments are the store's method's (1: the
 * store, 2: the source, 3: opts). Without a store (ctx->vt NULL: a dry run) the lines are read and
 * checked the same way, and the valid ones counted. */
enum { C_SAVED, C_DUP, C_REPLACED, C_INVALID, C_DELETED, C_BLOCKED, C_EPHEMERAL, C_LINES, C_COUNT };

/* The import's state userdata (pushed), with the source at 2 opened: *f a file, or *fn_idx a
 * function's index. -1 with err when the path cannot be opened. */
static import_state *import_begin(lua_State *L, size_t batch, FILE **f, int *fn_idx, char *err)
{
    import_state *im = lua_newuserdatauv(L, sizeof *im, 0);
    memset(im, 0, sizeof *im);
    l2_buf_init(&im->lines);
    l2_buf_init(&im->next_lines);
    luaL_setmetatable(L, IMPORT_MT);
    lua_pushnil(L);
    im->err_idx = lua_gettop(L);
    *f = NULL;
    *fn_idx = 0;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *path = lua_tostring(L, 2);
        if (!(*f = im->owned = fopen(path, "r"))) {
            snprintf(err, L2_ERRLEN, "error: cannot open '%s': %s", path, strerror(errno));
            return NULL;
        }
    } else if (lua_type(L, 2) == LUA_TFUNCTION) {
        *fn_idx = 2;
    } else {
        *f = check_file(L, 2);
    }
    /* everything lives in the state userdata: a Lua error in a callback (Ctrl-C) frees it all */
    im->items = calloc(batch, sizeof *im->items);
    im->next_items = calloc(batch, sizeof *im->next_items);
    im->evs = malloc(batch * sizeof *im->evs);
    im->res = malloc(batch * sizeof *im->res);
    if (!im->items || !im->next_items || !im->evs || !im->res) luaL_error(L, "layer2: out of memory");
    im->cap = batch;
    for (size_t i = 0; i < batch; i++) {
        l2_event_init(&im->items[i].ev);
        l2_event_init(&im->next_items[i].ev);
    }
    return im;
}

/* Counts the verdicts of a saved (or, without a store, checked) batch of n lines, calling
 * on_refused for each refused line; *newest gets the newest created_at stored. */
static void tally_batch(lua_State *L, import_state *im, size_t n, const import_ctx *ctx, int on_refused,
                        uint64_t *counts)
{
    size_t k = 0;
    counts[C_LINES] += n;
    for (size_t i = 0; i < n; i++) {
        l2_batch_item *it = &im->items[i];
        if (!it->ok) {
            counts[C_INVALID]++;
            call_refused(L, on_refused, it->line, it->err);
            continue;
        }
        if (!ctx->vt) {
            counts[C_SAVED]++; /* valid */
            continue;
        }
        l2_save_result *r = &im->res[k++];
        counts[C_REPLACED] += r->replaced;
        counts[C_DELETED] += r->deleted;
        if (r->status == L2_SAVE_STORED && it->ev.created_at > *ctx->newest) *ctx->newest = it->ev.created_at;
        switch (r->status) {
        case L2_SAVE_STORED: counts[C_SAVED]++; break;
        case L2_SAVE_EPHEMERAL: counts[C_EPHEMERAL]++; break;
        case L2_SAVE_DUPLICATE:
        case L2_SAVE_OLDER: counts[C_DUP]++; break;
        case L2_SAVE_DELETED: counts[C_BLOCKED]++; break;
        default: counts[C_INVALID]++;
        }
        if (r->status != L2_SAVE_STORED && r->status != L2_SAVE_EPHEMERAL)
            call_refused(L, on_refused, it->line, l2_save_result_message(r));
    }
}

/* Pushes the counts: {saved, duplicate, replaced, invalid, deleted, blocked, ephemeral, lines}, or
 * without a store {valid, invalid, lines}. */
static void push_counts(lua_State *L, const uint64_t *counts, int with_store)
{
    static const char *names[] = {"saved", "duplicate", "replaced", "invalid", "deleted", "blocked", "ephemeral", "lines"};
    lua_createtable(L, 0, C_COUNT);
    for (int i = 0; i < C_COUNT; i++) {
        if (!with_store && i != C_INVALID && i != C_LINES && i != C_SAVED) continue;
        lua_pushinteger(L, (lua_Integer)counts[i]);
        lua_setfield(L, -2, with_store || i != C_SAVED ? names[i] : "valid");
    }
}

static int run_batches(lua_State *L, const import_ctx *ctx)
{
    int verify = l2lua_opt_bool(L, 3, "verify", 1);
    size_t batch = (size_t)l2lua_opt_int(L, 3, "batch", 4096);
    int threads = (int)l2lua_opt_int(L, 3, "threads", 2);
    int64_t now = l2lua_opt_now(L, 3);
    if (batch < 1) batch = 1;
    int on_refused = l2lua_opt_function(L, 3, "on_refused");
    int progress = l2lua_opt_function(L, 3, "progress");
    FILE *f;
    int fn_idx;
    import_state *im = import_begin(L, batch, &f, &fn_idx, ctx->err);
    if (!im) return l2lua_refuse(L, 0, ctx->err);
    int im_idx = im->err_idx - 1;
    uint64_t lineno = 0, bytes = 0, counts[C_COUNT] = {0};
    int done = 0, failed = 0;
    size_t n = read_batch(L, im, f, fn_idx, batch, &lineno, &bytes, &done);
    l2_batch_check(im->items, n, threads, verify, ctx->lim);
    while (n) {
        /* what this batch reports: the lines and bytes read up to its end */
        uint64_t batch_lines = lineno, batch_bytes = bytes;
        /* the next batch is read here (a Lua source is called: nothing runs beside it), then checked
         * on the threads while this one is saved; no Lua runs until they are done */
        size_t next = 0;
        if (!done) {
            swap_batches(im);
            next = read_batch(L, im, f, fn_idx, batch, &lineno, &bytes, &done);
            swap_batches(im);
            l2_batch_start(&im->job, im->next_items, next, threads, verify, ctx->lim);
        }
        size_t nok = 0;
        for (size_t i = 0; i < n; i++)
            if (im->items[i].ok) im->evs[nok++] = &im->items[i].ev;
        failed = nok && ctx->vt && ctx->vt->save_batch(ctx->st, im->evs, nok, now, ctx->flags, im->res, ctx->err);
        l2_batch_wait(&im->job);
        if (failed) break;
        if (nok && ctx->vt) l2_killpoint("import:batch");
        tally_batch(L, im, n, ctx, on_refused, counts);
        if (progress) {
            lua_pushvalue(L, progress);
            lua_pushinteger(L, (lua_Integer)batch_lines);
            lua_pushinteger(L, (lua_Integer)batch_bytes);
            lua_call(L, 2, 0);
        }
        swap_batches(im);
        n = next;
    }
    lua_pushcfunction(L, import_gc);
    lua_pushvalue(L, im_idx);
    lua_call(L, 1, 0);
    if (failed) return l2lua_refuse(L, 0, ctx->err);
    if (im->source_failed) {
        lua_pushvalue(L, im->err_idx);
        return lua_error(L);
    }
    push_counts(L, counts, ctx->vt != NULL);
    return 1;
}

static int import_batches(lua_State *L)
{
    return run_batches(L, lua_touserdata(L, lua_upvalueindex(1)));
}

int l2lua_check_lines(lua_State *L, const l2_limits *lim)
{
    char err[L2_ERRLEN];
    int64_t newest;
    import_ctx ctx = {NULL, NULL, lim, 0, &newest, err};
    lua_settop(L, 2);
    lua_pushnil(L); /* where an import has its store */
    lua_insert(L, 1);
    return run_batches(L, &ctx);
}

int l2lua_import(lua_State *L, const l2_store_if *vt, void *st, const l2_limits *lim, int flags, int64_t *newest,
                 char *err)
{
    import_ctx ctx = {vt, st, lim, flags | L2_SAVE_IMPORT, newest, err};
    *newest = -1;
    int base = lua_gettop(L);
    lua_pushlightuserdata(L, &ctx);
    lua_pushcclosure(L, import_batches, 1);
    for (int i = 1; i <= 3; i++) lua_pushvalue(L, i);
    /* a Lua error in a callback (Ctrl-C above all) still ends the import as the store needs:
     * the batches saved before it get their indexes */
    int raised = lua_pcall(L, 3, LUA_MULTRET, 0) != LUA_OK;
    char after_err[L2_ERRLEN];
    if (vt->after_import && vt->after_import(st, after_err) && !raised) {
        lua_settop(L, base);
        memcpy(err, after_err, L2_ERRLEN);
        return l2lua_refuse(L, 0, err);
    }
    return raised ? -1 : lua_gettop(L) - base;
}

/* ---- a batch of events from Lua ---- */

/* Reads a list of events at list_idx (tables or wire JSON) with the options at opts_idx (verify,
 * threads, now), parses and verifies them (several threads past a few dozen signatures) and hands
 * those that pass to `save` in one call. Returns the Lua results: the verdicts in order (true, or
 * the refusal's message), or nil and err when `save` failed as a whole (nothing of it was saved). */
int l2lua_save_list(lua_State *L, int list_idx, int opts_idx, const l2_limits *lim, l2lua_saver save, void *ud,
                    char *err)
{
    luaL_checktype(L, list_idx, LUA_TTABLE);
    if (!lua_isnoneornil(L, opts_idx)) luaL_checktype(L, opts_idx, LUA_TTABLE);
    int verify = l2lua_opt_bool(L, opts_idx, "verify", 1);
    int64_t now = l2lua_opt_now(L, opts_idx);
    size_t n = lua_rawlen(L, list_idx);
    int threads = (int)l2lua_opt_int(L, opts_idx, "threads", n >= 64 ? 2 : 1);
    if (n > L2LUA_SAVE_EVENTS_MAX) {
        snprintf(err, L2_ERRLEN, "invalid: more than %d events in one save_events call", L2LUA_SAVE_EVENTS_MAX);
        return l2lua_refuse(L, 0, err);
    }
    /* the items live in a userdata: a Lua error on the way frees them */
    import_state *im = lua_newuserdatauv(L, sizeof *im, 0);
    memset(im, 0, sizeof *im);
    l2_buf_init(&im->lines);
    luaL_setmetatable(L, IMPORT_MT);
    int im_idx = lua_gettop(L);
    size_t cap = n ? n : 1;
    im->items = calloc(cap, sizeof *im->items);
    im->evs = malloc(cap * sizeof *im->evs);
    im->verdicts = calloc(cap, sizeof *im->verdicts);
    if (!im->items || !im->evs || !im->verdicts) return luaL_error(L, "layer2: out of memory");
    im->cap = cap;
    unsigned required = L2_HAVE_ALL | (verify ? L2_LENIENT_IDSIG : 0);
    for (size_t i = 0; i < n; i++) {
        l2_batch_item *it = &im->items[i];
        l2_event_init(&it->ev);
        it->line = i + 1;
        /* the strings an item points into stay referenced by the list until the call returns */
        lua_rawgeti(L, list_idx, (int)i + 1);
        int t = lua_type(L, -1);
        if (t == LUA_TSTRING) {
            it->json = lua_tolstring(L, -1, &it->len);
        } else if (t != LUA_TTABLE) {
            it->from = L2_BATCH_REFUSED;
            snprintf(it->err, L2_ERRLEN, "invalid: an event is a table or a JSON string, not a %s", lua_typename(L, t));
        } else {
            it->from = l2lua_event_arg(L, lua_gettop(L), &it->ev, required, lim, it->err) ? L2_BATCH_REFUSED
                                                                                           : L2_BATCH_PARSED;
        }
        lua_pop(L, 1);
    }
    l2_batch_check(im->items, n, threads, verify, lim);
    size_t nok = 0;
    for (size_t i = 0; i < n; i++)
        if (im->items[i].ok) im->evs[nok++] = &im->items[i].ev;
    int failed = nok && save(ud, im->evs, nok, now, im->verdicts, err);
    if (!failed) {
        lua_createtable(L, (int)n, 0);
        for (size_t i = 0, k = 0; i < n; i++) {
            l2_batch_item *it = &im->items[i];
            const l2_verdict *v = it->ok ? &im->verdicts[k++] : NULL;
            if (v && v->ok) lua_pushboolean(L, 1);
            else lua_pushstring(L, v ? v->msg : it->err);
            lua_rawseti(L, -2, (int)i + 1);
        }
    }
    lua_pushcfunction(L, import_gc);
    lua_pushvalue(L, im_idx);
    lua_call(L, 1, 0);
    if (failed) return l2lua_refuse(L, 0, err);
    return 1;
}

/* A store saves a list in one transaction: all or nothing. */
static int store_saver(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out, char *err)
{
    l2lua_store *s = ud;
    l2_save_result *res = calloc(n, sizeof *res);
    if (!res) return l2_oom(err);
    int rc = s->vt->save_batch(s->st, evs, n, now, s->save_flags, res, err);
    for (size_t i = 0; !rc && i < n; i++) {
        const char *msg = l2_save_result_message(&res[i]);
        out[i].ok = !msg;
        if (msg) snprintf(out[i].msg, sizeof out[i].msg, "%s", msg);
    }
    free(res);
    return rc;
}

/* ---- export ---- */

static int cmp32(const void *a, const void *b)
{
    return memcmp(a, b, 32);
}

/* The pubkeys argument of export, sorted: an event matches when its pubkey or a `p` tag is listed. */
typedef struct {
    uint8_t (*keys)[32]; /* a userdata left on the stack */
    size_t n;
    int filtered; /* 0: no list given, everything matches */
} pubkeys_arg;

static int read_pubkeys(lua_State *L, int idx, pubkeys_arg *pk, char *err)
{
    memset(pk, 0, sizeof *pk);
    if (lua_isnoneornil(L, idx)) return 0;
    luaL_checktype(L, idx, LUA_TTABLE);
    pk->n = lua_rawlen(L, idx);
    pk->filtered = 1; /* an empty list matches nothing */
    pk->keys = lua_newuserdatauv(L, pk->n * 32 + 1, 0); /* left on the stack: collected after the call */
    for (size_t i = 0; i < pk->n; i++) {
        lua_rawgeti(L, idx, (int)i + 1);
        size_t n;
        const char *p = lua_tolstring(L, -1, &n);
        if (!p || n != 64 || l2_hex_decode(pk->keys[i], p, 32)) {
            snprintf(err, L2_ERRLEN, "invalid: pubkeys[%zu] must be 64 lowercase hex characters", i + 1);
            return -1;
        }
        lua_pop(L, 1);
    }
    qsort(pk->keys, pk->n, 32, cmp32);
    return 0;
}

/* Where export writes lines: a path, an io handle or a function; opts.progress(n) every 10,000. */
typedef struct {
    lua_State *L;
    FILE *f, *owned;
    int fn, progress, werr;
    uint64_t count;
} export_sink;

static int sink_gc(lua_State *L)
{
    export_sink *s = luaL_checkudata(L, 1, SINK_MT);
    if (s->owned) fclose(s->owned);
    s->owned = NULL;
    return 0;
}

static export_sink *sink_open(lua_State *L, int idx, int opts, char *err)
{
    export_sink *s = lua_newuserdatauv(L, sizeof *s, 0); /* closes the file if a callback raises */
    memset(s, 0, sizeof *s);
    luaL_setmetatable(L, SINK_MT);
    s->L = L;
    if (lua_type(L, idx) == LUA_TSTRING) {
        const char *path = lua_tostring(L, idx);
        if (!(s->f = s->owned = fopen(path, "w"))) {
            snprintf(err, L2_ERRLEN, "error: cannot write '%s': %s", path, strerror(errno));
            return NULL;
        }
    } else if (lua_type(L, idx) == LUA_TFUNCTION) {
        s->fn = idx;
    } else {
        s->f = check_file(L, idx);
    }
    s->progress = l2lua_opt_function(L, opts, "progress");
    return s;
}

static int sink_write(export_sink *s, const char *line, size_t n)
{
    lua_State *L = s->L;
    if (s->fn) {
        lua_pushvalue(L, s->fn);
        lua_pushlstring(L, line, n);
        lua_call(L, 1, 0);
    } else if (fwrite(line, 1, n, s->f) != n || fputc('\n', s->f) == EOF) {
        s->werr = errno ? errno : EIO;
        return -1;
    }
    if (++s->count % 10000 == 0 && s->progress) {
        lua_pushvalue(L, s->progress);
        lua_pushinteger(L, (lua_Integer)s->count);
        lua_call(L, 1, 0);
    }
    return 0;
}

static int sink_close(export_sink *s, char *err)
{
    if (s->owned && fclose(s->owned) != 0 && !s->werr) s->werr = errno;
    s->owned = NULL;
    if (!s->werr) return 0;
    snprintf(err, L2_ERRLEN, "error: export failed: %s", strerror(s->werr));
    return -1;
}

/* ---- the store userdata ---- */

#define STORE_MARK "__layer2_store" /* in every store class's metatable */

l2lua_store *l2lua_store_new(lua_State *L, const char *mt, const l2_store_if *vt, int opts)
{
    int64_t max_limit = l2lua_opt_int(L, opts, "max_limit", L2LUA_MAX_LIMIT);
    int64_t max_filters = l2lua_opt_int(L, opts, "max_filters", 500);
    l2lua_store *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    s->vt = vt;
    l2_event_init(&s->ev);
    l2_buf_init(&s->out);
    s->lim = l2_default_limits;
    l2lua_filters_init(&s->filters, (size_t)max_filters);
    s->max_limit = max_limit;
    luaL_setmetatable(L, mt);
    return s;
}

/* The store userdata at idx, open or closed. */
static l2lua_store *to_store(lua_State *L, int idx)
{
    l2lua_store *s = lua_touserdata(L, idx);
    int ok = s && lua_getmetatable(L, idx);
    if (ok) {
        lua_getfield(L, -1, STORE_MARK);
        ok = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    if (!ok) luaL_argerror(L, idx, "a layer2 store expected");
    return s;
}

l2lua_store *l2lua_check_store(lua_State *L, int idx)
{
    l2lua_store *s = to_store(L, idx);
    if (!s->st) luaL_error(L, "layer2: attempt to use a closed store");
    return s;
}

int l2lua_push_row(lua_State *L, l2lua_store *s, const l2_row *r, int json)
{
    if (r->json && json) {
        lua_pushlstring(L, r->json, r->json_len);
        return 0;
    }
    if (r->json ? l2_event_parse_json(&s->ev, r->json, r->json_len, L2_HAVE_ALL, &s->lim, s->err)
                : l2_event_decode_bin(&s->ev, r->bin, r->bin_len, s->err))
        return -1;
    if (!json) {
        l2lua_push_event(L, &s->ev);
        return 0;
    }
    s->out.len = 0;
    if (l2_event_encode_json(&s->ev, &s->out)) return luaL_error(L, "layer2: out of memory");
    lua_pushlstring(L, s->out.data, s->out.len);
    return 0;
}

static int store_close(lua_State *L)
{
    l2lua_store *s = to_store(L, 1);
    if (s->st) s->vt->close(s->st);
    s->st = NULL;
    l2lua_filters_free(&s->filters);
    l2_event_free(&s->ev);
    l2_buf_free(&s->out);
    return 0;
}

static int store_is_closed(lua_State *L)
{
    lua_pushboolean(L, to_store(L, 1)->st == NULL);
    return 1;
}

static int store_tostring(lua_State *L)
{
    l2lua_store *s = to_store(L, 1);
    if (s->st) lua_pushfstring(L, "layer2.%s store (%s)", s->vt->kind, s->vt->path(s->st));
    else lua_pushfstring(L, "layer2.%s store (closed)", s->vt->kind);
    return 1;
}

static int store_path(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    lua_pushstring(L, s->vt->path(s->st));
    return 1;
}

/* opts.outbox: queue in a cache's outbox in the same transaction; opts.fill: a cache fill. */
static int save_flags(lua_State *L, int opts)
{
    return (l2lua_opt_bool(L, opts, "outbox", 0) ? L2_SAVE_OUTBOX : 0) |
           (l2lua_opt_bool(L, opts, "fill", 0) ? L2_SAVE_FILL : 0);
}

/* store:save_event(ev [, {verify = true, now, outbox}]) -> true | false, msg */
static int store_save(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    int verify = l2lua_opt_bool(L, 3, "verify", 1);
    l2_save_result res;
    l2_event *evp = &s->ev;
    if (l2lua_event_arg(L, 2, &s->ev, L2_HAVE_ALL | (verify ? L2_LENIENT_IDSIG : 0), &s->lim, s->err))
        return l2lua_refuse(L, 1, s->err);
    s->out.len = 0;
    if (verify && l2_event_verify(&s->ev, &s->out, s->err)) return l2lua_refuse(L, 1, s->err);
    if (s->vt->save_batch(s->st, &evp, 1, l2lua_opt_now(L, 3), save_flags(L, 3), &res, s->err))
        return l2lua_refuse(L, 1, s->err);
    const char *msg = l2_save_result_message(&res);
    if (msg) return l2lua_refuse(L, 1, msg);
    lua_pushboolean(L, 1);
    return 1;
}

/* store:save_events(list [, opts]) -> verdicts | nil, err (see save_events) */
static int store_save_events(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    s->save_flags = save_flags(L, 3);
    return l2lua_save_list(L, 2, 3, &s->lim, store_saver, s, s->err);
}

/* store:import(source [, opts]) -> counts | nil, err (see l2lua_import). */
static int store_import(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    int64_t newest;
    int n = l2lua_import(L, s->vt, s->st, &s->lim, save_flags(L, 3), &newest, s->err);
    return n < 0 ? lua_error(L) : n;
}

/* store:delete_event(id [, no_tombstone [, {outbox}]]) -> true | false, msg */
static int store_delete(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    uint8_t id[32];
    size_t n;
    int found;
    const char *p = luaL_checklstring(L, 2, &n);
    if (n != 64 || l2_hex_decode(id, p, 32)) return l2lua_refuse(L, 1, "invalid: id must be 64 lowercase hex characters");
    if (s->vt->delete_event(s->st, id, !lua_toboolean(L, 3), save_flags(L, 4), &found, s->err))
        return l2lua_refuse(L, 1, s->err);
    if (!found) return l2lua_refuse(L, 1, "not found: no stored event has this id");
    lua_pushboolean(L, 1);
    return 1;
}

static int read_filters(lua_State *L, l2lua_store *s)
{
    return l2lua_read_filters(L, 2, &s->filters, s->err) || l2lua_filters_unsupported(&s->filters, s->err);
}

typedef struct {
    lua_State *L;
    l2lua_store *s;
    int json, info, results, out, nstubs, failed;
} query_state;

static int query_row(void *ud, const l2_row *r)
{
    query_state *q = ud;
    lua_State *L = q->L;
    if (r->stub) {
        /* a stub's position holds its id, its body being elsewhere (opts.info only) */
        if (!q->info) return 0;
        l2lua_push_hex(L, r->id, 32);
        lua_rawseti(L, q->results, ++q->out);
        lua_pushinteger(L, q->out);
        lua_rawseti(L, q->results + 1, ++q->nstubs);
        return 0;
    }
    if (l2lua_push_row(L, q->s, r, q->json)) {
        q->failed = 1;
        return 1;
    }
    lua_rawseti(L, q->results, ++q->out);
    return 0;
}

/* store:query_events(filters [, {json, max_limit, now, horizon, info}]) -> events | nil, err.
 * opts.info (for a two-level backend): a second result {incomplete = {filter indexes}, stubs =
 * {positions}}; a stub's position holds its id. Without it stubs are left out: a store never
 * returns what is not a whole event. opts.horizon: see l2_store_query. */
static int store_query(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    query_state q = {L, s, l2lua_opt_bool(L, 3, "json", 0), l2lua_opt_bool(L, 3, "info", 0), 0, 0, 0, 0};
    int64_t max_limit = l2lua_opt_int(L, 3, "max_limit", s->max_limit);
    int64_t now = l2lua_opt_now(L, 3), horizon = l2lua_opt_int(L, 3, "horizon", 0);
    if (read_filters(L, s)) return l2lua_refuse(L, 0, s->err);
    uint8_t *incomplete = q.info ? lua_newuserdatauv(L, s->filters.n + 1, 0) : NULL; /* collected with the call */
    lua_newtable(L);
    q.results = lua_gettop(L);
    if (q.info) lua_newtable(L); /* stub positions */
    if (s->vt->query(s->st, s->filters.v, s->filters.n, max_limit, now, horizon, incomplete, query_row, &q, s->err))
        return l2lua_refuse(L, 0, s->err);
    if (q.failed) return l2lua_refuse(L, 0, s->err);
    if (!q.info) return 1;
    lua_createtable(L, 0, 2);
    lua_insert(L, -2);
    lua_setfield(L, -2, "stubs");
    lua_newtable(L);
    for (size_t i = 0, k = 0; i < s->filters.n; i++) {
        if (!incomplete[i]) continue;
        lua_pushinteger(L, (lua_Integer)i + 1);
        lua_rawseti(L, -2, (int)++k);
    }
    lua_setfield(L, -2, "incomplete");
    return 2;
}

typedef struct {
    l2lua_store *s;
    uint64_t n, max;
} items_state;

/* One item: created_at (8 bytes, big-endian) and id. */
static int item_put(void *ud, int64_t at, const uint8_t id[32])
{
    items_state *it = ud;
    uint8_t rec[40];
    for (int i = 0; i < 8; i++) rec[i] = (uint8_t)((uint64_t)at >> (56 - 8 * i));
    memcpy(rec + 8, id, 32);
    if (++it->n > it->max) return 1;
    return l2_buf_put(&it->s->out, rec, 40) ? 1 : 0;
}

/* store:negentropy_items(filters [, {max = 1000000, now}]) -> items | nil, err: the events the
 * filters match (each filter's limit holding, none else) as NIP-77 items for
 * session:add_items, 40 bytes each (created_at big-endian, id); past `max` refused with
 * "blocked: ...". A string, so that it crosses from nginx's thread pool. */
static int store_negentropy_items(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    items_state it = {s, 0, (uint64_t)l2lua_opt_int(L, 3, "max", 1000000)};
    if (!s->vt->items) return l2lua_refuse(L, 0, "unsupported: this store lists no NIP-77 items");
    if (read_filters(L, s)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (s->vt->items(s->st, s->filters.v, s->filters.n, (int64_t)it.max + 1, l2lua_opt_now(L, 3), item_put, &it,
                     s->err))
        return l2lua_refuse(L, 0, s->err);
    if (it.n > it.max) {
        lua_pushnil(L);
        lua_pushfstring(L, "blocked: the filters match more than %d events; narrow them", (int)it.max);
        return 2;
    }
    if (s->out.len != it.n * 40) return l2lua_refuse(L, 0, "error: out of memory");
    lua_pushlstring(L, s->out.data ? s->out.data : "", s->out.len);
    /* the items live on in the string (and then in a session): a large buffer is not kept too */
    if (s->out.cap > ((size_t)1 << 20)) l2_buf_free(&s->out);
    return 1;
}

/* store:count_events(filters [, {now}]) -> n | nil, err (NIP-45) */
static int store_count(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    uint64_t n;
    if (read_filters(L, s)) return l2lua_refuse(L, 0, s->err);
    if (s->vt->count(s->st, s->filters.v, s->filters.n, l2lua_opt_now(L, 3), &n, s->err))
        return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

typedef struct {
    lua_State *L;
    l2lua_store *s;
    export_sink *sink;
} export_state;

static int export_row(void *ud, const l2_row *r)
{
    export_state *e = ud;
    if (r->json) return sink_write(e->sink, r->json, r->json_len);
    l2lua_store *s = e->s;
    if (l2_event_decode_bin(&s->ev, r->bin, r->bin_len, NULL)) return 0; /* unreadable: check() says so */
    s->out.len = 0;
    if (l2_event_encode_json(&s->ev, &s->out)) return luaL_error(e->L, "layer2: out of memory");
    return sink_write(e->sink, s->out.data, s->out.len);
}

/* store:export(sink [, pubkeys [, {progress}]]) -> n | nil, err: every event, or those whose
 * pubkey or a `p` tag names one of pubkeys, as JSON lines, streamed in storage order. */
static int store_export(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    pubkeys_arg pk;
    export_state e = {L, s, NULL};
    if (read_pubkeys(L, 3, &pk, s->err) || !(e.sink = sink_open(L, 2, 4, s->err))) return l2lua_refuse(L, 0, s->err);
    if (s->vt->export_rows(s->st, (const uint8_t (*)[32])pk.keys, pk.n, pk.filtered, export_row, &e, s->err)) {
        sink_close(e.sink, s->err);
        return l2lua_refuse(L, 0, s->err);
    }
    if (sink_close(e.sink, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)e.sink->count);
    return 1;
}

typedef struct {
    lua_State *L;
    l2lua_store *s;
    int json, n;
    uint64_t cursor;
} changes_state;

static int change_row(void *ud, uint64_t seq, int op, const uint8_t *id, const l2_row *r)
{
    static const char *ops[] = {"?", "saved", "replaced", "deleted"};
    changes_state *c = ud;
    lua_State *L = c->L;
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)seq);
    lua_setfield(L, -2, "seq");
    lua_pushstring(L, ops[op >= 1 && op <= 3 ? op : 0]);
    lua_setfield(L, -2, "op");
    if (id) {
        l2lua_push_hex(L, id, 32);
        lua_setfield(L, -2, "id");
    }
    if (r && l2lua_push_row(L, c->s, r, c->json) == 0) lua_setfield(L, -2, "event");
    lua_rawseti(L, -2, ++c->n);
    c->cursor = seq;
    return 0;
}

/* store:changes_since(cursor [, max [, {json}]]) -> {{seq, op, id, event}...}, cursor */
static int store_changes(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    int64_t after, max;
    changes_state c = {L, s, 0, 0, 0};
    l2lua_changes_args(L, &after, &max, &c.json);
    c.cursor = (uint64_t)after;
    lua_newtable(L);
    if (s->vt->changes(s->st, (uint64_t)after, (size_t)max, change_row, &c, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)c.cursor);
    return 2;
}

static void stat_field(void *ud, const char *name, uint64_t value)
{
    lua_State *L = ud;
    lua_pushinteger(L, (lua_Integer)value);
    lua_setfield(L, -2, name);
}

static int store_stats(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    lua_createtable(L, 0, 12);
    if (s->vt->stats(s->st, stat_field, L, s->err)) return l2lua_refuse(L, 0, s->err);
    return 1;
}

/* store:check() -> ok, problems */
static int store_check(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    uint64_t n;
    lua_newtable(L);
    if (s->vt->check(s->st, l2lua_problem, L, &n, s->err)) return l2lua_refuse(L, 0, s->err);
    return l2lua_check_result(L, n);
}

static int store_sweep(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    uint64_t removed;
    if (s->vt->sweep(s->st, l2lua_time_arg(L, 2), &removed, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)removed);
    return 1;
}

/* nuke and sync: true | nil, err */
static int store_done(lua_State *L, l2lua_store *s, int (*op)(void *st, char *err))
{
    if (op(s->st, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

static int store_nuke(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    return store_done(L, s, s->vt->nuke);
}

static int store_sync(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    return store_done(L, s, s->vt->sync);
}

static const luaL_Reg store_methods[] = {
    {"save_event", store_save}, {"save_events", store_save_events}, {"query_events", store_query},
    {"count_events", store_count}, {"delete_event", store_delete}, {"import", store_import},
    {"negentropy_items", store_negentropy_items},
    {"export", store_export}, {"changes_since", store_changes}, {"stats", store_stats}, {"check", store_check},
    {"sweep", store_sweep}, {"nuke", store_nuke}, {"sync", store_sync}, {"path", store_path},
    {"close", store_close}, {"is_closed", store_is_closed}, {NULL, NULL},
};

void l2lua_store_class(lua_State *L, const char *mt, const luaL_Reg *extra)
{
    if (luaL_newmetatable(L, mt)) {
        lua_newtable(L);
        luaL_setfuncs(L, store_methods, 0);
        if (extra) luaL_setfuncs(L, extra, 0);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, store_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, store_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, store_tostring);
        lua_setfield(L, -2, "__tostring");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, STORE_MARK);
    }
    lua_pop(L, 1);
}

void l2lua_open_store_common(lua_State *L)
{
    if (luaL_newmetatable(L, IMPORT_MT)) {
        lua_pushcfunction(L, import_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, SINK_MT)) {
        lua_pushcfunction(L, sink_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}
