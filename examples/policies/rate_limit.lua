-- A rate limit per IP address and per pubkey, counted over fixed windows. Under nginx the counts
-- live in a lua_shared_dict (`lua_shared_dict layer2_rate 4m;`, which examples/openresty's
-- nginx.conf declares), so every worker counts against the same limit; elsewhere, in this
-- process. Loaded with a table (loadfile(path)(opts)) it takes per_ip, per_pubkey, window and a
-- clock `now` instead of the defaults (tests do).
local opts = ... or {}
local WINDOW = opts.window or 60 -- seconds
local PER_IP, PER_PUBKEY = opts.per_ip or 600, opts.per_pubkey or 120 -- events per window
local now = opts.now or os.time

local ngx = rawget(_G, "ngx")
local shared = not opts.now and ngx and ngx.shared and ngx.shared.layer2_rate
local counts, window_of = {}, nil

-- the count of `key` in the current window, this event counted
local function count(key)
  if shared then
    local n, err = shared:incr(key, 1, 0, WINDOW)
    if not n then error("rate_limit: " .. tostring(err)) end
    return n
  end
  local window = math.floor(now() / WINDOW)
  if window ~= window_of then counts, window_of = {}, window end
  counts[key] = (counts[key] or 0) + 1
  return counts[key]
end

return {
  name = "rate-limit",
  accept_event = function(ev, client)
    if client.ip and count("ip:" .. client.ip) > PER_IP then
      return false, ("rate-limited: more than %d events in %d s from your address"):format(PER_IP, WINDOW)
    end
    if count("pk:" .. ev.pubkey) > PER_PUBKEY then
      return false, ("rate-limited: more than %d events in %d s from this pubkey"):format(PER_PUBKEY, WINDOW)
    end
    return true
  end,
}
