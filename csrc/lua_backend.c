/* The two-level store (backend.h) as a Lua userdata, `layer2.open`'s handle: one class
 * (BACKEND_MT) whose methods are C (backend_methods). lua/layer2/backend.lua completes the class
 * with what the design keeps in Lua: the options, the eviction policy's call and the on_event
 * handlers, which the C core calls through the hooks table, and the reads of a delegating handle
 * (an L2 reached by calls that yield); the Lua side's fields live in a state table, the handle's
 * user value. The store interface over a Lua object (an L2 written in Lua) is
 * lua_luastore.c; what the two share, lua_backend.h. */
#include "lua_backend.h"

/* The backend at 1, open or closed. */
static backend_ud *to_backend(lua_State *L)
{
    backend_ud *s = luaL_testudata(L, 1, BACKEND_MT);
    if (!s) luaL_argerror(L, 1, "a layer2 two-level store expected");
    return s;
}

static backend_ud *check_backend(lua_State *L)
{
    backend_ud *s = to_backend(L);
    if (!s->b) luaL_error(L, "layer2: attempt to use a closed store");
    s->L = L;
    return s;
}

/* ---- hooks: the C core asks the Lua side (protected: a failing hook is reported, never raised
 * through C; under LuaJIT a hook that yields fails here with Lua's message) ---- */

/* Calls hooks[name](db, ...nargs already pushed): 0, or -1 with the message in err. */
static int call_hook(backend_ud *s, const char *name, int nargs, char *err)
{
    lua_State *L = s->L;
    luabk_push_part(L, s, 0, "hooks");
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, nargs + 1);
        return 0;
    }
    lua_insert(L, -1 - nargs);
    lua_pushvalue(L, 1);
    lua_insert(L, -1 - nargs);
    if (luabk_pcall_from_c(L, nargs + 1, 0)) {
        snprintf(err, L2_ERRLEN, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "an error object");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}

static uint32_t reads_of(void *ud, const uint8_t *id)
{
    backend_ud *s = ud;
    return l2_learned_reads(l2_backend_learned(s->b), id);
}

static int hook_choose(void *ud, const l2_candidate *c, size_t n, uint64_t need, uint8_t (**ids)[32], size_t *nids,
                       char *err)
{
    backend_ud *s = ud;
    lua_State *L = s->L;
    luaL_checkstack(L, 8, "layer2");
    luabk_push_part(L, s, 0, "hooks");
    lua_getfield(L, -1, "choose");
    lua_remove(L, -2);
    lua_pushvalue(L, 1);
    l2lua_push_candidates(L, c, n, reads_of, s);
    lua_pushinteger(L, (lua_Integer)need);
    if (luabk_pcall_from_c(L, 3, 1)) {
        snprintf(err, L2_ERRLEN, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "an error object");
        lua_pop(L, 1);
        return -1;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_pop(L, 1);
        snprintf(err, L2_ERRLEN, "the policy gave no list");
        return -1;
    }
    size_t k;
    uint8_t(*list)[32] = l2lua_id_list(L, -1, &k);
    *ids = malloc(k ? k * 32 : 1);
    if (!*ids) {
        lua_pop(L, 2);
        return l2_oom(err);
    }
    memcpy(*ids, list, k * 32);
    *nids = k;
    lua_pop(L, 2);
    return 0;
}

static void hook_log(void *ud, const char *msg)
{
    backend_ud *s = ud;
    char err[L2_ERRLEN];
    lua_pushstring(s->L, msg);
    call_hook(s, "log", 1, err);
}

/* Pushes a gc report: {evicted, dropped, freed, pruned, repacked, used, seconds[, sent]} (sent
 * by a timer's step, which drains the outbox). */
static void push_gc_report(lua_State *L, int force, const l2_gc_report *r)
{
    static const char *names[] = {"evicted", "dropped", "freed", "sent", "pruned", "repacked", "used"};
    const uint64_t values[] = {r->evicted, r->dropped, r->freed, r->sent, r->pruned, r->repacked, r->used};
    lua_createtable(L, 0, 8);
    for (int i = 0; i < 7; i++) {
        if (i == 3 && force != L2_GC_TIMER) continue;
        lua_pushinteger(L, (lua_Integer)values[i]);
        lua_setfield(L, -2, names[i]);
    }
    lua_pushnumber(L, r->seconds);
    lua_setfield(L, -2, "seconds");
}

/* A pass the core started itself ended: the state's observe_gc(report, full) hears of it, when a
 * test or a benchmark set one (errors are logged). */
