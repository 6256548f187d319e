/* The binding of the store interface (storeif.h): one userdata layout and one set of methods for
 * every store (lua_lmdb.c and lua_pg.c open theirs and add what only they have), an import's
 * source and callbacks from Lua (the driver is import.c), a list of events from Lua, and export
 * sinks. Options
 * and a REQ's filters are read by lua_args.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batch.h"
#include "import.h"
#include "json.h"
#include "lua_layer2.h"
#include "lua_store.h"

#define LIST_MT "layer2.event_list"
#define SINK_MT "layer2.sink"

/* ---- import: the source and the callbacks from Lua (the driver is import.c) ---- */

/* What the driver's callbacks (import.h) reach: the source, the Lua callbacks and where an error
 * waits. Every call into Lua is protected (call_lua), so that no error jumps through the driver:
 * an error ends the import, which l2lua_import raises once the store has done its part. */
typedef struct {
    lua_State *L;
    FILE *f;       /* a file source, or */
    int source;    /* or a function (in keep) */
    int on_refused, progress; /* whether there are these callbacks (in keep) */
    int keep;      /* index of a table: the source's last line, a waiting error, the functions */
    int call;      /* index of call_lua */
    int failed;    /* an error waits in keep[2] */
    char *line;    /* a file source's line buffer */
    size_t line_cap;
    /* one call's arguments and its line */
    int what;
    uint64_t n1, n2;
    const char *msg;
    const char *p;
    size_t n;
} lua_source;

enum { CALL_SOURCE, CALL_REFUSED, CALL_PROGRESS };
enum { KEEP_LINE = 1, KEEP_ERROR, KEEP_SOURCE, KEEP_REFUSED, KEEP_PROGRESS };

/* call_lua(src, keep): the call src->what asks for, run under lua_pcall by call_back. */
static int call_lua(lua_State *L)
{
    lua_source *src = lua_touserdata(L, 1);
    if (src->what == CALL_SOURCE) {
        lua_rawgeti(L, 2, KEEP_SOURCE);
        lua_call(L, 0, 1);
        if (lua_isnil(L, -1)) {
            src->p = NULL;
            return 0;
        }
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "layer2: the import source returned a %s, not a line", luaL_typename(L, -1));
        src->p = lua_tolstring(L, -1, &src->n);
        lua_rawseti(L, 2, KEEP_LINE); /* referenced until the next line */
        return 0;
    }
    lua_rawgeti(L, 2, src->what == CALL_REFUSED ? KEEP_REFUSED : KEEP_PROGRESS);
    lua_pushinteger(L, (lua_Integer)src->n1);
    if (src->what == CALL_REFUSED) lua_pushstring(L, src->msg);
    else lua_pushinteger(L, (lua_Integer)src->n2);
    lua_call(L, 2, 0);
    return 0;
}

/* Runs call_lua for src->what: 0, or 1 with the error kept (it ends the import). */
static int call_back(lua_source *src)
{
    lua_State *L = src->L;
    lua_pushvalue(L, src->call);
    lua_pushlightuserdata(L, src);
    lua_pushvalue(L, src->keep);
    if (lua_pcall(L, 2, 0, 0) == LUA_OK) return 0;
    lua_rawseti(L, src->keep, KEEP_ERROR);
    src->failed = 1;
    return 1;
}

static int source_line(void *ud, const char **p, size_t *n)
{
    lua_source *src = ud;
    if (src->f) {
        ssize_t r = getline(&src->line, &src->line_cap, src->f);
        *p = src->line;
        *n = r < 0 ? 0 : (size_t)r;
        return r >= 0;
    }
    src->what = CALL_SOURCE;
    if (call_back(src) || !src->p) return 0; /* a failed source ends the reading */
    *p = src->p;
    *n = src->n;
    return 1;
}

static int tell_refused(void *ud, uint64_t line, const char *msg)
{
    lua_source *src = ud;
    src->what = CALL_REFUSED;
    src->n1 = line;
    src->msg = msg;
    return call_back(src);
}

static int tell_progress(void *ud, uint64_t lines, uint64_t bytes)
{
    lua_source *src = ud;
    src->what = CALL_PROGRESS;
    src->n1 = lines;
    src->n2 = bytes;
    return call_back(src);
}

/* The FILE* of an io library handle (5.4's luaL_Stream and LuaJIT's both start with it). */
static FILE *check_file(lua_State *L, int idx)
{
    FILE **fp = luaL_checkudata(L, idx, LUA_FILEHANDLE);
    if (!*fp) luaL_argerror(L, idx, "attempt to use a closed file");
    return *fp;
}

/* The source at 2 and the options at 3 into src and o; the keeper table and call_lua pushed.
 * -1 with err when the path cannot be opened (src->f is then the caller's to close otherwise:
 * a path's file is opened here). */
