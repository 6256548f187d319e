-- bench/wsproxy: a TCP proxy for one websocket connection, between a client and a relay, that counts
-- what crosses it (bench/sync runs one per sync):
--   lua5.4 bench/wsproxy.lua RELAY_PORT OUT
-- It listens on a free port of 127.0.0.1 and writes that port to OUT.port, takes one connection and
-- forwards it both ways to 127.0.0.1:RELAY_PORT, the bytes unchanged (but each frame in one write, see
-- parser). When both ends have closed it writes to OUT a JSON object: the bytes each way on the wire
-- (the HTTP handshake included), each direction's handshake extensions header, and its websocket
-- messages and their payload bytes by type (the first string of the JSON array a text frame begins
-- with: "NEG-OPEN", "REQ", ...). Frames are parsed as RFC 6455 has them (FIN, RSV1, opcode; 7, 16 or
-- 64-bit length; a 4-byte mask from the client); a fragmented message counts once, by its first frame.
-- Frames with RSV1 set (permessage-deflate) are counted apart, as "compressed": their type cannot be read.
local cqueues = require("cqueues")
local csocket = require("cqueues.socket")
local condition = require("cqueues.condition")
local cjson = require("cjson")

local RELAY_PORT, OUT = tonumber(arg[1]), arg[2]
assert(RELAY_PORT and OUT, "usage: lua5.4 bench/wsproxy.lua RELAY_PORT OUT")
local PREFIX = 16 -- payload bytes read to name a message: `[ "NEG-CLOSE"` fits
local IDLE = 120 -- seconds a read waits: then that direction ends (the counts are still written)
local LINGER = 5 -- seconds the client has to close once the relay has
local GONE = 0.5 -- seconds the relay has to close once the client has

