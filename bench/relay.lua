-- bench/relay: the example relay on nginx (2 workers): events/s published by N concurrent
-- websocket clients, and REQ round trips at limit 50 and 500.   lua5.4 bench/relay.lua [events]
local util = require("bench.util")
local dataset = require("bench.dataset")
local cjson = require("cjson")

local N = tonumber(arg and arg[1]) or 20000
local ROOT = io.popen("pwd"):read("l")
local path = ROOT .. "/" .. dataset.ensure(100000)
local node_dir = ROOT .. "/build/node"
if not io.open(node_dir .. "/node_modules/ws/package.json") then
  assert(os.execute(("mkdir -p %s && cd %s && npm install --silent --no-audit --no-fund nostr-tools@2 ws@8 >/dev/null 2>&1")
    :format(node_dir, node_dir)), "npm install failed")
end
os.execute(("cp %s/bench/relay.mjs %s/"):format(ROOT, node_dir))

local socket = require("socket")
local rows = {}
for _, clients in ipairs({ 1, 4, 16 }) do
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  local prefix, data = os.tmpname(), os.tmpname()
  os.remove(prefix)
  os.remove(data)
  assert(os.execute(("%s/tools/relay --listen 127.0.0.1:%d --prefix %s --data %s --workers 2 --daemon"):format(ROOT,
    port, prefix, data)))
  os.execute(("for i in $(seq 50); do curl -sf --max-time 1 -o /dev/null http://127.0.0.1:%d/ && break; sleep 0.1; done")
    :format(port))
  local out = os.tmpname()
  assert(os.execute(("cd %s && node relay.mjs ws://127.0.0.1:%d/ %s %d %d %s"):format(node_dir, port, path, N, clients,
    out)))
  local f = assert(io.open(out))
  local r = cjson.decode(f:read("a"))
  f:close()
  os.remove(out)
  os.execute(("kill -QUIT $(cat %s/logs/nginx.pid); sleep 0.5; rm -rf %s %s"):format(prefix, prefix, data))
  rows[#rows + 1] = { tostring(clients), util.fmt_rate(r.published / r.seconds) .. " events/s", ("%d"):format(r.accepted),
    ("%.2f / %.2f"):format(r.req50.p50, r.req50.p99), ("%.2f / %.2f"):format(r.req500.p50, r.req500.p99) }
  util.summary(("relay publish, %d clients"):format(clients), util.fmt_rate(r.published / r.seconds) .. " events/s",
    ("%d events, 2 nginx workers, durable saves"):format(N))
  if clients == 1 then
    util.summary("relay REQ round trip, limit 50", ("%.2f / %.2f ms p50/p99"):format(r.req50.p50, r.req50.p99),
      "kinds [1], JSON over a websocket")
    util.summary("relay REQ round trip, limit 500", ("%.2f / %.2f ms p50/p99"):format(r.req500.p50, r.req500.p99),
      "kinds [1]")
  end
end

print(("## bench/relay (nginx + lua-nginx-module, 2 workers)\n"))
print("machine: " .. util.machine())
print(("data: the first %d events of %s, published through the relay (each save durable: L2 then L1)\n"):format(N,
  path))
print(util.table({ "clients", "publish", "accepted", "REQ limit 50 ms p50/p99", "REQ limit 500 ms p50/p99" }, rows))