static int read_import_args(lua_State *L, lua_source *src, l2_import_opts *o, int *owned, char *err)
{
    memset(src, 0, sizeof *src);
    src->L = L;
    o->verify = l2lua_opt_bool(L, 3, "verify", 1);
    int64_t batch = l2lua_opt_int(L, 3, "batch", 4096);
    o->batch = batch < 1 ? 1 : (size_t)batch;
    o->threads = (int)l2lua_opt_int(L, 3, "threads", 2);
    o->now = l2lua_opt_now(L, 3);
    if (lua_type(L, 2) == LUA_TFUNCTION) src->source = 1;
    else if (lua_type(L, 2) != LUA_TSTRING) src->f = check_file(L, 2);
    /* the slots exist before the import: filling them allocates nothing */
    lua_createtable(L, KEEP_PROGRESS, 0);
    src->keep = lua_gettop(L);
    for (int k = KEEP_LINE; k <= KEEP_PROGRESS; k++) {
        lua_pushboolean(L, 0);
        lua_rawseti(L, src->keep, k);
    }
    if (src->source) {
        lua_pushvalue(L, 2);
        lua_rawseti(L, src->keep, KEEP_SOURCE);
    }
    static const char *callbacks[] = {"on_refused", "progress"};
    for (int i = 0; i < 2; i++) {
        int at = l2lua_opt_function(L, 3, callbacks[i]);
        if (!at) continue;
        *(i ? &src->progress : &src->on_refused) = 1;
        lua_pushvalue(L, at);
        lua_rawseti(L, src->keep, KEEP_REFUSED + i);
    }
    lua_pushcfunction(L, call_lua);
    src->call = lua_gettop(L);
    luaL_checkstack(L, 8, "layer2");
    *owned = 0;
    if (lua_type(L, 2) == LUA_TSTRING) {
        const char *path = lua_tostring(L, 2);
        if (!(src->f = fopen(path, "r"))) {
            snprintf(err, L2_ERRLEN, "error: cannot open '%s': %s", path, strerror(errno));
            return -1;
        }
        *owned = 1;
    }
    return 0;
}

/* Pushes the counts: {saved, duplicate, replaced, invalid, deleted, blocked, ephemeral, lines}, or
 * without a store {valid, invalid, lines}. */
static void push_counts(lua_State *L, const uint64_t *counts, int with_store)
{
    static const char *names[] = {"saved", "duplicate", "replaced", "invalid", "deleted", "blocked", "ephemeral", "lines"};
    lua_createtable(L, 0, L2_IMPORT_NCOUNTS);
    for (int i = 0; i < L2_IMPORT_NCOUNTS; i++) {
        if (!with_store && i != L2_IMPORT_INVALID && i != L2_IMPORT_LINES && i != L2_IMPORT_SAVED) continue;
        lua_pushinteger(L, (lua_Integer)counts[i]);
        lua_setfield(L, -2, with_store || i != L2_IMPORT_SAVED ? names[i] : "valid");
    }
}

/* The import of the source at 2 with the options at 3 into vt/st (NULL: a dry run). Pushes the
 * counts (1), or nil and the message (2); -1 with a callback's or the source's error on the stack,
 * after what was read before it was saved. */
static int run_import(lua_State *L, const l2_store_if *vt, void *st, const l2_limits *lim, int flags,
                      int64_t *newest, char *err)
{
    lua_source src;
    l2_import_opts o = {.flags = flags};
    int owned;
    *newest = -1;
    if (read_import_args(L, &src, &o, &owned, err)) return l2lua_refuse(L, 0, err);
    l2_import_io io = {source_line, src.on_refused ? tell_refused : NULL, src.progress ? tell_progress : NULL, &src};
    uint64_t counts[L2_IMPORT_NCOUNTS];
    int rc = l2_import_run(vt, st, lim, &o, &io, counts, newest, err);
    free(src.line);
    if (owned) fclose(src.f);
    if (src.failed) {
        lua_rawgeti(L, src.keep, KEEP_ERROR);
        return -1;
    }
    if (rc) return l2lua_refuse(L, 0, err);
    push_counts(L, counts, vt != NULL);
    return 1;
}

int l2lua_check_lines(lua_State *L, const l2_limits *lim)
{
    char err[L2_ERRLEN];
    int64_t newest;
    lua_settop(L, 2);
    lua_pushnil(L); /* where an import has its store */
    lua_insert(L, 1);
    int n = run_import(L, NULL, NULL, lim, 0, &newest, err);
    return n < 0 ? lua_error(L) : n;
}

int l2lua_import(lua_State *L, const l2_store_if *vt, void *st, const l2_limits *lim, int flags, int64_t *newest,
                 char *err)
{
    int n = run_import(L, vt, st, lim, flags, newest, err);
    /* also after a callback's error (Ctrl-C above all): the batches saved before it get their
     * indexes */
    char after_err[L2_ERRLEN];
    if (vt->after_import && vt->after_import(st, after_err) && n >= 0) {
        lua_pop(L, n);
        memcpy(err, after_err, L2_ERRLEN);
        return l2lua_refuse(L, 0, err);
    }
    return n;
}

/* ---- a batch of events from Lua ---- */

typedef struct {
    l2_batch_item *items;
    size_t cap;
    l2_event **evs;
    l2_verdict *verdicts;
} list_state;