static void hook_evicted(void *ud, int force, const l2_gc_report *r)
{
    backend_ud *s = ud;
    lua_State *L = s->L;
    luabk_push_part(L, s, 0, "state");
    lua_getfield(L, -1, "observe_gc");
    lua_remove(L, -2);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    push_gc_report(L, force, r);
    lua_pushboolean(L, force == L2_GC_FULL);
    if (luabk_pcall_from_c(L, 2, 0)) {
        char err[L2_ERRLEN];
        snprintf(err, sizeof err, "observe_gc failed: %s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "an error object");
        lua_pop(L, 1);
        hook_log(s, err);
    }
}


/* The policy, through hooks.choose(db, candidates, need) -> ids. */

/* The two lists of handlers: on_event's and on_removed's, each a table in the registry entry. */
enum { HANDLERS_EVENT, HANDLERS_REMOVED };
static const char *const handler_lists[2] = {"handlers", "removal_handlers"};
static const char *const handler_methods[2] = {"on_event", "on_removed"};

/* The list's table (on top) without its slots taken off. */
static void compact_handlers(lua_State *L, backend_ud *s, int list)
{
    int n = 0;
    for (int i = 1; i <= s->nhandlers[list]; i++) {
        lua_rawgeti(L, -1, i);
        if (lua_isfunction(L, -1)) lua_rawseti(L, -2, ++n);
        else lua_pop(L, 1);
    }
    for (int i = n + 1; i <= s->nhandlers[list]; i++) {
        lua_pushnil(L);
        lua_rawseti(L, -2, i);
    }
    s->nhandlers[list] = n;
}

/* Both lists without the slots taken off while handlers were being called; removals heard only
 * while someone listens. */
static void settle_handlers(lua_State *L, backend_ud *s)
{
    for (int list = HANDLERS_EVENT; list <= HANDLERS_REMOVED; list++) {
        luabk_push_part(L, s, 0, handler_lists[list]);
        compact_handlers(L, s, list);
        lua_pop(L, 1);
    }
    l2_backend_hear_removals(s->b, s->nhandlers[HANDLERS_REMOVED] > 0);
}

/* Calls each handler of the list with the nargs values on top (which it pops); a failing one is
 * reported. */
static void fire(lua_State *L, backend_ud *s, int list, int nargs)
{
    luaL_checkstack(L, nargs + 4, "layer2");
    luabk_push_part(L, s, 0, handler_lists[list]);
    lua_insert(L, -nargs - 1);
    int n = s->nhandlers[list]; /* one added by a handler hears the next one */
    s->firing++;
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, -nargs - 1, i);
        if (!lua_isfunction(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        for (int a = 0; a < nargs; a++) lua_pushvalue(L, -nargs - 1);
        if (luabk_pcall_from_c(L, nargs, 0)) {
            char msg[L2_ERRLEN];
            snprintf(msg, sizeof msg, "an %s handler failed: %s", handler_methods[list],
                     lua_isstring(L, -1) ? lua_tostring(L, -1) : "an error object");
            lua_pop(L, 1);
            hook_log(s, msg);
        }
    }
    s->firing--;
    lua_pop(L, nargs + 1); /* the arguments and the list */
    if (!s->firing) settle_handlers(L, s);
}

/* on_event's handlers hear an event accepted here (origin "local") or brought in by a poll ("l2") */
static void hook_accepted(void *ud, const l2_event *ev, int from_l2)
{
    backend_ud *s = ud;
    lua_State *L = s->L;
    if (!s->nhandlers[HANDLERS_EVENT]) return; /* no handler: no event table to make */
    luaL_checkstack(L, 4, "layer2");
    l2lua_push_event(L, ev);
    lua_pushstring(L, from_l2 ? "l2" : "local");
    fire(L, s, HANDLERS_EVENT, 2);
}

/* on_removed's handlers hear an event that went: its id, "replaced" or "deleted", the origin */
static void hook_removed(void *ud, const uint8_t id[32], int op, int from_l2)
{
    backend_ud *s = ud;
    lua_State *L = s->L;
    if (!s->nhandlers[HANDLERS_REMOVED]) return;
    char hex[65];
    l2_hex_encode(hex, id, 32);
    luaL_checkstack(L, 4, "layer2");
    lua_pushlstring(L, hex, 64);
    lua_pushstring(L, op == L2_CHANGE_REPLACED ? "replaced" : "deleted");
    lua_pushstring(L, from_l2 ? "l2" : "local");
    fire(L, s, HANDLERS_REMOVED, 3);
}

/* ---- the methods ---- */

static int backend_saver(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out, char *err)
{
    backend_ud *s = ud;
    (void)err;
    l2_backend_save(s->b, evs, n, now, out);
    return 0;
}

/* db:save_event(ev [, {now, verify}]) -> true | false, msg. verify = false: the caller has checked
 * the event's id and signature itself (layer2.relay does before its policy sees it). */
/* The options each method takes (any other name raises: l2lua_check_options); the methods that
 * hand their call to a store have the store's. */
static const char *const SAVE_OPTS[] = {"verify", "now", NULL};
static const char *const SAVE_LIST_OPTS[] = {"verify", "now", "threads", NULL};
static const char *const QUERY_OPTS[] = {"json", "max_limit", "now", "l1_only", NULL};
static const char *const FRAMES_OPTS[] = {"max_limit", "now", "l1_only", NULL};
static const char *const NOW_OPTS[] = {"now", NULL};
static const char *const IMPORT_OPTS[] = {"verify", "now", "threads", "batch", "on_refused", "progress", NULL};

static int bk_save_event(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2lua_check_table_or_string(L, 2);
    l2lua_check_options(L, 3, "layer2: save_event", SAVE_OPTS);
    l2_event *evp = &s->ev;
    int verify = l2lua_opt_bool(L, 3, "verify", 1);
    if (l2lua_event_arg(L, 2, &s->ev, L2_HAVE_ALL | (verify ? L2_LENIENT_IDSIG : 0), &s->lim, s->err))
        return l2lua_refuse(L, 1, s->err);
    if (verify) {
        l2_buf scratch;
        l2_buf_init(&scratch);
        int bad = l2_event_verify(&s->ev, &scratch, s->err);
        l2_buf_free(&scratch);
        if (bad) return l2lua_refuse(L, 1, s->err);
    }
    l2_verdict v;
    l2_backend_save(s->b, &evp, 1, l2lua_opt_now(L, 3), &v);
    if (!v.ok) return l2lua_refuse(L, 1, v.msg);
    lua_pushboolean(L, 1);
    return 1;
}

/* db:save_events(list [, {now, verify}]) -> verdicts (true or the refusal's message, in order);
 * verify = false as save_event's */
static int bk_save_events(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2lua_check_options(L, 3, "layer2: save_events", SAVE_LIST_OPTS);
    lua_settop(L, 3);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)l2lua_opt_now(L, 3));
    lua_setfield(L, -2, "now");
    lua_pushboolean(L, l2lua_opt_bool(L, 3, "verify", 1));
    lua_setfield(L, -2, "verify");
    if (lua_type(L, 3) == LUA_TTABLE) {
        lua_getfield(L, 3, "threads");
        lua_setfield(L, -2, "threads");
    }
    return l2lua_save_list(L, 2, 4, &s->lim, backend_saver, s, s->err);
}