-- One direction's parser: feed(data) with the bytes as they come gives back a list of what to forward
-- now, each to be written at once: the handshake once whole, then whole frames, one by one, as a relay
-- writes them. lua-http 0.4, `layer2 sync`'s websocket client, fails on a frame of 126 to 65,535
-- bytes whose payload arrives in more than one piece (its read_frame reads the 16-bit length's payload
-- without waiting for it: lua-http issue #140), which forwarding bytes as they came would cause.
local function parser()
  local p = { bytes = 0, handshake = nil, buf = "", frames = 0, compressed = 0, messages = {}, payload = {},
    current = "other" }
  -- the frames whole in p.buf from pos on, counted and added to list: the position after the last
  local function frames(pos, list)
    local buf = p.buf
    local n = #buf
    while n - pos + 1 >= 2 do
      local b1, b2 = buf:byte(pos, pos + 1)
      local len, hlen = b2 & 0x7f, 2
      if len == 126 then hlen = 4 elseif len == 127 then hlen = 10 end
      local masked = b2 & 0x80 ~= 0
      if masked then hlen = hlen + 4 end
      if n - pos + 1 < hlen then break end
      if len == 126 then len = string.unpack(">I2", buf, pos + 2)
      elseif len == 127 then len = string.unpack(">i8", buf, pos + 2) end
      if n - pos + 1 < hlen + len then break end
      local opcode, rsv1 = b1 & 0x0f, b1 & 0x40 ~= 0
      p.frames = p.frames + 1
      if rsv1 then p.compressed = p.compressed + 1 end
      local name = opcode >= 8 and "control" or opcode == 0 and p.current or opcode == 2 and "binary"
        or rsv1 and "compressed" or "other"
      if opcode == 1 and not rsv1 then
        local bytes = { buf:byte(pos + hlen, pos + hlen + math.min(len, PREFIX) - 1) }
        if masked then
          local mask = { buf:byte(pos + hlen - 4, pos + hlen - 1) }
          for i = 1, #bytes do bytes[i] = bytes[i] ~ mask[(i - 1) % 4 + 1] end
        end
        name = string.char(table.unpack(bytes)):match('^%s*%[%s*"([%w%-]+)"') or "other"
      end
      if opcode == 1 or opcode == 2 then
        p.messages[name] = (p.messages[name] or 0) + 1
        p.current = name
      end
      p.payload[name] = (p.payload[name] or 0) + len
      list[#list + 1] = buf:sub(pos, pos + hlen + len - 1)
      pos = pos + hlen + len
    end
    return pos
  end
  function p.feed(data)
    p.bytes = p.bytes + #data
    p.buf = p.buf .. data
    local pos, list = 1, {}
    if not p.handshake then
      local e = p.buf:find("\r\n\r\n", 1, true)
      if not e then return list end
      p.handshake = p.buf:sub(1, e + 3)
      p.extensions = p.handshake:lower():match("\r\nsec%-websocket%-extensions:%s*([^\r]*)")
      list[1], pos = p.handshake, e + 4
    end
    pos = frames(pos, list)
    p.buf = p.buf:sub(pos)
    return list
  end
  -- what is left when the connection ends (an incomplete frame), forwarded as it is
  function p.rest()
    local rest = p.buf
    p.buf = ""
    return rest
  end
  return p
end

-- The I/O: cqueues (Debian packages it for Lua 5.4), one coroutine a direction, each frame in one
-- send(). Not luasocket: its send() writes in steps of 8 KiB, which cuts a larger frame in two writes,
-- and `layer2 sync` then fails at random on the frames of 8 to 64 KiB (lua-http's bug, above).
local server = assert(csocket.listen({ host = "127.0.0.1", port = 0, nodelay = true }))
assert(server:listen())
local _, _, port = server:localname()
local f = assert(io.open(OUT .. ".port.tmp", "w"))
f:write(port, "\n")
f:close()
assert(os.rename(OUT .. ".port.tmp", OUT .. ".port"))

local up, down = parser(), parser() -- client to relay, relay to client
local cq = cqueues.new()

-- from one socket to the other until the first ends, then a half-close: the other end hears it too
local function pump(from, to, p)
  while true do
    local data = from:read(-65536)
    if not data then break end
    for _, piece in ipairs(p.feed(data)) do
      if not to:write(piece) then return end
    end
  end
  local rest = p.rest()
  if #rest > 0 then to:write(rest) end
  to:shutdown("w")
end

cq:wrap(function()
  local client = assert(server:accept({ nodelay = true }, IDLE))
  server:close()
  local relay = assert(csocket.connect({ host = "127.0.0.1", port = RELAY_PORT, nodelay = true }))
  assert(relay:connect(10))
  for _, s in ipairs({ client, relay }) do
    s:setmode("bn", "bn") -- binary, unbuffered: each write at once
    s:setbufsiz(1048576, 1048576) -- and whole (8 KiB by default: a frame larger would go in steps)
    s:settimeout(IDLE)
  end
  local ends, both = 0, condition.new()
  local function finish(linger)
    ends = ends + 1
    if ends == 2 then
      client:close()
      relay:close()
      both:signal()
    else -- one direction ended: the other has `linger` seconds to end too
      cq:wrap(function()
        cqueues.poll(both, linger)
        if ends < 2 then
          ends = 2
          client:close()
          relay:close()
        end
      end)
    end
  end
  cq:wrap(function() pump(client, relay, up) finish(GONE) end)
  cq:wrap(function() pump(relay, client, down) finish(LINGER) end)
end)
local ok, err = cq:loop()
if not ok then io.stderr:write("bench/wsproxy: ", tostring(err), "\n") end

local function summary(p)
  return { bytes = p.bytes, extensions = p.extensions, frames = p.frames, compressed = p.compressed,
    messages = p.messages, payload = p.payload }
end
f = assert(io.open(OUT .. ".tmp", "w"))
f:write(cjson.encode({ up = summary(up), down = summary(down) }), "\n")
f:close()
assert(os.rename(OUT .. ".tmp", OUT))
