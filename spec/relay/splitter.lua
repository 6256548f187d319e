-- A TCP proxy for one connection that passes the server's bytes on in pieces of 100, a
-- millisecond apart, as a slow network does: a client must put frames together.
--   lua5.4 spec/relay/splitter.lua LISTEN_PORT UPSTREAM_PORT   (prints "ready" once listening)
local socket = require("socket")
local listen_port, upstream_port = tonumber(arg[1]), tonumber(arg[2])
local server = assert(socket.bind("127.0.0.1", listen_port))
io.stdout:write("ready\n")
io.stdout:flush()
local client = assert(server:accept())
local upstream = assert(socket.connect("127.0.0.1", upstream_port))
client:settimeout(0)
upstream:settimeout(0)
local function send_all(sock, data, piece)
  local i = 1
  while i <= #data do
    local last = math.min(#data, i + piece - 1)
    local sent, err, partial = sock:send(data, i, last)
    if not sent and err ~= "timeout" then return false end
    i = (sent or partial) + 1
    if piece < #data then socket.sleep(0.001) end
  end
  return true
end
while true do
  local ready = socket.select({ client, upstream }, nil, 30)
  if #ready == 0 then break end
  local open = true
  for _, sock in ipairs(ready) do
    local data, err, partial = sock:receive(65536)
    data = data or partial
    if data and #data > 0 then
      if sock == upstream then open = send_all(client, data, 100) and open
      else open = send_all(upstream, data, #data) and open end
    end
    if err == "closed" then open = false end
  end
  if not open then break end
end
client:close()
upstream:close()