/* db:delete_event(id [, no_tombstone]) -> true | false, msg */
static int bk_delete_event(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint8_t id[32];
    size_t n;
    int found;
    const char *p = luaL_checklstring(L, 2, &n);
    if (n != 64 || l2_hex_decode(id, p, 32)) return l2lua_refuse(L, 1, "invalid: id must be 64 lowercase hex characters");
    if (l2_backend_delete(s->b, id, !lua_toboolean(L, 3), &found, s->err)) return l2lua_refuse(L, 1, s->err);
    if (!found) return l2lua_refuse(L, 1, "not found: no stored event has this id");
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct {
    lua_State *L;
    backend_ud *s;
    int json, failed;
    lua_Integer n;
    /* query_frames: the answer as websocket frames into `frames`, each prefix .. JSON .. "]" */
    l2_buf *frames, *json_buf;
    const char *prefix;
    size_t prefix_len;
} rows_state;

#define FRAMES_KEPT (1u << 20)

/* One websocket text frame as a server sends it (final, unmasked): prefix, json, "]". */
static int put_frame(l2_buf *out, const char *prefix, size_t pn, const char *json, size_t jn)
{
    uint64_t n = pn + jn + 1;
    uint8_t h[10] = {0x81};
    size_t hn = 2;
    if (n < 126) {
        h[1] = (uint8_t)n;
    } else if (n < 65536) {
        h[1] = 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hn = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++) h[2 + i] = (uint8_t)(n >> (56 - 8 * i));
        hn = 10;
    }
    return l2_buf_reserve(out, hn + n) || l2_buf_put(out, h, hn) || l2_buf_put(out, prefix, pn) ||
           l2_buf_put(out, json, jn) || l2_buf_putc(out, ']');
}

static int push_result(void *ud, const l2_row *r)
{
    rows_state *q = ud;
    if (q->frames) {
        q->json_buf->len = 0;
        if (l2lua_row_json(q->s->l1, r, q->json_buf)) {
            q->failed = 1;
            return 1;
        }
        if (put_frame(q->frames, q->prefix, q->prefix_len, q->json_buf->data, q->json_buf->len)) {
            l2_oom(q->s->l1->err);
            q->failed = 1;
            return 1;
        }
        q->n++;
        return 0;
    }
    if (l2lua_push_row(q->L, q->s->l1, r, q->json)) {
        q->failed = 1;
        return 1;
    }
    lua_rawseti(q->L, -2, (int)++q->n);
    return 0;
}

/* A query's rows as frames (prefix at prefix_idx, a string) into the handle's buffers, or into
 * `spare` ones when those hold another call's; frames_done gives them back. */
static void frames_begin(lua_State *L, backend_ud *s, rows_state *q, int prefix_idx, l2_buf spare[2])
{
    q->prefix = luaL_checklstring(L, prefix_idx, &q->prefix_len);
    l2_buf_init(&spare[0]);
    l2_buf_init(&spare[1]);
    q->frames = s->frames_busy ? &spare[0] : &s->frames;
    q->json_buf = s->frames_busy ? &spare[1] : &s->frame_json;
    s->frames_busy += q->frames == &s->frames;
    q->frames->len = 0;
}

static void frames_done(backend_ud *s, rows_state *q, l2_buf spare[2])
{
    if (q->frames == &s->frames) {
        s->frames_busy = 0;
        /* one large answer does not pin its memory for the handle's life */
        if (s->frames.cap > FRAMES_KEPT) l2_buf_free(&s->frames);
    } else {
        l2_buf_free(&spare[0]);
        l2_buf_free(&spare[1]);
    }
}

static void put_filters(backend_ud *s, l2lua_filters *fs);

/* The filters at 2, read into the handle's own list, or into `spare` when that one is busy (a Lua
 * L2 querying this handle from inside one of its calls); NULL with s->err for bad filters.
 * put_filters gives them back. */
static l2lua_filters *take_filters(lua_State *L, backend_ud *s, l2lua_filters *spare)
{
    l2lua_filters *fs = &s->filters;
    if (s->filters_busy) {
        fs = spare;
        l2lua_filters_init(fs, s->filters.max);
    }
    s->filters_busy += fs == &s->filters;
    if (l2lua_read_filters(L, 2, fs, s->err) == 0 && l2lua_filters_unsupported(fs, s->err) == 0) return fs;
    put_filters(s, fs);
    return NULL;
}

static void put_filters(backend_ud *s, l2lua_filters *fs)
{
    if (fs == &s->filters) s->filters_busy = 0;
    else l2lua_filters_free(fs);
}

static void push_levels(lua_State *L, const l2_levels *lv)
{
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)lv->l1);
    lua_setfield(L, -2, "l1");
    lua_pushinteger(L, (lua_Integer)lv->stubs);
    lua_setfield(L, -2, "stubs");
    lua_pushinteger(L, (lua_Integer)lv->l2);
    lua_setfield(L, -2, "l2");
    if (lv->missing) {
        lua_pushinteger(L, (lua_Integer)lv->missing);
        lua_setfield(L, -2, "missing");
    }
    if (lv->l2_failed) {
        lua_pushstring(L, lv->l2_error);
        lua_setfield(L, -2, "l2_error");
    }
}

/* A read's options at idx: max_limit, now (*flags gets L2_QUERY_NOW_GIVEN) and l1_only. */
static unsigned read_query_opts(lua_State *L, backend_ud *s, int idx, int64_t *max_limit, int64_t *now)
{
    *max_limit = l2lua_opt_int(L, idx, "max_limit", s->max_limit);
    *now = l2lua_opt_now(L, idx);
    unsigned flags = l2lua_opt_bool(L, idx, "l1_only", 0) ? L2_QUERY_L1_ONLY : 0;
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_getfield(L, idx, "now");
        if (!lua_isnil(L, -1)) flags |= L2_QUERY_NOW_GIVEN;
        lua_pop(L, 1);
    }
    return flags;
}

/* Pushes a framed answer: the frames, their number, the levels. */
static int push_frames(lua_State *L, backend_ud *s, rows_state *q, l2_buf spare[2], const l2_levels *lv)
{
    lua_pushlstring(L, q->frames->data, q->frames->len);
    frames_done(s, q, spare);
    lua_pushinteger(L, q->n);
    push_levels(L, lv);
    return 3;
}

