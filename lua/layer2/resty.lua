-- layer2 inside OpenResty / nginx + lua-nginx-module: one backend per worker process (LMDB is
-- shared between them through the process-wide registry in C), periodic work on ngx.timer, saves
-- grouped into batches, and a tail of L1's change feed so a subscription in any worker sees events
-- saved by any other (lua_shared_dict layer2_live carries the signal, see tail_loop).
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

local resty = {}
-- in_pool(method, ...): runs a backend method off the event loop where it can (see init_worker)
local state = { listeners = {}, next_id = 0 }
state.in_pool = function(method, ...) return state.db[method](state.db, ...) end

local function log(msg) ngx.log(ngx.ERR, "layer2: ", msg) end

-- ---- group commit ----
-- Events from every connection of a worker are saved together: whatever arrived while one batch
-- was being written goes in the next, one write transaction (one fsync) per level for all of it.
-- Saving event by event paid two commits per event, and on a busy machine every commit's wait
-- for the disk also costs a wait for the CPU: ingest fell to a few dozen events a second.
-- The window adapts by itself: an idle writer is woken by the first event and saves it alone;
-- a busy one takes what queued while it wrote (up to MAX_BATCH). No timer is waited on.
-- Each connection has its own queue, and a batch takes from them in turn: a connection that
-- floods waits for room in its own queue (MAX_QUEUED) while another's event goes in the next
-- batch, not behind the flood.
-- While a connection with a few events waits beside others, a batch takes at most SHARE events
-- of each, so that its lone EVENT goes in a short batch rather than with hundreds of a flood's.
-- (A batch sized by time instead cost the flood more than half its rate: each batch pays its
-- fsyncs; so did this cap while only connections with much to save waited.)
local MAX_BATCH, MAX_QUEUED, SHARE = 500, 1000, 32
-- writer.ring: the queues with events waiting, in turn order (see resty.queue); busy while a
-- batch is written, express while an express batch is (see express)
local writer = { ring = {}, shared = nil, wake = nil, idle = false, busy = false, express = false }

local function queued(q) return q.tail - q.head + 1 end

