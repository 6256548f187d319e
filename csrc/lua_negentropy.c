/* layer2.negentropy([frame_limit]): a NIP-77 reconciliation session (negentropy.h) as a Lua
 * userdata. Messages go in and out as hex, as the wire carries them. */
#include <stdlib.h>
#include <string.h>

#include "lua_args.h"
#include "lua_layer2.h"
#include "negentropy.h"

#define NEG_MT "layer2.negentropy"

typedef struct {
    l2_neg *neg; /* NULL once closed */
    l2_buf msg, out, have, need;
    char err[L2_ERRLEN];
} neg_ud;

static neg_ud *check_neg(lua_State *L)
{
    neg_ud *u = luaL_checkudata(L, 1, NEG_MT);
    if (!u->neg) luaL_error(L, "layer2: attempt to use a closed negentropy session");
    return u;
}

/* session:add(created_at, id) -> true | nil, err: an item, before seal */
static int neg_add(lua_State *L)
{
    neg_ud *u = check_neg(L);
    int64_t at;
    size_t n;
    uint8_t id[32];
    const char *hex = luaL_checklstring(L, 3, &n);
    if (l2lua_int64(L, 2, &at) || at < 0) return luaL_argerror(L, 2, "a created_at expected");
    if (n != 64 || l2_hex_decode(id, hex, 32)) return l2lua_refuse(L, 0, "invalid: an id is 64 lowercase hex digits");
    if (l2_neg_add(u->neg, (uint64_t)at, id, u->err)) return l2lua_refuse(L, 0, u->err);
    lua_pushboolean(L, 1);
    return 1;
}

/* session:add_items(items) -> true | nil, err: items as store:negentropy_items packs them */
static int neg_add_items(lua_State *L)
{
    neg_ud *u = check_neg(L);
    size_t n;
    const uint8_t *p = (const uint8_t *)luaL_checklstring(L, 2, &n);
    if (n % 40) return luaL_argerror(L, 2, "items of 40 bytes expected");
    for (size_t i = 0; i < n; i += 40) {
        uint64_t at = 0;
        for (int b = 0; b < 8; b++) at = at << 8 | p[i + (size_t)b];
        if (l2_neg_add(u->neg, at, p + i + 8, u->err)) return l2lua_refuse(L, 0, u->err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* session:seal() -> items | nil, err */
static int neg_seal(lua_State *L)
{
    neg_ud *u = check_neg(L);
    if (l2_neg_seal(u->neg, u->err)) return l2lua_refuse(L, 0, u->err);
    lua_pushinteger(L, (lua_Integer)l2_neg_size(u->neg));
    return 1;
}

static void push_hex(lua_State *L, const l2_buf *b)
{
    char *hex = malloc(b->len * 2 + 1);
    if (!hex) luaL_error(L, "layer2: out of memory");
    l2_hex_encode(hex, (const uint8_t *)b->data, b->len);
    lua_pushlstring(L, hex, b->len * 2);
    free(hex);
}

/* A list of hex ids from a buffer of 32-byte ids. */
static void push_ids(lua_State *L, const l2_buf *b)
{
    size_t n = b->len / 32;
    lua_createtable(L, (int)n, 0);
    char hex[64];
    for (size_t i = 0; i < n; i++) {
        l2_hex_encode(hex, (const uint8_t *)b->data + 32 * i, 32);
        lua_pushlstring(L, hex, 64);
        lua_rawseti(L, -2, (int)i + 1);
    }
}

/* session:initiate() -> the first message (hex) | nil, err */
static int neg_initiate(lua_State *L)
{
    neg_ud *u = check_neg(L);
    if (l2_neg_initiate(u->neg, &u->out, u->err)) return l2lua_refuse(L, 0, u->err);
    push_hex(L, &u->out);
    return 1;
}

/* session:reconcile(hex) -> reply (hex; nil for an initiator when done), have, need | nil, err.
 * have and need (lists of hex ids) are the initiator's: ids only it has, ids only the peer has. */
static int neg_reconcile(lua_State *L)
{
    neg_ud *u = check_neg(L);
    size_t n;
    const char *hex = luaL_checklstring(L, 2, &n);
    u->msg.len = 0;
    if (n % 2 || l2_buf_reserve(&u->msg, n / 2) || l2_hex_decode((uint8_t *)u->msg.data, hex, n / 2))
        return l2lua_refuse(L, 0, "invalid: a negentropy message is lowercase hex");
    u->msg.len = n / 2;
    u->have.len = u->need.len = 0;
    if (l2_neg_reconcile(u->neg, (const uint8_t *)u->msg.data, u->msg.len, &u->out, &u->have, &u->need, u->err))
        return l2lua_refuse(L, 0, u->err);
    if (u->out.len) push_hex(L, &u->out);
    else lua_pushnil(L);
    push_ids(L, &u->have);
    push_ids(L, &u->need);
    return 3;
}

static int neg_size(lua_State *L)
{
    neg_ud *u = check_neg(L);
    lua_pushinteger(L, (lua_Integer)l2_neg_size(u->neg));
    return 1;
}

static int neg_close(lua_State *L)
{
    neg_ud *u = luaL_checkudata(L, 1, NEG_MT);
    if (!u->neg) return 0;
    l2_neg_free(u->neg);
    u->neg = NULL;
    l2_buf_free(&u->msg);
    l2_buf_free(&u->out);
    l2_buf_free(&u->have);
    l2_buf_free(&u->need);
    return 0;
}

static int neg_tostring(lua_State *L)
{
    neg_ud *u = luaL_checkudata(L, 1, NEG_MT);
    if (u->neg) lua_pushfstring(L, "layer2 negentropy session (%d items)", (int)l2_neg_size(u->neg));
    else lua_pushliteral(L, "layer2 negentropy session (closed)");
    return 1;
}

static const luaL_Reg neg_methods[] = {
    {"add", neg_add}, {"add_items", neg_add_items}, {"seal", neg_seal}, {"initiate", neg_initiate}, {"reconcile", neg_reconcile},
    {"size", neg_size}, {"close", neg_close}, {NULL, NULL},
};

/* layer2.negentropy([frame_limit]) -> a new session | nil, err (frame_limit: bytes, 0 or >= 4096) */
static int neg_new(lua_State *L)
{
    int64_t limit = 0;
    if (!lua_isnoneornil(L, 1) && (l2lua_int64(L, 1, &limit) || limit < 0))
        return luaL_argerror(L, 1, "a frame limit in bytes expected");
    neg_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    memset(u, 0, sizeof *u);
    l2_buf_init(&u->msg);
    l2_buf_init(&u->out);
    l2_buf_init(&u->have);
    l2_buf_init(&u->need);
    luaL_setmetatable(L, NEG_MT);
    if (l2_neg_new(&u->neg, (size_t)limit, u->err)) return l2lua_refuse(L, 0, u->err);
    return 1;
}

void l2lua_open_negentropy(lua_State *L)
{
    l2lua_class(L, NEG_MT, neg_methods, NULL, neg_close, neg_tostring);
    lua_pop(L, 1);
    lua_pushcfunction(L, neg_new);
}
