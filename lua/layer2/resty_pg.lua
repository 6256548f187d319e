-- A PostgreSQL L2 for layer2 inside nginx. libpq calls block, and a blocking call in a worker's
-- event loop stalls every connection that worker serves. So each call runs in nginx's thread
-- pool (ngx.run_worker_thread): the request's coroutine yields meanwhile and the worker goes on
-- serving others. The C store is the same one plain Lua uses; each thread's Lua VM keeps its own
-- connection. (The other way, a cosocket driver written in Lua, would mean a second
-- implementation of the rules and the wire protocol; this keeps one, in C and PL/pgSQL.)
--
--   thread_pool layer2 threads=8;          # nginx.conf, main context
--   layer2.resty.init_worker(path, { l2 = "host=/run/postgresql dbname=relay", poll_frequency = 1 })
local resty_pg = {}
local inside_c = require("layer2.core").backend_private.inside_c

-- ---- the thread side: runs in a worker thread's Lua VM; its connections stay open there ----
local stores, listening = {}, {}

function resty_pg.call(conninfo, method, ...)
  local s = stores[conninfo]
  if not s or s:is_closed() then
    local err
    s, err = require("layer2.core").postgres.open(conninfo)
    if not s then return nil, err end
    stores[conninfo] = s
  end
  if method == "wait" and not listening[conninfo] then
    -- this VM's connection listens from now on; a signal before that is the poll's to find
    local ok, err = s:listen()
    if not ok then return nil, err end
    listening[conninfo] = true
  end
  return s[method](s, ...)
end

-- A whole two-level store in the thread's VM, on the worker's L1 (the same LMDB environment: one
-- per process) and a connection of its own: the worker's writes run here, since the C core's
-- save calls L2 from C, and a call into the thread pool yields, which LuaJIT cannot do across C.
local backends = {}

function resty_pg.backend_call(path, opts, method, ...)
  local db = backends[path]
  if not db or db:is_closed() then
    local err
    db, err = require("layer2").open(path, opts)
    if not db then return nil, err end
    backends[path] = db
  end
  return db[method](db, ...)
end

-- ---- the worker side ----

-- Runs resty_pg[fn](...) in a pool thread; the request's coroutine yields meanwhile. From inside a
-- C call (a hook of the C core) it cannot yield: that fails as an L2 failure would, rather than
-- let nginx resume a coroutine that never yielded.
local function in_thread(pool, fn, ...)
  if inside_c() then error("PostgreSQL cannot be reached from inside a C call", 0) end
  local ok, a, b, c = ngx.run_worker_thread(pool, "layer2.resty_pg", fn, ...)
  if not ok then error("the PostgreSQL thread failed: " .. tostring(a), 0) end
  return a, b, c
end

-- An L2 object with the store methods, each a call in the thread pool.
local METHODS = { "save_event", "save_events", "query_events", "count_events", "delete_event", "changes_since", "stats", "check",
  "sweep", "nuke", "wait", "negentropy_items" }

-- The worker's way to a backend_call: fn(method, ...) runs it in the pool. opts: what
-- layer2.open takes that can cross into a thread (no functions).
function resty_pg.backend(path, opts, pool)
  local o = { l2 = opts.l2, l1 = opts.l1, nosync = opts.nosync, max_limit = opts.max_limit,
    policy = type(opts.policy) == "string" and opts.policy or nil }
  return function(method, ...) return in_thread(pool or "layer2", "backend_call", path, o, method, ...) end
end

function resty_pg.l2(conninfo, pool)
  pool = pool or "layer2"
  local l2 = {}
  for _, m in ipairs(METHODS) do
    l2[m] = function(_, ...)
      return in_thread(pool, "call", conninfo, m, ...)
    end
  end
  -- functions cannot cross into a thread: bulk work is the command line tool's
  l2.import = function() error("layer2: import into PostgreSQL with the layer2 tool, not from nginx", 2) end
  l2.export = function() error("layer2: export from PostgreSQL with the layer2 tool, not from nginx", 2) end
  -- a listener inside nginx is the poll loop of resty.lua: it calls wait, which listens
  l2.listen = function() return true end
  l2.sync = function() return true end
  l2.path = function() return conninfo:gsub("password=%S+", "password=...") end
  l2.close = function() end
  return l2
end

return resty_pg
