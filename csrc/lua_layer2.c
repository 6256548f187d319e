/* luaopen_layer2_core: the layer2.event, layer2.filter and layer2.schnorr libraries, then each
 * binding file's part (lua_layer2.h). Only the lua_*.c files see Lua headers. Refusals are values
 * (nil/false, "invalid: ..."); misuse (a wrong argument type) raises. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json.h"
#include "killpoint.h"
#include "lua_args.h"
#include "lua_layer2.h"
#include "lua_store.h"
#include "schnorr.h"

#define L2_VERSION "0.1.0"
#define SCRATCH_MT "layer2.scratch"

/* Per Lua state working memory, an upvalue of every function: parses reuse it, so the hot
 * paths do not allocate, and a Lua error thrown halfway leaks nothing. */
typedef struct {
    l2_event ev;
    l2_filter flt;
    l2_buf out, tmp;
    l2_limits lim;
    l2_filter_limits flim;
    char err[L2_ERRLEN];
} scratch;

static scratch *get_scratch(lua_State *L)
{
    return (scratch *)lua_touserdata(L, lua_upvalueindex(1));
}

static int scratch_gc(lua_State *L)
{
    scratch *s = luaL_checkudata(L, 1, SCRATCH_MT);
    l2_event_free(&s->ev);
    l2_filter_free(&s->flt);
    l2_buf_free(&s->out);
    l2_buf_free(&s->tmp);
    return 0;
}

/* Reads the event argument at idx (a table or a wire JSON string) into the scratch event. */
static int arg_event(lua_State *L, int idx, scratch *s, unsigned required)
{
    return l2lua_event_arg(L, idx, &s->ev, required, &s->lim, s->err);
}

static void push_buf(lua_State *L, const l2_buf *b)
{
    lua_pushlstring(L, b->data ? b->data : "", b->len);
}

static int oom_error(lua_State *L)
{
    return luaL_error(L, "layer2: out of memory");
}

/* ---- layer2.event ---- */