/* query_l1(db, filters [, {json, max_limit, now} [, prefix]]) -> events, levels when L1 proves the
 * answer (under the horizon, every body held), or with a prefix frames, n, levels (query_frames);
 * false when it cannot (nothing else is done: under nginx with PostgreSQL the caller runs the
 * rest in the thread pool); nil, err for bad filters. */
static int pv_query_l1(lua_State *L)
{
    backend_ud *s = check_backend(L);
    int framed = !lua_isnoneornil(L, 4);
    l2lua_check_options(L, 3, framed ? "layer2: query_frames" : "layer2: query_events",
                        framed ? FRAMES_OPTS : QUERY_OPTS);
    lua_settop(L, 4);
    rows_state q = {L, s, l2lua_opt_bool(L, 3, "json", 0), 0, 0, NULL, NULL, NULL, 0};
    int64_t max_limit, now;
    read_query_opts(L, s, 3, &max_limit, &now);
    l2_buf spare[2];
    if (framed) frames_begin(L, s, &q, 4, spare);
    l2lua_filters sparef, *fs = take_filters(L, s, &sparef);
    int answered = 0, rc = -1;
    uint64_t rows = 0;
    if (fs) {
        if (!framed) lua_newtable(L);
        rc = l2_backend_query_l1(s->b, fs->v, fs->n, max_limit, now, push_result, &q, &answered, &rows, s->err);
        put_filters(s, fs);
    }
    if (rc || q.failed || !answered) {
        if (framed) frames_done(s, &q, spare);
        if (rc) return l2lua_refuse(L, 0, s->err);
        if (q.failed) return l2lua_refuse(L, 0, s->l1->err);
        lua_pushboolean(L, 0);
        return 1;
    }
    l2_backend_hit(s->b, L2_LEVEL_L1, rows);
    l2_levels lv = {.l1 = rows};
    if (framed) return push_frames(L, s, &q, spare, &lv);
    push_levels(L, &lv);
    return 2;
}

/* db:query_events(filters [, {json, max_limit, now, l1_only}]) -> events, levels | nil, err:
 * the read on both levels (l2_backend_query). */
static int bk_query_events(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2lua_check_options(L, 3, "layer2: query_events", QUERY_OPTS);
    lua_settop(L, 3);
    rows_state q = {L, s, l2lua_opt_bool(L, 3, "json", 0), 0, 0, NULL, NULL, NULL, 0};
    int64_t max_limit, now;
    unsigned flags = read_query_opts(L, s, 3, &max_limit, &now);
    l2lua_filters spare, *fs = take_filters(L, s, &spare);
    if (!fs) return l2lua_refuse(L, 0, s->err);
    l2_levels lv;
    lua_newtable(L);
    int rc = l2_backend_query(s->b, fs->v, fs->n, max_limit, now, flags, push_result, &q, &lv, s->err);
    put_filters(s, fs);
    if (rc) return l2lua_refuse(L, 0, s->err);
    if (q.failed) return l2lua_refuse(L, 0, s->l1->err);
    push_levels(L, &lv);
    return 2;
}

/* db:query_frames(filters, prefix [, {max_limit, now, l1_only}]) -> frames, n, levels | nil, err:
 * query_events' answer as a relay sends it, in one string: n websocket text frames (a server's:
 * final, unmasked), each prefix .. the event's JSON .. "]" (prefix: '["EVENT","sub",'). No Lua
 * string per event, and one write for the whole answer. */
static int bk_query_frames(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2lua_check_options(L, 4, "layer2: query_frames", FRAMES_OPTS);
    lua_settop(L, 4);
    rows_state q = {L, s, 1, 0, 0, NULL, NULL, NULL, 0};
    int64_t max_limit, now;
    unsigned flags = read_query_opts(L, s, 4, &max_limit, &now);
    l2_buf spare[2];
    frames_begin(L, s, &q, 3, spare);
    l2lua_filters sparef, *fs = take_filters(L, s, &sparef);
    l2_levels lv;
    int rc = -1;
    if (fs) {
        rc = l2_backend_query(s->b, fs->v, fs->n, max_limit, now, flags, push_result, &q, &lv, s->err);
        put_filters(s, fs);
    }
    if (rc || q.failed) {
        frames_done(s, &q, spare);
        return l2lua_refuse(L, 0, rc ? s->err : s->l1->err);
    }
    return push_frames(L, s, &q, spare, &lv);
}

/* db:gc([force]) -> {evicted, dropped, freed, pruned, repacked, used, seconds[, sent]}: one eviction step
 * (l2_backend_gc); force true evicts whatever, "full" after a write found L1 full. */
static int bk_gc(lua_State *L)
{
    backend_ud *s = check_backend(L);
    int force = lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "full") == 0 ? L2_GC_FULL
                : lua_toboolean(L, 2)                                                   ? L2_GC_FORCE
                                                                                         : L2_GC_TIMER;
    l2_gc_report r;
    if (l2_backend_gc(s->b, force, &r, s->err)) return l2lua_refuse(L, 0, s->err);
    push_gc_report(L, force, &r);
    return 1;
}

/* db:poll([now]) -> {sent, received, deleted[, error]}: one poll step (l2_backend_poll) */
static int bk_poll(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2_poll_report r;
    if (l2_backend_poll(s->b, l2lua_time_arg(L, 2), &r, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, (lua_Integer)r.sent);
    lua_setfield(L, -2, "sent");
    lua_pushinteger(L, (lua_Integer)r.received);
    lua_setfield(L, -2, "received");
    lua_pushinteger(L, (lua_Integer)r.deleted);
    lua_setfield(L, -2, "deleted");
    if (r.failed) {
        lua_pushstring(L, r.error);
        lua_setfield(L, -2, "error");
    }
    return 1;
}

/* Adds fn (argument 2) to the list; returns it. */
static int add_handler(lua_State *L, int list)
{
    backend_ud *s = check_backend(L);
    if (!lua_isfunction(L, 2)) return luaL_error(L, "layer2: %s takes a function", handler_methods[list]);
    luabk_push_part(L, s, 0, handler_lists[list]);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, ++s->nhandlers[list]);
    if (list == HANDLERS_REMOVED) l2_backend_hear_removals(s->b, 1);
    lua_settop(L, 2);
    return 1;
}

