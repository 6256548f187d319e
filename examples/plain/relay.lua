-- A nostr relay in plain Lua (LuaJIT) over lua-http's websocket server (Debian: lua-http, which
-- brings cqueues): the same protocol library as the OpenResty relay (layer2.relay), one process,
-- one coroutine per connection, saves straight into the store, live events to this process's
-- subscriptions.
--   luajit examples/plain/relay.lua [--listen 127.0.0.1:7779] [--data DIR] [--policy FILE.lua]
--                                   [--url ws://HOST:PORT] [--limit NAME=NUMBER]...
-- (LUA_PATH and LUA_CPATH must reach layer2: `eval "$(make -s env LUA=luajit)"`.)
local cqueues = require("cqueues")
local condition = require("cqueues.condition")
local ETIMEDOUT = require("cqueues.errno").ETIMEDOUT
local http_server = require("http.server")
local http_headers = require("http.headers")
local websocket = require("http.websocket")
local cjson = require("cjson.safe")
local layer2 = require("layer2")
local layer2_relay = require("layer2.relay")

local opts, limits = { listen = "127.0.0.1:7779", data = "data-plain" }, {}
local i = 1
while arg[i] do
  local name = arg[i]:match("^%-%-([%w-]+)$")
  if not name or opts[name] == nil and name ~= "policy" and name ~= "url" and name ~= "limit" or not arg[i + 1] then
    io.stderr:write("usage: relay.lua [--listen HOST:PORT] [--data DIR] [--policy FILE.lua] [--url URL]"
      .. " [--limit NAME=NUMBER]...\n")
    os.exit(2)
  end
  if name == "limit" then
    local limit, value = arg[i + 1]:match("^([%w_]+)=([%d.]+)$")
    limits[limit or arg[i + 1]] = tonumber(value)
  else
    opts[name] = arg[i + 1]
  end
  i = i + 2
end
local host, port = opts.listen:match("^(.+):(%d+)$")
assert(host, "--listen takes HOST:PORT")

local db = assert(layer2.open(opts.data))
-- a policy that cannot be loaded stops the start, with its error
local protocol = layer2_relay.new({ store = db, policy = opts.policy, url = opts.url or ("ws://" .. opts.listen),
  limits = limits,
  info = { name = "layer2 plain relay", description = "a nostr relay in plain Lua with a layer2 store" } })

local function respond(stream, status, content_type, body)
  local headers = http_headers.new()
  headers:append(":status", status)
  headers:append("content-type", content_type)
  headers:append("access-control-allow-origin", "*")
  stream:write_headers(headers, false)
  stream:write_chunk(body, true)
end

-- One connection: its messages go to a session; what the session sends waits in `out` for the
-- connection's writer coroutine (one writer: a live event from another connection's coroutine
-- must not interleave its frame with this one's). Backpressure as the nginx relay's: an answer's
-- stored events wait while max_queued_bytes are queued; a client that lets more than
-- max_unsent_bytes wait (live events it does not read), or whose writes make no progress for
-- send_timeout, is closed.
local function serve(ws, ip)
  local out, out_bytes, wake, drained, closed = {}, 0, condition.new(), condition.new(), false
  local limit, room = protocol.limits.max_unsent_bytes, protocol.limits.max_queued_bytes
  local function give_up()
    out, out_bytes, closed = {}, 0, true
    wake:signal()
  end
  local session, refused = protocol:session({
    ip = ip,
    send = function(text)
      if closed then return end
      out[#out + 1], out_bytes = text, out_bytes + #text
      if out_bytes > limit then return give_up() end
      wake:signal()
    end,
    unsent = function() return out_bytes end,
    overflow = give_up,
    drain = function()
      while not closed and out_bytes >= room do drained:wait() end
      return not closed
    end,
  })
  if not session then
    ws:send(cjson.encode({ "NOTICE", refused }))
    return ws:close(1008, refused:sub(1, 120))
  end
  local send_timeout, progress, writing = protocol.limits.send_timeout, cqueues.monotime(), false
  -- a write that makes no progress for send_timeout ends the connection (lua-http's write timeout
  -- does not fire while its buffer takes the frames)
  cqueues.running():wrap(function()
    while not closed do
      cqueues.sleep(1)
      if writing and cqueues.monotime() - progress > send_timeout then
        give_up()
        ws.socket:shutdown("rw")
      end
    end
  end)
  cqueues.running():wrap(function()
    while true do
      if #out == 0 then
        -- ended by the reader, or by a client that read too slowly: the close ends the reader's wait
        if closed then
          drained:signal()
          return ws:close(1008, "closed")
        end
        wake:wait()
      else
        local batch = out
        out, out_bytes, writing = {}, 0, true
        for _, text in ipairs(batch) do
          if closed or not ws:send(text, "text", send_timeout) then
            closed = true
            out, out_bytes = {}, 0
            break
          end
          progress = cqueues.monotime()
        end
        writing = false
        drained:signal()
      end
    end
  end)
  while not closed do
    local data, kind, errno = ws:receive(60)
    if data and kind == "text" then
      session:message(data)
    elseif not data and errno ~= ETIMEDOUT then -- a quiet minute only lets idle sessions go
      break
    end
    session:neg_idle()
  end
  closed = true
  wake:signal()
  session:close()
  ws:close()
end

local server = assert(http_server.listen({
  host = host,
  port = tonumber(port),
  onstream = function(_, stream)
    local headers = assert(stream:get_headers())
    local ws = websocket.new_from_stream(stream, headers)
    if ws then
      local _, ip = stream:peername() -- before accept, which takes the socket from the stream
      assert(ws:accept())
      return serve(ws, ip)
    end
    if (headers:get("accept") or ""):find("application/nostr+json", 1, true) then
      return respond(stream, "200", "application/nostr+json", protocol:info_document())
    end
    respond(stream, "200", "text/plain", "a nostr relay: connect with a websocket client\n")
  end,
  onerror = function(_, context, op, err)
    io.stderr:write(("relay: %s %s: %s\n"):format(tostring(context), tostring(op), tostring(err)))
  end,
}))
assert(server:listen())
io.stderr:write(("layer2 plain relay on ws://%s/ (data in %s)\n"):format(opts.listen, opts.data))
assert(server:loop())