static int event_parse(lua_State *L)
{
    scratch *s = get_scratch(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    if (l2_event_parse_json(&s->ev, p, n, L2_HAVE_ALL, &s->lim, s->err)) return l2lua_refuse(L, 0, s->err);
    l2lua_push_event(L, &s->ev);
    return 1;
}

static int event_verify(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL | L2_LENIENT_IDSIG) || l2_event_verify(&s->ev, &s->tmp, s->err))
        return l2lua_refuse(L, 1, s->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* every event that parsed and verified is "saved" by nobody: verify_list's verdicts */
static int accept_all(void *ud, l2_event *const *evs, size_t n, int64_t now, l2_verdict *out, char *err)
{
    (void)ud, (void)evs, (void)now, (void)err;
    for (size_t i = 0; i < n; i++) out[i].ok = 1;
    return 0;
}

/* layer2.event.verify_list(list [, {threads}]) -> verdicts: true, or why not, for each event (a
 * table or JSON) of the list, parsed and verified on threads as save_events does (a caller that
 * decides on them before saving them verifies them at the same cost) */
static int event_verify_list(lua_State *L)
{
    static const char *const names[] = {"threads", NULL};
    scratch *s = get_scratch(L);
    l2lua_check_options(L, 2, "layer2.event.verify_list", names);
    lua_settop(L, 2);
    return l2lua_save_list(L, 1, 2, &s->lim, accept_all, NULL, s->err);
}

static int event_check_lines(lua_State *L)
{
    return l2lua_check_lines(L, &get_scratch(L)->lim);
}

static int event_serialize(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_UNSIGNED)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_serialize(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

static int event_id(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t id[32];
    if (arg_event(L, 1, s, L2_HAVE_UNSIGNED)) return l2lua_refuse(L, 0, s->err);
    if (l2_event_hash(&s->ev, &s->tmp, id)) return oom_error(L);
    l2lua_push_hex(L, id, 32);
    return 1;
}

static int event_encode(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_encode_json(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

/* Reads an optional or required hex argument of exactly `bytes` bytes. */
static int arg_hex(lua_State *L, int idx, uint8_t *out, size_t bytes, int optional, const char *what)
{
    if (optional && lua_isnoneornil(L, idx)) return 0;
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    if (n != 2 * bytes || l2_hex_decode(out, p, bytes))
        return luaL_argerror(L, idx, lua_pushfstring(L, "%s must be %d lowercase hex characters", what, (int)(2 * bytes)));
    return 1;
}

static int event_sign(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t sec[32], aux[32];
    arg_hex(L, 2, sec, 32, 0, "secret key");
    int have_aux = arg_hex(L, 3, aux, 32, 1, "aux");
    l2lua_check_table_or_string(L, 1);
    /* id, pubkey and sig are outputs: the fields that must be there are those hashed */
    unsigned required = L2_HAVE_CREATED_AT | L2_HAVE_KIND | L2_HAVE_TAGS | L2_HAVE_CONTENT;
    int rc = arg_event(L, 1, s, required) || l2_event_sign(&s->ev, sec, have_aux ? aux : NULL, &s->tmp, s->err);
    memset(sec, 0, sizeof sec);
    if (rc) return l2lua_refuse(L, 0, s->err);
    l2lua_push_event(L, &s->ev);
    return 1;
}

static int event_pack(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_event(L, 1, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    s->out.len = 0;
    if (l2_event_encode_bin(&s->ev, &s->out)) return oom_error(L);
    push_buf(L, &s->out);
    return 1;
}

static int event_unpack(lua_State *L)
{
    scratch *s = get_scratch(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    if (l2_event_decode_bin(&s->ev, p, n, s->err)) return l2lua_refuse(L, 0, s->err);
    if (s->ev.is_stub) return l2lua_refuse(L, 0, "error: a stub (an evicted event's index entry), not a whole event");
    l2lua_push_event(L, &s->ev);
    return 1;
}

/* ---- limits: get, or set from a table then get ---- */

typedef struct {
    const char *name;
    size_t offset;
    int is_u32;
} limit_field;

static const limit_field event_limit_fields[] = {
    {"max_event_bytes", offsetof(l2_limits, max_event_bytes), 0},
    {"max_tags", offsetof(l2_limits, max_tags), 1},
    {"max_tag_elems", offsetof(l2_limits, max_tag_elems), 1},
    {"max_tag_elem_bytes", offsetof(l2_limits, max_tag_elem_bytes), 0},
    {"max_content_bytes", offsetof(l2_limits, max_content_bytes), 0},
    {NULL, 0, 0},
};

static const limit_field filter_limit_fields[] = {
    {"max_ids", offsetof(l2_filter_limits, max_ids), 1},
    {"max_authors", offsetof(l2_filter_limits, max_authors), 1},
    {"max_kinds", offsetof(l2_filter_limits, max_kinds), 1},
    {"max_tag_values", offsetof(l2_filter_limits, max_tag_values), 1},
    {"max_tag_value_bytes", offsetof(l2_filter_limits, max_tag_value_bytes), 0},
    {"max_search_bytes", offsetof(l2_filter_limits, max_search_bytes), 0},
    {"max_filter_bytes", offsetof(l2_filter_limits, max_filter_bytes), 0},
    {NULL, 0, 0},
};

static int limits_call(lua_State *L, void *base, const limit_field *fields)
{
    if (!lua_isnoneornil(L, 1)) {
        luaL_checktype(L, 1, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 1)) {
            const limit_field *f = fields;
            const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
            while (f->name && strcmp(f->name, key) != 0) f++;
            if (!f->name) return luaL_error(L, "layer2: unknown limit '%s'", key);
            int64_t v;
            if (l2lua_int64(L, -1, &v) || v < 1 || (f->is_u32 && v > UINT32_MAX))
                return luaL_error(L, "layer2: limit '%s' must be a positive integer", key);
            if (f->is_u32) *(uint32_t *)((char *)base + f->offset) = (uint32_t)v;
            else *(size_t *)((char *)base + f->offset) = (size_t)v;
            lua_pop(L, 1);
        }
    }
    lua_newtable(L);
    for (const limit_field *f = fields; f->name; f++) {
        const char *p = (const char *)base + f->offset;
        lua_pushinteger(L, f->is_u32 ? (lua_Integer) * (const uint32_t *)p : (lua_Integer) * (const size_t *)p);
        lua_setfield(L, -2, f->name);
    }
    return 1;
}

static int event_limits(lua_State *L)
{
    return limits_call(L, &get_scratch(L)->lim, event_limit_fields);
}

static int filter_limits(lua_State *L)
{
    return limits_call(L, &get_scratch(L)->flim, filter_limit_fields);
}

/* ---- layer2.filter ---- */

static int arg_filter(lua_State *L, int idx, scratch *s)
{
    return l2lua_filter_arg(L, idx, &s->flt, &s->flim, s->err);
}

static int filter_parse(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_filter(L, 1, s)) return l2lua_refuse(L, 0, s->err);
    l2lua_push_filter(L, &s->flt);
    return 1;
}

static int filter_match(lua_State *L)
{
    scratch *s = get_scratch(L);
    if (arg_filter(L, 1, s)) return l2lua_refuse(L, 0, s->err);
    if (arg_event(L, 2, s, L2_HAVE_ALL)) return l2lua_refuse(L, 0, s->err);
    lua_pushboolean(L, l2_filter_match(&s->flt, &s->ev));
    return 1;
}

/* ---- layer2.schnorr: raw BIP-340, for tools and the official test vectors ---- */

static const uint8_t *arg_bytes(lua_State *L, int idx, size_t *n, l2_buf *buf)
{
    size_t hn;
    const char *hex = luaL_checklstring(L, idx, &hn);
    buf->len = 0;
    if (hn % 2 || l2_buf_reserve(buf, hn / 2 + 1) || l2_hex_decode((uint8_t *)buf->data, hex, hn / 2))
        luaL_argerror(L, idx, "lowercase hex expected");
    *n = hn / 2;
    return (const uint8_t *)buf->data;
}

static int schnorr_verify(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t pub[32], sig[64];
    size_t n;
    arg_hex(L, 1, pub, 32, 0, "public key");
    arg_hex(L, 3, sig, 64, 0, "signature");
    const uint8_t *msg = arg_bytes(L, 2, &n, &s->tmp);
    lua_pushboolean(L, l2_schnorr_verify(sig, msg, n, pub));
    return 1;
}

static int schnorr_sign(lua_State *L)
{
    scratch *s = get_scratch(L);
    uint8_t sec[32], aux[32], sig[64];
    size_t n;
    arg_hex(L, 1, sec, 32, 0, "secret key");
    int have_aux = arg_hex(L, 3, aux, 32, 1, "aux");
    const uint8_t *msg = arg_bytes(L, 2, &n, &s->tmp);
    int ok = l2_schnorr_sign(sig, msg, n, sec, have_aux ? aux : NULL);
    memset(sec, 0, sizeof sec);
    if (!ok) return l2lua_refuse(L, 0, "invalid: secret key is not valid");
    l2lua_push_hex(L, sig, 64);
    return 1;
}

static int schnorr_pubkey(lua_State *L)
{
    uint8_t sec[32], pub[32];
    arg_hex(L, 1, sec, 32, 0, "secret key");
    int ok = l2_schnorr_pubkey(pub, sec);
    memset(sec, 0, sizeof sec);
    if (!ok) return l2lua_refuse(L, 0, "invalid: secret key is not valid");
    l2lua_push_hex(L, pub, 32);
    return 1;
}

/* layer2.core.monotonic() -> seconds (a float) on a clock that never jumps: for rates and timers */
static int core_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

/* layer2.core.sleep(seconds): blocks the process (a plain-Lua host's poll loop; never in nginx) */
static int core_sleep(lua_State *L)
{
    lua_Number secs = luaL_checknumber(L, 1);
    if (secs <= 0) return 0;
    struct timespec ts = {(time_t)secs, (long)((secs - (lua_Number)(time_t)secs) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return 0;
}

/* layer2.core.unknown_option(t, where, names) -> the message for a key of t that is not among the
 * list `names` (l2lua_unknown_option), or nothing: for the option tables read in Lua, which raise
 * it at their caller's line. */
static int core_unknown_option(lua_State *L)
{
    const char *where = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    enum { MAX_NAMES = 64 };
    const char *names[MAX_NAMES + 1];
    size_t n = lua_rawlen(L, 3);
    luaL_argcheck(L, n <= MAX_NAMES, 3, "at most 64 names");
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, 3, (int)i + 1);
        names[i] = lua_tostring(L, -1); /* the list keeps the strings */
        luaL_argcheck(L, names[i] != NULL, 3, "a list of names");
        lua_pop(L, 1);
    }
    names[n] = NULL;
    if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
    return l2lua_unknown_option(L, 1, where, names);
}

/* layer2.core.websocket.utf8(s) -> true | nil, position: a websocket text frame's check (RFC
 * 6455 8.1: UTF-8, no surrogates), for the command line tool's websocket client (lua-http does it
 * a code point at a time in Lua; see layer2/cli.lua) */
static int ws_utf8(lua_State *L)
{
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n), *p = s, *end = s + n;
    while (p < end) {
        size_t k = *p < 0x80 ? 1 : l2_utf8_seq(p, end);
        if (!k) {
            lua_pushnil(L);
            lua_pushinteger(L, (lua_Integer)(p - s) + 1);
            return 2;
        }
        p += k;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* layer2.core.websocket.mask(data, key) -> data XORed with key, a list of 4 bytes (RFC 6455 5.3),
 * for the same client */
static int ws_mask(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TTABLE);
    uint8_t key[4];
    for (int i = 0; i < 4; i++) {
        lua_rawgeti(L, 2, i + 1);
        lua_Integer b = lua_tointeger(L, -1);
        if (!lua_isnumber(L, -1) || b < 0 || b > 255) return luaL_argerror(L, 2, "a list of 4 bytes expected");
        key[i] = (uint8_t)b;
        lua_pop(L, 1);
    }
    char *out = lua_newuserdatauv(L, n ? n : 1, 0); /* scratch the collector takes back */
    for (size_t i = 0; i < n; i++) out[i] = (char)((uint8_t)s[i] ^ key[i & 3]);
    lua_pushlstring(L, out, n);
    return 1;
}

static const luaL_Reg websocket_funcs[] = {{"utf8", ws_utf8}, {"mask", ws_mask}, {NULL, NULL}};

static const luaL_Reg event_funcs[] = {
    {"parse", event_parse}, {"verify", event_verify}, {"serialize", event_serialize},
    {"id", event_id}, {"encode", event_encode}, {"sign", event_sign},
    {"pack", event_pack}, {"unpack", event_unpack}, {"limits", event_limits},
    {"check_lines", event_check_lines}, {"verify_list", event_verify_list}, {NULL, NULL},
};

static const luaL_Reg filter_funcs[] = {
    {"parse", filter_parse}, {"match", filter_match}, {"limits", filter_limits}, {NULL, NULL},
};

static const luaL_Reg schnorr_funcs[] = {
    {"verify", schnorr_verify}, {"sign", schnorr_sign}, {"pubkey", schnorr_pubkey}, {NULL, NULL},
};

static void add_lib(lua_State *L, const char *name, const luaL_Reg *funcs)
{
    lua_newtable(L);
    lua_pushvalue(L, -3); /* the scratch */
    luaL_setfuncs(L, funcs, 1);
    lua_setfield(L, -2, name);
}

/* testing.kill_at(step [, nth]): the process kills itself at the nth pass of a named step of the
 * write paths (killpoint.h), for the crash specs; kill_at() disarms. */
static int testing_kill_at(lua_State *L)
{
    const char *step = luaL_optstring(L, 1, NULL);
    lua_Integer nth = luaL_optinteger(L, 2, 1);
    luaL_argcheck(L, nth >= 1, 2, "a count from 1");
    l2_killpoint_arm(step, (long)nth);
    return 0;
}

static const luaL_Reg testing_funcs[] = {{"kill_at", testing_kill_at}, {NULL, NULL}};

__attribute__((visibility("default"))) int luaopen_layer2_core(lua_State *L)
{
    lua_newtable(L);
    scratch *s = lua_newuserdatauv(L, sizeof *s, 0);
    memset(s, 0, sizeof *s);
    l2_event_init(&s->ev);
    l2_filter_init(&s->flt);
    l2_buf_init(&s->out);
    l2_buf_init(&s->tmp);
    s->lim = l2_default_limits;
    s->flim = l2_default_filter_limits;
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_insert(L, -2); /* scratch below the module table */
    add_lib(L, "event", event_funcs);
    add_lib(L, "filter", filter_funcs);
    add_lib(L, "schnorr", schnorr_funcs);
    add_lib(L, "websocket", websocket_funcs);
    l2lua_open_store_common(L);
    l2lua_open_lmdb(L);
    lua_setfield(L, -2, "lmdb");
    l2lua_open_pg(L);
    lua_setfield(L, -2, "postgres");
    l2lua_open_backend(L);
    lua_setfield(L, -2, "backend_private");
    l2lua_open_fanout(L);
    lua_setfield(L, -2, "fanout");
    l2lua_open_negentropy(L);
    lua_setfield(L, -2, "negentropy");
    l2lua_open_child(L);
    lua_setfield(L, -2, "child");
    lua_pushliteral(L, L2_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushcfunction(L, core_monotonic);
    lua_setfield(L, -2, "monotonic");
    lua_pushcfunction(L, core_sleep);
    lua_setfield(L, -2, "sleep");
    lua_pushcfunction(L, core_unknown_option);
    lua_setfield(L, -2, "unknown_option");
    add_lib(L, "testing", testing_funcs);
    lua_getfield(L, -1, "testing");
    l2lua_open_backend_testing(L);
    lua_setfield(L, -2, "backend");
    lua_pop(L, 1);
    lua_remove(L, -2);
    return 1;
}