/* Takes fn (argument 2) off the list (also while handlers are being called); whether it was on it. */
static int take_handler(lua_State *L, int list, const char *method)
{
    backend_ud *s = check_backend(L);
    if (!lua_isfunction(L, 2)) return luaL_error(L, "layer2: %s takes a function", method);
    luabk_push_part(L, s, 0, handler_lists[list]);
    int found = 0;
    for (int i = 1; i <= s->nhandlers[list] && !found; i++) {
        lua_rawgeti(L, -1, i);
        found = lua_rawequal(L, -1, 2);
        lua_pop(L, 1);
        if (!found) continue;
        lua_pushboolean(L, 0);
        lua_rawseti(L, -2, i);
    }
    if (found && !s->firing) settle_handlers(L, s);
    lua_pushboolean(L, found);
    return 1;
}

/* db:on_event(fn) -> fn: fn(event, origin) for each event accepted from now on: saved here or
 * ephemeral ("local"), or brought in by a poll ("l2"); never a cache fill */
static int bk_on_event(lua_State *L)
{
    return add_handler(L, HANDLERS_EVENT);
}

/* db:off_event(fn) -> whether fn was a handler: it hears no event from now on (also when a
 * handler removes itself or another while they are being called) */
static int bk_off_event(lua_State *L)
{
    return take_handler(L, HANDLERS_EVENT, "off_event");
}

/* db:on_removed(fn) -> fn: fn(id, how, origin) for each event that goes from now on: "replaced"
 * (an older version a save here replaced) or "deleted" (a target of a NIP-09 deletion saved here,
 * or deleted with delete_event): origin "local"; or an event L1 held that L2's feed says another
 * writer removed: origin "l2" */
static int bk_on_removed(lua_State *L)
{
    return add_handler(L, HANDLERS_REMOVED);
}

/* db:off_removed(fn) -> whether fn was a handler */
static int bk_off_removed(lua_State *L)
{
    return take_handler(L, HANDLERS_REMOVED, "off_removed");
}

