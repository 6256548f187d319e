-- layer2's work that must not run in a worker's event loop, run in nginx's thread pool
-- (ngx.run_worker_thread): the calling coroutine yields meanwhile and the worker goes on serving
-- others. Two kinds of work go there:
-- - a PostgreSQL L2's calls: libpq blocks, and a blocking call in the event loop stalls every
--   connection of the worker. The C store is the same one plain Lua uses; each thread's Lua VM
--   keeps its own connection. (The other way, a cosocket driver written in Lua, would mean a
--   second implementation of the rules and the wire protocol; this keeps one, in C and PL/pgSQL.)
-- - a backend's batches of saves and its maintenance (gc, poll), on a backend of the thread's own
--   over the same L1 and L2 (one LMDB environment per process): signature checks and commits of
--   a batch of 500 events took tens of ms, in which nothing else of the worker ran.
--
--   thread_pool layer2 threads=8;          # nginx.conf, main context
--   layer2.resty.init_worker(path, { l2 = "host=/run/postgresql dbname=relay", poll_frequency = 1 })
local resty_pool = {}
local inside_c = require("layer2.core").backend_private.inside_c

-- ---- the thread side: runs in a worker thread's Lua VM; its connections stay open there ----
local stores, listening = {}, {}

function resty_pool.call(conninfo, method, ...)
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
-- per process) and its L2 (LMDB: the same environment; PostgreSQL: a connection of its own): the
-- worker's writes run here, off its event loop (and, with PostgreSQL, since the C core's save
-- calls L2 from C, and a call into the thread pool yields, which LuaJIT cannot do across C).
local backends = {}

local function backend_of(path, opts)
  local db = backends[path]
  if not db or db:is_closed() then
    local err
    db, err = require("layer2").open(path, opts)
    if not db then return nil, err end
    backends[path] = db
  end
  return db
end

function resty_pool.backend_call(path, opts, method, ...)
  local db, err = backend_of(path, opts)
  if not db then return nil, err end
  return db[method](db, ...)
end

-- The L1 writes a worker's reads kept (its fills, remembered answers and read counts: see
-- layer2.resty), written here, where waiting for L1's write lock stalls no connection.
function resty_pool.apply_deferred(path, opts, records)
  local db, err = backend_of(path, opts)
  if not db then return nil, err end
  return require("layer2.core").backend_private.apply_deferred(db, records)
end

-- A batch's signatures checked on threads (layer2.event.verify_list), in this thread.
function resty_pool.verify_list(events)
  return require("layer2").event.verify_list(events)
end

-- ---- the worker side ----

-- Runs resty_pool[fn](...) in a pool thread; the request's coroutine yields meanwhile. From inside a
-- C call (a hook of the C core) it cannot yield: that fails as an L2 failure would, rather than
-- let nginx resume a coroutine that never yielded.
local function in_thread(pool, fn, ...)
  if inside_c() then error("PostgreSQL cannot be reached from inside a C call", 0) end
  local ok, a, b, c = ngx.run_worker_thread(pool, "layer2.resty_pool", fn, ...)
  if not ok then error("the thread pool call failed: " .. tostring(a), 0) end
  return a, b, c
end

-- An L2 object with the store methods, each a call in the thread pool.
local METHODS = { "save_event", "save_events", "query_events", "count_events", "delete_event", "changes_since", "stats", "check",
  "sweep", "nuke", "wait", "publish", "negentropy_items" }

-- opts without its functions (which cannot cross into a thread), and whether any was dropped
-- other than `log` (a backend in a thread logs to nginx's error log by itself).
function resty_pool.crossable(opts)
  local dropped = false
  local function copy(t, top)
    local out = {}
    for k, v in pairs(t) do
      if type(v) == "table" then
        out[k] = copy(v)
      elseif type(v) ~= "function" and type(v) ~= "userdata" then
        out[k] = v
      elseif not (top and k == "log") then
        dropped = true
      end
    end
    return out
  end
  return copy(opts, true), dropped
end

-- The worker's way to a backend_call: fn(method, ...) runs it in the pool, on a backend opened
-- with what of opts can cross into a thread (resty_pool.crossable).
function resty_pool.backend(path, opts, pool)
  local o = resty_pool.crossable(opts)
  return function(method, ...) return in_thread(pool or "layer2", "backend_call", path, o, method, ...) end
end

-- The worker's way to apply_deferred: fn(records) runs it in the pool.
function resty_pool.applier(path, opts, pool)
  local o = resty_pool.crossable(opts)
  return function(records) return in_thread(pool or "layer2", "apply_deferred", path, o, records) end
end

-- The worker's way to verify_list: fn(events) runs it in the pool.
function resty_pool.verifier(pool)
  return function(events) return in_thread(pool or "layer2", "verify_list", events) end
end

function resty_pool.l2(conninfo, pool)
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

return resty_pool
