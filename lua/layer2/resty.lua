-- layer2 inside OpenResty / nginx + lua-nginx-module: one backend per worker process (LMDB is
-- shared between them through the process-wide registry in C), periodic work on ngx.timer, saves
-- grouped into batches, and a tail of L1's change feed so a subscription in any worker sees events
-- saved by any other (lua_shared_dict layer2_live carries the signal: layer2/resty/feed.lua).
-- The parts: resty/writer.lua (group commit), resty/feed.lua (the tail, broadcasts, the signal),
-- resty/live.lua (live subscriptions); this file opens the backend and runs the maintenance.
--
--   init_worker_by_lua_block { require("layer2.resty").init_worker("/var/lib/relay", opts) }
--   local db = require("layer2.resty").db()
--   local sub = require("layer2.resty").subscribe(function(json) ... end)   -- every event
--   local h = require("layer2.resty").watch(filters, function(json) ... end) -- matching ones
--   local q = require("layer2.resty").queue()                         -- one per connection
--   require("layer2.resty").save(ev, function(ok, msg) ... end, q)   -- group commit
--
-- Read transactions never cross a yield: every call into the store is synchronous C.
local layer2 = require("layer2")

local feed = require("layer2.resty.feed")
local live = require("layer2.resty.live")
local writer = require("layer2.resty.writer")

local resty = {}
-- in_pool(method, ...): runs a backend method off the event loop where it can (see init_worker)
local state = {}
state.in_pool = function(method, ...) return state.db[method](state.db, ...) end
-- verify_list(events): a batch's signatures checked, where in_pool runs its saves
state.verify_list = function(events) return layer2.event.verify_list(events) end

local function log(msg) ngx.log(ngx.ERR, "layer2: ", msg) end

-- init_worker's own options (see there), beside layer2.open's
local RESTY_OPTIONS = { signal_interval = true, tail_interval = true, gc_interval = true, poll_interval = true,
  thread_pool = true }