/* Calls the L1 (level 1) or L2 (2) store's own method with this call's arguments. */
static int delegate(lua_State *L, int level, const char *method)
{
    backend_ud *s = check_backend(L);
    int n = lua_gettop(L);
    luabk_push_part(L, s, level, NULL);
    lua_getfield(L, -1, method);
    lua_replace(L, 1);
    lua_insert(L, 2);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* db:export(sink [, pubkeys [, opts]]): L2's, the authority's (L1's without an L2) */
static int bk_export(lua_State *L)
{
    return delegate(L, to_backend(L)->l2vt ? 2 : 1, "export");
}

/* db:negentropy_items(filters [, {max, now}]): NIP-77 items of L2, the authority (L1's without
 * an L2), as store:negentropy_items gives them */
static int bk_negentropy_items(lua_State *L)
{
    return delegate(L, to_backend(L)->l2vt ? 2 : 1, "negentropy_items");
}

/* db:changes_since(cursor [, max [, opts]]): L1's change feed, every save this L1 heard of */
static int bk_changes_since(lua_State *L)
{
    return delegate(L, 1, "changes_since");
}

/* db:count_events(filters [, {now}]) -> n | nil, err: L2's count, L1's when L2 fails */
static int bk_count_events(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2lua_check_options(L, 3, "layer2: count_events", NOW_OPTS);
    int64_t now = l2lua_opt_now(L, 3);
    l2lua_filters spare, *fs = take_filters(L, s, &spare);
    if (!fs) return l2lua_refuse(L, 0, s->err);
    uint64_t n;
    int rc = l2_backend_count(s->b, fs->v, fs->n, now, &n, s->err);
    put_filters(s, fs);
    if (rc) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* db:import(source [, opts]) -> counts | nil, err (store:import's): into L2, the authority;
 * then L1 learns of it (l2_backend_imported). */
static int bk_import(lua_State *L)
{
    backend_ud *s = check_backend(L);
    if (!s->l2vt) return delegate(L, 1, "import");
    l2lua_check_options(L, 3, "layer2: import", IMPORT_OPTS);
    lua_settop(L, 3);
    int64_t newest;
    int n = l2lua_import(L, s->l2vt, s->l2st, &s->lim, 0, &newest, s->err);
    char err[L2_ERRLEN];
    /* also when the import was stopped part way (n < 0, the error on the stack): what it saved
     * is in L2 */
    if (l2_backend_imported(s->b, newest, err)) return l2lua_refuse(L, 0, err);
    return n < 0 ? lua_error(L) : n;
}

/* db:nuke() and db:sync() -> true | nil, err */
static int done(lua_State *L, int (*op)(l2_backend *, char *))
{
    backend_ud *s = check_backend(L);
    if (op(s->b, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* db:sweep([now]) -> the number of expired events removed (from L2, the authority; L1's copies go too) */
static int bk_sweep(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint64_t removed;
    if (l2_backend_sweep(s->b, l2lua_time_arg(L, 2), &removed, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushinteger(L, (lua_Integer)removed);
    return 1;
}

static int bk_nuke(lua_State *L)
{
    return done(L, l2_backend_nuke);
}

static int bk_sync(lua_State *L)
{
    return done(L, l2_backend_sync);
}

/* db:check() -> ok, problems (L1's, then L2's prefixed "L2: ") */
static int bk_check(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint64_t n;
    lua_newtable(L);
    if (l2_backend_check(s->b, l2lua_problem, L, &n, s->err)) return l2lua_refuse(L, 0, s->err);
    return l2lua_check_result(L, n);
}

static void backend_stat_field(void *ud, const char *name, uint64_t value)
{
    lua_State *L = ud;
    lua_pushinteger(L, (lua_Integer)value);
    lua_setfield(L, -2, name);
}

/* The decimal value L1 keeps under `key`, or def. */
static int64_t meta_number(backend_ud *s, const char *key, int64_t def)
{
    int found;
    int64_t v;
    return l2_store_meta_get_int(s->l1->st, key, &v, &found, s->err) == 0 && found ? v : def;
}

/* {l1, stubs, l2, missing, answers}: what answered this handle's queries, by level */
static void push_hits(lua_State *L, backend_ud *s)
{
    lua_createtable(L, 0, L2_LEVELS);
    for (int i = 0; i < L2_LEVELS; i++) {
        lua_pushinteger(L, (lua_Integer)l2_backend_hits(s->b, i));
        lua_setfield(L, -2, l2_backend_level_names[i]);
    }
}

/* db:stats() -> {l1, l2, horizon, size_limit, high_water, low_water, hits, outbox, policy,
 * poll_lag, feed_position, feed_ahead}: L1's and L2's own figures (L2's left out when it cannot give them) and the
 * backend's */
static int bk_stats(lua_State *L)
{
    backend_ud *s = check_backend(L);
    const l2_backend_opts *o = l2_backend_options(s->b);
    lua_createtable(L, 0, 10);
    lua_createtable(L, 0, 12);
    if (s->l1->vt->stats(s->l1->st, backend_stat_field, L, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_getfield(L, -1, "outbox");
    lua_setfield(L, -3, "outbox");
    lua_setfield(L, -2, "l1");
    if (s->l2vt && s->l2vt->stats && !s->delegating) {
        lua_createtable(L, 0, 12);
        char err[L2_ERRLEN];
        if (s->l2vt->stats(s->l2st, backend_stat_field, L, err) == 0) lua_setfield(L, -2, "l2");
        else lua_pop(L, 1);
    }
    static const char *names[] = {"horizon", "size_limit", "high_water", "low_water"};
    const int64_t values[] = {l2_backend_horizon(s->b), (int64_t)o->size_limit, o->high_water, o->low_water};
    for (int i = 0; i < 4; i++) {
        if (i == 1 && !o->size_limit) continue;
        lua_pushinteger(L, (lua_Integer)values[i]);
        lua_setfield(L, -2, names[i]);
    }
    /* L1's place in L2's feed, and the ranges applied ahead of it */
    uint64_t pos;
    int known;
    size_t ahead;
    if (s->l2vt && s->l2vt->feed && l2_store_feed_pos(s->l1->st, &pos, &known, &ahead, s->err) == 0 && known) {
        lua_pushinteger(L, (lua_Integer)pos);
        lua_setfield(L, -2, "feed_position");
        lua_pushinteger(L, (lua_Integer)ahead);
        lua_setfield(L, -2, "feed_ahead");
    }
    /* seconds since the last poll that reached L2 */
    int64_t polled = meta_number(s, "poll_at", -1);
    if (polled >= 0) {
        lua_pushinteger(L, (lua_Integer)((int64_t)time(NULL) - polled));
        lua_setfield(L, -2, "poll_lag");
    }
    push_hits(L, s);
    lua_setfield(L, -2, "hits");
    luabk_push_part(L, s, 0, "state");
    lua_getfield(L, -1, "policy");
    lua_getfield(L, -1, "name");
    lua_setfield(L, -4, "policy");
    lua_pop(L, 2);
    return 1;
}

static int bk_close(lua_State *L)
{
    backend_ud *s = to_backend(L);
    if (!s->b) return 0;
    l2_backend_close(s->b);
    s->b = NULL;
    for (int i = 1; i <= (s->own_l2 ? 2 : 1); i++) {
        luabk_push_part(L, s, i, NULL);
        lua_getfield(L, -1, "close");
        lua_insert(L, -2);
        lua_pcall(L, 1, 0, 0) && (lua_pop(L, 1), 0);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
    s->ref = LUA_NOREF;
    l2_event_free(&s->ev);
    l2lua_filters_free(&s->filters);
    l2_buf_free(&s->frames);
    l2_buf_free(&s->frame_json);
    return 0;
}

static int bk_is_closed(lua_State *L)
{
    backend_ud *s = to_backend(L);
    lua_pushboolean(L, s->b == NULL);
    return 1;
}

static int bk_tostring(lua_State *L)
{
    backend_ud *s = to_backend(L);
    lua_pushfstring(L, "layer2 store (%s%s): %p", s->dir, s->b ? "" : ", closed", (void *)s);
    return 1;
}

static int bk_path(lua_State *L)
{
    backend_ud *s = check_backend(L);
    lua_pushstring(L, s->dir);
    return 1;
}

/* ---- what the Lua side of the class uses (layer2.core.backend_private) ---- */

/* admit_bar(db [, bar]) -> the bar (set first when given) */
static int pv_admit_bar(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2_learned *l = l2_backend_learned(s->b);
    if (!lua_isnoneornil(L, 2)) l2_learned_set_admit_bar(l, (uint32_t)luaL_checkinteger(L, 2));
    lua_pushinteger(L, l2_learned_admit_bar(l));
    return 1;
}

/* inside_c() -> true while Lua runs called from the C core (a hook, a Lua L2's method) */
static int pv_inside_c(lua_State *L)
{
    lua_pushboolean(L, luabk_inside_c());
    return 1;
}

/* defer_writes(db, on) -> whether the handle may ever keep anything: a read's L1 writes kept,
 * not written (l2_backend_defer_writes) */
static int pv_defer_writes(lua_State *L)
{
    backend_ud *s = check_backend(L);
    lua_pushboolean(L, l2_backend_defer_writes(s->b, lua_toboolean(L, 2)));
    return 1;
}

/* take_deferred(db [, with_reads]) -> records (a string), dropped | nil, dropped when nothing was
 * kept (l2_backend_take_deferred) */
static int pv_take_deferred(lua_State *L)
{
    backend_ud *s = check_backend(L);
    l2_buf out;
    l2_buf_init(&out);
    uint64_t dropped = 0;
    if (l2_backend_take_deferred(s->b, &out, lua_toboolean(L, 2), &dropped)) {
        l2_buf_free(&out);
        return luaL_error(L, "layer2: out of memory");
    }
    if (out.len) lua_pushlstring(L, out.data, out.len);
    else lua_pushnil(L);
    l2_buf_free(&out);
    lua_pushinteger(L, (lua_Integer)dropped);
    return 2;
}

/* apply_deferred(db, records) -> true | nil, err: another handle's kept writes, written here */
static int pv_apply_deferred(lua_State *L)
{
    backend_ud *s = check_backend(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    if (l2_backend_apply_deferred(s->b, data, len, s->err)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* The Lua side's state at 6 becomes the handle's user value, with db.l1 and db.l2 in it. */
static void set_state(lua_State *L, int self)
{
    lua_pushvalue(L, 2);
    lua_setfield(L, 6, "l1");
    lua_pushvalue(L, 3);
    lua_setfield(L, 6, "l2");
    lua_pushvalue(L, 6);
    l2lua_setuservalue(L, self);
    luaL_setmetatable(L, BACKEND_MT);
}

/* db.x: the class's methods (a delegating handle's own first: upvalue 2), then the Lua side's
 * state (policy, log, l1, l2, observe_gc, ...). */
static int bk_index(lua_State *L)
{
    backend_ud *s = lua_touserdata(L, 1);
    for (int up = s->delegating ? 2 : 1; up >= 1; up--) {
        lua_pushvalue(L, 2);
        lua_rawget(L, lua_upvalueindex(up));
        if (!lua_isnil(L, -1)) return 1;
        lua_pop(L, 1);
    }
    l2lua_getuservalue(L, 1);
    lua_pushvalue(L, 2);
    lua_rawget(L, -2);
    return 1;
}

/* db.x = v: into the state; a method of the class is not replaced per handle (what a host needs
 * of them is an option of layer2.open). */
static int bk_newindex(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1))
        return luaL_error(L, "layer2: %s is a method of the store and cannot be replaced", lua_tostring(L, 2));
    l2lua_getuservalue(L, 1);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, -3);
    return 0;
}

/* L2 at 3: a store userdata (its own interface), a Lua object with the store methods (the
 * interface over it: polled by its feed when it has one, else by created_at), or nil. */
static void set_l2(lua_State *L, backend_ud *s)
{
    if (lua_type(L, 3) == LUA_TUSERDATA) {
        l2lua_store *st = l2lua_check_store(L, 3);
        s->l2vt = st->vt;
        s->l2st = st->st;
    } else if (!lua_isnil(L, 3)) {
        s->luavt = luabk_luastore_if;
        lua_getfield(L, 3, "changes_since");
        if (!lua_isfunction(L, -1)) s->luavt.changes = NULL;
        lua_pop(L, 1);
        s->l2vt = &s->luavt;
        s->l2st = s;
    }
}

/* The backend's options, from the table at 4 (backend.lua has checked them); the core's defaults
 * for those not given. */
/* opts.admit (at 4): "second" (or nil: def), "always" or "never", in L2_ADMIT_* order */
static int admit_option(lua_State *L, int def)
{
    static const char *const modes[] = {"second", "always", "never", NULL};
    lua_getfield(L, 4, "admit");
    int mode = lua_isnil(L, -1) ? def : luaL_checkoption(L, -1, NULL, modes);
    lua_pop(L, 1);
    return mode;
}

static l2_backend_opts read_options(lua_State *L)
{
    const l2_backend_opts *d = &l2_backend_default_opts;
    l2_backend_opts o = {
        .size_limit = (uint64_t)l2lua_opt_int(L, 4, "size_limit", (int64_t)d->size_limit),
        .high_water = (unsigned)l2lua_opt_int(L, 4, "high_water", d->high_water),
        .low_water = (unsigned)l2lua_opt_int(L, 4, "low_water", d->low_water),
        .evict_delete = l2lua_opt_bool(L, 4, "evict_delete", d->evict_delete),
        .stub_share = d->stub_share,
        .changes_kept = (uint64_t)l2lua_opt_int(L, 4, "changes_kept", (int64_t)d->changes_kept),
        .by_created = l2lua_opt_bool(L, 4, "by_created", d->by_created),
        .history = (uint64_t)l2lua_opt_int(L, 4, "history", (int64_t)d->history),
        .admit = admit_option(L, d->admit),
        .poll_frequency = l2lua_opt_int(L, 4, "poll_frequency", d->poll_frequency),
        .poll_overlap = (unsigned)l2lua_opt_int(L, 4, "poll_overlap", d->poll_overlap),
        .missing_ttl = l2lua_opt_int(L, 4, "missing_ttl", d->missing_ttl),
        .answers_ttl = l2lua_opt_int(L, 4, "answers_ttl", d->answers_ttl),
        .answers_max_ids = (uint64_t)l2lua_opt_int(L, 4, "answers_max_ids", (int64_t)d->answers_max_ids),
        .future_limit = l2lua_opt_int(L, 4, "future_limit", d->future_limit),
    };
    lua_getfield(L, 4, "stub_share");
    if (lua_isnumber(L, -1)) o.stub_share = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return o;
}

/* backend_private.defaults: the defaults backend.lua checks options against. */
static void push_defaults(lua_State *L)
{
    const l2_backend_opts *d = &l2_backend_default_opts;
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, (lua_Integer)d->high_water);
    lua_setfield(L, -2, "high_water");
    lua_pushinteger(L, (lua_Integer)d->low_water);
    lua_setfield(L, -2, "low_water");
    lua_pushnumber(L, d->stub_share);
    lua_setfield(L, -2, "stub_share");
    lua_pushinteger(L, (lua_Integer)d->future_limit);
    lua_setfield(L, -2, "future_limit");
    lua_pushinteger(L, (lua_Integer)d->poll_frequency);
    lua_setfield(L, -2, "poll_frequency");
    lua_pushinteger(L, L2LUA_MAX_LIMIT);
    lua_setfield(L, -2, "max_limit");
}

/* What the handle keeps referenced: {l1, l2, hooks = (5), state = (6), strings = {}, handlers = {}}. */
static int keep_parts(lua_State *L)
{
    lua_createtable(L, 2, 4);
    lua_pushvalue(L, 2);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, 3);
    lua_rawseti(L, -2, 2);
    lua_pushvalue(L, 5);
    lua_setfield(L, -2, "hooks");
    lua_pushvalue(L, 6);
    lua_setfield(L, -2, "state");
    lua_newtable(L);
    lua_setfield(L, -2, "strings");
    lua_newtable(L);
    lua_setfield(L, -2, "handlers");
    lua_newtable(L);
    lua_setfield(L, -2, "removal_handlers");
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

/* new(dir, l1, l2, opts, hooks, state) -> db | nil, err. dir: the backend's directory (L1 is
 * dir/layer1); l2: nil, a store, or a Lua object with the store methods; opts: size_limit,
 * high_water, low_water, evict_delete, stub_share, changes_kept, by_created (the policy's order),
 * history, admit ("second", "always", "never"), missing_ttl, answers_ttl, answers_max_ids, poll_frequency, poll_overlap,
 * max_limit, own_l2; hooks: {choose, log}, each called with the handle first; state: the Lua
 * side's table. */
static int pv_new(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    l2lua_store *l1 = l2lua_check_store(L, 2);
    luaL_argcheck(L, l1->vt == &l2_lmdb_store_if, 2, "an LMDB cache expected");
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    backend_ud *s = lua_newuserdatauv(L, sizeof *s, 1);
    memset(s, 0, sizeof *s);
    s->ref = LUA_NOREF;
    int self = lua_gettop(L);
    set_state(L, self);
    set_l2(L, s);
    l2_backend_opts o = read_options(L);
    s->own_l2 = l2lua_opt_bool(L, 4, "own_l2", 0);
    s->delegating = l2lua_opt_bool(L, 4, "delegating", 0);
    s->max_limit = l2lua_opt_int(L, 4, "max_limit", L2LUA_MAX_LIMIT);
    s->l1 = l1;
    s->L = L;
    s->lim = l2_default_limits;
    l2_event_init(&s->ev);
    l2lua_filters_init(&s->filters, 500);
    snprintf(s->dir, sizeof s->dir, "%s", dir);
    s->ref = keep_parts(L);
    l2_backend_hooks hooks = {hook_evicted, hook_choose, hook_accepted, hook_removed, hook_log, s};
    if (l2_backend_open(&s->b, l1->st, s->l2vt, s->l2st, l2_store_path(l1->st), &o, &hooks, s->err)) {
        luaL_unref(L, LUA_REGISTRYINDEX, s->ref);
        s->ref = LUA_NOREF;
        return l2lua_refuse(L, 0, s->err);
    }
    lua_pushvalue(L, self);
    return 1;
}

static const luaL_Reg backend_methods[] = {
    {"save_event", bk_save_event}, {"save_events", bk_save_events}, {"delete_event", bk_delete_event},
    {"query_events", bk_query_events}, {"query_frames", bk_query_frames}, {"count_events", bk_count_events},
    {"import", bk_import},
    {"export", bk_export}, {"negentropy_items", bk_negentropy_items},
    {"sweep", bk_sweep}, {"nuke", bk_nuke}, {"sync", bk_sync}, {"stats", bk_stats}, {"check", bk_check},
    {"changes_since", bk_changes_since}, {"path", bk_path}, {"gc", bk_gc}, {"poll", bk_poll},
    {"on_event", bk_on_event}, {"off_event", bk_off_event}, {"on_removed", bk_on_removed},
    {"off_removed", bk_off_removed}, {"close", bk_close}, {"is_closed", bk_is_closed},
    {NULL, NULL},
};

static const luaL_Reg private_functions[] = {
    {"new", pv_new}, {"query_l1", pv_query_l1}, {"admit_bar", pv_admit_bar}, {"inside_c", pv_inside_c},
    {"defer_writes", pv_defer_writes}, {"take_deferred", pv_take_deferred}, {"apply_deferred", pv_apply_deferred},
    {NULL, NULL},
};

/* Pushes layer2.core.backend_private: its functions, `methods`, the class's method table that
 * backend.lua completes, and `delegating`, what a delegating handle has instead (backend.lua
 * writes them). */
void l2lua_open_backend(lua_State *L)
{
    luaL_newmetatable(L, BACKEND_MT);
    lua_newtable(L);
    luaL_setfuncs(L, backend_methods, 0);
    lua_newtable(L);
    lua_pushvalue(L, -2);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, bk_index, 2);
    lua_setfield(L, -4, "__index");
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, bk_newindex, 1);
    lua_setfield(L, -4, "__newindex");
    lua_pushcfunction(L, bk_close);
    lua_setfield(L, -4, "__gc");
    lua_pushcfunction(L, bk_close);
    lua_setfield(L, -4, "__close");
    lua_pushcfunction(L, bk_tostring);
    lua_setfield(L, -4, "__tostring");
    lua_newtable(L);
    luaL_setfuncs(L, private_functions, 0);
    lua_insert(L, -3);
    lua_setfield(L, -3, "delegating");
    lua_setfield(L, -2, "methods");
    push_defaults(L);
    lua_setfield(L, -2, "defaults");
    lua_remove(L, -2);
}

/* ---- for the specs only (layer2.core.testing.backend): the shared read counts and admission ---- */

/* count_read(db, id) -> its recent reads, this one counted; reads(db, id) -> the same, not counted */
static int test_count_read(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint8_t id[32];
    lua_pushinteger(L, luabk_id_arg(L, 2, id) ? l2_backend_count_read(s->b, id) : 0);
    return 1;
}

static int test_reads(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint8_t id[32];
    lua_pushinteger(L, luabk_id_arg(L, 2, id) ? l2_learned_reads(l2_backend_learned(s->b), id) : 0);
    return 1;
}

/* admit(db, id) -> whether an event with this id fetched from L2 now enters L1 (a read counted) */
static int test_admit(lua_State *L)
{
    backend_ud *s = check_backend(L);
    uint8_t id[32];
    lua_pushboolean(L, luabk_id_arg(L, 2, id) && l2_backend_admit(s->b, id));
    return 1;
}

static const luaL_Reg testing_functions[] = {
    {"count_read", test_count_read}, {"reads", test_reads}, {"admit", test_admit}, {NULL, NULL},
};

void l2lua_open_backend_testing(lua_State *L)
{
    lua_newtable(L);
    luaL_setfuncs(L, testing_functions, 0);
}
