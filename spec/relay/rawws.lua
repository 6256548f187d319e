-- A websocket client on a bare TCP socket (luasocket), for the specs that need what a library
-- client does not do: read nothing at all, send fragments, pings and frames of any shape.
local socket = require("socket")

local rawws = {}
rawws.TEXT, rawws.CONTINUATION, rawws.CLOSE, rawws.PING, rawws.PONG = 0x1, 0x0, 0x8, 0x9, 0xA
local conn = {}
conn.__index = conn

-- Connects and upgrades; returns the connection, or nil and why.
function rawws.connect(port, timeout)
  local c = socket.tcp()
  c:settimeout(timeout or 10)
  local ok, err = c:connect("127.0.0.1", port)
  if not ok then return nil, err end
  c:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
  local status = c:receive("*l")
  if not status or not status:find(" 101 ", 1, true) then return nil, "no upgrade: " .. tostring(status) end
  repeat
    local line = c:receive("*l")
  until not line or line == ""
  return setmetatable({ sock = c }, conn)
end

-- A client frame: masked, as a client's must be (with a zero key, so the payload is as it is).
function rawws.frame(opcode, payload, fin)
  local n = #payload
  local head = string.char((fin == false and 0 or 0x80) | opcode)
  if n < 126 then
    head = head .. string.char(0x80 | n)
  elseif n < 65536 then
    head = head .. string.char(0x80 | 126) .. string.pack(">I2", n)
  else
    head = head .. string.char(0x80 | 127) .. string.pack(">I8", n)
  end
  return head .. "\0\0\0\0" .. payload
end

function conn:send_raw(bytes) return self.sock:send(bytes) end
function conn:send_text(text) return self.sock:send(rawws.frame(rawws.TEXT, text)) end
function conn:send_json(msg) return self:send_text(require("cjson").encode(msg)) end

-- The next frame: payload, opcode; or nil and why (a timeout, the socket closed).
function conn:recv()
  local head, err = self.sock:receive(2)
  if not head then return nil, err end
  local b1, b2 = head:byte(1, 2)
  local n = b2 & 0x7f
  if n == 126 then
    n = string.unpack(">I2", assert(self.sock:receive(2)))
  elseif n == 127 then
    n = string.unpack(">I8", assert(self.sock:receive(8)))
  end
  local payload = ""
  if n > 0 then
    payload, err = self.sock:receive(n)
    if not payload then return nil, err end
  end
  return payload, b1 & 0x0f
end

-- The next text message decoded (control frames before it are collected in self.control).
function conn:recv_json()
  while true do
    local payload, opcode = self:recv()
    if not payload then return nil, opcode end
    if opcode == rawws.TEXT then return require("cjson").decode(payload) end
    self.control = self.control or {}
    self.control[#self.control + 1] = { opcode = opcode, payload = payload }
    if opcode == rawws.CLOSE then return nil, "closed" end
  end
end

-- Reads messages until one satisfies stop(msg); returns every message read (its last the one
-- that stopped it), or nil, why and the messages so far.
function conn:read_until(stop)
  local got = {}
  while true do
    local msg, err = self:recv_json()
    if not msg then return nil, err, got end
    got[#got + 1] = msg
    if stop(msg) then return got end
  end
end

function conn:close() self.sock:close() end

return rawws
