rockspec_format = "3.0"
package = "layer2"
version = "scm-1"
source = {
  url = "git+file:///dev/null", -- built from a checkout: `luarocks make rockspec/layer2-scm-1.rockspec`
}
description = {
  summary = "A two-level nostr event store (LMDB cache in front of LMDB or PostgreSQL) with a C core",
  detailed = [[
layer2 gives nostr relays written in Lua 5.4 or OpenResty (LuaJIT) a size-limited LMDB cache
(L1) in front of a larger authoritative store (L2). The C core parses and verifies events,
enforces the nostr rules and runs every hot path; Lua decides eviction and polling.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson", -- layer2.relay, the command line tool and the benchmarks
  -- `layer2 sync` also needs lua-http (its websocket client), for LuaJIT (Debian: lua-http)
}
external_dependencies = {
  SECP256K1 = { header = "secp256k1_schnorrsig.h", library = "secp256k1" },
  CRYPTO = { header = "openssl/evp.h", library = "crypto" },
  LMDB = { header = "lmdb.h", library = "lmdb" },
  PQ = { header = "postgresql/libpq-fe.h", library = "pq" }, -- Debian's libpq-dev layout
}
build = {
  type = "make",
  build_target = "rock-build",
  install_target = "rock-install",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    ROCK_CPPFLAGS = "-I$(SECP256K1_INCDIR) -I$(CRYPTO_INCDIR) -I$(LMDB_INCDIR) -I$(PQ_INCDIR)/postgresql",
    ROCK_LDFLAGS = "-L$(SECP256K1_LIBDIR) -L$(CRYPTO_LIBDIR) -L$(LMDB_LIBDIR) -L$(PQ_LIBDIR)",
  },
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
    INST_BINDIR = "$(BINDIR)",
  },
}
