-- layer2.resty.feed: what a worker hears of saves: the tail of L1's change feed (events saved by
-- any worker, or polled from L2), ephemeral events broadcast through the shared dict, and the
-- signal between workers (lua_shared_dict layer2_live).
local feed = {}
local state = { listeners = {}, next_id = 0 }

local function log(msg) ngx.log(ngx.ERR, "layer2: ", msg) end

-- Tells every worker that something was saved or broadcast (see tail_loop).
function feed.signal()
  local dict = ngx.shared.layer2_live
  if dict then dict:incr("signal", 1, 0) end
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
      local ok, e = pcall(feed.tail)
      if not ok then log("the tail failed: " .. tostring(e)) end
    end
  end
end

local function deliver(json)
  for _, fn in pairs(state.listeners) do
    local ok, e = pcall(fn, json)
    if not ok then log("a listener failed: " .. tostring(e)) end
  end
end

-- Ephemeral events are never stored, so they are not in the change feed: they go through the
-- shared dict (lua_shared_dict layer2_live) that every worker's tail reads.
function feed.broadcast(json)
  local dict = ngx.shared.layer2_live
  if not dict then return deliver(json) end
  local seq = dict:incr("seq", 1, 0)
  dict:set("e:" .. seq, json, 30)
  feed.signal()
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
function feed.tail()
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

function feed.subscribe(fn)
  state.next_id = state.next_id + 1
  state.listeners[state.next_id] = fn
  return state.next_id
end

function feed.unsubscribe(id)
  state.listeners[id] = nil
end

-- Starts the tail of db's L1 at the present (history is what REQ is for): every `check` seconds
-- when the signal moved, every `every` seconds anyway.
function feed.start(db, check, every)
  state.db = db
  state.cursor = db.l1:stats().last_seq
  ngx.timer.at(0, tail_loop, check, every)
end

return feed
