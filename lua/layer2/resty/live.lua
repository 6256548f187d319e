-- layer2.resty.live: a worker's live subscriptions (REQ after EOSE), fed by layer2.resty.feed.
local layer2 = require("layer2")
local feed = require("layer2.resty.feed")

local live_api = {}

local function log(msg) ngx.log(ngx.ERR, "layer2: ", msg) end

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
function live_api.watch(filters, fn)
  if not live.fanout then
    live.fanout = layer2.fanout()
    feed.subscribe(deliver_live)
  end
  live.next = live.next + 1
  local ok, err = live.fanout:add(live.next, filters)
  if not ok then return nil, err end
  live.fns[live.next] = fn
  return live.next
end

function live_api.unwatch(handle)
  if not live.fanout or not handle then return end
  live.fanout:remove(handle)
  live.fns[handle] = nil
end

return live_api