local OPTIONS = {}
for _, name in ipairs(require("layer2.backend").OPTIONS) do OPTIONS[#OPTIONS + 1] = name end
for name in pairs(RESTY_OPTIONS) do OPTIONS[#OPTIONS + 1] = name end
table.sort(OPTIONS)

-- A read that reaches L2 writes L1 (what admission takes, its remembered answer), and such a
-- write waits for L1's write lock, which the pool's batches hold for most of a flood: in the event
-- loop that wait stalled every connection of the worker (a mix of 400 REQs on a size-limited L1
-- took 750 ms during a flood, 300 ms without). The worker's handle keeps those writes instead
-- (l2_backend_defer_writes) and this loop hands them to the pool (state.apply_deferred) every
-- DRAIN_INTERVAL, with the reads L1 served every READS_INTERVAL (eviction's order: a handle that
-- never writes would keep them to itself).
local DRAIN_INTERVAL, READS_INTERVAL = 0.01, 1
local private = require("layer2.core").backend_private

local function drain_deferred(db)
  -- the default (an L1 without a size limit in front of the embedded L2, which copies nothing)
  -- keeps nothing: no loop then
  if not private.defer_writes(db, true) then return end
  local reads_at = 0
  ngx.timer.at(0, function(premature)
    if premature then return end
    while not ngx.worker.exiting() and not db:is_closed() do
      ngx.sleep(DRAIN_INTERVAL)
      local with_reads = ngx.now() - reads_at >= READS_INTERVAL
      if with_reads then reads_at = ngx.now() end
      local records, dropped = private.take_deferred(db, with_reads)
      if dropped > 0 then log(dropped .. " fills of L1 were dropped: the thread pool fell behind") end
      if records then
        local ok, done, err = pcall(state.apply_deferred, records)
        if not (ok and done) then log("L1 fills failed: " .. tostring(ok and err or done)) end
      end
    end
  end)
end

local function start_timers(db, opts)
  if state.apply_deferred then drain_deferred(db) end
  writer.start(function(method, ...) return state.in_pool(method, ...) end,
    function(events) return state.verify_list(events) end)
  feed.start(db, opts.signal_interval or 0.005, opts.tail_interval or 0.05)
  if ngx.worker.id() ~= 0 then return end
  -- one worker does the shared maintenance
  ngx.timer.every(opts.gc_interval or 5, function(premature)
    if premature then return end
    local ok, e = pcall(state.in_pool, "gc")
    if not ok then log("gc failed: " .. tostring(e)) end
  end)
  local every = opts.poll_interval or opts.poll_frequency or 0
  if every <= 0 or not db.l2 then return end
  -- a long-lived timer: with opts.notify it waits for L2's change signal (in the thread pool, up
  -- to `every` seconds), otherwise it sleeps; either way it polls after. The wait also brings the
  -- ephemeral events other nodes published: they go to this node's subscribers.
  ngx.timer.at(0, function(premature)
    if premature then return end
    while not ngx.worker.exiting() do
      local waited, _, ephemeral = false, nil, nil
      if db.notify and type(db.l2.wait) == "function" then waited, _, ephemeral = pcall(db.l2.wait, db.l2, every) end
      if not waited then ngx.sleep(every) end
      for _, payload in ipairs(type(ephemeral) == "table" and ephemeral or {}) do
        local node, json = payload:match("^(%x+) (.*)$")
        if node and node ~= state.node then feed.broadcast(json) end
      end
      local ok, e = pcall(state.in_pool, "poll")
      if not ok then log("poll failed: " .. tostring(e)) end
      feed.signal()
    end
  end)
end

local function open(path, o, opts)
  local db, err = layer2.open(path, o)
  if not db then
    log("cannot open the store at " .. path .. ": " .. tostring(err))
    state.failed = err
    return nil, err
  end
  state.db = db
  start_timers(db, opts)
  return db
end

-- opts: everything layer2.open takes, plus signal_interval (s, 0.005) and tail_interval (s, 0.05)
-- (see layer2.resty.feed), gc_interval (s, 5),
-- poll_interval (s, opts.poll_frequency or 0: off), thread_pool ("layer2": the name of nginx's
-- thread_pool; false runs everything in the event loop). Batches of saves, gc and polls run in
-- that pool (layer2.resty_pool), on a backend of the pool thread's own: the worker's event loop
-- goes on reading and answering meanwhile (a batch's signature checks and commits took tens of
-- ms, in which a lone EVENT waited). Options that are functions (a policy, an on_event handler)
-- cannot cross into a thread: with one, an LMDB backend does all of it in the event loop. A
-- string opts.l2 is a PostgreSQL conninfo: its calls run in the pool too, and the backend opens in
-- a timer, since init_worker cannot yield; resty.db() waits for it.
-- This node's id (every worker of one nginx shares it, in the live dict): what its ephemeral
-- events carry across the cluster.
local function node_id()
  local dict = ngx.shared.layer2_live
  if not dict then return nil end
  local urandom = io.open("/dev/urandom", "rb")
  local bytes = urandom and urandom:read(8)
  if urandom then urandom:close() end
  if bytes then dict:add("node", (bytes:gsub(".", function(c) return ("%02x"):format(c:byte()) end))) end
  return dict:get("node")
end

function resty.init_worker(path, opts)
  opts = opts or {}
  local unknown = require("layer2.core").unknown_option(opts, "layer2.resty.init_worker", OPTIONS)
  if unknown then error(unknown, 2) end
  -- with a PostgreSQL L2 the store works in the thread pool, where no function can go: what
  -- would be dropped there silently is refused here
  if type(opts.l2) == "string" and type(opts.policy) == "table" then
    error("layer2.resty.init_worker: with a PostgreSQL L2 eviction runs in the thread pool, where a policy"
      .. " table cannot go: give the path of its file (policy = \"/etc/relay/policy.lua\")", 2)
  end
  for _, hook in ipairs({ "on_event", "on_removed" }) do
    if type(opts.l2) == "string" and opts[hook] ~= nil then
      error("layer2.resty.init_worker: with a PostgreSQL L2 saves run in the thread pool, where " .. hook
        .. " handlers cannot go: hear events with layer2.resty.subscribe", 2)
    end
  end
  -- what layer2.open takes (o, with the worker's log), and what a pool thread's backend opens with
  state.node = node_id()
  local o, bopts = {}, {}
  for k, v in pairs(opts) do
    if not RESTY_OPTIONS[k] then o[k], bopts[k] = v, v end
  end
  o.log = o.log or log
  if type(o.l2) ~= "string" then
    local pool = require("layer2.resty_pool")
    local _, dropped = pool.crossable(bopts)
    if opts.thread_pool ~= false and not dropped then
      local has_pool = true
      -- fn in the pool, or (an nginx.conf without it) in the event loop, as before
      local function pooled_or(pooled, direct)
        return function(...)
          if has_pool then
            local ok, a, b, c = pcall(pooled, ...)
            if ok then return a, b, c end
            if not tostring(a):find("thread pool .* not found") then error(a, 0) end
            if has_pool then
              ngx.log(ngx.NOTICE, "layer2: no thread_pool ", opts.thread_pool or "layer2",
                " in nginx.conf: saves and maintenance run in the event loop")
            end
            has_pool = false
          end
          return direct(...)
        end
      end
      state.in_pool = pooled_or(pool.backend(path, bopts, opts.thread_pool), state.in_pool)
      state.verify_list = pooled_or(pool.verifier(opts.thread_pool), state.verify_list)
      -- without a pool the worker writes its reads' fills itself again
      state.apply_deferred = pooled_or(pool.applier(path, bopts, opts.thread_pool), function(records)
        private.defer_writes(state.db, false)
        return private.apply_deferred(state.db, records)
      end)
    end
    return open(path, o, opts)
  end
  -- The C core reaches L2 from C, and a call into the thread pool yields, which LuaJIT cannot do
  -- across C: the backend delegates (its `delegate` option). What L1 proves alone is answered
  -- here; a read that needs L2, every batch of saves, eviction (which drains the outbox) and
  -- polling run whole in the pool, on a backend of the thread's own (same L1, same learned state).
  local in_pool = require("layer2.resty_pool").backend(path, bopts, opts.thread_pool)
  state.in_pool = in_pool
  state.verify_list = require("layer2.resty_pool").verifier(opts.thread_pool)
  state.apply_deferred = require("layer2.resty_pool").applier(path, bopts, opts.thread_pool)
  o.l2 = require("layer2.resty_pool").l2(o.l2, opts.thread_pool)
  o.delegate = in_pool
  ngx.timer.at(0, function(premature)
    if premature then return end
    -- the pool's backend opens first: a new L1 learns L2's newest event there (from C, which
    -- cannot reach L2 in this worker)
    local opened, e = pcall(in_pool, "path")
    if not opened then log("the thread pool's backend did not open: " .. tostring(e)) end
    open(path, o, opts)
  end)
  return true
end

-- NIP-77 items of L2 (db:negentropy_items), read where saves run (the thread pool, when there
-- is one): a scan of up to a session's limit does not stall the worker's event loop.
function resty.negentropy_items(filters, opts)
  return state.in_pool("negentropy_items", filters, opts)
end

-- The worker's backend; while it is still opening (a PostgreSQL L2), waits up to 10 s for it.
function resty.db()
  for _ = 1, 1000 do
    if state.db or state.failed then break end
    ngx.sleep(0.01)
  end
  return state.db
end

-- Ephemeral events cross a cluster on PostgreSQL's NOTIFY (opts.notify with a PostgreSQL L2),
-- tagged with this node's id so that its own come back to no one: published from a timer, since
-- a broadcast comes from a save's callback, which must not yield.
local outgoing = {}
local function publish_outgoing(premature)
  if premature then return end
  local l2 = state.db and state.db.l2
  while #outgoing > 0 do
    local batch = outgoing
    outgoing = {}
    for _, payload in ipairs(batch) do
      local ok, sent, err = pcall(l2.publish, l2, payload)
      if not (ok and sent) then log("an ephemeral event did not reach the cluster: " .. tostring(ok and err or sent)) end
    end
  end
end

-- An ephemeral event (wire JSON) to every subscriber of this node, and of the cluster's others.
function resty.broadcast(json)
  feed.broadcast(json)
  local db = state.db
  if not (state.node and db and db.notify and db.l2 and type(db.l2.publish) == "function") then return end
  outgoing[#outgoing + 1] = state.node .. " " .. json
  if #outgoing == 1 then ngx.timer.at(0, publish_outgoing) end
end

-- The parts (layer2/resty/*.lua), one API.
resty.queue, resty.save = writer.queue, writer.save
resty.tail, resty.subscribe, resty.unsubscribe = feed.tail, feed.subscribe, feed.unsubscribe
resty.watch, resty.unwatch = live.watch, live.unwatch

return resty