static int list_gc(lua_State *L)
{
    list_state *im = luaL_checkudata(L, 1, LIST_MT);
    for (size_t i = 0; i < im->cap; i++) l2_event_free(&im->items[i].ev);
    free(im->items);
    free(im->evs);
    free(im->verdicts);
    memset(im, 0, sizeof *im);
    return 0;
}

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
    list_state *im = lua_newuserdatauv(L, sizeof *im, 0);
    memset(im, 0, sizeof *im);
    luaL_setmetatable(L, LIST_MT);
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
    lua_pushcfunction(L, list_gc);
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

int l2lua_row_json(l2lua_store *s, const l2_row *r, l2_buf *out)
{
    if (r->json) return l2_buf_put(out, r->json, r->json_len) ? l2_oom(s->err) : 0;
    /* straight from the stored form; a stub (or a corrupt record) goes the long way, which says
     * what it is */
    size_t at = out->len;
    if (l2_event_bin_to_json(r->bin, r->bin_len, out, NULL) == 0) return 0;
    out->len = at;
    if (l2_event_decode_bin(&s->ev, r->bin, r->bin_len, s->err)) return -1;
    return l2_event_encode_json(&s->ev, out) ? l2_oom(s->err) : 0;
}

int l2lua_push_row(lua_State *L, l2lua_store *s, const l2_row *r, int json)
{
    if (r->json && json) {
        lua_pushlstring(L, r->json, r->json_len);
        return 0;
    }
    if (json) {
        s->out.len = 0;
        if (l2lua_row_json(s, r, &s->out)) return -1;
        lua_pushlstring(L, s->out.data, s->out.len);
        return 0;
    }
    if (r->json ? l2_event_parse_json(&s->ev, r->json, r->json_len, L2_HAVE_ALL, &s->lim, s->err)
                : l2_event_decode_bin(&s->ev, r->bin, r->bin_len, s->err))
        return -1;
    l2lua_push_event(L, &s->ev);
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
/* The options each method takes (any other name raises: l2lua_check_options). */
static const char *const SAVE_OPTS[] = {"verify", "now", "outbox", "fill", NULL};
static const char *const SAVE_LIST_OPTS[] = {"verify", "now", "threads", "outbox", "fill", NULL};
static const char *const IMPORT_OPTS[] = {"verify", "now", "threads", "batch", "on_refused", "progress", "outbox",
                                          "fill", NULL};
static const char *const DELETE_OPTS[] = {"outbox", NULL};
static const char *const QUERY_OPTS[] = {"json", "info", "max_limit", "now", "horizon", NULL};
static const char *const ITEMS_OPTS[] = {"max", "now", NULL};
static const char *const NOW_OPTS[] = {"now", NULL};
static const char *const PROGRESS_OPTS[] = {"progress", NULL};
static const char *const JSON_OPTS[] = {"json", NULL};

static int save_flags(lua_State *L, int opts)
{
    return (l2lua_opt_bool(L, opts, "outbox", 0) ? L2_SAVE_OUTBOX : 0) |
           (l2lua_opt_bool(L, opts, "fill", 0) ? L2_SAVE_FILL : 0);
}

/* store:save_event(ev [, {verify = true, now, outbox}]) -> true | false, msg */
static int store_save(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    l2lua_check_options(L, 3, "layer2: save_event", SAVE_OPTS);
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
    l2lua_check_options(L, 3, "layer2: save_events", SAVE_LIST_OPTS);
    s->save_flags = save_flags(L, 3);
    return l2lua_save_list(L, 2, 3, &s->lim, store_saver, s, s->err);
}

/* store:import(source [, opts]) -> counts | nil, err (see l2lua_import). */
static int store_import(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    l2lua_check_options(L, 3, "layer2: import", IMPORT_OPTS);
    int64_t newest;
    int n = l2lua_import(L, s->vt, s->st, &s->lim, save_flags(L, 3), &newest, s->err);
    return n < 0 ? lua_error(L) : n;
}

/* store:delete_event(id [, no_tombstone [, {outbox}]]) -> true | false, msg */
static int store_delete(lua_State *L)
{
    l2lua_store *s = l2lua_check_store(L, 1);
    l2lua_check_options(L, 4, "layer2: delete_event", DELETE_OPTS);
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
    l2lua_check_options(L, 3, "layer2: query_events", QUERY_OPTS);
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
    l2lua_check_options(L, 3, "layer2: negentropy_items", ITEMS_OPTS);
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
    l2lua_check_options(L, 3, "layer2: count_events", NOW_OPTS);
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
    l2lua_check_options(L, 4, "layer2: export", PROGRESS_OPTS);
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
    l2lua_check_options(L, 4, "layer2: changes_since", JSON_OPTS);
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
    if (l2lua_class(L, mt, store_methods, extra, store_close, store_tostring)) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, STORE_MARK);
    }
    lua_pop(L, 1);
}

void l2lua_open_store_common(lua_State *L)
{
    if (luaL_newmetatable(L, LIST_MT)) {
        lua_pushcfunction(L, list_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, SINK_MT)) {
        lua_pushcfunction(L, sink_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
}