local function batch_limit()
  if #writer.ring < 2 then return MAX_BATCH end
  for _, q in ipairs(writer.ring) do
    if queued(q) <= SHARE then return math.min(MAX_BATCH, SHARE * #writer.ring) end
  end
  return MAX_BATCH -- every connection waiting has much to save: the largest batches save fastest
end

-- The next batch: one event from each waiting queue in turn, until the batch's limit or none is
-- left; the next batch goes on from the queue after the last one served, so turns carry across
-- batches. A queue whose events are in an express batch being written waits for it (first in
-- the next batch): a connection's events commit in the order it sent them. Also returns the
-- queues served (marked in_batch until the batch is written).
local function take_batch()
  local events, done, limit, served, ring, later = {}, {}, batch_limit(), {}, {}, {}
  for _, q in ipairs(writer.ring) do
    if q.in_express then later[#later + 1] = q else ring[#ring + 1] = q end
  end
  while #ring > 0 and #events < limit do
    local kept, rest = {}, {}
    for _, q in ipairs(ring) do
      if #events < limit then
        local item = q.items[q.head]
        q.items[q.head], q.head = nil, q.head + 1
        events[#events + 1], done[#done + 1] = item[1], item[2]
        if not q.in_batch then
          q.in_batch = true
          served[#served + 1] = q
        end
        if q.blocked > 0 and queued(q) < MAX_QUEUED then q.room:post(q.blocked) end
        if queued(q) > 0 then kept[#kept + 1] = q else q.waiting = false end
      else
        rest[#rest + 1] = q -- not served this round: first in the next batch
      end
    end
    for _, q in ipairs(kept) do rest[#rest + 1] = q end
    ring = rest
  end
  for _, q in ipairs(ring) do later[#later + 1] = q end
  writer.ring = later
  return events, done, served
end

local function signal()
  local dict = ngx.shared.layer2_live
  if dict then dict:incr("signal", 1, 0) end
end

local function write_batch(events, done)
  local ok, verdicts, err = pcall(state.in_pool, "save_events", events)
  if ok and not verdicts then ok, verdicts = false, err end
  if not ok then log("a batch of saves failed: " .. tostring(verdicts)) end
  for i, fn in ipairs(done) do
    local v = ok and verdicts[i] or "error: the store failed on this batch"
    local cok, e = pcall(fn, v == true, v ~= true and v or "")
    if not cok then log("a save's callback failed: " .. tostring(e)) end
  end
  -- this worker's subscribers get the batch now; the others' when they see the signal
  signal()
  local tok, e = pcall(resty.tail)
  if not tok then log("delivering a batch failed: " .. tostring(e)) end
end

-- Express batches. A batch is written in the thread pool, and what arrives meanwhile waits for it
-- to end: behind up to 500 of a flood's events, tens of ms. A connection with few events waiting
-- (SHARE at most) need not wait: while a batch is being written, an express batch takes the events
-- of every such connection and writes them in another pool thread beside it (they take turns with
-- the batch only for LMDB's write lock, a few ms). One express batch at a time. A connection with
-- events in the batch being written is left to the next one, so that a connection's events
-- commit in the order it sent them (a client that sends a replaceable event twice expects both
-- accepted, the second replacing the first).
local function take_light()
  local events, done, rest, served = {}, {}, {}, {}
  for _, q in ipairs(writer.ring) do
    if queued(q) <= SHARE and not q.in_batch then
      while q.head <= q.tail do
        local item = q.items[q.head]
        q.items[q.head], q.head = nil, q.head + 1
        events[#events + 1], done[#done + 1] = item[1], item[2]
      end
      q.waiting, q.in_express = false, true
      served[#served + 1] = q
    else
      rest[#rest + 1] = q
    end
  end
  writer.ring = rest
  return events, done, served
end

local function express(premature)
  if not premature then
    while writer.busy do
      local events, done, served = take_light()
      if #events == 0 then break end
      write_batch(events, done)
      for _, q in ipairs(served) do q.in_express = false end
    end
  end
  writer.express = false
end

local function write_loop(premature)
  if premature then return end
  while true do
    if #writer.ring == 0 then
      if ngx.worker.exiting() then return end
      writer.idle = true
      writer.wake:wait(1)
      writer.idle = false
    else
      local events, done, served = take_batch()
      if #events > 0 then
        writer.busy = true
        write_batch(events, done)
        writer.busy = false
      end
      for _, q in ipairs(served) do q.in_batch = false end
      -- a turn of the event loop: connections read what came meanwhile (the next batch) and
      -- the OKs go out (sleep(0) would do without its 1 ms, but nginx builds without OpenResty's
      -- delayed-events patch, Debian's among them, warn at every call); and another worker's
      -- writer a moment to take LMDB's write lock (a batch in the thread pool gave the loop its
      -- turns already)
      ngx.sleep(0.001)
    end
  end
end

-- A queue of saves, one per connection (resty.save takes it): batches take from queues in turn.
function resty.queue()
  return { items = {}, head = 1, tail = 0, blocked = 0, room = require("ngx.semaphore").new() }
end

-- Queues an event (a table or wire JSON) in `queue` (one of resty.queue(); a queue shared by
-- every caller without one if nil) for the next batch; done(ok, msg) is called once it is
-- decided, from the writer (it must not yield). Waits while that queue is full.
function resty.save(ev, done, queue)
  local q = queue or writer.shared
  if not q then
    q = resty.queue()
    writer.shared = q
  end
  while queued(q) >= MAX_QUEUED do
    q.blocked = q.blocked + 1
    q.room:wait(1)
    q.blocked = q.blocked - 1
  end
  q.tail = q.tail + 1
  q.items[q.tail] = { ev, done }
  if not q.waiting then
    q.waiting = true
    writer.ring[#writer.ring + 1] = q
  end
  if writer.busy and not writer.express and queued(q) <= SHARE and not q.in_batch then
    writer.express = true
    ngx.timer.at(0, express)
  end
  if writer.idle then
    writer.idle = false
    writer.wake:post(1)
  end
end

-- Every save in nginx (a batch, a poll, an ephemeral broadcast) bumps the counter "signal" in
-- the shared dict layer2_live; a worker reads that counter every `check` seconds (shared memory,
-- no lock held across workers, no LMDB read) and reads L1's feed only when it moved, and every
-- `every` seconds anyway, for writers outside nginx (the CLI) or when there is no dict. nginx
-- has no wake-up between workers: this is its cheapest stand-in, a few ms at most.
local function tail_loop(premature, check, every)
  if premature then return end
  local dict = ngx.shared.layer2_live
  local seen, last = nil, 0
  while not ngx.worker.exiting() do
    ngx.sleep(dict and check or every)
    local count = dict and dict:get("signal")
    if count ~= seen or ngx.now() - last >= every then
      seen, last = count, ngx.now()
      local ok, e = pcall(resty.tail)
      if not ok then log("the tail failed: " .. tostring(e)) end
    end
  end
end

local function start_timers(db, opts)
  local semaphore = require("ngx.semaphore")
  writer.wake = semaphore.new()
  ngx.timer.at(0, write_loop)
  -- the tail starts at the present: history is what REQ is for
  state.cursor = db.l1:stats().last_seq
  ngx.timer.at(0, tail_loop, opts.signal_interval or 0.005, opts.tail_interval or 0.05)
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
  -- to `every` seconds), otherwise it sleeps; either way it polls after
  ngx.timer.at(0, function(premature)
    if premature then return end
    while not ngx.worker.exiting() do
      local waited = db.notify and type(db.l2.wait) == "function" and pcall(db.l2.wait, db.l2, every)
      if not waited then ngx.sleep(every) end
      local ok, e = pcall(state.in_pool, "poll")
      if not ok then log("poll failed: " .. tostring(e)) end
      signal()
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
-- (see tail_loop), gc_interval (s, 5),
-- poll_interval (s, opts.poll_frequency or 0: off), thread_pool ("layer2": the name of nginx's
-- thread_pool; false runs everything in the event loop). Batches of saves, gc and polls run in
-- that pool (layer2.resty_pool), on a backend of the pool thread's own: the worker's event loop
-- goes on reading and answering meanwhile (a batch's signature checks and commits took tens of
-- ms, in which a lone EVENT waited). Options that are functions (a policy, an on_event handler)
-- cannot cross into a thread: with one, an LMDB backend does all of it in the event loop. A
-- string opts.l2 is a PostgreSQL conninfo: its calls run in the pool too, and the backend opens in
-- a timer, since init_worker cannot yield; resty.db() waits for it.
function resty.init_worker(path, opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.log = o.log or log
  if type(o.l2) ~= "string" then
    local pool = require("layer2.resty_pool")
    local _, dropped = pool.crossable(opts)
    if opts.thread_pool ~= false and not dropped then
      local pooled, direct = pool.backend(path, opts, opts.thread_pool), state.in_pool
      state.in_pool = function(method, ...)
        if pooled then
          local ok, a, b, c = pcall(pooled, method, ...)
          if ok then return a, b, c end
          -- an nginx.conf without the pool: everything in the event loop, as before
          if not tostring(a):find("thread pool .* not found") then error(a, 0) end
          pooled = nil
          ngx.log(ngx.NOTICE, "layer2: no thread_pool ", opts.thread_pool or "layer2",
            " in nginx.conf: saves and maintenance run in the event loop")
        end
        return direct(method, ...)
      end
    end
    return open(path, o, opts)
  end
  -- The C core reaches L2 from C, and a call into the thread pool yields, which LuaJIT cannot do
  -- across C: what L1 proves alone is answered here; a read that needs L2, every batch of saves,
  -- eviction (which drains the outbox) and polling run whole in the pool, on a backend of the
  -- thread's own (same L1, same learned state).
  local in_pool = require("layer2.resty_pool").backend(path, opts, opts.thread_pool)
  state.in_pool = in_pool
  local query_l1 = require("layer2.core").backend_private.query_l1
  o.l2 = require("layer2.resty_pool").l2(o.l2, opts.thread_pool)
  ngx.timer.at(0, function(premature)
    if premature then return end
    -- the pool's backend opens first: a new L1 learns L2's newest event there (from C, which
    -- cannot reach L2 in this worker)
    local opened, e = pcall(in_pool, "path")
    if not opened then log("the thread pool's backend did not open: " .. tostring(e)) end
    local db = open(path, o, opts)
    if not db then return end
    db.query_events = function(self, filters, qopts)
      local res, levels = query_l1(self, filters, qopts)
      if res ~= false then return res, levels end
      return in_pool("query_events", filters, qopts)
    end
    db.count_events = function(_, filters, copts) return in_pool("count_events", filters, copts) end
    -- this worker's figures, and L2's asked from here (a Lua call, so it may yield)
    local stats = db.stats
    db.stats = function(self)
      local st = stats(self)
      local ok, l2 = pcall(self.l2.stats, self.l2)
      st.l2 = ok and l2 or nil
      return st
    end
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

local function deliver(json)
  for _, fn in pairs(state.listeners) do
    local ok, e = pcall(fn, json)
    if not ok then log("a listener failed: " .. tostring(e)) end
  end
end

-- Ephemeral events are never stored, so they are not in the change feed: they go through the
-- shared dict (lua_shared_dict layer2_live) that every worker's tail reads.
function resty.broadcast(json)
  local dict = ngx.shared.layer2_live
  if not dict then return deliver(json) end
  local seq = dict:incr("seq", 1, 0)
  dict:set("e:" .. seq, json, 30)
  signal()
end

local function tail_ephemeral()
  local dict = ngx.shared.layer2_live
  if not dict then return end
  local last = dict:get("seq") or 0
  if not state.ephemeral_seen then state.ephemeral_seen = last end
  for seq = state.ephemeral_seen + 1, last do
    local json = dict:get("e:" .. seq)
    if json then deliver(json) end
  end
  state.ephemeral_seen = last
end

-- Delivers the changes since the last tail to every listener (saved events with their JSON).
function resty.tail()
  local db = state.db
  tail_ephemeral()
  if not db or next(state.listeners) == nil then
    if db then state.cursor = db.l1:stats().last_seq end
    return
  end
  while true do
    local changes, cursor = db.l1:changes_since(state.cursor, 500, { json = true })
    if not changes or #changes == 0 then return end
    state.cursor = cursor
    for _, ch in ipairs(changes) do
      if ch.op == "saved" and ch.event then
        deliver(ch.event)
      end
    end
  end
end

function resty.subscribe(fn)
  state.next_id = state.next_id + 1
  state.listeners[state.next_id] = fn
  return state.next_id
end

function resty.unsubscribe(id)
  state.listeners[id] = nil
end

-- ---- live subscriptions ----
-- A worker's subscriptions are indexed together (layer2.fanout): each event is parsed once and
-- handed only to the subscriptions a filter of which matches it, not matched against every
-- filter of every connection.
local live = { fns = {}, next = 0 }

local function deliver_live(json)
  local keys = live.fanout:match(json)
  for _, key in ipairs(keys or {}) do
    local fn = live.fns[key]
    if fn then
      local ok, e = pcall(fn, json)
      if not ok then log("a live subscription failed: " .. tostring(e)) end
    end
  end
end

-- Calls fn(json) for each event saved from now on (by any worker, or polled from L2) or
-- broadcast (ephemeral) that one of `filters` matches (limits aside). Returns a handle for
-- resty.unwatch, or nil and the filters' refusal.
function resty.watch(filters, fn)
  if not live.fanout then
    live.fanout = layer2.fanout()
    resty.subscribe(deliver_live)
  end
  live.next = live.next + 1
  local ok, err = live.fanout:add(live.next, filters)
  if not ok then return nil, err end
  live.fns[live.next] = fn
  return live.next
end

function resty.unwatch(handle)
  if not live.fanout or not handle then return end
  live.fanout:remove(handle)
  live.fns[handle] = nil
end

return resty
